//! Decode + fold of one GetRedisAllSession body against the cost of merely validating the JSON
//! (`serde_json::from_slice::<IgnoredAny>`), at 1,000, 20,000 and 100,000 sessions.
//!
//! Besides criterion's own report, the bench prints `ratio decode/validate` per size, measured
//! side by side (the two closures alternate, best of several rounds) so machine noise cancels.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use redis_session_exporter::das::wire;
use redis_session_exporter::simulator::data;
use redis_session_exporter::snapshot::Limits;

const SIZES: [usize; 3] = [1_000, 20_000, 100_000];

fn body(sessions: usize) -> Vec<u8> {
    let s = data::sessions(42, "r-bench0000000001", 0, sessions);
    data::answer(&s, sessions as u64, 1_700_000_000_000, "BENCH")
}

fn validate(b: &[u8]) {
    let v: serde::de::IgnoredAny = serde_json::from_slice(b).expect("valid JSON");
    black_box(v);
}

fn decode(b: &[u8]) {
    let snap = wire::decode(b, &Limits::default()).expect("decodes");
    black_box(snap);
}

fn benches(c: &mut Criterion, bodies: &[(usize, Vec<u8>)]) {
    let mut g = c.benchmark_group("decode");
    for (n, b) in bodies {
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_with_input(BenchmarkId::new("validate_ignored_any", n), b, |x, b| {
            x.iter(|| validate(b))
        });
        g.bench_with_input(BenchmarkId::new("decode_fold", n), b, |x, b| {
            x.iter(|| decode(b))
        });
    }
    g.finish();
}

/// Best time of `f` over `rounds`, each round long enough to be measurable.
fn best(f: &dyn Fn(), reps: u32) -> Duration {
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
        a = a.min(best(f, reps));
        b = b.min(best(g, reps));
    }
    (a, b)
}

fn ratios(bodies: &[(usize, Vec<u8>)], quick: bool) {
    for (n, b) in bodies {
        let reps = (20_000 / n).max(1) as u32;
        let (v, d) = side_by_side(&|| validate(b), &|| decode(b), reps, quick);
        let mb = b.len() as f64 / 1e6;
        println!(
            "ratio decode/validate sessions={n:>6} body={mb:>6.1} MB: {:.2} \
             (validate {:.0} MB/s, decode+fold {:.0} MB/s)",
            d.as_secs_f64() / v.as_secs_f64(),
            mb / v.as_secs_f64(),
            mb / d.as_secs_f64(),
        );
    }
    // Context for the figures above, at 20,000 sessions: the serde reference decoder (what the
    // scanner replaced, still the fallback), and a pretty-printed body (every session's layout
    // holds whitespace, so the template compares longer runs).
    let n = 20_000;
    let compact = body(n);
    let (v, r) = side_by_side(
        &|| validate(&compact),
        &|| {
            black_box(wire::decode_reference(&compact, &Limits::default()).expect("decodes"));
        },
        1,
        quick,
    );
    println!(
        "ratio reference-decoder/validate sessions={n:>6}: {:.2}",
        r.as_secs_f64() / v.as_secs_f64()
    );
    let value: serde_json::Value = serde_json::from_slice(&compact).expect("valid JSON");
    let pretty = serde_json::to_vec_pretty(&value).expect("serializes");
    let (v, d) = side_by_side(&|| validate(&pretty), &|| decode(&pretty), 1, quick);
    println!(
        "ratio decode/validate sessions={n:>6} pretty-printed body={:.1} MB: {:.2}",
        pretty.len() as f64 / 1e6,
        d.as_secs_f64() / v.as_secs_f64()
    );
}

fn main() {
    // `DECODE_REPEAT=n` decodes one body n times and exits: a fixed amount of work for
    // `valgrind --tool=callgrind`, whose instruction counts do not depend on the machine's load.
    if let Ok(n) = std::env::var("DECODE_REPEAT") {
        let n: u32 = n.parse().expect("DECODE_REPEAT is a count");
        let b = body(20_000);
        for _ in 0..n {
            decode(&b);
        }
        return;
    }
    let bodies: Vec<(usize, Vec<u8>)> = SIZES.iter().map(|&n| (n, body(n))).collect();
    // `cargo test --all-targets` runs benches once in test mode: keep that quick.
    let quick =
        std::env::args().any(|a| a == "--test") || !std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    benches(&mut c, &bodies);
    c.final_summary();
    ratios(&bodies, quick);
}
