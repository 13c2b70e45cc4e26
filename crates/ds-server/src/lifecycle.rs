//! The service's lifecycle: start-up in the background (waiting for the database with backoff,
//! migrating when configured), the loops once started, and the graceful shutdown on a signal.

use crate::config::{LogSettings, RetentionSettings};
use crate::tasks;
use anyhow::{Context, bail};
use ds_domain::AuditService;
use ds_domain::log::LogService;
use ds_domain::ports::AuditStore;
use ds_http::{AppState, Startup};
use ds_store_pg::PgStore;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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
    stop: CancellationToken,
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
        self.stop.cancel();
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
        // Dropping `stop` does not cancel it: the workers run on.
        (self.http_addr, self.state)
    }
}

/// What [`Running::launch`] puts to work: the bound listeners and what start-up and the loops use.
pub(crate) struct Launch {
    pub(crate) http_addr: SocketAddr,
    pub(crate) metrics_addr: SocketAddr,
    pub(crate) api: actix_web::dev::Server,
    pub(crate) metrics: actix_web::dev::Server,
    pub(crate) state: AppState,
    pub(crate) store: PgStore,
    pub(crate) service: AuditService,
    pub(crate) log: LogService,
    pub(crate) startup: Arc<Startup>,
    pub(crate) plan: StartupPlan,
    pub(crate) shutdown_timeout: Duration,
}

impl Running {
    /// Serves from now on; start-up (waiting for the database) and then the loops run in the
    /// background.
    pub(crate) fn launch(l: Launch) -> Running {
        let stop = CancellationToken::new();
        let (outcome_tx, outcome) = watch::channel(Outcome::Pending);
        let background = tokio::spawn(background(
            l.plan,
            l.store.clone(),
            l.service,
            l.log,
            l.startup,
            outcome_tx,
            stop.clone(),
        ));
        Running {
            http_addr: l.http_addr,
            metrics_addr: l.metrics_addr,
            state: l.state,
            api: ServerTask::spawn(l.api),
            metrics: ServerTask::spawn(l.metrics),
            shutdown_timeout: l.shutdown_timeout,
            store: l.store,
            stop,
            background,
            outcome,
        }
    }
}

/// Listens for SIGTERM and SIGINT from now on (the handlers are installed before this returns); the
/// future resolves at the first of them.
pub(crate) fn signal_listener() -> impl std::future::Future<Output = ()> {
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

/// What start-up needs from the configuration, for the background task.
pub(crate) struct StartupPlan {
    pub(crate) database_url: String,
    pub(crate) migrate: bool,
    pub(crate) dimension: usize,
    pub(crate) retry_max: Duration,
    pub(crate) workers: usize,
    pub(crate) worker_batch: usize,
    pub(crate) worker_interval: Duration,
    pub(crate) log: LogSettings,
    pub(crate) retention: RetentionSettings,
    /// How often the read replica's lag is measured (`None`: no replica).
    pub(crate) replica_check: Option<Duration>,
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
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let ready = tokio::select! {
        r = wait_for_database(&plan, &store, &startup) => r,
        () = stop.cancelled() => return Ok(()),
    };
    if let Err(e) = ready {
        let _ = outcome.send(Outcome::Failed(format!("{e:#}")));
        return Err(e);
    }
    startup.set_started();
    let _ = outcome.send(Outcome::Started);
    tracing::info!("started: the database is ready");
    let sequencer = tokio::spawn(tasks::sequencer(log, plan.log.clone(), stop.clone()));
    let mut retention = plan.retention.clone();
    // A purge is carried out once a checkpoint covers its entry: a run waits for a few of them.
    retention.maintenance.coverage_wait = retention
        .maintenance
        .coverage_wait
        .max(3 * plan.log.checkpoint_interval + plan.log.integrate_interval);
    let maintenance = tokio::spawn(tasks::maintenance(store.clone(), retention, stop.clone()));
    let monitor = plan
        .replica_check
        .map(|every| tokio::spawn(tasks::replica_monitor(store.clone(), every, stop.clone())));
    let workers = if plan.worker_interval.is_zero() {
        0
    } else {
        plan.workers
    };
    let workers: Vec<_> = (0..workers)
        .map(|_| {
            tokio::spawn(tasks::embedding_worker(
                service.clone(),
                plan.worker_batch.max(1),
                plan.worker_interval,
                stop.clone(),
            ))
        })
        .collect();
    // The other loops may end at once (no signing key, maintenance off): this task ends at `stop`.
    if workers.is_empty() {
        stop.cancelled().await;
    }
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
            && let Err(e) = crate::commands::migrate(&plan.database_url, plan.dimension).await
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
