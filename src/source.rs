//! The seam every source implements: one instance in, one [`Snapshot`] or a classified
//! [`PollError`] out.
//!
//! The scheduler knows nothing about DAS or Redis: it hands a source the instance, a deadline
//! and the shared [`Throttle`] (concurrency and request rate), and records what comes back.
//! Retries live inside a source, because only it knows which failures are transient, and each
//! attempt passes through the throttle, so retries can never outrun the configured rate.

use std::borrow::Cow;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{Notify, Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::acs;
use crate::config::{InstanceConfig, SourceKind};
use crate::snapshot::{Limits, Snapshot};

/// Why a poll failed. Each variant maps to one bounded `code` label.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PollError {
    /// A call to the cloud's API failed; [`acs::Error`] classifies it and names its code.
    #[error(transparent)]
    Call(#[from] acs::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Connection(String),
    #[error("no usable credentials: {0}")]
    Credentials(String),
    /// Failures of other sources (direct Redis), with their own bounded code.
    #[error("{code}: {message}")]
    Other { code: &'static str, message: String },
}

impl PollError {
    /// The `code` label of `redis_session_exporter_poll_errors_total`.
    pub fn code(&self) -> Cow<'_, str> {
        match self {
            PollError::Call(e) => e.code(),
            PollError::Timeout(_) => Cow::Borrowed("timeout"),
            PollError::Connection(_) => Cow::Borrowed("connection"),
            PollError::Credentials(_) => Cow::Borrowed("credentials"),
            PollError::Other { code, .. } => Cow::Borrowed(code),
        }
    }

    /// Worth another attempt within the same poll: throttling, server trouble, network trouble.
    pub fn is_transient(&self) -> bool {
        match self {
            PollError::Call(e) => e.is_transient(),
            PollError::Timeout(_) | PollError::Connection(_) => true,
            PollError::Credentials(_) | PollError::Other { .. } => false,
        }
    }

    /// How long the server asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PollError::Call(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// The shared limits every attempt passes: at most `concurrency` requests in flight and
/// `per_second` starts per second. One lives for the whole process; a reload changes its limits in
/// place ([`Throttle::reconfigure`]), so polls already waiting for a slot get the new limits at
/// once instead of finishing their wait under the old ones.
#[derive(Debug)]
pub struct Throttle {
    permits: Semaphore,
    /// Permits to retire as they come back, when a reload lowered the concurrency below what is
    /// in flight.
    debt: AtomicUsize,
    rate: ArcSwap<DefaultDirectRateLimiter>,
    /// Woken when the rate changes, so waits on the old limiter start over on the new one.
    rate_changed: Notify,
    params: Mutex<(usize, u64)>,
}

/// One request's slot; gives the permit back (or retires it, see [`Throttle::reconfigure`]) on drop.
pub struct Permit<'a> {
    permit: Option<SemaphorePermit<'a>>,
    debt: &'a AtomicUsize,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let retire = self
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if let (true, Some(p)) = (retire, self.permit.take()) {
            p.forget();
        }
    }
}

fn rate_limiter(per_second: f64) -> DefaultDirectRateLimiter {
    let period = Duration::from_secs_f64(1.0 / per_second.max(1e-3));
    let quota = Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::MIN);
    RateLimiter::direct(quota)
}

impl Throttle {
    /// `concurrency` requests in flight at most, `per_second` started per second at most, spaced
    /// evenly (a burst of one) so a thousand instances never fire together.
    pub fn new(concurrency: usize, per_second: f64) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            permits: Semaphore::new(concurrency),
            debt: AtomicUsize::new(0),
            rate: ArcSwap::from_pointee(rate_limiter(per_second)),
            rate_changed: Notify::new(),
            params: Mutex::new((concurrency, per_second.to_bits())),
        }
    }

    /// The parameters in force.
    pub fn params(&self) -> (usize, u64) {
        *self.params.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies new limits in place. More concurrency frees slots now; less retires free slots now
    /// and busy ones as their requests end. A new rate starts a fresh limiter (one start at once,
    /// then the new spacing) and wakes every wait on the old one.
    pub fn reconfigure(&self, concurrency: usize, per_second: f64) {
        let concurrency = concurrency.max(1);
        let mut params = self.params.lock().unwrap_or_else(|p| p.into_inner());
        let (old, old_rate) = *params;
        // The rate first: slots added below wake waiters at once (on other threads too), and each
        // then reads the limiter; it must be the new one, or they all start under the old rate.
        if per_second.to_bits() != old_rate {
            self.rate.store(Arc::new(rate_limiter(per_second)));
            self.rate_changed.notify_waiters();
        }
        if concurrency > old {
            let mut grow = concurrency - old;
            // Unpaid debt is permits still in flight that were due to retire: cancel those first.
            while grow > 0 {
                match self
                    .debt
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
                {
                    Ok(_) => grow -= 1,
                    Err(_) => break,
                }
            }
            self.permits.add_permits(grow);
        } else if concurrency < old {
            let shrink = old - concurrency;
            let forgotten = self.permits.forget_permits(shrink);
            self.debt.fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
        *params = (concurrency, per_second.to_bits());
    }

    /// Waits for a free slot and then for the rate limit; `None` if `deadline` passes first.
    /// Concurrency is taken first so that a request starts right after its rate token.
    pub async fn acquire(&self, deadline: Instant) -> Option<Permit<'_>> {
        tokio::time::timeout_at(deadline, async {
            let permit = Permit {
                permit: Some(self.permits.acquire().await.ok()?),
                debt: &self.debt,
            };
            loop {
                // Armed before the limiter is read, so a change in between still wakes it.
                let changed = self.rate_changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let limiter = self.rate.load_full();
                tokio::select! {
                    _ = limiter.until_ready() => break,
                    _ = changed => {}
                }
            }
            Some(permit)
        })
        .await
        .ok()
        .flatten()
    }
}

/// What a source needs for one poll besides the instance.
#[derive(Debug, Clone)]
pub struct PollContext {
    pub throttle: Arc<Throttle>,
    /// Time allowed from the first attempt's start to the end of the last retry.
    pub budget: Duration,
    /// Time allowed for one attempt.
    pub timeout: Duration,
    pub limits: Limits,
}

/// First retry waits about this long; each further one twice as long.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// No single back-off is longer than this (unless the server asks for more).
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Back-off before retry number `retry` (1-based): exponential with "equal jitter" (half fixed,
/// half random), never shorter than what the server asked for.
pub fn backoff(retry: u32, server_asked: Option<Duration>) -> Duration {
    let exp = BACKOFF_BASE
        .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
        .min(BACKOFF_CAP);
    let half = exp / 2;
    let jitter = half.mul_f64(rand::random::<f64>());
    (half + jitter).max(server_asked.unwrap_or_default())
}

/// Runs `attempt` until it succeeds, fails permanently, or the budget is spent.
///
/// Every attempt first passes the throttle. Waiting for the *first* slot is queueing, not polling,
/// so the budget starts when the first attempt does: a fleet larger than the rate allows is
/// polled less often (and the skipped rounds are counted), rather than failing with timeouts.
pub async fn with_retries<F, Fut, T>(ctx: &PollContext, mut attempt: F) -> Result<T, PollError>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, PollError>>,
{
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let mut permit = ctx.throttle.acquire(far).await;
    let deadline = Instant::now() + ctx.budget;
    let mut retry = 0u32;
    loop {
        let now = Instant::now();
        let timeout = ctx.timeout.min(deadline.saturating_duration_since(now));
        let result = match tokio::time::timeout(timeout, attempt(timeout)).await {
            Ok(r) => r,
            Err(_) => Err(PollError::Timeout(timeout)),
        };
        drop(permit);
        let err = match result {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() => e,
            Err(e) => return Err(e),
        };
        retry += 1;
        let wait = backoff(retry, err.retry_after());
        // A retry is only worth starting if it has a fair chance to finish inside the budget.
        if Instant::now() + wait + ctx.timeout.min(Duration::from_secs(1)) >= deadline {
            return Err(err);
        }
        tokio::time::sleep(wait).await;
        permit = match ctx.throttle.acquire(deadline).await {
            Some(p) => Some(p),
            None => return Err(err),
        };
    }
}

/// A source of sessions.
pub trait Source: Send + Sync + 'static {
    /// Polls one instance once (with the source's own retries) and folds the answer.
    fn poll<'a>(
        &'a self,
        instance: &'a InstanceConfig,
        ctx: &'a PollContext,
    ) -> BoxFuture<'a, Result<Snapshot, PollError>>;
}

/// Sends each instance to the source its `source` key names.
#[derive(Clone)]
pub struct Router {
    pub das: Arc<dyn Source>,
    pub direct: Arc<dyn Source>,
}

impl Source for Router {
    fn poll<'a>(
        &'a self,
        instance: &'a InstanceConfig,
        ctx: &'a PollContext,
    ) -> BoxFuture<'a, Result<Snapshot, PollError>> {
        match instance.source {
            SourceKind::Das => self.das.poll(instance, ctx),
            SourceKind::Direct => self.direct.poll(instance, ctx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: &str) -> PollError {
        acs::Error::Api {
            code: code.into(),
            message: String::new(),
            retry_after: None,
        }
        .into()
    }

    fn http_error(status: u16) -> PollError {
        acs::Error::Http {
            status,
            detail: String::new(),
        }
        .into()
    }

    #[test]
    fn codes_are_bounded_labels() {
        let api = |c: &str| api_error(c);
        assert_eq!(api("Throttling.User").code(), "Throttling.User");
        assert_eq!(api("Bad\"code\n{}").code(), "Badcode");
        assert_eq!(api("\"\"").code(), "invalid_response");
        assert_eq!(api(&"x".repeat(500)).code().len(), 64);
        assert_eq!(http_error(502).code(), "http_502");
    }

    #[test]
    fn transient_classification() {
        let api = |c: &str| api_error(c);
        for c in [
            "Throttling",
            "Throttling.User",
            "Throttling.Api",
            "ServiceUnavailable",
            "InternalError",
        ] {
            assert!(api(c).is_transient(), "{c}");
        }
        for c in [
            "SignatureDoesNotMatch",
            "InvalidParams",
            "NoPermission",
            "Forbidden.RAM",
            "InvalidTimeStamp.Expired",
            "InvalidAccessKeyId.NotFound",
        ] {
            assert!(!api(c).is_transient(), "{c}");
        }
        assert!(PollError::Timeout(Duration::from_secs(1)).is_transient());
        assert!(http_error(503).is_transient());
        assert!(!http_error(404).is_transient());
        assert!(!PollError::from(acs::Error::InvalidResponse(String::new())).is_transient());
    }

    #[tokio::test]
    async fn throttle_spaces_starts() {
        let t = Throttle::new(10, 5.0);
        let far = Instant::now() + Duration::from_secs(60);
        let start = std::time::Instant::now();
        for _ in 0..3 {
            drop(t.acquire(far).await.expect("permit"));
        }
        // A lower bound only (never an upper one): three starts at 5/s need two 200 ms periods.
        assert!(
            start.elapsed() >= Duration::from_millis(390),
            "{:?}",
            start.elapsed()
        );
    }

    /// The documented figures as literals: retry n waits between half and all of 0.5 s, 1 s,
    /// 2 s, … capped at 30 s, the half above the floor random; never less than the server asks.
    #[test]
    fn backoff_grows_caps_and_honours_the_server() {
        let full_ms = [
            500u64, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000,
        ];
        for (retry, full) in (1..).zip(full_ms) {
            let samples: Vec<u64> = (0..200)
                .map(|_| backoff(retry, None).as_millis() as u64)
                .collect();
            let (lo, hi) = (samples.iter().min().unwrap(), samples.iter().max().unwrap());
            assert!(
                *lo >= full / 2 && *hi <= full,
                "retry {retry}: {lo}..{hi} ms, documented {}..{full} ms",
                full / 2
            );
            // Jittered: 200 draws spread over the random half, not one fixed value.
            assert!(
                *lo < full * 6 / 10 && *hi > full * 9 / 10,
                "retry {retry}: {lo}..{hi} ms is not spread"
            );
        }
        assert!(backoff(1000, None) <= Duration::from_secs(30));
        assert_eq!(
            backoff(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
    }

    /// Inside `with_retries`, on tokio's paused clock (exact gaps, no real waiting): a transient
    /// failure is retried with gaps that grow — each within its documented range, so never
    /// shorter than the one before until the cap — then between 15 and 30 s, until the budget
    /// is spent.
    #[tokio::test(start_paused = true)]
    async fn retries_wait_longer_each_time_up_to_the_cap() {
        let ctx = PollContext {
            // A rate so high the limiter never waits: only the back-off spaces the attempts.
            throttle: Arc::new(Throttle::new(4, 1e9)),
            budget: Duration::from_secs(300),
            timeout: Duration::from_millis(200),
            limits: Limits::default(),
        };
        let started = std::sync::Mutex::new(Vec::new());
        let r: Result<(), _> = with_retries(&ctx, |_| {
            let mut started = started.lock().unwrap();
            started.push(Instant::now());
            // A hot retry loop would never reach the budget on a paused clock: end it with a
            // failure the assertion below tells apart.
            let code = if started.len() > 100 {
                "NoPermission"
            } else {
                "ServiceUnavailable"
            };
            async move { Err(api_error(code)) }
        })
        .await;
        assert_eq!(r.unwrap_err().code(), "ServiceUnavailable");
        let times = started.into_inner().unwrap();
        let gaps: Vec<u64> = times
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis() as u64)
            .collect();
        let full_ms = [500u64, 1000, 2000, 4000, 8000, 16_000];
        assert!(gaps.len() >= full_ms.len() + 2, "too few retries: {gaps:?}");
        for (i, g) in gaps.iter().enumerate() {
            let full = full_ms.get(i).copied().unwrap_or(30_000);
            assert!(
                *g >= full / 2 && *g <= full + 1,
                "gap {i}: {g} ms, documented {}..{full} ms (all: {gaps:?})",
                full / 2
            );
        }
        // Below the cap the ranges only touch at their ends, so each gap is at least the last.
        assert!(
            gaps[..full_ms.len()].windows(2).all(|w| w[1] + 1 >= w[0]),
            "a gap shrank before the cap: {gaps:?}"
        );
        // The budget (300 s) ends the retries: the last attempt started inside it.
        let spent = *times.last().unwrap() - times[0];
        assert!(spent <= Duration::from_secs(300), "{spent:?}");
    }

    fn ctx(budget: Duration) -> PollContext {
        PollContext {
            throttle: Arc::new(Throttle::new(4, 1000.0)),
            budget,
            timeout: Duration::from_millis(200),
            limits: Limits::default(),
        }
    }

    #[tokio::test]
    async fn retries_transient_failures_then_succeeds() {
        let mut calls = 0;
        let r = with_retries(&ctx(Duration::from_secs(30)), |_| {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(api_error("Throttling.User"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
    }

    #[tokio::test]
    async fn permanent_failures_are_not_retried() {
        let mut calls = 0;
        let r: Result<(), _> = with_retries(&ctx(Duration::from_secs(30)), |_| {
            calls += 1;
            async { Err(api_error("NoPermission")) }
        })
        .await;
        assert_eq!(r.unwrap_err().code(), "NoPermission");
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn slow_attempts_time_out_and_the_budget_ends_retries() {
        let mut calls = 0;
        let r: Result<(), _> = with_retries(&ctx(Duration::from_millis(900)), |_| {
            calls += 1;
            async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            }
        })
        .await;
        assert_eq!(r.unwrap_err().code(), "timeout");
        assert!(calls <= 2, "{calls} attempts in a 0.9 s budget");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reconfigured_limits_reach_polls_already_waiting() {
        let far = || Instant::now() + Duration::from_secs(10);
        // More concurrency lets a waiting acquirer in while the first slot is still held.
        let t = Arc::new(Throttle::new(1, 1000.0));
        let held = t.acquire(far()).await.unwrap();
        let t2 = t.clone();
        let waiting = tokio::spawn(async move { t2.acquire(far()).await.is_some() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        t.reconfigure(2, 1000.0);
        assert!(
            waiting.await.unwrap(),
            "the waiting acquirer got the new slot"
        );
        drop(held);

        // Less concurrency retires a slot when it comes back: with two held and the limit
        // lowered to one, a third acquirer gets in only after both are back.
        let t = Throttle::new(2, 1000.0);
        let (a, b) = (
            t.acquire(far()).await.unwrap(),
            t.acquire(far()).await.unwrap(),
        );
        t.reconfigure(1, 1000.0);
        drop(a);
        let soon = || Instant::now() + Duration::from_millis(50);
        assert!(t.acquire(soon()).await.is_none(), "one still in flight");
        drop(b);
        assert!(t.acquire(soon()).await.is_some());
        assert_eq!(t.params().0, 1);

        // A faster rate wakes an acquirer waiting on the old spacing (100 s).
        let t = Arc::new(Throttle::new(4, 0.01));
        drop(t.acquire(far()).await.unwrap());
        let t2 = t.clone();
        let waiting = tokio::spawn(async move { t2.acquire(far()).await.is_some() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        t.reconfigure(4, 1000.0);
        assert!(waiting.await.unwrap(), "still waiting on the old rate");
    }

    #[tokio::test]
    async fn throttle_gives_up_at_the_deadline() {
        let t = Throttle::new(1, 1000.0);
        let _held = t
            .acquire(Instant::now() + Duration::from_secs(1))
            .await
            .unwrap();
        let r = t.acquire(Instant::now() + Duration::from_millis(50)).await;
        assert!(r.is_none());
    }
}
