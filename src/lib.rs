//! redis-session-exporter: the client sessions of ApsaraDB for Redis / Tair, read through the
//! DAS `GetRedisAllSession` API, served as Prometheus metrics.
//!
//! # Layout
//!
//! Data flows one way; the modules are listed in that order.
//!
//! - [`config`]: file, environment and flags, validated with key-named errors.
//! - [`credentials`]: where the AccessKey comes from; secrets are redacted by type.
//! - [`das`]: request signing (pure), the tolerant decoder (a byte scanner with a serde reference
//!   behind it), the HTTP client.
//! - [`direct`]: the other source: `CLIENT LIST` read from the Redis nodes themselves.
//! - [`source`]: the seam between the scheduler and any source, the shared throttle, retries.
//! - [`attribution`]: client IPs named as Kubernetes workloads (kept by watchers) or networks.
//! - [`snapshot`]: the fold from sessions to one instance's typed aggregate.
//! - [`sticky`]: sticky top-N, so capped breakdowns do not flap at their boundary.
//! - [`discovery`]: instances found in the cloud's inventory (R-KVStore `DescribeInstances`).
//! - [`fleet`]: which instances this replica polls (configured, discovered, sharded).
//! - [`scheduler`]: one task per instance on a jittered grid; publishes encoded results.
//! - [`exposition`]: classic text and OpenMetrics, encoded once per poll.
//! - [`store`]: the published state, swapped atomically, read by the server.
//! - [`server`]: `/metrics`, `/`, `/healthz`, `/readyz`.
//! - [`connections`]: how many HTTP connections are held, which one makes room, every timeout.
//! - [`webconfig`]: `--web.config.file`: TLS and basic auth in front of every route.
//! - [`daemon`]: wires the above together; [`simulator`] and [`demo`] run it without a cloud.
#![forbid(unsafe_code)]

pub mod attribution;
pub mod config;
pub mod connections;
pub mod credentials;
pub mod daemon;
pub mod das;
pub mod demo;
pub mod direct;
pub mod discovery;
pub mod exposition;
pub mod fleet;
pub mod metrics;
pub mod scheduler;
pub mod server;
pub mod simulator;
pub mod snapshot;
pub mod source;
pub mod sticky;
pub mod store;
pub mod telemetry;
pub mod webconfig;
