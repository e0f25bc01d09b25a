//! The HTTP side: `/metrics` (content negotiation, gzip), `/` (landing page), `/healthz`,
//! `/readyz`, `POST /-/reload`. Handlers only read the [`Store`]; they never touch the network or
//! wait on a poll. A reload is a request on a [`ReloadHandle`], answered by whoever owns the
//! configuration. [`webconfig`] puts TLS and basic auth in front of every route.

pub mod connections;
pub mod webconfig;

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use tokio::sync::{mpsc, oneshot};

use crate::exposition::{BodyCache, Encoding, Format};
use crate::store::{Status, Store};

pub use webconfig::{serve, WebConfig};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    /// The /metrics bodies, encoded at most once per change, format and encoding.
    bodies: Arc<BodyCache>,
    /// Where `POST /-/reload` goes; `None` unless the lifecycle API is enabled
    /// (`--web.enable-lifecycle`), and then the route answers 403.
    reload: Option<ReloadHandle>,
}

/// A request to re-read the configuration; `reply` (when given) learns whether the new one is in
/// force, or why not.
#[derive(Debug)]
pub struct ReloadRequest {
    pub reply: Option<oneshot::Sender<Result<(), String>>>,
}

/// Sends [`ReloadRequest`]s to whoever owns the configuration (the daemon's control loop).
#[derive(Debug, Clone)]
pub struct ReloadHandle(mpsc::Sender<ReloadRequest>);

impl ReloadHandle {
    /// A handle and the receiving end its owner reads.
    pub fn channel() -> (Self, mpsc::Receiver<ReloadRequest>) {
        let (tx, rx) = mpsc::channel(16);
        (Self(tx), rx)
    }

    /// Asks for a reload and waits for the outcome; `None` when nobody answers any more
    /// (shutting down).
    pub async fn reload(&self) -> Option<Result<(), String>> {
        let (reply, rx) = oneshot::channel();
        self.0
            .send(ReloadRequest { reply: Some(reply) })
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Asks for a reload without waiting for the outcome (SIGHUP); false when nobody listens.
    pub async fn request(&self) -> bool {
        self.0.send(ReloadRequest { reply: None }).await.is_ok()
    }
}

impl AppState {
    pub fn new(store: Arc<Store>, bodies: Arc<BodyCache>) -> Self {
        Self {
            store,
            bodies,
            reload: None,
        }
    }

    /// Serves `POST /-/reload` through `handle` (the lifecycle API: `--web.enable-lifecycle`).
    pub fn with_reload(mut self, handle: ReloadHandle) -> Self {
        self.reload = Some(handle);
        self
    }
}

/// The router, without a socket, so tests can call it directly.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(landing))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/-/reload", post(reload))
        .with_state(state)
}

/// Picks the format from an Accept header: OpenMetrics when it is acceptable and preferred at
/// least as much as the classic text, else the classic text.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    let (mut om, mut text) = (0.0f32, 0.0f32);
    for item in accept.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let mut q = 1.0f32;
        for p in parts {
            if let Some(v) = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
                q = v.trim().parse().unwrap_or(0.0);
            }
        }
        match media.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    if om > 0.0 && om >= text {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

/// True when the client accepts gzip (with a non-zero q).
pub fn accepts_gzip(h: Option<&str>) -> bool {
    h.is_some_and(|v| {
        v.split(',').any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let enc = parts.next().unwrap_or("");
            let q: f32 = parts
                .find_map(|p| p.strip_prefix("q="))
                .and_then(|q| q.parse().ok())
                .unwrap_or(1.0);
            (enc.eq_ignore_ascii_case("gzip") || enc == "*") && q > 0.0
        })
    })
}

async fn metrics(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let get = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    let fmt = negotiate(get(header::ACCEPT));
    let gzip = accepts_gzip(get(header::ACCEPT_ENCODING));

    let enc = if gzip {
        Encoding::Gzip
    } else {
        Encoding::Identity
    };
    let Ok(body) = st.bodies.body(fmt, enc).await else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed\n",
        )
            .into_response();
    };
    let mut resp = body.bytes.clone().into_response();
    if gzip {
        resp.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(fmt.content_type()),
    );
    resp.headers_mut().insert(
        header::VARY,
        HeaderValue::from_static("Accept, Accept-Encoding"),
    );
    resp
}

/// `POST /-/reload`: 200 when the new configuration is in force, 400 with the reason otherwise;
/// 403 without the lifecycle API, as Prometheus answers, so anyone who can reach the port cannot
/// make the daemon re-read its files.
async fn reload(State(st): State<AppState>) -> (StatusCode, String) {
    let Some(handle) = &st.reload else {
        return (
            StatusCode::FORBIDDEN,
            "lifecycle API is not enabled: start with --web.enable-lifecycle, or send SIGHUP\n"
                .into(),
        );
    };
    match handle.reload().await {
        Some(Ok(())) => (StatusCode::OK, "configuration reloaded\n".into()),
        Some(Err(e)) => (StatusCode::BAD_REQUEST, format!("reload rejected: {e}\n")),
        None => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into()),
    }
}

async fn readyz(State(st): State<AppState>) -> (StatusCode, &'static str) {
    if st.store.all_polled() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first poll of every instance\n",
        )
    }
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

async fn landing(State(st): State<AppState>) -> Html<String> {
    let mut page = String::with_capacity(4096);
    let _ = write!(
        page,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>redis-session-exporter</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}\
         .up{{color:#070}}.down{{color:#a00}}</style></head><body>\
         <h1>redis-session-exporter</h1><p>Version {}. Metrics: <a href=\"/metrics\">/metrics</a> \
         · <a href=\"/healthz\">/healthz</a> · <a href=\"/readyz\">/readyz</a></p>\
         <table><tr><th>Instance</th><th>Last poll</th><th>Result</th><th>Sessions</th></tr>",
        env!("CARGO_PKG_VERSION")
    );
    for e in st.store.snapshot().iter() {
        let when = e
            .last_poll_unix
            .map(|t| {
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t);
                humantime::format_rfc3339_seconds(t).to_string()
            })
            .unwrap_or_else(|| "never".into());
        let (class, result, sessions) = match &e.status {
            Status::Pending => ("", "pending".to_owned(), String::new()),
            Status::Up { sessions } => ("up", "ok".to_owned(), sessions.to_string()),
            Status::Down { code, reason } => ("down", format!("{code}: {reason}"), String::new()),
        };
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{when}</td><td class=\"{class}\">{}</td><td>{sessions}</td></tr>",
            html_escape(&e.id),
            html_escape(&result)
        );
    }
    page.push_str("</table></body></html>\n");
    Html(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        let prom3 = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
        let prom2 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prom3)), Format::OpenMetrics);
        assert_eq!(negotiate(Some(prom2)), Format::OpenMetrics);
        assert_eq!(negotiate(Some("text/plain;version=0.0.4")), Format::Text);
        assert_eq!(negotiate(Some("*/*")), Format::Text);
        assert_eq!(negotiate(None), Format::Text);
        assert_eq!(
            negotiate(Some("application/openmetrics-text;q=0")),
            Format::Text
        );
        assert_eq!(
            negotiate(Some("text/plain;q=0.9,application/openmetrics-text;q=0.5")),
            Format::Text
        );
    }

    #[test]
    fn gzip_acceptance() {
        assert!(accepts_gzip(Some("gzip")));
        assert!(accepts_gzip(Some("deflate, gzip;q=0.5")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(Some("identity")));
        assert!(!accepts_gzip(None));
    }

    #[test]
    fn landing_page_escapes() {
        assert_eq!(
            html_escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
