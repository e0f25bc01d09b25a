//! The container image's build and runtime assumptions, proven without a Docker engine: the test
//! runs the very build the Dockerfile's builder stage runs (`scripts/build-static.sh`, a
//! cargo-zigbuild cross build) for both architectures the image is published for, amd64 and
//! arm64, and checks with `file` and `readelf` that each binary is for its architecture, static
//! (no ELF interpreter, no needed shared library) and stripped. Then it runs the amd64 one the way
//! the runtime image does — the Dockerfile's `ENTRYPOINT`, `CMD` and `USER`'s UID/GID, an empty
//! environment — inside a chroot that holds nothing but the binary and its configuration: no
//! loader, no libc, no shell, no `/tmp`, no `/proc`, and no directory the user may write to
//! (stricter than distroless/static, which adds `/etc/passwd`, CA certificates and `/tmp`).
//! There the default command must print the usage (not fail on a missing configuration), and
//! `--version`, `check-config`, the daemon against the simulator and the documented container
//! demo (`demo --listen 0.0.0.0:…`, reached from outside the "container") must work.
//!
//! The builds are release builds into `target/image` (kept between runs, like the Dockerfile's
//! cache mount): minutes the first time. scripts/test.sh installs what they need (the musl Rust
//! targets; ziglang and cargo-zigbuild from PyPI); the script installs them itself otherwise. The
//! chroot needs root (or passwordless sudo); without it the test fails rather than check less.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

/// Upper bound for the two release builds (a cold build on a busy two-core machine takes ~15 min
/// per target; they share one cargo run).
const BUILD_TIMEOUT: Duration = Duration::from_secs(90 * 60);
/// Where the documentation tells users to mount the configuration.
const CONFIG_PATH: &str = "/etc/redis-session-exporter/config.toml";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What the test takes from the Dockerfile.
#[derive(Debug)]
struct Dockerfile {
    /// Default values of the global `ARG`s (before the first `FROM`).
    args: Vec<(String, String)>,
    builder_from: String,
    /// The builder's `RUN` that calls scripts/build-static.sh.
    build_run: String,
    runtime_from: String,
    user: String,
    expose: u16,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    /// The whole text, comments included (what it documents).
    text: String,
}

/// The Dockerfile's instructions, continuation lines joined and comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(t);
            if !cur.trim().is_empty() {
                out.push(cur.trim().to_owned());
            }
            cur.clear();
        }
    }
    out
}

fn json_array(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not an exec-form JSON array: {s}: {e}"))
}

fn parse_dockerfile() -> Dockerfile {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let ins = instructions(&text);
    let stages: Vec<usize> = ins
        .iter()
        .enumerate()
        .filter(|(_, i)| i.starts_with("FROM "))
        .map(|(n, _)| n)
        .collect();
    assert!(stages.len() >= 2, "a multi-stage Dockerfile: {ins:?}");
    let args = ins[..stages[0]]
        .iter()
        .filter_map(|i| i.strip_prefix("ARG "))
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("a global ARG with a default");
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let (builder, runtime) = ins.split_at(*stages.last().unwrap());
    let last = |stage: &[String], kw: &str| -> Option<String> {
        stage
            .iter()
            .rev()
            .find_map(|i| i.strip_prefix(kw).map(|r| r.trim().to_owned()))
    };
    Dockerfile {
        args,
        builder_from: ins[stages[0]].clone(),
        build_run: builder
            .iter()
            .find(|i| i.starts_with("RUN ") && i.contains("scripts/build-static.sh"))
            .expect("a RUN of scripts/build-static.sh in the builder stage")
            .clone(),
        runtime_from: last(runtime, "FROM ").unwrap(),
        user: last(runtime, "USER ").expect("USER in the runtime stage"),
        expose: last(runtime, "EXPOSE ")
            .expect("EXPOSE")
            .trim_end_matches("/tcp")
            .parse()
            .unwrap(),
        entrypoint: json_array(&last(runtime, "ENTRYPOINT ").expect("ENTRYPOINT")),
        cmd: json_array(&last(runtime, "CMD ").expect("CMD")),
        text,
    }
}

impl Dockerfile {
    fn arg(&self, name: &str) -> &str {
        self.args
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no global ARG {name}: {:?}", self.args))
    }
}

/// Runs the builder stage's build script for `arches` into `target/image`; the binaries by
/// architecture.
fn build_like_the_dockerfile(d: &Dockerfile, arches: &[&str]) -> Vec<(String, PathBuf)> {
    // The builder stage builds for the image's platform on the build machine's own one: that is
    // what makes the arm64 image a cross build rather than an emulated one.
    assert!(
        d.builder_from.contains("--platform=$BUILDPLATFORM"),
        "{}",
        d.builder_from
    );
    assert!(
        d.build_run
            .contains("scripts/build-static.sh /out \"${TARGETARCH}\""),
        "the builder builds for TARGETARCH: {}",
        d.build_run
    );
    let target_dir = repo().join("target/image");
    let out_dir = target_dir.join("out");
    std::fs::create_dir_all(&target_dir).unwrap();
    let log_path = target_dir.join("build.log");
    let mut cmd = Command::new("bash");
    // Not the variables cargo sets for a test process: build scripts watch some of them, and
    // the build would differ from (and not reuse) a plain `cargo build`.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
                "LD_LIBRARY_PATH",
            ]
            .contains(&k.as_ref())
        {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd.arg("scripts/build-static.sh")
        .arg(&out_dir)
        .args(arches)
        .current_dir(repo())
        .env("CARGO_TARGET_DIR", &target_dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log_path).unwrap())
        .stderr(std::fs::File::create(target_dir.join("build.err.log")).unwrap());
    let mut child = cmd.spawn().expect("start scripts/build-static.sh");
    let end = Instant::now() + BUILD_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the release builds took longer than {BUILD_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let err = std::fs::read_to_string(target_dir.join("build.err.log")).unwrap_or_default();
    assert!(
        status.success(),
        "scripts/build-static.sh {arches:?} failed:\n{}",
        err.lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    arches
        .iter()
        .map(|a| {
            let bin = out_dir.join(a).join("redis-session-exporter");
            assert!(bin.is_file(), "{} not built", bin.display());
            (a.to_string(), bin)
        })
        .collect()
}

fn tool(prog: &str, args: &[&str], file: &Path) -> String {
    let out = Command::new(prog)
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| {
            panic!("{prog} is required (Debian: binutils / file; scripts/test.sh): {e}")
        });
    assert!(out.status.success(), "{prog} {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The root file system of the image, as a directory tree owned by the test's user, nothing in
/// it writable: the binary, the configuration and the secret file.
struct ImageRoot {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

fn image_root(bin: &Path, entrypoint: &str, config_path: &str, config: &str) -> ImageRoot {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let put = |path: &str, mode: u32, write: &dyn Fn(&Path)| {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        write(&p);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    put(entrypoint, 0o555, &|p| {
        std::fs::copy(bin, p).unwrap();
    });
    put(config_path, 0o444, &|p| std::fs::write(p, config).unwrap());
    put(
        "/etc/redis-session-exporter/secret/access_key_secret",
        0o444,
        &|p| std::fs::write(p, SIM_KEY_SECRET).unwrap(),
    );
    // Directories: readable and searchable, writable by nobody but root.
    for entry in walk_dirs(&root) {
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    ImageRoot { _tmp: tmp, root }
}

impl Drop for ImageRoot {
    fn drop(&mut self) {
        // Let the temp dir be removed.
        for d in walk_dirs(&self.root) {
            let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755));
        }
    }
}

fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk_dirs(&e.path()));
        }
    }
    out
}

/// `chroot --userspec=UID:GID ROOT ARGS...` with an empty environment, run directly (no shell),
/// through `sudo -n` when the test is not root.
fn chroot_cmd(root: &Path, user: &str, args: &[String]) -> Command {
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    let is_root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
    // The environment is cleared, so the programs are found here, not through the child's PATH.
    let which = |prog: &str| -> PathBuf {
        ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(prog))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{prog} is required (Debian: coreutils / sudo)"))
    };
    let mut cmd = if is_root {
        Command::new(which("chroot"))
    } else {
        let ok = Command::new("sudo")
            .args(["-n", "true"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "emulating the image needs chroot: run the tests as root or with passwordless sudo"
        );
        let mut c = Command::new(which("sudo"));
        c.args(["-n", "chroot"]);
        c
    };
    cmd.arg(format!("--userspec={user}"))
        .arg(root)
        .args(args)
        .env_clear()
        .stdin(Stdio::null());
    cmd
}

/// Runs `args` in the image root like `docker run`, with stdout and stderr collected line by
/// line; killed on drop.
struct Running {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn start(root: &Path, user: &str, args: &[String]) -> Running {
        let mut child = chroot_cmd(root, user, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        for s in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(s).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(l);
                }
            });
        }
        Running { child, lines }
    }

    /// The first printed line containing `needle`.
    async fn line(&self, needle: &str) -> String {
        let lines = self.lines.clone();
        let needle = needle.to_owned();
        wait_until(
            &format!("a line with {needle:?}"),
            Duration::from_secs(20),
            || {
                let (lines, needle) = (lines.clone(), needle.clone());
                async move {
                    let l = lines.lock().unwrap();
                    l.iter().find(|l| l.contains(&needle)).cloned()
                }
            },
        )
        .await
    }

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// SIGTERM, then the exit status (within 15 s).
    fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < end, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_binaries_are_static_for_amd64_and_arm64_and_run_in_an_empty_root_as_nonroot() {
    let d = parse_dockerfile();
    // The base images are build arguments (mirrors), with working defaults.
    assert_eq!(
        d.builder_from,
        "FROM --platform=$BUILDPLATFORM ${BUILDER_IMAGE} AS builder"
    );
    assert!(d.arg("BUILDER_IMAGE").contains("rust:"), "{:?}", d.args);
    assert_eq!(d.runtime_from, "${RUNTIME_IMAGE}");
    let runtime = d.arg("RUNTIME_IMAGE");
    assert!(
        runtime.contains("distroless/static") || runtime == "scratch",
        "runtime stage has no libc, so the binary must be static: {runtime}"
    );
    assert_eq!(d.user, "65532:65532");
    // What the Dockerfile documents: the config mount point and the container demo.
    assert!(
        d.text.contains(CONFIG_PATH),
        "the Dockerfile names {CONFIG_PATH}"
    );
    assert!(d.text.contains("demo --listen 0.0.0.0:10379"));

    let bins = build_like_the_dockerfile(&d, &["amd64", "arm64"]);
    for (arch, bin) in &bins {
        let (file_arch, elf_machine) = match arch.as_str() {
            "amd64" => ("x86-64", "X86-64"),
            "arm64" => ("ARM aarch64", "AArch64"),
            _ => unreachable!(),
        };
        let file = tool("file", &["-b"], bin);
        assert!(file.contains(file_arch), "{arch}: {file}");
        assert!(file.contains("static"), "{arch}: {file}");
        // CARGO_PROFILE_RELEASE_STRIP=symbols of the build script took effect.
        assert!(file.contains(", stripped"), "{arch}: {file}");
        let header = tool("readelf", &["-hW"], bin);
        assert!(
            header
                .lines()
                .any(|l| l.trim_start().starts_with("Machine:") && l.contains(elf_machine)),
            "{arch}: {header}"
        );
        // Static: no program interpreter (dynamic loader) and no shared library needed.
        let headers = tool("readelf", &["-lW"], bin);
        assert!(
            !headers.contains("INTERP"),
            "{arch}: the binary asks for a dynamic loader:\n{headers}"
        );
        let dynamic = tool("readelf", &["-dW"], bin);
        assert!(
            !dynamic.contains("(NEEDED)"),
            "{arch}: the binary needs shared libraries:\n{dynamic}"
        );
    }

    // The amd64 binary runs here, in the image's root.
    let bin = &bins.iter().find(|(a, _)| a == "amd64").unwrap().1;
    let (_sim, sim) = start_simulator("[instances.r-image]\nsessions = 25\n");
    let config = format!(
        r#"
[das]
endpoint = "http://{sim}"
[poll]
interval = "1s"
[credentials]
provider = "static"
access_key_id = "{SIM_KEY_ID}"
access_key_secret_file = "/etc/redis-session-exporter/secret/access_key_secret"
[[instances]]
id = "r-image"
"#
    );
    let img = image_root(bin, &d.entrypoint[0], CONFIG_PATH, &config);
    // `docker run IMAGE ARGS...`: the entrypoint with ARGS, or with CMD when there are none.
    let run = |args: &[&str]| -> Vec<String> {
        let mut v = d.entrypoint.clone();
        if args.is_empty() {
            v.extend(d.cmd.iter().cloned());
        } else {
            v.extend(args.iter().map(|s| s.to_string()));
        }
        v
    };

    // The default command prints the usage and succeeds at once: nothing to configure is baked
    // in (a default that started the daemon would run on without a configuration, or fail).
    let mut default = Running::start(&img.root, &d.user, &run(&[]));
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = default.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < end,
            "the default command {:?} did not exit within 10 s:\n{}",
            d.cmd,
            default.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // The reader threads may still be draining the pipes.
    std::thread::sleep(Duration::from_millis(200));
    let text = default.output();
    assert!(
        status.success() && text.contains("Usage:") && text.contains("--config"),
        "the default command {:?} in the image root: {status:?}\n{text}",
        d.cmd
    );

    let out = chroot_cmd(&img.root, &d.user, &run(&["--version"]))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(env!("CARGO_PKG_VERSION")),
        "--version in the image root: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // check-config; the default listen port is the exposed one.
    let out = chroot_cmd(
        &img.root,
        &d.user,
        &run(&["--config", CONFIG_PATH, "check-config"]),
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check-config in the image root: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("listen = \"0.0.0.0:{}\"", d.expose)),
        "default listen is not the EXPOSEd port {}: {text}",
        d.expose
    );

    // The daemon itself: polls the simulator, serves /metrics, stops cleanly on SIGTERM.
    let mut daemon = Running::start(
        &img.root,
        &d.user,
        &run(&["--config", CONFIG_PATH, "--listen", "127.0.0.1:0"]),
    );
    let line = daemon.line("serving /metrics").await;
    let addr: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap()
        .parse()
        .unwrap();
    let text = wait_until(
        "a successful poll",
        Duration::from_secs(20),
        || async move {
            let t = scrape_om(addr).await;
            (value(&t, "redis_session_up{instance_id=\"r-image\"}") == Some(1.0)).then_some(t)
        },
    )
    .await;
    assert_eq!(
        value(&text, "redis_sessions_reported{instance_id=\"r-image\"}"),
        Some(25.0),
        "{text}"
    );
    let (status, _, _) = get(addr, "/readyz", &[]).await;
    assert_eq!(status, 200);
    let status = daemon.stop();
    let output = daemon.output();
    assert!(status.success(), "exit {status:?}:\n{output}");
    // Nothing it wanted to write failed (it has nowhere to write).
    for bad in ["Permission denied", "Read-only file system", "panicked"] {
        assert!(!output.contains(bad), "{bad}:\n{output}");
    }

    // The documented container demo: listening on every address, so that a published port
    // reaches it (here: on port 0, reached through loopback from outside the root).
    let mut demo = Running::start(&img.root, &d.user, &run(&["demo", "--listen", "0.0.0.0:0"]));
    let line = demo.line("serving /metrics").await;
    let bound: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(bound.ip().is_unspecified(), "{line}");
    let port = bound.port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(
        "the demo's figures",
        Duration::from_secs(30),
        || async move {
            let t = scrape_om(addr).await;
            (value(&t, "redis_session_up{instance_id=\"r-demo-orders\"}") == Some(1.0))
                .then_some(())
        },
    )
    .await;
    let status = demo.stop();
    assert!(status.success(), "demo exit {status:?}:\n{}", demo.output());
}
