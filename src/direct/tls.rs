//! The TLS files of a `rediss://` instance, turned into what the Redis client takes.

use crate::config::TlsFiles;
use crate::source::PollError;

/// What the Redis client takes: the CAs (instead of the system's roots) and the client
/// certificate, read now.
pub(super) fn certificates(files: &TlsFiles) -> Result<redis::TlsCertificates, PollError> {
    let mut ca = None;
    let (mut cert, mut key) = (None, None);
    for (name, result) in files.check() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InstanceConfig;

    #[test]
    fn files_load_or_fail_with_their_code() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = crate::config::cert_and_key(dir.path());
        let mut inst = InstanceConfig::new("a");
        inst.tls_ca_file = Some(cert_file.clone());
        inst.tls_cert_file = Some(cert_file.clone());
        inst.tls_key_file = Some(key_file.clone());
        assert!(certificates(&TlsFiles::of(&inst)).is_ok());
        // Each file holding the other kind of PEM.
        inst.tls_ca_file = Some(key_file);
        inst.tls_key_file = Some(cert_file);
        let err = certificates(&TlsFiles::of(&inst)).unwrap_err();
        assert_eq!(err.code(), "tls_files");
    }
}
