//! A local DAS endpoint: checks each request the way the real gateway does (action, version,
//! timestamp window, nonce reuse, the v1 signature) and answers with deterministic sessions, or
//! with whatever fault an instance is set to.
//!
//! Used by `simulate`, `demo`, the end-to-end tests and the benchmarks. Control endpoints under
//! `/_sim/` set faults at run time, return the exact answer an instance gets, and count the
//! requests seen per instance (which is how tests check retries and the rate limit).

pub mod data;
pub mod faults;

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

use crate::das::{sign, ACTION, API_VERSION};

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
        }
    }
}

/// What the simulator has seen, for `/_sim/stats`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    /// Requests that passed authentication, per instance id.
    pub requests: BTreeMap<String, u64>,
    /// Requests refused by the gateway checks, per error code.
    pub rejected: BTreeMap<String, u64>,
    /// Answers per instance per fault served (`ok` for a normal answer).
    pub answers: BTreeMap<String, BTreeMap<String, u64>>,
    /// Unix milliseconds of every authenticated request, in arrival order (bounded).
    pub arrivals_ms: Vec<u64>,
}

const MAX_ARRIVALS: usize = 100_000;

struct SimState {
    cfg: Mutex<SimConfig>,
    nonces: Mutex<HashMap<String, Instant>>,
    stats: Mutex<Stats>,
    faults: Mutex<HashMap<String, Fault>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The simulator's router.
pub fn app(cfg: SimConfig) -> Router {
    let faults = cfg
        .instances
        .iter()
        .filter_map(|(id, i)| i.fault.clone().map(|f| (id.clone(), f)))
        .collect();
    let state = Arc::new(SimState {
        cfg: Mutex::new(cfg),
        nonces: Mutex::new(HashMap::new()),
        stats: Mutex::new(Stats::default()),
        faults: Mutex::new(faults),
    });
    Router::new()
        .route("/", any(api))
        .route("/_sim/stats", get(stats).delete(reset_stats))
        .route(
            "/_sim/faults/{instance}",
            put(set_fault).delete(clear_fault),
        )
        .route("/_sim/answer/{instance}", get(current_answer))
        .route("/_sim/keys", put(add_key))
        .with_state(state)
}

/// Serves the simulator on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    cfg: SimConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app(cfg))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Binds `addr` and serves in the background; returns the bound address.
pub async fn spawn(
    addr: SocketAddr,
    cfg: SimConfig,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = serve(listener, cfg, shutdown).await {
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

/// Checks a request like the gateway does; on success returns the instance id.
#[allow(clippy::result_large_err)] // the error is the response itself, built once per request
fn authenticate(
    st: &SimState,
    method: &Method,
    params: &[(String, String)],
) -> Result<String, Response> {
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
    let unsigned: Vec<(&str, &str)> = params
        .iter()
        .filter(|(k, _)| k != "Signature")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let to_sign = sign::string_to_sign(method.as_str(), &sign::canonical_query(&unsigned));
    if sign::signature(&key.access_key_secret, &to_sign) != given {
        // The real gateway echoes its string to sign; so does this one, to keep clients honest
        // about not logging it.
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "SignatureDoesNotMatch",
            &format!("Specified signature is not matched with our calculation. server string to sign is:{to_sign}"),
        ));
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
        Some(id) => Ok(id.to_owned()),
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
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
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
    let params = parse_params(q.as_deref(), &body);
    let instance = match authenticate(&st, &method, &params) {
        Ok(i) => i,
        Err(resp) => return resp,
    };
    let fault = lock(&st.faults).get(&instance).cloned();
    let fault = fault.and_then(|f| {
        f.resolve(
            lock(&st.stats)
                .requests
                .get(&instance)
                .copied()
                .unwrap_or(0),
        )
    });
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
    let cfg = lock(&st.cfg).clone();
    let (sessions, _) = normal_answer(&cfg, &instance);
    let total = sessions.len() as u64;
    let request_id = uuid::Uuid::new_v4().to_string().to_uppercase();
    match fault {
        None => json_ok(data::answer(&sessions, total, now_ms(), &request_id)),
        Some(f) => f.respond(&sessions, &request_id).await,
    }
}

fn json_ok(body: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json;charset=utf-8")],
        Body::from(body),
    )
        .into_response()
}

async fn stats(State(st): State<Arc<SimState>>) -> Json<Stats> {
    Json(lock(&st.stats).clone())
}

async fn reset_stats(State(st): State<Arc<SimState>>) -> StatusCode {
    *lock(&st.stats) = Stats::default();
    StatusCode::NO_CONTENT
}

async fn set_fault(
    State(st): State<Arc<SimState>>,
    Path(instance): Path<String>,
    Json(f): Json<Fault>,
) -> StatusCode {
    lock(&st.faults).insert(instance, f);
    StatusCode::NO_CONTENT
}

async fn clear_fault(State(st): State<Arc<SimState>>, Path(instance): Path<String>) -> StatusCode {
    lock(&st.faults).remove(&instance);
    StatusCode::NO_CONTENT
}

async fn add_key(State(st): State<Arc<SimState>>, Json(k): Json<SimKey>) -> StatusCode {
    lock(&st.cfg).keys.push(k);
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
    let (sessions, _) = normal_answer(&cfg, &instance);
    json_ok(data::answer(
        &sessions,
        sessions.len() as u64,
        q.timestamp_ms.unwrap_or_else(now_ms),
        "SIM",
    ))
}
