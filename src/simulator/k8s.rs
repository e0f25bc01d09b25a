//! A Kubernetes API stand-in: pods, ReplicaSets and Jobs, served with list and watch the way
//! the real API server serves them, for the attribution tests and the demo.
//!
//! What it does as the API server does:
//! - every change bumps one cluster-wide `resourceVersion`; objects carry theirs, lists carry
//!   the version they were read at;
//! - lists are paginated (`limit`, `continue`); a continue token older than the last
//!   compaction is refused with `410 Gone` (reason `Expired`);
//! - a watch from version `v` sends every change after `v` as `ADDED`, `MODIFIED`, `DELETED`
//!   lines, then follows; from a version older than the last compaction it sends one `ERROR`
//!   event with a `410` `Status` (`too old resource version`), with HTTP 200, as the real
//!   server does; `allowWatchBookmarks=true` brings `BOOKMARK` events; `timeoutSeconds` ends
//!   the stream cleanly;
//! - `Accept: application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1` (and
//!   `…as=PartialObjectMetadata…` for a watch) gets metadata only;
//! - a bearer token is required (`401` otherwise), and with `allowed_namespaces` set a request
//!   outside them, or for the whole cluster, is `403 Forbidden` as RBAC would refuse it.
//!
//! Tests drive it through [`K8sHandle`]: change objects, compact the history, drop every open
//! watch (cleanly or by cutting the connection), make the next requests fail, read counts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The resources the stand-in serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Pods,
    ReplicaSets,
    Jobs,
}

impl Resource {
    pub const ALL: [Resource; 3] = [Resource::Pods, Resource::ReplicaSets, Resource::Jobs];

    /// The plural name, as in URLs and RBAC rules.
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::ReplicaSets => "replicasets",
            Resource::Jobs => "jobs",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::ReplicaSets => "ReplicaSet",
            Resource::Jobs => "Job",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::Pods => "v1",
            Resource::ReplicaSets => "apps/v1",
            Resource::Jobs => "batch/v1",
        }
    }

    fn of_kind(kind: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.kind() == kind)
    }

    /// `/api/v1`, `/apis/apps/v1`, `/apis/batch/v1`.
    fn prefix(self) -> &'static str {
        match self {
            Resource::Pods => "/api/v1",
            Resource::ReplicaSets => "/apis/apps/v1",
            Resource::Jobs => "/apis/batch/v1",
        }
    }
}

/// What the stand-in has seen, per resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// List requests answered 200 (each page counts).
    pub lists: u64,
    /// Watch requests answered 200.
    pub watches: u64,
    /// Watches refused with a `410` `ERROR` event.
    pub gone: u64,
    /// `BOOKMARK` events sent.
    pub bookmarks: u64,
    /// Requests refused with an HTTP error (auth, RBAC, injected faults).
    pub refused: u64,
    /// Requests that asked for metadata only.
    pub metadata_only: u64,
}

/// Settings of the stand-in.
#[derive(Debug, Clone)]
pub struct K8sConfig {
    /// The bearer token every request must carry.
    pub token: String,
    /// `None`: every namespace and the cluster scope are allowed (a ClusterRole); otherwise only
    /// these namespaces (Roles).
    pub allowed_namespaces: Option<BTreeSet<String>>,
    /// How often an open watch that asked for bookmarks gets one; `None`: never.
    pub bookmark_every: Option<Duration>,
}

impl Default for K8sConfig {
    fn default() -> Self {
        Self {
            token: "fake-kube-token-not-real".into(),
            allowed_namespaces: None,
            bookmark_every: Some(Duration::from_secs(1)),
        }
    }
}

type Key = (Resource, String, String);

/// Changes kept for watches; older ones are compacted away, as the API server's watch cache
/// keeps a bounded window (so a long demo does not grow without bound).
const MAX_LOG: usize = 10_000;

struct Change {
    rv: u64,
    resource: Resource,
    namespace: String,
    kind: &'static str,
    object: Value,
}

struct K8sState {
    cfg: K8sConfig,
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// Changes after `compacted`, oldest first.
    log: Vec<Change>,
    compacted: u64,
    counts: BTreeMap<Resource, Counts>,
    /// Injected failures: the next `n` requests for a resource get this HTTP status.
    faults: BTreeMap<Resource, (u16, usize)>,
    /// Cancelled to drop every open watch; `abrupt` says how.
    drop_watches: CancellationToken,
    abrupt: bool,
    uid: u64,
}

/// The test's side of a running stand-in.
#[derive(Clone)]
pub struct K8sHandle {
    state: Arc<Mutex<K8sState>>,
    changed: Arc<tokio::sync::watch::Sender<u64>>,
    addr: SocketAddr,
}

fn bound_log(s: &mut K8sState) {
    if s.log.len() >= MAX_LOG {
        let cut = s.log.len() / 2;
        s.compacted = s.log[cut - 1].rv;
        s.log.drain(..cut);
    }
}

fn lock(m: &Mutex<K8sState>) -> std::sync::MutexGuard<'_, K8sState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl K8sHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Creates or replaces an object (its `kind` says which resource); returns its new
    /// `resourceVersion`. A `metadata.uid` is given when the object has none.
    pub fn apply(&self, mut object: Value) -> u64 {
        let resource = object["kind"]
            .as_str()
            .and_then(Resource::of_kind)
            .expect("kind Pod, ReplicaSet or Job");
        object["apiVersion"] = resource.api_version().into();
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_owned();
        let rv = {
            let mut s = lock(&self.state);
            s.rv += 1;
            let rv = s.rv;
            let key = (resource, ns.clone(), name);
            let existed = s.objects.get(&key).cloned();
            let meta = &mut object["metadata"];
            meta["namespace"] = ns.clone().into();
            meta["resourceVersion"] = rv.to_string().into();
            match existed.as_ref().map(|o| o["metadata"]["uid"].clone()) {
                Some(uid) if meta["uid"].is_null() => meta["uid"] = uid,
                _ if meta["uid"].is_null() => {
                    s.uid += 1;
                    meta["uid"] = format!("00000000-0000-4000-8000-{:012}", s.uid).into();
                }
                _ => {}
            }
            let meta = &mut object["metadata"];
            if meta["creationTimestamp"].is_null() {
                meta["creationTimestamp"] = "2026-01-01T00:00:00Z".into();
            }
            s.objects.insert(key, object.clone());
            bound_log(&mut s);
            s.log.push(Change {
                rv,
                resource,
                namespace: ns,
                kind: if existed.is_some() {
                    "MODIFIED"
                } else {
                    "ADDED"
                },
                object,
            });
            rv
        };
        self.changed.send_replace(rv);
        rv
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) -> bool {
        let rv = {
            let mut s = lock(&self.state);
            let Some(mut object) =
                s.objects
                    .remove(&(resource, namespace.to_owned(), name.to_owned()))
            else {
                return false;
            };
            s.rv += 1;
            let rv = s.rv;
            object["metadata"]["resourceVersion"] = rv.to_string().into();
            bound_log(&mut s);
            s.log.push(Change {
                rv,
                resource,
                namespace: namespace.to_owned(),
                kind: "DELETED",
                object,
            });
            rv
        };
        self.changed.send_replace(rv);
        true
    }

    /// Forgets the history up to now, as etcd compaction does: watches and continue tokens
    /// from older versions get `410 Gone`.
    pub fn compact(&self) {
        let mut s = lock(&self.state);
        s.compacted = s.rv;
        s.log.clear();
    }

    /// Ends every open watch: cleanly (the stream ends, as at the server's timeout) or
    /// `abrupt`ly (the connection is cut mid-stream).
    pub fn drop_watches(&self, abrupt: bool) {
        let mut s = lock(&self.state);
        s.abrupt = abrupt;
        let old = std::mem::replace(&mut s.drop_watches, CancellationToken::new());
        old.cancel();
    }

    /// The next `n` requests (list or watch) for `resource` get HTTP `status`.
    pub fn fail_next(&self, resource: Resource, status: u16, n: usize) {
        lock(&self.state).faults.insert(resource, (status, n));
    }

    /// Changes which namespaces the service account may read (`None`: all).
    pub fn set_allowed_namespaces(&self, allowed: Option<BTreeSet<String>>) {
        lock(&self.state).cfg.allowed_namespaces = allowed;
    }

    pub fn counts(&self, resource: Resource) -> Counts {
        lock(&self.state)
            .counts
            .get(&resource)
            .cloned()
            .unwrap_or_default()
    }

    /// The current `resourceVersion` of the cluster.
    pub fn resource_version(&self) -> u64 {
        lock(&self.state).rv
    }

    /// A kubeconfig that points at this stand-in with its token.
    pub fn kubeconfig(&self) -> String {
        let token = lock(&self.state).cfg.token.clone();
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             users:\n- name: fake\n  user:\n    token: {token}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n",
            self.addr
        )
    }
}

/// Starts the stand-in on `addr` (use port 0) until `shutdown`.
pub async fn spawn(
    addr: SocketAddr,
    cfg: K8sConfig,
    shutdown: CancellationToken,
) -> std::io::Result<K8sHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let handle = K8sHandle {
        state: Arc::new(Mutex::new(K8sState {
            cfg,
            // Not 0: "0" means "any version" to the API.
            rv: 1000,
            objects: BTreeMap::new(),
            log: Vec::new(),
            compacted: 1000,
            counts: BTreeMap::new(),
            faults: BTreeMap::new(),
            drop_watches: CancellationToken::new(),
            abrupt: false,
            uid: 0,
        })),
        changed: Arc::new(tokio::sync::watch::channel(1000).0),
        addr,
    };
    let app = Router::new()
        .fallback(serve_request)
        .with_state(handle.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
    Ok(handle)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Params {
    watch: Option<String>,
    resource_version: Option<String>,
    limit: Option<usize>,
    #[serde(rename = "continue")]
    continue_: Option<String>,
    allow_watch_bookmarks: Option<bool>,
    timeout_seconds: Option<u64>,
}

/// A `Status` object with `code`, as the API server sends for errors.
fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    })
}

fn status_response(code: u16, reason: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [("content-type", "application/json")],
        status_body(code, reason, message).to_string(),
    )
        .into_response()
}

/// `(resource, namespace)` of a collection path, `None` for anything else.
fn route(path: &str) -> Option<(Resource, Option<String>)> {
    for r in Resource::ALL {
        let Some(rest) = path.strip_prefix(r.prefix()) else {
            continue;
        };
        if rest == format!("/{}", r.plural()) {
            return Some((r, None));
        }
        let ns = rest
            .strip_prefix("/namespaces/")?
            .strip_suffix(&format!("/{}", r.plural()))?;
        if !ns.is_empty() && !ns.contains('/') {
            return Some((r, Some(ns.to_owned())));
        }
    }
    None
}

async fn serve_request(
    State(h): State<K8sHandle>,
    uri: Uri,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Response {
    let Some((resource, ns)) = route(uri.path()) else {
        return status_response(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let accept = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let metadata_only = accept.contains("as=PartialObjectMetadata");
    {
        let mut s = lock(&h.state);
        let expected = format!("Bearer {}", s.cfg.token);
        let authorized = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == expected);
        let refusal = if !authorized {
            Some((401, "Unauthorized", "Unauthorized".to_owned()))
        } else if let Some((code, n)) = s.faults.get_mut(&resource).filter(|(_, n)| *n > 0) {
            *n -= 1;
            Some((*code, "InternalError", "injected failure".to_owned()))
        } else {
            let allowed = match (&s.cfg.allowed_namespaces, &ns) {
                (None, _) => true,
                (Some(set), Some(ns)) => set.contains(ns),
                (Some(_), None) => false,
            };
            (!allowed).then(|| {
                let verb = if p.watch.as_deref() == Some("true") { "watch" } else { "list" };
                let scope = ns.as_deref().map_or("at the cluster scope".to_owned(), |n| {
                    format!("in the namespace \"{n}\"")
                });
                (
                    403,
                    "Forbidden",
                    format!(
                        "{} is forbidden: User \"system:serviceaccount:monitoring:redis-session-exporter\" \
                         cannot {verb} resource \"{}\" in API group \"{}\" {scope}",
                        resource.plural(),
                        resource.plural(),
                        resource.api_version().rsplit_once('/').map_or("", |(g, _)| g),
                    ),
                )
            })
        };
        let counts = s.counts.entry(resource).or_default();
        if metadata_only {
            counts.metadata_only += 1;
        }
        if let Some((code, reason, message)) = refusal {
            counts.refused += 1;
            return status_response(code, reason, &message);
        }
    }
    if matches!(p.watch.as_deref(), Some("true" | "1")) {
        watch(h, resource, ns, metadata_only, p)
    } else {
        list(&h, resource, ns.as_deref(), metadata_only, &p)
    }
}

/// An object as the client asked for it: whole, or its metadata only.
fn shape(object: &Value, metadata_only: bool) -> Value {
    if metadata_only {
        json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": object["metadata"],
        })
    } else {
        object.clone()
    }
}

#[derive(serde::Serialize, Deserialize)]
struct ContinueToken {
    rv: u64,
    /// The last `namespace/name` of the previous page.
    after: (String, String),
}

fn list(
    h: &K8sHandle,
    resource: Resource,
    ns: Option<&str>,
    metadata_only: bool,
    p: &Params,
) -> Response {
    let mut s = lock(&h.state);
    let token = match p.continue_.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(c)
                .ok()
                .and_then(|b| serde_json::from_slice::<ContinueToken>(&b).ok());
            match decoded {
                None => return status_response(400, "BadRequest", "invalid continue token"),
                Some(t) if t.rv < s.compacted => {
                    s.counts.entry(resource).or_default().refused += 1;
                    return status_response(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result. \
                         You can start a new list without the continue parameter.",
                    );
                }
                Some(t) => Some(t),
            }
        }
    };
    // Pages of one list share the version the first page was read at.
    let list_rv = token.as_ref().map_or(s.rv, |t| t.rv);
    let limit = p.limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
    let mut items = Vec::new();
    let mut last = None;
    let mut more = false;
    for ((r, o_ns, name), obj) in &s.objects {
        if *r != resource || ns.is_some_and(|n| n != o_ns) {
            continue;
        }
        if token.as_ref().is_some_and(|t| {
            (o_ns.as_str(), name.as_str()) <= (t.after.0.as_str(), t.after.1.as_str())
        }) {
            continue;
        }
        if items.len() == limit {
            more = true;
            break;
        }
        // List items carry no kind or apiVersion: the list's own say it.
        let mut item = shape(obj, metadata_only);
        if !metadata_only {
            if let Some(m) = item.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
        }
        items.push(item);
        last = Some((o_ns.clone(), name.clone()));
    }
    let mut metadata = json!({ "resourceVersion": list_rv.to_string() });
    if more {
        let t = ContinueToken {
            rv: list_rv,
            after: last.unwrap_or_default(),
        };
        metadata["continue"] = base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(&t).unwrap_or_default())
            .into();
    }
    let (kind, api_version) = if metadata_only {
        ("PartialObjectMetadataList".to_owned(), "meta.k8s.io/v1")
    } else {
        (format!("{}List", resource.kind()), resource.api_version())
    };
    s.counts.entry(resource).or_default().lists += 1;
    (
        [("content-type", "application/json")],
        json!({ "kind": kind, "apiVersion": api_version, "metadata": metadata, "items": items })
            .to_string(),
    )
        .into_response()
}

fn event_line(kind: &str, object: Value) -> Bytes {
    let mut line = json!({ "type": kind, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch(
    h: K8sHandle,
    resource: Resource,
    ns: Option<String>,
    metadata_only: bool,
    p: Params,
) -> Response {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let from = p.resource_version.as_deref().unwrap_or("");
    let (start, dropped, bookmark_every, gone) = {
        let mut s = lock(&h.state);
        let start = match from {
            // "" and "0": start from the current state, sent as ADDED events first.
            "" | "0" => None,
            v => Some(v.parse::<u64>().unwrap_or(0)),
        };
        let gone = start.is_some_and(|v| v < s.compacted);
        let every = s
            .cfg
            .bookmark_every
            .filter(|_| p.allow_watch_bookmarks == Some(true));
        let c = s.counts.entry(resource).or_default();
        c.watches += 1;
        if gone {
            c.gone += 1;
        }
        (
            start,
            s.drop_watches.clone(),
            every,
            gone.then_some(s.compacted),
        )
    };
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1800));
    let mut changed = h.changed.subscribe();
    tokio::spawn(async move {
        if let Some(compacted) = gone {
            let msg = format!(
                "too old resource version: {} ({compacted})",
                start.unwrap_or(0)
            );
            let _ = tx
                .send(Ok(event_line("ERROR", status_body(410, "Expired", &msg))))
                .await;
            return;
        }
        let matches =
            |r: Resource, o_ns: &str| r == resource && ns.as_deref().is_none_or(|n| n == o_ns);
        let mut sent_up_to = match start {
            Some(v) => v,
            None => {
                let (rv, initial): (u64, Vec<Bytes>) = {
                    let s = lock(&h.state);
                    let objs = s
                        .objects
                        .iter()
                        .filter(|((r, o_ns, _), _)| matches(*r, o_ns))
                        .map(|(_, o)| event_line("ADDED", shape(o, metadata_only)))
                        .collect();
                    (s.rv, objs)
                };
                for line in initial {
                    if tx.send(Ok(line)).await.is_err() {
                        return;
                    }
                }
                rv
            }
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut bookmarks =
            bookmark_every.map(|d| tokio::time::interval_at(tokio::time::Instant::now() + d, d));
        loop {
            // Everything after what was sent, read at one version so a bookmark never skips.
            // Under the lock that `drop_watches` cancels under: a change made after a drop is
            // never sent on a dropped watch.
            let drained: Result<(Vec<Bytes>, u64), bool> = {
                let s = lock(&h.state);
                if dropped.is_cancelled() {
                    Err(s.abrupt)
                } else {
                    let lines = s
                        .log
                        .iter()
                        .filter(|c| c.rv > sent_up_to && matches(c.resource, &c.namespace))
                        .map(|c| event_line(c.kind, shape(&c.object, metadata_only)))
                        .collect();
                    Ok((lines, s.rv))
                }
            };
            let (pending, scanned) = match drained {
                Ok(d) => d,
                Err(abrupt) => {
                    if abrupt {
                        let _ = tx
                            .send(Err(std::io::Error::other("connection cut by the test")))
                            .await;
                    }
                    return;
                }
            };
            for line in pending {
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
            sent_up_to = scanned;
            // Biased: a drop wins over a change that came after it, and a pending change is
            // sent before a bookmark, so a bookmark never names a version it has not sent.
            tokio::select! {
                biased;
                () = dropped.cancelled() => {
                    if lock(&h.state).abrupt {
                        let _ = tx.send(Err(std::io::Error::other("connection cut by the test"))).await;
                    }
                    return;
                }
                () = &mut deadline => return,
                r = changed.changed() => if r.is_err() { return },
                _ = async { bookmarks.as_mut().expect("set").tick().await }, if bookmarks.is_some() => {
                    let bookmark = json!({
                        "kind": if metadata_only { "PartialObjectMetadata" } else { resource.kind() },
                        "apiVersion": if metadata_only { "meta.k8s.io/v1" } else { resource.api_version() },
                        "metadata": { "resourceVersion": sent_up_to.to_string() },
                    });
                    if tx.send(Ok(event_line("BOOKMARK", bookmark))).await.is_err() {
                        return;
                    }
                    lock(&h.state).counts.entry(resource).or_default().bookmarks += 1;
                }
            }
        }
    });
    let body = Body::from_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    (
        [
            ("content-type", "application/json"),
            ("cache-control", "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// A Pod object with `ip`, owned (as controller) by `owner` = `(kind, name)` if given.
pub fn pod(namespace: &str, name: &str, ip: &str, owner: Option<(&str, &str)>) -> Value {
    let mut labels = json!({});
    let mut refs = json!([]);
    if let Some((kind, owner_name)) = owner {
        refs = json!([{ "apiVersion": owner_api_version(kind), "kind": kind, "name": owner_name,
                        "uid": format!("uid-{owner_name}"), "controller": true, "blockOwnerDeletion": true }]);
        // A Deployment's ReplicaSet is `<deployment>-<hash>`; its pods carry the hash.
        if kind == "ReplicaSet" {
            if let Some((_, hash)) = owner_name.rsplit_once('-') {
                labels["pod-template-hash"] = hash.into();
            }
        }
    }
    json!({
        "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace, "labels": labels, "ownerReferences": refs },
        "spec": { "containers": [{ "name": "app", "image": "example/app:1" }], "hostNetwork": false },
        "status": { "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }] },
    })
}

/// A ReplicaSet or Job object owned (as controller) by `owner` = `(kind, name)` if given.
pub fn owner_object(kind: &str, namespace: &str, name: &str, owner: Option<(&str, &str)>) -> Value {
    let refs = owner.map_or(json!([]), |(k, n)| {
        json!([{ "apiVersion": owner_api_version(k), "kind": k, "name": n, "uid": format!("uid-{n}"),
                 "controller": true, "blockOwnerDeletion": true }])
    });
    json!({
        "kind": kind,
        "metadata": { "name": name, "namespace": namespace, "ownerReferences": refs },
        // A pod template, as real objects have: what a metadata-only read saves.
        "spec": { "template": { "metadata": { "labels": { "app": name } },
                                "spec": { "containers": [{ "name": "app", "image": "example/app:1" }] } } },
    })
}

fn owner_api_version(kind: &str) -> &'static str {
    match kind {
        "ReplicaSet" | "Deployment" | "StatefulSet" | "DaemonSet" => "apps/v1",
        "Job" | "CronJob" => "batch/v1",
        _ => "example.com/v1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(
        h: &K8sHandle,
        path: &str,
        accept: Option<&str>,
        token: Option<&str>,
    ) -> (u16, String) {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut req = client.get(format!("http://{}{path}", h.addr()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn start(cfg: K8sConfig) -> K8sHandle {
        spawn(
            "127.0.0.1:0".parse().unwrap(),
            cfg,
            CancellationToken::new(),
        )
        .await
        .unwrap()
    }

    const T: Option<&str> = Some("fake-kube-token-not-real");

    #[tokio::test]
    async fn lists_page_with_one_version_and_old_tokens_are_gone() {
        let h = start(K8sConfig::default()).await;
        for i in 0..5 {
            h.apply(pod("a", &format!("p{i}"), &format!("10.0.0.{i}"), None));
        }
        h.apply(pod("b", "q", "10.0.1.1", None));
        let (code, body) = get(&h, "/api/v1/namespaces/a/pods?limit=2", None, T).await;
        assert_eq!(code, 200);
        let page: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(page["kind"], "PodList");
        assert_eq!(page["items"].as_array().unwrap().len(), 2);
        assert!(
            page["items"][0].get("kind").is_none(),
            "list items carry no kind"
        );
        let rv = page["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_owned();
        let cont = page["metadata"]["continue"].as_str().unwrap().to_owned();
        h.apply(pod("a", "p9", "10.0.0.9", None));
        let path = format!(
            "/api/v1/namespaces/a/pods?limit=10&continue={}",
            urlencode(&cont)
        );
        let (_, body) = get(&h, &path, None, T).await;
        let page2: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(page2["metadata"]["resourceVersion"].as_str().unwrap(), rv);
        let names: Vec<&str> = page2["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["p2", "p3", "p4", "p9"]);
        assert!(page2["metadata"].get("continue").is_none());
        h.compact();
        let (code, body) = get(&h, &path, None, T).await;
        assert_eq!(code, 410, "{body}");
        let (_, all) = get(&h, "/api/v1/pods", None, T).await;
        assert_eq!(
            serde_json::from_str::<Value>(&all).unwrap()["items"]
                .as_array()
                .unwrap()
                .len(),
            7
        );
    }

    fn urlencode(s: &str) -> String {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    }

    #[tokio::test]
    async fn auth_rbac_and_metadata_only() {
        let h = start(K8sConfig::default()).await;
        h.apply(owner_object(
            "ReplicaSet",
            "a",
            "web-abc",
            Some(("Deployment", "web")),
        ));
        assert_eq!(
            get(&h, "/apis/apps/v1/replicasets", None, None).await.0,
            401
        );
        assert_eq!(
            get(&h, "/apis/apps/v1/replicasets", None, Some("wrong"))
                .await
                .0,
            401
        );
        let meta = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
        let (code, body) = get(&h, "/apis/apps/v1/replicasets", Some(meta), T).await;
        assert_eq!(code, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["kind"], "PartialObjectMetadataList");
        assert!(v["items"][0].get("spec").is_none());
        assert_eq!(
            v["items"][0]["metadata"]["ownerReferences"][0]["name"],
            "web"
        );
        h.set_allowed_namespaces(Some(["a".to_owned()].into()));
        let (code, body) = get(&h, "/apis/apps/v1/replicasets", None, T).await;
        assert_eq!(code, 403);
        assert!(
            body.contains("at the cluster scope") && body.contains("API group \\\"apps\\\""),
            "{body}"
        );
        assert_eq!(
            get(&h, "/apis/apps/v1/namespaces/b/replicasets", None, T)
                .await
                .0,
            403
        );
        assert_eq!(
            get(&h, "/apis/apps/v1/namespaces/a/replicasets", None, T)
                .await
                .0,
            200
        );
        h.fail_next(Resource::ReplicaSets, 503, 1);
        assert_eq!(
            get(&h, "/apis/apps/v1/namespaces/a/replicasets", None, T)
                .await
                .0,
            503
        );
        assert_eq!(
            get(&h, "/apis/apps/v1/namespaces/a/replicasets", None, T)
                .await
                .0,
            200
        );
        assert_eq!(
            get(&h, "/apis/apps/v1/namespaces/a/nope", None, T).await.0,
            404
        );
        let c = h.counts(Resource::ReplicaSets);
        assert_eq!((c.lists, c.refused, c.metadata_only), (3, 5, 1));
    }

    #[tokio::test]
    async fn a_watch_from_a_compacted_version_is_told_410_in_the_stream() {
        let h = start(K8sConfig::default()).await;
        let rv = h.apply(pod("a", "p", "10.0.0.1", None));
        h.compact();
        let (code, body) = get(
            &h,
            &format!("/api/v1/pods?watch=true&resourceVersion={}", rv - 1),
            None,
            T,
        )
        .await;
        assert_eq!(code, 200, "the real server answers 200 and an ERROR event");
        let ev: Value = serde_json::from_str(body.trim()).unwrap();
        assert_eq!(ev["type"], "ERROR");
        assert_eq!(ev["object"]["code"], 410);
        assert_eq!(h.counts(Resource::Pods).gone, 1);
    }
}
