//! The `redis-session-exporter` binary: argument parsing, logging, signals; nothing else.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use redis_session_exporter::config::{Config, Overrides};
use redis_session_exporter::metrics::ProcessMetrics;
use redis_session_exporter::server::WebConfig;
use redis_session_exporter::simulator::SimConfig;
use redis_session_exporter::{credentials, daemon, demo, fleet, simulator, telemetry};

/// Prometheus exporter for the client sessions of ApsaraDB for Redis / Tair (DAS GetRedisAllSession).
#[derive(Debug, Parser)]
#[command(name = "redis-session-exporter", version, about)]
struct Cli {
    /// The TOML configuration file.
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Overrides `[server] listen`.
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// TLS and basic auth for the HTTP endpoint, in the Prometheus exporter-toolkit format (YAML).
    #[arg(long = "web.config.file", global = true, value_name = "FILE")]
    web_config_file: Option<PathBuf>,
    /// Serve `POST /-/reload` (as Prometheus's flag of that name); without it the route answers
    /// 403. SIGHUP reloads either way.
    #[arg(long = "web.enable-lifecycle", global = true)]
    web_enable_lifecycle: bool,
    /// This replica's shard, from 0 (overrides `[sharding] shard`).
    #[arg(
        long,
        global = true,
        value_name = "N",
        conflicts_with = "shard_from_hostname"
    )]
    shard: Option<u32>,
    /// Number of shards the fleet is split into (overrides `[sharding] total_shards`).
    #[arg(long = "total-shards", global = true, value_name = "M")]
    total_shards: Option<u32>,
    /// Take the shard from a StatefulSet pod name `<name>-<ordinal>` ($HOSTNAME, else the
    /// system's hostname); the total comes from the configuration or the environment.
    #[arg(long = "shard-from-hostname", global = true)]
    shard_from_hostname: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration and print the effective one (secrets redacted); exit 0 or 1.
    CheckConfig,
    /// Run a local DAS simulator and the exporter against it (no cloud account needed).
    Demo,
    /// Run only the DAS simulator.
    Simulate {
        /// Simulator configuration (TOML): keys, seed, per-instance sessions and faults.
        #[arg(long = "sim-config", value_name = "FILE")]
        sim_config: Option<PathBuf>,
        /// Change answers every 15 s instead of keeping them fixed.
        #[arg(long)]
        churn: bool,
        /// Seed of the generated sessions.
        #[arg(long)]
        seed: Option<u64>,
        /// Answer every instance with this Redis server's real `CLIENT LIST` (redis://host:port).
        #[arg(long = "from-redis", value_name = "URL")]
        from_redis: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `--web.config.file`, if given; an error names the file and the key.
fn load_web_config(cli: &Cli) -> Result<Option<WebConfig>, String> {
    cli.web_config_file
        .as_ref()
        .map(|p| WebConfig::load(p).map_err(|e| format!("--web.config.file {}: {e}", p.display())))
        .transpose()
}

fn load_config(cli: &Cli) -> Result<Config, String> {
    let path = cli
        .config
        .as_ref()
        .ok_or("no configuration: pass --config FILE (or run `demo`)")?;
    Config::load(path, &overrides(cli)?).map_err(|e| e.to_string())
}

/// The flags that win over the file and the environment.
fn overrides(cli: &Cli) -> Result<Overrides, String> {
    let shard = if cli.shard_from_hostname {
        let name = hostname().ok_or("--shard-from-hostname: cannot read the hostname")?;
        Some(
            fleet::ordinal_from_hostname(&name)
                .map_err(|e| format!("--shard-from-hostname: {e}"))?,
        )
    } else {
        cli.shard
    };
    Ok(Overrides {
        listen: cli.listen,
        shard,
        total_shards: cli.total_shards,
    })
}

/// `$HOSTNAME` (a Kubernetes pod's name), else the kernel's hostname.
fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// Cancels the token on SIGTERM or Ctrl-C.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        daemon::shutdown_signal().await;
        tracing::info!("shutting down");
        t.cancel();
    });
    token
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Some(Command::CheckConfig) => match load_config(&cli).and_then(|c| {
            load_web_config(&cli)?;
            Ok(c)
        }) {
            Ok(cfg) => {
                print!("{}", cfg.to_toml());
                eprintln!("configuration is valid ({} instances)", cfg.instances.len());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("error: {e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Some(Command::Demo) => {
            telemetry::init("info");
            let listen = cli
                .listen
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 10379)));
            demo::run(listen, shutdown_on_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Simulate {
            sim_config,
            churn,
            seed,
            from_redis,
        }) => {
            telemetry::init("info");
            let mut cfg = match sim_config {
                Some(p) => {
                    let text = std::fs::read_to_string(p)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
                    toml::from_str::<SimConfig>(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
                }
                None => SimConfig::default(),
            };
            // The key pair in the environment (the one an exporter beside it would use) is
            // accepted too, so `simulate` and the daemon can share one set of variables.
            if let Ok(p) = credentials::from_env() {
                if let Ok(c) = credentials::CredentialProvider::credentials(&p).await {
                    cfg.keys.push(simulator::SimKey {
                        access_key_id: c.access_key_id.clone(),
                        access_key_secret: credentials::ExposeSecret::expose_secret(
                            &c.access_key_secret,
                        )
                        .to_owned(),
                        security_token: c
                            .security_token
                            .as_ref()
                            .map(|t| credentials::ExposeSecret::expose_secret(t).to_owned()),
                    });
                }
            }
            cfg.churn |= churn;
            if let Some(s) = seed {
                cfg.seed = *s;
            }
            if let Some(url) = from_redis {
                cfg.from_redis = Some(url.clone());
            }
            let listen = cli
                .listen
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 10380)));
            let shutdown = shutdown_on_signal();
            let addr = simulator::spawn(listen, cfg, shutdown.clone()).await?;
            println!("DAS simulator listening on http://{addr}/");
            shutdown.cancelled().await;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let (cfg, web) = match load_config(&cli).and_then(|c| Ok((c, load_web_config(&cli)?))) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            telemetry::init("info");
            let metrics = ProcessMetrics::default();
            let creds: Arc<dyn credentials::CredentialProvider> = match credentials::from_config(
                &cfg.credentials,
                &metrics,
            ) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "no credentials: every poll will fail with code=\"credentials\"");
                    Arc::new(credentials::Unavailable::new(e))
                }
            };
            let (path, overrides) = (
                cli.config.clone(),
                overrides(&cli).map_err(anyhow::Error::msg)?,
            );
            let reloader: daemon::Reloader = Arc::new(move || {
                let path = path.as_ref().ok_or("no configuration file")?;
                Config::load(path, &overrides).map_err(|e| e.to_string())
            });
            daemon::run_with_web(
                cfg,
                (creds, metrics),
                Some(reloader),
                web,
                cli.web_enable_lifecycle,
                shutdown_on_signal(),
                |_| {},
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
