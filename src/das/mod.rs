//! The DAS `GetRedisAllSession` source over [`crate::acs`]: the wire model (a byte scanner with
//! a serde reference behind it) and the source that calls it.

/// The answer's envelope and the session field table both decoders read.
mod answer;
pub mod client;
/// Realistic generated answers for the benchmarks, the fuzz seeds and the fast-path tests.
pub mod corpus;
/// The fast path of [`wire::decode`].
mod scan;
pub mod wire;

pub use client::DasClient;

/// The API version every DAS call is made with.
pub const API_VERSION: &str = "2020-01-16";
/// The action this exporter calls.
pub const ACTION: &str = "GetRedisAllSession";
