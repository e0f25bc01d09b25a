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
pub use client::{read_capped, Client, Reply};
pub use error::{api_error, classify_failure, error_code, scrub, truncate, Error, MESSAGE_CHARS};

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

impl<'a> AccessKey<'a> {
    /// What an error message or a log line must not contain: the secret, the token and the
    /// AccessKey id ([`scrub`] adds their encodings).
    pub fn secrets(&self) -> Vec<&'a str> {
        [Some(self.secret), self.token, Some(self.id)]
            .into_iter()
            .flatten()
            .collect()
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
    fn secrets_are_the_key_id_secret_and_token() {
        let k = AccessKey {
            id: "STS.i/d",
            secret: "se/cr=t",
            token: Some("to+ken/="),
        };
        let mut s = k.secrets();
        s.sort_unstable();
        assert_eq!(s, ["STS.i/d", "se/cr=t", "to+ken/="]);
        assert!(!format!("{k:?}").contains("cr=t"));
    }

    /// A token long enough that a cut at 300 characters falls inside it, echoed twice: inside
    /// the gateway's string to sign (dropped) and in a message that echoes it plainly
    /// (replaced). No piece of it, raw or encoded, survives.
    #[test]
    fn errors_are_scrubbed_before_they_are_cut() {
        let token: String = (0..60).map(|i| format!("tok+en/{i:02}=")).collect();
        assert!(token.len() > 400);
        let k = AccessKey {
            id: "LTAIfakeid",
            secret: "fake-secret",
            token: Some(&token),
        };
        let twice = sign::percent_encode(&sign::percent_encode(&token));
        let pieces = |text: &str| -> Vec<String> {
            [token.as_str(), twice.as_str()]
                .iter()
                .flat_map(|t| (0..t.len() - 12).map(move |i| t[i..i + 12].to_owned()))
                .filter(|p| text.contains(p.as_str()))
                .collect()
        };
        let signature = format!(
            r#"{{"Code":"SignatureDoesNotMatch","Message":"Specified signature is not matched with our calculation. server string to sign is:POST&%2F&AccessKeyId%3DLTAIfakeid%26Action%3DGetRedisAllSession%26Format%3DJSON%26InstanceId%3Dr-bp1abcdefghijklmnop%26SecurityToken%3D{twice}%26SignatureMethod%3DHMAC-SHA1"}}"#
        );
        let e = classify_failure(reqwest::StatusCode::BAD_REQUEST, None, signature.as_bytes())
            .scrubbed(&k);
        let text = format!("{e} {e:?}");
        assert!(pieces(&text).is_empty(), "{:?} in {text}", pieces(&text));
        assert!(
            !text.contains("LTAIfakeid") && !text.contains("POST&"),
            "{text}"
        );
        assert!(text.contains("server string to sign […]"), "{text}");
        assert!(matches!(e, Error::Api { code, .. } if code == "SignatureDoesNotMatch"));

        // The token at character 250 of a message, so the 300-character cut falls inside it.
        let plain = format!("{}: {token} is not a valid token", "x".repeat(248));
        for body in [
            format!(r#"{{"Code":"InvalidSecurityToken.Malformed","Message":"{plain}"}}"#),
            format!("<html>{plain}</html>"),
        ] {
            let e = classify_failure(reqwest::StatusCode::FORBIDDEN, None, body.as_bytes())
                .scrubbed(&k);
            let text = format!("{e} {e:?}");
            assert!(pieces(&text).is_empty(), "{:?} in {text}", pieces(&text));
            assert!(
                text.contains("[REDACTED]") || text.contains('…'),
                "neither replaced nor cut: {text}"
            );
        }
    }
}
