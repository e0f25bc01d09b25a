//! The pod map: which pod, and so which workload, holds each pod IP.
//!
//! Pure state kept from watch events (the watcher in [`super::watch`] feeds it); time is a
//! parameter, so every rule here is tested without a clock or an API server. The rules:
//!
//! - a pod's workload follows its controller: ReplicaSet → Deployment, Job → CronJob,
//!   StatefulSet, DaemonSet; a pod without an owner is its own workload (kind `Pod`), an owner
//!   of any other kind (an operator's resource) gives kind `other` and the owner's name;
//! - pods on the host network claim no IP (the node's address is not theirs);
//! - a deleted pod, or one that has finished (`Succeeded`, `Failed`: its IP is free again),
//!   keeps its IP for [`GRACE`] so the connections it left behind are still named, unless a
//!   live pod claims the same IP, which wins at once;
//! - a relist replaces the whole scope it covers: what it no longer lists counts as deleted.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a deleted pod keeps its IP (the issue's "5 minutes").
pub const GRACE: Duration = Duration::from_secs(300);

/// At most this many deleted pods (and owners) are remembered, oldest forgotten first: a
/// runaway job controller cannot grow the map beyond the live pods plus this.
pub const MAX_GONE: usize = 50_000;

/// The `source_kind` label: what kind of thing holds a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Deployment,
    StatefulSet,
    DaemonSet,
    CronJob,
    Job,
    ReplicaSet,
    Pod,
    Network,
    Unknown,
    Other,
}

impl Kind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
            Kind::CronJob => "CronJob",
            Kind::Job => "Job",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::Pod => "Pod",
            Kind::Network => "network",
            Kind::Unknown => "unknown",
            Kind::Other => "other",
        }
    }

    /// The kind of a workload controller named in an owner reference. Only the kind is read,
    /// not the API group, so an operator's drop-in (OpenKruise's `StatefulSet`) counts as one.
    fn of_controller(kind: &str) -> Kind {
        match kind {
            "Deployment" => Kind::Deployment,
            "StatefulSet" => Kind::StatefulSet,
            "DaemonSet" => Kind::DaemonSet,
            "CronJob" => Kind::CronJob,
            "Job" => Kind::Job,
            "ReplicaSet" => Kind::ReplicaSet,
            _ => Kind::Other,
        }
    }
}

/// Who holds a session: the `source_namespace`, `source_workload` and `source_kind` labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub kind: Kind,
}

impl Workload {
    pub fn new(namespace: &str, name: &str, kind: Kind) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            kind,
        }
    }
}

/// The controlling owner reference of an object: as much of it as attribution reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRef {
    pub kind: Box<str>,
    pub name: Arc<str>,
}

/// What the map keeps of one pod, taken from the API object by the watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    /// `metadata.uid`: a pod recreated under the same name is another pod.
    pub uid: Box<str>,
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// `status.podIPs`; empty for host-network pods and pods not yet given an address.
    pub ips: Vec<IpAddr>,
    pub owner: Option<OwnerRef>,
    /// The `pod-template-hash` label a Deployment puts on its pods: names the Deployment even
    /// before (or after) its ReplicaSet is known.
    pub pod_template_hash: Option<Box<str>>,
    /// Phase `Succeeded` or `Failed`: the containers are gone and the IP is free.
    pub finished: bool,
}

/// What the map keeps of one ReplicaSet or Job: its own controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerFacts {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub owner: Option<OwnerRef>,
}

/// The two intermediate owners a pod's workload is found through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Intermediate {
    ReplicaSet,
    Job,
}

#[derive(Debug)]
struct PodEntry {
    facts: PodFacts,
    /// When the pod got its current IPs, as a sequence number: the newest claim of an IP wins.
    claimed: u64,
    /// Since when the pod is deleted or finished.
    gone: Option<Instant>,
}

#[derive(Debug)]
struct OwnerEntry {
    owner: Option<OwnerRef>,
    gone: Option<Instant>,
}

type OwnerKey = (Intermediate, Arc<str>, Arc<str>);

/// The pod and owner maps. Lookups take `&self`; the watcher applies events with `&mut self`.
#[derive(Debug, Default)]
pub struct PodIndex {
    pods: HashMap<Box<str>, PodEntry>,
    /// Every pod (by uid) that claims an IP, live or within its grace period.
    by_ip: HashMap<IpAddr, Vec<Box<str>>>,
    owners: HashMap<OwnerKey, OwnerEntry>,
    seq: u64,
}

fn alive(gone: Option<Instant>, now: Instant) -> bool {
    gone.is_none_or(|t| now.saturating_duration_since(t) < GRACE)
}

impl PodIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// A pod was added or changed (a watch `ADDED`/`MODIFIED`, or an item of a list).
    pub fn apply_pod(&mut self, facts: PodFacts, now: Instant) {
        let gone = facts.finished.then_some(now);
        match self.pods.get_mut(&facts.uid) {
            Some(entry) => {
                let ips_changed = entry.facts.ips != facts.ips;
                // A finished pod stays finished since the moment it was first seen so.
                entry.gone = match (entry.gone, gone) {
                    (Some(t), Some(_)) => Some(t),
                    (_, g) => g,
                };
                if ips_changed {
                    let old = std::mem::replace(&mut entry.facts, facts);
                    self.seq += 1;
                    let entry = self.pods.get_mut(&old.uid).expect("present");
                    entry.claimed = self.seq;
                    unclaim(&mut self.by_ip, &old.uid, &old.ips);
                    claim(&mut self.by_ip, &entry.facts.uid, &entry.facts.ips);
                } else {
                    entry.facts = facts;
                }
            }
            None => {
                self.seq += 1;
                claim(&mut self.by_ip, &facts.uid, &facts.ips);
                self.pods.insert(
                    facts.uid.clone(),
                    PodEntry {
                        facts,
                        claimed: self.seq,
                        gone,
                    },
                );
            }
        }
    }

    /// A pod was deleted; `facts` is its last state (a watch `DELETED` carries it), so a pod
    /// never seen before still leaves its IP named for the grace period.
    pub fn delete_pod(&mut self, facts: PodFacts, now: Instant) {
        let uid = facts.uid.clone();
        self.apply_pod(facts, now);
        if let Some(e) = self.pods.get_mut(&uid) {
            e.gone.get_or_insert(now);
        }
    }

    /// A complete list of the pods in `scope` (one namespace, or all with `None`), after a
    /// (re)list: pods of the scope that are not in it were deleted while nobody watched.
    pub fn replace_pods(&mut self, scope: Option<&str>, list: Vec<PodFacts>, now: Instant) {
        let listed: HashSet<Box<str>> = list.iter().map(|p| p.uid.clone()).collect();
        for e in self.pods.values_mut() {
            let in_scope = scope.is_none_or(|ns| *e.facts.namespace == *ns);
            if in_scope && e.gone.is_none() && !listed.contains(&e.facts.uid) {
                e.gone = Some(now);
            }
        }
        for p in list {
            self.apply_pod(p, now);
        }
    }

    /// A ReplicaSet or Job was added or changed.
    pub fn apply_owner(&mut self, what: Intermediate, facts: OwnerFacts) {
        self.owners.insert(
            (what, facts.namespace, facts.name),
            OwnerEntry {
                owner: facts.owner,
                gone: None,
            },
        );
    }

    /// A ReplicaSet or Job was deleted. It is remembered for the grace period, like its pods,
    /// so a CronJob's pods deleted with their Job still name the CronJob meanwhile.
    pub fn delete_owner(&mut self, what: Intermediate, facts: OwnerFacts, now: Instant) {
        let entry = self
            .owners
            .entry((what, facts.namespace, facts.name))
            .or_insert(OwnerEntry {
                owner: facts.owner,
                gone: None,
            });
        entry.gone.get_or_insert(now);
    }

    /// A complete list of the ReplicaSets or Jobs in `scope`.
    pub fn replace_owners(
        &mut self,
        what: Intermediate,
        scope: Option<&str>,
        list: Vec<OwnerFacts>,
        now: Instant,
    ) {
        let listed: HashSet<(Arc<str>, Arc<str>)> = list
            .iter()
            .map(|o| (o.namespace.clone(), o.name.clone()))
            .collect();
        for ((w, ns, name), e) in self.owners.iter_mut() {
            let in_scope = *w == what && scope.is_none_or(|s| **ns == *s);
            if in_scope && e.gone.is_none() && !listed.contains(&(ns.clone(), name.clone())) {
                e.gone = Some(now);
            }
        }
        for o in list {
            self.apply_owner(what, o);
        }
    }

    /// Forgets what left more than [`GRACE`] ago, and the oldest departures beyond
    /// [`MAX_GONE`]. Lookups honour the grace period on their own; this only frees memory.
    pub fn prune(&mut self, now: Instant) {
        let mut expired: Vec<(Instant, Box<str>)> = self
            .pods
            .values()
            .filter_map(|e| e.gone.map(|t| (t, e.facts.uid.clone())))
            .collect();
        let keep_recent = MAX_GONE.min(expired.len());
        expired.sort_unstable();
        let cut = expired.len() - keep_recent;
        for (i, (t, uid)) in expired.into_iter().enumerate() {
            if i < cut || now.saturating_duration_since(t) >= GRACE {
                if let Some(e) = self.pods.remove(&uid) {
                    unclaim(&mut self.by_ip, &uid, &e.facts.ips);
                }
            }
        }
        let mut gone_owners: Vec<(Instant, OwnerKey)> = self
            .owners
            .iter()
            .filter_map(|(k, e)| e.gone.map(|t| (t, k.clone())))
            .collect();
        gone_owners.sort_unstable_by_key(|(t, _)| *t);
        let cut = gone_owners.len().saturating_sub(MAX_GONE);
        for (i, (t, k)) in gone_owners.into_iter().enumerate() {
            if i < cut || now.saturating_duration_since(t) >= GRACE {
                self.owners.remove(&k);
            }
        }
    }

    /// The pod that holds `ip` now: the newest live claim, else the latest departure still
    /// within its grace period.
    fn holder(&self, ip: IpAddr, now: Instant) -> Option<&PodEntry> {
        let claims = self.by_ip.get(&ip.to_canonical())?;
        let entries = claims.iter().filter_map(|uid| self.pods.get(uid));
        let live = entries
            .clone()
            .filter(|e| e.gone.is_none())
            .max_by_key(|e| e.claimed);
        live.or_else(|| {
            entries
                .filter(|e| alive(e.gone, now))
                .max_by_key(|e| (e.gone, e.claimed))
        })
    }

    /// The workload holding `ip`, if a pod does.
    pub fn resolve(&self, ip: IpAddr, now: Instant) -> Option<Workload> {
        self.holder(ip, now)
            .map(|e| self.workload_of(&e.facts, now))
    }

    /// Pod IPs a lookup would name right now.
    pub fn known_ips(&self, now: Instant) -> usize {
        self.by_ip
            .keys()
            .filter(|ip| self.holder(**ip, now).is_some())
            .count()
    }

    fn owner_of(
        &self,
        what: Intermediate,
        ns: &Arc<str>,
        name: &Arc<str>,
        now: Instant,
    ) -> Option<&OwnerEntry> {
        self.owners
            .get(&(what, ns.clone(), name.clone()))
            .filter(|e| alive(e.gone, now))
    }

    fn workload_of(&self, pod: &PodFacts, now: Instant) -> Workload {
        let ns = pod.namespace.clone();
        let Some(owner) = &pod.owner else {
            return Workload {
                namespace: ns,
                name: pod.name.clone(),
                kind: Kind::Pod,
            };
        };
        let (name, kind) = match &*owner.kind {
            "ReplicaSet" => match self.owner_of(Intermediate::ReplicaSet, &ns, &owner.name, now) {
                Some(OwnerEntry {
                    owner: Some(top), ..
                }) => (top.name.clone(), Kind::of_controller(&top.kind)),
                Some(OwnerEntry { owner: None, .. }) => (owner.name.clone(), Kind::ReplicaSet),
                // Not (or no longer) known: a Deployment names its ReplicaSets
                // `<deployment>-<pod-template-hash>`, and puts that hash on the pods.
                None => match pod
                    .pod_template_hash
                    .as_deref()
                    .and_then(|h| owner.name.strip_suffix(h)?.strip_suffix('-'))
                {
                    Some(deployment) if !deployment.is_empty() => {
                        (deployment.into(), Kind::Deployment)
                    }
                    _ => (owner.name.clone(), Kind::ReplicaSet),
                },
            },
            "Job" => match self.owner_of(Intermediate::Job, &ns, &owner.name, now) {
                Some(OwnerEntry {
                    owner: Some(top), ..
                }) => (top.name.clone(), Kind::of_controller(&top.kind)),
                _ => (owner.name.clone(), Kind::Job),
            },
            other => (owner.name.clone(), Kind::of_controller(other)),
        };
        Workload {
            namespace: ns,
            name,
            kind,
        }
    }
}

fn claim(by_ip: &mut HashMap<IpAddr, Vec<Box<str>>>, uid: &str, ips: &[IpAddr]) {
    for ip in ips {
        let claims = by_ip.entry(ip.to_canonical()).or_default();
        if !claims.iter().any(|u| **u == *uid) {
            claims.push(uid.into());
        }
    }
}

fn unclaim(by_ip: &mut HashMap<IpAddr, Vec<Box<str>>>, uid: &str, ips: &[IpAddr]) {
    for ip in ips {
        let ip = ip.to_canonical();
        if let Some(claims) = by_ip.get_mut(&ip) {
            claims.retain(|u| **u != *uid);
            if claims.is_empty() {
                by_ip.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(kind: &str, name: &str) -> Option<OwnerRef> {
        Some(OwnerRef {
            kind: kind.into(),
            name: name.into(),
        })
    }

    fn pod(uid: &str, ns: &str, name: &str, ip: &str, own: Option<OwnerRef>) -> PodFacts {
        PodFacts {
            uid: uid.into(),
            namespace: ns.into(),
            name: name.into(),
            ips: ip
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect(),
            owner: own,
            pod_template_hash: None,
            finished: false,
        }
    }

    fn of(ns: &str, name: &str, own: Option<OwnerRef>) -> OwnerFacts {
        OwnerFacts {
            namespace: ns.into(),
            name: name.into(),
            owner: own,
        }
    }

    fn at(idx: &PodIndex, ip: &str, now: Instant) -> Option<(String, String, &'static str)> {
        idx.resolve(ip.parse().unwrap(), now)
            .map(|w| (w.namespace.to_string(), w.name.to_string(), w.kind.as_str()))
    }

    fn w(ns: &str, name: &str, kind: &'static str) -> Option<(String, String, &'static str)> {
        Some((ns.into(), name.into(), kind))
    }

    #[test]
    fn owners_are_followed_to_the_workload() {
        let t = Instant::now();
        let mut idx = PodIndex::new();
        idx.apply_owner(
            Intermediate::ReplicaSet,
            of("shop", "cart-7d9f", owner("Deployment", "cart")),
        );
        idx.apply_owner(Intermediate::ReplicaSet, of("shop", "bare-rs", None));
        idx.apply_owner(
            Intermediate::ReplicaSet,
            of("shop", "ro-abc", owner("Rollout", "canary")),
        );
        idx.apply_owner(
            Intermediate::Job,
            of("batch", "report-2900", owner("CronJob", "report")),
        );
        idx.apply_owner(Intermediate::Job, of("batch", "migrate", None));
        idx.apply_pod(
            pod(
                "1",
                "shop",
                "cart-7d9f-x",
                "10.0.0.1",
                owner("ReplicaSet", "cart-7d9f"),
            ),
            t,
        );
        idx.apply_pod(
            pod(
                "2",
                "shop",
                "bare-rs-y",
                "10.0.0.2",
                owner("ReplicaSet", "bare-rs"),
            ),
            t,
        );
        idx.apply_pod(
            pod(
                "3",
                "shop",
                "ro-abc-z",
                "10.0.0.3",
                owner("ReplicaSet", "ro-abc"),
            ),
            t,
        );
        idx.apply_pod(
            pod(
                "4",
                "batch",
                "report-2900-q",
                "10.0.0.4",
                owner("Job", "report-2900"),
            ),
            t,
        );
        idx.apply_pod(
            pod(
                "5",
                "batch",
                "migrate-w",
                "10.0.0.5",
                owner("Job", "migrate"),
            ),
            t,
        );
        idx.apply_pod(
            pod(
                "6",
                "db",
                "redis-0",
                "10.0.0.6",
                owner("StatefulSet", "redis"),
            ),
            t,
        );
        idx.apply_pod(
            pod(
                "7",
                "kube-system",
                "agent-k",
                "10.0.0.7",
                owner("DaemonSet", "agent"),
            ),
            t,
        );
        idx.apply_pod(pod("8", "dev", "debug", "10.0.0.8", None), t);
        idx.apply_pod(
            pod(
                "9",
                "dev",
                "clone-1",
                "10.0.0.9",
                owner("CloneSet", "clone"),
            ),
            t,
        );
        assert_eq!(at(&idx, "10.0.0.1", t), w("shop", "cart", "Deployment"));
        assert_eq!(at(&idx, "10.0.0.2", t), w("shop", "bare-rs", "ReplicaSet"));
        assert_eq!(at(&idx, "10.0.0.3", t), w("shop", "canary", "other"));
        assert_eq!(at(&idx, "10.0.0.4", t), w("batch", "report", "CronJob"));
        assert_eq!(at(&idx, "10.0.0.5", t), w("batch", "migrate", "Job"));
        assert_eq!(at(&idx, "10.0.0.6", t), w("db", "redis", "StatefulSet"));
        assert_eq!(
            at(&idx, "10.0.0.7", t),
            w("kube-system", "agent", "DaemonSet")
        );
        assert_eq!(at(&idx, "10.0.0.8", t), w("dev", "debug", "Pod"));
        assert_eq!(at(&idx, "10.0.0.9", t), w("dev", "clone", "other"));
        assert_eq!(at(&idx, "10.0.0.10", t), None);
        assert_eq!(idx.known_ips(t), 9);
    }

    #[test]
    fn an_owner_in_another_namespace_is_not_followed() {
        let t = Instant::now();
        let mut idx = PodIndex::new();
        idx.apply_owner(
            Intermediate::Job,
            of("other-ns", "j", owner("CronJob", "c")),
        );
        idx.apply_pod(pod("1", "ns", "j-1", "10.0.0.1", owner("Job", "j")), t);
        assert_eq!(at(&idx, "10.0.0.1", t), w("ns", "j", "Job"));
        // Once its own Job shows up (later events are normal: the watches are independent).
        idx.apply_owner(Intermediate::Job, of("ns", "j", owner("CronJob", "c")));
        assert_eq!(at(&idx, "10.0.0.1", t), w("ns", "c", "CronJob"));
    }

    #[test]
    fn an_unknown_replicaset_names_its_deployment_from_the_template_hash() {
        let t = Instant::now();
        let mut idx = PodIndex::new();
        let mut p = pod(
            "1",
            "shop",
            "api-5f6c7-abcde",
            "10.0.0.1",
            owner("ReplicaSet", "api-5f6c7"),
        );
        p.pod_template_hash = Some("5f6c7".into());
        idx.apply_pod(p, t);
        assert_eq!(at(&idx, "10.0.0.1", t), w("shop", "api", "Deployment"));
        // A hash that is not the name's suffix proves nothing.
        let mut q = pod("2", "shop", "x", "10.0.0.2", owner("ReplicaSet", "worker"));
        q.pod_template_hash = Some("5f6c7".into());
        idx.apply_pod(q, t);
        assert_eq!(at(&idx, "10.0.0.2", t), w("shop", "worker", "ReplicaSet"));
    }

    #[test]
    fn a_deleted_pod_keeps_its_ip_for_the_grace_period() {
        let t = Instant::now();
        let mut idx = PodIndex::new();
        let p = pod("1", "ns", "a", "10.0.0.1", None);
        idx.apply_pod(p.clone(), t);
        idx.delete_pod(p, t + Duration::from_secs(10));
        let just_before = t + Duration::from_secs(10) + GRACE - Duration::from_millis(1);
        assert_eq!(at(&idx, "10.0.0.1", just_before), w("ns", "a", "Pod"));
        assert_eq!(idx.known_ips(just_before), 1);
        let after = t + Duration::from_secs(10) + GRACE;
        assert_eq!(at(&idx, "10.0.0.1", after), None);
        assert_eq!(idx.known_ips(after), 0);
        idx.prune(after);
        assert!(idx.pods.is_empty() && idx.by_ip.is_empty());
    }

    #[test]
    fn a_reused_ip_goes_to_the_new_pod_at_once_and_back_never() {
        let t = Instant::now();
        let mut idx = PodIndex::new();
        let old = pod("1", "ns", "old", "10.0.0.1", None);
        idx.apply_pod(old.clone(), t);
        idx.delete_pod(old, t);
        idx.apply_pod(
            pod("2", "ns", "new", "10.0.0.1", None),
            t + Duration::from_secs(1),
        );
        assert_eq!(
            at(&idx, "10.0.0.1", t + Duration::from_secs(1)),
            w("ns", "new", "Pod")
        );
        // Even when the old pod's deletion is only seen after the new pod (watches of one
        // resource are ordered, but a relist can deliver both at once).
        let mut idx = PodIndex::new();
        idx.apply_pod(pod("1", "ns", "old", "10.0.0.1", None), t);
        idx.apply_pod(pod("2", "ns", "new", "10.0.0.1", None), t);
        assert_eq!(
            at(&idx, "10.0.0.1", t),
            w("ns", "new", "Pod"),
            "the newer claim wins"
        );
        idx.delete_pod(pod("2", "ns", "new", "10.0.0.1", None), t);
        assert_eq!(
            at(&idx, "10.0.0.1", t),
            w("ns", "old", "Pod"),
            "a live claim beats a deleted one"
        );
    }

    #[test]
    fn a_finished_pod_frees_its_ip_after_the_grace_period() {
        let t = Instant::now();
        let mut idx = PodIndex::new();
        let mut p = pod("1", "batch", "once", "10.0.0.1", owner("Job", "once"));
        idx.apply_pod(p.clone(), t);
        p.finished = true;
        idx.apply_pod(p.clone(), t + Duration::from_secs(5));
        // Further updates of the finished pod (status, labels) do not restart its clock.
        idx.apply_pod(p, t + Duration::from_secs(200));
        assert_eq!(
            at(&idx, "10.0.0.1", t + Duration::from_secs(200)),
            w("batch", "once", "Job")
        );
        assert_eq!(
            at(&idx, "10.0.0.1", t + Duration::from_secs(5) + GRACE),
            None
        );
        // And a running pod given the IP takes it even within the period.
        idx.apply_pod(
            pod("2", "web", "next", "10.0.0.1", None),
            t + Duration::from_secs(6),
        );
        assert_eq!(
            at(&idx, "10.0.0.1", t + Duration::from_secs(6)),
            w("web", "next", "Pod")
        );
    }

    #[test]
    fn changed_ips_move_the_claim() {
        let t = Instant::now();
        let mut idx = PodIndex::new();
        idx.apply_pod(pod("1", "ns", "a", "", None), t);
        assert_eq!(
            idx.known_ips(t),
            0,
            "a pending pod without an IP claims nothing"
        );
        idx.apply_pod(pod("1", "ns", "a", "10.0.0.1,fd00::1", None), t);
        assert_eq!(at(&idx, "fd00::1", t), w("ns", "a", "Pod"));
        assert_eq!(at(&idx, "::ffff:10.0.0.1", t), w("ns", "a", "Pod"));
        idx.apply_pod(pod("1", "ns", "a", "10.0.0.2", None), t);
        assert_eq!(at(&idx, "10.0.0.1", t), None);
        assert_eq!(at(&idx, "fd00::1", t), None);
        assert_eq!(at(&idx, "10.0.0.2", t), w("ns", "a", "Pod"));
        assert_eq!(idx.known_ips(t), 1);
    }

    #[test]
    fn a_relist_deletes_what_it_no_longer_lists_in_its_scope_only() {
        let t = Instant::now();
        let mut idx = PodIndex::new();
        idx.apply_pod(pod("1", "a", "p1", "10.0.0.1", None), t);
        idx.apply_pod(pod("2", "a", "p2", "10.0.0.2", None), t);
        idx.apply_pod(pod("3", "b", "p3", "10.0.0.3", None), t);
        let later = t + Duration::from_secs(60);
        idx.replace_pods(
            Some("a"),
            vec![pod("2", "a", "p2", "10.0.0.2", None)],
            later,
        );
        // p1 vanished while nobody watched: deleted as of the relist, so still named for now.
        assert_eq!(
            at(&idx, "10.0.0.1", later + GRACE - Duration::from_secs(1)),
            w("a", "p1", "Pod")
        );
        assert_eq!(at(&idx, "10.0.0.1", later + GRACE), None);
        assert_eq!(at(&idx, "10.0.0.2", later + GRACE), w("a", "p2", "Pod"));
        assert_eq!(
            at(&idx, "10.0.0.3", later + GRACE),
            w("b", "p3", "Pod"),
            "namespace b untouched"
        );
        idx.replace_pods(None, vec![], later);
        assert_eq!(at(&idx, "10.0.0.3", later + GRACE), None);
    }

    #[test]
    fn a_deleted_job_still_names_its_cronjob_for_the_grace_period() {
        let t = Instant::now();
        let mut idx = PodIndex::new();
        let job = of("batch", "r-1", owner("CronJob", "r"));
        idx.apply_owner(Intermediate::Job, job.clone());
        let p = pod("1", "batch", "r-1-x", "10.0.0.1", owner("Job", "r-1"));
        idx.apply_pod(p.clone(), t);
        idx.delete_owner(Intermediate::Job, job, t);
        idx.delete_pod(p, t);
        assert_eq!(
            at(&idx, "10.0.0.1", t + Duration::from_secs(60)),
            w("batch", "r", "CronJob")
        );
        idx.prune(t + GRACE);
        assert!(idx.owners.is_empty());
        // A relist that no longer lists a ReplicaSet forgets it the same way.
        idx.apply_owner(
            Intermediate::ReplicaSet,
            of("a", "rs", owner("Deployment", "d")),
        );
        idx.replace_owners(Intermediate::Job, None, vec![], t);
        assert_eq!(idx.owners.len(), 1, "a Job relist leaves ReplicaSets alone");
        idx.replace_owners(Intermediate::ReplicaSet, Some("b"), vec![], t);
        assert!(
            idx.owners.values().all(|e| e.gone.is_none()),
            "another namespace's relist too"
        );
        idx.replace_owners(Intermediate::ReplicaSet, Some("a"), vec![], t);
        idx.prune(t + GRACE);
        assert!(idx.owners.is_empty());
    }

    #[test]
    fn departures_beyond_the_cap_are_forgotten_oldest_first() {
        let t = Instant::now();
        let mut idx = PodIndex::new();
        let n = MAX_GONE + 10;
        for i in 0..n {
            let ip = IpAddr::from((i as u32 + 1).to_be_bytes());
            let p = PodFacts {
                ips: vec![ip],
                ..pod(&i.to_string(), "ns", &format!("p{i}"), "", None)
            };
            idx.delete_pod(p, t + Duration::from_millis(i as u64));
        }
        let now = t + Duration::from_secs(100);
        idx.prune(now);
        assert_eq!(idx.pods.len(), MAX_GONE);
        assert_eq!(
            idx.resolve(IpAddr::from(1u32.to_be_bytes()), now),
            None,
            "oldest gone"
        );
        assert!(idx
            .resolve(IpAddr::from((n as u32).to_be_bytes()), now)
            .is_some());
    }
}
