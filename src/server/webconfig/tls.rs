//! TLS for the HTTP endpoint: the server certificate (re-read when its files change), client
//! certificates as Go's `tls.ClientAuthType` names them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use super::{key_err, resolve, ClientAuth, FileTls, WebConfigError};
use crate::config::unreadable_file;

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

pub(super) fn tls_config(
    t: &FileTls,
    base: &Path,
) -> Result<Arc<rustls::ServerConfig>, WebConfigError> {
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
                    format!("a certificate in the file is unusable: {e}"),
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
    // Errors never repeat the path: see `config::unreadable_file`.
    let bytes = std::fs::read(path).map_err(|e| key_err(key, unreadable_file(&e)))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            key_err(
                key,
                format!("the file holds a malformed PEM certificate: {e}"),
            )
        })?;
    if certs.is_empty() {
        return Err(key_err(key, "no PEM certificate in the file"));
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
    let pem = std::fs::read(key_path)
        .map_err(|e| key_err("tls_server_config.key_file", unreadable_file(&e)))?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        key_err(
            "tls_server_config.key_file",
            "the file holds no PEM private key",
        )
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        key_err(
            "tls_server_config.key_file",
            format!("the key cannot be used with the certificate: {e}"),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
