//! The direct source: `CLIENT LIST` read from the Redis nodes themselves, for what DAS cannot
//! see (direct-connection clusters) and for self-managed Redis.
//!
//! One multiplexed connection per node is kept and reused across polls; it is named
//! [`CLIENT_NAME`] so it (and any other exporter's) is left out of every figure. A connection that
//! fails or times out is dropped and re-opened on the next attempt; the back-off between attempts
//! is [`with_retries`]'s, so a dead node costs one throttled attempt per back-off step, never a
//! reconnect storm. An attempt covers every node of the instance (their replies are fetched
//! concurrently), so it takes one throttle slot, like one DAS request does.
//!
//! The pure parts live in [`client_list`] (the line parser) and [`cluster`] (`CLUSTER NODES`).

pub mod client_list;
pub mod cluster;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, IntoConnectionInfo, RedisError, ServerErrorKind};

use crate::config::{InstanceConfig, SourceKind};
use crate::credentials::BoxFuture;
use crate::snapshot::{Fold, Limits, Snapshot};
use crate::source::{with_retries, PollContext, PollError, Source};

/// The name the exporter gives its own connections (`CLIENT SETNAME`); clients with this name are
/// excluded from every figure, so several exporters watching one server never count each other.
pub const CLIENT_NAME: &str = "redis-session-exporter";

/// Connections unused for this long are closed (their instance was removed or changed).
const IDLE_CONNECTION: Duration = Duration::from_secs(3600);

/// One node to ask: where to connect and the `node_id` its sessions are labelled with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// A `redis://`, `rediss://` or `unix://` URL without credentials.
    pub url: String,
    /// `host:port` (or the socket path).
    pub node_id: String,
}

/// Parses an endpoint: a URL, or a bare `host:port` that takes `tls` from the instance address.
pub fn parse_endpoint(text: &str, tls: bool) -> Result<Endpoint, String> {
    let text = text.trim();
    let with_scheme = if text.contains("://") {
        text.to_owned()
    } else {
        format!("{}://{text}", if tls { "rediss" } else { "redis" })
    };
    let url =
        reqwest::Url::parse(&with_scheme).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if url.password().is_some() {
        return Err(
            "a password inside the URL ends up in version control and in logs; \
                    put it in a file and set password_file"
                .into(),
        );
    }
    if !url.username().is_empty() {
        return Err("set the ACL user with the `username` key, not inside the URL".into());
    }
    match url.scheme() {
        "redis" | "rediss" => {
            let host = url
                .host_str()
                .filter(|h| !h.is_empty())
                .ok_or_else(|| format!("{text:?} has no host"))?;
            let port = url.port().unwrap_or(6379);
            Ok(Endpoint {
                url: format!("{}://{host}:{port}", url.scheme()),
                node_id: format!("{host}:{port}"),
            })
        }
        "unix" | "redis+unix" => {
            if url.path().is_empty() || url.path() == "/" {
                return Err(format!("{text:?} has no socket path"));
            }
            Ok(Endpoint {
                url: format!("unix://{}", url.path()),
                node_id: url.path().to_owned(),
            })
        }
        other => Err(format!(
            "scheme {other:?} is not redis://, rediss:// or unix://"
        )),
    }
}

fn is_tls(address: Option<&str>) -> bool {
    address.is_some_and(|a| a.trim_start().starts_with("rediss://"))
}

/// The configuration checks of one instance, as `(key, reason)` pairs relative to the
/// instance (`address`, `nodes[1]`, …). Called by [`crate::config::Config::validate`].
pub fn validate_instance(inst: &InstanceConfig) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    if inst.source != SourceKind::Direct {
        let set: [(&str, bool); 9] = [
            ("address", inst.address.is_some()),
            ("username", inst.username.is_some()),
            ("password_file", inst.password_file.is_some()),
            ("db", inst.db.is_some()),
            ("nodes", !inst.nodes.is_empty()),
            ("cluster", inst.cluster),
            ("tls_ca_file", inst.tls_ca_file.is_some()),
            ("tls_cert_file", inst.tls_cert_file.is_some()),
            ("tls_key_file", inst.tls_key_file.is_some()),
        ];
        for (key, present) in set {
            if present {
                errs.push((
                    key.to_owned(),
                    "only used with source = \"direct\"; add it, or remove this key".to_owned(),
                ));
            }
        }
        return errs;
    }
    let tls = is_tls(inst.address.as_deref());
    match &inst.address {
        Some(a) => {
            if let Err(e) = parse_endpoint(a, false) {
                errs.push(("address".to_owned(), e));
            }
        }
        None if inst.nodes.is_empty() => errs.push((
            "address".to_owned(),
            "required with source = \"direct\" (redis://host:port or rediss://host:port), \
             unless nodes is set"
                .to_owned(),
        )),
        None => {}
    }
    if inst.cluster && !inst.nodes.is_empty() {
        errs.push((
            "cluster".to_owned(),
            "cluster = true finds the nodes itself; remove nodes, or set cluster = false"
                .to_owned(),
        ));
    }
    if inst.cluster && inst.address.is_none() {
        errs.push((
            "address".to_owned(),
            "cluster = true needs an address to ask for the cluster's nodes".to_owned(),
        ));
    }
    for (j, n) in inst.nodes.iter().enumerate() {
        if let Err(e) = parse_endpoint(n, tls) {
            errs.push((format!("nodes[{j}]"), e));
        }
    }
    if let Some(u) = &inst.username {
        if u.is_empty() || u.contains(char::is_whitespace) {
            errs.push((
                "username".to_owned(),
                "must be a non-empty name without spaces".to_owned(),
            ));
        }
    }
    if let Some(p) = &inst.password_file {
        if let Err(e) = read_password(p) {
            errs.push(("password_file".to_owned(), e));
        }
    }
    let any_tls = tls
        || inst
            .nodes
            .iter()
            .any(|n| n.trim_start().starts_with("rediss://"));
    for (key, path) in [
        ("tls_ca_file", &inst.tls_ca_file),
        ("tls_cert_file", &inst.tls_cert_file),
        ("tls_key_file", &inst.tls_key_file),
    ] {
        if path.is_some() && !any_tls {
            errs.push((
                key.to_owned(),
                "only used with TLS: write the address (or nodes) as rediss://host:port, \
                 or remove this key"
                    .to_owned(),
            ));
        }
    }
    match (&inst.tls_cert_file, &inst.tls_key_file) {
        (Some(_), None) => errs.push((
            "tls_key_file".to_owned(),
            "required with tls_cert_file (the client certificate's private key)".to_owned(),
        )),
        (None, Some(_)) => errs.push((
            "tls_cert_file".to_owned(),
            "required with tls_key_file (the client certificate)".to_owned(),
        )),
        _ => {}
    }
    let files = TlsFiles::of(inst);
    for (key, result) in files.check() {
        if let Err(e) = result {
            errs.push((key.to_owned(), e));
        }
    }
    if inst.db.is_some_and(|d| d < 0) {
        errs.push((
            "db".to_owned(),
            "must not be negative (it is ignored anyway: CLIENT LIST is server-wide)".to_owned(),
        ));
    }
    errs
}

/// Reads a password file: the first line, without its line ending. The error never holds content.
fn read_password(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(line.to_owned())
}

/// The TLS files of an instance (`tls_ca_file`, `tls_cert_file`, `tls_key_file`). Like the
/// password file they are read at each (re)connect, so renewed certificates are picked up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    fn of(inst: &InstanceConfig) -> Self {
        Self {
            ca: inst.tls_ca_file.clone(),
            cert: inst.tls_cert_file.clone(),
            key: inst.tls_key_file.clone(),
        }
    }

    fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// Each configured file read and parsed, under its key. Errors name the file, never its
    /// contents (a key file is a secret).
    fn check(&self) -> Vec<(&'static str, Result<Vec<u8>, String>)> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs = |path: &Path| {
            let pem = read_file(path)?;
            let n = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| format!("{} holds a malformed PEM certificate", path.display()))?
                .len();
            if n == 0 {
                return Err(format!("{} holds no PEM certificate", path.display()));
            }
            Ok(pem)
        };
        let key = |path: &Path| {
            let pem = read_file(path)?;
            PrivateKeyDer::from_pem_slice(&pem)
                .map_err(|_| format!("{} holds no PEM private key", path.display()))?;
            Ok(pem)
        };
        let mut out = Vec::new();
        if let Some(p) = &self.ca {
            out.push(("tls_ca_file", certs(p)));
        }
        if let Some(p) = &self.cert {
            out.push(("tls_cert_file", certs(p)));
        }
        if let Some(p) = &self.key {
            out.push(("tls_key_file", key(p)));
        }
        out
    }

    /// What the Redis client takes: the CAs (instead of the system's roots) and the client
    /// certificate, read now.
    fn load(&self) -> Result<redis::TlsCertificates, PollError> {
        let mut ca = None;
        let (mut cert, mut key) = (None, None);
        for (name, result) in self.check() {
            let pem = result.map_err(|message| PollError::Other {
                code: "tls_files",
                message,
            })?;
            match name {
                "tls_ca_file" => ca = Some(pem),
                "tls_cert_file" => cert = Some(pem),
                _ => key = Some(pem),
            }
        }
        Ok(redis::TlsCertificates {
            client_tls: cert
                .zip(key)
                .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                }),
            root_cert: ca,
        })
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Turns a client error into a bounded, classified [`PollError`].
pub fn classify(e: &RedisError) -> PollError {
    let msg = e.to_string();
    let other = |code| PollError::Other {
        code,
        message: msg.clone(),
    };
    if e.kind() == ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
    {
        return other("auth");
    }
    if e.kind() == ErrorKind::Server(ServerErrorKind::NoPerm) || e.code() == Some("NOPERM") {
        return other("noperm");
    }
    if is_tls_error(e) {
        return other("tls");
    }
    if e.is_timeout() {
        return PollError::Timeout(Duration::ZERO);
    }
    if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        return PollError::Connection(msg);
    }
    match e.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => other("protocol"),
        ErrorKind::InvalidClientConfig => other("config"),
        ErrorKind::Server(ServerErrorKind::BusyLoading) => PollError::Connection(msg),
        ErrorKind::Server(_) | ErrorKind::Extension => other("server"),
        _ => other("connection"),
    }
}

/// Whether the handshake or the session failed on TLS grounds (an unknown CA, a name mismatch,
/// a refused client certificate): rustls' own error somewhere in the chain of causes. The Redis
/// client keeps an I/O error behind an `Arc`, and `io::Error` hands out its inner error only
/// through `get_ref`, so both are looked through explicitly.
fn is_tls_error(e: &RedisError) -> bool {
    type Shared = Arc<dyn std::error::Error + Send + Sync>;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        let c: &(dyn std::error::Error + 'static) = match c.downcast_ref::<Shared>() {
            Some(shared) => &**shared,
            None => c,
        };
        if c.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

/// The client library's own timeouts do not say how long they waited; we do.
fn with_timeout(e: PollError, timeout: Duration) -> PollError {
    match e {
        PollError::Timeout(d) if d.is_zero() => PollError::Timeout(timeout),
        e => e,
    }
}

/// Folds one node's `CLIENT LIST` reply: every client except the exporters' own connections
/// (named [`CLIENT_NAME`], or carrying `own_id`), and a tally of client IPs as source counts.
pub fn fold_client_list(fold: &mut Fold, node_id: &str, reply: &str, own_id: Option<u64>) {
    let mut sources: HashMap<&str, u64> = HashMap::new();
    for c in client_list::parse(reply) {
        if c.name == CLIENT_NAME || (own_id.is_some() && c.id == own_id) {
            continue;
        }
        fold.add(&c.view(node_id));
        *sources.entry(c.client_ip()).or_insert(0) += 1;
    }
    for (ip, n) in sources {
        fold.add_source(ip, n);
    }
}

/// Who to authenticate as. The password itself is read from the file at each connect.
/// How a node is reached besides its address (a connection is kept per address and this).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Auth {
    username: Option<String>,
    password_file: Option<PathBuf>,
    tls: TlsFiles,
}

/// One node's reused connection.
pub struct NodeClient {
    endpoint: Endpoint,
    auth: Auth,
    conn: tokio::sync::Mutex<Option<(MultiplexedConnection, Option<u64>)>>,
    last_used: Mutex<Instant>,
}

impl std::fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeClient")
            .field("endpoint", &self.endpoint)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl NodeClient {
    /// A client for `endpoint` (nothing is connected until the first request).
    pub fn new(
        endpoint: Endpoint,
        username: Option<String>,
        password_file: Option<PathBuf>,
    ) -> Self {
        Self {
            endpoint,
            auth: Auth {
                username,
                password_file,
                tls: TlsFiles::default(),
            },
            conn: tokio::sync::Mutex::new(None),
            last_used: Mutex::new(Instant::now()),
        }
    }

    /// Uses these TLS files for a `rediss://` endpoint.
    pub fn with_tls(mut self, tls: TlsFiles) -> Self {
        self.auth.tls = tls;
        self
    }

    pub fn node_id(&self) -> &str {
        &self.endpoint.node_id
    }

    async fn connect(
        &self,
        timeout: Duration,
    ) -> Result<(MultiplexedConnection, Option<u64>), PollError> {
        let mut info = self
            .endpoint
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| classify(&e))?;
        let mut settings = info
            .redis_settings()
            .clone()
            .set_lib_name(CLIENT_NAME, env!("CARGO_PKG_VERSION"));
        if let Some(u) = &self.auth.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &self.auth.password_file {
            let password = read_password(p).map_err(|message| PollError::Other {
                code: "password_file",
                message,
            })?;
            settings = settings.set_password(password);
        }
        info = info.set_redis_settings(settings);
        let client = if self.auth.tls.is_empty() {
            redis::Client::open(info)
        } else {
            redis::Client::build_with_tls(info, self.auth.tls.load()?)
        }
        .map_err(|e| classify(&e))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| classify(&e))?;
        // Naming is what keeps this connection (and other exporters') out of the figures; an ACL
        // that forbids it is survivable, because the connection's own id is excluded too.
        let named: Result<(), RedisError> = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(CLIENT_NAME)
            .query_async(&mut conn)
            .await;
        if let Err(e) = named {
            tracing::warn!(node = %self.endpoint.node_id, error = %e, "CLIENT SETNAME refused; excluding this connection by id");
        }
        let own_id: Option<u64> = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .ok();
        tracing::debug!(node = %self.endpoint.node_id, "connected");
        Ok((conn, own_id))
    }

    /// Runs `cmd` on the node's connection (opening it if needed) and returns the text reply and
    /// the connection's own client id. A failed connection is dropped for the next attempt.
    pub async fn query_text(
        &self,
        cmd: &redis::Cmd,
        timeout: Duration,
    ) -> Result<(String, Option<u64>), PollError> {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let (mut conn, own_id) = {
            let mut guard = self.conn.lock().await;
            match &*guard {
                Some(c) => c.clone(),
                None => {
                    let c = tokio::time::timeout(timeout, self.connect(timeout))
                        .await
                        .map_err(|_| PollError::Timeout(timeout))?
                        .map_err(|e| with_timeout(e, timeout))?;
                    *guard = Some(c.clone());
                    c
                }
            }
        };
        let result: Result<String, RedisError> =
            match tokio::time::timeout(timeout, cmd.query_async(&mut conn)).await {
                Ok(r) => r,
                Err(_) => {
                    *self.conn.lock().await = None;
                    return Err(PollError::Timeout(timeout));
                }
            };
        match result {
            Ok(text) => Ok((text, own_id)),
            Err(e) => {
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error()
                {
                    *self.conn.lock().await = None;
                }
                Err(with_timeout(classify(&e), timeout))
            }
        }
    }

    /// `CLIENT LIST` of this node, and the id of the connection that asked.
    pub async fn client_list(&self, timeout: Duration) -> Result<(String, Option<u64>), PollError> {
        self.query_text(&redis::cmd("CLIENT").arg("LIST").clone(), timeout)
            .await
    }
}

/// Key of the connection pool: one connection per node and identity.
type PoolKey = (String, Auth);

/// The direct source: a pool of node connections, and the last cluster layout seen per seed.
#[derive(Debug, Default)]
pub struct DirectSource {
    pool: Mutex<HashMap<PoolKey, Arc<NodeClient>>>,
    layouts: Mutex<HashMap<PoolKey, Vec<Endpoint>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DirectSource {
    pub fn new() -> Self {
        Self::default()
    }

    fn node(&self, endpoint: &Endpoint, auth: &Auth) -> Arc<NodeClient> {
        let mut pool = lock(&self.pool);
        pool.retain(|_, n| {
            Arc::strong_count(n) > 1 || lock(&n.last_used).elapsed() < IDLE_CONNECTION
        });
        pool.entry((endpoint.url.clone(), auth.clone()))
            .or_insert_with(|| {
                Arc::new(
                    NodeClient::new(
                        endpoint.clone(),
                        auth.username.clone(),
                        auth.password_file.clone(),
                    )
                    .with_tls(auth.tls.clone()),
                )
            })
            .clone()
    }

    /// The nodes to ask this round.
    async fn endpoints(
        &self,
        inst: &InstanceConfig,
        auth: &Auth,
        timeout: Duration,
    ) -> Result<Vec<Endpoint>, PollError> {
        let config_error = |message: String| PollError::Other {
            code: "config",
            message,
        };
        let tls = is_tls(inst.address.as_deref());
        if !inst.nodes.is_empty() {
            return inst
                .nodes
                .iter()
                .map(|n| parse_endpoint(n, tls).map_err(config_error))
                .collect();
        }
        let seed =
            parse_endpoint(inst.address.as_deref().unwrap_or(""), false).map_err(config_error)?;
        if !inst.cluster {
            return Ok(vec![seed]);
        }
        // The seed first, then the nodes seen last time: the cluster stays visible while
        // the seed node is down.
        let key = (seed.url.clone(), auth.clone());
        let mut candidates = vec![seed.clone()];
        candidates.extend(lock(&self.layouts).get(&key).cloned().unwrap_or_default());
        candidates.dedup();
        let scheme = if tls { "rediss" } else { "redis" };
        let seed_host = seed
            .node_id
            .rsplit_once(':')
            .map_or("", |(h, _)| h)
            .to_owned();
        let mut last_err = None;
        for c in candidates {
            let node = self.node(&c, auth);
            match node
                .query_text(&redis::cmd("CLUSTER").arg("NODES").clone(), timeout)
                .await
            {
                Ok((text, _)) => {
                    let found: Vec<Endpoint> = cluster::parse_nodes(&text, &seed_host)
                        .into_iter()
                        .map(|n| Endpoint {
                            url: format!("{scheme}://{}", n.addr),
                            node_id: n.addr,
                        })
                        .collect();
                    if found.is_empty() {
                        return Err(PollError::Other {
                            code: "cluster",
                            message: "CLUSTER NODES listed no reachable node".into(),
                        });
                    }
                    lock(&self.layouts).insert(key, found.clone());
                    return Ok(found);
                }
                // "ERR This instance has cluster support disabled" and the like.
                Err(PollError::Other {
                    code: "server",
                    message,
                }) => {
                    return Err(PollError::Other {
                        code: "cluster",
                        message,
                    })
                }
                Err(e) if e.is_transient() => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or(PollError::Connection("no cluster node answered".into())))
    }

    async fn attempt(
        &self,
        inst: &InstanceConfig,
        limits: &Limits,
        timeout: Duration,
    ) -> Result<Snapshot, PollError> {
        let auth = Auth {
            username: inst.username.clone(),
            password_file: inst.password_file.clone(),
            tls: TlsFiles::of(inst),
        };
        let endpoints = self.endpoints(inst, &auth, timeout).await?;
        let nodes: Vec<Arc<NodeClient>> = endpoints.iter().map(|e| self.node(e, &auth)).collect();
        let replies =
            futures_util::future::join_all(nodes.iter().map(|n| n.client_list(timeout))).await;
        let mut fold = Fold::for_limits(limits);
        for (node, reply) in nodes.iter().zip(replies) {
            // One node failing fails the poll: partial figures would look like a drop in sessions.
            let (text, own_id) = reply?;
            fold_client_list(&mut fold, node.node_id(), &text, own_id);
        }
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        Ok(fold.finish(limits, None, Some(now_ms)))
    }
}

impl Source for DirectSource {
    fn poll<'a>(
        &'a self,
        instance: &'a InstanceConfig,
        ctx: &'a PollContext,
    ) -> BoxFuture<'a, Result<Snapshot, PollError>> {
        Box::pin(with_retries(ctx, move |timeout| {
            self.attempt(instance, &ctx.limits, timeout)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_from_urls_and_bare_addresses() {
        let e = parse_endpoint("redis://10.0.0.1:7000", false).unwrap();
        assert_eq!(e.url, "redis://10.0.0.1:7000");
        assert_eq!(e.node_id, "10.0.0.1:7000");
        let e = parse_endpoint("rediss://cache.example", false).unwrap();
        assert_eq!(e.node_id, "cache.example:6379");
        let e = parse_endpoint("10.0.0.2:7001", true).unwrap();
        assert_eq!(e.url, "rediss://10.0.0.2:7001");
        let e = parse_endpoint("[::1]:7002", false).unwrap();
        assert_eq!(e.node_id, "[::1]:7002");
        let e = parse_endpoint("unix:///run/redis.sock", false).unwrap();
        assert_eq!(e.node_id, "/run/redis.sock");
        for bad in [
            "http://x:1",
            "redis://",
            "redis://:pw@h:1",
            "redis://u@h:1",
            "unix://",
        ] {
            assert!(parse_endpoint(bad, false).is_err(), "{bad}");
        }
        let err = parse_endpoint("redis://:hunter2@h:1", false).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn own_connections_are_excluded_and_sources_tallied() {
        let reply = "\
id=1 addr=10.0.0.5:1 name=redis-session-exporter db=0 flags=N cmd=client|list multi=-1\n\
id=2 addr=10.0.0.5:2 name=app db=0 flags=N cmd=get multi=-1 user=default tot-mem=100 ssub=2\n\
id=3 addr=10.0.0.6:3 name= db=3 flags=P cmd=subscribe sub=1 multi=-1 user=default\n\
id=9 addr=10.0.0.7:3 name= db=0 flags=N cmd=client|list multi=-1\n";
        let mut f = Fold::new();
        fold_client_list(&mut f, "n:1", reply, Some(9));
        let s = f.finish(&Limits::default(), None, None);
        assert_eq!(s.sessions, 2);
        assert_eq!(s.by_node, vec![("n:1".into(), 2)]);
        assert_eq!(
            s.by_source,
            vec![("10.0.0.5".into(), 1), ("10.0.0.6".into(), 1)]
        );
        assert_eq!(s.subscriptions_channel, 1);
        let d = s.direct.expect("direct figures");
        assert_eq!(d.by_user, vec![("default".into(), 2)]);
        assert_eq!(d.subscriptions_shard, 2);
        assert_eq!(d.total_memory.sum, 100);
    }

    #[test]
    fn error_codes_are_bounded() {
        use redis::ErrorKind as K;
        let e = |kind, desc: &'static str| RedisError::from((kind, desc));
        assert_eq!(classify(&e(K::AuthenticationFailed, "x")).code(), "auth");
        assert_eq!(classify(&e(K::Parse, "x")).code(), "protocol");
        assert_eq!(classify(&e(K::InvalidClientConfig, "x")).code(), "config");
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(classify(&io).code(), "connection");
        assert!(classify(&io).is_transient());
    }

    #[test]
    fn validation_names_the_keys() {
        let mut inst = InstanceConfig::new("a");
        inst.cluster = true;
        assert_eq!(
            validate_instance(&inst)[0].0,
            "cluster",
            "direct-only key on a das instance"
        );
        inst.source = SourceKind::Direct;
        let keys: Vec<String> = validate_instance(&inst).into_iter().map(|e| e.0).collect();
        assert!(keys.contains(&"address".to_owned()), "{keys:?}");
        inst.address = Some("redis://127.0.0.1:6379".into());
        inst.password_file = Some("/nonexistent/pw".into());
        inst.nodes = vec!["nope://x".into()];
        let keys: Vec<String> = validate_instance(&inst).into_iter().map(|e| e.0).collect();
        assert_eq!(keys, vec!["cluster", "nodes[0]", "password_file"]);
    }

    #[test]
    fn tls_files_are_checked_under_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["cache.internal".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let write = |name: &str, content: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, content).unwrap();
            p
        };
        let cert_file = write("c.pem", &cert.pem());
        let key_file = write("k.pem", &key.serialize_pem());
        let mut inst = InstanceConfig::new("a");
        inst.source = SourceKind::Direct;
        inst.address = Some("rediss://cache.internal:6380".into());
        inst.tls_ca_file = Some(cert_file.clone());
        inst.tls_cert_file = Some(cert_file.clone());
        inst.tls_key_file = Some(key_file.clone());
        assert_eq!(validate_instance(&inst), vec![]);
        assert!(TlsFiles::of(&inst).load().is_ok());

        // Each file holding the other kind of PEM is refused under its own key, and the error
        // names the file without showing what is in it.
        inst.tls_ca_file = Some(key_file.clone());
        inst.tls_key_file = Some(cert_file.clone());
        let errs = validate_instance(&inst);
        let keys: Vec<&str> = errs.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(keys, vec!["tls_ca_file", "tls_key_file"]);
        assert!(errs
            .iter()
            .all(|e| !e.1.contains("PRIVATE KEY") && !e.1.contains("BEGIN")));
        assert!(errs[0].1.contains("k.pem"), "{errs:?}");
        let err = TlsFiles::of(&inst).load().unwrap_err();
        assert_eq!(err.code(), "tls_files");

        // Only with TLS.
        inst.tls_ca_file = Some(cert_file);
        inst.tls_key_file = Some(key_file);
        inst.address = Some("redis://cache.internal:6379".into());
        let keys: Vec<String> = validate_instance(&inst).into_iter().map(|e| e.0).collect();
        assert_eq!(keys, vec!["tls_ca_file", "tls_cert_file", "tls_key_file"]);
    }
}
