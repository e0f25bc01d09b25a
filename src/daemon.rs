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
use crate::clock::unix_seconds;
use crate::config::{Config, InstanceConfig, Sharding};
use crate::credentials::{CredentialProvider, Health};
use crate::das::DasClient;
use crate::direct::DirectSource;
use crate::discovery::{self, SourceKey};
use crate::exposition::{BlockWriter, Fam, Format};
use crate::fleet;
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
    .context("building the HTTP client")?;
    let inventory = Arc::new(discovery::Shared::new(acs.clone(), credentials.clone(), {
        let store = store.clone();
        Arc::new(move |regions| publish_discovery(&store, regions))
    }));
    let source: Arc<dyn Source> = Arc::new(source::Router {
        das: Arc::new(DasClient::new(acs, &cfg.das.endpoint, credentials.clone())),
        direct: Arc::new(DirectSource::new()),
    });
    tokio::spawn(publish_credential_health(
        credentials.clone(),
        store.clone(),
        shutdown.clone(),
    ));
    let (reload, reloads) = ReloadHandle::channel();
    let control = tokio::spawn(control_loop(
        cfg.clone(),
        source,
        store.clone(),
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
    let router = app(AppState::new(store).with_reload(reload));
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
    store: Arc<Store>,
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
    let mut scheduler = Scheduler::new(source, store.clone(), &cfg, shutdown.clone());
    let apply = |scheduler: &mut Scheduler,
                 cfg: &Config,
                 discovered: &BTreeMap<SourceKey, Vec<InstanceConfig>>| {
        publish_sharding(&store, cfg.sharding);
        let mut effective = cfg.clone();
        effective.instances = fleet::effective(&cfg.instances, discovered, cfg.sharding);
        scheduler.apply(&effective);
        if scheduler.is_empty() {
            tracing::warn!("no instances to poll");
        }
    };
    apply(&mut scheduler, &cfg, &discovered);
    store.mark_initialized();
    let mut reload_status = ReloadStatus::default();
    reload_status.publish(&store, true);

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
                reload_status.publish(&store, outcome.is_ok());
                if let Some(r) = reply {
                    let _ = r.send(outcome);
                }
            }
            Some(discovery::Update { key, instances }) = updates.recv() => {
                if key.generation != generation {
                    tracing::debug!(%key, "dropping a list from a discovery task that was replaced");
                    continue;
                }
                discovered.insert(key, instances);
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
}

/// `redis_session_exporter_config_last_reload_successful` and the time of the last success,
/// remembered across reloads by the control loop that owns it.
#[derive(Debug, Default)]
struct ReloadStatus {
    last_success_unix: f64,
}

impl ReloadStatus {
    fn publish(&mut self, store: &Store, ok: bool) {
        if ok {
            self.last_success_unix = unix_seconds(SystemTime::now());
        }
        let blocks = Format::ALL.map(|fmt| {
            let mut w = BlockWriter::new(fmt, None);
            w.gauge(Fam::ConfigReloadSuccessful, &[], u64::from(ok));
            w.gauge(Fam::ConfigReloadTimestamp, &[], self.last_success_unix);
            w.finish()
        });
        store.publish_global("reload", blocks);
    }
}

/// `redis_session_exporter_discovery_*`, per region.
fn publish_discovery(store: &Store, by_region: &BTreeMap<String, discovery::Stats>) {
    let blocks = Format::ALL.map(|fmt| {
        let mut w = BlockWriter::new(fmt, None);
        for (region, s) in by_region {
            if let Some(n) = s.instances {
                w.gauge(Fam::DiscoveryInstances, &[("region", region)], n as u64);
            }
        }
        for (region, s) in by_region {
            for (code, n) in &s.errors {
                w.counter(
                    Fam::DiscoveryErrors,
                    &[("region", region), ("code", code)],
                    *n,
                );
            }
        }
        for (region, s) in by_region {
            w.gauge(
                Fam::DiscoveryLastSuccess,
                &[("region", region)],
                s.last_success,
            );
        }
        w.finish()
    });
    store.publish_global("discovery", blocks);
}

/// `redis_session_exporter_shard_ordinal` and `…_total_shards`.
fn publish_sharding(store: &Store, sharding: Sharding) {
    let blocks = Format::ALL.map(|fmt| {
        let mut w = BlockWriter::new(fmt, None);
        w.gauge(Fam::ShardOrdinal, &[], u64::from(sharding.shard));
        w.gauge(Fam::TotalShards, &[], u64::from(sharding.total));
        w.finish()
    });
    store.publish_global("sharding", blocks);
}

/// Publishes the credential provider's health (expiry, error counts) each time a provider says
/// it changed, so providers need no knowledge of the store.
async fn publish_credential_health(
    credentials: Arc<dyn CredentialProvider>,
    store: Arc<Store>,
    shutdown: CancellationToken,
) {
    let signal = credentials.health_signal();
    let mut last = None;
    loop {
        let rows = credentials.health();
        if last.as_ref() != Some(&rows) {
            publish_credential_rows(&store, &rows);
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

fn publish_credential_rows(store: &Store, rows: &[Health]) {
    {
        let blocks = Format::ALL.map(|fmt| {
            let mut w = BlockWriter::new(fmt, None);
            for r in rows {
                if let Some(t) = r.expiry {
                    let unix = unix_seconds(t);
                    w.gauge(Fam::CredentialsExpiry, &[("provider", r.provider)], unix);
                }
            }
            for r in rows {
                w.counter(Fam::CredentialErrors, &[("provider", r.provider)], r.errors);
            }
            w.finish()
        });
        store.publish_global("credentials", blocks);
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
