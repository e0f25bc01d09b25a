//! End to end against real Redis servers (Debian's `redis-server`, started here on free loopback
//! ports): the real binary with `source = "direct"` must report exactly the clients this test
//! opens, leave its own connection out, label sessions by node in a cluster (and keep finding them
//! when the seed dies), fail the whole poll when one node fails, classify auth, permission,
//! timeout and connection failures, re-read a rotated password file at reconnect, and agree with the DAS path fed by `simulate --from-redis` (a round trip
//! through the crate's own CLIENT LIST parser; the figures derived by hand from the clients opened
//! here, in `every_figure_matches_the_clients_opened`, are the independent oracle).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::pki::Ca;
use crate::common::*;

/// A `redis-server` on a loopback port in its own temp dir; killed on drop.
struct Redis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port whose cluster-bus port (+10000) is free too.
fn free_port() -> u16 {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair");
}

impl Redis {
    fn start(extra: &[&str]) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let sock = dir.path().join("redis.sock");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--unixsocket")
            .arg(&sock)
            .args(["--unixsocketperm", "700"])
            .args(extra)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "redis-server is required for these tests (run scripts/test.sh, or \
                 `apt-get install redis-server`): {e}"
            )
        });
        let r = Redis { child, port, dir };
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = TcpStream::connect(r.addr()) {
                if command(&mut s, &["PING"]).contains("PONG") {
                    break;
                }
            }
            assert!(
                Instant::now() < end,
                "redis-server did not start on {}",
                r.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// A client that has sent `cmds` (without waiting for the replies of the last one).
    fn client(&self, cmds: &[&[&str]]) -> TcpStream {
        let mut s = TcpStream::connect(self.addr()).unwrap();
        for c in cmds {
            send(&mut s, c);
        }
        s
    }

    /// Runs one admin command on a short-lived connection; returns the raw reply.
    fn admin(&self, args: &[&str]) -> String {
        let mut s = TcpStream::connect(self.addr()).unwrap();
        command(&mut s, args)
    }
}

fn send(s: &mut impl Write, args: &[&str]) {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(out.as_bytes()).unwrap();
}

/// Sends a command and reads what arrives within a moment (enough for one small reply).
fn command(s: &mut TcpStream, args: &[&str]) -> String {
    send(s, args);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 65536];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// `metric`'s series of `instance`, keyed by the labels after `instance_id` (`""` when none).
fn by_labels(text: &str, metric: &str, instance: &str) -> BTreeMap<String, f64> {
    let prefix = format!("{metric}{{instance_id=\"{instance}\"");
    series_of(text, metric, instance)
        .into_iter()
        .map(|(k, v)| {
            let rest = k[prefix.len()..]
                .trim_start_matches(',')
                .trim_end_matches('}');
            (rest.to_owned(), v)
        })
        .collect()
}

fn map(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn direct_config(instances: &str) -> String {
    format!(
        "[das]\ntimeout = \"5s\"\n[poll]\ninterval = \"1s\"\nconcurrency = 8\n\
         max_requests_per_second = 50\n{instances}"
    )
}

/// Scrapes until `f` holds or 30 s pass; returns the last scrape.
async fn scrape_until(
    (proc_, exporter): (&Proc, SocketAddr),
    what: &str,
    f: impl Fn(&str) -> bool,
) -> String {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape_text(exporter).await;
        if f(&text) {
            return text;
        }
        assert!(
            Instant::now() < end,
            "timed out waiting for {what}; last scrape:\n{text}\nexporter output:\n{}",
            proc_.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The client shapes of the main test, and every figure they must produce.
struct Shapes {
    _tcp: Vec<TcpStream>,
    _unix: UnixStream,
}

fn open_shapes(r: &Redis) -> Shapes {
    let mut tcp = Vec::new();
    for _ in 0..3 {
        tcp.push(r.client(&[&["CLIENT", "SETNAME", "idle-pool"]]));
    }
    tcp.push(r.client(&[&["CLIENT", "SETNAME", "cron=job"]]));
    for _ in 0..2 {
        tcp.push(r.client(&[&["SELECT", "3"], &["CLIENT", "SETNAME", "db3"]]));
    }
    tcp.push(r.client(&[&["CLIENT", "SETNAME", "sub"], &["SUBSCRIBE", "ch1", "ch2"]]));
    tcp.push(r.client(&[&["CLIENT", "SETNAME", "psub"], &["PSUBSCRIBE", "p*"]]));
    tcp.push(r.client(&[&["CLIENT", "SETNAME", "blpop"], &["BLPOP", "nolist", "0"]]));
    tcp.push(r.client(&[
        &["CLIENT", "SETNAME", "multi"],
        &["MULTI"],
        &["SET", "a", "1"],
        &["INCR", "b"],
    ]));
    tcp.push(r.client(&[&["CLIENT", "SETNAME", "monitor"], &["MONITOR"]]));
    let mut unix = UnixStream::connect(r.socket()).unwrap();
    send(&mut unix, &["CLIENT", "SETNAME", "unix-client"]);
    Shapes {
        _tcp: tcp,
        _unix: unix,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_figure_matches_the_clients_opened() {
    let r = Redis::start(&[]);
    let shapes = open_shapes(&r);
    let node = format!("127.0.0.1:{}", r.port);
    let sock = r.socket().display().to_string();
    let (exporter_proc, exporter) = start_exporter(
        &direct_config(&format!(
            "[[instances]]\nid = \"r-direct\"\nsource = \"direct\"\n\
             address = \"redis://127.0.0.1:{}\"\ndb = 3\n",
            r.port
        )),
        &[],
    );
    let id = "r-direct";
    let text = scrape_until((&exporter_proc, exporter), "12 sessions", |t| {
        by_labels(t, "redis_sessions_by_client_name", id).len() == 9
            && by_labels(t, "redis_sessions", id).values().sum::<f64>() == 12.0
            && by_labels(t, "redis_sessions_in_transaction", id)
                .values()
                .sum::<f64>()
                == 1.0
    })
    .await;
    let n = |name: &str| by_labels(&text, name, id);

    assert_eq!(n("redis_session_up"), map(&[("", 1.0)]));
    assert_eq!(
        n("redis_sessions"),
        map(&[(&format!("node_id=\"{node}\""), 12.0)]),
        "the exporter's own connection is not counted"
    );
    assert_eq!(
        n("redis_sessions_by_client_name"),
        map(&[
            ("client_name=\"blpop\"", 1.0),
            ("client_name=\"cron=job\"", 1.0),
            ("client_name=\"db3\"", 2.0),
            ("client_name=\"idle-pool\"", 3.0),
            ("client_name=\"monitor\"", 1.0),
            ("client_name=\"multi\"", 1.0),
            ("client_name=\"psub\"", 1.0),
            ("client_name=\"sub\"", 1.0),
            ("client_name=\"unix-client\"", 1.0),
        ])
    );
    assert_eq!(
        n("redis_sessions_by_db"),
        map(&[("db=\"0\"", 10.0), ("db=\"3\"", 2.0)])
    );
    assert_eq!(
        n("redis_sessions_by_source"),
        map(&[
            ("source=\"127.0.0.1\"", 11.0),
            (&format!("source=\"{sock}\""), 1.0)
        ])
    );
    assert_eq!(
        n("redis_sessions_by_command"),
        map(&[
            ("command=\"blpop\"", 1.0),
            ("command=\"client|setname\"", 7.0),
            ("command=\"incr\"", 1.0),
            ("command=\"monitor\"", 1.0),
            ("command=\"psubscribe\"", 1.0),
            ("command=\"subscribe\"", 1.0),
        ])
    );
    let flags = n("redis_sessions_by_flag");
    for (flag, want) in [
        ("pubsub", 2.0),
        ("blocked", 1.0),
        ("multi", 1.0),
        ("monitor", 1.0),
        ("unix_socket", 1.0),
        ("none", 6.0),
        ("unknown", 0.0),
        ("replica", 0.0),
    ] {
        assert_eq!(
            flags[&format!("flag=\"{flag}\"")],
            want,
            "flag {flag}: {flags:?}"
        );
    }
    assert_eq!(
        n("redis_sessions_subscriptions"),
        map(&[
            ("kind=\"channel\"", 2.0),
            ("kind=\"pattern\"", 1.0),
            ("kind=\"shard\"", 0.0)
        ])
    );
    assert_eq!(n("redis_sessions_in_transaction"), map(&[("", 1.0)]));
    // Direct-only families.
    assert_eq!(
        n("redis_sessions_by_user"),
        map(&[("user=\"default\"", 12.0)])
    );
    assert_eq!(
        n("redis_sessions_by_library").values().sum::<f64>(),
        12.0,
        "{:?}",
        n("redis_sessions_by_library")
    );
    assert_eq!(
        n("redis_session_total_memory_bytes_count"),
        map(&[("", 12.0)])
    );
    assert!(n("redis_session_total_memory_bytes_sum")[""] > 12.0 * 1000.0);
    assert_eq!(n("redis_session_idle_seconds_count"), map(&[("", 12.0)]));

    // The exporter's connection is there, named, and reused across polls (one connection).
    let list = r.admin(&["CLIENT", "LIST"]);
    assert_eq!(
        list.matches("name=redis-session-exporter ").count(),
        1,
        "{list}"
    );

    // Closing the clients makes their series go away.
    drop(shapes);
    let text = scrape_until((&exporter_proc, exporter), "the clients to go", |t| {
        by_labels(t, "redis_sessions_by_client_name", id).is_empty()
    })
    .await;
    assert!(by_labels(&text, "redis_sessions", id).is_empty(), "{text}");
    assert!(by_labels(&text, "redis_sessions_by_db", id).is_empty());
    assert!(by_labels(&text, "redis_sessions_by_source", id).is_empty());
    assert_eq!(by_labels(&text, "redis_session_up", id), map(&[("", 1.0)]));
    drop(exporter_proc);
}

/// `maxclients` of a server, as `CONFIG GET` tells an admin.
fn maxclients(r: &Redis) -> f64 {
    let reply = r.admin(&["CONFIG", "GET", "maxclients"]);
    reply
        .lines()
        .rev()
        .find(|l| !l.is_empty())
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("CONFIG GET maxclients: {reply:?}"))
}

/// `redis_session_instance_max_connections`: the server's `maxclients` when the ACL allows
/// `CONFIG GET`, absent (and the poll fine) when it does not, and a configured `max_connections`
/// over either, for direct and DAS instances alike.
#[tokio::test(flavor = "multi_thread")]
async fn the_connection_limit_is_maxclients_when_the_acl_allows_it() {
    let r = Redis::start(&["--maxclients", "4321"]);
    assert_eq!(maxclients(&r), 4321.0);
    let ok = r.admin(&[
        "ACL",
        "SETUSER",
        "exporter",
        "on",
        ">s3cret-pw",
        "+client|list",
        "+client|setname",
        "+client|id",
    ]);
    assert!(ok.contains("OK"), "{ok}");
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("pw");
    std::fs::write(&password, "s3cret-pw\n").unwrap();
    let (_sim, sim) = start_simulator("sessions = 3\n");
    let direct = |id: &str, extra: &str| {
        format!(
            "[[instances]]\nid = \"{id}\"\nsource = \"direct\"\naddress = \"redis://127.0.0.1:{}\"\n{extra}\n",
            r.port
        )
    };
    let cfg = format!(
        "[das]\nendpoint = \"http://{sim}\"\ntimeout = \"5s\"\n[poll]\ninterval = \"1s\"\n\
         max_requests_per_second = 50\n{}{}{}\
         [[instances]]\nid = \"r-das-limit\"\nmax_connections = 1234\n\
         [[instances]]\nid = \"r-das-unknown\"\n",
        direct("r-maxclients", ""),
        direct(
            "r-no-config",
            &format!(
                "username = \"exporter\"\npassword_file = \"{}\"",
                password.display()
            )
        ),
        direct("r-configured", "max_connections = 777"),
    );
    let (exporter_proc, exporter) = start_exporter(&cfg, &[]);
    let ids = [
        "r-maxclients",
        "r-no-config",
        "r-configured",
        "r-das-limit",
        "r-das-unknown",
    ];
    let text = scrape_until((&exporter_proc, exporter), "two polls of each", |t| {
        ids.iter().all(|id| {
            by_labels(t, "redis_session_exporter_polls_total", id)
                .get("")
                .is_some_and(|n| *n >= 2.0)
        })
    })
    .await;
    let limit = |id| by_labels(&text, "redis_session_instance_max_connections", id);
    assert_eq!(limit("r-maxclients"), map(&[("", 4321.0)]));
    assert_eq!(limit("r-configured"), map(&[("", 777.0)]));
    assert_eq!(limit("r-das-limit"), map(&[("", 1234.0)]));
    assert_eq!(
        limit("r-no-config"),
        map(&[]),
        "CONFIG not allowed: unknown"
    );
    assert_eq!(limit("r-das-unknown"), map(&[]));
    for id in ids {
        assert_eq!(
            by_labels(&text, "redis_session_up", id),
            map(&[("", 1.0)]),
            "{id}"
        );
        assert!(
            by_labels(&text, "redis_session_exporter_poll_errors_total", id).is_empty(),
            "{id}: a refused CONFIG GET is no error"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn acl_user_wrong_password_and_missing_permission() {
    let r = Redis::start(&[]);
    let ok = r.admin(&[
        "ACL",
        "SETUSER",
        "exporter",
        "on",
        ">s3cret-pw",
        "+client|list",
        "+client|setname",
        "+client|id",
        "+cluster|nodes",
    ]);
    assert!(ok.contains("OK"), "{ok}");
    let ok = r.admin(&["ACL", "SETUSER", "weak", "on", ">weak-pw", "+ping"]);
    assert!(ok.contains("OK"), "{ok}");
    let _app = r.client(&[&["CLIENT", "SETNAME", "app"]]);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    };
    let good = write("good", "s3cret-pw\n");
    let bad = write("bad", "not-the-password\n");
    let weak = write("weak", "weak-pw");
    let inst = |id: &str, user: &str, file: &str| {
        format!(
            "[[instances]]\nid = \"{id}\"\nsource = \"direct\"\naddress = \"redis://127.0.0.1:{}\"\n\
             username = \"{user}\"\npassword_file = \"{file}\"\n",
            r.port
        )
    };
    let cfg = direct_config(&format!(
        "{}{}{}",
        inst("r-good", "exporter", &good),
        inst("r-bad", "exporter", &bad),
        inst("r-weak", "weak", &weak)
    ));
    let (exporter_proc, exporter) = start_exporter(&cfg, &[]);
    let text = scrape_until((&exporter_proc, exporter), "all three polled", |t| {
        by_labels(t, "redis_session_up", "r-good").get("") == Some(&1.0)
            && by_labels(t, "redis_session_exporter_poll_errors_total", "r-bad")
                .contains_key("code=\"auth\"")
            && by_labels(t, "redis_session_exporter_poll_errors_total", "r-weak")
                .contains_key("code=\"noperm\"")
    })
    .await;
    // The app client is there; the exporter's own connections (user `exporter`, named) are not.
    // (r-weak's connection may show up as user `weak`: that user may not even name itself.)
    let users = by_labels(&text, "redis_sessions_by_user", "r-good");
    assert_eq!(users.get("user=\"default\""), Some(&1.0), "{users:?}");
    assert!(!users.contains_key("user=\"exporter\""), "{users:?}");
    assert_eq!(
        by_labels(&text, "redis_session_up", "r-bad"),
        map(&[("", 0.0)])
    );
    assert_eq!(
        by_labels(&text, "redis_session_up", "r-weak"),
        map(&[("", 0.0)])
    );
    let out = exporter_proc.output();
    for secret in ["s3cret-pw", "not-the-password", "weak-pw"] {
        assert!(!out.contains(secret), "secret in the log:\n{out}");
        assert!(!text.contains(secret));
    }
}

#[test]
fn config_errors_name_the_keys() {
    let cases = [
        ("source = \"direct\"\n", "instances[0].address"),
        (
            "source = \"direct\"\naddress = \"http://x:1\"\n",
            "instances[0].address",
        ),
        (
            "source = \"direct\"\naddress = \"redis://h:1\"\npassword_file = \"/nonexistent/pw\"\n",
            "instances[0].password_file",
        ),
        (
            "source = \"direct\"\naddress = \"redis://h:1\"\nnodes = [\"h:2\"]\ncluster = true\n",
            "instances[0].cluster",
        ),
        ("address = \"redis://h:1\"\n", "instances[0].address"),
        ("source = \"carrier-pigeon\"\n", "instances"),
        (
            "source = \"direct\"\naddress = \"redis://h:1\"\ntls_ca_file = \"Cargo.toml\"\n",
            "instances[0].tls_ca_file",
        ),
        (
            "source = \"direct\"\naddress = \"rediss://h:1\"\ntls_ca_file = \"/nonexistent/ca.pem\"\n",
            "instances[0].tls_ca_file",
        ),
        (
            "source = \"direct\"\naddress = \"rediss://h:1\"\ntls_ca_file = \"c.toml\"\n",
            "instances[0].tls_ca_file",
        ),
        (
            "source = \"direct\"\naddress = \"rediss://h:1\"\ntls_cert_file = \"c.toml\"\n",
            "instances[0].tls_key_file",
        ),
        ("tls_key_file = \"c.toml\"\n", "instances[0].tls_key_file"),
    ];
    for (body, key) in cases {
        let mut p = spawn(
            &["check-config", "--config", "c.toml"],
            &[],
            &[("c.toml", &format!("[[instances]]\nid = \"a\"\n{body}"))],
        );
        let status = p.child.wait().unwrap();
        assert!(!status.success(), "{body}: accepted\n{}", p.output());
        p.wait_for_line(&format!("`{key}"), Duration::from_secs(10));
    }
}

/// `rediss://` against a `redis-server` that requires a client certificate: with the
/// instance's own CA and a client certificate the sessions are read; with a CA that did not sign
/// the server, or without a client certificate, the instance is down with `code="tls"`.
#[tokio::test(flavor = "multi_thread")]
async fn tls_with_own_ca_and_client_certificate() {
    let ca = Ca::new("redis test CA");
    let stranger = Ca::new("someone else");
    let (server_crt, server_key) = ca.leaf("redis", true);
    let (client_crt, client_key) = ca.leaf("exporter", false);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    };
    let ca_file = write("ca.pem", &ca.pem());
    let stranger_file = write("stranger.pem", &stranger.pem());
    let (client_crt, client_key) = (
        write("client.crt", &client_crt),
        write("client.key", &client_key),
    );
    let tls_port = free_port().to_string();
    let r = Redis::start(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &write("server.crt", &server_crt),
        "--tls-key-file",
        &write("server.key", &server_key),
        "--tls-ca-cert-file",
        &ca_file,
        "--tls-auth-clients",
        "yes",
    ]);
    // Plain-port clients: CLIENT LIST over TLS must show them, and not the exporter itself.
    let _clients: Vec<TcpStream> = (0..3)
        .map(|_| r.client(&[&["CLIENT", "SETNAME", "app"]]))
        .collect();
    let inst = |id: &str, extra: &str| {
        format!(
            "[[instances]]\nid = \"{id}\"\nsource = \"direct\"\n\
             address = \"rediss://127.0.0.1:{tls_port}\"\n{extra}"
        )
    };
    let full = format!(
        "tls_ca_file = \"{ca_file}\"\ntls_cert_file = \"{client_crt}\"\n\
         tls_key_file = \"{client_key}\"\n"
    );
    let wrong_ca = format!(
        "tls_ca_file = \"{stranger_file}\"\ntls_cert_file = \"{client_crt}\"\n\
         tls_key_file = \"{client_key}\"\n"
    );
    let no_cert = format!("tls_ca_file = \"{ca_file}\"\n");
    let cfg = direct_config(&format!(
        "{}{}{}",
        inst("r-tls", &full),
        inst("r-wrong-ca", &wrong_ca),
        inst("r-no-cert", &no_cert)
    ));
    let (exporter_proc, exporter) = start_exporter(&cfg, &[]);
    let tls_error = |t: &str, id: &str| {
        by_labels(t, "redis_session_exporter_poll_errors_total", id).contains_key("code=\"tls\"")
    };
    // The sibling instances' refused handshakes are connections too: while one is half-open it
    // shows in CLIENT LIST (unnamed, `cmd=NULL`), so wait for a poll that caught none. The
    // exporter's own connection, were it counted, would be in every poll.
    let text = scrape_until((&exporter_proc, exporter), "all three polled", |t| {
        by_labels(t, "redis_session_up", "r-tls").get("") == Some(&1.0)
            && tls_error(t, "r-wrong-ca")
            && tls_error(t, "r-no-cert")
            && by_labels(t, "redis_sessions_by_client_name", "r-tls")
                == map(&[("client_name=\"app\"", 3.0)])
    })
    .await;
    for id in ["r-wrong-ca", "r-no-cert"] {
        assert_eq!(by_labels(&text, "redis_session_up", id), map(&[("", 0.0)]));
    }
    let out = exporter_proc.output();
    assert!(
        !out.contains("PRIVATE KEY"),
        "key material in the log:\n{out}"
    );
}

/// Three cluster masters on loopback (failure detection after 1 s, so a dead node is flagged
/// `fail` quickly); returns them and their `host:port`s.
fn start_cluster() -> (Vec<Redis>, Vec<String>) {
    let nodes: Vec<Redis> = (0..3)
        .map(|i| {
            Redis::start(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{i}.conf"),
                "--cluster-node-timeout",
                "1000",
            ])
        })
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let mut create = Command::new("redis-cli");
    create
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null());
    let out = create
        .output()
        .unwrap_or_else(|e| panic!("redis-cli is required (apt-get install redis-tools): {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Wait until every node knows the other two.
    let end = Instant::now() + Duration::from_secs(30);
    while !nodes
        .iter()
        .all(|n| n.admin(&["CLUSTER", "NODES"]).matches("master").count() == 3)
    {
        assert!(Instant::now() < end, "cluster did not form");
        std::thread::sleep(Duration::from_millis(100));
    }
    (nodes, addrs)
}

/// `cluster = true`: every node found from the seed's `CLUSTER NODES` and labelled; when the seed
/// dies, the nodes seen last time are asked instead, and once the others flag it `fail` the
/// instance is up again with the two live nodes.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_nodes_are_found_labelled_and_outlive_the_seed() {
    let (mut nodes, addrs) = start_cluster();
    // 1, 2 and 3 clients on the three nodes.
    let mut clients = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for _ in 0..=i {
            clients.push(n.client(&[&["CLIENT", "SETNAME", &format!("on-{i}")]]));
        }
    }
    let (exporter_proc, exporter) = start_exporter(
        &direct_config(&format!(
            "[[instances]]\nid = \"r-cluster\"\nsource = \"direct\"\naddress = \"redis://{}\"\ncluster = true\n",
            addrs[1]
        )),
        &[],
    );
    let want: BTreeMap<String, f64> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("node_id=\"{a}\""), (i + 1) as f64))
        .collect();
    let text = scrape_until((&exporter_proc, exporter), "sessions on every node", |t| {
        by_labels(t, "redis_sessions", "r-cluster") == want
    })
    .await;
    assert_eq!(
        by_labels(&text, "redis_sessions_by_client_name", "r-cluster"),
        map(&[
            ("client_name=\"on-0\"", 1.0),
            ("client_name=\"on-1\"", 2.0),
            ("client_name=\"on-2\"", 3.0)
        ])
    );
    // The instance's connection limit: every node's maxclients, summed.
    let limit: f64 = nodes.iter().map(maxclients).sum();
    assert_eq!(
        by_labels(&text, "redis_session_instance_max_connections", "r-cluster"),
        map(&[("", limit)])
    );

    // The seed (node 1, with its two clients) dies.
    drop(nodes.remove(1));
    let survivors: BTreeMap<String, f64> = [(0, 1.0), (2, 3.0)]
        .into_iter()
        .map(|(i, n)| (format!("node_id=\"{}\"", addrs[i]), n))
        .collect();
    let text = scrape_until(
        (&exporter_proc, exporter),
        "the two live nodes, found without the seed",
        |t| {
            by_labels(t, "redis_sessions", "r-cluster") == survivors
                && by_labels(t, "redis_session_up", "r-cluster") == map(&[("", 1.0)])
        },
    )
    .await;
    assert_eq!(
        by_labels(&text, "redis_sessions_by_client_name", "r-cluster"),
        map(&[("client_name=\"on-0\"", 1.0), ("client_name=\"on-2\"", 3.0)])
    );

    // A server without cluster support, asked with cluster = true, says so.
    let plain = Redis::start(&[]);
    let (_p2, exporter2) = start_exporter(
        &direct_config(&format!(
            "[[instances]]\nid = \"r-plain\"\nsource = \"direct\"\naddress = \"redis://127.0.0.1:{}\"\ncluster = true\n",
            plain.port
        )),
        &[],
    );
    scrape_until((&_p2, exporter2), "code=cluster", |t| {
        by_labels(t, "redis_session_exporter_poll_errors_total", "r-plain")
            .contains_key("code=\"cluster\"")
    })
    .await;
    drop(clients);
}

/// A round trip: `simulate --from-redis` turns the server's CLIENT LIST into a DAS answer with
/// the same parser the direct source uses, so this shows the two paths agree with each other. That
/// the figures are right is `every_figure_matches_the_clients_opened`'s job (hand-derived).
#[tokio::test(flavor = "multi_thread")]
async fn from_redis_round_trip_das_path_agrees_with_direct() {
    let r = Redis::start(&[]);
    let _shapes = open_shapes(&r);
    let sim = spawn(
        &[
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--from-redis",
            &format!("redis://127.0.0.1:{}", r.port),
        ],
        &[],
        &[],
    );
    let sim_addr = simulator_addr(&sim);
    let cfg = format!(
        "[das]\nendpoint = \"http://{sim_addr}\"\ntimeout = \"5s\"\n[poll]\ninterval = \"1s\"\n\
         [[instances]]\nid = \"r-das\"\n\
         [[instances]]\nid = \"r-direct\"\nsource = \"direct\"\naddress = \"redis://127.0.0.1:{}\"\n",
        r.port
    );
    let (exporter_proc, exporter) = start_exporter(&cfg, &[]);
    const SAME: &[&str] = &[
        "redis_sessions",
        "redis_sessions_reported",
        "redis_sessions_by_source",
        "redis_sessions_by_command",
        "redis_sessions_by_db",
        "redis_sessions_by_flag",
        "redis_sessions_by_client_name",
        "redis_sessions_subscriptions",
        "redis_sessions_in_transaction",
        "redis_session_idle_seconds_count",
        "redis_session_query_buffer_bytes_count",
    ];
    let text = scrape_until((&exporter_proc, exporter), "both paths to agree", |t| {
        by_labels(t, "redis_sessions", "r-direct")
            .values()
            .sum::<f64>()
            == 12.0
            && SAME.iter().all(|m| {
                let das = by_labels(t, m, "r-das");
                let mut direct = by_labels(t, m, "r-direct");
                // Shard subscriptions are a direct-only series.
                direct.remove("kind=\"shard\"");
                das == direct
            })
    })
    .await;
    assert_eq!(
        by_labels(&text, "redis_sessions", "r-das")
            .values()
            .sum::<f64>(),
        12.0
    );
    assert!(
        by_labels(&text, "redis_sessions_by_user", "r-das").is_empty(),
        "direct-only families stay direct-only"
    );
}

/// One failing node fails the whole poll (partial figures would look like a drop in sessions),
/// and the transport failures get their codes: a closed port is `connection`, a server that
/// accepts and never answers is `timeout`. A healthy instance on the same server is unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_node_fails_the_poll_with_timeout_and_connection_codes() {
    let r = Redis::start(&[]);
    let _app = r.client(&[&["CLIENT", "SETNAME", "app"]]);
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // Accepted by the kernel's backlog, never read: every request hangs.
    let mute = TcpListener::bind("127.0.0.1:0").unwrap();
    let mute_addr = mute.local_addr().unwrap();
    let good = format!("127.0.0.1:{}", r.port);
    let inst = |id: &str, where_: &str| {
        format!("[[instances]]\nid = \"{id}\"\nsource = \"direct\"\n{where_}\n")
    };
    let cfg = direct_config(&format!(
        "{}{}{}{}",
        inst("r-whole", &format!("nodes = [\"{good}\"]")),
        inst("r-half", &format!("nodes = [\"{good}\", \"{closed}\"]")),
        inst("r-refused", &format!("address = \"redis://{closed}\"")),
        inst("r-mute", &format!("address = \"redis://{mute_addr}\"")),
    ))
    .replace("timeout = \"5s\"", "timeout = \"1s\"");
    let (exporter_proc, exporter) = start_exporter(&cfg, &[]);
    let codes = |t: &str, id: &str| {
        by_labels(t, "redis_session_exporter_poll_errors_total", id)
            .into_keys()
            .collect::<Vec<_>>()
    };
    let text = scrape_until((&exporter_proc, exporter), "every instance polled", |t| {
        by_labels(t, "redis_session_up", "r-whole") == map(&[("", 1.0)])
            && ["r-half", "r-refused", "r-mute"]
                .iter()
                .all(|id| !codes(t, id).is_empty())
    })
    .await;
    assert_eq!(
        by_labels(&text, "redis_sessions", "r-whole"),
        map(&[(&format!("node_id=\"{good}\""), 1.0)])
    );
    for (id, code) in [
        ("r-half", "connection"),
        ("r-refused", "connection"),
        ("r-mute", "timeout"),
    ] {
        assert_eq!(
            by_labels(&text, "redis_session_up", id),
            map(&[("", 0.0)]),
            "{id}"
        );
        assert_eq!(codes(&text, id), vec![format!("code=\"{code}\"")], "{id}");
        assert!(
            by_labels(&text, "redis_sessions", id).is_empty()
                && by_labels(&text, "redis_sessions_by_client_name", id).is_empty(),
            "{id}: no partial figures"
        );
    }
    drop(mute);
}

/// `password_file` is read at every (re)connect: after the ACL password changes and the
/// exporter's connection is killed, the reconnect fails with `auth` while the file holds the old
/// password, and succeeds, in the same process, once the file holds the new one.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_password_file_is_read_at_reconnect() {
    let r = Redis::start(&[]);
    let acl = |pw: &str| {
        let ok = r.admin(&[
            "ACL",
            "SETUSER",
            "exporter",
            "on",
            "resetpass",
            &format!(">{pw}"),
            "+client|list",
            "+client|setname",
            "+client|id",
        ]);
        assert!(ok.contains("OK"), "{ok}");
    };
    acl("first-pw-not-real");
    let _app = r.client(&[&["CLIENT", "SETNAME", "app"]]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "first-pw-not-real\n").unwrap();
    let cfg = direct_config(&format!(
        "[[instances]]\nid = \"r-rotate\"\nsource = \"direct\"\naddress = \"redis://127.0.0.1:{}\"\n\
         username = \"exporter\"\npassword_file = \"{}\"\n",
        r.port,
        file.display()
    ));
    let (exporter_proc, exporter) = start_exporter(&cfg, &[]);
    let up = |t: &str| by_labels(t, "redis_session_up", "r-rotate");
    scrape_until(
        (&exporter_proc, exporter),
        "up with the first password",
        |t| up(t) == map(&[("", 1.0)]),
    )
    .await;

    // The password changes on the server; the exporter's open connection is cut.
    acl("second-pw-not-real");
    let killed = r.admin(&["CLIENT", "KILL", "USER", "exporter"]);
    assert!(
        killed.starts_with(':') && !killed.starts_with(":0"),
        "{killed}"
    );
    scrape_until(
        (&exporter_proc, exporter),
        "auth failure on reconnect",
        |t| {
            up(t) == map(&[("", 0.0)])
                && by_labels(t, "redis_session_exporter_poll_errors_total", "r-rotate")
                    .contains_key("code=\"auth\"")
        },
    )
    .await;

    // The file catches up: the next reconnect reads it.
    std::fs::write(&file, "second-pw-not-real\n").unwrap();
    let text = scrape_until(
        (&exporter_proc, exporter),
        "up with the second password",
        |t| up(t) == map(&[("", 1.0)]),
    )
    .await;
    assert_eq!(
        by_labels(&text, "redis_sessions_by_client_name", "r-rotate"),
        map(&[("client_name=\"app\"", 1.0)])
    );
    let out = exporter_proc.output();
    assert!(
        !out.contains("-pw-not-real"),
        "a password in the log:\n{out}"
    );
}

/// Runs the exporter on `cfg` until instance `id` has failed a poll, and checks that it failed
/// only for a reply over the `cap` (`invalid_response`, the cap named in the log) and is down.
/// Returns the last scrape.
async fn refused_over_cap(cfg: &str, id: &str, cap: usize) -> String {
    let (exporter_proc, exporter) = start_exporter(cfg, &[]);
    let text = scrape_until((&exporter_proc, exporter), "a failed poll", |t| {
        !by_labels(t, "redis_session_exporter_poll_errors_total", id).is_empty()
    })
    .await;
    assert_eq!(
        by_labels(&text, "redis_session_exporter_poll_errors_total", id)
            .into_keys()
            .collect::<Vec<_>>(),
        vec!["code=\"invalid_response\"".to_owned()]
    );
    assert_eq!(by_labels(&text, "redis_session_up", id), map(&[("", 0.0)]));
    let out = exporter_proc.output();
    assert!(
        out.contains(&format!("exceeds das.max_body_bytes ({cap})")),
        "{out}"
    );
    text
}

/// `CLIENT LIST` replies are taken only up to `[das] max_body_bytes`: with the smallest cap
/// (1 KiB) and a dozen clients (about 3 KiB of reply) the instance is down with
/// `code="invalid_response"` and no figure; the reply is never parsed.
#[tokio::test(flavor = "multi_thread")]
async fn a_reply_over_max_body_bytes_fails_the_poll() {
    let r = Redis::start(&[]);
    let clients: Vec<TcpStream> = (0..12)
        .map(|i| r.client(&[&["CLIENT", "SETNAME", &format!("app-{i:02}")]]))
        .collect();
    let cfg = direct_config(&format!(
        "[[instances]]\nid = \"r-big\"\nsource = \"direct\"\naddress = \"redis://127.0.0.1:{}\"\n",
        r.port
    ))
    .replace("[das]\n", "[das]\nmax_body_bytes = 1024\n");
    let text = refused_over_cap(&cfg, "r-big", 1024).await;
    assert!(by_labels(&text, "redis_sessions", "r-big").is_empty());
    drop(clients);
}

/// The cap holds while the reply is read, not only after: a client named with 96 MiB makes every
/// `CLIENT LIST` reply larger than that, and with `max_body_bytes` at 1 MiB the exporter reads
/// about 1 MiB of each, fails the poll and closes the connection. Its resident peak stays below
/// the size of one reply (it would hold a reply twice over if it buffered it whole).
#[tokio::test(flavor = "multi_thread")]
async fn a_reply_over_the_cap_is_not_read_into_memory() {
    const NAME_BYTES: usize = 96 << 20;
    let r = Redis::start(&[]);
    let mut big = r.client(&[]);
    send(&mut big, &["CLIENT", "SETNAME", &"n".repeat(NAME_BYTES)]);
    big.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut ok = [0u8; 5];
    big.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"+OK\r\n");
    let cfg = direct_config(&format!(
        "[[instances]]\nid = \"r-huge\"\nsource = \"direct\"\naddress = \"redis://127.0.0.1:{}\"\n",
        r.port
    ))
    .replace("[das]\n", "[das]\nmax_body_bytes = 1048576\n");
    let (exporter_proc, exporter) = start_exporter(&cfg, &[]);
    let text = scrape_until((&exporter_proc, exporter), "three refused replies", |t| {
        by_labels(t, "redis_session_exporter_poll_errors_total", "r-huge")
            .get("code=\"invalid_response\"")
            .is_some_and(|n| *n >= 3.0)
    })
    .await;
    assert_eq!(
        by_labels(&text, "redis_session_up", "r-huge"),
        map(&[("", 0.0)])
    );
    let peak_kib = memory_kib(exporter_proc.child.id(), "VmHWM");
    println!(
        "direct: resident peak {peak_kib} KiB after refusing three replies of > {NAME_BYTES} bytes"
    );
    assert!(
        peak_kib > 0 && peak_kib < (NAME_BYTES / 1024) as u64,
        "the exporter's resident peak ({peak_kib} KiB) reached the size of one reply"
    );
    let out = exporter_proc.output();
    assert!(out.contains("read no further"), "{out}");
    drop(big);
}

/// A node reached over a Unix socket (`unix://`): its clients are counted under the socket
/// path as `node_id`.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_on_a_unix_socket() {
    let r = Redis::start(&[]);
    let sock = r.socket().display().to_string();
    let _clients: Vec<TcpStream> = (0..2)
        .map(|i| r.client(&[&["CLIENT", "SETNAME", &format!("app-{i}")]]))
        .collect();
    let cfg = direct_config(&format!(
        "[[instances]]\nid = \"r-unix\"\nsource = \"direct\"\naddress = \"unix://{sock}\"\n"
    ));
    let (exporter_proc, exporter) = start_exporter(&cfg, &[]);
    let text = scrape_until((&exporter_proc, exporter), "two sessions", |t| {
        by_labels(t, "redis_sessions", "r-unix")
            .values()
            .sum::<f64>()
            == 2.0
    })
    .await;
    assert_eq!(
        by_labels(&text, "redis_sessions", "r-unix"),
        map(&[(&format!("node_id=\"{sock}\""), 2.0)])
    );
    assert_eq!(
        by_labels(&text, "redis_session_up", "r-unix"),
        map(&[("", 1.0)])
    );
}

/// `CLUSTER NODES` is held to `[das] max_body_bytes` like `CLIENT LIST`: with a 250-character
/// announced hostname per node, the seed's reply passes 1 KiB and the instance is down with
/// `code="invalid_response"` before any node is asked for its clients.
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_nodes_reply_over_max_body_bytes_fails_the_poll() {
    const CAP: usize = 1024;
    let (nodes, addrs) = start_cluster();
    for (i, n) in nodes.iter().enumerate() {
        let host = format!("{}{i}", "h".repeat(250));
        let reply = n.admin(&["CONFIG", "SET", "cluster-announce-hostname", &host]);
        assert!(reply.starts_with("+OK"), "{reply}");
    }
    // The hostnames travel by gossip; wait until the seed's reply is past the cap.
    let end = Instant::now() + Duration::from_secs(30);
    while nodes[0].admin(&["CLUSTER", "NODES"]).len() <= CAP + 16 {
        assert!(Instant::now() < end, "the hostnames did not spread");
        std::thread::sleep(Duration::from_millis(100));
    }
    let cfg = direct_config(&format!(
        "[[instances]]\nid = \"r-wide\"\nsource = \"direct\"\naddress = \"redis://{}\"\ncluster = true\n",
        addrs[0]
    ))
    .replace("[das]\n", &format!("[das]\nmax_body_bytes = {CAP}\n"));
    refused_over_cap(&cfg, "r-wide", CAP).await;
}
