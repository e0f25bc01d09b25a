//! End to end: the real binary polls the project's own DAS simulator (which checks every
//! signature) on loopback; the figures on /metrics are checked against the simulator's own answer,
//! computed here independently from the raw JSON; both formats go through the ecosystem's tools.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

const SIM: &str = r#"
seed = 7
[instances.r-e2e-small]
sessions = 40
[instances.r-e2e-big]
sessions = 3000
[instances.r-e2e-empty]
sessions = 0
[instances.r-e2e-denied]
fault = { kind = "no_permission" }
"#;

fn config(sim: std::net::SocketAddr) -> String {
    format!(
        r#"
[das]
endpoint = "http://{sim}"
timeout = "5s"
[poll]
interval = "60s"
[limits]
max_sources = 5
max_commands = 100
max_client_names = 3
[[instances]]
id = "r-e2e-small"
labels = {{ env = "test", team = "core" }}
[[instances]]
id = "r-e2e-big"
[[instances]]
id = "r-e2e-empty"
[[instances]]
id = "r-e2e-denied"
"#
    )
}

const FLAG_NAMES: &[(char, &str)] = &[
    ('A', "close_asap"),
    ('b', "blocked"),
    ('c', "close_after_reply"),
    ('d', "dirty_cas"),
    ('e', "no_evict"),
    ('i', "io_wait"),
    ('M', "master"),
    ('N', "none"),
    ('O', "monitor"),
    ('P', "pubsub"),
    ('r', "readonly"),
    ('S', "replica"),
    ('u', "unblocked"),
    ('U', "unix_socket"),
    ('x', "multi"),
    ('t', "tracking"),
    ('T', "no_touch"),
    ('R', "tracking_invalid"),
    ('B', "tracking_broadcast"),
];

fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::String(s) => s.parse().unwrap(),
        _ => panic!("not a number: {v}"),
    }
}

/// The figures of one instance, computed from its raw answer the simple way.
fn expected(answer: &Value) -> BTreeMap<String, f64> {
    let mut e: BTreeMap<String, f64> = BTreeMap::new();
    let sessions = answer["Data"]["Sessions"].as_array().unwrap();
    let mut add = |k: String, v: f64| *e.entry(k).or_insert(0.0) += v;
    for s in sessions {
        add(format!("node_id={}", s["NodeId"].as_str().unwrap()), 1.0);
        add(
            format!("command={}", s["Cmd"].as_str().unwrap().to_lowercase()),
            1.0,
        );
        add(format!("db={}", num(&s["Db"])), 1.0);
        let flags = s["Flags"].as_str().unwrap();
        for (letter, name) in FLAG_NAMES {
            if flags.contains(*letter) {
                add(format!("flag={name}"), 1.0);
            }
        }
        add("sub".into(), num(&s["Sub"]));
        add("psub".into(), num(&s["Psub"]));
        add(
            "in_transaction".into(),
            if num(&s["Multi"]) >= 0.0 { 1.0 } else { 0.0 },
        );
        add("qbuf_free".into(), num(&s["QbufFree"]));
        add("oll".into(), num(&s["Oll"]));
        add("obl".into(), num(&s["Obl"]));
        add(
            "idle_le_60".into(),
            if num(&s["Idle"]) <= 60.0 { 1.0 } else { 0.0 },
        );
        add(
            "age_le_3600".into(),
            if num(&s["Age"]) <= 3600.0 { 1.0 } else { 0.0 },
        );
        add(
            "omem_le_0".into(),
            if num(&s["Omem"]) <= 0.0 { 1.0 } else { 0.0 },
        );
        add("idle_sum".into(), num(&s["Idle"]));
    }
    let max = |f: &str| sessions.iter().map(|s| num(&s[f])).fold(0.0, f64::max);
    e.insert("max_qbuf".into(), max("Qbuf"));
    e.insert("max_omem".into(), max("Omem"));
    e.insert("max_oll".into(), max("Oll"));
    e.insert("count".into(), sessions.len() as f64);
    e
}

fn get_value(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("missing series {series}"))
}

#[tokio::test]
async fn figures_match_the_simulator_and_pass_the_official_tools() {
    let (_sim, sim_addr) = start_simulator(SIM);
    let (mut exporter, addr) = start_exporter(&config(sim_addr), &[]);

    wait_until("readiness", Duration::from_secs(30), || async {
        (get(addr, "/readyz", &[]).await.0 == 200).then_some(())
    })
    .await;
    let text = scrape_text(addr).await;

    for id in ["r-e2e-small", "r-e2e-big"] {
        let (_, _, body) = get(sim_addr, &format!("/_sim/answer/{id}"), &[]).await;
        let answer: Value = serde_json::from_slice(&body).unwrap();
        let e = expected(&answer);
        let s = |m: &str| format!("{m}{{instance_id=\"{id}\"}}");
        assert_eq!(get_value(&text, &s("redis_session_up")), 1.0);
        assert_eq!(get_value(&text, &s("redis_sessions_reported")), e["count"]);
        assert_eq!(
            series_of(&text, "redis_sessions", id).values().sum::<f64>(),
            e["count"],
            "{id} per node"
        );
        for (k, v) in &e {
            if let Some(node) = k.strip_prefix("node_id=") {
                assert_eq!(
                    get_value(
                        &text,
                        &format!("redis_sessions{{instance_id=\"{id}\",node_id=\"{node}\"}}")
                    ),
                    *v
                );
            }
            if let Some(cmd) = k.strip_prefix("command=") {
                assert_eq!(
                    get_value(
                        &text,
                        &format!(
                            "redis_sessions_by_command{{instance_id=\"{id}\",command=\"{cmd}\"}}"
                        )
                    ),
                    *v,
                    "{cmd}"
                );
            }
            if let Some(db) = k.strip_prefix("db=") {
                assert_eq!(
                    get_value(
                        &text,
                        &format!("redis_sessions_by_db{{instance_id=\"{id}\",db=\"{db}\"}}")
                    ),
                    *v
                );
            }
            if let Some(flag) = k.strip_prefix("flag=") {
                assert_eq!(
                    get_value(
                        &text,
                        &format!("redis_sessions_by_flag{{instance_id=\"{id}\",flag=\"{flag}\"}}")
                    ),
                    *v,
                    "{flag}"
                );
            }
        }
        let kind = |k: &str| {
            get_value(
                &text,
                &format!("redis_sessions_subscriptions{{instance_id=\"{id}\",kind=\"{k}\"}}"),
            )
        };
        assert_eq!(kind("channel"), e["sub"]);
        assert_eq!(kind("pattern"), e["psub"]);
        assert_eq!(
            get_value(&text, &s("redis_sessions_in_transaction")),
            e["in_transaction"]
        );
        assert_eq!(
            get_value(&text, &s("redis_sessions_query_buffer_free_bytes")),
            e["qbuf_free"]
        );
        assert_eq!(
            get_value(&text, &s("redis_sessions_output_list_objects")),
            e["oll"]
        );
        assert_eq!(
            get_value(&text, &s("redis_sessions_fixed_output_buffer_bytes")),
            e["obl"]
        );
        assert_eq!(
            get_value(&text, &s("redis_session_query_buffer_max_bytes")),
            e["max_qbuf"]
        );
        assert_eq!(
            get_value(&text, &s("redis_session_output_buffer_max_bytes")),
            e["max_omem"]
        );
        assert_eq!(
            get_value(&text, &s("redis_session_output_list_max_objects")),
            e["max_oll"]
        );
        let b = |m: &str, le: &str| {
            get_value(
                &text,
                &format!("{m}_bucket{{instance_id=\"{id}\",le=\"{le}\"}}"),
            )
        };
        assert_eq!(b("redis_session_idle_seconds", "60"), e["idle_le_60"]);
        assert_eq!(b("redis_session_idle_seconds", "+Inf"), e["count"]);
        assert_eq!(b("redis_session_age_seconds", "3600"), e["age_le_3600"]);
        assert_eq!(b("redis_session_output_buffer_bytes", "0"), e["omem_le_0"]);
        assert_eq!(
            get_value(&text, &s("redis_session_idle_seconds_count")),
            e["count"]
        );
        assert_eq!(
            get_value(&text, &s("redis_session_idle_seconds_sum")),
            e["idle_sum"]
        );

        // Sources: the five largest by the API's own counts, the rest in "other", nothing lost.
        let stats = answer["Data"]["SourceStats"].as_array().unwrap();
        let counts: BTreeMap<String, f64> = stats
            .iter()
            .map(|s| (s["Key"].as_str().unwrap().to_owned(), num(&s["Count"])))
            .collect();
        let got = series_of(&text, "redis_sessions_by_source", id);
        assert_eq!(
            got.values().sum::<f64>(),
            counts.values().sum::<f64>(),
            "{id}: sources add up"
        );
        let kept: Vec<(&str, f64)> = got
            .iter()
            .filter(|(k, _)| !k.contains("source=\"other\""))
            .map(|(k, v)| {
                (
                    k.rsplit("source=\"")
                        .next()
                        .unwrap()
                        .trim_end_matches("\"}"),
                    *v,
                )
            })
            .collect();
        assert_eq!(kept.len(), counts.len().min(5));
        for (src, v) in &kept {
            assert_eq!(counts[*src], *v, "{src}");
        }
        let min_kept = kept.iter().map(|k| k.1).fold(f64::INFINITY, f64::min);
        let max_dropped = counts
            .iter()
            .filter(|(k, _)| !kept.iter().any(|(s, _)| s == k))
            .map(|(_, v)| *v)
            .fold(0.0, f64::max);
        assert!(
            min_kept >= max_dropped,
            "{id}: a dropped source is larger than a kept one"
        );

        // Client names: capped at three plus "other".
        let names = series_of(&text, "redis_sessions_by_client_name", id);
        assert!(names.len() <= 4, "{names:?}");
        assert_eq!(names.values().sum::<f64>(), e["count"]);
    }

    // An instance with no sessions still exports every fixed family, at zero.
    for m in [
        "redis_sessions_reported",
        "redis_sessions_in_transaction",
        "redis_session_query_buffer_max_bytes",
        "redis_session_idle_seconds_count",
        "redis_sessions_query_buffer_free_bytes",
    ] {
        assert_eq!(
            get_value(&text, &format!("{m}{{instance_id=\"r-e2e-empty\"}}")),
            0.0,
            "{m}"
        );
    }
    assert_eq!(
        get_value(
            &text,
            "redis_session_idle_seconds_bucket{instance_id=\"r-e2e-empty\",le=\"+Inf\"}"
        ),
        0.0
    );
    assert_eq!(
        get_value(
            &text,
            "redis_sessions_subscriptions{instance_id=\"r-e2e-empty\",kind=\"pattern\"}"
        ),
        0.0
    );

    // A refused instance: health only, with the API's code verbatim; the others are unaffected.
    assert_eq!(
        get_value(&text, "redis_session_up{instance_id=\"r-e2e-denied\"}"),
        0.0
    );
    assert!(get_value(&text, "redis_session_exporter_poll_errors_total{instance_id=\"r-e2e-denied\",code=\"NoPermission\"}") >= 1.0);
    assert!(series_of(&text, "redis_sessions", "r-e2e-denied").is_empty());
    assert!(series_of(&text, "redis_sessions_reported", "r-e2e-denied").is_empty());
    assert_eq!(
        get_value(
            &text,
            "redis_session_last_success_timestamp_seconds{instance_id=\"r-e2e-denied\"}"
        ),
        0.0
    );
    assert!(
        get_value(
            &text,
            "redis_session_last_success_timestamp_seconds{instance_id=\"r-e2e-small\"}"
        ) > 1.7e9
    );
    assert!(
        get_value(
            &text,
            "redis_session_snapshot_timestamp_seconds{instance_id=\"r-e2e-small\"}"
        ) > 1.7e9
    );
    assert_eq!(
        get_value(
            &text,
            "redis_session_instance_info{instance_id=\"r-e2e-small\",env=\"test\",team=\"core\"}"
        ),
        1.0
    );
    assert!(text.contains("redis_session_exporter_build_info{version=\""));
    assert!(
        !text
            .lines()
            .any(|l| !l.starts_with('#') && l.split(' ').count() > 2),
        "no sample carries a timestamp"
    );

    // The same samples in OpenMetrics, parsed by the official parser.
    let om = scrape_om(addr).await;
    let strip = |t: &str| {
        let mut v: Vec<String> = samples(t)
            .into_iter()
            .filter(|(k, _)| !k.contains("poll_duration"))
            .map(|(k, v)| format!("{} {v}", canonical(&k)))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        strip(&text),
        strip(&om),
        "both formats carry the same samples"
    );
    let (ok, out) = run_tool(
        "python3",
        &["-c", "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nfams = list(p(sys.stdin.read()))\nprint(len(fams), sum(len(f.samples) for f in fams))"],
        &om,
        true,
    );
    assert!(
        ok,
        "the official OpenMetrics parser rejected the output: {out}"
    );
    let parsed_samples: usize = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(parsed_samples, samples(&om).len());
    let (ok, out) = run_tool(
        "python3",
        &["-c", "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nprint(sum(len(f.samples) for f in p(sys.stdin.read())))"],
        &text,
        true,
    );
    assert!(
        ok,
        "the official classic-text parser rejected the output: {out}"
    );

    // promtool: no findings at all on the classic text.
    let (ok, out) = run_tool("promtool", &["check", "metrics"], &text, true);
    assert!(ok && out.trim().is_empty(), "promtool check metrics: {out}");

    // gzip when asked for, the same body inside.
    let (status, h, gz) = get(addr, "/metrics", &[("accept-encoding", "gzip")]).await;
    assert_eq!(status, 200);
    assert_eq!(h["content-encoding"], "gzip");
    let mut plain = String::new();
    flate2::read::MultiGzDecoder::new(&gz[..])
        .read_to_string(&mut plain)
        .unwrap();
    assert_eq!(strip(&plain), strip(&text));

    // Landing page and health.
    let (status, _, page) = get(addr, "/", &[]).await;
    assert_eq!(status, 200);
    let page = String::from_utf8(page).unwrap();
    for id in ["r-e2e-small", "r-e2e-denied", "NoPermission", "/metrics"] {
        assert!(page.contains(id), "landing page lacks {id}");
    }
    assert_eq!(get(addr, "/healthz", &[]).await.0, 200);

    // Signing round trip: the simulator checked every request's signature and rejected none.
    // It checks with the crate's own signer, so this shows the client and the checker agree,
    // not that either matches the vendor: the vendor's published vectors (`acs::sign` unit
    // tests, and `das::client`'s DAS-shaped STS vector) are the independent oracle.
    let stats = sim_stats(sim_addr).await;
    assert!(stats["rejected"].as_object().unwrap().is_empty(), "{stats}");

    let status = exporter.terminate();
    assert!(status.success(), "SIGTERM must exit 0: {status:?}");
}

/// A poll held in flight by the simulator (its answer cannot land until the test releases it):
/// meanwhile every scrape answers, with the poll still in flight when it does (scrapes never
/// wait for a poll), `/healthz` is 200 and `/readyz` 503 although another instance is already
/// up (readiness waits for every instance's first poll). On release it turns 200.
#[tokio::test]
async fn while_a_poll_is_held_scrapes_answer_and_readyz_waits() {
    let (_sim, sim_addr) = start_simulator(
        "sessions = 5\n[instances.r-held]\nfault = { kind = \"hold\" }\n[instances.r-quick]\n",
    );
    // A timeout far beyond the test, so only the release can end the held poll.
    let (_exp, addr) = start_exporter(
        &format!(
            "[das]\nendpoint = \"http://{sim_addr}\"\ntimeout = \"300s\"\n[poll]\ninterval = \"600s\"\n\
             [[instances]]\nid = \"r-held\"\n[[instances]]\nid = \"r-quick\"\n"
        ),
        &[],
    );
    let held = || async {
        let stats = sim_stats(sim_addr).await;
        stats["in_flight"] == 1 && stats["requests"]["r-held"] == 1
    };
    wait_until(
        "r-quick up and r-held's request held",
        Duration::from_secs(20),
        || async {
            let t = scrape_text(addr).await;
            (value(&t, "redis_session_up{instance_id=\"r-quick\"}") == Some(1.0) && held().await)
                .then_some(())
        },
    )
    .await;
    for _ in 0..3 {
        let t = scrape_text(addr).await;
        assert_eq!(
            value(&t, "redis_session_up{instance_id=\"r-quick\"}"),
            Some(1.0)
        );
        assert_eq!(get(addr, "/healthz", &[]).await.0, 200);
        assert_eq!(get(addr, "/readyz", &[]).await.0, 503);
    }
    assert!(
        held().await,
        "the poll was still in flight after the scrapes"
    );
    clear_fault(sim_addr, "r-held").await;
    wait_until("readiness", Duration::from_secs(20), || async {
        (get(addr, "/readyz", &[]).await.0 == 200).then_some(())
    })
    .await;
    let t = scrape_text(addr).await;
    assert_eq!(
        value(&t, "redis_session_up{instance_id=\"r-held\"}"),
        Some(1.0)
    );
}

/// No credentials anywhere: every poll fails with `code="credentials"`, and no request is sent
/// (the simulator, reachable all along, receives none, signed or not).
#[tokio::test]
async fn missing_credentials_fail_polls_with_a_clear_code() {
    let (_sim, sim_addr) = start_simulator("");
    let p = spawn(
        &["--config", "c.toml", "--listen", "127.0.0.1:0"],
        &[],
        &[(
            "c.toml",
            &format!(
                "[das]\nendpoint = \"http://{sim_addr}\"\ntimeout = \"1s\"\n[poll]\ninterval = \"1s\"\n\
                 [[instances]]\nid = \"r-x\"\n"
            ),
        )],
    );
    let line = p.wait_for_line("serving /metrics", Duration::from_secs(20));
    let addr: std::net::SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap()
        .parse()
        .unwrap();
    // Two failed polls (the start-up one and one on the grid of a 1 s interval), retries included.
    let text = wait_until("two failed polls", Duration::from_secs(20), || async {
        let t = scrape_text(addr).await;
        let failed = value(
            &t,
            "redis_session_exporter_poll_errors_total{instance_id=\"r-x\",code=\"credentials\"}",
        );
        (failed >= Some(2.0)).then_some(t)
    })
    .await;
    assert_eq!(
        value(&text, "redis_session_up{instance_id=\"r-x\"}"),
        Some(0.0)
    );
    assert!(
        p.output().contains("ALIBABA_CLOUD_ACCESS_KEY_ID"),
        "the log says what is missing"
    );
    let stats = sim_stats(sim_addr).await;
    assert_eq!(
        stats["received"], 0,
        "a request reached the DAS endpoint without credentials: {stats}"
    );
}

#[test]
fn check_config_validates_and_names_the_key() {
    let good =
        "[poll]\ninterval = \"30s\"\n[[instances]]\nid = \"r-1\"\nlabels = { env = \"prod\" }\n";
    let mut p = spawn(
        &["check-config", "--config", "c.toml"],
        &[],
        &[("c.toml", good)],
    );
    let status = p.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(status.success(), "{}", p.output());
    assert!(p.output().contains("interval = \"30s\""), "{}", p.output());

    for (bad, key) in [
        ("[poll]\nconcurency = 3\n", "poll.concurency"),
        ("[poll]\ninterval = \"often\"\n", "poll.interval"),
        (
            "[[instances]]\nid = \"a\"\n[[instances]]\nid = \"a\"\n",
            "instances[1].id",
        ),
    ] {
        let mut p = spawn(
            &["check-config", "--config", "c.toml"],
            &[],
            &[("c.toml", bad)],
        );
        let status = p.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(status.code(), Some(1), "{bad:?}");
        assert!(p.output().contains(key), "{bad:?}: {}", p.output());
    }

    // The daemon refuses a broken file before serving anything.
    let mut p = spawn(
        &["--config", "c.toml", "--listen", "127.0.0.1:0"],
        &[],
        &[("c.toml", "[poll]\nconcurrency = \"many\"\n")],
    );
    let status = p.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!status.success());
    assert!(p.output().contains("poll.concurrency"), "{}", p.output());
    assert!(!p.output().contains("serving"), "{}", p.output());
}

#[test]
fn version_flag() {
    let out = std::process::Command::new(bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("redis-session-exporter {}", env!("CARGO_PKG_VERSION"))
    );
}

/// A signing round trip (the simulator verifies with the crate's own signer; the vendor's
/// vectors in `acs::sign` are the independent oracle). One set of variables for both processes:
/// the simulator accepts the pair it is started with, and rejects a request signed with another
/// secret.
#[tokio::test]
async fn signing_round_trip_with_the_key_pair_from_the_environment() {
    let env = [
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI-shared-fake-id"),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "shared-fake-secret"),
    ];
    let sim = spawn(&["simulate", "--listen", "127.0.0.1:0"], &env, &[]);
    let sim_addr = simulator_addr(&sim);
    let cfg = format!("[das]\nendpoint = \"http://{sim_addr}\"\n[[instances]]\nid = \"r-env\"\n");
    let (_good, good_addr) = start_exporter(&cfg, &env);
    let (_bad, bad_addr) = start_exporter(
        &cfg,
        &[
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI-shared-fake-id"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "wrong-secret"),
        ],
    );
    let up = |addr| async move {
        wait_until("a first poll", Duration::from_secs(20), || async {
            value(
                &scrape_text(addr).await,
                "redis_session_up{instance_id=\"r-env\"}",
            )
        })
        .await
    };
    assert_eq!(up(good_addr).await, 1.0);
    assert_eq!(up(bad_addr).await, 0.0);
    let text = scrape_text(bad_addr).await;
    assert!(text.contains("code=\"SignatureDoesNotMatch\""), "{text}");
    assert!(!text.contains("wrong-secret"));
}

#[tokio::test]
async fn demo_serves_figures_within_seconds() {
    // README's first command, on a free port: the embedded simulator and the exporter together.
    let demo = spawn(&["demo", "--listen", "127.0.0.1:0"], &[], &[]);
    let line = demo.wait_for_line("metrics:", Duration::from_secs(30));
    let url = line.split_whitespace().last().unwrap();
    let addr: std::net::SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();
    let text = wait_until(
        "every demo instance polled",
        Duration::from_secs(30),
        || async {
            let t = scrape_text(addr).await;
            [
                "r-demo-orders",
                "r-demo-sessions",
                "r-demo-cache",
                "r-demo-flaky",
            ]
            .iter()
            .all(|id| t.contains(&format!("redis_session_up{{instance_id=\"{id}\"}}")))
            .then_some(t)
        },
    )
    .await;
    assert_eq!(
        value(&text, "redis_session_up{instance_id=\"r-demo-orders\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "redis_sessions_reported{instance_id=\"r-demo-sessions\"}"
        )
        .map(|v| v > 1000.0),
        Some(true),
        "the big demo instance reports its sessions"
    );
    assert!(
        series_of(&text, "redis_sessions", "r-demo-cache").len() >= 2,
        "several proxy nodes"
    );
}
