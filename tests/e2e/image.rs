//! The container image's runtime assumptions, proven without a Docker engine: the test runs the
//! very `cargo build` the Dockerfile runs (read from the Dockerfile, with its `ENV`), checks that
//! the binary is static (no ELF interpreter, no needed shared library), then runs it the way the
//! runtime image does — the Dockerfile's `ENTRYPOINT` and `CMD`, `USER`'s UID/GID, an empty
//! environment — inside a chroot that holds nothing but the binary and its configuration: no
//! loader, no libc, no shell, no `/tmp`, no `/proc`, and no directory the user may write to
//! (stricter than distroless/static, which adds `/etc/passwd`, CA certificates and `/tmp`).
//! There it must print its version, pass `check-config`, and poll the simulator and serve
//! `/metrics` on loopback.
//!
//! The build is a release build for `x86_64-unknown-linux-musl` into `target/image` (kept
//! between runs, like the Dockerfile's cache mount): minutes the first time. It needs the musl
//! target and `musl-gcc`; scripts/test.sh installs both. The chroot needs root (or passwordless
//! sudo); without it the test fails rather than check less.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

const TARGET: &str = "x86_64-unknown-linux-musl";
/// Upper bound for the release build (a cold build on a busy two-core machine takes ~15 min).
const BUILD_TIMEOUT: Duration = Duration::from_secs(60 * 60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What the test takes from the Dockerfile.
#[derive(Debug)]
struct Dockerfile {
    /// `cargo build ...` of the builder stage, split into words.
    cargo_build: Vec<String>,
    /// `ENV` of the builder stage.
    build_env: Vec<(String, String)>,
    /// Path of the binary in the builder (the `install` source).
    built_binary: String,
    runtime_from: String,
    user: String,
    expose: u16,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
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
    let (builder, runtime) = ins.split_at(*stages.last().unwrap());
    let arg = |stage: &[String], kw: &str| -> Option<String> {
        stage
            .iter()
            .rev()
            .find_map(|i| i.strip_prefix(kw).map(|r| r.trim().to_owned()))
    };

    let run = builder
        .iter()
        .find(|i| i.starts_with("RUN ") && i.contains("cargo build"))
        .expect("a RUN with cargo build");
    let build = &run[run.find("cargo build").unwrap()..];
    let build = build.split("&&").next().unwrap();
    let cargo_build: Vec<String> = build.split_whitespace().map(str::to_owned).collect();
    let after = &run[run.find("cargo build").unwrap()..];
    let built_binary = after
        .split_whitespace()
        .find(|w| w.starts_with("target/") && w.ends_with("/redis-session-exporter"))
        .expect("the install of target/.../redis-session-exporter")
        .to_owned();
    let build_env = builder
        .iter()
        .filter_map(|i| i.strip_prefix("ENV "))
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("ENV KEY=VALUE");
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    Dockerfile {
        cargo_build,
        build_env,
        built_binary,
        runtime_from: arg(runtime, "FROM ").unwrap(),
        user: arg(runtime, "USER ").expect("USER in the runtime stage"),
        expose: arg(runtime, "EXPOSE ")
            .expect("EXPOSE")
            .trim_end_matches("/tcp")
            .parse()
            .unwrap(),
        entrypoint: json_array(&arg(runtime, "ENTRYPOINT ").expect("ENTRYPOINT")),
        cmd: json_array(&arg(runtime, "CMD ").expect("CMD")),
    }
}

/// Runs the Dockerfile's `cargo build` into `target/image`; the path of the binary.
fn build_like_the_dockerfile(d: &Dockerfile) -> PathBuf {
    assert_eq!(&d.cargo_build[..2], ["cargo", "build"]);
    assert!(d.cargo_build.iter().any(|a| a == "--release"), "{d:?}");
    assert!(
        d.cargo_build.windows(2).any(|w| w == ["--target", TARGET]),
        "the Dockerfile builds for {TARGET}: {d:?}"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .expect("rustc");
    let sysroot = String::from_utf8(sysroot.stdout).unwrap();
    assert!(
        Path::new(sysroot.trim())
            .join("lib/rustlib")
            .join(TARGET)
            .is_dir(),
        "the Rust target {TARGET} is missing: `rustup target add {TARGET}` (scripts/test.sh does)"
    );
    assert!(
        Command::new("musl-gcc")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok(),
        "musl-gcc is missing (ring's C code needs it): `apt-get install musl-tools` (scripts/test.sh does)"
    );

    let target_dir = repo().join("target/image");
    std::fs::create_dir_all(&target_dir).unwrap();
    let log_path = target_dir.join("build.log");
    let mut cmd = Command::new(cargo);
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
    cmd.args(&d.cargo_build[1..])
        .current_dir(repo())
        .env("CARGO_TARGET_DIR", &target_dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log_path).unwrap())
        .stderr(std::fs::File::create(target_dir.join("build.err.log")).unwrap());
    for (k, v) in &d.build_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start cargo");
    let end = Instant::now() + BUILD_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the release build took longer than {BUILD_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let err = std::fs::read_to_string(target_dir.join("build.err.log")).unwrap_or_default();
    assert!(
        status.success(),
        "{:?} failed:\n{}",
        d.cargo_build,
        err.lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let rel = d
        .built_binary
        .strip_prefix("target/")
        .expect("binary under target/");
    let bin = target_dir.join(rel);
    assert!(bin.is_file(), "{} not built", bin.display());
    bin
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_binary_is_static_and_runs_in_an_empty_read_only_root_as_nonroot() {
    let d = parse_dockerfile();
    assert!(
        d.runtime_from.contains("distroless/static") || d.runtime_from == "scratch",
        "runtime stage has no libc, so the binary must be static: {}",
        d.runtime_from
    );
    assert_eq!(d.user, "65532:65532");
    let bin = build_like_the_dockerfile(&d);

    // Static: no program interpreter (dynamic loader) and no shared library needed.
    let headers = tool("readelf", &["-lW"], &bin);
    assert!(
        !headers.contains("INTERP"),
        "the binary asks for a dynamic loader:\n{headers}"
    );
    let dynamic = tool("readelf", &["-dW"], &bin);
    assert!(
        !dynamic.contains("(NEEDED)"),
        "the binary needs shared libraries:\n{dynamic}"
    );
    let file = tool("file", &["-b"], &bin);
    assert!(file.contains("x86-64"), "{file}");
    assert!(file.contains("static"), "{file}");
    // The Dockerfile's ENV CARGO_PROFILE_RELEASE_STRIP=symbols took effect.
    assert!(
        d.build_env
            .iter()
            .any(|(k, v)| k == "CARGO_PROFILE_RELEASE_STRIP" && v == "symbols")
            && file.contains(", stripped"),
        "{file}"
    );

    let (_sim, sim) = start_simulator("[instances.r-image]\nsessions = 25\n");
    let config_path = d
        .cmd
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1].clone())
        .expect("CMD passes --config");
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
    let img = image_root(&bin, &d.entrypoint[0], &config_path, &config);
    let argv = |extra: &[&str]| -> Vec<String> {
        let mut v = d.entrypoint.clone();
        v.extend(d.cmd.iter().cloned());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    // --version
    let out = chroot_cmd(&img.root, &d.user, &d.entrypoint[..1])
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(env!("CARGO_PKG_VERSION")),
        "--version in the image root: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // check-config, with the image's arguments; the default listen port is the exposed one.
    let out = chroot_cmd(&img.root, &d.user, &argv(&["check-config"]))
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
    let mut child = chroot_cmd(&img.root, &d.user, &argv(&["--listen", "127.0.0.1:0"]))
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
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(child);
    let addr: SocketAddr = wait_until("the daemon to serve", Duration::from_secs(20), || {
        let lines = lines.clone();
        async move {
            let l = lines.lock().unwrap();
            l.iter().find(|l| l.contains("serving /metrics")).map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .unwrap()
                    .parse()
                    .unwrap()
            })
        }
    })
    .await;
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

    let _ = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    let end = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = lines.lock().unwrap().join("\n");
    assert!(status.success(), "exit {status:?}:\n{output}");
    // Nothing it wanted to write failed (it has nowhere to write).
    for bad in ["Permission denied", "Read-only file system", "panicked"] {
        assert!(!output.contains(bad), "{bad}:\n{output}");
    }
}
