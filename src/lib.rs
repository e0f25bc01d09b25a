//! redis-session-exporter: the client sessions of ApsaraDB for Redis / Tair, read through the
//! DAS `GetRedisAllSession` API (or `CLIENT LIST`), served as Prometheus metrics.
//!
//! # Layout
//!
//! The modules in data-flow order; CONTRIBUTING.md draws the layers and says which way imports
//! may point (down this list's dependencies, never back: `config` imports nothing of the crate,
//! and the import graph has no cycle, which `tests/e2e/layout.rs` checks).
//!
//! - [`config`]: plain types and their validation (file, environment, flags; errors name the
//!   key). A leaf: imports nothing of the crate.
//! - `clock`: wall-clock time as numbers.
//! - [`metrics`]: the process-wide series (polls, errors, credentials, reload, discovery,
//!   shards, build info) as typed prometheus-client metrics, updated where each event happens.
//! - [`acs`]: Alibaba Cloud RPC: the v1 signer (pure), one client, one error classification.
//! - [`credentials`]: where the AccessKey comes from; secrets are redacted by type. STS calls go
//!   through `acs`.
//! - [`sticky`]: sticky top-N, so capped breakdowns do not flap at their boundary.
//! - [`attribution`]: client IPs named as Kubernetes workloads (kept by watchers) or networks; a
//!   pure lookup.
//! - [`snapshot`]: the fold from sessions to one instance's typed aggregate.
//! - [`source`]: the seam between the scheduler and any source; the shared throttle, retries.
//! - [`das`]: `GetRedisAllSession` over `acs`: the tolerant decoder (a byte scanner with a serde
//!   reference behind it) and the source.
//! - `direct`: the other source: `CLIENT LIST` read from the Redis nodes themselves.
//! - [`discovery`]: instances found in the cloud's inventory (`DescribeInstances` over `acs`),
//!   sent as typed updates.
//! - [`fleet`]: which instances this replica polls (configured, discovered, sharded).
//! - [`store`]: the published state: each instance's last result, swapped atomically.
//! - [`exposition`]: prometheus-client: one registry (the process-wide metrics and a collector
//!   that writes every instance's series from the store), both text formats, one cached body per
//!   change, format and encoding.
//! - [`scheduler`]: one task per instance on a jittered grid; publishes each result to the store.
//! - [`server`]: `/metrics`, `/`, `/healthz`, `/readyz`, `POST /-/reload` (through a
//!   [`server::ReloadHandle`]); `server::webconfig` puts TLS and basic auth in front,
//!   `server::connections` holds the connection limits and timeouts.
//! - [`daemon`]: wires the above together and owns the control loop; [`telemetry`] sets up
//!   logging.
//! - [`simulator`] and [`demo`]: the DAS simulator, and the exporter run against it.
//!
//! # Public surface
//!
//! The crate is a library so that the binary (`main.rs`), the benches, the fuzz targets and the
//! end-to-end tests can drive it; it is not an API for other crates, and nothing here is stable.
//! A module is public when one of those uses it, and crate-private otherwise.
#![forbid(unsafe_code)]

pub mod config;

pub(crate) mod clock;
pub mod metrics;

pub mod acs;
pub mod credentials;

pub mod attribution;
pub mod sticky;

pub mod snapshot;
pub mod source;

pub mod das;
pub(crate) mod direct;
pub mod discovery;

pub mod fleet;

pub mod store;

pub mod exposition;

pub mod scheduler;
pub mod server;

pub mod daemon;
pub mod telemetry;

pub mod demo;
pub mod simulator;
