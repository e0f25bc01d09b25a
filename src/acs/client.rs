//! The one HTTP client for the cloud's APIs: a signed (or, for STS, anonymous) POST per call, a
//! timeout around the whole exchange, the body read under a size cap, no redirects.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use reqwest::StatusCode;

use super::{signed_query, AccessKey, Error};

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
        })
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
        let outcome = match self.send(request).await {
            Ok(r) if r.status.is_success() => decode(r),
            Ok(r) => Err(super::classify_failure(r.status, r.retry_after, &r.body)),
            Err(e) => Err(e),
        };
        outcome.map_err(|e| e.scrubbed(key))
    }

    /// One unsigned call (STS `AssumeRoleWithOIDC`, where the token in `form` is the proof):
    /// `query` is sent as is, `form` as an `application/x-www-form-urlencoded` body.
    pub async fn call_anonymous(
        &self,
        endpoint: &str,
        query: &str,
        form: String,
    ) -> Result<Reply, Error> {
        let request = self
            .http
            .post(format!("{endpoint}/?{query}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(form);
        self.send(request).await
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

    /// Reads the body chunk by chunk and stops as soon as it passes the cap, so one huge answer
    /// cannot exhaust memory.
    async fn read_capped(&self, mut resp: reqwest::Response) -> Result<Vec<u8>, Error> {
        let (max, key) = (self.max_body_bytes, self.cap_name);
        let hint = resp.content_length().unwrap_or(0);
        if hint > max {
            return Err(Error::InvalidResponse(format!(
                "body of {hint} bytes exceeds {key} ({max})"
            )));
        }
        let mut body = Vec::with_capacity(hint as usize);
        while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(&e))? {
            if body.len() as u64 + chunk.len() as u64 > max {
                return Err(Error::InvalidResponse(format!(
                    "body exceeds {key} ({max})"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
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
    async fn serve_once(response: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
