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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

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
    #[error("key `{key}`: {reason}")]
    Key { key: String, reason: String },
}

fn key_err(key: &str, reason: impl Into<String>) -> WebConfigError {
    WebConfigError::Key {
        key: key.to_owned(),
        reason: reason.into(),
    }
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

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_version(key: &str, v: &str) -> Result<Option<u16>, WebConfigError> {
    match v {
        "" => Ok(None),
        "TLS12" => Ok(Some(12)),
        "TLS13" => Ok(Some(13)),
        "TLS10" | "TLS11" => Err(key_err(
            key,
            format!("{v} is not offered: only TLS12 and TLS13 are (older versions are insecure)"),
        )),
        _ => Err(key_err(
            key,
            format!("unknown version {v:?}; expected TLS12 or TLS13"),
        )),
    }
}

fn tls_config(t: &FileTls, base: &Path) -> Result<Arc<rustls::ServerConfig>, WebConfigError> {
    if t.cert_file.is_empty() {
        return Err(key_err("tls_server_config.cert_file", "missing"));
    }
    if t.key_file.is_empty() {
        return Err(key_err("tls_server_config.key_file", "missing"));
    }
    let client_auth = ClientAuth::parse(&t.client_auth_type).ok_or_else(|| {
        key_err(
            "tls_server_config.client_auth_type",
            format!(
                "unknown value {:?}; expected NoClientCert, RequestClientCert, RequireAnyClientCert, \
                 VerifyClientCertIfGiven or RequireAndVerifyClientCert",
                t.client_auth_type
            ),
        )
    })?;
    let min = tls_version("tls_server_config.min_version", &t.min_version)?.unwrap_or(12);
    let max = tls_version("tls_server_config.max_version", &t.max_version)?.unwrap_or(13);
    if min > max {
        return Err(key_err(
            "tls_server_config.min_version",
            "is above max_version",
        ));
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, p)| p)
            .collect();

    let provider = provider();
    let resolver = ReloadingCert::new(
        resolve(base, &t.cert_file),
        resolve(base, &t.key_file),
        provider.clone(),
    )?;

    let roots = if t.client_ca_file.is_empty() {
        if client_auth.verifies() {
            return Err(key_err(
                "tls_server_config.client_ca_file",
                format!("required with client_auth_type {client_auth:?}"),
            ));
        }
        None
    } else {
        if client_auth == ClientAuth::NoClientCert {
            return Err(key_err(
                "tls_server_config.client_auth_type",
                "client_ca_file is set but no client certificate is asked for; set client_auth_type",
            ));
        }
        let path = resolve(base, &t.client_ca_file);
        let mut store = RootCertStore::empty();
        for cert in read_certs("tls_server_config.client_ca_file", &path)? {
            store.add(cert).map_err(|e| {
                key_err(
                    "tls_server_config.client_ca_file",
                    format!("{}: {e}", path.display()),
                )
            })?;
        }
        Some(Arc::new(store))
    };

    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| key_err("tls_server_config.min_version", e.to_string()))?;
    let verifier: Arc<dyn ClientCertVerifier> = match (client_auth, roots) {
        (ClientAuth::NoClientCert, _) => WebPkiClientVerifier::no_client_auth(),
        (ClientAuth::RequestClientCert, roots) => Arc::new(AnyClientCert::new(
            false,
            roots.as_deref(),
            provider.clone(),
        )),
        (ClientAuth::RequireAnyClientCert, roots) => {
            Arc::new(AnyClientCert::new(true, roots.as_deref(), provider.clone()))
        }
        (auth, Some(roots)) => {
            let b = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            let b = if auth == ClientAuth::VerifyClientCertIfGiven {
                b.allow_unauthenticated()
            } else {
                b
            };
            b.build()
                .map_err(|e| key_err("tls_server_config.client_ca_file", e.to_string()))?
        }
        (_, None) => {
            return Err(key_err(
                "tls_server_config.client_ca_file",
                "required with this client_auth_type",
            ))
        }
    };
    let mut cfg = builder
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
    let bytes =
        std::fs::read(path).map_err(|e| key_err(key, format!("{}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| key_err(key, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(key_err(
            key,
            format!("{}: no PEM certificate in the file", path.display()),
        ));
    }
    Ok(certs)
}

/// The server certificate, re-read when its files change.
#[derive(Debug)]
struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    stamp: Stamp,
    key: Arc<CertifiedKey>,
    /// The stamp of a version that failed to load, so a broken file is reported once.
    failed: Option<Stamp>,
}

/// What says a file changed: modification time and size of both files.
type Stamp = [(Option<SystemTime>, u64); 2];

fn stamp_of(paths: [&Path; 2]) -> Stamp {
    paths.map(|p| match std::fs::metadata(p) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    })
}

impl ReloadingCert {
    fn new(
        cert_path: PathBuf,
        key_path: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, WebConfigError> {
        let stamp = stamp_of([&cert_path, &key_path]);
        let key = load_certified_key(&cert_path, &key_path, &provider)?;
        Ok(Self {
            cert_path,
            key_path,
            provider,
            current: Mutex::new(Loaded {
                stamp,
                key: Arc::new(key),
                failed: None,
            }),
        })
    }

    /// The current key, after re-reading the files if they changed since the last look.
    fn current(&self) -> Arc<CertifiedKey> {
        let stamp = stamp_of([&self.cert_path, &self.key_path]);
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if stamp != cur.stamp && cur.failed != Some(stamp) {
            match load_certified_key(&self.cert_path, &self.key_path, &self.provider) {
                Ok(k) => {
                    tracing::info!(cert_file = %self.cert_path.display(), "TLS certificate reloaded");
                    cur.key = Arc::new(k);
                    cur.stamp = stamp;
                    cur.failed = None;
                }
                Err(e) => {
                    // Often a renewal caught half-written: keep serving the previous certificate.
                    tracing::warn!(error = %e, "cannot reload the TLS certificate; keeping the previous one");
                    cur.failed = Some(stamp);
                }
            }
        }
        cur.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn load_certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, WebConfigError> {
    let chain = read_certs("tls_server_config.cert_file", cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        key_err(
            "tls_server_config.key_file",
            format!("{}: {e}", key_path.display()),
        )
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        key_err(
            "tls_server_config.key_file",
            format!("{}: {e}", key_path.display()),
        )
    })
}

/// `RequestClientCert` / `RequireAnyClientCert`: a certificate is asked for (or required) but
/// not checked against a CA, as in Go; the handshake signature still proves the client holds
/// its key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    hints: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
}

impl AnyClientCert {
    fn new(mandatory: bool, roots: Option<&RootCertStore>, provider: Arc<CryptoProvider>) -> Self {
        Self {
            mandatory,
            hints: roots.map(|r| r.subjects()).unwrap_or_default(),
            provider,
        }
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// How many (user, password) verdicts are remembered; the cache is emptied when full, so a
/// flood of wrong passwords cannot grow it.
const VERDICT_CACHE: usize = 1024;

/// `basic_auth_users`: bcrypt hashes, and the verdicts already paid for.
pub struct BasicAuth {
    users: Vec<(String, String)>,
    verdicts: Mutex<HashMap<[u8; 32], bool>>,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl BasicAuth {
    fn new(users: BTreeMap<String, String>) -> Result<Self, WebConfigError> {
        for (user, hash) in &users {
            // Never echo the hash: it is a secret too (an offline guessing target).
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(key_err(
                    &format!("basic_auth_users.{user}"),
                    "not a bcrypt hash (expected $2a$, $2b$ or $2y$; make one with `htpasswd -nBC 10 USER`)",
                ));
            }
        }
        Ok(Self {
            users: users.into_iter().collect(),
            verdicts: Mutex::new(HashMap::new()),
        })
    }

    /// True when `password` is `user`'s. Constant time in what an attacker learns: the user
    /// list is scanned whole, an unknown user still pays a bcrypt verification, and bcrypt
    /// compares in constant time; the cache is keyed by a digest, never the password.
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        let key = cache_key(user, password);
        if let Some(v) = self.lock().get(&key) {
            return *v;
        }

        let mut found: Option<&str> = None;
        for (u, hash) in &self.users {
            if bool::from(u.as_bytes().ct_eq(user.as_bytes())) {
                found = Some(hash);
            }
        }
        let known = found.is_some();
        let hash = found.unwrap_or(&self.users[0].1).to_owned();
        let password = password.to_owned();
        // Bcrypt takes tens of milliseconds by design: keep it off the async workers.
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false)
            && known;
        let mut cache = self.lock();
        if cache.len() >= VERDICT_CACHE {
            cache.clear();
        }
        cache.insert(key, ok);
        ok
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], bool>> {
        self.verdicts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The cache key of a (user, password) pair: a digest, so the cache never holds a password. The
/// user's length goes first so ("ab", "c") and ("a", "bc") differ.
fn cache_key(user: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((user.len() as u64).to_le_bytes());
    h.update(user.as_bytes());
    h.update(password.as_bytes());
    h.finalize().into()
}

/// The `Authorization: Basic` credentials of a request, if well-formed.
fn basic_credentials(req: &Request) -> Option<(String, String)> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (u, p) = raw.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

async fn require_basic_auth(
    State(auth): State<Arc<BasicAuth>>,
    req: Request,
    next: Next,
) -> Response {
    let ok = match basic_credentials(&req) {
        Some((u, p)) => auth.verify(&u, &p).await,
        None => false,
    };
    if ok {
        return next.run(req).await;
    }
    let mut r = (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"redis-session-exporter\""),
    );
    r
}

/// Serves `router` on `listener` until `shutdown`: plain HTTP, or TLS and/or basic auth as
/// `web` says, under the connection `limits`. The daemon's one serving step; `server::app`
/// stays socket-free for tests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    web: Option<&WebConfig>,
    limits: crate::connections::Limits,
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
    crate::connections::serve(listener, router, tls, limits, shutdown).await
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
        assert!(
            e.contains("cert_file") && e.contains("/nonexistent/a.crt"),
            "{e}"
        );
        assert!(
            err("{not: [yaml").contains("line"),
            "{}",
            err("{not: [yaml")
        );
        assert!(err("http_server_config:\n  http2: false\n").contains("http_server_config"));
    }

    #[test]
    fn versions_and_client_auth_names() {
        assert_eq!(tls_version("k", "TLS13").unwrap(), Some(13));
        assert!(tls_version("k", "TLS10")
            .unwrap_err()
            .to_string()
            .contains("TLS12"));
        assert!(tls_version("k", "SSL3").is_err());
        assert_eq!(
            ClientAuth::parse("RequireClientCert"),
            Some(ClientAuth::RequireAnyClientCert)
        );
        assert_eq!(ClientAuth::parse(""), Some(ClientAuth::NoClientCert));
        assert_eq!(ClientAuth::parse("verifyclientcertifgiven"), None);
    }

    fn request(auth: Option<&str>) -> Request {
        let mut b = axum::http::Request::builder();
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn basic_header_parsing() {
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            basic_credentials(&request(Some(&format!("Basic {}", enc("u:p:q"))))),
            Some(("u".into(), "p:q".into()))
        );
        assert_eq!(
            basic_credentials(&request(Some(&format!("basic {}", enc("u:"))))),
            Some(("u".into(), String::new()))
        );
        assert_eq!(basic_credentials(&request(Some("Bearer abc"))), None);
        assert_eq!(basic_credentials(&request(Some("Basic !!!"))), None);
        assert_eq!(
            basic_credentials(&request(Some(&format!("Basic {}", enc("nocolon"))))),
            None
        );
        assert_eq!(basic_credentials(&request(None)), None);
    }

    #[tokio::test]
    async fn verdicts_are_right_and_cached() {
        let mut users = BTreeMap::new();
        users.insert("alice".to_owned(), bcrypt::hash("s3cret", 4).unwrap());
        users.insert("bob".to_owned(), bcrypt::hash("other", 4).unwrap());
        let auth = BasicAuth::new(users).unwrap();
        assert!(auth.verify("alice", "s3cret").await);
        assert!(auth.verify("bob", "other").await);
        assert!(!auth.verify("alice", "other").await, "bob's password");
        assert!(!auth.verify("carol", "s3cret").await, "unknown user");
        assert!(!auth.verify("alice", "").await);
        // ("ali", "ces3cret") must not collide with ("alice", "s3cret") in the cache.
        assert!(!auth.verify("ali", "ces3cret").await);
        assert_eq!(auth.lock().len(), 6);
        // A cached verdict is what the next call returns: poison alice's to prove it is used.
        assert_eq!(auth.lock().get(&cache_key("alice", "s3cret")), Some(&true));
        auth.lock().insert(cache_key("alice", "s3cret"), false);
        assert!(!auth.verify("alice", "s3cret").await);
        assert!(auth.verify("bob", "other").await);
    }

    #[tokio::test]
    async fn the_cache_stays_bounded() {
        let mut users = BTreeMap::new();
        users.insert("u".to_owned(), bcrypt::hash("p", 4).unwrap());
        let auth = BasicAuth::new(users).unwrap();
        for i in 0..(VERDICT_CACHE + 10) {
            auth.lock()
                .insert(Sha256::digest(i.to_le_bytes()).into(), false);
            assert!(auth.lock().len() <= VERDICT_CACHE + 10);
        }
        assert!(auth.verify("u", "p").await);
        assert!(auth.lock().len() <= VERDICT_CACHE);
    }
}
