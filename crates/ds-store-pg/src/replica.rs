//! Reads on a PostgreSQL streaming replica (`database.read_url`, contract §10; docs/scaling.md).
//!
//! The list, the trail, search, reads by id and exports go to the replica while it is usable:
//! reachable, in recovery (a standby), and no further behind the primary than `max_lag`. Anything
//! else reads the primary: a replica that is down, lagging or promoted costs the primary reads, never
//! an answer (docs/decisions.md). A read by id that the replica does not have is read again on the
//! primary, so a record is found right after its 201 whatever the lag. Writes, the log's sequencer,
//! proofs and maintenance only ever use the primary.
//!
//! The lag is measured in time, not bytes, and stays right while the primary is idle: every check
//! samples the primary's WAL position, and the replica is as far behind as the oldest sample it has
//! not replayed yet.

use crate::error::{PgStoreError, unavailable_reason};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Nullable};
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where reads may go.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    /// `postgres://` URL of the streaming replica.
    pub url: String,
    /// Connections to the replica at most.
    pub pool_size: usize,
    /// Farther behind than this, the replica is not read (reads go to the primary).
    pub max_lag: Duration,
}

impl ReplicaSettings {
    /// How often the lag is measured: a quarter of `max_lag`, from 50 ms to 1 s.
    pub fn check_every(&self) -> Duration {
        (self.max_lag / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

/// What the last check found.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaStatus {
    /// Reads go to the replica.
    pub usable: bool,
    /// How far behind the primary it was (`None`: unknown, it did not answer).
    pub lag: Option<Duration>,
    /// Why it is not usable.
    pub reason: Option<String>,
}

#[derive(Debug)]
struct State {
    status: ReplicaStatus,
    /// The primary's WAL position at each recent check, oldest first.
    samples: VecDeque<(Instant, u64)>,
}

/// The replica's pool and what the last check found.
pub(crate) struct Replica {
    pub(crate) pool: Pool<AsyncPgConnection>,
    max_lag: Duration,
    state: Mutex<State>,
}

#[derive(QueryableByName)]
struct Lsn {
    #[diesel(sql_type = BigInt)]
    lsn: i64,
}

#[derive(QueryableByName)]
struct Standby {
    #[diesel(sql_type = Bool)]
    standby: bool,
    #[diesel(sql_type = Nullable<BigInt>)]
    lsn: Option<i64>,
}

/// The current WAL position of the primary, in bytes.
pub(crate) async fn primary_position(c: &mut AsyncPgConnection) -> Result<u64, PgStoreError> {
    let p: Lsn = diesel::sql_query("SELECT (pg_current_wal_lsn() - '0/0')::bigint AS lsn")
        .get_result(c)
        .await?;
    Ok(u64::try_from(p.lsn).unwrap_or(0))
}

impl Replica {
    pub(crate) fn new(pool: Pool<AsyncPgConnection>, max_lag: Duration) -> Self {
        Replica {
            pool,
            max_lag,
            state: Mutex::new(State {
                status: ReplicaStatus {
                    usable: false,
                    lag: None,
                    reason: Some("not checked yet".into()),
                },
                samples: VecDeque::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere while holding it; the state is still whole.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn status(&self) -> ReplicaStatus {
        self.state().status.clone()
    }

    pub(crate) fn usable(&self) -> bool {
        self.state().status.usable
    }

    /// A read failed on the replica in a way that says it is not there (connection refused or
    /// lost, shutting down): reads go to the primary until a check finds it usable again.
    pub(crate) fn failed(&self, why: &PgStoreError) {
        let mut s = self.state();
        if s.status.usable {
            tracing::warn!(error = %why, "the read replica failed a read: reading the primary until it answers again");
        }
        s.status = ReplicaStatus {
            usable: false,
            lag: None,
            reason: Some("a read failed: unreachable".into()),
        };
    }

    /// Measures the replica against `primary` (the primary's current WAL position, read just
    /// before) and records whether it is usable.
    pub(crate) async fn check(&self, primary: Result<u64, PgStoreError>) -> ReplicaStatus {
        let now = Instant::now();
        if let Ok(p) = primary {
            let mut s = self.state();
            // A sample older than four times the bound only tells what the newest old one tells.
            let keep = self.max_lag.saturating_mul(4).max(Duration::from_secs(1));
            while s.samples.len() > 1 && s.samples.get(1).is_some_and(|(t, _)| now - *t > keep) {
                s.samples.pop_front();
            }
            s.samples.push_back((now, p));
        }
        let replica = async {
            let mut c = self.pool.get().await.map_err(crate::group::pool_error)?;
            let r: Standby = diesel::sql_query(
                "SELECT pg_is_in_recovery() AS standby, \
                        (pg_last_wal_replay_lsn() - '0/0')::bigint AS lsn",
            )
            .get_result(&mut *c)
            .await?;
            Ok::<_, PgStoreError>(r)
        }
        .await;
        let status = match replica {
            Err(e) => ReplicaStatus {
                usable: false,
                lag: None,
                reason: Some(match &e {
                    PgStoreError::Query(q) if unavailable_reason(q).is_none() => {
                        "the lag query failed".to_owned()
                    }
                    _ => "unreachable".to_owned(),
                }),
            },
            Ok(Standby { standby: false, .. }) | Ok(Standby { lsn: None, .. }) => ReplicaStatus {
                usable: false,
                lag: None,
                reason: Some("not a standby in recovery (promoted, or not a replica)".into()),
            },
            Ok(Standby {
                lsn: Some(replayed),
                ..
            }) => {
                let replayed = u64::try_from(replayed).unwrap_or(0);
                let s = self.state();
                let behind = s
                    .samples
                    .iter()
                    .find(|(_, p)| *p > replayed)
                    .map_or(Duration::ZERO, |(t, _)| now - *t);
                drop(s);
                if behind > self.max_lag {
                    ReplicaStatus {
                        usable: false,
                        lag: Some(behind),
                        reason: Some(format!(
                            "{:.1} s behind the primary (more than {:.1} s)",
                            behind.as_secs_f64(),
                            self.max_lag.as_secs_f64()
                        )),
                    }
                } else {
                    ReplicaStatus {
                        usable: true,
                        lag: Some(behind),
                        reason: None,
                    }
                }
            }
        };
        let mut s = self.state();
        if s.status.usable != status.usable {
            match &status.reason {
                Some(reason) => {
                    tracing::warn!(%reason, "the read replica is not usable: reads go to the primary")
                }
                None => tracing::info!("the read replica is usable: reads go to it"),
            }
        }
        s.status = status.clone();
        status
    }
}
