//! The datastorage server: reads the configuration, chooses and wires the adapters, runs the HTTP
//! servers (API on 8080, metrics on 9090).
//!
//! Architecture invariant: only this crate reads configuration and chooses adapters.

pub mod config;
pub mod telemetry;
pub mod verify;

use anyhow::{Context, bail};
use config::Config;
use config::{AuthMode, LogSettings, Provider};
use ds_auth_kube::{Authorization, CacheSettings, CachedAuthenticator, KubeAuthenticator};
use ds_domain::AuditService;
use ds_domain::log::LogService;
use ds_domain::ports::{AuditStore, Embedder};
use ds_embed_cache::{BatchSettings, BatchingEmbedder, CachedEmbedder};
use ds_embed_local::LocalEmbedder;
use ds_embed_openai::OpenAiEmbedder;
use ds_http::AppState;
use ds_http::Startup;
use ds_store_pg::{PgStore, PoolSettings, ReplicaSettings};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use telemetry::metrics_handle;

/// A running actix server: its handle (to stop it) and its task.
struct ServerTask {
    handle: actix_web::dev::ServerHandle,
    task: JoinHandle<std::io::Result<()>>,
}

impl ServerTask {
    fn spawn(server: actix_web::dev::Server) -> Self {
        ServerTask {
            handle: server.handle(),
            task: tokio::spawn(server),
        }
    }

    /// Stops accepting, lets open requests finish (bounded by the server's shutdown timeout).
    async fn stop(self, what: &'static str) -> anyhow::Result<()> {
        self.handle.stop(true).await;
        self.task.await.context(what)?.context(what)
    }
}

/// How start-up ended, as [`Running::wait_until_started`] reports it.
#[derive(Debug, Clone)]
enum Outcome {
    Pending,
    Started,
    Failed(String),
}

/// A service whose listeners are bound. Start-up finishes in the background (waiting for the database
/// with backoff, migrating when configured); until then the API answers 503 and `/readyz` says why.
pub struct Running {
    /// Where the API listens (useful when the configuration asked for port 0).
    pub http_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub state: AppState,
    /// The servers run from [`start`] on (probes answer while start-up waits for the database).
    api: ServerTask,
    metrics: ServerTask,
    shutdown_timeout: Duration,
    store: PgStore,
    /// Tells the embedding workers (and a start-up still waiting) to stop.
    stop: watch::Sender<bool>,
    /// Start-up, then the embedding workers until `stop`; ends early only on a fatal start-up error.
    background: JoinHandle<anyhow::Result<()>>,
    outcome: watch::Receiver<Outcome>,
}

impl Running {
    /// Resolves when start-up is complete; an error when it failed for good (e.g. the database's vector
    /// column has another dimension).
    /// (The future does not borrow `self`.)
    pub fn wait_until_started(
        &self,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static {
        let mut outcome = self.outcome.clone();
        async move {
            let seen = outcome
                .wait_for(|o| !matches!(o, Outcome::Pending))
                .await
                .map(|o| o.clone());
            match seen {
                Ok(Outcome::Started) => Ok(()),
                Ok(Outcome::Failed(e)) => Err(anyhow::anyhow!(e)),
                Ok(Outcome::Pending) | Err(_) => bail!("start-up ended without an outcome"),
            }
        }
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully (see [`Running::until`]). The signal
    /// handlers are installed when this is called, before the future is first polled.
    pub fn until_signal(self) -> impl std::future::Future<Output = anyhow::Result<()>> {
        self.until(signal_listener())
    }

    /// Serves until `signal` resolves, then shuts down: readiness answers 503 at once, the API
    /// listener stops accepting, in-flight requests finish, the embedding workers finish their current
    /// batch, queued group commits are committed, the pool is closed; all within the shutdown timeout
    /// (what is still running then is abandoned: uncommitted work rolls back, claimed jobs are
    /// released). The metrics listener serves until the end. Returns the start-up error if start-up
    /// failed for good.
    pub async fn until(self, signal: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let mut background = self.background;
        let failed = tokio::select! {
            () = signal => None,
            r = &mut background => Some(r),
        };
        let timeout = self.shutdown_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        tracing::info!(
            timeout_secs = timeout.as_secs(),
            "shutting down: readiness is now 503, draining requests"
        );
        self.state.shutting_down.store(true, Ordering::SeqCst);
        let _ = self.stop.send(true);
        self.api.stop("API server").await?;
        tracing::info!("requests drained");
        if failed.is_none() {
            match tokio::time::timeout_at(deadline, &mut background).await {
                Ok(r) => r.context("embedding workers")??,
                Err(_) => {
                    background.abort();
                    tracing::warn!(
                        "the embedding worker's batch did not finish in time; its jobs are released"
                    );
                }
            }
        }
        match tokio::time::timeout_at(deadline, self.store.close()).await {
            Ok(()) => tracing::info!("group commits flushed, database pool closed"),
            Err(_) => tracing::warn!("writes still committing at the shutdown deadline"),
        }
        self.metrics.stop("metrics server").await?;
        tracing::info!("stopped");
        match failed {
            None => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Ok(Ok(()))) => bail!("the background tasks ended unexpectedly"),
            Some(Err(e)) => Err(anyhow::Error::new(e).context("start-up task")),
        }
    }

    /// Leaves the servers running in the background (for tests); they stop when the runtime does.
    pub fn spawn(self) -> (SocketAddr, AppState) {
        // Dropping `stop` without sending does not stop the workers (see `stopped`).
        (self.http_addr, self.state)
    }
}

/// `datastorage serve`: starts, serves until SIGTERM/SIGINT, shuts down gracefully.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    start(config).await?.until_signal().await
}

/// Listens for SIGTERM and SIGINT from now on (the handlers are installed before this returns); the
/// future resolves at the first of them.
fn signal_listener() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
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
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Resolves when `stop` says so; never when its sender is gone without saying it.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// How often each worker runs the sweep (pending records whose vector is stored are linked) and retires
/// finished jobs.
const HEAL_INTERVAL: Duration = Duration::from_secs(5);

/// The embedding worker: runs the sweep every [`HEAL_INTERVAL`]; runs durable jobs while there are any, polls every `interval` when the queue
/// is empty, backs off (up to 30 s) while the provider or the database fails. Safe on every replica:
/// jobs are claimed with `FOR UPDATE SKIP LOCKED`. On `stop` it finishes the batch it is running and
/// returns.
async fn embedding_worker(
    service: AuditService,
    batch: usize,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = interval;
    let mut last_heal: Option<std::time::Instant> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        if last_heal.is_none_or(|t| t.elapsed() >= HEAL_INTERVAL) {
            last_heal = Some(std::time::Instant::now());
            match service.heal_embeddings().await {
                Ok((linked, requeued)) => {
                    if linked > 0 {
                        metrics::counter!("datastorage_embedding_records_healed_total")
                            .increment(linked);
                        tracing::info!(
                            records = linked,
                            "sweep: linked pending records whose vector is stored"
                        );
                    }
                    if requeued > 0 {
                        metrics::counter!("datastorage_embedding_records_requeued_total")
                            .increment(requeued as u64);
                        tracing::warn!(
                            records = requeued,
                            "sweep: pending records had neither a vector nor a job; queued again"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "sweep of pending records failed"),
            }
        }
        match service.run_embedding_jobs(batch).await {
            Ok(n) if n > 0 => {
                backoff = interval;
                tracing::debug!(jobs = n, "embedded pending records");
                continue;
            }
            Ok(_) => backoff = interval,
            Err(e) => {
                backoff = (backoff * 2).min(Duration::from_secs(30));
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "embedding jobs failed; they stay queued");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stopped(&mut stop) => return,
        }
    }
}

/// The sequencer of the transparency log: every `interval` (at once again after a full batch) one run
/// of [`LogService::integrate`], which does something only on the replica that gets the role for that
/// run; backs off (up to 30 s) while the database fails. On `stop` it finishes its run and returns.
async fn sequencer(log: LogService, settings: LogSettings, mut stop: watch::Receiver<bool>) {
    let Some(signer) = settings.signer.clone() else {
        return;
    };
    let mut backoff = settings.integrate_interval;
    loop {
        if *stop.borrow() {
            return;
        }
        match log
            .integrate(settings.batch, &signer, settings.checkpoint_interval)
            .await
        {
            Ok(run) => {
                backoff = settings.integrate_interval;
                if run.appended > 0 {
                    metrics::counter!("datastorage_log_leaves_appended_total")
                        .increment(run.appended as u64);
                    tracing::debug!(
                        leaves = run.appended,
                        tree_size = run.tree_size,
                        "appended to the transparency log"
                    );
                }
                if run.unqueued > 0 {
                    metrics::counter!("datastorage_log_unqueued_records_total")
                        .increment(run.unqueued as u64);
                }
                if let Some(size) = run.signed {
                    metrics::counter!("datastorage_log_checkpoints_signed_total").increment(1);
                    tracing::info!(tree_size = size, "checkpoint signed");
                }
                if run.appended >= settings.batch {
                    continue;
                }
            }
            Err(e) => {
                metrics::counter!("datastorage_log_sequencer_errors_total").increment(1);
                backoff = (backoff * 2).min(Duration::from_secs(30));
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "the transparency log's sequencer failed; records stay queued");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stopped(&mut stop) => return,
        }
    }
}

/// What start-up needs from the configuration, for the background task.
struct StartupPlan {
    database_url: String,
    migrate: bool,
    dimension: usize,
    retry_max: Duration,
    workers: usize,
    worker_batch: usize,
    worker_interval: Duration,
    log: LogSettings,
    retention: crate::config::RetentionSettings,
    /// How often the read replica's lag is measured (`None`: no replica).
    replica_check: Option<Duration>,
}

/// The maintenance task (contract §9): every `interval`, keeps month partitions ahead, and when a
/// purge is due (`purge_interval` after this replica's last), purges what expired. One replica at
/// a time, decided by the database; a failed run is retried at the next interval.
async fn maintenance(
    store: PgStore,
    settings: crate::config::RetentionSettings,
    mut stop: watch::Receiver<bool>,
) {
    use ds_domain::retention::RetentionStore;
    if settings.interval.is_zero() {
        return;
    }
    let mut last_purge: Option<tokio::time::Instant> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let due = last_purge.is_none_or(|t| t.elapsed() >= settings.purge_interval);
        match store
            .maintain(
                &settings.policy,
                &settings.maintenance,
                chrono::Utc::now(),
                due,
            )
            .await
        {
            Ok(run) => {
                if run.ran && due {
                    last_purge = Some(tokio::time::Instant::now());
                }
                if run.partitions_created > 0 {
                    tracing::info!(
                        created = run.partitions_created,
                        months_ahead = run.months_ahead,
                        "retention: created month partitions ahead"
                    );
                }
            }
            Err(e) => {
                metrics::counter!("datastorage_retention_errors_total").increment(1);
                tracing::warn!(error = %e, "retention: the maintenance run failed; it runs again at the next interval");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(settings.interval) => {}
            () = stopped(&mut stop) => return,
        }
    }
}

/// Waits for the database (with exponential backoff, reported by readiness), migrates when
/// configured, checks the vector column, then runs the embedding workers until `stop`.
async fn background(
    plan: StartupPlan,
    store: PgStore,
    service: AuditService,
    log: LogService,
    startup: Arc<Startup>,
    outcome: watch::Sender<Outcome>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let ready = tokio::select! {
        r = wait_for_database(&plan, &store, &startup) => r,
        () = stopped(&mut stop) => return Ok(()),
    };
    if let Err(e) = ready {
        let _ = outcome.send(Outcome::Failed(format!("{e:#}")));
        return Err(e);
    }
    startup.set_started();
    let _ = outcome.send(Outcome::Started);
    tracing::info!("started: the database is ready");
    let sequencer = tokio::spawn(sequencer(log, plan.log.clone(), stop.clone()));
    let mut retention = plan.retention.clone();
    // A purge is carried out once a checkpoint covers its entry: a run waits for a few of them.
    retention.maintenance.coverage_wait = retention
        .maintenance
        .coverage_wait
        .max(3 * plan.log.checkpoint_interval + plan.log.integrate_interval);
    let maintenance = tokio::spawn(maintenance(store.clone(), retention, stop.clone()));
    let monitor = plan
        .replica_check
        .map(|every| tokio::spawn(replica_monitor(store.clone(), every, stop.clone())));
    if plan.worker_interval.is_zero() || plan.workers == 0 {
        stopped(&mut stop).await;
        sequencer
            .await
            .context("the transparency log's sequencer")?;
        maintenance.await.context("the maintenance task")?;
        if let Some(m) = monitor {
            m.await.context("the read replica's monitor")?;
        }
        return Ok(());
    }
    let workers: Vec<_> = (0..plan.workers)
        .map(|_| {
            tokio::spawn(embedding_worker(
                service.clone(),
                plan.worker_batch.max(1),
                plan.worker_interval,
                stop.clone(),
            ))
        })
        .collect();
    for w in workers {
        w.await.context("an embedding worker panicked")?;
    }
    sequencer
        .await
        .context("the transparency log's sequencer")?;
    maintenance.await.context("the maintenance task")?;
    if let Some(m) = monitor {
        m.await.context("the read replica's monitor")?;
    }
    Ok(())
}

/// Measures the read replica's lag every `every` until `stop`: reads go to it only while the last
/// measure found it usable (see `ds_store_pg::ReplicaSettings`).
async fn replica_monitor(store: PgStore, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        if let Some(status) = store.check_replica().await {
            metrics::gauge!("datastorage_db_replica_usable")
                .set(f64::from(u8::from(status.usable)));
            if let Some(lag) = status.lag {
                metrics::gauge!("datastorage_db_replica_lag_seconds").set(lag.as_secs_f64());
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stopped(&mut stop) => return,
        }
    }
}

async fn wait_for_database(
    plan: &StartupPlan,
    store: &PgStore,
    startup: &Startup,
) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(100).min(plan.retry_max);
    for attempt in 1u64.. {
        // Migrating needs the owner's rights: a service running as the runtime role (which may not
        // create tables, not even diesel's bookkeeping table) migrates only when something is pending.
        let up_to_date = matches!(store.health().await,
            Ok(h) if h.migrations_pending == 0 && h.vector_indexes.contains(&plan.dimension));
        let waiting_for = if plan.migrate
            && !up_to_date
            && let Err(e) = migrate(&plan.database_url, plan.dimension).await
        {
            tracing::warn!(
                attempt,
                error = format!("{e:#}"),
                retry_in_ms = delay.as_millis() as u64,
                "waiting for the database: migrating failed"
            );
            format!("waiting for the database (attempt {attempt}): migrations could not be applied")
        } else {
            match store.health().await {
                Err(e) => {
                    tracing::warn!(attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "waiting for the database");
                    format!("waiting for the database (attempt {attempt}): unreachable")
                }
                Ok(h) if h.migrations_pending > 0 => {
                    tracing::warn!(
                        attempt,
                        pending = h.migrations_pending,
                        "waiting for migrations: run `datastorage migrate` or set DATASTORAGE_MIGRATE_ON_START=true"
                    );
                    format!(
                        "waiting for {} migration(s): run `datastorage migrate` or set DATASTORAGE_MIGRATE_ON_START=true",
                        h.migrations_pending
                    )
                }
                // As for pending migrations: a migration Job may be building it now.
                Ok(h) if !h.vector_indexes.contains(&plan.dimension) => {
                    tracing::warn!(
                        attempt,
                        dimension = plan.dimension,
                        "waiting for the search index of the embedding dimension: run `datastorage migrate` with this configuration"
                    );
                    format!(
                        "waiting for the search index of vectors of {} dimensions (embedding dimension mismatch: the database has indexes for {:?}): run `datastorage migrate` with this configuration",
                        plan.dimension, h.vector_indexes
                    )
                }
                Ok(_) => return Ok(()),
            }
        };
        startup.set_waiting_for(waiting_for);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(plan.retry_max);
    }
    bail!("start-up gave up")
}

/// The configured provider, checked: the local model loaded, or the remote one asked once for its
/// dimension (a provider that cannot be reached now does not stop start-up: policy `defer` keeps writes
/// working, and every answer is checked later).
async fn build_provider(config: &Config) -> anyhow::Result<Arc<dyn Embedder>> {
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

/// Applies pending migrations, then makes the search index of vectors of `dimension` (the deployment's
/// `embedding.dimension`) when it is missing. Returns the migrations applied.
pub async fn migrate(database_url: &str, dimension: usize) -> anyhow::Result<Vec<String>> {
    let applied = ds_store_pg::run_migrations(database_url)
        .await
        .context("applying migrations")?;
    if ds_store_pg::ensure_vector_index(database_url, dimension)
        .await
        .with_context(|| format!("making the search index of vectors of {dimension} dimensions"))?
    {
        tracing::info!(
            dimension,
            index = %ds_store_pg::vector_index_name(dimension),
            "made the search index of the configured embedding dimension"
        );
    }
    Ok(applied)
}

/// A small pool for a command that runs once (`jobs`, `reembed`).
fn command_store(config: &Config) -> anyhow::Result<PgStore> {
    PgStore::new(
        &config.database_url,
        &PoolSettings {
            max_size: 2,
            wait_timeout: config.db_wait_timeout,
            statement_timeout: config.db_statement_timeout,
            ..PoolSettings::default()
        },
    )
    .context("creating the database pool")
}

/// `datastorage jobs list`: open and parked embedding jobs (or parked only), newest first.
pub async fn jobs_list(
    config: &Config,
    parked_only: bool,
    limit: usize,
) -> anyhow::Result<Vec<ds_domain::jobs::JobInfo>> {
    let store = command_store(config)?;
    let jobs = store
        .list_jobs(parked_only, limit)
        .await
        .context("listing the embedding jobs")?;
    store.close().await;
    Ok(jobs)
}

/// `datastorage jobs retry`: re-queues parked jobs (all, or those whose digest, in hex, is given).
pub async fn jobs_retry(config: &Config, digests: Option<&[String]>) -> anyhow::Result<u64> {
    let parsed = digests
        .map(|ds| {
            ds.iter()
                .map(|d| {
                    let bytes = hex::decode(d.trim())
                        .with_context(|| format!("{d:?} is not a job digest (64 hex digits)"))?;
                    ds_domain::digest::Sha256Digest::try_from(bytes.as_slice())
                        .map_err(|_| anyhow::anyhow!("{d:?} is not a job digest (64 hex digits)"))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .transpose()?;
    let store = command_store(config)?;
    let n = store
        .retry_parked(parsed.as_deref())
        .await
        .context("re-queueing parked jobs")?;
    store.close().await;
    Ok(n)
}

/// `datastorage reembed`: after a change of embedding model, queues every record that has no vector of
/// the configured model for the embedding workers (a vector of that model already stored for the same
/// text is linked at once); each keeps its vector of the model it came from, so that replicas still
/// on that model find it until the switch. Returns how many records were queued or linked. Safe to
/// run while the service serves, and to run again (records already done or queued are skipped).
pub async fn reembed(config: Config, page: usize) -> anyhow::Result<u64> {
    let service = reembed_service(&config).await?;
    queue_all(&service, page).await
}

/// `datastorage reembed --finish`: the switch, once every replica runs the configured model. Refused
/// while a record received in the last `idle_for` was embedded with another model (a replica still
/// runs it). Queues what is left (records written by the old model's replicas since `reembed`), then
/// drops the links kept for the earlier models, their jobs and their vectors (see
/// [`ds_domain::ports::AuditStore::finish_switch`]). Safe to run again.
pub async fn reembed_finish(
    config: Config,
    page: usize,
    idle_for: Duration,
) -> anyhow::Result<(u64, ds_domain::ports::Switched)> {
    let service = reembed_service(&config).await?;
    let model = service.embedder().model_id().to_owned();
    if let Some(other) = service.other_model_in_use(idle_for).await? {
        bail!(
            "a record received in the last {}s was embedded with `{other}`: a replica still runs it. Finish the switch to `{model}` once every replica runs `{model}` (or give a shorter --idle-for)",
            idle_for.as_secs()
        );
    }
    let moved = queue_all(&service, page).await?;
    let switched = service
        .finish_switch()
        .await
        .context("removing the earlier models' links, jobs and vectors")?;
    tracing::info!(
        model = %model,
        queued = moved,
        kept_links = switched.kept_links,
        jobs = switched.jobs,
        vectors = switched.vectors,
        "switched to the configured embedding model"
    );
    Ok((moved, switched))
}

/// The service `reembed` works with: refused before the migrations and the search index of the
/// configured model's dimension.
async fn reembed_service(config: &Config) -> anyhow::Result<AuditService> {
    let store = command_store(config)?;
    let health = store.health().await.context("checking the database")?;
    if health.migrations_pending > 0 {
        bail!(
            "the database lacks {} migration(s): run `datastorage migrate` first",
            health.migrations_pending
        );
    }
    let provider = build_provider(config).await?;
    if !health.vector_indexes.contains(&provider.dimension()) {
        bail!(
            "embedding dimension mismatch: the provider `{}` gives {} dimensions, and the database has no search index for them (it has indexes for {:?}): run `datastorage migrate` with this configuration first",
            provider.model_id(),
            provider.dimension(),
            health.vector_indexes
        );
    }
    Ok(AuditService::with_options(
        Arc::new(store),
        provider,
        config.embedding_mode,
        config.embedding_failure_policy,
    ))
}

/// Every record without a vector of the service's model queued (or linked), `page` a transaction.
async fn queue_all(service: &AuditService, page: usize) -> anyhow::Result<u64> {
    let model = service.embedder().model_id().to_owned();
    let mut after = 0;
    let mut moved = 0u64;
    loop {
        let (n, last) = service.reembed_page(after, page.max(1)).await?;
        moved += n as u64;
        match last {
            Some(id) => {
                after = id;
                tracing::info!(model = %model, queued = moved, up_to_id = id, "re-embedding: records queued");
            }
            None => break,
        }
    }
    Ok(moved)
}

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

    let (stop, stop_rx) = watch::channel(false);
    let (outcome_tx, outcome) = watch::channel(Outcome::Pending);
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
    let background = tokio::spawn(background(
        plan,
        pg.clone(),
        service,
        log,
        startup,
        outcome_tx,
        stop_rx,
    ));
    Ok(Running {
        http_addr,
        metrics_addr,
        state,
        api: ServerTask::spawn(api.run()),
        metrics: ServerTask::spawn(metrics.run()),
        shutdown_timeout: config.shutdown_timeout,
        store: pg,
        stop,
        background,
        outcome,
    })
}
