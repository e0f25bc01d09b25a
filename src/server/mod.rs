//! The HTTP side: `/metrics` (content negotiation, gzip), `/` (landing page), `/healthz`,
//! `/readyz`, `POST /-/reload`. Handlers only read the [`Store`]; they never touch the network or
//! wait on a poll. A reload is a request on a [`ReloadHandle`], answered by whoever owns the
//! configuration. [`webconfig`] puts TLS and basic auth in front of every route.

pub mod connections;
pub mod webconfig;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use tokio::sync::{mpsc, oneshot};

use crate::exposition::{encode_global, render, render_to, Block, Format, GlobalReport};
use crate::store::{Status, Store};

pub use webconfig::{serve, WebConfig};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    /// Size of the last body, to allocate the next one in one go.
    last_size: Arc<AtomicUsize>,
    /// The gzip bodies, rendered at most once per store generation.
    cache: Arc<ScrapeCache>,
    /// Where `POST /-/reload` goes.
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
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            last_size: Arc::new(AtomicUsize::new(64 * 1024)),
            cache: Arc::default(),
            reload: None,
        }
    }

    /// Serves `POST /-/reload` through `handle`.
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

/// Renders the whole plain exposition of `store` in `fmt`: a concatenation of the blocks encoded
/// when each poll landed, plus the small process-wide block.
pub fn render_body(store: &Store, fmt: Format, size_hint: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(size_hint + 4096);
    with_blocks(store, fmt, |blocks| {
        render(fmt, blocks.iter().copied(), &mut body)
    });
    body
}

/// Renders the exposition gzip-compressed, streaming the sections into the encoder (the plain
/// body is never held whole).
pub fn render_gzip(store: &Store, fmt: Format, size_hint: usize) -> Vec<u8> {
    let enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(size_hint + 1024),
        flate2::Compression::fast(),
    );
    // Sections are often a few hundred bytes: batch them before they reach the compressor.
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, enc);
    with_blocks(store, fmt, |blocks| {
        // Writing into a Vec cannot fail.
        let _ = render_to(fmt, blocks.iter().copied(), &mut w);
    });
    w.into_inner()
        .ok()
        .and_then(|enc| enc.finish().ok())
        .unwrap_or_default()
}

fn with_blocks<R>(store: &Store, fmt: Format, f: impl FnOnce(&[&Block]) -> R) -> R {
    let instances = store.snapshot();
    let global = encode_global(
        fmt,
        &GlobalReport {
            version: env!("CARGO_PKG_VERSION"),
            skipped_polls: store.skipped_polls(),
            instances: instances.len() as u64,
        },
    );
    let globals = store.globals();
    // A Vec of pointers (8 KB for 1,000 instances) that the renderer walks once per section.
    let blocks: Vec<&Block> = instances
        .values()
        .map(|e| e.block(fmt))
        .chain(globals.values().map(|g| &g[fmt as usize]))
        .chain(std::iter::once(&global))
        .collect();
    f(&blocks)
}

/// The last gzip body per format and the store generation it was rendered at.
///
/// Compressing several MB takes far longer than concatenating them, so it happens at most once
/// per generation, by one scraper, on the blocking pool; a scraper that finds a rebuild under way
/// serves the previous body instead of waiting (at most one rebuild behind). Plain bodies are not
/// cached: rendering one is a copy of what is written anyway.
#[derive(Debug, Default)]
pub struct ScrapeCache {
    gzip: [arc_swap::ArcSwapOption<Rendered>; 2],
    building: [AtomicBool; 2],
}

/// How old a cached gzip body may be and still be served while a newer one is being built.
pub const MAX_STALE: std::time::Duration = std::time::Duration::from_secs(1);

/// One rendered body.
#[derive(Debug)]
pub struct Rendered {
    pub generation: u64,
    pub built: std::time::Instant,
    pub body: Bytes,
}

impl ScrapeCache {
    /// The gzip body of `fmt`: cached when current, else rebuilt by this caller unless another
    /// one already is (then the previous body is served).
    pub async fn gzip(self: &Arc<Self>, store: &Arc<Store>, fmt: Format) -> Bytes {
        let i = fmt as usize;
        // Read before rendering: a body rendered from a newer map under an older number is
        // merely rebuilt once more.
        let generation = store.generation();
        let current = self.gzip[i].load_full();
        if let Some(c) = current.as_ref().filter(|c| c.generation == generation) {
            return c.body.clone();
        }
        let hint = current.as_ref().map_or(0, |c| c.body.len());
        let builder = self.building[i]
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        match (builder, current) {
            (false, Some(previous)) => previous.body.clone(),
            (false, None) => {
                // First scrapes ever, racing: render without caching rather than wait.
                let store = store.clone();
                let body = tokio::task::spawn_blocking(move || render_gzip(&store, fmt, hint))
                    .await
                    .unwrap_or_default();
                Bytes::from(body)
            }
            (true, current) => {
                let store = store.clone();
                let cache = self.clone();
                // The publish and the flag reset happen inside the blocking task, so a scraper
                // that disconnects mid-rebuild cannot leave the flag set.
                let built = tokio::task::spawn_blocking(move || {
                    let body = Bytes::from(render_gzip(&store, fmt, hint));
                    cache.gzip[i].store(Some(Arc::new(Rendered {
                        generation,
                        built: std::time::Instant::now(),
                        body: body.clone(),
                    })));
                    cache.building[i].store(false, Ordering::Release);
                    body
                });
                // A body younger than MAX_STALE is served while the rebuild runs in the
                // background: under many scrapers the store changes with every poll (20 a
                // second), and no scrape should pay for the compression. An older one (a single
                // Prometheus scraping every 15 s) is rebuilt before answering, so it is current.
                if let Some(prev) = current.filter(|c| c.built.elapsed() < MAX_STALE) {
                    return prev.body.clone();
                }
                built.await.unwrap_or_else(|_| {
                    self.building[i].store(false, Ordering::Release);
                    Bytes::new()
                })
            }
        }
    }
}
async fn metrics(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let get = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    let fmt = negotiate(get(header::ACCEPT));
    let gzip = accepts_gzip(get(header::ACCEPT_ENCODING));

    let mut resp = if gzip {
        let body = st.cache.gzip(&st.store, fmt).await;
        let mut r = body.into_response();
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        let body = render_body(&st.store, fmt, st.last_size.load(Ordering::Relaxed));
        st.last_size.store(body.len(), Ordering::Relaxed);
        body.into_response()
    };
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

/// `POST /-/reload`: 200 when the new configuration is in force, 400 with the reason otherwise.
async fn reload(State(st): State<AppState>) -> (StatusCode, String) {
    let Some(handle) = &st.reload else {
        return (StatusCode::NOT_FOUND, "reload is not available\n".into());
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
    for e in st.store.snapshot().values() {
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

    fn gunzip(b: &[u8]) -> Vec<u8> {
        use std::io::Read as _;
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(b)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    fn entry(id: &str, sessions: u64) -> crate::store::InstanceEntry {
        use crate::exposition::{encode_instance, InstanceReport};
        let labels = Default::default();
        let errors = Default::default();
        let report = InstanceReport {
            id,
            info_labels: &labels,
            snapshot: None,
            last_success_unix: Some(sessions as f64),
            snapshot_timestamp_unix: None,
            polls_total: sessions,
            errors_by_code: &errors,
            last_duration_seconds: None,
        };
        crate::store::InstanceEntry {
            status: Status::Up { sessions },
            blocks: Format::ALL.map(|f| encode_instance(f, &report)),
            ..crate::store::InstanceEntry::pending(id)
        }
    }

    #[tokio::test]
    async fn gzip_body_is_cached_per_generation_and_matches_the_plain_one() {
        let store = Arc::new(Store::new());
        store.publish(entry("r-a", 1));
        let cache = Arc::new(ScrapeCache::default());
        for fmt in Format::ALL {
            let gz = cache.gzip(&store, fmt).await;
            assert_eq!(gunzip(&gz), render_body(&store, fmt, 0));
            let again = cache.gzip(&store, fmt).await;
            assert_eq!(
                gz.as_ptr(),
                again.as_ptr(),
                "same generation: the cached body itself is served"
            );
        }
        store.publish(entry("r-b", 2));
        // A young body may be served once more while the rebuild runs in the background.
        let mut fresh = None;
        for _ in 0..200 {
            let gz = cache.gzip(&store, Format::OpenMetrics).await;
            if String::from_utf8(gunzip(&gz)).unwrap().contains("r-b") {
                fresh = Some(gz);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let gz = fresh.expect("a publish invalidates the cached body");
        assert_eq!(gunzip(&gz), render_body(&store, Format::OpenMetrics, 0));
    }

    #[tokio::test]
    async fn a_scrape_does_not_wait_for_a_rebuild_under_way() {
        let store = Arc::new(Store::new());
        store.publish(entry("r-a", 1));
        let cache = Arc::new(ScrapeCache::default());
        let old = cache.gzip(&store, Format::Text).await;
        store.publish(entry("r-b", 2));
        // Another scraper holds the rebuild: this one gets the previous body at once.
        cache.building[Format::Text as usize].store(true, Ordering::Release);
        let served = cache.gzip(&store, Format::Text).await;
        assert_eq!(served.as_ptr(), old.as_ptr());
        cache.building[Format::Text as usize].store(false, Ordering::Release);
        let mut fresh = None;
        for _ in 0..200 {
            let gz = cache.gzip(&store, Format::Text).await;
            if String::from_utf8(gunzip(&gz)).unwrap().contains("r-b") {
                fresh = Some(gz);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            fresh.is_some(),
            "once the rebuild is free, the new body arrives"
        );
    }

    #[test]
    fn landing_page_escapes() {
        assert_eq!(
            html_escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
