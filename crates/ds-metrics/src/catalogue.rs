//! The catalogue: every metric of the service, in the order docs/operations.md lists them.

use crate::labels::*;
use crate::{Counter, Def, Emitted, Gauge, Histogram};
use ds_domain::kind::Kind;

/// Declares each metric as a constant and lists every declaration in [`CATALOGUE`].
macro_rules! catalogue {
    ($($id:ident: $ty:ty = $decl:expr;)+) => {
        $(pub const $id: $ty = $decl;)+

        /// Every metric of the service.
        pub const CATALOGUE: &[Def] = &[$($id.def),+];
    };
}

catalogue! {
    BUILD_INFO: Gauge<(Version,)> = Gauge::gauge(
        "datastorage_build_info",
        "Always 1; the version of the running binary.",
    );
    HTTP_REQUESTS: Counter<(Method, Route, Status)> = Counter::counter(
        "datastorage_http_requests_total",
        "HTTP requests answered, by route pattern (`unmatched` for unknown paths) and status.",
    );
    HTTP_REQUEST_DURATION_SECONDS: Histogram<(Route,)> = Histogram::histogram(
        "datastorage_http_request_duration_seconds",
        "Time from receiving a request to its response, by route pattern.",
    );
    AUDIT_WRITES: Counter<(Kind, WriteStatus)> = Counter::counter(
        "datastorage_audit_writes_total",
        "Records written, by kind and outcome (created, duplicate, replayed, error...).",
    );
    AUDIT_WRITE_DURATION_SECONDS: Histogram<(WriteKind,)> = Histogram::histogram(
        "datastorage_audit_write_duration_seconds",
        "Time to validate, embed and store one write request, by kind (`batch` for batches).",
    );
    WRITE_BATCH_SIZE: Histogram<()> = Histogram::histogram(
        "datastorage_write_batch_size",
        "Records per batch request.",
    )
    .sizes();
    VALIDATION_FAILURES: Counter<(Kind, Field)> = Counter::counter(
        "datastorage_validation_failures_total",
        "Broken validation rules, by kind and field.",
    );
    UNKNOWN_FIELDS: Counter<(Kind,)> = Counter::counter(
        "datastorage_unknown_fields_total",
        "Records that carried fields the contract does not know (kept in unknownFields).",
    );
    EMBEDDING_RECORDS_HEALED: Counter<()> = Counter::counter(
        "datastorage_embedding_records_healed_total",
        "Pending records the sweep linked to their already stored vector (a few when a text is written while its job finishes; a steady rise means something leaves records pending).",
    )
    .at_zero();
    EMBEDDING_RECORDS_REQUEUED: Counter<()> = Counter::counter(
        "datastorage_embedding_records_requeued_total",
        "Pending records the sweep found with neither a vector nor a job and queued again (a vector deleted by `reembed --finish` under a replica still running its model, or a job deleted under a writer of an earlier model); should stay 0.",
    )
    .at_zero();
    LOG_TREE_SIZE: Gauge<()> = Gauge::gauge(
        "datastorage_log_tree_size",
        "Leaves in the transparency log.",
    );
    LOG_PENDING_RECORDS: Gauge<()> = Gauge::gauge(
        "datastorage_log_pending_records",
        "Committed records not yet appended to the transparency log (up to 1,000,000 counted).",
    );
    LOG_OLDEST_PENDING_SECONDS: Gauge<()> = Gauge::gauge(
        "datastorage_log_oldest_pending_seconds",
        "How long the oldest record not yet in the transparency log has waited (integration lag; 0 when none waits).",
    );
    LOG_CHECKPOINT_AGE_SECONDS: Gauge<()> = Gauge::gauge(
        "datastorage_log_checkpoint_age_seconds",
        "Age of the latest signed checkpoint.",
    );
    LOG_CHECKPOINT_SIZE: Gauge<()> = Gauge::gauge(
        "datastorage_log_checkpoint_size",
        "Tree size of the latest signed checkpoint.",
    );
    LOG_LEAVES_APPENDED: Counter<()> = Counter::counter(
        "datastorage_log_leaves_appended_total",
        "Leaves this replica's sequencer appended.",
    )
    .at_zero();
    LOG_UNQUEUED_RECORDS: Counter<()> = Counter::counter(
        "datastorage_log_unqueued_records_total",
        "Committed records this replica's sequencer found neither in the transparency log nor queued (inserted with the queue's trigger off), and queued.",
    )
    .at_zero();
    LOG_CHECKPOINTS_SIGNED: Counter<()> = Counter::counter(
        "datastorage_log_checkpoints_signed_total",
        "Checkpoints this replica signed.",
    )
    .at_zero();
    LOG_SEQUENCER_ERRORS: Counter<()> = Counter::counter(
        "datastorage_log_sequencer_errors_total",
        "Sequencer runs that failed (the run rolled back; its records stay queued).",
    )
    .at_zero();
    RETENTION_MONTHS_AHEAD: Gauge<()> = Gauge::gauge(
        "datastorage_retention_months_ahead",
        "Month partitions of audit_records that exist after the current one, without a gap (contract §9: at least 3).",
    );
    LEGAL_HOLDS_ACTIVE: Gauge<()> = Gauge::gauge(
        "datastorage_legal_holds_active",
        "Legal holds placed and not released.",
    );
    RETENTION_RECORDS_PURGED: Counter<()> = Counter::counter(
        "datastorage_retention_records_purged_total",
        "Records this replica's maintenance removed by retention, in batches or with their partition.",
    )
    .at_zero();
    RETENTION_PARTITIONS_DROPPED: Counter<()> = Counter::counter(
        "datastorage_retention_partitions_dropped_total",
        "Month partitions this replica's maintenance dropped whole (every record expired, none held).",
    )
    .at_zero();
    RETENTION_ERRORS: Counter<()> = Counter::counter(
        "datastorage_retention_errors_total",
        "Maintenance runs (partitions ahead, purge) that failed; the next run tries again.",
    )
    .at_zero();
    DATABASE_WRITE_ERRORS: Counter<()> = Counter::counter(
        "datastorage_database_write_errors_total",
        "Write requests the database failed (unreachable, timed out, pool exhausted, query failed).",
    )
    .at_zero();
    RATE_LIMIT_EXCEEDED: Counter<()> = Counter::counter(
        "datastorage_rate_limit_exceeded_total",
        "Write requests refused with 429 because the caller exceeded its rate.",
    )
    .at_zero();
    LOAD_SHED: Counter<()> = Counter::counter(
        "datastorage_load_shed_total",
        "Requests refused with 503 at once because every database slot was taken.",
    )
    .at_zero();
    AUTH_FAILURES: Counter<(AuthFailure,)> = Counter::counter(
        "datastorage_auth_failures_total",
        "Requests refused by authentication or authorization: missing, malformed, invalid_token, forbidden, unavailable, too_many_failures.",
    )
    .at_zero();
    AUTH_REVIEWS: Counter<(Review,)> = Counter::counter(
        "datastorage_auth_reviews_total",
        "TokenReviews and SubjectAccessReviews sent to the Kubernetes API.",
    )
    .only(Emitted::Kubernetes);
    AUTH_CACHE_HITS: Counter<(Decision,)> = Counter::counter(
        "datastorage_auth_cache_hits_total",
        "Authentication decisions answered from the cache.",
    )
    .only(Emitted::Kubernetes);
    AUTH_CACHE_MISSES: Counter<(Decision,)> = Counter::counter(
        "datastorage_auth_cache_misses_total",
        "Authentication decisions that needed the Kubernetes API.",
    )
    .only(Emitted::Kubernetes);
    DB_POOL_CONNECTIONS: Gauge<(Pool, ConnState)> = Gauge::gauge(
        "datastorage_db_pool_connections",
        "Database connections of this replica by pool (`primary`, `replica`): `idle` or `in_use` (at scrape time).",
    );
    DB_POOL_MAX_CONNECTIONS: Gauge<(Pool,)> = Gauge::gauge(
        "datastorage_db_pool_max_connections",
        "Each pool's size limit (DATASTORAGE_DB_POOL_SIZE, DATASTORAGE_DB_READ_POOL_SIZE).",
    );
    DB_READS: Counter<(Pool,)> = Counter::counter(
        "datastorage_db_reads_total",
        "Reads (the list, trails, search, reads by id, export pages, checkpoints) answered by the `primary` or the `replica`.",
    );
    DB_REPLICA_FALLBACKS: Counter<(Fallback,)> = Counter::counter(
        "datastorage_db_replica_fallbacks_total",
        "Reads meant for the read replica that the primary answered: `unusable` (lagging, down or not a standby at the last check), `unavailable` (the read failed for want of a connection or in a recovery conflict), `not_found` (a record by id it does not have yet).",
    )
    .only(Emitted::ReadReplica);
    DB_REPLICA_LAG_SECONDS: Gauge<()> = Gauge::gauge(
        "datastorage_db_replica_lag_seconds",
        "How far the read replica's replay is behind the primary's WAL, measured every quarter of DATASTORAGE_DB_READ_MAX_LAG_MS (last known value while it does not answer).",
    )
    .only(Emitted::ReadReplica);
    DB_REPLICA_USABLE: Gauge<()> = Gauge::gauge(
        "datastorage_db_replica_usable",
        "1 while reads go to the read replica, 0 while it is lagging, down or not a standby (reads go to the primary).",
    )
    .only(Emitted::ReadReplica);
    DB_GROUP_COMMIT_SIZE: Histogram<()> = Histogram::histogram(
        "datastorage_db_group_commit_size",
        "Write requests committed together in one group.",
    )
    .sizes();
    DB_WRITE_SECONDS: Histogram<()> = Histogram::histogram(
        "datastorage_db_write_seconds",
        "Time of one group's statement or transaction.",
    );
    DB_GROUP_COMMIT_FALLBACKS: Counter<()> = Counter::counter(
        "datastorage_db_group_commit_fallbacks_total",
        "Groups that failed and were rerun write by write.",
    )
    .at_zero();
    EMBEDDING_CACHE_HITS: Counter<()> = Counter::counter(
        "datastorage_embedding_cache_hits_total",
        "Embedding texts found in the in-process cache.",
    )
    .at_zero();
    EMBEDDING_CACHE_MISSES: Counter<()> = Counter::counter(
        "datastorage_embedding_cache_misses_total",
        "Embedding texts that needed the provider.",
    )
    .at_zero();
    EMBEDDING_GENERATION_DURATION_SECONDS: Histogram<(Provider,)> = Histogram::histogram(
        "datastorage_embedding_generation_duration_seconds",
        "Time of one provider call (one batch of texts).",
    );
    EMBEDDING_BATCH_SIZE: Histogram<()> = Histogram::histogram(
        "datastorage_embedding_batch_size",
        "Texts per provider call.",
    )
    .sizes();
    EMBEDDING_PENDING: Gauge<()> = Gauge::gauge(
        "datastorage_embedding_pending",
        "Records stored without their vector yet (counted up to 1,000,000), at scrape time.",
    );
    EMBEDDING_JOBS_PARKED: Gauge<()> = Gauge::gauge(
        "datastorage_embedding_jobs_parked",
        "Embedding jobs parked after repeated failures (`datastorage jobs list --parked`), at scrape time.",
    );
    EMBEDDING_OLDEST_PENDING_SECONDS: Gauge<()> = Gauge::gauge(
        "datastorage_embedding_oldest_pending_seconds",
        "How long the oldest record without its vector has waited (0 when none), at scrape time.",
    );
    EMBEDDING_PROVIDER_ERRORS: Counter<(Provider, ProviderFailure)> = Counter::counter(
        "datastorage_embedding_provider_errors_total",
        "Failed provider attempts: rate_limited, server_error, timeout, connect, client_error, malformed, invalid_output, circuit_open.",
    )
    .only(Emitted::OpenAi);
    EMBEDDING_PROVIDER_RETRIES: Counter<(Provider,)> = Counter::counter(
        "datastorage_embedding_provider_retries_total",
        "Provider attempts retried.",
    )
    .only(Emitted::OpenAi);
    EMBEDDING_CIRCUIT_OPEN: Gauge<(Provider,)> = Gauge::gauge(
        "datastorage_embedding_circuit_open",
        "1 while the provider's circuit is open (calls fail fast), else 0.",
    )
    .only(Emitted::OpenAi);
}
