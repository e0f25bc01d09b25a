//! The shell of discovery: one task per `(block, region)` that refreshes on its own clock, sends
//! each complete list as an [`Update`], and updates the per-region metrics.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::api::{decode_page, next_page, request_params, select, Page};
use super::{SourceKey, Update};
use crate::acs;
use crate::config::{DiscoveryConfig, InstanceConfig};
use crate::credentials::{self, CredentialProvider};
use crate::metrics::ProcessMetrics;
use crate::source::PollError;

/// The last successful refresh of one `(block, region)`, kept across reloads while the pair
/// stays configured: a region's gauges sum its blocks.
#[derive(Debug, Default, Clone, PartialEq)]
struct Last {
    instances: usize,
    at: Option<SystemTime>,
}

/// What every discovery task shares: the API client, credentials, the metrics they update.
pub struct Shared {
    acs: acs::Client,
    credentials: Arc<dyn CredentialProvider>,
    metrics: ProcessMetrics,
    last: Mutex<BTreeMap<(usize, String), Last>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("credentials", &self.credentials.name())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Calls through `acs` (the client DAS uses: `[das] timeout` applies per request; a page is
    /// read under its own 16 MiB cap), signing with `credentials`, and counts into `metrics`.
    pub fn new(
        acs: acs::Client,
        credentials: Arc<dyn CredentialProvider>,
        metrics: ProcessMetrics,
    ) -> Self {
        Self {
            // A page has its own bound, whatever `[das] max_body_bytes` allows a session list.
            acs: acs.with_body_cap(
                super::api::MAX_PAGE_BYTES,
                "the 16 MiB cap of a DescribeInstances page",
            ),
            credentials,
            metrics,
            last: Mutex::new(BTreeMap::new()),
        }
    }

    fn last(&self) -> std::sync::MutexGuard<'_, BTreeMap<(usize, String), Last>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets pairs no longer configured; a region no block lists any more loses its series.
    fn retain(&self, blocks: &[DiscoveryConfig]) {
        let listed = |r: &str| blocks.iter().any(|d| d.regions.iter().any(|x| x == r));
        let gone: Vec<String> = {
            let mut last = self.last();
            let gone = last
                .keys()
                .filter(|(_, r)| !listed(r))
                .map(|(_, r)| r.clone())
                .collect();
            last.retain(|(b, r), _| blocks.get(*b).is_some_and(|d| d.regions.contains(r)));
            gone
        };
        for region in gone {
            self.metrics.forget_region(&region);
        }
    }

    /// A successful refresh of `(block, region)`: the region's gauges, summed over its blocks.
    fn refreshed(&self, block: usize, region: &str, instances: usize) {
        let (sum, newest) = {
            let mut last = self.last();
            last.insert(
                (block, region.to_owned()),
                Last {
                    instances,
                    at: Some(SystemTime::now()),
                },
            );
            last.iter()
                .filter(|((_, r), _)| r == region)
                .fold((0, None), |(n, at), (_, l)| (n + l.instances, at.max(l.at)))
        };
        let at = newest.unwrap_or(SystemTime::UNIX_EPOCH);
        self.metrics.discovery_refreshed(region, sum as u64, at);
    }

    /// One request for one page, classified.
    async fn fetch_page(
        &self,
        cfg: &DiscoveryConfig,
        region: &str,
        page: u32,
    ) -> Result<Page, PollError> {
        let creds = credentials::for_signing(self.credentials.as_ref(), SystemTime::now())
            .await
            .map_err(PollError::Credentials)?;
        let endpoint = cfg.endpoint_for(region);
        let params = request_params(cfg, region, page);
        Ok(self
            .acs
            .call(&endpoint, &params, &creds.access_key(), |r| {
                decode_page(&r.body)
            })
            .await?)
    }

    /// Every page of one region, with one retry per page on a transient failure.
    pub async fn refresh(
        &self,
        cfg: &DiscoveryConfig,
        region: &str,
    ) -> Result<Vec<InstanceConfig>, PollError> {
        let mut found = Vec::new();
        let mut page = 1;
        loop {
            let p = match self.fetch_page(cfg, region, page).await {
                Err(e) if e.is_transient() => {
                    tokio::time::sleep(e.retry_after().unwrap_or(Duration::from_millis(500))).await;
                    self.fetch_page(cfg, region, page).await?
                }
                other => other?,
            };
            let on_page = p.instances.len();
            found.extend(p.instances);
            match next_page(page, on_page, found.len(), p.total) {
                Some(n) => page = n,
                None => break,
            }
        }
        if found.len() >= super::MAX_INSTANCES_PER_BLOCK {
            tracing::warn!(region, max = super::MAX_INSTANCES_PER_BLOCK,
                "discovery found more instances in a region than a block may poll; keeping the first in id order");
        }
        Ok(select(cfg, region, &found))
    }
}

/// The running discovery tasks of one configuration generation.
#[derive(Debug)]
pub struct Discovery {
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Discovery {
    /// Stops every task (a refresh in flight is abandoned, and sends nothing).
    pub fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Starts one task per `(block, region)` of `blocks`. Each refreshes at once, then every
/// `refresh`, and sends its list to `updates` under a [`SourceKey`] of `generation`.
pub fn start(
    blocks: &[DiscoveryConfig],
    generation: u64,
    shared: Arc<Shared>,
    updates: mpsc::Sender<Update>,
    shutdown: &CancellationToken,
) -> Discovery {
    shared.retain(blocks);
    let cancel = shutdown.child_token();
    let mut tasks = Vec::new();
    for (block, cfg) in blocks.iter().enumerate() {
        for region in &cfg.regions {
            let key = SourceKey {
                generation,
                block,
                region: region.clone(),
            };
            tasks.push(tokio::spawn(run_pair(
                key,
                cfg.clone(),
                shared.clone(),
                updates.clone(),
                cancel.clone(),
            )));
        }
    }
    Discovery { cancel, tasks }
}

async fn run_pair(
    key: SourceKey,
    cfg: DiscoveryConfig,
    shared: Arc<Shared>,
    updates: mpsc::Sender<Update>,
    cancel: CancellationToken,
) {
    loop {
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            r = shared.refresh(&cfg, &key.region) => r,
        };
        match outcome {
            Ok(instances) => {
                let n = instances.len();
                shared.refreshed(key.block, &key.region, n);
                tracing::debug!(region = %key.region, block = key.block, instances = n, "discovery refreshed");
                let update = Update {
                    key: key.clone(),
                    instances,
                };
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = updates.send(update) => if r.is_err() { return },
                }
            }
            Err(e) => {
                let code = e.code().into_owned();
                tracing::warn!(region = %key.region, block = key.block, code = %code, error = %e,
                    "discovery refresh failed; keeping the last known instances");
                shared.metrics.discovery_failed(&key.region, &code);
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(cfg.refresh) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::{Credentials, StaticProvider};

    /// A page is read under 16 MiB even when `[das] max_body_bytes` allows 64: a page that
    /// announces 17 MiB fails the refresh as `invalid_response`, naming the page cap.
    #[tokio::test]
    async fn a_page_over_16_mib_is_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 16 * 1024];
            let _ = s.read(&mut buf).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{{",
                17 * 1024 * 1024
            );
            let _ = s.write_all(head.as_bytes()).await;
        });
        let das = acs::Client::new(
            Duration::from_secs(5),
            64 * 1024 * 1024,
            "das.max_body_bytes",
        )
        .unwrap();
        let shared = Shared::new(
            das,
            Arc::new(StaticProvider::new(Credentials::new("id", "secret", None))),
            ProcessMetrics::new("t"),
        );
        let cfg: DiscoveryConfig =
            toml::from_str(&format!("regions = [\"r\"]\nendpoint = \"http://{addr}\"")).unwrap();
        let e = shared.refresh(&cfg, "r").await.unwrap_err();
        assert_eq!(e.code(), "invalid_response");
        assert!(
            e.to_string()
                .contains("16 MiB cap of a DescribeInstances page"),
            "{e}"
        );
    }
}
