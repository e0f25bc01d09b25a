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

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::Instant;

pub use networks::Networks;
pub use pods::{Kind, Workload, GRACE};

use pods::PodIndex;

use crate::metrics::ProcessMetrics;
use crate::sticky::{Sticky, OTHER};

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
    /// Where the failures are counted for /metrics, when the daemon runs it.
    metrics: Option<ProcessMetrics>,
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
            metrics: None,
            unknown: Workload::new("", UNKNOWN, Kind::Unknown),
        }
    }

    /// Also counts every failed list/watch call in `metrics`
    /// (`redis_session_exporter_attribution_errors_total`).
    pub fn counting_into(mut self, metrics: ProcessMetrics) -> Self {
        self.metrics = Some(metrics);
        self
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

    /// Failed list/watch calls so far, by code.
    pub fn errors(&self) -> Vec<(String, u64)> {
        let e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        e.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    fn count_error(&self, code: &str) {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *e.entry(code.to_owned()).or_insert(0) += 1;
        if let Some(m) = &self.metrics {
            m.attribution_error(code);
        }
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

/// The sessions of one client IP, or of one workload: what the by-workload families export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub sessions: u64,
    /// Sessions idle at least `[attribution] idle_threshold`.
    pub long_idle: u64,
    /// The largest output buffer (`Omem`) among them.
    pub output_buffer_max: u64,
}

impl Figures {
    /// Counts one session idle for `idle` seconds with `omem` bytes of output buffer.
    pub fn add_session(&mut self, idle: u64, omem: u64, idle_threshold: u64) {
        self.sessions += 1;
        if idle >= idle_threshold {
            self.long_idle += 1;
        }
        self.output_buffer_max = self.output_buffer_max.max(omem);
    }

    pub fn merge(&mut self, other: &Figures) {
        self.sessions += other.sessions;
        self.long_idle += other.long_idle;
        self.output_buffer_max = self.output_buffer_max.max(other.output_buffer_max);
    }
}

/// The workload everything beyond `max_workloads` is summed into.
pub fn other_workload() -> Workload {
    Workload::new("", OTHER, Kind::Other)
}

/// Names each client of one answer, sums the figures by workload, and caps the result with
/// sticky top-N by sessions: at most 2×`cap` named workloads, then [`other_workload`] (present
/// only when something was summed into it). Sorted by workload.
pub fn by_workload<'c>(
    clients: impl IntoIterator<Item = (&'c str, Figures)>,
    lookup: &Lookup<'_>,
    cap: usize,
    sticky: &mut Sticky<Workload>,
) -> Vec<(Workload, Figures)> {
    let mut sums: HashMap<Workload, Figures> = HashMap::new();
    for (client, f) in clients {
        sums.entry(lookup.resolve(client)).or_default().merge(&f);
    }
    let other = other_workload();
    let mut rest = sums.remove(&other);
    let sel = sticky.select(sums.into_iter().collect(), cap, |f| f.sessions);
    for (_, f) in &sel.rest {
        rest.get_or_insert_with(Figures::default).merge(f);
    }
    let mut out = sel.own;
    if let Some(f) = rest.filter(|f| f.sessions > 0) {
        out.push((other, f));
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    }
    out
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

    #[test]
    fn figures_are_summed_by_workload_and_capped() {
        let a = attribution(true);
        let f = |sessions, long_idle, omem| Figures {
            sessions,
            long_idle,
            output_buffer_max: omem,
        };
        let clients = [
            ("10.1.2.3", f(5, 1, 100)),   // shop/cart
            ("10.9.9.9", f(4, 4, 7)),     // vpc
            ("10.9.9.8", f(3, 0, 900)),   // vpc
            ("192.168.1.1", f(2, 2, 50)), // office
            ("172.16.0.1", f(1, 0, 0)),   // unknown
            ("/tmp/sock", f(1, 1, 10)),   // unknown
        ];
        let mut sticky = Sticky::new();
        let all = by_workload(clients, &a.lookup(), 10, &mut sticky);
        let names: Vec<(&str, Figures)> = all.iter().map(|(w, f)| (&*w.name, *f)).collect();
        assert_eq!(
            names,
            vec![
                ("office", f(2, 2, 50)),
                ("unknown", f(2, 1, 10)),
                ("vpc", f(7, 4, 900)),
                ("cart", f(5, 1, 100)),
            ]
        );
        // Cap 1: vpc (7) is named; the rest is other, with sums and the largest buffer.
        let capped = by_workload(clients, &a.lookup(), 1, &mut Sticky::new());
        assert_eq!(capped.len(), 2);
        assert_eq!(
            capped[0],
            (other_workload(), f(9, 4, 100)),
            "other sorts first"
        );
        assert_eq!(&*capped[1].0.name, "vpc");
        let total: u64 = capped.iter().map(|(_, f)| f.sessions).sum();
        assert_eq!(total, 16);
    }

    #[test]
    fn a_session_is_long_idle_from_the_threshold_on() {
        let mut f = Figures::default();
        f.add_session(599, 3, 600);
        f.add_session(600, 1, 600);
        f.add_session(0, 2, 600);
        assert_eq!((f.sessions, f.long_idle, f.output_buffer_max), (3, 1, 3));
    }
}
