//! Where the AccessKey that signs each request comes from.
//!
//! The DAS client only sees [`CredentialProvider`]: a provider hands out the current
//! [`Credentials`], refreshing short-lived ones behind the seam. Secrets live in
//! [`secrecy::SecretString`], whose `Debug` prints `[REDACTED]`, so no log line, error or
//! `{:?}` can show one by accident; the only way out is an explicit `expose_secret()` at the
//! point of signing.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

pub use secrecy::{ExposeSecret, SecretString};

/// A boxed future, so providers can sit behind `dyn` without an extra crate.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One set of credentials as the signer needs them.
#[derive(Clone)]
pub struct Credentials {
    /// Not a secret by itself, but it identifies the account: kept out of logs all the same.
    pub access_key_id: String,
    pub access_key_secret: SecretString,
    /// Present for STS credentials; signed like any other parameter.
    pub security_token: Option<SecretString>,
    /// When STS credentials stop working; `None` for long-lived keys.
    pub expiration: Option<SystemTime>,
}

impl Credentials {
    /// Long-lived AccessKey pair, optionally with an STS token.
    pub fn new(id: impl Into<String>, secret: impl Into<String>, token: Option<String>) -> Self {
        Self {
            access_key_id: id.into(),
            access_key_secret: SecretString::from(secret.into()),
            security_token: token.map(SecretString::from),
            expiration: None,
        }
    }

    /// True once `expiration` has passed: such credentials must never sign a request.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expiration.is_some_and(|e| e <= now)
    }

    /// Every string an error message or a log line must not contain, raw and percent-encoded
    /// (single and double, as a gateway's `SignatureDoesNotMatch` message echoes the string to sign).
    pub fn sensitive_strings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut push = |s: &str| {
            if s.len() >= 4 {
                let once = crate::das::sign::percent_encode(s);
                let twice = crate::das::sign::percent_encode(&once);
                out.extend([s.to_owned(), once, twice]);
            }
        };
        push(self.access_key_secret.expose_secret());
        if let Some(t) = &self.security_token {
            push(t.expose_secret());
        }
        out
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &redact_id(&self.access_key_id))
            .field("access_key_secret", &"[REDACTED]")
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("expiration", &self.expiration)
            .finish()
    }
}

/// Keeps the first four characters of an AccessKey id (`LTAI****`), enough to tell keys apart.
pub fn redact_id(id: &str) -> String {
    let head: String = id.chars().take(4).collect();
    format!("{head}****")
}

/// Why no credentials could be had. Messages never contain secret material.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialError {
    #[error("{provider}: not configured ({reason})")]
    NotConfigured {
        provider: &'static str,
        reason: String,
    },
    #[error("{provider}: {reason}")]
    Failed {
        provider: &'static str,
        reason: String,
    },
    #[error("{provider}: credentials expired and could not be refreshed")]
    Expired { provider: &'static str },
}

/// The seam: something that can hand out the credentials to sign with right now.
pub trait CredentialProvider: Send + Sync + fmt::Debug {
    /// Short, stable name used as the `provider` label (`env`, `static`, `oidc`, …).
    fn name(&self) -> &'static str;
    /// The credentials to sign the next request with; never expired ones.
    fn credentials(&self) -> BoxFuture<'_, Result<Arc<Credentials>, CredentialError>>;
}

/// A fixed set of credentials (the demo, tests, and `[credentials] provider = "static"`).
#[derive(Debug, Clone)]
pub struct StaticProvider {
    creds: Arc<Credentials>,
    name: &'static str,
}

impl StaticProvider {
    pub fn new(creds: Credentials) -> Self {
        Self::named(creds, "static")
    }

    pub fn named(creds: Credentials, name: &'static str) -> Self {
        Self {
            creds: Arc::new(creds),
            name,
        }
    }
}

impl CredentialProvider for StaticProvider {
    fn name(&self) -> &'static str {
        self.name
    }

    fn credentials(&self) -> BoxFuture<'_, Result<Arc<Credentials>, CredentialError>> {
        let creds = self.creds.clone();
        let name = self.name;
        Box::pin(async move {
            if creds.is_expired(SystemTime::now()) {
                Err(CredentialError::Expired { provider: name })
            } else {
                Ok(creds)
            }
        })
    }
}

/// Environment variables read by the official SDKs.
pub const ENV_ACCESS_KEY_ID: &str = "ALIBABA_CLOUD_ACCESS_KEY_ID";
pub const ENV_ACCESS_KEY_SECRET: &str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET";
pub const ENV_SECURITY_TOKEN: &str = "ALIBABA_CLOUD_SECURITY_TOKEN";

/// Reads `ALIBABA_CLOUD_ACCESS_KEY_ID`, `…_SECRET` and optional `…_SECURITY_TOKEN` once, at start.
pub fn from_env() -> Result<StaticProvider, CredentialError> {
    from_env_with(|k| std::env::var(k).ok())
}

/// [`from_env`] with the environment passed in, for tests.
pub fn from_env_with(
    get: impl Fn(&str) -> Option<String>,
) -> Result<StaticProvider, CredentialError> {
    let non_empty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
    let id = non_empty(ENV_ACCESS_KEY_ID).ok_or_else(|| CredentialError::NotConfigured {
        provider: "env",
        reason: format!("{ENV_ACCESS_KEY_ID} is not set"),
    })?;
    let secret =
        non_empty(ENV_ACCESS_KEY_SECRET).ok_or_else(|| CredentialError::NotConfigured {
            provider: "env",
            reason: format!("{ENV_ACCESS_KEY_SECRET} is not set"),
        })?;
    let token = non_empty(ENV_SECURITY_TOKEN);
    Ok(StaticProvider::named(
        Credentials::new(id, secret, token),
        "env",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credentials::new(
            "LTAIexampleid",
            "fake-secret-value",
            Some("fake-token".into()),
        );
        let dbg = format!("{c:?} {:?}", StaticProvider::new(c.clone()));
        assert!(!dbg.contains("fake-secret-value"), "{dbg}");
        assert!(!dbg.contains("fake-token"), "{dbg}");
        assert!(!dbg.contains("LTAIexampleid"), "{dbg}");
        assert!(dbg.contains("LTAI****"));
    }

    #[test]
    fn env_provider_requires_both_halves() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let err = from_env_with(env(&[(ENV_ACCESS_KEY_ID, "id")])).unwrap_err();
        assert!(err.to_string().contains(ENV_ACCESS_KEY_SECRET), "{err}");
        assert!(from_env_with(env(&[
            (ENV_ACCESS_KEY_ID, "id"),
            (ENV_ACCESS_KEY_SECRET, " ")
        ]))
        .is_err());
        let p = from_env_with(env(&[
            (ENV_ACCESS_KEY_ID, "id"),
            (ENV_ACCESS_KEY_SECRET, "s3cret"),
            (ENV_SECURITY_TOKEN, "tok"),
        ]))
        .unwrap();
        assert_eq!(p.name(), "env");
        assert_eq!(
            p.creds
                .security_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned()),
            Some("tok".to_owned())
        );
    }

    #[test]
    fn expired_static_credentials_are_refused() {
        let mut c = Credentials::new("id", "secret", None);
        c.expiration = Some(SystemTime::UNIX_EPOCH);
        let p = StaticProvider::new(c);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(matches!(
            rt.block_on(p.credentials()),
            Err(CredentialError::Expired { .. })
        ));
    }

    #[test]
    fn sensitive_strings_cover_encodings() {
        let c = Credentials::new("id", "se/cr=t", Some("to+ken/=".into()));
        let s = c.sensitive_strings();
        assert!(s.contains(&"to%2Bken%2F%3D".to_owned()));
        assert!(s.contains(&"to%252Bken%252F%253D".to_owned()));
    }
}

/// A provider that has nothing to give: polls fail with `code="credentials"` and the reason,
/// while the exporter keeps serving (and alerting) instead of crash-looping.
#[derive(Debug, Clone)]
pub struct Unavailable(pub CredentialError);

impl CredentialProvider for Unavailable {
    fn name(&self) -> &'static str {
        "none"
    }

    fn credentials(&self) -> BoxFuture<'_, Result<Arc<Credentials>, CredentialError>> {
        let e = self.0.clone();
        Box::pin(async move { Err(e) })
    }
}

/// Builds the provider `[credentials]` asks for.
pub fn from_config(
    cfg: &crate::config::CredentialsConfig,
) -> Result<Arc<dyn CredentialProvider>, CredentialError> {
    match cfg.provider.as_str() {
        "default" | "env" => Ok(Arc::new(from_env()?)),
        "static" => {
            let fail = |reason: String| CredentialError::NotConfigured {
                provider: "static",
                reason,
            };
            let id = cfg
                .access_key_id
                .clone()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| fail("credentials.access_key_id is not set".into()))?;
            let path = cfg
                .access_key_secret_file
                .as_ref()
                .ok_or_else(|| fail("credentials.access_key_secret_file is not set".into()))?;
            let secret = std::fs::read_to_string(path).map_err(|e| {
                fail(format!(
                    "credentials.access_key_secret_file {}: {e}",
                    path.display()
                ))
            })?;
            let secret = secret.trim_end_matches(['\r', '\n']).to_owned();
            if secret.is_empty() {
                return Err(fail(format!(
                    "credentials.access_key_secret_file {} is empty",
                    path.display()
                )));
            }
            Ok(Arc::new(StaticProvider::new(Credentials::new(
                id, secret, None,
            ))))
        }
        other => Err(CredentialError::NotConfigured {
            provider: "default",
            reason: format!("provider {other:?} is not available in this build"),
        }),
    }
}
