//! Who holds the connections: client IPs named as Kubernetes workloads or configured networks.
//!
//! A session's client IP is looked up in this order: a pod IP ([`pods`], kept current by the
//! list-and-watch task in [`watch`]) gives the pod's namespace and workload; else the longest
//! configured network ([`networks`]) gives `source_kind="network"`; else the IP is `unknown`.
//!
//! A poll never waits on the Kubernetes API: it reads the map the watcher keeps, under a lock
//! that the watcher holds only while it applies one event in memory. With the API unreachable
//! (or Kubernetes off) the map is simply empty and sessions fall to networks or `unknown`.

pub mod networks;
pub mod pods;
pub mod watch;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::Instant;

pub use networks::Networks;
pub use pods::{Kind, Workload, GRACE};

use pods::PodIndex;

/// The `source_workload` (and `source_kind`) value of a client IP nothing names.
pub const UNKNOWN: &str = "unknown";

/// The attribution state shared by the watcher (writer) and every poll (readers).
#[derive(Debug)]
pub struct Attribution {
    networks: Networks,
    kubernetes: bool,
    pods: RwLock<PodIndex>,
    /// Failed list/watch calls by `code` label (a bounded set: see [`watch::code`]).
    errors: Mutex<BTreeMap<String, u64>>,
    unknown: Workload,
}

impl Attribution {
    /// `kubernetes`: whether a watcher will fill the pod map (the caller spawns it with
    /// [`watch::run`]).
    pub fn new(networks: Networks, kubernetes: bool) -> Self {
        Self {
            networks,
            kubernetes,
            pods: RwLock::new(PodIndex::new()),
            errors: Mutex::new(BTreeMap::new()),
            unknown: Workload::new("", UNKNOWN, Kind::Unknown),
        }
    }

    /// Whether there is anything to attribute with: the by-workload families are exported
    /// only then.
    pub fn is_enabled(&self) -> bool {
        self.kubernetes || !self.networks.is_empty()
    }

    pub fn kubernetes(&self) -> bool {
        self.kubernetes
    }

    /// A lookup for one poll: one read of the pod map for all the client IPs of an answer.
    pub fn lookup(&self) -> Lookup<'_> {
        Lookup {
            owner: self,
            pods: self.kubernetes.then(|| read(&self.pods)),
            now: Instant::now(),
        }
    }

    /// `redis_session_exporter_attribution_pods`: pod IPs a lookup would name now.
    pub fn pods_known(&self) -> u64 {
        read(&self.pods).known_ips(Instant::now()) as u64
    }

    /// `redis_session_exporter_attribution_errors_total`, by code.
    pub fn errors(&self) -> Vec<(String, u64)> {
        let e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        e.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    fn count_error(&self, code: &str) {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *e.entry(code.to_owned()).or_insert(0) += 1;
    }

    /// Applies `f` to the pod map (the watcher's side).
    fn update<T>(&self, f: impl FnOnce(&mut PodIndex) -> T) -> T {
        let mut g = self.pods.write().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }
}

/// Nothing panics while holding the lock, but a poisoned map is still the best map there is.
fn read(lock: &RwLock<PodIndex>) -> RwLockReadGuard<'_, PodIndex> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

/// See [`Attribution::lookup`]. Holds a read lock: drop it before anything slow.
pub struct Lookup<'a> {
    owner: &'a Attribution,
    pods: Option<RwLockReadGuard<'a, PodIndex>>,
    now: Instant,
}

impl Lookup<'_> {
    /// Names the holder of `client`: the DAS `Client` field, or the host part of a
    /// `CLIENT LIST` `addr`. Anything that is not an IP address (a Unix socket path, a
    /// masked `172.16.XX.XX`) is `unknown`.
    pub fn resolve(&self, client: &str) -> Workload {
        let Ok(ip) = client.trim().parse::<IpAddr>() else {
            return self.owner.unknown.clone();
        };
        self.resolve_ip(ip)
    }

    pub fn resolve_ip(&self, ip: IpAddr) -> Workload {
        if let Some(w) = self.pods.as_ref().and_then(|p| p.resolve(ip, self.now)) {
            return w;
        }
        match self.owner.networks.lookup(ip) {
            Some(name) => Workload {
                namespace: "".into(),
                name: name.clone(),
                kind: Kind::Network,
            },
            None => self.owner.unknown.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pods::{OwnerRef, PodFacts};
    use super::*;

    fn attribution(kubernetes: bool) -> Attribution {
        let nets = Networks::new([
            ("10.0.0.0/8".parse().unwrap(), "vpc".to_owned()),
            ("192.168.0.0/16".parse().unwrap(), "office".to_owned()),
        ]);
        let a = Attribution::new(nets, kubernetes);
        a.update(|idx| {
            idx.apply_pod(
                PodFacts {
                    uid: "u1".into(),
                    namespace: "shop".into(),
                    name: "cart-0".into(),
                    ips: vec!["10.1.2.3".parse().unwrap()],
                    owner: Some(OwnerRef {
                        kind: "StatefulSet".into(),
                        name: "cart".into(),
                    }),
                    pod_template_hash: None,
                    finished: false,
                },
                Instant::now(),
            )
        });
        a
    }

    fn labels(w: Workload) -> (String, String, &'static str) {
        (w.namespace.to_string(), w.name.to_string(), w.kind.as_str())
    }

    #[test]
    fn pods_first_then_networks_then_unknown() {
        let a = attribution(true);
        let l = a.lookup();
        let s = |ns: &str, n: &str, k| (ns.to_owned(), n.to_owned(), k);
        assert_eq!(
            labels(l.resolve("10.1.2.3")),
            s("shop", "cart", "StatefulSet")
        );
        assert_eq!(labels(l.resolve("10.1.2.4")), s("", "vpc", "network"));
        assert_eq!(labels(l.resolve("192.168.7.7")), s("", "office", "network"));
        assert_eq!(labels(l.resolve("172.16.0.1")), s("", "unknown", "unknown"));
        assert_eq!(
            labels(l.resolve("172.16.XX.XX")),
            s("", "unknown", "unknown")
        );
        assert_eq!(
            labels(l.resolve("/tmp/redis.sock")),
            s("", "unknown", "unknown")
        );
        assert_eq!(labels(l.resolve("")), s("", "unknown", "unknown"));
        drop(l);
        assert_eq!(a.pods_known(), 1);
        assert!(a.is_enabled());
    }

    #[test]
    fn without_kubernetes_the_pod_map_is_not_read() {
        let a = attribution(false);
        let w = a.lookup().resolve("10.1.2.3");
        assert_eq!(labels(w), ("".into(), "vpc".into(), "network"));
        assert!(a.is_enabled(), "networks alone enable attribution");
        assert!(!Attribution::new(Networks::default(), false).is_enabled());
    }
}
