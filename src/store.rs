//! The published state the HTTP server reads: one immutable entry per instance, swapped
//! atomically when a poll lands.
//!
//! Writers (the instance tasks) replace an entry with a new `Arc`; readers (scrapes, the landing
//! page) take a snapshot of the whole map with one atomic load. Nobody ever holds a lock across a
//! poll or a scrape, so a scrape never waits on a poll or on another scrape.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::snapshot::Snapshot;

/// What the landing page says about an instance's last poll.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Not polled yet.
    Pending,
    Up {
        sessions: u64,
    },
    Down {
        code: String,
        reason: String,
    },
}

/// One instance as published.
#[derive(Debug, Clone)]
pub struct InstanceEntry {
    pub id: String,
    pub status: Status,
    /// Unix seconds of the last finished poll.
    pub last_poll_unix: Option<f64>,
    /// What /metrics shows; `None` until the first poll finishes.
    pub series: Option<InstanceSeries>,
}

impl InstanceEntry {
    /// An instance known but not yet polled: it exports nothing until its first poll finishes.
    pub fn pending(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            status: Status::Pending,
            last_poll_unix: None,
            series: None,
        }
    }
}

/// What /metrics shows about one instance as of its last finished poll; the exposition's
/// collector reads it at encode time.
#[derive(Debug, Clone, Default)]
pub struct InstanceSeries {
    /// Configured and inventory labels, exported on `redis_session_instance_info` only.
    pub info_labels: BTreeMap<String, String>,
    /// The last poll's snapshot when that poll succeeded; `None` exports health series only.
    pub snapshot: Option<Snapshot>,
    pub last_success_unix: Option<f64>,
    pub snapshot_timestamp_unix: Option<f64>,
    pub last_duration_seconds: Option<f64>,
    /// The connection limit, when known (configured, discovered, or read by the direct source).
    pub max_connections: Option<u64>,
}

/// The map of published entries.
#[derive(Debug, Default)]
pub struct Store {
    instances: ArcSwap<BTreeMap<String, Arc<InstanceEntry>>>,
    /// Set once the first instance set has been applied: before that an empty map means "not
    /// started yet", not "nothing to wait for".
    initialized: AtomicBool,
    /// Bumped after every change to `instances`, so a scrape can tell whether a body it
    /// encoded earlier is still current (see `exposition::BodyCache`).
    generation: AtomicU64,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes (or replaces) one instance's entry.
    pub fn publish(&self, entry: InstanceEntry) {
        let entry = Arc::new(entry);
        self.instances.rcu(|m| {
            let mut m = BTreeMap::clone(m);
            m.insert(entry.id.clone(), entry.clone());
            m
        });
        self.bump();
    }

    fn bump(&self) {
        // Release pairs with the Acquire in `generation`: whoever sees the new number also sees
        // the map it stands for.
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes so far to the published entries, as one number that only grows.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Forgets an instance: its series disappear from the next scrape.
    pub fn remove(&self, id: &str) {
        self.instances.rcu(|m| {
            let mut m = BTreeMap::clone(m);
            m.remove(id);
            m
        });
        self.bump();
    }

    /// A consistent view of every instance, by id.
    pub fn snapshot(&self) -> Arc<BTreeMap<String, Arc<InstanceEntry>>> {
        self.instances.load_full()
    }

    /// Marks the first instance set as applied (see [`Store::all_polled`]).
    pub fn mark_initialized(&self) {
        self.initialized.store(true, Ordering::Release);
    }

    /// True once the first instance set is known and every instance in it has finished at least
    /// one poll.
    pub fn all_polled(&self) -> bool {
        self.initialized.load(Ordering::Acquire)
            && self
                .instances
                .load()
                .values()
                .all(|e| e.status != Status::Pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_replace_remove_and_readiness() {
        let s = Store::new();
        assert!(
            !s.all_polled(),
            "not started: not ready, even with no instances"
        );
        s.mark_initialized();
        assert!(s.all_polled(), "no instances: nothing to wait for");
        s.publish(InstanceEntry::pending("a"));
        s.publish(InstanceEntry::pending("b"));
        assert!(!s.all_polled());
        let before = s.snapshot();
        s.publish(InstanceEntry {
            status: Status::Up { sessions: 1 },
            ..InstanceEntry::pending("a")
        });
        s.publish(InstanceEntry {
            status: Status::Down {
                code: "timeout".into(),
                reason: "x".into(),
            },
            ..InstanceEntry::pending("b")
        });
        assert!(s.all_polled());
        assert_eq!(
            before["a"].status,
            Status::Pending,
            "old views are unaffected"
        );
        let g = s.generation();
        s.remove("a");
        assert_eq!(s.snapshot().keys().collect::<Vec<_>>(), vec!["b"]);
        assert!(s.generation() > g, "every change moves the generation");
        let g = s.generation();
        s.publish(InstanceEntry::pending("c"));
        assert!(s.generation() > g);
    }
}
