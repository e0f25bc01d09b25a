//! One encoded body per change, format and encoding, shared by every scrape until what it shows
//! changes.
//!
//! Encoding a fleet's exposition costs milliseconds (13 MB at 1,000 instances) and compressing it
//! about as much again, so neither happens per scrape: a body is built at most once per change
//! (the store's generation plus the process metrics' version, see [`BodyCache::new`]), format and
//! encoding, one build at a time, on the blocking pool. Bodies are `Bytes` shared by every scrape
//! that serves them, so a hundred slow readers hold one copy, not a hundred. A gzip body is
//! encoded straight into the compressor: the 13 MB plain text is never held unless a plain scrape
//! asks for it, and a build drops the bodies that can no longer be served.
//!
//! Freshness: when building is quick (a small fleet: under [`QUICK_BUILD`]), every scrape waits
//! for a body that shows everything published before it arrived. When it is slow (a large fleet
//! scraped often, where polls land many times a second), a body younger than [`MAX_STALE`] is
//! served at once, and once it is older than [`REBUILD_AFTER`] the next one is built in the
//! background (the body stays served until that build lands, however long it takes on a busy
//! machine): no scrape pays for a build, and however many scrapers there are, building takes at
//! most one build per [`REBUILD_AFTER`] and format. An older body (a lone Prometheus every 15 s)
//! is not served: the scrape waits, and takes the first body built after it arrived, so
//! scrapers waiting together share one build.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use prometheus_client::registry::Registry;

use super::{encode, encode_to, Format};

/// How old a body may be and still be served while a newer one is built (slow builds only).
pub const MAX_STALE: Duration = Duration::from_secs(1);

/// How old a body gets before a newer one is built in the background (slow builds only).
pub const REBUILD_AFTER: Duration = Duration::from_millis(500);

/// Builds that took less than this are waited for, so a scrape always shows the current state.
pub const QUICK_BUILD: Duration = Duration::from_millis(5);

/// A body's content coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Identity,
    Gzip,
}

impl Encoding {
    pub const ALL: [Encoding; 2] = [Encoding::Identity, Encoding::Gzip];
}

/// Encoding failed (a bug: prometheus-client only fails when its writer does, and neither a
/// `String` nor a compressor into a `Vec` does), or the build task panicked.
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
    pub bytes: Bytes,
}

#[derive(Debug, Default)]
struct Slot {
    body: ArcSwapOption<Body>,
    /// Held while this slot's body is built: one build at a time.
    building: Arc<tokio::sync::Mutex<()>>,
    /// How long the last build took, in microseconds.
    last_build_us: AtomicU64,
    /// True while a build started in the background (by a scrape that did not wait) runs.
    background: AtomicBool,
}

/// The registry and its last bodies.
pub struct BodyCache {
    registry: Registry,
    key: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Indexed by format, then encoding.
    slots: [[Slot; 2]; 2],
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

    fn slot(&self, fmt: Format, enc: Encoding) -> &Slot {
        &self.slots[fmt as usize][enc as usize]
    }

    /// The body to serve now in `fmt` and `enc` (see the module docs for which one).
    pub async fn body(
        self: &Arc<Self>,
        fmt: Format,
        enc: Encoding,
    ) -> Result<Arc<Body>, EncodeError> {
        let arrived = Instant::now();
        let key = (self.key)();
        let slot = self.slot(fmt, enc);
        let current = slot.body.load_full();
        if let Some(b) = current.as_ref().filter(|b| b.key >= key) {
            return Ok(b.clone());
        }
        let slow = slot.last_build_us.load(Ordering::Relaxed) >= QUICK_BUILD.as_micros() as u64;
        // While a background build runs, the body it replaces is served whatever its age: it was
        // younger than MAX_STALE when the build started, so it is one build behind at most.
        let servable =
            |b: &Body| b.built.elapsed() < MAX_STALE || slot.background.load(Ordering::Acquire);
        if let Some(b) = current.filter(|b| slow && servable(b)) {
            if b.built.elapsed() < REBUILD_AFTER {
                return Ok(b);
            }
            if let Ok(guard) = slot.building.clone().try_lock_owned() {
                slot.background.store(true, Ordering::Release);
                let this = self.clone();
                tokio::task::spawn_blocking(move || {
                    let _guard = guard;
                    let built = this.build(fmt, enc);
                    this.slot(fmt, enc)
                        .background
                        .store(false, Ordering::Release);
                    built
                });
            }
            return Ok(b);
        }
        // Wait for a body that shows at least what was published when this scrape arrived: the
        // build under way may be it, or one that started while this scrape waited.
        let guard = slot.building.clone().lock_owned().await;
        if let Some(b) = slot
            .body
            .load_full()
            .filter(|b| b.key >= key || b.built >= arrived)
        {
            return Ok(b);
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            this.build(fmt, enc)
        })
        .await
        .map_err(|_| EncodeError)?
    }

    /// Encodes a body and makes it the current one. Called with the slot's build lock held, on
    /// the blocking pool; it finishes and publishes even when the scrape that asked has gone.
    fn build(&self, fmt: Format, enc: Encoding) -> Result<Arc<Body>, EncodeError> {
        let slot = self.slot(fmt, enc);
        let started = Instant::now();
        // Read before encoding: the body shows at least this; a change during the encode only
        // means one more build later.
        let key = (self.key)();
        let hint = slot.body.load().as_ref().map_or(0, |b| b.bytes.len());
        let bytes = match enc {
            Encoding::Identity => encode(fmt, &self.registry, hint).map(Bytes::from),
            Encoding::Gzip => gzip(fmt, &self.registry, hint).map(Bytes::from),
        }
        .map_err(|e| {
            tracing::error!(error = %e, "encoding /metrics failed");
            EncodeError
        })?;
        let body = Arc::new(Body {
            key,
            built: started,
            bytes,
        });
        slot.last_build_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        slot.body.store(Some(body.clone()));
        self.drop_unservable(key);
        Ok(body)
    }

    /// Drops the bodies no scrape can be served any more (behind `key` and older than
    /// [`MAX_STALE`]), so that a one-off plain scrape of a large fleet does not keep 13 MB alive
    /// until the next one. Scrapes still sending one keep their own reference.
    fn drop_unservable(&self, key: u64) {
        for slot in self.slots.iter().flatten() {
            slot.body.rcu(|b| {
                b.as_ref()
                    .filter(|b| b.key >= key || b.built.elapsed() < MAX_STALE)
                    .cloned()
            });
        }
    }
}

/// Encodes `registry` straight into a gzip stream (level 1: the body is rebuilt often, and
/// level 1 already takes it from 13 MB to 1 MB).
fn gzip(fmt: Format, registry: &Registry, size_hint: usize) -> Result<Vec<u8>, std::fmt::Error> {
    /// prometheus-client writes through `fmt::Write`, in chunks of about 4 KiB.
    struct Compress(flate2::write::GzEncoder<Vec<u8>>);
    impl std::fmt::Write for Compress {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            use std::io::Write as _;
            self.0.write_all(s.as_bytes()).map_err(|_| std::fmt::Error)
        }
    }
    let mut w = Compress(flate2::write::GzEncoder::new(
        Vec::with_capacity(size_hint + size_hint / 16),
        flate2::Compression::fast(),
    ));
    encode_to(fmt, registry, &mut w)?;
    w.0.finish().map_err(|_| std::fmt::Error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ProcessMetrics;
    use crate::store::{InstanceEntry, InstanceSeries, Status, Store};

    fn gunzip(b: &[u8]) -> String {
        use std::io::Read as _;
        let mut out = String::new();
        flate2::read::MultiGzDecoder::new(b)
            .read_to_string(&mut out)
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

    /// The body's text (gzip bodies decompressed).
    async fn text(cache: &Arc<BodyCache>, fmt: Format, enc: Encoding) -> String {
        let b = cache.body(fmt, enc).await.unwrap();
        match enc {
            Encoding::Identity => String::from_utf8(b.bytes.to_vec()).unwrap(),
            Encoding::Gzip => gunzip(&b.bytes),
        }
    }

    #[tokio::test]
    async fn one_body_per_change_format_and_encoding_shared_by_every_scrape() {
        let (_store, _metrics, cache) = setup();
        for fmt in Format::ALL {
            assert_eq!(
                text(&cache, fmt, Encoding::Gzip).await,
                text(&cache, fmt, Encoding::Identity).await,
                "{fmt:?}: the gzip body holds the plain one"
            );
            for enc in Encoding::ALL {
                let a = cache.body(fmt, enc).await.unwrap();
                let b = cache.body(fmt, enc).await.unwrap();
                assert_eq!(
                    a.bytes.as_ptr(),
                    b.bytes.as_ptr(),
                    "{fmt:?} {enc:?}: the same bytes"
                );
            }
        }
        let om = text(&cache, Format::OpenMetrics, Encoding::Identity).await;
        assert!(om.ends_with("# EOF\n"));
        let plain = text(&cache, Format::Text, Encoding::Identity).await;
        assert!(!plain.contains("# EOF") && plain.contains("r-a"), "{plain}");
    }

    #[tokio::test]
    async fn quick_builds_always_show_the_latest_change() {
        let (store, metrics, cache) = setup();
        for enc in Encoding::ALL {
            text(&cache, Format::Text, enc).await;
        }
        // A publish, then a process-wide event: each shows on the very next scrape.
        store.publish(entry("r-b"));
        for enc in Encoding::ALL {
            assert!(
                text(&cache, Format::Text, enc).await.contains("r-b"),
                "{enc:?}"
            );
        }
        metrics.config_loaded(false, std::time::SystemTime::now());
        for enc in Encoding::ALL {
            assert!(
                text(&cache, Format::Text, enc)
                    .await
                    .contains("redis_session_exporter_config_last_reload_successful 0\n"),
                "{enc:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_build_drops_bodies_that_can_no_longer_be_served() {
        let (store, _metrics, cache) = setup();
        cache.body(Format::Text, Encoding::Identity).await.unwrap();
        let plain = cache.slot(Format::Text, Encoding::Identity);
        age(plain, Duration::ZERO);
        store.publish(entry("r-b"));
        cache
            .body(Format::OpenMetrics, Encoding::Gzip)
            .await
            .unwrap();
        assert!(plain.body.load().is_some(), "young: it may still be served");
        age(plain, MAX_STALE + Duration::from_millis(1));
        store.publish(entry("r-c"));
        cache
            .body(Format::OpenMetrics, Encoding::Gzip)
            .await
            .unwrap();
        assert!(plain.body.load().is_none(), "behind and old: dropped");
        let gz = cache.slot(Format::OpenMetrics, Encoding::Gzip);
        assert!(gz.body.load().is_some(), "the body just built stays");
    }

    #[tokio::test]
    async fn concurrent_scrapes_share_one_build() {
        let (store, _metrics, cache) = setup();
        cache.body(Format::Text, Encoding::Gzip).await.unwrap();
        store.publish(entry("r-b"));
        let scrapes: Vec<_> = (0..16)
            .map(|_| {
                let c = cache.clone();
                tokio::spawn(async move { c.body(Format::Text, Encoding::Gzip).await.unwrap() })
            })
            .collect();
        let mut bodies = Vec::new();
        for s in scrapes {
            bodies.push(s.await.unwrap());
        }
        assert!(bodies.iter().all(|b| gunzip(&b.bytes).contains("r-b")));
        let distinct: std::collections::HashSet<_> =
            bodies.iter().map(|b| b.bytes.as_ptr()).collect();
        assert_eq!(distinct.len(), 1, "16 scrapes of one change, one build");
    }

    /// Makes the slot's body look `by` old.
    fn age(slot: &Slot, by: Duration) -> Arc<Body> {
        let b = slot.body.load_full().unwrap();
        let aged = Arc::new(Body {
            key: b.key,
            built: Instant::now() - by,
            bytes: b.bytes.clone(),
        });
        slot.body.store(Some(aged.clone()));
        aged
    }

    #[tokio::test]
    async fn slow_builds_serve_a_young_body_and_rebuild_it_in_the_background() {
        let (store, _metrics, cache) = setup();
        let (fmt, enc) = (Format::OpenMetrics, Encoding::Gzip);
        cache.body(fmt, enc).await.unwrap();
        // As if building took long (a large fleet).
        let slot = cache.slot(fmt, enc);
        slot.last_build_us.store(1_000_000, Ordering::Relaxed);
        store.publish(entry("r-b"));
        // Younger than REBUILD_AFTER: served, and nothing is built.
        let young = age(slot, Duration::ZERO);
        for _ in 0..3 {
            assert!(Arc::ptr_eq(&cache.body(fmt, enc).await.unwrap(), &young));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            Arc::ptr_eq(&slot.body.load_full().unwrap(), &young),
            "no build"
        );
        // Older than REBUILD_AFTER (but not MAX_STALE): served at once, rebuilt in the background.
        let old = age(slot, REBUILD_AFTER + Duration::from_millis(1));
        assert!(Arc::ptr_eq(&cache.body(fmt, enc).await.unwrap(), &old));
        let mut fresh = None;
        for _ in 0..500 {
            let b = slot.body.load_full().unwrap();
            if b.key > old.key {
                fresh = Some(b);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let fresh = fresh.expect("the background build lands");
        assert!(gunzip(&fresh.bytes).contains("r-b"));
        assert!(Arc::ptr_eq(&cache.body(fmt, enc).await.unwrap(), &fresh));
    }

    #[tokio::test]
    async fn a_body_stays_served_while_its_background_build_runs() {
        let (store, _metrics, cache) = setup();
        let (fmt, enc) = (Format::Text, Encoding::Gzip);
        cache.body(fmt, enc).await.unwrap();
        let slot = cache.slot(fmt, enc);
        slot.last_build_us.store(1_000_000, Ordering::Relaxed);
        store.publish(entry("r-b"));
        // A background build holds the lock (as on a busy machine, for longer than MAX_STALE).
        let guard = slot.building.clone().try_lock_owned().unwrap();
        slot.background.store(true, Ordering::Release);
        let old = age(slot, MAX_STALE * 3);
        let served = tokio::time::timeout(Duration::from_secs(5), cache.body(fmt, enc))
            .await
            .expect("served without waiting for the build")
            .unwrap();
        assert!(Arc::ptr_eq(&served, &old));
        drop(guard);
        slot.background.store(false, Ordering::Release);
        // No build under way any more: the old body is not served.
        assert!(gunzip(&cache.body(fmt, enc).await.unwrap().bytes).contains("r-b"));
    }

    #[tokio::test]
    async fn slow_builds_still_wait_when_the_body_is_too_old() {
        let (store, _metrics, cache) = setup();
        let (fmt, enc) = (Format::Text, Encoding::Identity);
        cache.body(fmt, enc).await.unwrap();
        let slot = cache.slot(fmt, enc);
        slot.last_build_us.store(1_000_000, Ordering::Relaxed);
        age(slot, MAX_STALE + Duration::from_millis(1));
        store.publish(entry("r-b"));
        assert!(
            text(&cache, fmt, enc).await.contains("r-b"),
            "an old body is not served"
        );
    }
}
