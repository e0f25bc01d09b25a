//! The watcher task: list-and-watch of pods, ReplicaSets and Jobs (kube-rs `watcher`), applied
//! to the pod map of an [`Attribution`].
//!
//! kube-rs does the protocol: a paginated list, then a watch from its `resourceVersion` with
//! bookmarks; a dropped watch is resumed from the last version seen, a `410 Gone` starts over
//! with a fresh list. Each failed call is counted by [`code`] and retried after an
//! exponential backoff (0.8 s to 30 s). ReplicaSets and Jobs are read as metadata only: their
//! owner is all that is needed, and their pod templates are most of their size.
//!
//! With `namespaces` empty one watch per resource covers the cluster (a ClusterRole);
//! otherwise there is one watch per resource and namespace (Roles suffice).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, BoxStream, StreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, PartialObjectMeta};
use kube::config::KubeConfigOptions;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio_util::sync::CancellationToken;

use super::pods::{Intermediate, OwnerFacts, OwnerRef, PodFacts};
use super::Attribution;

/// How often departed pods past their grace period are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(30);
/// Wait before trying again to find a Kubernetes configuration.
const CONFIG_RETRY: Duration = Duration::from_secs(60);

/// The client configuration, found the standard way: the in-cluster service account, else
/// `KUBECONFIG`, else `~/.kube/config`.
pub async fn client_config() -> Result<kube::Config, String> {
    match kube::Config::incluster() {
        Ok(c) => Ok(c),
        Err(in_cluster) => kube::Config::from_kubeconfig(&KubeConfigOptions::default())
            .await
            .map_err(|kubeconfig| {
                format!("not in a cluster ({in_cluster}), and no usable kubeconfig ({kubeconfig})")
            }),
    }
}

/// Keeps `attribution`'s pod map current until `shutdown`. Never returns early: without a
/// configuration it keeps looking for one, and API failures are retried.
pub async fn run(
    attribution: Arc<Attribution>,
    namespaces: Vec<String>,
    shutdown: CancellationToken,
) {
    let client = loop {
        let made = client_config()
            .await
            .and_then(|c| kube::Client::try_from(c).map_err(|e| e.to_string()));
        match made {
            Ok(c) => break c,
            Err(e) => {
                attribution.count_error("config");
                tracing::warn!(code = "config", error = %e, "attribution: no Kubernetes client; sessions fall to networks or unknown");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(CONFIG_RETRY) => {}
                }
            }
        }
    };
    run_with_client(attribution, client, namespaces, shutdown).await;
}

/// [`run`] with a client made elsewhere (tests point one at the API stand-in).
pub async fn run_with_client(
    attribution: Arc<Attribution>,
    client: kube::Client,
    namespaces: Vec<String>,
    shutdown: CancellationToken,
) {
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = watch_all(&attribution, client, &scopes) => {}
    }
}

/// One watch stream's events, as the facts the pod map keeps.
enum Facts {
    Pod(PodFacts),
    Owner(Intermediate, OwnerFacts),
}

/// What one stream is about.
#[derive(Debug, Clone)]
struct StreamInfo {
    resource: Resource,
    scope: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Pods,
    Owners(Intermediate),
}

impl Resource {
    fn name(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::Owners(Intermediate::ReplicaSet) => "replicasets",
            Resource::Owners(Intermediate::Job) => "jobs",
        }
    }
}

type Tagged = (usize, Result<Event<Facts>, watcher::Error>);

fn api<K>(client: &kube::Client, scope: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A watcher stream of `K`, its events mapped through `f`, tagged with the stream's index.
fn stream_of<K, F>(api: Api<K>, i: usize, f: F) -> BoxStream<'static, Tagged>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: Fn(K) -> Facts + Send + Sync + Copy + 'static,
{
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |r| (i, r.map(|ev| map_event(ev, f))))
        .boxed()
}

fn map_event<K>(ev: Event<K>, f: impl Fn(K) -> Facts) -> Event<Facts> {
    match ev {
        Event::Apply(k) => Event::Apply(f(k)),
        Event::Delete(k) => Event::Delete(f(k)),
        Event::Init => Event::Init,
        Event::InitApply(k) => Event::InitApply(f(k)),
        Event::InitDone => Event::InitDone,
    }
}

async fn watch_all(attribution: &Attribution, client: kube::Client, scopes: &[Option<String>]) {
    let mut infos = Vec::new();
    let mut streams = Vec::new();
    for scope in scopes {
        for resource in [
            Resource::Pods,
            Resource::Owners(Intermediate::ReplicaSet),
            Resource::Owners(Intermediate::Job),
        ] {
            let i = infos.len();
            infos.push(StreamInfo {
                resource,
                scope: scope.clone(),
            });
            streams.push(match resource {
                Resource::Pods => {
                    stream_of(api::<Pod>(&client, scope), i, |p| Facts::Pod(pod_facts(p)))
                }
                Resource::Owners(Intermediate::ReplicaSet) => stream_of(
                    api::<PartialObjectMeta<ReplicaSet>>(&client, scope),
                    i,
                    |o| Facts::Owner(Intermediate::ReplicaSet, owner_facts(o.metadata)),
                ),
                Resource::Owners(Intermediate::Job) => {
                    stream_of(api::<PartialObjectMeta<Job>>(&client, scope), i, |o| {
                        Facts::Owner(Intermediate::Job, owner_facts(o.metadata))
                    })
                }
            });
        }
    }
    let mut events = stream::select_all(streams);
    // A (re)list is buffered and applied at its end, so a lookup never sees half a list.
    let mut buffers: Vec<Vec<Facts>> = infos.iter().map(|_| Vec::new()).collect();
    let mut synced = vec![false; infos.len()];
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    loop {
        let (i, item) = tokio::select! {
            next = events.next() => match next {
                Some(x) => x,
                None => return,
            },
            _ = prune.tick() => {
                attribution.update(|idx| idx.prune(Instant::now()));
                continue;
            }
        };
        let info = &infos[i];
        match item {
            Err(e) => {
                let code = code(&e);
                attribution.count_error(&code);
                tracing::warn!(
                    code = %code,
                    resource = info.resource.name(),
                    namespace = info.scope.as_deref().unwrap_or(""),
                    error = %e,
                    "attribution: Kubernetes list/watch failed; retrying"
                );
            }
            Ok(Event::Init) => buffers[i].clear(),
            Ok(Event::InitApply(f)) => buffers[i].push(f),
            Ok(Event::InitDone) => {
                let list = std::mem::take(&mut buffers[i]);
                let n = list.len();
                apply_list(attribution, info, list);
                if !std::mem::replace(&mut synced[i], true) {
                    tracing::info!(
                        resource = info.resource.name(),
                        namespace = info.scope.as_deref().unwrap_or(""),
                        objects = n,
                        "attribution: listed"
                    );
                } else {
                    tracing::debug!(
                        resource = info.resource.name(),
                        objects = n,
                        "attribution: relisted"
                    );
                }
            }
            Ok(Event::Apply(f)) => attribution.update(|idx| match f {
                Facts::Pod(p) => idx.apply_pod(p, Instant::now()),
                Facts::Owner(w, o) => idx.apply_owner(w, o),
            }),
            Ok(Event::Delete(f)) => attribution.update(|idx| match f {
                Facts::Pod(p) => idx.delete_pod(p, Instant::now()),
                Facts::Owner(w, o) => idx.delete_owner(w, o, Instant::now()),
            }),
        }
    }
}

fn apply_list(attribution: &Attribution, info: &StreamInfo, list: Vec<Facts>) {
    let scope = info.scope.as_deref();
    let now = Instant::now();
    match info.resource {
        Resource::Pods => {
            let pods = list
                .into_iter()
                .filter_map(|f| match f {
                    Facts::Pod(p) => Some(p),
                    Facts::Owner(..) => None,
                })
                .collect();
            attribution.update(|idx| idx.replace_pods(scope, pods, now));
        }
        Resource::Owners(what) => {
            let owners = list
                .into_iter()
                .filter_map(|f| match f {
                    Facts::Owner(_, o) => Some(o),
                    Facts::Pod(_) => None,
                })
                .collect();
            attribution.update(|idx| idx.replace_owners(what, scope, owners, now));
        }
    }
}

/// The controlling owner: the reference marked `controller`, else the first one.
fn controller(refs: Option<Vec<OwnerReference>>) -> Option<OwnerRef> {
    let refs = refs?;
    let pick = refs
        .iter()
        .position(|r| r.controller == Some(true))
        .unwrap_or(0);
    refs.into_iter().nth(pick).map(|r| OwnerRef {
        kind: r.kind.into(),
        name: r.name.into(),
    })
}

fn owner_facts(meta: ObjectMeta) -> OwnerFacts {
    OwnerFacts {
        namespace: meta.namespace.unwrap_or_default().into(),
        name: meta.name.unwrap_or_default().into(),
        owner: controller(meta.owner_references),
    }
}

/// What the pod map keeps of a pod: the rest of the object is dropped here.
pub fn pod_facts(pod: Pod) -> PodFacts {
    let meta = pod.metadata;
    let namespace: Arc<str> = meta.namespace.unwrap_or_default().into();
    let name: Arc<str> = meta.name.unwrap_or_default().into();
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let status = pod.status.unwrap_or_default();
    let finished = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    let mut ips = Vec::new();
    if !host_network {
        // `podIPs` holds both families of a dual-stack pod; `podIP` is its first entry, and
        // the only field older API servers fill.
        let listed = status.pod_ips.into_iter().flatten().map(|p| p.ip);
        for ip in listed.chain(status.pod_ip) {
            if let Ok(ip) = ip.parse() {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
    }
    PodFacts {
        // A uid is always set by the API server; the name is a fallback for a fake that omits it.
        uid: meta
            .uid
            .unwrap_or_else(|| format!("{namespace}/{name}"))
            .into(),
        namespace,
        name,
        ips,
        owner: controller(meta.owner_references),
        pod_template_hash: meta
            .labels
            .and_then(|mut l| l.remove("pod-template-hash"))
            .map(Into::into),
        finished,
    }
}

/// The `code` label of `redis_session_exporter_attribution_errors_total`: `http_<status>` for
/// an answer of the API server (`http_403`: RBAC; `http_410`: a watch too old, relisted),
/// `connection`, `timeout`, `invalid_response`, `credentials` (the kubeconfig's auth), or
/// `other`; `config` (counted by [`run`]) when no configuration is found at all.
pub fn code(e: &watcher::Error) -> Cow<'static, str> {
    match e {
        watcher::Error::InitialListFailed(k)
        | watcher::Error::WatchStartFailed(k)
        | watcher::Error::WatchFailed(k) => client_code(k),
        watcher::Error::WatchError(status) => http_code(status.code),
        watcher::Error::NoResourceVersion => Cow::Borrowed("invalid_response"),
    }
}

fn http_code(status: u16) -> Cow<'static, str> {
    if (100..600).contains(&status) {
        Cow::Owned(format!("http_{status}"))
    } else {
        Cow::Borrowed("invalid_response")
    }
}

fn client_code(e: &kube::Error) -> Cow<'static, str> {
    use kube::Error as E;
    match e {
        E::Api(status) => http_code(status.code),
        E::HyperError(_) | E::Service(_) | E::ReadEvents(_) => {
            if timed_out(e) {
                Cow::Borrowed("timeout")
            } else {
                Cow::Borrowed("connection")
            }
        }
        E::SerdeError(_) | E::FromUtf8(_) | E::LinesCodecMaxLineLengthExceeded => {
            Cow::Borrowed("invalid_response")
        }
        E::Auth(_) => Cow::Borrowed("credentials"),
        E::InferConfig(_) | E::InferKubeconfig(_) => Cow::Borrowed("config"),
        _ => Cow::Borrowed("other"),
    }
}

fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        if err.to_string().contains("timed out") {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodIP, PodSpec, PodStatus};

    fn meta(owner: Option<(&str, &str, Option<bool>)>) -> ObjectMeta {
        ObjectMeta {
            namespace: Some("ns".into()),
            name: Some("p".into()),
            uid: Some("u".into()),
            owner_references: owner.map(|(kind, name, controller)| {
                vec![
                    OwnerReference {
                        kind: "ConfigMap".into(),
                        name: "unrelated".into(),
                        ..Default::default()
                    },
                    OwnerReference {
                        kind: kind.into(),
                        name: name.into(),
                        controller,
                        ..Default::default()
                    },
                ]
            }),
            ..Default::default()
        }
    }

    fn pod(host_network: bool, phase: &str, ips: &[&str], pod_ip: Option<&str>) -> Pod {
        Pod {
            metadata: meta(Some(("ReplicaSet", "rs", Some(true)))),
            spec: Some(PodSpec {
                host_network: Some(host_network),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                pod_ip: pod_ip.map(Into::into),
                pod_ips: Some(ips.iter().map(|ip| PodIP { ip: (*ip).into() }).collect()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn pod_facts_take_every_family_and_skip_the_host_network() {
        let f = pod_facts(pod(
            false,
            "Running",
            &["10.0.0.1", "fd00::1"],
            Some("10.0.0.1"),
        ));
        assert_eq!(
            f.ips,
            vec![
                "10.0.0.1".parse::<std::net::IpAddr>().unwrap(),
                "fd00::1".parse().unwrap()
            ]
        );
        assert_eq!(
            f.owner.as_ref().map(|o| &*o.name),
            Some("rs"),
            "the controller, not the first reference"
        );
        assert!(!f.finished);
        let old_server = pod_facts(pod(false, "Running", &[], Some("10.0.0.2")));
        assert_eq!(
            old_server.ips,
            vec!["10.0.0.2".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(
            pod_facts(pod(true, "Running", &["10.9.9.9"], Some("10.9.9.9")))
                .ips
                .is_empty()
        );
        assert!(pod_facts(pod(false, "Succeeded", &["10.0.0.1"], None)).finished);
        assert!(pod_facts(pod(false, "Failed", &["10.0.0.1"], None)).finished);
        assert!(pod_facts(pod(false, "garbage", &["not-an-ip"], None))
            .ips
            .is_empty());
    }

    #[test]
    fn without_a_controller_mark_the_first_reference_counts() {
        let o = controller(meta(Some(("Job", "j", None))).owner_references).unwrap();
        assert_eq!(&*o.kind, "ConfigMap");
        assert!(controller(None).is_none());
        assert!(controller(Some(vec![])).is_none());
    }

    #[test]
    fn codes_are_a_bounded_set() {
        let status = |code| {
            let mut s = kube::core::Status::failure("x", "y");
            s.code = code;
            Box::new(s)
        };
        assert_eq!(code(&watcher::Error::WatchError(status(410))), "http_410");
        assert_eq!(
            code(&watcher::Error::InitialListFailed(kube::Error::Api(
                status(403)
            ))),
            "http_403"
        );
        assert_eq!(
            code(&watcher::Error::WatchError(status(0))),
            "invalid_response"
        );
        assert_eq!(
            code(&watcher::Error::WatchError(status(60000))),
            "invalid_response"
        );
        assert_eq!(code(&watcher::Error::NoResourceVersion), "invalid_response");
        let io = |kind| kube::Error::ReadEvents(std::io::Error::new(kind, "boom"));
        assert_eq!(
            code(&watcher::Error::WatchFailed(io(
                std::io::ErrorKind::ConnectionReset
            ))),
            "connection"
        );
        assert_eq!(
            code(&watcher::Error::WatchFailed(io(
                std::io::ErrorKind::TimedOut
            ))),
            "timeout"
        );
    }

    // ---- against the API stand-in: the real kube-rs client over loopback HTTP ----

    use crate::attribution::{Attribution, Networks};
    use crate::simulator::k8s::{self, K8sConfig, K8sHandle, Resource as R};

    struct Running {
        api: K8sHandle,
        attribution: Arc<Attribution>,
        stop: CancellationToken,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.stop.cancel();
        }
    }

    async fn start(cfg: K8sConfig, namespaces: &[&str], setup: impl FnOnce(&K8sHandle)) -> Running {
        let stop = CancellationToken::new();
        let api = k8s::spawn("127.0.0.1:0".parse().unwrap(), cfg, stop.clone())
            .await
            .unwrap();
        setup(&api);
        let kc = kube::config::Kubeconfig::from_yaml(&api.kubeconfig()).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(cfg).unwrap();
        let attribution = Arc::new(Attribution::new(Networks::default(), true));
        tokio::spawn(run_with_client(
            attribution.clone(),
            client,
            namespaces.iter().map(|s| (*s).to_owned()).collect(),
            stop.clone(),
        ));
        Running {
            api,
            attribution,
            stop,
        }
    }

    fn who(a: &Attribution, ip: &str) -> String {
        let w = a.lookup().resolve(ip);
        format!("{}/{}/{}", w.namespace, w.name, w.kind.as_str())
    }

    /// Waits (bounded) until `ip` resolves to `want`.
    async fn until(a: &Attribution, ip: &str, want: &str) {
        for _ in 0..500 {
            if who(a, ip) == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{ip} never became {want}; it is {}", who(a, ip));
    }

    /// Waits (bounded) until the stand-in has served `n` pod watches.
    async fn until_watching(api: &K8sHandle, n: u64) {
        for _ in 0..500 {
            if api.counts(R::Pods).watches >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{n} pod watches never started: {:?}", api.counts(R::Pods));
    }

    async fn until_errors(a: &Attribution, code: &str) -> u64 {
        for _ in 0..500 {
            if let Some((_, n)) = a.errors().into_iter().find(|(c, _)| c == code) {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no {code} error counted; errors: {:?}", a.errors());
    }

    fn cluster(api: &K8sHandle) {
        api.apply(k8s::owner_object(
            "ReplicaSet",
            "shop",
            "cart-6d8f9",
            Some(("Deployment", "cart")),
        ));
        api.apply(k8s::owner_object(
            "Job",
            "batch",
            "report-29000",
            Some(("CronJob", "report")),
        ));
        api.apply(k8s::pod(
            "shop",
            "cart-6d8f9-aaaaa",
            "10.1.0.1",
            Some(("ReplicaSet", "cart-6d8f9")),
        ));
        api.apply(k8s::pod(
            "batch",
            "report-29000-bbbbb",
            "10.1.0.2",
            Some(("Job", "report-29000")),
        ));
        api.apply(k8s::pod(
            "db",
            "redis-0",
            "10.1.0.3",
            Some(("StatefulSet", "redis")),
        ));
        api.apply(k8s::pod("dev", "debug", "10.1.0.4", None));
    }

    #[tokio::test]
    async fn list_then_watch_follows_adds_deletes_and_reuse() {
        let r = start(K8sConfig::default(), &[], cluster).await;
        let a = &r.attribution;
        until(a, "10.1.0.1", "shop/cart/Deployment").await;
        assert_eq!(who(a, "10.1.0.2"), "batch/report/CronJob");
        assert_eq!(who(a, "10.1.0.3"), "db/redis/StatefulSet");
        assert_eq!(who(a, "10.1.0.4"), "dev/debug/Pod");
        assert_eq!(a.pods_known(), 4);
        // ReplicaSets and Jobs are read as metadata only; pods whole.
        assert!(r.api.counts(R::ReplicaSets).metadata_only > 0);
        assert!(r.api.counts(R::Jobs).metadata_only > 0);
        assert_eq!(r.api.counts(R::Pods).metadata_only, 0);
        // Added while watching.
        r.api.apply(k8s::pod(
            "shop",
            "late",
            "10.1.0.9",
            Some(("DaemonSet", "agent")),
        ));
        until(a, "10.1.0.9", "shop/agent/DaemonSet").await;
        // Deleted: still named (grace period), then its IP goes to a new pod at once.
        assert!(r.api.delete(R::Pods, "dev", "debug"));
        r.api.apply(k8s::pod("shop", "marker", "10.1.0.10", None));
        until(a, "10.1.0.10", "shop/marker/Pod").await;
        assert_eq!(
            who(a, "10.1.0.4"),
            "dev/debug/Pod",
            "a deleted pod keeps its IP for a while"
        );
        r.api.apply(k8s::pod("web", "reuser", "10.1.0.4", None));
        until(a, "10.1.0.4", "web/reuser/Pod").await;
        assert!(a.errors().is_empty(), "{:?}", a.errors());
        assert_eq!(r.api.counts(R::Pods).lists, 1, "no relist without a reason");
    }

    #[tokio::test]
    async fn a_dropped_watch_resumes_and_a_compacted_one_relists() {
        // Bookmarks off: after a compaction the watcher's version is too old.
        let cfg = K8sConfig {
            bookmark_every: None,
            ..K8sConfig::default()
        };
        let r = start(cfg, &[], cluster).await;
        let a = &r.attribution;
        until(a, "10.1.0.1", "shop/cart/Deployment").await;
        until_watching(&r.api, 1).await;
        // A clean end of the stream: resumed from the last version, no list, no error.
        r.api.drop_watches(false);
        r.api.apply(k8s::pod("x", "after-drop", "10.1.1.1", None));
        until(a, "10.1.1.1", "x/after-drop/Pod").await;
        assert_eq!(
            r.api.counts(R::Pods).watches,
            2,
            "the change came on a new watch"
        );
        assert_eq!(r.api.counts(R::Pods).lists, 1);
        assert!(a.errors().is_empty(), "{:?}", a.errors());
        // A connection cut mid-stream (kube-rs reads the chunked body's early end as a
        // resumable end, as client-go does): resumed from the last version, still no list.
        r.api.drop_watches(true);
        r.api.apply(k8s::pod("x", "after-cut", "10.1.1.2", None));
        until(a, "10.1.1.2", "x/after-cut/Pod").await;
        assert_eq!(r.api.counts(R::Pods).watches, 3);
        assert_eq!(r.api.counts(R::Pods).lists, 1);
        assert!(a.errors().is_empty(), "{:?}", a.errors());
        // Another resource moves the cluster's version on, then history is compacted: the pod
        // watch, resumed from its last pod event, is told 410 Gone and relists.
        r.api
            .apply(k8s::owner_object("Job", "batch", "unrelated", None));
        r.api.compact();
        r.api.drop_watches(false);
        until_errors(a, "http_410").await;
        r.api.apply(k8s::pod("x", "after-relist", "10.1.1.3", None));
        until(a, "10.1.1.3", "x/after-relist/Pod").await;
        assert_eq!(r.api.counts(R::Pods).lists, 2, "relisted after 410");
        assert!(r.api.counts(R::Pods).gone >= 1);
    }

    #[tokio::test]
    async fn bookmarks_keep_a_quiet_watch_resumable_after_compaction() {
        let cfg = K8sConfig {
            bookmark_every: Some(Duration::from_millis(50)),
            ..K8sConfig::default()
        };
        let r = start(cfg, &[], cluster).await;
        until(&r.attribution, "10.1.0.1", "shop/cart/Deployment").await;
        until_watching(&r.api, 1).await;
        // Changes to other resources move the cluster's version on, then history is compacted.
        let before = r.api.counts(R::Pods).bookmarks;
        r.api
            .apply(k8s::owner_object("Job", "batch", "other", None));
        r.api.compact();
        for _ in 0..200 {
            if r.api.counts(R::Pods).bookmarks >= before + 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        r.api.drop_watches(false);
        r.api.apply(k8s::pod("x", "after", "10.1.2.1", None));
        until(&r.attribution, "10.1.2.1", "x/after/Pod").await;
        assert_eq!(
            r.api.counts(R::Pods).gone,
            0,
            "the bookmark's version was recent enough"
        );
        assert_eq!(r.api.counts(R::Pods).lists, 1);
    }

    #[tokio::test]
    async fn cluster_scope_forbidden_is_counted_and_namespaces_work_with_roles() {
        let cfg = K8sConfig {
            allowed_namespaces: Some(["shop".to_owned(), "db".to_owned()].into()),
            ..K8sConfig::default()
        };
        let r = start(cfg.clone(), &[], cluster).await;
        until_errors(&r.attribution, "http_403").await;
        assert_eq!(r.attribution.pods_known(), 0);
        assert_eq!(who(&r.attribution, "10.1.0.1"), "/unknown/unknown");
        drop(r);
        let r = start(cfg, &["shop", "db"], cluster).await;
        until(&r.attribution, "10.1.0.1", "shop/cart/Deployment").await;
        until(&r.attribution, "10.1.0.3", "db/redis/StatefulSet").await;
        assert_eq!(
            who(&r.attribution, "10.1.0.4"),
            "/unknown/unknown",
            "dev is not watched"
        );
        assert!(
            r.attribution.errors().is_empty(),
            "{:?}",
            r.attribution.errors()
        );
    }

    #[tokio::test]
    async fn failed_lists_are_retried() {
        let r = start(K8sConfig::default(), &[], |api| {
            cluster(api);
            api.fail_next(R::Pods, 500, 2);
        })
        .await;
        until(&r.attribution, "10.1.0.4", "dev/debug/Pod").await;
        assert_eq!(until_errors(&r.attribution, "http_500").await, 2);
    }
}
