//! Wiring: the adapters the configuration chooses, built and put together behind the API and
//! metrics listeners.

use crate::config::{AuthMode, Config, Provider};
use crate::lifecycle::{Launch, Running, StartupPlan};
use crate::telemetry::{self, metrics_handle};
use anyhow::{Context, bail};
use ds_auth_kube::{Authorization, CacheSettings, CachedAuthenticator, KubeAuthenticator};
use ds_domain::AuditService;
use ds_domain::log::LogService;
use ds_domain::ports::{AuditStore, Embedder};
use ds_embed_cache::{BatchSettings, BatchingEmbedder, CachedEmbedder};
use ds_embed_local::LocalEmbedder;
use ds_embed_openai::OpenAiEmbedder;
use ds_http::{AppState, Startup};
use ds_store_pg::{PgStore, PoolSettings, ReplicaSettings};
use std::sync::Arc;

/// Builds everything and binds the listeners; nothing is served until the returned servers are polled.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let pool_settings = PoolSettings {
        max_size: config.db_pool_size,
        wait_timeout: config.db_wait_timeout,
        statement_timeout: config.db_statement_timeout,
        group_commit: config.group_commit.clone(),
        ef_search: config.search_ef_search,
        ..PoolSettings::default()
    };
    let mut store =
        PgStore::new(&config.database_url, &pool_settings).context("creating the database pool")?;
    let replica = config.read_replica.as_ref().map(|r| ReplicaSettings {
        url: r.url.0.clone(),
        pool_size: r.pool_size,
        max_lag: r.max_lag,
    });
    if let Some(r) = &replica {
        store = store
            .with_replica(r, &pool_settings)
            .context("creating the read replica's pool (DATASTORAGE_DATABASE_READ_URL)")?;
        tracing::info!(
            max_lag_ms = r.max_lag.as_millis() as u64,
            pool_size = r.pool_size,
            "reads go to the read replica while it is usable"
        );
    }

    let provider = build_provider(&config).await?;
    if provider.dimension() != config.embedding_dimension {
        bail!(
            "embedding dimension mismatch: the provider `{}` gives {} dimensions, DATASTORAGE_EMBEDDING_DIMENSION is {}",
            provider.model_id(),
            provider.dimension(),
            config.embedding_dimension
        );
    }
    tracing::info!(
        provider = provider.provider(),
        model = provider.model_id(),
        dimension = provider.dimension(),
        "embedding provider ready"
    );

    let pg = store.clone();
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
    )
    .with_job_policy(config.job_policy);
    let service_for_metrics = service.clone();
    if config.log.signer.is_none() {
        bail!(
            "DATASTORAGE_LOG_SIGNING_KEY_FILE is not set: the transparency log needs a key to sign its checkpoints (`datastorage log keygen --out FILE` makes one; docs/integrity.md)"
        );
    }
    let log = LogService::new(Arc::new(pg.clone()));
    let startup = Arc::new(Startup::pending("waiting for the database"));
    let mut state = AppState::with_admission(
        service.clone(),
        log.clone(),
        config.limits.clone(),
        config.admission.clone(),
    )
    .with_startup(startup.clone())
    .with_retention(Arc::new(pg.clone()));
    let startup_for_metrics = startup.clone();
    let mut protect_metrics = false;
    if let AuthMode::Kubernetes(k) = &config.auth_mode {
        let authorization = match &k.allow_list {
            None => Authorization::SubjectAccessReview,
            Some(lists) => Authorization::AllowList {
                writers: lists.writers.clone(),
                readers: lists.readers.clone(),
                metrics: lists.metrics.clone(),
                holders: lists.holders.clone(),
            },
        };
        let kube = KubeAuthenticator::connect(
            k.kubeconfig.as_deref(),
            k.timeout,
            k.audiences.clone(),
            authorization,
            k.max_concurrent_reviews,
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
        state = state.with_auth(Arc::new(cached), k.failures);
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
    // Without protection the metrics listener's gate lets every scrape in; with it, every request to
    // that listener needs access `Metrics`.
    let metrics_gate = if protect_metrics {
        state.gate.clone()
    } else {
        ds_http::auth::Gate::open(startup_for_metrics)
    };
    let gauges = (pg.clone(), service_for_metrics, log.clone());
    let metrics = actix_web::HttpServer::new(move || {
        let handle = handle.clone();
        let gauges = gauges.clone();
        ds_http::metrics_app(metrics_gate.clone(), move || {
            let handle = handle.clone();
            let (store, service, log) = gauges.clone();
            async move {
                telemetry::refresh_gauges(&store, &service, &log).await;
                handle.render()
            }
        })
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

    let plan = StartupPlan {
        database_url: config.database_url.0.clone(),
        migrate: config.migrate_on_start,
        dimension: config.embedding_dimension,
        retry_max: config.db_connect_retry_max,
        workers: config.embedding_workers,
        worker_batch: config.embedding_worker_batch,
        worker_interval: config.embedding_worker_interval,
        log: config.log.clone(),
        retention: config.retention.clone(),
        replica_check: replica.as_ref().map(ReplicaSettings::check_every),
    };
    Ok(Running::launch(Launch {
        http_addr,
        metrics_addr,
        api: api.run(),
        metrics: metrics.run(),
        state,
        store: pg,
        service,
        log,
        startup,
        plan,
        shutdown_timeout: config.shutdown_timeout,
    }))
}

/// The configured provider, checked: the local model loaded, or the remote one asked once for its
/// dimension (a provider that cannot be reached now does not stop start-up: policy `defer` keeps writes
/// working, and every answer is checked later).
pub(crate) async fn build_provider(config: &Config) -> anyhow::Result<Arc<dyn Embedder>> {
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
                Ok(d) if d != config.embedding_dimension => bail!(
                    "embedding dimension mismatch: the provider `{}` at {} gives {d} dimensions, DATASTORAGE_EMBEDDING_DIMENSION (and the database column) has {}; set DATASTORAGE_EMBEDDING_OPENAI_DIMENSIONS if the model can shorten its vectors",
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
