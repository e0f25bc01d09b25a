//! One node's reused connection: connect (password and TLS files read at each connect), name
//! it, run a command under a timeout, and classify what the Redis client reports.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, IntoConnectionInfo, RedisError, ServerErrorKind};

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

/// How a node is reached besides its address: who to authenticate as (the password itself is
/// read from the file at each connect) and the TLS files. A connection is kept per address and
/// this.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Auth {
    pub(super) username: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) tls: TlsFiles,
}

/// One node's reused connection.
pub struct NodeClient {
    endpoint: Endpoint,
    auth: Auth,
    conn: tokio::sync::Mutex<Option<(MultiplexedConnection, Option<u64>)>>,
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

    /// Refuses replies larger than `max` bytes (`invalid_response`) before they are parsed.
    /// redis-rs reads a reply whole before handing it over, so this bounds the parsing and
    /// everything after it; while it is read, a reply is bounded by the server's own
    /// `proto-max-bulk-len` (512 MB by default).
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
            redis::Client::build_with_tls(info, super::tls::certificates(&self.auth.tls)?)
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
        let (text, own_id) = self.query::<String>(cmd, timeout).await?;
        if text.len() as u64 > self.max_reply_bytes {
            return Err(reply_too_large(text.len(), self.max_reply_bytes));
        }
        Ok((text, own_id))
    }

    /// [`Self::query_text`] for any reply type.
    async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        timeout: Duration,
    ) -> Result<(T, Option<u64>), PollError> {
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
        let result: Result<T, RedisError> =
            match tokio::time::timeout(timeout, cmd.query_async(&mut conn)).await {
                Ok(r) => r,
                Err(_) => {
                    *self.conn.lock().await = None;
                    return Err(PollError::Timeout(timeout));
                }
            };
        match result {
            Ok(reply) => Ok((reply, own_id)),
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

    /// The node's `maxclients`, when `CONFIG GET` is allowed: an ACL user without `+config|get`,
    /// a managed service that renames or disables CONFIG, or any other failure means unknown,
    /// never a failed poll.
    pub async fn maxclients(&self, timeout: Duration) -> Option<u64> {
        let cmd = redis::cmd("CONFIG").arg("GET").arg("maxclients").clone();
        match self
            .query::<std::collections::HashMap<String, String>>(&cmd, timeout)
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
fn reply_too_large(len: usize, max: u64) -> PollError {
    PollError::Other {
        code: "invalid_response",
        message: format!("a reply of {len} bytes exceeds das.max_body_bytes ({max})"),
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
