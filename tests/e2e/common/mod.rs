//! Shared harness for the end-to-end tests: the real binary, on loopback ports it picks itself,
//! with its output captured so tests can read what it logged.

pub mod pki;
pub mod redis;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_redis-session-exporter")
}

/// A running process of the binary; killed on drop. Its stdout and stderr lines are kept.
pub struct Proc {
    pub child: Child,
    pub output: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
    pub dir: PathBuf,
}

impl Proc {
    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        wait_exit(&mut self.child, Duration::from_secs(15))
    }

    /// Sends `sig` (e.g. `HUP`); panics if it could not be delivered.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed: {status}");
    }

    /// How many printed lines contain `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.output
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until exactly `n` printed lines contain `needle` (more is a failure too).
    pub fn wait_for_lines(&self, needle: &str, n: usize, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            let seen = self.count_lines(needle);
            assert!(
                seen <= n,
                "{seen} lines containing {needle:?}, expected {n}; output:\n{}",
                self.output()
            );
            if seen == n {
                return;
            }
            assert!(
                Instant::now() < end,
                "{seen} lines containing {needle:?}, expected {n}; output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until a printed line contains `needle`; returns that line.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .output
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < end,
                "no line containing {needle:?}; output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < end, "process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) for a short-lived process to exit, then lets its output readers drain the pipes.
pub fn wait_exited(p: &mut Proc) -> std::process::ExitStatus {
    let status = wait_exit(&mut p.child, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    status
}

/// Starts the binary with `args` (and `env`), capturing its output.
pub fn spawn(args: &[&str], env: &[(&str, &str)], files: &[(&str, &str)]) -> Proc {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::File::create(dir.path().join(name))
            .unwrap()
            .write_all(content.as_bytes())
            .unwrap();
    }
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        // Attribution finds Kubernetes through these; only a test's own kubeconfig counts.
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("ALIBABA_CLOUD_ACCESS_KEY_ID")
        .env_remove("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
        .env_remove("ALIBABA_CLOUD_SECURITY_TOKEN")
        // The credential chain must never reach past loopback (the real metadata service at
        // 100.100.100.200) nor read the developer's own ~/.aliyun or ~/.alibabacloud files.
        .env("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")
        .env("HOME", dir.path());
    for k in [
        "ALIBABA_CLOUD_ROLE_ARN",
        "ALIBABA_CLOUD_OIDC_PROVIDER_ARN",
        "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
        "ALIBABA_CLOUD_PROFILE",
        "ALIBABA_CLOUD_CREDENTIALS_FILE",
        "ALIBABA_CLOUD_ECS_METADATA",
        "ALIBABA_CLOUD_STS_ENDPOINT",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start the binary");
    let output = Arc::new(Mutex::new(Vec::new()));
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let out = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                out.lock().unwrap().push(line);
            }
        });
    }
    let path = dir.path().to_owned();
    Proc {
        child,
        output,
        _dir: dir,
        dir: path,
    }
}

/// Starts the DAS simulator with `sim_toml`; returns it and its address.
pub fn start_simulator(sim_toml: &str) -> (Proc, SocketAddr) {
    let p = spawn(
        &[
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--sim-config",
            "sim.toml",
        ],
        &[],
        &[("sim.toml", sim_toml)],
    );
    let addr = simulator_addr(&p);
    (p, addr)
}

/// Default fake key pair of the simulator.
pub const SIM_KEY_ID: &str = "sim-access-key-id";
pub const SIM_KEY_SECRET: &str = "sim-access-key-secret-not-real";

/// Starts the exporter with `config_toml` (its `[server] listen` is forced to a free loopback
/// port) and the simulator's key pair in the environment, plus `env`.
pub fn start_exporter(config_toml: &str, env: &[(&str, &str)]) -> (Proc, SocketAddr) {
    start_exporter_with(config_toml, env, &[])
}

/// The flag that serves `POST /-/reload` (without it the route answers 403).
pub const LIFECYCLE: &str = "--web.enable-lifecycle";

/// [`start_exporter`] with more command-line flags (`LIFECYCLE` for tests that POST reloads).
pub fn start_exporter_with(
    config_toml: &str,
    env: &[(&str, &str)],
    flags: &[&str],
) -> (Proc, SocketAddr) {
    let mut all_env = vec![
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", SIM_KEY_ID),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SIM_KEY_SECRET),
    ];
    all_env.extend_from_slice(env);
    let mut args = vec!["--config", "config.toml", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(flags);
    let p = spawn(&args, &all_env, &[("config.toml", config_toml)]);
    let addr = exporter_addr(&p);
    (p, addr)
}

/// The address an exporter process listens on, read from its "serving /metrics" log line.
pub fn exporter_addr(p: &Proc) -> SocketAddr {
    let line = p.wait_for_line("serving /metrics", Duration::from_secs(20));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .expect("addr in the log line")
        .parse()
        .unwrap()
}

/// The address a `simulate` process listens on, read from its start-up line.
pub fn simulator_addr(p: &Proc) -> SocketAddr {
    let line = p.wait_for_line("listening on http://", Duration::from_secs(20));
    line.rsplit("http://")
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

/// A plain HTTP GET on loopback: status, headers, body.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = client
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(10));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    (status, h, resp.bytes().await.unwrap().to_vec())
}

/// A plain HTTP POST with an empty body on loopback: status and body text.
pub async fn post(addr: SocketAddr, path: &str) -> (u16, String) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = client
        .post(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("POST");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// Scrapes /metrics in the classic text format.
pub async fn scrape_text(addr: SocketAddr) -> String {
    let (status, _, body) = get(addr, "/metrics", &[]).await;
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
}

/// The OpenMetrics Accept header Prometheus 3 sends.
pub const OM_ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";

pub async fn scrape_om(addr: SocketAddr) -> String {
    let (status, h, body) = get(addr, "/metrics", &[("accept", OM_ACCEPT)]).await;
    assert_eq!(status, 200);
    assert!(h["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text; version=1.0.0"));
    String::from_utf8(body).unwrap()
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Parses exposition text into `series -> value` (`name{labels}` exactly as written).
pub fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let v = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap(),
            };
            (series.to_owned(), v)
        })
        .collect()
}

/// `series` (`name{a="x",…}`) with its labels sorted by name and `le` written as a number, so
/// the same series reads the same in either format (label order and `le` spelling are the
/// encoder's choice: OpenMetrics writes `le="60.0"`, the classic text `le="60"`).
pub fn canonical(series: &str) -> String {
    let Some((name, rest)) = series.split_once('{') else {
        return series.to_owned();
    };
    let mut labels: Vec<(String, String)> = Vec::new();
    let mut chars = rest.chars();
    let mut key = String::new();
    while let Some(c) = chars.next() {
        match c {
            '=' => {
                chars.next(); // the opening quote
                let mut raw = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            raw.push(c);
                            raw.extend(chars.next());
                        }
                        '"' => break,
                        c => raw.push(c),
                    }
                }
                if key == "le" && raw != "+Inf" {
                    raw = raw.parse::<f64>().map_or(raw, |v| format!("{v:?}"));
                }
                labels.push((std::mem::take(&mut key), raw));
            }
            ',' | '}' => {}
            c => key.push(c),
        }
    }
    labels.sort();
    let labels: Vec<String> = labels
        .into_iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// The value of the one series whose text is exactly `series`, if present.
pub fn value(text: &str, series: &str) -> Option<f64> {
    samples(text).get(series).copied()
}

/// Every series of `metric` for `instance`.
pub fn series_of(text: &str, metric: &str, instance: &str) -> BTreeMap<String, f64> {
    let prefix = format!("{metric}{{instance_id=\"{instance}\"");
    samples(text)
        .into_iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .collect()
}

/// A memory figure of process `pid` in KiB from `/proc/PID/status`: `VmRSS` (resident now) or
/// `VmHWM` (the resident peak); 0 once the process is gone. Linux-only, like the deploy targets.
pub fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The simulator's request statistics.
pub async fn sim_stats(sim: SocketAddr) -> serde_json::Value {
    let (_, _, body) = get(sim, "/_sim/stats", &[]).await;
    serde_json::from_slice(&body).unwrap()
}

/// Sets `instance`'s fault on the simulator (`fault` is the fault's JSON, e.g.
/// `{"kind":"no_permission"}`).
pub async fn set_fault(sim: SocketAddr, instance: &str, fault: &str) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = client
        .put(format!("http://{sim}/_sim/faults/{instance}"))
        .header("content-type", "application/json")
        .body(fault.to_owned())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "set fault {fault}: {}", r.status());
}

pub async fn clear_fault(sim: SocketAddr, instance: &str) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    client
        .delete(format!("http://{sim}/_sim/faults/{instance}"))
        .send()
        .await
        .unwrap();
}

/// Runs a command-line tool on `input` (written to a temp file passed as the last argument,
/// or piped on stdin when `stdin` is true); returns (success, stdout+stderr). Panics with an
/// install hint if the tool is missing: a missing tool is a failure, never a skip.
pub fn run_tool(tool: &str, args: &[&str], input: &str, stdin: bool) -> (bool, String) {
    let mut cmd = Command::new(tool);
    cmd.args(args);
    let file = tempfile::NamedTempFile::new().unwrap();
    if stdin {
        cmd.stdin(Stdio::piped());
    } else {
        std::fs::write(file.path(), input).unwrap();
        cmd.arg(file.path());
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{tool} is required (run scripts/test.sh to install it): {e}"));
    if stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Each needle raw, percent-encoded once and twice (a signed query holds the token encoded once,
/// a string to sign twice), both the vendor's way (`A-Z a-z 0-9 - _ . ~` kept) and with every
/// non-alphanumeric byte encoded.
pub fn needles(secrets: &[String]) -> Vec<String> {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const VENDOR: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    let mut out: Vec<String> = Vec::new();
    for s in secrets {
        out.push(s.clone());
        for set in [VENDOR, NON_ALPHANUMERIC] {
            let once = utf8_percent_encode(s, set).to_string();
            let twice = utf8_percent_encode(&once, set).to_string();
            out.extend([once, twice]);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Asserts none of `secrets` appears in the exporter's output, /metrics (both formats), `/`.
pub async fn assert_no_leak(p: &Proc, addr: SocketAddr, secrets: &[String]) {
    let (_, _, landing) = get(addr, "/", &[]).await;
    let places = [
        ("output", p.output()),
        ("metrics", scrape_text(addr).await),
        ("openmetrics", scrape_om(addr).await),
        ("landing page", String::from_utf8(landing).unwrap()),
    ];
    for (where_, text) in &places {
        for n in needles(secrets) {
            assert!(
                !text.contains(&n),
                "{n:?} leaked into the {where_}:\n{text}"
            );
        }
    }
    assert!(
        p.output().contains("DEBUG"),
        "the exporter really ran at trace level"
    );
}
