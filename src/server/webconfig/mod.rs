//! `--web.config.file`: TLS and HTTP basic auth for every route, configured in the Prometheus
//! exporter-toolkit format, so the file a fleet already uses for node_exporter works here too.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt        # relative paths are relative to this file
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert
//!   client_ca_file: clients-ca.crt
//!   min_version: TLS12
//! basic_auth_users:
//!   prometheus: $2y$10$...       # bcrypt
//! ```
//!
//! The file is read once at start; a bad file stops the start with an error naming the key.
//! The server certificate and key are re-read when their files change on disk (checked on each
//! new connection), so a cert-manager or ACME renewal needs no restart. Bcrypt is deliberately
//! slow, so a verdict is cached per (user, password) digest: a scrape every few seconds pays the
//! hash once, not each time.

mod auth;
mod tls;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::KeyError;
use auth::{require_basic_auth, BasicAuth};
use tls::tls_config;

/// A problem with the web config file.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Yaml(String),
    #[error("key `{}`: {}", .0.key, .0.reason)]
    Key(KeyError),
}

fn key_err(key: &str, reason: impl Into<String>) -> WebConfigError {
    WebConfigError::Key(KeyError::new(key, reason))
}

/// The file as written (exporter-toolkit names).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    tls_server_config: Option<FileTls>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    #[serde(default)]
    cert_file: String,
    #[serde(default)]
    key_file: String,
    #[serde(default)]
    client_auth_type: String,
    #[serde(default)]
    client_ca_file: String,
    #[serde(default)]
    min_version: String,
    #[serde(default)]
    max_version: String,
}

/// Who must show a client certificate, as Go's `tls.ClientAuthType` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    RequestClientCert,
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "" | "NoClientCert" => Self::NoClientCert,
            "RequestClientCert" => Self::RequestClientCert,
            // `RequireClientCert` is the toolkit's older spelling.
            "RequireAnyClientCert" | "RequireClientCert" => Self::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => Self::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => Self::RequireAndVerifyClientCert,
            _ => return None,
        })
    }

    fn verifies(self) -> bool {
        matches!(
            self,
            Self::VerifyClientCertIfGiven | Self::RequireAndVerifyClientCert
        )
    }
}

/// The validated web configuration.
#[derive(Clone)]
pub struct WebConfig {
    tls: Option<Arc<rustls::ServerConfig>>,
    auth: Option<Arc<BasicAuth>>,
}

impl fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field(
                "basic_auth_users",
                &self.auth.as_ref().map(|a| a.users.len()),
            )
            .finish()
    }
}

impl WebConfig {
    /// Reads and validates the file; relative paths inside are relative to its directory.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir)
    }

    /// Validates a web config given as text.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, WebConfigError> {
        // An empty file is a valid file that asks for nothing (as in the toolkit).
        let file: FileConfig = if text.trim().is_empty() {
            FileConfig::default()
        } else {
            serde_norway::from_str(text).map_err(|e| WebConfigError::Yaml(e.to_string()))?
        };
        let auth = match file.basic_auth_users {
            Some(users) if !users.is_empty() => Some(Arc::new(BasicAuth::new(users)?)),
            _ => None,
        };
        let tls = match file.tls_server_config {
            Some(t) if !t.cert_file.is_empty() || !t.key_file.is_empty() => {
                Some(tls_config(&t, base_dir)?)
            }
            Some(t) if !t.client_ca_file.is_empty() || !t.client_auth_type.is_empty() => {
                return Err(key_err(
                    "tls_server_config.cert_file",
                    "required when client certificates are configured",
                ))
            }
            _ => None,
        };
        Ok(Self { tls, auth })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn has_basic_auth(&self) -> bool {
        self.auth.is_some()
    }

    /// Wraps every route of `router` in the basic-auth check (when users are configured).
    pub fn protect(&self, router: Router) -> Router {
        match &self.auth {
            Some(auth) => router.layer(axum::middleware::from_fn_with_state(
                auth.clone(),
                require_basic_auth,
            )),
            None => router,
        }
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// Serves `router` on `listener` until `shutdown`: plain HTTP, or TLS and/or basic auth as
/// `web` says, under the connection `limits`. The daemon's one serving step; `server::app`
/// stays socket-free for tests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    web: Option<&WebConfig>,
    limits: crate::server::connections::Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = match web {
        Some(w) => w.protect(router),
        None => router,
    };
    // The handshake runs inside the connection's own task and slot, under its
    // header_read_timeout, so a stalled or hostile client holds neither the accept loop nor
    // more than one slot.
    let tls = web.and_then(|w| w.tls.clone()).map(TlsAcceptor::from);
    crate::server::connections::serve(listener, router, tls, limits, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        WebConfig::parse(text, Path::new("/nonexistent"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn empty_and_auth_only_files() {
        let w = WebConfig::parse("", Path::new(".")).unwrap();
        assert!(!w.is_tls() && !w.has_basic_auth());
        let hash = bcrypt::hash("pw", 4).unwrap();
        let w = WebConfig::parse(
            &format!("basic_auth_users:\n  alice: {hash}\n"),
            Path::new("."),
        )
        .unwrap();
        assert!(!w.is_tls() && w.has_basic_auth());
        assert!(!format!("{w:?}").contains(&hash));
    }

    #[test]
    fn bad_files_name_the_key() {
        assert!(err("tls_server_config:\n  cert_fiel: x\n").contains("cert_fiel"));
        assert!(err("basic_auth_users:\n  bob: plaintext\n").contains("basic_auth_users.bob"));
        assert!(!err("basic_auth_users:\n  bob: plaintext\n").contains("plaintext"));
        assert!(err("tls_server_config:\n  cert_file: a.crt\n").contains("key_file"));
        assert!(err("tls_server_config:\n  key_file: a.key\n").contains("cert_file"));
        assert!(err("tls_server_config:\n  client_ca_file: ca.crt\n").contains("cert_file"));
        let e = err("tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n");
        // The key and the reason; never the value (it may be a secret pasted as a path).
        assert!(
            e.contains("`tls_server_config.cert_file`") && e.contains("cannot read the file"),
            "{e}"
        );
        assert!(!e.contains("a.crt"), "{e}");
        assert!(
            err("{not: [yaml").contains("line"),
            "{}",
            err("{not: [yaml")
        );
        assert!(err("http_server_config:\n  http2: false\n").contains("http_server_config"));
    }
}
