//! The environment provider: `ALIBABA_CLOUD_ACCESS_KEY_ID`, `…_SECRET` and optional
//! `…_SECURITY_TOKEN`, read once at start, first in the default chain.

use super::{CredentialError, Credentials, StaticProvider};

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
