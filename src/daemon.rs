//! Wires config, credentials, source, scheduler, store and server into the running exporter, and
//! owns the one place where the instance set changes: the control loop.
//!
//! Everything that changes what is polled reaches that loop as a typed message: a
//! [`ReloadRequest`] from the server or SIGHUP, a [`discovery::Update`] from a discovery task. The
//! loop recomputes the effective set ([`crate::fleet::effective`]) and hands it to
//! [`Scheduler::apply`]. One owner, no locks around the scheduler.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::acs;
use crate::attribution::{self, Attribution, Networks};
use crate::config::{Config, InstanceConfig};
use crate::credentials::{CredentialProvider, Health};
use crate::das::DasClient;
use crate::direct::DirectSource;
use crate::discovery::{self, SourceKey};
use crate::exposition;
use crate::fleet;
use crate::metrics::ProcessMetrics;
use crate::scheduler::Scheduler;
use crate::server::{self, app, AppState, ReloadHandle, ReloadRequest, WebConfig};
use crate::source::{self, Source};
use crate::store::Store;

/// Re-reads the configuration (file, environment, flags) for a reload.
pub type Reloader = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Runs the exporter until `shutdown` is cancelled. `on_bound` learns the listening address
/// (useful with port 0).
pub async fn run(
    cfg: Config,
    credentials: Arc<dyn CredentialProvider>,
    reloader: Option<Reloader>,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let metrics = ProcessMetrics::default();
    run_with_web(
        cfg,
        (credentials, metrics),
        reloader,
        None,
        false,
        shutdown,
        on_bound,
    )
    .await
}

/// [`run`], serving through `web` (TLS, basic auth) when given, and `POST /-/reload` when
/// `lifecycle` (`--web.enable-lifecycle`); SIGHUP reloads either way. The process-wide series
/// live in the `metrics` that come with the credential provider (which may already count its
/// requests into them).
pub async fn run_with_web(
    cfg: Config,
    (credentials, metrics): (Arc<dyn CredentialProvider>, ProcessMetrics),
    reloader: Option<Reloader>,
    web: Option<WebConfig>,
    lifecycle: bool,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let listener = crate::server::connections::bind(cfg.server.listen)
        .with_context(|| format!("cannot listen on {} (server.listen)", cfg.server.listen))?;
    let addr = listener.local_addr()?;

    let store = Arc::new(Store::new());
    // One client for every call to the cloud (DAS and discovery): `[das]` timeout and body cap.
    let acs = acs::Client::new(
        cfg.das.timeout,
        cfg.das.max_body_bytes,
        "das.max_body_bytes",
    )
    .context("building the HTTP client")?
    .counting_into(metrics.clone());
    let inventory = Arc::new(discovery::Shared::new(
        acs.clone(),
        credentials.clone(),
        metrics.clone(),
    ));
    let source: Arc<dyn Source> = Arc::new(source::Router {
        das: Arc::new(DasClient::new(acs, &cfg.das.endpoint, credentials.clone())),
        direct: Arc::new(DirectSource::new(cfg.das.max_body_bytes)),
    });
    tokio::spawn(publish_credential_health(
        credentials.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let (reload, reloads) = ReloadHandle::channel();
    let control = tokio::spawn(control_loop(
        cfg.clone(),
        source,
        (store.clone(), metrics.clone()),
        reloader,
        reloads,
        inventory,
        shutdown.clone(),
    ));
    #[cfg(unix)]
    reload_on_sighup(reload.clone(), shutdown.clone());

    on_bound(addr);
    let (tls, basic_auth) = web
        .as_ref()
        .map_or((false, false), |w| (w.is_tls(), w.has_basic_auth()));
    tracing::info!(%addr, tls, basic_auth, instances = cfg.instances.len(), discovery_blocks = cfg.discovery.len(), shard = cfg.sharding.shard, total_shards = cfg.sharding.total, interval = ?cfg.poll.interval, "serving /metrics");
    let bodies = Arc::new(exposition::body_cache(store.clone(), &metrics));
    let mut state = AppState::new(store, bodies);
    if lifecycle {
        state = state.with_reload(reload);
    }
    let router = app(state);
    server::serve(
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
    mut reloads: mpsc::Receiver<ReloadRequest>,
    inventory: Arc<discovery::Shared>,
    shutdown: CancellationToken,
) {
    let (updates_tx, mut updates) = mpsc::channel(16);
    let mut discovered: BTreeMap<SourceKey, Vec<InstanceConfig>> = BTreeMap::new();
    // Bumped whenever a reload changes `[[discovery]]`; lists from older tasks are ignored.
    let mut generation = 0u64;
    let start_discovery = |cfg: &Config, generation| {
        discovery::start(
            &cfg.discovery,
            generation,
            inventory.clone(),
            updates_tx.clone(),
            &shutdown,
        )
    };
    let mut discovery = start_discovery(&cfg, generation);
    let mut scheduler = Scheduler::new(
        source,
        store.clone(),
        metrics.clone(),
        &cfg,
        shutdown.clone(),
    );
    if let Some(a) = start_attribution(&cfg, &metrics, &shutdown) {
        scheduler = scheduler.with_attribution(a, cfg.attribution.idle_threshold);
    }
    let apply = |scheduler: &mut Scheduler,
                 cfg: &Config,
                 discovered: &BTreeMap<SourceKey, Vec<InstanceConfig>>| {
        metrics.sharding(cfg.sharding.shard, cfg.sharding.total);
        let mut effective = cfg.clone();
        effective.instances = fleet::effective(&cfg.instances, discovered, cfg.sharding);
        scheduler.apply(&effective);
        if scheduler.is_empty() {
            tracing::warn!("no instances to poll");
        }
    };
    apply(&mut scheduler, &cfg, &discovered);
    store.mark_initialized();
    metrics.config_loaded(true, SystemTime::now());

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(ReloadRequest { reply }) = reloads.recv() => {
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
                            std::mem::replace(&mut discovery, start_discovery(&cfg, generation))
                                .stop();
                            discovered = std::mem::take(&mut discovered)
                                .into_iter()
                                .filter(|(key, _)| {
                                    old.discovery.get(key.block) == cfg.discovery.get(key.block)
                                })
                                .map(|(key, v)| (SourceKey { generation, ..key }, v))
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
            Some(discovery::Update { key, instances }) = updates.recv() => {
                if key.generation != generation {
                    tracing::debug!(%key, "dropping a list from a discovery task that was replaced");
                    continue;
                }
                let block = key.block;
                discovered.insert(key, instances);
                let dropped = discovery::cap_block(&mut discovered, generation, block);
                if dropped > 0 {
                    tracing::warn!(block, dropped, max = discovery::MAX_INSTANCES_PER_BLOCK,
                        "a [[discovery]] block found more instances than it may poll; the rest are ignored");
                }
                apply(&mut scheduler, &cfg, &discovered);
            }
            else => break,
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
    if old.credentials != new.credentials {
        tracing::warn!("[credentials] changed; it takes effect after a restart");
    }
    if old.attribution != new.attribution {
        tracing::warn!("[attribution] changed; it takes effect after a restart");
    }
}

/// Attribution as configured at start: the shared map, its watcher (with Kubernetes on), and a
/// task publishing its own series. `None` when `[attribution]` names nothing to attribute with.
fn start_attribution(
    cfg: &Config,
    metrics: &ProcessMetrics,
    shutdown: &CancellationToken,
) -> Option<Arc<Attribution>> {
    let ac = &cfg.attribution;
    if !ac.is_enabled() {
        return None;
    }
    let a = Arc::new(
        Attribution::new(Networks::new(ac.parsed_networks()), ac.kubernetes.enabled)
            .counting_into(metrics.clone()),
    );
    if ac.kubernetes.enabled {
        tokio::spawn(attribution::watch::run(
            a.clone(),
            ac.kubernetes.namespaces.clone(),
            shutdown.clone(),
        ));
    }
    tokio::spawn(publish_attribution_pods(
        a.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    tracing::info!(
        networks = ac.networks.len(),
        kubernetes = ac.kubernetes.enabled,
        namespaces = ?ac.kubernetes.namespaces,
        "attribution on"
    );
    Some(a)
}

/// Keeps `redis_session_exporter_attribution_pods` current: the count moves with the watcher's
/// work and with time (deleted pods are forgotten after a while), so it is read every second.
async fn publish_attribution_pods(
    a: Arc<Attribution>,
    metrics: ProcessMetrics,
    shutdown: CancellationToken,
) {
    loop {
        metrics.attribution_pods(a.pods_known());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

/// Publishes the credential provider's health (expiry, error counts) each time a provider says
/// it changed, so providers need no knowledge of the store.
async fn publish_credential_health(
    credentials: Arc<dyn CredentialProvider>,
    metrics: ProcessMetrics,
    shutdown: CancellationToken,
) {
    let signal = credentials.health_signal();
    let mut last = None;
    let mut seen = BTreeMap::new();
    loop {
        let rows = credentials.health();
        if last.as_ref() != Some(&rows) {
            publish_credential_rows(&metrics, &rows, &mut seen);
            last = Some(rows);
        }
        let changed = async {
            match &signal {
                Some(s) => s.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changed => {}
            // A backstop only: every change is signalled.
            _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
        }
    }
}

/// Turns provider health rows into the credential metrics: the providers shown, each one's
/// expiry as given, and its error count as increments since the rows seen before.
fn publish_credential_rows(
    metrics: &ProcessMetrics,
    rows: &[Health],
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
fn reload_on_sighup(reload: ReloadHandle, shutdown: CancellationToken) {
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
            if !reload.request().await {
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
