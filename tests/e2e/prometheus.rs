//! End to end with a real Prometheus server (Debian's `prometheus` package): the real exporter
//! polls the DAS simulator, Prometheus scrapes it every second with OpenMetrics negotiated and
//! evaluates the shipped recording and alert rules; then every Grafana panel query and every rule
//! expression is run through Prometheus' HTTP API, and the throttling, instance-down and
//! exporter-down alerts must fire.
//!
//! What differs from production, and why:
//! - The alert rules are loaded from a test copy of `deploy/prometheus/alert-rules.yml` in which
//!   every `for:` is shortened to `FOR_IN_TEST`: waiting 15 minutes for `RedisSessionApiThrottled`
//!   is no test. The expressions, their windows and thresholds are the shipped ones (the test
//!   checks that only `for:` lines differ). The recording rules are loaded unchanged.
//! - Dashboard variables are substituted the way Grafana does for "All": every `$variable`
//!   becomes `.*` (a constant its value); `$__rate_interval` becomes `1m` (Grafana's value for a 15 s scrape
//!   interval; the data here is seconds old, and `rate` needs only two samples in the window).
//! - A second target of the job points at a closed loopback port, so `up == 0` for it and
//!   `RedisSessionExporterDown` fires.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::redis::RedisServer;
use crate::common::*;
use serde_json::Value;

/// The `for:` every alert gets in the test copy: short, but not zero, so each alert still goes
/// through `pending` before it fires.
const FOR_IN_TEST: &str = "2s";

const SIM: &str = r#"
seed = 11
[instances.r-prom-ok]
sessions = 300
[instances.r-prom-big]
sessions = 1200
[instances.r-prom-throttled]
fault = { kind = "throttling_user" }
[instances.r-prom-denied]
fault = { kind = "no_permission" }
[instances.r-prom-short]
sessions = 300
fault = { kind = "total_mismatch", extra = 100 }
"#;

/// Four DAS instances, one direct instance (a real redis-server with one client) for the
/// direct-only families, and a discovery block (the simulator's empty inventory) for the discovery
/// families, and attribution (a network for the simulator's clients; Kubernetes on with no
/// configuration to be found, which counts `code="config"` errors) for the by-workload and
/// attribution families: every dashboard panel then has data.
fn exporter_config(sim: SocketAddr, redis: SocketAddr) -> String {
    format!(
        r#"
[das]
endpoint = "http://{sim}"
timeout = "2s"
[poll]
interval = "1s"
concurrency = 4
max_requests_per_second = 50.0
[[instances]]
id = "r-prom-ok"
[[instances]]
id = "r-prom-big"
[[instances]]
id = "r-prom-throttled"
[[instances]]
id = "r-prom-short"
[[instances]]
id = "r-prom-denied"
labels = {{ team = "payments", env = "prod" }}
[[instances]]
id = "r-prom-direct"
source = "direct"
address = "redis://{redis}"
[[discovery]]
regions = ["cn-hangzhou"]
refresh = "1s"
endpoint = "http://{sim}"
[attribution]
networks = [{{ cidr = "10.0.0.0/8", name = "vpc" }}]
[attribution.kubernetes]
enabled = true
"#
    )
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free loopback port (bound, then released for the process that needs it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The Prometheus binary, or a failure that says how to install it (never a skip).
fn prometheus_bin() -> PathBuf {
    for p in ["/usr/bin/prometheus", "/usr/local/bin/prometheus"] {
        if Path::new(p).is_file() {
            return p.into();
        }
    }
    let found = Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "the Prometheus server is required: `apt-get install prometheus` (scripts/test.sh installs it)"
    );
    "prometheus".into()
}

/// A Prometheus server on a loopback port with its own storage; killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(config: &str, rule_files: &[(&str, String)]) -> Prometheus {
        let bin = prometheus_bin();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        for (name, text) in rule_files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.path().join("prometheus.log");
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .expect("start prometheus");
        Prometheus {
            child,
            addr,
            log: dir.path().join("stderr.log"),
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path` with `query` parameters; the decoded JSON body.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let resp = client
            .get(format!("http://{}{path}", self.addr))
            .query(query)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}\nprometheus log:\n{}", self.log()));
        let body = resp.bytes().await.unwrap();
        serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "GET {path}: not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        })
    }

    /// Runs an instant query; `Err(message)` when Prometheus rejects it.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let v = self.api("/api/v1/query", &[("query", expr)]).await;
        if v["status"] == "success" {
            Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
        } else {
            Err(format!("{}: {}", v["errorType"], v["error"]))
        }
    }
}

/// The test copy of a rule file: every `for:` line set to `FOR_IN_TEST`, nothing else changed.
fn shorten_for(text: &str) -> String {
    let out: Vec<String> = text
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for: ") {
            Some(_) => {
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}for: {FOR_IN_TEST}")
            }
            None => l.to_owned(),
        })
        .collect();
    let changed = text
        .lines()
        .zip(out.iter())
        .filter(|(a, b)| a != b)
        .collect::<Vec<_>>();
    assert!(!changed.is_empty(), "no `for:` found to shorten");
    assert!(changed
        .iter()
        .all(|(a, _)| a.trim_start().starts_with("for: ")));
    out.join("\n") + "\n"
}

/// Every PromQL query of the dashboard: panel targets and the selectors of the query variables,
/// with Grafana's variables substituted. (where, query)
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/redis-sessions.json")).unwrap();
    let d: Value = serde_json::from_str(&text).unwrap();
    // Every variable as "All" (`.*`), longest names first so that `$team` cannot eat
    // `$team_x`.
    // Constants become their value.
    let mut names: Vec<(String, String)> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let value = if v["type"] == "constant" {
                v["query"].as_str().unwrap().to_owned()
            } else {
                ".*".to_owned()
            };
            (v["name"].as_str().unwrap().to_owned(), value)
        })
        .collect();
    names.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    let subst = |e: &str| {
        let mut e = e
            .replace("$__rate_interval", "1m")
            .replace("${__rate_interval}", "1m");
        for (n, v) in &names {
            e = e
                .replace(&format!("${{{n}}}"), v)
                .replace(&format!("${n}"), v);
        }
        e
    };
    let mut out = Vec::new();
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] == "query" {
            let q = v["query"]
                .as_str()
                .or_else(|| v["query"]["query"].as_str())
                .unwrap();
            let inner = q
                .trim()
                .strip_prefix("label_values(")
                .and_then(|r| r.rsplit_once(','))
                .map(|(sel, _)| sel)
                .unwrap_or_else(|| panic!("variable {}: not label_values(...): {q}", v["name"]));
            out.push((format!("variable {}", v["name"]), subst(inner)));
        }
    }
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>, subst: &dyn Fn(&str) -> String) {
        for p in panels {
            for t in p["targets"].as_array().into_iter().flatten() {
                let e = t["expr"].as_str().unwrap_or_default();
                out.push((
                    format!("panel {} {} {}", p["id"], p["title"], t["refId"]),
                    subst(e),
                ));
            }
            if let Some(sub) = p["panels"].as_array() {
                walk(sub, out, subst);
            }
        }
    }
    walk(d["panels"].as_array().unwrap(), &mut out, &subst);
    for (where_, e) in &out {
        assert!(!e.contains('$'), "{where_}: unsubstituted variable in {e}");
        assert!(!e.trim().is_empty(), "{where_}: empty query");
    }
    out
}

/// Names of the rules of a rule file (`record:` and `alert:` entries).
fn rule_names(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start().strip_prefix("- ")?;
            l.strip_prefix("record: ")
                .or_else(|| l.strip_prefix("alert: "))
                .map(|n| n.trim().to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_rules_work_against_a_real_prometheus() {
    let (_sim, sim_addr) = start_simulator(SIM);
    let redis = RedisServer::start();
    let _client = redis
        .client("prom-e2e-client")
        .expect("a client of redis-server");
    let (exporter, exp_addr) = start_exporter(&exporter_config(sim_addr, redis.addr), &[]);
    let dead = format!("127.0.0.1:{}", free_port());

    let recording = std::fs::read_to_string(repo().join("deploy/prometheus/recording-rules.yml"))
        .expect("recording rules");
    let alerting = std::fs::read_to_string(repo().join("deploy/prometheus/alert-rules.yml"))
        .expect("alert rules");
    let alerting_test = shorten_for(&alerting);
    // The job name is the one the shipped scrape config, ServiceMonitor and alerts use.
    let config = format!(
        r#"
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - recording-rules.yml
  - alert-rules.yml
scrape_configs:
  - job_name: redis-session-exporter
    static_configs:
      - targets: ["{exp_addr}", "{dead}"]
"#
    );
    let prom = Prometheus::start(
        &config,
        &[
            ("recording-rules.yml", recording.clone()),
            ("alert-rules.yml", alerting_test),
        ],
    );

    wait_until(
        "Prometheus to be ready",
        Duration::from_secs(60),
        || async {
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let r = client
                .get(format!("http://{}/-/ready", prom.addr))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await;

    // The exporter target is scraped successfully; the closed port is down.
    let targets = wait_until(
        "the exporter target to be up",
        Duration::from_secs(30),
        || {
            let prom = &prom;
            async move {
                let v = prom.api("/api/v1/targets", &[]).await;
                let active = v["data"]["activeTargets"].as_array()?.clone();
                let up = active.iter().any(|t| {
                    t["labels"]["instance"] == exp_addr.to_string()
                        && t["health"] == "up"
                        && t["lastError"] == ""
                });
                up.then_some(active)
            }
        },
    )
    .await;
    assert_eq!(targets.len(), 2, "{targets:?}");
    assert!(
        targets
            .iter()
            .all(|t| t["labels"]["job"] == "redis-session-exporter"),
        "{targets:?}"
    );

    // OpenMetrics was negotiated: only in OpenMetrics is build info a type of its own (`info`,
    // family `redis_session_exporter_build`; the classic text announces a gauge named
    // `…_build_info`), and Prometheus keeps the type the target announced.
    let meta = prom
        .api(
            "/api/v1/targets/metadata",
            &[
                ("match_target", &format!("{{instance=\"{exp_addr}\"}}")),
                ("metric", "redis_session_exporter_build"),
            ],
        )
        .await;
    assert_eq!(
        meta["data"][0]["type"], "info",
        "OpenMetrics not negotiated: {meta}"
    );
    // The session distributions are histograms in either format.
    let meta = prom
        .api(
            "/api/v1/targets/metadata",
            &[
                ("match_target", &format!("{{instance=\"{exp_addr}\"}}")),
                ("metric", "redis_session_idle_seconds"),
            ],
        )
        .await;
    assert_eq!(meta["data"][0]["type"], "histogram", "{meta}");

    // Every shipped rule is loaded and evaluates without error.
    let mut expected_rules: Vec<String> = rule_names(&recording);
    expected_rules.extend(rule_names(&alerting));
    let rules = wait_until(
        "every rule evaluated without error",
        Duration::from_secs(30),
        || {
            let prom = &prom;
            async move {
                let v = prom.api("/api/v1/rules", &[]).await;
                let rules: Vec<Value> = v["data"]["groups"]
                    .as_array()?
                    .iter()
                    .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                    .collect();
                let ok = rules
                    .iter()
                    .all(|r| r["health"] == "ok" && r["lastEvaluation"] != "0001-01-01T00:00:00Z");
                ok.then_some(rules)
            }
        },
    )
    .await;
    let mut loaded: Vec<String> = rules
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    // Prometheus lists the groups in its own order.
    loaded.sort();
    expected_rules.sort();
    assert_eq!(loaded, expected_rules, "rules loaded by Prometheus");

    // The alerts this case is made to fire: throttling (r-prom-throttled), an instance never
    // polled successfully (r-prom-denied: NoPermission), and the exporter target that is down.
    let firing = wait_until(
        "the expected alerts to fire",
        Duration::from_secs(90),
        || {
            let (prom, dead) = (&prom, &dead);
            async move {
                let v = prom.api("/api/v1/alerts", &[]).await;
                let firing: BTreeSet<String> = v["data"]["alerts"]
                    .as_array()?
                    .iter()
                    .filter(|a| a["state"] == "firing")
                    .map(|a| {
                        let l = &a["labels"];
                        format!(
                            "{} {}",
                            l["alertname"].as_str().unwrap_or_default(),
                            l["instance_id"]
                                .as_str()
                                .or(l["instance"].as_str())
                                .unwrap_or_default()
                        )
                    })
                    .collect();
                let want = [
                    format!("RedisSessionApiThrottled {exp_addr}"),
                    "RedisSessionInstancePollFailing r-prom-denied".to_owned(),
                    "RedisSessionInstancePollFailing r-prom-throttled".to_owned(),
                    // 100 of 400 reported sessions not listed.
                    "RedisSessionListingIncomplete r-prom-short".to_owned(),
                    format!("RedisSessionExporterDown {dead}"),
                ];
                want.iter().all(|w| firing.contains(w)).then_some(firing)
            }
        },
    )
    .await;
    // Instances polled fine do not raise the polling alert. (They may raise session alerts: the
    // simulator's data includes slow consumers with output buffers over 16 MiB, so
    // RedisSessionOutputBuffersGrowing firing for them is right.)
    for healthy in ["r-prom-ok", "r-prom-big", "r-prom-short"] {
        assert!(
            !firing.contains(&format!("RedisSessionInstancePollFailing {healthy}")),
            "{healthy} polled fine but alerts; firing: {firing:?}"
        );
    }
    for complete in ["r-prom-ok", "r-prom-big"] {
        assert!(
            !firing.contains(&format!("RedisSessionListingIncomplete {complete}")),
            "{complete} lists every session but alerts; firing: {firing:?}"
        );
    }
    // The alert carries the labels and annotations on-call needs.
    let v = prom.api("/api/v1/alerts", &[]).await;
    // An alert on an instance carries the labels configured on its [[instances]] entry
    // (INSTANCE_LABELS of deploy/prometheus/rules.env, joined from redis_session_instance_info),
    // so that Alertmanager can route it to the owning team.
    let denied = v["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| {
            a["labels"]["alertname"] == "RedisSessionInstancePollFailing"
                && a["labels"]["instance_id"] == "r-prom-denied"
        })
        .unwrap();
    assert_eq!(denied["labels"]["team"], "payments", "{denied}");
    assert_eq!(denied["labels"]["env"], "prod", "{denied}");
    assert!(
        denied["annotations"]["runbook_url"]
            .as_str()
            .unwrap()
            .ends_with("/docs/runbooks/RedisSessionInstancePollFailing.md"),
        "{denied}"
    );
    let throttled = v["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == "RedisSessionApiThrottled")
        .unwrap();
    assert_eq!(throttled["labels"]["severity"], "warning");
    assert!(
        throttled["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains(&exp_addr.to_string()),
        "{throttled}"
    );

    // Every rule expression, as Prometheus loaded it, is a valid query; recording rules return
    // data with this case (the alerts' own data is checked above).
    for r in &rules {
        let expr = r["query"].as_str().unwrap();
        let res = prom.query(expr).await;
        let name = r["name"].as_str().unwrap();
        match res {
            Err(e) => panic!("rule {name}: {e}\n{expr}"),
            Ok(v) if r["type"] == "recording" => {
                assert!(
                    !v.is_empty(),
                    "recording rule {name} returns no data\n{expr}"
                )
            }
            Ok(_) => {}
        }
    }

    // Every dashboard query is valid and returns data.
    let queries = dashboard_queries();
    assert!(queries.len() > 20, "only {} queries found", queries.len());
    let mut empty = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for (where_, expr) in &queries {
        loop {
            match prom.query(expr).await {
                Err(e) => panic!("{where_}: invalid query: {e}\n{expr}"),
                Ok(v) if !v.is_empty() => break,
                Ok(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
                Ok(_) => {
                    empty.push(format!("{where_}: {expr}"));
                    break;
                }
            }
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}\nexporter output:\n{}",
        empty.join("\n"),
        exporter.output()
    );
}
