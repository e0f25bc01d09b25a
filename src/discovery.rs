//! Finding instances in the cloud's inventory: R-KVStore `DescribeInstances`, per region, page by
//! page, turned into [`InstanceConfig`]s for the control loop.
//!
//! The pure part (request parameters, decoding a page, paging, filtering, label names) is unit
//! tested; the shell ([`start`]) runs one task per `(block, region)` that refreshes on its own
//! clock and sends each complete list to the control loop as [`Control::Discovered`]. A refresh
//! that fails anywhere sends nothing: the last known list stays in force, and the failure is
//! counted in `redis_session_exporter_discovery_errors_total{region,code}`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{check_label_name, InstanceConfig, KeyError, SourceKind};
use crate::credentials::{CredentialProvider, Credentials, ExposeSecret};
use crate::daemon::{Control, ControlSender};
use crate::das::{client, sign};
use crate::metrics::ProcessMetrics;
use crate::source::PollError;

/// R-KVStore's action and API version.
pub const ACTION: &str = "DescribeInstances";
pub const API_VERSION: &str = "2015-01-01";
/// The largest page the API serves.
pub const PAGE_SIZE: u32 = 50;
/// The API takes at most this many tag filters.
pub const MAX_TAGS: usize = 5;
/// `{region}` is replaced by each region of the block.
pub const DEFAULT_ENDPOINT: &str = "https://r-kvstore.{region}.aliyuncs.com";
/// Small enough for tests; production refreshes every few minutes.
pub const MIN_REFRESH: Duration = Duration::from_millis(100);
/// A runaway paging loop (a server that never says it is done) stops here: 100,000 instances.
pub const MAX_PAGES: u32 = 2_000;
/// Values of `architecture` the API knows.
pub const ARCHITECTURES: &[&str] = &["cluster", "standard", "rwsplit"];

/// Label names the inventory facts get on `redis_session_instance_info`.
pub const LABEL_NAME: &str = "instance_name";
pub const LABEL_REGION: &str = "region";
pub const LABEL_ARCHITECTURE: &str = "architecture";
pub const TAG_PREFIX: &str = "tag_";

/// `[[discovery]]`: one inventory query, run in each of its regions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    #[serde(default)]
    pub regions: Vec<String>,
    /// All must match (AND), as the API applies them.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// `InstanceStatus`; empty means any status.
    #[serde(default = "default_status")]
    pub status: String,
    /// Instance ids never to poll even when they match.
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    /// A URL, where `{region}` (if present) becomes each region.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
}

fn default_status() -> String {
    "Normal".into()
}

fn default_refresh() -> Duration {
    Duration::from_secs(600)
}

fn default_endpoint() -> String {
    DEFAULT_ENDPOINT.into()
}

impl DiscoveryConfig {
    /// Every problem of this block, keys prefixed with `prefix` (`discovery[0]`).
    pub fn validate(&self, prefix: &str) -> Vec<KeyError> {
        let mut errs = Vec::new();
        let mut err = |key: String, reason: String| errs.push(KeyError { key, reason });
        if self.regions.is_empty() {
            err(
                format!("{prefix}.regions"),
                "must list at least one region, e.g. [\"cn-hangzhou\"]".into(),
            );
        }
        let mut seen = HashSet::new();
        for (j, r) in self.regions.iter().enumerate() {
            let valid = !r.is_empty()
                && r.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid {
                err(
                    format!("{prefix}.regions[{j}]"),
                    format!("{r:?} is not a region id like \"cn-hangzhou\""),
                );
            } else if !seen.insert(r.as_str()) {
                err(
                    format!("{prefix}.regions[{j}]"),
                    format!("region {r:?} listed twice"),
                );
            }
        }
        if self.tags.len() > MAX_TAGS {
            err(
                format!("{prefix}.tags"),
                format!(
                    "{} tags given; DescribeInstances takes at most {MAX_TAGS}",
                    self.tags.len()
                ),
            );
        }
        for k in self.tags.keys() {
            if k.trim().is_empty() {
                err(
                    format!("{prefix}.tags"),
                    "a tag key must not be empty".into(),
                );
            }
        }
        if let Some(a) = &self.architecture {
            if !ARCHITECTURES.contains(&a.as_str()) {
                err(
                    format!("{prefix}.architecture"),
                    format!("{a:?} is not one of {}", ARCHITECTURES.join(", ")),
                );
            }
        }
        if self.instance_type.as_deref().is_some_and(str::is_empty) {
            err(
                format!("{prefix}.instance_type"),
                "must not be empty (leave it out to match every type)".into(),
            );
        }
        for (j, id) in self.exclude.iter().enumerate() {
            if id.trim().is_empty() {
                err(format!("{prefix}.exclude[{j}]"), "must not be empty".into());
            }
        }
        if self.refresh < MIN_REFRESH {
            err(
                format!("{prefix}.refresh"),
                format!(
                    "must be at least {}",
                    humantime::format_duration(MIN_REFRESH)
                ),
            );
        }
        let probe = endpoint_for(&self.endpoint, "cn-hangzhou");
        let placeholders_left = probe.contains('{') || probe.contains('}');
        match reqwest::Url::parse(&probe) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && !placeholders_left => {}
            _ => err(
                format!("{prefix}.endpoint"),
                format!(
                    "{:?} is not an http(s)://host[:port] URL (the only placeholder is {{region}})",
                    self.endpoint
                ),
            ),
        }
        errs
    }
}

/// The endpoint of `region`: the template with `{region}` replaced, no trailing slash.
pub fn endpoint_for(template: &str, region: &str) -> String {
    template
        .replace("{region}", region)
        .trim_end_matches('/')
        .to_owned()
}

/// The action's own parameters for one page (the signature's common ones are added by
/// [`signed_query`]). Tags are numbered from 1 in key order.
pub fn request_params(cfg: &DiscoveryConfig, region: &str, page: u32) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = vec![
        ("Action".into(), ACTION.into()),
        ("Version".into(), API_VERSION.into()),
        ("Format".into(), "JSON".into()),
        ("RegionId".into(), region.into()),
        ("PageNumber".into(), page.to_string()),
        ("PageSize".into(), PAGE_SIZE.to_string()),
    ];
    if !cfg.status.is_empty() {
        p.push(("InstanceStatus".into(), cfg.status.clone()));
    }
    if let Some(a) = &cfg.architecture {
        p.push(("ArchitectureType".into(), a.clone()));
    }
    if let Some(t) = &cfg.instance_type {
        p.push(("InstanceType".into(), t.clone()));
    }
    for (n, (k, v)) in cfg.tags.iter().enumerate() {
        p.push((format!("Tag.{}.Key", n + 1), k.clone()));
        p.push((format!("Tag.{}.Value", n + 1), v.clone()));
    }
    p
}

/// `params` plus the v1 signature's common parameters, signed for a POST.
pub fn signed_query(
    creds: &Credentials,
    params: &[(String, String)],
    now: SystemTime,
    nonce: &str,
) -> String {
    let timestamp = sign::format_timestamp(now);
    let mut all: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    all.extend([
        ("AccessKeyId", creds.access_key_id.as_str()),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureNonce", nonce),
        ("SignatureVersion", "1.0"),
        ("Timestamp", timestamp.as_str()),
    ]);
    if let Some(t) = &creds.security_token {
        all.push(("SecurityToken", t.expose_secret()));
    }
    sign::signed_query("POST", &all, creds.access_key_secret.expose_secret())
}

/// One instance as the inventory lists it (the fields the exporter uses; the rest is ignored).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct InventoryInstance {
    pub instance_id: String,
    pub instance_name: String,
    pub architecture_type: String,
    pub instance_status: String,
    pub instance_type: String,
    pub region_id: String,
    /// Absent when the API leaves tags out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
}

/// `{"Tag": [{"Key": …, "Value": …}]}`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tags {
    #[serde(rename = "Tag")]
    pub tag: Vec<Tag>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// One decoded page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub instances: Vec<InventoryInstance>,
    /// `TotalCount`, when the answer has one.
    pub total: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PageWire {
    instances: Option<InstancesWire>,
    #[serde(default)]
    total_count: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct InstancesWire {
    #[serde(rename = "KVStoreInstance", default)]
    list: Vec<InventoryInstance>,
}

/// Decodes a successful answer. An answer without `Instances` is an error answer (its `Code`
/// becomes the error code) or not a DescribeInstances answer at all.
pub fn decode_page(body: &[u8]) -> Result<Page, PollError> {
    let wire: PageWire = serde_json::from_slice(body)
        .map_err(|e| PollError::InvalidResponse(format!("not a DescribeInstances answer: {e}")))?;
    let Some(instances) = wire.instances else {
        return Err(match crate::das::wire::error_code(body) {
            Some((code, message)) => PollError::Api {
                code,
                message: crate::das::wire::truncate(&message, 300),
                retry_after: None,
            },
            None => PollError::InvalidResponse("no Instances in the answer".into()),
        });
    };
    let total = wire.total_count.and_then(|v| match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    });
    Ok(Page {
        instances: instances.list,
        total,
    })
}

/// The page to read after `page`, or `None` when every page is read: the page was short or
/// empty, or `seen` (instances so far) reached the `TotalCount` the server announced.
pub fn next_page(page: u32, on_page: usize, seen: usize, total: Option<u64>) -> Option<u32> {
    let done = on_page == 0
        || match total {
            Some(t) => seen as u64 >= t,
            None => on_page < PAGE_SIZE as usize,
        };
    (!done && page < MAX_PAGES).then_some(page + 1)
}

/// `tag_` + the key with every character outside `[a-zA-Z0-9_]` replaced by `_`.
pub fn tag_label(key: &str) -> String {
    let mut s = String::with_capacity(TAG_PREFIX.len() + key.len());
    s.push_str(TAG_PREFIX);
    s.extend(key.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    s
}

/// Keeps the instances of `region` that match every filter of `cfg` (the API applies them too;
/// checking again costs nothing and protects against a server that ignores one), minus
/// `exclude`, deduplicated (pages can overlap while the inventory changes), in id order.
pub fn select(
    cfg: &DiscoveryConfig,
    region: &str,
    found: &[InventoryInstance],
) -> Vec<InstanceConfig> {
    let exclude: HashSet<&str> = cfg.exclude.iter().map(String::as_str).collect();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for i in found {
        let mismatch = |want: Option<&str>, have: &str| {
            want.is_some_and(|w| !w.is_empty() && !have.is_empty() && !w.eq_ignore_ascii_case(have))
        };
        if i.instance_id.trim().is_empty()
            || exclude.contains(i.instance_id.as_str())
            || mismatch(Some(region), &i.region_id)
            || mismatch(Some(&cfg.status), &i.instance_status)
            || mismatch(cfg.architecture.as_deref(), &i.architecture_type)
            || mismatch(cfg.instance_type.as_deref(), &i.instance_type)
        {
            continue;
        }
        if let Some(tags) = &i.tags {
            let all = cfg
                .tags
                .iter()
                .all(|(k, v)| tags.tag.iter().any(|t| &t.key == k && &t.value == v));
            if !all {
                continue;
            }
        }
        if seen.insert(i.instance_id.clone()) {
            out.push(to_instance(i, region));
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// The inventory facts as labels of `redis_session_instance_info`. A tag whose sanitised name
/// collides with another's keeps the first in key order.
pub fn to_instance(i: &InventoryInstance, region: &str) -> InstanceConfig {
    let mut inst = InstanceConfig::new(i.instance_id.trim());
    inst.source = SourceKind::Das;
    let l = &mut inst.labels;
    let region = if i.region_id.is_empty() {
        region
    } else {
        &i.region_id
    };
    l.insert(LABEL_REGION.into(), region.into());
    if !i.instance_name.is_empty() {
        l.insert(LABEL_NAME.into(), i.instance_name.clone());
    }
    if !i.architecture_type.is_empty() {
        l.insert(LABEL_ARCHITECTURE.into(), i.architecture_type.clone());
    }
    let mut tags: Vec<&Tag> = i.tags.iter().flat_map(|t| &t.tag).collect();
    tags.sort_by(|a, b| a.key.cmp(&b.key));
    for t in tags {
        let name = tag_label(&t.key);
        // `tag_…` can never be reserved, but stay honest if the rules change.
        if check_label_name(&name).is_ok() {
            l.entry(name).or_insert_with(|| t.value.clone());
        }
    }
    inst
}

/// Which list a [`Control::Discovered`] message replaces: the block, the region, and the
/// generation of the discovery configuration (bumped on every reload that changes it), so a
/// late message from a task of the previous configuration is recognised and dropped.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SourceKey {
    pub generation: u64,
    pub block: usize,
    pub region: String,
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "discovery#{}[{}]/{}",
            self.generation, self.block, self.region
        )
    }
}

impl SourceKey {
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("discovery#")?;
        let (generation, rest) = rest.split_once('[')?;
        let (block, region) = rest.split_once("]/")?;
        Some(Self {
            generation: generation.parse().ok()?,
            block: block.parse().ok()?,
            region: region.to_owned(),
        })
    }
}

// ---- the shell ------------------------------------------------------------------------

/// Outcomes of one `(block, region)`, kept across reloads while the pair stays configured.
#[derive(Debug, Default, Clone)]
struct PairStats {
    /// Instances of the last successful refresh.
    instances: Option<usize>,
    last_success: Option<SystemTime>,
}

/// What every discovery task shares: the HTTP client, credentials, the metrics they feed.
pub struct Shared {
    http: reqwest::Client,
    credentials: Arc<dyn CredentialProvider>,
    timeout: Duration,
    max_body_bytes: u64,
    metrics: ProcessMetrics,
    stats: Mutex<BTreeMap<(usize, String), PairStats>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("credentials", &self.credentials.name())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// `timeout` and `max_body_bytes` apply per request, as for DAS (`[das]`).
    pub fn new(
        credentials: Arc<dyn CredentialProvider>,
        timeout: Duration,
        max_body_bytes: u64,
        metrics: ProcessMetrics,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!(
                "redis-session-exporter/",
                env!("CARGO_PKG_VERSION")
            ))
            .connect_timeout(timeout)
            .build()?;
        Ok(Self {
            http,
            credentials,
            timeout,
            max_body_bytes,
            metrics,
            stats: Mutex::new(BTreeMap::new()),
        })
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, BTreeMap<(usize, String), PairStats>> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets pairs no longer configured, so their region's series go away.
    fn retain(&self, blocks: &[DiscoveryConfig]) {
        let gone: Vec<String> = {
            let mut stats = self.stats();
            let before: BTreeSet<String> = stats.keys().map(|(_, r)| r.clone()).collect();
            stats.retain(|(b, r), _| {
                blocks
                    .get(*b)
                    .is_some_and(|d| d.regions.iter().any(|x| x == r))
            });
            let after: BTreeSet<String> = stats.keys().map(|(_, r)| r.clone()).collect();
            before.difference(&after).cloned().collect()
        };
        for region in gone {
            self.metrics.forget_region(&region);
        }
        self.publish();
    }

    /// Publishes the per-region gauges: instances summed over the blocks of a region, the
    /// newest success.
    fn publish(&self) {
        let mut by_region: BTreeMap<String, (u64, SystemTime)> = BTreeMap::new();
        for ((_, region), s) in self.stats().iter() {
            if let (Some(n), Some(at)) = (s.instances, s.last_success) {
                let r = by_region
                    .entry(region.clone())
                    .or_insert((0, SystemTime::UNIX_EPOCH));
                r.0 += n as u64;
                r.1 = r.1.max(at);
            }
        }
        for (region, (n, at)) in by_region {
            self.metrics.discovery_refreshed(&region, n, at);
        }
    }

    /// One request for one page, classified.
    async fn fetch_page(
        &self,
        cfg: &DiscoveryConfig,
        region: &str,
        page: u32,
    ) -> Result<Page, PollError> {
        let now = SystemTime::now();
        let creds = client::usable_credentials(self.credentials.as_ref(), now).await?;
        let query = signed_query(
            &creds,
            &request_params(cfg, region, page),
            now,
            &uuid::Uuid::new_v4().to_string(),
        );
        let url = format!("{}/?{query}", endpoint_for(&cfg.endpoint, region));
        let attempt = async {
            let resp = self
                .http
                .post(url)
                .send()
                .await
                .map_err(|e| client::transport_error(&e))?;
            let status = resp.status();
            let body = client::read_capped(resp, self.max_body_bytes).await?;
            if status.is_success() {
                return decode_page(&body);
            }
            Err(match crate::das::wire::error_code(&body) {
                Some((code, message)) => PollError::Api {
                    code,
                    message: crate::das::wire::truncate(&message, 300),
                    retry_after: None,
                },
                None => PollError::Http {
                    status: status.as_u16(),
                    detail: String::new(),
                },
            })
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(r) => r.map_err(|e| client::scrub(e, &creds)),
            Err(_) => Err(PollError::Timeout(self.timeout)),
        }
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
/// `refresh`, and sends its list to the control loop under a [`SourceKey`] of `generation`.
pub fn start(
    blocks: &[DiscoveryConfig],
    generation: u64,
    shared: Arc<Shared>,
    control: ControlSender,
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
                control.clone(),
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
    control: ControlSender,
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
                    s.last_success = Some(SystemTime::now());
                }
                tracing::debug!(region = %key.region, block = key.block, instances = n, "discovery refreshed");
                let msg = Control::Discovered {
                    key: key.to_string(),
                    instances,
                };
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = control.send(msg) => if r.is_err() { return },
                }
            }
            Err(e) => {
                let code = e.code().into_owned();
                tracing::warn!(region = %key.region, block = key.block, code = %code, error = %e,
                    "discovery refresh failed; keeping the last known instances");
                shared.stats().entry(pair.clone()).or_default();
                shared.metrics.discovery_failed(&key.region, &code);
            }
        }
        shared.publish();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(cfg.refresh) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(toml_text: &str) -> DiscoveryConfig {
        toml::from_str(toml_text).unwrap()
    }

    fn inst(id: &str, region: &str, tags: &[(&str, &str)]) -> InventoryInstance {
        InventoryInstance {
            instance_id: id.into(),
            instance_name: format!("name of {id}"),
            architecture_type: "standard".into(),
            instance_status: "Normal".into(),
            instance_type: "Redis".into(),
            region_id: region.into(),
            tags: Some(Tags {
                tag: tags
                    .iter()
                    .map(|(k, v)| Tag {
                        key: (*k).into(),
                        value: (*v).into(),
                    })
                    .collect(),
            }),
        }
    }

    #[test]
    fn defaults() {
        let b = block("regions = [\"cn-hangzhou\"]");
        assert_eq!(b.status, "Normal");
        assert_eq!(b.refresh, Duration::from_secs(600));
        assert_eq!(b.endpoint, DEFAULT_ENDPOINT);
        assert!(b.validate("discovery[0]").is_empty());
        assert_eq!(
            endpoint_for(&b.endpoint, "cn-beijing"),
            "https://r-kvstore.cn-beijing.aliyuncs.com"
        );
        assert_eq!(
            endpoint_for("http://127.0.0.1:9/", "x"),
            "http://127.0.0.1:9"
        );
    }

    #[test]
    fn validation_names_the_key() {
        let cases = [
            ("regions = []", "discovery[2].regions"),
            ("", "discovery[2].regions"),
            ("regions = [\"cn-hangzhou\", \"CN HZ\"]", "discovery[2].regions[1]"),
            ("regions = [\"a\", \"a\"]", "discovery[2].regions[1]"),
            (
                "regions = [\"a\"]\ntags = { a = \"1\", b = \"2\", c = \"3\", d = \"4\", e = \"5\", f = \"6\" }",
                "discovery[2].tags",
            ),
            ("regions = [\"a\"]\narchitecture = \"ring\"", "discovery[2].architecture"),
            ("regions = [\"a\"]\nrefresh = \"10ms\"", "discovery[2].refresh"),
            ("regions = [\"a\"]\nendpoint = \"ftp://x\"", "discovery[2].endpoint"),
            ("regions = [\"a\"]\nendpoint = \"https://{zone}.x\"", "discovery[2].endpoint"),
            ("regions = [\"a\"]\nexclude = [\"\"]", "discovery[2].exclude[0]"),
            ("regions = [\"a\"]\ninstance_type = \"\"", "discovery[2].instance_type"),
        ];
        for (text, key) in cases {
            let errs = block(text).validate("discovery[2]");
            assert!(
                errs.iter().any(|e| e.key == key),
                "{text:?}: expected {key}, got {errs:?}"
            );
        }
        let five =
            "regions = [\"a\"]\ntags = { a = \"1\", b = \"2\", c = \"3\", d = \"4\", e = \"5\" }";
        assert!(block(five).validate("d").is_empty());
    }

    #[test]
    fn parameters_of_a_page() {
        let b = block(
            "regions = [\"cn-hangzhou\"]\ntags = { team = \"core\", env = \"prod\" }\narchitecture = \"cluster\"\ninstance_type = \"Redis\"",
        );
        let p: BTreeMap<String, String> =
            request_params(&b, "cn-hangzhou", 3).into_iter().collect();
        let want: BTreeMap<String, String> = [
            ("Action", "DescribeInstances"),
            ("Version", "2015-01-01"),
            ("Format", "JSON"),
            ("RegionId", "cn-hangzhou"),
            ("PageNumber", "3"),
            ("PageSize", "50"),
            ("InstanceStatus", "Normal"),
            ("ArchitectureType", "cluster"),
            ("InstanceType", "Redis"),
            ("Tag.1.Key", "env"),
            ("Tag.1.Value", "prod"),
            ("Tag.2.Key", "team"),
            ("Tag.2.Value", "core"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(p, want);
        let any_status = block("regions = [\"a\"]\nstatus = \"\"");
        assert!(!request_params(&any_status, "a", 1)
            .iter()
            .any(|(k, _)| k == "InstanceStatus"));
    }

    #[test]
    fn signed_like_das_and_verifiable() {
        let creds = Credentials::new("STS.testid", "testsecret", Some("tok+en".into()));
        let b = block("regions = [\"cn-hangzhou\"]");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200);
        let q = signed_query(&creds, &request_params(&b, "cn-hangzhou", 1), t, "n-1");
        let (unsigned, sig) = q.rsplit_once("&Signature=").unwrap();
        let params: Vec<(String, String)> = unsigned
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                let dec = |s: &str| {
                    percent_encoding::percent_decode_str(s)
                        .decode_utf8()
                        .unwrap()
                        .into_owned()
                };
                (dec(k), dec(v))
            })
            .collect();
        assert!(params.contains(&("SecurityToken".into(), "tok+en".into())));
        assert!(params.contains(&("Timestamp".into(), "2024-01-01T00:00:00Z".into())));
        let expect = sign::signature(
            "testsecret",
            &sign::string_to_sign("POST", &sign::canonical_query(&params)),
        );
        assert_eq!(sig, sign::percent_encode(&expect));
    }

    #[test]
    fn decoding_pages_and_errors() {
        let body = br#"{"RequestId":"x","PageNumber":1,"PageSize":50,"TotalCount":"2","Instances":{"KVStoreInstance":[
            {"InstanceId":"r-1","InstanceName":"one","ArchitectureType":"cluster","InstanceStatus":"Normal","RegionId":"cn-hangzhou","Capacity":1024,
             "Tags":{"Tag":[{"Key":"env","Value":"prod"}]}},
            {"InstanceId":"r-2","Unknown":{"deep":[1,2]}}]}}"#;
        let p = decode_page(body).unwrap();
        assert_eq!(p.total, Some(2));
        assert_eq!(p.instances.len(), 2);
        assert_eq!(p.instances[0].instance_name, "one");
        assert_eq!(p.instances[0].tags.as_ref().unwrap().tag[0].value, "prod");
        assert_eq!(p.instances[1].tags, None);

        let e =
            decode_page(br#"{"RequestId":"x","Code":"Forbidden.RAM","Message":"no"}"#).unwrap_err();
        assert_eq!(e.code(), "Forbidden.RAM");
        assert_eq!(
            decode_page(b"{\"Instances\":").unwrap_err().code(),
            "invalid_response"
        );
        assert_eq!(decode_page(b"{}").unwrap_err().code(), "invalid_response");
        let empty = decode_page(br#"{"Instances":{},"TotalCount":0}"#).unwrap();
        assert!(empty.instances.is_empty());
    }

    #[test]
    fn paging_reads_every_page_and_stops() {
        // 120 instances: 50 + 50 + 20.
        assert_eq!(next_page(1, 50, 50, Some(120)), Some(2));
        assert_eq!(next_page(2, 50, 100, Some(120)), Some(3));
        assert_eq!(next_page(3, 20, 120, Some(120)), None);
        // Exactly 100: the second full page is the last.
        assert_eq!(next_page(2, 50, 100, Some(100)), None);
        // No TotalCount: a short page ends it.
        assert_eq!(next_page(1, 50, 50, None), Some(2));
        assert_eq!(next_page(2, 49, 99, None), None);
        // An empty page always ends it, even when TotalCount promised more.
        assert_eq!(next_page(4, 0, 150, Some(500)), None);
        assert_eq!(next_page(MAX_PAGES, 50, 1, Some(u64::MAX)), None);
    }

    #[test]
    fn selection_and_labels() {
        let b = block(
            "regions = [\"cn-hangzhou\"]\ntags = { env = \"prod\" }\nexclude = [\"r-excluded\"]",
        );
        let mut stopped = inst("r-stopped", "cn-hangzhou", &[("env", "prod")]);
        stopped.instance_status = "Flushing".into();
        let mut untagged = inst("r-notags", "cn-hangzhou", &[]);
        untagged.tags = None;
        let found = vec![
            inst(
                "r-b",
                "cn-hangzhou",
                &[("env", "prod"), ("team/owner", "core"), ("team.owner", "x")],
            ),
            inst("r-a", "cn-hangzhou", &[("env", "prod")]),
            inst("r-a", "cn-hangzhou", &[("env", "prod")]),
            inst("r-staging", "cn-hangzhou", &[("env", "staging")]),
            inst("r-other-region", "cn-beijing", &[("env", "prod")]),
            inst("r-excluded", "cn-hangzhou", &[("env", "prod")]),
            stopped,
            untagged,
        ];
        let got = select(&b, "cn-hangzhou", &found);
        let ids: Vec<&str> = got.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, vec!["r-a", "r-b", "r-notags"]);
        let l = &got[1].labels;
        assert_eq!(l["instance_name"], "name of r-b");
        assert_eq!(l["region"], "cn-hangzhou");
        assert_eq!(l["architecture"], "standard");
        assert_eq!(l["tag_env"], "prod");
        // `team.owner` and `team/owner` both sanitise to tag_team_owner: the first key wins.
        assert_eq!(l["tag_team_owner"], "x");
        for name in l.keys() {
            let ok = name == "region" || check_label_name(name).is_ok();
            assert!(ok, "{name} is not a usable label name");
        }
    }

    #[test]
    fn tag_labels_are_valid_names() {
        for key in ["env", "a-b.c/d:e", "环境", "", "1x", "__x", "acs:rm:rgId"] {
            let name = tag_label(key);
            assert!(check_label_name(&name).is_ok(), "{key:?} -> {name:?}");
        }
        assert_eq!(tag_label("k8s.io/app-name"), "tag_k8s_io_app_name");
    }

    #[test]
    fn source_keys_round_trip() {
        let k = SourceKey {
            generation: 7,
            block: 2,
            region: "cn-hangzhou".into(),
        };
        assert_eq!(k.to_string(), "discovery#7[2]/cn-hangzhou");
        assert_eq!(SourceKey::parse(&k.to_string()), Some(k));
        assert_eq!(SourceKey::parse("static"), None);
        assert_eq!(SourceKey::parse("discovery#x[1]/a"), None);
    }
}
