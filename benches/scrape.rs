//! Encoding a scrape at 10, 100 and 1,000 instances (2,000 sessions each): the plain
//! concatenation of pre-encoded blocks, a gzip rebuild (done at most once per store generation),
//! and a cached gzip hit. Ratios are printed from criterion's report side by side.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use redis_session_exporter::das::wire;
use redis_session_exporter::exposition::{encode_instance, Format, InstanceReport};
use redis_session_exporter::server::{render_body, render_gzip, ScrapeCache};
use redis_session_exporter::simulator::data;
use redis_session_exporter::snapshot::Limits;
use redis_session_exporter::store::{InstanceEntry, Status, Store};

fn store(instances: usize) -> Arc<Store> {
    let store = Arc::new(Store::new());
    let labels = Default::default();
    let errors = Default::default();
    for i in 0..instances {
        let id = format!("r-bench{i:010}");
        // A handful of distinct answers is enough: blocks differ by the instance label anyway.
        let s = data::sessions(42, &id, 0, 2_000);
        let snap = wire::decode(&data::answer(&s, 2_000, 0, "B"), &Limits::default()).unwrap();
        let report = InstanceReport {
            id: &id,
            info_labels: &labels,
            snapshot: Some(&snap),
            last_success_unix: Some(1.7e9),
            snapshot_timestamp_unix: Some(1.7e9),
            polls_total: 1,
            errors_by_code: &errors,
            last_duration_seconds: Some(0.1),
        };
        store.publish(InstanceEntry {
            status: Status::Up { sessions: 2_000 },
            blocks: Format::ALL.map(|f| encode_instance(f, &report)),
            ..InstanceEntry::pending(&id)
        });
    }
    store
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("scrape");
    for n in [10, 100, 1_000] {
        let st = store(n);
        let fmt = Format::OpenMetrics;
        let plain = render_body(&st, fmt, 0).len();
        let gz = render_gzip(&st, fmt, 0).len();
        println!(
            "scrape instances={n}: plain {:.2} MB, gzip {:.2} MB",
            plain as f64 / 1e6,
            gz as f64 / 1e6
        );
        g.throughput(Throughput::Bytes(plain as u64));
        g.bench_with_input(BenchmarkId::new("plain", n), &st, |b, st| {
            b.iter(|| black_box(render_body(st, fmt, plain)))
        });
        g.bench_with_input(BenchmarkId::new("gzip_rebuild", n), &st, |b, st| {
            b.iter(|| black_box(render_gzip(st, fmt, gz)))
        });
        let cache = Arc::new(ScrapeCache::default());
        rt.block_on(cache.gzip(&st, fmt));
        g.bench_with_input(BenchmarkId::new("gzip_cached", n), &st, |b, st| {
            b.iter(|| black_box(rt.block_on(cache.gzip(st, fmt))))
        });
    }
    g.finish();
    c.final_summary();
}
