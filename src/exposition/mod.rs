//! Prometheus exposition on prometheus-client: one [`Registry`] holds the process-wide metrics
//! (`crate::metrics`) and an [`InstanceCollector`] that writes the per-instance families from the
//! store at encode time; prometheus-client encodes it in either text format; [`BodyCache`] keeps
//! one encoded body per change, format and encoding.
//!
//! No sample line, label escaping, number formatting, `# HELP`/`# TYPE` line or `# EOF` is
//! written here: prometheus-client writes all of them.

mod cache;
mod collector;
mod families;

use std::sync::Arc;

use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::registry::Registry;

pub use cache::{Body, BodyCache, EncodeError, Encoding, MAX_STALE, QUICK_BUILD, REBUILD_AFTER};
pub use collector::{encode_instances, InstanceCollector};
pub use families::{Fam, FamilyDef, Kind, FAMILIES};

use crate::metrics::ProcessMetrics;
use crate::store::Store;

/// The two wire formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `text/plain; version=0.0.4`
    Text,
    /// `application/openmetrics-text; version=1.0.0`
    OpenMetrics,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::Text, Format::OpenMetrics];

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The registry /metrics encodes: the process-wide metrics, then every instance's families.
pub fn registry(store: Arc<Store>, metrics: &ProcessMetrics) -> Registry {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    registry.register_collector(Box::new(InstanceCollector::new(store)));
    registry
}

/// A cache over [`registry`]`(store, metrics)`, current while neither changes.
pub fn body_cache(store: Arc<Store>, metrics: &ProcessMetrics) -> BodyCache {
    let reg = registry(store.clone(), metrics);
    let metrics = metrics.clone();
    // Both only grow, so their sum does too, and it moves with either.
    BodyCache::new(reg, move || store.generation() + metrics.version())
}

/// Encodes `registry` in `fmt`; `size_hint` is the expected length (the last body's).
pub fn encode(
    fmt: Format,
    registry: &Registry,
    size_hint: usize,
) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(size_hint + size_hint / 16);
    encode_to(fmt, registry, &mut out)?;
    Ok(out)
}

/// Encodes `registry` in `fmt` into any writer (a compressor, say).
pub fn encode_to(
    fmt: Format,
    registry: &Registry,
    out: &mut impl std::fmt::Write,
) -> Result<(), std::fmt::Error> {
    match fmt {
        Format::Text => prometheus_text::encode(out, registry),
        Format::OpenMetrics => text::encode(out, registry),
    }
}

#[cfg(test)]
mod tests;
