//! Per-instance series, written from the store's latest entries each time the registry is encoded.
//!
//! Nothing is kept per series: an instance that leaves the store stops being exported at the next
//! encode. Each family is written once, with every instance's samples inside it, and only when at
//! least one instance has a sample for it (no `# HELP` without samples).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeMetric, MetricEncoder,
};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::gauge::ConstGauge;

use super::families::{Fam, FAMILIES};
use crate::snapshot::{flag_name, Distribution, DB_OTHER, FLAG_UNKNOWN};
use crate::sticky::OTHER;
use crate::store::{InstanceEntry, InstanceSeries, Store};

/// The registry's view of the store.
#[derive(Debug)]
pub struct InstanceCollector {
    store: Arc<Store>,
}

impl InstanceCollector {
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
}

impl Collector for InstanceCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        encode_instances(encoder, &self.store.snapshot())
    }
}

/// Writes every per-instance family of `instances`.
pub fn encode_instances(
    mut encoder: DescriptorEncoder,
    instances: &[Arc<InstanceEntry>],
) -> fmt::Result {
    // Instances not polled yet export nothing but count in `redis_session_exporter_instances`.
    let polled: Vec<(&str, &InstanceSeries)> = instances
        .iter()
        .filter_map(|e| e.series.as_ref().map(|s| (e.id.as_str(), s)))
        .collect();
    let mut buckets = Vec::new();
    for def in FAMILIES {
        if def.fam == Fam::Instances {
            let m = encoder.encode_descriptor(def.name, def.help, None, def.kind.metric_type())?;
            ConstGauge::new(instances.len() as u64).encode(m)?;
            continue;
        }
        let has_samples = polled.iter().any(|(_, s)| {
            let mut probe = Probe(false);
            // A probe never fails.
            let _ = samples(def.fam, s, &mut probe);
            probe.0
        });
        if !has_samples {
            continue;
        }
        let mut m = encoder.encode_descriptor(def.name, def.help, None, def.kind.metric_type())?;
        for (id, s) in &polled {
            let mut out = Encode {
                m: &mut m,
                id,
                buckets: &mut buckets,
            };
            samples(def.fam, s, &mut out)?;
        }
    }
    Ok(())
}

/// Where [`samples`] writes: the encoder, or a probe that only notes that a sample exists.
trait Out {
    /// A gauge sample; `labels` come after `instance_id`.
    fn gauge(&mut self, labels: &[(&str, &str)], v: impl EncodeGaugeValue) -> fmt::Result;
    /// All samples of one histogram.
    fn histogram(&mut self, labels: &[(&str, &str)], d: &Distribution) -> fmt::Result;
}

struct Probe(bool);

impl Out for Probe {
    fn gauge(&mut self, _: &[(&str, &str)], _: impl EncodeGaugeValue) -> fmt::Result {
        self.0 = true;
        Ok(())
    }

    fn histogram(&mut self, _: &[(&str, &str)], _: &Distribution) -> fmt::Result {
        self.0 = true;
        Ok(())
    }
}

struct Encode<'a, 'e> {
    m: &'a mut MetricEncoder<'e>,
    id: &'a str,
    /// Reused across histograms: `(upper bound, count in that bucket alone)`.
    buckets: &'a mut Vec<(f64, u64)>,
}

/// Exemplars are never written; this only names the type `encode_histogram` asks for.
type NoExemplars = HashMap<usize, Exemplar<Vec<(String, String)>, f64>>;

impl Out for Encode<'_, '_> {
    fn gauge(&mut self, labels: &[(&str, &str)], v: impl EncodeGaugeValue) -> fmt::Result {
        let set = ([("instance_id", self.id)], labels);
        ConstGauge::new(v).encode(self.m.encode_family(&set)?)
    }

    fn histogram(&mut self, labels: &[(&str, &str)], d: &Distribution) -> fmt::Result {
        self.buckets.clear();
        self.buckets
            .extend(d.counts.iter().enumerate().map(|(i, &n)| {
                let bound = d.bounds.get(i).map_or(f64::INFINITY, |&b| b as f64);
                (bound, n)
            }));
        let set = ([("instance_id", self.id)], labels);
        self.m.encode_family(&set)?.encode_histogram(
            d.sum as f64,
            d.count(),
            self.buckets,
            None::<&NoExemplars>,
        )
    }
}

/// The samples one instance has in family `fam`.
fn samples(fam: Fam, s: &InstanceSeries, out: &mut impl Out) -> fmt::Result {
    let snap = s.snapshot.as_ref();
    let direct = snap.and_then(|s| s.direct.as_ref());
    match (fam, snap, direct) {
        (Fam::Sessions, Some(s), _) => pairs(out, "node_id", &s.by_node),
        (Fam::SessionsReported, Some(s), _) => out.gauge(&[], s.reported_total),
        (Fam::Unlisted, Some(s), _) => out.gauge(&[], s.reported_total.saturating_sub(s.sessions)),
        (Fam::BySource, Some(s), _) => pairs(out, "source", &s.by_source),
        (Fam::ByCommand, Some(s), _) => pairs(out, "command", &s.by_command),
        (Fam::ByDb, Some(s), _) => {
            for (db, n) in &s.by_db {
                let db = match db {
                    Some(DB_OTHER) => OTHER.to_owned(),
                    Some(d) => d.to_string(),
                    None => String::new(),
                };
                out.gauge(&[("db", &db)], *n)?;
            }
            Ok(())
        }
        (Fam::ByFlag, Some(s), _) => {
            for (i, n) in s.by_flag.iter().enumerate().take(FLAG_UNKNOWN + 1) {
                out.gauge(&[("flag", flag_name(i))], *n)?;
            }
            Ok(())
        }
        (Fam::ByClientName, Some(s), _) => pairs(out, "client_name", &s.by_client_name),
        (Fam::Subscriptions, Some(s), d) => {
            out.gauge(&[("kind", "channel")], s.subscriptions_channel)?;
            out.gauge(&[("kind", "pattern")], s.subscriptions_pattern)?;
            match d {
                Some(d) => out.gauge(&[("kind", "shard")], d.subscriptions_shard),
                None => Ok(()),
            }
        }
        (Fam::InTransaction, Some(s), _) => out.gauge(&[], s.in_transaction),
        (Fam::QueryBufferFree, Some(s), _) => out.gauge(&[], s.query_buffer_free_bytes),
        (Fam::OutputListObjects, Some(s), _) => out.gauge(&[], s.output_list_objects),
        (Fam::FixedOutputBuffer, Some(s), _) => out.gauge(&[], s.fixed_output_buffer_bytes),
        (Fam::IdleSeconds, Some(s), _) => out.histogram(&[], &s.idle),
        (Fam::AgeSeconds, Some(s), _) => out.histogram(&[], &s.age),
        (Fam::QueryBufferBytes, Some(s), _) => out.histogram(&[], &s.query_buffer),
        (Fam::OutputBufferBytes, Some(s), _) => out.histogram(&[], &s.output_buffer),
        (Fam::ByUser, _, Some(d)) => pairs(out, "user", &d.by_user),
        (Fam::ByLibrary, _, Some(d)) => pairs(out, "library", &d.by_library),
        (Fam::TotalMemoryBytes, _, Some(d)) => out.histogram(&[], &d.total_memory),
        (
            Fam::ByWorkload | Fam::LongIdleByWorkload | Fam::OutputBufferMaxByWorkload,
            Some(s),
            _,
        ) => {
            for (w, f) in s.by_workload.iter().flatten() {
                let labels = [
                    ("source_namespace", &*w.namespace),
                    ("source_workload", &*w.name),
                    ("source_kind", w.kind.as_str()),
                ];
                let v = match fam {
                    Fam::ByWorkload => f.sessions,
                    Fam::LongIdleByWorkload => f.long_idle,
                    _ => f.output_buffer_max,
                };
                out.gauge(&labels, v)?;
            }
            Ok(())
        }
        (Fam::QueryBufferMax, Some(s), _) => out.gauge(&[], s.query_buffer_max_bytes),
        (Fam::OutputBufferMax, Some(s), _) => out.gauge(&[], s.output_buffer_max_bytes),
        (Fam::OutputListMax, Some(s), _) => out.gauge(&[], s.output_list_max_objects),
        (Fam::Up, ..) => out.gauge(&[], u64::from(snap.is_some())),
        (Fam::LastSuccess, ..) => out.gauge(&[], s.last_success_unix.unwrap_or(0.0)),
        (Fam::SnapshotTimestamp, ..) => match s.snapshot_timestamp_unix {
            Some(ts) => out.gauge(&[], ts),
            None => Ok(()),
        },
        (Fam::PollDuration, ..) => match s.last_duration_seconds {
            Some(d) => out.gauge(&[], d),
            None => Ok(()),
        },
        (Fam::InstanceInfo, ..) => {
            let labels: Vec<(&str, &str)> = s
                .info_labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            out.gauge(&labels, 1u64)
        }
        (Fam::MaxConnections, ..) => match s.max_connections {
            Some(n) => out.gauge(&[], n),
            None => Ok(()),
        },
        // The snapshot's families after a failed poll, the direct source's for other sources,
        // and `Instances`, which `encode_instances` writes from the whole store.
        _ => Ok(()),
    }
}

/// One gauge per `(label value, count)` pair.
fn pairs(out: &mut impl Out, label: &str, rows: &[(String, u64)]) -> fmt::Result {
    for (v, n) in rows {
        out.gauge(&[(label, v)], *n)?;
    }
    Ok(())
}
