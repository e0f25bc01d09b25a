//! Wires config, credentials, source, scheduler, store and server into the running exporter, and
//! owns the one place where the instance set changes: the control loop.
//!
//! Everything that changes what is polled (a reload, a discovery refresh) is a [`Control`]
//! message to that loop, which recomputes the effective set ([`crate::fleet::effective`]) and
//! hands it to [`Scheduler::apply`]. One owner, no locks around the scheduler.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, InstanceConfig};
use crate::credentials::CredentialProvider;
use crate::das::DasClient;
use crate::discovery::{self, SourceKey};
use crate::fleet;
use crate::metrics::ProcessMetrics;
use crate::scheduler::Scheduler;
use crate::server::{app, AppState};
use crate::source::Source;
use crate::store::Store;
use crate::webconfig::{self, WebConfig};

/// Re-reads the configuration (file, environment, flags) for a reload.
pub type Reloader = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Messages to the control loop.
#[derive(Debug)]
pub enum Control {
    /// Re-read the configuration; the reply says whether it was applied.
    Reload {
        reply: Option<oneshot::Sender<Result<(), String>>>,
    },
    /// A discovery source's current list (replaces that source's previous list).
    Discovered {
        key: String,
        instances: Vec<InstanceConfig>,
    },
}

/// Handle to the control loop.
pub type ControlSender = mpsc::Sender<Control>;

/// Runs the exporter until `shutdown` is cancelled. `on_bound` learns the listening address
/// (useful with port 0).
pub async fn run(
    cfg: Config,
    credentials: Arc<dyn CredentialProvider>,
    reloader: Option<Reloader>,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    run_with_web(cfg, credentials, reloader, None, shutdown, on_bound).await
}

/// [`run`], serving through `web` (TLS, basic auth) when given.
pub async fn run_with_web(
    cfg: Config,
    credentials: Arc<dyn CredentialProvider>,
    reloader: Option<Reloader>,
    web: Option<WebConfig>,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let listener = crate::connections::bind(cfg.server.listen)
        .with_context(|| format!("cannot listen on {} (server.listen)", cfg.server.listen))?;
    let addr = listener.local_addr()?;

    let store = Arc::new(Store::new());
    let metrics = ProcessMetrics::default();
    let inventory = Arc::new(
        discovery::Shared::new(
            credentials.clone(),
            cfg.das.timeout,
            cfg.das.max_body_bytes,
            metrics.clone(),
        )
        .context("building the HTTP client")?,
    );
    let source: Arc<dyn Source> = Arc::new(crate::source::Router {
        das: Arc::new(
            DasClient::new(&cfg.das, credentials.clone()).context("building the HTTP client")?,
        ),
        direct: Arc::new(crate::direct::DirectSource::new()),
    });
    tokio::spawn(publish_credential_health(
        credentials.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let (tx, rx) = mpsc::channel(16);
    let control = tokio::spawn(control_loop(
        cfg.clone(),
        source,
        (store.clone(), metrics.clone()),
        reloader,
        (tx.clone(), rx),
        inventory,
        shutdown.clone(),
    ));
    #[cfg(unix)]
    reload_on_sighup(tx.clone(), shutdown.clone());

    on_bound(addr);
    let (tls, basic_auth) = web
        .as_ref()
        .map_or((false, false), |w| (w.is_tls(), w.has_basic_auth()));
    tracing::info!(%addr, tls, basic_auth, instances = cfg.instances.len(), discovery_blocks = cfg.discovery.len(), shard = cfg.sharding.shard, total_shards = cfg.sharding.total_shards, interval = ?cfg.poll.interval, "serving /metrics");
    let bodies = Arc::new(crate::exposition::body_cache(store.clone(), &metrics));
    let router = app(AppState::new(store, bodies).with_control(tx));
    webconfig::serve(
        listener,
        router,
        web.as_ref(),
        (&cfg.server).into(),
        shutdown.clone(),
    )
    .await
    .context("HTTP server")?;
    shutdown.cancel();
    let _ = control.await;
    tracing::info!("stopped");
    Ok(())
}

/// Owns the scheduler and the discovery tasks; applies reloads and discovery results.
async fn control_loop(
    mut cfg: Config,
    source: Arc<dyn Source>,
    (store, metrics): (Arc<Store>, ProcessMetrics),
    reloader: Option<Reloader>,
    (tx, mut rx): (ControlSender, mpsc::Receiver<Control>),
    inventory: Arc<discovery::Shared>,
    shutdown: CancellationToken,
) {
    let mut discovered: BTreeMap<String, Vec<InstanceConfig>> = BTreeMap::new();
    // Bumped whenever a reload changes `[[discovery]]`; lists from older tasks are ignored.
    let mut generation = 0u64;
    let mut discovery = discovery::start(
        &cfg.discovery,
        generation,
        inventory.clone(),
        tx.clone(),
        &shutdown,
    );
    let mut scheduler = Scheduler::new(
        source,
        store.clone(),
        metrics.clone(),
        &cfg,
        shutdown.clone(),
    );
    let apply = |scheduler: &mut Scheduler,
                 cfg: &Config,
                 discovered: &BTreeMap<String, Vec<InstanceConfig>>| {
        let sharding = cfg.sharding.sharding();
        metrics.sharding(sharding.shard, sharding.total);
        let mut effective = cfg.clone();
        effective.instances = fleet::effective(&cfg.instances, discovered, sharding);
        scheduler.apply(&effective);
        if scheduler.is_empty() {
            tracing::warn!("no instances to poll");
        }
    };
    apply(&mut scheduler, &cfg, &discovered);
    store.mark_initialized();
    metrics.config_loaded(true, SystemTime::now());

    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = rx.recv() => match m { Some(m) => m, None => break },
        };
        match msg {
            Control::Reload { reply } => {
                let outcome = match &reloader {
                    None => {
                        Err("this process was not started from a configuration file".to_owned())
                    }
                    Some(load) => load().map(|new| {
                        warn_restart_only_changes(&cfg, &new);
                        let old = std::mem::replace(&mut cfg, new);
                        if old.discovery != cfg.discovery {
                            // Restart every discovery task; keep the lists of unchanged blocks
                            // (re-keyed to the new generation) until their first refresh.
                            generation += 1;
                            std::mem::replace(
                                &mut discovery,
                                discovery::start(
                                    &cfg.discovery,
                                    generation,
                                    inventory.clone(),
                                    tx.clone(),
                                    &shutdown,
                                ),
                            )
                            .stop();
                            discovered = std::mem::take(&mut discovered)
                                .into_iter()
                                .filter_map(|(k, v)| match SourceKey::parse(&k) {
                                    Some(key) => (old.discovery.get(key.block)
                                        == cfg.discovery.get(key.block))
                                    .then(|| (SourceKey { generation, ..key }.to_string(), v)),
                                    None => Some((k, v)),
                                })
                                .collect();
                        }
                        apply(&mut scheduler, &cfg, &discovered);
                    }),
                };
                match &outcome {
                    Ok(()) => tracing::info!(instances = scheduler.len(), "configuration reloaded"),
                    Err(e) => {
                        // One line, whatever the error's layout: log pipelines split on newlines.
                        let reason = e.lines().map(str::trim).filter(|l| !l.is_empty());
                        let reason = reason.collect::<Vec<_>>().join("; ");
                        tracing::error!(error = %reason, "reload rejected; the previous configuration stays in force")
                    }
                }
                metrics.config_loaded(outcome.is_ok(), SystemTime::now());
                if let Some(r) = reply {
                    let _ = r.send(outcome);
                }
            }
            Control::Discovered { key, instances } => {
                if SourceKey::parse(&key).is_some_and(|k| k.generation != generation) {
                    tracing::debug!(%key, "dropping a list from a discovery task that was replaced");
                    continue;
                }
                discovered.insert(key, instances);
                apply(&mut scheduler, &cfg, &discovered);
            }
        }
    }
    discovery.stop();
    scheduler.stop().await;
}

/// Settings bound at start-up: a reload cannot change them, so say so rather than ignore them.
fn warn_restart_only_changes(old: &Config, new: &Config) {
    if old.server.listen != new.server.listen {
        tracing::warn!("server.listen changed; it takes effect after a restart");
    }
    if old.das != new.das {
        tracing::warn!("[das] changed; it takes effect after a restart");
    }
    if format!("{:?}", old.credentials) != format!("{:?}", new.credentials) {
        tracing::warn!("[credentials] changed; it takes effect after a restart");
    }
}

/// Publishes the credential provider's health (expiry, error counts) each time a provider says
/// it changed, so providers need no knowledge of the store.
async fn publish_credential_health(
    credentials: Arc<dyn CredentialProvider>,
    metrics: ProcessMetrics,
    shutdown: CancellationToken,
) {
    let mut last = None;
    let mut seen = BTreeMap::new();
    loop {
        let rows = credentials.health();
        if last.as_ref() != Some(&rows) {
            publish_credential_rows(&metrics, &rows, &mut seen);
            last = Some(rows);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = crate::credentials::health_change() => {}
            // A backstop only: every change is signalled.
            _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
        }
    }
}

/// Turns provider health rows into the credential metrics: the expiry as given, the error
/// counts as increments since the rows seen before.
fn publish_credential_rows(
    metrics: &ProcessMetrics,
    rows: &[crate::credentials::Health],
    seen: &mut BTreeMap<&'static str, u64>,
) {
    seen.retain(|p, _| {
        let keep = rows.iter().any(|r| r.provider == *p);
        if !keep {
            metrics.forget_credential_provider(p);
        }
        keep
    });
    for r in rows {
        metrics.credentials_obtained(r.provider, r.expiry);
        let before = seen.insert(r.provider, r.errors).unwrap_or(0);
        for _ in before..r.errors {
            metrics.credential_error(r.provider);
        }
    }
}

/// Registers the SIGHUP handler now (before the server announces itself: SIGHUP's default action
/// is to terminate, so a reload sent right after start must not find it missing) and forwards
/// each signal to the control loop.
#[cfg(unix)]
fn reload_on_sighup(tx: ControlSender, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload with POST /-/reload");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                s = hup.recv() => if s.is_none() { return },
            }
            tracing::info!("SIGHUP: reloading the configuration");
            if tx.send(Control::Reload { reply: None }).await.is_err() {
                return;
            }
        }
    });
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
