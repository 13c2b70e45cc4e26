//! The ports: what the use-cases need from the outside world. Adapters implement them (PostgreSQL in
//! `ds-store-pg`, the local model in `ds-embed-local`); the server crate chooses which.
//!
//! Each port states its error contract: which [`StoreError`] / [`EmbedError`] variant means what, so that
//! every adapter fails the same way and the HTTP mapping stays one `match`.

use crate::digest::Sha256Digest;
use crate::kind::Kind;
use crate::record::ValidRecord;
use crate::search::SearchFilters;
use crate::time::Timestamp;
use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Map, Value};

/// Whether a record's embedding is stored (`embeddingId` set) or still to be computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingStatus {
    Stored,
    Pending,
}

/// Whether a write created a row or found the same record already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum WriteStatus {
    Created,
    Duplicate,
}

/// The result of writing one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteOutcome {
    pub id: i64,
    pub embedding_id: Option<i64>,
    pub embedding_status: EmbeddingStatus,
    pub status: WriteStatus,
    /// When the service committed the record (for a duplicate: when the original was committed).
    pub received_at: Timestamp,
}

/// A vector to store, content-addressed by [`crate::digest::embedding_digest`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewEmbedding {
    pub digest: Sha256Digest,
    pub model: String,
    pub vector: Vec<f32>,
}

/// A durable embedding job: the text whose vector is still to be computed, written with the records
/// that wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingJob {
    pub digest: Sha256Digest,
    pub model: String,
    pub text: String,
}

/// An `Idempotency-Key` claim: the key, scoped to the caller, and the digest of the request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    pub caller: String,
    pub key: String,
    pub request_digest: Sha256Digest,
}

/// One atomic write: records, the embeddings they need that are not stored yet, and an optional key.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub records: Vec<ValidRecord>,
    /// For each record (same index), the digest of its embedding.
    pub embedding_digests: Vec<Sha256Digest>,
    /// Vectors to insert (any digest already stored is simply reused).
    pub new_embeddings: Vec<NewEmbedding>,
    /// Texts to embed later: their records are committed with `embeddingStatus: pending`.
    pub jobs: Vec<EmbeddingJob>,
    pub idempotency: Option<IdempotencyClaim>,
}

/// What [`AuditStore::write`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteResult {
    /// Committed: one outcome per record, in request order.
    Written(Vec<WriteOutcome>),
    /// The idempotency key was already used with the same request: its original outcomes.
    Replayed(Vec<WriteOutcome>),
    /// The idempotency key was already used with another request; nothing was written.
    KeyConflict,
}

/// A stored record, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    pub id: i64,
    pub kind: Kind,
    pub received_at: Timestamp,
    pub embedding_id: Option<i64>,
    pub embedding_status: EmbeddingStatus,
    /// The record's position in the transparency log, once the sequencer appended it.
    pub log_index: Option<u64>,
    /// The record as written: common, kind-specific and unknown fields.
    pub record: Map<String, Value>,
}

/// A search result: a record and its cosine similarity to the query (1 = same direction).
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    pub record: StoredRecord,
    pub similarity: f64,
}

/// The state of the store, for readiness.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreHealth {
    /// Migrations the binary knows and the database has applied.
    pub migrations_applied: usize,
    /// Migrations the binary knows that the database lacks (readiness fails while any are pending).
    pub migrations_pending: usize,
    /// The dimensions whose vectors have their search index (ascending); searches of a dimension
    /// without one would read every vector.
    pub vector_indexes: Vec<usize>,
    /// The read replica, when one is configured.
    pub read_replica: Option<ReplicaHealth>,
}

/// The read replica as its last check found it. An unusable replica does not make the service
/// unready: reads go to the primary meanwhile.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaHealth {
    /// `up` (reads go to it) or `unusable` (reads go to the primary).
    pub status: &'static str,
    /// How far behind the primary it was, when it answered.
    pub lag_seconds: Option<f64>,
    /// Why it is unusable.
    pub reason: Option<String>,
}

/// Errors of the [`AuditStore`] port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or has no free connection in time. Retryable: answer 503.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database answered with an error nobody expected (a bug or a schema mismatch). Not retryable.
    #[error("database error: {0}")]
    Query(String),
    /// The database holds data the service cannot read back (e.g. an unknown kind). Not retryable.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Why a run of embedding jobs failed; its jobs stay queued either way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
}

/// Errors of the [`Embedder`] port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmbedError {
    /// The provider cannot embed now (not loaded, overloaded, unreachable). Retryable.
    #[error("embedding provider unavailable: {0}")]
    Unavailable(String),
    /// The provider answered with something unusable (wrong dimension, wrong count, NaN).
    #[error("embedding provider returned invalid output: {0}")]
    InvalidOutput(String),
    /// The provider refused these inputs (too long, malformed: an HTTP 400/413/422). Other inputs may
    /// pass; retrying the same ones will not help. Says nothing about the provider's health.
    #[error("embedding provider refused the input: {0}")]
    Rejected(String),
}

/// One record to re-embed: its id, and the digest and text of its embedding under the new model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repoint {
    pub id: i64,
    pub digest: Sha256Digest,
    pub text: String,
}

/// What a call of the sweep found ([`AuditStore::heal_embeddings`]).
#[derive(Debug, Clone, Default)]
pub struct Healed {
    /// Pending records linked to their stored vector.
    pub linked: u64,
    /// Pending records with neither a vector nor a job for it: a breach of "every record has its
    /// vector or a job", left by a vector deleted at a switch under a replica that still ran its
    /// model, or a job deleted under a writer of an earlier model.
    pub without_job: Vec<StoredRecord>,
}

/// What the switch to a new embedding model removed ([`AuditStore::finish_switch`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Switched {
    /// Links kept to vectors of the models records were re-pointed from.
    pub kept_links: u64,
    /// Jobs of other models that no record waited for.
    pub jobs: u64,
    /// Vectors of other models that no record linked.
    pub vectors: u64,
}

/// Persistence of audit records and their embeddings.
///
/// Error contract: [`StoreError::Unavailable`] when no connection could be had in time,
/// [`StoreError::Query`] for any other database failure, [`StoreError::Corrupt`] when stored data cannot
/// be decoded. A failed call has changed nothing.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Writes records, their missing embeddings and the idempotency claim in **one transaction**: all of
    /// it or nothing. Returns only after the commit. A record whose content digest is already stored is
    /// not written again: its outcome is the stored one with status `Duplicate`. Holds under concurrency.
    async fn write(&self, request: WriteRequest) -> Result<WriteResult, StoreError>;

    /// Which of these embedding digests are already stored (an answer may come from what the store
    /// remembers having stored: vectors are never deleted).
    async fn existing_embeddings(
        &self,
        digests: &[Sha256Digest],
    ) -> Result<Vec<Sha256Digest>, StoreError>;

    /// The request digest and outcomes recorded under an idempotency key, if any.
    async fn idempotent_result(
        &self,
        caller: &str,
        key: &str,
    ) -> Result<Option<(Sha256Digest, Vec<WriteOutcome>)>, StoreError>;

    /// One record by kind and id.
    async fn get(&self, kind: Kind, id: i64) -> Result<Option<StoredRecord>, StoreError>;

    /// The records of a correlation id, all kinds, ordered by `createdAt`, then `id`, after
    /// `query.after`: at most `query.limit + 1` (the one more tells that another page follows).
    async fn trail(
        &self,
        query: &crate::query::TrailQuery,
    ) -> Result<Vec<StoredRecord>, StoreError>;

    /// The records that pass `query.filters`, newest first by `receivedAt`, then `id`, after
    /// `query.after`: at most `query.limit + 1`. Served by an index whatever the filters.
    async fn list(&self, query: &crate::query::ListQuery) -> Result<Vec<StoredRecord>, StoreError>;

    /// The records nearest to `vector` by cosine similarity, best first, among the records whose
    /// embedding was made by `model` and that pass `filters`; at most `limit`. Filters never silently
    /// shrink the answer: when fewer than `limit` records are returned, fewer exist.
    async fn search(
        &self,
        vector: Vec<f32>,
        model: &str,
        filters: &SearchFilters,
        limit: usize,
    ) -> Result<Vec<SearchHit>, StoreError>;

    /// Claims up to `limit` open jobs of `model` whose time has come, oldest first, for `lease`
    /// (replicas never hold the same job; a lease that ends gives its jobs to the next claim). Error
    /// contract: [`StoreError`]; nothing claimed on error.
    async fn claim_jobs(
        &self,
        model: &str,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<crate::jobs::ClaimedJob>, StoreError>;

    /// Stores the vectors of finished jobs, links every record waiting for their texts and marks the
    /// jobs done, in one transaction; returns how many jobs. Vectors already stored are kept.
    async fn complete_jobs(
        &self,
        model: &str,
        done: &[(crate::digest::Sha256Digest, Vec<f32>)],
    ) -> Result<usize, StoreError>;

    /// Charges failed attempts: each job's attempts + 1, its last error, and its verdict (the time of
    /// its next attempt, or parked). Its lease ends.
    async fn fail_jobs(&self, failed: &[crate::jobs::FailedJob]) -> Result<(), StoreError>;

    /// Ends the leases of `digests` without charging them (the provider was unavailable).
    async fn release_jobs(&self, digests: &[crate::digest::Sha256Digest])
    -> Result<(), StoreError>;

    /// Jobs, open and parked (or parked only), newest first, at most `limit`.
    async fn list_jobs(
        &self,
        parked_only: bool,
        limit: usize,
    ) -> Result<Vec<crate::jobs::JobInfo>, StoreError>;

    /// Re-queues parked jobs (all, or those of `digests`): attempts back to 0, due now. Returns how many.
    async fn retry_parked(
        &self,
        digests: Option<&[crate::digest::Sha256Digest]>,
    ) -> Result<u64, StoreError>;

    /// How many jobs are parked.
    async fn parked_jobs(&self) -> Result<i64, StoreError>;

    /// The sweep and the retirement of finished jobs: links up to `limit` pending records whose vector
    /// is stored (whatever left them pending), then deletes the jobs finished more than `grace` ago,
    /// linking their records once more first. Returns how many records it linked, and the pending
    /// records of the same slice that have neither a vector nor a job (for the caller to queue
    /// again). `grace` must exceed the longest a write transaction can last. Error contract:
    /// [`StoreError`], nothing changed on error.
    async fn heal_embeddings(
        &self,
        limit: usize,
        grace: std::time::Duration,
    ) -> Result<Healed, StoreError>;

    /// How many embedding jobs wait (finished ones excluded).
    async fn pending_jobs(&self) -> Result<i64, StoreError>;

    /// Records stored without their vector (counted up to [`Backlog::COUNT_CAP`]) and how long the
    /// oldest of them has waited.
    async fn embedding_backlog(&self) -> Result<Backlog, StoreError>;

    /// Records with `id > after_id`, ascending, at most `limit`, that have no vector of `model` and no
    /// job for one (records of an earlier model, for re-embedding).
    async fn records_without_model(
        &self,
        model: &str,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError>;

    /// Re-embedding: points each record at the vector of `model` for its text, in one transaction. A
    /// vector already stored is linked at once; otherwise the record waits (`pending`) for a durable job
    /// of `model`. The vector it pointed at is kept linked, so that searches of the model it came from
    /// still find it until [`AuditStore::finish_switch`]. Jobs of other models that no record waits for
    /// any more are deleted. Only the embedding links change; the record's content never does. Returns
    /// how many records moved.
    async fn repoint_embeddings(&self, model: &str, items: &[Repoint])
    -> Result<usize, StoreError>;

    /// Checks the database: reachable, migrations applied.
    /// A model other than `model` that a record received in the last `window` was embedded with, or
    /// waits for a job of: a replica still runs it.
    async fn other_model_in_use(
        &self,
        model: &str,
        window: std::time::Duration,
    ) -> Result<Option<String>, StoreError>;

    /// The switch to `model`, once every record points at it: drops the links kept for the models
    /// records were re-pointed from, the jobs of other models no record waits for, and the vectors of
    /// other models no record links (at most `batch` rows a statement).
    async fn finish_switch(&self, model: &str, batch: usize) -> Result<Switched, StoreError>;

    async fn health(&self) -> Result<StoreHealth, StoreError>;
}

/// Turns texts into vectors.
///
/// Error contract: [`EmbedError::Unavailable`] when the provider cannot answer now,
/// [`EmbedError::InvalidOutput`] when its answer is unusable. On success, one L2-normalised vector of
/// [`Embedder::dimension`] finite numbers per text, in order.
#[async_trait]
pub trait Embedder: Send + Sync {
    /// The provider's name (`local`, `openai`), for metrics and logs.
    fn provider(&self) -> &'static str;
    /// The identity of the model, stored with every vector (e.g. `all-MiniLM-L6-v2@53aa5117`).
    fn model_id(&self) -> &str;
    /// The dimension of the vectors.
    fn dimension(&self) -> usize;
    /// Embeds the texts.
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError>;
    /// What the provider's own bookkeeping says (e.g. an open circuit), for readiness. Cheap, no call.
    fn health(&self) -> ProviderHealth {
        ProviderHealth::Up
    }
}

/// The state an [`Embedder`] reports without calling its provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderHealth {
    Up,
    /// Calls are failing or refused; with policy `defer` writes still succeed as `pending`.
    Degraded(String),
}

/// Who a caller is, as the identity provider (Kubernetes TokenReview) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `system:serviceaccount:<namespace>:<name>` for service accounts.
    pub username: String,
    pub groups: Vec<String>,
}

/// What a request wants to do; each maps to one authorization question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// Write audit records (verb `create`).
    Write,
    /// Read audit records, trails, search (verb `get`).
    Read,
    /// Scrape `/metrics` (non-resource URL `/metrics`, verb `get`).
    Metrics,
    /// Place a legal hold (resource `legalholds`, verb `create`).
    HoldCreate,
    /// Release a legal hold (resource `legalholds`, verb `delete`).
    HoldRelease,
    /// List legal holds (resource `legalholds`, verb `list`).
    HoldList,
}

/// The records waiting for their vector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    /// How many (at most [`Backlog::COUNT_CAP`]: counting further would cost a scrape too much).
    pub records: i64,
    /// Seconds since the oldest of them was stored (0 when there is none).
    pub oldest_seconds: f64,
}

impl Backlog {
    pub const COUNT_CAP: i64 = 1_000_000;
}

/// Errors of the [`Authenticator`] port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token is unknown, expired, malformed or for another audience (401).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The identity provider could not answer (timeout, 5xx, unreachable): 503, never cached.
    #[error("identity provider unavailable: {0}")]
    Unavailable(String),
}

/// Authentication and authorization of callers.
///
/// Error contract: [`AuthError::Unauthenticated`] only when the provider said no;
/// [`AuthError::Unavailable`] when it could not say. `authorize` answers `Ok(false)` for "not allowed".
/// Implementations never log or return the token.
#[async_trait]
pub trait Authenticator: Send + Sync {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError>;
    /// The answer `authenticate` would give at once, without asking anyone (a cached decision), or
    /// `None` when answering needs a review.
    fn known(&self, _token: &str) -> Option<Result<Identity, AuthError>> {
        None
    }
    async fn authorize(&self, who: &Identity, access: Access) -> Result<bool, AuthError>;
}
