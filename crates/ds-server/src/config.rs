//! The service's configuration: one typed struct, read from a TOML file (optional) overlaid by
//! `DATASTORAGE_*` environment variables. Every key is listed in [`keys::KEYS`] (and, generated from it,
//! in docs/configuration.md). Invalid configuration stops start-up with a message that names the key
//! and where its value came from.

mod file;
pub mod keys;

pub use file::FileValues;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A key's value in the process environment (an empty variable counts as unset).
pub fn env_value(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
    /// Text when stdout is a terminal, JSON otherwise.
    Auto,
}

/// How callers are authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// No authentication: for local development only, refused unless every listener is on loopback.
    None,
    /// Kubernetes TokenReview, then SubjectAccessReview or an allow-list.
    Kubernetes(Box<KubernetesAuth>),
}

/// `DATASTORAGE_AUTH_MODE=kubernetes` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesAuth {
    /// `DATASTORAGE_AUTH_KUBECONFIG`: a kubeconfig file; unset: in-cluster, then `$KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// `DATASTORAGE_AUTH_AUDIENCES`: comma-separated audiences the tokens must be for (default: none,
    /// i.e. the API server's own).
    pub audiences: Vec<String>,
    /// `DATASTORAGE_AUTHZ_MODE`: `subjectaccessreview` (default) or `allowlist`, with
    /// `DATASTORAGE_AUTHZ_WRITERS`, `DATASTORAGE_AUTHZ_READERS`, `DATASTORAGE_AUTHZ_METRICS` (comma-separated
    /// usernames or `group:<name>`; writers may also read).
    /// `DATASTORAGE_AUTHZ_HOLDERS`: who may place, release and list legal holds (allowlist mode).
    pub allow_list: Option<AllowLists>,
    /// `DATASTORAGE_AUTH_TIMEOUT_MS`: each review's budget (default 5000).
    pub timeout: Duration,
    /// `DATASTORAGE_AUTH_CACHE_TTL_SECS` (60), `DATASTORAGE_AUTH_NEGATIVE_CACHE_TTL_SECS` (10),
    /// `DATASTORAGE_AUTH_CACHE_CAPACITY` (10000).
    pub positive_ttl: Duration,
    pub negative_ttl: Duration,
    pub cache_capacity: usize,
    /// `DATASTORAGE_METRICS_AUTH`: protect `/metrics` too (default `true`).
    pub protect_metrics: bool,
    /// `DATASTORAGE_AUTH_MAX_CONCURRENT_REVIEWS`: reviews in flight at once (default 16).
    pub max_concurrent_reviews: usize,
    /// `DATASTORAGE_AUTH_FAILURES_PER_MINUTE` (60; 0: no limit) and `DATASTORAGE_AUTH_FAILURE_BURST`
    /// (50): failed authentications a peer may have before it is answered 429.
    pub failures: ds_http::auth::ReviewLimits,
}

/// Allowlist mode's lists: usernames or `group:<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowLists {
    pub writers: Vec<String>,
    pub readers: Vec<String>,
    pub metrics: Vec<String>,
    pub holders: Vec<String>,
}

/// A comma-separated list (TOML arrays in the file arrive joined by commas).
pub(crate) fn list(get: &dyn Fn(&str) -> Option<String>, key: &str) -> Vec<String> {
    get(key)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn kubernetes_auth(get: &dyn Fn(&str) -> Option<String>) -> Result<KubernetesAuth, ConfigError> {
    let allow_list = match get("DATASTORAGE_AUTHZ_MODE")
        .as_deref()
        .unwrap_or("subjectaccessreview")
    {
        "subjectaccessreview" => None,
        "allowlist" => {
            let lists = AllowLists {
                writers: list(get, "DATASTORAGE_AUTHZ_WRITERS"),
                readers: list(get, "DATASTORAGE_AUTHZ_READERS"),
                metrics: list(get, "DATASTORAGE_AUTHZ_METRICS"),
                holders: list(get, "DATASTORAGE_AUTHZ_HOLDERS"),
            };
            if lists.writers.is_empty() && lists.readers.is_empty() {
                return Err(ConfigError {
                    key: "DATASTORAGE_AUTHZ_WRITERS",
                    reason: "allowlist mode needs at least one writer or reader".into(),
                });
            }
            Some(lists)
        }
        other => {
            return Err(ConfigError {
                key: "DATASTORAGE_AUTHZ_MODE",
                reason: format!("{other:?} is not `subjectaccessreview` or `allowlist`"),
            });
        }
    };
    let mut k = KubernetesAuth {
        kubeconfig: get("DATASTORAGE_AUTH_KUBECONFIG").map(PathBuf::from),
        audiences: list(get, "DATASTORAGE_AUTH_AUDIENCES"),
        allow_list,
        timeout: Duration::from_millis(parse(get, "DATASTORAGE_AUTH_TIMEOUT_MS", 5000)?),
        positive_ttl: Duration::from_secs(parse(get, "DATASTORAGE_AUTH_CACHE_TTL_SECS", 60)?),
        negative_ttl: Duration::from_secs(parse(
            get,
            "DATASTORAGE_AUTH_NEGATIVE_CACHE_TTL_SECS",
            10,
        )?),
        cache_capacity: parse(get, "DATASTORAGE_AUTH_CACHE_CAPACITY", 10_000)?,
        protect_metrics: parse(get, "DATASTORAGE_METRICS_AUTH", true)?,
        max_concurrent_reviews: match parse(get, "DATASTORAGE_AUTH_MAX_CONCURRENT_REVIEWS", 16)? {
            0 => {
                return Err(ConfigError {
                    key: "DATASTORAGE_AUTH_MAX_CONCURRENT_REVIEWS",
                    reason: "must be at least 1".into(),
                });
            }
            n => n,
        },
        failures: ds_http::auth::ReviewLimits {
            per_minute: parse(get, "DATASTORAGE_AUTH_FAILURES_PER_MINUTE", 60)?,
            burst: parse(get, "DATASTORAGE_AUTH_FAILURE_BURST", 50)?,
            concurrent: 0,
            wait: Duration::ZERO,
        },
    };
    // Reviews of unknown tokens: as many in flight as reviews, waiting at most a review's budget.
    k.failures.concurrent = k.max_concurrent_reviews;
    k.failures.wait = k.timeout;
    Ok(k)
}

pub use ds_domain::service::{EmbeddingMode, FailurePolicy};
use ds_embed_openai::{ApiKey, OpenAiSettings, RetryPolicy};

/// Which embedding provider, with its own settings.
#[derive(Debug, Clone)]
pub enum Provider {
    /// The in-process model (`DATASTORAGE_EMBEDDING_LOCAL_MODEL_DIR`).
    Local,
    /// An OpenAI-compatible endpoint.
    OpenAi(Box<OpenAiSettings>),
}

/// How concurrent embedding requests are gathered into provider calls.
#[derive(Debug, Clone)]
pub struct Batching {
    /// `DATASTORAGE_EMBEDDING_BATCH_MAX_SIZE`: most texts per provider call (default 64).
    pub max_size: usize,
    /// `DATASTORAGE_EMBEDDING_BATCH_MAX_WAIT_MS`: how long a batch may wait for more requests when a call
    /// slot is free (default 0: batches form only while the provider is busy).
    pub max_wait: Duration,
    /// `DATASTORAGE_EMBEDDING_MAX_IN_FLIGHT`: provider calls at once (default: cores for `local`, 4 for
    /// `openai`).
    pub max_in_flight: usize,
}

/// The configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DATASTORAGE_LOG_FORMAT`: `json`, `text` or `auto` (default).
    pub log_format: LogFormat,
    /// `DATASTORAGE_LOG_LEVEL`: a `tracing` filter (default `info`).
    pub log_level: String,
    /// `DATASTORAGE_DB_CONNECT_RETRY_MAX_MS`: longest pause between start-up attempts to reach the
    /// database (default 10000).
    pub db_connect_retry_max: Duration,
    /// `DATASTORAGE_DATABASE_URL` (or `DATABASE_URL`): `postgres://user:pass@host:port/db`.
    pub database_url: DatabaseUrl,
    /// `DATASTORAGE_DATABASE_READ_URL`, `DATASTORAGE_DB_READ_POOL_SIZE` (pool size) and
    /// `DATASTORAGE_DB_READ_MAX_LAG_MS` (5000): the streaming replica that reads go to, if any.
    pub read_replica: Option<ReadReplica>,
    /// `DATASTORAGE_HTTP_ADDR`: API and probes (default `127.0.0.1:8080`).
    pub http_addr: SocketAddr,
    /// `DATASTORAGE_METRICS_ADDR`: Prometheus metrics (default `127.0.0.1:9090`).
    pub metrics_addr: SocketAddr,
    /// `DATASTORAGE_AUTH_MODE`: `kubernetes` or `none` (default `none`, loopback listeners only).
    pub auth_mode: AuthMode,
    /// `DATASTORAGE_EMBEDDING_LOCAL_MODEL_DIR`: the local model's files
    /// (default `target/models/all-MiniLM-L6-v2`, where `cargo xtask fetch-model` puts them).
    pub model_dir: PathBuf,
    /// `DATASTORAGE_EMBEDDING_DIMENSION`: the vector dimension of this deployment (default 384).
    pub embedding_dimension: usize,
    /// `DATASTORAGE_EMBEDDING_PROVIDER`: `local` (default) or `openai` (then the
    /// `DATASTORAGE_EMBEDDING_OPENAI_*` keys and the call settings apply).
    pub embedding_provider: Provider,
    pub embedding_batching: Batching,
    /// `DATASTORAGE_EMBEDDING_MODE`: `inline` (default) or `deferred`.
    pub embedding_mode: EmbeddingMode,
    /// `DATASTORAGE_EMBEDDING_FAILURE_POLICY`: `defer` (default) or `reject`.
    pub embedding_failure_policy: FailurePolicy,
    /// `DATASTORAGE_EMBEDDING_WORKER_INTERVAL_MS`: how often the embedding worker looks for jobs when the
    /// queue was empty (default 1000; 0 disables the worker of this replica).
    pub embedding_worker_interval: Duration,
    /// `DATASTORAGE_EMBEDDING_WORKER_BATCH`: jobs per worker transaction (default 32).
    pub embedding_worker_batch: usize,
    /// Failing jobs: `DATASTORAGE_EMBEDDING_JOB_MAX_ATTEMPTS` (10), `…_JOB_BACKOFF_MS` (30000),
    /// `…_JOB_BACKOFF_MAX_MS` (3600000), `…_JOB_LEASE_SECS` (60).
    pub job_policy: ds_domain::jobs::JobPolicy,
    /// `DATASTORAGE_EMBEDDING_WORKERS`: worker loops of this replica (default 2): while one embeds,
    /// another writes its vectors into the index.
    pub embedding_workers: usize,
    /// `DATASTORAGE_EMBEDDING_CACHE_CAPACITY`: most cached vectors (default 10000; ~1.6 KB each at 384 dims).
    pub embedding_cache_capacity: usize,
    /// `DATASTORAGE_EMBEDDING_CACHE_TTL_SECS`: how long a cached vector is used (default 300).
    pub embedding_cache_ttl: Duration,
    /// `DATASTORAGE_MIGRATE_ON_START`: apply pending migrations at start-up (default `true`).
    pub migrate_on_start: bool,
    /// `DATASTORAGE_DB_POOL_SIZE`: most database connections (default 16).
    pub db_pool_size: usize,
    /// `DATASTORAGE_DB_WAIT_TIMEOUT_MS`: longest wait for a free connection before 503 (default 5000).
    pub db_wait_timeout: Duration,
    /// `DATASTORAGE_HTTP_WORKERS`: actix worker threads (default: number of cores).
    pub http_workers: usize,
    /// `DATASTORAGE_SHUTDOWN_TIMEOUT_SECS`: how long in-flight requests may take after SIGTERM (default 30).
    pub shutdown_timeout: Duration,
    /// `DATASTORAGE_DB_STATEMENT_TIMEOUT_MS`: PostgreSQL `statement_timeout` (default 10000; 0: none).
    pub db_statement_timeout: Duration,
    /// Group commit: `DATASTORAGE_DB_WRITE_SLOTS` (write transactions at once, default 4, at most the pool size),
    /// `DATASTORAGE_DB_GROUP_MAX_RECORDS` (records per shared transaction, default 1000),
    /// `DATASTORAGE_DB_GROUP_WAIT_US` (how long a free slot waits for more writes, default 0).
    pub group_commit: ds_store_pg::GroupCommitSettings,
    /// `DATASTORAGE_SEARCH_EF_SEARCH`: pgvector's `hnsw.ef_search` (default 100, 1–1000).
    pub search_ef_search: u32,
    /// Request limits: `DATASTORAGE_MAX_BODY_BYTES` (2 MiB), `DATASTORAGE_MAX_BATCH_BODY_BYTES`
    /// (16 MiB), `DATASTORAGE_MAX_JSON_DEPTH` (32), `DATASTORAGE_MAX_HEADER_BYTES` (16 KiB),
    /// `DATASTORAGE_REQUEST_TIMEOUT_SECS` (30).
    pub limits: ds_http::Limits,
    /// Admission: `DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND` (500 per caller; 0 disables),
    /// `DATASTORAGE_RATE_LIMIT_BURST` (750), `DATASTORAGE_DB_CONCURRENCY` (requests in the database at
    /// once, default 8 × pool size), `DATASTORAGE_TRUSTED_PROXIES` (comma-separated IPs whose
    /// `X-Forwarded-For` is believed; default none).
    pub admission: ds_http::admission::AdmissionSettings,
    /// The transparency log: `log.*`.
    pub log: LogSettings,
    /// Retention and the maintenance task: `retention.*`.
    pub retention: RetentionSettings,
}

/// Retention (contract §9): `retention.*` keys.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// `DATASTORAGE_RETENTION_DAYS` (default 90, 0 = forever) and `DATASTORAGE_RETENTION_DAYS_<KIND>`.
    pub policy: ds_domain::retention::RetentionPolicy,
    /// `DATASTORAGE_RETENTION_MONTHS_AHEAD`, `DATASTORAGE_RETENTION_BATCH`,
    /// `DATASTORAGE_RETENTION_BATCH_PAUSE_MS`, `DATASTORAGE_RETENTION_PURGE_ROWS_PER_SECOND`,
    /// `DATASTORAGE_RETENTION_DROP_LOCK_WAIT_MS`.
    pub maintenance: ds_domain::retention::MaintenanceSettings,
    /// `DATASTORAGE_RETENTION_MAINTENANCE_INTERVAL_MS`: how often partitions ahead are checked
    /// (0: this replica does not run the maintenance task).
    pub interval: Duration,
    /// `DATASTORAGE_RETENTION_PURGE_INTERVAL_MS`: how often the purge runs (daily).
    pub purge_interval: Duration,
}

/// The transparency log (contract §8): `log.*` keys.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// The checkpoint signer, from `DATASTORAGE_LOG_SIGNING_KEY_FILE` (read at start-up); `serve`
    /// refuses to start without one.
    pub signer: Option<ds_tlog::note::CheckpointSigner>,
    /// `DATASTORAGE_LOG_ORIGIN`: the log's name, the first line of every checkpoint.
    pub origin: String,
    /// `DATASTORAGE_LOG_VERIFIER_KEYS`: verifier keys of earlier signing keys.
    pub verifier_keys: Vec<String>,
    /// `DATASTORAGE_LOG_INTEGRATE_INTERVAL_MS`: how often the sequencer appends committed records.
    pub integrate_interval: Duration,
    /// `DATASTORAGE_LOG_CHECKPOINT_INTERVAL_MS`: at least this often a new checkpoint while the tree grows.
    pub checkpoint_interval: Duration,
    /// `DATASTORAGE_LOG_BATCH`: most records appended per sequencer transaction (at least one queued
    /// statement's), and the ids each run sweeps.
    pub batch: usize,
}

/// The default origin line of checkpoints.
pub const DEFAULT_LOG_ORIGIN: &str = "kubernaut.ai/datastorage";

/// The database URL: used as a `&str`, printed by `Debug` with its password as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(pub String);

/// The read replica's settings (`database.read_*`).
#[derive(Debug, Clone)]
pub struct ReadReplica {
    pub url: DatabaseUrl,
    pub pool_size: usize,
    pub max_lag: Duration,
}

impl std::ops::Deref for DatabaseUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", redact_password(&self.0))
    }
}

/// `scheme://user:password@host/...` with the password replaced by `***` (also in a `password=`
/// query parameter).
pub fn redact_password(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let authority_end = out[rest..].find(['/', '?']).map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..authority_end].rfind('@').map(|i| rest + i)
            && let Some(colon) = out[rest..at].find(':').map(|i| rest + i)
        {
            out.replace_range(colon + 1..at, "***");
        }
    }
    if let Some(q) = out.find('?') {
        let query: Vec<String> = out[q + 1..]
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_owned(),
            })
            .collect();
        out = format!("{}?{}", &out[..q], query.join("&"));
    }
    out
}

/// A configuration error, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("configuration key {key}: {reason}")]
pub struct ConfigError {
    pub key: &'static str,
    pub reason: String,
}

fn parse<T: std::str::FromStr>(
    get: &dyn Fn(&str) -> Option<String>,
    key: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match get(key) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|e| ConfigError {
            key,
            reason: format!("{v:?} is not valid: {e}"),
        }),
    }
}

/// The `openai` provider's keys.
fn openai_settings(
    get: &dyn Fn(&str) -> Option<String>,
    dimension: usize,
) -> Result<OpenAiSettings, ConfigError> {
    let model = get("DATASTORAGE_EMBEDDING_OPENAI_MODEL").ok_or(ConfigError {
        key: "DATASTORAGE_EMBEDDING_OPENAI_MODEL",
        reason:
            "is required with provider `openai` (e.g. text-embedding-3-small, nomic-embed-text)"
                .into(),
    })?;
    let base_url = get("DATASTORAGE_EMBEDDING_OPENAI_BASE_URL")
        .unwrap_or_else(|| "https://api.openai.com/v1".into());
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        return Err(ConfigError {
            key: "DATASTORAGE_EMBEDDING_OPENAI_BASE_URL",
            reason: format!("{base_url:?} is not an http(s) URL"),
        });
    }
    let mut s = OpenAiSettings::new(&base_url, &model, dimension);
    s.dimensions = get("DATASTORAGE_EMBEDDING_OPENAI_DIMENSIONS")
        .map(|v| {
            v.trim().parse::<u32>().map_err(|e| ConfigError {
                key: "DATASTORAGE_EMBEDDING_OPENAI_DIMENSIONS",
                reason: format!("{v:?} is not valid: {e}"),
            })
        })
        .transpose()?;
    // The key's value never goes into an error message.
    let key_error = |key: &'static str| {
        move |e: ds_embed_openai::OpenAiError| ConfigError {
            key,
            reason: e.to_string(),
        }
    };
    s.api_key = match (
        get("DATASTORAGE_EMBEDDING_OPENAI_API_KEY"),
        get("DATASTORAGE_EMBEDDING_OPENAI_API_KEY_FILE"),
    ) {
        (Some(_), Some(_)) => {
            return Err(ConfigError {
                key: "DATASTORAGE_EMBEDDING_OPENAI_API_KEY_FILE",
                reason: "set either the key or the key file, not both".into(),
            });
        }
        (Some(k), None) => {
            Some(ApiKey::new(&k).map_err(key_error("DATASTORAGE_EMBEDDING_OPENAI_API_KEY"))?)
        }
        (None, Some(path)) => {
            let raw = std::fs::read_to_string(&path).map_err(|e| ConfigError {
                key: "DATASTORAGE_EMBEDDING_OPENAI_API_KEY_FILE",
                reason: format!("cannot read {path}: {e}"),
            })?;
            Some(
                ApiKey::new(&raw)
                    .map_err(key_error("DATASTORAGE_EMBEDDING_OPENAI_API_KEY_FILE"))?,
            )
        }
        (None, None) => None,
    };
    s.attempt_timeout =
        Duration::from_millis(parse(get, "DATASTORAGE_EMBEDDING_TIMEOUT_MS", 5000)?);
    s.retry = RetryPolicy {
        max_retries: parse(get, "DATASTORAGE_EMBEDDING_MAX_RETRIES", 2)?,
        base_delay: Duration::from_millis(parse(get, "DATASTORAGE_EMBEDDING_RETRY_BASE_MS", 100)?),
        max_delay: Duration::from_millis(parse(get, "DATASTORAGE_EMBEDDING_RETRY_MAX_MS", 2000)?),
        budget: Duration::from_millis(parse(get, "DATASTORAGE_EMBEDDING_CALL_BUDGET_MS", 10_000)?),
    };
    s.circuit_threshold = parse(get, "DATASTORAGE_EMBEDDING_CIRCUIT_THRESHOLD", 5)?;
    s.circuit_cooldown = Duration::from_secs(parse(
        get,
        "DATASTORAGE_EMBEDDING_CIRCUIT_COOLDOWN_SECS",
        30,
    )?);
    s.max_batch = parse(get, "DATASTORAGE_EMBEDDING_BATCH_MAX_SIZE", 64)?;
    if s.attempt_timeout.is_zero() {
        return Err(ConfigError {
            key: "DATASTORAGE_EMBEDDING_TIMEOUT_MS",
            reason: "must be at least 1".into(),
        });
    }
    Ok(s)
}

impl Config {
    /// Reads the process environment only.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::load(None)
    }

    /// Reads `file` (when given), then the process environment over it.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_sources(&env_value, &FileValues::load(file)?)
    }

    /// `env` over `file`; an error says where the offending value came from.
    pub fn from_sources(
        env: &dyn Fn(&str) -> Option<String>,
        file: &FileValues,
    ) -> Result<Self, ConfigError> {
        let get = |k: &str| env(k).or_else(|| file.values.get(k).cloned());
        Self::from_lookup(&get).map_err(|mut e| {
            if env(e.key).is_some() {
                e.reason = format!("{} (from the environment)", e.reason);
            } else if file.values.contains_key(e.key) {
                let at = keys::by_env(e.key).map_or(e.key, |k| k.file);
                e.reason = format!("{} (from `{at}` in {})", e.reason, file.path);
            }
            e
        })
    }

    /// Reads any key → value lookup (tests pass a map).
    pub fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let database_url = get("DATASTORAGE_DATABASE_URL")
            .or_else(|| get("DATABASE_URL"))
            .ok_or(ConfigError {
                key: "DATASTORAGE_DATABASE_URL",
                reason: "is required (postgres://user:password@host:port/database)".into(),
            })?;
        let auth_mode = match get("DATASTORAGE_AUTH_MODE").as_deref().unwrap_or("none") {
            "none" => AuthMode::None,
            "kubernetes" => AuthMode::Kubernetes(Box::new(kubernetes_auth(get)?)),
            other => {
                return Err(ConfigError {
                    key: "DATASTORAGE_AUTH_MODE",
                    reason: format!("{other:?} is not `kubernetes` or `none`"),
                });
            }
        };
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let embedding_dimension: usize = parse(get, "DATASTORAGE_EMBEDDING_DIMENSION", 384)?;
        let embedding_provider = match get("DATASTORAGE_EMBEDDING_PROVIDER")
            .as_deref()
            .unwrap_or("local")
        {
            "local" => Provider::Local,
            "openai" => Provider::OpenAi(Box::new(openai_settings(get, embedding_dimension)?)),
            other => {
                return Err(ConfigError {
                    key: "DATASTORAGE_EMBEDDING_PROVIDER",
                    reason: format!("{other:?} is not `local` or `openai`"),
                });
            }
        };
        let default_in_flight = match embedding_provider {
            Provider::Local => cores,
            Provider::OpenAi(_) => 4,
        };
        let embedding_batching = Batching {
            max_size: parse(get, "DATASTORAGE_EMBEDDING_BATCH_MAX_SIZE", 64)?,
            max_wait: Duration::from_millis(parse(
                get,
                "DATASTORAGE_EMBEDDING_BATCH_MAX_WAIT_MS",
                0,
            )?),
            max_in_flight: parse(
                get,
                "DATASTORAGE_EMBEDDING_MAX_IN_FLIGHT",
                default_in_flight,
            )?,
        };
        let db_pool_size: usize = parse(get, "DATASTORAGE_DB_POOL_SIZE", 16)?;
        let config = Config {
            log_format: match get("DATASTORAGE_LOG_FORMAT").as_deref().unwrap_or("auto") {
                "json" => LogFormat::Json,
                "text" => LogFormat::Text,
                "auto" => LogFormat::Auto,
                other => {
                    return Err(ConfigError {
                        key: "DATASTORAGE_LOG_FORMAT",
                        reason: format!("{other:?} is not `json`, `text` or `auto`"),
                    });
                }
            },
            log_level: get("DATASTORAGE_LOG_LEVEL").unwrap_or_else(|| "info".into()),
            db_connect_retry_max: Duration::from_millis(parse(
                get,
                "DATASTORAGE_DB_CONNECT_RETRY_MAX_MS",
                10_000,
            )?),
            db_statement_timeout: Duration::from_millis(parse(
                get,
                "DATASTORAGE_DB_STATEMENT_TIMEOUT_MS",
                10_000,
            )?),
            group_commit: ds_store_pg::GroupCommitSettings {
                max_in_flight: parse(get, "DATASTORAGE_DB_WRITE_SLOTS", db_pool_size.clamp(1, 4))?,
                max_records: parse(get, "DATASTORAGE_DB_GROUP_MAX_RECORDS", 1000)?,
                max_wait: Duration::from_micros(parse(get, "DATASTORAGE_DB_GROUP_WAIT_US", 0)?),
            },
            search_ef_search: parse(get, "DATASTORAGE_SEARCH_EF_SEARCH", 100)?,
            limits: Self::limits(get)?,
            admission: Self::admission(get, db_pool_size.max(1))?,
            log: Self::log(get)?,
            retention: Self::retention(get)?,
            database_url: DatabaseUrl(database_url),
            read_replica: match get("DATASTORAGE_DATABASE_READ_URL") {
                Some(url) if !url.trim().is_empty() => Some(ReadReplica {
                    url: DatabaseUrl(url),
                    pool_size: parse(get, "DATASTORAGE_DB_READ_POOL_SIZE", db_pool_size)?,
                    max_lag: Duration::from_millis(parse(
                        get,
                        "DATASTORAGE_DB_READ_MAX_LAG_MS",
                        5000,
                    )?),
                }),
                _ => None,
            },
            http_addr: parse(
                get,
                "DATASTORAGE_HTTP_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 8080)),
            )?,
            metrics_addr: parse(
                get,
                "DATASTORAGE_METRICS_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 9090)),
            )?,
            auth_mode,
            model_dir: get("DATASTORAGE_EMBEDDING_LOCAL_MODEL_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target/models/all-MiniLM-L6-v2")),
            embedding_dimension,
            embedding_provider,
            embedding_batching,
            embedding_mode: match get("DATASTORAGE_EMBEDDING_MODE")
                .as_deref()
                .unwrap_or("inline")
            {
                "inline" => EmbeddingMode::Inline,
                "deferred" => EmbeddingMode::Deferred,
                other => {
                    return Err(ConfigError {
                        key: "DATASTORAGE_EMBEDDING_MODE",
                        reason: format!("{other:?} is not `inline` or `deferred`"),
                    });
                }
            },
            embedding_failure_policy: match get("DATASTORAGE_EMBEDDING_FAILURE_POLICY")
                .as_deref()
                .unwrap_or("defer")
            {
                "defer" => FailurePolicy::Defer,
                "reject" => FailurePolicy::Reject,
                other => {
                    return Err(ConfigError {
                        key: "DATASTORAGE_EMBEDDING_FAILURE_POLICY",
                        reason: format!("{other:?} is not `defer` or `reject`"),
                    });
                }
            },
            embedding_worker_interval: Duration::from_millis(parse(
                get,
                "DATASTORAGE_EMBEDDING_WORKER_INTERVAL_MS",
                1000,
            )?),
            embedding_worker_batch: parse(get, "DATASTORAGE_EMBEDDING_WORKER_BATCH", 32)?,
            job_policy: ds_domain::jobs::JobPolicy {
                max_attempts: parse(get, "DATASTORAGE_EMBEDDING_JOB_MAX_ATTEMPTS", 10)?,
                backoff_base: Duration::from_millis(parse(
                    get,
                    "DATASTORAGE_EMBEDDING_JOB_BACKOFF_MS",
                    30_000,
                )?),
                backoff_max: Duration::from_millis(parse(
                    get,
                    "DATASTORAGE_EMBEDDING_JOB_BACKOFF_MAX_MS",
                    3_600_000,
                )?),
                lease: Duration::from_secs(parse(get, "DATASTORAGE_EMBEDDING_JOB_LEASE_SECS", 60)?),
            },
            embedding_workers: parse(get, "DATASTORAGE_EMBEDDING_WORKERS", 2)?,
            embedding_cache_capacity: parse(get, "DATASTORAGE_EMBEDDING_CACHE_CAPACITY", 10_000)?,
            embedding_cache_ttl: Duration::from_secs(parse(
                get,
                "DATASTORAGE_EMBEDDING_CACHE_TTL_SECS",
                300,
            )?),
            migrate_on_start: parse(get, "DATASTORAGE_MIGRATE_ON_START", true)?,
            db_pool_size,
            db_wait_timeout: Duration::from_millis(parse(
                get,
                "DATASTORAGE_DB_WAIT_TIMEOUT_MS",
                5000,
            )?),
            http_workers: parse(get, "DATASTORAGE_HTTP_WORKERS", cores)?,
            shutdown_timeout: Duration::from_secs(parse(
                get,
                "DATASTORAGE_SHUTDOWN_TIMEOUT_SECS",
                30,
            )?),
        };
        config.check()?;
        Ok(config)
    }

    fn limits(get: &dyn Fn(&str) -> Option<String>) -> Result<ds_http::Limits, ConfigError> {
        let d = ds_http::Limits::default();
        let limits = ds_http::Limits {
            body_bytes: parse(get, "DATASTORAGE_MAX_BODY_BYTES", d.body_bytes)?,
            batch_body_bytes: parse(get, "DATASTORAGE_MAX_BATCH_BODY_BYTES", d.batch_body_bytes)?,
            json_depth: parse(get, "DATASTORAGE_MAX_JSON_DEPTH", d.json_depth)?,
            header_bytes: parse(get, "DATASTORAGE_MAX_HEADER_BYTES", d.header_bytes)?,
            request_timeout: Duration::from_secs(parse(
                get,
                "DATASTORAGE_REQUEST_TIMEOUT_SECS",
                d.request_timeout.as_secs(),
            )?),
            ..d
        };
        for (key, v) in [
            ("DATASTORAGE_MAX_BODY_BYTES", limits.body_bytes),
            ("DATASTORAGE_MAX_BATCH_BODY_BYTES", limits.batch_body_bytes),
            ("DATASTORAGE_MAX_JSON_DEPTH", limits.json_depth),
            ("DATASTORAGE_MAX_HEADER_BYTES", limits.header_bytes),
            (
                "DATASTORAGE_REQUEST_TIMEOUT_SECS",
                limits.request_timeout.as_secs() as usize,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError {
                    key,
                    reason: "must be at least 1".into(),
                });
            }
        }
        Ok(limits)
    }

    fn admission(
        get: &dyn Fn(&str) -> Option<String>,
        pool: usize,
    ) -> Result<ds_http::admission::AdmissionSettings, ConfigError> {
        let trusted_proxies = match get("DATASTORAGE_TRUSTED_PROXIES") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse().map_err(|e| ConfigError {
                        key: "DATASTORAGE_TRUSTED_PROXIES",
                        reason: format!("{s:?} is not an IP address: {e}"),
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let d = ds_http::admission::AdmissionSettings::default();
        let a = ds_http::admission::AdmissionSettings {
            writes_per_second: parse(
                get,
                "DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND",
                d.writes_per_second,
            )?,
            burst: parse(get, "DATASTORAGE_RATE_LIMIT_BURST", d.burst)?,
            searches_per_second: parse(
                get,
                "DATASTORAGE_RATE_LIMIT_SEARCHES_PER_SECOND",
                d.searches_per_second,
            )?,
            search_burst: parse(get, "DATASTORAGE_RATE_LIMIT_SEARCH_BURST", d.search_burst)?,
            db_concurrency: parse(get, "DATASTORAGE_DB_CONCURRENCY", pool * 8)?,
            body_budget_bytes: parse(
                get,
                "DATASTORAGE_MAX_BODY_BUDGET_BYTES",
                d.body_budget_bytes,
            )?,
            trusted_proxies,
        };
        if !(a.searches_per_second.is_finite() && a.searches_per_second >= 0.0) {
            return Err(ConfigError {
                key: "DATASTORAGE_RATE_LIMIT_SEARCHES_PER_SECOND",
                reason: "must be a number of searches per second, 0 to turn the search limit off"
                    .into(),
            });
        }
        if a.db_concurrency == 0 {
            return Err(ConfigError {
                key: "DATASTORAGE_DB_CONCURRENCY",
                reason: "must be at least 1".into(),
            });
        }
        if !(a.writes_per_second.is_finite() && a.writes_per_second >= 0.0) {
            return Err(ConfigError {
                key: "DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND",
                reason: "must be a number of records per second, 0 to turn rate limiting off"
                    .into(),
            });
        }
        if a.writes_per_second > 0.0 && a.burst == 0 {
            return Err(ConfigError {
                key: "DATASTORAGE_RATE_LIMIT_BURST",
                reason: "must be at least 1 when rate limiting is on".into(),
            });
        }
        Ok(a)
    }

    fn retention(get: &dyn Fn(&str) -> Option<String>) -> Result<RetentionSettings, ConfigError> {
        use ds_domain::Kind;
        let mut policy = ds_domain::retention::RetentionPolicy {
            default_days: parse(get, "DATASTORAGE_RETENTION_DAYS", 90)?,
            kinds: std::collections::BTreeMap::new(),
        };
        for (kind, key) in [
            (Kind::Remediation, "DATASTORAGE_RETENTION_DAYS_REMEDIATION"),
            (Kind::AiAnalysis, "DATASTORAGE_RETENTION_DAYS_AIANALYSIS"),
            (Kind::Workflow, "DATASTORAGE_RETENTION_DAYS_WORKFLOW"),
            (Kind::Execution, "DATASTORAGE_RETENTION_DAYS_EXECUTION"),
        ] {
            if get(key).is_some() {
                policy.kinds.insert(kind, parse(get, key, 0)?);
            }
        }
        let maintenance = ds_domain::retention::MaintenanceSettings {
            months_ahead: parse(get, "DATASTORAGE_RETENTION_MONTHS_AHEAD", 3)?,
            batch: parse(get, "DATASTORAGE_RETENTION_BATCH", 1000)?,
            pause: Duration::from_millis(parse(get, "DATASTORAGE_RETENTION_BATCH_PAUSE_MS", 100)?),
            rows_per_second: parse(get, "DATASTORAGE_RETENTION_PURGE_ROWS_PER_SECOND", 5000)?,
            drop_lock_wait: Duration::from_millis(parse(
                get,
                "DATASTORAGE_RETENTION_DROP_LOCK_WAIT_MS",
                200,
            )?),
            ..ds_domain::retention::MaintenanceSettings::default()
        };
        let settings = RetentionSettings {
            policy,
            maintenance,
            interval: Duration::from_millis(parse(
                get,
                "DATASTORAGE_RETENTION_MAINTENANCE_INTERVAL_MS",
                3_600_000,
            )?),
            purge_interval: Duration::from_millis(parse(
                get,
                "DATASTORAGE_RETENTION_PURGE_INTERVAL_MS",
                86_400_000,
            )?),
        };
        for (key, bad, reason) in [
            (
                "DATASTORAGE_RETENTION_MONTHS_AHEAD",
                !(1..=24).contains(&settings.maintenance.months_ahead),
                "must be 1 to 24",
            ),
            (
                "DATASTORAGE_RETENTION_BATCH",
                !(1..=100_000).contains(&settings.maintenance.batch),
                "must be 1 to 100000",
            ),
            (
                "DATASTORAGE_RETENTION_PURGE_INTERVAL_MS",
                settings.purge_interval.is_zero(),
                "must be at least 1",
            ),
        ] {
            if bad {
                return Err(ConfigError {
                    key,
                    reason: reason.into(),
                });
            }
        }
        Ok(settings)
    }

    fn log(get: &dyn Fn(&str) -> Option<String>) -> Result<LogSettings, ConfigError> {
        let origin = get("DATASTORAGE_LOG_ORIGIN").unwrap_or_else(|| DEFAULT_LOG_ORIGIN.to_owned());
        let signer = match get("DATASTORAGE_LOG_SIGNING_KEY_FILE") {
            None => None,
            Some(path) => {
                let key_error = |reason: String| ConfigError {
                    key: "DATASTORAGE_LOG_SIGNING_KEY_FILE",
                    reason,
                };
                let raw = std::fs::read_to_string(&path)
                    .map_err(|e| key_error(format!("cannot read {path}: {e}")))?;
                Some(
                    ds_tlog::note::CheckpointSigner::new(&origin, &raw)
                        .map_err(|e| key_error(format!("{path}: {e}")))?,
                )
            }
        };
        let settings = LogSettings {
            signer,
            origin,
            verifier_keys: list(get, "DATASTORAGE_LOG_VERIFIER_KEYS"),
            integrate_interval: Duration::from_millis(parse(
                get,
                "DATASTORAGE_LOG_INTEGRATE_INTERVAL_MS",
                1000,
            )?),
            checkpoint_interval: Duration::from_millis(parse(
                get,
                "DATASTORAGE_LOG_CHECKPOINT_INTERVAL_MS",
                10_000,
            )?),
            batch: parse(get, "DATASTORAGE_LOG_BATCH", 10_000)?,
        };
        if settings.origin.trim().is_empty() || settings.origin.contains('\n') {
            return Err(ConfigError {
                key: "DATASTORAGE_LOG_ORIGIN",
                reason: "must be one non-empty line".into(),
            });
        }
        for (key, zero) in [
            (
                "DATASTORAGE_LOG_INTEGRATE_INTERVAL_MS",
                settings.integrate_interval.is_zero(),
            ),
            (
                "DATASTORAGE_LOG_CHECKPOINT_INTERVAL_MS",
                settings.checkpoint_interval.is_zero(),
            ),
            ("DATASTORAGE_LOG_BATCH", settings.batch == 0),
        ] {
            if zero {
                return Err(ConfigError {
                    key,
                    reason: "must be at least 1".into(),
                });
            }
        }
        if !settings.verifier_keys.is_empty() {
            ds_tlog::note::CheckpointVerifier::new(&settings.origin, &settings.verifier_keys)
                .map_err(|e| ConfigError {
                    key: "DATASTORAGE_LOG_VERIFIER_KEYS",
                    reason: e.to_string(),
                })?;
        }
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let largest_body = self.limits.body_bytes.max(self.limits.batch_body_bytes);
        if self.admission.body_budget_bytes < largest_body {
            return Err(ConfigError {
                key: "DATASTORAGE_MAX_BODY_BUDGET_BYTES",
                reason: format!(
                    "{} is below the largest body a request may have ({largest_body}): such a request could never be read",
                    self.admission.body_budget_bytes
                ),
            });
        }
        if self.auth_mode == AuthMode::None {
            for (key, addr) in [
                ("DATASTORAGE_HTTP_ADDR", self.http_addr),
                ("DATASTORAGE_METRICS_ADDR", self.metrics_addr),
            ] {
                if !addr.ip().is_loopback() {
                    return Err(ConfigError {
                        key,
                        reason: format!(
                            "{addr} is not a loopback address, and auth mode `none` is only allowed when every listener is on loopback"
                        ),
                    });
                }
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err(ConfigError {
                key: "DATASTORAGE_LOG_LEVEL",
                reason: format!("{:?} is not a log filter: {e}", self.log_level),
            });
        }
        if self.db_connect_retry_max.is_zero() {
            return Err(ConfigError {
                key: "DATASTORAGE_DB_CONNECT_RETRY_MAX_MS",
                reason: "must be at least 1".into(),
            });
        }
        if let Some(r) = &self.read_replica {
            if r.pool_size == 0 {
                return Err(ConfigError {
                    key: "DATASTORAGE_DB_READ_POOL_SIZE",
                    reason: "must be at least 1".into(),
                });
            }
            if r.max_lag.is_zero() {
                return Err(ConfigError {
                    key: "DATASTORAGE_DB_READ_MAX_LAG_MS",
                    reason: "must be at least 1".into(),
                });
            }
        }
        if self.job_policy.max_attempts == 0 {
            return Err(ConfigError {
                key: "DATASTORAGE_EMBEDDING_JOB_MAX_ATTEMPTS",
                reason: "must be at least 1".into(),
            });
        }
        if self.job_policy.lease.is_zero() {
            return Err(ConfigError {
                key: "DATASTORAGE_EMBEDDING_JOB_LEASE_SECS",
                reason: "must be at least 1".into(),
            });
        }
        if self.db_pool_size == 0 {
            return Err(ConfigError {
                key: "DATASTORAGE_DB_POOL_SIZE",
                reason: "must be at least 1".into(),
            });
        }
        if self.group_commit.max_in_flight == 0
            || self.group_commit.max_in_flight > self.db_pool_size
        {
            return Err(ConfigError {
                key: "DATASTORAGE_DB_WRITE_SLOTS",
                reason: format!(
                    "must be between 1 and the pool size ({})",
                    self.db_pool_size
                ),
            });
        }
        if !(1..=1000).contains(&self.search_ef_search) {
            return Err(ConfigError {
                key: "DATASTORAGE_SEARCH_EF_SEARCH",
                reason: "must be between 1 and 1000".into(),
            });
        }
        if self.group_commit.max_records == 0 {
            return Err(ConfigError {
                key: "DATASTORAGE_DB_GROUP_MAX_RECORDS",
                reason: "must be at least 1".into(),
            });
        }
        if self.http_workers == 0 {
            return Err(ConfigError {
                key: "DATASTORAGE_HTTP_WORKERS",
                reason: "must be at least 1".into(),
            });
        }
        for (key, value) in [
            (
                "DATASTORAGE_EMBEDDING_BATCH_MAX_SIZE",
                self.embedding_batching.max_size,
            ),
            (
                "DATASTORAGE_EMBEDDING_MAX_IN_FLIGHT",
                self.embedding_batching.max_in_flight,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError {
                    key,
                    reason: "must be at least 1".into(),
                });
            }
        }
        if !(1..=16000).contains(&self.embedding_dimension) {
            return Err(ConfigError {
                key: "DATASTORAGE_EMBEDDING_DIMENSION",
                reason: "must be 1 to 16000".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(&|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_apply() {
        let c = load(&[("DATASTORAGE_DATABASE_URL", "postgres://x@127.0.0.1/db")]).unwrap();
        assert_eq!(c.http_addr.port(), 8080);
        assert_eq!(c.metrics_addr.port(), 9090);
        assert_eq!(c.embedding_dimension, 384);
        assert!(c.migrate_on_start);
    }

    #[test]
    fn errors_name_the_key() {
        let e = load(&[]).unwrap_err();
        assert_eq!(e.key, "DATASTORAGE_DATABASE_URL");
        let e = load(&[
            ("DATABASE_URL", "postgres://x/db"),
            ("DATASTORAGE_DB_POOL_SIZE", "many"),
        ])
        .unwrap_err();
        assert_eq!(e.key, "DATASTORAGE_DB_POOL_SIZE");
        assert!(e.to_string().contains("DATASTORAGE_DB_POOL_SIZE"));
    }

    #[test]
    fn auth_none_is_refused_on_a_non_loopback_listener() {
        let e = load(&[
            ("DATABASE_URL", "postgres://x/db"),
            ("DATASTORAGE_HTTP_ADDR", "0.0.0.0:8080"),
        ])
        .unwrap_err();
        assert_eq!(e.key, "DATASTORAGE_HTTP_ADDR");
        assert!(e.reason.contains("loopback"));
        let e = load(&[
            ("DATABASE_URL", "postgres://x/db"),
            ("DATASTORAGE_AUTH_MODE", "oauth"),
        ])
        .unwrap_err();
        assert_eq!(e.key, "DATASTORAGE_AUTH_MODE");
    }

    #[test]
    fn openai_provider_keys() {
        let c = load(&[
            ("DATABASE_URL", "postgres://x/db"),
            ("DATASTORAGE_EMBEDDING_PROVIDER", "openai"),
            (
                "DATASTORAGE_EMBEDDING_OPENAI_BASE_URL",
                "http://ollama:11434/v1/",
            ),
            ("DATASTORAGE_EMBEDDING_OPENAI_MODEL", "nomic-embed-text"),
            ("DATASTORAGE_EMBEDDING_DIMENSION", "768"),
            ("DATASTORAGE_EMBEDDING_OPENAI_API_KEY", "sk-test-123"),
            ("DATASTORAGE_EMBEDDING_MAX_RETRIES", "4"),
        ])
        .unwrap();
        let Provider::OpenAi(s) = &c.embedding_provider else {
            panic!("expected openai")
        };
        assert_eq!(s.base_url, "http://ollama:11434/v1");
        assert_eq!(s.expected_dimension, 768);
        assert_eq!(s.retry.max_retries, 4);
        assert_eq!(c.embedding_batching.max_in_flight, 4);
        // The key is kept but never printed.
        assert!(s.api_key.is_some());
        assert!(!format!("{c:?}").contains("sk-test-123"));

        let e = load(&[
            ("DATABASE_URL", "postgres://x/db"),
            ("DATASTORAGE_EMBEDDING_PROVIDER", "openai"),
        ])
        .unwrap_err();
        assert_eq!(e.key, "DATASTORAGE_EMBEDDING_OPENAI_MODEL");
        let e = load(&[
            ("DATABASE_URL", "postgres://x/db"),
            ("DATASTORAGE_EMBEDDING_PROVIDER", "openai"),
            ("DATASTORAGE_EMBEDDING_OPENAI_MODEL", "m"),
            (
                "DATASTORAGE_EMBEDDING_OPENAI_API_KEY",
                "sk-bad key\nwith spaces",
            ),
        ])
        .unwrap_err();
        assert_eq!(e.key, "DATASTORAGE_EMBEDDING_OPENAI_API_KEY");
        assert!(!e.to_string().contains("sk-bad"), "{e}");
        let e = load(&[
            ("DATABASE_URL", "postgres://x/db"),
            ("DATASTORAGE_EMBEDDING_PROVIDER", "cohere"),
        ])
        .unwrap_err();
        assert_eq!(e.key, "DATASTORAGE_EMBEDDING_PROVIDER");
    }

    #[test]
    fn openai_key_from_a_file_is_trimmed() {
        let dir = std::env::temp_dir().join(format!("ds-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, "sk-from-file\n").unwrap();
        let path = file.to_string_lossy().into_owned();
        let c = load(&[
            ("DATABASE_URL", "postgres://x/db"),
            ("DATASTORAGE_EMBEDDING_PROVIDER", "openai"),
            ("DATASTORAGE_EMBEDDING_OPENAI_MODEL", "m"),
            ("DATASTORAGE_EMBEDDING_OPENAI_API_KEY_FILE", &path),
        ])
        .unwrap();
        assert!(matches!(&c.embedding_provider, Provider::OpenAi(s) if s.api_key.is_some()));
        let e = load(&[
            ("DATABASE_URL", "postgres://x/db"),
            ("DATASTORAGE_EMBEDDING_PROVIDER", "openai"),
            ("DATASTORAGE_EMBEDDING_OPENAI_MODEL", "m"),
            (
                "DATASTORAGE_EMBEDDING_OPENAI_API_KEY_FILE",
                "/nonexistent/key",
            ),
        ])
        .unwrap_err();
        assert_eq!(e.key, "DATASTORAGE_EMBEDDING_OPENAI_API_KEY_FILE");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_key_the_code_reads_is_registered_and_every_registered_key_is_read() {
        let source = include_str!("config.rs");
        let code = source.split("#[cfg(test)]").next().unwrap();
        let read: std::collections::BTreeSet<&str> = code
            .match_indices("\"DATASTORAGE_")
            .map(|(i, _)| {
                let rest = &code[i + 1..];
                &rest[..rest.find('"').unwrap()]
            })
            .collect();
        let registered: std::collections::BTreeSet<&str> =
            keys::KEYS.iter().map(|k| k.env).collect();
        assert_eq!(read, registered);
        let files: std::collections::BTreeSet<&str> = keys::KEYS.iter().map(|k| k.file).collect();
        assert_eq!(files.len(), keys::KEYS.len(), "file keys are unique");
    }

    /// The documented defaults are the code's: a configuration given every documented value explicitly
    /// equals the configuration given none.
    #[test]
    fn documented_defaults_are_the_code_defaults() {
        for provider in [
            vec![],
            vec![
                ("DATASTORAGE_EMBEDDING_PROVIDER", "openai"),
                ("DATASTORAGE_EMBEDDING_OPENAI_MODEL", "m"),
            ],
        ] {
            let mut base = vec![("DATABASE_URL", "postgres://x@127.0.0.1/db")];
            base.extend(provider);
            let implicit = load(&base).unwrap();
            let mut explicit = base.clone();
            for k in keys::KEYS {
                if let keys::Default::Value(v) = k.default
                    && !base.iter().any(|(e, _)| *e == k.env)
                {
                    explicit.push((k.env, v));
                }
            }
            let explicit = load(&explicit).unwrap();
            assert_eq!(format!("{implicit:?}"), format!("{explicit:?}"));
        }
    }

    #[test]
    fn docs_configuration_md_has_the_reference_table() {
        let doc = include_str!("../../../docs/configuration.md");
        assert!(
            doc.contains(&keys::markdown()),
            "docs/configuration.md is out of date: regenerate its table with `datastorage config keys --markdown`"
        );
    }

    #[test]
    fn debug_prints_the_database_url_without_its_password() {
        let secret = Config::from_lookup(&|k| {
            (k == "DATASTORAGE_DATABASE_URL")
                .then(|| "postgres://ds:s3cret-pw@db:5432/audit?password=other-secret".to_owned())
        })
        .unwrap();
        let printed = format!("{secret:?}");
        assert!(
            !printed.contains("s3cret-pw") && !printed.contains("other-secret"),
            "{printed}"
        );
        assert!(
            printed.contains("postgres://ds:***@db:5432/audit?password=***"),
            "{printed}"
        );
    }

    #[test]
    fn the_environment_overrides_the_file_and_errors_say_where_the_value_came_from() {
        let file = FileValues::parse(
            "[database]\nurl = \"postgres://f@127.0.0.1/db\"\npool_size = 8\n[server]\nhttp_workers = 3\n",
            "/etc/ds.toml",
        )
        .unwrap();
        let env: HashMap<&str, &str> = HashMap::from([("DATASTORAGE_DB_POOL_SIZE", "24")]);
        let c = Config::from_sources(&|k| env.get(k).map(|v| v.to_string()), &file).unwrap();
        assert_eq!(c.db_pool_size, 24);
        assert_eq!(c.http_workers, 3);
        assert_eq!(&*c.database_url, "postgres://f@127.0.0.1/db");

        let bad = FileValues::parse(
            "[database]\nurl = \"postgres://x/db\"\npool_size = \"lots\"\n",
            "/etc/ds.toml",
        )
        .unwrap();
        let e = Config::from_sources(&|_| None, &bad).unwrap_err();
        assert_eq!(e.key, "DATASTORAGE_DB_POOL_SIZE");
        assert!(
            e.to_string()
                .contains("from `database.pool_size` in /etc/ds.toml"),
            "{e}"
        );
        let env: HashMap<&str, &str> = HashMap::from([("DATASTORAGE_HTTP_WORKERS", "0")]);
        let e = Config::from_sources(&|k| env.get(k).map(|v| v.to_string()), &file).unwrap_err();
        assert_eq!(e.key, "DATASTORAGE_HTTP_WORKERS");
        assert!(e.to_string().contains("from the environment"), "{e}");
        let e = load(&[
            ("DATABASE_URL", "postgres://x/db"),
            ("DATASTORAGE_LOG_LEVEL", "info,=["),
        ])
        .unwrap_err();
        assert_eq!(e.key, "DATASTORAGE_LOG_LEVEL");
    }
}
