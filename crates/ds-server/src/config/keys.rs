//! Every configuration key: its environment variable, its place in the configuration file, its default
//! and its meaning. `docs/configuration.md` is generated from this table
//! (`datastorage config keys --markdown`), and tests keep the table, the code and the document in step.

/// A key's default as documented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// The key must be set.
    Required,
    /// Unset means "not used" (no value).
    None,
    /// This exact value (the code's default equals it: a test checks).
    Value(&'static str),
    /// Computed at start-up; the text says from what.
    Computed(&'static str),
}

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// The environment variable (`DATASTORAGE_*`), which wins over the file.
    pub env: &'static str,
    /// The dotted path in the configuration file (`[section] name = value`).
    pub file: &'static str,
    pub default: Default,
    pub meaning: &'static str,
    /// A secret: never printed by `config check`.
    pub secret: bool,
}

const fn entry(
    env: &'static str,
    file: &'static str,
    default: Default,
    meaning: &'static str,
    secret: bool,
) -> Key {
    Key {
        env,
        file,
        default,
        meaning,
        secret,
    }
}

const fn key(
    env: &'static str,
    file: &'static str,
    default: Default,
    meaning: &'static str,
) -> Key {
    entry(env, file, default, meaning, false)
}

/// A key whose value is a secret.
const fn secret(
    env: &'static str,
    file: &'static str,
    default: Default,
    meaning: &'static str,
) -> Key {
    entry(env, file, default, meaning, true)
}

use self::Default::{Computed, None as Unset, Required, Value};

/// Every key the service reads, in the order of docs/configuration.md.
pub const KEYS: &[Key] = &[
    // server
    key(
        "DATASTORAGE_HTTP_ADDR",
        "server.http_addr",
        Value("127.0.0.1:8080"),
        "API and probes (`/healthz`, `/readyz`) listen here.",
    ),
    key(
        "DATASTORAGE_METRICS_ADDR",
        "server.metrics_addr",
        Value("127.0.0.1:9090"),
        "Prometheus metrics (`/metrics`) listen here.",
    ),
    key(
        "DATASTORAGE_HTTP_WORKERS",
        "server.http_workers",
        Computed("number of cores"),
        "actix worker threads.",
    ),
    key(
        "DATASTORAGE_SHUTDOWN_TIMEOUT_SECS",
        "server.shutdown_timeout_secs",
        Value("30"),
        "After SIGTERM: how long in-flight requests, pending group commits and the embedding worker's current batch may take before the process exits.",
    ),
    key(
        "DATASTORAGE_LOG_FORMAT",
        "log.format",
        Value("auto"),
        "`json` (one JSON object per line), `text` (for people) or `auto` (text when stdout is a terminal, JSON otherwise).",
    ),
    key(
        "DATASTORAGE_LOG_LEVEL",
        "log.level",
        Value("info"),
        "Log filter in `tracing` syntax (`info`, `warn,ds_http=debug`, ...).",
    ),
    // transparency log (contract §8)
    key(
        "DATASTORAGE_LOG_SIGNING_KEY_FILE",
        "log.signing_key_file",
        Unset,
        "A file holding the Ed25519 key that signs checkpoints (note encoding, `PRIVATE+KEY+…`; a mounted Secret; `datastorage log keygen` makes one). `serve` needs it.",
    ),
    key(
        "DATASTORAGE_LOG_VERIFIER_KEYS",
        "log.verifier_keys",
        Unset,
        "Verifier keys of earlier signing keys (comma-separated, or a list in the file): after a rotation, checkpoints they signed still verify (`datastorage verify`).",
    ),
    key(
        "DATASTORAGE_LOG_ORIGIN",
        "log.origin",
        Value("kubernaut.ai/datastorage"),
        "The log's name, the first line of every checkpoint: one per deployment, never changed.",
    ),
    key(
        "DATASTORAGE_LOG_INTEGRATE_INTERVAL_MS",
        "log.integrate_interval_ms",
        Value("1000"),
        "How often the sequencer appends committed records to the log (the contract's `log.integrate_interval`).",
    ),
    key(
        "DATASTORAGE_LOG_CHECKPOINT_INTERVAL_MS",
        "log.checkpoint_interval_ms",
        Value("10000"),
        "A new signed checkpoint at least this often while the log grows (the contract's `log.checkpoint_interval`).",
    ),
    key(
        "DATASTORAGE_LOG_BATCH",
        "log.batch",
        Value("10000"),
        "Most records the sequencer appends in one transaction (at least one queued statement's, at most 10,000), and how many record ids each run sweeps for records inserted around the queue.",
    ),
    // retention
    key(
        "DATASTORAGE_RETENTION_DAYS",
        "retention.days",
        Value("90"),
        "Days a record is kept after the store received it, for every kind without its own (contract §9; 0: forever).",
    ),
    key(
        "DATASTORAGE_RETENTION_DAYS_REMEDIATION",
        "retention.days_remediation",
        Unset,
        "Days a `remediation` record is kept (0: forever); unset: `retention.days`.",
    ),
    key(
        "DATASTORAGE_RETENTION_DAYS_AIANALYSIS",
        "retention.days_aianalysis",
        Unset,
        "Days an `aianalysis` record is kept (0: forever); unset: `retention.days`.",
    ),
    key(
        "DATASTORAGE_RETENTION_DAYS_WORKFLOW",
        "retention.days_workflow",
        Unset,
        "Days a `workflow` record is kept (0: forever); unset: `retention.days`.",
    ),
    key(
        "DATASTORAGE_RETENTION_DAYS_EXECUTION",
        "retention.days_execution",
        Unset,
        "Days an `execution` record is kept (0: forever); unset: `retention.days`.",
    ),
    key(
        "DATASTORAGE_RETENTION_MONTHS_AHEAD",
        "retention.months_ahead",
        Value("3"),
        "Month partitions the maintenance task keeps ready after the current one (1–24).",
    ),
    key(
        "DATASTORAGE_RETENTION_MAINTENANCE_INTERVAL_MS",
        "retention.maintenance_interval_ms",
        Value("3600000"),
        "How often the maintenance task runs (one replica at a time): partitions ahead, and the purge when it is due; 0: this replica does not run it (another must).",
    ),
    key(
        "DATASTORAGE_RETENTION_PURGE_INTERVAL_MS",
        "retention.purge_interval_ms",
        Value("86400000"),
        "How often the purge runs (daily): it drops partitions whose records all expired and none is held, and deletes the other expired, unheld records in batches.",
    ),
    key(
        "DATASTORAGE_RETENTION_BATCH",
        "retention.batch",
        Value("1000"),
        "Records the purge examines per batch (one transaction each; 1–100000).",
    ),
    key(
        "DATASTORAGE_RETENTION_BATCH_PAUSE_MS",
        "retention.batch_pause_ms",
        Value("100"),
        "Least pause between purge batches.",
    ),
    key(
        "DATASTORAGE_RETENTION_PURGE_ROWS_PER_SECOND",
        "retention.purge_rows_per_second",
        Value("5000"),
        "Records the purge deletes per second at most, over its whole run (0: paced by the pause alone): bounds its share of the database's I/O and WAL so that it does not stall writes. A day's purge must keep up with a day's writes: 5000/s purges 432M records a day.",
    ),
    key(
        "DATASTORAGE_RETENTION_DROP_LOCK_WAIT_MS",
        "retention.drop_lock_wait_ms",
        Value("200"),
        "How long dropping a partition waits for its table's lock (writes wait behind it meanwhile); then the drop is tried next run.",
    ),
    // database
    secret(
        "DATASTORAGE_DATABASE_URL",
        "database.url",
        Required,
        "`postgres://user:password@host:port/database` (`DATABASE_URL` is read when this is unset). Holds a password: pass it from a Secret, not the file.",
    ),
    secret(
        "DATASTORAGE_DATABASE_READ_URL",
        "database.read_url",
        Unset,
        "A PostgreSQL streaming replica of `database.url` that reads go to (the list, trails, search, reads by id, exports) while it is usable; writes, the log's sequencer, proofs and maintenance stay on the primary (docs/scaling.md). Unset: everything on the primary. Holds a password: pass it from a Secret.",
    ),
    key(
        "DATASTORAGE_DB_READ_POOL_SIZE",
        "database.read_pool_size",
        Computed("pool size"),
        "Most connections to the read replica.",
    ),
    key(
        "DATASTORAGE_DB_READ_MAX_LAG_MS",
        "database.read_max_lag_ms",
        Value("5000"),
        "Farther behind the primary than this, the replica is not read: reads go to the primary until it catches up (checked every quarter of it, 50 ms to 1 s). A record read by id is found right after its 201 whatever the lag.",
    ),
    key(
        "DATASTORAGE_MIGRATE_ON_START",
        "database.migrate_on_start",
        Value("true"),
        "Apply pending migrations at start-up, under an advisory lock (replicas starting together migrate once). `false`: run `datastorage migrate` as a Job first.",
    ),
    key(
        "DATASTORAGE_DB_CONNECT_RETRY_MAX_MS",
        "database.connect_retry_max_ms",
        Value("10000"),
        "At start-up the service waits for an unreachable database, retrying with exponential backoff up to this interval; `/readyz` says what it waits for.",
    ),
    key(
        "DATASTORAGE_DB_POOL_SIZE",
        "database.pool_size",
        Value("16"),
        "Most database connections of this replica.",
    ),
    key(
        "DATASTORAGE_DB_WAIT_TIMEOUT_MS",
        "database.wait_timeout_ms",
        Value("5000"),
        "Longest wait for a free connection before answering 503.",
    ),
    key(
        "DATASTORAGE_DB_STATEMENT_TIMEOUT_MS",
        "database.statement_timeout_ms",
        Value("10000"),
        "PostgreSQL `statement_timeout` on every connection (a timed-out statement answers 503); 0 turns it off.",
    ),
    key(
        "DATASTORAGE_DB_CONCURRENCY",
        "database.concurrency",
        Computed("8 × pool size"),
        "Requests working in the database at once; one more is answered 503 with `Retry-After: 1` at once.",
    ),
    key(
        "DATASTORAGE_DB_WRITE_SLOTS",
        "database.write_slots",
        Computed("min(4, pool size)"),
        "Write statements/transactions at once; writes arriving while every slot is busy are committed together (group commit). At most the pool size.",
    ),
    key(
        "DATASTORAGE_DB_GROUP_MAX_RECORDS",
        "database.group_max_records",
        Value("1000"),
        "Most records per group commit.",
    ),
    key(
        "DATASTORAGE_DB_GROUP_WAIT_US",
        "database.group_wait_us",
        Value("0"),
        "How long a free write slot waits for more writes before committing (0: never; groups still form under load).",
    ),
    key(
        "DATASTORAGE_SEARCH_EF_SEARCH",
        "search.ef_search",
        Value("100"),
        "pgvector `hnsw.ef_search` (1–1000): higher finds more of the true nearest records, slower (docs/performance.md).",
    ),
    // embedding
    key(
        "DATASTORAGE_EMBEDDING_PROVIDER",
        "embedding.provider",
        Value("local"),
        "`local` (the in-process model) or `openai` (any OpenAI-compatible `/v1/embeddings`; the `embedding.openai.*` keys).",
    ),
    key(
        "DATASTORAGE_EMBEDDING_DIMENSION",
        "embedding.dimension",
        Value("384"),
        "Vector dimension of this deployment: must equal the provider's and the database column's, or start-up stops naming all three.",
    ),
    key(
        "DATASTORAGE_EMBEDDING_MODE",
        "embedding.mode",
        Value("inline"),
        "`inline`: embed in the request, record + vector in one transaction; `deferred`: commit the record with a durable job and answer `pending` at once.",
    ),
    key(
        "DATASTORAGE_EMBEDDING_FAILURE_POLICY",
        "embedding.failure_policy",
        Value("defer"),
        "When the provider fails in mode `inline`: `defer` stores the record as `pending` with a job; `reject` answers 503 `EMBEDDING_ERROR` and writes nothing.",
    ),
    key(
        "DATASTORAGE_EMBEDDING_LOCAL_MODEL_DIR",
        "embedding.local_model_dir",
        Value("target/models/all-MiniLM-L6-v2"),
        "The local model's `config.json`, `tokenizer.json`, `model.safetensors`.",
    ),
    key(
        "DATASTORAGE_EMBEDDING_BATCH_MAX_SIZE",
        "embedding.batch_max_size",
        Value("64"),
        "Most texts per provider call (concurrent requests are batched).",
    ),
    key(
        "DATASTORAGE_EMBEDDING_BATCH_MAX_WAIT_MS",
        "embedding.batch_max_wait_ms",
        Value("0"),
        "How long a batch may wait for more texts when a call slot is free (0: batches form only while the provider is busy).",
    ),
    key(
        "DATASTORAGE_EMBEDDING_MAX_IN_FLIGHT",
        "embedding.max_in_flight",
        Computed("cores (`local`), 4 (`openai`)"),
        "Provider calls at once.",
    ),
    key(
        "DATASTORAGE_EMBEDDING_CACHE_CAPACITY",
        "embedding.cache_capacity",
        Value("10000"),
        "Most cached vectors (~1.6 KB each at 384 dimensions).",
    ),
    key(
        "DATASTORAGE_EMBEDDING_CACHE_TTL_SECS",
        "embedding.cache_ttl_secs",
        Value("300"),
        "How long a cached vector is reused.",
    ),
    key(
        "DATASTORAGE_EMBEDDING_WORKER_INTERVAL_MS",
        "embedding.worker_interval_ms",
        Value("1000"),
        "How often the embedding worker looks at an empty job queue (0 turns this replica's worker off).",
    ),
    key(
        "DATASTORAGE_EMBEDDING_WORKER_BATCH",
        "embedding.worker_batch",
        Value("32"),
        "Jobs per worker transaction.",
    ),
    key(
        "DATASTORAGE_EMBEDDING_JOB_MAX_ATTEMPTS",
        "embedding.job_max_attempts",
        Value("10"),
        "Failed attempts after which a job is parked (kept, listed and re-queued by `datastorage jobs`).",
    ),
    key(
        "DATASTORAGE_EMBEDDING_JOB_BACKOFF_MS",
        "embedding.job_backoff_ms",
        Value("30000"),
        "Wait after a job's first failed attempt; it doubles with each further one.",
    ),
    key(
        "DATASTORAGE_EMBEDDING_JOB_BACKOFF_MAX_MS",
        "embedding.job_backoff_max_ms",
        Value("3600000"),
        "Longest wait between a job's attempts.",
    ),
    key(
        "DATASTORAGE_EMBEDDING_JOB_LEASE_SECS",
        "embedding.job_lease_secs",
        Value("60"),
        "How long a worker's claim holds its jobs (a worker that dies leaves them to the next after it).",
    ),
    key(
        "DATASTORAGE_EMBEDDING_WORKERS",
        "embedding.workers",
        Value("2"),
        "Worker loops of this replica (one embeds while another writes its vectors into the index).",
    ),
    key(
        "DATASTORAGE_EMBEDDING_OPENAI_BASE_URL",
        "embedding.openai.base_url",
        Value("https://api.openai.com/v1"),
        "Provider `openai`: the API's base URL (`http(s)://…/v1`).",
    ),
    key(
        "DATASTORAGE_EMBEDDING_OPENAI_MODEL",
        "embedding.openai.model",
        Unset,
        "Provider `openai`: the model name (required with that provider).",
    ),
    key(
        "DATASTORAGE_EMBEDDING_OPENAI_DIMENSIONS",
        "embedding.openai.dimensions",
        Unset,
        "Provider `openai`: ask the model for vectors of this size (models that can shorten theirs).",
    ),
    secret(
        "DATASTORAGE_EMBEDDING_OPENAI_API_KEY",
        "embedding.openai.api_key",
        Unset,
        "Provider `openai`: the API key. Prefer the key file.",
    ),
    key(
        "DATASTORAGE_EMBEDDING_OPENAI_API_KEY_FILE",
        "embedding.openai.api_key_file",
        Unset,
        "Provider `openai`: a file holding the API key (a mounted Secret); read at start-up.",
    ),
    key(
        "DATASTORAGE_EMBEDDING_TIMEOUT_MS",
        "embedding.openai.timeout_ms",
        Value("5000"),
        "Provider `openai`: each attempt's timeout.",
    ),
    key(
        "DATASTORAGE_EMBEDDING_MAX_RETRIES",
        "embedding.openai.max_retries",
        Value("2"),
        "Provider `openai`: retries of a failed call (429, 5xx, timeouts, connection errors).",
    ),
    key(
        "DATASTORAGE_EMBEDDING_RETRY_BASE_MS",
        "embedding.openai.retry_base_ms",
        Value("100"),
        "Provider `openai`: first backoff (exponential, full jitter; a `Retry-After` is never undercut).",
    ),
    key(
        "DATASTORAGE_EMBEDDING_RETRY_MAX_MS",
        "embedding.openai.retry_max_ms",
        Value("2000"),
        "Provider `openai`: longest backoff.",
    ),
    key(
        "DATASTORAGE_EMBEDDING_CALL_BUDGET_MS",
        "embedding.openai.call_budget_ms",
        Value("10000"),
        "Provider `openai`: a whole call, retries included.",
    ),
    key(
        "DATASTORAGE_EMBEDDING_CIRCUIT_THRESHOLD",
        "embedding.openai.circuit_threshold",
        Value("5"),
        "Provider `openai`: failed calls in a row that open the circuit (calls then fail fast).",
    ),
    key(
        "DATASTORAGE_EMBEDDING_CIRCUIT_COOLDOWN_SECS",
        "embedding.openai.circuit_cooldown_secs",
        Value("30"),
        "Provider `openai`: how long the circuit stays open before one trial call.",
    ),
    // authentication and authorization
    key(
        "DATASTORAGE_AUTH_MODE",
        "auth.mode",
        Value("none"),
        "`kubernetes` (TokenReview, then SubjectAccessReview or an allow-list) or `none` (local development; refused unless every listener is on loopback).",
    ),
    key(
        "DATASTORAGE_AUTH_KUBECONFIG",
        "auth.kubeconfig",
        Unset,
        "A kubeconfig file; unset: in-cluster configuration, then `$KUBECONFIG`.",
    ),
    key(
        "DATASTORAGE_AUTH_AUDIENCES",
        "auth.audiences",
        Unset,
        "Audiences the tokens must be for (comma-separated, or a list in the file); unset: the API server's own.",
    ),
    key(
        "DATASTORAGE_AUTH_TIMEOUT_MS",
        "auth.timeout_ms",
        Value("5000"),
        "Budget of each TokenReview / SubjectAccessReview.",
    ),
    key(
        "DATASTORAGE_AUTH_CACHE_TTL_SECS",
        "auth.cache_ttl_secs",
        Value("60"),
        "How long an allowed decision is cached (keyed by SHA-256 of the token).",
    ),
    key(
        "DATASTORAGE_AUTH_NEGATIVE_CACHE_TTL_SECS",
        "auth.negative_cache_ttl_secs",
        Value("10"),
        "How long a denied decision is cached.",
    ),
    key(
        "DATASTORAGE_AUTH_CACHE_CAPACITY",
        "auth.cache_capacity",
        Value("10000"),
        "Most cached decisions.",
    ),
    key(
        "DATASTORAGE_AUTH_MAX_CONCURRENT_REVIEWS",
        "auth.max_concurrent_reviews",
        Value("16"),
        "TokenReviews and SubjectAccessReviews in flight at once; a request that finds none free within the review budget is answered 503.",
    ),
    key(
        "DATASTORAGE_AUTH_FAILURES_PER_MINUTE",
        "auth.failures_per_minute",
        Value("60"),
        "Failed authentications a client address regains per minute; past its burst it is answered 429 without a review. 0 turns the limit off.",
    ),
    key(
        "DATASTORAGE_AUTH_FAILURE_BURST",
        "auth.failure_burst",
        Value("50"),
        "Failed authentications a client address may have in a row.",
    ),
    key(
        "DATASTORAGE_METRICS_AUTH",
        "auth.protect_metrics",
        Value("true"),
        "With auth mode `kubernetes`: `/metrics` needs a token allowed to `get` the non-resource URL `/metrics`.",
    ),
    key(
        "DATASTORAGE_AUTHZ_MODE",
        "auth.authz_mode",
        Value("subjectaccessreview"),
        "`subjectaccessreview` (RBAC decides) or `allowlist` (the three lists below).",
    ),
    key(
        "DATASTORAGE_AUTHZ_WRITERS",
        "auth.writers",
        Unset,
        "Allow-list: usernames or `group:<name>` that may write (and read).",
    ),
    key(
        "DATASTORAGE_AUTHZ_READERS",
        "auth.readers",
        Unset,
        "Allow-list: usernames or `group:<name>` that may read.",
    ),
    key(
        "DATASTORAGE_AUTHZ_METRICS",
        "auth.metrics",
        Unset,
        "Allow-list: usernames or `group:<name>` that may scrape `/metrics`.",
    ),
    key(
        "DATASTORAGE_AUTHZ_HOLDERS",
        "auth.holders",
        Unset,
        "Allowlist mode: comma-separated usernames or `group:<name>` that may place, release and list legal holds (RBAC resource `legalholds` in subjectaccessreview mode).",
    ),
    // admission and limits
    key(
        "DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND",
        "limits.rate_limit_writes_per_second",
        Value("500"),
        "Sustained records/s per caller (fractions allowed; 0 turns rate limiting off); over it: 429 with `Retry-After`.",
    ),
    key(
        "DATASTORAGE_RATE_LIMIT_BURST",
        "limits.rate_limit_burst",
        Value("750"),
        "Records a caller may write at once; a batch costs one per record (at most the burst).",
    ),
    key(
        "DATASTORAGE_RATE_LIMIT_SEARCHES_PER_SECOND",
        "limits.rate_limit_searches_per_second",
        Value("20"),
        "Sustained searches per second per caller (a search costs a model call and an index scan); 0 turns the search limit off.",
    ),
    key(
        "DATASTORAGE_RATE_LIMIT_SEARCH_BURST",
        "limits.rate_limit_search_burst",
        Value("40"),
        "Searches a caller may make at once.",
    ),
    key(
        "DATASTORAGE_MAX_BODY_BUDGET_BYTES",
        "limits.max_body_budget_bytes",
        Value("67108864"),
        "Bytes of request bodies held at once across all requests (503 + `Retry-After` past it); at least the largest body limit.",
    ),
    key(
        "DATASTORAGE_TRUSTED_PROXIES",
        "limits.trusted_proxies",
        Unset,
        "IPs whose `X-Forwarded-For` names the caller (comma-separated, or a list in the file).",
    ),
    key(
        "DATASTORAGE_REQUEST_TIMEOUT_SECS",
        "limits.request_timeout_secs",
        Value("30"),
        "Longest a request may work; then 503 (its statement is cancelled).",
    ),
    key(
        "DATASTORAGE_MAX_BODY_BYTES",
        "limits.max_body_bytes",
        Value("2097152"),
        "Body limit of the single-record endpoints (413 above it).",
    ),
    key(
        "DATASTORAGE_MAX_BATCH_BODY_BYTES",
        "limits.max_batch_body_bytes",
        Value("16777216"),
        "Body limit of `/api/v1/audit/batch`.",
    ),
    key(
        "DATASTORAGE_MAX_JSON_DEPTH",
        "limits.max_json_depth",
        Value("32"),
        "Deepest JSON nesting (400 `INVALID_JSON`, checked before parsing).",
    ),
    key(
        "DATASTORAGE_MAX_HEADER_BYTES",
        "limits.max_header_bytes",
        Value("16384"),
        "Request headers, names and values (431 above it).",
    ),
];

/// The key read from `env`, if any.
pub fn by_env(env: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.env == env)
}

/// The key at `path` in the file, if any.
pub fn by_file(path: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.file == path)
}

/// The reference table of docs/configuration.md.
pub fn markdown() -> String {
    let mut out = String::from(
        "| file key | environment variable | default | meaning |\n|---|---|---|---|\n",
    );
    for k in KEYS {
        let default = match k.default {
            Required => "required".to_owned(),
            Unset => "unset".to_owned(),
            Value(v) => format!("`{v}`"),
            Computed(how) => how.to_owned(),
        };
        out.push_str(&format!(
            "| `{}` | `{}` | {} | {} |\n",
            k.file, k.env, default, k.meaning
        ));
    }
    out
}
