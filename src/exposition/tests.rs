use super::*;
use crate::snapshot::{Fold, Limits, SessionView};

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

fn blocks(fmt: Format, snap: &Snapshot) -> Vec<Block> {
    let labels: BTreeMap<String, String> = [("env".to_owned(), "prod".to_owned())].into();
    let errors: BTreeMap<String, u64> = [("Throttling.User".to_owned(), 2)].into();
    let up = InstanceReport {
        id: "r-up",
        info_labels: &labels,
        snapshot: Some(snap),
        last_success_unix: Some(1_700_000_000.5),
        snapshot_timestamp_unix: Some(1_700_000_000.123),
        polls_total: 3,
        errors_by_code: &errors,
        last_duration_seconds: Some(0.25),
    };
    let down = InstanceReport {
        id: "r-down",
        snapshot: None,
        last_success_unix: None,
        snapshot_timestamp_unix: None,
        ..up
    };
    vec![
        encode_instance(fmt, &up),
        encode_instance(fmt, &down),
        encode_global(
            fmt,
            &GlobalReport {
                version: "1.2.3",
                skipped_polls: 0,
                instances: 2,
            },
        ),
    ]
}

fn scrape(fmt: Format) -> String {
    let snap = snapshot();
    let b = blocks(fmt, &snap);
    let mut out = Vec::new();
    render(fmt, b.iter(), &mut out);
    String::from_utf8(out).unwrap()
}

fn samples(text: &str) -> Vec<&str> {
    let mut v: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    v.sort_unstable();
    v
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
        let mut seen_types = std::collections::HashSet::new();
        let mut current = String::new();
        let mut finished = std::collections::HashSet::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_owned();
                assert!(
                    seen_types.insert(name.clone()),
                    "{fmt:?}: TYPE twice for {name}"
                );
                finished.insert(std::mem::replace(&mut current, name));
            } else if !line.starts_with('#') {
                let metric = line.split(['{', ' ']).next().unwrap();
                assert!(
                    metric.starts_with(&current),
                    "{fmt:?}: {line} outside family {current}"
                );
                assert!(
                    !finished.contains(metric),
                    "{fmt:?}: {metric} after its family ended"
                );
            }
        }
    }
}

#[test]
fn failed_instance_exports_health_only() {
    let out = scrape(Format::Text);
    let down: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("instance_id=\"r-down\""))
        .collect();
    let names: std::collections::BTreeSet<&str> = down
        .iter()
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec![
            "redis_session_exporter_poll_duration_seconds",
            "redis_session_exporter_poll_errors_total",
            "redis_session_exporter_polls_total",
            "redis_session_instance_info",
            "redis_session_last_success_timestamp_seconds",
            "redis_session_up",
        ]
    );
    assert!(out.contains("redis_session_up{instance_id=\"r-down\"} 0\n"));
    assert!(out.contains("redis_session_up{instance_id=\"r-up\"} 1\n"));
}

#[test]
fn values_labels_and_buckets() {
    let out = scrape(Format::OpenMetrics);
    assert!(
        out.contains(
            "redis_sessions_by_client_name{instance_id=\"r-up\",client_name=\"app\\\"x\\\"\"} 1\n"
        ),
        "{out}"
    );
    assert!(out.contains("redis_session_idle_seconds_bucket{instance_id=\"r-up\",le=\"5\"} 1\n"));
    assert!(
        out.contains("redis_session_idle_seconds_bucket{instance_id=\"r-up\",le=\"86400\"} 1\n")
    );
    assert!(out.contains("redis_session_idle_seconds_bucket{instance_id=\"r-up\",le=\"+Inf\"} 2\n"));
    assert!(out.contains("redis_session_idle_seconds_gcount{instance_id=\"r-up\"} 2\n"));
    assert!(out.contains("redis_session_idle_seconds_gsum{instance_id=\"r-up\"} 90003\n"));
    assert!(out.contains("# TYPE redis_session_exporter_polls counter\n"));
    assert!(out.contains("redis_session_exporter_poll_errors_total{instance_id=\"r-up\",code=\"Throttling.User\"} 2\n"));
    assert!(out.contains(
        "redis_session_snapshot_timestamp_seconds{instance_id=\"r-up\"} 1700000000.123\n"
    ));
    assert!(out.contains("redis_session_instance_info{instance_id=\"r-up\",env=\"prod\"} 1\n"));
    assert!(out.contains("redis_session_exporter_build_info{version=\"1.2.3\"} 1\n"));
    assert!(out
        .contains("redis_sessions_by_flag{instance_id=\"r-up\",flag=\"tracking_broadcast\"} 0\n"));
    let text = scrape(Format::Text);
    assert!(text.contains("# TYPE redis_session_exporter_polls_total counter\n"));
    assert!(text.contains("# TYPE redis_session_idle_seconds histogram\n"));
    assert!(text.contains("# TYPE redis_session_idle_seconds_gcount gauge\n"));
}

#[test]
fn no_header_for_families_without_samples() {
    let mut out = Vec::new();
    let g = encode_global(
        Format::Text,
        &GlobalReport {
            version: "x",
            skipped_polls: 0,
            instances: 0,
        },
    );
    render(Format::Text, std::iter::once(&g), &mut out);
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains("redis_sessions"), "{out}");
    assert!(out.contains("redis_session_exporter_build_info"));
}
