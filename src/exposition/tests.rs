use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, SystemTime};

use super::*;
use crate::snapshot::{
    DirectFigures, Distribution, Fold, Limits, SessionView, Snapshot, TOTAL_MEMORY_BOUNDS,
};
use crate::store::{InstanceEntry, InstanceSeries, Status};

/// Two sessions: p1 idle 3 s named `app"x"`, p2 idle 90,000 s unnamed; one source of two.
fn snapshot() -> Snapshot {
    let mut f = Fold::new();
    for (node, name, flags, idle) in [("p1", "app\"x\"", "N", 3), ("p2", "", "bx", 90_000)] {
        f.add(&SessionView {
            node_id: node,
            cmd: "GET",
            name,
            flags,
            db: Some(0),
            multi: -1,
            idle,
            ..Default::default()
        });
    }
    f.add_source("10.0.0.1", 2);
    f.finish(&Limits::default(), Some(2), Some(1_700_000_000_123))
}

/// r-up (two sessions, direct figures), r-down (last poll failed), r-pending (never polled),
/// and the process metrics after a few events.
fn fixture() -> (Arc<Store>, ProcessMetrics) {
    let store = Arc::new(Store::new());
    let metrics = ProcessMetrics::new("1.2.3");
    let mut snap = snapshot();
    let mut mem = Distribution::new(TOTAL_MEMORY_BOUNDS);
    mem.observe(20_000);
    mem.observe(70_000);
    snap.direct = Some(DirectFigures {
        by_user: vec![("default".into(), 2)],
        by_library: vec![("redis-py".into(), 1), (String::new(), 1)],
        total_memory: mem,
        subscriptions_shard: 1,
    });
    let up = InstanceSeries {
        info_labels: [("env".to_owned(), "prod".to_owned())].into(),
        snapshot: Some(snap),
        last_success_unix: Some(1_700_000_000.5),
        snapshot_timestamp_unix: Some(1_700_000_000.123),
        last_duration_seconds: Some(0.25),
        max_connections: Some(20_000),
    };
    let down = InstanceSeries {
        snapshot: None,
        last_success_unix: None,
        snapshot_timestamp_unix: None,
        ..up.clone()
    };
    store.publish(InstanceEntry {
        status: Status::Up { sessions: 2 },
        series: Some(up),
        ..InstanceEntry::pending("r-up")
    });
    store.publish(InstanceEntry {
        status: Status::Down {
            code: "Throttling.User".into(),
            reason: "x".into(),
        },
        series: Some(down),
        ..InstanceEntry::pending("r-down")
    });
    store.publish(InstanceEntry::pending("r-pending"));
    for _ in 0..3 {
        metrics.poll_finished("r-up", Ok(()));
    }
    metrics.poll_finished("r-down", Err("Throttling.User"));
    metrics.poll_finished("r-down", Err("Throttling.User"));
    metrics.config_loaded(
        true,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    );
    metrics.credentials_obtained("env", None);
    (store, metrics)
}

fn scrape(fmt: Format) -> String {
    let (store, metrics) = fixture();
    encode(fmt, &registry(store, &metrics), 0).unwrap()
}

/// A sample line's name and labels (unescaped), and its value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses one sample line (test helper, independent of the encoder).
fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).expect("a name");
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let mut key = String::new();
        let end;
        loop {
            let (i, c) = chars.next().expect("unterminated labels");
            match c {
                '}' => {
                    end = i + 1;
                    break;
                }
                ',' => {}
                '=' => {
                    assert_eq!(chars.next().map(|c| c.1), Some('"'), "{line}");
                    let mut value = String::new();
                    loop {
                        match chars.next().expect("unterminated value").1 {
                            '\\' => match chars.next().expect("escape").1 {
                                'n' => value.push('\n'),
                                c => value.push(c),
                            },
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    assert!(
                        labels.insert(std::mem::take(&mut key), value).is_none(),
                        "label twice: {line}"
                    );
                }
                c => key.push(c),
            }
        }
        rest = &r[end..];
    }
    let value = rest.trim();
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("value of {line}")),
    };
    (name, labels, value)
}

/// Every sample, keyed by name and labels; `le` values normalised to numbers.
fn samples(text: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, mut labels, v) = parse_sample(line);
        if let Some(le) = labels.get_mut("le") {
            if le != "+Inf" {
                *le = le.parse::<f64>().expect("numeric le").to_string();
            }
        }
        assert!(out.insert((name, labels), v).is_none(), "twice: {line}");
    }
    out
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples(text).get(&(name.to_owned(), labels)).copied()
}

/// The sample names a family may have, by its declared type (exactly these, nothing by prefix).
fn sample_names(fmt: Format, family: &str, typ: &str) -> Vec<String> {
    let with = |suffixes: &[&str]| suffixes.iter().map(|s| format!("{family}{s}")).collect();
    match (fmt, typ) {
        (_, "gauge" | "unknown" | "untyped" | "stateset") => with(&[""]),
        // In the classic text the family is declared with the sample's name, `_total` included.
        (Format::Text, "counter") => with(&[""]),
        (Format::OpenMetrics, "counter") => with(&["_total", "_created"]),
        (_, "histogram") => with(&["_bucket", "_sum", "_count", "_created"]),
        (_, "gaugehistogram") => with(&["_bucket", "_gcount", "_gsum"]),
        (_, "summary") => with(&["", "_sum", "_count", "_created"]),
        (_, "info") => with(&["_info"]),
        (_, t) => panic!("unknown type {t}"),
    }
}

/// Checks that every sample belongs to the family declared right above it (its exact sample
/// names, by type), that each family is declared once, and that the samples of one label set
/// (`le` aside) are contiguous. Returns the first violation.
fn check_families(fmt: Format, text: &str) -> Result<(), String> {
    let mut declared = HashSet::new();
    let mut current: Option<(String, Vec<String>)> = None;
    let mut ended: Vec<String> = Vec::new();
    let mut label_sets: Vec<BTreeMap<String, String>> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, typ) = rest.split_once(' ').ok_or(format!("bad TYPE: {line}"))?;
            if !declared.insert(name.to_owned()) {
                return Err(format!("{name} declared twice"));
            }
            if let Some((_, names)) = current.take() {
                ended.extend(names);
            }
            current = Some((name.to_owned(), sample_names(fmt, name, typ)));
            label_sets.clear();
        } else if !line.starts_with('#') && !line.is_empty() {
            let (name, mut labels, _) = parse_sample(line);
            let Some((family, names)) = &current else {
                return Err(format!("{name} before any family"));
            };
            if ended.contains(&name) {
                return Err(format!("{name} after its family ended (inside {family})"));
            }
            if !names.contains(&name) {
                return Err(format!("{name} is not a sample of family {family}"));
            }
            labels.remove("le");
            if label_sets.last() != Some(&labels) {
                if label_sets.contains(&labels) {
                    return Err(format!("{family}: samples of {labels:?} not contiguous"));
                }
                label_sets.push(labels);
            }
        }
    }
    Ok(())
}

#[test]
fn both_formats_carry_the_same_samples() {
    let text = scrape(Format::Text);
    let om = scrape(Format::OpenMetrics);
    assert_eq!(samples(&text), samples(&om));
    assert!(om.ends_with("# EOF\n"));
    assert!(!text.contains("# EOF"));
}

#[test]
fn every_family_is_contiguous_and_declared_once() {
    for fmt in Format::ALL {
        let out = scrape(fmt);
        check_families(fmt, &out).unwrap_or_else(|e| panic!("{fmt:?}: {e}\n{out}"));
    }
}

#[test]
fn the_family_check_maps_samples_to_families_exactly() {
    let t = Format::Text;
    let om = Format::OpenMetrics;
    // A sample whose name merely starts with the family's name belongs to another family.
    let prefix =
        "# TYPE redis_sessions gauge\nredis_sessions 1\nredis_sessions_by_db{db=\"0\"} 1\n";
    assert!(check_families(t, prefix)
        .unwrap_err()
        .contains("not a sample of family"));
    // Histogram samples after their family ended.
    let hist = "# TYPE a histogram\na_bucket{le=\"+Inf\"} 1\na_sum 1\na_count 1\n\
                # TYPE b gauge\nb 1\na_count 1\n";
    assert!(check_families(t, hist)
        .unwrap_err()
        .contains("after its family ended"));
    // Counter samples after their family ended (OpenMetrics names the family without `_total`).
    let counter = "# TYPE c counter\nc_total 1\n# TYPE d gauge\nd 1\nc_total 2\n# EOF\n";
    assert!(check_families(om, counter)
        .unwrap_err()
        .contains("after its family ended"));
    // `_gcount` is no sample of a histogram; `_total` none of a gauge.
    let gcount = "# TYPE e histogram\ne_bucket{le=\"+Inf\"} 1\ne_gcount 1\n";
    assert!(check_families(t, gcount).is_err());
    assert!(check_families(om, "# TYPE f gauge\nf_total 1\n# EOF\n").is_err());
    // One label set's samples split by another's.
    let split =
        "# TYPE g histogram\ng_bucket{i=\"1\",le=\"+Inf\"} 1\ng_bucket{i=\"2\",le=\"+Inf\"} 1\n\
                 g_count{i=\"1\"} 1\n";
    assert!(check_families(t, split)
        .unwrap_err()
        .contains("not contiguous"));
    assert!(check_families(t, "# TYPE h gauge\nh 1\n# TYPE h gauge\n").is_err());
    assert!(check_families(t, "x 1\n").is_err());
}

#[test]
fn failed_instance_exports_health_only_and_a_pending_one_nothing() {
    let out = scrape(Format::Text);
    let names = |id: &str| -> BTreeSet<String> {
        samples(&out)
            .into_keys()
            .filter(|(_, l)| l.get("instance_id").map(String::as_str) == Some(id))
            .map(|(n, _)| n)
            .collect()
    };
    assert_eq!(
        names("r-down").into_iter().collect::<Vec<_>>(),
        vec![
            "redis_session_exporter_poll_duration_seconds",
            "redis_session_exporter_poll_errors_total",
            "redis_session_exporter_polls_total",
            "redis_session_instance_info",
            // What the instance is, not what its last answer said: exported whatever the poll.
            "redis_session_instance_max_connections",
            "redis_session_last_success_timestamp_seconds",
            "redis_session_up",
        ]
    );
    assert!(names("r-pending").is_empty());
    assert_eq!(
        value(&out, "redis_session_up", &[("instance_id", "r-down")]),
        Some(0.0)
    );
    assert_eq!(
        value(&out, "redis_session_up", &[("instance_id", "r-up")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &out,
            "redis_session_last_success_timestamp_seconds",
            &[("instance_id", "r-down")]
        ),
        Some(0.0)
    );
    // Pending instances are polled too: they count.
    assert_eq!(
        value(&out, "redis_session_exporter_instances", &[]),
        Some(3.0)
    );
}

#[test]
fn values_and_labels() {
    for fmt in Format::ALL {
        let out = scrape(fmt);
        let v = |name: &str, labels: &[(&str, &str)]| {
            let mut l = vec![("instance_id", "r-up")];
            l.extend_from_slice(labels);
            value(&out, name, &l).unwrap_or_else(|| panic!("{fmt:?}: no {name}{labels:?}\n{out}"))
        };
        assert_eq!(
            v(
                "redis_sessions_by_client_name",
                &[("client_name", "app\"x\"")]
            ),
            1.0
        );
        assert_eq!(
            v("redis_sessions_by_client_name", &[("client_name", "")]),
            1.0
        );
        assert_eq!(v("redis_sessions", &[("node_id", "p1")]), 1.0);
        assert_eq!(v("redis_sessions_reported", &[]), 2.0);
        assert_eq!(v("redis_sessions_unlisted", &[]), 0.0);
        assert_eq!(v("redis_session_instance_max_connections", &[]), 20_000.0);
        assert_eq!(
            v("redis_sessions_by_source", &[("source", "10.0.0.1")]),
            2.0
        );
        assert_eq!(v("redis_sessions_by_command", &[("command", "get")]), 2.0);
        assert_eq!(v("redis_sessions_by_db", &[("db", "0")]), 2.0);
        assert_eq!(
            v("redis_sessions_by_flag", &[("flag", "tracking_broadcast")]),
            0.0
        );
        assert_eq!(v("redis_sessions_by_flag", &[("flag", "blocked")]), 1.0);
        assert_eq!(v("redis_sessions_subscriptions", &[("kind", "shard")]), 1.0);
        assert_eq!(v("redis_sessions_by_user", &[("user", "default")]), 2.0);
        assert_eq!(
            v("redis_sessions_by_library", &[("library", "redis-py")]),
            1.0
        );
        assert_eq!(
            v("redis_session_snapshot_timestamp_seconds", &[]),
            1_700_000_000.123
        );
        assert_eq!(
            v("redis_session_last_success_timestamp_seconds", &[]),
            1_700_000_000.5
        );
        assert_eq!(v("redis_session_exporter_poll_duration_seconds", &[]), 0.25);
        assert_eq!(v("redis_session_instance_info", &[("env", "prod")]), 1.0);
        assert_eq!(v("redis_session_exporter_polls_total", &[]), 3.0);
        let down = [("instance_id", "r-down"), ("code", "Throttling.User")];
        assert_eq!(
            value(&out, "redis_session_exporter_poll_errors_total", &down),
            Some(2.0)
        );
        assert_eq!(
            value(
                &out,
                "redis_session_exporter_build_info",
                &[("version", "1.2.3")]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &out,
                "redis_session_exporter_config_last_reload_success_timestamp_seconds",
                &[]
            ),
            Some(1_700_000_000.0)
        );
        assert_eq!(
            value(
                &out,
                "redis_session_exporter_credential_errors_total",
                &[("provider", "env")]
            ),
            Some(0.0)
        );
        assert_eq!(
            value(&out, "redis_session_exporter_skipped_polls_total", &[]),
            Some(0.0)
        );
        assert_eq!(
            value(&out, "redis_session_exporter_total_shards", &[]),
            Some(1.0)
        );
    }
}

#[test]
fn distributions_are_histograms_with_sum_and_count() {
    // The bounds as they were exported before the move (captured from the release binary).
    let idle = [
        "1", "5", "10", "30", "60", "300", "600", "1800", "3600", "21600", "86400",
    ];
    let mem = [
        "32768",
        "65536",
        "262144",
        "1048576",
        "16777216",
        "268435456",
    ];
    for fmt in Format::ALL {
        let out = scrape(fmt);
        for family in [
            "redis_session_idle_seconds",
            "redis_session_age_seconds",
            "redis_session_query_buffer_bytes",
            "redis_session_output_buffer_bytes",
            "redis_session_total_memory_bytes",
        ] {
            assert!(
                out.contains(&format!("# TYPE {family} histogram\n")),
                "{fmt:?} {family}"
            );
            assert!(
                !out.contains(&format!("{family}_g")),
                "{fmt:?}: {family} _gcount/_gsum"
            );
        }
        let s = samples(&out);
        let buckets = |family: &str| -> Vec<(f64, f64)> {
            let mut b: Vec<(f64, f64)> = s
                .iter()
                .filter(|((n, l), _)| {
                    n == &format!("{family}_bucket") && l["instance_id"] == "r-up"
                })
                .map(|((_, l), v)| (l["le"].parse().unwrap(), *v))
                .collect();
            b.sort_by(|a, b| a.0.total_cmp(&b.0));
            b
        };
        let expect = |bounds: &[&str]| -> Vec<f64> {
            let mut v: Vec<f64> = bounds.iter().map(|b| b.parse().unwrap()).collect();
            v.push(f64::INFINITY);
            v
        };
        let b = buckets("redis_session_idle_seconds");
        assert_eq!(
            b.iter().map(|b| b.0).collect::<Vec<_>>(),
            expect(&idle),
            "{fmt:?}"
        );
        // Idle 3 s and 90,000 s, cumulative.
        assert_eq!(b[0].1, 0.0);
        assert_eq!(b[1].1, 1.0, "le=5");
        assert_eq!(b[10].1, 1.0, "le=86400");
        assert_eq!(b[11].1, 2.0, "+Inf");
        let up = |n: &str| value(&out, n, &[("instance_id", "r-up")]);
        assert_eq!(up("redis_session_idle_seconds_count"), Some(2.0));
        assert_eq!(up("redis_session_idle_seconds_sum"), Some(90_003.0));
        let m = buckets("redis_session_total_memory_bytes");
        assert_eq!(
            m.iter().map(|b| b.0).collect::<Vec<_>>(),
            expect(&mem),
            "{fmt:?}"
        );
        assert_eq!(
            m.iter().map(|b| b.1).collect::<Vec<_>>(),
            [1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0],
            "20,000 <= 32768; 70,000 <= 262144"
        );
        assert_eq!(up("redis_session_total_memory_bytes_count"), Some(2.0));
        assert_eq!(up("redis_session_total_memory_bytes_sum"), Some(90_000.0));
    }
}

#[test]
fn types_and_help_are_prometheus_clients() {
    let om = scrape(Format::OpenMetrics);
    assert!(om.contains("# TYPE redis_session_exporter_polls counter\n"));
    assert!(om.contains("# TYPE redis_session_exporter_build info\n"));
    assert!(om.contains("# HELP redis_sessions_reported Total number of sessions as reported by the API (Data.Total).\n"));
    let text = scrape(Format::Text);
    assert!(text.contains("# TYPE redis_session_exporter_polls_total counter\n"));
    assert!(text.contains("# TYPE redis_session_exporter_build_info gauge\n"));
    // The registry appends a period to help texts: ours must not end up with two.
    assert!(!text.contains(".."), "{text}");
    assert!(text.contains(
        "# HELP redis_session_exporter_polls_total Polls of the instance, successful or not \
         (retries inside a poll not counted).\n"
    ));
}

#[test]
fn no_header_for_families_without_samples() {
    let store = Arc::new(Store::new());
    let metrics = ProcessMetrics::new("x");
    for fmt in Format::ALL {
        let out = encode(fmt, &registry(store.clone(), &metrics), 0).unwrap();
        assert!(!out.contains("redis_sessions"), "{out}");
        assert!(!out.contains("poll_errors"), "{out}");
        assert!(!out.contains("discovery"), "{out}");
        assert!(out.contains("redis_session_exporter_build_info"));
        assert!(
            out.contains("redis_session_exporter_instances 0\n"),
            "{out}"
        );
        check_families(fmt, &out).unwrap();
    }
}

#[test]
fn forgotten_instances_and_regions_leave_no_series() {
    let (store, metrics) = fixture();
    metrics.discovery_refreshed("cn-a", 5, SystemTime::UNIX_EPOCH + Duration::from_secs(10));
    metrics.discovery_failed("cn-a", "Throttling");
    metrics.discovery_failed("cn-b", "Forbidden");
    let reg = registry(store.clone(), &metrics);
    let before = encode(Format::Text, &reg, 0).unwrap();
    assert_eq!(
        value(
            &before,
            "redis_session_exporter_discovery_errors_total",
            &[("region", "cn-a"), ("code", "Throttling")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &before,
            "redis_session_exporter_discovery_last_success_timestamp_seconds",
            &[("region", "cn-b")]
        ),
        Some(0.0),
        "a region that never succeeded shows 0"
    );
    let v = metrics.version();
    store.remove("r-down");
    metrics.forget_instance("r-down");
    metrics.forget_region("cn-a");
    assert!(metrics.version() > v, "every event moves the version");
    let after = encode(Format::Text, &reg, 0).unwrap();
    assert!(!after.contains("r-down"), "{after}");
    assert!(!after.contains("cn-a"), "{after}");
    assert!(after.contains("cn-b"), "{after}");
    assert!(
        !after.contains("redis_session_exporter_poll_errors"),
        "{after}"
    );
}

#[test]
fn unlisted_sessions_are_the_reported_ones_not_listed_never_negative() {
    let store = Arc::new(Store::new());
    let metrics = ProcessMetrics::new("x");
    // Two sessions listed (see `snapshot`); the API counted 5, or 1.
    for (id, total) in [("r-short", 5), ("r-over", 1)] {
        let mut snap = snapshot();
        snap.reported_total = total;
        store.publish(InstanceEntry {
            status: Status::Up { sessions: 2 },
            series: Some(InstanceSeries {
                snapshot: Some(snap),
                ..Default::default()
            }),
            ..InstanceEntry::pending(id)
        });
    }
    let out = encode(Format::Text, &registry(store, &metrics), 0).unwrap();
    let unlisted = |id| value(&out, "redis_sessions_unlisted", &[("instance_id", id)]);
    assert_eq!(unlisted("r-short"), Some(3.0));
    assert_eq!(unlisted("r-over"), Some(0.0));
    assert!(
        !out.contains("redis_session_instance_max_connections"),
        "unknown: absent"
    );
}

/// Error codes come from the API verbatim: an instance (a region, an API's request counter) gets
/// a series for at most 32 distinct codes, every further code counts under `code="other"`, a code
/// already held keeps counting on its own series, and other owners are not affected; `ok` is
/// never an error code.
#[test]
fn error_codes_per_owner_are_capped_at_32() {
    use crate::metrics::MAX_CODES_PER_OWNER;
    let (store, metrics) = fixture();
    for i in 0..40 {
        metrics.poll_finished("r-codes", Err(&format!("Invented.Code{i:02}")));
        metrics.discovery_failed("cn-codes", &format!("Invented.Code{i:02}"));
        metrics.api_request("DescribeInstances", &format!("Invented.Code{i:02}"));
    }
    metrics.api_request("DescribeInstances", "ok");
    metrics.poll_finished("r-codes", Err("Invented.Code00"));
    metrics.poll_finished("r-codes", Err("Invented.Code39"));
    let out = encode(Format::Text, &registry(store, &metrics), 0).unwrap();
    for (family, owner_label, owner) in [
        (
            "redis_session_exporter_poll_errors_total",
            "instance_id",
            "r-codes",
        ),
        (
            "redis_session_exporter_discovery_errors_total",
            "region",
            "cn-codes",
        ),
        (
            "redis_session_exporter_api_requests_total",
            "api",
            "DescribeInstances",
        ),
    ] {
        let series: Vec<Sample> = out
            .lines()
            .filter(|l| l.starts_with(family))
            .map(parse_sample)
            .filter(|(_, l, _)| l.get(owner_label).map(String::as_str) == Some(owner))
            .collect();
        let ok = usize::from(owner == "DescribeInstances");
        assert_eq!(
            series.len(),
            MAX_CODES_PER_OWNER + 1 + ok,
            "{family}: {series:?}"
        );
        let count = |code: &str| {
            series
                .iter()
                .find(|(_, l, _)| l["code"] == code)
                .map(|s| s.2)
        };
        let extra = if owner == "r-codes" { 1.0 } else { 0.0 };
        assert_eq!(count("other"), Some(8.0 + extra), "{family}");
        assert_eq!(count("Invented.Code00"), Some(1.0 + extra), "{family}");
        assert_eq!(count("Invented.Code31"), Some(1.0), "{family}");
        assert_eq!(count("Invented.Code32"), None, "{family}");
        if ok == 1 {
            assert_eq!(count("ok"), Some(1.0), "{family}");
        }
    }
    // Another instance keeps its own codes.
    assert!(out.contains(
        "redis_session_exporter_poll_errors_total{instance_id=\"r-down\",code=\"Throttling.User\"} 2"
    ));
}

/// A database past 0–255 is exported as `db="other"`, beside the real numbers and the empty
/// value of an answer without `Db`.
#[test]
fn databases_past_255_are_exported_as_other() {
    let mut f = Fold::new();
    for db in [Some(3), Some(256), Some(-1), Some(i64::MAX), None] {
        f.add(&SessionView {
            node_id: "p1",
            cmd: "get",
            db,
            multi: -1,
            ..Default::default()
        });
    }
    let store = Arc::new(Store::new());
    store.publish(InstanceEntry {
        status: Status::Up { sessions: 5 },
        series: Some(InstanceSeries {
            info_labels: BTreeMap::new(),
            snapshot: Some(f.finish(&Limits::default(), None, None)),
            last_success_unix: Some(1.0),
            snapshot_timestamp_unix: None,
            last_duration_seconds: None,
            max_connections: None,
        }),
        ..InstanceEntry::pending("r-dbs")
    });
    let out = encode(Format::Text, &registry(store, &ProcessMetrics::new("t")), 0).unwrap();
    let dbs: BTreeMap<String, f64> = out
        .lines()
        .filter(|l| l.starts_with("redis_sessions_by_db{"))
        .map(parse_sample)
        .map(|(_, l, v)| (l["db"].clone(), v))
        .collect();
    let want: BTreeMap<String, f64> = [("", 1.0), ("3", 1.0), ("other", 3.0)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(dbs, want, "{out}");
}
