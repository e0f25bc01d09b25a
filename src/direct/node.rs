//! One node's reused connection: connect (password and TLS files read at each connect), name
//! it, run a command under a timeout with a bound on what its reply may read, and classify what
//! the Redis client reports.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, IntoConnectionInfo, RedisError, ServerErrorKind};
use tokio_util::task::AbortOnDropHandle;

use super::wire::{self, Capped, ReadBudget};
use super::CLIENT_NAME;
use crate::config::{read_password, Endpoint, TlsFiles};
use crate::source::PollError;

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
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(wire::holds_rustls_error)
        {
            return true;
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

/// How a node is reached besides its address: who to authenticate as (the password itself is
/// read from the file at each connect) and the TLS files. A connection is kept per address and
/// this.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Auth {
    pub(super) username: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) tls: TlsFiles,
}

/// What the handshake may read: the replies to AUTH, HELLO (a map of a dozen short fields),
/// SELECT, CLIENT SETINFO, SETNAME and ID.
const HANDSHAKE_BYTES: u64 = 64 * 1024;
/// What `CONFIG GET maxclients` may read (a two-element array of short strings).
const CONFIG_REPLY_BYTES: u64 = 4 * 1024;
/// A bulk reply's framing around its text: `$<length>\r\n` before it, `\r\n` after.
const FRAMING_BYTES: u64 = 64;

/// An open connection: the multiplexed handle, its own client id, the budget its reads are
/// spent from, and the task that drives it (aborted when the last clone is dropped, which closes
/// the socket).
#[derive(Clone)]
struct Conn {
    mux: MultiplexedConnection,
    own_id: Option<u64>,
    budget: Arc<ReadBudget>,
    _driver: Arc<AbortOnDropHandle<()>>,
}

/// One node's reused connection.
pub struct NodeClient {
    endpoint: Endpoint,
    auth: Auth,
    conn: tokio::sync::Mutex<Option<Conn>>,
    pub(super) last_used: Mutex<Instant>,
    /// The largest reply taken; see [`NodeClient::with_reply_cap`].
    max_reply_bytes: u64,
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
            max_reply_bytes: u64::MAX,
        }
    }

    /// Refuses replies larger than `max` bytes (`invalid_response`): the connection reads no
    /// more than that (and the reply's framing) per request, see [`wire`], and closes when a
    /// reply goes past it.
    pub fn with_reply_cap(mut self, max: u64) -> Self {
        self.max_reply_bytes = max;
        self
    }

    /// Uses these TLS files for a `rediss://` endpoint.
    pub fn with_tls(mut self, tls: TlsFiles) -> Self {
        self.auth.tls = tls;
        self
    }

    pub fn node_id(&self) -> &str {
        &self.endpoint.node_id
    }

    async fn connect(&self, timeout: Duration) -> Result<Conn, PollError> {
        let info = self
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
        // The stream is opened here rather than by the Redis client so that its reads can be
        // bounded (see `wire`); the client then runs its handshake over it.
        let budget = Arc::new(ReadBudget::default());
        let stream = wire::open(info.addr(), &self.auth.tls).await?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let handshake = budget.grant(HANDSHAKE_BYTES);
        let (mut mux, driver) = MultiplexedConnection::new_with_config(
            &settings,
            Capped::new(stream, Arc::clone(&budget)),
            config,
        )
        .await
        .map_err(|e| over_cap_or(&budget, &e, HANDSHAKE_BYTES))?;
        let driver = Arc::new(AbortOnDropHandle::new(tokio::spawn(driver)));
        // Naming is what keeps this connection (and other exporters') out of the figures; an ACL
        // that forbids it is survivable, because the connection's own id is excluded too.
        let named: Result<(), RedisError> = redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(CLIENT_NAME)
            .query_async(&mut mux)
            .await;
        if let Err(e) = named {
            tracing::warn!(node = %self.endpoint.node_id, error = %e, "CLIENT SETNAME refused; excluding this connection by id");
        }
        let own_id: Option<u64> = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut mux)
            .await
            .ok();
        drop(handshake);
        if budget.exceeded() {
            return Err(reply_over_cap(HANDSHAKE_BYTES));
        }
        tracing::debug!(node = %self.endpoint.node_id, "connected");
        Ok(Conn {
            mux,
            own_id,
            budget,
            _driver: driver,
        })
    }

    /// Runs `cmd` on the node's connection (opening it if needed) and returns the text reply and
    /// the connection's own client id. A failed connection is dropped for the next attempt.
    pub async fn query_text(
        &self,
        cmd: &redis::Cmd,
        timeout: Duration,
    ) -> Result<(String, Option<u64>), PollError> {
        let allowance = self.max_reply_bytes.saturating_add(FRAMING_BYTES);
        let (text, own_id) = self.query::<String>(cmd, timeout, allowance).await?;
        // The stream's bound counts framing too; the cap itself is on the text.
        if text.len() as u64 > self.max_reply_bytes {
            return Err(reply_over_cap(self.max_reply_bytes));
        }
        Ok((text, own_id))
    }

    /// [`Self::query_text`] for any reply type, reading at most `allowance` bytes for it.
    async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        timeout: Duration,
        allowance: u64,
    ) -> Result<(T, Option<u64>), PollError> {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let mut conn = {
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
        let grant = conn.budget.grant(allowance);
        let result: Result<T, RedisError> =
            match tokio::time::timeout(timeout, cmd.query_async(&mut conn.mux)).await {
                Ok(r) => r,
                Err(_) => {
                    *self.conn.lock().await = None;
                    return Err(PollError::Timeout(timeout));
                }
            };
        drop(grant);
        match result {
            Ok(reply) => Ok((reply, conn.own_id)),
            Err(e) => {
                if e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error()
                {
                    *self.conn.lock().await = None;
                }
                Err(with_timeout(
                    over_cap_or(&conn.budget, &e, self.max_reply_bytes),
                    timeout,
                ))
            }
        }
    }

    /// `CLIENT LIST` of this node, and the id of the connection that asked.
    pub async fn client_list(&self, timeout: Duration) -> Result<(String, Option<u64>), PollError> {
        self.query_text(&redis::cmd("CLIENT").arg("LIST").clone(), timeout)
            .await
    }

    /// The node's `maxclients`, when `CONFIG GET` is allowed: an ACL user without `+config|get`,
    /// a managed service that renames or disables CONFIG, or any other failure means unknown,
    /// never a failed poll.
    pub async fn maxclients(&self, timeout: Duration) -> Option<u64> {
        let cmd = redis::cmd("CONFIG").arg("GET").arg("maxclients").clone();
        match self
            .query::<std::collections::HashMap<String, String>>(&cmd, timeout, CONFIG_REPLY_BYTES)
            .await
        {
            Ok((reply, _)) => reply.get("maxclients")?.trim().parse().ok(),
            Err(e) => {
                tracing::debug!(node = %self.endpoint.node_id, error = %e, "CONFIG GET maxclients refused; connection limit unknown");
                None
            }
        }
    }
}

/// A reply past the cap: the poll fails as a DAS answer past its cap does.
fn reply_over_cap(max: u64) -> PollError {
    PollError::Other {
        code: "invalid_response",
        message: format!(
            "a reply exceeds das.max_body_bytes ({max}); it was read no further and the connection was closed"
        ),
    }
}

/// The client's error, unless the connection failed because a read went past its budget: then
/// the reply was too large, which the client itself only sees as an I/O error.
fn over_cap_or(budget: &ReadBudget, e: &RedisError, max: u64) -> PollError {
    if budget.exceeded() {
        reply_over_cap(max)
    } else {
        classify(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
