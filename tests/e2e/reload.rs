//! End to end: reloading the configuration of the real binary (SIGHUP and `POST /-/reload`)
//! while it polls the simulator, and the accounting of poll rounds that could not run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

const SIM: &str = r#"
seed = 11
[instances.r-a]
sessions = 300
[instances.r-b]
sessions = 20
[instances.r-c]
sessions = 30
[instances.r-sleepy]
sessions = 10
[instances.r-slow]
sessions = 10
fault = { kind = "slow", delay_ms = 2500 }
[instances.r-fast]
sessions = 10
"#;

const WAIT: Duration = Duration::from_secs(30);

fn config(sim: SocketAddr, interval: &str, extra: &str) -> String {
    format!(
        "[das]\nendpoint = \"http://{sim}\"\ntimeout = \"5s\"\n[poll]\ninterval = \"{interval}\"\n{extra}"
    )
}

fn polls(text: &str, id: &str) -> Option<f64> {
    value(
        text,
        &format!("redis_session_exporter_polls_total{{instance_id=\"{id}\"}}"),
    )
}

/// Every series (any family) that carries `instance_id="id"`.
fn any_series_of(text: &str, id: &str) -> Vec<String> {
    let needle = format!("instance_id=\"{id}\"");
    samples(text)
        .into_keys()
        .filter(|k| k.contains(&needle))
        .collect()
}

const RELOAD_OK: &str = "redis_session_exporter_config_last_reload_successful";
const RELOAD_TS: &str = "redis_session_exporter_config_last_reload_success_timestamp_seconds";

async fn post_reload(addr: SocketAddr) -> (u16, String) {
    post(addr, "/-/reload").await
}

fn write_config(p: &Proc, text: &str) {
    std::fs::write(p.dir.join("config.toml"), text).unwrap();
}

/// Waits until `id` has been polled at least `n` times; returns the scrape.
async fn wait_polls(addr: SocketAddr, id: &str, n: f64) -> String {
    wait_until(&format!("{n} polls of {id}"), WAIT, || async move {
        let t = scrape_text(addr).await;
        (polls(&t, id).unwrap_or(0.0) >= n).then_some(t)
    })
    .await
}

/// Scrapes all along in the background (every 50 ms) and checks that no counter (`*_total`) is
/// ever below a value an earlier scrape showed: "counters kept" means never decreasing, even for
/// a moment, across every reload. Series that disappear (a removed instance) are fine.
struct CounterWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<usize>,
}

impl CounterWatch {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut highest: BTreeMap<String, f64> = BTreeMap::new();
            let mut scrapes = 0;
            while !flag.load(Ordering::Relaxed) {
                let text = scrape_text(addr).await;
                for (series, v) in samples(&text) {
                    let name = series.split('{').next().unwrap_or_default();
                    if !name.ends_with("_total") {
                        continue;
                    }
                    let top = highest.entry(series.clone()).or_insert(v);
                    assert!(
                        v >= *top,
                        "{series} went down from {top} to {v} (scrape {scrapes})"
                    );
                    *top = v;
                }
                scrapes += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            scrapes
        });
        Self { stop, task }
    }

    /// Stops watching; returns how many scrapes were checked (panics with the first decrease).
    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        match self.task.await {
            Ok(n) => n,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_instances_applies_limits_and_keeps_counters() {
    let (_sim, sim) = start_simulator(SIM);
    let v1 = config(
        sim,
        "1s",
        "[limits]\nmax_client_names = 2\n[[instances]]\nid = \"r-a\"\nlabels = { env = \"one\" }\n[[instances]]\nid = \"r-b\"\n",
    );
    let (exp, addr) = start_exporter(&v1, &[]);

    let t = wait_polls(addr, "r-b", 1.0).await;
    let t = if polls(&t, "r-a").unwrap_or(0.0) >= 2.0 {
        t
    } else {
        wait_polls(addr, "r-a", 2.0).await
    };
    assert_eq!(value(&t, RELOAD_OK), Some(1.0), "the start-up load counts");
    let ts_start = value(&t, RELOAD_TS).unwrap();
    assert!(ts_start > 1.0e9, "{ts_start}");
    let names = series_of(&t, "redis_sessions_by_client_name", "r-a");
    assert!(names.len() <= 3, "two names and other: {names:?}");
    assert!(!any_series_of(&t, "r-b").is_empty());
    assert!(any_series_of(&t, "r-c").is_empty());
    let polls_a_before = polls(&t, "r-a").unwrap();
    let counters = CounterWatch::start(addr);

    // r-b goes, r-c comes, r-a stays with a new label (its task restarts) and the name cap grows.
    std::thread::sleep(Duration::from_millis(1100)); // so the success timestamp visibly moves
    let v2 = config(
        sim,
        "1s",
        "[limits]\nmax_client_names = 20\n[[instances]]\nid = \"r-a\"\nlabels = { env = \"two\" }\n[[instances]]\nid = \"r-c\"\n",
    );
    write_config(&exp, &v2);
    exp.signal("HUP");
    exp.wait_for_line("configuration reloaded", WAIT);

    let t = wait_until("the reloaded set on /metrics", WAIT, || async move {
        let t = scrape_text(addr).await;
        let relabelled = value(
            &t,
            "redis_session_instance_info{instance_id=\"r-a\",env=\"two\"}",
        )
        .is_some();
        let uncapped = series_of(&t, "redis_sessions_by_client_name", "r-a").len() > 3;
        let c_polled = polls(&t, "r-c").unwrap_or(0.0) >= 1.0;
        (relabelled && uncapped && c_polled).then_some(t)
    })
    .await;
    assert!(
        any_series_of(&t, "r-b").is_empty(),
        "a removed instance's series vanish: {:?}",
        any_series_of(&t, "r-b")
    );
    assert_eq!(
        value(
            &t,
            "redis_session_instance_info{instance_id=\"r-a\",env=\"one\"}"
        ),
        None,
        "the old label set is gone"
    );
    // The restarted task kept r-a's counters: they never went down (the watch saw every
    // scrape) and kept counting.
    let polls_a_after = polls(&t, "r-a").unwrap();
    assert!(
        polls_a_after > polls_a_before,
        "polls_total of r-a went from {polls_a_before} to {polls_a_after}"
    );
    assert_eq!(value(&t, RELOAD_OK), Some(1.0));
    assert!(value(&t, RELOAD_TS).unwrap() > ts_start);
    // The whole name distribution is there now (it was folded into two names and `other`).
    let names = series_of(&t, "redis_sessions_by_client_name", "r-a");
    let sessions: f64 = series_of(&t, "redis_sessions", "r-a").values().sum();
    assert!(sessions > 0.0);
    assert_eq!(names.values().sum::<f64>(), sessions);

    // And r-b stays gone: no late poll of the removed task brings it back.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let t = scrape_text(addr).await;
    assert!(any_series_of(&t, "r-b").is_empty());
    let scrapes = counters.finish().await;
    assert!(scrapes >= 10, "only {scrapes} scrapes watched the counters");
    let log = exp.output();
    assert!(
        log.contains("instance removed") && log.contains("r-b"),
        "{log}"
    );
    assert!(
        log.contains("instance added") && log.contains("r-c"),
        "{log}"
    );
}

const REJECTED: &str = "reload rejected";
const RELOADED: &str = "configuration reloaded";

/// Each trigger (`POST /-/reload`, SIGHUP) with a bad file turns
/// `…_config_last_reload_successful` from 1 to 0 and logs one rejection line with the reason;
/// a good file turns it back to 1. Meanwhile the old configuration keeps polling and no counter
/// ever goes down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reload_is_rejected_and_the_old_configuration_keeps_running() {
    let (_sim, sim) = start_simulator(SIM);
    let good = |ids: &[&str]| {
        let list: String = ids
            .iter()
            .map(|id| format!("[[instances]]\nid = \"{id}\"\n"))
            .collect();
        config(sim, "1s", &list)
    };
    let (exp, addr) = start_exporter_with(&good(&["r-a"]), &[], &[LIFECYCLE]);
    let t = wait_polls(addr, "r-a", 1.0).await;
    assert_eq!(value(&t, RELOAD_OK), Some(1.0), "the start-up load counts");
    let ts_start = value(&t, RELOAD_TS).unwrap();
    let counters = CounterWatch::start(addr);
    let reload_ok = || async move { value(&scrape_text(addr).await, RELOAD_OK) };

    // POST, an unknown key: 1 -> 0, refused with the key named, over HTTP and in the log.
    write_config(
        &exp,
        &config(
            sim,
            "1s",
            "[[instances]]\nid = \"r-a\"\n[[instances]]\nid = \"r-b\"\nlable = 1\n",
        ),
    );
    let (status, body) = post_reload(addr).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("reload rejected") && body.contains("lable"),
        "{body}"
    );
    exp.wait_for_lines(REJECTED, 1, WAIT);
    let line = exp.wait_for_line(REJECTED, WAIT);
    assert!(line.contains("lable"), "the log gives the reason: {line}");
    assert_eq!(reload_ok().await, Some(0.0));
    let t = scrape_text(addr).await;
    assert_eq!(
        value(&t, RELOAD_TS),
        Some(ts_start),
        "the last success is still the start"
    );
    assert!(
        any_series_of(&t, "r-b").is_empty(),
        "nothing of the bad file applied"
    );
    // The old configuration keeps polling.
    let before = polls(&t, "r-a").unwrap();
    wait_polls(addr, "r-a", before + 2.0).await;

    // POST, a good file: 0 -> 1.
    write_config(&exp, &good(&["r-a"]));
    let (status, body) = post_reload(addr).await;
    assert_eq!(status, 200, "{body}");
    exp.wait_for_lines(RELOADED, 1, WAIT);
    assert_eq!(reload_ok().await, Some(1.0));

    // SIGHUP, a file that parses but does not validate (a duplicate id): 1 -> 0, a second
    // rejection line, the process stays up.
    write_config(&exp, &good(&["r-a", "r-a"]));
    exp.signal("HUP");
    exp.wait_for_lines(REJECTED, 2, WAIT);
    let out = exp.output();
    let second = out.lines().filter(|l| l.contains(REJECTED)).nth(1).unwrap();
    assert!(second.contains("instances"), "names the key: {second}");
    wait_until("reload_successful 0 after SIGHUP", WAIT, || async {
        (reload_ok().await == Some(0.0)).then_some(())
    })
    .await;

    // SIGHUP, a good file: 0 -> 1.
    write_config(&exp, &good(&["r-a"]));
    exp.signal("HUP");
    exp.wait_for_lines(RELOADED, 2, WAIT);
    wait_until("reload_successful 1 after SIGHUP", WAIT, || async {
        (reload_ok().await == Some(1.0)).then_some(())
    })
    .await;

    // Each trigger with no file at all: 1 -> 0, the file named; then a good file, 0 -> 1.
    std::fs::remove_file(exp.dir.join("config.toml")).unwrap();
    let (status, body) = post_reload(addr).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("config.toml"), "names the file: {body}");
    exp.wait_for_lines(REJECTED, 3, WAIT);
    assert_eq!(reload_ok().await, Some(0.0));
    write_config(&exp, &good(&["r-a"]));
    exp.signal("HUP");
    exp.wait_for_lines(RELOADED, 3, WAIT);
    wait_until("reload_successful 1", WAIT, || async {
        (reload_ok().await == Some(1.0)).then_some(())
    })
    .await;
    std::fs::remove_file(exp.dir.join("config.toml")).unwrap();
    exp.signal("HUP");
    exp.wait_for_lines(REJECTED, 4, WAIT);
    let out = exp.output();
    let fourth = out.lines().filter(|l| l.contains(REJECTED)).nth(3).unwrap();
    assert!(fourth.contains("config.toml"), "names the file: {fourth}");
    wait_until("reload_successful 0 after SIGHUP", WAIT, || async {
        (reload_ok().await == Some(0.0)).then_some(())
    })
    .await;

    // A good file with a new instance: applied, status back to 1, the old instance's counters
    // kept.
    write_config(&exp, &good(&["r-a", "r-b"]));
    let (status, body) = post_reload(addr).await;
    assert_eq!(status, 200, "{body}");
    let t = wait_polls(addr, "r-b", 1.0).await;
    assert_eq!(value(&t, RELOAD_OK), Some(1.0));
    assert!(value(&t, RELOAD_TS).unwrap() > ts_start);
    let scrapes = counters.finish().await;
    assert!(scrapes >= 10, "only {scrapes} scrapes watched the counters");
    let mut exp = exp;
    assert!(exp.terminate().success());
}

#[tokio::test]
async fn a_new_interval_applies_to_tasks_already_sleeping() {
    // r-sleepy's slot on an hourly grid is far away; it must not wait for it once the interval
    // drops to a second.
    let hour = Duration::from_secs(3600);
    let phase = redis_session_exporter::scheduler::phase("r-sleepy", hour);
    assert!(
        phase > Duration::from_secs(600),
        "the test needs a distant slot: {phase:?}"
    );
    let (_sim, sim) = start_simulator(SIM);
    let inst = "[[instances]]\nid = \"r-sleepy\"\n";
    let (exp, addr) = start_exporter_with(&config(sim, "1h", inst), &[], &[LIFECYCLE]);
    wait_polls(addr, "r-sleepy", 1.0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = scrape_text(addr).await;
    assert_eq!(
        polls(&t, "r-sleepy"),
        Some(1.0),
        "hourly: one start-up poll"
    );

    write_config(&exp, &config(sim, "1s", inst));
    let (status, body) = post_reload(addr).await;
    assert_eq!(status, 200, "{body}");
    let t = wait_polls(addr, "r-sleepy", 4.0).await;
    assert_eq!(
        value(&t, "redis_session_exporter_skipped_polls_total"),
        Some(0.0),
        "re-planning is not skipping"
    );

    // And back to hourly: the one-second rhythm stops.
    write_config(&exp, &config(sim, "1h", inst));
    let (status, body) = post_reload(addr).await;
    assert_eq!(status, 200, "{body}");
    // A poll under way at the reload may still land: wait until every request the simulator
    // saw is a finished poll, rather than for a time a loaded machine may overrun.
    let settled = wait_until("no poll in flight", WAIT, || async move {
        let stats = sim_stats(sim).await;
        let polled = polls(&scrape_text(addr).await, "r-sleepy").unwrap();
        (stats["in_flight"] == 0 && stats["requests"]["r-sleepy"].as_f64() == Some(polled))
            .then_some(polled)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        polls(&scrape_text(addr).await, "r-sleepy"),
        Some(settled),
        "no polls on the old one-second grid"
    );
}

#[tokio::test]
async fn rounds_a_slow_answer_outlasts_are_counted_as_skipped() {
    let (_sim, sim) = start_simulator(SIM);
    let (exp, addr) = start_exporter(
        &config(
            sim,
            "1s",
            "[[instances]]\nid = \"r-slow\"\n[[instances]]\nid = \"r-fast\"\n",
        ),
        &[],
    );
    let t = wait_until("skipped rounds", WAIT, || async move {
        let t = scrape_text(addr).await;
        (value(&t, "redis_session_exporter_skipped_polls_total").unwrap_or(0.0) >= 2.0).then_some(t)
    })
    .await;
    // The slow instance's answer (2.5 s) outlasts its one-second budget: a timeout, not a pile-up.
    assert!(
        value(
            &t,
            "redis_session_exporter_poll_errors_total{instance_id=\"r-slow\",code=\"timeout\"}"
        )
        .is_some(),
        "{t}"
    );
    // Its polls never overlap: at most one request per poll reached the simulator (no stacking).
    let stats = sim_stats(sim).await;
    let requests = stats["requests"]["r-slow"].as_u64().unwrap_or(0) as f64;
    let slow_polls = polls(&scrape_text(addr).await, "r-slow").unwrap();
    assert!(
        requests <= slow_polls + 1.0,
        "{requests} requests for {slow_polls} polls"
    );
    // The healthy instance keeps its rhythm meanwhile.
    let fast = polls(&t, "r-fast").unwrap_or(0.0);
    wait_polls(addr, "r-fast", fast + 2.0).await;
    let line = exp.wait_for_line("skipped rounds", WAIT);
    assert!(line.contains("r-slow"), "{line}");
}

/// `[server] listen`, `[das]` and `[credentials]` are bound at start: a reload that changes them
/// logs one warning per section and otherwise ignores them, while the rest of the file (a new
/// instance) applies. Each ignored change would be visible if applied: the server would move, the
/// polls would go to the other simulator, the requests would be signed with an unknown key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_only_settings_are_warned_about_and_ignored() {
    let (_sim, sim) = start_simulator(SIM);
    let (_other, other) = start_simulator(SIM);
    let file = |listen: &str, endpoint: SocketAddr, credentials: &str, ids: &[&str]| {
        let mut c = format!(
            "[server]\nlisten = \"{listen}\"\n[das]\nendpoint = \"http://{endpoint}\"\n\
             timeout = \"5s\"\n[poll]\ninterval = \"1s\"\n{credentials}"
        );
        for id in ids {
            c.push_str(&format!("[[instances]]\nid = \"{id}\"\n"));
        }
        c
    };
    // Started without --listen, so `[server] listen` is the file's.
    let exp = spawn(
        &["--config", "config.toml", LIFECYCLE],
        &[
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", SIM_KEY_ID),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SIM_KEY_SECRET),
        ],
        &[
            ("config.toml", &file("127.0.0.1:0", sim, "", &["r-a"])),
            ("other-secret", "another-secret-not-real\n"),
        ],
    );
    let addr = exporter_addr(&exp);
    wait_polls(addr, "r-a", 1.0).await;

    let moved = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    write_config(
        &exp,
        &file(
            &moved.to_string(),
            other,
            "[credentials]\nprovider = \"static\"\naccess_key_id = \"LTAI-other-not-real\"\n\
             access_key_secret_file = \"other-secret\"\n",
            &["r-a", "r-c"],
        ),
    );
    let (status, body) = post_reload(addr).await;
    assert_eq!(status, 200, "{body}");
    for section in ["server.listen", "[das]", "[credentials]"] {
        exp.wait_for_lines(
            &format!("{section} changed; it takes effect after a restart"),
            1,
            WAIT,
        );
    }
    // The new instance applies, polled through the old endpoint with the old key: it comes up.
    let t = wait_until("r-c up", WAIT, || async move {
        let t = scrape_text(addr).await; // the old address still serves
        (value(&t, "redis_session_up{instance_id=\"r-c\"}") == Some(1.0)).then_some(t)
    })
    .await;
    assert_eq!(
        value(&t, "redis_session_up{instance_id=\"r-a\"}"),
        Some(1.0)
    );
    let a_before = polls(&t, "r-a").unwrap();
    wait_polls(addr, "r-a", a_before + 2.0).await;
    let stats = sim_stats(sim).await;
    assert!(stats["requests"]["r-c"].as_u64() >= Some(1), "{stats}");
    assert!(stats["rejected"].as_object().unwrap().is_empty(), "{stats}");
    assert_eq!(
        sim_stats(other).await["received"],
        0,
        "the new [das] endpoint was used"
    );
    assert!(
        std::net::TcpStream::connect(moved).is_err(),
        "the new listen address was bound"
    );
}

/// `[poll] concurrency` and `max_requests_per_second` apply at once, also to polls already
/// waiting for a slot under the old limits. Concurrency: six instances whose answers the
/// simulator holds; with `concurrency = 1` one request is in flight, and the other five wait for
/// a slot that cannot free up until the test releases the first; raising it to 3 must bring the
/// count to 3 while the first is still held. Rate: with one request per 100 s, six instances need
/// minutes; raised to 50/s, the five waiting are all polled within the test's wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_limits_apply_at_once_to_waiting_polls() {
    let ids: Vec<String> = (0..6).map(|i| format!("r-lim-{i}")).collect();
    let mut sim_toml = String::from("sessions = 3\n");
    for id in &ids {
        sim_toml.push_str(&format!(
            "[instances.{id}]\nfault = {{ kind = \"hold\" }}\n"
        ));
    }
    let (_sim, sim) = start_simulator(&sim_toml);
    let file = |concurrency: usize, rate: &str| {
        let mut c = format!(
            "[das]\nendpoint = \"http://{sim}\"\ntimeout = \"300s\"\n[poll]\ninterval = \"600s\"\n\
             concurrency = {concurrency}\nmax_requests_per_second = {rate}\n"
        );
        for id in &ids {
            c.push_str(&format!("[[instances]]\nid = \"{id}\"\n"));
        }
        c
    };
    let (exp, addr) = start_exporter_with(&file(1, "1000"), &[], &[LIFECYCLE]);
    let stats = || async { sim_stats(sim).await };
    wait_until("one request in flight", WAIT, || async {
        (stats().await["in_flight"] == 1).then_some(())
    })
    .await;
    // Nothing else starts while the one slot is taken (the queue is waiting, not idle).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = stats().await;
    assert_eq!(s["max_in_flight"], 1, "{s}");
    assert_eq!(s["received"], 1, "{s}");

    write_config(&exp, &file(3, "1000"));
    let (status, body) = post_reload(addr).await;
    assert_eq!(status, 200, "{body}");
    wait_until("three requests in flight", WAIT, || async {
        (stats().await["in_flight"] == 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = stats().await;
    assert_eq!(s["max_in_flight"], 3, "never more than the new limit: {s}");

    // Rate: release everything under a limit of one request per 100 s, with room for all six.
    write_config(&exp, &file(10, "0.01"));
    let (status, body) = post_reload(addr).await;
    assert_eq!(status, 200, "{body}");
    for id in &ids {
        clear_fault(sim, id).await;
    }
    wait_until("the held polls answered", WAIT, || async {
        (stats().await["in_flight"] == 0).then_some(())
    })
    .await;
    let polled = |s: &serde_json::Value| {
        ids.iter()
            .filter(|id| s["requests"][id.as_str()].as_u64().unwrap_or(0) >= 1)
            .count()
    };
    let before = polled(&stats().await);
    assert!(
        before < ids.len(),
        "all six polled already: {}",
        stats().await
    );
    write_config(&exp, &file(10, "50"));
    let (status, body) = post_reload(addr).await;
    assert_eq!(status, 200, "{body}");
    wait_until("every instance polled", Duration::from_secs(20), || async {
        (polled(&stats().await) == ids.len()).then_some(())
    })
    .await;
}

/// Without `--web.enable-lifecycle`, `POST /-/reload` answers 403 and changes nothing (the new
/// file is not read: no instance added, no reload counted either way); SIGHUP still reloads.
/// A rejected reload's reply names the key and never quotes the file's text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_needs_the_lifecycle_flag_and_sighup_does_not() {
    let (_sim, sim) = start_simulator(SIM);
    let with = |ids: &[&str], extra: &str| {
        let list: String = ids
            .iter()
            .map(|id| format!("[[instances]]\nid = \"{id}\"\n"))
            .collect();
        config(sim, "1s", &format!("{extra}{list}"))
    };
    let (exp, addr) = start_exporter(&with(&["r-a"], ""), &[]);
    wait_polls(addr, "r-a", 1.0).await;

    write_config(&exp, &with(&["r-a", "r-b"], ""));
    let (status, body) = post_reload(addr).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--web.enable-lifecycle"), "{body}");
    // Two more polls of r-a: long enough for a reload to have added r-b had one happened.
    let t = scrape_text(addr).await;
    let t = wait_polls(addr, "r-a", polls(&t, "r-a").unwrap() + 2.0).await;
    assert!(any_series_of(&t, "r-b").is_empty(), "the POST reloaded");
    let out = exp.output();
    assert!(
        !out.contains(RELOADED) && !out.contains(REJECTED),
        "the POST reached the reload: {out}"
    );

    // SIGHUP reloads without the flag.
    exp.signal("HUP");
    exp.wait_for_lines(RELOADED, 1, WAIT);
    wait_polls(addr, "r-b", 1.0).await;
    drop(exp);

    // With the flag, a rejected reload's reply: rejected, the key named, nothing of the file
    // (a secret typed on the wrong line, a value under the wrong key) nor figment's names.
    let (exp, addr) = start_exporter_with(&with(&["r-a"], ""), &[], &[LIFECYCLE]);
    wait_polls(addr, "r-a", 1.0).await;
    const SECRET: &str = "NotARealSecretButSecretLooking";
    for (bad, key) in [
        (
            with(
                &["r-a"],
                &format!("[credentials]\naccess_key_id = \"{SECRET}\n"),
            ),
            "line 7, column 48",
        ),
        (
            with(&["r-a"], &format!("[limits]\nmax_sources = \"{SECRET}\"\n")),
            "`limits.max_sources`",
        ),
    ] {
        write_config(&exp, &bad);
        let (status, body) = post_reload(addr).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body.starts_with("reload rejected") && body.contains(key),
            "{body}"
        );
        for leak in [SECRET, "TOML source string", "figment", "alloc::"] {
            assert!(!body.contains(leak), "the reply quotes {leak:?}: {body}");
        }
    }
    assert!(!exp.output().contains(SECRET), "{}", exp.output());
}
