//! End to end, bad configuration: the real binary, both as `check-config` and as the daemon,
//! exits non-zero on every kind of config error, and its message names the key and the reason.
//! The daemon must refuse to start rather than run half-configured.

use std::time::{Duration, Instant};

use crate::common::*;

/// (what is wrong, config file, key the message must name, words of the reason).
const CASES: &[(&str, &str, &str, &str)] = &[
    ("unknown key", "[poll]\nintervall = \"1s\"\n[[instances]]\nid = \"r-a\"\n", "poll.intervall", "unknown field"),
    ("unknown top-level key", "bogus = 1\n[[instances]]\nid = \"r-a\"\n", "bogus", "unknown field"),
    ("unknown section", "[polls]\ninterval = \"1s\"\n[[instances]]\nid = \"r-a\"\n", "polls", "unknown field"),
    ("unknown key in an instance", "[[instances]]\nid = \"r-a\"\n[[instances]]\nidd = \"r-b\"\n", "instances[1].idd", "unknown field"),
    ("bad duration", "[poll]\ninterval = \"soon\"\n[[instances]]\nid = \"r-a\"\n", "poll.interval", "found a string, expected a duration"),
    ("bad timeout", "[das]\ntimeout = \"10 parsecs\"\n[[instances]]\nid = \"r-a\"\n", "das.timeout", "found a string, expected a duration"),
    ("zero timeout", "[das]\ntimeout = \"0s\"\n[[instances]]\nid = \"r-a\"\n", "das.timeout", "greater than zero"),
    ("interval below 1s", "[poll]\ninterval = \"100ms\"\n[[instances]]\nid = \"r-a\"\n", "poll.interval", "at least 1s"),
    ("empty instance id", "[[instances]]\nid = \"\"\n", "instances[0].id", "must not be empty"),
    ("blank instance id", "[[instances]]\nid = \"r-a\"\n[[instances]]\nid = \"  \"\n", "instances[1].id", "must not be empty"),
    ("duplicate instance id", "[[instances]]\nid = \"r-a\"\n[[instances]]\nid = \"r-a\"\n", "instances[1].id", "duplicate"),
    ("zero concurrency", "[poll]\nconcurrency = 0\n[[instances]]\nid = \"r-a\"\n", "poll.concurrency", "at least 1"),
    ("zero rate", "[poll]\nmax_requests_per_second = 0\n[[instances]]\nid = \"r-a\"\n", "poll.max_requests_per_second", "greater than zero"),
    ("negative rate", "[poll]\nmax_requests_per_second = -2.5\n[[instances]]\nid = \"r-a\"\n", "poll.max_requests_per_second", "greater than zero"),
    ("malformed label name", "[[instances]]\nid = \"r-a\"\nlabels = { \"team-name\" = \"x\" }\n", "instances[0].labels.team-name", "not a valid label name"),
    ("label starting with a digit", "[[instances]]\nid = \"r-a\"\nlabels = { \"1team\" = \"x\" }\n", "instances[0].labels.1team", "not a valid label name"),
    ("reserved label", "[[instances]]\nid = \"r-a\"\nlabels = { __meta = \"x\" }\n", "instances[0].labels.__meta", "reserved"),
    ("label colliding with the exporter's", "[[instances]]\nid = \"r-a\"\nlabels = { instance_id = \"x\" }\n", "instances[0].labels.instance_id", "collides"),
    ("label colliding with a breakdown", "[[instances]]\nid = \"r-a\"\nlabels = { command = \"x\" }\n", "instances[0].labels.command", "collides"),
    ("body cap too small", "[das]\nmax_body_bytes = 10\n[[instances]]\nid = \"r-a\"\n", "das.max_body_bytes", "at least"),
    ("endpoint not a URL", "[das]\nendpoint = \"not a url\"\n[[instances]]\nid = \"r-a\"\n", "das.endpoint", "not an http"),
    ("unknown provider", "[credentials]\nprovider = \"magic\"\n[[instances]]\nid = \"r-a\"\n", "credentials.provider", "unknown provider"),
    ("missing secret file", "[credentials]\nprovider = \"static\"\naccess_key_id = \"id\"\naccess_key_secret_file = \"/nonexistent/secret\"\n[[instances]]\nid = \"r-a\"\n", "credentials.access_key_secret_file", "cannot read the file: No such file"),
    ("secret file is a directory", "[credentials]\nprovider = \"static\"\naccess_key_id = \"id\"\naccess_key_secret_file = \"/\"\n[[instances]]\nid = \"r-a\"\n", "credentials.access_key_secret_file", "cannot read the file"),
    ("empty secret file", "[credentials]\nprovider = \"static\"\naccess_key_id = \"id\"\naccess_key_secret_file = \"empty-secret\"\n[[instances]]\nid = \"r-a\"\n", "credentials.access_key_secret_file", "the file is empty"),
    ("concurrency above 1024", "[poll]\nconcurrency = 1025\n[[instances]]\nid = \"r-a\"\n", "poll.concurrency", "at most 1024"),
    ("interval above 24h", "[poll]\ninterval = \"25h\"\n[[instances]]\nid = \"r-a\"\n", "poll.interval", "at most 24h"),
    ("interval of centuries", "[poll]\ninterval = \"500years\"\n[[instances]]\nid = \"r-a\"\n", "poll.interval", "at most 24h"),
    ("rate above 10000", "[poll]\nmax_requests_per_second = 10001\n[[instances]]\nid = \"r-a\"\n", "poll.max_requests_per_second", "at most 10000"),
    ("das timeout above 10m", "[das]\ntimeout = \"11m\"\n[[instances]]\nid = \"r-a\"\n", "das.timeout", "at most 10m"),
    ("a limit above 100000", "[limits]\nmax_client_names = 100001\n[[instances]]\nid = \"r-a\"\n", "limits.max_client_names", "at most 100000"),
    ("the largest integer as a limit", "[limits]\nmax_workloads = 9223372036854775807\n[[instances]]\nid = \"r-a\"\n", "limits.max_workloads", "at most 100000"),
    ("not TOML", "[poll\ninterval = 1\n", "", "TOML syntax error at line 1, column 6"),
];

/// Runs the binary to completion (bounded) and returns (its exit code, everything printed).
fn run(args: &[&str], config: &str) -> (Option<i32>, String) {
    let mut p = spawn(
        args,
        &[
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", SIM_KEY_ID),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SIM_KEY_SECRET),
        ],
        &[("config.toml", config), ("empty-secret", "\n")],
    );
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < end,
            "{args:?} did not exit on a bad config; output:\n{}",
            p.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Let the reader threads drain what the process printed.
    std::thread::sleep(Duration::from_millis(100));
    (status.code(), p.output())
}

#[test]
fn every_config_error_exits_1_naming_the_key_and_reason() {
    for (what, config, key, reason) in CASES {
        for args in [
            &["--config", "config.toml", "check-config"][..],
            &["--config", "config.toml", "--listen", "127.0.0.1:0"][..],
        ] {
            let (code, out) = run(args, config);
            let mode = if args.len() == 3 {
                "check-config"
            } else {
                "daemon"
            };
            assert_eq!(code, Some(1), "{what} ({mode}): exited 0; output:\n{out}");
            if !key.is_empty() {
                assert!(
                    out.contains(&format!("`{key}`")),
                    "{what} ({mode}): key `{key}` not named; output:\n{out}"
                );
            }
            assert!(
                out.contains(reason),
                "{what} ({mode}): reason {reason:?} not given; output:\n{out}"
            );
            assert!(
                !out.contains("serving /metrics"),
                "{what} ({mode}): the daemon started anyway"
            );
            assert!(!out.contains("panicked"), "{what} ({mode}): {out}");
        }
    }
}

#[test]
fn every_error_of_one_file_is_reported_at_once() {
    let (code, out) = run(
        &["--config", "config.toml", "check-config"],
        "[poll]\nconcurrency = 0\nmax_requests_per_second = 0\n[[instances]]\nid = \"\"\n",
    );
    assert_eq!(code, Some(1));
    for key in [
        "poll.concurrency",
        "poll.max_requests_per_second",
        "instances[0].id",
    ] {
        assert!(out.contains(&format!("`{key}`")), "{key}: {out}");
    }
}

#[test]
fn a_missing_config_file_is_an_error_naming_the_file() {
    for args in [
        &["--config", "nowhere.toml", "check-config"][..],
        &["--config", "nowhere.toml"][..],
    ] {
        let (code, out) = run(args, "");
        assert_eq!(code, Some(1), "{args:?}");
        assert!(out.contains("nowhere.toml"), "{out}");
    }
}

#[test]
fn a_readable_secret_file_is_accepted_and_never_printed() {
    let mut p = spawn(
        &["--config", "config.toml", "check-config"],
        &[],
        &[
            (
                "config.toml",
                "[credentials]\nprovider = \"static\"\naccess_key_id = \"id\"\naccess_key_secret_file = \"secret\"\n[[instances]]\nid = \"r-a\"\n",
            ),
            ("secret", "hunter2-very-secret\n"),
        ],
    );
    let status = p.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let out = p.output();
    assert!(status.success(), "{out}");
    assert!(!out.contains("hunter2"), "{out}");
}

/// A secret pasted where its file's path belonged: every `*_file` key that cannot be read is
/// named with the reason, and the value is never printed back, by `check-config` or the daemon.
#[test]
fn a_secret_pasted_into_a_file_key_is_never_printed() {
    const PASTED: &str = "LTAI5tPastedSecretNotAPath0123";
    let cases = [
        (
            format!("[credentials]\nprovider = \"static\"\naccess_key_id = \"id\"\naccess_key_secret_file = \"{PASTED}\"\n[[instances]]\nid = \"r-a\"\n"),
            "credentials.access_key_secret_file",
        ),
        (
            format!("[[instances]]\nid = \"r-a\"\nsource = \"direct\"\naddress = \"redis://h:1\"\npassword_file = \"{PASTED}\"\n"),
            "instances[0].password_file",
        ),
        (
            format!("[[instances]]\nid = \"r-a\"\nsource = \"direct\"\naddress = \"rediss://h:1\"\ntls_ca_file = \"{PASTED}\"\n"),
            "instances[0].tls_ca_file",
        ),
    ];
    for (config, key) in &cases {
        for args in [
            &["--config", "config.toml", "check-config"][..],
            &["--config", "config.toml", "--listen", "127.0.0.1:0"][..],
        ] {
            let (code, out) = run(args, config);
            assert_eq!(code, Some(1), "{key} {args:?}: accepted\n{out}");
            assert!(
                out.contains(&format!("`{key}`: cannot read the file: No such file")),
                "{key} {args:?}: {out}"
            );
            assert!(
                !out.contains(PASTED),
                "{key} {args:?}: the value printed: {out}"
            );
        }
    }
}

/// Out-of-range values sent by reload: each is rejected with its key named (400), nothing
/// panics, and the control loop lives on: a good file afterwards is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_values_are_rejected_by_a_reload_and_the_daemon_lives_on() {
    let base = "[das]\nendpoint = \"http://127.0.0.1:9\"\n[poll]\ninterval = \"1h\"\n";
    let (exp, addr) = start_exporter_with(
        &format!("{base}[[instances]]\nid = \"r-a\"\n"),
        &[],
        &[LIFECYCLE],
    );
    let write = |text: &str| std::fs::write(exp.dir.join("config.toml"), text).unwrap();
    for (what, config, key, reason) in CASES {
        if !reason.starts_with("at most") {
            continue;
        }
        write(config);
        let (status, body) = post(addr, "/-/reload").await;
        assert_eq!(status, 400, "{what}: {body}");
        assert!(
            body.contains(&format!("`{key}`")) && body.contains(reason),
            "{what}: {body}"
        );
    }
    write(&format!(
        "{base}[[instances]]\nid = \"r-a\"\n[[instances]]\nid = \"r-b\"\n"
    ));
    let (status, body) = post(addr, "/-/reload").await;
    assert_eq!(status, 200, "{body}");
    let line = exp.wait_for_line("configuration reloaded", Duration::from_secs(10));
    assert!(
        line.contains("instances=2"),
        "the good file applied: {line}"
    );
    assert!(!exp.output().contains("panicked"), "{}", exp.output());
}
