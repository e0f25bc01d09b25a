//! Building a /metrics body at 10, 100 and 1,000 instances (2,000 sessions each): prometheus-client
//! encoding the whole registry in each format, compressing the body, and a scrape that finds the
//! cached body current. Ratios against the compression of the same body are printed first,
//! measured side by side (interleaved best-of rounds), then criterion's figures.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use redis_session_exporter::das::wire;
use redis_session_exporter::exposition::{self, Encoding, Format};
use redis_session_exporter::metrics::ProcessMetrics;
use redis_session_exporter::simulator::data;
use redis_session_exporter::snapshot::Limits;
use redis_session_exporter::store::{InstanceEntry, InstanceSeries, Status, Store};

fn store(instances: usize, metrics: &ProcessMetrics) -> Arc<Store> {
    let store = Arc::new(Store::new());
    for i in 0..instances {
        let id = format!("r-bench{i:010}");
        // Every instance its own answer: label values (sources, names, nodes) differ.
        let s = data::sessions(42, &id, 0, 2_000);
        let snap = wire::decode(&data::answer(&s, 2_000, 0, "B"), &Limits::default()).unwrap();
        metrics.poll_finished(&id, Ok(()));
        store.publish(InstanceEntry {
            status: Status::Up { sessions: 2_000 },
            series: Some(InstanceSeries {
                info_labels: [("env".to_owned(), "bench".to_owned())].into(),
                snapshot: Some(snap),
                last_success_unix: Some(1.7e9),
                snapshot_timestamp_unix: Some(1.7e9),
                last_duration_seconds: Some(0.1),
                max_connections: Some(10_000),
            }),
            ..InstanceEntry::pending(&id)
        });
    }
    store
}

fn gzip(plain: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(plain).unwrap();
    enc.finish().unwrap()
}

/// Best of `rounds` interleaved timings of `a` and `b`.
fn best_of(rounds: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (Duration, Duration) {
    let (mut ta, mut tb) = (Duration::MAX, Duration::MAX);
    for _ in 0..rounds {
        let t = Instant::now();
        a();
        ta = ta.min(t.elapsed());
        let t = Instant::now();
        b();
        tb = tb.min(t.elapsed());
    }
    (ta, tb)
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let mut g = c.benchmark_group("scrape");
    for n in [10, 100, 1_000] {
        let metrics = ProcessMetrics::default();
        let st = store(n, &metrics);
        let registry = exposition::registry(st.clone(), &metrics);
        for fmt in Format::ALL {
            let plain = exposition::encode(fmt, &registry, 0).unwrap();
            let gz = gzip(plain.as_bytes()).len();
            let (enc, zip) = best_of(
                if n >= 1_000 { 5 } else { 15 },
                || drop(black_box(exposition::encode(fmt, &registry, plain.len()))),
                || drop(black_box(gzip(plain.as_bytes()))),
            );
            println!(
                "scrape instances={n} {fmt:?}: plain {:.2} MB, gzip {:.2} MB; encode {:.2} ms, \
                 gzip {:.2} ms, ratio encode/gzip {:.2}",
                plain.len() as f64 / 1e6,
                gz as f64 / 1e6,
                enc.as_secs_f64() * 1e3,
                zip.as_secs_f64() * 1e3,
                enc.as_secs_f64() / zip.as_secs_f64()
            );
        }
        let fmt = Format::OpenMetrics;
        let plain = exposition::encode(fmt, &registry, 0).unwrap();
        g.throughput(Throughput::Bytes(plain.len() as u64));
        g.bench_with_input(BenchmarkId::new("encode", n), &registry, |b, r| {
            b.iter(|| black_box(exposition::encode(fmt, r, plain.len())))
        });
        g.bench_with_input(BenchmarkId::new("gzip", n), &plain, |b, p| {
            b.iter(|| black_box(gzip(p.as_bytes())))
        });
        let cache = Arc::new(exposition::body_cache(st.clone(), &metrics));
        rt.block_on(cache.body(fmt, Encoding::Gzip)).unwrap();
        g.bench_function(BenchmarkId::new("cached", n), |b| {
            b.iter(|| black_box(rt.block_on(cache.body(fmt, Encoding::Gzip))))
        });
    }
    g.finish();
    c.final_summary();
}
