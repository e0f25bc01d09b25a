//! The one HTTP client for the cloud's APIs: a signed (or, for STS, anonymous) POST per call, a
//! timeout around the whole exchange, the body read under a size cap, no redirects.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use reqwest::StatusCode;

use super::{signed_query, AccessKey, Error};
use crate::metrics::ProcessMetrics;

/// Every request says who sends it.
pub(crate) const USER_AGENT: &str = concat!("redis-session-exporter/", env!("CARGO_PKG_VERSION"));

/// A client for one kind of call (its timeout and body cap); cheap to clone, and clones share
/// their connections.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    timeout: Duration,
    max_body_bytes: u64,
    /// What the cap is called when an answer exceeds it (a config key where there is one).
    cap_name: &'static str,
    /// Where every request is counted, when set.
    metrics: Option<ProcessMetrics>,
}

/// An HTTP answer, whatever its status.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    /// From `x-acs-retry-after`, when the gateway sent one.
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl Client {
    /// `timeout` covers connecting, sending and reading the whole body; bodies larger than
    /// `max_body_bytes` (`cap_name` says which limit in the error: a config key where there is one) are cut off while reading.
    pub fn new(
        timeout: Duration,
        max_body_bytes: u64,
        cap_name: &'static str,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            // An API endpoint that redirects is misconfigured; following it would resend the
            // signed query to wherever the redirect points.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            timeout,
            max_body_bytes,
            cap_name,
            metrics: None,
        })
    }

    /// Counts every request in `redis_session_exporter_api_requests_total` from now on.
    pub fn counting_into(mut self, metrics: ProcessMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// One signed call of an action to `endpoint` (without a trailing slash): `params` are the
    /// action's own (`Action`, `Version`, …); the signature's are added here. A successful answer
    /// goes to `decode`; any other is classified ([`super::classify_failure`]). Every error that
    /// comes back, `decode`'s included, is scrubbed of the key's secrets and cut short.
    pub async fn call<K: AsRef<str>, V: AsRef<str>, T>(
        &self,
        endpoint: &str,
        params: &[(K, V)],
        key: &AccessKey<'_>,
        decode: impl FnOnce(Reply) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let nonce = uuid::Uuid::new_v4().to_string();
        let query = signed_query(key, params, SystemTime::now(), &nonce);
        let request = self.http.post(format!("{endpoint}/?{query}"));
        let action = params
            .iter()
            .find(|(k, _)| k.as_ref() == "Action")
            .map_or("", |(_, v)| v.as_ref());
        let tally = Tally::new(self.metrics.as_ref(), action);
        let outcome = match self.send(request).await {
            Ok(r) if r.status.is_success() => decode(r),
            Ok(r) => Err(super::classify_failure(r.status, r.retry_after, &r.body)),
            Err(e) => Err(e),
        };
        // Counted with the code the poll would get: an error `Code` inside a 200 is that code.
        tally.finish(&outcome);
        outcome.map_err(|e| e.scrubbed(key))
    }

    /// One unsigned call (STS `AssumeRoleWithOIDC`, where the token in `form` is the proof):
    /// `query` is sent as is, `form` as an `application/x-www-form-urlencoded` body.
    /// `api` names the call in the request counter; an answer is counted `ok` when its status
    /// is a success, else by [`super::classify_failure`]'s code.
    pub async fn call_anonymous(
        &self,
        endpoint: &str,
        api: &str,
        query: &str,
        form: String,
    ) -> Result<Reply, Error> {
        let request = self
            .http
            .post(format!("{endpoint}/?{query}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(form);
        let tally = Tally::new(self.metrics.as_ref(), api);
        let reply = self.send(request).await;
        match &reply {
            Ok(r) if !r.status.is_success() => {
                tally.finish::<()>(&Err(super::classify_failure(
                    r.status,
                    r.retry_after,
                    &r.body,
                )));
            }
            Ok(_) => tally.finish(&Ok(())),
            Err(e) => tally.finish::<()>(&Err(e.clone())),
        }
        reply
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Reply, Error> {
        let exchange = async {
            let resp = request.send().await.map_err(|e| transport_error(&e))?;
            let status = resp.status();
            let retry_after = retry_after(resp.headers());
            let body = self.read_capped(resp).await?;
            Ok(Reply {
                status,
                retry_after,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(self.timeout)),
        }
    }

    async fn read_capped(&self, resp: reqwest::Response) -> Result<Vec<u8>, Error> {
        read_capped(resp, self.max_body_bytes, self.cap_name).await
    }

    /// The same client (same connections, timeout and counting) with another body cap: each
    /// API's answers have their own bound (a DescribeInstances page is not a session list).
    pub fn with_body_cap(&self, max_body_bytes: u64, cap_name: &'static str) -> Self {
        Self {
            max_body_bytes,
            cap_name,
            ..self.clone()
        }
    }
}

/// Reads a body chunk by chunk and stops as soon as it passes `max` (`cap_name` names the
/// limit in the error), so one huge answer cannot exhaust memory. Shared by every HTTP call to
/// the cloud, the metadata service's included.
pub async fn read_capped(
    mut resp: reqwest::Response,
    max: u64,
    cap_name: &'static str,
) -> Result<Vec<u8>, Error> {
    let mut body = CappedBody::new(resp.content_length(), max, cap_name)?;
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(&e))? {
        body.push(&chunk)?;
    }
    Ok(body.bytes)
}

/// How much a body's buffer reserves before the first byte arrives, whatever `Content-Length`
/// claims: a header costs nothing to send, memory does.
const FIRST_RESERVE: usize = 64 * 1024;

/// A body being read under a cap. Pure, so the cap and the reservation are unit-tested.
#[derive(Debug)]
struct CappedBody {
    bytes: Vec<u8>,
    max: u64,
    cap_name: &'static str,
}

impl CappedBody {
    /// Refuses at once a body announced larger than the cap; otherwise reserves at most
    /// [`FIRST_RESERVE`], and grows only with bytes actually received.
    fn new(content_length: Option<u64>, max: u64, cap_name: &'static str) -> Result<Self, Error> {
        let hint = content_length.unwrap_or(0);
        if hint > max {
            return Err(Error::InvalidResponse(format!(
                "body of {hint} bytes exceeds {cap_name} ({max})"
            )));
        }
        Ok(Self {
            bytes: Vec::with_capacity((hint as usize).min(FIRST_RESERVE)),
            max,
            cap_name,
        })
    }

    fn push(&mut self, chunk: &[u8]) -> Result<(), Error> {
        if self.bytes.len() as u64 + chunk.len() as u64 > self.max {
            return Err(Error::InvalidResponse(format!(
                "body exceeds {} ({})",
                self.cap_name, self.max
            )));
        }
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }
}

/// Counts one request exactly once: with its outcome, or as `timeout` when the caller stops
/// waiting for it (a poll whose budget runs out drops the attempt mid-flight; the request was
/// sent and counts against the quota all the same).
struct Tally<'a> {
    metrics: Option<&'a ProcessMetrics>,
    api: &'a str,
}

impl<'a> Tally<'a> {
    fn new(metrics: Option<&'a ProcessMetrics>, api: &'a str) -> Self {
        Self { metrics, api }
    }

    fn finish<T>(mut self, outcome: &Result<T, Error>) {
        if let Some(m) = self.metrics.take() {
            match outcome {
                Ok(_) => m.api_request(self.api, "ok"),
                Err(e) => m.api_request(self.api, &e.code()),
            }
        }
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        if let Some(m) = self.metrics.take() {
            m.api_request(self.api, "timeout");
        }
    }
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

/// A transport failure, described without the URL (whose query holds the signature and token).
fn transport_error(e: &reqwest::Error) -> Error {
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
        Error::Timeout(Duration::ZERO)
    } else {
        Error::Connection(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot HTTP server on a loopback port answering `response` to the first request.
    async fn serve_once(response: impl Into<String>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let response: String = response.into();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(response.as_bytes()).await;
        });
        format!("http://{addr}")
    }

    fn key() -> AccessKey<'static> {
        AccessKey {
            id: "id",
            secret: "secret",
            token: None,
        }
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let endpoint = serve_once(
            "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:9/elsewhere\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        let c = Client::new(Duration::from_secs(5), 1024, "das.max_body_bytes").unwrap();
        let r = c.call(&endpoint, &[("Action", "X")], &key(), Ok).await;
        assert!(matches!(r, Err(Error::Http { status: 302, .. })), "{r:?}");
    }

    /// `redis_session_exporter_api_requests_total` as encoded: `{api="…",code="…"} n` lines.
    fn api_requests(metrics: &ProcessMetrics) -> Vec<String> {
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let mut lines: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("redis_session_exporter_api_requests_total"))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }

    #[tokio::test]
    async fn every_request_is_counted_once_by_api_and_code() {
        let metrics = ProcessMetrics::new("t");
        let c = Client::new(Duration::from_secs(5), 1024, "k")
            .unwrap()
            .counting_into(metrics.clone());
        let params = [("Action", "GetRedisAllSession"), ("Version", "x")];
        let ok = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").await;
        c.call(&ok, &params, &key(), |_| Ok(())).await.unwrap();
        // A 200 whose body the caller cannot read counts with the code the poll gets.
        let bad = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").await;
        let r: Result<(), _> = c
            .call(&bad, &params, &key(), |_| {
                Err(Error::InvalidResponse("no Data".into()))
            })
            .await;
        assert!(r.is_err());
        let throttled = serve_once(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 26\r\n\r\n{\"Code\":\"Throttling.User\"}",
        )
        .await;
        assert!(c.call(&throttled, &params, &key(), Ok).await.is_err());
        let moved = serve_once(
            "HTTP/1.1 301 Moved\r\nlocation: http://127.0.0.1:9/\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        let sts = c.call_anonymous(
            &moved,
            "AssumeRoleWithOIDC",
            "Action=AssumeRoleWithOIDC",
            String::new(),
        );
        assert_eq!(sts.await.unwrap().status.as_u16(), 301);
        // Dropped by its caller while in flight (a poll's budget ran out): still one request.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = format!("http://{}", listener.local_addr().unwrap());
        let held = tokio::spawn(async move { listener.accept().await });
        let r = tokio::time::timeout(
            Duration::from_millis(200),
            c.call(&silent, &[("Action", "DescribeInstances")], &key(), Ok),
        )
        .await;
        assert!(r.is_err(), "{r:?}");
        held.abort();
        assert_eq!(
            api_requests(&metrics),
            [
                r#"{api="AssumeRoleWithOIDC",code="http_301"} 1"#,
                r#"{api="DescribeInstances",code="timeout"} 1"#,
                r#"{api="GetRedisAllSession",code="Throttling.User"} 1"#,
                r#"{api="GetRedisAllSession",code="invalid_response"} 1"#,
                r#"{api="GetRedisAllSession",code="ok"} 1"#,
            ]
        );
    }

    #[tokio::test]
    async fn bodies_over_the_cap_are_refused_naming_the_key() {
        let endpoint =
            serve_once("HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n{\"padding\":\"xxxxxxxx\"}")
                .await;
        let c = Client::new(Duration::from_secs(5), 1024, "das.max_body_bytes").unwrap();
        let e = c
            .call(&endpoint, &[("Action", "X")], &key(), Ok)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidResponse(m) if m.contains("das.max_body_bytes")),
            "{e}"
        );
    }

    /// A `Content-Length` is a claim, not a reason to allocate: a body announced at nearly the
    /// cap reserves no more than the first reservation, and grows only with what arrives.
    #[test]
    fn a_claimed_length_is_not_reserved() {
        const MAX: u64 = 64 * 1024 * 1024;
        let mut b = CappedBody::new(Some(MAX - 1), MAX, "k").unwrap();
        assert!(
            b.bytes.capacity() <= FIRST_RESERVE,
            "{}",
            b.bytes.capacity()
        );
        b.push(b"{}").unwrap();
        assert_eq!(b.bytes, b"{}");
        assert!(b.bytes.capacity() <= FIRST_RESERVE);
        // A short answer reserves what it announced, no more.
        assert_eq!(
            CappedBody::new(Some(10), MAX, "k")
                .unwrap()
                .bytes
                .capacity(),
            10
        );
    }

    #[test]
    fn the_cap_holds_with_or_without_a_length() {
        let e = CappedBody::new(Some(1025), 1024, "das.max_body_bytes").unwrap_err();
        assert!(e.to_string().contains("das.max_body_bytes (1024)"), "{e}");
        let mut b = CappedBody::new(None, 1024, "k").unwrap();
        b.push(&[b'x'; 1000]).unwrap();
        b.push(&[b'x'; 24]).unwrap();
        let e = b.push(b"x").unwrap_err();
        assert!(e.to_string().contains("exceeds k (1024)"), "{e}");
    }

    #[tokio::test]
    async fn with_body_cap_changes_only_the_cap() {
        let body = format!("{{\"padding\":\"{}\"}}", "x".repeat(2000));
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let c = Client::new(Duration::from_secs(5), 4096, "das.max_body_bytes").unwrap();
        let endpoint = serve_once(answer.clone()).await;
        assert!(c
            .call(&endpoint, &[("Action", "X")], &key(), Ok)
            .await
            .is_ok());
        let small = c.with_body_cap(1024, "the page cap");
        let endpoint = serve_once(answer.clone()).await;
        let e = small
            .call(&endpoint, &[("Action", "X")], &key(), Ok)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("the page cap (1024)"), "{e}");
    }

    #[tokio::test]
    async fn a_stalled_answer_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move { listener.accept().await });
        let c = Client::new(Duration::from_millis(200), 1024, "k").unwrap();
        let e = c
            .call(&format!("http://{addr}"), &[("Action", "X")], &key(), Ok)
            .await
            .unwrap_err();
        assert_eq!(e, Error::Timeout(Duration::from_millis(200)));
        held.abort();
    }
}
