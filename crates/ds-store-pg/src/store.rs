//! [`PgStore`]: the [`AuditStore`] port on PostgreSQL.

use crate::connect::Target;
use crate::error::PgStoreError;
use crate::group::{self, GroupCommitSettings, Queued, pool_error};
use crate::pgv::Embedding;
use crate::replica::{Replica, ReplicaSettings, ReplicaStatus};
use crate::rows::{RecordRow, SearchRow};
use crate::schema::{audit_records, embeddings, idempotency_keys};
use crate::write::status_of;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool::Runtime;
use diesel::prelude::*;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use ds_domain::digest::Sha256Digest;
use ds_domain::jobs::{ClaimedJob, FailedJob, JobInfo};
use ds_domain::kind::Kind;
use ds_domain::ports::{
    AuditStore, Backlog, EmbeddingStatus, Healed, ReplicaHealth, Repoint, SearchHit, StoreError,
    StoreHealth, StoredRecord, Switched, WriteOutcome, WriteRequest, WriteResult, WriteStatus,
};
use ds_domain::query::{ListQuery, TrailQuery};
use ds_domain::search::SearchFilters;
use ds_domain::time::Timestamp;
use ds_metrics::labels::{Fallback, Pool as PoolLabel};
use serde_json::{Map, Value};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

/// Connection pool settings.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_size: usize,
    /// How long a request waits for a free connection before the store answers `Unavailable`.
    pub wait_timeout: Duration,
    /// How long opening a new connection may take.
    pub connect_timeout: Duration,
    /// PostgreSQL's `statement_timeout` on every connection (zero: none).
    pub statement_timeout: Duration,
    /// How concurrent writes share transactions.
    pub group_commit: GroupCommitSettings,
    /// pgvector's `hnsw.ef_search`: candidates an HNSW search keeps (recall against latency).
    pub ef_search: u32,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_size: 16,
            wait_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            group_commit: GroupCommitSettings::default(),
            ef_search: 100,
        }
    }
}

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool<AsyncPgConnection>,
    group_commit: GroupCommitSettings,
    /// The group-commit queue, started on first write.
    writer: Arc<OnceLock<mpsc::Sender<Queued>>>,
    /// Writes queued or committing (what [`PgStore::close`] waits for).
    pending: TaskTracker,
    /// The runtime the store was built on. The group commits run there, not on the runtime of
    /// whichever caller writes first: actix gives each HTTP worker its own single-threaded runtime,
    /// and all database I/O would otherwise share one worker's thread.
    runtime: Option<tokio::runtime::Handle>,
    /// Digests of vectors this process saw stored: [`AuditStore::existing_embeddings`] answers from it
    /// without a round trip (the inline write of a recurring text), and the database only for digests
    /// it does not hold. Vectors are deleted only by the switch to another model
    /// ([`AuditStore::finish_switch`]), refused while a replica of their model writes; an entry gone
    /// stale anyway (a switch forced under such a replica) leaves its record pending without a job,
    /// which the sweep queues again.
    known_vectors: Arc<quick_cache::sync::Cache<Sha256Digest, ()>>,
    /// Where and how to connect (TLS as the URL's `sslmode` says).
    pub(crate) target: Arc<Target>,
    /// The transparency log's sequencer works on a connection of its own, outside the pool: requests
    /// never wait for it and it never waits for them. Opened on first use, dropped after a failure.
    pub(crate) sequencer: Arc<tokio::sync::Mutex<Option<AsyncPgConnection>>>,
    /// The last record id the sequencer's sweep looked at (from 0 at start: a replica sweeps the
    /// whole table once, `log.batch` records per run).
    pub(crate) swept_to: Arc<std::sync::atomic::AtomicI64>,
    /// Where the embedding sweep goes on: the last digest of its previous slice (empty: the first).
    pub(crate) heal_from: Arc<tokio::sync::Mutex<Vec<u8>>>,
    /// `statement_timeout` and connect timeout of connections opened outside the pool.
    pub(crate) own_connection: (Duration, Duration),
    /// The streaming replica that reads go to while it is usable (`database.read_url`).
    replica: Option<Arc<Replica>>,
    /// Where reads go: as the replica's state says, or pinned ([`PgStore::pinned`]).
    pub(crate) route: Route,
}

/// Where one read goes: see [`PgStore::read_plan`].
#[derive(Debug)]
pub(crate) struct ReadPlan {
    /// On the replica (else the primary).
    replica: bool,
    /// No second try elsewhere: the primary, or a store pinned to the replica.
    pinned: bool,
}

/// Runs a read where the store's reads go, and again on the primary when the replica's answer
/// cannot stand (see [`PgStore::settle`]): `read!(store, log, miss, |conn| async { ... })`, the
/// body an async block over `conn: &mut AsyncPgConnection` answering `Result<T, PgStoreError>`.
macro_rules! read {
    ($store:expr, $log:expr, $miss:expr, |$conn:ident| $body:expr) => {{
        let store = &$store;
        let mut plan = store.read_plan($log);
        loop {
            let answer = match store.read_connection(&plan).await {
                Ok(mut pooled) => {
                    let $conn: &mut AsyncPgConnection = &mut pooled;
                    $body.await
                }
                Err(e) => Err(e),
            };
            match store.settle(&plan, answer, $miss) {
                Ok(answer) => break answer,
                Err(next) => plan = next,
            }
        }
    }};
}
pub(crate) use read;

/// Where the reads of a [`PgStore`] go.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    /// The replica while it is usable, else the primary.
    Auto,
    /// Where the first read was answered (the replica if usable then, else the primary), and
    /// there only: the reads of an export agree with each other, or fail.
    Pinned(Arc<OnceLock<bool>>),
}

/// A pool of connections to `url`, each set up alike: `statement_timeout`, pgvector's search settings.
fn build_pool(
    url: &str,
    settings: &PoolSettings,
    max_size: usize,
) -> Result<(Pool<AsyncPgConnection>, Arc<Target>), PgStoreError> {
    let statement_timeout_ms = settings.statement_timeout.as_millis();
    let ef_search = settings.ef_search.clamp(1, 1000);
    let target = Arc::new(Target::parse(url)?);
    let connect = target.clone();
    let mut config = ManagerConfig::<AsyncPgConnection>::default();
    // No `SELECT 1` on every checkout (the default): a broken connection fails its statement and
    // is dropped by the pool; the write path retries nothing that was not committed.
    config.recycling_method = diesel_async::pooled_connection::RecyclingMethod::Fast;
    config.custom_setup = Box::new(move |_url| {
        let connect = connect.clone();
        Box::pin(async move {
            let mut conn = connect.connect().await?;
            // pgvector 0.8 iterative index scans: the HNSW scan goes on until `limit` rows pass
            // the filters instead of stopping after ef_search candidates, so filters drop no
            // result. Set per connection (placeholders until pgvector loads in the session).
            conn.batch_execute(&format!(
                "SET statement_timeout = {statement_timeout_ms}; \
                 SET hnsw.iterative_scan = strict_order; SET hnsw.ef_search = {ef_search}"
            ))
            .await
            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        })
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, config);
    let pool = Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(settings.wait_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .recycle_timeout(Some(settings.connect_timeout))
        .build()
        .map_err(|e| PgStoreError::Pool(e.to_string()))?;
    Ok((pool, target))
}

/// How many vector digests [`PgStore`] remembers as stored (~3 MiB).
pub const KNOWN_VECTORS: usize = 65_536;

impl PgStore {
    /// Builds the pool. Connections are opened lazily: a database that is not up yet is not an error here.
    pub fn new(database_url: &str, settings: &PoolSettings) -> Result<Self, PgStoreError> {
        let (pool, target) = build_pool(database_url, settings, settings.max_size)?;
        Ok(PgStore {
            pool,
            group_commit: settings.group_commit.clone(),
            writer: Arc::new(OnceLock::new()),
            pending: TaskTracker::new(),
            runtime: tokio::runtime::Handle::try_current().ok(),
            known_vectors: Arc::new(quick_cache::sync::Cache::new(KNOWN_VECTORS)),
            target,
            sequencer: Arc::default(),
            swept_to: Arc::default(),
            heal_from: Arc::default(),
            own_connection: (settings.statement_timeout, settings.connect_timeout),
            replica: None,
            route: Route::Auto,
        })
    }

    /// Reads (the list, trails, search, reads by id, exports) go to the streaming replica of
    /// `replica.url` while it is usable; see [`crate::replica`]. Its connections are set up as the
    /// primary's (`settings`).
    pub fn with_replica(
        mut self,
        replica: &ReplicaSettings,
        settings: &PoolSettings,
    ) -> Result<Self, PgStoreError> {
        let (pool, _) = build_pool(&replica.url, settings, replica.pool_size)?;
        self.replica = Some(Arc::new(Replica::new(pool, replica.max_lag)));
        Ok(self)
    }

    /// Measures the replica's lag and records whether reads may go to it (`None`: no replica).
    /// Called every [`ReplicaSettings::check_every`] by the server.
    pub async fn check_replica(&self) -> Option<ReplicaStatus> {
        let replica = self.replica.as_ref()?;
        let primary = match self.conn().await {
            Ok(mut c) => crate::replica::primary_position(&mut c).await,
            Err(e) => Err(e),
        };
        Some(replica.check(primary).await)
    }

    /// What the last check of the replica found (`None`: no replica).
    pub fn replica_status(&self) -> Option<ReplicaStatus> {
        self.replica.as_ref().map(|r| r.status())
    }

    /// The replica pool's occupancy, as [`PgStore::pool_status`] (`None`: no replica).
    pub fn replica_pool_status(&self) -> Option<(usize, usize, usize)> {
        self.replica.as_ref().map(|r| {
            let s = r.pool.status();
            (s.size, s.available, s.max_size)
        })
    }

    /// This store with its reads pinned to one database for a sequence of reads that must agree
    /// with each other (an export's pages and its checkpoints): the one that answers the first
    /// read (the replica if usable then, else the primary); a pinned read never moves to the other.
    pub fn pinned(&self) -> PgStore {
        let mut pinned = self.clone();
        pinned.route = Route::Pinned(Arc::new(OnceLock::new()));
        pinned
    }

    /// Where a read goes first (see [`crate::replica`]): the replica when it is usable (or the
    /// store is pinned there), else the primary. `log`: a read of the log's checkpoints, which goes
    /// to the replica only when pinned there (proofs stay with the primary's newest checkpoint).
    /// Run a read through [`read!`], which follows the plan.
    pub(crate) fn read_plan(&self, log: bool) -> ReadPlan {
        let Some(replica) = &self.replica else {
            return ReadPlan {
                replica: false,
                pinned: true,
            };
        };
        let (auto, pinned_to) = match &self.route {
            Route::Auto => (!log, None),
            // Not pinned yet: the first read goes where any read goes, checkpoints included.
            Route::Pinned(at) => (true, at.get().copied()),
        };
        if let Some(on_replica) = pinned_to {
            return ReadPlan {
                replica: on_replica,
                pinned: true,
            };
        }
        let usable = auto && replica.usable();
        if auto && !usable {
            ds_metrics::DB_REPLICA_FALLBACKS
                .with((Fallback::Unusable,))
                .increment(1);
        }
        ReadPlan {
            replica: usable,
            pinned: !usable,
        }
    }

    /// A connection where `plan` says.
    pub(crate) async fn read_connection(
        &self,
        plan: &ReadPlan,
    ) -> Result<Object<AsyncPgConnection>, PgStoreError> {
        match (&self.replica, plan.replica) {
            (Some(r), true) => r.pool.get().await.map_err(group::pool_error),
            _ => self.conn().await,
        }
    }

    /// What to do with `answer`, read where `plan` said: the answer, or a plan to read again on
    /// the primary (a replica's answer for which `miss` is true, such as a record it does not
    /// have yet; a replica without a connection to give, or one that cancelled the read in a
    /// conflict with its recovery). Never a second try when pinned.
    pub(crate) fn settle<T>(
        &self,
        plan: &ReadPlan,
        answer: Result<T, PgStoreError>,
        miss: impl Fn(&T) -> bool,
    ) -> Result<Result<T, PgStoreError>, ReadPlan> {
        let pool = if plan.replica {
            PoolLabel::Replica
        } else {
            PoolLabel::Primary
        };
        let retry = |reason: Fallback| {
            ds_metrics::DB_REPLICA_FALLBACKS
                .with((reason,))
                .increment(1);
            Err(ReadPlan {
                replica: false,
                pinned: true,
            })
        };
        match answer {
            Ok(v) if plan.pinned || !miss(&v) => {
                ds_metrics::DB_READS.with((pool,)).increment(1);
                if let Route::Pinned(at) = &self.route {
                    let _ = at.set(plan.replica);
                }
                Ok(Ok(v))
            }
            Ok(_) => retry(Fallback::NotFound),
            Err(e) if plan.pinned || !e.is_unavailable() => Ok(Err(e)),
            Err(e) => {
                if !e.is_retryable()
                    && let Some(r) = &self.replica
                {
                    r.failed(&e);
                }
                retry(Fallback::Unavailable)
            }
        }
    }

    /// Test hook (feature `test-hooks`): writes `requests` as one group, as group commit does when
    /// they arrive together: one transaction (or each alone if the group fails), one answer per
    /// request, in order. Group commit forms groups only under load; this forms one on purpose.
    #[cfg(feature = "test-hooks")]
    pub async fn commit_as_one_group(
        &self,
        requests: Vec<WriteRequest>,
    ) -> Vec<Result<WriteResult, StoreError>> {
        let (queued, answers): (Vec<Queued>, Vec<_>) = requests
            .into_iter()
            .map(|request| {
                let (reply, answer) = oneshot::channel();
                (
                    Queued {
                        request,
                        reply,
                        pending: None,
                    },
                    answer,
                )
            })
            .unzip();
        group::commit(&self.pool, &self.target, queued).await;
        let mut results = Vec::with_capacity(answers.len());
        for answer in answers {
            results.push(receive(answer).await);
        }
        results
    }

    /// Shutdown: waits until every write that was handed to group commit has committed (or was
    /// dropped because its caller left), then closes the pool: idle connections are closed at once,
    /// connections in use when they are returned; the sequencer's connection is closed after its
    /// current run. Bound it with a timeout.
    pub async fn close(&self) {
        self.pending.close();
        self.pending.wait().await;
        self.pool.close();
        if let Some(r) = &self.replica {
            r.pool.close();
        }
        // The sequencer's own connection (after its current run, which holds it).
        *self.sequencer.lock().await = None;
    }

    /// Pool occupancy: (connections open, of which idle, most allowed).
    pub fn pool_status(&self) -> (usize, usize, usize) {
        let s = self.pool.status();
        (s.size, s.available, s.max_size)
    }

    /// PostgreSQL's plan of the statement a page of the list runs for `query` (see
    /// `docs/api.md`, "List records"): `EXPLAIN`, or with `analyze` `EXPLAIN (ANALYZE, BUFFERS)`.
    /// For the index tests and the bench, which compare it with what the service answers.
    pub async fn explain_list(
        &self,
        query: &ListQuery,
        analyze: bool,
    ) -> Result<Vec<String>, PgStoreError> {
        let mut conn = self.conn().await?;
        crate::query::explain_list(&mut conn, query, analyze).await
    }

    pub(crate) async fn conn(&self) -> Result<Object<AsyncPgConnection>, PgStoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    fn all_stored(rows: Vec<RecordRow>) -> Result<Vec<StoredRecord>, PgStoreError> {
        rows.into_iter().map(Self::to_stored).collect()
    }

    pub(crate) fn to_stored(row: RecordRow) -> Result<StoredRecord, PgStoreError> {
        let kind: Kind = row
            .kind
            .parse()
            .map_err(|e| PgStoreError::Corrupt(format!("{e}")))?;
        let mut record = Map::new();
        record.insert("name".into(), Value::String(row.name));
        record.insert("namespace".into(), Value::String(row.namespace));
        record.insert("phase".into(), Value::String(row.phase));
        if let Some(m) = row.message {
            record.insert("message".into(), Value::String(m));
        }
        let ts = |t: DateTime<Utc>| Value::String(Timestamp::from_utc(t).to_rfc3339());
        record.insert("createdAt".into(), ts(row.created_at));
        if let Some(t) = row.started_at {
            record.insert("startedAt".into(), ts(t));
        }
        if let Some(t) = row.completed_at {
            record.insert("completedAt".into(), ts(t));
        }
        record.insert("correlationId".into(), Value::String(row.correlation_id));
        match row.details {
            Value::Object(m) => record.extend(m),
            other => {
                return Err(PgStoreError::Corrupt(format!(
                    "details is not an object: {}",
                    type_name(&other)
                )));
            }
        }
        match row.unknown_fields {
            Value::Object(m) => {
                for (k, v) in m {
                    record.entry(k).or_insert(v);
                }
            }
            other => {
                return Err(PgStoreError::Corrupt(format!(
                    "unknown_fields is not an object: {}",
                    type_name(&other)
                )));
            }
        }
        Ok(StoredRecord {
            id: row.id,
            kind,
            received_at: Timestamp::from_utc(row.received_at),
            embedding_id: row.embedding_id,
            embedding_status: status_of(row.embedding_id),
            log_index: None,
            record,
        })
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[async_trait]
impl AuditStore for PgStore {
    async fn write(&self, request: WriteRequest) -> Result<WriteResult, StoreError> {
        let queue = self.writer.get_or_init(|| {
            group::start(
                self.runtime.clone(),
                self.pool.clone(),
                self.target.clone(),
                self.group_commit.clone(),
            )
        });
        // What this write will prove stored once committed: the vectors it carries, and the vector
        // of each record it creates linked (a duplicate's link may be another model's vector).
        let carried: Vec<Sha256Digest> = request.new_embeddings.iter().map(|e| e.digest).collect();
        let linked = request.embedding_digests.clone();
        let (reply, answer) = oneshot::channel();
        queue
            .send(Queued {
                request,
                reply,
                pending: Some(self.pending.token()),
            })
            .await
            .map_err(|_| PgStoreError::Pool("the write queue is closed".into()))?;
        let result = receive(answer).await;
        match &result {
            Ok(WriteResult::Written(outcomes)) => {
                for digest in carried {
                    self.known_vectors.insert(digest, ());
                }
                for (outcome, digest) in outcomes.iter().zip(linked) {
                    if outcome.status == WriteStatus::Created
                        && outcome.embedding_status == EmbeddingStatus::Stored
                    {
                        self.known_vectors.insert(digest, ());
                    }
                }
            }
            Ok(_) => {}
            Err(_) => ds_metrics::DATABASE_WRITE_ERRORS.increment(1),
        }
        result
    }

    async fn existing_embeddings(
        &self,
        digests: &[Sha256Digest],
    ) -> Result<Vec<Sha256Digest>, StoreError> {
        let (mut known, unknown): (Vec<Sha256Digest>, Vec<Sha256Digest>) = digests
            .iter()
            .partition(|d| self.known_vectors.get(*d).is_some());
        if unknown.is_empty() {
            return Ok(known);
        }
        let mut conn = self.conn().await?;
        let wanted: Vec<&[u8]> = unknown.iter().map(|d| d.as_slice()).collect();
        let found: Vec<Vec<u8>> = embeddings::table
            .filter(embeddings::digest.eq_any(&wanted))
            .select(embeddings::digest)
            .load(&mut conn)
            .await
            .map_err(PgStoreError::from)?;
        for digest in found
            .into_iter()
            .filter_map(|d| <Sha256Digest>::try_from(d.as_slice()).ok())
        {
            self.known_vectors.insert(digest, ());
            known.push(digest);
        }
        Ok(known)
    }

    async fn idempotent_result(
        &self,
        caller: &str,
        key: &str,
    ) -> Result<Option<(Sha256Digest, Vec<WriteOutcome>)>, StoreError> {
        let mut conn = self.conn().await?;
        let row: Option<(Vec<u8>, Value)> = idempotency_keys::table
            .find((caller, key))
            .select((idempotency_keys::request_digest, idempotency_keys::outcomes))
            .first(&mut conn)
            .await
            .optional()
            .map_err(PgStoreError::from)?;
        let Some((digest, outcomes)) = row else {
            return Ok(None);
        };
        let digest = <Sha256Digest>::try_from(digest.as_slice()).map_err(|_| {
            StoreError::Corrupt("idempotency request digest is not 32 bytes".into())
        })?;
        let outcomes: Vec<WriteOutcome> = serde_json::from_value(outcomes)
            .map_err(|e| StoreError::Corrupt(format!("idempotency outcomes: {e}")))?;
        Ok(Some((digest, outcomes)))
    }

    async fn get(&self, kind: Kind, id: i64) -> Result<Option<StoredRecord>, StoreError> {
        // A replica that lags does not have a record just written: read again on the primary.
        Ok(read!(self, false, Option::is_none, |conn| async {
            let row: Option<RecordRow> = audit_records::table
                .filter(audit_records::id.eq(id))
                .filter(audit_records::kind.eq(kind.as_str()))
                .select(RecordRow::as_select())
                .first(conn)
                .await
                .optional()?;
            let mut records: Vec<StoredRecord> =
                row.map(Self::to_stored).transpose()?.into_iter().collect();
            crate::tlog::attach_log_indexes(conn, &mut records).await?;
            Ok(records.pop())
        })?)
    }

    async fn trail(&self, query: &TrailQuery) -> Result<Vec<StoredRecord>, StoreError> {
        Ok(read!(self, false, |_| false, |conn| async {
            let rows = crate::query::trail(conn, query).await?;
            let mut records = Self::all_stored(rows)?;
            crate::tlog::attach_log_indexes(conn, &mut records).await?;
            Ok::<_, PgStoreError>(records)
        })?)
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<StoredRecord>, StoreError> {
        Ok(read!(self, false, |_| false, |conn| async {
            let rows = crate::query::list(conn, query).await?;
            let mut records = Self::all_stored(rows)?;
            crate::tlog::attach_log_indexes(conn, &mut records).await?;
            Ok::<_, PgStoreError>(records)
        })?)
    }

    async fn search(
        &self,
        vector: Vec<f32>,
        model: &str,
        filters: &SearchFilters,
        limit: usize,
    ) -> Result<Vec<SearchHit>, StoreError> {
        let vector = Embedding(vector);
        let limit = i64::try_from(limit).unwrap_or(100);
        Ok(read!(self, false, |_| false, |conn| search(
            conn, &vector, model, filters, limit
        ))?)
    }

    async fn claim_jobs(
        &self,
        model: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let mut conn = self.conn().await?;
        Ok(crate::jobs::claim(&mut conn, model, limit, lease).await?)
    }

    async fn complete_jobs(
        &self,
        model: &str,
        done: &[(Sha256Digest, Vec<f32>)],
    ) -> Result<usize, StoreError> {
        let mut conn = self.conn().await?;
        let n = crate::jobs::complete(&mut conn, model, done).await?;
        for (d, _) in done {
            self.known_vectors.insert(*d, ());
        }
        Ok(n)
    }

    async fn fail_jobs(&self, failed: &[FailedJob]) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        Ok(crate::jobs::fail(&mut conn, failed).await?)
    }

    async fn release_jobs(&self, digests: &[Sha256Digest]) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        Ok(crate::jobs::release(&mut conn, digests).await?)
    }

    async fn list_jobs(&self, parked_only: bool, limit: usize) -> Result<Vec<JobInfo>, StoreError> {
        let mut conn = self.conn().await?;
        Ok(crate::jobs::list(&mut conn, parked_only, limit).await?)
    }

    async fn retry_parked(&self, digests: Option<&[Sha256Digest]>) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        Ok(crate::jobs::retry_parked(&mut conn, digests).await?)
    }

    async fn parked_jobs(&self) -> Result<i64, StoreError> {
        let mut conn = self.conn().await?;
        Ok(crate::jobs::parked_count(&mut conn).await?)
    }

    async fn heal_embeddings(&self, limit: usize, grace: Duration) -> Result<Healed, StoreError> {
        let mut conn = self.conn().await?;
        let mut from = self.heal_from.lock().await;
        let healed = crate::jobs::heal(&mut conn, limit, grace, &mut from).await?;
        Ok(Healed {
            linked: healed.linked,
            without_job: Self::all_stored(healed.without_job)?,
        })
    }

    async fn embedding_backlog(&self) -> Result<Backlog, StoreError> {
        let mut conn = self.conn().await?;
        let row: BacklogRow = diesel::sql_query(BACKLOG_SQL)
            .bind::<diesel::sql_types::BigInt, _>(Backlog::COUNT_CAP)
            .get_result(&mut conn)
            .await
            .map_err(PgStoreError::from)?;
        Ok(Backlog {
            records: row.records,
            oldest_seconds: row.oldest_seconds.max(0.0),
        })
    }

    async fn pending_jobs(&self) -> Result<i64, StoreError> {
        let mut conn = self.conn().await?;
        Ok(crate::jobs::open_count(&mut conn).await?)
    }

    async fn records_without_model(
        &self,
        model: &str,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let mut conn = self.conn().await?;
        let rows = crate::reembed::records_without_model(&mut conn, model, after_id, limit).await?;
        Ok(Self::all_stored(rows)?)
    }

    async fn repoint_embeddings(
        &self,
        model: &str,
        items: &[Repoint],
    ) -> Result<usize, StoreError> {
        if items.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn().await?;
        Ok(crate::reembed::repoint(&mut conn, model, items).await?)
    }

    async fn other_model_in_use(
        &self,
        model: &str,
        window: Duration,
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn().await?;
        Ok(crate::reembed::other_model_in_use(&mut conn, model, window).await?)
    }

    async fn finish_switch(&self, model: &str, batch: usize) -> Result<Switched, StoreError> {
        let mut conn = self.conn().await?;
        Ok(crate::reembed::finish_switch(&mut conn, model, batch).await?)
    }

    async fn health(&self) -> Result<StoreHealth, StoreError> {
        let mut conn = self.conn().await?;
        let applied: Vec<String> =
            diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
                .load::<Version>(&mut conn)
                .await
                .map(|v| v.into_iter().map(|v| v.version).collect())
                .unwrap_or_default();
        let known = crate::known_migrations();
        let pending = known.iter().filter(|k| !applied.contains(k)).count();
        let vector_indexes = if pending == 0 {
            crate::vector_indexes(&mut conn).await?
        } else {
            Vec::new()
        };
        Ok(StoreHealth {
            migrations_applied: known.len() - pending,
            migrations_pending: pending,
            vector_indexes,
            read_replica: self.replica_status().map(|r| ReplicaHealth {
                status: if r.usable { "up" } else { "unusable" },
                lag_seconds: r.lag.map(|l| l.as_secs_f64()),
                reason: r.reason,
            }),
        })
    }
}

/// The records nearest to `vector` (see [`AuditStore::search`]), on one connection.
async fn search(
    conn: &mut AsyncPgConnection,
    vector: &Embedding,
    model: &str,
    filters: &SearchFilters,
    limit: i64,
) -> Result<Vec<SearchHit>, PgStoreError> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};
    let kinds: Option<Vec<&str>> = filters
        .kinds
        .as_ref()
        .map(|ks| ks.iter().map(|k| k.as_str()).collect());
    // The connection carries the HNSW settings (see `build_pool`): one round trip.
    let rows: Vec<SearchRow> = diesel::sql_query(search_sql(vector.0.len()))
        .bind::<crate::pgv::Vector, _>(vector)
        .bind::<Text, _>(model)
        .bind::<Nullable<Array<Text>>, _>(kinds)
        .bind::<Nullable<Text>, _>(filters.namespace.as_deref())
        .bind::<Nullable<Timestamptz>, _>(filters.since.map(|t| t.as_utc()))
        .bind::<Nullable<Timestamptz>, _>(filters.until.map(|t| t.as_utc()))
        .bind::<BigInt, _>(limit)
        .load::<SearchRow>(conn)
        .await?;
    let mut hits = rows
        .into_iter()
        .map(|r| {
            Ok(SearchHit {
                similarity: 1.0 - r.distance,
                record: PgStore::to_stored(r.record)?,
            })
        })
        .collect::<Result<Vec<_>, PgStoreError>>()?;
    let ids: Vec<i64> = hits.iter().map(|h| h.record.id).collect();
    let indexes = crate::tlog::log_indexes(conn, &ids).await?;
    for h in &mut hits {
        h.record.log_index = indexes.get(&h.record.id).copied();
    }
    Ok(hits)
}

/// Nearest records by cosine distance, ordered best first (ties by id), filters applied inside the
/// scan, for vectors of `dimension`. A record is found through the vector it points at and, while the
/// deployment moves to another model, through the one it kept of the model it was re-pointed from
/// (`previous_embeddings`): a vector is of one model, so a search (of one model) meets each record
/// once. Each way is its own branch with its own `ORDER BY ... LIMIT`, so that the planner chooses
/// per branch as it would for a plain join: through the HNSW index with unselective filters,
/// through a B-tree on the records and an exact sort with selective ones (an HNSW graph can leave a
/// vector unreachable; the exact path never misses it). Each branch names the expression and
/// predicate of that dimension's index (`embeddings_hnsw_<dimension>`, see
/// [`crate::ensure_vector_index`]); the dimension is a number formatted in, never a value from a
/// request.
fn search_sql(dimension: usize) -> String {
    let branch = |from: &str, gate: &str| {
        format!(
            "(
    SELECT r.id, r.kind, r.name, r.namespace, r.phase, r.correlation_id, r.message, r.created_at,
           r.started_at, r.completed_at, r.received_at, r.details, r.unknown_fields, r.embedding_id,
           (e.embedding::vector({dimension}) <=> $1) AS distance
    {from}
    WHERE {gate}e.model = $2 AND vector_dims(e.embedding) = {dimension}
      AND ($3::text[] IS NULL OR r.kind = ANY($3))
      AND ($4::text IS NULL OR r.namespace = $4)
      AND ($5::timestamptz IS NULL OR r.created_at >= $5)
      AND ($6::timestamptz IS NULL OR r.created_at < $6)
    ORDER BY e.embedding::vector({dimension}) <=> $1
    LIMIT $7
)"
        )
    };
    let current = branch(
        "FROM embeddings e\n    JOIN audit_records r ON r.embedding_id = e.id",
        "",
    );
    // Gated by a one-time test: outside a model change the table is empty and the branch never
    // runs (an HNSW scan with iterative scans on would otherwise walk the graph looking for a
    // kept link that does not exist).
    let kept = branch(
        "FROM embeddings e\n    JOIN previous_embeddings p ON p.embedding_id = e.id\n    \
         JOIN audit_records r ON r.id = p.record_id AND r.received_at = p.received_at",
        "EXISTS (SELECT FROM previous_embeddings) AND ",
    );
    format!("SELECT * FROM ({current} UNION ALL {kept}) hits ORDER BY distance, id LIMIT $7")
}

/// The answer of a queued write.
async fn receive(
    answer: oneshot::Receiver<Result<WriteResult, PgStoreError>>,
) -> Result<WriteResult, StoreError> {
    answer
        .await
        .map_err(|_| PgStoreError::Pool("the write ended without an answer".into()))?
        .map_err(StoreError::from)
}

/// Records waiting for their vector (counted up to `$1`, through the partial index of pending records)
/// and the age of the oldest (the partial index on `received_at`).
const BACKLOG_SQL: &str = "\
SELECT (SELECT count(*) FROM (SELECT 1 FROM audit_records WHERE embedding_id IS NULL LIMIT $1) p) AS records,
       COALESCE(EXTRACT(EPOCH FROM now() - (SELECT min(received_at) FROM audit_records
                                            WHERE embedding_id IS NULL)), 0)::float8 AS oldest_seconds";

#[derive(QueryableByName)]
struct BacklogRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    records: i64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    oldest_seconds: f64,
}

#[derive(QueryableByName)]
struct Version {
    #[diesel(sql_type = diesel::sql_types::Text)]
    version: String,
}
