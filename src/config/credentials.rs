//! `[credentials]`: which provider signs requests, and the endpoints and names it uses. The
//! secret itself is never a config value.

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::KeyError;

/// Where the AccessKey comes from: the SDK chain, or one provider pinned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Provider {
    /// The official SDKs' default chain.
    #[default]
    Default,
    Env,
    Static,
    Oidc,
    Profile,
    File,
    EcsRamRole,
}

impl Provider {
    pub const ALL: [Provider; 7] = [
        Provider::Default,
        Provider::Env,
        Provider::Static,
        Provider::Oidc,
        Provider::Profile,
        Provider::File,
        Provider::EcsRamRole,
    ];

    /// The name in the config file (and the `provider` label of a pinned provider).
    pub fn name(self) -> &'static str {
        match self {
            Provider::Default => "default",
            Provider::Env => "env",
            Provider::Static => "static",
            Provider::Oidc => "oidc",
            Provider::Profile => "profile",
            Provider::File => "file",
            Provider::EcsRamRole => "ecs_ram_role",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<String> for Provider {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Provider::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Provider::ALL.iter().map(|p| p.name()).collect();
                // The value is not quoted back: config errors never are (see `figment_errors`).
                format!("unknown provider; expected one of {}", names.join(", "))
            })
    }
}

impl From<Provider> for String {
    fn from(p: Provider) -> String {
        p.name().to_owned()
    }
}

/// `[credentials]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialsConfig {
    pub provider: Provider,
    pub access_key_id: Option<String>,
    /// A file holding the AccessKey secret (Kubernetes Secrets arrive as files).
    pub access_key_secret_file: Option<PathBuf>,
    /// Refused by validation: accepted by the parser only to explain why.
    #[serde(skip_serializing)]
    pub access_key_secret: Option<SecretString>,
    /// STS endpoint for OIDC/RRSA; a bare host means https.
    pub sts_endpoint: Option<String>,
    pub ecs_metadata_endpoint: Option<String>,
    pub role_session_name: Option<String>,
}

/// Field by field; the refused inline secret counts by its presence only (its value is never
/// looked at, and a valid configuration has none).
impl PartialEq for CredentialsConfig {
    fn eq(&self, other: &Self) -> bool {
        let CredentialsConfig {
            provider,
            access_key_id,
            access_key_secret_file,
            access_key_secret,
            sts_endpoint,
            ecs_metadata_endpoint,
            role_session_name,
        } = self;
        *provider == other.provider
            && *access_key_id == other.access_key_id
            && *access_key_secret_file == other.access_key_secret_file
            && access_key_secret.is_some() == other.access_key_secret.is_some()
            && *sts_endpoint == other.sts_endpoint
            && *ecs_metadata_endpoint == other.ecs_metadata_endpoint
            && *role_session_name == other.role_session_name
    }
}

impl CredentialsConfig {
    /// Every problem of the section, keys prefixed with `credentials.`.
    pub fn validate(&self) -> Vec<KeyError> {
        let mut errs = Vec::new();
        if self.access_key_secret.is_some() {
            errs.push(KeyError::new(
                "credentials.access_key_secret",
                "a secret inline in a config file ends up in version control; put it in a file \
                 and set credentials.access_key_secret_file, or use the environment",
            ));
        }
        if let Some(path) = &self.access_key_secret_file {
            if let Err(reason) = check_secret_file(path) {
                errs.push(KeyError::new("credentials.access_key_secret_file", reason));
            }
        }
        for (key, value) in [
            ("credentials.sts_endpoint", &self.sts_endpoint),
            (
                "credentials.ecs_metadata_endpoint",
                &self.ecs_metadata_endpoint,
            ),
        ] {
            if let Some(Err(reason)) = value.as_deref().map(normalize_endpoint) {
                errs.push(KeyError::new(key, reason));
            }
        }
        if let Some(Err(reason)) = self
            .role_session_name
            .as_deref()
            .map(check_role_session_name)
        {
            errs.push(KeyError::new("credentials.role_session_name", reason));
        }
        errs
    }
}

/// A configured secret file must be readable and non-empty now, not at the first poll: a typo in
/// a mounted Secret's path should stop the start (or the reload), not yield an exporter that runs
/// and reports `code="credentials"` forever. Only the I/O error is reported, under the key
/// (never the path: see [`super::unreadable_file`]); the contents are read, checked and dropped.
fn check_secret_file(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| super::unreadable_file(&e))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err("the file is empty".into());
    }
    Ok(())
}

/// A bare host means https; a full `http(s)://host[:port]` URL is taken as is. Returns the URL
/// without a trailing slash.
pub fn normalize_endpoint(s: &str) -> Result<String, String> {
    let s = s.trim();
    let with_scheme = if s.contains("://") {
        s.to_owned()
    } else {
        format!("https://{s}")
    };
    match url::Url::parse(&with_scheme) {
        Ok(u)
            if matches!(u.scheme(), "http" | "https")
                && u.host_str().is_some_and(|h| !h.is_empty())
                && u.query().is_none()
                && matches!(u.path(), "" | "/") =>
        {
            Ok(with_scheme.trim_end_matches('/').to_owned())
        }
        _ => Err(format!(
            "{s:?} is neither a host name nor an http(s)://host[:port] URL"
        )),
    }
}

/// `RoleSessionName` as STS accepts it: 2 to 64 of `[A-Za-z0-9._@-]`.
pub fn check_role_session_name(s: &str) -> Result<(), String> {
    let ok = (2..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} must be 2 to 64 characters of letters, digits and . _ @ -"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_session_names() {
        assert_eq!(
            normalize_endpoint("sts-vpc.cn-hangzhou.aliyuncs.com").unwrap(),
            "https://sts-vpc.cn-hangzhou.aliyuncs.com"
        );
        assert_eq!(
            normalize_endpoint("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        for bad in ["ftp://x", "http://", "https://h/path", "a b", ""] {
            assert!(normalize_endpoint(bad).is_err(), "{bad}");
        }
        assert!(check_role_session_name("exporter@ns.pod-1").is_ok());
        assert!(check_role_session_name("x").is_err());
        assert!(check_role_session_name("has space").is_err());
    }

    #[test]
    fn provider_names_round_trip() {
        for p in Provider::ALL {
            assert_eq!(Provider::try_from(String::from(p)), Ok(p));
        }
        let e = Provider::try_from("magic".to_owned()).unwrap_err();
        assert!(
            e.contains("unknown provider;") && e.contains("ecs_ram_role") && !e.contains("magic"),
            "{e}"
        );
    }
}
