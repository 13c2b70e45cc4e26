//! The use-cases: write records (single or batch, with or without an idempotency key), read one record,
//! read a trail.
//!
//! Write path (mode `inline`): validate (done by the caller through [`crate::parse_record`]) → answer a
//! known idempotency key at once → look up which embedding texts are already stored (content-addressed)
//! → embed only the missing texts → one transaction with records, new embeddings and the key → answer.
//! Nothing is acknowledged before the commit.

use crate::digest::{Sha256Digest, embedding_digest, sha256};
use crate::error::AuditError;
use crate::error::Violation;
use crate::jobs::{ClaimedJob, FailedJob, JobInfo, JobPolicy};
use crate::kind::Kind;
use crate::ports::{
    AuditStore, EmbedError, Embedder, EmbeddingJob, IdempotencyClaim, JobError, NewEmbedding,
    Repoint, SearchHit, StoreHealth, StoredRecord, WriteOutcome, WriteRequest, WriteResult,
};
use crate::query::{ListQuery, Page, TrailQuery};
use crate::record::ValidRecord;
use crate::search::{SearchBy, SearchRequest};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// Records the sweep links in one call at most.
pub const HEAL_BATCH: usize = 10_000;

/// Rows the switch to a new model removes in one statement (kept links, vectors looked at).
pub const SWITCH_BATCH: usize = 10_000;

/// How long a finished embedding job is kept before it is retired: longer than any write transaction
/// can last (request timeout 30 s, statement timeout 10 s by default), so that a writer that saw the
/// job committed before its retirement links its record.
pub const JOB_GRACE: Duration = Duration::from_secs(600);

/// When records are embedded (contract §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingMode {
    /// Embed inside the request; record and vector in one transaction (default).
    Inline,
    /// Commit the record with a durable job and answer at once; the worker embeds later.
    Deferred,
}

/// What a write does when the provider fails (mode `inline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Commit the record as `pending` with a durable job (default).
    Defer,
    /// Answer `503 EMBEDDING_ERROR` and write nothing.
    Reject,
}

/// An idempotency key with the identity it is scoped to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub caller: String,
    pub key: String,
}

/// The answer to a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteReport {
    /// One per record, in request order.
    pub outcomes: Vec<WriteOutcome>,
    /// True when an idempotency key replay returned the original outcomes.
    pub replayed: bool,
}

/// The audit use-cases over the ports.
#[derive(Clone)]
pub struct AuditService {
    store: Arc<dyn AuditStore>,
    embedder: Arc<dyn Embedder>,
    mode: EmbeddingMode,
    policy: FailurePolicy,
    jobs: JobPolicy,
    /// Jobs this service claimed and could not settle (the database failed meanwhile): their leases are
    /// released first thing on the next run, instead of holding the jobs until the leases end.
    unreleased: Arc<std::sync::Mutex<BTreeSet<Sha256Digest>>>,
}

impl AuditService {
    /// Mode `inline`, policy `defer`.
    pub fn new(store: Arc<dyn AuditStore>, embedder: Arc<dyn Embedder>) -> Self {
        Self::with_options(store, embedder, EmbeddingMode::Inline, FailurePolicy::Defer)
    }

    pub fn with_options(
        store: Arc<dyn AuditStore>,
        embedder: Arc<dyn Embedder>,
        mode: EmbeddingMode,
        policy: FailurePolicy,
    ) -> Self {
        AuditService {
            store,
            embedder,
            mode,
            policy,
            jobs: JobPolicy::default(),
            unreleased: Arc::default(),
        }
    }

    /// The same service with another policy for failing embedding jobs.
    pub fn with_job_policy(mut self, jobs: JobPolicy) -> Self {
        self.jobs = jobs;
        self
    }

    /// Runs up to `limit` durable embedding jobs; the worker's unit of work (see [`crate::jobs`]).
    /// Returns how many jobs were done. An unavailable provider ends the run with
    /// [`JobError::Embed`] after storing what was done; nothing is charged for it.
    pub async fn run_embedding_jobs(&self, limit: usize) -> Result<usize, JobError> {
        self.release_unsettled().await?;
        let model = self.embedder.model_id().to_owned();
        let claimed = self
            .store
            .claim_jobs(&model, limit, self.jobs.lease)
            .await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let result = self.settle_claimed(&model, &claimed).await;
        if let Err(JobError::Store(_)) = &result {
            // The database failed after the claim: release these leases on the next run.
            self.unsettled().extend(claimed.iter().map(|j| j.digest));
        }
        result
    }

    fn unsettled(&self) -> std::sync::MutexGuard<'_, BTreeSet<Sha256Digest>> {
        match self.unreleased.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Releases the leases of jobs an earlier run could not settle.
    async fn release_unsettled(&self) -> Result<(), JobError> {
        let pending: Vec<Sha256Digest> =
            std::mem::take(&mut *self.unsettled()).into_iter().collect();
        if pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.store.release_jobs(&pending).await {
            self.unsettled().extend(pending);
            return Err(e.into());
        }
        Ok(())
    }

    /// Embeds the claimed jobs (isolating the failing inputs) and records the outcomes.
    async fn settle_claimed(&self, model: &str, claimed: &[ClaimedJob]) -> Result<usize, JobError> {
        let mut done: Vec<(Sha256Digest, Vec<f32>)> = Vec::with_capacity(claimed.len());
        let mut failed: Vec<FailedJob> = Vec::new();
        let mut unavailable: Option<EmbedError> = None;
        // Batches still to embed; a batch that fails for some inputs is split in halves.
        let mut todo: Vec<&[ClaimedJob]> = vec![claimed];
        while let Some(batch) = todo.pop() {
            if unavailable.is_some() {
                break;
            }
            let texts = batch.iter().map(|j| j.text.clone()).collect();
            match self.checked_embed(texts, batch.len()).await {
                Ok(vectors) => done.extend(batch.iter().map(|j| j.digest).zip(vectors)),
                Err(e @ EmbedError::Unavailable(_)) => unavailable = Some(e),
                Err(_) if batch.len() > 1 => {
                    let (a, b) = crate::jobs::halves(batch);
                    todo.push(b);
                    todo.push(a);
                }
                Err(e) => {
                    let job = &batch[0];
                    let verdict = self.jobs.after_failure(job.attempts.saturating_add(1));
                    failed.push(FailedJob {
                        digest: job.digest,
                        error: e.to_string(),
                        verdict,
                    });
                }
            }
        }
        let finished = if done.is_empty() {
            0
        } else {
            self.store.complete_jobs(model, &done).await?
        };
        if !failed.is_empty() {
            self.store.fail_jobs(&failed).await?;
        }
        match unavailable {
            None => Ok(finished),
            Some(e) => {
                let settled: BTreeSet<Sha256Digest> = done
                    .iter()
                    .map(|(d, _)| *d)
                    .chain(failed.iter().map(|f| f.digest))
                    .collect();
                let rest: Vec<Sha256Digest> = claimed
                    .iter()
                    .map(|j| j.digest)
                    .filter(|d| !settled.contains(d))
                    .collect();
                self.store.release_jobs(&rest).await?;
                Err(JobError::Embed(e))
            }
        }
    }

    /// The provider's vectors for `texts`, checked: `count` of them, each of the model's dimension and
    /// finite (else [`EmbedError::InvalidOutput`]).
    async fn checked_embed(
        &self,
        texts: Vec<String>,
        count: usize,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let dim = self.embedder.dimension();
        let vectors = self.embedder.embed(texts).await?;
        if vectors.len() != count
            || vectors
                .iter()
                .any(|v| v.len() != dim || v.iter().any(|x| !x.is_finite()))
        {
            return Err(EmbedError::InvalidOutput(format!(
                "expected {count} vectors of {dim} finite numbers"
            )));
        }
        Ok(vectors)
    }

    /// Jobs, open and parked (or parked only), newest first.
    pub async fn list_jobs(
        &self,
        parked_only: bool,
        limit: usize,
    ) -> Result<Vec<JobInfo>, AuditError> {
        Ok(self.store.list_jobs(parked_only, limit).await?)
    }

    /// Re-queues parked jobs (all, or those of `digests`).
    pub async fn retry_parked(&self, digests: Option<&[Sha256Digest]>) -> Result<u64, AuditError> {
        Ok(self.store.retry_parked(digests).await?)
    }

    /// How many jobs are parked.
    pub async fn parked_jobs(&self) -> Result<i64, AuditError> {
        Ok(self.store.parked_jobs().await?)
    }

    /// Re-embedding after a model change: queues, for up to `limit` records with `id > after_id` that
    /// have no vector of the current model, a job (or a link to an already stored vector) for the
    /// current model. Returns how many records moved and the last id looked at (`None` when no record
    /// is left). The embedding workers do the rest.
    pub async fn reembed_page(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<(usize, Option<i64>), AuditError> {
        let model = self.embedder.model_id().to_owned();
        let records = self
            .store
            .records_without_model(&model, after_id, limit)
            .await?;
        let Some(last) = records.last().map(|r| r.id) else {
            return Ok((0, None));
        };
        let moved = self.repoint(records).await?;
        Ok((moved, Some(last)))
    }

    /// Points each record at the current model's vector of its embedding text, or queues a job for it.
    async fn repoint(&self, records: Vec<StoredRecord>) -> Result<usize, AuditError> {
        let model = self.embedder.model_id();
        let mut items = Vec::with_capacity(records.len());
        for stored in records {
            // The stored form is the validated, sanitized record: parsing it again gives back its
            // embedding text.
            let valid = crate::record::parse_record(stored.kind, Value::Object(stored.record))?;
            items.push(Repoint {
                id: stored.id,
                digest: embedding_digest(model, &valid.embedding_text),
                text: valid.embedding_text,
            });
        }
        Ok(self.store.repoint_embeddings(model, &items).await?)
    }

    /// A model other than the current one that a record received in the last `window` was embedded
    /// with or waits for: a replica still runs it, and the switch would take its records' vectors
    /// away from it.
    pub async fn other_model_in_use(&self, window: Duration) -> Result<Option<String>, AuditError> {
        Ok(self
            .store
            .other_model_in_use(self.embedder.model_id(), window)
            .await?)
    }

    /// The switch to the current model, once every record points at it (see
    /// [`AuditStore::finish_switch`]): the links kept for earlier models, their jobs no record waits
    /// for and their vectors no record links are removed.
    pub async fn finish_switch(&self) -> Result<crate::ports::Switched, AuditError> {
        Ok(self
            .store
            .finish_switch(self.embedder.model_id(), SWITCH_BATCH)
            .await?)
    }

    /// The sweep and the retirement of finished jobs (see [`AuditStore::heal_embeddings`]): at most
    /// [`HEAL_BATCH`] records a call; jobs retired [`JOB_GRACE`] after they finished. A pending record
    /// found with neither a vector nor a job is queued again for the current model (as `reembed`
    /// does). Returns how many records it linked and how many it queued again.
    pub async fn heal_embeddings(&self) -> Result<(u64, usize), AuditError> {
        let healed = self.store.heal_embeddings(HEAL_BATCH, JOB_GRACE).await?;
        let requeued = if healed.without_job.is_empty() {
            0
        } else {
            self.repoint(healed.without_job).await?
        };
        Ok((healed.linked, requeued))
    }

    /// The records waiting for their vector, and the age of the oldest.
    pub async fn embedding_backlog(&self) -> Result<crate::ports::Backlog, AuditError> {
        Ok(self.store.embedding_backlog().await?)
    }

    /// The embedding backlog.
    pub async fn pending_jobs(&self) -> Result<i64, AuditError> {
        Ok(self.store.pending_jobs().await?)
    }

    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    /// Writes `records` atomically (a single write is a batch of one).
    pub async fn write(
        &self,
        records: Vec<ValidRecord>,
        key: Option<IdempotencyKey>,
    ) -> Result<WriteReport, AuditError> {
        let request_digest = request_digest(&records);
        if let Some(k) = &key
            && let Some((digest, outcomes)) =
                self.store.idempotent_result(&k.caller, &k.key).await?
        {
            return if digest == request_digest {
                Ok(WriteReport {
                    outcomes,
                    replayed: true,
                })
            } else {
                Err(AuditError::IdempotencyConflict)
            };
        }

        let model = self.embedder.model_id().to_owned();
        let embedding_digests: Vec<Sha256Digest> = records
            .iter()
            .map(|r| embedding_digest(&model, &r.embedding_text))
            .collect();
        let (new_embeddings, jobs) = if self.mode == EmbeddingMode::Deferred {
            // No lookup on the acknowledged path: the store links the texts already embedded and
            // queues a job only for the others, in the write's own transaction.
            (
                Vec::new(),
                jobs_for(distinct_texts(&records, &embedding_digests), &model),
            )
        } else {
            let wanted = distinct_texts(&records, &embedding_digests);
            let missing = self.missing_texts(&wanted).await?;
            if missing.is_empty() {
                // Every vector is stored (the store may answer that from memory): no new vector and,
                // as in mode deferred, a job the statement only queues for a text it finds without
                // one, so a record can never be left pending without a job.
                (Vec::new(), jobs_for(wanted, &model))
            } else {
                match self.embed_missing(missing.clone(), &model).await {
                    Ok(new) => (new, Vec::new()),
                    // The records are committed as pending; the worker retries the embedding.
                    Err(AuditError::Embedding(_)) if self.policy == FailurePolicy::Defer => {
                        (Vec::new(), jobs_for(missing, &model))
                    }
                    Err(e) => return Err(e),
                }
            }
        };

        let request = WriteRequest {
            records,
            embedding_digests,
            new_embeddings,
            jobs,
            idempotency: key.map(|k| IdempotencyClaim {
                caller: k.caller,
                key: k.key,
                request_digest,
            }),
        };
        match self.store.write(request).await? {
            WriteResult::Written(outcomes) => Ok(WriteReport {
                outcomes,
                replayed: false,
            }),
            WriteResult::Replayed(outcomes) => Ok(WriteReport {
                outcomes,
                replayed: true,
            }),
            WriteResult::KeyConflict => Err(AuditError::IdempotencyConflict),
        }
    }

    /// The (digest, text) pairs of `wanted` whose vectors are not stored yet.
    async fn missing_texts(
        &self,
        wanted: &[(Sha256Digest, String)],
    ) -> Result<Vec<(Sha256Digest, String)>, AuditError> {
        let keys: Vec<Sha256Digest> = wanted.iter().map(|(d, _)| *d).collect();
        let stored: BTreeSet<Sha256Digest> = self
            .store
            .existing_embeddings(&keys)
            .await?
            .into_iter()
            .collect();
        Ok(wanted
            .iter()
            .filter(|(d, _)| !stored.contains(d))
            .cloned()
            .collect())
    }

    /// Embeds each missing text once.
    async fn embed_missing(
        &self,
        missing: Vec<(Sha256Digest, String)>,
        model: &str,
    ) -> Result<Vec<NewEmbedding>, AuditError> {
        let texts: Vec<String> = missing.iter().map(|(_, t)| t.clone()).collect();
        let vectors = self.embedder.embed(texts).await?;
        if vectors.len() != missing.len() {
            return Err(EmbedError::InvalidOutput(format!(
                "asked for {} vectors, got {}",
                missing.len(),
                vectors.len()
            ))
            .into());
        }
        let dim = self.embedder.dimension();
        missing
            .into_iter()
            .zip(vectors)
            .map(|((digest, _), vector)| {
                if vector.len() != dim || vector.iter().any(|x| !x.is_finite()) {
                    return Err(AuditError::Embedding(EmbedError::InvalidOutput(format!(
                        "expected {dim} finite numbers, got {} values",
                        vector.len()
                    ))));
                }
                Ok(NewEmbedding {
                    digest,
                    model: model.to_owned(),
                    vector,
                })
            })
            .collect()
    }

    /// One record; [`AuditError::NotFound`] when there is no record of that kind with that id.
    pub async fn get(&self, kind: Kind, id: i64) -> Result<StoredRecord, AuditError> {
        self.store.get(kind, id).await?.ok_or(AuditError::NotFound)
    }

    /// A page of the trail of a correlation id, oldest first; empty when there is none.
    pub async fn trail(&self, query: &TrailQuery) -> Result<Page, AuditError> {
        let mut records = self.store.trail(query).await?;
        let next_cursor = if records.len() > query.limit {
            records.truncate(query.limit);
            records.last().and_then(|r| query.cursor_after(r))
        } else {
            None
        };
        Ok(Page {
            records,
            next_cursor,
        })
    }

    /// A page of the records that pass the query's filters, newest first.
    pub async fn list(&self, query: &ListQuery) -> Result<Page, AuditError> {
        let mut records = self.store.list(query).await?;
        let next_cursor = if records.len() > query.limit {
            records.truncate(query.limit);
            records.last().map(|r| query.cursor_after(r))
        } else {
            None
        };
        Ok(Page {
            records,
            next_cursor,
        })
    }

    /// Similarity search: text is embedded with the configured provider (same model as the stored
    /// vectors); a vector must have the provider's dimension.
    pub async fn search(&self, request: SearchRequest) -> Result<Vec<SearchHit>, AuditError> {
        let dim = self.embedder.dimension();
        let vector = match request.by {
            SearchBy::Text(text) => {
                let mut v = self.embedder.embed(vec![text]).await?;
                match v.pop() {
                    Some(x) if x.len() == dim && v.is_empty() => x,
                    _ => {
                        return Err(EmbedError::InvalidOutput(format!(
                            "expected one vector of {dim}"
                        ))
                        .into());
                    }
                }
            }
            SearchBy::Vector(v) if v.len() == dim => v,
            SearchBy::Vector(v) => {
                return Err(AuditError::Validation(vec![Violation::new(
                    "vector",
                    "dimension",
                    format!(
                        "must have {dim} numbers (the embedding model's dimension), has {}",
                        v.len()
                    ),
                )]));
            }
        };
        let mut hits = self
            .store
            .search(
                vector,
                self.embedder.model_id(),
                &request.filters,
                request.limit,
            )
            .await?;
        if let Some(min) = request.min_similarity {
            // Hits come best first: everything after the first one under the threshold is under it too.
            hits.retain(|h| h.similarity >= min);
        }
        Ok(hits)
    }

    /// The store's health, for readiness.
    pub async fn store_health(&self) -> Result<StoreHealth, AuditError> {
        Ok(self.store.health().await?)
    }
}

/// Each embedding text once, in digest order.
fn distinct_texts(
    records: &[ValidRecord],
    digests: &[Sha256Digest],
) -> Vec<(Sha256Digest, String)> {
    let mut wanted: BTreeMap<Sha256Digest, &str> = BTreeMap::new();
    for (r, d) in records.iter().zip(digests) {
        wanted.entry(*d).or_insert(r.embedding_text.as_str());
    }
    wanted.into_iter().map(|(d, t)| (d, t.to_owned())).collect()
}

fn jobs_for(missing: Vec<(Sha256Digest, String)>, model: &str) -> Vec<EmbeddingJob> {
    missing
        .into_iter()
        .map(|(digest, text)| EmbeddingJob {
            digest,
            model: model.to_owned(),
            text,
        })
        .collect()
}

/// The digest of a whole request: the content digests of its records, in order.
pub fn request_digest(records: &[ValidRecord]) -> Sha256Digest {
    let mut bytes = Vec::with_capacity(records.len() * 33);
    for r in records {
        bytes.push(r.kind as u8);
        bytes.extend_from_slice(&r.content_digest);
    }
    sha256(&bytes)
}
