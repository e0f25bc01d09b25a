//! Alibaba Cloud RPC signature version 1.0 (HMAC-SHA1), as pure functions.
//!
//! The clock and the nonce are parameters, never read here, so the vendor's published vectors are
//! plain unit tests and the simulator can verify a request with the very same canonicalisation.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use sha1::Sha1;

/// Everything but `A-Z a-z 0-9 - _ . ~` is escaped, upper-case hex (RFC 3986 unreserved set).
const RFC3986: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one name or value the way the gateway does (space is `%20`, `*` is `%2A`).
pub fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, RFC3986).to_string()
}

/// Sorts the parameters by name (byte order) and joins them as `k=v&k=v`, both sides encoded.
/// `Signature` itself must not be among them.
pub fn canonical_query<K: AsRef<str>, V: AsRef<str>>(params: &[(K, V)]) -> String {
    let mut sorted: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .collect();
    sorted.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = String::with_capacity(sorted.len() * 32);
    for (i, (k, v)) in sorted.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(&percent_encode(k));
        out.push('=');
        out.push_str(&percent_encode(v));
    }
    out
}

/// `METHOD&%2F&percentEncode(canonicalQuery)`.
pub fn string_to_sign(method: &str, canonical_query: &str) -> String {
    format!("{method}&%2F&{}", percent_encode(canonical_query))
}

/// `base64(HMAC-SHA1(secret + "&", string_to_sign))`.
pub fn signature(access_key_secret: &str, string_to_sign: &str) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = Hmac::<Sha1>::new_from_slice(format!("{access_key_secret}&").as_bytes())
        .expect("HMAC takes a key of any size");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Signs `params` and returns the full query string to send, `Signature` appended last.
pub fn signed_query<K: AsRef<str>, V: AsRef<str>>(
    method: &str,
    params: &[(K, V)],
    access_key_secret: &str,
) -> String {
    let canonical = canonical_query(params);
    let sig = signature(access_key_secret, &string_to_sign(method, &canonical));
    format!("{canonical}&Signature={}", percent_encode(&sig))
}

/// The `Timestamp` parameter: UTC, `yyyy-MM-ddTHH:mm:ssZ`.
pub fn format_timestamp(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Parses a `Timestamp` parameter back (the simulator checks the 15-minute window with it).
pub fn parse_timestamp(s: &str) -> Option<std::time::SystemTime> {
    // humantime accepts fractional seconds too; the gateway format has none, so insist on the length.
    (s.len() == 20 && s.ends_with('Z'))
        .then(|| humantime::parse_rfc3339(s).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    //! Every vector from `shared/reference/alibaba-cloud.md`.
    use super::*;

    fn vendor_params() -> Vec<(&'static str, &'static str)> {
        vec![
            ("AccessKeyId", "testid"),
            ("Action", "DescribeRegions"),
            ("Format", "XML"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2016-02-23T12:46:24Z"),
            ("Version", "2014-05-26"),
        ]
    }

    fn sign_with(method: &str, params: &[(&str, &str)]) -> String {
        signature(
            "testsecret",
            &string_to_sign(method, &canonical_query(params)),
        )
    }

    #[test]
    fn vendor_string_to_sign() {
        assert_eq!(
            string_to_sign("GET", &canonical_query(&vendor_params())),
            "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26"
        );
    }

    #[test]
    fn vendor_get_and_post() {
        assert_eq!(
            sign_with("GET", &vendor_params()),
            "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
        );
        assert_eq!(
            sign_with("POST", &vendor_params()),
            "MxbnVAM4w6sft9xjVpe/GCKueuk="
        );
    }

    #[test]
    fn vendor_with_reserved_characters() {
        let mut p = vendor_params();
        p.push(("InstanceId", "r-abc def*~/:"));
        assert_eq!(sign_with("GET", &p), "1ey/Q3r7xG3DzdVoB6mLFqXbzyk=");
    }

    #[test]
    fn das_shaped_sts_vector() {
        // Deliberately unsorted: the canonical order must not depend on the caller's order.
        let p = [
            ("Version", "2020-01-16"),
            ("AccessKeyId", "STS.testid"),
            ("Action", "GetRedisAllSession"),
            ("Format", "JSON"),
            ("InstanceId", "r-bp1abcdefg"),
            ("SecurityToken", "test+token/="),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "00000000-0000-0000-0000-000000000001"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2024-01-01T00:00:00Z"),
        ];
        assert_eq!(sign_with("GET", &p), "ShvzkmuwOHYNBZeuvM8degltlJ4=");
        assert_eq!(sign_with("POST", &p), "XsoyX8LlsfPQnKyybAJ0CninYnk=");
    }

    #[test]
    fn encoding_rules() {
        assert_eq!(percent_encode("a b*~c+/=:"), "a%20b%2A~c%2B%2F%3D%3A");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }

    #[test]
    fn signed_query_ends_with_encoded_signature() {
        let q = signed_query("GET", &vendor_params(), "testsecret");
        assert!(
            q.ends_with("&Signature=OLeaidS1JvxuMvnyHOwuJ%2BuX5qY%3D"),
            "{q}"
        );
    }

    #[test]
    fn timestamp_round_trip() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_704_067_200);
        assert_eq!(format_timestamp(t), "2024-01-01T00:00:00Z");
        assert_eq!(parse_timestamp("2024-01-01T00:00:00Z"), Some(t));
        assert_eq!(parse_timestamp("2024-01-01T00:00:00.5Z"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
    }
}
