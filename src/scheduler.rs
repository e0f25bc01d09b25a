//! Drives the polls: one task per instance on a phase-shifted grid, a shared throttle, and the
//! bookkeeping that turns each outcome into a published [`InstanceEntry`].
//!
//! Each instance gets a stable phase inside the interval (a hash of its id) plus a little random
//! jitter, so a thousand instances spread over the interval instead of firing together, and
//! several exporters (or restarts) do not align. Instances are polled once right after start
//! (the throttle spreads those), then on their grid. A poll that runs past its next slot makes
//! the scheduler skip that slot and count it, never stack polls of one instance.
//!
//! [`Scheduler::apply`] diffs a new configuration against the running one, which is how reload
//! works: instances that stay keep their task and counters.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::attribution::Attribution;
use crate::config::{Config, InstanceConfig};
use crate::metrics::ProcessMetrics;
use crate::snapshot::{Caps, Limits, Snapshot};
use crate::source::{PollContext, PollError, Source, Throttle};
use crate::store::{InstanceEntry, InstanceSeries, Status, Store};

/// What every instance task reads at the start of each round (swapped whole on reload).
#[derive(Debug)]
pub struct Settings {
    pub interval: Duration,
    pub timeout: Duration,
    pub limits: Limits,
    pub throttle: Arc<Throttle>,
    /// Names the clients of every poll; `None` when attribution is off.
    pub attribution: Option<Arc<Attribution>>,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            interval: cfg.poll.interval,
            timeout: cfg.das.timeout,
            limits: cfg.limits,
            throttle: Arc::new(Throttle::new(
                cfg.poll.concurrency,
                cfg.poll.max_requests_per_second,
            )),
            attribution: None,
        }
    }

    /// Attribution as started (it is bound at start: a reload keeps it).
    fn attributing(mut self, attribution: &Option<(Arc<Attribution>, u64)>) -> Self {
        if let Some((a, idle_threshold)) = attribution {
            self.attribution = Some(a.clone());
            self.limits.client_idle_threshold = Some(*idle_threshold);
        }
        self
    }
}

/// Last outcome of one instance; survives reloads that keep the instance (its counters live in
/// [`ProcessMetrics`], keyed by instance id, and survive too).
#[derive(Debug, Default)]
pub struct InstanceState {
    pub last_success_unix: Option<f64>,
    pub snapshot_timestamp_unix: Option<f64>,
    pub last_duration_seconds: Option<f64>,
    /// The connection limit the source reported at the last successful poll.
    pub reported_max_connections: Option<u64>,
    /// The code of the last failure while the instance is failing; `None` while healthy.
    failing_with: Option<String>,
    polled: bool,
}

struct Task {
    config: InstanceConfig,
    state: Arc<Mutex<InstanceState>>,
    /// False once the instance is removed. The task checks it under this lock before publishing,
    /// so a poll finishing on another thread while the instance is removed cannot bring its
    /// series back (`abort` only takes effect at the task's next await).
    live: Arc<Mutex<bool>>,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// Owns the instance tasks.
pub struct Scheduler {
    source: Arc<dyn Source>,
    store: Arc<Store>,
    metrics: ProcessMetrics,
    settings: Arc<ArcSwap<Settings>>,
    /// The current interval; tasks sleeping on a slot planned with an older one wake and re-plan.
    interval: watch::Sender<Duration>,
    tasks: HashMap<String, Task>,
    shutdown: CancellationToken,
    /// Reference point of every instance's grid.
    epoch: Instant,
    /// Attribution and its idle threshold in seconds, when on.
    attribution: Option<(Arc<Attribution>, u64)>,
}

impl Scheduler {
    pub fn new(
        source: Arc<dyn Source>,
        store: Arc<Store>,
        metrics: ProcessMetrics,
        cfg: &Config,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            source,
            store,
            metrics,
            settings: Arc::new(ArcSwap::from_pointee(Settings::from_config(cfg))),
            interval: watch::Sender::new(cfg.poll.interval),
            tasks: HashMap::new(),
            shutdown,
            epoch: Instant::now(),
            attribution: None,
        }
    }

    /// Names the clients of every poll with `attribution` (sessions idle at least
    /// `idle_threshold` count as long idle). Call before the first [`Scheduler::apply`].
    pub fn with_attribution(
        mut self,
        attribution: Arc<Attribution>,
        idle_threshold: Duration,
    ) -> Self {
        // Tasks start in `apply`, which builds their settings with it.
        self.attribution = Some((attribution, idle_threshold.as_secs()));
        self
    }

    /// Brings the running set in line with `cfg`: new instances start, removed ones stop and
    /// vanish from /metrics, changed ones restart with their counters kept.
    pub fn apply(&mut self, cfg: &Config) {
        let old = self.settings.load();
        let mut next = Settings::from_config(cfg).attributing(&self.attribution);
        // One throttle for the process, changed in place: polls already waiting for a slot
        // (holding the old settings) must see new limits too. It keeps its rate history when the
        // rate is unchanged.
        old.throttle
            .reconfigure(cfg.poll.concurrency, cfg.poll.max_requests_per_second);
        next.throttle = old.throttle.clone();
        self.settings.store(Arc::new(next));
        self.interval.send_if_modified(|i| {
            let changed = *i != cfg.poll.interval;
            *i = cfg.poll.interval;
            changed
        });

        let wanted: HashMap<&str, &InstanceConfig> =
            cfg.instances.iter().map(|i| (i.id.as_str(), i)).collect();
        let gone: Vec<String> = self
            .tasks
            .keys()
            .filter(|id| !wanted.contains_key(id.as_str()))
            .cloned()
            .collect();
        // Stopped first, each under its `live` lock so no late publish brings it back; then
        // removed from the store together (one copy of its map, however many go).
        let mut stopped = Vec::with_capacity(gone.len());
        for id in &gone {
            if let Some(t) = self.tasks.remove(id) {
                t.cancel.cancel();
                t.handle.abort();
                *t.live.lock().unwrap_or_else(|p| p.into_inner()) = false;
                self.metrics.forget_instance(id);
                stopped.push(id.as_str());
            }
            tracing::info!(instance_id = %id, "instance removed");
        }
        self.store.remove_all(&stopped);
        // New instances are published as pending together, before their tasks start (a task's
        // first poll must not be overwritten by its pending entry).
        self.store.publish_all(
            cfg.instances
                .iter()
                .filter(|i| !self.tasks.contains_key(&i.id))
                .map(|i| InstanceEntry::pending(&i.id)),
        );
        for inst in &cfg.instances {
            let state = match self.tasks.get(&inst.id) {
                Some(t) if t.config == *inst => continue,
                Some(_) => {
                    let t = self.tasks.remove(&inst.id).expect("present");
                    t.cancel.cancel();
                    t.handle.abort();
                    tracing::info!(instance_id = %inst.id, "instance settings changed");
                    t.state
                }
                None => {
                    tracing::info!(instance_id = %inst.id, "instance added");
                    Arc::default()
                }
            };
            let cancel = self.shutdown.child_token();
            let live = Arc::new(Mutex::new(true));
            let handle = tokio::spawn(run_instance(
                inst.clone(),
                self.source.clone(),
                self.store.clone(),
                Shared {
                    metrics: self.metrics.clone(),
                    settings: self.settings.clone(),
                    interval: self.interval.subscribe(),
                    state: state.clone(),
                    live: live.clone(),
                },
                cancel.clone(),
                self.epoch,
            ));
            self.tasks.insert(
                inst.id.clone(),
                Task {
                    config: inst.clone(),
                    state,
                    live,
                    cancel,
                    handle,
                },
            );
        }
    }

    /// Number of instances being polled.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Stops every task and waits for them.
    pub async fn stop(self) {
        for t in self.tasks.values() {
            t.cancel.cancel();
        }
        for (_, t) in self.tasks {
            let _ = t.handle.await;
        }
    }
}

/// A stable offset in `[0, interval)` from the instance id (FNV-1a of what `str::hash` writes,
/// so it is the same in every process and version).
pub fn phase(id: &str, interval: Duration) -> Duration {
    let mut h = fnv::FnvHasher::default();
    id.hash(&mut h);
    interval.mul_f64((h.finish() % 10_000) as f64 / 10_000.0)
}

/// The first grid point strictly after `after`, and how many grid points were passed over
/// between `prev` (the slot just used) and it.
fn next_slot(
    epoch: Instant,
    phase: Duration,
    interval: Duration,
    prev: Instant,
    after: Instant,
) -> (Instant, u64) {
    let base = epoch + phase;
    let next = if after < base {
        base
    } else {
        let k = (after - base).as_nanos() / interval.as_nanos().max(1) + 1;
        base + interval.mul_f64(k as f64)
    };
    // Ceiling division: `prev` may carry jitter, so it sits a little after its grid point.
    let span = next.saturating_duration_since(prev).as_nanos();
    let slots_between = span.div_ceil(interval.as_nanos().max(1));
    (next, (slots_between as u64).saturating_sub(1))
}

/// The slot after a poll that was due at `prev` and ended at `now`: the next grid point, but at
/// least half an interval after `prev`, so the poll right after start (off the grid) is not
/// followed at once by a grid slot that happens to be near: "once at start, then every interval".
fn plan_after_poll(
    epoch: Instant,
    phase: Duration,
    interval: Duration,
    prev: Instant,
    now: Instant,
) -> (Instant, u64) {
    let floor = prev + interval / 2;
    // Measuring skips from the floor leaves out the grid point deliberately passed over.
    next_slot(epoch, phase, interval, floor, now.max(floor))
}

fn unix_now() -> f64 {
    crate::clock::unix_seconds(SystemTime::now())
}

/// What an instance task shares with the scheduler.
struct Shared {
    metrics: ProcessMetrics,
    settings: Arc<ArcSwap<Settings>>,
    interval: watch::Receiver<Duration>,
    state: Arc<Mutex<InstanceState>>,
    live: Arc<Mutex<bool>>,
}

async fn run_instance(
    inst: InstanceConfig,
    source: Arc<dyn Source>,
    store: Arc<Store>,
    mut shared: Shared,
    cancel: CancellationToken,
    epoch: Instant,
) {
    let mut slot = Instant::now();
    let mut first = true;
    // Which values of each capped breakdown hold a series: sticky from poll to poll.
    let mut caps = Caps::default();
    loop {
        shared.interval.borrow_and_update();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(slot) => break,
                changed = shared.interval.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // A reload changed the interval: the slot was planned on the old grid (maybe
                    // an hour away), so re-plan on the new one from now.
                    let interval = *shared.interval.borrow_and_update();
                    let now = Instant::now();
                    slot = next_slot(epoch, phase(&inst.id, interval), interval, now, now).0;
                }
            }
        }
        let s = shared.settings.load_full();
        let ctx = PollContext {
            throttle: s.throttle.clone(),
            budget: s.interval,
            timeout: s.timeout,
            limits: s.limits,
        };
        let started = Instant::now();
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = source.poll(&inst, &ctx) => r,
        };
        let took = started.elapsed();
        let result = result.map(|mut snap| {
            snap.apply_caps(&s.limits, &mut caps, s.attribution.as_deref());
            snap
        });
        let entry = record(&inst, &shared.state, result, took);
        {
            let live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
            if !*live {
                return;
            }
            // Under the same lock as the publish: a removed instance's counters stay removed.
            let result = match &entry.status {
                Status::Down { code, .. } => Err(code.as_str()),
                _ => Ok(()),
            };
            shared.metrics.poll_finished(&inst.id, result);
            store.publish(entry);
        }

        // Plan on the interval in force now: a reload during the poll already applies.
        let interval = shared.settings.load().interval;
        let (next, mut skipped) = plan_after_poll(
            epoch,
            phase(&inst.id, interval),
            interval,
            slot,
            Instant::now(),
        );
        if interval != s.interval {
            // The old slot is on another grid: counting its distance in new slots means nothing.
            skipped = 0;
        }
        // The start-up poll stands for the first interval: the next one is the grid point of the
        // following interval, else every instance whose phase falls after its start-up poll is
        // polled twice at once and, at fleet size, the queue behind the rate limit spills over
        // into the following intervals (measured by scripts/bench-fleet.sh).
        let next = if first {
            first = false;
            next.max(
                next_slot(
                    epoch,
                    phase(&inst.id, s.interval),
                    s.interval,
                    slot,
                    epoch + s.interval,
                )
                .0,
            )
        } else {
            next
        };
        if skipped > 0 {
            shared.metrics.polls_skipped(skipped);
            tracing::warn!(instance_id = %inst.id, skipped, took = ?took, "poll outlasted its interval; skipped rounds");
        }
        // Up to 1% of the interval (at most 1 s) of random jitter keeps replicas from aligning.
        let jitter = interval
            .mul_f64(0.01)
            .min(Duration::from_secs(1))
            .mul_f64(rand::random::<f64>());
        slot = next + jitter;
    }
}

/// Folds one outcome into the instance's state, logs state changes (not every failure), and
/// builds the entry to publish.
fn record(
    inst: &InstanceConfig,
    state: &Mutex<InstanceState>,
    result: Result<Snapshot, PollError>,
    took: Duration,
) -> InstanceEntry {
    let now = unix_now();
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    st.polled = true;
    st.last_duration_seconds = Some(took.as_secs_f64());
    let (snapshot, status) = match result {
        Ok(snap) => {
            st.last_success_unix = Some(now);
            st.snapshot_timestamp_unix = snap.timestamp_ms.map(|ms| ms as f64 / 1000.0);
            st.reported_max_connections = snap.max_connections;
            if let Some(code) = st.failing_with.take() {
                tracing::info!(instance_id = %inst.id, previous_code = %code, "instance recovered");
            }
            let status = Status::Up {
                sessions: snap.sessions,
            };
            (Some(snap), status)
        }
        Err(e) => {
            let code = e.code().into_owned();
            if st.failing_with.as_deref() != Some(code.as_str()) {
                tracing::warn!(instance_id = %inst.id, code = %code, error = %e, "poll failing");
                st.failing_with = Some(code.clone());
            } else {
                tracing::debug!(instance_id = %inst.id, code = %code, error = %e, "poll still failing");
            }
            let reason = e.to_string();
            (None, Status::Down { code, reason })
        }
    };
    let mut info_labels = inst.labels.clone();
    info_labels.retain(|k, _| !k.is_empty());
    InstanceEntry {
        id: inst.id.clone(),
        status,
        last_poll_unix: Some(now),
        series: Some(InstanceSeries {
            info_labels,
            snapshot,
            last_success_unix: st.last_success_unix,
            snapshot_timestamp_unix: st.snapshot_timestamp_unix,
            last_duration_seconds: st.last_duration_seconds,
            // A configured (or discovered) limit wins over what the source reports: it is how an
            // operator corrects a limit the server misstates (a proxy in front allowing fewer).
            max_connections: inst.max_connections.or(st.reported_max_connections),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_stable_and_spread() {
        let i = Duration::from_secs(60);
        assert_eq!(phase("r-abc", i), phase("r-abc", i));
        let mut buckets = [0u32; 10];
        for n in 0..1000 {
            let p = phase(&format!("r-inst{n:04}"), i);
            assert!(p < i);
            buckets[(p.as_secs_f64() / 6.0) as usize] += 1;
        }
        // 1000 ids over 10 equal slices: each slice gets a fair share (expected 100).
        assert!(
            buckets.iter().all(|&b| (50..=150).contains(&b)),
            "{buckets:?}"
        );
    }

    #[test]
    fn slots_follow_the_grid_and_count_skips() {
        let epoch = Instant::now();
        let i = Duration::from_secs(10);
        let p = Duration::from_secs(3);
        // A poll at the first slot (t=3) that ends at t=4: next slot t=13, nothing skipped.
        let (n, skipped) = next_slot(epoch, p, i, epoch + p, epoch + Duration::from_secs(4));
        assert_eq!(n - epoch, Duration::from_secs(13));
        assert_eq!(skipped, 0);
        // The same poll ending at t=25: slots 13 and 23 were missed; next is 33, two skipped.
        let (n, skipped) = next_slot(epoch, p, i, epoch + p, epoch + Duration::from_secs(25));
        assert_eq!(n - epoch, Duration::from_secs(33));
        assert_eq!(skipped, 2);
        // The start-up poll at t=0 (before the phase): the grid point t=3 is too close to it; the
        // next poll is t=13, and nothing counts as skipped.
        let (n, skipped) = plan_after_poll(epoch, p, i, epoch, epoch + Duration::from_millis(100));
        assert_eq!(n - epoch, Duration::from_secs(13));
        assert_eq!(skipped, 0);
        // With a phase late in the interval (t=8), the first grid point is far enough: t=8.
        let late = Duration::from_secs(8);
        let (n, _) = plan_after_poll(epoch, late, i, epoch, epoch + Duration::from_millis(100));
        assert_eq!(n - epoch, Duration::from_secs(8));
        // Regular polls are unaffected by the floor.
        let (n, skipped) = plan_after_poll(epoch, p, i, epoch + p, epoch + Duration::from_secs(25));
        assert_eq!((n - epoch, skipped), (Duration::from_secs(33), 2));
    }
}
