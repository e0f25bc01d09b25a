//! Logging setup: `tracing` to stderr, filtered by `RUST_LOG` (default `info`).
//!
//! The HTTP stack is capped at `info` whatever `RUST_LOG` says: at debug and trace its crates can
//! print request targets and frames, and ours carry the signature and the STS token in the query
//! (DAS) or the OIDC token in the body (STS). A secret must not depend on the log level.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call once per process.
pub fn init(default_level: &str) {
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    for quiet in HTTP_STACK {
        if let Ok(d) = format!("{quiet}=info").parse() {
            filter = filter.add_directive(d);
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Crates that see raw requests; never logged below `info`.
const HTTP_STACK: &[&str] = &[
    "reqwest",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "tower",
    "tower_http",
    "axum",
];
