//! Discovery at fleet scale: decoding and selecting 5,000 instances (100 DescribeInstances
//! pages of 50), then merging and sharding them, timed against a baseline measured in the same
//! run — `serde_json` skipping the same bytes (`IgnoredAny`), the least any JSON decoder must
//! do. The ratio, not the absolute time, is the figure to watch: it does not depend on the
//! machine. A generic `serde_json::Value` decode of the same pages is printed as a second
//! reference. Run with `cargo bench --bench discovery`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use redis_session_exporter::config::{DiscoveryConfig, Sharding};
use redis_session_exporter::discovery::{decode_page, select, PAGE_SIZE};
use redis_session_exporter::fleet::effective;

const INSTANCES: usize = 5_000;

/// The pages the API would serve for `INSTANCES` instances, with realistic extra fields.
fn pages() -> Vec<Vec<u8>> {
    let per = PAGE_SIZE as usize;
    (0..INSTANCES.div_ceil(per))
        .map(|p| {
            let list: Vec<serde_json::Value> = (p * per..((p + 1) * per).min(INSTANCES))
                .map(|i| {
                    let arch = ["standard", "cluster", "rwsplit"][i % 3];
                    let team = ["core", "pay", "search"][i % 3];
                    serde_json::json!({
                        "InstanceId": format!("r-bp1{i:08x}"),
                        "InstanceName": format!("orders-cache-{i}"),
                        "ArchitectureType": arch,
                        "InstanceStatus": "Normal",
                        "InstanceType": "Redis",
                        "RegionId": "cn-hangzhou",
                        "ZoneId": "cn-hangzhou-h",
                        "Capacity": 4096, "Bandwidth": 96, "Connections": 20000, "QPS": 100000,
                        "ChargeType": "PrePaid", "NetworkType": "VPC", "VpcId": "vpc-bp1xxxx",
                        "VSwitchId": "vsw-bp1xxxx", "PrivateIp": "10.0.0.1", "Port": 6379,
                        "ConnectionDomain": format!("r-bp1{i:08x}.redis.rds.aliyuncs.com"),
                        "CreateTime": "2024-01-01T00:00:00Z", "EndTime": "2026-01-01T00:00:00Z",
                        "EngineVersion": "7.0", "ResourceGroupId": "rg-acfmxxxx",
                        "Tags": {"Tag": [
                            {"Key": "env", "Value": "prod"},
                            {"Key": "team", "Value": team},
                            {"Key": "app.kubernetes.io/name", "Value": "checkout"},
                        ]},
                    })
                })
                .collect();
            serde_json::to_vec(&serde_json::json!({
                "RequestId": "B3F6A1C0-0000-0000-0000-000000000000",
                "PageNumber": p + 1, "PageSize": per, "TotalCount": INSTANCES,
                "Instances": {"KVStoreInstance": list},
            }))
            .unwrap()
        })
        .collect()
}

/// Median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut t: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    t.sort();
    t[runs / 2]
}

fn main() {
    let pages = pages();
    let bytes: usize = pages.iter().map(Vec::len).sum();
    let cfg: DiscoveryConfig =
        toml::from_str("regions = [\"cn-hangzhou\"]\ntags = { env = \"prod\" }").unwrap();
    let runs = 31;
    // Warm up both.
    for p in &pages {
        black_box(decode_page(p).unwrap());
    }

    let baseline = median(runs, || {
        for p in &pages {
            black_box(serde_json::from_slice::<serde::de::IgnoredAny>(p).unwrap());
        }
    });
    let generic = median(runs, || {
        for p in &pages {
            black_box(serde_json::from_slice::<serde_json::Value>(p).unwrap());
        }
    });
    let decode_only = median(runs, || {
        for p in &pages {
            black_box(decode_page(p).unwrap());
        }
    });
    let mut found = Vec::new();
    let decode = median(runs, || {
        let mut all = Vec::with_capacity(INSTANCES);
        for p in &pages {
            all.extend(decode_page(p).unwrap().instances);
        }
        found = black_box(select(&cfg, "cn-hangzhou", &all));
    });
    assert_eq!(found.len(), INSTANCES);
    let discovered: BTreeMap<String, _> = [("discovery#0[0]/cn-hangzhou".to_owned(), found)].into();
    let shard = median(runs, || {
        black_box(effective(&[], &discovered, Sharding { shard: 1, total: 4 }));
    });

    println!(
        "discovery of {INSTANCES} instances ({} pages, {:.1} MiB), median of {runs} runs:",
        pages.len(),
        bytes as f64 / (1024.0 * 1024.0)
    );
    println!("  baseline  serde_json IgnoredAny        {baseline:>12.3?}");
    println!(
        "  reference serde_json::Value (a naive decode) {generic:>7.3?}   {:.2}x baseline",
        generic.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "  decode only                             {decode_only:>12.3?}   {:.2}x baseline",
        decode_only.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "  decode + select (labels, filters)       {decode:>12.3?}   {:.2}x baseline   {:.0} ns/instance",
        decode.as_secs_f64() / baseline.as_secs_f64(),
        decode.as_nanos() as f64 / INSTANCES as f64
    );
    println!(
        "  merge + shard filter (fleet::effective) {shard:>12.3?}   {:.2}x baseline",
        shard.as_secs_f64() / baseline.as_secs_f64()
    );
}
