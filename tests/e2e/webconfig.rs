//! End to end: `--web.config.file` on the real binary. A real TLS client (reqwest + rustls)
//! trusting a CA made here at test time (no key is ever committed), right and wrong passwords,
//! every client-certificate mode, and a certificate rotated on disk while the exporter runs.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::pki::Ca;
use crate::common::*;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
use reqwest::tls::{Certificate, Identity, TlsInfo, Version};

/// A client certificate signed by nobody the server knows.
fn self_signed_client() -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "stranger");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

const CONFIG: &str = "[das]\nendpoint = \"http://127.0.0.1:9\"\n[poll]\ninterval = \"60s\"\n";

/// Starts the exporter with `--web.config.file web.yml` and `files` next to it.
fn start(files: &[(&str, &str)]) -> (Proc, SocketAddr) {
    start_with_env(files, &[])
}

fn start_with_env(files: &[(&str, &str)], env: &[(&str, &str)]) -> (Proc, SocketAddr) {
    let mut all = vec![("config.toml", CONFIG)];
    all.extend_from_slice(files);
    let p = spawn(
        &[
            "--config",
            "config.toml",
            "--listen",
            "127.0.0.1:0",
            "--web.config.file",
            "web.yml",
            // POST /-/reload is served, so its check behind basic auth can be seen.
            LIFECYCLE,
        ],
        env,
        &all,
    );
    let addr = exporter_addr(&p);
    (p, addr)
}

/// A fresh client (no pooled connection survives between calls) trusting `ca_pem`.
fn client(ca_pem: &str, identity: Option<&(String, String)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .tls_info(true)
        .timeout(Duration::from_secs(10))
        .add_root_certificate(Certificate::from_pem(ca_pem.as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        b = b.identity(Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

async fn status(
    c: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
    auth: Option<(&str, &str)>,
) -> Result<u16, reqwest::Error> {
    let mut req = c.get(format!("https://{addr}{path}"));
    if let Some((u, p)) = auth {
        req = req.basic_auth(u, Some(p));
    }
    Ok(req.send().await?.status().as_u16())
}

fn hash(pw: &str) -> String {
    // Cost 4 keeps the debug binary quick; the server reads the cost from the hash.
    bcrypt::hash(pw, 4).unwrap()
}

#[tokio::test]
async fn tls_with_basic_auth_protects_every_route() {
    let ca = Ca::new("test CA");
    let (crt, key) = ca.leaf("exporter", true);
    let h = hash("right horse battery");
    let web = format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  prometheus: '{h}'\n  other: '{}'\n",
        hash("other-password")
    );
    let (exp, addr) = start(&[
        ("web.yml", &web),
        ("server.crt", &crt),
        ("server.key", &key),
    ]);
    let c = client(&ca.pem(), None);

    let right = Some(("prometheus", "right horse battery"));
    let r = c
        .get(format!("https://{addr}/metrics"))
        .basic_auth("prometheus", Some("right horse battery"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let info = r.extensions().get::<TlsInfo>().expect("a TLS connection");
    assert!(info.peer_certificate().is_some());
    let body = r.text().await.unwrap();
    assert!(body.contains("redis_session_exporter_build_info"), "{body}");
    // Again: the cached verdict gives the same answer.
    assert_eq!(status(&c, addr, "/metrics", right).await.unwrap(), 200);

    for path in ["/metrics", "/", "/healthz", "/readyz", "/no-such-page"] {
        let r = c.get(format!("https://{addr}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without credentials");
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic"));
        for (u, p) in [
            ("prometheus", "wrong"),
            ("prometheus", ""),
            ("prometheus", "right horse batteryX"),
            ("other", "right horse battery"),
            ("nobody", "right horse battery"),
        ] {
            assert_eq!(
                status(&c, addr, path, Some((u, p))).await.unwrap(),
                401,
                "{path} as {u}:{p}"
            );
        }
    }
    assert_eq!(status(&c, addr, "/healthz", right).await.unwrap(), 200);
    assert_eq!(
        status(&c, addr, "/", Some(("other", "other-password")))
            .await
            .unwrap(),
        200
    );
    // POST /-/reload is behind the same check.
    let r = c
        .post(format!("https://{addr}/-/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("https://{addr}/-/reload"))
        .basic_auth("prometheus", Some("right horse battery"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "authorised reload");

    // Plain HTTP on the TLS port gets nothing useful; a client not trusting the CA refuses.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = plain
        .get(format!("http://{addr}/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(r.is_err() || r.unwrap().status() != 200);
    let other_ca = Ca::new("someone else");
    assert!(
        status(&client(&other_ca.pem(), None), addr, "/metrics", right)
            .await
            .is_err()
    );

    let log = exp.output();
    assert!(
        !log.contains("right horse battery") && !log.contains(&h),
        "{log}"
    );
    assert!(
        log.contains("tls=true") && log.contains("basic_auth=true"),
        "{log}"
    );
}

#[tokio::test]
async fn basic_auth_without_tls() {
    let web = format!("basic_auth_users:\n  u: {}\n", hash("pw"));
    let (_exp, addr) = start(&[("web.yml", &web)]);
    let (s, _, _) = get(addr, "/metrics", &[]).await;
    assert_eq!(s, 401);
    let (s, _, _) = get(addr, "/metrics", &[("authorization", "Basic dTpwdw==")]).await; // u:pw
    assert_eq!(s, 200);
    let (s, _, _) = get(addr, "/metrics", &[("authorization", "Basic dTpwdXc=")]).await; // u:puw
    assert_eq!(s, 401);
}

/// Which clients get a 200 under each client_auth_type.
#[tokio::test]
async fn client_certificate_modes() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let (crt, key) = server_ca.leaf("exporter", true);
    let good = client_ca.leaf("prometheus", false);
    let stranger = self_signed_client();
    let ca_pem = client_ca.pem();

    // (mode, no certificate, a certificate from the client CA, a self-signed one)
    let cases = [
        ("RequireAndVerifyClientCert", false, true, false),
        ("VerifyClientCertIfGiven", true, true, false),
        ("RequireAnyClientCert", false, true, true),
        ("RequestClientCert", true, true, true),
        ("NoClientCert", true, true, true),
    ];
    for (mode, none_ok, good_ok, stranger_ok) in cases {
        let ca_line = if mode == "NoClientCert" {
            String::new()
        } else {
            "  client_ca_file: clients.crt\n".to_owned()
        };
        let web = format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: {mode}\n{ca_line}"
        );
        let (_exp, addr) = start(&[
            ("web.yml", &web),
            ("server.crt", &crt),
            ("server.key", &key),
            ("clients.crt", &ca_pem),
        ]);
        for (who, identity, expect_ok) in [
            ("no certificate", None, none_ok),
            ("client-CA certificate", Some(&good), good_ok),
            ("self-signed certificate", Some(&stranger), stranger_ok),
        ] {
            let c = client(&server_ca.pem(), identity);
            let got = status(&c, addr, "/metrics", None).await;
            if expect_ok {
                assert_eq!(got.as_ref().ok(), Some(&200), "{mode}, {who}: {got:?}");
            } else {
                assert!(
                    got.is_err(),
                    "{mode}, {who}: the handshake must fail: {got:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn tls_versions() {
    let ca = Ca::new("test CA");
    let (crt, key) = ca.leaf("exporter", true);
    let web = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS13\n";
    let (_exp, addr) = start(&[("web.yml", web), ("server.crt", &crt), ("server.key", &key)]);
    let builder = |v: Version| {
        reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(Certificate::from_pem(ca.pem().as_bytes()).unwrap())
            .timeout(Duration::from_secs(10))
            .max_tls_version(v)
            .build()
            .unwrap()
    };
    assert_eq!(
        status(&builder(Version::TLS_1_3), addr, "/metrics", None)
            .await
            .unwrap(),
        200
    );
    assert!(status(&builder(Version::TLS_1_2), addr, "/metrics", None)
        .await
        .is_err());
}

/// `max_version: TLS12`: a client that insists on TLS 1.3 is refused, a TLS 1.2 one served.
#[tokio::test]
async fn max_version_caps_the_protocol() {
    let ca = Ca::new("test CA");
    let (crt, key) = ca.leaf("exporter", true);
    let web = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  max_version: TLS12\n";
    let (_exp, addr) = start(&[("web.yml", web), ("server.crt", &crt), ("server.key", &key)]);
    let client = |min: Version, max: Version| {
        reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(Certificate::from_pem(ca.pem().as_bytes()).unwrap())
            .timeout(Duration::from_secs(10))
            .min_tls_version(min)
            .max_tls_version(max)
            .build()
            .unwrap()
    };
    assert_eq!(
        status(
            &client(Version::TLS_1_2, Version::TLS_1_2),
            addr,
            "/metrics",
            None
        )
        .await
        .unwrap(),
        200
    );
    let only_13 = status(
        &client(Version::TLS_1_3, Version::TLS_1_3),
        addr,
        "/metrics",
        None,
    )
    .await;
    assert!(only_13.is_err(), "TLS 1.3 was served: {only_13:?}");
}

/// An empty web config file serves plain HTTP without authentication, as without the flag.
#[tokio::test]
async fn an_empty_web_config_serves_plain_http() {
    let (_exp, addr) = start(&[("web.yml", "")]);
    let (s, _, body) = get(addr, "/metrics", &[]).await;
    assert_eq!(s, 200);
    assert!(String::from_utf8(body)
        .unwrap()
        .contains("redis_session_exporter_build_info"));
    assert_eq!(get(addr, "/", &[]).await.0, 200);
}

/// A client that opens a connection and never says hello is dropped when the handshake's 10 s
/// run out (logged at debug), and meanwhile other clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_dropped_and_does_not_block_others() {
    use std::io::Read;
    let ca = Ca::new("test CA");
    let (crt, key) = ca.leaf("exporter", true);
    let web = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    let (exp, addr) = start_with_env(
        &[("web.yml", web), ("server.crt", &crt), ("server.key", &key)],
        &[("RUST_LOG", "debug")],
    );
    let opened = std::time::Instant::now();
    let mut stalled = std::net::TcpStream::connect(addr).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // Served while the stalled handshake is pending.
    assert_eq!(
        status(&client(&ca.pem(), None), addr, "/metrics", None)
            .await
            .unwrap(),
        200
    );
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        stalled.read(&mut buf)
    });
    exp.wait_for_line("TLS handshake timed out", Duration::from_secs(40));
    let read = reader.join().unwrap();
    assert!(
        matches!(&read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the connection was not closed: {read:?}"
    );
    // A lower bound only: the server may not give up before the documented 10 s.
    assert!(
        opened.elapsed() >= Duration::from_secs(9),
        "dropped after {:?}",
        opened.elapsed()
    );
}

#[tokio::test]
async fn a_certificate_rotated_on_disk_is_served_without_restart() {
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    let (crt1, key1) = old_ca.leaf("exporter-1", true);
    let (crt2, key2) = new_ca.leaf("exporter-2", true);
    let web = "tls_server_config:\n  cert_file: tls/server.crt\n  key_file: tls/server.key\n";
    // Relative paths in the web config are relative to its own directory, not the cwd.
    let tls_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(tls_dir.path().join("tls")).unwrap();
    std::fs::write(tls_dir.path().join("tls/server.crt"), &crt1).unwrap();
    std::fs::write(tls_dir.path().join("tls/server.key"), &key1).unwrap();
    std::fs::write(tls_dir.path().join("web.yml"), web).unwrap();
    let web_path = tls_dir.path().join("web.yml");
    let p = spawn(
        &[
            "--config",
            "config.toml",
            "--listen",
            "127.0.0.1:0",
            "--web.config.file",
            web_path.to_str().unwrap(),
        ],
        &[],
        &[("config.toml", CONFIG)],
    );
    let line = p.wait_for_line("serving /metrics", Duration::from_secs(20));
    let addr: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap()
        .parse()
        .unwrap();

    let served_by = |ca: &Ca| {
        let c = client(&ca.pem(), None);
        async move { status(&c, addr, "/metrics", None).await.ok() }
    };
    assert_eq!(served_by(&old_ca).await, Some(200));
    assert_eq!(served_by(&new_ca).await, None);

    // A renewal written file by file: for a moment the key does not match the certificate.
    std::fs::write(tls_dir.path().join("tls/server.crt"), &crt2).unwrap();
    assert_eq!(
        served_by(&old_ca).await,
        Some(200),
        "a half-written renewal keeps the old certificate"
    );
    p.wait_for_line("cannot reload the TLS certificate", Duration::from_secs(10));
    std::fs::write(tls_dir.path().join("tls/server.key"), &key2).unwrap();
    wait_until("the new certificate", Duration::from_secs(20), || async {
        served_by(&new_ca).await.filter(|s| *s == 200)
    })
    .await;
    assert_eq!(served_by(&old_ca).await, None, "the old one is gone");
    p.wait_for_line("TLS certificate reloaded", Duration::from_secs(10));
    assert!(!p.output().contains(key2.lines().nth(1).unwrap()));
}

#[tokio::test]
async fn an_invalid_web_config_stops_the_start_with_the_key_named() {
    let ca = Ca::new("test CA");
    let (crt, key) = ca.leaf("exporter", true);
    let (other_crt, _) = ca.leaf("other", true);
    let cases: Vec<(String, &str)> = vec![
        ("tls_server_config:\n  cert_file: server.crt\n".into(), "key_file"),
        (
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n".into(),
            "`tls_server_config.cert_file`: cannot read the file",
        ),
        (
            "tls_server_config:\n  cert_file: other.crt\n  key_file: server.key\n".into(),
            "key_file",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: Maybe\n".into(),
            "client_auth_type",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n".into(),
            "client_ca_file",
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS10\n".into(),
            "min_version",
        ),
        ("basic_auth_users:\n  alice: hunter2\n".into(), "basic_auth_users.alice"),
        ("basic_auth_user:\n  alice: x\n".into(), "basic_auth_user"),
        ("tls_server_config: [\n".into(), "web.yml"),
    ];
    for (web, needle) in &cases {
        for check in [false, true] {
            let mut args = vec![
                "--config",
                "config.toml",
                "--listen",
                "127.0.0.1:0",
                "--web.config.file",
                "web.yml",
            ];
            if check {
                args.push("check-config");
            }
            let mut p = spawn(
                &args,
                &[],
                &[
                    ("config.toml", CONFIG),
                    ("web.yml", web),
                    ("server.crt", &crt),
                    ("server.key", &key),
                    ("other.crt", &other_crt),
                ],
            );
            let end = std::time::Instant::now() + Duration::from_secs(20);
            let code = loop {
                if let Some(s) = p.child.try_wait().unwrap() {
                    break s;
                }
                assert!(std::time::Instant::now() < end, "{web}: still running");
                std::thread::sleep(Duration::from_millis(20));
            };
            std::thread::sleep(Duration::from_millis(100)); // let the reader threads drain
            let out = p.output();
            assert_eq!(code.code(), Some(1), "{web}\n{out}");
            assert!(
                out.contains("--web.config.file") && out.contains(needle),
                "{web}: expected {needle:?} in\n{out}"
            );
            assert!(!out.contains("hunter2"), "{out}");
            // A `*_file` value is never printed back (it may be a secret pasted as a path).
            assert!(!out.contains("missing.crt"), "{out}");
            assert!(!out.contains("serving /metrics"), "{out}");
        }
    }
    // A web config file that does not exist.
    let mut p = spawn(
        &["--config", "config.toml", "--web.config.file", "nope.yml"],
        &[],
        &[("config.toml", CONFIG)],
    );
    let end = std::time::Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < end);
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(code.code(), Some(1));
    assert!(p.output().contains("nope.yml"), "{}", p.output());
}

/// Issue 13: 100 concurrent wrong passwords while the configured scraper keeps scraping. The
/// scraper's verdict is cached apart from failures, so it is served from the cache throughout;
/// the guesses find at most one bcrypt slot per core, and those that find none are answered
/// 429 at once. No guess is ever let in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_guessing_flood_does_not_lock_out_the_scraper() {
    const GUESSES: usize = 100;
    const WAVES: usize = 5;
    // Cost 8: each guess holds its slot for tens of milliseconds (more in a debug build), so
    // a hundred guesses sent at once overlap.
    let web = format!(
        "basic_auth_users:\n  prometheus: '{}'\n",
        bcrypt::hash("right horse", 8).unwrap()
    );
    let (exp, addr) = start(&[("web.yml", &web)]);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let call = |password: String| {
        let c = client.clone();
        async move {
            c.get(format!("http://{addr}/metrics"))
                .basic_auth("prometheus", Some(password))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    // The first right answer pays bcrypt once; every later one is a cache hit.
    assert_eq!(call("right horse".into()).await.unwrap(), 200);

    let mut guesses: Vec<u16> = Vec::new();
    let mut scrapes: Vec<u16> = Vec::new();
    for wave in 0..WAVES {
        let flood: Vec<_> = (0..GUESSES)
            .map(|i| tokio::spawn(call(format!("guess {wave}-{i}"))))
            .collect();
        // Scrape as the real user for as long as the wave lasts.
        loop {
            scrapes.push(call("right horse".into()).await.unwrap());
            if flood.iter().all(|h| h.is_finished()) {
                break;
            }
        }
        for h in flood {
            guesses.push(h.await.unwrap().expect("a guess answered"));
        }
        if guesses.contains(&429) {
            break;
        }
    }
    let count = |v: &[u16], s: u16| v.iter().filter(|&&x| x == s).count();
    println!(
        "basic_auth_flood: {} guesses ({} answered 401, {} answered 429), {} scrapes, all 200: {}",
        guesses.len(),
        count(&guesses, 401),
        count(&guesses, 429),
        scrapes.len(),
        count(&scrapes, 200) == scrapes.len()
    );
    assert!(
        scrapes.iter().all(|&s| s == 200),
        "the configured user was refused during the flood: {scrapes:?}"
    );
    assert!(
        guesses.iter().all(|&s| s == 401 || s == 429),
        "a guess got through: {guesses:?}"
    );
    assert!(
        guesses.contains(&429),
        "{WAVES} waves of {GUESSES} guesses never found every bcrypt slot busy"
    );
    assert!(guesses.contains(&401), "no guess was ever verified");
    assert!(!exp.output().contains("right horse"));
}
