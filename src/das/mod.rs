//! The DAS `GetRedisAllSession` source: signing, the wire model, and the HTTP client.

/// The answer's envelope and the session field table both decoders read.
mod answer;
pub mod client;
/// The fast path of [`wire::decode`].
mod scan;
pub mod sign;
pub mod wire;

pub use client::DasClient;

/// The API version every DAS call is made with.
pub const API_VERSION: &str = "2020-01-16";
/// The action this exporter calls.
pub const ACTION: &str = "GetRedisAllSession";
