//! The TLS client of a `rediss://` node: its CAs (or the system's roots) and client
//! certificate, read from the instance's files at each connect so renewed files are picked up.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::config::TlsFiles;
use crate::source::PollError;

fn files_error(message: String) -> PollError {
    PollError::Other {
        code: "tls_files",
        message,
    }
}

/// The client configuration for `files`: `tls_ca_file` instead of the system roots when given,
/// and the client certificate when `tls_cert_file` and `tls_key_file` are. Errors name the key,
/// never a file's contents.
pub(super) fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, PollError> {
    let (mut ca, mut cert, mut key) = (None, None, None);
    for (name, result) in files.check() {
        let pem = result.map_err(|m| files_error(format!("{name}: {m}")))?;
        match name {
            "tls_ca_file" => ca = Some(pem),
            "tls_cert_file" => cert = Some(pem),
            _ => key = Some(pem),
        }
    }
    let mut roots = RootCertStore::empty();
    match ca {
        Some(pem) => {
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c =
                    c.map_err(|_| files_error("tls_ca_file: a malformed certificate".into()))?;
                roots.add(c).map_err(|e| {
                    files_error(format!("tls_ca_file: a certificate is unusable: {e}"))
                })?;
            }
        }
        None => {
            // Unparsable system certificates are skipped, as every TLS client does; none at all
            // means no server can be verified, which the handshake then reports as `tls`.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| PollError::Other {
        code: "tls",
        message: e.to_string(),
    })?
    .with_root_certificates(roots);
    let config = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| files_error("tls_cert_file: a malformed certificate".into()))?;
            let key = PrivateKeyDer::from_pem_slice(&key)
                .map_err(|_| files_error("tls_key_file: no PEM private key".into()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                files_error(format!(
                    "tls_cert_file/tls_key_file: the key does not fit the certificate: {e}"
                ))
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InstanceConfig;

    #[test]
    fn files_load_or_fail_with_their_code_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = crate::config::cert_and_key(dir.path());
        let mut inst = InstanceConfig::new("a");
        inst.tls_ca_file = Some(cert_file.clone());
        inst.tls_cert_file = Some(cert_file.clone());
        inst.tls_key_file = Some(key_file.clone());
        assert!(client_config(&TlsFiles::of(&inst)).is_ok());
        // Each file holding the other kind of PEM.
        inst.tls_ca_file = Some(key_file.clone());
        inst.tls_key_file = Some(cert_file.clone());
        let err = client_config(&TlsFiles::of(&inst)).unwrap_err();
        assert_eq!(err.code(), "tls_files");
        assert!(err.to_string().contains("tls_ca_file"), "{err}");
        // A key that belongs to another certificate.
        let other = tempfile::tempdir().unwrap();
        let (_, other_key) = crate::config::cert_and_key(other.path());
        inst.tls_ca_file = Some(cert_file);
        inst.tls_key_file = Some(other_key);
        let err = client_config(&TlsFiles::of(&inst)).unwrap_err();
        assert_eq!(err.code(), "tls_files");
        assert!(!err.to_string().contains("PRIVATE KEY"), "{err}");
    }
}
