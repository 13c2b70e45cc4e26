//! [`CachedAuthenticator`]: decisions cached briefly in front of any [`Authenticator`].
//!
//! - Authentication keyed by SHA-256 of the token (the token itself is never stored); authorization
//!   keyed by (username, groups, access).
//! - Positive and negative answers live for their own TTLs; API server failures are not cached.
//! - Bounded (quick_cache), and single flight: a burst of requests with one new token makes one review.
//!
//! Metrics: `datastorage_auth_cache_hits_total{decision}` and `datastorage_auth_cache_misses_total{decision}`
//! (`decision` = `authn` | `authz`).

use async_trait::async_trait;
use ds_domain::ports::{Access, AuthError, Authenticator, Identity};
use ds_metrics::labels::Decision;
use quick_cache::sync::Cache;
use sha2::{Digest, Sha256};
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// How long "authenticated as X" / "allowed" is reused.
    pub positive_ttl: Duration,
    /// How long "unknown token" / "not allowed" is reused.
    pub negative_ttl: Duration,
    /// Most entries of each cache.
    pub capacity: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            positive_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            capacity: 10_000,
        }
    }
}

type AuthnEntry = (Instant, Result<Identity, AuthError>);
type AuthzKey = (String, Vec<String>, Access);

pub struct CachedAuthenticator {
    inner: Arc<dyn Authenticator>,
    settings: CacheSettings,
    authn: Cache<[u8; 32], AuthnEntry>,
    authz: Cache<AuthzKey, (Instant, Result<bool, AuthError>)>,
}

impl CachedAuthenticator {
    pub fn new(inner: Arc<dyn Authenticator>, settings: CacheSettings) -> Self {
        let capacity = settings.capacity.max(1);
        CachedAuthenticator {
            inner,
            settings,
            authn: Cache::new(capacity),
            authz: Cache::new(capacity),
        }
    }

    fn ttl(&self, positive: bool) -> Duration {
        if positive {
            self.settings.positive_ttl
        } else {
            self.settings.negative_ttl
        }
    }
}

/// Looks `key` up; on a miss (or an expired entry) computes it once for all concurrent callers.
/// `Unavailable` answers are returned but not stored.
async fn cached<K, V, F>(
    cache: &Cache<K, (Instant, V)>,
    key: K,
    decision: Decision,
    ttl: impl Fn(&V) -> Option<Duration>,
    compute: F,
) -> V
where
    K: Eq + Hash + Clone,
    V: Clone,
    F: AsyncFnOnce() -> V,
{
    loop {
        match cache.get_value_or_guard_async(&key).await {
            Ok((expires, v)) if Instant::now() < expires => {
                ds_metrics::AUTH_CACHE_HITS.with((decision,)).increment(1);
                return v;
            }
            Ok(_) => {
                let now = Instant::now();
                cache.remove_if(&key, |(expires, _)| *expires <= now);
            }
            Err(guard) => {
                ds_metrics::AUTH_CACHE_MISSES.with((decision,)).increment(1);
                let v = compute().await;
                if let Some(ttl) = ttl(&v) {
                    let _ = guard.insert((Instant::now() + ttl, v.clone()));
                }
                return v;
            }
        }
    }
}

#[async_trait]
impl Authenticator for CachedAuthenticator {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        cached(
            &self.authn,
            key,
            Decision::Authn,
            |v| match v {
                Ok(_) => Some(self.ttl(true)),
                Err(AuthError::Unauthenticated(_)) => Some(self.ttl(false)),
                Err(AuthError::Unavailable(_)) => None,
            },
            async || self.inner.authenticate(token).await,
        )
        .await
    }

    fn known(&self, token: &str) -> Option<Result<Identity, AuthError>> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let (expires, answer) = self.authn.get(&key)?;
        (Instant::now() < expires).then(|| {
            ds_metrics::AUTH_CACHE_HITS
                .with((Decision::Authn,))
                .increment(1);
            answer
        })
    }

    async fn authorize(&self, who: &Identity, access: Access) -> Result<bool, AuthError> {
        let key = (who.username.clone(), who.groups.clone(), access);
        cached(
            &self.authz,
            key,
            Decision::Authz,
            |v: &Result<bool, AuthError>| match v {
                Ok(allowed) => Some(self.ttl(*allowed)),
                Err(_) => None,
            },
            async || self.inner.authorize(who, access).await,
        )
        .await
    }
}
