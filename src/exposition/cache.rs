//! One encoded body per format, shared by every scrape until what it shows changes.
//!
//! Encoding a fleet's exposition costs milliseconds (13 MB at 1,000 instances) and compressing it
//! about as much again, so neither happens per scrape: a body is built at most once per change
//! (the store's generation plus the process metrics' version, see [`BodyCache::new`]) and format,
//! one build at a time, on the blocking pool. Plain and gzip bodies are `Bytes` shared by every
//! scrape that serves them, so a hundred slow readers hold one copy, not a hundred. The gzip body
//! is made from the plain one, once, by the first scrape that asks for it (or by the build itself
//! when the previous body was asked for compressed).
//!
//! Freshness: when building is quick (a small fleet: under [`QUICK_BUILD`]), every scrape waits
//! for a body that shows everything published before it arrived. When it is slow (a large fleet
//! scraped often, where polls land many times a second), a body younger than [`MAX_STALE`] is
//! served at once while the next one is built in the background, so no scrape pays for a build
//! and the body is never more than one build behind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use prometheus_client::registry::Registry;

use super::{encode, Format};

/// How old a body may be and still be served while a newer one is built (slow builds only).
pub const MAX_STALE: Duration = Duration::from_secs(1);

/// Builds that took less than this are waited for, so a scrape always shows the current state.
pub const QUICK_BUILD: Duration = Duration::from_millis(5);

/// Encoding failed (a bug: prometheus-client only fails when its writer does, and a `String`
/// never does), or the build task panicked.
#[derive(Debug, thiserror::Error)]
#[error("encoding the exposition failed")]
pub struct EncodeError;

/// One encoded body.
#[derive(Debug)]
pub struct Body {
    /// The change count ([`BodyCache::new`]'s `key`) read before encoding: the body shows at
    /// least everything up to it.
    pub key: u64,
    /// When the build started: the state it shows is at least this recent.
    pub built: Instant,
    pub plain: Bytes,
    gzip: OnceLock<Bytes>,
}

impl Body {
    /// The gzip body, compressed now unless that was done before. Blocks: call it from the
    /// blocking pool.
    fn gzip_now(&self) -> Bytes {
        self.gzip
            .get_or_init(|| {
                use std::io::Write as _;
                let mut enc = flate2::write::GzEncoder::new(
                    Vec::with_capacity(self.plain.len() / 8 + 1024),
                    flate2::Compression::fast(),
                );
                // Writing into a Vec cannot fail.
                let _ = enc.write_all(&self.plain);
                Bytes::from(enc.finish().unwrap_or_default())
            })
            .clone()
    }
}

#[derive(Debug, Default)]
struct Slot {
    body: ArcSwapOption<Body>,
    /// Held while a body of this format is built: one build at a time.
    building: Arc<tokio::sync::Mutex<()>>,
    /// How long the last build took, in microseconds.
    last_build_us: AtomicU64,
}

/// The registry and its last bodies.
pub struct BodyCache {
    registry: Registry,
    key: Box<dyn Fn() -> u64 + Send + Sync>,
    slots: [Slot; 2],
}

impl std::fmt::Debug for BodyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyCache")
            .field("key", &(self.key)())
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

impl BodyCache {
    /// `key` counts the changes to what `registry` encodes: a number that only grows and moves
    /// with every change (the store's generation plus the process metrics' version).
    pub fn new(registry: Registry, key: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self {
            registry,
            key: Box::new(key),
            slots: Default::default(),
        }
    }

    /// The plain body of `fmt`.
    pub async fn plain(self: &Arc<Self>, fmt: Format) -> Result<Bytes, EncodeError> {
        Ok(self.body(fmt).await?.plain.clone())
    }

    /// The gzip body of `fmt`.
    pub async fn gzip(self: &Arc<Self>, fmt: Format) -> Result<Bytes, EncodeError> {
        let body = self.body(fmt).await?;
        if let Some(gz) = body.gzip.get() {
            return Ok(gz.clone());
        }
        tokio::task::spawn_blocking(move || body.gzip_now())
            .await
            .map_err(|_| EncodeError)
    }

    /// The body of `fmt` to serve now (see the module docs for which one).
    pub async fn body(self: &Arc<Self>, fmt: Format) -> Result<Arc<Body>, EncodeError> {
        let key = (self.key)();
        let slot = &self.slots[fmt as usize];
        let current = slot.body.load_full();
        if let Some(b) = current.as_ref().filter(|b| b.key >= key) {
            return Ok(b.clone());
        }
        let slow = slot.last_build_us.load(Ordering::Relaxed) >= QUICK_BUILD.as_micros() as u64;
        if let Some(b) = current.filter(|b| slow && b.built.elapsed() < MAX_STALE) {
            if let Ok(guard) = slot.building.clone().try_lock_owned() {
                let this = self.clone();
                tokio::task::spawn_blocking(move || {
                    let _guard = guard;
                    this.build(fmt)
                });
            }
            return Ok(b);
        }
        // Wait for a body at least as new as `key`: the build under way may be it.
        let guard = slot.building.clone().lock_owned().await;
        if let Some(b) = slot.body.load_full().filter(|b| b.key >= key) {
            return Ok(b);
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            this.build(fmt)
        })
        .await
        .map_err(|_| EncodeError)?
    }

    /// Encodes a body and makes it the current one. Called with the slot's build lock held, on
    /// the blocking pool; it finishes and publishes even when the scrape that asked has gone.
    fn build(&self, fmt: Format) -> Result<Arc<Body>, EncodeError> {
        let slot = &self.slots[fmt as usize];
        let started = Instant::now();
        // Read before encoding: the body shows at least this; a change during the encode only
        // means one more build later.
        let key = (self.key)();
        let previous = slot.body.load_full();
        let hint = previous.as_ref().map_or(0, |b| b.plain.len());
        let text = encode(fmt, &self.registry, hint).map_err(|e| {
            tracing::error!(error = %e, "encoding /metrics failed");
            EncodeError
        })?;
        let body = Arc::new(Body {
            key,
            built: started,
            plain: Bytes::from(text),
            gzip: OnceLock::new(),
        });
        // Prometheus asks for gzip every time: compress before publishing, so no scrape waits.
        if previous.is_some_and(|p| p.gzip.get().is_some()) {
            body.gzip_now();
        }
        slot.last_build_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        slot.body.store(Some(body.clone()));
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ProcessMetrics;
    use crate::store::{InstanceEntry, InstanceSeries, Status, Store};

    fn gunzip(b: &[u8]) -> Vec<u8> {
        use std::io::Read as _;
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(b)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    fn entry(id: &str) -> InstanceEntry {
        InstanceEntry {
            status: Status::Up { sessions: 0 },
            series: Some(InstanceSeries::default()),
            ..InstanceEntry::pending(id)
        }
    }

    fn setup() -> (Arc<Store>, ProcessMetrics, Arc<BodyCache>) {
        let store = Arc::new(Store::new());
        let metrics = ProcessMetrics::new("t");
        store.publish(entry("r-a"));
        let cache = Arc::new(super::super::body_cache(store.clone(), &metrics));
        (store, metrics, cache)
    }

    fn text(b: &Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn one_body_per_change_and_format_shared_by_every_scrape() {
        let (_store, _metrics, cache) = setup();
        for fmt in Format::ALL {
            let plain = cache.plain(fmt).await.unwrap();
            let gz = cache.gzip(fmt).await.unwrap();
            assert_eq!(
                gunzip(&gz),
                plain,
                "{fmt:?}: the gzip body is the plain one"
            );
            let (plain2, gz2) = (
                cache.plain(fmt).await.unwrap(),
                cache.gzip(fmt).await.unwrap(),
            );
            assert_eq!(
                plain.as_ptr(),
                plain2.as_ptr(),
                "{fmt:?}: the same plain bytes"
            );
            assert_eq!(gz.as_ptr(), gz2.as_ptr(), "{fmt:?}: the same gzip bytes");
        }
        let om = text(&cache.plain(Format::OpenMetrics).await.unwrap());
        assert!(om.ends_with("# EOF\n"));
        assert!(!text(&cache.plain(Format::Text).await.unwrap()).contains("# EOF"));
    }

    #[tokio::test]
    async fn quick_builds_always_show_the_latest_change() {
        let (store, metrics, cache) = setup();
        let first = cache.plain(Format::Text).await.unwrap();
        // A publish, then a process-wide event: each shows on the very next scrape.
        store.publish(entry("r-b"));
        let second = cache.plain(Format::Text).await.unwrap();
        assert!(text(&second).contains("r-b"), "{}", text(&second));
        assert_ne!(first.as_ptr(), second.as_ptr());
        metrics.config_loaded(false, std::time::SystemTime::now());
        let third = cache.gzip(Format::Text).await.unwrap();
        assert!(String::from_utf8(gunzip(&third))
            .unwrap()
            .contains("redis_session_exporter_config_last_reload_successful 0\n"),);
    }

    #[tokio::test]
    async fn concurrent_scrapes_share_one_build() {
        let (store, _metrics, cache) = setup();
        cache.plain(Format::Text).await.unwrap();
        store.publish(entry("r-b"));
        let scrapes: Vec<_> = (0..16)
            .map(|_| {
                let c = cache.clone();
                tokio::spawn(async move { c.plain(Format::Text).await.unwrap() })
            })
            .collect();
        let mut bodies = Vec::new();
        for s in scrapes {
            bodies.push(s.await.unwrap());
        }
        assert!(bodies.iter().all(|b| text(b).contains("r-b")));
        let distinct: std::collections::HashSet<_> = bodies.iter().map(|b| b.as_ptr()).collect();
        assert_eq!(distinct.len(), 1, "16 scrapes of one change, one build");
    }

    #[tokio::test]
    async fn slow_builds_serve_a_young_body_while_the_next_is_built() {
        let (store, _metrics, cache) = setup();
        let old = cache.gzip(Format::OpenMetrics).await.unwrap();
        // As if building took long (a large fleet).
        let slot = &cache.slots[Format::OpenMetrics as usize];
        slot.last_build_us.store(1_000_000, Ordering::Relaxed);
        store.publish(entry("r-b"));
        let served = cache.gzip(Format::OpenMetrics).await.unwrap();
        assert_eq!(served.as_ptr(), old.as_ptr(), "the young body, at once");
        // The build started in the background lands; it was compressed before it was published
        // because the previous body had been asked for compressed.
        let mut fresh = None;
        for _ in 0..500 {
            let b = slot.body.load_full().unwrap();
            if b.key > 1 && b.gzip.get().is_some() {
                fresh = Some(b);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let fresh = fresh.expect("the background build lands");
        assert!(text(&fresh.plain).contains("r-b"));
        let served = cache.gzip(Format::OpenMetrics).await.unwrap();
        assert_eq!(served.as_ptr(), fresh.gzip.get().unwrap().as_ptr());
    }

    #[tokio::test]
    async fn slow_builds_still_wait_when_the_body_is_old() {
        let (store, _metrics, cache) = setup();
        cache.plain(Format::Text).await.unwrap();
        let slot = &cache.slots[Format::Text as usize];
        slot.last_build_us.store(1_000_000, Ordering::Relaxed);
        // Age the body past MAX_STALE.
        let b = slot.body.load_full().unwrap();
        slot.body.store(Some(Arc::new(Body {
            key: b.key,
            built: Instant::now() - MAX_STALE - Duration::from_millis(1),
            plain: b.plain.clone(),
            gzip: OnceLock::new(),
        })));
        store.publish(entry("r-b"));
        let served = cache.plain(Format::Text).await.unwrap();
        assert!(text(&served).contains("r-b"), "an old body is not served");
    }
}
