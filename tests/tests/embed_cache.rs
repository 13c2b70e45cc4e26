//! The embedding cache over the real local model: hits, single flight, TTL, bounds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use async_trait::async_trait;
use ds_domain::ports::{EmbedError, Embedder};
use ds_embed_cache::{CachedEmbedder, Clock};
use ds_embed_local::LocalEmbedder;
use ds_tests::model_dir;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The real model, with a count of the calls that reach it.
struct Counting {
    inner: LocalEmbedder,
    calls: AtomicUsize,
    texts: AtomicUsize,
}

#[async_trait]
impl Embedder for Counting {
    fn provider(&self) -> &'static str {
        self.inner.provider()
    }
    fn model_id(&self) -> &str {
        self.inner.model_id()
    }
    fn dimension(&self) -> usize {
        self.inner.dimension()
    }
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.texts.fetch_add(texts.len(), Ordering::SeqCst);
        self.inner.embed(texts).await
    }
}

struct ManualClock {
    start: Instant,
    offset_ms: AtomicU64,
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + Duration::from_millis(self.offset_ms.load(Ordering::SeqCst))
    }
}

fn setup(capacity: usize) -> (Arc<Counting>, Arc<ManualClock>, CachedEmbedder) {
    let counting = Arc::new(Counting {
        inner: LocalEmbedder::load(&model_dir(), None).unwrap(),
        calls: AtomicUsize::new(0),
        texts: AtomicUsize::new(0),
    });
    let clock = Arc::new(ManualClock {
        start: Instant::now(),
        offset_ms: AtomicU64::new(0),
    });
    let cached = CachedEmbedder::with_clock(
        counting.clone(),
        capacity,
        Duration::from_secs(300),
        clock.clone(),
    );
    (counting, clock, cached)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_text_is_embedded_once_and_gives_the_same_vector() {
    let (counting, _, cached) = setup(100);
    let direct = counting
        .inner
        .embed(vec!["pod OOMKilled".into()])
        .await
        .unwrap();
    let a = cached
        .embed(vec![
            "pod OOMKilled".into(),
            "disk full".into(),
            "pod OOMKilled".into(),
        ])
        .await
        .unwrap();
    assert_eq!(counting.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        counting.texts.load(Ordering::SeqCst),
        2,
        "a text repeated within a call is embedded once"
    );
    assert_eq!(a[0], direct[0]);
    assert_eq!(a[0], a[2]);
    let b = cached.embed(vec!["disk full".into()]).await.unwrap();
    assert_eq!(b[0], a[1]);
    assert_eq!(
        counting.calls.load(Ordering::SeqCst),
        1,
        "the second call is a hit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_text_make_one_provider_call() {
    let (counting, _, cached) = setup(100);
    let cached = Arc::new(cached);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let c = cached.clone();
            tokio::spawn(async move { c.embed(vec!["certificate expired".into()]).await.unwrap() })
        })
        .collect();
    let results = futures_util::future::join_all(tasks).await;
    assert_eq!(counting.calls.load(Ordering::SeqCst), 1);
    let first = &results[0].as_ref().unwrap()[0];
    assert!(results.iter().all(|r| &r.as_ref().unwrap()[0] == first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_after_the_ttl() {
    let (counting, clock, cached) = setup(100);
    cached.embed(vec!["dns failure".into()]).await.unwrap();
    clock.offset_ms.store(299_000, Ordering::SeqCst);
    cached.embed(vec!["dns failure".into()]).await.unwrap();
    assert_eq!(
        counting.calls.load(Ordering::SeqCst),
        1,
        "still fresh at 299 s"
    );
    clock.offset_ms.store(300_001, Ordering::SeqCst);
    cached.embed(vec!["dns failure".into()]).await.unwrap();
    assert_eq!(
        counting.calls.load(Ordering::SeqCst),
        2,
        "expired after 300 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_bounded() {
    let (_, _, cached) = setup(8);
    let texts: Vec<String> = (0..64).map(|i| format!("incident number {i}")).collect();
    cached.embed(texts).await.unwrap();
    assert!(
        cached.len() <= 16,
        "{} entries held for a capacity of 8",
        cached.len()
    );
}

/// The real model behind a gate: the first call waits until the test opens it.
struct Gated {
    inner: LocalEmbedder,
    entered: tokio::sync::mpsc::UnboundedSender<usize>,
    gate: tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
    sizes: std::sync::Mutex<Vec<usize>>,
}

#[async_trait]
impl Embedder for Gated {
    fn provider(&self) -> &'static str {
        self.inner.provider()
    }
    fn model_id(&self) -> &str {
        self.inner.model_id()
    }
    fn dimension(&self) -> usize {
        self.inner.dimension()
    }
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.sizes.lock().unwrap().push(texts.len());
        let _ = self.entered.send(texts.len());
        if let Some(gate) = self.gate.lock().await.take() {
            let _ = gate.await;
        }
        self.inner.embed(texts).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_model_gets_the_requests_that_queued_while_it_was_busy_in_one_batch() {
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
    let (open, gate) = tokio::sync::oneshot::channel();
    let gated = Arc::new(Gated {
        inner: LocalEmbedder::load(&model_dir(), None).unwrap(),
        entered: entered_tx,
        gate: tokio::sync::Mutex::new(Some(gate)),
        sizes: std::sync::Mutex::new(Vec::new()),
    });
    let batcher = ds_embed_cache::BatchingEmbedder::new(
        gated.clone(),
        ds_embed_cache::BatchSettings {
            max_batch: 32,
            max_in_flight: 1,
            ..Default::default()
        },
    );
    let first = batcher.submit(vec!["node not ready".into()]).await.unwrap();
    assert_eq!(entered.recv().await, Some(1));
    let texts: Vec<String> = (0..10)
        .map(|i| format!("certificate expired on ingress-{i}"))
        .collect();
    let mut pending = Vec::new();
    for t in &texts {
        pending.push(batcher.submit(vec![t.clone()]).await.unwrap());
    }
    open.send(()).unwrap();
    first.wait().await.unwrap();
    let mut got = Vec::new();
    for p in pending {
        got.extend(p.wait().await.unwrap());
    }
    assert_eq!(*gated.sizes.lock().unwrap(), [1, 10]);
    let want = gated.inner.embed(texts).await.unwrap();
    for (g, w) in got.iter().zip(&want) {
        let diff = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "batched and single vectors differ by {diff}");
    }
}
