//! The table of every metric family, in exposition order.
//!
//! Order matters: a block is written family by family in this order, and a scrape concatenates
//! sections in this order. New families go where they read best; nothing else needs to change.

/// A family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    GaugeHistogram,
}

/// Name (without `_total` for counters), type and HELP text.
#[derive(Debug)]
pub struct FamilyDef {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

macro_rules! families {
    ($($id:ident => $name:literal, $kind:ident, $help:literal;)*) => {
        /// Index into [`FAMILIES`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Fam { $($id),* }

        /// Every family, indexed by [`Fam`].
        pub const FAMILIES: &[FamilyDef] = &[
            $(FamilyDef { name: $name, kind: Kind::$kind, help: $help }),*
        ];
    };
}

families! {
    Sessions => "redis_sessions", Gauge,
        "Client sessions per proxy or data node, from the last successful poll (fetched in the background).";
    SessionsReported => "redis_sessions_reported", Gauge,
        "Total number of sessions as reported by the API (Data.Total).";
    BySource => "redis_sessions_by_source", Gauge,
        "Sessions per client source IP; the largest max_sources, the rest summed in source=\"other\".";
    ByCommand => "redis_sessions_by_command", Gauge,
        "Sessions per last command run (lower-cased); beyond max_commands, summed in command=\"other\".";
    ByDb => "redis_sessions_by_db", Gauge,
        "Sessions per selected database.";
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
    IdleSeconds => "redis_session_idle_seconds", GaugeHistogram,
        "Distribution of the idle time of the current sessions.";
    AgeSeconds => "redis_session_age_seconds", GaugeHistogram,
        "Distribution of the age (connection duration) of the current sessions.";
    QueryBufferBytes => "redis_session_query_buffer_bytes", GaugeHistogram,
        "Distribution of the query buffer size of the current sessions.";
    OutputBufferBytes => "redis_session_output_buffer_bytes", GaugeHistogram,
        "Distribution of the output buffer memory of the current sessions.";
    // Direct source only (issue 7): fields only Redis itself reports.
    ByUser => "redis_sessions_by_user", Gauge,
        "Sessions per ACL user (direct source only); beyond max_client_names, summed in user=\"other\".";
    ByLibrary => "redis_sessions_by_library", Gauge,
        "Sessions per client library name (lib-name; direct source only).";
    TotalMemoryBytes => "redis_session_total_memory_bytes", GaugeHistogram,
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
    Polls => "redis_session_exporter_polls", Counter,
        "Polls of the instance, successful or not (retries inside a poll not counted).";
    PollErrors => "redis_session_exporter_poll_errors", Counter,
        "Failed polls of the instance by error code.";
    PollDuration => "redis_session_exporter_poll_duration_seconds", Gauge,
        "Duration of the last poll of the instance, retries included.";
    InstanceInfo => "redis_session_instance_info", Gauge,
        "Always 1; carries the instance's configured labels.";
    // Process-wide series. Each subsystem publishes its own block of these (see `Store::publish_global`).
    CredentialsExpiry => "redis_session_exporter_credentials_expiry_timestamp_seconds", Gauge,
        "When the current short-lived credentials expire (absent for long-lived keys).";
    CredentialErrors => "redis_session_exporter_credential_errors", Counter,
        "Failures to obtain or refresh credentials, by provider.";
    ConfigReloadSuccessful => "redis_session_exporter_config_last_reload_successful", Gauge,
        "1 if the last configuration reload succeeded, else 0.";
    ConfigReloadTimestamp => "redis_session_exporter_config_last_reload_success_timestamp_seconds", Gauge,
        "Unix time of the last successful configuration (re)load.";
    DiscoveryInstances => "redis_session_exporter_discovery_instances", Gauge,
        "Instances found by the last successful discovery refresh, per region.";
    DiscoveryErrors => "redis_session_exporter_discovery_errors", Counter,
        "Failed discovery refreshes, per region and error code.";
    DiscoveryLastSuccess => "redis_session_exporter_discovery_last_success_timestamp_seconds", Gauge,
        "Unix time of the last successful discovery refresh, per region.";
    AttributionPods => "redis_session_exporter_attribution_pods", Gauge,
        "Pod IPs attribution currently knows (live pods, and deleted ones within 5 minutes).";
    AttributionErrors => "redis_session_exporter_attribution_errors", Counter,
        "Failed Kubernetes list/watch calls of attribution, by code.";
    ShardOrdinal => "redis_session_exporter_shard_ordinal", Gauge,
        "This replica's shard number.";
    TotalShards => "redis_session_exporter_total_shards", Gauge,
        "Number of shards the fleet is split into.";
    Instances => "redis_session_exporter_instances", Gauge,
        "Instances this exporter polls.";
    SkippedPolls => "redis_session_exporter_skipped_polls", Counter,
        "Scheduled polls skipped because the previous poll of the same instance was still running.";
    BuildInfo => "redis_session_exporter_build_info", Gauge,
        "Always 1; the exporter's version.";
}
