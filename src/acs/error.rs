//! What a call that did not succeed is: the error body's `Code` (kept verbatim, bounded later by
//! whoever makes it a label), else the HTTP status; or the transport's failure.

use std::borrow::Cow;
use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;

use super::AccessKey;

/// Why a call failed, classified. The texts come from the answer or the transport, never from
/// the request (whose query holds the signature and the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The API answered with an error `Code`.
    #[error("API error {code}: {message}")]
    Api {
        code: String,
        message: String,
        /// From `x-acs-retry-after`, when the gateway sent one.
        retry_after: Option<Duration>,
    },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Connection(String),
    /// An error status without a readable `Code`.
    #[error("HTTP {status}: {detail}")]
    Http { status: u16, detail: String },
    #[error("invalid response: {0}")]
    InvalidResponse(String),
}

impl Error {
    /// The bounded `code` label of this failure: the API's code (sanitised), `http_<status>`,
    /// `timeout`, `connection` or `invalid_response`.
    pub fn code(&self) -> Cow<'_, str> {
        match self {
            Error::Api { code, .. } => Cow::Owned(sanitize_code(code)),
            Error::Timeout(_) => Cow::Borrowed("timeout"),
            Error::Connection(_) => Cow::Borrowed("connection"),
            Error::Http { status, .. } => Cow::Owned(format!("http_{status}")),
            Error::InvalidResponse(_) => Cow::Borrowed("invalid_response"),
        }
    }

    /// Worth another attempt: throttling, server trouble, network trouble.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Api { code, .. } => {
                code.starts_with("Throttling")
                    || code.starts_with("ServiceUnavailable")
                    || code == "InternalError"
                    || code == "InternalServerError"
            }
            Error::Timeout(_) | Error::Connection(_) => true,
            Error::Http { status, .. } => *status >= 500 || *status == 429,
            Error::InvalidResponse(_) => false,
        }
    }

    /// How long the server asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The same error made fit to show: its texts scrubbed of `key`'s secrets, then cut short
    /// ([`scrub`]). Every error built from an answer passes here before anyone sees it.
    pub fn scrubbed(self, key: &AccessKey<'_>) -> Self {
        let secrets = key.secrets();
        match self {
            Error::Api {
                code,
                message,
                retry_after,
            } => Error::Api {
                code,
                message: scrub(&message, &secrets, MESSAGE_CHARS),
                retry_after,
            },
            Error::Http { status, detail } => Error::Http {
                status,
                detail: scrub(&detail, &secrets, DETAIL_CHARS),
            },
            Error::InvalidResponse(m) => Error::InvalidResponse(scrub(&m, &secrets, MESSAGE_CHARS)),
            other => other,
        }
    }
}

/// The most characters of an API message shown in a log line or on the landing page.
pub const MESSAGE_CHARS: usize = 300;

/// The most characters of a non-API error body (an HTML error page) shown.
const DETAIL_CHARS: usize = 120;

/// Where a gateway's `SignatureDoesNotMatch` message starts echoing the signed request (key id,
/// `SecurityToken`, every parameter); everything after it is dropped.
const STRING_TO_SIGN: &str = "string to sign";

/// Makes a text from the cloud fit for a log line or a page, in this order: everything after
/// "string to sign" dropped; every secret in `secrets` replaced by `[REDACTED]`, raw and
/// percent-encoded once and twice (a gateway echoes the request encoded twice); then cut to
/// `max` characters. Scrubbing before cutting matters: a cut that falls inside a long secret
/// (an STS token is over a thousand characters) would leave a prefix no replacement matches.
pub fn scrub(text: &str, secrets: &[&str], max: usize) -> String {
    // ASCII lower-casing keeps byte offsets, so the index is valid in `text`.
    let mut out = match text.to_ascii_lowercase().find(STRING_TO_SIGN) {
        Some(i) => format!("{} […]", &text[..i + STRING_TO_SIGN.len()]),
        None => text.to_owned(),
    };
    // Shorter strings are not secrets worth the false positives (and an empty one matches all).
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        let once = super::sign::percent_encode(secret);
        let twice = super::sign::percent_encode(&once);
        for needle in [twice.as_str(), once.as_str(), secret] {
            out = out.replace(needle, "[REDACTED]");
        }
    }
    truncate(&out, max)
}

/// Keeps an API code usable as a label value of bounded size: at most 64 characters of
/// `[A-Za-z0-9._-]`. Real codes (`Throttling.User`, `InvalidTimeStamp.Expired`) pass unchanged.
pub fn sanitize_code(code: &str) -> String {
    let s: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect();
    if s.is_empty() {
        "invalid_response".to_owned()
    } else {
        s
    }
}

/// Classifies an answer whose status is not a success: by the body's `Code` when it has one
/// (error answers are classified by their code, not by the status), else by the status, with
/// the start of the body as the detail. Pure.
pub fn classify_failure(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> Error {
    if let Some(e) = api_error(body, retry_after) {
        return e;
    }
    // The whole body (the client's cap bounds it): cutting before [`Error::scrubbed`] could
    // cut inside a secret.
    let detail: String = String::from_utf8_lossy(body)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Error::Http {
        status: status.as_u16(),
        detail: detail.trim().to_owned(),
    }
}

/// The error an answer states in its body (`Code` and `Message`), if it states one; success
/// answers of some APIs carry them too. The message is whole: [`Error::scrubbed`] cuts it.
pub fn api_error(body: &[u8], retry_after: Option<Duration>) -> Option<Error> {
    let (code, message) = error_code(body)?;
    Some(Error::Api {
        code,
        message,
        retry_after,
    })
}

/// `Code` and `Message` of an error body, as the gateway sends them (`{RequestId, HostId, Code,
/// Message, Recommend}`); `None` when the body has no error code (or is not a JSON object).
/// Codes that mean success (`200`, `Success`, `OK`) are not errors.
pub fn error_code(body: &[u8]) -> Option<(String, String)> {
    #[derive(Deserialize)]
    struct ErrorBody {
        #[serde(rename = "Code", default)]
        code: Option<Scalar>,
        #[serde(rename = "Message", default)]
        message: Option<Scalar>,
    }
    // Only an object is an error body (serde would also read a struct from an array).
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let b: ErrorBody = serde_json::from_slice(body).ok()?;
    let code = b
        .code
        .and_then(Scalar::into_text)
        .filter(|c| !matches!(c.trim(), "200" | "Success" | "OK"))?;
    Some((
        code,
        b.message.and_then(Scalar::into_text).unwrap_or_default(),
    ))
}

/// A `Code` or `Message` value: services send codes as strings or numbers.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn into_text(self) -> Option<String> {
        Some(match self {
            Scalar::Text(s) => s,
            Scalar::Int(n) => n.to_string(),
            Scalar::Uint(n) => n.to_string(),
            Scalar::Float(n) => n.to_string(),
            Scalar::Bool(b) => b.to_string(),
        })
    }
}

/// Shortens a message for a log line or a page, on a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_classified_by_code_then_status() {
        let throttled = br#"{"Code":"Throttling.User","Message":"flow control"}"#;
        let e = classify_failure(
            StatusCode::BAD_REQUEST,
            Some(Duration::from_millis(1500)),
            throttled,
        );
        assert_eq!(
            e,
            Error::Api {
                code: "Throttling.User".into(),
                message: "flow control".into(),
                retry_after: Some(Duration::from_millis(1500)),
            }
        );
        let e = classify_failure(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            b"<html>oops\n</html>",
        );
        assert_eq!(
            e,
            Error::Http {
                status: 503,
                detail: "<html>oops </html>".into()
            }
        );
    }

    #[test]
    fn codes_are_read_leniently() {
        assert_eq!(
            error_code(br#"{"RequestId":"x","Code":"NoPermission","Message":"m"}"#),
            Some(("NoPermission".into(), "m".into()))
        );
        assert_eq!(
            error_code(br#"{"Code":403,"Message":null}"#),
            Some(("403".into(), String::new()))
        );
        assert_eq!(error_code(b"<html>bad gateway</html>"), None);
        assert_eq!(error_code(br#"{"Code":200}"#), None);
        assert_eq!(error_code(br#"{"Code":"Success"}"#), None);
        assert_eq!(error_code(br#"{"Message":"no code"}"#), None);
        assert_eq!(error_code(br#"[1]"#), None);
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("hi", 2), "hi");
    }
}
