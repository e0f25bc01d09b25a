//! Attribution end to end: the real binary, the project's DAS simulator, and the Kubernetes API
//! stand-in (`simulator::k8s`, in this process) reached through a KUBECONFIG file. The
//! by-workload figures are checked against a computation made here from the simulator's raw
//! answer and the test's own table of which IP is which pod, network or nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use redis_session_exporter::simulator::k8s::{self, K8sConfig, K8sHandle, Resource};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::common::*;

const INSTANCE: &str = "r-attr";

fn sim_toml(sessions: usize) -> String {
    format!("seed = 42\n[instances.{INSTANCE}]\nsessions = {sessions}\n")
}

/// One session of the raw answer: what the by-workload families are made of.
struct Session {
    client: String,
    idle: u64,
    omem: u64,
}

fn num(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(s) => s.parse().unwrap(),
        _ => panic!("not a number: {v}"),
    }
}

async fn raw_sessions(sim: SocketAddr) -> Vec<Session> {
    let (status, _, body) = get(sim, &format!("/_sim/answer/{INSTANCE}"), &[]).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    v["Data"]["Sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Session {
            client: s["Client"].as_str().unwrap().to_owned(),
            idle: num(&s["Idle"]),
            omem: num(&s["Omem"]),
        })
        .collect()
}

/// The distinct client IPs of an answer, most sessions first (ties by address).
fn clients_by_count(sessions: &[Session]) -> Vec<(String, u64)> {
    let mut n: BTreeMap<&str, u64> = BTreeMap::new();
    for s in sessions {
        *n.entry(&s.client).or_default() += 1;
    }
    let mut v: Vec<(String, u64)> = n.into_iter().map(|(k, c)| (k.to_owned(), c)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

/// `(namespace, workload, kind)`: the labels of one by-workload series.
type Who = (String, String, String);

fn who(ns: &str, name: &str, kind: &str) -> Who {
    (ns.into(), name.into(), kind.into())
}

/// sessions, long idle, largest output buffer.
type Figures = (u64, u64, u64);

fn expected(sessions: &[Session], holder: impl Fn(&str) -> Who) -> BTreeMap<Who, Figures> {
    let mut out: BTreeMap<Who, Figures> = BTreeMap::new();
    for s in sessions {
        let f = out.entry(holder(&s.client)).or_default();
        f.0 += 1;
        if s.idle >= 600 {
            f.1 += 1;
        }
        f.2 = f.2.max(s.omem);
    }
    out
}

/// Parses the labels of every series of `family` for our instance.
fn series(text: &str, family: &str) -> BTreeMap<Who, f64> {
    let mut out = BTreeMap::new();
    for (k, v) in samples(text) {
        let Some(rest) = k.strip_prefix(family).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let labels = parse_labels(rest.trim_end_matches('}'));
        if labels.get("instance_id").map(String::as_str) != Some(INSTANCE) {
            continue;
        }
        assert_eq!(
            labels.len(),
            4,
            "{family}: instance_id and three source_ labels: {k}"
        );
        let key = who(
            &labels["source_namespace"],
            &labels["source_workload"],
            &labels["source_kind"],
        );
        assert!(out.insert(key, v).is_none(), "duplicate series {k}");
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim_start_matches(',').to_owned();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = 0;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
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
    }
    out
}

fn figures_of(text: &str) -> BTreeMap<Who, Figures> {
    let sessions = series(text, "redis_sessions_by_workload");
    let idle = series(text, "redis_sessions_long_idle_by_workload");
    let omem = series(text, "redis_session_output_buffer_max_bytes_by_workload");
    assert_eq!(
        sessions.keys().collect::<Vec<_>>(),
        idle.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        sessions.keys().collect::<Vec<_>>(),
        omem.keys().collect::<Vec<_>>()
    );
    sessions
        .into_iter()
        .map(|(k, n)| {
            let f = (n as u64, idle[&k] as u64, omem[&k] as u64);
            (k, f)
        })
        .collect()
}

async fn start_api(cfg: K8sConfig) -> (K8sHandle, CancellationToken) {
    let stop = CancellationToken::new();
    let api = k8s::spawn("127.0.0.1:0".parse().unwrap(), cfg, stop.clone())
        .await
        .unwrap();
    (api, stop)
}

/// Starts the exporter with `config` and a kubeconfig file holding `kubeconfig`.
fn start_with_kubeconfig(config: &str, kubeconfig: &str) -> (Proc, SocketAddr) {
    let p = spawn(
        &["--config", "config.toml", "--listen", "127.0.0.1:0"],
        &[
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", SIM_KEY_ID),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SIM_KEY_SECRET),
            ("KUBECONFIG", "kubeconfig.yaml"),
        ],
        &[("config.toml", config), ("kubeconfig.yaml", kubeconfig)],
    );
    let addr = exporter_addr(&p);
    (p, addr)
}

fn exporter_config(sim: SocketAddr, extra: &str) -> String {
    format!(
        "[das]\nendpoint = \"http://{sim}\"\ntimeout = \"5s\"\n[poll]\ninterval = \"1s\"\n\
         [[instances]]\nid = \"{INSTANCE}\"\n{extra}"
    )
}

/// `redis_sessions` of our instance, summed over its nodes.
fn sessions_of(text: &str) -> f64 {
    series_of(text, "redis_sessions", INSTANCE).values().sum()
}

/// Scrapes until `f` accepts the text.
async fn scrape_until(exporter: SocketAddr, what: &str, f: impl Fn(&str) -> bool) -> String {
    wait_until(what, Duration::from_secs(20), || async {
        let t = scrape_text(exporter).await;
        f(&t).then_some(t)
    })
    .await
}

fn ip_in(subnet: &str, ip: &str) -> bool {
    let (net, len) = subnet.split_once('/').unwrap();
    let len: u32 = len.parse().unwrap();
    let net = u32::from(net.parse::<Ipv4Addr>().unwrap());
    let Ok(ip) = ip.parse::<Ipv4Addr>() else {
        return false;
    };
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    (u32::from(ip) & mask) == (net & mask)
}

/// Pods of a Deployment, a StatefulSet, a CronJob's Job and a bare pod, two networks and the
/// rest unknown; then a pod added, one deleted and its IP reused while the exporter runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_attributed_to_workloads_networks_and_unknown() {
    let (_sim_proc, sim) = start_simulator(&sim_toml(600));
    let raw = raw_sessions(sim).await;
    let clients = clients_by_count(&raw);
    assert!(
        clients.len() >= 12,
        "the test needs a dozen client IPs, got {}",
        clients.len()
    );
    // The simulator's clients are 10.S.0.2 and up. The networks hold the highest addresses:
    // `office` a /30, and inside it `batch-vpc` a /31 (the longest prefix wins there); the pods
    // take the busiest addresses outside them, and what is left is unknown.
    let octet = |c: &str| -> u32 { c.rsplit_once('.').unwrap().1.parse().unwrap() };
    let base = clients[0].0.rsplit_once('.').unwrap().0.to_owned();
    let top = clients.iter().map(|c| octet(&c.0)).max().unwrap();
    let office = format!("{base}.{}/30", top & !3);
    let batch_vpc = format!("{base}.{}/31", top & !1);
    let outside: Vec<String> = clients
        .iter()
        .map(|c| c.0.clone())
        .filter(|c| !ip_in(&office, c))
        .collect();
    assert!(outside.len() >= 9, "{outside:?}");
    let ip = |i: usize| outside[i].clone();

    let (api, _stop) = start_api(K8sConfig::default()).await;
    api.apply(k8s::owner_object(
        "ReplicaSet",
        "shop",
        "cart-7c9d8",
        Some(("Deployment", "cart")),
    ));
    api.apply(k8s::owner_object(
        "Job",
        "batch",
        "report-29001",
        Some(("CronJob", "report")),
    ));
    // Two pods of the Deployment, so one workload gathers two IPs.
    api.apply(k8s::pod(
        "shop",
        "cart-7c9d8-a",
        &ip(0),
        Some(("ReplicaSet", "cart-7c9d8")),
    ));
    api.apply(k8s::pod(
        "shop",
        "cart-7c9d8-b",
        &ip(3),
        Some(("ReplicaSet", "cart-7c9d8")),
    ));
    api.apply(k8s::pod(
        "db",
        "proxy-0",
        &ip(1),
        Some(("StatefulSet", "proxy")),
    ));
    api.apply(k8s::pod(
        "batch",
        "report-29001-x",
        &ip(2),
        Some(("Job", "report-29001")),
    ));
    api.apply(k8s::pod("dev", "debug", &ip(4), None));
    // A host-network pod claims no IP, even its own node's.
    let mut host = k8s::pod(
        "kube-system",
        "node-agent",
        &ip(5),
        Some(("DaemonSet", "node-agent")),
    );
    host["spec"]["hostNetwork"] = true.into();
    api.apply(host);
    let pods: BTreeMap<String, Who> = [
        (ip(0), who("shop", "cart", "Deployment")),
        (ip(3), who("shop", "cart", "Deployment")),
        (ip(1), who("db", "proxy", "StatefulSet")),
        (ip(2), who("batch", "report", "CronJob")),
        (ip(4), who("dev", "debug", "Pod")),
    ]
    .into();
    let config = exporter_config(
        sim,
        &format!(
            "[attribution]\nidle_threshold = \"10m\"\nnetworks = [\n  \
             {{ cidr = \"{office}\", name = \"office\" }},\n  \
             {{ cidr = \"{batch_vpc}\", name = \"batch-vpc\" }},\n]\n\
             [attribution.kubernetes]\nenabled = true\nnamespaces = []\n"
        ),
    );
    let (mut exporter, addr) = start_with_kubeconfig(&config, &api.kubeconfig());

    let holder = |pods: &BTreeMap<String, Who>, c: &str| -> Who {
        if let Some(w) = pods.get(c) {
            w.clone()
        } else if ip_in(&batch_vpc, c) {
            who("", "batch-vpc", "network")
        } else if ip_in(&office, c) {
            who("", "office", "network")
        } else {
            who("", "unknown", "unknown")
        }
    };
    let want = expected(&raw, |c| holder(&pods, c));
    let kinds: BTreeSet<&str> = want.keys().map(|w| w.2.as_str()).collect();
    assert!(
        kinds.is_superset(&["Deployment", "StatefulSet", "CronJob", "Pod", "network"].into()),
        "the test data covers every kind: {kinds:?}"
    );
    let text = scrape_until(addr, "attributed figures", |t| figures_of(t) == want).await;
    let total: f64 = series(&text, "redis_sessions_by_workload").values().sum();
    assert_eq!(
        total as usize,
        raw.len(),
        "the series add up to every session"
    );
    let text = scrape_until(addr, "five pod IPs known", |t| {
        value(t, "redis_session_exporter_attribution_pods") == Some(5.0)
    })
    .await;
    assert!(
        !text.contains("redis_session_exporter_attribution_errors_total{"),
        "no failed call yet:\n{text}"
    );
    // The API saw a metadata-only read of ReplicaSets and Jobs, and whole pods.
    assert!(api.counts(Resource::ReplicaSets).metadata_only > 0);
    assert!(api.counts(Resource::Jobs).metadata_only > 0);
    assert_eq!(api.counts(Resource::Pods).metadata_only, 0);

    // While it runs: a pod appears on an unknown IP, the bare pod is deleted (its connections
    // stay named for the grace period), then its IP goes to a new pod at once.
    let unknown_ip = clients
        .iter()
        .map(|c| c.0.clone())
        .find(|c| holder(&pods, c).2 == "unknown")
        .expect("an unknown IP");
    let mut pods = pods;
    api.apply(k8s::pod(
        "web",
        "late-0",
        &unknown_ip,
        Some(("StatefulSet", "late")),
    ));
    pods.insert(unknown_ip.clone(), who("web", "late", "StatefulSet"));
    let want = expected(&raw, |c| holder(&pods, c));
    scrape_until(addr, "the added pod", |t| figures_of(t) == want).await;

    assert!(api.delete(Resource::Pods, "dev", "debug"));
    let marker = clients
        .iter()
        .map(|c| c.0.clone())
        .find(|c| holder(&pods, c).2 == "unknown")
        .expect("another unknown IP");
    api.apply(k8s::pod("web", "marker", &marker, None));
    pods.insert(marker, who("web", "marker", "Pod"));
    let want = expected(&raw, |c| holder(&pods, c));
    // The marker was created after the deletion: once it shows, the deletion was seen too.
    let text = scrape_until(addr, "the marker pod", |t| figures_of(t) == want).await;
    assert!(
        figures_of(&text).contains_key(&who("dev", "debug", "Pod")),
        "a deleted pod keeps its IP for the grace period"
    );
    api.apply(k8s::pod(
        "shop",
        "cart-7c9d8-c",
        &ip(4),
        Some(("ReplicaSet", "cart-7c9d8")),
    ));
    pods.insert(ip(4), who("shop", "cart", "Deployment"));
    let want = expected(&raw, |c| holder(&pods, c));
    let text = scrape_until(addr, "the reused IP", |t| figures_of(t) == want).await;
    assert!(!figures_of(&text).contains_key(&who("dev", "debug", "Pod")));
    // The token never shows.
    assert!(!exporter.output().contains("fake-kube-token-not-real"));
    assert!(!text.contains("fake-kube-token-not-real"));
    exporter.terminate();
}

/// The exporter works unchanged when the API is unreachable, and counts the failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_leaves_networks_and_unknown() {
    let (_sim_proc, sim) = start_simulator(&sim_toml(200));
    let raw = raw_sessions(sim).await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: c\n  cluster:\n    server: http://{closed}\n\
         users:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n"
    );
    let base = raw[0].client.rsplit_once('.').unwrap().0.to_owned();
    // The lower addresses stay unknown.
    let net = format!("{base}.8/29");
    let config = exporter_config(
        sim,
        &format!(
            "[attribution]\nnetworks = [{{ cidr = \"{net}\", name = \"vpc\" }}]\n\
             [attribution.kubernetes]\nenabled = true\n"
        ),
    );
    let (_exporter, addr) = start_with_kubeconfig(&config, &kubeconfig);
    let want = expected(&raw, |c| {
        if ip_in(&net, c) {
            who("", "vpc", "network")
        } else {
            who("", "unknown", "unknown")
        }
    });
    let text = scrape_until(addr, "figures and a connection error", |t| {
        figures_of(t) == want
            && value(
                t,
                "redis_session_exporter_attribution_errors_total{code=\"connection\"}",
            )
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    assert_eq!(
        value(&text, "redis_session_exporter_attribution_pods"),
        Some(0.0)
    );
    assert_eq!(sessions_of(&text), raw.len() as f64);
    let (status, _, _) = get(addr, "/readyz", &[]).await;
    assert_eq!(status, 200, "readiness does not wait for Kubernetes");
}

/// With attribution off nothing about it is exported and the API is never called, even with
/// a kubeconfig at hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribution_off_exports_nothing_and_calls_nothing() {
    let (_sim_proc, sim) = start_simulator(&sim_toml(50));
    let (api, _stop) = start_api(K8sConfig::default()).await;
    let (_exporter, addr) = start_with_kubeconfig(&exporter_config(sim, ""), &api.kubeconfig());
    let text = scrape_until(addr, "the first poll", |t| sessions_of(t) == 50.0).await;
    for family in [
        "redis_sessions_by_workload",
        "redis_sessions_long_idle_by_workload",
        "redis_session_output_buffer_max_bytes_by_workload",
        "redis_session_exporter_attribution_pods",
        "redis_session_exporter_attribution_errors_total",
    ] {
        assert!(
            !text.contains(family),
            "{family} exported with attribution off"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for r in Resource::ALL {
        assert_eq!(api.counts(r), k8s::Counts::default(), "{r:?} was called");
    }
}

/// The named workloads the sticky rule keeps: the top `cap` by sessions (ties by labels),
/// plus those named before that still rank within 2×cap with sessions left. Written here from
/// the words, apart from the exporter's code.
fn sticky_named(counts: &BTreeMap<Who, u64>, before: &BTreeSet<Who>, cap: usize) -> BTreeSet<Who> {
    let mut ranked: Vec<(&Who, &u64)> = counts.iter().filter(|(_, n)| **n > 0).collect();
    ranked.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
    ranked
        .iter()
        .enumerate()
        .filter(|(rank, (w, _))| *rank < cap || (*rank < 2 * cap && before.contains(*w)))
        .map(|(_, (w, _))| (*w).clone())
        .collect()
}

/// Sticky top-N through the binary: a workload pushed just past the cap keeps its series; at
/// most 2×cap + 1 series; the sum is every session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_at_the_cap_do_not_flap() {
    const CAP: usize = 2;
    let (_sim_proc, sim) = start_simulator(&sim_toml(600));
    let raw = raw_sessions(sim).await;
    let clients = clients_by_count(&raw);
    assert!(clients.len() >= 10, "{} client IPs", clients.len());
    // One workload per IP; the IPs past the eighth stay unknown.
    let (api, _stop) = start_api(K8sConfig::default()).await;
    let mut pods: BTreeMap<String, Who> = BTreeMap::new();
    for (i, (ip, _)) in clients.iter().take(8).enumerate() {
        let w = format!("w{i}");
        api.apply(k8s::pod(
            "ns",
            &format!("{w}-0"),
            ip,
            Some(("StatefulSet", &w)),
        ));
        pods.insert(ip.clone(), who("ns", &w, "StatefulSet"));
    }
    let counts = |pods: &BTreeMap<String, Who>| -> BTreeMap<Who, u64> {
        expected(&raw, |c| {
            pods.get(c)
                .cloned()
                .unwrap_or_else(|| who("", "unknown", "unknown"))
        })
        .into_iter()
        .map(|(w, f)| (w, f.0))
        .collect()
    };
    let config = exporter_config(
        sim,
        &format!("[limits]\nmax_workloads = {CAP}\n[attribution.kubernetes]\nenabled = true\n"),
    );
    let (_exporter, addr) = start_with_kubeconfig(&config, &api.kubeconfig());
    let named = |t: &str| -> BTreeSet<Who> {
        series(t, "redis_sessions_by_workload")
            .into_keys()
            .filter(|w| w.1 != "other")
            .collect()
    };
    let first = sticky_named(&counts(&pods), &BTreeSet::new(), CAP);
    scrape_until(addr, "the first top 2", |t| named(t) == first).await;

    // The workload ranked third takes over the IPs of those ranked fourth and below (new pods
    // win those IPs at once) and moves ahead of one of the named ones.
    let ranked: Vec<Who> = {
        let c = counts(&pods);
        let mut v: Vec<(Who, u64)> = c.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.into_iter().map(|(w, _)| w).collect()
    };
    let climber = ranked[CAP].clone();
    assert_eq!(
        climber.2, "StatefulSet",
        "the third is one of ours: {ranked:?}"
    );
    for (n, ip) in pods
        .iter()
        .filter(|(_, w)| ranked.iter().position(|r| r == *w).is_some_and(|p| p > CAP))
        .map(|(ip, _)| ip.clone())
        .collect::<Vec<_>>()
        .into_iter()
        .enumerate()
    {
        api.apply(k8s::pod(
            "ns",
            &format!("{}-{}", climber.1, n + 1),
            &ip,
            Some(("StatefulSet", &climber.1)),
        ));
        pods.insert(ip, climber.clone());
    }
    let now = counts(&pods);
    let want = sticky_named(&now, &first, CAP);
    let plain = sticky_named(&now, &BTreeSet::new(), CAP);
    assert!(
        want.len() > plain.len(),
        "the scenario pushes a named workload past the cap: {want:?} vs plain {plain:?}"
    );
    let text = scrape_until(addr, "the climber named", |t| named(t) == want).await;
    let all = series(&text, "redis_sessions_by_workload");
    assert!(all.len() <= 2 * CAP + 1, "2 x cap + 1: {all:?}");
    assert_eq!(all.values().sum::<f64>() as usize, raw.len());
    // And it stays so over further polls (no flapping back).
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(named(&scrape_text(addr).await), want);
    }
}
