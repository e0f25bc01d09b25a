//! `[[instances]]`: what to poll, and the keys of the direct (`CLIENT LIST`) source, checked
//! here so a bad address or an unreadable TLS file stops the start with the key named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::KeyError;

/// The largest `max_connections` accepted: far above any instance class, low enough to catch a
/// typo.
pub const MAX_CONNECTIONS: u64 = 100_000_000;

/// Where an instance's sessions come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// DAS `GetRedisAllSession`.
    #[default]
    Das,
    /// `CLIENT LIST` from the Redis nodes themselves.
    Direct,
}

/// `[[instances]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    pub id: String,
    #[serde(default)]
    pub source: SourceKind,
    /// Extra labels for `redis_session_instance_info`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The instance's connection limit, exported as `redis_session_instance_max_connections`;
    /// absent means unknown (discovery fills it from `Connections`, the direct source from
    /// `CONFIG GET maxclients`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
    // The keys below are for `source = "direct"` only (validation refuses them elsewhere).
    /// `redis://host:port` or `rediss://host:port` (TLS); the cluster seed with `cluster = true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// ACL user; without it the connection authenticates as `default` (or not at all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A file holding the password; read at each (re)connect, so a rotated secret is picked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Accepted and ignored: `CLIENT LIST` is server-wide, whatever database is selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db: Option<i64>,
    /// Explicit node endpoints (`host:port` or URLs) polled instead of `address`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Find every primary and replica from `CLUSTER NODES` on `address`, and poll each.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
    /// PEM file of the CAs that sign the server certificate (`rediss://` only); without it the
    /// system's roots are used. Read at each (re)connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that ask for one (`tls-auth-clients yes`); with
    /// `tls_key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
}

impl InstanceConfig {
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            source: SourceKind::Das,
            labels: BTreeMap::new(),
            max_connections: None,
            address: None,
            username: None,
            password_file: None,
            db: None,
            nodes: Vec::new(),
            cluster: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }

    /// True when `address` asks for TLS (`rediss://`); bare node addresses inherit it.
    pub fn is_tls(&self) -> bool {
        self.address
            .as_deref()
            .is_some_and(|a| a.trim_start().starts_with("rediss://"))
    }
}

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
    let url = url::Url::parse(&with_scheme).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
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

/// The checks of one instance's source keys, with keys relative to the instance (`address`,
/// `nodes[1]`, …).
pub fn validate_instance(inst: &InstanceConfig) -> Vec<KeyError> {
    let mut errs = Vec::new();
    if inst
        .max_connections
        .is_some_and(|n| !(1..=MAX_CONNECTIONS).contains(&n))
    {
        errs.push(KeyError::new(
            "max_connections",
            format!("must be between 1 and {MAX_CONNECTIONS} (leave it out when unknown)"),
        ));
    }
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
                errs.push(KeyError::new(
                    key,
                    "only used with source = \"direct\"; add it, or remove this key",
                ));
            }
        }
        return errs;
    }
    let tls = inst.is_tls();
    match &inst.address {
        Some(a) => {
            if let Err(e) = parse_endpoint(a, false) {
                errs.push(KeyError::new("address", e));
            }
        }
        None if inst.nodes.is_empty() => errs.push(KeyError::new(
            "address",
            "required with source = \"direct\" (redis://host:port or rediss://host:port), \
             unless nodes is set",
        )),
        None => {}
    }
    if inst.cluster && !inst.nodes.is_empty() {
        errs.push(KeyError::new(
            "cluster",
            "cluster = true finds the nodes itself; remove nodes, or set cluster = false",
        ));
    }
    if inst.cluster && inst.address.is_none() {
        errs.push(KeyError::new(
            "address",
            "cluster = true needs an address to ask for the cluster's nodes",
        ));
    }
    for (j, n) in inst.nodes.iter().enumerate() {
        if let Err(e) = parse_endpoint(n, tls) {
            errs.push(KeyError::new(format!("nodes[{j}]"), e));
        }
    }
    if let Some(u) = &inst.username {
        if u.is_empty() || u.contains(char::is_whitespace) {
            errs.push(KeyError::new(
                "username",
                "must be a non-empty name without spaces",
            ));
        }
    }
    if let Some(p) = &inst.password_file {
        if let Err(e) = read_password(p) {
            errs.push(KeyError::new("password_file", e));
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
            errs.push(KeyError::new(
                key,
                "only used with TLS: write the address (or nodes) as rediss://host:port, \
                 or remove this key",
            ));
        }
    }
    match (&inst.tls_cert_file, &inst.tls_key_file) {
        (Some(_), None) => errs.push(KeyError::new(
            "tls_key_file",
            "required with tls_cert_file (the client certificate's private key)",
        )),
        (None, Some(_)) => errs.push(KeyError::new(
            "tls_cert_file",
            "required with tls_key_file (the client certificate)",
        )),
        _ => {}
    }
    for (key, result) in TlsFiles::of(inst).check() {
        if let Err(e) = result {
            errs.push(KeyError::new(key, e));
        }
    }
    if inst.db.is_some_and(|d| d < 0) {
        errs.push(KeyError::new(
            "db",
            "must not be negative (it is ignored anyway: CLIENT LIST is server-wide)",
        ));
    }
    errs
}

/// Reads a password file: the first line, without its line ending. The error holds neither
/// content nor path ([`super::unreadable_file`]); the caller names the key.
pub fn read_password(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| super::unreadable_file(&e))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err("the file is empty".into());
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

/// One TLS file read and checked, under its config key.
pub type CheckedFile = (&'static str, Result<Vec<u8>, String>);

impl TlsFiles {
    pub fn of(inst: &InstanceConfig) -> Self {
        Self {
            ca: inst.tls_ca_file.clone(),
            cert: inst.tls_cert_file.clone(),
            key: inst.tls_key_file.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }

    /// Each configured file read and parsed, under its key. Errors say what is wrong with the
    /// file, never its contents (a key file is a secret) nor its path.
    pub fn check(&self) -> Vec<CheckedFile> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs = |path: &Path| {
            let pem = read_file(path)?;
            let n = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| "the file holds a malformed PEM certificate".to_owned())?
                .len();
            if n == 0 {
                return Err("the file holds no PEM certificate".into());
            }
            Ok(pem)
        };
        let key = |path: &Path| {
            let pem = read_file(path)?;
            PrivateKeyDer::from_pem_slice(&pem)
                .map_err(|_| "the file holds no PEM private key".to_owned())?;
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
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| super::unreadable_file(&e))
}

#[cfg(test)]
pub(crate) mod tests {
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
    fn validation_names_the_keys() {
        let mut inst = InstanceConfig::new("a");
        inst.cluster = true;
        assert_eq!(
            validate_instance(&inst)[0].key,
            "cluster",
            "direct-only key on a das instance"
        );
        inst.source = SourceKind::Direct;
        let keys: Vec<String> = validate_instance(&inst)
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert!(keys.contains(&"address".to_owned()), "{keys:?}");
        inst.address = Some("redis://127.0.0.1:6379".into());
        inst.password_file = Some("/nonexistent/pw".into());
        inst.nodes = vec!["nope://x".into()];
        let keys: Vec<String> = validate_instance(&inst)
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, vec!["cluster", "nodes[0]", "password_file"]);
    }

    /// Writes a self-signed certificate and its key into `dir`: (certificate file, key file).
    pub(crate) fn cert_and_key(dir: &Path) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["cache.internal".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let write = |name: &str, content: &str| {
            let p = dir.join(name);
            std::fs::write(&p, content).unwrap();
            p
        };
        (
            write("c.pem", &cert.pem()),
            write("k.pem", &key.serialize_pem()),
        )
    }

    #[test]
    fn tls_files_are_checked_under_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = cert_and_key(dir.path());
        let mut inst = InstanceConfig::new("a");
        inst.source = SourceKind::Direct;
        inst.address = Some("rediss://cache.internal:6380".into());
        inst.tls_ca_file = Some(cert_file.clone());
        inst.tls_cert_file = Some(cert_file.clone());
        inst.tls_key_file = Some(key_file.clone());
        assert_eq!(validate_instance(&inst), vec![]);

        // Each file holding the other kind of PEM is refused under its own key, and the error
        // shows neither what is in it nor its path (the key names it).
        inst.tls_ca_file = Some(key_file.clone());
        inst.tls_key_file = Some(cert_file.clone());
        let errs = validate_instance(&inst);
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["tls_ca_file", "tls_key_file"]);
        assert!(errs
            .iter()
            .all(|e| !e.reason.contains("PRIVATE KEY") && !e.reason.contains("BEGIN")));
        assert!(errs[0].reason.contains("no PEM certificate"), "{errs:?}");
        assert!(errs.iter().all(|e| !e.reason.contains(".pem")), "{errs:?}");

        // Only with TLS.
        inst.tls_ca_file = Some(cert_file);
        inst.tls_key_file = Some(key_file);
        inst.address = Some("redis://cache.internal:6379".into());
        let keys: Vec<String> = validate_instance(&inst)
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, vec!["tls_ca_file", "tls_cert_file", "tls_key_file"]);
    }
}
