//! A local DAS endpoint: checks each request the way the real gateway does (action, version,
//! timestamp window, nonce reuse, the v1 signature) and answers with deterministic sessions, or
//! with whatever fault an instance is set to.
//!
//! Used by `simulate`, `demo`, the end-to-end tests and the benchmarks. Control endpoints under
//! `/_sim/` set faults at run time, return the exact answer an instance gets, and count the
//! requests seen per instance (which is how tests check retries and the rate limit).
//!
//! [`k8s`] is its Kubernetes counterpart: an API server stand-in for the attribution tests.

pub mod data;
pub mod faults;
pub mod k8s;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use faults::Fault;

use crate::acs::sign;
use crate::das::{ACTION, API_VERSION};
use crate::discovery::{self, InventoryInstance, Tag, Tags};

/// What an authenticated request asks for.
enum Request {
    /// GetRedisAllSession of this instance.
    Sessions(String),
    /// R-KVStore DescribeInstances.
    Inventory,
}

/// One key pair the simulator accepts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimKey {
    pub access_key_id: String,
    /// A fake secret of the simulator's own; never a real one.
    pub access_key_secret: String,
    /// When set, requests with this key must carry exactly this `SecurityToken`.
    #[serde(default)]
    pub security_token: Option<String>,
}

/// Per-instance settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimInstance {
    /// Sessions to return; default: the global `sessions`, or 50..=400 by instance id.
    #[serde(default)]
    pub sessions: Option<usize>,
    #[serde(default)]
    pub fault: Option<Fault>,
}

/// The simulator's configuration (`simulate --config FILE`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    pub keys: Vec<SimKey>,
    pub seed: u64,
    /// When true, answers change every `churn_period`; when false they never do (tests).
    pub churn: bool,
    #[serde(with = "humantime_serde")]
    pub churn_period: Duration,
    /// With `churn`, also give some sessions client names, commands and source addresses that
    /// exist for one generation only, so label values keep coming and going without bound (the
    /// soak test's workload: the exporter's caps must hold the series count flat).
    pub churn_identities: bool,
    /// Default sessions per instance; 0 picks 50..=400 by instance id.
    pub sessions: usize,
    /// The gateway's clock-skew allowance.
    #[serde(with = "humantime_serde")]
    pub timestamp_window: Duration,
    pub instances: BTreeMap<String, SimInstance>,
    /// `redis://host:port`: every instance answers with this server's real `CLIENT LIST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_redis: Option<String>,
    /// What R-KVStore `DescribeInstances` lists (served on the same endpoint; replaceable at
    /// run time with `PUT /_sim/inventory`).
    pub inventory: Vec<InventoryInstance>,
    /// A file whose bytes every healthy GetRedisAllSession answer is, verbatim, whatever the
    /// instance (the end-to-end CPU benchmark serves a corpus answer this way); faults still
    /// answer as set. Read once, at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_file: Option<std::path::PathBuf>,
}

/// Key pair the simulator accepts when none is configured (obviously fake).
pub const DEFAULT_KEY_ID: &str = "sim-access-key-id";
pub const DEFAULT_KEY_SECRET: &str = "sim-access-key-secret-not-real";

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            keys: vec![SimKey {
                access_key_id: DEFAULT_KEY_ID.into(),
                access_key_secret: DEFAULT_KEY_SECRET.into(),
                security_token: None,
            }],
            seed: 42,
            churn: false,
            churn_period: Duration::from_secs(15),
            churn_identities: false,
            sessions: 0,
            timestamp_window: Duration::from_secs(15 * 60),
            instances: BTreeMap::new(),
            from_redis: None,
            inventory: Vec::new(),
            body_file: None,
        }
    }
}

/// What the simulator has seen, for `/_sim/stats`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    /// Every request that reached the API endpoint, authenticated or not.
    pub received: u64,
    /// Requests that passed authentication, per instance id.
    pub requests: BTreeMap<String, u64>,
    /// Requests refused by the gateway checks, per error code.
    pub rejected: BTreeMap<String, u64>,
    /// Answers per instance per fault served (`ok` for a normal answer).
    pub answers: BTreeMap<String, BTreeMap<String, u64>>,
    /// Authenticated DescribeInstances requests (pages), per `RegionId`.
    pub describe_requests: BTreeMap<String, u64>,
    /// Unix milliseconds of every authenticated request, in arrival order (bounded).
    pub arrivals_ms: Vec<u64>,
    /// GetRedisAllSession requests being answered right now (held, slow, or streaming).
    pub in_flight: u64,
    /// The most requests in flight at once since start (or the last reset).
    pub max_in_flight: u64,
}

const MAX_ARRIVALS: usize = 100_000;

struct SimState {
    cfg: Mutex<SimConfig>,
    nonces: Mutex<HashMap<String, Instant>>,
    stats: Mutex<Stats>,
    faults: Mutex<HashMap<String, Fault>>,
    /// Woken whenever a fault is set or cleared (what a `hold` waits for).
    faults_changed: tokio::sync::Notify,
    /// The real server behind `from_redis`.
    redis: Option<crate::direct::NodeClient>,
    /// The contents of `body_file`.
    body: Option<Bytes>,
    inventory: Mutex<Vec<InventoryInstance>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The simulator's router. Fails only on a `from_redis` that is not a Redis URL.
pub fn app(cfg: SimConfig) -> Result<Router, String> {
    let redis = cfg
        .from_redis
        .as_deref()
        .map(|url| {
            crate::config::parse_endpoint(url, false)
                .map(|e| crate::direct::NodeClient::new(e, None, None))
                .map_err(|e| format!("--from-redis: {e}"))
        })
        .transpose()?;
    let body = cfg
        .body_file
        .as_ref()
        .map(|p| {
            std::fs::read(p)
                .map(Bytes::from)
                .map_err(|e| format!("body_file {}: {e}", p.display()))
        })
        .transpose()?;
    let faults = cfg
        .instances
        .iter()
        .filter_map(|(id, i)| i.fault.clone().map(|f| (id.clone(), f)))
        .collect();
    let state = Arc::new(SimState {
        inventory: Mutex::new(cfg.inventory.clone()),
        cfg: Mutex::new(cfg),
        nonces: Mutex::new(HashMap::new()),
        stats: Mutex::new(Stats::default()),
        faults: Mutex::new(faults),
        faults_changed: tokio::sync::Notify::new(),
        redis,
        body,
    });
    Ok(Router::new()
        .route("/", any(api))
        .route("/_sim/stats", get(stats).delete(reset_stats))
        .route(
            "/_sim/faults/{instance}",
            put(set_fault).delete(clear_fault),
        )
        .route("/_sim/answer/{instance}", get(current_answer))
        .route("/_sim/keys", put(add_key))
        .route("/_sim/keys/{id}", axum::routing::delete(remove_key))
        .route("/_sim/inventory", get(get_inventory).put(put_inventory))
        .with_state(state))
}

/// Serves the simulator on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    cfg: SimConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = app(cfg).map_err(std::io::Error::other)?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Binds `addr` and serves in the background; returns the bound address. A bad configuration
/// (`from_redis` that is not a Redis URL) is an error here, before anything is served.
pub async fn spawn(
    addr: SocketAddr,
    cfg: SimConfig,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let app = app(cfg).map_err(std::io::Error::other)?;
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "simulator stopped");
        }
    });
    Ok(local)
}

/// An error answer in the gateway's shape.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "RequestId": uuid::Uuid::new_v4().to_string().to_uppercase(),
        "HostId": "das.cn-shanghai.aliyuncs.com",
        "Code": code,
        "Message": message,
        "Recommend": "https://api.aliyun.com/troubleshoot",
    });
    (
        status,
        [("content-type", "application/json;charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

/// The string the gateway signs for this request: every parameter but `Signature`.
fn string_to_sign(method: &Method, params: &[(String, String)]) -> String {
    let unsigned: Vec<(&str, &str)> = params
        .iter()
        .filter(|(k, _)| k != "Signature")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    sign::string_to_sign(method.as_str(), &sign::canonical_query(&unsigned))
}

/// `SignatureDoesNotMatch` as the real gateway words it: the message echoes the server's string
/// to sign, which holds the `AccessKeyId` and the `SecurityToken` (percent-encoded twice). So
/// does this one, to keep clients honest about not logging it.
pub fn signature_mismatch(string_to_sign: &str) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        "SignatureDoesNotMatch",
        &format!(
            "Specified signature is not matched with our calculation. server string to sign is:{string_to_sign}"
        ),
    )
}

/// Checks a request like the gateway does; on success says what it asks for.
#[allow(clippy::result_large_err)] // the error is the response itself, built once per request
fn authenticate(
    st: &SimState,
    method: &Method,
    params: &[(String, String)],
) -> Result<Request, Response> {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let reject = |status, code: &str, msg: &str| {
        *lock(&st.stats).rejected.entry(code.to_owned()).or_insert(0) += 1;
        error_response(status, code, msg)
    };
    let cfg = lock(&st.cfg).clone();
    if get("SignatureMethod") != Some("HMAC-SHA1") || get("SignatureVersion") != Some("1.0") {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "InvalidSignatureMethod",
            "Specified signature method is not valid.",
        ));
    }
    let Some(ts) = get("Timestamp") else {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "MissingTimestamp",
            "Timestamp is mandatory for this action.",
        ));
    };
    let Some(t) = sign::parse_timestamp(ts) else {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "InvalidTimeStamp.Format",
            "Specified time stamp is not in the ISO8601 format.",
        ));
    };
    let now = SystemTime::now();
    let skew = now
        .duration_since(t)
        .or_else(|e| Ok::<_, ()>(e.duration()))
        .unwrap_or_default();
    if skew > cfg.timestamp_window {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "InvalidTimeStamp.Expired",
            "Specified time stamp or date value is expired.",
        ));
    }
    let Some(key) =
        get("AccessKeyId").and_then(|id| cfg.keys.iter().find(|k| k.access_key_id == id))
    else {
        return Err(reject(
            StatusCode::NOT_FOUND,
            "InvalidAccessKeyId.NotFound",
            "Specified access key is not found.",
        ));
    };
    let Some(given) = get("Signature") else {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "MissingSignature",
            "Signature is mandatory for this action.",
        ));
    };
    let to_sign = string_to_sign(method, params);
    if sign::signature(&key.access_key_secret, &to_sign) != given {
        *lock(&st.stats)
            .rejected
            .entry("SignatureDoesNotMatch".to_owned())
            .or_insert(0) += 1;
        return Err(signature_mismatch(&to_sign));
    }
    if key
        .security_token
        .as_deref()
        .is_some_and(|t| get("SecurityToken") != Some(t))
    {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "InvalidSecurityToken.Mismatch",
            "Specified SecurityToken is not valid.",
        ));
    }
    let Some(nonce) = get("SignatureNonce").filter(|n| !n.is_empty()) else {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "MissingSignatureNonce",
            "SignatureNonce is mandatory for this action.",
        ));
    };
    {
        let mut nonces = lock(&st.nonces);
        let horizon = cfg.timestamp_window * 2;
        if nonces.len() > 10_000 {
            nonces.retain(|_, seen| seen.elapsed() < horizon);
        }
        if nonces.insert(nonce.to_owned(), Instant::now()).is_some() {
            drop(nonces);
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "SignatureNonceUsed",
                "Specified signature nonce was used already.",
            ));
        }
    }
    if get("Action") == Some(discovery::ACTION) {
        return if get("Version") != Some(discovery::API_VERSION) {
            Err(reject(
                StatusCode::BAD_REQUEST,
                "InvalidVersion",
                "Specified parameter Version is not valid.",
            ))
        } else {
            Ok(Request::Inventory)
        };
    }
    if get("Version") != Some(API_VERSION) {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "InvalidVersion",
            "Specified parameter Version is not valid.",
        ));
    }
    if get("Action") != Some(ACTION) {
        return Err(reject(
            StatusCode::NOT_FOUND,
            "InvalidAction.NotFound",
            "Specified api is not found, please check your url and method.",
        ));
    }
    if get("Format").is_some_and(|f| !f.eq_ignore_ascii_case("JSON")) {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "InvalidParams",
            "This simulator answers JSON only.",
        ));
    }
    match get("InstanceId").filter(|i| !i.is_empty()) {
        Some(id) => Ok(Request::Sessions(id.to_owned())),
        None => Err(reject(
            StatusCode::BAD_REQUEST,
            "InvalidParams",
            "The request parameters are invalid. InstanceId is mandatory.",
        )),
    }
}

fn parse_params(query: Option<&str>, body: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for src in [query.unwrap_or("").as_bytes(), body] {
        for pair in src.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            let mut kv = pair.splitn(2, |b| *b == b'=');
            let dec = |b: &[u8]| {
                percent_encoding::percent_decode(b)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let k = dec(kv.next().unwrap_or_default());
            let v = dec(kv.next().unwrap_or_default());
            out.push((k, v));
        }
    }
    out
}

fn now_ms() -> u64 {
    crate::clock::unix_millis(SystemTime::now()).unsigned_abs()
}

/// The answer `instance` gets now, without faults.
fn normal_answer(cfg: &SimConfig, instance: &str) -> (Vec<data::SimSession>, u64) {
    let count = cfg
        .instances
        .get(instance)
        .and_then(|i| i.sessions)
        .unwrap_or(if cfg.sessions > 0 {
            cfg.sessions
        } else {
            data::default_count(cfg.seed, instance)
        });
    let generation = if cfg.churn {
        now_ms() / cfg.churn_period.as_millis().max(1) as u64
    } else {
        0
    };
    // With churn on, the count also moves a little, so series come and go.
    let count = if cfg.churn {
        let wobble = (generation % 7) as usize * count / 40;
        count.saturating_sub(count / 10) + wobble
    } else {
        count
    };
    let mut sessions = data::sessions(cfg.seed, instance, generation, count);
    if cfg.churn && cfg.churn_identities {
        churn_identities(&mut sessions, generation);
    }
    (sessions, generation)
}

/// Renames a share of the sessions after `generation`: every value made here is new.
fn churn_identities(sessions: &mut [data::SimSession], generation: u64) {
    for (i, s) in sessions.iter_mut().enumerate() {
        if i % 3 == 0 {
            s.name = format!("job-g{generation}-{}", i % 7);
        }
        if i % 4 == 0 {
            s.cmd = format!("x.cmd.g{generation}.{}", i % 5);
        }
        if i % 5 == 0 {
            let g = generation % 60_000;
            s.client = format!("172.{}.{}.{}", 16 + g / 250 % 16, g % 250, i % 200 + 1);
            s.addr = format!("{}:{}", s.client, 20_000 + i);
        }
    }
}

/// The sessions `instance` has now: generated, or the real server's with `from_redis`.
async fn sessions_now(
    st: &SimState,
    cfg: &SimConfig,
    instance: &str,
) -> Result<Vec<data::SimSession>, Response> {
    let Some(redis) = &st.redis else {
        return Ok(normal_answer(cfg, instance).0);
    };
    match redis.client_list(Duration::from_secs(5)).await {
        Ok((text, own_id)) => Ok(data::from_client_list(&text, redis.node_id(), own_id)),
        Err(e) => {
            tracing::warn!(error = %e, "--from-redis: CLIENT LIST failed");
            Err(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "The Redis server behind the simulator did not answer.",
            ))
        }
    }
}

async fn api(
    State(st): State<Arc<SimState>>,
    method: Method,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    if method != Method::POST && method != Method::GET {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "UnsupportedHTTPMethod",
            "Use GET or POST.",
        );
    }
    lock(&st.stats).received += 1;
    let params = parse_params(q.as_deref(), &body);
    let instance = match authenticate(&st, &method, &params) {
        Ok(Request::Sessions(i)) => i,
        Ok(Request::Inventory) => return describe_instances(&st, &method, &params).await,
        Err(resp) => return resp,
    };
    let n = lock(&st.stats)
        .requests
        .get(&instance)
        .copied()
        .unwrap_or(0);
    let resolve = || {
        lock(&st.faults)
            .get(&instance)
            .cloned()
            .and_then(|f| f.resolve(n))
    };
    let mut fault = resolve();
    let _in_flight = InFlight::enter(&st);
    {
        let mut stats = lock(&st.stats);
        *stats.requests.entry(instance.clone()).or_insert(0) += 1;
        let label = fault.as_ref().map_or("ok".to_owned(), Fault::label);
        *stats
            .answers
            .entry(instance.clone())
            .or_default()
            .entry(label)
            .or_insert(0) += 1;
        if stats.arrivals_ms.len() < MAX_ARRIVALS {
            stats.arrivals_ms.push(now_ms());
        }
    }
    while fault == Some(Fault::Hold) {
        // Armed before the check, so a change made between the check and the wait still wakes it.
        let changed = st.faults_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        fault = resolve();
        if fault == Some(Fault::Hold) {
            changed.await;
            fault = resolve();
        }
    }
    if let (None, Some(body)) = (&fault, &st.body) {
        return json_ok(body.clone());
    }
    let cfg = lock(&st.cfg).clone();
    let sessions = match sessions_now(&st, &cfg, &instance).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let total = sessions.len() as u64;
    let request_id = uuid::Uuid::new_v4().to_string().to_uppercase();
    match fault {
        None => json_ok(data::answer(&sessions, total, now_ms(), &request_id)),
        Some(f) => {
            f.respond(&sessions, &request_id, &string_to_sign(&method, &params))
                .await
        }
    }
}

fn json_ok(body: impl Into<Body>) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json;charset=utf-8")],
        body.into(),
    )
        .into_response()
}

async fn stats(State(st): State<Arc<SimState>>) -> Json<Stats> {
    Json(lock(&st.stats).clone())
}

async fn reset_stats(State(st): State<Arc<SimState>>) -> StatusCode {
    let mut stats = lock(&st.stats);
    // Requests still in flight stay counted, so their end does not go below zero.
    let in_flight = stats.in_flight;
    *stats = Stats {
        in_flight,
        max_in_flight: in_flight,
        ..Stats::default()
    };
    StatusCode::NO_CONTENT
}

/// Counts one request in flight for as long as it lives (dropped with the handler, also when
/// the client goes away mid-answer).
struct InFlight<'a>(&'a SimState);

impl<'a> InFlight<'a> {
    fn enter(st: &'a SimState) -> Self {
        let mut stats = lock(&st.stats);
        stats.in_flight += 1;
        stats.max_in_flight = stats.max_in_flight.max(stats.in_flight);
        InFlight(st)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut stats = lock(&self.0.stats);
        stats.in_flight = stats.in_flight.saturating_sub(1);
    }
}

async fn set_fault(
    State(st): State<Arc<SimState>>,
    Path(instance): Path<String>,
    Json(f): Json<Fault>,
) -> StatusCode {
    lock(&st.faults).insert(instance, f);
    st.faults_changed.notify_waiters();
    StatusCode::NO_CONTENT
}

async fn clear_fault(State(st): State<Arc<SimState>>, Path(instance): Path<String>) -> StatusCode {
    lock(&st.faults).remove(&instance);
    st.faults_changed.notify_waiters();
    StatusCode::NO_CONTENT
}

async fn add_key(State(st): State<Arc<SimState>>, Json(k): Json<SimKey>) -> StatusCode {
    lock(&st.cfg).keys.push(k);
    StatusCode::NO_CONTENT
}

/// Forgets a key pair, as a rotated or expired STS key is forgotten by the real gateway.
async fn remove_key(State(st): State<Arc<SimState>>, Path(id): Path<String>) -> StatusCode {
    lock(&st.cfg).keys.retain(|k| k.access_key_id != id);
    StatusCode::NO_CONTENT
}

#[derive(Debug, Deserialize)]
struct AnswerQuery {
    #[serde(default)]
    timestamp_ms: Option<u64>,
}

/// The exact body a healthy poll of `instance` gets right now (with churn off, every poll).
async fn current_answer(
    State(st): State<Arc<SimState>>,
    Path(instance): Path<String>,
    Query(q): Query<AnswerQuery>,
    _h: HeaderMap,
) -> Response {
    let cfg = lock(&st.cfg).clone();
    let sessions = match sessions_now(&st, &cfg, &instance).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    json_ok(data::answer(
        &sessions,
        sessions.len() as u64,
        q.timestamp_ms.unwrap_or_else(now_ms),
        "SIM",
    ))
}

async fn get_inventory(State(st): State<Arc<SimState>>) -> Json<Vec<InventoryInstance>> {
    Json(lock(&st.inventory).clone())
}

async fn put_inventory(
    State(st): State<Arc<SimState>>,
    Json(list): Json<Vec<InventoryInstance>>,
) -> StatusCode {
    *lock(&st.inventory) = list;
    StatusCode::NO_CONTENT
}

/// R-KVStore `DescribeInstances`: the filters, the paging and the errors the real API applies
/// (`RegionId` is required with tags, at most 5 tags, `PageSize` at most 50). A fault set on
/// `DescribeInstances@<region>` or `DescribeInstances` (`/_sim/faults/…`) answers instead.
async fn describe_instances(
    st: &SimState,
    method: &Method,
    params: &[(String, String)],
) -> Response {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let region = get("RegionId").filter(|r| !r.is_empty());
    *lock(&st.stats)
        .describe_requests
        .entry(region.unwrap_or("").to_owned())
        .or_insert(0) += 1;
    let request_id = uuid::Uuid::new_v4().to_string().to_uppercase();
    let fault = {
        let faults = lock(&st.faults);
        region
            .and_then(|r| faults.get(&format!("{}@{r}", discovery::ACTION)))
            .or_else(|| faults.get(discovery::ACTION))
            .cloned()
    };
    if let Some(f) = fault {
        return f
            .respond(&[], &request_id, &string_to_sign(method, params))
            .await;
    }
    let bad = |code: &str, msg: &str| error_response(StatusCode::BAD_REQUEST, code, msg);
    let mut tags = Vec::new();
    for n in 1..=20 {
        match (get(&format!("Tag.{n}.Key")), get(&format!("Tag.{n}.Value"))) {
            (Some(k), v) => tags.push((k.to_owned(), v.unwrap_or("").to_owned())),
            (None, Some(_)) => return bad("InvalidTagKey", "Tag.N.Value given without Tag.N.Key."),
            (None, None) => {}
        }
    }
    if tags.len() > crate::config::MAX_TAGS {
        return bad("InvalidTags.Count", "At most 5 tags are allowed.");
    }
    if !tags.is_empty() && region.is_none() {
        return bad(
            "MissingRegionId",
            "RegionId is mandatory when filtering by tags.",
        );
    }
    let page_size: u64 = match get("PageSize").map(str::parse::<u64>) {
        None => 30,
        Some(Ok(n)) if (1..=u64::from(discovery::PAGE_SIZE)).contains(&n) => n,
        _ => return bad("InvalidPageSize", "PageSize must be between 1 and 50."),
    };
    let page: u64 = match get("PageNumber").map(str::parse::<u64>) {
        None => 1,
        Some(Ok(n)) if n >= 1 => n,
        _ => return bad("InvalidPageNumber", "PageNumber must be at least 1."),
    };
    let ids: Option<Vec<&str>> = get("InstanceIds").map(|s| s.split(',').collect());
    let eq = |want: Option<&str>, have: &str| want.is_none_or(|w| w.eq_ignore_ascii_case(have));
    let mut matching: Vec<InventoryInstance> = lock(&st.inventory)
        .iter()
        .filter(|i| {
            eq(region, &i.region_id)
                && eq(get("InstanceStatus"), &i.instance_status)
                && eq(get("ArchitectureType"), &i.architecture_type)
                && eq(get("InstanceType"), &i.instance_type)
                && ids
                    .as_ref()
                    .is_none_or(|ids| ids.contains(&i.instance_id.as_str()))
                && tags.iter().all(|(k, v)| {
                    i.tags
                        .iter()
                        .flat_map(|t| &t.tag)
                        .any(|t| &t.key == k && &t.value == v)
                })
        })
        .cloned()
        .collect();
    matching.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    let total = matching.len();
    let list: Vec<serde_json::Value> = matching
        .into_iter()
        .skip(((page - 1) * page_size) as usize)
        .take(page_size as usize)
        .map(|mut i| {
            // The real answer always carries Tags (possibly empty) and more fields than these.
            i.tags.get_or_insert_with(|| Tags {
                tag: Vec::<Tag>::new(),
            });
            let mut v = serde_json::to_value(&i).unwrap_or_default();
            v["Capacity"] = 1024.into();
            v["ZoneId"] = format!("{}-a", i.region_id).into();
            v
        })
        .collect();
    let body = serde_json::json!({
        "RequestId": request_id,
        "PageNumber": page,
        "PageSize": page_size,
        "TotalCount": total,
        "Instances": { "KVStoreInstance": list },
    });
    json_ok(body.to_string().into_bytes())
}
