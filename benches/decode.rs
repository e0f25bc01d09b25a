//! Decode + fold of one GetRedisAllSession body against the cost of merely validating the JSON
//! (`serde_json::from_slice::<IgnoredAny>`), on every member of the realistic corpus
//! (`das::corpus`: key orders, separators, escapes, number forms, missing keys; 1,000, 20,000 and
//! 100,000 sessions) and on the simulator's own answers.
//!
//! Besides criterion's own report (realistic members only), the bench prints one line per member:
//! `ratio decode/validate`, measured side by side (the two closures alternate, best of several
//! rounds) so machine noise cancels, and the share of sessions the scanner read on its fast path.
//!
//! Environment:
//! - `DECODE_MEMBERS=text`: only members whose name contains `text`;
//! - `DECODE_REPEAT=n DECODE_MEMBER=name [DECODE_VALIDATE=1]`: decode (or validate) that member n
//!   times and exit, a fixed amount of work for `valgrind --tool=callgrind`, whose instruction
//!   counts do not depend on the machine's load;
//! - `CORPUS_WRITE=name:path [CORPUS_SESSIONS=n]`: write that member (with n sessions) to `path`
//!   and exit (scripts/bench-poll-cpu.sh; the fuzz seeds `fuzz/seeds/decode/real-*.json`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use redis_session_exporter::das::{corpus, wire};
use redis_session_exporter::simulator::data;
use redis_session_exporter::snapshot::Limits;

/// The seed of every corpus body here (and of the end-to-end script's).
const SEED: u64 = 17;

fn simulated(sessions: usize) -> Vec<u8> {
    let s = data::sessions(42, "r-bench0000000001", 0, sessions);
    data::answer(&s, sessions as u64, 1_700_000_000_000, "BENCH")
}

/// Every member: the corpus, then the simulator's answers.
fn members() -> Vec<(String, Vec<u8>)> {
    let filter = std::env::var("DECODE_MEMBERS").unwrap_or_default();
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, shape) in corpus::members() {
        if name.contains(&filter) {
            out.push((name, corpus::answer(&shape, SEED)));
        }
    }
    for n in [1_000, 20_000, 100_000] {
        let name = format!("simulator/{n}");
        if name.contains(&filter) {
            out.push((name, simulated(n)));
        }
    }
    out
}

fn body(name: &str) -> Vec<u8> {
    match corpus::member(name) {
        Some(shape) => corpus::answer(&shape, SEED),
        None => match name.strip_prefix("simulator/") {
            Some(n) => simulated(n.parse().expect("simulator/<sessions>")),
            None => panic!("no corpus member {name}"),
        },
    }
}

fn validate(b: &[u8]) {
    let v: serde::de::IgnoredAny = serde_json::from_slice(b).expect("valid JSON");
    black_box(v);
}

fn decode(b: &[u8]) {
    let snap = wire::decode(b, &Limits::default()).expect("decodes");
    black_box(snap);
}

fn benches(c: &mut Criterion, bodies: &[(String, Vec<u8>)]) {
    let mut g = c.benchmark_group("decode");
    for (name, b) in bodies.iter().filter(|(n, _)| n.starts_with("realistic/")) {
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_with_input(BenchmarkId::new("validate_ignored_any", name), b, |x, b| {
            x.iter(|| validate(b))
        });
        g.bench_with_input(BenchmarkId::new("decode_fold", name), b, |x, b| {
            x.iter(|| decode(b))
        });
    }
    g.finish();
}

/// Time per call of `f` over `reps` calls.
fn per_call(f: &dyn Fn(), reps: u32) -> Duration {
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed() / reps
}

/// Best time per call of `f` and `g`, alternating the two so both see the same machine state.
fn side_by_side(f: &dyn Fn(), g: &dyn Fn(), reps: u32, quick: bool) -> (Duration, Duration) {
    let rounds = if quick { 1 } else { 15 };
    let (mut a, mut b) = (Duration::MAX, Duration::MAX);
    for _ in 0..rounds {
        a = a.min(per_call(f, reps));
        b = b.min(per_call(g, reps));
    }
    (a, b)
}

fn ratios(bodies: &[(String, Vec<u8>)], quick: bool) {
    for (name, b) in bodies {
        let report = wire::scan_report(b);
        assert!(report.scanned, "{name}: the scanner gave up");
        let reps = (6_000_000 / b.len()).max(1) as u32;
        let (v, d) = side_by_side(&|| validate(b), &|| decode(b), reps, quick);
        let mb = b.len() as f64 / 1e6;
        println!(
            "ratio decode/validate {name:<28} {mb:>5.1} MB: {:.2} (validate {:.0} MB/s, \
             decode+fold {:.0} MB/s; fast path {:.1} % of {} sessions)",
            d.as_secs_f64() / v.as_secs_f64(),
            mb / v.as_secs_f64(),
            mb / d.as_secs_f64(),
            report.by_template as f64 * 100.0 / report.sessions.max(1) as f64,
            report.sessions,
        );
    }
    // Context at 20,000 sessions: the serde reference decoder (what the scanner replaced, still
    // the fallback).
    if let Some((name, b)) = bodies.iter().find(|(n, _)| n == "realistic/20000") {
        let (v, r) = side_by_side(
            &|| validate(b),
            &|| {
                black_box(wire::decode_reference(b, &Limits::default()).expect("decodes"));
            },
            1,
            quick,
        );
        println!(
            "ratio reference-decoder/validate {name}: {:.2}",
            r.as_secs_f64() / v.as_secs_f64()
        );
    }
}

fn main() {
    if let Ok(spec) = std::env::var("CORPUS_WRITE") {
        let (name, path) = spec.split_once(':').expect("CORPUS_WRITE=member:path");
        let body = match std::env::var("CORPUS_SESSIONS") {
            Ok(n) => {
                let mut shape = corpus::member(name).expect("a corpus member");
                shape.sessions = n.parse().expect("CORPUS_SESSIONS is a count");
                corpus::answer(&shape, SEED)
            }
            Err(_) => body(name),
        };
        std::fs::write(path, body).expect("writes the member");
        return;
    }
    if let Ok(n) = std::env::var("DECODE_REPEAT") {
        let n: u32 = n.parse().expect("DECODE_REPEAT is a count");
        let name = std::env::var("DECODE_MEMBER").unwrap_or_else(|_| "realistic/20000".into());
        let b = body(&name);
        let validate_only = std::env::var_os("DECODE_VALIDATE").is_some();
        for _ in 0..n {
            if validate_only {
                validate(&b);
            } else {
                decode(&b);
            }
        }
        return;
    }
    // `cargo test --all-targets` runs benches once in test mode: keep that quick.
    let quick =
        std::env::args().any(|a| a == "--test") || !std::env::args().any(|a| a == "--bench");
    let mut bodies = members();
    if quick {
        // Test mode: each shape once, at the smallest size.
        bodies.retain(|(n, _)| n.ends_with("/1000"));
    }
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    benches(&mut c, &bodies);
    c.final_summary();
    ratios(&bodies, quick);
}
