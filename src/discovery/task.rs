//! The shell of discovery: one task per `(block, region)` that refreshes on its own clock, sends
//! each complete list as an [`Update`], and keeps the per-region metrics.

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
use crate::source::PollError;

/// Outcomes of one `(block, region)` (kept across reloads while the pair stays configured), or
/// of a region (summed over the blocks that list it).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stats {
    /// Instances of the last successful refresh.
    pub instances: Option<usize>,
    /// Failed refreshes by `code`.
    pub errors: BTreeMap<String, u64>,
    /// Unix seconds of the last successful refresh; 0 before the first.
    pub last_success: f64,
}

/// Told the figures of every region each time they change (it publishes the metrics).
pub type Report = Arc<dyn Fn(&BTreeMap<String, Stats>) + Send + Sync>;

/// What every discovery task shares: the API client, credentials, the figures they feed.
pub struct Shared {
    acs: acs::Client,
    credentials: Arc<dyn CredentialProvider>,
    report: Report,
    stats: Mutex<BTreeMap<(usize, String), Stats>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("credentials", &self.credentials.name())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Calls through `acs` (the client DAS uses: `[das] timeout` and `max_body_bytes` apply per
    /// request), signing with `credentials`, and hands the per-region figures to `report`.
    pub fn new(acs: acs::Client, credentials: Arc<dyn CredentialProvider>, report: Report) -> Self {
        Self {
            acs,
            credentials,
            report,
            stats: Mutex::new(BTreeMap::new()),
        }
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, BTreeMap<(usize, String), Stats>> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets pairs no longer configured, so their region's series go away.
    fn retain(&self, blocks: &[DiscoveryConfig]) {
        self.stats().retain(|(b, r), _| {
            blocks
                .get(*b)
                .is_some_and(|d| d.regions.iter().any(|x| x == r))
        });
        self.publish();
    }

    /// Reports the per-region figures: instances and errors summed over the blocks of a
    /// region, the newest success.
    fn publish(&self) {
        let mut by_region: BTreeMap<String, Stats> = BTreeMap::new();
        for ((_, region), s) in self.stats().iter() {
            let r = by_region.entry(region.clone()).or_default();
            if let Some(n) = s.instances {
                r.instances = Some(r.instances.unwrap_or(0) + n);
            }
            for (code, n) in &s.errors {
                *r.errors.entry(code.clone()).or_insert(0) += n;
            }
            r.last_success = r.last_success.max(s.last_success);
        }
        (self.report)(&by_region);
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
    let pair = (key.block, key.region.clone());
    loop {
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            r = shared.refresh(&cfg, &key.region) => r,
        };
        match outcome {
            Ok(instances) => {
                let n = instances.len();
                {
                    let mut stats = shared.stats();
                    let s = stats.entry(pair.clone()).or_default();
                    s.instances = Some(n);
                    s.last_success = crate::clock::unix_seconds(SystemTime::now());
                }
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
                *shared
                    .stats()
                    .entry(pair.clone())
                    .or_default()
                    .errors
                    .entry(code)
                    .or_insert(0) += 1;
            }
        }
        shared.publish();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(cfg.refresh) => {}
        }
    }
}
