//! End to end, fleet scale: the real binary discovers instances from the simulator's
//! R-KVStore `DescribeInstances` (which checks signatures, paging and filters like the real
//! API), follows the inventory as it changes, survives failing refreshes; and several replicas
//! split the discovered fleet so that every instance is polled by exactly one of them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

const REGIONS: [&str; 3] = ["cn-hangzhou", "cn-beijing", "cn-shenzhen"];
const TEAMS: [&str; 3] = ["core", "pay", "search"];
const ARCHS: [&str; 3] = ["standard", "cluster", "rwsplit"];

/// One inventory entry, in the API's shape.
fn entry(id: &str, region: &str, status: &str, arch: &str, tags: &[(&str, &str)]) -> Value {
    json!({
        "InstanceId": id,
        "InstanceName": format!("name-{id}"),
        "ArchitectureType": arch,
        "InstanceStatus": status,
        "InstanceType": "Redis",
        "RegionId": region,
        "Tags": { "Tag": tags.iter().map(|(k, v)| json!({"Key": k, "Value": v})).collect::<Vec<_>>() },
    })
}

/// `n` instances per region, with a spread of tags, statuses and architectures.
fn inventory(n: usize, prefix: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for region in REGIONS {
        for i in 0..n {
            let id = format!("r-{prefix}{}-{i:04}", &region[3..]);
            let env = if i % 3 == 0 { "staging" } else { "prod" };
            // Busy instances (a failover, a resize, a migration) among the normal ones, and some
            // that hold no sessions at all.
            let status = match i % 17 {
                2 => "Changing",
                5 => "Creating",
                7 => "HASwitching",
                9 => "Released",
                11 => "Migrating",
                13 => "Inactive",
                15 => "NetworkModifying",
                _ => "Normal",
            };
            let mut tags = vec![("env", env), ("team", TEAMS[i % 3])];
            if i % 4 == 0 {
                tags.push(("app.kubernetes.io/name", "checkout"));
            }
            let mut e = entry(&id, region, status, ARCHS[i % 5 % 3], &tags);
            // The class's connection limit, sometimes written as a string, sometimes left out.
            match i % 5 {
                0 => {}
                1 => e["Connections"] = json!((10_000 * (i % 4 + 1)).to_string()),
                _ => e["Connections"] = json!(10_000 * (i % 4 + 1)),
            }
            out.push(e);
        }
    }
    out
}

/// What a block with `regions`, `tags = { env = "prod" }`, no `status` (every status but
/// `Creating`, `Released` and `Inactive`) and `exclude` must find, computed here from the raw
/// inventory.
fn expected(inv: &[Value], regions: &[&str], exclude: &[&str]) -> BTreeSet<String> {
    inv.iter()
        .filter(|i| regions.contains(&i["RegionId"].as_str().unwrap()))
        .filter(|i| {
            !["Creating", "Released", "Inactive"].contains(&i["InstanceStatus"].as_str().unwrap())
        })
        .filter(|i| {
            i["Tags"]["Tag"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["Key"] == "env" && t["Value"] == "prod")
        })
        .map(|i| i["InstanceId"].as_str().unwrap().to_owned())
        .filter(|id| !exclude.contains(&id.as_str()))
        .collect()
}

async fn put_json(addr: SocketAddr, path: &str, body: &Value) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = client
        .put(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "PUT {path}: {}", r.status());
}

async fn delete(addr: SocketAddr, path: &str) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    client
        .delete(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
}

/// The labels of a sample line `name{a="x",b="y"} v`.
fn labels(line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(start) = line.find('{') else {
        return out;
    };
    let mut rest = &line[start + 1..];
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim_start_matches(',').to_owned();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = 0;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = eq + 2 + i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(name, value);
        rest = &rest[end..];
        if rest.starts_with('}') {
            break;
        }
    }
    out
}

/// Every `redis_session_instance_info` line, by instance id.
fn info(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    text.lines()
        .filter(|l| l.starts_with("redis_session_instance_info{"))
        .map(|l| {
            let ls = labels(l);
            (ls["instance_id"].clone(), ls)
        })
        .collect()
}

fn ids(text: &str) -> BTreeSet<String> {
    info(text).into_keys().collect()
}

const SIM: &str = "seed = 3\nsessions = 3\n";

fn discovery_config(sim: SocketAddr, regions: &[&str], exclude: &[&str], extra: &str) -> String {
    format!(
        r#"
[das]
endpoint = "http://{sim}"
timeout = "5s"
[poll]
interval = "10m"
concurrency = 16
max_requests_per_second = 1000
[[discovery]]
regions = {regions:?}
tags = {{ env = "prod" }}
exclude = {exclude:?}
refresh = "1s"
endpoint = "http://{sim}"
{extra}
"#
    )
}

#[tokio::test]
async fn discovers_the_matching_set_follows_changes_and_survives_failures() {
    let (_sim, sim) = start_simulator(SIM);
    let mut inv = inventory(150, "");
    put_json(sim, "/_sim/inventory", &Value::Array(inv.clone())).await;
    let regions = ["cn-hangzhou", "cn-beijing"];
    let excluded = "r-hangzhou-0001";
    let mut want = expected(&inv, &regions, &[excluded]);
    assert!(want.len() > 150, "the test needs several pages per region");

    let (mut exporter, addr) =
        start_exporter(&discovery_config(sim, &regions, &[excluded], ""), &[]);
    wait_until("the discovered set", Duration::from_secs(90), || async {
        (ids(&scrape_text(addr).await) == want).then_some(())
    })
    .await;

    // Inventory facts are labels of the info series only.
    let text = scrape_text(addr).await;
    let l = &info(&text)["r-hangzhou-0004"];
    assert_eq!(l["instance_name"], "name-r-hangzhou-0004");
    assert_eq!(l["region"], "cn-hangzhou");
    assert_eq!(l["architecture"], "cluster"); // ARCHS[4 % 5 % 3]
    assert_eq!(l["status"], "Normal");
    // A failing-over instance is polled, its status shown.
    assert_eq!(info(&text)["r-hangzhou-0007"]["status"], "HASwitching");
    assert!(
        !want.contains("r-hangzhou-0005"),
        "Creating: nothing to poll"
    );
    // Each instance's connection limit is the inventory's `Connections`, absent where it is.
    for i in inv.iter() {
        let id = i["InstanceId"].as_str().unwrap();
        if !want.contains(id) {
            continue;
        }
        let limit = i["Connections"]
            .as_u64()
            .or_else(|| i["Connections"].as_str().and_then(|s| s.parse().ok()));
        assert_eq!(
            value(
                &text,
                &format!("redis_session_instance_max_connections{{instance_id=\"{id}\"}}")
            ),
            limit.map(|n| n as f64),
            "{id}"
        );
    }
    assert_eq!(l["tag_env"], "prod");
    assert_eq!(l["tag_team"], "pay");
    assert_eq!(l["tag_app_kubernetes_io_name"], "checkout");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("redis_sessions{") && l.contains("tag_env")),
        "inventory labels leaked onto session series"
    );
    for region in regions {
        let n = want.iter().filter(|id| id.contains(&region[3..])).count();
        assert_eq!(
            value(
                &text,
                &format!("redis_session_exporter_discovery_instances{{region=\"{region}\"}}")
            ),
            Some(n as f64),
            "{region}"
        );
        let ts = value(
            &text,
            &format!(
                "redis_session_exporter_discovery_last_success_timestamp_seconds{{region=\"{region}\"}}"
            ),
        )
        .unwrap();
        assert!(ts > 1.7e9, "{ts}");
    }
    assert!(!text.contains("region=\"cn-shenzhen\""));
    // Every page was asked for, signed correctly; the other region never.
    let stats = sim_stats(sim).await;
    assert_eq!(stats["rejected"], json!({}), "{stats}");
    // About 90 matches in a region: two pages of 50 at least.
    assert!(stats["describe_requests"]["cn-hangzhou"].as_u64().unwrap() >= 2);
    assert!(stats["describe_requests"].get("cn-shenzhen").is_none());
    // Each discovered instance was polled at DAS.
    for id in &want {
        assert!(stats["requests"][id].as_u64().unwrap_or(0) >= 1, "{id}");
    }

    // Additions and removals are followed within a few refreshes.
    let removed: Vec<String> = want.iter().take(12).cloned().collect();
    inv.retain(|i| !removed.contains(&i["InstanceId"].as_str().unwrap().to_owned()));
    inv.extend(inventory(3, "new").into_iter().map(|mut i| {
        i["Tags"]["Tag"] = json!([{"Key": "env", "Value": "prod"}]);
        i["InstanceStatus"] = json!("Normal");
        i
    }));
    put_json(sim, "/_sim/inventory", &Value::Array(inv.clone())).await;
    want = expected(&inv, &regions, &[excluded]);
    assert!(want.iter().any(|id| id.starts_with("r-newhangzhou")));
    wait_until(
        "additions and removals",
        Duration::from_secs(60),
        || async { (ids(&scrape_text(addr).await) == want).then_some(()) },
    )
    .await;
    let text = scrape_text(addr).await;
    for id in &removed {
        assert!(
            !text.contains(&format!("instance_id=\"{id}\"")),
            "{id}: series still exported after it left the inventory"
        );
    }

    // A failing refresh keeps the last known list and is counted.
    put_json(
        sim,
        "/_sim/faults/DescribeInstances@cn-hangzhou",
        &json!({"kind": "no_permission"}),
    )
    .await;
    let before_failure = want.clone();
    let gone: Vec<String> = want
        .iter()
        .filter(|id| id.contains("hangzhou"))
        .take(5)
        .cloned()
        .collect();
    inv.retain(|i| !gone.contains(&i["InstanceId"].as_str().unwrap().to_owned()));
    put_json(sim, "/_sim/inventory", &Value::Array(inv.clone())).await;
    let errors = "redis_session_exporter_discovery_errors_total{region=\"cn-hangzhou\",code=\"NoPermission\"}";
    wait_until(
        "failed refreshes counted",
        Duration::from_secs(30),
        || async { (value(&scrape_text(addr).await, errors).unwrap_or(0.0) >= 3.0).then_some(()) },
    )
    .await;
    let text = scrape_text(addr).await;
    assert_eq!(
        ids(&text),
        before_failure,
        "a failed refresh must keep the list"
    );
    assert!(
        exporter.child.try_wait().unwrap().is_none(),
        "exporter died"
    );
    assert!(
        exporter
            .output()
            .contains("discovery refresh failed; keeping the last known instances"),
        "{}",
        exporter.output()
    );

    // Once the inventory answers again, the list follows it.
    delete(sim, "/_sim/faults/DescribeInstances@cn-hangzhou").await;
    want = expected(&inv, &regions, &[excluded]);
    wait_until("recovery", Duration::from_secs(30), || async {
        (ids(&scrape_text(addr).await) == want).then_some(())
    })
    .await;
    assert!(exporter.terminate().success());
}

/// An instance that starts failing over stays polled by default, its `status` label following
/// it; a block with an explicit `status` still filters on it.
#[tokio::test]
async fn a_busy_instance_stays_and_an_explicit_status_filters() {
    let (_sim, sim) = start_simulator(SIM);
    let mut inv = inventory(20, "");
    put_json(sim, "/_sim/inventory", &Value::Array(inv.clone())).await;
    let (_default, by_default) =
        start_exporter(&discovery_config(sim, &["cn-hangzhou"], &[], ""), &[]);
    let (_normal, only_normal) = start_exporter(
        &discovery_config(sim, &["cn-hangzhou"], &[], "status = \"Normal\""),
        &[],
    );
    let normal = |inv: &[Value]| -> BTreeSet<String> {
        expected(inv, &["cn-hangzhou"], &[])
            .into_iter()
            .filter(|id| {
                inv.iter()
                    .any(|i| i["InstanceId"] == id.as_str() && i["InstanceStatus"] == "Normal")
            })
            .collect()
    };
    let (all, only) = (expected(&inv, &["cn-hangzhou"], &[]), normal(&inv));
    assert!(all.len() > only.len() && only.contains("r-hangzhou-0004"));
    wait_until("both sets", Duration::from_secs(60), || async {
        (ids(&scrape_text(by_default).await) == all && ids(&scrape_text(only_normal).await) == only)
            .then_some(())
    })
    .await;

    // r-hangzhou-0004 starts a failover.
    for i in inv.iter_mut() {
        if i["InstanceId"] == "r-hangzhou-0004" {
            i["InstanceStatus"] = json!("HASwitching");
        }
    }
    put_json(sim, "/_sim/inventory", &Value::Array(inv.clone())).await;
    let only = normal(&inv);
    assert!(!only.contains("r-hangzhou-0004"));
    wait_until("the failover seen", Duration::from_secs(60), || async {
        let text = scrape_text(by_default).await;
        let shown = info(&text)
            .get("r-hangzhou-0004")
            .and_then(|l| l.get("status").cloned());
        (ids(&text) == all
            && shown.as_deref() == Some("HASwitching")
            && value(&text, "redis_session_up{instance_id=\"r-hangzhou-0004\"}") == Some(1.0)
            && ids(&scrape_text(only_normal).await) == only)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_reload_restarts_discovery_with_the_new_blocks() {
    let (_sim, sim) = start_simulator(SIM);
    let inv = inventory(60, "");
    put_json(sim, "/_sim/inventory", &Value::Array(inv.clone())).await;
    let (mut exporter, addr) = start_exporter_with(
        &discovery_config(sim, &["cn-hangzhou"], &[], ""),
        &[],
        &[LIFECYCLE],
    );
    let hangzhou = expected(&inv, &["cn-hangzhou"], &[]);
    wait_until(
        "the first region's set",
        Duration::from_secs(60),
        || async { (ids(&scrape_text(addr).await) == hangzhou).then_some(()) },
    )
    .await;

    // The new file moves discovery to another region and shards in two.
    std::fs::write(
        exporter.dir.join("config.toml"),
        discovery_config(sim, &["cn-beijing"], &[], "")
            + "[sharding]\nshard = 1\ntotal_shards = 2\n",
    )
    .unwrap();
    let (status, body) = post(addr, "/-/reload").await;
    assert_eq!(status, 200, "reload: {body}");
    let beijing_shard_1: BTreeSet<String> = expected(&inv, &["cn-beijing"], &[])
        .into_iter()
        .filter(|id| redis_session_exporter::fleet::shard_of(id, 2) == 1)
        .collect();
    assert!(!beijing_shard_1.is_empty());
    wait_until(
        "the new region's set, sharded",
        Duration::from_secs(60),
        || async { (ids(&scrape_text(addr).await) == beijing_shard_1).then_some(()) },
    )
    .await;
    let text = scrape_text(addr).await;
    assert!(
        !text.contains("region=\"cn-hangzhou\""),
        "old region still exported"
    );
    assert_eq!(
        value(&text, "redis_session_exporter_total_shards"),
        Some(2.0)
    );
    assert_eq!(
        value(&text, "redis_session_exporter_shard_ordinal"),
        Some(1.0)
    );
    assert!(exporter.terminate().success());
}

/// Starts the exporter with extra arguments; returns it and its address.
fn start_replica(config: &str, args: &[&str], env: &[(&str, &str)]) -> (Proc, SocketAddr) {
    let mut all_args = vec!["--config", "config.toml", "--listen", "127.0.0.1:0"];
    all_args.extend_from_slice(args);
    let mut all_env = vec![
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", SIM_KEY_ID),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SIM_KEY_SECRET),
    ];
    all_env.extend_from_slice(env);
    let p = spawn(&all_args, &all_env, &[("config.toml", config)]);
    let addr = exporter_addr(&p);
    (p, addr)
}

/// Waits until each replica exports its part and together they cover `want`; returns the
/// instances of each replica. Checks the shard gauges on the way.
async fn assignment(
    replicas: &[(Proc, SocketAddr)],
    want: &BTreeSet<String>,
) -> Vec<BTreeSet<String>> {
    wait_until("every instance polled", Duration::from_secs(90), || async {
        let mut parts = Vec::new();
        for (_, addr) in replicas {
            parts.push(ids(&scrape_text(*addr).await));
        }
        let union: BTreeSet<String> = parts.iter().flatten().cloned().collect();
        let sum: usize = parts.iter().map(BTreeSet::len).sum();
        (union == *want && sum == want.len()).then_some(parts)
    })
    .await
}

/// The simulator's request count of every instance equals the polls one replica, and only
/// one, reports for it: no instance is polled by two replicas, none is left out.
async fn polled_by_exactly_one(
    sim: SocketAddr,
    replicas: &[(Proc, SocketAddr)],
    want: &BTreeSet<String>,
) {
    let outcome = wait_until_or_last(Duration::from_secs(30), || async {
        let stats = sim_stats(sim).await;
        let seen: BTreeMap<String, u64> = stats["requests"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
            .collect();
        let mut reported: BTreeMap<String, Vec<(usize, u64)>> = BTreeMap::new();
        for (n, (_, addr)) in replicas.iter().enumerate() {
            for (series, v) in samples(&scrape_text(*addr).await) {
                if let Some(rest) =
                    series.strip_prefix("redis_session_exporter_polls_total{instance_id=\"")
                {
                    let id = rest.split('"').next().unwrap().to_owned();
                    reported.entry(id).or_default().push((n, v as u64));
                }
            }
        }
        let mut problems = Vec::new();
        if seen.keys().collect::<BTreeSet<_>>() != want.iter().collect::<BTreeSet<_>>() {
            problems.push(format!(
                "the simulator saw {} instances, {} expected",
                seen.len(),
                want.len()
            ));
        }
        for id in want {
            match reported.get(id).map(Vec::as_slice) {
                Some([(_, polls)]) if Some(polls) == seen.get(id) => {}
                other => problems.push(format!(
                    "{id}: simulator {:?}, replicas {other:?}",
                    seen.get(id)
                )),
            }
        }
        problems
    })
    .await;
    assert!(
        outcome.is_empty(),
        "{:#?}",
        &outcome[..outcome.len().min(10)]
    );
}

/// Retries `f` until it returns no problems or `timeout` passes; returns the last problems.
async fn wait_until_or_last<F, Fut>(timeout: Duration, mut f: F) -> Vec<String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let end = std::time::Instant::now() + timeout;
    loop {
        let problems = f().await;
        if problems.is_empty() || std::time::Instant::now() > end {
            return problems;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn replicas_split_the_discovered_fleet() {
    let (_sim, sim) = start_simulator(SIM);
    let inv = inventory(200, "");
    put_json(sim, "/_sim/inventory", &Value::Array(inv.clone())).await;
    let regions = ["cn-hangzhou", "cn-beijing", "cn-shenzhen"];
    let want = expected(&inv, &regions, &[]);
    assert!(want.len() > 300);

    // Three ways to say which shard: flags, the config file, and a StatefulSet pod name.
    let base = discovery_config(sim, &regions, &[], "");
    let three = vec![
        start_replica(&base, &["--shard", "0", "--total-shards", "3"], &[]),
        start_replica(
            &format!("{base}\n[sharding]\nshard = 1\ntotal_shards = 3\n"),
            &[],
            &[],
        ),
        start_replica(
            &base,
            &["--shard-from-hostname"],
            &[
                ("HOSTNAME", "redis-session-exporter-2"),
                ("REDIS_SESSION_EXPORTER_SHARDING__TOTAL_SHARDS", "3"),
            ],
        ),
    ];
    let parts3 = assignment(&three, &want).await;
    for (n, (_, addr)) in three.iter().enumerate() {
        let text = scrape_text(*addr).await;
        assert_eq!(
            value(&text, "redis_session_exporter_shard_ordinal"),
            Some(n as f64)
        );
        assert_eq!(
            value(&text, "redis_session_exporter_total_shards"),
            Some(3.0)
        );
        assert!(
            parts3[n].len() > want.len() / 5,
            "shard {n}: {}",
            parts3[n].len()
        );
    }
    polled_by_exactly_one(sim, &three, &want).await;
    drop(three);

    // Four replicas: a bounded share moves, and only to the new shard.
    delete(sim, "/_sim/stats").await;
    let four: Vec<(Proc, SocketAddr)> = (0..4)
        .map(|n| {
            start_replica(
                &base,
                &["--shard", &n.to_string(), "--total-shards", "4"],
                &[],
            )
        })
        .collect();
    let parts4 = assignment(&four, &want).await;
    let mut moved = 0;
    for id in &want {
        let before = parts3.iter().position(|p| p.contains(id)).unwrap();
        let after = parts4.iter().position(|p| p.contains(id)).unwrap();
        if before != after {
            assert_eq!(
                after, 3,
                "{id} moved from shard {before} to old shard {after}"
            );
            moved += 1;
        }
    }
    let share = moved as f64 / want.len() as f64;
    assert!(
        (0.15..=0.35).contains(&share),
        "{moved} of {} instances moved ({share:.2}); about 1/4 expected",
        want.len()
    );
    polled_by_exactly_one(sim, &four, &want).await;
}

/// A `[[discovery]]` block polls at most 10,000 instances, all its regions together: with
/// 6,000 in each of two regions, the first region by name is kept whole and the second up to the
/// bound, in id order; the rest are ignored with a warning.
#[tokio::test]
async fn a_block_polls_at_most_ten_thousand_instances_across_its_regions() {
    const PER_REGION: usize = 6_000;
    const MAX: usize = 10_000;
    let (_sim, sim) = start_simulator(SIM);
    // Minimal entries: the simulator's JSON body limit (2 MB) must hold 12,000 of them.
    let region_list = ["cn-hangzhou", "cn-beijing"];
    let inv: Vec<Value> = region_list
        .iter()
        .flat_map(|region| {
            (0..PER_REGION).map(move |i| {
                json!({"InstanceId": format!("r-{}-{i:05}", &region[3..]),
                       "RegionId": region, "InstanceStatus": "Normal"})
            })
        })
        .collect();
    put_json(sim, "/_sim/inventory", &Value::Array(inv)).await;
    // cn-beijing sorts first: all of it, then cn-hangzhou's lowest ids up to the bound.
    let want: BTreeSet<String> = (0..PER_REGION)
        .map(|i| format!("r-beijing-{i:05}"))
        .chain((0..MAX - PER_REGION).map(|i| format!("r-hangzhou-{i:05}")))
        .collect();
    let config = format!(
        "[das]\nendpoint = \"http://{sim}\"\ntimeout = \"5s\"\n[poll]\ninterval = \"24h\"\n\
         [[discovery]]\nregions = {region_list:?}\nrefresh = \"1h\"\nendpoint = \"http://{sim}\"\n"
    );
    let (exporter, addr) = start_exporter(&config, &[]);
    // The landing page lists every instance polled, pending ones too (/metrics shows an
    // instance only after its first poll, and the 24 h interval spreads those over the day).
    let listed = || async {
        let (_, _, body) = get(addr, "/", &[]).await;
        String::from_utf8_lossy(&body)
            .split("<tr><td>")
            .skip(1)
            .filter_map(|row| row.split_once("</td>").map(|(id, _)| id.to_owned()))
            .collect::<BTreeSet<String>>()
    };
    let problems = wait_until_or_last(Duration::from_secs(120), || async {
        let got = listed().await;
        if got == want {
            return vec![];
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        vec![format!(
            "{} instances polled, want {MAX}; outside the expected set: {:?}",
            got.len(),
            got.difference(&want).take(5).collect::<Vec<_>>()
        )]
    })
    .await;
    assert!(problems.is_empty(), "{problems:?}");
    let out = exporter.output();
    assert!(
        out.contains("found more instances than it may poll") && out.contains("dropped=2000"),
        "{out}"
    );
}

#[test]
fn bad_fleet_settings_are_refused_with_the_key() {
    let six_tags = "[[discovery]]\nregions = [\"cn-hangzhou\"]\ntags = { a = \"1\", b = \"2\", c = \"3\", d = \"4\", e = \"5\", f = \"6\" }\nrefresh = \"10ms\"\narchitecture = \"ring\"\n[[discovery]]\nregions = []\n";
    let mut p = spawn(
        &["check-config", "--config", "c.toml"],
        &[],
        &[("c.toml", six_tags)],
    );
    let status = wait_exited(&mut p);
    assert!(!status.success());
    let out = p.output();
    for key in [
        "discovery[0].tags",
        "discovery[0].refresh",
        "discovery[0].architecture",
        "discovery[1].regions",
    ] {
        assert!(out.contains(&format!("`{key}`")), "{key}: {out}");
    }

    let ok = "[[instances]]\nid = \"r-1\"\n";
    let mut p = spawn(
        &[
            "check-config",
            "--config",
            "c.toml",
            "--shard",
            "3",
            "--total-shards",
            "3",
        ],
        &[],
        &[("c.toml", ok)],
    );
    assert!(!wait_exited(&mut p).success());
    assert!(p.output().contains("`sharding.shard`"), "{}", p.output());

    let mut p = spawn(
        &[
            "check-config",
            "--config",
            "c.toml",
            "--shard-from-hostname",
        ],
        &[
            ("HOSTNAME", "exporter"),
            ("REDIS_SESSION_EXPORTER_SHARDING__TOTAL_SHARDS", "2"),
        ],
        &[("c.toml", ok)],
    );
    assert!(!wait_exited(&mut p).success());
    assert!(
        p.output().contains("--shard-from-hostname"),
        "{}",
        p.output()
    );

    let mut p = spawn(
        &[
            "check-config",
            "--config",
            "c.toml",
            "--shard-from-hostname",
        ],
        &[
            ("HOSTNAME", "exporter-1"),
            ("REDIS_SESSION_EXPORTER_SHARDING__TOTAL_SHARDS", "2"),
        ],
        &[("c.toml", ok)],
    );
    assert!(wait_exited(&mut p).success(), "{}", p.output());
    assert!(p.output().contains("shard = 1"), "{}", p.output());
    assert!(p.output().contains("total_shards = 2"), "{}", p.output());
}
