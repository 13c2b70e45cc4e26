//! Logs: JSON lines (or text on a terminal), one span per request.
//!
//! Metrics: the catalogue of every metric the service emits, the Prometheus recorder (histogram
//! buckets per metric, help texts), and the gauges refreshed at each scrape.
//!
//! The catalogue is the one list docs/operations.md, the alert rules and the dashboard are checked
//! against: a test scrapes `/metrics` after real traffic and finds every entry with its type and
//! labels, and every metric that deploy/monitoring references in the catalogue.

use crate::config::{Config, LogFormat};
use anyhow::Context;
use ds_metrics::labels::{ConnState, Pool, Version};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Installs the process's log subscriber, writing to `writer` (stdout in the binary): JSON objects,
/// one per line, each event with the fields of the request span it belongs to (`span.correlation_id`,
/// `span.method`, `span.route`); or text for people when `log.format` says so (or `auto` on a
/// terminal). The level filter is `log.level`.
pub fn init_logging<W>(config: &Config, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::new(&config.log_level);
    let json = match config.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
}

pub use ds_metrics::{CATALOGUE, Def as Metric, Emitted, LATENCY_BUCKETS, SIZE_BUCKETS, Type};

/// The process-wide Prometheus recorder (a recorder can be installed once per process): buckets and
/// help texts from [`CATALOGUE`], and the series that must exist before their first event at zero.
pub fn metrics_handle() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let mut builder = PrometheusBuilder::new();
    for m in CATALOGUE.iter().filter(|m| m.kind == Type::Histogram) {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(m.name.to_owned()), m.buckets)
            .with_context(|| format!("histogram buckets of {}", m.name))?;
    }
    let handle = builder
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    for m in CATALOGUE {
        match m.kind {
            Type::Counter => metrics::describe_counter!(m.name, m.help),
            Type::Gauge => metrics::describe_gauge!(m.name, m.help),
            Type::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
    ds_metrics::BUILD_INFO
        .with((Version(env!("CARGO_PKG_VERSION")),))
        .set(1.0);
    ds_metrics::zero_series();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Sets the gauges that describe the present: pool occupancy and the embedding backlog.
pub async fn refresh_gauges(
    store: &ds_store_pg::PgStore,
    service: &ds_domain::AuditService,
    log: &ds_domain::log::LogService,
) {
    for (pool, status) in [
        (Pool::Primary, Some(store.pool_status())),
        (Pool::Replica, store.replica_pool_status()),
    ] {
        let Some((open, idle, max)) = status else {
            continue;
        };
        ds_metrics::DB_POOL_CONNECTIONS
            .with((pool, ConnState::Idle))
            .set(idle as f64);
        ds_metrics::DB_POOL_CONNECTIONS
            .with((pool, ConnState::InUse))
            .set(open.saturating_sub(idle) as f64);
        ds_metrics::DB_POOL_MAX_CONNECTIONS
            .with((pool,))
            .set(max as f64);
    }
    // Bounded: a scrape never waits long for a database that is slow or down.
    if let Ok(Ok(backlog)) = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        service.embedding_backlog(),
    )
    .await
    {
        ds_metrics::EMBEDDING_PENDING.set(backlog.records as f64);
        ds_metrics::EMBEDDING_OLDEST_PENDING_SECONDS.set(backlog.oldest_seconds);
    }
    if let Ok(Ok(parked)) =
        tokio::time::timeout(std::time::Duration::from_secs(2), service.parked_jobs()).await
    {
        ds_metrics::EMBEDDING_JOBS_PARKED.set(parked as f64);
    }
    if let Ok(Ok(status)) =
        tokio::time::timeout(std::time::Duration::from_secs(2), log.status()).await
    {
        ds_metrics::LOG_TREE_SIZE.set(status.tree_size as f64);
        ds_metrics::LOG_PENDING_RECORDS.set(status.pending as f64);
        ds_metrics::LOG_OLDEST_PENDING_SECONDS.set(status.oldest_pending_seconds.max(0.0));
        ds_metrics::LOG_CHECKPOINT_AGE_SECONDS.set(status.checkpoint_age_seconds.max(0.0));
        ds_metrics::LOG_CHECKPOINT_SIZE.set(status.checkpoint_size as f64);
    }
    if let Ok(Ok(r)) = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        ds_domain::retention::RetentionStore::status(store, chrono::Utc::now()),
    )
    .await
    {
        ds_metrics::RETENTION_MONTHS_AHEAD.set(f64::from(r.months_ahead));
        ds_metrics::LEGAL_HOLDS_ACTIVE.set(r.holds_active as f64);
    }
}
