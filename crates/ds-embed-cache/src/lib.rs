//! Decorators over any [`Embedder`] (contract §5): [`CachedEmbedder`] and [`BatchingEmbedder`].
//!
//! The server stacks them as `CachedEmbedder(BatchingEmbedder(provider))`: cache hits never queue,
//! and the misses of concurrent requests reach the provider together.
//!
//! [`CachedEmbedder`]:
//!
//! - Keyed by SHA-256 of (model identity, text), the same key as the stored vectors.
//! - Entries live for a TTL (default 5 minutes); the cache is bounded in entries, with quick_cache's
//!   CLOCK-Pro eviction (LRU-like, scan resistant).
//! - Single flight: concurrent misses for the same text wait for the first one's provider call instead of
//!   making their own. Keys are claimed in sorted order, so two requests never wait on each other.
//! - A failed provider call caches nothing; waiters then try themselves.
//!
//! Metrics: `datastorage_embedding_cache_hits_total`, `datastorage_embedding_cache_misses_total`.

pub mod batch;

use async_trait::async_trait;
pub use batch::{BatchSettings, BatchTicket, BatchingEmbedder};
use ds_domain::digest::{Sha256Digest, embedding_digest};
use ds_domain::ports::{EmbedError, Embedder, ProviderHealth};
use quick_cache::sync::Cache;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the cache reads the time (tests move it forward instead of sleeping).
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The system's monotonic clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

type Entry = (Instant, Arc<Vec<f32>>);

/// The caching decorator.
pub struct CachedEmbedder {
    inner: Arc<dyn Embedder>,
    cache: Cache<Sha256Digest, Entry>,
    ttl: Duration,
    clock: Arc<dyn Clock>,
}

impl CachedEmbedder {
    /// A cache of at most `capacity` vectors, each kept for `ttl`.
    pub fn new(inner: Arc<dyn Embedder>, capacity: usize, ttl: Duration) -> Self {
        Self::with_clock(inner, capacity, ttl, Arc::new(SystemClock))
    }

    pub fn with_clock(
        inner: Arc<dyn Embedder>,
        capacity: usize,
        ttl: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        CachedEmbedder {
            inner,
            cache: Cache::new(capacity.max(1)),
            ttl,
            clock,
        }
    }

    /// Entries held now (expired ones included until they are touched or evicted).
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

#[async_trait]
impl Embedder for CachedEmbedder {
    fn provider(&self) -> &'static str {
        self.inner.provider()
    }

    fn model_id(&self) -> &str {
        self.inner.model_id()
    }

    fn dimension(&self) -> usize {
        self.inner.dimension()
    }

    fn health(&self) -> ProviderHealth {
        self.inner.health()
    }

    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let model = self.inner.model_id().to_owned();
        let keys: Vec<Sha256Digest> = texts.iter().map(|t| embedding_digest(&model, t)).collect();
        // Distinct keys, in sorted order: the order in which single-flight guards are taken.
        let mut distinct: BTreeMap<Sha256Digest, &str> = BTreeMap::new();
        for (k, t) in keys.iter().zip(&texts) {
            distinct.entry(*k).or_insert(t.as_str());
        }
        let mut found: BTreeMap<Sha256Digest, Arc<Vec<f32>>> = BTreeMap::new();
        let mut guards = Vec::new();
        let (mut hits, mut misses) = (0u64, 0u64);
        for (key, text) in &distinct {
            loop {
                match self.cache.get_value_or_guard_async(key).await {
                    Ok((expires, v)) if self.clock.now() < expires => {
                        hits += 1;
                        found.insert(*key, v);
                        break;
                    }
                    Ok(_) => {
                        let now = self.clock.now();
                        self.cache.remove_if(key, |(expires, _)| *expires <= now);
                    }
                    Err(guard) => {
                        misses += 1;
                        guards.push((*key, (*text).to_owned(), guard));
                        break;
                    }
                }
            }
        }
        ds_metrics::EMBEDDING_CACHE_HITS.increment(hits);
        ds_metrics::EMBEDDING_CACHE_MISSES.increment(misses);
        if !guards.is_empty() {
            let missing: Vec<String> = guards.iter().map(|(_, t, _)| t.clone()).collect();
            let vectors = self.inner.embed(missing).await?;
            if vectors.len() != guards.len() {
                return Err(EmbedError::InvalidOutput(format!(
                    "asked for {} vectors, got {}",
                    guards.len(),
                    vectors.len()
                )));
            }
            let expires = self.clock.now() + self.ttl;
            for ((key, _, guard), vector) in guards.into_iter().zip(vectors) {
                let vector = Arc::new(vector);
                // A guard whose entry was evicted meanwhile cannot insert: the vector is still returned.
                let _ = guard.insert((expires, vector.clone()));
                found.insert(key, vector);
            }
        }
        keys.iter()
            .map(|k| {
                found.get(k).map(|v| v.as_ref().clone()).ok_or_else(|| {
                    EmbedError::InvalidOutput("a text was left without a vector".into())
                })
            })
            .collect()
    }
}
