//! Keeps short-lived (STS) credentials fresh: one background task refreshes them ahead of
//! expiry, and every caller shares one fetch at a time (single flight).
//!
//! Rules, in the order they matter:
//! - credentials are never handed out within [`SIGNING_SLACK`] of their expiry, so a request
//!   signed with them still arrives while they are valid;
//! - the task refreshes [`STALE_MARGIN`] before `Expiration` (as the SDKs do), but never more
//!   often than every [`MIN_REFRESH_INTERVAL`], so credentials issued for less than the margin
//!   do not cause a busy loop;
//! - a failed refresh is retried with exponential back-off while the old credentials stay in
//!   use until they really expire;
//! - when a caller finds no usable credentials it fetches itself, but callers waiting at the
//!   same time share that one fetch and its outcome instead of each asking the service.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;

use super::{CredentialError, CredentialProvider, Credentials, Health, HealthSignal};

/// How long before `Expiration` credentials count as stale: what the official SDKs use.
pub const STALE_MARGIN: Duration = Duration::from_secs(15 * 60);
/// The shortest gap between two scheduled refreshes.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Credentials this close to expiry are not used to sign any more.
pub const SIGNING_SLACK: Duration = Duration::from_secs(30);
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The timing rules; [`Policy::default`] is the SDKs' (the unit tests shrink it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub stale_margin: Duration,
    pub min_refresh_interval: Duration,
    pub backoff_start: Duration,
    pub backoff_max: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            stale_margin: STALE_MARGIN,
            min_refresh_interval: MIN_REFRESH_INTERVAL,
            backoff_start: BACKOFF_START,
            backoff_max: BACKOFF_MAX,
        }
    }
}

impl Policy {
    /// When the task should refresh credentials expiring at `expiry`, seen at `now`. Pure, so
    /// the schedule is unit-tested.
    pub fn refresh_delay(&self, expiry: SystemTime, now: SystemTime) -> Duration {
        expiry
            .checked_sub(self.stale_margin)
            .and_then(|at| at.duration_since(now).ok())
            .unwrap_or_default()
            .max(self.min_refresh_interval)
    }

    /// The wait before retry number `failures` (1-based) after failed refreshes.
    pub fn backoff(&self, failures: u32) -> Duration {
        self.backoff_start
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
            .min(self.backoff_max)
    }
}

/// Something that can obtain a fresh set of expiring credentials (STS, the metadata service).
pub trait Fetch: Send + Sync + fmt::Debug + 'static {
    /// The `provider` label.
    fn name(&self) -> &'static str;
    /// One attempt; the result must carry an `expiration`.
    fn fetch(&self) -> BoxFuture<'_, Result<Credentials, CredentialError>>;
}

/// A [`CredentialProvider`] over a [`Fetch`], with the refresh rules above.
#[derive(Debug)]
pub struct Refreshing<F: Fetch> {
    inner: Arc<Inner<F>>,
}

#[derive(Debug)]
struct Inner<F> {
    fetcher: F,
    policy: Policy,
    current: Mutex<Option<Arc<Credentials>>>,
    last_error: Mutex<Option<CredentialError>>,
    /// Held for the duration of one fetch: the single flight.
    flight: tokio::sync::Mutex<()>,
    /// Bumped after every fetch, successful or not, so waiters know one happened.
    generation: AtomicU64,
    errors: AtomicU64,
    task_started: AtomicBool,
    signal: HealthSignal,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Usable for signing at `now`: not within [`SIGNING_SLACK`] of expiry.
fn usable(c: &Credentials, now: SystemTime) -> bool {
    !c.is_expired(now + SIGNING_SLACK)
}

impl<F: Fetch> Refreshing<F> {
    pub fn new(fetcher: F) -> Self {
        Self::with_policy(fetcher, Policy::default())
    }

    pub fn with_policy(fetcher: F, policy: Policy) -> Self {
        Self {
            inner: Arc::new(Inner {
                fetcher,
                policy,
                current: Mutex::new(None),
                last_error: Mutex::new(None),
                flight: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                task_started: AtomicBool::new(false),
                signal: HealthSignal::default(),
            }),
        }
    }

    /// Raises `signal` (shared with other providers) instead of a signal of its own.
    pub fn with_signal(mut self, signal: HealthSignal) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.signal = signal;
        }
        self
    }

    /// Starts the refresh task once, from inside the runtime; it ends with the provider.
    fn ensure_task(&self) {
        if !self.inner.task_started.swap(true, Ordering::SeqCst) {
            tokio::spawn(refresh_task(Arc::downgrade(&self.inner)));
        }
    }
}

impl<F: Fetch> Inner<F> {
    fn current_usable(&self, now: SystemTime) -> Option<Arc<Credentials>> {
        lock(&self.current)
            .as_ref()
            .filter(|c| usable(c, now))
            .cloned()
    }

    /// One fetch shared by everyone waiting: a caller that had to wait for another caller's
    /// fetch takes that outcome instead of starting its own. Returns the credentials to use and
    /// whether this call's fetch (if any) succeeded.
    async fn refresh(&self, force: bool) -> (Result<Arc<Credentials>, CredentialError>, bool) {
        let seen = self.generation.load(Ordering::SeqCst);
        let _flight = self.flight.lock().await;
        let now = SystemTime::now();
        if self.generation.load(Ordering::SeqCst) != seen {
            // Someone else fetched while we waited: share their outcome.
            let r = self.current_usable(now).ok_or_else(|| self.error_now());
            let ok = r.is_ok();
            return (r, ok);
        }
        if !force {
            if let Some(c) = self.current_usable(now) {
                return (Ok(c), true);
            }
        }
        let name = self.fetcher.name();
        let outcome = match self.fetcher.fetch().await {
            Ok(c) if c.expiration.is_none() => Err(CredentialError::failed(
                name,
                "the credentials came without an Expiration",
            )),
            Ok(c) if !usable(&c, SystemTime::now()) => Err(CredentialError::failed(
                name,
                "the credentials issued are already expired (is the clock right?)",
            )),
            other => other,
        };
        let result = match outcome {
            Ok(c) => {
                let c = Arc::new(c);
                tracing::info!(provider = name, expires = %fmt_time(c.expiration), "credentials refreshed");
                *lock(&self.current) = Some(c.clone());
                *lock(&self.last_error) = None;
                (Ok(c), true)
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let fallback = self.current_usable(SystemTime::now());
                match &fallback {
                    Some(c) => {
                        tracing::warn!(provider = name, error = %e, expires = %fmt_time(c.expiration),
                        "credential refresh failed; the current credentials stay in use until they expire")
                    }
                    None => {
                        tracing::warn!(provider = name, error = %e, "cannot obtain credentials")
                    }
                }
                *lock(&self.last_error) = Some(e.clone());
                (fallback.ok_or(e), false)
            }
        };
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.signal.notify();
        result
    }

    fn error_now(&self) -> CredentialError {
        lock(&self.last_error)
            .clone()
            .unwrap_or(CredentialError::Expired {
                provider: self.fetcher.name(),
            })
    }
}

fn fmt_time(t: Option<SystemTime>) -> String {
    t.map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| "never".into())
}

/// Sleeps until the credentials go stale, refreshes, and after a failure retries with back-off.
/// Holds only a weak reference, so it ends when the provider is dropped.
async fn refresh_task<F: Fetch>(inner: Weak<Inner<F>>) {
    let mut failures = 0u32;
    loop {
        let delay = {
            let Some(inner) = inner.upgrade() else { return };
            let expiry = lock(&inner.current).as_ref().and_then(|c| c.expiration);
            let policy = inner.policy;
            match (failures, expiry) {
                (0, Some(e)) => policy.refresh_delay(e, SystemTime::now()),
                (0, None) => policy.backoff(1),
                (n, _) => policy.backoff(n),
            }
        };
        tokio::time::sleep(delay).await;
        let Some(inner) = inner.upgrade() else { return };
        let (_, ok) = inner.refresh(true).await;
        failures = if ok { 0 } else { failures.saturating_add(1) };
    }
}

impl<F: Fetch> CredentialProvider for Refreshing<F> {
    fn name(&self) -> &'static str {
        self.inner.fetcher.name()
    }

    fn credentials(&self) -> BoxFuture<'_, Result<Arc<Credentials>, CredentialError>> {
        Box::pin(async move {
            if let Some(c) = self.inner.current_usable(SystemTime::now()) {
                self.ensure_task();
                return Ok(c);
            }
            let (r, _) = self.inner.refresh(false).await;
            // Started after the first success, so its first sleep is computed from a real
            // expiry, and a provider the chain passed over does not keep retrying in the
            // background; until then each caller's need drives the (single-flight) fetch.
            if r.is_ok() {
                self.ensure_task();
            }
            r
        })
    }

    fn health(&self) -> Vec<Health> {
        vec![Health {
            provider: self.name(),
            expiry: lock(&self.inner.current)
                .as_ref()
                .and_then(|c| c.expiration),
            errors: self.inner.errors.load(Ordering::Relaxed),
        }]
    }

    fn health_signal(&self) -> Option<HealthSignal> {
        Some(self.inner.signal.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Debug)]
    struct Fake {
        calls: Arc<AtomicUsize>,
        fail: Arc<AtomicBool>,
        lifetime: Duration,
        /// When each fetch started (tokio's clock, so paused tests read exact gaps).
        started: Arc<Mutex<Vec<tokio::time::Instant>>>,
    }

    impl Fetch for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn fetch(&self) -> BoxFuture<'_, Result<Credentials, CredentialError>> {
            Box::pin(async move {
                lock(&self.started).push(tokio::time::Instant::now());
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                if self.fail.load(Ordering::SeqCst) {
                    return Err(CredentialError::failed("fake", "down"));
                }
                let mut c = Credentials::new(format!("STS.id{n}"), "s", Some("t".into()));
                c.expiration = Some(SystemTime::now() + self.lifetime);
                Ok(c)
            })
        }
    }

    fn fake(lifetime: Duration) -> (Refreshing<Fake>, Arc<AtomicUsize>, Arc<AtomicBool>) {
        fake_with(lifetime, Policy::default())
    }

    fn fake_with(
        lifetime: Duration,
        policy: Policy,
    ) -> (Refreshing<Fake>, Arc<AtomicUsize>, Arc<AtomicBool>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let fail = Arc::new(AtomicBool::new(false));
        (
            Refreshing::with_policy(
                Fake {
                    calls: calls.clone(),
                    fail: fail.clone(),
                    lifetime,
                    started: Arc::default(),
                },
                policy,
            ),
            calls,
            fail,
        )
    }

    #[test]
    fn schedule_refreshes_fifteen_minutes_ahead_but_not_in_a_loop() {
        let p = Policy::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            p.refresh_delay(now + Duration::from_secs(3600), now),
            Duration::from_secs(45 * 60)
        );
        assert_eq!(
            p.refresh_delay(now + Duration::from_secs(900), now),
            MIN_REFRESH_INTERVAL
        );
        assert_eq!(p.refresh_delay(now, now), MIN_REFRESH_INTERVAL);
        // The documented figures, as literals: 1 s doubling to 60 s.
        let secs: Vec<u64> = (1..=9).map(|n| p.backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(p.backoff(1000), Duration::from_secs(60));
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let (p, calls, _) = fake(Duration::from_secs(3600));
        let p = Arc::new(p);
        let waiters: Vec<_> = (0..20)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.credentials().await.map(|c| c.access_key_id.clone()) })
            })
            .collect();
        for w in waiters {
            assert_eq!(w.await.unwrap().unwrap(), "STS.id0");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failures_are_shared_counted_and_the_old_credentials_kept() {
        let (p, calls, fail) = fake(Duration::from_secs(3600));
        fail.store(true, Ordering::SeqCst);
        let p = Arc::new(p);
        let waiters: Vec<_> = (0..10)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.credentials().await })
            })
            .collect();
        for w in waiters {
            assert!(w.await.unwrap().is_err());
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "waiters share a failed fetch"
        );
        assert_eq!(p.health()[0].errors, 1);
        fail.store(false, Ordering::SeqCst);
        let c = p.credentials().await.unwrap();
        // A forced refresh that fails keeps the valid credentials in use.
        fail.store(true, Ordering::SeqCst);
        let (r, ok) = p.inner.refresh(true).await;
        assert!(!ok);
        assert_eq!(r.unwrap().access_key_id, c.access_key_id);
        assert_eq!(p.health()[0].errors, 2);
        assert_eq!(p.health()[0].expiry, c.expiration);
    }

    #[tokio::test]
    async fn credentials_near_expiry_are_never_handed_out() {
        // Issued already inside the signing slack: refused as if expired.
        let (p, _, _) = fake(Duration::from_secs(10));
        let e = p.credentials().await.unwrap_err();
        assert!(e.to_string().contains("already expired"), "{e}");
    }

    /// The background task with the default policy, on tokio's paused clock (so the gaps are
    /// exact and the test takes no real time): credentials living 1 h are refreshed 45 min after
    /// issue and not before; when refreshes then fail, the retries come 1 s, 2 s, 4 s … apart,
    /// doubling up to 60 s and staying there (the documented figures, as literals: a hot retry
    /// loop or a flat delay fails), and the old credentials stay in use.
    #[tokio::test(start_paused = true)]
    async fn the_task_refreshes_before_expiry_and_backs_off_on_failure() {
        let calls = Arc::new(AtomicUsize::new(0));
        let fail = Arc::new(AtomicBool::new(false));
        let started = Arc::new(Mutex::new(Vec::new()));
        let p = Refreshing::new(Fake {
            calls: calls.clone(),
            fail: fail.clone(),
            lifetime: Duration::from_secs(3600),
            started: started.clone(),
        });
        let first = p.credentials().await.unwrap();
        let issued = lock(&started)[0];
        // Fresh for 45 minutes: no refresh.
        tokio::time::sleep(Duration::from_secs(45 * 60 - 1)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "refreshed while fresh");
        while calls.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let refreshed_after = lock(&started)[1] - issued;
        assert!(
            refreshed_after >= Duration::from_secs(45 * 60)
                && refreshed_after < Duration::from_secs(45 * 60 + 1),
            "refreshed {refreshed_after:?} after issue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = p.credentials().await.unwrap();
        assert_ne!(
            first.access_key_id, second.access_key_id,
            "the refreshed ones are used"
        );

        // From now on every refresh fails. The next one is due 45 min later again.
        fail.store(true, Ordering::SeqCst);
        while calls.load(Ordering::SeqCst) < 12 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let times = lock(&started).clone();
        // Gaps between fetch starts after the first failure (fetch number 3 on), less the fake's
        // own 50 ms per fetch, in whole milliseconds (tokio's timer rounds up to 1 ms).
        let gaps_ms: Vec<u64> = times[2..]
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis() as u64 - 50)
            .collect();
        let want_s = [1, 2, 4, 8, 16, 32, 60, 60, 60];
        for (i, (got, want)) in gaps_ms.iter().zip(want_s).enumerate() {
            assert!(
                got.abs_diff(want * 1000) <= 2,
                "retry {}: waited {got} ms, the documented back-off is {want} s (all: {gaps_ms:?})",
                i + 1
            );
        }
        assert!(p.health()[0].errors >= 9);
        let still = p.credentials().await.unwrap();
        assert_eq!(
            still.access_key_id, second.access_key_id,
            "old credentials stay in use"
        );
    }
}
