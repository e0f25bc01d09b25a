//! HTTP basic auth for every route: bcrypt hashes from `basic_auth_users`, verdicts cached by a
//! digest so a scrape every few seconds pays the hash once.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{key_err, WebConfigError};

/// How many (user, password) verdicts are remembered; the cache is emptied when full, so a
/// flood of wrong passwords cannot grow it.
const VERDICT_CACHE: usize = 1024;

/// `basic_auth_users`: bcrypt hashes, and the verdicts already paid for.
pub struct BasicAuth {
    pub(super) users: Vec<(String, String)>,
    verdicts: Mutex<HashMap<[u8; 32], bool>>,
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
            verdicts: Mutex::new(HashMap::new()),
        })
    }

    /// True when `password` is `user`'s. Constant time in what an attacker learns: the user
    /// list is scanned whole, an unknown user still pays a bcrypt verification, and bcrypt
    /// compares in constant time; the cache is keyed by a digest, never the password.
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        let key = cache_key(user, password);
        if let Some(v) = self.lock().get(&key) {
            return *v;
        }

        let mut found: Option<&str> = None;
        for (u, hash) in &self.users {
            if bool::from(u.as_bytes().ct_eq(user.as_bytes())) {
                found = Some(hash);
            }
        }
        let known = found.is_some();
        let hash = found.unwrap_or(&self.users[0].1).to_owned();
        let password = password.to_owned();
        // Bcrypt takes tens of milliseconds by design: keep it off the async workers.
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false)
            && known;
        let mut cache = self.lock();
        if cache.len() >= VERDICT_CACHE {
            cache.clear();
        }
        cache.insert(key, ok);
        ok
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], bool>> {
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
    let ok = match basic_credentials(&req) {
        Some((u, p)) => auth.verify(&u, &p).await,
        None => false,
    };
    if ok {
        return next.run(req).await;
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

    #[tokio::test]
    async fn verdicts_are_right_and_cached() {
        let mut users = BTreeMap::new();
        users.insert("alice".to_owned(), bcrypt::hash("s3cret", 4).unwrap());
        users.insert("bob".to_owned(), bcrypt::hash("other", 4).unwrap());
        let auth = BasicAuth::new(users).unwrap();
        assert!(auth.verify("alice", "s3cret").await);
        assert!(auth.verify("bob", "other").await);
        assert!(!auth.verify("alice", "other").await, "bob's password");
        assert!(!auth.verify("carol", "s3cret").await, "unknown user");
        assert!(!auth.verify("alice", "").await);
        // ("ali", "ces3cret") must not collide with ("alice", "s3cret") in the cache.
        assert!(!auth.verify("ali", "ces3cret").await);
        assert_eq!(auth.lock().len(), 6);
        // A cached verdict is what the next call returns: poison alice's to prove it is used.
        assert_eq!(auth.lock().get(&cache_key("alice", "s3cret")), Some(&true));
        auth.lock().insert(cache_key("alice", "s3cret"), false);
        assert!(!auth.verify("alice", "s3cret").await);
        assert!(auth.verify("bob", "other").await);
    }

    #[tokio::test]
    async fn the_cache_stays_bounded() {
        let mut users = BTreeMap::new();
        users.insert("u".to_owned(), bcrypt::hash("p", 4).unwrap());
        let auth = BasicAuth::new(users).unwrap();
        for i in 0..(VERDICT_CACHE + 10) {
            auth.lock()
                .insert(Sha256::digest(i.to_le_bytes()).into(), false);
            assert!(auth.lock().len() <= VERDICT_CACHE + 10);
        }
        assert!(auth.verify("u", "p").await);
        assert!(auth.lock().len() <= VERDICT_CACHE);
    }
}
