//! The per-instance metric families, in exposition order: name, type and HELP text.
//!
//! The collector writes them in this order, each family once, every instance's samples inside
//! it. New families go where they read best; the process-wide families are in `crate::metrics`.

use prometheus_client::metrics::MetricType;

/// A family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    /// A snapshot distribution: `_bucket{le}` (cumulative, `+Inf` included), `_sum`, `_count`.
    Histogram,
}

impl Kind {
    pub fn metric_type(self) -> MetricType {
        match self {
            Kind::Gauge => MetricType::Gauge,
            Kind::Histogram => MetricType::Histogram,
        }
    }
}

/// Name, type and HELP text.
#[derive(Debug)]
pub struct FamilyDef {
    pub fam: Fam,
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

macro_rules! families {
    ($($id:ident => $name:literal, $kind:ident, $help:literal;)*) => {
        /// One per-instance family.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Fam { $($id),* }

        /// Every per-instance family, in exposition order.
        pub const FAMILIES: &[FamilyDef] = &[
            $(FamilyDef { fam: Fam::$id, name: $name, kind: Kind::$kind, help: $help }),*
        ];
    };
}

families! {
    Sessions => "redis_sessions", Gauge,
        "Client sessions per proxy or data node, from the last successful poll (fetched in the background); beyond max_nodes, summed in node_id=\"other\".";
    SessionsReported => "redis_sessions_reported", Gauge,
        "Total number of sessions as reported by the API (Data.Total).";
    Unlisted => "redis_sessions_unlisted", Gauge,
        "Sessions counted in Data.Total but not listed in the answer (0 when it lists them all).";
    BySource => "redis_sessions_by_source", Gauge,
        "Sessions per client source IP; the largest max_sources, the rest summed in source=\"other\".";
    ByCommand => "redis_sessions_by_command", Gauge,
        "Sessions per last command run (lower-cased); beyond max_commands, summed in command=\"other\".";
    ByDb => "redis_sessions_by_db", Gauge,
        "Sessions per selected database; databases outside 0-255 summed in db=\"other\".";
    ByFlag => "redis_sessions_by_flag", Gauge,
        "Sessions having each client flag.";
    ByClientName => "redis_sessions_by_client_name", Gauge,
        "Sessions per client name (empty for unnamed); beyond max_client_names, summed in client_name=\"other\".";
    Subscriptions => "redis_sessions_subscriptions", Gauge,
        "Pub/Sub subscriptions held by all sessions: channels (Sub) and patterns (Psub).";
    InTransaction => "redis_sessions_in_transaction", Gauge,
        "Sessions inside MULTI/EXEC.";
    QueryBufferFree => "redis_sessions_query_buffer_free_bytes", Gauge,
        "Sum of free query buffer space over all sessions.";
    OutputListObjects => "redis_sessions_output_list_objects", Gauge,
        "Sum of objects queued in output lists over all sessions.";
    FixedOutputBuffer => "redis_sessions_fixed_output_buffer_bytes", Gauge,
        "Sum of fixed output buffer sizes over all sessions.";
    IdleSeconds => "redis_session_idle_seconds", Histogram,
        "Distribution of the idle time of the current sessions.";
    AgeSeconds => "redis_session_age_seconds", Histogram,
        "Distribution of the age (connection duration) of the current sessions.";
    QueryBufferBytes => "redis_session_query_buffer_bytes", Histogram,
        "Distribution of the query buffer size of the current sessions.";
    OutputBufferBytes => "redis_session_output_buffer_bytes", Histogram,
        "Distribution of the output buffer memory of the current sessions.";
    // Direct source only (issue 7): fields only Redis itself reports.
    ByUser => "redis_sessions_by_user", Gauge,
        "Sessions per ACL user (direct source only); beyond max_client_names, summed in user=\"other\".";
    ByLibrary => "redis_sessions_by_library", Gauge,
        "Sessions per client library name (lib-name; direct source only).";
    TotalMemoryBytes => "redis_session_total_memory_bytes", Histogram,
        "Distribution of the total memory used by each session (tot-mem; direct source only).";
    // Attribution (issue 14): only when [attribution] has networks or Kubernetes enabled.
    ByWorkload => "redis_sessions_by_workload", Gauge,
        "Sessions per Kubernetes workload, configured network or unknown; beyond max_workloads, summed in source_workload=\"other\".";
    LongIdleByWorkload => "redis_sessions_long_idle_by_workload", Gauge,
        "Sessions idle at least [attribution] idle_threshold, per workload.";
    OutputBufferMaxByWorkload => "redis_session_output_buffer_max_bytes_by_workload", Gauge,
        "Largest output buffer memory among each workload's sessions.";
    QueryBufferMax => "redis_session_query_buffer_max_bytes", Gauge,
        "Largest query buffer of any session.";
    OutputBufferMax => "redis_session_output_buffer_max_bytes", Gauge,
        "Largest output buffer memory of any session.";
    OutputListMax => "redis_session_output_list_max_objects", Gauge,
        "Longest output list of any session.";
    Up => "redis_session_up", Gauge,
        "1 if the last poll of the instance succeeded, else 0.";
    LastSuccess => "redis_session_last_success_timestamp_seconds", Gauge,
        "Unix time of the last successful poll (0 if none yet).";
    SnapshotTimestamp => "redis_session_snapshot_timestamp_seconds", Gauge,
        "Time the API says it took the last successful snapshot (Data.Timestamp).";
    PollDuration => "redis_session_exporter_poll_duration_seconds", Gauge,
        "Duration of the last poll of the instance, retries included.";
    InstanceInfo => "redis_session_instance_info", Gauge,
        "Always 1; carries the instance's configured labels.";
    MaxConnections => "redis_session_instance_max_connections", Gauge,
        "The instance's connection limit: [[instances]] max_connections, DescribeInstances Connections, or maxclients (direct source); absent when unknown.";
    // Derived from the store as a whole, not from one instance.
    Instances => "redis_session_exporter_instances", Gauge,
        "Instances this exporter polls.";
}
