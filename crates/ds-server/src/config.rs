//! The service's configuration: one typed struct, read from `DATASTORAGE_*` environment variables.
//! Invalid configuration stops start-up with a message that names the key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How callers are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No authentication: for local development only, refused unless every listener is on loopback.
    None,
}

pub use ds_domain::service::{EmbeddingMode, FailurePolicy};

/// The configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DATASTORAGE_DATABASE_URL` (or `DATABASE_URL`): `postgres://user:pass@host:port/db`.
    pub database_url: String,
    /// `DATASTORAGE_HTTP_ADDR`: API and probes (default `127.0.0.1:8080`).
    pub http_addr: SocketAddr,
    /// `DATASTORAGE_METRICS_ADDR`: Prometheus metrics (default `127.0.0.1:9090`).
    pub metrics_addr: SocketAddr,
    /// `DATASTORAGE_AUTH_MODE`: `none` (the only mode of this version).
    pub auth_mode: AuthMode,
    /// `DATASTORAGE_EMBEDDING_LOCAL_MODEL_DIR`: the local model's files
    /// (default `target/models/all-MiniLM-L6-v2`, where `cargo xtask fetch-model` puts them).
    pub model_dir: PathBuf,
    /// `DATASTORAGE_EMBEDDING_DIMENSION`: the vector dimension of this deployment (default 384).
    pub embedding_dimension: usize,
    /// `DATASTORAGE_EMBEDDING_MODE`: `inline` (default) or `deferred`.
    pub embedding_mode: EmbeddingMode,
    /// `DATASTORAGE_EMBEDDING_FAILURE_POLICY`: `defer` (default) or `reject`.
    pub embedding_failure_policy: FailurePolicy,
    /// `DATASTORAGE_EMBEDDING_WORKER_INTERVAL_MS`: how often the embedding worker looks for jobs when the
    /// queue was empty (default 1000; 0 disables the worker of this replica).
    pub embedding_worker_interval: Duration,
    /// `DATASTORAGE_EMBEDDING_WORKER_BATCH`: jobs per worker transaction (default 32).
    pub embedding_worker_batch: usize,
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

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
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
            other => {
                return Err(ConfigError {
                    key: "DATASTORAGE_AUTH_MODE",
                    reason: format!(
                        "{other:?} is not supported by this version; the supported mode is `none`"
                    ),
                });
            }
        };
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let config = Config {
            database_url,
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
            embedding_dimension: parse(get, "DATASTORAGE_EMBEDDING_DIMENSION", 384)?,
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
            embedding_cache_capacity: parse(get, "DATASTORAGE_EMBEDDING_CACHE_CAPACITY", 10_000)?,
            embedding_cache_ttl: Duration::from_secs(parse(
                get,
                "DATASTORAGE_EMBEDDING_CACHE_TTL_SECS",
                300,
            )?),
            migrate_on_start: parse(get, "DATASTORAGE_MIGRATE_ON_START", true)?,
            db_pool_size: parse(get, "DATASTORAGE_DB_POOL_SIZE", 16)?,
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

    fn check(&self) -> Result<(), ConfigError> {
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
        if self.db_pool_size == 0 {
            return Err(ConfigError {
                key: "DATASTORAGE_DB_POOL_SIZE",
                reason: "must be at least 1".into(),
            });
        }
        if self.http_workers == 0 {
            return Err(ConfigError {
                key: "DATASTORAGE_HTTP_WORKERS",
                reason: "must be at least 1".into(),
            });
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
            ("DATASTORAGE_AUTH_MODE", "tokenreview"),
        ])
        .unwrap_err();
        assert_eq!(e.key, "DATASTORAGE_AUTH_MODE");
    }
}
