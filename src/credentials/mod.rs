//! Where the AccessKey that signs each request comes from.
//!
//! The DAS client only sees [`CredentialProvider`]: a provider hands out the current
//! [`Credentials`], refreshing short-lived ones behind the seam. Secrets live in
//! [`secrecy::SecretString`], whose `Debug` prints `[REDACTED]`, so no log line, error or
//! `{:?}` can show one by accident; the only way out is an explicit `expose_secret()` at the
//! point of signing.
//!
//! # Layout
//!
//! One file per provider, in the order of the official SDKs' default chain:
//! [`env`] → [`oidc`] (RRSA) → [`profile`] (`aliyun` CLI) → [`file`] (INI) → [`ecs`] (RAM role),
//! tied together by [`chain`]. Short-lived credentials (STS, ECS) are kept fresh by [`refresh`].
//! [`from_config`] builds the provider `[credentials]` asks for.

pub mod chain;
pub mod ecs;
pub mod env;
pub mod file;
pub mod oidc;
pub mod profile;
pub mod refresh;

pub use env::{
    from_env, from_env_with, ENV_ACCESS_KEY_ID, ENV_ACCESS_KEY_SECRET, ENV_SECURITY_TOKEN,
};

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::future::BoxFuture;

use crate::acs::AccessKey;
use crate::config::{check_role_session_name, normalize_endpoint, CredentialsConfig, Provider};
use crate::metrics::ProcessMetrics;

pub use secrecy::{ExposeSecret, SecretString};

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

    /// What a request is signed with, borrowed for one signing.
    pub fn access_key(&self) -> AccessKey<'_> {
        AccessKey {
            id: &self.access_key_id,
            secret: self.access_key_secret.expose_secret(),
            token: self.security_token.as_ref().map(|t| t.expose_secret()),
        }
    }
}

/// The credentials to sign a request with at `now`, or why there are none: expired credentials
/// never sign anything (the request could only fail, noisily).
pub async fn for_signing(
    provider: &dyn CredentialProvider,
    now: SystemTime,
) -> Result<Arc<Credentials>, String> {
    let creds = provider.credentials().await.map_err(|e| e.to_string())?;
    if creds.is_expired(now) {
        return Err(format!("{} credentials expired", provider.name()));
    }
    Ok(creds)
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

impl CredentialError {
    /// The provider the error is about (the `provider` label).
    pub fn provider(&self) -> &'static str {
        match self {
            CredentialError::NotConfigured { provider, .. }
            | CredentialError::Failed { provider, .. }
            | CredentialError::Expired { provider } => provider,
        }
    }

    pub(crate) fn failed(provider: &'static str, reason: impl Into<String>) -> Self {
        CredentialError::Failed {
            provider,
            reason: reason.into(),
        }
    }

    pub(crate) fn not_configured(provider: &'static str, reason: impl Into<String>) -> Self {
        CredentialError::NotConfigured {
            provider,
            reason: reason.into(),
        }
    }
}

/// What a provider reports about itself, published as the credentials metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// The `provider` label.
    pub provider: &'static str,
    /// When the credentials in use expire; `None` for long-lived keys (the gauge is then absent).
    pub expiry: Option<SystemTime>,
    /// Failures to obtain or refresh credentials so far.
    pub errors: u64,
}

/// Wakes whoever publishes a provider's [`CredentialProvider::health`] when it changed, so the
/// metrics follow a refresh or a failure without polling. Clones share one signal.
#[derive(Debug, Clone, Default)]
pub struct HealthSignal(Arc<tokio::sync::Notify>);

impl HealthSignal {
    /// Says that what [`CredentialProvider::health`] returns has changed.
    pub(crate) fn notify(&self) {
        self.0.notify_one();
    }

    /// Resolves after the next [`HealthSignal::notify`] (or at once if one happened since the
    /// last call).
    pub async fn changed(&self) {
        self.0.notified().await;
    }
}

/// The seam: something that can hand out the credentials to sign with right now.
pub trait CredentialProvider: Send + Sync + fmt::Debug {
    /// Short, stable name used as the `provider` label (`env`, `static`, `oidc`, …).
    fn name(&self) -> &'static str;
    /// The credentials to sign the next request with; never expired ones.
    fn credentials(&self) -> BoxFuture<'_, Result<Arc<Credentials>, CredentialError>>;
    /// One row per provider worth showing (the one in use, and any that failed).
    fn health(&self) -> Vec<Health> {
        vec![Health {
            provider: self.name(),
            expiry: None,
            errors: 0,
        }]
    }
    /// What this provider raises when [`CredentialProvider::health`] changes; `None` when it
    /// never does.
    fn health_signal(&self) -> Option<HealthSignal> {
        None
    }
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

    fn health(&self) -> Vec<Health> {
        vec![Health {
            provider: self.name,
            expiry: self.creds.expiration,
            errors: 0,
        }]
    }
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
}

/// A provider that has nothing to give: polls fail with `code="credentials"` and the reason,
/// while the exporter keeps serving (and alerting) instead of crash-looping.
#[derive(Debug)]
pub struct Unavailable {
    error: CredentialError,
    errors: AtomicU64,
    signal: HealthSignal,
}

impl Unavailable {
    pub fn new(error: CredentialError) -> Self {
        Self {
            error,
            errors: AtomicU64::new(0),
            signal: HealthSignal::default(),
        }
    }
}

impl CredentialProvider for Unavailable {
    fn name(&self) -> &'static str {
        self.error.provider()
    }

    fn credentials(&self) -> BoxFuture<'_, Result<Arc<Credentials>, CredentialError>> {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.signal.notify();
        let e = self.error.clone();
        Box::pin(async move { Err(e) })
    }

    fn health(&self) -> Vec<Health> {
        vec![Health {
            provider: self.name(),
            expiry: None,
            errors: self.errors.load(Ordering::Relaxed),
        }]
    }

    fn health_signal(&self) -> Option<HealthSignal> {
        Some(self.signal.clone())
    }
}

/// Default STS endpoint (the global one; regional ones are `sts.<region>.aliyuncs.com`).
pub const DEFAULT_STS_ENDPOINT: &str = "sts.aliyuncs.com";
/// The ECS instance metadata service.
pub const DEFAULT_ECS_METADATA_ENDPOINT: &str = "http://100.100.100.200";
/// `RoleSessionName` when neither the config nor the environment names one.
pub const DEFAULT_ROLE_SESSION_NAME: &str = "redis-session-exporter";
pub const ENV_STS_ENDPOINT: &str = "ALIBABA_CLOUD_STS_ENDPOINT";
pub const ENV_ROLE_SESSION_NAME: &str = "ALIBABA_CLOUD_ROLE_SESSION_NAME";

/// What every provider needs besides its own files: endpoints and names from `[credentials]`
/// and the environment, resolved once.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Without a trailing slash.
    pub sts_endpoint: String,
    /// Without a trailing slash.
    pub ecs_metadata_endpoint: String,
    pub role_session_name: String,
    /// `$HOME`, where `~/.aliyun/config.json` and `~/.alibabacloud/credentials` live.
    pub home: Option<PathBuf>,
    /// Raised by every provider built with these settings when its health changes.
    pub signal: HealthSignal,
    /// Where the providers count their requests to STS and the metadata service.
    pub metrics: ProcessMetrics,
}

impl Settings {
    /// Config keys win over the SDK environment variables, which win over the defaults.
    pub fn resolve(
        cfg: &CredentialsConfig,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, CredentialError> {
        let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let sts = non_empty(cfg.sts_endpoint.clone())
            .or_else(|| non_empty(get(ENV_STS_ENDPOINT)))
            .unwrap_or_else(|| DEFAULT_STS_ENDPOINT.to_owned());
        let ecs = non_empty(cfg.ecs_metadata_endpoint.clone())
            .unwrap_or_else(|| DEFAULT_ECS_METADATA_ENDPOINT.to_owned());
        let session = non_empty(cfg.role_session_name.clone())
            .or_else(|| non_empty(get(ENV_ROLE_SESSION_NAME)))
            .unwrap_or_else(|| DEFAULT_ROLE_SESSION_NAME.to_owned());
        let bad = |key: &str, reason: String| {
            CredentialError::not_configured("default", format!("{key}: {reason}"))
        };
        check_role_session_name(&session).map_err(|r| bad("credentials.role_session_name", r))?;
        Ok(Self {
            sts_endpoint: normalize_endpoint(&sts)
                .map_err(|r| bad("credentials.sts_endpoint", r))?,
            ecs_metadata_endpoint: normalize_endpoint(&ecs)
                .map_err(|r| bad("credentials.ecs_metadata_endpoint", r))?,
            role_session_name: session,
            home: non_empty(get("HOME")).map(PathBuf::from),
            signal: HealthSignal::default(),
            metrics: ProcessMetrics::default(),
        })
    }
}

/// Where a profile or an INI section says the credentials come from.
#[derive(Debug, Clone)]
pub enum Spec {
    AccessKey {
        id: String,
        secret: SecretString,
        token: Option<SecretString>,
    },
    /// `role: None` asks the metadata service which role is attached.
    EcsRamRole {
        role: Option<String>,
    },
    Oidc(oidc::OidcParams),
}

impl Spec {
    /// The provider for this spec, labelled `name` (`profile`, `file`, …).
    pub fn build(
        self,
        name: &'static str,
        settings: &Settings,
        get: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Arc<dyn CredentialProvider>, CredentialError> {
        Ok(match self {
            Spec::AccessKey { id, secret, token } => Arc::new(StaticProvider::named(
                Credentials {
                    access_key_id: id,
                    access_key_secret: secret,
                    security_token: token,
                    expiration: None,
                },
                name,
            )),
            Spec::EcsRamRole { role } => {
                ecs::check_enabled(name, get)?;
                Arc::new(
                    refresh::Refreshing::new(ecs::EcsFetcher::new(
                        name,
                        &settings.ecs_metadata_endpoint,
                        role,
                        settings.metrics.clone(),
                    )?)
                    .with_signal(settings.signal.clone()),
                )
            }
            Spec::Oidc(params) => Arc::new(
                refresh::Refreshing::new(oidc::OidcFetcher::new(
                    name,
                    &settings.sts_endpoint,
                    params,
                    &settings.role_session_name,
                    settings.metrics.clone(),
                )?)
                .with_signal(settings.signal.clone()),
            ),
        })
    }
}

/// Builds the provider `[credentials]` asks for; its requests to STS and the metadata service
/// are counted in `metrics`.
pub fn from_config(
    cfg: &CredentialsConfig,
    metrics: &ProcessMetrics,
) -> Result<Arc<dyn CredentialProvider>, CredentialError> {
    from_config_with(cfg, &|k| std::env::var(k).ok(), metrics)
}

/// [`from_config`] with the environment passed in, for tests.
pub fn from_config_with(
    cfg: &CredentialsConfig,
    get: &dyn Fn(&str) -> Option<String>,
    metrics: &ProcessMetrics,
) -> Result<Arc<dyn CredentialProvider>, CredentialError> {
    let settings = Settings {
        metrics: metrics.clone(),
        ..Settings::resolve(cfg, get)?
    };
    tracing::debug!(provider = %cfg.provider, sts = %settings.sts_endpoint,
        metadata = %settings.ecs_metadata_endpoint, "building the credential provider");
    match cfg.provider {
        Provider::Default => Ok(Arc::new(chain::Chain::from_env(&settings, get))),
        Provider::Env => Ok(Arc::new(from_env_with(get)?)),
        Provider::Static => static_from_config(cfg),
        Provider::Oidc => oidc::OidcParams::from_env(get)?
            .ok_or_else(|| {
                CredentialError::not_configured(
                    "oidc",
                    format!(
                        "{}, {} and {} must all be set",
                        oidc::ENV_ROLE_ARN,
                        oidc::ENV_OIDC_PROVIDER_ARN,
                        oidc::ENV_OIDC_TOKEN_FILE
                    ),
                )
            })
            .and_then(|p| Spec::Oidc(p).build("oidc", &settings, get)),
        Provider::Profile => {
            let path = profile::path(&settings)
                .ok_or_else(|| CredentialError::not_configured("profile", "HOME is not set"))?;
            profile::load(&path, get)?.build("profile", &settings, get)
        }
        Provider::File => {
            let path = file::path(&settings, get).ok_or_else(|| {
                CredentialError::not_configured(
                    "file",
                    format!("neither {} nor HOME is set", file::ENV_CREDENTIALS_FILE),
                )
            })?;
            file::load(&path, get)?.build("file", &settings, get)
        }
        Provider::EcsRamRole => Spec::EcsRamRole {
            role: ecs::role_from_env(get),
        }
        .build("ecs_ram_role", &settings, get),
    }
}

fn static_from_config(
    cfg: &CredentialsConfig,
) -> Result<Arc<dyn CredentialProvider>, CredentialError> {
    let fail = |reason: String| CredentialError::not_configured("static", reason);
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
            "credentials.access_key_secret_file: {}",
            crate::config::unreadable_file(&e)
        ))
    })?;
    let secret = secret.trim_end_matches(['\r', '\n']).to_owned();
    if secret.is_empty() {
        return Err(fail(
            "credentials.access_key_secret_file: the file is empty".into(),
        ));
    }
    Ok(Arc::new(StaticProvider::new(Credentials::new(
        id, secret, None,
    ))))
}
