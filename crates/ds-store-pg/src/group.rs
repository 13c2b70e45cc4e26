//! Group commit: concurrent writes share one transaction.
//!
//! Writes queue for a bounded number of commit slots. A free slot takes every write that is queued
//! (up to [`GroupCommitSettings::max_records`] records), optionally lingers up to [`GroupCommitSettings::max_wait`]
//! for more, and commits them together ([`crate::write`]). With no linger (the default) a lone write
//! goes out at once; groups form only while every slot is busy, that is exactly when the database is
//! the bottleneck and one commit for many writes pays. Nothing is answered before its commit.
//!
//! If a group of several fails for a reason other than a retryable conflict, every write of it is
//! run again alone, so that one bad write cannot fail its neighbours. A write whose caller stopped
//! waiting (request timeout, client gone) before its group started is dropped, not committed.

use crate::connect::Target;
use crate::error::PgStoreError;
use crate::write::write_group_retrying;
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::deadpool::{Pool, PoolError};
use ds_domain::ports::{WriteRequest, WriteResult};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::task::task_tracker::TaskTrackerToken;

/// Group commit settings.
#[derive(Debug, Clone)]
pub struct GroupCommitSettings {
    /// Transactions writing at the same time (commit slots).
    pub max_in_flight: usize,
    /// Records per group transaction; a single request with more still goes alone.
    pub max_records: usize,
    /// How long a slot waits for more writes before committing (zero: never waits).
    pub max_wait: Duration,
}

impl Default for GroupCommitSettings {
    fn default() -> Self {
        GroupCommitSettings {
            max_in_flight: 4,
            max_records: 1000,
            max_wait: Duration::ZERO,
        }
    }
}

/// One queued write and where its answer goes.
pub(crate) struct Queued {
    pub request: WriteRequest,
    pub reply: oneshot::Sender<Result<WriteResult, PgStoreError>>,
    /// Counts the write as pending until its group has committed (or it was dropped): shutdown
    /// waits for the tracker to be empty.
    pub pending: Option<TaskTrackerToken>,
}

/// Writes waiting for a commit slot, at most (the admission layer bounds them well before).
const QUEUE: usize = 4096;

/// Starts the dispatcher on `runtime` (else the current one); it ends when every sender is dropped,
/// after the groups it started have committed.
pub(crate) fn start(
    runtime: Option<tokio::runtime::Handle>,
    pool: Pool<AsyncPgConnection>,
    target: Arc<Target>,
    settings: GroupCommitSettings,
) -> mpsc::Sender<Queued> {
    let (tx, rx) = mpsc::channel(QUEUE);
    match runtime {
        Some(rt) => drop(rt.spawn(dispatch(pool, target, settings, rx))),
        None => drop(tokio::spawn(dispatch(pool, target, settings, rx))),
    }
    tx
}

async fn dispatch(
    pool: Pool<AsyncPgConnection>,
    target: Arc<Target>,
    settings: GroupCommitSettings,
    mut rx: mpsc::Receiver<Queued>,
) {
    let slots = Arc::new(Semaphore::new(settings.max_in_flight.max(1)));
    let mut carry: Option<Queued> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carry.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        let mut records = first.request.records.len();
        let mut group = vec![first];
        let deadline = tokio::time::Instant::now() + settings.max_wait;
        loop {
            let next = match rx.try_recv() {
                Ok(q) => q,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) if settings.max_wait.is_zero() => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(q)) => q,
                        _ => break,
                    }
                }
            };
            if records + next.request.records.len() > settings.max_records {
                carry = Some(next);
                break;
            }
            records += next.request.records.len();
            group.push(next);
        }
        let pool = pool.clone();
        let target = target.clone();
        tokio::spawn(async move {
            commit(&pool, &target, group).await;
            drop(slot);
        });
    }
}

pub(crate) async fn commit(pool: &Pool<AsyncPgConnection>, target: &Target, group: Vec<Queued>) {
    // Held until this function returns: the group's writes are pending until then.
    let mut _pending = Vec::with_capacity(group.len());
    // A caller that stopped waiting gets nothing committed in its name.
    let (requests, mut replies): (Vec<WriteRequest>, Vec<_>) = group
        .into_iter()
        .filter_map(|q| {
            _pending.push(q.pending);
            (!q.reply.is_closed()).then_some((q.request, q.reply))
        })
        .unzip();
    if requests.is_empty() {
        return;
    }
    ds_metrics::DB_GROUP_COMMIT_SIZE.record(requests.len() as f64);
    let mut conn = match pool.get().await {
        Ok(conn) => conn,
        Err(e) => {
            let e = pool_error(e);
            for reply in replies {
                let copy = match &e {
                    PgStoreError::Connect(m) => PgStoreError::Connect(m.clone()),
                    other => PgStoreError::Pool(other.to_string()),
                };
                let _ = reply.send(Err(copy));
            }
            return;
        }
    };
    let cancel = conn.cancel_token();
    let refs: Vec<&WriteRequest> = requests.iter().collect();
    let started = std::time::Instant::now();
    let outcome = {
        let write = write_group_retrying(&mut conn, &refs);
        tokio::pin!(write);
        tokio::select! {
            r = &mut write => r,
            () = every_caller_gone(&mut replies) => {
                // Every caller timed out or left while the statement ran (e.g. waiting on a lock):
                // cancel it, so that nothing is committed that no one was told about.
                target.cancel(&cancel).await;
                write.await
            }
        }
    };
    ds_metrics::DB_WRITE_SECONDS.record(started.elapsed().as_secs_f64());
    match outcome {
        Ok(results) => {
            for (reply, r) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(r));
            }
        }
        Err(e) if replies.len() == 1 => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(e));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, writes = replies.len(), "group write failed; writing each alone");
            ds_metrics::DB_GROUP_COMMIT_FALLBACKS.increment(1);
            for (request, reply) in requests.iter().zip(replies) {
                if reply.is_closed() {
                    continue;
                }
                let result = write_group_retrying(&mut conn, &[request])
                    .await
                    .and_then(|mut r| {
                        r.pop()
                            .ok_or_else(|| PgStoreError::Corrupt("a write got no answer".into()))
                    });
                let _ = reply.send(result);
            }
        }
    }
}

/// Resolves when every reply channel is closed (its caller dropped the answer).
async fn every_caller_gone(replies: &mut [oneshot::Sender<Result<WriteResult, PgStoreError>>]) {
    futures_util::future::join_all(replies.iter_mut().map(|r| r.closed())).await;
}

/// A pool failure, as the store reports it.
pub(crate) fn pool_error(e: PoolError) -> PgStoreError {
    match e {
        PoolError::Backend(e) => PgStoreError::Connect(e.to_string()),
        PoolError::Timeout(t) => {
            PgStoreError::Pool(format!("timed out waiting for a connection ({t:?})"))
        }
        other => PgStoreError::Pool(other.to_string()),
    }
}
