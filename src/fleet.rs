//! The set of instances this replica polls: the configured ones, plus discovered ones (static
//! settings win), restricted to this replica's shard. Pure, so every rule is unit-tested.

use std::collections::BTreeMap;

use crate::config::InstanceConfig;

/// Which part of the fleet this replica owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sharding {
    pub shard: u32,
    pub total: u32,
}

impl Default for Sharding {
    fn default() -> Self {
        Self { shard: 0, total: 1 }
    }
}

/// The shard an instance belongs to: FNV-1a (64-bit) of the instance id's UTF-8 bytes, modulo
/// `total`. Documented and fixed, so replicas of any version agree without talking.
pub fn shard_of(id: &str, total: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(total.max(1))) as u32
}

/// Static instances, then discovered ones not already configured, keeping only this shard's.
/// `discovered` is keyed by whatever produced the list (a discovery block and region), so one
/// source's refresh replaces only its own list.
pub fn effective(
    configured: &[InstanceConfig],
    discovered: &BTreeMap<String, Vec<InstanceConfig>>,
    sharding: Sharding,
) -> Vec<InstanceConfig> {
    let mut out: BTreeMap<&str, &InstanceConfig> = BTreeMap::new();
    for list in discovered.values() {
        for i in list {
            out.entry(i.id.as_str()).or_insert(i);
        }
    }
    for i in configured {
        // Static settings win over the inventory's.
        out.insert(i.id.as_str(), i);
    }
    out.into_values()
        .filter(|i| shard_of(&i.id, sharding.total) == sharding.shard)
        .cloned()
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
    }

    #[test]
    fn shards_partition_the_fleet() {
        let all: Vec<InstanceConfig> = (0..500)
            .map(|n| InstanceConfig::new(format!("r-{n}")))
            .collect();
        let none = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        for shard in 0..3 {
            let part = effective(&all, &none, Sharding { shard, total: 3 });
            assert!(part.len() > 100, "shard {shard} holds {}", part.len());
            for i in part {
                assert!(seen.insert(i.id), "an instance in two shards");
            }
        }
        assert_eq!(seen.len(), 500);
        assert_eq!(shard_of("anything", 1), 0);
    }
}
