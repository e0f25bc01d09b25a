//! The process-wide series as typed prometheus-client metrics, updated where the events happen.
//!
//! Every module that has something to count (the scheduler, discovery, the credential providers,
//! the daemon's reload and sharding, the Alibaba Cloud client) gets a clone of [`ProcessMetrics`]
//! and calls one method per event; [`ProcessMetrics::register`] puts the metrics in the registry
//! that `exposition` encodes. Below everything but `config` and `clock` in the layers, so any
//! module may use it.
//!
//! Each method also moves [`ProcessMetrics::version`]: a cached /metrics body is current only while
//! that number (and the store's generation) stays the same, so no event waits for a poll to show.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Metric, Registry};

use crate::clock::unix_seconds;

/// A gauge holding seconds (timestamps, durations).
type SecondsGauge = Gauge<f64, AtomicU64>;

/// The empty label set, for a family of one series that may be absent.
type NoLabels = [(&'static str, &'static str); 0];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    instance_id: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceCodeLabels {
    instance_id: String,
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionLabels {
    region: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionCodeLabels {
    region: String,
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiCodeLabels {
    api: String,
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// Distinct error codes one owner (an instance, a region) gets a series for; the rest are
/// counted under `code="other"`. Codes come from the API verbatim (sanitised), so a server that
/// invents a new one per answer must not grow the series without end.
pub const MAX_CODES_PER_OWNER: usize = 32;

/// The code past [`MAX_CODES_PER_OWNER`] (the same word the capped breakdowns use).
const OTHER_CODE: &str = "other";

/// A counter family keyed by an owner (instance, region) and an error code, which remembers the
/// codes each owner has, so that forgetting the owner removes all of its series. At most
/// [`MAX_CODES_PER_OWNER`] codes per owner, plus `other`.
#[derive(Debug)]
struct CodeCounters<L> {
    family: Family<L, Counter>,
    codes: Mutex<HashMap<String, BTreeSet<String>>>,
}

impl<L> Default for CodeCounters<L>
where
    L: Clone + std::hash::Hash + Eq,
{
    fn default() -> Self {
        Self {
            family: Family::default(),
            codes: Mutex::default(),
        }
    }
}

impl<L> CodeCounters<L>
where
    L: Clone + std::hash::Hash + Eq,
{
    fn inc(&self, owner: &str, code: &str, labels: impl FnOnce(&str) -> L) {
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        let set = codes.entry(owner.to_owned()).or_default();
        let code = if set.contains(code) {
            code
        } else if set.iter().filter(|c| *c != OTHER_CODE).count() < MAX_CODES_PER_OWNER
            && code != OTHER_CODE
        {
            set.insert(code.to_owned());
            code
        } else {
            set.insert(OTHER_CODE.to_owned());
            OTHER_CODE
        };
        self.family.get_or_create(&labels(code)).inc();
    }

    fn forget(&self, owner: &str, labels: impl Fn(&str) -> L) {
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        for code in codes.remove(owner).unwrap_or_default() {
            self.family.remove(&labels(&code));
        }
    }
}

#[derive(Debug)]
struct Inner {
    version: AtomicU64,
    polls: Family<InstanceLabels, Counter>,
    poll_errors: CodeCounters<InstanceCodeLabels>,
    skipped_polls: Counter,
    credentials_expiry: Family<ProviderLabels, SecondsGauge>,
    credential_errors: Family<ProviderLabels, Counter>,
    reload_successful: Gauge,
    reload_timestamp: SecondsGauge,
    discovery_instances: Family<RegionLabels, Gauge>,
    discovery_errors: CodeCounters<RegionCodeLabels>,
    discovery_last_success: Family<RegionLabels, SecondsGauge>,
    /// One series (no labels) once attribution is on; none before, so the gauge is absent.
    attribution_pods: Family<NoLabels, Gauge>,
    attribution_errors: Family<CodeLabels, Counter>,
    shard_ordinal: Gauge,
    total_shards: Gauge,
    api_requests: CodeCounters<ApiCodeLabels>,
    build_version: &'static str,
}

/// Handles to every process-wide series; cheap to clone (all clones update the same metrics).
#[derive(Debug, Clone)]
pub struct ProcessMetrics {
    inner: Arc<Inner>,
}

impl Default for ProcessMetrics {
    fn default() -> Self {
        Self::new(env!("CARGO_PKG_VERSION"))
    }
}

impl ProcessMetrics {
    /// Metrics of a process whose `redis_session_exporter_build_info` says `version`.
    pub fn new(version: &'static str) -> Self {
        let inner = Inner {
            version: AtomicU64::new(0),
            polls: Family::default(),
            poll_errors: CodeCounters::default(),
            skipped_polls: Counter::default(),
            credentials_expiry: Family::default(),
            credential_errors: Family::default(),
            reload_successful: Gauge::default(),
            reload_timestamp: SecondsGauge::default(),
            discovery_instances: Family::default(),
            discovery_errors: CodeCounters::default(),
            discovery_last_success: Family::default(),
            attribution_pods: Family::default(),
            attribution_errors: Family::default(),
            shard_ordinal: Gauge::default(),
            total_shards: Gauge::default(),
            api_requests: CodeCounters::default(),
            build_version: version,
        };
        // Until a configuration is loaded there is one shard of one.
        inner.total_shards.set(1);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Changes so far, as one number that only grows.
    pub fn version(&self) -> u64 {
        self.inner.version.load(Ordering::Acquire)
    }

    fn changed(&self) {
        // Release pairs with the Acquire in `version`: whoever sees the new number sees the
        // update it stands for.
        self.inner.version.fetch_add(1, Ordering::Release);
    }

    /// One finished poll of `instance_id`: `Ok(())`, or the failed poll's bounded error code.
    pub fn poll_finished(&self, instance_id: &str, result: Result<(), &str>) {
        let i = &self.inner;
        i.polls
            .get_or_create(&InstanceLabels {
                instance_id: instance_id.to_owned(),
            })
            .inc();
        if let Err(code) = result {
            i.poll_errors
                .inc(instance_id, code, |code| InstanceCodeLabels {
                    instance_id: instance_id.to_owned(),
                    code: code.to_owned(),
                });
        }
        self.changed();
    }

    /// An instance no longer polled: its poll counters disappear from the next scrape.
    pub fn forget_instance(&self, instance_id: &str) {
        let i = &self.inner;
        i.polls.remove(&InstanceLabels {
            instance_id: instance_id.to_owned(),
        });
        i.poll_errors
            .forget(instance_id, |code| InstanceCodeLabels {
                instance_id: instance_id.to_owned(),
                code: code.to_owned(),
            });
        self.changed();
    }

    /// Scheduled polls skipped because the previous poll of the same instance still ran.
    pub fn polls_skipped(&self, n: u64) {
        if n > 0 {
            self.inner.skipped_polls.inc_by(n);
            self.changed();
        }
    }

    /// A credential provider in use: its error counter shows (at 0) from now on.
    pub fn credential_provider(&self, provider: &str) {
        self.inner
            .credential_errors
            .get_or_create_owned(&ProviderLabels {
                provider: provider.to_owned(),
            });
        self.changed();
    }

    /// Fresh credentials from `provider`, expiring at `expiry` (`None`: long-lived keys, no gauge).
    pub fn credentials_obtained(&self, provider: &str, expiry: Option<SystemTime>) {
        let labels = ProviderLabels {
            provider: provider.to_owned(),
        };
        match expiry {
            Some(t) => {
                self.inner
                    .credentials_expiry
                    .get_or_create(&labels)
                    .set(unix_seconds(t));
            }
            None => {
                self.inner.credentials_expiry.remove(&labels);
            }
        }
        self.inner.credential_errors.get_or_create_owned(&labels);
        self.changed();
    }

    /// A failure to obtain or refresh credentials from `provider`.
    pub fn credential_error(&self, provider: &str) {
        self.inner
            .credential_errors
            .get_or_create(&ProviderLabels {
                provider: provider.to_owned(),
            })
            .inc();
        self.changed();
    }

    /// A provider no longer in use: its series disappear from the next scrape.
    pub fn forget_credential_provider(&self, provider: &str) {
        let labels = ProviderLabels {
            provider: provider.to_owned(),
        };
        self.inner.credentials_expiry.remove(&labels);
        self.inner.credential_errors.remove(&labels);
        self.changed();
    }

    /// A configuration (re)load finished at `at`: `ok` or rejected.
    pub fn config_loaded(&self, ok: bool, at: SystemTime) {
        let i = &self.inner;
        i.reload_successful.set(i64::from(ok));
        if ok {
            i.reload_timestamp.set(unix_seconds(at));
        }
        self.changed();
    }

    /// The shard this replica polls.
    pub fn sharding(&self, shard: u32, total_shards: u32) {
        self.inner.shard_ordinal.set(i64::from(shard));
        self.inner.total_shards.set(i64::from(total_shards));
        self.changed();
    }

    /// A successful discovery refresh of `region` found `instances`, at `at`.
    pub fn discovery_refreshed(&self, region: &str, instances: u64, at: SystemTime) {
        let labels = RegionLabels {
            region: region.to_owned(),
        };
        let i = &self.inner;
        i.discovery_instances
            .get_or_create(&labels)
            .set(i64::try_from(instances).unwrap_or(i64::MAX));
        i.discovery_last_success
            .get_or_create(&labels)
            .set(unix_seconds(at));
        self.changed();
    }

    /// A failed discovery refresh of `region`, by bounded error code. The region's last-success
    /// gauge shows (at 0) from the first refresh on, successful or not.
    pub fn discovery_failed(&self, region: &str, code: &str) {
        let i = &self.inner;
        i.discovery_errors
            .inc(region, code, |code| RegionCodeLabels {
                region: region.to_owned(),
                code: code.to_owned(),
            });
        i.discovery_last_success.get_or_create_owned(&RegionLabels {
            region: region.to_owned(),
        });
        self.changed();
    }

    /// A region no longer discovered: its series disappear from the next scrape.
    pub fn forget_region(&self, region: &str) {
        let labels = RegionLabels {
            region: region.to_owned(),
        };
        let i = &self.inner;
        i.discovery_instances.remove(&labels);
        i.discovery_last_success.remove(&labels);
        i.discovery_errors.forget(region, |code| RegionCodeLabels {
            region: region.to_owned(),
            code: code.to_owned(),
        });
        self.changed();
    }

    /// Pod IPs attribution knows now; the gauge shows from the first call on.
    pub fn attribution_pods(&self, n: u64) {
        let family = &self.inner.attribution_pods;
        let new = family.get(&[]).is_none();
        let g = family.get_or_create_owned(&[]);
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        // Called every second: only a change may invalidate the cached bodies.
        if new || g.get() != n {
            g.set(n);
            self.changed();
        }
    }

    /// A failed Kubernetes list/watch call of attribution, by bounded code.
    pub fn attribution_error(&self, code: &str) {
        self.inner
            .attribution_errors
            .get_or_create(&CodeLabels {
                code: code.to_owned(),
            })
            .inc();
        self.changed();
    }

    /// One HTTP request to a cloud API (`GetRedisAllSession`, `DescribeInstances`,
    /// `AssumeRoleWithOIDC`, `metadata`), retries included: `code` is `ok` or the request's
    /// error code. `api` is one of a fixed set; the codes come from the API's answers, so they
    /// are capped per `api` like the poll error codes.
    pub fn api_request(&self, api: &str, code: &str) {
        let labels = |code: &str| ApiCodeLabels {
            api: api.to_owned(),
            code: code.to_owned(),
        };
        if code == "ok" {
            // Not one of the error codes: never counted as `other`, whatever came before.
            self.inner
                .api_requests
                .family
                .get_or_create(&labels(code))
                .inc();
        } else {
            self.inner.api_requests.inc(api, code, labels);
        }
        self.changed();
    }

    /// Registers every process-wide family in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let i = &self.inner;
        register(
            registry,
            "redis_session_exporter_polls",
            "Polls of the instance, successful or not (retries inside a poll not counted).",
            i.polls.clone(),
        );
        register(
            registry,
            "redis_session_exporter_poll_errors",
            "Failed polls of the instance by error code.",
            i.poll_errors.family.clone(),
        );
        register(
            registry,
            "redis_session_exporter_credentials_expiry_timestamp_seconds",
            "When the current short-lived credentials expire (absent for long-lived keys).",
            i.credentials_expiry.clone(),
        );
        register(
            registry,
            "redis_session_exporter_credential_errors",
            "Failures to obtain or refresh credentials, by provider.",
            i.credential_errors.clone(),
        );
        register(
            registry,
            "redis_session_exporter_config_last_reload_successful",
            "1 if the last configuration reload succeeded, else 0.",
            i.reload_successful.clone(),
        );
        register(
            registry,
            "redis_session_exporter_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration (re)load.",
            i.reload_timestamp.clone(),
        );
        register(
            registry,
            "redis_session_exporter_discovery_instances",
            "Instances found by the last successful discovery refresh, per region.",
            i.discovery_instances.clone(),
        );
        register(
            registry,
            "redis_session_exporter_discovery_errors",
            "Failed discovery refreshes, per region and error code.",
            i.discovery_errors.family.clone(),
        );
        register(
            registry,
            "redis_session_exporter_discovery_last_success_timestamp_seconds",
            "Unix time of the last successful discovery refresh, per region.",
            i.discovery_last_success.clone(),
        );
        register(
            registry,
            "redis_session_exporter_attribution_pods",
            "Pod IPs attribution currently knows (live pods, and deleted ones within 5 minutes).",
            i.attribution_pods.clone(),
        );
        register(
            registry,
            "redis_session_exporter_attribution_errors",
            "Failed Kubernetes list/watch calls of attribution, by code.",
            i.attribution_errors.clone(),
        );
        register(
            registry,
            "redis_session_exporter_shard_ordinal",
            "This replica's shard number.",
            i.shard_ordinal.clone(),
        );
        register(
            registry,
            "redis_session_exporter_total_shards",
            "Number of shards the fleet is split into.",
            i.total_shards.clone(),
        );
        register(
            registry,
            "redis_session_exporter_api_requests",
            "HTTP requests to the cloud's APIs, retries included, by API and outcome code.",
            i.api_requests.family.clone(),
        );
        register(
            registry,
            "redis_session_exporter_skipped_polls",
            "Scheduled polls skipped because the previous poll of the same instance was still running.",
            i.skipped_polls.clone(),
        );
        // An OpenMetrics `info` family: `…_build_info{version} 1` in both formats.
        register(
            registry,
            "redis_session_exporter_build",
            "Always 1; the exporter's version.",
            Info::new(VersionLabels {
                version: i.build_version,
            }),
        );
    }
}

/// `Registry::register` appends a period to the help text; ours end with one already.
fn register(registry: &mut Registry, name: &str, help: &str, metric: impl Metric) {
    registry.register(name, help.strip_suffix('.').unwrap_or(help), metric);
}
