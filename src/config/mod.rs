//! The configuration: a TOML file, then `REDIS_SESSION_EXPORTER_<SECTION>__<KEY>` environment
//! overrides, then command-line flags, merged by figment and validated in one place.
//!
//! Unknown keys are errors, and every error names the key it is about, because a typo that is
//! silently ignored is the worst kind of misconfiguration for a daemon nobody watches start.

mod attribution;
mod credentials;
mod discovery;
mod instance;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use attribution::{AttributionConfig, KubernetesConfig, NetworkConfig};
pub use credentials::{check_role_session_name, normalize_endpoint, CredentialsConfig, Provider};
pub use discovery::{
    endpoint_for, DiscoveryConfig, ARCHITECTURES, DEFAULT_ENDPOINT, MAX_TAGS, MIN_REFRESH,
};
#[cfg(test)]
pub(crate) use instance::tests::cert_and_key;
pub use instance::{
    parse_endpoint, read_password, validate_instance, CheckedFile, Endpoint, InstanceConfig,
    SourceKind, TlsFiles,
};

/// Why the file a `*_file` key names cannot be read. The value given to the key is never
/// repeated: it may be the secret itself, pasted where its path belonged. The key (which the
/// caller names) and the OS's reason are enough to find it.
pub fn unreadable_file(e: &std::io::Error) -> String {
    format!("cannot read the file: {e}")
}

/// The largest value any count limit may take (`[limits]`, `server.max_connections`).
pub const MAX_LIMIT: usize = 100_000;

/// The longest any `[server]` timeout may be.
const MAX_SERVER_TIMEOUT: Duration = Duration::from_secs(3600);

/// Upper bounds of the `[poll]` and `[das]` knobs. Past them a value is a typo, not a choice,
/// and the arithmetic of the scheduler (instants, permits, rates) is only ever fed values it
/// can hold; a reload that breaks one is rejected like any invalid file.
pub const MAX_CONCURRENCY: usize = 1024;
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
pub const MAX_REQUESTS_PER_SECOND: f64 = 10_000.0;
pub const MAX_DAS_TIMEOUT: Duration = Duration::from_secs(600);

/// Prefix of the environment overrides; `__` separates section and key.
pub const ENV_PREFIX: &str = "REDIS_SESSION_EXPORTER_";

/// Label names the exporter itself puts on series; an instance's own labels may not reuse them.
pub const RESERVED_LABELS: &[&str] = &[
    "instance_id",
    "node_id",
    "source",
    "command",
    "db",
    "flag",
    "client_name",
    "kind",
    "le",
    "code",
    "version",
    "provider",
    "region",
    "user",
    "library",
    "source_namespace",
    "source_workload",
    "source_kind",
    // Prometheus target labels: a clash would be renamed `exported_*` at scrape time.
    "instance",
    "job",
];

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub das: DasConfig,
    #[serde(default)]
    pub poll: PollConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub credentials: CredentialsConfig,
    #[serde(default)]
    pub instances: Vec<InstanceConfig>,
    /// `[[discovery]]`: instances found in the cloud's inventory.
    #[serde(default)]
    pub discovery: Vec<DiscoveryConfig>,
    #[serde(default)]
    pub sharding: Sharding,
    /// `[attribution]`: who holds the sessions (Kubernetes workloads, networks).
    #[serde(default)]
    pub attribution: AttributionConfig,
}

/// `[sharding]`: which part of the fleet this replica polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sharding {
    /// This replica's shard, from 0.
    pub shard: u32,
    /// How many shards the fleet is split into.
    #[serde(rename = "total_shards")]
    pub total: u32,
}

impl Default for Sharding {
    fn default() -> Self {
        Self { shard: 0, total: 1 }
    }
}

/// `[limits]`: cardinality caps the fold applies to each instance's breakdowns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Series of `redis_sessions{node_id}` per instance.
    pub max_nodes: usize,
    pub max_sources: usize,
    pub max_commands: usize,
    pub max_client_names: usize,
    /// Series of the by-workload families per instance (attribution).
    pub max_workloads: usize,
    /// Not a config key: set from `[attribution] idle_threshold` (seconds) when attribution is
    /// on, so that every fold built for these limits keeps per-client figures.
    #[serde(skip)]
    pub client_idle_threshold: Option<u64>,
}

impl Limits {
    /// Every `[limits]` key with its value, for checks that apply to all of them.
    pub fn named(&self) -> [(&'static str, usize); 5] {
        [
            ("limits.max_nodes", self.max_nodes),
            ("limits.max_sources", self.max_sources),
            ("limits.max_commands", self.max_commands),
            ("limits.max_client_names", self.max_client_names),
            ("limits.max_workloads", self.max_workloads),
        ]
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_nodes: 256,
            max_sources: 50,
            max_commands: 100,
            max_client_names: 50,
            max_workloads: 100,
            client_idle_threshold: None,
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Connections held at most; when all are taken, the one waiting longest for a request
    /// head makes room for a new one.
    pub max_connections: usize,
    /// A connection must send a complete request head within this (from its accept, or from
    /// the first byte of a keep-alive connection's next request).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A keep-alive connection idle longer than this is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A response not fully written this long after its request head is dropped.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// On SIGTERM, how long responses in flight may take before the process exits anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 10379)),
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// `[das]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DasConfig {
    /// `http(s)://host[:port]`; the only public endpoint is in cn-shanghai, whatever the region.
    pub endpoint: String,
    /// Per request, body included.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Bodies larger than this are cut off while reading and count as `invalid_response`.
    pub max_body_bytes: u64,
}

impl Default for DasConfig {
    fn default() -> Self {
        Self {
            endpoint: "https://das.cn-shanghai.aliyuncs.com".into(),
            timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024 * 1024,
        }
    }
}

/// `[poll]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollConfig {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub concurrency: usize,
    pub max_requests_per_second: f64,
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            concurrency: 4,
            max_requests_per_second: 5.0,
        }
    }
}

/// Values given on the command line; they win over the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    /// `--shard` (or the ordinal `--shard-from-hostname` found).
    pub shard: Option<u32>,
    /// `--total-shards`.
    pub total_shards: Option<u32>,
}

/// One problem with one key: the one shape of every validation error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub key: String,
    pub reason: String,
}

impl KeyError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// The same problem, its key placed under `prefix` (`instances[0]` + `address`).
    pub fn under(self, prefix: &str) -> Self {
        Self {
            key: format!("{prefix}.{}", self.key),
            reason: self.reason,
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config key `{}`: {}", self.key, self.reason)
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<KeyError>),
}

impl Config {
    /// Reads `path`, applies the environment and `overrides`, and validates.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_sources(&text, std::env::vars(), overrides)
    }

    /// [`Config::load`] with the file text and the environment passed in (tests use this).
    pub fn from_sources(
        toml_text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        // Only our prefix is looked at; figment's Env lower-cases keys and splits on `__`.
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        // Syntax first, with our own message: figment's quotes the offending source line.
        if let Err(e) = toml_text.parse::<toml::Table>() {
            return Err(ConfigError::Invalid(vec![syntax_error(toml_text, &e)]));
        }
        let mut fig = Figment::new().merge(Toml::string(toml_text));
        for (k, v) in &env {
            let key = k[ENV_PREFIX.len()..]
                .to_ascii_lowercase()
                .replace("__", ".");
            // Parsed the way figment's own `Env` provider parses (numbers, booleans, else a
            // string); done by hand so tests can pass the environment in.
            let value: figment::value::Value = v.parse().unwrap_or_else(|e| match e {});
            fig = fig.merge((key, value));
        }
        if let Some(listen) = overrides.listen {
            fig = fig.merge(("server.listen", listen.to_string()));
        }
        if let Some(n) = overrides.shard {
            fig = fig.merge(("sharding.shard", n));
        }
        if let Some(m) = overrides.total_shards {
            fig = fig.merge(("sharding.total_shards", m));
        }
        let cfg: Config = fig.extract().map_err(|e| figment_errors(e, &env))?;
        cfg.validate().map_err(ConfigError::Invalid)?;
        Ok(cfg)
    }

    /// Every semantic check, all reported at once.
    pub fn validate(&self) -> Result<(), Vec<KeyError>> {
        let mut errs = Vec::new();
        let push = |errs: &mut Vec<KeyError>, key: &str, reason: String| {
            errs.push(KeyError::new(key, reason))
        };

        match url::Url::parse(&self.das.endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => push(
                &mut errs,
                "das.endpoint",
                format!(
                    "{:?} is not an http(s)://host[:port] URL",
                    self.das.endpoint
                ),
            ),
        }
        if !(1..=MAX_LIMIT).contains(&self.server.max_connections) {
            push(
                &mut errs,
                "server.max_connections",
                format!("must be between 1 and {MAX_LIMIT}"),
            );
        }
        for (key, d) in [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.idle_timeout", self.server.idle_timeout),
            ("server.request_timeout", self.server.request_timeout),
            ("server.shutdown_timeout", self.server.shutdown_timeout),
        ] {
            if d.is_zero() || d > MAX_SERVER_TIMEOUT {
                push(
                    &mut errs,
                    key,
                    "must be greater than zero and at most 1h".into(),
                );
            }
        }
        if self.das.timeout.is_zero() || self.das.timeout > MAX_DAS_TIMEOUT {
            push(
                &mut errs,
                "das.timeout",
                "must be greater than zero and at most 10m".into(),
            );
        }
        if self.das.max_body_bytes < 1024 {
            push(
                &mut errs,
                "das.max_body_bytes",
                "must be at least 1024".into(),
            );
        }
        if self.poll.interval < Duration::from_secs(1) {
            push(&mut errs, "poll.interval", "must be at least 1s".into());
        } else if self.poll.interval > MAX_INTERVAL {
            push(&mut errs, "poll.interval", "must be at most 24h".into());
        }
        if self.poll.concurrency == 0 {
            push(&mut errs, "poll.concurrency", "must be at least 1".into());
        } else if self.poll.concurrency > MAX_CONCURRENCY {
            push(
                &mut errs,
                "poll.concurrency",
                format!("must be at most {MAX_CONCURRENCY}"),
            );
        }
        let rate = self.poll.max_requests_per_second;
        if !(rate.is_finite() && rate > 0.0) {
            push(
                &mut errs,
                "poll.max_requests_per_second",
                "must be a number greater than zero".into(),
            );
        } else if rate > MAX_REQUESTS_PER_SECOND {
            push(
                &mut errs,
                "poll.max_requests_per_second",
                format!("must be at most {MAX_REQUESTS_PER_SECOND}"),
            );
        }
        for (key, value) in self.limits.named() {
            if value > MAX_LIMIT {
                push(&mut errs, key, format!("must be at most {MAX_LIMIT}"));
            }
        }
        errs.extend(self.credentials.validate());

        let mut seen = HashSet::new();
        for (i, inst) in self.instances.iter().enumerate() {
            let key = format!("instances[{i}].id");
            if inst.id.trim().is_empty() {
                push(&mut errs, &key, "must not be empty".into());
            } else if !seen.insert(inst.id.as_str()) {
                push(
                    &mut errs,
                    &key,
                    format!("duplicate instance id {:?}", inst.id),
                );
            }
            for name in inst.labels.keys() {
                let key = format!("instances[{i}].labels.{name}");
                if let Err(reason) = check_label_name(name) {
                    push(&mut errs, &key, reason);
                }
            }
            for e in validate_instance(inst) {
                errs.push(e.under(&format!("instances[{i}]")));
            }
        }
        if self.sharding.total == 0 {
            push(
                &mut errs,
                "sharding.total_shards",
                "must be at least 1".into(),
            );
        } else if self.sharding.shard >= self.sharding.total {
            push(&mut errs,
                "sharding.shard",
                format!(
                    "shard {} does not exist: shards are numbered 0 to {} (sharding.total_shards = {})",
                    self.sharding.shard,
                    self.sharding.total - 1,
                    self.sharding.total
                ),
            );
        }
        for (i, d) in self.discovery.iter().enumerate() {
            errs.extend(d.validate(&format!("discovery[{i}]")));
        }
        errs.extend(self.attribution.validate());
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    /// The effective configuration as TOML, for `check-config`. Holds no secret by construction:
    /// secrets are only ever file paths here, and the refused inline one is never serialised.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Prometheus label-name rules, plus the exporter's reserved names.
pub fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "{name:?} is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)"
        ));
    }
    if name.starts_with("__") {
        return Err(format!(
            "{name:?}: names starting with __ are reserved by Prometheus"
        ));
    }
    if RESERVED_LABELS.contains(&name) {
        return Err(format!(
            "{name:?} collides with a label the exporter sets itself"
        ));
    }
    Ok(())
}

/// Writes a figment path the way validation names keys: `instances[0].id`, not `instances.0.id`.
fn key_of(path: &[String]) -> String {
    let mut key = String::new();
    for seg in path {
        if !key.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            key.push_str(&format!("[{seg}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(seg);
        }
    }
    key
}

/// Turns figment's errors into key-named ones (figment prefixes paths with the profile name).
///
/// The text reaches the log, `check-config` and the reply to a rejected `POST /-/reload`, so it
/// names the key, the kind of value found and what was expected, and where the value came from;
/// never the value itself (it may be a secret put under the wrong key) nor figment's own names
/// for its providers.
fn figment_errors(e: figment::Error, env: &[(String, String)]) -> ConfigError {
    let errs = e
        .into_iter()
        .map(|e| {
            let mut path: Vec<String> = e.path.clone();
            if path.first().is_some_and(|p| p == "default") {
                path.remove(0);
            }
            // Some figment errors already end their path with the unknown field; never name it twice.
            if let figment::error::Kind::UnknownField(field, _) = &e.kind {
                if path.last() != Some(field) {
                    path.push(field.clone());
                }
            }
            let from = origin(&e, &path, env);
            KeyError {
                key: if path.is_empty() {
                    "(top level)".into()
                } else {
                    key_of(&path)
                },
                reason: format!("{}{from}", describe_kind(&e.kind)),
            }
        })
        .collect();
    ConfigError::Invalid(errs)
}

/// Where a refused value came from, in the user's words: the file, or the environment variable
/// that set it (flags are typed by the parser, so they never reach here).
fn origin(e: &figment::Error, path: &[String], env: &[(String, String)]) -> String {
    let in_file = e.metadata.as_ref().is_some_and(|m| m.name.contains("TOML"));
    if in_file {
        return " (in the file)".into();
    }
    let var = format!("{ENV_PREFIX}{}", path.join("__").to_ascii_uppercase());
    if env.iter().any(|(k, _)| *k == var) {
        format!(" (from {var})")
    } else {
        String::new()
    }
}

/// A figment error kind without the value it found.
fn describe_kind(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => format!(
            "invalid value: found {}, expected {}",
            describe_actual(actual),
            describe_expected(expected)
        ),
        Kind::Unsupported(actual) | Kind::UnsupportedKey(actual, _) => {
            format!("unsupported value: {}", describe_actual(actual))
        }
        Kind::ISizeOutOfRange(_) | Kind::USizeOutOfRange(_) => "number out of range".into(),
        // Custom messages come from the field types' parsers (`invalid socket address
        // syntax`); one that quotes something may be quoting the value.
        Kind::Message(m) if !m.contains(['"', '\'', '`']) => m.clone(),
        Kind::Message(_) => "invalid value".into(),
        // Field and variant names and lengths are the schema's, not the user's values.
        other => other.to_string(),
    }
}

/// The kind of a value figment found, never the value.
fn describe_actual(actual: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a number with a fraction",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Unit | Actual::Option => "an empty value",
        Actual::Seq => "an array",
        Actual::Map | Actual::NewtypeStruct | Actual::StructVariant => "a table",
        _ => "a value of another type",
    }
}

/// serde's "expected" text in words an operator reads (`usize` is a Rust type, not a TOML one).
fn describe_expected(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number, 0 or more".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" | "bool" => "true or false".into(),
        other => other.to_owned(),
    }
}

/// A TOML syntax error with its line and column and the parser's reason, without the source
/// line the parser quotes (it may hold a secret).
fn syntax_error(text: &str, e: &toml::de::Error) -> KeyError {
    let at = e.span().map_or(String::new(), |span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!(" at line {line}, column {column}")
    });
    KeyError::new(
        "(top level)",
        format!("TOML syntax error{at}: {}", e.message().trim_end()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str) -> Result<Config, ConfigError> {
        Config::from_sources(toml, Vec::new(), &Overrides::default())
    }

    fn load_env(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_sources(
            toml,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            &Overrides::default(),
        )
    }

    fn error_text(r: Result<Config, ConfigError>) -> String {
        r.expect_err("must be refused").to_string()
    }

    const MINIMAL: &str = "[[instances]]\nid = \"r-1\"\n";

    #[test]
    fn defaults() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:10379");
        assert_eq!(c.das.endpoint, "https://das.cn-shanghai.aliyuncs.com");
        assert_eq!(c.das.timeout, Duration::from_secs(10));
        assert_eq!(c.poll.interval, Duration::from_secs(60));
        assert_eq!(c.poll.concurrency, 4);
        assert_eq!(c.poll.max_requests_per_second, 5.0);
        assert_eq!(
            c.limits,
            Limits {
                max_nodes: 256,
                max_sources: 50,
                max_commands: 100,
                max_client_names: 50,
                max_workloads: 100,
                client_idle_threshold: None,
            }
        );
        assert_eq!(c.instances, vec![InstanceConfig::new("r-1")]);
        // The issue's contract, as literals.
        assert_eq!(c.server.max_connections, 512);
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.server.request_timeout, Duration::from_secs(30));
        assert_eq!(c.server.shutdown_timeout, Duration::from_secs(10));
    }

    #[test]
    fn server_limits_are_bounded_with_the_key_named() {
        for (line, key) in [
            ("max_connections = 0", "server.max_connections"),
            ("max_connections = 100001", "server.max_connections"),
            ("header_read_timeout = \"0s\"", "server.header_read_timeout"),
            ("idle_timeout = \"61m\"", "server.idle_timeout"),
            ("request_timeout = \"2h\"", "server.request_timeout"),
            ("shutdown_timeout = \"0s\"", "server.shutdown_timeout"),
        ] {
            let e = error_text(load(&format!("[server]\n{line}\n{MINIMAL}")));
            assert!(e.contains(&format!("`{key}`")), "{line}: {e}");
        }
        let c = load(&format!(
            "[server]\nmax_connections = 100000\nidle_timeout = \"1h\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.server.max_connections, 100_000);
    }

    #[test]
    fn full_file_and_human_durations() {
        let c = load(
            r#"
            [server]
            listen = "127.0.0.1:9999"
            [das]
            endpoint = "http://127.0.0.1:8080"
            timeout = "2s"
            [poll]
            interval = "2m"
            concurrency = 2
            max_requests_per_second = 0.5
            [limits]
            max_sources = 3
            [[instances]]
            id = "r-a"
            labels = { env = "prod", team = "x" }
            [[instances]]
            id = "r-b"
            max_connections = 40000
            "#,
        )
        .unwrap();
        assert_eq!(c.poll.interval, Duration::from_secs(120));
        assert_eq!(c.das.timeout, Duration::from_secs(2));
        assert_eq!(c.limits.max_sources, 3);
        assert_eq!(c.limits.max_commands, 100);
        assert_eq!(c.instances[0].labels["env"], "prod");
        assert_eq!(c.instances[0].max_connections, None, "unknown unless set");
        assert_eq!(c.instances[1].max_connections, Some(40_000));
    }

    #[test]
    fn environment_overrides_file_and_flags_override_both() {
        let c = load_env(
            "[poll]\ninterval = \"10s\"\n[[instances]]\nid = \"r-1\"\n",
            &[
                ("REDIS_SESSION_EXPORTER_POLL__INTERVAL", "30s"),
                ("REDIS_SESSION_EXPORTER_POLL__CONCURRENCY", "9"),
                ("REDIS_SESSION_EXPORTER_SERVER__LISTEN", "127.0.0.1:1"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.poll.interval, Duration::from_secs(30));
        assert_eq!(c.poll.concurrency, 9);
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:1");
        let c = Config::from_sources(
            MINIMAL,
            vec![(
                "REDIS_SESSION_EXPORTER_SERVER__LISTEN".into(),
                "127.0.0.1:1".into(),
            )],
            &Overrides {
                listen: Some("127.0.0.1:2".parse().unwrap()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:2");
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("[poll]\nintervall = \"1s\"\n", "poll.intervall"),
            ("[poll]\ninterval = \"soon\"\n", "poll.interval"),
            (
                "[poll]\nconcurrency = 0\n[[instances]]\nid=\"a\"\n",
                "poll.concurrency",
            ),
            (
                "[poll]\nmax_requests_per_second = 0\n[[instances]]\nid=\"a\"\n",
                "poll.max_requests_per_second",
            ),
            ("[[instances]]\nid = \"\"\n", "instances[0].id"),
            (
                "[[instances]]\nid = \"a\"\n[[instances]]\nid = \"a\"\n",
                "instances[1].id",
            ),
            (
                "[[instances]]\nid = \"a\"\nlabels = { \"bad-name\" = \"x\" }\n",
                "instances[0].labels.bad-name",
            ),
            (
                "[[instances]]\nid = \"a\"\nlabels = { node_id = \"x\" }\n",
                "instances[0].labels.node_id",
            ),
            (
                "[[instances]]\nid = \"a\"\nlabels = { __x = \"x\" }\n",
                "instances[0].labels.__x",
            ),
            ("[[instances]]\nidd = \"a\"\n", "instances[0].idd"),
            (
                "[[instances]]\nid = \"a\"\nmax_connections = 0\n",
                "instances[0].max_connections",
            ),
            (
                "[[instances]]\nid = \"a\"\n[[instances]]\nid = \"b\"\nmax_connections = 100000001\n",
                "instances[1].max_connections",
            ),
            (
                "[[instances]]\nid = \"a\"\nmax_connections = -5\n",
                "instances[0].max_connections",
            ),
            ("[das]\nendpoint = \"ftp://x\"\n", "das.endpoint"),
            (
                "[credentials]\naccess_key_secret = \"oops-not-here\"\n",
                "credentials.access_key_secret",
            ),
            (
                "[credentials]\nprovider = \"magic\"\n",
                "credentials.provider",
            ),
            ("bogus = 1\n", "bogus"),
        ];
        for (toml, key) in cases {
            let text = error_text(load(toml));
            assert!(text.contains(&format!("`{key}`")), "{toml:?}: {text}");
        }
        let text = error_text(load_env(
            MINIMAL,
            &[("REDIS_SESSION_EXPORTER_POLL__INTERVAL", "x")],
        ));
        assert!(text.contains("poll.interval"), "{text}");
    }

    /// Each bound accepts its limit and refuses just past it, naming the key; values far past
    /// any bound (the largest TOML integer, a duration of centuries) are refused, not a panic.
    #[test]
    fn upper_bounds_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("[poll]\nconcurrency = {}\n", "1024", "1025"),
            ("[poll]\nconcurrency = {}\n", "1", "9223372036854775807"),
            ("[poll]\ninterval = \"{}\"\n", "24h", "24h 1s"),
            ("[poll]\ninterval = \"{}\"\n", "1s", "500years"),
            ("[poll]\nmax_requests_per_second = {}\n", "10000", "10000.5"),
            ("[poll]\nmax_requests_per_second = {}\n", "0.001", "1e300"),
            ("[das]\ntimeout = \"{}\"\n", "10m", "601s"),
            ("[limits]\nmax_nodes = {}\n", "100000", "100001"),
            ("[limits]\nmax_sources = {}\n", "100000", "100001"),
            ("[limits]\nmax_commands = {}\n", "100000", "100001"),
            ("[limits]\nmax_client_names = {}\n", "100000", "100001"),
            (
                "[limits]\nmax_workloads = {}\n",
                "100000",
                "9223372036854775807",
            ),
        ];
        for (template, ok, bad) in cases {
            let section = template.split(']').next().unwrap().trim_start_matches('[');
            let name = template
                .split('\n')
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            let key = format!("`{section}.{name}`");
            load(&format!("{}{MINIMAL}", template.replace("{}", ok)))
                .unwrap_or_else(|e| panic!("{key} = {ok} refused: {e}"));
            let text = error_text(load(&format!("{}{MINIMAL}", template.replace("{}", bad))));
            assert!(
                text.contains(&key) && text.contains("at most"),
                "{key} = {bad}: {text}"
            );
        }
    }

    /// `Limits::named` lists every `[limits]` key, so a bound on all of them covers a new one.
    #[test]
    fn every_limit_is_named() {
        let table = toml::Table::try_from(Limits::default()).unwrap();
        let mut keys: Vec<String> = table.keys().map(|k| format!("limits.{k}")).collect();
        let mut named: Vec<String> = Limits::default()
            .named()
            .iter()
            .map(|(k, _)| k.to_string())
            .collect();
        keys.sort();
        named.sort();
        assert_eq!(keys, named);
    }

    /// A refusal names the key and the kind of value, never the value (a secret put under the
    /// wrong key, or on the line a syntax error is on) nor figment's names for its sources.
    #[test]
    fn errors_never_quote_the_value() {
        const S: &str = "Sup3rS3cretValue";
        let cases: &[(&str, &str, &str)] = &[
            (
                "[credentials]\naccess_key_id = \"Sup3rS3cretValue\n",
                "(top level)",
                "TOML syntax error at line 2, column 34",
            ),
            ("Sup3rS3cretValue\n", "(top level)", "at line 1, column 17"),
            (
                "[poll]\nconcurrency = \"Sup3rS3cretValue\"\n",
                "poll.concurrency",
                "found a string, expected a whole number, 0 or more (in the file)",
            ),
            (
                "[poll]\ninterval = \"Sup3rS3cretValue\"\n",
                "poll.interval",
                "found a string, expected a duration (in the file)",
            ),
            (
                "[credentials]\naccess_key_id = 1234567890\n",
                "credentials.access_key_id",
                "found an integer, expected a string (in the file)",
            ),
        ];
        for (toml, key, reason) in cases {
            let text = error_text(load(toml));
            assert!(text.contains(&format!("`{key}`")), "{toml:?}: {text}");
            assert!(text.contains(reason), "{toml:?}: {text}");
            for leak in [S, "1234567890", "source string", "figment", "|"] {
                assert!(!text.contains(leak), "{toml:?} quoted {leak:?}: {text}");
            }
        }
        let text = error_text(load_env(
            MINIMAL,
            &[("REDIS_SESSION_EXPORTER_POLL__CONCURRENCY", S)],
        ));
        assert!(
            text.contains("`poll.concurrency`")
                && text.contains("(from REDIS_SESSION_EXPORTER_POLL__CONCURRENCY)"),
            "{text}"
        );
        assert!(!text.contains(S) && !text.contains("alloc::"), "{text}");
    }

    #[test]
    fn secret_file_must_be_readable_and_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "s3cr3t-value\n").unwrap();
        let cfg = |p: &Path| {
            format!(
                "[credentials]\nprovider = \"static\"\naccess_key_id = \"id\"\naccess_key_secret_file = {:?}\n",
                p.display().to_string()
            )
        };
        // A secret pasted where its path belonged: named by key, never printed back.
        let pasted = PathBuf::from("LTAI5tPastedSecretNotAPath");
        for (p, why) in [
            (&missing, "cannot read the file: No such file"),
            (&dir.path().to_owned(), "cannot read the file"),
            (&empty, "the file is empty"),
            (&pasted, "cannot read the file: No such file"),
        ] {
            let text = error_text(load(&cfg(p)));
            assert!(
                text.contains("`credentials.access_key_secret_file`") && text.contains(why),
                "{text}"
            );
            assert!(
                !text.contains(p.to_str().unwrap()),
                "the value printed: {text}"
            );
        }
        load(&cfg(&good)).unwrap();
    }

    #[test]
    fn inline_secret_is_refused_and_never_printed() {
        let text = error_text(load(
            "[credentials]\naccess_key_secret = \"hunter2-secret\"\n",
        ));
        assert!(!text.contains("hunter2-secret"), "{text}");
        assert!(text.contains("access_key_secret_file"), "{text}");
    }

    #[test]
    fn check_config_output_round_trips() {
        let c = load(
            "[poll]\ninterval = \"90s\"\n[[instances]]\nid = \"r-1\"\nlabels = { env = \"x\" }\n",
        )
        .unwrap();
        let again = load(&c.to_toml()).unwrap();
        assert_eq!(again.poll, c.poll);
        assert_eq!(again.instances, c.instances);
    }

    #[test]
    fn sharding_and_discovery_keys() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.sharding, Sharding::default());
        assert!(c.discovery.is_empty());
        let c = load_env(
            "[sharding]\nshard = 1\n[[discovery]]\nregions = [\"cn-hangzhou\"]\ntags = { env = \"prod\" }\n",
            &[("REDIS_SESSION_EXPORTER_SHARDING__TOTAL_SHARDS", "3")],
        )
        .unwrap();
        assert_eq!(c.sharding, Sharding { shard: 1, total: 3 });
        assert_eq!(c.discovery[0].tags["env"], "prod");
        let again = load(&c.to_toml()).unwrap();
        assert_eq!(again.discovery, c.discovery);
        assert_eq!(again.sharding, c.sharding);
        let flags = Config::from_sources(
            MINIMAL,
            Vec::new(),
            &Overrides {
                shard: Some(2),
                total_shards: Some(4),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(flags.sharding, Sharding { shard: 2, total: 4 });
        for (toml, key) in [
            (
                "[sharding]\nshard = 3\ntotal_shards = 3\n",
                "sharding.shard",
            ),
            ("[sharding]\ntotal_shards = 0\n", "sharding.total_shards"),
            ("[sharding]\nshards = 2\n", "sharding.shards"),
            ("[[discovery]]\nregions = []\n", "discovery[0].regions"),
            (
                "[[discovery]]\nregions = [\"a\"]\nrefresh = \"0s\"\n",
                "discovery[0].refresh",
            ),
            (
                "[[discovery]]\nregions = [\"a\"]\nregion = \"a\"\n",
                "discovery",
            ),
        ] {
            let text = error_text(load(toml));
            assert!(text.contains(&format!("`{key}")), "{toml:?}: {text}");
        }
    }
}
