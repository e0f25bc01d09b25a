//! The HTTP side of the DAS source: one signed POST per attempt, the body read under a size cap,
//! and every outcome classified into a [`PollError`] the scheduler can label and count.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use reqwest::StatusCode;

use super::{sign, wire, ACTION, API_VERSION};
use crate::config::{DasConfig, InstanceConfig};
use crate::credentials::{BoxFuture, CredentialProvider, Credentials, ExposeSecret};
use crate::snapshot::{Limits, Snapshot};
use crate::source::{with_retries, PollContext, PollError, Source};

/// The DAS source.
#[derive(Debug)]
pub struct DasClient {
    http: reqwest::Client,
    /// Endpoint without a trailing slash.
    endpoint: String,
    max_body_bytes: u64,
    credentials: Arc<dyn CredentialProvider>,
}

impl DasClient {
    pub fn new(
        cfg: &DasConfig,
        credentials: Arc<dyn CredentialProvider>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!(
                "redis-session-exporter/",
                env!("CARGO_PKG_VERSION")
            ))
            .connect_timeout(cfg.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()?;
        Ok(Self {
            http,
            endpoint: cfg.endpoint.trim_end_matches('/').to_owned(),
            max_body_bytes: cfg.max_body_bytes,
            credentials,
        })
    }

    async fn attempt(&self, instance_id: &str, limits: &Limits) -> Result<Snapshot, PollError> {
        let now = SystemTime::now();
        let creds = usable_credentials(self.credentials.as_ref(), now).await?;
        let url = format!(
            "{}/?{}",
            self.endpoint,
            signed_query(&creds, instance_id, now, &uuid::Uuid::new_v4().to_string())
        );
        let resp = self
            .http
            .post(url)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let body = read_capped(resp, self.max_body_bytes).await?;
        classify(status, retry_after, &body, limits).map_err(|e| scrub(e, &creds))
    }
}

impl Source for DasClient {
    fn poll<'a>(
        &'a self,
        instance: &'a InstanceConfig,
        ctx: &'a PollContext,
    ) -> BoxFuture<'a, Result<Snapshot, PollError>> {
        Box::pin(with_retries(ctx, move |_| {
            self.attempt(&instance.id, &ctx.limits)
        }))
    }
}

/// The credentials to sign a request with at `now`, as a poll error when there are none: expired
/// credentials never sign anything (the request could only fail, noisily).
pub(crate) async fn usable_credentials(
    provider: &dyn CredentialProvider,
    now: SystemTime,
) -> Result<Arc<Credentials>, PollError> {
    let creds = provider
        .credentials()
        .await
        .map_err(|e| PollError::Credentials(e.to_string()))?;
    if creds.is_expired(now) {
        return Err(PollError::Credentials(format!(
            "{} credentials expired",
            provider.name()
        )));
    }
    Ok(creds)
}

/// The signed query string of one GetRedisAllSession call (POST, parameters in the query, as the
/// official SDKs send it).
pub fn signed_query(
    creds: &Credentials,
    instance_id: &str,
    now: SystemTime,
    nonce: &str,
) -> String {
    let timestamp = sign::format_timestamp(now);
    let mut params: Vec<(&str, &str)> = vec![
        ("AccessKeyId", &creds.access_key_id),
        ("Action", ACTION),
        ("Format", "JSON"),
        ("InstanceId", instance_id),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureNonce", nonce),
        ("SignatureVersion", "1.0"),
        ("Timestamp", &timestamp),
        ("Version", API_VERSION),
    ];
    if let Some(t) = &creds.security_token {
        params.push(("SecurityToken", t.expose_secret()));
    }
    sign::signed_query("POST", &params, creds.access_key_secret.expose_secret())
}

/// `x-acs-retry-after`, in milliseconds.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get("x-acs-retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_millis)
}

/// Reads the body chunk by chunk and stops as soon as it passes `max`, so one huge answer cannot
/// exhaust memory. A stalled body is caught by the attempt's timeout around this.
pub(crate) async fn read_capped(
    mut resp: reqwest::Response,
    max: u64,
) -> Result<Vec<u8>, PollError> {
    let hint = resp.content_length().unwrap_or(0);
    if hint > max {
        return Err(PollError::InvalidResponse(format!(
            "body of {hint} bytes exceeds das.max_body_bytes ({max})"
        )));
    }
    let mut body = Vec::with_capacity(hint as usize);
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(&e))? {
        if body.len() as u64 + chunk.len() as u64 > max {
            return Err(PollError::InvalidResponse(format!(
                "body exceeds das.max_body_bytes ({max})"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Turns a status and a body into a snapshot or a classified error. Pure, so it is unit-tested
/// with every shape of answer the simulator can produce.
pub fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    limits: &Limits,
) -> Result<Snapshot, PollError> {
    if status.is_success() {
        let snap = wire::decode(body, limits).map_err(|e| match e {
            wire::DecodeError::Api { code, message } => PollError::Api {
                code,
                message,
                retry_after,
            },
            wire::DecodeError::Invalid(m) => PollError::InvalidResponse(m),
        })?;
        return check_complete(snap);
    }
    // Error answers are classified by their `Code`, not by the status.
    if let Some((code, message)) = wire::error_code(body) {
        return Err(PollError::Api {
            code,
            message: wire::truncate(&message, 300),
            retry_after,
        });
    }
    let detail: String = String::from_utf8_lossy(&body[..body.len().min(200)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Err(PollError::Http {
        status: status.as_u16(),
        detail: wire::truncate(detail.trim(), 120),
    })
}

/// The `code` of an answer whose `Data.Total` promises more sessions than it lists.
pub const INCOMPLETE_RESPONSE: &str = "incomplete_response";

/// Refuses an answer that lists fewer sessions than its own `Data.Total`.
///
/// Every breakdown (by command, client, source, node) would silently undercount, and an
/// exporter that serves wrong figures as if they were right is worse than one that says it
/// cannot see: so the poll fails with its own code (not retried: the next round asks again),
/// and the instance shows `up 0` until a complete answer arrives. Fewer reported than listed
/// is harmless (the listed sessions are what is counted) and accepted.
fn check_complete(snap: Snapshot) -> Result<Snapshot, PollError> {
    if snap.reported_total > snap.sessions {
        return Err(PollError::Other {
            code: INCOMPLETE_RESPONSE,
            message: format!(
                "Data.Total is {} but only {} sessions were listed",
                snap.reported_total, snap.sessions
            ),
        });
    }
    Ok(snap)
}

/// A transport failure, described without the URL (whose query holds the signature and token).
pub(crate) fn transport_error(e: &reqwest::Error) -> PollError {
    let mut msg = String::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&s.to_string());
        src = s.source();
    }
    if msg.is_empty() {
        msg = "request failed".into();
    }
    if e.is_timeout() {
        PollError::Timeout(Duration::ZERO)
    } else {
        PollError::Connection(msg)
    }
}

/// Removes every secret (raw or percent-encoded) from an error's text: a gateway's
/// `SignatureDoesNotMatch` message echoes the whole string to sign, token included.
pub(crate) fn scrub(e: PollError, creds: &Credentials) -> PollError {
    let needles = creds.sensitive_strings();
    let clean = |s: String| {
        needles
            .iter()
            .filter(|n| !n.is_empty())
            .fold(s, |acc, n| acc.replace(n.as_str(), "[REDACTED]"))
    };
    match e {
        PollError::Api {
            code,
            message,
            retry_after,
        } => PollError::Api {
            code,
            message: clean(message),
            retry_after,
        },
        PollError::Http { status, detail } => PollError::Http {
            status,
            detail: clean(detail),
        },
        PollError::InvalidResponse(m) => PollError::InvalidResponse(clean(m)),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn classification() {
        let ok = br#"{"Code":200,"Success":true,"Data":{"Total":0,"Sessions":[]}}"#;
        assert!(classify(StatusCode::OK, None, ok, &limits()).is_ok());

        let throttled = br#"{"Code":"Throttling.User","Message":"flow control"}"#;
        let e = classify(
            StatusCode::BAD_REQUEST,
            Some(Duration::from_millis(1500)),
            throttled,
            &limits(),
        )
        .unwrap_err();
        assert_eq!(e.code(), "Throttling.User");
        assert!(e.is_transient());
        assert_eq!(e.retry_after(), Some(Duration::from_millis(1500)));

        let e = classify(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            b"<html>oops</html>",
            &limits(),
        )
        .unwrap_err();
        assert_eq!(e.code(), "http_503");
        assert!(e.is_transient());

        let e = classify(
            StatusCode::OK,
            None,
            br#"{"Success":false,"Code":200}"#,
            &limits(),
        )
        .unwrap_err();
        assert_eq!(e.code(), "invalid_response");
        let e = classify(
            StatusCode::OK,
            None,
            br#"{"Code":"InvalidParams","Success":false}"#,
            &limits(),
        )
        .unwrap_err();
        assert_eq!(e.code(), "InvalidParams");
        assert!(!e.is_transient());
        let e = classify(StatusCode::OK, None, b"{\"Data\":{\"Sess", &limits()).unwrap_err();
        assert_eq!(e.code(), "invalid_response");
    }

    #[test]
    fn incomplete_answers_are_refused_with_their_own_code() {
        let short = br#"{"Code":200,"Data":{"Total":3,"Sessions":[{"Cmd":"get"},{"Cmd":"get"}]}}"#;
        let e = classify(StatusCode::OK, None, short, &limits()).unwrap_err();
        assert_eq!(e.code(), INCOMPLETE_RESPONSE);
        assert!(!e.is_transient());
        assert!(e.to_string().contains("Total is 3 but only 2"), "{e}");
        // More listed than reported, or no Total at all: the listed sessions are the truth.
        for body in [
            &br#"{"Code":200,"Data":{"Total":1,"Sessions":[{"Cmd":"get"},{"Cmd":"get"}]}}"#[..],
            br#"{"Code":200,"Data":{"Sessions":[{"Cmd":"get"}]}}"#,
            br#"{"Code":200,"Data":{"Total":2,"Sessions":[{"Cmd":"get"},{"Cmd":"get"}]}}"#,
        ] {
            let s = classify(StatusCode::OK, None, body, &limits()).unwrap();
            assert!(s.sessions >= 1);
        }
    }

    #[test]
    fn signature_mismatch_message_is_scrubbed() {
        let creds = Credentials::new("LTAIfakeid", "fake-secret", Some("tok+en/=".into()));
        let body = br#"{"Code":"SignatureDoesNotMatch","Message":"Specified signature is not matched with our calculation. server string to sign is:POST&%2F&AccessKeyId%3DLTAIfakeid%26SecurityToken%3Dtok%252Ben%252F%253D"}"#;
        let e = scrub(
            classify(StatusCode::BAD_REQUEST, None, body, &limits()).unwrap_err(),
            &creds,
        );
        let text = format!("{e} {e:?}");
        assert!(!text.contains("LTAIfakeid"), "{text}");
        assert!(!text.contains("tok%252Ben"), "{text}");
        assert_eq!(e.code(), "SignatureDoesNotMatch");
    }

    #[test]
    fn query_is_signed_over_every_parameter() {
        let creds = Credentials::new("STS.testid", "testsecret", Some("test+token/=".into()));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200);
        let q = signed_query(
            &creds,
            "r-bp1abcdefg",
            t,
            "00000000-0000-0000-0000-000000000001",
        );
        // The DAS-shaped vendor vector, POST.
        assert!(
            q.ends_with("&Signature=XsoyX8LlsfPQnKyybAJ0CninYnk%3D"),
            "{q}"
        );
        assert!(q.contains("SecurityToken=test%2Btoken%2F%3D"));
    }
}
