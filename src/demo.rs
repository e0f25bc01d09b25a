//! `demo`: the simulator and the exporter together on loopback, no cloud account needed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, InstanceConfig};
use crate::credentials::{Credentials, StaticProvider};
use crate::simulator::{self, Fault, SimConfig, SimInstance};

/// The demo's instances: a few healthy ones of different sizes, and one that is throttled now
/// and then so the health series have something to show.
pub const DEMO_INSTANCES: &[&str] = &[
    "r-demo-orders",
    "r-demo-sessions",
    "r-demo-cache",
    "r-demo-flaky",
];

/// Runs the demo until `shutdown`.
pub async fn run(listen: SocketAddr, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut sim = SimConfig {
        churn: true,
        ..SimConfig::default()
    };
    sim.instances.insert(
        "r-demo-flaky".into(),
        SimInstance {
            sessions: Some(120),
            fault: Some(Fault::Every {
                every: 4,
                fault: Box::new(Fault::ThrottlingUser {
                    retry_after_ms: None,
                }),
            }),
        },
    );
    sim.instances.insert(
        "r-demo-sessions".into(),
        SimInstance {
            sessions: Some(2000),
            fault: None,
        },
    );
    let sim_addr =
        simulator::spawn(SocketAddr::from(([127, 0, 0, 1], 0)), sim, shutdown.clone()).await?;

    let mut cfg = Config::default();
    cfg.server.listen = listen;
    cfg.das.endpoint = format!("http://{sim_addr}");
    cfg.poll.interval = Duration::from_secs(10);
    cfg.instances = DEMO_INSTANCES
        .iter()
        .map(|id| {
            let mut i = InstanceConfig::new(*id);
            i.labels.insert("env".into(), "demo".into());
            // The limit of the smallest standard classes, so the utilization panel has data.
            i.max_connections = Some(10_000);
            i
        })
        .collect();
    let creds = Arc::new(StaticProvider::new(Credentials::new(
        simulator::DEFAULT_KEY_ID,
        simulator::DEFAULT_KEY_SECRET,
        None,
    )));
    crate::daemon::run(cfg, creds, None, shutdown, |addr| {
        let shown = if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        println!("redis-session-exporter demo");
        println!("  DAS simulator:  http://{sim_addr}/  (stats: http://{sim_addr}/_sim/stats)");
        println!("  exporter:       http://{shown}/");
        println!("  metrics:        http://{shown}/metrics");
        println!("  instances:      {}", DEMO_INSTANCES.join(", "));
        println!("Polling every 10s; figures appear within seconds. Ctrl-C to stop.");
    })
    .await
}
