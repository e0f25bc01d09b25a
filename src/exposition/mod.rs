//! Prometheus exposition: the classic text format (0.0.4) and OpenMetrics 1.0, written by hand.
//!
//! Why not `prometheus-client`: it writes only OpenMetrics, has no gauge histogram, and encodes a
//! whole registry at scrape time. Here each instance's figures are encoded once per poll, in both
//! formats, into a [`Block`] cut into *sections* (one per family, and for the classic format three
//! per gauge histogram). A scrape then only concatenates, section by section, every block's slice:
//! families stay contiguous, as both formats require, and a scrape's cost is what it writes.

mod families;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::OnceLock;

pub use families::{Fam, FamilyDef, Kind, FAMILIES};

use crate::snapshot::{flag_name, Distribution, Snapshot, FLAG_UNKNOWN};

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
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Where each family's sections start, and the header text of each section, per format.
struct Layout {
    /// `first[f]` is the first section of family `f`.
    first: Vec<usize>,
    headers: Vec<String>,
}

fn layout(fmt: Format) -> &'static Layout {
    static LAYOUTS: OnceLock<[Layout; 2]> = OnceLock::new();
    &LAYOUTS.get_or_init(|| Format::ALL.map(build_layout))[fmt.index()]
}

fn build_layout(fmt: Format) -> Layout {
    let mut first = Vec::with_capacity(FAMILIES.len());
    let mut headers = Vec::new();
    for f in FAMILIES {
        first.push(headers.len());
        match (fmt, f.kind) {
            (Format::OpenMetrics, kind) => {
                let t = match kind {
                    Kind::Gauge => "gauge",
                    Kind::Counter => "counter",
                    Kind::GaugeHistogram => "gaugehistogram",
                };
                headers.push(format!("# TYPE {0} {t}\n# HELP {0} {1}\n", f.name, f.help));
            }
            (Format::Text, Kind::Gauge) => {
                headers.push(format!(
                    "# HELP {0} {1}\n# TYPE {0} gauge\n",
                    f.name, f.help
                ));
            }
            (Format::Text, Kind::Counter) => {
                headers.push(format!(
                    "# HELP {0}_total {1}\n# TYPE {0}_total counter\n",
                    f.name, f.help
                ));
            }
            (Format::Text, Kind::GaugeHistogram) => {
                // The classic format has no gauge histogram: buckets as a histogram family with only
                // `_bucket` samples, count and sum as gauges of their own (promtool accepts this).
                headers.push(format!(
                    "# HELP {0} {1}\n# TYPE {0} histogram\n",
                    f.name, f.help
                ));
                headers.push(format!(
                    "# HELP {0}_gcount Number of sessions in {0}.\n# TYPE {0}_gcount gauge\n",
                    f.name
                ));
                headers.push(format!(
                    "# HELP {0}_gsum Sum of the values observed in {0}.\n# TYPE {0}_gsum gauge\n",
                    f.name
                ));
            }
        }
    }
    Layout { first, headers }
}

/// Number of sections in a format.
pub fn section_count(fmt: Format) -> usize {
    layout(fmt).headers.len()
}

/// One owner's samples (an instance, or the process) in one format, cut into sections.
#[derive(Debug, Clone, Default)]
pub struct Block {
    buf: Vec<u8>,
    /// `ends[s]` is where section `s` ends in `buf`.
    ends: Vec<u32>,
}

impl Block {
    /// The bytes of section `s` (empty when the owner has no samples there).
    pub fn section(&self, s: usize) -> &[u8] {
        let end = self.ends.get(s).copied().unwrap_or(self.buf.len() as u32) as usize;
        let start = if s == 0 {
            0
        } else {
            self.ends.get(s - 1).copied().unwrap_or(end as u32) as usize
        };
        &self.buf[start.min(end)..end]
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// A value as written on the wire.
#[derive(Debug, Clone, Copy)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

/// Writes samples family by family (in [`FAMILIES`] order) into a [`Block`].
pub struct BlockWriter {
    fmt: Format,
    buf: Vec<u8>,
    ends: Vec<u32>,
    /// `instance_id="…"` (already escaped), or empty for process-wide series.
    base: String,
}

impl BlockWriter {
    /// `instance_id`: the owner's id, or `None` for process-wide series.
    pub fn new(fmt: Format, instance_id: Option<&str>) -> Self {
        let base = instance_id
            .map(|id| {
                let mut s = String::from("instance_id=\"");
                escape_into(&mut s, id);
                s.push('"');
                s
            })
            .unwrap_or_default();
        Self {
            fmt,
            buf: Vec::with_capacity(2048),
            ends: Vec::with_capacity(section_count(fmt)),
            base,
        }
    }

    /// Closes every section before `s`; writing must move forward only.
    fn seek(&mut self, s: usize) {
        debug_assert!(
            self.ends.len() <= s,
            "families must be written in FAMILIES order"
        );
        while self.ends.len() < s {
            self.ends.push(self.buf.len() as u32);
        }
    }

    fn labels(&mut self, extra: &[(&str, &str)], le: Option<&str>) {
        let mut first = true;
        let mut sep = |buf: &mut Vec<u8>| {
            if !first {
                buf.push(b',');
            }
            first = false;
        };
        if extra.is_empty() && le.is_none() && self.base.is_empty() {
            return;
        }
        self.buf.push(b'{');
        if !self.base.is_empty() {
            sep(&mut self.buf);
            self.buf.extend_from_slice(self.base.as_bytes());
        }
        for (k, v) in extra {
            sep(&mut self.buf);
            self.buf.extend_from_slice(k.as_bytes());
            self.buf.extend_from_slice(b"=\"");
            escape_bytes(&mut self.buf, v);
            self.buf.push(b'"');
        }
        if let Some(le) = le {
            sep(&mut self.buf);
            self.buf.extend_from_slice(b"le=\"");
            self.buf.extend_from_slice(le.as_bytes());
            self.buf.push(b'"');
        }
        self.buf.push(b'}');
    }

    fn value(&mut self, v: Value) {
        self.buf.push(b' ');
        match v {
            Value::Int(i) => {
                let _ = write!(self.buf, "{i}");
            }
            Value::Float(f) if f.is_nan() => self.buf.extend_from_slice(b"NaN"),
            Value::Float(f) if f.is_infinite() => {
                self.buf
                    .extend_from_slice(if f > 0.0 { b"+Inf" } else { b"-Inf" })
            }
            Value::Float(f) => {
                let _ = write!(self.buf, "{f}");
            }
        }
        self.buf.push(b'\n');
    }

    fn sample(
        &mut self,
        name: &str,
        suffix: &str,
        extra: &[(&str, &str)],
        le: Option<&str>,
        v: Value,
    ) {
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(suffix.as_bytes());
        self.labels(extra, le);
        self.value(v);
    }

    /// A gauge sample of family `fam`.
    pub fn gauge(&mut self, fam: Fam, extra: &[(&str, &str)], v: impl Into<Value>) {
        let def = &FAMILIES[fam as usize];
        debug_assert_eq!(def.kind, Kind::Gauge, "{}", def.name);
        self.seek(layout(self.fmt).first[fam as usize]);
        self.sample(def.name, "", extra, None, v.into());
    }

    /// A counter sample (`_total` appended).
    pub fn counter(&mut self, fam: Fam, extra: &[(&str, &str)], v: impl Into<Value>) {
        let def = &FAMILIES[fam as usize];
        debug_assert_eq!(def.kind, Kind::Counter, "{}", def.name);
        self.seek(layout(self.fmt).first[fam as usize]);
        self.sample(def.name, "_total", extra, None, v.into());
    }

    /// All samples of one gauge histogram (one label set per block and family).
    pub fn gauge_histogram(&mut self, fam: Fam, extra: &[(&str, &str)], d: &Distribution) {
        let def = &FAMILIES[fam as usize];
        debug_assert_eq!(def.kind, Kind::GaugeHistogram, "{}", def.name);
        let first = layout(self.fmt).first[fam as usize];
        self.seek(first);
        let mut le = String::new();
        for (i, cum) in d.cumulative().enumerate() {
            le.clear();
            match d.bounds.get(i) {
                Some(b) => {
                    let _ = std::fmt::Write::write_fmt(&mut le, format_args!("{b}"));
                }
                None => le.push_str("+Inf"),
            }
            self.sample(def.name, "_bucket", extra, Some(&le), Value::Int(cum));
        }
        if self.fmt == Format::Text {
            self.seek(first + 1);
        }
        self.sample(def.name, "_gcount", extra, None, Value::Int(d.count()));
        if self.fmt == Format::Text {
            self.seek(first + 2);
        }
        self.sample(def.name, "_gsum", extra, None, Value::Int(d.sum));
    }

    pub fn finish(mut self) -> Block {
        let n = section_count(self.fmt);
        self.seek(n);
        Block {
            buf: self.buf,
            ends: self.ends,
        }
    }
}

/// Escapes a label value: `\`, `"` and newline (the same rule in both formats).
fn escape_bytes(buf: &mut Vec<u8>, v: &str) {
    if !v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        buf.extend_from_slice(v.as_bytes());
        return;
    }
    for b in v.bytes() {
        match b {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\n' => buf.extend_from_slice(b"\\n"),
            _ => buf.push(b),
        }
    }
}

fn escape_into(s: &mut String, v: &str) {
    let mut b = Vec::new();
    escape_bytes(&mut b, v);
    // Escaping only inserts ASCII before ASCII bytes, so UTF-8 stays valid.
    s.push_str(std::str::from_utf8(&b).unwrap_or_default());
}

/// Everything exported about one instance.
#[derive(Debug, Clone, Copy)]
pub struct InstanceReport<'a> {
    pub id: &'a str,
    /// Configured and inventory labels, exported on `redis_session_instance_info` only.
    pub info_labels: &'a BTreeMap<String, String>,
    /// The last poll's snapshot when that poll succeeded; `None` exports health series only.
    pub snapshot: Option<&'a Snapshot>,
    pub last_success_unix: Option<f64>,
    pub snapshot_timestamp_unix: Option<f64>,
    pub polls_total: u64,
    pub errors_by_code: &'a BTreeMap<String, u64>,
    pub last_duration_seconds: Option<f64>,
}

/// Encodes one instance's block in one format.
pub fn encode_instance(fmt: Format, r: &InstanceReport<'_>) -> Block {
    let mut w = BlockWriter::new(fmt, Some(r.id));
    if let Some(s) = r.snapshot {
        write_snapshot(&mut w, s);
    }
    w.gauge(Fam::Up, &[], u64::from(r.snapshot.is_some()));
    w.gauge(Fam::LastSuccess, &[], r.last_success_unix.unwrap_or(0.0));
    if let Some(ts) = r.snapshot_timestamp_unix {
        w.gauge(Fam::SnapshotTimestamp, &[], ts);
    }
    w.counter(Fam::Polls, &[], r.polls_total);
    for (code, n) in r.errors_by_code {
        w.counter(Fam::PollErrors, &[("code", code)], *n);
    }
    if let Some(d) = r.last_duration_seconds {
        w.gauge(Fam::PollDuration, &[], d);
    }
    let info: Vec<(&str, &str)> = r
        .info_labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    w.gauge(Fam::InstanceInfo, &info, 1u64);
    w.finish()
}

fn write_snapshot(w: &mut BlockWriter, s: &Snapshot) {
    for (node, n) in &s.by_node {
        w.gauge(Fam::Sessions, &[("node_id", node)], *n);
    }
    w.gauge(Fam::SessionsReported, &[], s.reported_total);
    for (src, n) in &s.by_source {
        w.gauge(Fam::BySource, &[("source", src)], *n);
    }
    for (cmd, n) in &s.by_command {
        w.gauge(Fam::ByCommand, &[("command", cmd)], *n);
    }
    let mut db = String::new();
    for (d, n) in &s.by_db {
        db.clear();
        if let Some(d) = d {
            let _ = std::fmt::Write::write_fmt(&mut db, format_args!("{d}"));
        }
        w.gauge(Fam::ByDb, &[("db", &db)], *n);
    }
    for (i, n) in s.by_flag.iter().enumerate().take(FLAG_UNKNOWN + 1) {
        w.gauge(Fam::ByFlag, &[("flag", flag_name(i))], *n);
    }
    for (name, n) in &s.by_client_name {
        w.gauge(Fam::ByClientName, &[("client_name", name)], *n);
    }
    w.gauge(
        Fam::Subscriptions,
        &[("kind", "channel")],
        s.subscriptions_channel,
    );
    w.gauge(
        Fam::Subscriptions,
        &[("kind", "pattern")],
        s.subscriptions_pattern,
    );
    if let Some(d) = &s.direct {
        w.gauge(
            Fam::Subscriptions,
            &[("kind", "shard")],
            d.subscriptions_shard,
        );
    }
    w.gauge(Fam::InTransaction, &[], s.in_transaction);
    w.gauge(Fam::QueryBufferFree, &[], s.query_buffer_free_bytes);
    w.gauge(Fam::OutputListObjects, &[], s.output_list_objects);
    w.gauge(Fam::FixedOutputBuffer, &[], s.fixed_output_buffer_bytes);
    w.gauge_histogram(Fam::IdleSeconds, &[], &s.idle);
    w.gauge_histogram(Fam::AgeSeconds, &[], &s.age);
    w.gauge_histogram(Fam::QueryBufferBytes, &[], &s.query_buffer);
    w.gauge_histogram(Fam::OutputBufferBytes, &[], &s.output_buffer);
    if let Some(d) = &s.direct {
        for (user, n) in &d.by_user {
            w.gauge(Fam::ByUser, &[("user", user)], *n);
        }
        for (lib, n) in &d.by_library {
            w.gauge(Fam::ByLibrary, &[("library", lib)], *n);
        }
        w.gauge_histogram(Fam::TotalMemoryBytes, &[], &d.total_memory);
    }
    if let Some(by) = &s.by_workload {
        fn labels(w: &crate::attribution::Workload) -> [(&'static str, &str); 3] {
            [
                ("source_namespace", &w.namespace),
                ("source_workload", &w.name),
                ("source_kind", w.kind.as_str()),
            ]
        }
        for (wl, f) in by {
            w.gauge(Fam::ByWorkload, &labels(wl), f.sessions);
        }
        for (wl, f) in by {
            w.gauge(Fam::LongIdleByWorkload, &labels(wl), f.long_idle);
        }
        for (wl, f) in by {
            w.gauge(
                Fam::OutputBufferMaxByWorkload,
                &labels(wl),
                f.output_buffer_max,
            );
        }
    }
    w.gauge(Fam::QueryBufferMax, &[], s.query_buffer_max_bytes);
    w.gauge(Fam::OutputBufferMax, &[], s.output_buffer_max_bytes);
    w.gauge(Fam::OutputListMax, &[], s.output_list_max_objects);
}

/// Process-wide figures.
#[derive(Debug, Clone, Default)]
pub struct GlobalReport {
    pub version: &'static str,
    /// Rounds that found the previous poll of the same instance still running.
    pub skipped_polls: u64,
    pub instances: u64,
}

/// Encodes the process-wide block.
pub fn encode_global(fmt: Format, g: &GlobalReport) -> Block {
    let mut w = BlockWriter::new(fmt, None);
    w.gauge(Fam::Instances, &[], g.instances);
    w.counter(Fam::SkippedPolls, &[], g.skipped_polls);
    w.gauge(Fam::BuildInfo, &[("version", g.version)], 1u64);
    w.finish()
}

/// Concatenates blocks into one exposition, family by family, headers only where samples exist.
pub fn render<'a>(fmt: Format, blocks: impl Iterator<Item = &'a Block> + Clone, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = render_to(fmt, blocks, out);
}

/// [`render`] into any writer, so a gzip encoder can take the exposition section by section
/// without the whole plain body ever being held in memory.
pub fn render_to<'a, W: std::io::Write>(
    fmt: Format,
    blocks: impl Iterator<Item = &'a Block> + Clone,
    out: &mut W,
) -> std::io::Result<()> {
    let lay = layout(fmt);
    for (s, header) in lay.headers.iter().enumerate() {
        if blocks.clone().all(|b| b.section(s).is_empty()) {
            continue;
        }
        out.write_all(header.as_bytes())?;
        for b in blocks.clone() {
            out.write_all(b.section(s))?;
        }
    }
    if fmt == Format::OpenMetrics {
        out.write_all(b"# EOF\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
