//! OIDC / RRSA: trades the pod's OIDC token for STS credentials with `AssumeRoleWithOIDC`.
//!
//! The call is anonymous (no AccessKey, no signature): the token is the proof. The token file is
//! re-read on every refresh because the kubelet rotates it. Building the request and reading the
//! answer are pure functions; only [`OidcFetcher::fetch`] does I/O.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;

use super::refresh::Fetch;
use super::{CredentialError, Credentials, ExposeSecret, SecretString};
use crate::acs::{self, sign};
use crate::metrics::ProcessMetrics;

pub const ENV_ROLE_ARN: &str = "ALIBABA_CLOUD_ROLE_ARN";
pub const ENV_OIDC_PROVIDER_ARN: &str = "ALIBABA_CLOUD_OIDC_PROVIDER_ARN";
pub const ENV_OIDC_TOKEN_FILE: &str = "ALIBABA_CLOUD_OIDC_TOKEN_FILE";
pub const STS_API_VERSION: &str = "2015-04-01";
/// What the SDKs ask for; STS accepts 900 at least.
pub const DURATION_SECONDS: u64 = 3600;
/// An STS call, answer included, takes at most this long.
const TIMEOUT: Duration = Duration::from_secs(10);
/// An STS answer is a few hundred bytes; anything near this is not one.
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

/// What `AssumeRoleWithOIDC` needs besides the token itself.
#[derive(Debug, Clone)]
pub struct OidcParams {
    pub role_arn: String,
    pub oidc_provider_arn: String,
    pub token_file: PathBuf,
    /// Falls back to the resolved `role_session_name`.
    pub role_session_name: Option<String>,
}

impl OidcParams {
    /// From the environment RRSA injects; `Ok(None)` when none of the three is set, an error
    /// naming the missing ones when only some are.
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, CredentialError> {
        let vars = [ENV_ROLE_ARN, ENV_OIDC_PROVIDER_ARN, ENV_OIDC_TOKEN_FILE];
        let vals: Vec<Option<String>> = vars
            .iter()
            .map(|k| get(k).filter(|v| !v.trim().is_empty()))
            .collect();
        if vals.iter().all(Option::is_none) {
            return Ok(None);
        }
        let missing: Vec<&str> = vars
            .iter()
            .zip(&vals)
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| *k)
            .collect();
        if !missing.is_empty() {
            return Err(CredentialError::not_configured(
                "oidc",
                format!("{} not set", missing.join(", ")),
            ));
        }
        let mut vals = vals.into_iter().flatten();
        Ok(Some(Self {
            role_arn: vals.next().unwrap_or_default(),
            oidc_provider_arn: vals.next().unwrap_or_default(),
            token_file: PathBuf::from(vals.next().unwrap_or_default()),
            role_session_name: None,
        }))
    }
}

/// The query string and the form body of one `AssumeRoleWithOIDC` call.
pub fn request(
    params: &OidcParams,
    session_name: &str,
    token: &str,
    now: SystemTime,
) -> (String, String) {
    let encode = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| format!("{}={}", sign::percent_encode(k), sign::percent_encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    };
    let ts = sign::format_timestamp(now);
    let query = encode(&[
        ("Action", "AssumeRoleWithOIDC"),
        ("Format", "JSON"),
        ("Version", STS_API_VERSION),
        ("Timestamp", &ts),
    ]);
    let duration = DURATION_SECONDS.to_string();
    let form = encode(&[
        ("RoleArn", &params.role_arn),
        ("OIDCProviderArn", &params.oidc_provider_arn),
        ("OIDCToken", token),
        ("RoleSessionName", session_name),
        ("DurationSeconds", &duration),
    ]);
    (query, form)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsCredentials {
    access_key_id: String,
    access_key_secret: SecretString,
    security_token: SecretString,
    expiration: String,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsAnswer {
    credentials: Option<StsCredentials>,
}

/// Reads an STS answer. Error messages have `secrets` (raw and encoded) removed from them,
/// then are cut short ([`acs::scrub`]).
pub fn parse_answer(
    provider: &'static str,
    status: u16,
    body: &[u8],
    secrets: &[&str],
) -> Result<Credentials, CredentialError> {
    let clean = |s: &str| acs::scrub(s, secrets, acs::MESSAGE_CHARS);
    if (200..300).contains(&status) {
        if let Ok(StsAnswer {
            credentials: Some(c),
        }) = serde_json::from_slice(body)
        {
            let expiration = parse_expiration(&c.expiration).ok_or_else(|| {
                CredentialError::failed(
                    provider,
                    format!(
                        "STS answered an unreadable Expiration {:?}",
                        clean(&c.expiration)
                    ),
                )
            })?;
            return Ok(Credentials {
                access_key_id: c.access_key_id,
                access_key_secret: c.access_key_secret,
                security_token: Some(c.security_token),
                expiration: Some(expiration),
            });
        }
    }
    Err(CredentialError::failed(
        provider,
        match acs::error_code(body) {
            Some((code, message)) => format!(
                "STS refused AssumeRoleWithOIDC (HTTP {status}, {}): {}",
                clean(&code),
                clean(&message)
            ),
            None => format!("STS answered HTTP {status} without credentials"),
        },
    ))
}

/// `2024-01-01T00:00:00Z`, fractional seconds tolerated.
pub fn parse_expiration(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s.trim().trim_end_matches('Z'))
        .ok()
        .filter(|_| s.trim().ends_with('Z'))
}

/// Calls STS for the provider `name`.
#[derive(Debug)]
pub struct OidcFetcher {
    name: &'static str,
    acs: acs::Client,
    /// Without a trailing slash.
    endpoint: String,
    params: OidcParams,
    session_name: String,
}

impl OidcFetcher {
    /// Every request to STS is counted in `metrics`.
    pub fn new(
        name: &'static str,
        endpoint: &str,
        mut params: OidcParams,
        session_name: &str,
        metrics: ProcessMetrics,
    ) -> Result<Self, CredentialError> {
        let acs = acs::Client::new(TIMEOUT, MAX_ANSWER_BYTES, "the 64 KiB cap of an STS answer")
            .map_err(|e| CredentialError::failed(name, format!("HTTP client: {e}")))?
            .counting_into(metrics);
        let session_name = params
            .role_session_name
            .take()
            .unwrap_or_else(|| session_name.to_owned());
        crate::config::check_role_session_name(&session_name).map_err(|r| {
            CredentialError::not_configured(name, format!("role_session_name: {r}"))
        })?;
        Ok(Self {
            name,
            acs,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            params,
            session_name,
        })
    }
}

impl Fetch for OidcFetcher {
    fn name(&self) -> &'static str {
        self.name
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Credentials, CredentialError>> {
        Box::pin(async move {
            let path = &self.params.token_file;
            // Re-read every time: the kubelet rotates the token behind our back.
            let token = tokio::fs::read_to_string(path).await.map_err(|e| {
                CredentialError::failed(
                    self.name,
                    format!(
                        "the OIDC token file: {}",
                        crate::config::unreadable_file(&e)
                    ),
                )
            })?;
            let token = SecretString::from(token.trim().to_owned());
            if token.expose_secret().is_empty() {
                return Err(CredentialError::failed(
                    self.name,
                    "the OIDC token file is empty",
                ));
            }
            let (query, form) = request(
                &self.params,
                &self.session_name,
                token.expose_secret(),
                SystemTime::now(),
            );
            let reply = self
                .acs
                .call_anonymous(&self.endpoint, "AssumeRoleWithOIDC", &query, form)
                .await
                .map_err(|e| {
                    CredentialError::failed(self.name, format!("STS request failed: {e}"))
                })?;
            parse_answer(
                self.name,
                reply.status.as_u16(),
                &reply.body,
                &[token.expose_secret()],
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> OidcParams {
        OidcParams {
            role_arn: "acs:ram::123:role/r".into(),
            oidc_provider_arn: "acs:ram::123:oidc-provider/ack-rrsa-c1".into(),
            token_file: "/nonexistent".into(),
            role_session_name: None,
        }
    }

    /// An STS answer is read under 64 KiB: a well-formed answer of 100 KiB fails the fetch
    /// naming the cap, the same answer of a few KiB is read.
    #[tokio::test]
    async fn answers_over_64_kib_are_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "eyJ.a.b").unwrap();
        let answer = |padding: usize| {
            let body = format!(
                r#"{{"RequestId":"{}","Credentials":{{"AccessKeyId":"STS.a","AccessKeySecret":"s","SecurityToken":"t","Expiration":"2030-01-01T00:00:00Z"}}}}"#,
                "r".repeat(padding)
            );
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        for (padding, ok) in [(4 * 1024, true), (100 * 1024, false)] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let endpoint = format!("http://{}", listener.local_addr().unwrap());
            let response = answer(padding);
            tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 64 * 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(response.as_bytes()).await;
            });
            let p = OidcParams {
                token_file: token_file.clone(),
                ..params()
            };
            let f =
                OidcFetcher::new("oidc", &endpoint, p, "sess", ProcessMetrics::new("t")).unwrap();
            match f.fetch().await {
                Ok(c) => assert!(ok, "{padding} bytes read: {}", c.access_key_id),
                Err(e) => {
                    assert!(!ok, "{padding} bytes refused: {e}");
                    assert!(e.to_string().contains("64 KiB cap of an STS answer"), "{e}");
                }
            }
        }
    }

    #[test]
    fn request_shape() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200);
        let (q, f) = request(&params(), "sess", "eyJ.tok+en", t);
        assert_eq!(
            q,
            "Action=AssumeRoleWithOIDC&Format=JSON&Version=2015-04-01&Timestamp=2024-01-01T00%3A00%3A00Z"
        );
        assert!(f.contains("RoleArn=acs%3Aram%3A%3A123%3Arole%2Fr"), "{f}");
        assert!(f.contains("OIDCToken=eyJ.tok%2Ben"), "{f}");
        assert!(
            f.contains("RoleSessionName=sess&DurationSeconds=3600"),
            "{f}"
        );
        assert!(!q.contains("Signature") && !f.contains("AccessKeyId"));
    }

    #[test]
    fn env_needs_all_three() {
        let none = |_: &str| None;
        assert!(OidcParams::from_env(&none).unwrap().is_none());
        let some = |k: &str| (k == ENV_ROLE_ARN).then(|| "arn".to_owned());
        let e = OidcParams::from_env(&some).unwrap_err().to_string();
        assert!(
            e.contains(ENV_OIDC_TOKEN_FILE) && e.contains(ENV_OIDC_PROVIDER_ARN),
            "{e}"
        );
    }

    #[test]
    fn answers() {
        let ok = br#"{"RequestId":"x","Credentials":{"AccessKeyId":"STS.a","AccessKeySecret":"s","SecurityToken":"t","Expiration":"2030-01-01T00:00:00Z"}}"#;
        let c = parse_answer("oidc", 200, ok, &[]).unwrap();
        assert_eq!(c.access_key_id, "STS.a");
        assert_eq!(
            c.expiration,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000))
        );
        let err =
            br#"{"Code":"AuthenticationFail.OIDCToken.Invalid","Message":"bad token eyJsecret"}"#;
        let e = parse_answer("oidc", 400, err, &["eyJsecret"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("AuthenticationFail.OIDCToken.Invalid"), "{e}");
        assert!(!e.contains("eyJsecret"), "{e}");
        assert!(parse_answer("oidc", 502, b"<html>", &[]).is_err());

        // A JWT long enough that the 300-character cut falls inside it, echoed at character
        // 250, raw and form-encoded: no piece of it survives.
        let jwt = format!("eyJ{}.eyJ{}.sig", "a1b2".repeat(100), "c3+d/".repeat(60));
        let encoded = sign::percent_encode(&jwt);
        for echo in [&jwt, &encoded] {
            let body = format!(
                r#"{{"Code":"AuthenticationFail.OIDCToken.Invalid","Message":"{}: {echo}"}}"#,
                "y".repeat(248)
            );
            let e = parse_answer("oidc", 400, body.as_bytes(), &[&jwt])
                .unwrap_err()
                .to_string();
            for t in [&jwt, &encoded] {
                for i in 0..t.len() - 12 {
                    assert!(!e.contains(&t[i..i + 12]), "{} in {e}", &t[i..i + 12]);
                }
            }
            assert!(e.contains("[REDACTED]") || e.ends_with('…'), "{e}");
        }
        assert!(parse_expiration("2030-01-01T00:00:00.5Z").is_some());
        assert!(parse_expiration("tomorrow").is_none());
    }
}
