//! The datastorage server: reads the configuration, chooses and wires the adapters, runs the HTTP
//! servers (API on 8080, metrics on 9090).
//!
//! Architecture invariant: only this crate reads configuration and chooses adapters.

pub mod config;

use anyhow::{Context, bail};
use config::Config;
use config::{AuthMode, Provider};
use ds_auth_kube::{Authorization, CacheSettings, CachedAuthenticator, KubeAuthenticator};
use ds_domain::AuditService;
use ds_domain::ports::{AuditStore, Embedder};
use ds_embed_cache::{BatchSettings, BatchingEmbedder, CachedEmbedder};
use ds_embed_local::LocalEmbedder;
use ds_embed_openai::OpenAiEmbedder;
use ds_http::AppState;
use ds_store_pg::{PgStore, PoolSettings};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

/// The process-wide Prometheus recorder (a recorder can be installed once per process).
pub fn metrics_handle() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// A started service.
pub struct Running {
    /// Where the API listens (useful when the configuration asked for port 0).
    pub http_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub state: AppState,
    api: actix_web::dev::Server,
    metrics: actix_web::dev::Server,
    shutdown_timeout: std::time::Duration,
}

impl Running {
    /// Serves until SIGTERM or SIGINT, then shuts down gracefully: readiness goes 503 at once, listeners
    /// close, in-flight requests finish (bounded by the shutdown timeout), then this returns.
    pub async fn until_signal(self) -> anyhow::Result<()> {
        let api = self.api.handle();
        let metrics = self.metrics.handle();
        let state = self.state.clone();
        let timeout = self.shutdown_timeout;
        let api_task = tokio::spawn(self.api);
        let metrics_task = tokio::spawn(self.metrics);
        wait_for_signal().await;
        tracing::info!(
            timeout_secs = timeout.as_secs(),
            "shutting down: readiness is now 503, draining requests"
        );
        state.shutting_down.store(true, Ordering::SeqCst);
        api.stop(true).await;
        metrics.stop(true).await;
        api_task.await.context("API server task")??;
        metrics_task.await.context("metrics server task")??;
        tracing::info!("stopped");
        Ok(())
    }

    /// Runs the servers in the background (for tests); they stop when the runtime does.
    pub fn spawn(self) -> (SocketAddr, AppState) {
        tokio::spawn(self.api);
        tokio::spawn(self.metrics);
        (self.http_addr, self.state)
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The embedding worker: runs durable jobs while there are any, polls every `interval` when the queue
/// is empty, backs off (up to 30 s) while the provider or the database fails. Safe on every replica:
/// jobs are claimed with `FOR UPDATE SKIP LOCKED`.
async fn embedding_worker(service: AuditService, batch: usize, interval: std::time::Duration) {
    let mut backoff = interval;
    loop {
        match service.run_embedding_jobs(batch).await {
            Ok(n) if n > 0 => {
                backoff = interval;
                tracing::debug!(jobs = n, "embedded pending records");
                continue;
            }
            Ok(_) => backoff = interval,
            Err(e) => {
                backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "embedding jobs failed; they stay queued");
            }
        }
        if let Ok(pending) = service.pending_jobs().await {
            metrics::gauge!("datastorage_embedding_pending").set(pending as f64);
        }
        tokio::time::sleep(backoff).await;
    }
}

/// The configured provider, checked: the local model loaded, or the remote one asked once for its
/// dimension (a provider that cannot be reached now does not stop start-up: policy `defer` keeps writes
/// working, and every answer is checked later).
async fn build_provider(config: &Config, column: usize) -> anyhow::Result<Arc<dyn Embedder>> {
    match &config.embedding_provider {
        Provider::Local => {
            let dir = config.model_dir.clone();
            let in_flight = config.embedding_batching.max_in_flight;
            let embedder = tokio::task::spawn_blocking(move || {
                LocalEmbedder::load(&dir, Some(in_flight))
            })
            .await
            .context("loading the local embedding model")?
            .with_context(|| {
                format!(
                    "loading the local embedding model (DATASTORAGE_EMBEDDING_LOCAL_MODEL_DIR={})",
                    config.model_dir.display()
                )
            })?;
            Ok(Arc::new(embedder))
        }
        Provider::OpenAi(settings) => {
            let embedder = OpenAiEmbedder::new(settings.as_ref().clone())
                .context("configuring the `openai` embedding provider")?;
            match embedder.probe_dimension().await {
                Ok(d) if d != column || d != config.embedding_dimension => bail!(
                    "embedding dimension mismatch: the provider `{}` at {} gives {d} dimensions, the database column embeddings.embedding has {column} (DATASTORAGE_EMBEDDING_DIMENSION={}); set DATASTORAGE_EMBEDDING_OPENAI_DIMENSIONS if the model can shorten its vectors",
                    embedder.model_id(),
                    settings.base_url,
                    config.embedding_dimension
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    error = %e,
                    base_url = %settings.base_url,
                    "the embedding provider did not answer the start-up probe; starting anyway, writes are deferred until it answers"
                ),
            }
            Ok(Arc::new(embedder))
        }
    }
}

/// Applies pending migrations.
pub async fn migrate(database_url: &str) -> anyhow::Result<Vec<String>> {
    ds_store_pg::run_migrations(database_url)
        .await
        .context("applying migrations")
}

/// Builds everything and binds the listeners; nothing is served until the returned servers are polled.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    if config.migrate_on_start {
        let applied = migrate(&config.database_url).await?;
        tracing::info!(applied = ?applied, "migrations applied");
    }
    let store = PgStore::new(
        &config.database_url,
        &PoolSettings {
            max_size: config.db_pool_size,
            wait_timeout: config.db_wait_timeout,
            statement_timeout: config.db_statement_timeout,
            group_commit: config.group_commit.clone(),
            ef_search: config.search_ef_search,
            ..PoolSettings::default()
        },
    )
    .context("creating the database pool")?;
    let health = store.health().await.context("checking the database")?;
    if health.migrations_pending > 0 {
        bail!(
            "the database lacks {} migration(s): run `datastorage migrate` or set DATASTORAGE_MIGRATE_ON_START=true",
            health.migrations_pending
        );
    }

    let provider = build_provider(&config, health.embedding_dimension).await?;
    if provider.dimension() != config.embedding_dimension
        || health.embedding_dimension != config.embedding_dimension
    {
        bail!(
            "embedding dimension mismatch: the provider `{}` gives {} dimensions, the database column embeddings.embedding has {}, DATASTORAGE_EMBEDDING_DIMENSION is {}",
            provider.model_id(),
            provider.dimension(),
            health.embedding_dimension,
            config.embedding_dimension
        );
    }
    tracing::info!(
        provider = provider.provider(),
        model = provider.model_id(),
        dimension = provider.dimension(),
        "embedding provider ready"
    );

    let store: Arc<dyn AuditStore> = Arc::new(store);
    let batching = &config.embedding_batching;
    let batched: Arc<dyn Embedder> = Arc::new(BatchingEmbedder::new(
        provider,
        BatchSettings {
            max_batch: batching.max_size,
            max_wait: batching.max_wait,
            max_in_flight: batching.max_in_flight,
            ..BatchSettings::default()
        },
    ));
    let embedder: Arc<dyn Embedder> = Arc::new(CachedEmbedder::new(
        batched,
        config.embedding_cache_capacity,
        config.embedding_cache_ttl,
    ));
    let service = AuditService::with_options(
        store,
        embedder,
        config.embedding_mode,
        config.embedding_failure_policy,
    );
    if !config.embedding_worker_interval.is_zero() {
        for _ in 0..config.embedding_workers {
            tokio::spawn(embedding_worker(
                service.clone(),
                config.embedding_worker_batch.max(1),
                config.embedding_worker_interval,
            ));
        }
    }
    let mut state =
        AppState::with_admission(service, config.limits.clone(), config.admission.clone());
    let mut protect_metrics = false;
    if let AuthMode::Kubernetes(k) = &config.auth_mode {
        let authorization = match &k.allow_list {
            None => Authorization::SubjectAccessReview,
            Some((writers, readers, metrics)) => Authorization::AllowList {
                writers: writers.clone(),
                readers: readers.clone(),
                metrics: metrics.clone(),
            },
        };
        let kube = KubeAuthenticator::connect(
            k.kubeconfig.as_deref(),
            k.timeout,
            k.audiences.clone(),
            authorization,
        )
        .await
        .context("connecting to the Kubernetes API for authentication (DATASTORAGE_AUTH_MODE=kubernetes)")?;
        let cached = CachedAuthenticator::new(
            Arc::new(kube),
            CacheSettings {
                positive_ttl: k.positive_ttl,
                negative_ttl: k.negative_ttl,
                capacity: k.cache_capacity,
            },
        );
        state = state.with_auth(Arc::new(cached));
        protect_metrics = k.protect_metrics;
        tracing::info!(audiences = ?k.audiences, allow_list = k.allow_list.is_some(), protect_metrics, "authentication: Kubernetes TokenReview");
    }

    let app_state = state.clone();
    let api = actix_web::HttpServer::new(move || ds_http::app(app_state.clone()))
        .workers(config.http_workers)
        .disable_signals()
        .shutdown_timeout(config.shutdown_timeout.as_secs())
        .bind(config.http_addr)
        .with_context(|| {
            format!(
                "binding the API listener (DATASTORAGE_HTTP_ADDR={})",
                config.http_addr
            )
        })?;
    let http_addr = api
        .addrs()
        .first()
        .copied()
        .context("the API listener has no address")?;

    let handle = metrics_handle()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let metrics_state = state.clone();
    let metrics = actix_web::HttpServer::new(move || {
        let handle = handle.clone();
        // Without protection the metrics app has no state, so the auth middleware lets every scrape in.
        let mut app = actix_web::App::new();
        if protect_metrics {
            app = app.app_data(actix_web::web::Data::new(metrics_state.clone()));
        }
        app.wrap(actix_web::middleware::from_fn(ds_http::auth::metrics))
            .wrap(actix_web::middleware::from_fn(
                ds_http::middleware::envelope,
            ))
            .route(
                "/metrics",
                actix_web::web::get().to(move || {
                    let body = handle.render();
                    async move {
                        actix_web::HttpResponse::Ok()
                            .content_type("text/plain; version=0.0.4")
                            .body(body)
                    }
                }),
            )
    })
    .workers(1)
    .disable_signals()
    .bind(config.metrics_addr)
    .with_context(|| {
        format!(
            "binding the metrics listener (DATASTORAGE_METRICS_ADDR={})",
            config.metrics_addr
        )
    })?;
    let metrics_addr = metrics
        .addrs()
        .first()
        .copied()
        .context("the metrics listener has no address")?;
    tracing::info!(%http_addr, %metrics_addr, "listening");

    Ok(Running {
        http_addr,
        metrics_addr,
        state,
        api: api.run(),
        metrics: metrics.run(),
        shutdown_timeout: config.shutdown_timeout,
    })
}
