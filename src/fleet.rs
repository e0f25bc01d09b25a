//! The set of instances this replica polls: the configured ones, plus discovered ones (static
//! settings win), restricted to this replica's shard. Pure, so every rule is unit-tested.
//!
//! # The shard of an instance
//!
//! `shard_of(id, M)` = jump consistent hash (Lamping & Veach, 2014) of the FNV-1a 64-bit hash
//! of the instance id's UTF-8 bytes, into `M` buckets. Every replica computes it alone and gets
//! the same answer, whatever its version. Jump hashing rather than `hash mod M` because growing
//! from `M` to `M + 1` shards moves only about `1/(M + 1)` of the instances, all of them to the
//! new shard, where `mod` would move about `M/(M + 1)` of them.

use std::collections::BTreeMap;
use std::hash::Hasher as _;

use crate::config::{InstanceConfig, Sharding};

/// FNV-1a, 64 bits (the `fnv` crate's), of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = fnv::FnvHasher::default();
    h.write(bytes);
    h.finish()
}

/// Jump consistent hash: the bucket in `[0, buckets)` of `key`, exactly as in the paper.
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let buckets = i64::from(buckets.max(1));
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// The shard an instance belongs to (see the module docs): documented and fixed, so replicas
/// of any version agree without talking to each other.
pub fn shard_of(id: &str, total: u32) -> u32 {
    jump_hash(fnv1a64(id.as_bytes()), total)
}

/// The ordinal of a StatefulSet pod from its name (`<statefulset>-<ordinal>`).
pub fn ordinal_from_hostname(hostname: &str) -> Result<u32, String> {
    // A FQDN's first label is the pod name.
    let name = hostname.trim().split('.').next().unwrap_or_default();
    name.rsplit_once('-')
        .and_then(|(prefix, n)| {
            (!prefix.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse().ok())
                .flatten()
        })
        .ok_or_else(|| {
            format!("hostname {name:?} does not end in -<ordinal> like a StatefulSet pod's name")
        })
}

/// Static instances, then discovered ones not already configured, keeping only this shard's.
/// `discovered` is keyed by whatever produced the list (a discovery block and region), so one
/// source's refresh replaces only its own list. An instance both configured and discovered
/// keeps its static settings; its inventory labels are added unless a static label has the
/// same name.
pub fn effective<K>(
    configured: &[InstanceConfig],
    discovered: &BTreeMap<K, Vec<InstanceConfig>>,
    sharding: Sharding,
) -> Vec<InstanceConfig> {
    let mut out: BTreeMap<&str, InstanceConfig> = BTreeMap::new();
    for list in discovered.values() {
        for i in list {
            out.entry(i.id.as_str()).or_insert_with(|| i.clone());
        }
    }
    for i in configured {
        let merged = match out.remove(i.id.as_str()) {
            Some(found) => {
                let mut labels = found.labels;
                labels.extend(i.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
                InstanceConfig {
                    labels,
                    // A configured limit overrides the inventory's.
                    max_connections: i.max_connections.or(found.max_connections),
                    ..i.clone()
                }
            }
            None => i.clone(),
        };
        out.insert(i.id.as_str(), merged);
    }
    out.into_values()
        .filter(|i| shard_of(&i.id, sharding.total) == sharding.shard)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_wins_and_duplicates_merge() {
        let mut stat = InstanceConfig::new("r-a");
        stat.labels.insert("team".into(), "static".into());
        let mut disc = InstanceConfig::new("r-a");
        disc.labels.insert("team".into(), "inventory".into());
        disc.labels.insert("region".into(), "cn-hangzhou".into());
        let discovered: BTreeMap<String, Vec<InstanceConfig>> = [
            (
                "d0/cn-hangzhou".to_owned(),
                vec![disc, InstanceConfig::new("r-b")],
            ),
            (
                "d1/cn-beijing".to_owned(),
                vec![InstanceConfig::new("r-b"), InstanceConfig::new("r-c")],
            ),
        ]
        .into();
        let e = effective(&[stat], &discovered, Sharding::default());
        let ids: Vec<&str> = e.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, vec!["r-a", "r-b", "r-c"]);
        assert_eq!(e[0].labels["team"], "static");
        assert_eq!(
            e[0].labels["region"], "cn-hangzhou",
            "inventory labels kept"
        );
    }

    #[test]
    fn a_configured_limit_wins_over_the_inventorys() {
        let mut inventory = InstanceConfig::new("r-a");
        inventory.max_connections = Some(30_000);
        let mut limited = InstanceConfig::new("r-b");
        limited.max_connections = Some(10_000);
        let discovered: BTreeMap<String, Vec<InstanceConfig>> = [(
            "d0/cn-hangzhou".to_owned(),
            vec![inventory, limited.clone()],
        )]
        .into();
        limited.max_connections = Some(500);
        let configured = [InstanceConfig::new("r-a"), limited];
        let e = effective(&configured, &discovered, Sharding::default());
        let limits: Vec<Option<u64>> = e.iter().map(|i| i.max_connections).collect();
        assert_eq!(limits, [Some(30_000), Some(500)]);
    }

    #[test]
    fn shards_partition_the_fleet() {
        let all: Vec<InstanceConfig> = (0..500)
            .map(|n| InstanceConfig::new(format!("r-{n}")))
            .collect();
        let none: BTreeMap<String, Vec<InstanceConfig>> = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        for shard in 0..3 {
            let part = effective(&all, &none, Sharding { shard, total: 3 });
            assert!(part.len() > 130, "shard {shard} holds {}", part.len());
            for i in part {
                assert!(seen.insert(i.id), "an instance in two shards");
            }
        }
        assert_eq!(seen.len(), 500);
        assert_eq!(shard_of("anything", 1), 0);
        assert_eq!(shard_of("anything", 0), 0, "0 shards is treated as 1");
    }

    #[test]
    fn fixed_values_never_change() {
        // Replicas of different versions must agree: these values are part of the contract.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        // The published test vectors of the paper's algorithm (as in the Go implementations).
        for (key, buckets, want) in [
            (1u64, 1u32, 0u32),
            (42, 57, 43),
            (0xDEAD10CC, 1, 0),
            (0xDEAD10CC, 666, 361),
            (256, 1024, 520),
        ] {
            assert_eq!(jump_hash(key, buckets), want, "jump_hash({key}, {buckets})");
        }
        let pinned: Vec<u32> = ["r-bp1", "r-bp2", "r-uf6x", "r-2ze9"]
            .iter()
            .map(|id| shard_of(id, 5))
            .collect();
        assert_eq!(pinned, PINNED_SHARDS_OF_5);
    }

    /// Cross-checked with an independent implementation (Python) and frozen.
    const PINNED_SHARDS_OF_5: [u32; 4] = [4, 1, 4, 1];

    #[test]
    fn growing_moves_few_and_only_to_the_new_shard() {
        for m in 1..12u32 {
            let mut moved = 0;
            for n in 0..10_000 {
                let id = format!("r-{n:05}");
                let (a, b) = (shard_of(&id, m), shard_of(&id, m + 1));
                if a != b {
                    assert_eq!(b, m, "{id} moved from {a} to an old shard {b}");
                    moved += 1;
                }
            }
            let expected = 10_000.0 / f64::from(m + 1);
            assert!(
                (f64::from(moved) - expected).abs() < expected * 0.15,
                "{m} -> {}: {moved} moved, about {expected} expected",
                m + 1
            );
        }
    }

    #[test]
    fn ordinals() {
        assert_eq!(ordinal_from_hostname("redis-session-exporter-2"), Ok(2));
        assert_eq!(
            ordinal_from_hostname("exporter-10.svc.cluster.local"),
            Ok(10)
        );
        assert_eq!(ordinal_from_hostname(" x-0\n"), Ok(0));
        for bad in [
            "exporter",
            "exporter-",
            "-3",
            "exporter-a1",
            "exporter-99999999999",
            "",
        ] {
            assert!(ordinal_from_hostname(bad).is_err(), "{bad:?}");
        }
    }
}
