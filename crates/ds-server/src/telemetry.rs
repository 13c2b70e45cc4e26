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

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Counter,
    Gauge,
    Histogram,
}

/// When a metric appears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emitted {
    /// From start-up (pre-registered at zero) or with the first request of its kind.
    Always,
    /// Only with `embedding.provider = "openai"`.
    OpenAi,
    /// Only with `auth.mode = "kubernetes"`.
    Kubernetes,
    /// Only with `database.read_url` set.
    ReadReplica,
}

/// One metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Type,
    pub labels: &'static [&'static str],
    pub help: &'static str,
    pub emitted: Emitted,
    /// Histogram bucket upper bounds.
    pub buckets: &'static [f64],
}

/// Request, statement and model latencies seen here: single writes 1–90 ms, searches 5–80 ms, model
/// calls 20 ms–1 s; the tail goes to the 30 s request timeout.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Records per batch / group: 1 to 1000.
pub const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

const fn metric(
    name: &'static str,
    kind: Type,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        labels,
        help,
        emitted: Emitted::Always,
        buckets: match kind {
            Type::Histogram => LATENCY_BUCKETS,
            _ => &[],
        },
    }
}

const fn sizes(m: Metric) -> Metric {
    Metric {
        buckets: SIZE_BUCKETS,
        ..m
    }
}

const fn only(emitted: Emitted, m: Metric) -> Metric {
    Metric { emitted, ..m }
}

use Type::{Counter, Gauge, Histogram};

/// Every metric of the service.
pub const CATALOGUE: &[Metric] = &[
    metric(
        "datastorage_build_info",
        Gauge,
        &["version"],
        "Always 1; the version of the running binary.",
    ),
    // HTTP
    metric(
        "datastorage_http_requests_total",
        Counter,
        &["method", "route", "status"],
        "HTTP requests answered, by route pattern (`unmatched` for unknown paths) and status.",
    ),
    metric(
        "datastorage_http_request_duration_seconds",
        Histogram,
        &["route"],
        "Time from receiving a request to its response, by route pattern.",
    ),
    // audit writes
    metric(
        "datastorage_audit_writes_total",
        Counter,
        &["kind", "status"],
        "Records written, by kind and outcome (created, duplicate, replayed, error...).",
    ),
    metric(
        "datastorage_audit_write_duration_seconds",
        Histogram,
        &["kind"],
        "Time to validate, embed and store one write request, by kind (`batch` for batches).",
    ),
    sizes(metric(
        "datastorage_write_batch_size",
        Histogram,
        &[],
        "Records per batch request.",
    )),
    metric(
        "datastorage_validation_failures_total",
        Counter,
        &["kind", "field"],
        "Broken validation rules, by kind and field.",
    ),
    metric(
        "datastorage_unknown_fields_total",
        Counter,
        &["kind"],
        "Records that carried fields the contract does not know (kept in unknownFields).",
    ),
    metric(
        "datastorage_embedding_records_healed_total",
        Counter,
        &[],
        "Pending records the sweep linked to their already stored vector (a few when a text is written while its job finishes; a steady rise means something leaves records pending).",
    ),
    metric(
        "datastorage_embedding_records_requeued_total",
        Counter,
        &[],
        "Pending records the sweep found with neither a vector nor a job and queued again (a vector deleted by `reembed --finish` under a replica still running its model, or a job deleted under a writer of an earlier model); should stay 0.",
    ),
    metric(
        "datastorage_log_tree_size",
        Gauge,
        &[],
        "Leaves in the transparency log.",
    ),
    metric(
        "datastorage_log_pending_records",
        Gauge,
        &[],
        "Committed records not yet appended to the transparency log (up to 1,000,000 counted).",
    ),
    metric(
        "datastorage_log_oldest_pending_seconds",
        Gauge,
        &[],
        "How long the oldest record not yet in the transparency log has waited (integration lag; 0 when none waits).",
    ),
    metric(
        "datastorage_log_checkpoint_age_seconds",
        Gauge,
        &[],
        "Age of the latest signed checkpoint.",
    ),
    metric(
        "datastorage_log_checkpoint_size",
        Gauge,
        &[],
        "Tree size of the latest signed checkpoint.",
    ),
    metric(
        "datastorage_log_leaves_appended_total",
        Counter,
        &[],
        "Leaves this replica's sequencer appended.",
    ),
    metric(
        "datastorage_log_unqueued_records_total",
        Counter,
        &[],
        "Committed records this replica's sequencer found neither in the transparency log nor queued (inserted with the queue's trigger off), and queued.",
    ),
    metric(
        "datastorage_log_checkpoints_signed_total",
        Counter,
        &[],
        "Checkpoints this replica signed.",
    ),
    metric(
        "datastorage_log_sequencer_errors_total",
        Counter,
        &[],
        "Sequencer runs that failed (the run rolled back; its records stay queued).",
    ),
    metric(
        "datastorage_retention_months_ahead",
        Gauge,
        &[],
        "Month partitions of audit_records that exist after the current one, without a gap (contract §9: at least 3).",
    ),
    metric(
        "datastorage_legal_holds_active",
        Gauge,
        &[],
        "Legal holds placed and not released.",
    ),
    metric(
        "datastorage_retention_records_purged_total",
        Counter,
        &[],
        "Records this replica's maintenance removed by retention, in batches or with their partition.",
    ),
    metric(
        "datastorage_retention_partitions_dropped_total",
        Counter,
        &[],
        "Month partitions this replica's maintenance dropped whole (every record expired, none held).",
    ),
    metric(
        "datastorage_retention_errors_total",
        Counter,
        &[],
        "Maintenance runs (partitions ahead, purge) that failed; the next run tries again.",
    ),
    metric(
        "datastorage_database_write_errors_total",
        Counter,
        &[],
        "Write requests the database failed (unreachable, timed out, pool exhausted, query failed).",
    ),
    // admission and auth
    metric(
        "datastorage_rate_limit_exceeded_total",
        Counter,
        &[],
        "Write requests refused with 429 because the caller exceeded its rate.",
    ),
    metric(
        "datastorage_load_shed_total",
        Counter,
        &[],
        "Requests refused with 503 at once because every database slot was taken.",
    ),
    metric(
        "datastorage_auth_failures_total",
        Counter,
        &["reason"],
        "Requests refused by authentication or authorization: missing, malformed, invalid_token, forbidden, unavailable, too_many_failures.",
    ),
    only(
        Emitted::Kubernetes,
        metric(
            "datastorage_auth_reviews_total",
            Counter,
            &["review"],
            "TokenReviews and SubjectAccessReviews sent to the Kubernetes API.",
        ),
    ),
    only(
        Emitted::Kubernetes,
        metric(
            "datastorage_auth_cache_hits_total",
            Counter,
            &["decision"],
            "Authentication decisions answered from the cache.",
        ),
    ),
    only(
        Emitted::Kubernetes,
        metric(
            "datastorage_auth_cache_misses_total",
            Counter,
            &["decision"],
            "Authentication decisions that needed the Kubernetes API.",
        ),
    ),
    // database
    metric(
        "datastorage_db_pool_connections",
        Gauge,
        &["pool", "state"],
        "Database connections of this replica by pool (`primary`, `replica`): `idle` or `in_use` (at scrape time).",
    ),
    metric(
        "datastorage_db_pool_max_connections",
        Gauge,
        &["pool"],
        "Each pool's size limit (DATASTORAGE_DB_POOL_SIZE, DATASTORAGE_DB_READ_POOL_SIZE).",
    ),
    metric(
        "datastorage_db_reads_total",
        Counter,
        &["pool"],
        "Reads (the list, trails, search, reads by id, export pages, checkpoints) answered by the `primary` or the `replica`.",
    ),
    only(
        Emitted::ReadReplica,
        metric(
            "datastorage_db_replica_fallbacks_total",
            Counter,
            &["reason"],
            "Reads meant for the read replica that the primary answered: `unusable` (lagging, down or not a standby at the last check), `unavailable` (the read failed for want of a connection or in a recovery conflict), `not_found` (a record by id it does not have yet).",
        ),
    ),
    only(
        Emitted::ReadReplica,
        metric(
            "datastorage_db_replica_lag_seconds",
            Gauge,
            &[],
            "How far the read replica's replay is behind the primary's WAL, measured every quarter of DATASTORAGE_DB_READ_MAX_LAG_MS (last known value while it does not answer).",
        ),
    ),
    only(
        Emitted::ReadReplica,
        metric(
            "datastorage_db_replica_usable",
            Gauge,
            &[],
            "1 while reads go to the read replica, 0 while it is lagging, down or not a standby (reads go to the primary).",
        ),
    ),
    sizes(metric(
        "datastorage_db_group_commit_size",
        Histogram,
        &[],
        "Write requests committed together in one group.",
    )),
    metric(
        "datastorage_db_write_seconds",
        Histogram,
        &[],
        "Time of one group's statement or transaction.",
    ),
    metric(
        "datastorage_db_group_commit_fallbacks_total",
        Counter,
        &[],
        "Groups that failed and were rerun write by write.",
    ),
    // embeddings
    metric(
        "datastorage_embedding_cache_hits_total",
        Counter,
        &[],
        "Embedding texts found in the in-process cache.",
    ),
    metric(
        "datastorage_embedding_cache_misses_total",
        Counter,
        &[],
        "Embedding texts that needed the provider.",
    ),
    metric(
        "datastorage_embedding_generation_duration_seconds",
        Histogram,
        &["provider"],
        "Time of one provider call (one batch of texts).",
    ),
    sizes(metric(
        "datastorage_embedding_batch_size",
        Histogram,
        &[],
        "Texts per provider call.",
    )),
    metric(
        "datastorage_embedding_pending",
        Gauge,
        &[],
        "Records stored without their vector yet (counted up to 1,000,000), at scrape time.",
    ),
    metric(
        "datastorage_embedding_jobs_parked",
        Gauge,
        &[],
        "Embedding jobs parked after repeated failures (`datastorage jobs list --parked`), at scrape time.",
    ),
    metric(
        "datastorage_embedding_oldest_pending_seconds",
        Gauge,
        &[],
        "How long the oldest record without its vector has waited (0 when none), at scrape time.",
    ),
    only(
        Emitted::OpenAi,
        metric(
            "datastorage_embedding_provider_errors_total",
            Counter,
            &["provider", "kind"],
            "Failed provider attempts: rate_limited, server_error, timeout, connect, client_error, malformed, invalid_output, circuit_open.",
        ),
    ),
    only(
        Emitted::OpenAi,
        metric(
            "datastorage_embedding_provider_retries_total",
            Counter,
            &["provider"],
            "Provider attempts retried.",
        ),
    ),
    only(
        Emitted::OpenAi,
        metric(
            "datastorage_embedding_circuit_open",
            Gauge,
            &["provider"],
            "1 while the provider's circuit is open (calls fail fast), else 0.",
        ),
    ),
];

/// The auth failure reasons, registered at zero so that rate() and alerts see them from the start.
const AUTH_FAILURE_REASONS: &[&str] = &[
    "missing",
    "malformed",
    "invalid_token",
    "forbidden",
    "unavailable",
    "too_many_failures",
];

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
    metrics::gauge!("datastorage_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for name in [
        "datastorage_database_write_errors_total",
        "datastorage_embedding_records_healed_total",
        "datastorage_embedding_records_requeued_total",
        "datastorage_log_leaves_appended_total",
        "datastorage_log_unqueued_records_total",
        "datastorage_log_checkpoints_signed_total",
        "datastorage_log_sequencer_errors_total",
        "datastorage_retention_records_purged_total",
        "datastorage_retention_partitions_dropped_total",
        "datastorage_retention_errors_total",
        "datastorage_rate_limit_exceeded_total",
        "datastorage_load_shed_total",
        "datastorage_db_group_commit_fallbacks_total",
        "datastorage_embedding_cache_hits_total",
        "datastorage_embedding_cache_misses_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for reason in AUTH_FAILURE_REASONS {
        metrics::counter!("datastorage_auth_failures_total", "reason" => *reason).increment(0);
    }
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Sets the gauges that describe the present: pool occupancy and the embedding backlog.
pub async fn refresh_gauges(
    store: &ds_store_pg::PgStore,
    service: &ds_domain::AuditService,
    log: &ds_domain::log::LogService,
) {
    for (pool, status) in [
        ("primary", Some(store.pool_status())),
        ("replica", store.replica_pool_status()),
    ] {
        let Some((open, idle, max)) = status else {
            continue;
        };
        metrics::gauge!("datastorage_db_pool_connections", "pool" => pool, "state" => "idle")
            .set(idle as f64);
        metrics::gauge!("datastorage_db_pool_connections", "pool" => pool, "state" => "in_use")
            .set(open.saturating_sub(idle) as f64);
        metrics::gauge!("datastorage_db_pool_max_connections", "pool" => pool).set(max as f64);
    }
    // Bounded: a scrape never waits long for a database that is slow or down.
    if let Ok(Ok(backlog)) = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        service.embedding_backlog(),
    )
    .await
    {
        metrics::gauge!("datastorage_embedding_pending").set(backlog.records as f64);
        metrics::gauge!("datastorage_embedding_oldest_pending_seconds").set(backlog.oldest_seconds);
    }
    if let Ok(Ok(parked)) =
        tokio::time::timeout(std::time::Duration::from_secs(2), service.parked_jobs()).await
    {
        metrics::gauge!("datastorage_embedding_jobs_parked").set(parked as f64);
    }
    if let Ok(Ok(status)) =
        tokio::time::timeout(std::time::Duration::from_secs(2), log.status()).await
    {
        metrics::gauge!("datastorage_log_tree_size").set(status.tree_size as f64);
        metrics::gauge!("datastorage_log_pending_records").set(status.pending as f64);
        metrics::gauge!("datastorage_log_oldest_pending_seconds")
            .set(status.oldest_pending_seconds.max(0.0));
        metrics::gauge!("datastorage_log_checkpoint_age_seconds")
            .set(status.checkpoint_age_seconds.max(0.0));
        metrics::gauge!("datastorage_log_checkpoint_size").set(status.checkpoint_size as f64);
    }
    if let Ok(Ok(r)) = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        ds_domain::retention::RetentionStore::status(store, chrono::Utc::now()),
    )
    .await
    {
        metrics::gauge!("datastorage_retention_months_ahead").set(f64::from(r.months_ahead));
        metrics::gauge!("datastorage_legal_holds_active").set(r.holds_active as f64);
    }
}
