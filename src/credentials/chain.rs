//! The default chain, in the official SDKs' order: environment → OIDC/RRSA → CLI profile → INI
//! file → ECS RAM role. The first provider that yields credentials is remembered and used from
//! then on; until one does, every request walks the chain again (one walk at a time).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;

use super::{
    ecs, file, from_env_with, oidc, profile, CredentialError, CredentialProvider, Credentials,
    Health, HealthSignal, Settings, Spec,
};

/// The chain as built from the environment at start-up.
#[derive(Debug)]
pub struct Chain {
    /// Candidates in order; providers that are not configured at all are left out.
    candidates: Vec<Arc<dyn CredentialProvider>>,
    /// Why a configured link was unusable from the start (a malformed file, …).
    broken: Vec<String>,
    /// Why the other links are not in the chain, to say what could be set up.
    absent: Vec<String>,
    chosen: OnceLock<Arc<dyn CredentialProvider>>,
    walk: tokio::sync::Mutex<()>,
    errors: AtomicU64,
    /// Shared with the candidates (through [`Settings`]).
    signal: HealthSignal,
}

impl Chain {
    /// Looks at the environment and the files once; nothing is fetched yet.
    pub fn from_env(settings: &Settings, get: &dyn Fn(&str) -> Option<String>) -> Self {
        let mut candidates: Vec<Arc<dyn CredentialProvider>> = Vec::new();
        let mut broken = Vec::new();
        let mut absent = Vec::new();
        let mut add = |r: Result<Option<Arc<dyn CredentialProvider>>, CredentialError>| match r {
            Ok(Some(p)) => candidates.push(p),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "credential chain: skipping a provider that is set up wrongly");
                broken.push(e.to_string());
            }
        };
        add(match from_env_with(get) {
            Ok(p) => Ok(Some(Arc::new(p))),
            // Half-set variables deserve a mention; unset ones are simply not this link.
            Err(e) if get(super::ENV_ACCESS_KEY_ID).is_some() => Err(e),
            Err(e) => {
                absent.push(e.to_string());
                Ok(None)
            }
        });
        if !oidc::OidcParams::from_env(get).is_ok_and(|p| p.is_some()) {
            absent.push(format!("oidc: {} is not set", oidc::ENV_ROLE_ARN));
        }
        add(oidc::OidcParams::from_env(get).and_then(|p| {
            p.map(|p| Spec::Oidc(p).build("oidc", settings, get))
                .transpose()
        }));
        add(match profile::path(settings).filter(|p| p.is_file()) {
            Some(path) => {
                profile::load(&path, get).and_then(|s| s.build("profile", settings, get).map(Some))
            }
            None => Ok(None),
        });
        add(match file::path(settings, get) {
            Some(path) if path.is_file() || file::named_explicitly(get) => {
                file::load(&path, get).and_then(|s| s.build("file", settings, get).map(Some))
            }
            _ => {
                absent.push(format!(
                    "file: no ~/.alibabacloud/credentials and {} is not set",
                    file::ENV_CREDENTIALS_FILE
                ));
                Ok(None)
            }
        });
        if ecs::disabled(get) {
            absent.push(format!(
                "ecs_ram_role: disabled by {}=true",
                ecs::ENV_ECS_METADATA_DISABLED
            ));
        } else {
            add(Spec::EcsRamRole {
                role: ecs::role_from_env(get),
            }
            .build("ecs_ram_role", settings, get)
            .map(Some));
        }
        let names: Vec<&str> = candidates.iter().map(|c| c.name()).collect();
        tracing::debug!(?names, "credential chain");
        Self {
            candidates,
            broken,
            absent,
            chosen: OnceLock::new(),
            walk: tokio::sync::Mutex::new(()),
            errors: AtomicU64::new(0),
            signal: settings.signal.clone(),
        }
    }

    /// The names of the candidates, in order (for tests and logs).
    pub fn candidates(&self) -> Vec<&'static str> {
        self.candidates.iter().map(|c| c.name()).collect()
    }

    async fn walk(&self) -> Result<Arc<Credentials>, CredentialError> {
        let _one_walk = self.walk.lock().await;
        if let Some(p) = self.chosen.get() {
            return p.credentials().await;
        }
        let mut reasons = self.broken.clone();
        for p in &self.candidates {
            match p.credentials().await {
                Ok(c) => {
                    tracing::info!(provider = p.name(), "credentials found");
                    let _ = self.chosen.set(p.clone());
                    self.signal.notify();
                    return Ok(c);
                }
                Err(e) => reasons.push(e.to_string()),
            }
        }
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.signal.notify();
        reasons.extend(self.absent.iter().cloned());
        Err(CredentialError::not_configured(
            "default",
            format!(
                "no credentials in the default chain: {}",
                reasons.join("; ")
            ),
        ))
    }
}

impl CredentialProvider for Chain {
    fn name(&self) -> &'static str {
        self.chosen.get().map_or("default", |p| p.name())
    }

    fn credentials(&self) -> BoxFuture<'_, Result<Arc<Credentials>, CredentialError>> {
        Box::pin(async move {
            match self.chosen.get() {
                Some(p) => p.credentials().await,
                None => self.walk().await,
            }
        })
    }

    fn health(&self) -> Vec<Health> {
        let chosen = self.chosen.get().map(|p| p.name());
        let mut rows: Vec<Health> = self
            .candidates
            .iter()
            .flat_map(|c| c.health())
            .filter(|h| Some(h.provider) == chosen || h.errors > 0)
            .collect();
        let errors = self.errors.load(Ordering::Relaxed);
        if chosen.is_none() || errors > 0 {
            rows.insert(
                0,
                Health {
                    provider: "default",
                    expiry: None,
                    errors,
                },
            );
        }
        rows
    }

    fn health_signal(&self) -> Option<HealthSignal> {
        Some(self.signal.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(home: Option<&std::path::Path>) -> Settings {
        Settings {
            sts_endpoint: "http://127.0.0.1:9".into(),
            ecs_metadata_endpoint: "http://127.0.0.1:9".into(),
            role_session_name: "test".into(),
            home: home.map(Into::into),
            signal: HealthSignal::default(),
            metrics: crate::metrics::ProcessMetrics::default(),
        }
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| m.get(k).cloned()
    }

    #[test]
    fn order_and_skips() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".aliyun")).unwrap();
        std::fs::write(
            home.path().join(".aliyun/config.json"),
            r#"{"current":"default","profiles":[{"name":"default","mode":"AK","access_key_id":"a","access_key_secret":"b"}]}"#,
        )
        .unwrap();
        std::fs::create_dir_all(home.path().join(".alibabacloud")).unwrap();
        std::fs::write(
            home.path().join(".alibabacloud/credentials"),
            "[default]\ntype = access_key\n",
        )
        .unwrap();
        let get = env(&[
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "id"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "s"),
            ("ALIBABA_CLOUD_ROLE_ARN", "r"),
            ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", "p"),
            ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", "/t"),
        ]);
        let c = Chain::from_env(&settings(Some(home.path())), &get);
        assert_eq!(c.candidates(), ["env", "oidc", "profile", "ecs_ram_role"]);
        assert_eq!(c.broken.len(), 1, "the INI file lacks keys: {:?}", c.broken);
        assert!(
            c.broken[0].contains("missing key access_key_id"),
            "{:?}",
            c.broken
        );

        let get = env(&[("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")]);
        let c = Chain::from_env(&settings(None), &get);
        assert!(c.candidates().is_empty());
    }

    #[tokio::test]
    async fn remembers_the_first_that_works() {
        let get = env(&[
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "id"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "s"),
            ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true"),
        ]);
        let c = Chain::from_env(&settings(None), &get);
        assert_eq!(c.name(), "default");
        assert_eq!(c.credentials().await.unwrap().access_key_id, "id");
        assert_eq!(c.name(), "env");
        assert_eq!(
            c.health(),
            vec![Health {
                provider: "env",
                expiry: None,
                errors: 0
            }]
        );
    }

    #[tokio::test]
    async fn nothing_found_is_an_error_that_says_why() {
        let get = env(&[
            ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true"),
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "id"),
        ]);
        let c = Chain::from_env(&settings(None), &get);
        let e = c.credentials().await.unwrap_err().to_string();
        assert!(
            e.contains("ALIBABA_CLOUD_ACCESS_KEY_SECRET is not set"),
            "{e}"
        );
        assert_eq!(
            c.health()[0],
            Health {
                provider: "default",
                expiry: None,
                errors: 1
            }
        );
    }
}
