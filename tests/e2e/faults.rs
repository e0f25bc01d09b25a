//! End to end, every fault the DAS API can throw: the real binary polls the project's simulator
//! (or a closed port) on loopback while faults are injected per instance. For each fault the
//! tests show that the process stays up, /metrics keeps answering while the fault is active,
//! the instance reports `up 0` with the right `code`, healthy neighbours are unaffected, the
//! instance recovers on the first good answer, the request rate stays within the configured
//! limit, and the log says what failed once per change of state, not once per poll.
//!
//! Intervals are 1 s and timeouts 1 s, so each test runs in seconds. No assertion here is about
//! speed: that a scrape never waits for a poll is shown by ordering, with a poll held in flight
//! (`polling::while_a_poll_is_held_scrapes_answer_and_readyz_waits`); how fast a scrape is
//! encoded is measured in `benches/scrape.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;

/// One fault, the instance that gets it, and the `code` it must be reported under.
struct Case {
    id: &'static str,
    /// The simulator's TOML inline table for the fault.
    fault: &'static str,
    code: &'static str,
}

/// Every fault of the issue, one instance each. Ids are chosen so that none is a prefix of
/// another followed by a space (log lines are matched on `instance_id=ID `).
const CASES: &[Case] = &[
    Case {
        id: "r-throttle-user",
        fault: r#"{ kind = "throttling_user" }"#,
        code: "Throttling.User",
    },
    Case {
        id: "r-throttle-user-ra",
        fault: r#"{ kind = "throttling_user", retry_after_ms = 400 }"#,
        code: "Throttling.User",
    },
    Case {
        id: "r-throttle-api",
        fault: r#"{ kind = "throttling_api" }"#,
        code: "Throttling.Api",
    },
    Case {
        id: "r-throttle-api-ra",
        fault: r#"{ kind = "throttling_api", retry_after_ms = 400 }"#,
        code: "Throttling.Api",
    },
    Case {
        id: "r-unavailable",
        fault: r#"{ kind = "service_unavailable" }"#,
        code: "ServiceUnavailable",
    },
    Case {
        id: "r-internal",
        fault: r#"{ kind = "internal_error" }"#,
        code: "InternalError",
    },
    Case {
        id: "r-signature",
        fault: r#"{ kind = "signature_does_not_match" }"#,
        code: "SignatureDoesNotMatch",
    },
    Case {
        id: "r-timestamp",
        fault: r#"{ kind = "invalid_timestamp_expired" }"#,
        code: "InvalidTimeStamp.Expired",
    },
    Case {
        id: "r-permission",
        fault: r#"{ kind = "no_permission" }"#,
        code: "NoPermission",
    },
    Case {
        id: "r-params",
        fault: r#"{ kind = "invalid_params" }"#,
        code: "InvalidParams",
    },
    Case {
        id: "r-html-502",
        fault: r#"{ kind = "html_error", status = 502 }"#,
        code: "http_502",
    },
    Case {
        id: "r-html-503",
        fault: r#"{ kind = "html_error", status = 503 }"#,
        code: "http_503",
    },
    Case {
        id: "r-slow",
        fault: r#"{ kind = "slow", delay_ms = 3000 }"#,
        code: "timeout",
    },
    Case {
        id: "r-stall",
        fault: r#"{ kind = "stall_mid_body" }"#,
        code: "timeout",
    },
    Case {
        id: "r-reset-mid",
        fault: r#"{ kind = "reset_mid_body" }"#,
        code: "connection",
    },
    Case {
        id: "r-reset-early",
        fault: r#"{ kind = "reset_before_response" }"#,
        code: "connection",
    },
    Case {
        id: "r-truncated",
        fault: r#"{ kind = "truncated_json" }"#,
        code: "invalid_response",
    },
    Case {
        id: "r-shape",
        fault: r#"{ kind = "wrong_shape" }"#,
        code: "invalid_response",
    },
    Case {
        id: "r-success-false",
        fault: r#"{ kind = "success_false" }"#,
        code: "invalid_response",
    },
    Case {
        id: "r-data-null",
        fault: r#"{ kind = "data_null" }"#,
        code: "invalid_response",
    },
    Case {
        id: "r-oversized",
        fault: r#"{ kind = "oversized", bytes = 2000000 }"#,
        code: "invalid_response",
    },
    Case {
        id: "r-oversized-chunked",
        fault: r#"{ kind = "oversized", bytes = 2000000, chunked = true }"#,
        code: "invalid_response",
    },
];

/// An answer that lists fewer sessions than its `Data.Total` (sessions came and went between
/// the count and the listing) is data, not a failure: the poll succeeds, every breakdown counts
/// the sessions listed, the reported total stays `Data.Total`, and the difference shows as
/// `redis_sessions_unlisted` (0 for a complete listing next to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_listing_is_data_with_the_difference_unlisted() {
    let (_sim, sim) = start_simulator(
        "sessions = 25\n[instances.r-short]\nfault = { kind = \"total_mismatch\", extra = 7 }\n",
    );
    let (_exporter, addr) = start_exporter(&exporter_config(sim, "", &["r-short", "r-full"]), &[]);
    let text = wait_until("two polls of each", Duration::from_secs(20), || async {
        let text = scrape_text(addr).await;
        ["r-short", "r-full"]
            .iter()
            .all(|id| polls(&text, id) >= 2.0)
            .then_some(text)
    })
    .await;
    let one = |name: &str, id: &str| value(&text, &format!("{name}{{instance_id=\"{id}\"}}"));
    for (id, unlisted) in [("r-short", 7.0), ("r-full", 0.0)] {
        assert_eq!(up(&text, id), Some(1.0), "{id}: up");
        assert!(
            error_codes(&text, id).is_empty(),
            "{id}: {:?}",
            error_codes(&text, id)
        );
        assert_eq!(
            one("redis_sessions_reported", id),
            Some(25.0 + unlisted),
            "{id}"
        );
        assert_eq!(one("redis_sessions_unlisted", id), Some(unlisted), "{id}");
        for family in [
            "redis_sessions",
            "redis_sessions_by_source",
            "redis_sessions_by_command",
            "redis_sessions_by_client_name",
        ] {
            let listed: f64 = series_of(&text, family, id).values().sum();
            assert_eq!(listed, 25.0, "{id}: {family} counts the sessions listed");
        }
    }
}

const HEALTHY: &[&str] = &["r-healthy-a", "r-healthy-b", "r-healthy-c"];

fn up(text: &str, id: &str) -> Option<f64> {
    value(text, &format!("redis_session_up{{instance_id=\"{id}\"}}"))
}

fn polls(text: &str, id: &str) -> f64 {
    value(
        text,
        &format!("redis_session_exporter_polls_total{{instance_id=\"{id}\"}}"),
    )
    .unwrap_or(0.0)
}

/// `code -> count` of `redis_session_exporter_poll_errors_total` for one instance.
fn error_codes(text: &str, id: &str) -> BTreeMap<String, f64> {
    series_of(text, "redis_session_exporter_poll_errors_total", id)
        .into_iter()
        .map(|(k, v)| {
            let code = k
                .split("code=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default()
                .to_owned();
            (code, v)
        })
        .collect()
}

/// Log lines of `proc` that contain `what` and are about instance `id`.
fn log_lines(proc: &Proc, what: &str, id: &str) -> usize {
    let needle = format!("instance_id={id} ");
    proc.output
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(what) && l.contains(&needle))
        .count()
}

fn assert_alive(p: &mut Proc) {
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "the exporter exited; output:\n{}",
        p.output()
    );
}

fn exporter_config(sim: SocketAddr, extra: &str, ids: &[&str]) -> String {
    let mut c = format!(
        r#"
[das]
endpoint = "http://{sim}"
timeout = "1s"
max_body_bytes = 1048576
[poll]
interval = "1s"
concurrency = 16
max_requests_per_second = 200
{extra}
"#
    );
    for id in ids {
        c.push_str(&format!("[[instances]]\nid = \"{id}\"\n"));
    }
    c
}

/// Every fault at once, one instance each, next to healthy instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_is_survived_reported_and_recovered_from() {
    let mut sim_toml = String::from("sessions = 25\n");
    for c in CASES {
        sim_toml.push_str(&format!("[instances.{}]\nfault = {}\n", c.id, c.fault));
    }
    let (_sim, sim) = start_simulator(&sim_toml);
    let ids: Vec<&str> = CASES
        .iter()
        .map(|c| c.id)
        .chain(HEALTHY.iter().copied())
        .collect();
    let (mut exporter, addr) = start_exporter(&exporter_config(sim, "", &ids), &[]);

    // While every fault is active: each faulted instance is down with exactly its code, each
    // healthy one is up with its sessions, and every scrape answers. Wait for three
    // polls of each, so "once per change of state" below is checked against repeated failures.
    let text = wait_until(
        "three polls of every instance",
        Duration::from_secs(40),
        || async {
            let text = scrape_text(addr).await;
            ids.iter().all(|id| polls(&text, id) >= 3.0).then_some(text)
        },
    )
    .await;
    for c in CASES {
        assert_eq!(up(&text, c.id), Some(0.0), "{}: up", c.id);
        let codes = error_codes(&text, c.id);
        assert_eq!(
            codes.keys().collect::<Vec<_>>(),
            vec![c.code],
            "{} ({}): error codes {codes:?}",
            c.id,
            c.fault
        );
        assert!(
            series_of(&text, "redis_sessions", c.id).is_empty(),
            "{}: no session figures while down",
            c.id
        );
    }
    for id in HEALTHY {
        assert_eq!(up(&text, id), Some(1.0), "{id}");
        assert!(error_codes(&text, id).is_empty(), "{id} saw errors");
        let sessions: f64 = series_of(&text, "redis_sessions", id).values().sum();
        assert_eq!(sessions, 25.0, "{id}: sessions");
    }
    // A few more scrapes spread over the next second, all answered.
    for _ in 0..5 {
        scrape_text(addr).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_alive(&mut exporter);

    // One warning per instance for the whole failing streak, however many polls failed.
    for c in CASES {
        assert_eq!(
            log_lines(&exporter, "poll failing", c.id),
            1,
            "{}: expected one 'poll failing' line; output:\n{}",
            c.id,
            exporter.output()
        );
    }
    for id in HEALTHY {
        assert_eq!(log_lines(&exporter, "poll failing", id), 0, "{id}");
    }
    // Neither the key id nor the secret reaches the log (the signature fault's echo of the
    // string to sign is checked with an STS token in `the_signature_echo_leaks_nothing`).
    let out = exporter.output();
    for n in needles(&[SIM_KEY_ID.to_owned(), SIM_KEY_SECRET.to_owned()]) {
        assert!(!out.contains(&n), "{n:?} in the log:\n{out}");
    }

    // Clear every fault: each instance is up again after its first good answer (at most one
    // more poll may have happened between that answer and the scrape that sees it).
    for c in CASES {
        clear_fault(sim, c.id).await;
    }
    let mut recovered = BTreeSet::new();
    let end = Instant::now() + Duration::from_secs(20);
    while recovered.len() < CASES.len() {
        assert!(
            Instant::now() < end,
            "not recovered: {:?}",
            CASES
                .iter()
                .filter(|c| !recovered.contains(c.id))
                .map(|c| c.id)
                .collect::<Vec<_>>()
        );
        let text = scrape_text(addr).await;
        let stats = sim_stats(sim).await;
        for c in CASES {
            if up(&text, c.id) == Some(1.0) && recovered.insert(c.id) {
                let ok = stats["answers"][c.id]["ok"].as_u64().unwrap_or(0);
                assert!(
                    (1..=3).contains(&ok),
                    "{}: up after {ok} good answers",
                    c.id
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = scrape_text(addr).await;
    for c in CASES {
        let sessions: f64 = series_of(&text, "redis_sessions", c.id).values().sum();
        assert_eq!(sessions, 25.0, "{}: sessions after recovery", c.id);
        assert_eq!(
            log_lines(&exporter, "instance recovered", c.id),
            1,
            "{}",
            c.id
        );
    }
    assert_alive(&mut exporter);
    assert!(exporter.terminate().success());
}

/// A mix of every fault across many instances at once, including faults that strike only
/// every n-th request (flapping instances).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mix_of_faults_across_many_instances() {
    const N: usize = 120;
    let flapping = [
        (
            r#"{ kind = "every", every = 2, fault = { kind = "throttling_user" } }"#,
            "Throttling.User",
        ),
        (
            r#"{ kind = "every", every = 3, fault = { kind = "reset_before_response" } }"#,
            "connection",
        ),
        (
            r#"{ kind = "every", every = 2, fault = { kind = "truncated_json" } }"#,
            "invalid_response",
        ),
    ];
    // Instance i: a steady fault, a flapping one, or none (every fourth instance is healthy).
    /// (instance id, (fault, code) if any, whether the fault flaps).
    type Plan = (String, Option<(&'static str, &'static str)>, bool);
    let mut plan: Vec<Plan> = Vec::new();
    for i in 0..N {
        let id = format!("r-mix-{i:03}");
        let (fault, flaps) = match i % 4 {
            0 => (None, false),
            1 => (Some((flapping[i / 4 % 3].0, flapping[i / 4 % 3].1)), true),
            _ => {
                let c = &CASES[i % CASES.len()];
                (Some((c.fault, c.code)), false)
            }
        };
        plan.push((id, fault, flaps));
    }
    let mut sim_toml = String::from("sessions = 8\n");
    for (id, fault, _) in &plan {
        if let Some((f, _)) = fault {
            sim_toml.push_str(&format!("[instances.{id}]\nfault = {f}\n"));
        }
    }
    let (_sim, sim) = start_simulator(&sim_toml);
    let ids: Vec<&str> = plan.iter().map(|p| p.0.as_str()).collect();
    let (mut exporter, addr) = start_exporter(&exporter_config(sim, "", &ids), &[]);

    let text = wait_until(
        "four polls of every instance",
        Duration::from_secs(45),
        || async {
            let text = scrape_text(addr).await;
            ids.iter().all(|id| polls(&text, id) >= 4.0).then_some(text)
        },
    )
    .await;
    for (id, fault, flaps) in &plan {
        let codes = error_codes(&text, id);
        let success = value(
            &text,
            &format!("redis_session_last_success_timestamp_seconds{{instance_id=\"{id}\"}}"),
        )
        .unwrap_or(0.0);
        match fault {
            None => {
                assert_eq!(up(&text, id), Some(1.0), "{id}");
                assert!(codes.is_empty(), "{id}: {codes:?}");
            }
            Some((_, code)) if *flaps => {
                // Both outcomes were seen; only the fault's own code was counted.
                assert_eq!(codes.keys().collect::<Vec<_>>(), vec![code], "{id}");
                assert!(success > 0.0, "{id}: never succeeded between faults");
            }
            Some((_, code)) => {
                assert_eq!(up(&text, id), Some(0.0), "{id}");
                assert_eq!(codes.keys().collect::<Vec<_>>(), vec![code], "{id}");
                assert_eq!(success, 0.0, "{id}");
            }
        }
    }
    assert_alive(&mut exporter);

    for (id, fault, _) in &plan {
        if fault.is_some() {
            clear_fault(sim, id).await;
        }
    }
    wait_until("every instance up", Duration::from_secs(20), || async {
        let text = scrape_text(addr).await;
        ids.iter()
            .all(|id| up(&text, id) == Some(1.0))
            .then_some(())
    })
    .await;
    assert_alive(&mut exporter);
}

/// A throttling storm does not become a request storm: 30 instances, all throttled, polled every
/// 2 s with retries allowed, against a limit of 5 requests per second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_storm_stays_within_the_rate_limit() {
    const RATE: f64 = 5.0;
    let ids: Vec<String> = (0..30).map(|i| format!("r-storm-{i:02}")).collect();
    let mut sim_toml = String::from("sessions = 5\n");
    for id in &ids {
        sim_toml.push_str(&format!(
            "[instances.{id}]\nfault = {{ kind = \"throttling_user\" }}\n"
        ));
    }
    let (_sim, sim) = start_simulator(&sim_toml);
    let start = Instant::now();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let cfg = exporter_config(sim, "", &refs)
        .replace("interval = \"1s\"", "interval = \"2s\"")
        .replace("concurrency = 16", "concurrency = 4")
        .replace(
            "max_requests_per_second = 200",
            "max_requests_per_second = 5",
        );
    let (mut exporter, addr) = start_exporter(&cfg, &[]);

    // Let the storm run for a while, scraping all along.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        scrape_text(addr).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let stats = sim_stats(sim).await;
    let elapsed = start.elapsed().as_secs_f64();
    let total: u64 = stats["requests"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    // The rate limiter's burst is one; the slack covers the request in flight at each end.
    let bound = RATE * elapsed + 3.0;
    assert!(
        (total as f64) <= bound,
        "{total} requests in {elapsed:.1} s exceed {RATE}/s"
    );
    // The storm was real: 30 instances every 2 s want three times the limit.
    assert!(
        (total as f64) >= RATE * (elapsed - 4.0),
        "only {total} requests in {elapsed:.1} s: the limit was not the bottleneck"
    );
    // Within any 2 s window of arrivals, the limit holds too (not just on average).
    let arrivals: Vec<u64> = stats["arrivals_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    for (i, t) in arrivals.iter().enumerate() {
        let in_window = arrivals[i..].iter().take_while(|a| **a < t + 2000).count();
        assert!(
            in_window as f64 <= RATE * 2.0 + 2.0,
            "{in_window} requests within 2 s from {t}"
        );
    }
    let text = scrape_text(addr).await;
    for id in &ids {
        if polls(&text, id) > 0.0 {
            assert_eq!(up(&text, id), Some(0.0), "{id}");
        }
        assert!(log_lines(&exporter, "poll failing", id) <= 1, "{id}");
    }
    assert_alive(&mut exporter);
}

/// `x-acs-retry-after` is honoured: no retry comes sooner than the gateway asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_wait_as_long_as_the_gateway_asks() {
    let (_sim, sim) = start_simulator(
        "sessions = 5\n[instances.r-ra]\nfault = { kind = \"throttling_user\", retry_after_ms = 1500 }\n",
    );
    // A 5 s interval leaves room for retries inside one poll (1 s timeout each).
    let cfg = exporter_config(sim, "", &["r-ra"]).replace("interval = \"1s\"", "interval = \"5s\"");
    let (mut exporter, addr) = start_exporter(&cfg, &[]);
    let arrivals = wait_until("five requests", Duration::from_secs(30), || async {
        scrape_text(addr).await;
        let stats = sim_stats(sim).await;
        let a: Vec<u64> = stats["arrivals_ms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        (a.len() >= 5).then_some(a)
    })
    .await;
    let gaps: Vec<u64> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g >= 1450),
        "a request came sooner than x-acs-retry-after allows: gaps {gaps:?} ms"
    );
    // Retries did happen inside a poll (a gap shorter than the interval), so the wait above is
    // the retry-after at work, not just the poll interval.
    assert!(gaps.iter().any(|g| *g < 4000), "no retry seen: {gaps:?}");
    let text = scrape_text(addr).await;
    assert_eq!(up(&text, "r-ra"), Some(0.0));
    assert_eq!(log_lines(&exporter, "poll failing", "r-ra"), 1);
    assert_alive(&mut exporter);
}

/// Connection refused: the endpoint is a closed loopback port. When the service comes up on
/// that port, every instance recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_then_the_service_comes_back() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed: SocketAddr = ([127, 0, 0, 1], port).into();
    let ids = ["r-refused-a", "r-refused-b"];
    let (mut exporter, addr) = start_exporter(&exporter_config(closed, "", &ids), &[]);
    let text = wait_until("three failed polls", Duration::from_secs(30), || async {
        let text = scrape_text(addr).await;
        ids.iter().all(|id| polls(&text, id) >= 3.0).then_some(text)
    })
    .await;
    for id in ids {
        assert_eq!(up(&text, id), Some(0.0));
        assert_eq!(
            error_codes(&text, id).keys().collect::<Vec<_>>(),
            vec!["connection"]
        );
        assert_eq!(log_lines(&exporter, "poll failing", id), 1, "{id}");
    }
    assert_alive(&mut exporter);

    // The service comes up on the port that refused.
    let sim = spawn(
        &[
            "simulate",
            "--listen",
            &closed.to_string(),
            "--sim-config",
            "sim.toml",
        ],
        &[],
        &[("sim.toml", "sessions = 7\n")],
    );
    sim.wait_for_line("listening on http://", Duration::from_secs(20));
    wait_until("recovery", Duration::from_secs(20), || async {
        let text = scrape_text(addr).await;
        ids.iter()
            .all(|id| up(&text, id) == Some(1.0))
            .then_some(())
    })
    .await;
    for id in ids {
        assert_eq!(log_lines(&exporter, "instance recovered", id), 1, "{id}");
    }
    assert_alive(&mut exporter);
}

/// `[das] max_body_bytes` is enforced, with and without a `content-length`, and a normal-sized
/// answer next to it is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_cap_refuses_oversized_answers() {
    let (_sim, sim) = start_simulator(
        r#"
[instances.r-cap-small]
sessions = 5
[instances.r-cap-many]
sessions = 3000
[instances.r-cap-padded]
sessions = 5
fault = { kind = "oversized", bytes = 300000 }
[instances.r-cap-stream]
sessions = 5
fault = { kind = "oversized", bytes = 30000000, chunked = true }
"#,
    );
    let ids = ["r-cap-small", "r-cap-many", "r-cap-padded", "r-cap-stream"];
    let cfg = exporter_config(sim, "", &ids)
        .replace("max_body_bytes = 1048576", "max_body_bytes = 16384");
    let (mut exporter, addr) = start_exporter(&cfg, &[]);
    let text = wait_until("two polls each", Duration::from_secs(30), || async {
        let text = scrape_text(addr).await;
        ids.iter().all(|id| polls(&text, id) >= 2.0).then_some(text)
    })
    .await;
    assert_eq!(up(&text, "r-cap-small"), Some(1.0));
    for id in ["r-cap-many", "r-cap-padded", "r-cap-stream"] {
        assert_eq!(up(&text, id), Some(0.0), "{id}");
        assert_eq!(
            error_codes(&text, id).keys().collect::<Vec<_>>(),
            vec!["invalid_response"],
            "{id}"
        );
        let needle = format!("instance_id={id} ");
        let out = exporter.output();
        let line = out
            .lines()
            .find(|l| l.contains("poll failing") && l.contains(&needle))
            .unwrap_or_else(|| panic!("no 'poll failing' line for {id}:\n{out}"));
        assert!(line.contains("das.max_body_bytes"), "{line}");
    }
    assert_alive(&mut exporter);
}

/// The real gateway's `SignatureDoesNotMatch` message echoes its string to sign, which holds the
/// AccessKey id and the STS `SecurityToken` (each percent-encoded twice). Signing with a token
/// long enough that a 300-character cut falls inside it (a real one is over a thousand), no
/// piece of the key id or the token (raw or encoded) reaches the log at trace level, /metrics
/// or `/`: everything after "string to sign" is dropped, secrets are scrubbed before any cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signature_echo_leaks_nothing() {
    // Characters that percent-encode, so every encoded form differs from the raw one.
    const KEY_ID: &str = "STS.sim-echo/key+id";
    const SECRET: &str = "sim-echo-secret-not-real";
    let token = format!(
        "sim-echo-token+with/odd=chars~{}",
        "0123456789abcdef".repeat(40)
    );
    let (_sim, sim) = start_simulator(&format!(
        "sessions = 5\n[[keys]]\naccess_key_id = \"{KEY_ID}\"\naccess_key_secret = \"{SECRET}\"\n\
         security_token = \"{token}\"\n[instances.r-signature]\n\
         fault = {{ kind = \"signature_does_not_match\" }}\n"
    ));
    let ids = ["r-signature", "r-signed-ok"];
    let (exporter, addr) = start_exporter(
        &exporter_config(sim, "", &ids),
        &[
            ("RUST_LOG", "trace"),
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY_ID),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET),
            ("ALIBABA_CLOUD_SECURITY_TOKEN", &token),
        ],
    );
    let text = wait_until("two polls of each", Duration::from_secs(30), || async {
        let text = scrape_text(addr).await;
        ids.iter().all(|id| polls(&text, id) >= 2.0).then_some(text)
    })
    .await;
    // The token really signed: the healthy neighbour is up, the gateway rejected nothing.
    assert_eq!(up(&text, "r-signed-ok"), Some(1.0));
    assert_eq!(up(&text, "r-signature"), Some(0.0));
    assert_eq!(
        error_codes(&text, "r-signature").keys().collect::<Vec<_>>(),
        vec!["SignatureDoesNotMatch"]
    );
    let stats = sim_stats(sim).await;
    assert!(stats["rejected"].as_object().unwrap().is_empty(), "{stats}");
    // The message reached the log up to "string to sign"; the echoed request did not.
    let out = exporter.output();
    let line = out
        .lines()
        .find(|l| l.contains("poll failing") && l.contains("instance_id=r-signature "))
        .unwrap_or_else(|| panic!("no 'poll failing' line:\n{out}"));
    assert!(
        line.contains("server string to sign […]") && !line.contains("SecurityToken"),
        "the log line: {line}"
    );
    assert_no_leak(
        &exporter,
        addr,
        &[KEY_ID.to_owned(), SECRET.to_owned(), token.clone()],
    )
    .await;
    // Nor a prefix of one (what a cut inside the token would leave), in any encoding.
    let (_, _, landing) = get(addr, "/", &[]).await;
    let landing = String::from_utf8(landing).unwrap();
    for n in needles(&[KEY_ID.to_owned(), token]) {
        let prefix = &n[..16];
        assert!(
            !out.contains(prefix) && !landing.contains(prefix),
            "{prefix:?} leaked"
        );
    }
}

/// The log says what failed once per change of state: a failing instance whose error code
/// changes gets a second `poll failing` line, naming the new code, and no more while that code
/// lasts; recovery is one `instance recovered` line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_error_code_logs_a_second_warning() {
    let id = "r-changing";
    let (_sim, sim) = start_simulator(&format!(
        "sessions = 5\n[instances.{id}]\nfault = {{ kind = \"no_permission\" }}\n"
    ));
    let (exporter, addr) = start_exporter(&exporter_config(sim, "", &[id]), &[]);
    let failing = "poll failing";
    let wait_polls = |n: f64| async move {
        wait_until(&format!("{n} polls"), Duration::from_secs(30), || async {
            let text = scrape_text(addr).await;
            (polls(&text, id) >= n).then_some(text)
        })
        .await
    };
    wait_polls(3.0).await;
    assert_eq!(log_lines(&exporter, failing, id), 1);

    set_fault(sim, id, r#"{"kind":"invalid_params"}"#).await;
    let text = wait_until("the new code counted", Duration::from_secs(30), || async {
        let text = scrape_text(addr).await;
        error_codes(&text, id)
            .contains_key("InvalidParams")
            .then_some(text)
    })
    .await;
    // A few more polls with the new code: still two lines.
    wait_polls(polls(&text, id) + 3.0).await;
    assert_eq!(
        log_lines(&exporter, failing, id),
        2,
        "{}",
        exporter.output()
    );
    let out = exporter.output();
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(failing) && l.contains(&format!("instance_id={id} ")))
        .collect();
    assert!(lines[0].contains("code=NoPermission"), "{}", lines[0]);
    assert!(lines[1].contains("code=InvalidParams"), "{}", lines[1]);

    clear_fault(sim, id).await;
    wait_until("recovery", Duration::from_secs(30), || async {
        (up(&scrape_text(addr).await, id) == Some(1.0)).then_some(())
    })
    .await;
    let text = scrape_text(addr).await;
    wait_polls(polls(&text, id) + 2.0).await;
    assert_eq!(log_lines(&exporter, "instance recovered", id), 1);
    assert_eq!(log_lines(&exporter, failing, id), 2);
}

/// Transient faults are retried inside the poll, permanent ones are not: read from the simulator,
/// each poll of a transient fault sends at least two requests, each poll of a permanent one
/// exactly one. With a 2 s interval and a 1 s timeout, the first back-off (0.25–0.5 s) always fits
/// the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_are_retried_and_permanent_ones_are_not() {
    const TRANSIENT: &[(&str, &str)] = &[
        ("r-retry-throttle", r#"{ kind = "throttling_user" }"#),
        ("r-retry-503", r#"{ kind = "service_unavailable" }"#),
        ("r-retry-500", r#"{ kind = "internal_error" }"#),
        ("r-retry-html", r#"{ kind = "html_error", status = 502 }"#),
        ("r-retry-reset", r#"{ kind = "reset_before_response" }"#),
    ];
    const PERMANENT: &[(&str, &str)] = &[
        (
            "r-once-signature",
            r#"{ kind = "signature_does_not_match" }"#,
        ),
        (
            "r-once-timestamp",
            r#"{ kind = "invalid_timestamp_expired" }"#,
        ),
        ("r-once-permission", r#"{ kind = "no_permission" }"#),
        ("r-once-params", r#"{ kind = "invalid_params" }"#),
        ("r-once-truncated", r#"{ kind = "truncated_json" }"#),
        ("r-once-total", r#"{ kind = "total_mismatch", extra = 5 }"#),
    ];
    let mut sim_toml = String::from("sessions = 5\n");
    for (id, fault) in TRANSIENT.iter().chain(PERMANENT) {
        sim_toml.push_str(&format!("[instances.{id}]\nfault = {fault}\n"));
    }
    let (_sim, sim) = start_simulator(&sim_toml);
    let ids: Vec<&str> = TRANSIENT.iter().chain(PERMANENT).map(|c| c.0).collect();
    let cfg = exporter_config(sim, "", &ids).replace("interval = \"1s\"", "interval = \"2s\"");
    let (_exporter, addr) = start_exporter(&cfg, &[]);
    wait_until("three polls of each", Duration::from_secs(40), || async {
        let text = scrape_text(addr).await;
        ids.iter().all(|id| polls(&text, id) >= 3.0).then_some(())
    })
    .await;
    // Polls counted before and after the simulator's figures bracket them: every request the
    // simulator saw belongs to a poll finished by the second scrape or to the one in flight.
    let before = scrape_text(addr).await;
    let stats = sim_stats(sim).await;
    let after = scrape_text(addr).await;
    let requests = |id: &str| stats["requests"][id].as_u64().unwrap_or(0) as f64;
    for (id, _) in TRANSIENT {
        let (p, r) = (polls(&before, id), requests(id));
        assert!(
            r >= 2.0 * p,
            "{id}: {r} requests for {p} polls: not retried"
        );
    }
    for (id, _) in PERMANENT {
        let (p0, r, p1) = (polls(&before, id), requests(id), polls(&after, id));
        assert!(
            p0 <= r && r <= p1 + 1.0,
            "{id}: {r} requests for {p0}..{p1} polls: retried"
        );
    }
}

/// Discovery denied (the RAM policy lacks `kvstore:DescribeInstances`): every refresh is counted
/// under the API's code, while the static instances keep being polled and the exporter turns
/// ready; nothing of the inventory is polled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_discovery_leaves_static_instances_polled() {
    let (_sim, sim) = start_simulator(
        "sessions = 5\n[instances.DescribeInstances]\nfault = { kind = \"no_permission\" }\n",
    );
    // Something to find if discovery were allowed.
    let inventory = serde_json::json!([{
        "InstanceId": "r-inventory-1", "InstanceName": "x", "ArchitectureType": "standard",
        "InstanceStatus": "Normal", "InstanceType": "Redis", "RegionId": "cn-hangzhou",
    }]);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = client
        .put(format!("http://{sim}/_sim/inventory"))
        .header("content-type", "application/json")
        .body(inventory.to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let discovery = format!(
        "[[discovery]]\nregions = [\"cn-hangzhou\"]\nrefresh = \"1s\"\nendpoint = \"http://{sim}\"\n"
    );
    let ids = ["r-static-a", "r-static-b"];
    let (exporter, addr) = start_exporter(&exporter_config(sim, &discovery, &ids), &[]);
    let errors = "redis_session_exporter_discovery_errors_total{region=\"cn-hangzhou\",code=\"NoPermission\"}";
    let text = wait_until(
        "three denied refreshes and three polls of each static instance",
        Duration::from_secs(40),
        || async {
            let text = scrape_text(addr).await;
            (value(&text, errors) >= Some(3.0) && ids.iter().all(|id| polls(&text, id) >= 3.0))
                .then_some(text)
        },
    )
    .await;
    for id in ids {
        assert_eq!(up(&text, id), Some(1.0), "{id}");
    }
    assert_eq!(up(&text, "r-inventory-1"), None);
    assert_eq!(get(addr, "/readyz", &[]).await.0, 200);
    let stats = sim_stats(sim).await;
    assert!(stats["requests"].get("r-inventory-1").is_none(), "{stats}");
    assert!(
        stats["describe_requests"]["cn-hangzhou"].as_u64() >= Some(3),
        "{stats}"
    );
    assert!(
        exporter.output().contains("discovery refresh failed"),
        "{}",
        exporter.output()
    );
}

/// `redis_session_exporter_api_requests_total{api, code}` against the simulator's own counts:
/// every request the simulator answered is counted once, under the code its answer gets, retries
/// included (a poll retried twice is one poll and three requests), and so is every
/// `DescribeInstances` page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_are_what_the_simulator_saw() {
    let (_sim, sim) = start_simulator(
        "sessions = 5\n\
         [instances.r-api-retried]\nfault = { kind = \"service_unavailable\" }\n\
         [instances.r-api-denied]\nfault = { kind = \"no_permission\" }\n\
         [[inventory]]\nInstanceId = \"r-api-found\"\nRegionId = \"cn-hangzhou\"\nInstanceStatus = \"Normal\"\n",
    );
    // A long interval: after the start-up round nothing moves, so the counts can settle.
    let discovery = format!(
        "[[discovery]]\nregions = [\"cn-hangzhou\"]\nrefresh = \"60s\"\nendpoint = \"http://{sim}\"\n"
    );
    let ids = ["r-api-retried", "r-api-denied", "r-api-ok"];
    let cfg = exporter_config(sim, "", &ids).replace("interval = \"1s\"", "interval = \"30s\"")
        + &discovery;
    let (_exporter, addr) = start_exporter(&cfg, &[]);

    // Two failed attempts, then the service recovers inside the same poll.
    wait_until(
        "two attempts of r-api-retried",
        Duration::from_secs(10),
        || async {
            (sim_stats(sim).await["requests"]["r-api-retried"].as_u64() >= Some(2)).then_some(())
        },
    )
    .await;
    clear_fault(sim, "r-api-retried").await;

    // The simulator's answers, by the code the exporter gives each kind of answer.
    let code_of = |label: &str| match label {
        "ok" => "ok".to_owned(),
        "service_unavailable" => "ServiceUnavailable".to_owned(),
        "no_permission" => "NoPermission".to_owned(),
        other => panic!("unexpected answer {other}"),
    };
    let (text, stats) = wait_until(
        "the exporter's counts to match the simulator's",
        Duration::from_secs(20),
        || async {
            let text = scrape_text(addr).await;
            let stats = sim_stats(sim).await;
            let mut want: BTreeMap<String, f64> = BTreeMap::new();
            for answers in stats["answers"].as_object()?.values() {
                for (label, n) in answers.as_object()? {
                    *want.entry(code_of(label)).or_default() += n.as_f64()?;
                }
            }
            let got: BTreeMap<String, f64> = samples(&text)
                .into_iter()
                .filter_map(|(k, v)| {
                    let code = k.strip_prefix(
                        "redis_session_exporter_api_requests_total{api=\"GetRedisAllSession\",code=\"",
                    )?;
                    Some((code.strip_suffix("\"}")?.to_owned(), v))
                })
                .collect();
            let pages: f64 = stats["describe_requests"]
                .as_object()?
                .values()
                .filter_map(|v| v.as_f64())
                .sum();
            let described = value(
                &text,
                "redis_session_exporter_api_requests_total{api=\"DescribeInstances\",code=\"ok\"}",
            );
            let settled = up(&text, "r-api-found") == Some(1.0)
                && up(&text, "r-api-retried") == Some(1.0)
                && got == want
                && described == Some(pages);
            settled.then_some((text, stats))
        },
    )
    .await;
    // A poll retried twice: one poll, three requests.
    assert_eq!(stats["requests"]["r-api-retried"], 3, "{stats}");
    assert_eq!(polls(&text, "r-api-retried"), 1.0);
    assert_eq!(
        value(
            &text,
            "redis_session_exporter_api_requests_total{api=\"GetRedisAllSession\",code=\"ServiceUnavailable\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &text,
            "redis_session_exporter_api_requests_total{api=\"GetRedisAllSession\",code=\"NoPermission\"}"
        ),
        Some(1.0),
        "a permanent error is not retried"
    );
}
