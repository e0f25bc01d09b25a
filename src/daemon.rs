//! Wires config, credentials, source, scheduler, store and server into the running exporter.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::credentials::CredentialProvider;
use crate::das::DasClient;
use crate::scheduler::Scheduler;
use crate::server::{app, AppState};
use crate::store::Store;

/// Runs the exporter until `shutdown` is cancelled. `on_bound` learns the listening address
/// (useful with port 0).
pub async fn run(
    cfg: Config,
    credentials: Arc<dyn CredentialProvider>,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(cfg.server.listen)
        .await
        .with_context(|| format!("cannot listen on {} (server.listen)", cfg.server.listen))?;
    let addr = listener.local_addr()?;
    on_bound(addr);

    let store = Arc::new(Store::new());
    let source = Arc::new(DasClient::new(&cfg.das, credentials).context("building the HTTP client")?);
    let mut scheduler = Scheduler::new(source, store.clone(), &cfg, shutdown.clone());
    scheduler.apply(&cfg);
    if scheduler.is_empty() {
        tracing::warn!("no instances configured: nothing to poll");
    }
    tracing::info!(%addr, instances = scheduler.len(), interval = ?cfg.poll.interval, "serving /metrics");

    axum::serve(listener, app(AppState::new(store)))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .context("HTTP server")?;
    scheduler.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
