//! ECS RAM role: credentials from the instance metadata service, IMDSv2 style.
//!
//! Each fetch takes a session token first (`PUT /latest/api/token`), then, unless the role is
//! named by `ALIBABA_CLOUD_ECS_METADATA` or the config, asks which role is attached, then reads
//! that role's STS credentials. The metadata service hands out credentials it rotates itself;
//! [`super::refresh`] asks again before they expire.

use std::time::Duration;

use reqwest::StatusCode;

use futures_util::future::BoxFuture;

use super::oidc::parse_expiration;
use super::refresh::Fetch;
use super::{CredentialError, Credentials, SecretString};
use crate::metrics::ProcessMetrics;

pub const ENV_ECS_METADATA: &str = "ALIBABA_CLOUD_ECS_METADATA";
pub const ENV_ECS_METADATA_DISABLED: &str = "ALIBABA_CLOUD_ECS_METADATA_DISABLED";
const TOKEN_PATH: &str = "/latest/api/token";
const ROLES_PATH: &str = "/latest/meta-data/ram/security-credentials/";
const TOKEN_HEADER: &str = "X-aliyun-ecs-metadata-token";
const TOKEN_TTL_HEADER: &str = "X-aliyun-ecs-metadata-token-ttl-seconds";
/// The `api` label of the metadata service's requests.
const API: &str = "metadata";
/// The SDKs' choice: the metadata service is link-local and answers fast or not at all.
const TIMEOUT: Duration = Duration::from_secs(1);
/// The largest answer read from the metadata service (a role name, a token, a credentials
/// document: all a few hundred bytes).
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

/// The role named in the environment, if any.
pub fn role_from_env(get: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    get(ENV_ECS_METADATA).filter(|r| !r.trim().is_empty())
}

/// True when `ALIBABA_CLOUD_ECS_METADATA_DISABLED=true` turns the metadata service off.
pub fn disabled(get: &dyn Fn(&str) -> Option<String>) -> bool {
    get(ENV_ECS_METADATA_DISABLED).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Refuses to build an ECS provider when the metadata service is disabled.
pub fn check_enabled(
    name: &'static str,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<(), CredentialError> {
    if disabled(get) {
        Err(CredentialError::not_configured(
            name,
            format!("the ECS metadata service is disabled by {ENV_ECS_METADATA_DISABLED}=true"),
        ))
    } else {
        Ok(())
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MetadataCredentials {
    code: Option<String>,
    access_key_id: Option<String>,
    access_key_secret: Option<SecretString>,
    security_token: Option<SecretString>,
    expiration: Option<String>,
}

/// Reads the credentials document of a role. Pure.
pub fn parse_credentials(
    provider: &'static str,
    body: &[u8],
) -> Result<Credentials, CredentialError> {
    let fail = |r: &str| CredentialError::failed(provider, format!("metadata service: {r}"));
    let doc: MetadataCredentials =
        serde_json::from_slice(body).map_err(|_| fail("the credentials document is not JSON"))?;
    if doc.code.as_deref() != Some("Success") {
        let code: String = doc
            .code
            .as_deref()
            .unwrap_or("none")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            .take(64)
            .collect();
        return Err(fail(&format!("Code is {code:?}, not \"Success\"")));
    }
    match doc {
        MetadataCredentials {
            access_key_id: Some(id),
            access_key_secret: Some(secret),
            security_token: Some(token),
            expiration: Some(exp),
            ..
        } => Ok(Credentials {
            access_key_id: id,
            access_key_secret: secret,
            security_token: Some(token),
            expiration: Some(parse_expiration(&exp).ok_or_else(|| fail("unreadable Expiration"))?),
        }),
        _ => Err(fail(
            "AccessKeyId, AccessKeySecret, SecurityToken or Expiration missing",
        )),
    }
}

/// `role` as one path segment: everything but RFC 3986's unreserved characters (letters, digits,
/// `-._~`) is escaped — the set the request signer already encodes with — and those stay as
/// written: the metadata service matches the path literally, so `redis-session-exporter`
/// requested as `redis%2Dsession%2Dexporter` would be an unknown role. A name of dots only (`.`,
/// `..`) would be read as a dot segment and climb out of the credentials directory, so its dots
/// are escaped.
fn path_segment(role: &str) -> String {
    if role.bytes().all(|b| b == b'.') {
        return role.replace('.', "%2E");
    }
    crate::acs::sign::percent_encode(role)
}

/// Talks to the metadata service for the provider `name`.
#[derive(Debug)]
pub struct EcsFetcher {
    name: &'static str,
    http: reqwest::Client,
    endpoint: String,
    role: Option<String>,
    /// Every request is counted here (`api="metadata"`).
    metrics: ProcessMetrics,
}

impl EcsFetcher {
    pub fn new(
        name: &'static str,
        endpoint: &str,
        role: Option<String>,
        metrics: ProcessMetrics,
    ) -> Result<Self, CredentialError> {
        let http = reqwest::Client::builder()
            .user_agent(crate::acs::USER_AGENT)
            // Never through a proxy: the service is link-local to this VM.
            .no_proxy()
            .connect_timeout(TIMEOUT)
            .timeout(TIMEOUT)
            // The credentials never go anywhere but the link-local service: a 3xx is a failure.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| CredentialError::failed(name, format!("HTTP client: {e}")))?;
        Ok(Self {
            name,
            http,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            role,
            metrics,
        })
    }

    async fn call(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<Vec<u8>, CredentialError> {
        let fail = |r: String| {
            CredentialError::failed(self.name, format!("metadata service, {what}: {r}"))
        };
        let exchange = async {
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    let code = if e.is_timeout() {
                        "timeout"
                    } else {
                        "connection"
                    };
                    return Err((code.into(), e.without_url().to_string()));
                }
            };
            let status = resp.status();
            // Read under a cap: a credentials document is a few hundred bytes.
            let body = crate::acs::read_capped(
                resp,
                MAX_ANSWER_BYTES,
                "the 64 KiB cap of a metadata answer",
            )
            .await
            .map_err(|e| (e.code().into_owned(), e.to_string()))?;
            Ok::<_, (String, String)>((status, body))
        };
        let (status, body) = match exchange.await {
            Ok(r) => r,
            Err((code, message)) => {
                self.metrics.api_request(API, &code);
                return Err(fail(message));
            }
        };
        if status.is_success() {
            self.metrics.api_request(API, "ok");
        } else {
            self.metrics
                .api_request(API, &format!("http_{}", status.as_u16()));
        }
        match status {
            s if s.is_success() => Ok(body),
            StatusCode::NOT_FOUND => Err(fail(
                "HTTP 404 (no RAM role attached to this instance, or the role name is wrong)"
                    .into(),
            )),
            s => Err(fail(format!("HTTP {}", s.as_u16()))),
        }
    }
}

impl Fetch for EcsFetcher {
    fn name(&self) -> &'static str {
        self.name
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Credentials, CredentialError>> {
        Box::pin(async move {
            let token = self
                .call(
                    self.http
                        .put(format!("{}{TOKEN_PATH}", self.endpoint))
                        .header(TOKEN_TTL_HEADER, "21600"),
                    "token",
                )
                .await?;
            let token = String::from_utf8_lossy(&token).trim().to_owned();
            let role = match &self.role {
                Some(r) => r.clone(),
                None => {
                    let body = self
                        .call(
                            self.http
                                .get(format!("{}{ROLES_PATH}", self.endpoint))
                                .header(TOKEN_HEADER, &token),
                            "role name",
                        )
                        .await?;
                    String::from_utf8_lossy(&body)
                        .lines()
                        .map(str::trim)
                        .find(|l| !l.is_empty())
                        .map(str::to_owned)
                        .ok_or_else(|| {
                            CredentialError::failed(
                                self.name,
                                "no RAM role is attached to this instance",
                            )
                        })?
                }
            };
            let role_path = path_segment(&role);
            let body = self
                .call(
                    self.http
                        .get(format!("{}{ROLES_PATH}{role_path}", self.endpoint))
                        .header(TOKEN_HEADER, &token),
                    "credentials",
                )
                .await?;
            parse_credentials(self.name, &body)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents() {
        let ok = br#"{"Code":"Success","AccessKeyId":"STS.x","AccessKeySecret":"s","SecurityToken":"t","Expiration":"2030-01-01T00:00:00Z","LastUpdated":"2029-12-31T18:00:00Z"}"#;
        assert_eq!(
            parse_credentials("ecs_ram_role", ok).unwrap().access_key_id,
            "STS.x"
        );
        let e = parse_credentials("ecs_ram_role", br#"{"Code":"Failed"}"#).unwrap_err();
        assert!(e.to_string().contains("Failed"), "{e}");
        let e = parse_credentials("ecs_ram_role", br#"{"Code":"Success","AccessKeyId":"a"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        assert!(parse_credentials("ecs_ram_role", b"<html>").is_err());
    }

    #[test]
    fn role_names_keep_their_unreserved_characters() {
        for (role, path) in [
            ("redis-session-exporter", "redis-session-exporter"),
            ("ops.redis_exporter~2", "ops.redis_exporter~2"),
            ("EcsRole01", "EcsRole01"),
            // What a segment cannot hold is escaped.
            ("a/b c", "a%2Fb%20c"),
            ("a%2D", "a%252D"),
            ("r\u{e9}le", "r%C3%A9le"),
            ("..", "%2E%2E"),
            (".", "%2E"),
            ("..a", "..a"),
        ] {
            assert_eq!(path_segment(role), path, "{role}");
        }
    }

    /// A listener on a loopback port answering `response` to every request; counts requests.
    async fn serve(response: String) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(response.as_bytes()).await;
            }
        });
        (format!("http://{addr}"), seen)
    }

    /// Every answer of the metadata service is read under 64 KiB: a token of 100 KiB (with
    /// or without a `Content-Length`) fails the fetch, counted as `invalid_response`.
    #[tokio::test]
    async fn answers_over_64_kib_are_refused() {
        let huge = "t".repeat(100 * 1024);
        for answer in [
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{huge}",
                huge.len()
            ),
            format!("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{huge}"),
        ] {
            let (endpoint, _) = serve(answer).await;
            let metrics = ProcessMetrics::new("t");
            let f = EcsFetcher::new("ecs_ram_role", &endpoint, Some("r".into()), metrics.clone())
                .unwrap();
            let e = f.fetch().await.unwrap_err().to_string();
            assert!(e.contains("64 KiB cap of a metadata answer"), "{e}");
            let mut registry = prometheus_client::registry::Registry::default();
            metrics.register(&mut registry);
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            assert!(
                text.contains("{api=\"metadata\",code=\"invalid_response\"} 1\n"),
                "{text}"
            );
        }
        // Under the cap, the same path reads the token (and fails later, on the role).
        let (endpoint, asked) =
            serve("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\ntoken".to_owned()).await;
        let f = EcsFetcher::new(
            "ecs_ram_role",
            &endpoint,
            Some("r".into()),
            ProcessMetrics::new("t"),
        )
        .unwrap();
        let e = f.fetch().await.unwrap_err().to_string();
        assert!(!e.contains("cap"), "{e}");
        assert!(
            asked.load(std::sync::atomic::Ordering::SeqCst) >= 2,
            "the token was read"
        );
    }

    #[tokio::test]
    async fn redirects_are_refused_and_never_followed() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\ntoken".to_owned();
        let (elsewhere, followed) = serve(ok).await;
        let (endpoint, asked) = serve(format!(
            "HTTP/1.1 302 Found\r\nlocation: {elsewhere}/latest/api/token\r\ncontent-length: 0\r\n\r\n"
        ))
        .await;
        let metrics = ProcessMetrics::new("t");
        let f =
            EcsFetcher::new("ecs_ram_role", &endpoint, Some("r".into()), metrics.clone()).unwrap();
        let e = f.fetch().await.unwrap_err();
        assert!(e.to_string().contains("HTTP 302"), "{e}");
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "redis_session_exporter_api_requests_total{api=\"metadata\",code=\"http_302\"} 1\n"
            ),
            "{text}"
        );
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(
            followed.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "redirect followed"
        );
    }

    #[test]
    fn disabled_flag() {
        assert!(disabled(
            &|k: &str| (k == ENV_ECS_METADATA_DISABLED).then(|| "TRUE".into())
        ));
        assert!(!disabled(
            &|k: &str| (k == ENV_ECS_METADATA_DISABLED).then(|| "false".into())
        ));
        assert!(!disabled(&|_: &str| None));
    }
}
