//! [`BatchingEmbedder`]: a decorator that embeds concurrent requests together.
//!
//! Requests go into a bounded queue. One collector task takes the first waiting request and, while no
//! provider call slot is free (at most `max_in_flight` calls run at once), keeps adding waiting
//! requests to the batch until it holds `max_batch` texts. With a free slot and `max_wait` > 0 it also
//! lingers up to `max_wait` for more. So a lone request is sent at once (no added latency by default),
//! and under load the provider sees few large calls instead of many small ones.
//!
//! A batch that fails fails every request in it with the same error. A request larger than `max_batch`
//! is never split here (the providers chunk their own calls).
//!
//! Metrics: `datastorage_embedding_batch_size` (texts per provider call) and
//! `datastorage_embedding_generation_duration_seconds{provider}` (each provider call, retries included,
//! queueing excluded).

use async_trait::async_trait;
use ds_domain::ports::{EmbedError, Embedder, ProviderHealth};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};

type Reply = Result<Vec<Vec<f32>>, EmbedError>;

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Reply>,
}

/// Batching limits.
#[derive(Debug, Clone)]
pub struct BatchSettings {
    /// Most texts gathered into one provider call.
    pub max_batch: usize,
    /// How long a batch with a free call slot waits for more requests (0: never).
    pub max_wait: Duration,
    /// Most provider calls at once.
    pub max_in_flight: usize,
    /// Most requests waiting; beyond it callers wait for room.
    pub queue: usize,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_batch: 32,
            max_wait: Duration::ZERO,
            max_in_flight: 2,
            queue: 4096,
        }
    }
}

/// The batching decorator. Build it inside a tokio runtime (it spawns its collector task).
pub struct BatchingEmbedder {
    inner: Arc<dyn Embedder>,
    queue: mpsc::Sender<Job>,
}

/// A request handed to the batcher: [`BatchTicket::wait`] for its vectors.
pub struct BatchTicket(oneshot::Receiver<Reply>);

impl BatchTicket {
    pub async fn wait(self) -> Reply {
        self.0.await.unwrap_or_else(|_| {
            Err(EmbedError::Unavailable(
                "the embedding batcher stopped".into(),
            ))
        })
    }
}

impl BatchingEmbedder {
    pub fn new(inner: Arc<dyn Embedder>, settings: BatchSettings) -> Self {
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        tokio::spawn(collect(inner.clone(), rx, settings));
        BatchingEmbedder { inner, queue: tx }
    }

    /// Puts a request in the queue (waiting for room if it is full) and returns at once.
    pub async fn submit(&self, texts: Vec<String>) -> Result<BatchTicket, EmbedError> {
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Job { texts, reply })
            .await
            .map_err(|_| EmbedError::Unavailable("the embedding batcher stopped".into()))?;
        Ok(BatchTicket(rx))
    }
}

async fn collect(inner: Arc<dyn Embedder>, mut rx: mpsc::Receiver<Job>, s: BatchSettings) {
    let slots = Arc::new(Semaphore::new(s.max_in_flight.max(1)));
    let max_batch = s.max_batch.max(1);
    while let Some(first) = rx.recv().await {
        let mut size = first.texts.len();
        let mut batch = vec![first];
        let mut open = true;
        // Gather while every call slot is busy.
        let slot = loop {
            if size >= max_batch || !open {
                break slots.clone().acquire_owned().await;
            }
            tokio::select! {
                biased;
                slot = slots.clone().acquire_owned() => break slot,
                job = rx.recv() => match job {
                    Some(job) => {
                        size += job.texts.len();
                        batch.push(job);
                    }
                    None => open = false,
                },
            }
        };
        let Ok(slot) = slot else { return };
        // Linger for more, bounded.
        if open && size < max_batch && !s.max_wait.is_zero() {
            let deadline = tokio::time::sleep(s.max_wait);
            tokio::pin!(deadline);
            while size < max_batch {
                tokio::select! {
                    _ = &mut deadline => break,
                    job = rx.recv() => match job {
                        Some(job) => {
                            size += job.texts.len();
                            batch.push(job);
                        }
                        None => break,
                    },
                }
            }
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            let _slot = slot;
            run(inner.as_ref(), batch, size).await;
        });
    }
}

async fn run(inner: &dyn Embedder, batch: Vec<Job>, size: usize) {
    ds_metrics::EMBEDDING_BATCH_SIZE.record(size as f64);
    let mut texts = Vec::with_capacity(size);
    let mut parts = Vec::with_capacity(batch.len());
    for job in batch {
        parts.push((job.texts.len(), job.reply));
        texts.extend(job.texts);
    }
    let started = std::time::Instant::now();
    let result = inner.embed(texts).await;
    ds_metrics::EMBEDDING_GENERATION_DURATION_SECONDS
        .with((ds_metrics::labels::Provider(inner.provider()),))
        .record(started.elapsed().as_secs_f64());
    let error = match result {
        Ok(vectors) if vectors.len() == size => {
            let mut vectors = vectors.into_iter();
            for (n, reply) in parts {
                let _ = reply.send(Ok(vectors.by_ref().take(n).collect()));
            }
            return;
        }
        Ok(vectors) => {
            EmbedError::InvalidOutput(format!("asked for {size} vectors, got {}", vectors.len()))
        }
        Err(e) => e,
    };
    for (_, reply) in parts {
        let _ = reply.send(Err(error.clone()));
    }
}

#[async_trait]
impl Embedder for BatchingEmbedder {
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
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        self.submit(texts).await?.wait().await
    }
}
