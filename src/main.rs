//! The `redis-session-exporter` binary: argument parsing, logging, signals; nothing else.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use redis_session_exporter::config::{Config, Overrides};
use redis_session_exporter::simulator::SimConfig;
use redis_session_exporter::{credentials, daemon, demo, simulator, telemetry};

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

fn load_config(cli: &Cli) -> Result<Config, String> {
    let path = cli
        .config
        .as_ref()
        .ok_or("no configuration: pass --config FILE (or run `demo`)")?;
    Config::load(path, &Overrides { listen: cli.listen }).map_err(|e| e.to_string())
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
        Some(Command::CheckConfig) => match load_config(&cli) {
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
            cfg.churn |= churn;
            if let Some(s) = seed {
                cfg.seed = *s;
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
            let cfg = match load_config(&cli) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            telemetry::init("info");
            let creds: Arc<dyn credentials::CredentialProvider> = match credentials::from_config(
                &cfg.credentials,
            ) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "no credentials: every poll will fail with code=\"credentials\"");
                    Arc::new(credentials::Unavailable(e))
                }
            };
            let (path, overrides) = (cli.config.clone(), Overrides { listen: cli.listen });
            let reloader: daemon::Reloader = Arc::new(move || {
                let path = path.as_ref().ok_or("no configuration file")?;
                Config::load(path, &overrides).map_err(|e| e.to_string())
            });
            daemon::run(cfg, creds, Some(reloader), shutdown_on_signal(), |_| {}).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
