//! HTTP basic auth for every route: bcrypt hashes from `basic_auth_users`, verdicts cached by a
//! digest so a scrape every few seconds pays the hash once.
//!
//! Bcrypt is slow by design, which makes every new wrong password a unit of work an attacker
//! chooses. Two rules keep a flood of guesses from starving the real scraper (and gzip, DNS, and
//! anything else on the blocking pool): at most one verification per CPU core runs at a time,
//! and a request that finds them all busy is answered `429` at once rather than queued; and
//! verdicts that passed are cached apart from failures, so no number of failures can evict the
//! configured user's, who keeps being served from the cache during the flood.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use super::{key_err, WebConfigError};

/// How many failed (user, password) pairs are remembered, so a scraper misconfigured with a
/// wrong password pays bcrypt once, not at every scrape. The set is emptied when full: a flood
/// of guesses cannot grow it, and it holds no success to lose.
const FAILURE_CACHE: usize = 1024;

/// How many passing pairs are remembered. Only someone who knows a password can add one (bcrypt
/// reads 72 bytes, so a password that long has variants), so this bound is never reached in
/// practice; past it, a passing pair is verified again rather than cached.
const SUCCESS_CACHE: usize = 64;

/// What a check of one request's credentials found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied,
    /// Every bcrypt slot was busy: try again later (`429`).
    Busy,
}

/// `basic_auth_users`: bcrypt hashes, and the verdicts already paid for.
pub struct BasicAuth {
    pub(super) users: Vec<(String, String)>,
    verdicts: Mutex<Verdicts>,
    /// One permit per bcrypt verification allowed to run at once.
    bcrypt_slots: Arc<Semaphore>,
    failure_capacity: usize,
}

/// Digests of (user, password) pairs, kept in two sets so failures never evict a success.
#[derive(Debug, Default)]
struct Verdicts {
    passed: HashSet<[u8; 32]>,
    failed: HashSet<[u8; 32]>,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl BasicAuth {
    pub(super) fn new(users: BTreeMap<String, String>) -> Result<Self, WebConfigError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_limits(users, cores, FAILURE_CACHE)
    }

    fn with_limits(
        users: BTreeMap<String, String>,
        bcrypt_slots: usize,
        failure_capacity: usize,
    ) -> Result<Self, WebConfigError> {
        for (user, hash) in &users {
            // Never echo the hash: it is a secret too (an offline guessing target).
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(key_err(
                    &format!("basic_auth_users.{user}"),
                    "not a bcrypt hash (expected $2a$, $2b$ or $2y$; make one with `htpasswd -nBC 10 USER`)",
                ));
            }
        }
        Ok(Self {
            users: users.into_iter().collect(),
            verdicts: Mutex::default(),
            bcrypt_slots: Arc::new(Semaphore::new(bcrypt_slots)),
            failure_capacity,
        })
    }

    /// Whether `password` is `user`'s. Constant time in what an attacker learns: the user list
    /// is scanned whole, an unknown user still pays a bcrypt verification, and bcrypt compares
    /// in constant time; the caches are keyed by a digest, never the password.
    pub async fn verify(&self, user: &str, password: &str) -> Verdict {
        let key = cache_key(user, password);
        {
            let v = self.lock();
            if v.passed.contains(&key) {
                return Verdict::Allowed;
            }
            if v.failed.contains(&key) {
                return Verdict::Denied;
            }
        }
        let Ok(permit) = self.bcrypt_slots.clone().try_acquire_owned() else {
            return Verdict::Busy;
        };

        let mut found: Option<&str> = None;
        for (u, hash) in &self.users {
            if bool::from(u.as_bytes().ct_eq(user.as_bytes())) {
                found = Some(hash);
            }
        }
        let known = found.is_some();
        let hash = found.unwrap_or(&self.users[0].1).to_owned();
        let password = password.to_owned();
        // Off the async workers; the permit goes with the work, so a client that hangs up
        // does not free its slot before bcrypt is done.
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            bcrypt::verify(password, &hash)
        })
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false)
            && known;
        let mut v = self.lock();
        if ok {
            if v.passed.len() < SUCCESS_CACHE {
                v.passed.insert(key);
            }
            Verdict::Allowed
        } else {
            if v.failed.len() >= self.failure_capacity {
                v.failed.clear();
            }
            v.failed.insert(key);
            Verdict::Denied
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Verdicts> {
        self.verdicts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The cache key of a (user, password) pair: a digest, so the cache never holds a password. The
/// user's length goes first so ("ab", "c") and ("a", "bc") differ.
fn cache_key(user: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((user.len() as u64).to_le_bytes());
    h.update(user.as_bytes());
    h.update(password.as_bytes());
    h.finalize().into()
}

/// The `Authorization: Basic` credentials of a request, if well-formed.
fn basic_credentials(req: &Request) -> Option<(String, String)> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (u, p) = raw.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

pub(super) async fn require_basic_auth(
    State(auth): State<Arc<BasicAuth>>,
    req: Request,
    next: Next,
) -> Response {
    let verdict = match basic_credentials(&req) {
        Some((u, p)) => auth.verify(&u, &p).await,
        None => Verdict::Denied,
    };
    match verdict {
        Verdict::Allowed => return next.run(req).await,
        Verdict::Busy => {
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                "Too Many Requests: every password check is busy\n",
            )
                .into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
        Verdict::Denied => {}
    }
    let mut r = (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"redis-session-exporter\""),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(auth: Option<&str>) -> Request {
        let mut b = axum::http::Request::builder();
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn basic_header_parsing() {
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            basic_credentials(&request(Some(&format!("Basic {}", enc("u:p:q"))))),
            Some(("u".into(), "p:q".into()))
        );
        assert_eq!(
            basic_credentials(&request(Some(&format!("basic {}", enc("u:"))))),
            Some(("u".into(), String::new()))
        );
        assert_eq!(basic_credentials(&request(Some("Bearer abc"))), None);
        assert_eq!(basic_credentials(&request(Some("Basic !!!"))), None);
        assert_eq!(
            basic_credentials(&request(Some(&format!("Basic {}", enc("nocolon"))))),
            None
        );
        assert_eq!(basic_credentials(&request(None)), None);
    }

    fn users(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(u, p)| (u.to_string(), bcrypt::hash(p, 4).unwrap()))
            .collect()
    }

    #[tokio::test]
    async fn verdicts_are_right_and_cached() {
        let auth = BasicAuth::new(users(&[("alice", "s3cret"), ("bob", "other")])).unwrap();
        assert_eq!(auth.verify("alice", "s3cret").await, Verdict::Allowed);
        assert_eq!(auth.verify("bob", "other").await, Verdict::Allowed);
        assert_eq!(
            auth.verify("alice", "other").await,
            Verdict::Denied,
            "bob's password"
        );
        assert_eq!(
            auth.verify("carol", "s3cret").await,
            Verdict::Denied,
            "unknown user"
        );
        assert_eq!(auth.verify("alice", "").await, Verdict::Denied);
        // ("ali", "ces3cret") must not collide with ("alice", "s3cret") in the cache.
        assert_eq!(auth.verify("ali", "ces3cret").await, Verdict::Denied);
        let held = {
            let v = auth.lock();
            (v.passed.len(), v.failed.len())
        };
        assert_eq!(held, (2, 4), "(passed, failed) cached");
        // A cached verdict is what the next call returns: poison alice's to prove it is used.
        let alice = cache_key("alice", "s3cret");
        assert!(auth.lock().passed.remove(&alice));
        auth.lock().failed.insert(alice);
        assert_eq!(auth.verify("alice", "s3cret").await, Verdict::Denied);
        assert_eq!(auth.verify("bob", "other").await, Verdict::Allowed);
    }

    #[tokio::test]
    async fn failures_stay_bounded_and_never_evict_a_success() {
        const CAPACITY: usize = 8;
        let auth = BasicAuth::with_limits(users(&[("u", "p")]), 2, CAPACITY).unwrap();
        assert_eq!(auth.verify("u", "p").await, Verdict::Allowed);
        for i in 0..3 * CAPACITY {
            assert_eq!(
                auth.verify("u", &format!("guess-{i}")).await,
                Verdict::Denied
            );
            let v = auth.lock();
            assert!(
                (1..=CAPACITY).contains(&v.failed.len()),
                "{} failures held after {} guesses",
                v.failed.len(),
                i + 1
            );
            assert!(
                v.passed.contains(&cache_key("u", "p")),
                "guess {i} evicted the success"
            );
        }
        // Served from the cache: with every bcrypt slot taken, the right password still passes.
        let _all = auth
            .bcrypt_slots
            .clone()
            .acquire_many_owned(2)
            .await
            .unwrap();
        assert_eq!(auth.verify("u", "p").await, Verdict::Allowed);
    }

    #[tokio::test]
    async fn a_check_that_finds_every_bcrypt_slot_busy_is_refused_at_once() {
        let auth = BasicAuth::with_limits(users(&[("u", "p")]), 2, FAILURE_CACHE).unwrap();
        let held = auth
            .bcrypt_slots
            .clone()
            .acquire_many_owned(2)
            .await
            .unwrap();
        // Neither verified nor cached: the right password too, since it is not cached yet.
        assert_eq!(auth.verify("u", "wrong").await, Verdict::Busy);
        assert_eq!(auth.verify("u", "p").await, Verdict::Busy);
        {
            let v = auth.lock();
            assert!(v.failed.is_empty() && v.passed.is_empty(), "{v:?}");
        }
        drop(held);
        assert_eq!(auth.verify("u", "wrong").await, Verdict::Denied);
        assert_eq!(auth.verify("u", "p").await, Verdict::Allowed);
    }

    #[test]
    fn one_bcrypt_slot_per_core() {
        let auth = BasicAuth::new(users(&[("u", "p")])).unwrap();
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(auth.bcrypt_slots.available_permits(), cores);
    }
}
