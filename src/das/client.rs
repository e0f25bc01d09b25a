//! The DAS source: one signed `GetRedisAllSession` call per attempt through [`crate::acs`], the
//! answer decoded, and every outcome classified into a [`PollError`] the scheduler can label and
//! count.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use reqwest::StatusCode;

use super::{wire, ACTION, API_VERSION};
use crate::acs;
use crate::config::InstanceConfig;
use crate::credentials::{self, CredentialProvider};
use crate::snapshot::{Limits, Snapshot};
use crate::source::{with_retries, PollContext, PollError, Source};

/// The DAS source.
#[derive(Debug)]
pub struct DasClient {
    acs: acs::Client,
    /// Endpoint without a trailing slash.
    endpoint: String,
    credentials: Arc<dyn CredentialProvider>,
}

impl DasClient {
    /// Calls `endpoint` (`[das] endpoint`) through `acs`, signing with `credentials`.
    pub fn new(acs: acs::Client, endpoint: &str, credentials: Arc<dyn CredentialProvider>) -> Self {
        Self {
            acs,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            credentials,
        }
    }

    async fn attempt(&self, instance_id: &str, limits: &Limits) -> Result<Snapshot, PollError> {
        let creds = credentials::for_signing(self.credentials.as_ref(), SystemTime::now())
            .await
            .map_err(PollError::Credentials)?;
        let snap = self
            .acs
            .call(
                &self.endpoint,
                &params(instance_id),
                &creds.access_key(),
                |r| decode(&r.body, r.retry_after, limits),
            )
            .await?;
        Ok(snap)
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

/// The action's own parameters of one call (the signature's are added by [`acs::Client`]).
pub fn params(instance_id: &str) -> [(&str, &str); 4] {
    [
        ("Action", ACTION),
        ("Format", "JSON"),
        ("InstanceId", instance_id),
        ("Version", API_VERSION),
    ]
}

/// Turns a status and a body into a snapshot or a classified error. Pure, so it is unit-tested
/// with every shape of answer the simulator can produce.
pub fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    limits: &Limits,
) -> Result<Snapshot, PollError> {
    if !status.is_success() {
        return Err(acs::classify_failure(status, retry_after, body).into());
    }
    Ok(decode(body, retry_after, limits)?)
}

/// Decodes a successful answer; an error `Code` inside it is classified like an error answer's.
fn decode(
    body: &[u8],
    retry_after: Option<Duration>,
    limits: &Limits,
) -> Result<Snapshot, acs::Error> {
    wire::decode(body, limits).map_err(|e| match e {
        wire::DecodeError::Api { code, message } => acs::Error::Api {
            code,
            message,
            retry_after,
        },
        wire::DecodeError::Invalid(m) => acs::Error::InvalidResponse(m),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Credentials;

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
    fn a_short_listing_is_data_with_the_reported_total_kept() {
        // Sessions come and go between the count and the listing: fewer listed than
        // `Data.Total` is still a successful poll, counting what was listed.
        let short = br#"{"Code":200,"Data":{"Total":3,"Sessions":[{"Cmd":"get"},{"Cmd":"get"}]}}"#;
        let s = classify(StatusCode::OK, None, short, &limits()).unwrap();
        assert_eq!((s.sessions, s.reported_total), (2, 3));
        // More listed than reported, or no Total at all: the listed sessions are the truth.
        for (body, reported) in [
            (
                &br#"{"Code":200,"Data":{"Total":1,"Sessions":[{"Cmd":"get"},{"Cmd":"get"}]}}"#[..],
                1,
            ),
            (br#"{"Code":200,"Data":{"Sessions":[{"Cmd":"get"}]}}"#, 1),
        ] {
            let s = classify(StatusCode::OK, None, body, &limits()).unwrap();
            assert_eq!(s.reported_total, reported);
        }
    }

    #[test]
    fn query_is_signed_over_every_parameter() {
        let creds = Credentials::new("STS.testid", "testsecret", Some("test+token/=".into()));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200);
        let q = acs::signed_query(
            &creds.access_key(),
            &params("r-bp1abcdefg"),
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
