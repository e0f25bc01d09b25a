//! Fakes of the two credential services, on loopback in the test process, each checking
//! requests the way the real one does: STS `AssumeRoleWithOIDC` and the ECS metadata service
//! (IMDSv2). Every set of credentials they issue is registered with the DAS simulator (key,
//! secret and SecurityToken), so the simulator verifies that the exporter signs with them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};

/// One set of credentials issued by a fake.
#[derive(Debug, Clone)]
pub struct Issued {
    pub access_key_id: String,
    pub access_key_secret: String,
    pub security_token: String,
    pub expiration: SystemTime,
}

/// Issues unique credentials living `lifetime`, registered with the simulator at `sim`.
async fn issue(sim: SocketAddr, n: usize, prefix: &str, lifetime: Duration) -> Issued {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let issued = Issued {
        access_key_id: format!("STS.{prefix}{n}"),
        // Characters that get percent-encoded, so leaks in encoded form are caught too.
        access_key_secret: format!("{prefix}-secret/{n}+{tag}"),
        security_token: format!("{prefix}-token/{n}+{tag}=="),
        expiration: SystemTime::now() + lifetime,
    };
    add_sim_key(
        sim,
        serde_json::json!({
            "access_key_id": issued.access_key_id,
            "access_key_secret": issued.access_key_secret,
            "security_token": issued.security_token,
        }),
    )
    .await;
    issued
}

/// `PUT /_sim/keys` on the simulator.
pub async fn add_sim_key(sim: SocketAddr, key: serde_json::Value) {
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .put(format!("http://{sim}/_sim/keys"))
        .header("content-type", "application/json")
        .body(key.to_string())
        .send()
        .await
        .expect("register the key with the simulator");
    assert!(r.status().is_success(), "{}", r.status());
}

fn sts_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Removes a key from the simulator: from then on only the newer credentials work.
pub async fn forget_key(sim: SocketAddr, id: &str) {
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .delete(format!("http://{sim}/_sim/keys/{id}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

fn error(status: StatusCode, code: &str, msg: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"RequestId": "FAKE", "Code": code, "Message": msg})),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// STS

/// What the fake STS expects and what it has seen.
#[derive(Debug, Default)]
pub struct StsState {
    pub role_arn: String,
    pub provider_arn: String,
    /// The only token accepted right now (the test rotates it with the file).
    pub valid_token: String,
    pub lifetime: Duration,
    pub sim: Option<SocketAddr>,
    /// Tokens of accepted requests, in order.
    pub accepted_tokens: Vec<String>,
    /// Reasons of refused requests.
    pub refused: Vec<String>,
    pub issued: Vec<Issued>,
    /// Session names seen.
    pub session_names: Vec<String>,
}

pub type Shared<T> = Arc<Mutex<T>>;

/// Starts the fake STS; returns its address and state.
pub async fn start_sts(state: StsState) -> (SocketAddr, Shared<StsState>) {
    let st = Arc::new(Mutex::new(state));
    let app = Router::new()
        .route("/", post(assume_role))
        .with_state(st.clone());
    (serve(app).await, st)
}

async fn serve(app: Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

fn form(body: &str) -> HashMap<String, String> {
    url_pairs(body)
}

fn url_pairs(s: &str) -> HashMap<String, String> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            let dec = |x: &str| {
                percent_encoding::percent_decode_str(x)
                    .decode_utf8()
                    .ok()
                    .map(|c| c.into_owned())
            };
            Some((dec(k)?, dec(v)?))
        })
        .collect()
}

async fn assume_role(
    State(st): State<Shared<StsState>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let f = form(&body);
    let check = || -> Result<(), String> {
        let want = |m: &HashMap<String, String>, k: &str, v: &str| {
            (m.get(k).map(String::as_str) == Some(v))
                .then_some(())
                .ok_or(format!("{k} should be {v:?}, is {:?}", m.get(k)))
        };
        want(&q, "Action", "AssumeRoleWithOIDC")?;
        want(&q, "Version", "2015-04-01")?;
        want(&q, "Format", "JSON")?;
        let ts = q.get("Timestamp").ok_or("no Timestamp")?;
        let t = humantime::parse_rfc3339(ts).map_err(|_| format!("bad Timestamp {ts}"))?;
        let skew = SystemTime::now()
            .duration_since(t)
            .unwrap_or_else(|e| e.duration());
        if skew > Duration::from_secs(900) {
            return Err("Timestamp too far off".into());
        }
        // Anonymous: anything of a signed request is a client bug.
        for k in [
            "Signature",
            "AccessKeyId",
            "SignatureNonce",
            "SecurityToken",
        ] {
            if q.contains_key(k) || f.contains_key(k) {
                return Err(format!("{k} must not be sent"));
            }
        }
        if !headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
        {
            return Err("form body expected".into());
        }
        let s = st.lock().unwrap();
        want(&f, "RoleArn", &s.role_arn)?;
        want(&f, "OIDCProviderArn", &s.provider_arn)?;
        let d: u64 = f
            .get("DurationSeconds")
            .and_then(|d| d.parse().ok())
            .ok_or("DurationSeconds missing")?;
        if d < 900 {
            return Err("DurationSeconds below 900".into());
        }
        let name = f.get("RoleSessionName").ok_or("RoleSessionName missing")?;
        if name.len() < 2 {
            return Err("RoleSessionName too short".into());
        }
        Ok(())
    };
    if let Err(e) = check() {
        st.lock().unwrap().refused.push(e.clone());
        return error(StatusCode::BAD_REQUEST, "InvalidParameter", &e);
    }
    let token = f.get("OIDCToken").cloned().unwrap_or_default();
    let (sim, n, lifetime) = {
        let mut s = st.lock().unwrap();
        if token != s.valid_token {
            s.refused.push("stale or wrong OIDC token".into());
            return error(
                StatusCode::BAD_REQUEST,
                "AuthenticationFail.OIDCToken.Invalid",
                "The OIDC token is invalid or expired.",
            );
        }
        s.accepted_tokens.push(token);
        s.session_names
            .push(f.get("RoleSessionName").cloned().unwrap_or_default());
        (s.sim.unwrap(), s.issued.len(), s.lifetime)
    };
    let c = issue(sim, n, "oidc", lifetime).await;
    st.lock().unwrap().issued.push(c.clone());
    Json(serde_json::json!({
        "RequestId": "FAKE-STS",
        "Credentials": {
            "AccessKeyId": c.access_key_id,
            "AccessKeySecret": c.access_key_secret,
            "SecurityToken": c.security_token,
            "Expiration": sts_time(c.expiration),
        },
        "AssumedRoleUser": {"Arn": "acs:ram::1:role/x/s", "AssumedRoleId": "1:s"},
        "OIDCTokenInfo": {"Subject": "system:serviceaccount:ns:sa"}
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------------
// ECS metadata

#[derive(Debug, Default)]
pub struct MetaState {
    pub role: String,
    pub lifetime: Duration,
    pub sim: Option<SocketAddr>,
    /// IMDSv2 session tokens handed out.
    pub tokens: Vec<String>,
    /// Requests of any kind.
    pub requests: usize,
    /// Requests refused for a missing or unknown session token, or a missing TTL header.
    pub unauthorized: usize,
    pub role_listings: usize,
    /// Raw paths of the credential requests, as they arrived.
    pub credential_paths: Vec<String>,
    pub issued: Vec<Issued>,
}

pub async fn start_metadata(state: MetaState) -> (SocketAddr, Shared<MetaState>) {
    let st = Arc::new(Mutex::new(state));
    let app = Router::new()
        .route("/latest/api/token", put(meta_token))
        .route(
            "/latest/meta-data/ram/security-credentials/",
            get(meta_roles),
        )
        // Matched on the raw path, byte for byte, as the real service does: a role name
        // requested with escapes it does not need (`%2D` for `-`) is a different, unknown role.
        .fallback(get(meta_creds))
        .with_state(st.clone());
    (serve(app).await, st)
}

async fn meta_token(State(st): State<Shared<MetaState>>, headers: HeaderMap) -> Response {
    let mut s = st.lock().unwrap();
    s.requests += 1;
    let ttl = headers
        .get("x-aliyun-ecs-metadata-token-ttl-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if !ttl.is_some_and(|t| (1..=21600).contains(&t)) {
        s.unauthorized += 1;
        return (StatusCode::BAD_REQUEST, "ttl header required").into_response();
    }
    let t = format!("imds-{}", uuid::Uuid::new_v4().simple());
    s.tokens.push(t.clone());
    t.into_response()
}

fn authorized(s: &mut MetaState, headers: &HeaderMap) -> bool {
    s.requests += 1;
    let ok = headers
        .get("x-aliyun-ecs-metadata-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| s.tokens.iter().any(|k| k == t));
    if !ok {
        s.unauthorized += 1;
    }
    ok
}

async fn meta_roles(State(st): State<Shared<MetaState>>, headers: HeaderMap) -> Response {
    let mut s = st.lock().unwrap();
    if !authorized(&mut s, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    s.role_listings += 1;
    s.role.clone().into_response()
}

async fn meta_creds(State(st): State<Shared<MetaState>>, uri: Uri, headers: HeaderMap) -> Response {
    let (sim, n, lifetime) = {
        let mut s = st.lock().unwrap();
        if !authorized(&mut s, &headers) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        s.credential_paths.push(uri.path().to_owned());
        if uri.path() != format!("/latest/meta-data/ram/security-credentials/{}", s.role) {
            return StatusCode::NOT_FOUND.into_response();
        }
        (s.sim.unwrap(), s.issued.len(), s.lifetime)
    };
    let c = issue(sim, n, "ecs", lifetime).await;
    st.lock().unwrap().issued.push(c.clone());
    Json(serde_json::json!({
        "Code": "Success",
        "AccessKeyId": c.access_key_id,
        "AccessKeySecret": c.access_key_secret,
        "SecurityToken": c.security_token,
        "Expiration": sts_time(c.expiration),
        "LastUpdated": sts_time(SystemTime::now()),
    }))
    .into_response()
}
