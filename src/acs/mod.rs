//! Alibaba Cloud RPC: the v1 signer, one client for every call to the cloud's APIs, and the
//! classification of what comes back.
//!
//! DAS (`GetRedisAllSession`), discovery (`DescribeInstances`) and the OIDC credentials
//! (`AssumeRoleWithOIDC`) all go through [`Client`]: one HTTP client with a timeout, a body cap,
//! no redirects and the exporter's user agent. An answer that is not a success is classified in
//! one place ([`classify_failure`]): the error body's `Code`, kept verbatim, or else the HTTP
//! status. The signer ([`sign`]) is pure, with the clock and the nonce passed in.

mod client;
mod error;
pub mod sign;

use std::fmt;
use std::time::SystemTime;

pub(crate) use client::USER_AGENT;
pub use client::{Client, Reply};
pub use error::{api_error, classify_failure, error_code, truncate, Error};

/// What a request is signed with, borrowed from the credentials of the moment.
#[derive(Clone, Copy)]
pub struct AccessKey<'a> {
    pub id: &'a str,
    pub secret: &'a str,
    /// The STS token, signed like any other parameter.
    pub token: Option<&'a str>,
}

impl fmt::Debug for AccessKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessKey").finish_non_exhaustive()
    }
}

impl AccessKey<'_> {
    /// Every string an error message or a log line must not contain: the secret, the token and
    /// the AccessKey id, raw and percent-encoded once and twice (a gateway's
    /// `SignatureDoesNotMatch` message echoes the whole string to sign).
    pub fn sensitive_strings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in [Some(self.secret), self.token, Some(self.id)]
            .into_iter()
            .flatten()
        {
            if s.len() >= 4 {
                let once = sign::percent_encode(s);
                let twice = sign::percent_encode(&once);
                out.extend([s.to_owned(), once, twice]);
            }
        }
        out
    }

    /// `text` with every sensitive string replaced by `[REDACTED]`.
    pub fn redact(&self, text: String) -> String {
        self.sensitive_strings()
            .iter()
            .fold(text, |acc, n| acc.replace(n.as_str(), "[REDACTED]"))
    }
}

/// The query string of one signed call: the action's own `params`, the v1 signature's common
/// parameters, and the signature, for a POST (parameters in the query, as the official SDKs send
/// them). Pure: the clock and the nonce are parameters.
pub fn signed_query<K: AsRef<str>, V: AsRef<str>>(
    key: &AccessKey<'_>,
    params: &[(K, V)],
    now: SystemTime,
    nonce: &str,
) -> String {
    let timestamp = sign::format_timestamp(now);
    let mut all: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .collect();
    all.extend([
        ("AccessKeyId", key.id),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureNonce", nonce),
        ("SignatureVersion", "1.0"),
        ("Timestamp", timestamp.as_str()),
    ]);
    if let Some(t) = key.token {
        all.push(("SecurityToken", t));
    }
    sign::signed_query("POST", &all, key.secret)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key() -> AccessKey<'static> {
        AccessKey {
            id: "STS.testid",
            secret: "testsecret",
            token: Some("test+token/="),
        }
    }

    #[test]
    fn query_is_signed_over_every_parameter() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200);
        let q = signed_query(
            &key(),
            &[
                ("Action", "GetRedisAllSession"),
                ("Format", "JSON"),
                ("InstanceId", "r-bp1abcdefg"),
                ("Version", "2020-01-16"),
            ],
            t,
            "00000000-0000-0000-0000-000000000001",
        );
        // The DAS-shaped vendor vector, POST.
        assert!(
            q.ends_with("&Signature=XsoyX8LlsfPQnKyybAJ0CninYnk%3D"),
            "{q}"
        );
        assert!(q.contains("SecurityToken=test%2Btoken%2F%3D"));
        assert!(q.contains("Timestamp=2024-01-01T00%3A00%3A00Z"));
    }

    #[test]
    fn sensitive_strings_cover_encodings() {
        let k = AccessKey {
            id: "STS.i/d",
            secret: "se/cr=t",
            token: Some("to+ken/="),
        };
        let s = k.sensitive_strings();
        assert!(s.contains(&"to%2Bken%2F%3D".to_owned()));
        assert!(s.contains(&"to%252Bken%252F%253D".to_owned()));
        assert!(
            s.contains(&"STS.i%252Fd".to_owned()),
            "the key id too: {s:?}"
        );
        assert!(s.contains(&"se/cr=t".to_owned()));
        assert!(!format!("{k:?}").contains("cr=t"));
    }

    #[test]
    fn signature_mismatch_message_is_redacted() {
        let k = AccessKey {
            id: "LTAIfakeid",
            secret: "fake-secret",
            token: Some("tok+en/="),
        };
        let body = br#"{"Code":"SignatureDoesNotMatch","Message":"Specified signature is not matched with our calculation. server string to sign is:POST&%2F&AccessKeyId%3DLTAIfakeid%26SecurityToken%3Dtok%252Ben%252F%253D"}"#;
        let e = classify_failure(reqwest::StatusCode::BAD_REQUEST, None, body).redact(&k);
        let text = format!("{e} {e:?}");
        assert!(!text.contains("LTAIfakeid"), "{text}");
        assert!(!text.contains("tok%252Ben"), "{text}");
        assert!(matches!(e, Error::Api { code, .. } if code == "SignatureDoesNotMatch"));
    }
}
