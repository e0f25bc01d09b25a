//! End to end: reloading the configuration of the real binary (SIGHUP and `POST /-/reload`)
//! while it polls the simulator, and the accounting of poll rounds that could not run.

use std::net::SocketAddr;
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

#[tokio::test]
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
    // The restarted task kept r-a's counters: they continue from where they were.
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

#[tokio::test]
async fn an_invalid_reload_is_rejected_and_the_old_configuration_keeps_running() {
    let (_sim, sim) = start_simulator(SIM);
    let v1 = config(sim, "1s", "[[instances]]\nid = \"r-a\"\n");
    let (mut exp, addr) = start_exporter(&v1, &[]);
    let t = wait_polls(addr, "r-a", 1.0).await;
    let ts_start = value(&t, RELOAD_TS).unwrap();

    // An unknown key: refused with the key named, over HTTP and in the log.
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
    let line = exp.wait_for_line("reload rejected", WAIT);
    assert!(line.contains("lable"), "the log gives the reason: {line}");

    let t = scrape_text(addr).await;
    assert_eq!(value(&t, RELOAD_OK), Some(0.0));
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

    // A file that parses but does not validate (a duplicate id), and then no file at all.
    write_config(
        &exp,
        &config(
            sim,
            "1s",
            "[[instances]]\nid = \"r-a\"\n[[instances]]\nid = \"r-a\"\n",
        ),
    );
    let (status, body) = post_reload(addr).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("instances"), "{body}");
    std::fs::remove_file(exp.dir.join("config.toml")).unwrap();
    let (status, body) = post_reload(addr).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("config.toml"), "names the file: {body}");
    // SIGHUP with a bad file: same verdict, and the process stays up.
    exp.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(exp.child.try_wait().unwrap().is_none(), "still running");
    let t = scrape_text(addr).await;
    assert_eq!(value(&t, RELOAD_OK), Some(0.0));

    // A good file again: applied, status back to 1.
    write_config(
        &exp,
        &config(
            sim,
            "1s",
            "[[instances]]\nid = \"r-a\"\n[[instances]]\nid = \"r-b\"\n",
        ),
    );
    let a_before = polls(&scrape_text(addr).await, "r-a").unwrap();
    let (status, body) = post_reload(addr).await;
    assert_eq!(status, 200, "{body}");
    let t = wait_polls(addr, "r-b", 1.0).await;
    assert!(
        polls(&t, "r-a").unwrap() >= a_before,
        "an unchanged instance keeps its counters"
    );
    assert_eq!(value(&t, RELOAD_OK), Some(1.0));
    assert!(value(&t, RELOAD_TS).unwrap() > ts_start);
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
    let (exp, addr) = start_exporter(&config(sim, "1h", inst), &[]);
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
    tokio::time::sleep(Duration::from_millis(1500)).await; // a poll under way may still land
    let settled = polls(&scrape_text(addr).await, "r-sleepy").unwrap();
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
