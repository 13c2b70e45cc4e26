//! The loops that run beside the API once start-up is done, on every replica: the embedding workers,
//! the transparency log's sequencer, the maintenance task and the read replica's monitor. Each runs
//! until its [`CancellationToken`] is cancelled, finishing the step it is in.

use crate::config::{LogSettings, RetentionSettings};
use ds_domain::AuditService;
use ds_domain::log::LogService;
use ds_domain::retention::RetentionStore;
use ds_store_pg::PgStore;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often each worker runs the sweep (pending records whose vector is stored are linked) and retires
/// finished jobs.
const HEAL_INTERVAL: Duration = Duration::from_secs(5);

/// The embedding worker: runs the sweep every [`HEAL_INTERVAL`]; runs durable jobs while there are any, polls every `interval` when the queue
/// is empty, backs off (up to 30 s) while the provider or the database fails. Safe on every replica:
/// jobs are claimed with `FOR UPDATE SKIP LOCKED`. On `stop` it finishes the batch it is running and
/// returns.
pub(crate) async fn embedding_worker(
    service: AuditService,
    batch: usize,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut backoff = interval;
    let mut last_heal: Option<std::time::Instant> = None;
    loop {
        if stop.is_cancelled() {
            return;
        }
        if last_heal.is_none_or(|t| t.elapsed() >= HEAL_INTERVAL) {
            last_heal = Some(std::time::Instant::now());
            match service.heal_embeddings().await {
                Ok((linked, requeued)) => {
                    if linked > 0 {
                        ds_metrics::EMBEDDING_RECORDS_HEALED.increment(linked);
                        tracing::info!(
                            records = linked,
                            "sweep: linked pending records whose vector is stored"
                        );
                    }
                    if requeued > 0 {
                        ds_metrics::EMBEDDING_RECORDS_REQUEUED.increment(requeued as u64);
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
            () = stop.cancelled() => return,
        }
    }
}

/// The sequencer of the transparency log: every `interval` (at once again after a full batch) one run
/// of [`LogService::integrate`], which does something only on the replica that gets the role for that
/// run; backs off (up to 30 s) while the database fails. On `stop` it finishes its run and returns.
pub(crate) async fn sequencer(log: LogService, settings: LogSettings, stop: CancellationToken) {
    let Some(signer) = settings.signer.clone() else {
        return;
    };
    let mut backoff = settings.integrate_interval;
    loop {
        if stop.is_cancelled() {
            return;
        }
        match log
            .integrate(settings.batch, &signer, settings.checkpoint_interval)
            .await
        {
            Ok(run) => {
                backoff = settings.integrate_interval;
                if run.appended > 0 {
                    ds_metrics::LOG_LEAVES_APPENDED.increment(run.appended as u64);
                    tracing::debug!(
                        leaves = run.appended,
                        tree_size = run.tree_size,
                        "appended to the transparency log"
                    );
                }
                if run.unqueued > 0 {
                    ds_metrics::LOG_UNQUEUED_RECORDS.increment(run.unqueued as u64);
                }
                if let Some(size) = run.signed {
                    ds_metrics::LOG_CHECKPOINTS_SIGNED.increment(1);
                    tracing::info!(tree_size = size, "checkpoint signed");
                }
                if run.appended >= settings.batch {
                    continue;
                }
            }
            Err(e) => {
                ds_metrics::LOG_SEQUENCER_ERRORS.increment(1);
                backoff = (backoff * 2).min(Duration::from_secs(30));
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "the transparency log's sequencer failed; records stay queued");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// The maintenance task (contract §9): every `interval`, keeps month partitions ahead, and when a
/// purge is due (`purge_interval` after this replica's last), purges what expired. One replica at
/// a time, decided by the database; a failed run is retried at the next interval.
pub(crate) async fn maintenance(
    store: PgStore,
    settings: RetentionSettings,
    stop: CancellationToken,
) {
    if settings.interval.is_zero() {
        return;
    }
    let mut last_purge: Option<tokio::time::Instant> = None;
    loop {
        if stop.is_cancelled() {
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
                ds_metrics::RETENTION_ERRORS.increment(1);
                tracing::warn!(error = %e, "retention: the maintenance run failed; it runs again at the next interval");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(settings.interval) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Measures the read replica's lag every `every` until `stop`: reads go to it only while the last
/// measure found it usable (see `ds_store_pg::ReplicaSettings`).
pub(crate) async fn replica_monitor(store: PgStore, every: Duration, stop: CancellationToken) {
    loop {
        if let Some(status) = store.check_replica().await {
            ds_metrics::DB_REPLICA_USABLE.set(f64::from(u8::from(status.usable)));
            if let Some(lag) = status.lag {
                ds_metrics::DB_REPLICA_LAG_SECONDS.set(lag.as_secs_f64());
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
    }
}
