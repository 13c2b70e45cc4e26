//! Retention's storage (contract §9; docs/retention.md): the maintenance run that keeps month
//! partitions ahead, drops partitions whose records all expired, and purges the other expired
//! records in bounded batches, through the SQL functions of the migration
//! `2026-12-04-000000_retention_and_holds` (the only way records are ever deleted).

use crate::error::PgStoreError;
use crate::store::PgStore;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::OptionalExtension;
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Integer, Jsonb, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ds_domain::Timestamp;
use ds_domain::ports::StoreError;
use ds_domain::retention::{
    Hold, MaintenanceRun, MaintenanceSettings, Release, RetentionPolicy, RetentionStatus,
    RetentionStore,
};
use serde_json::json;

/// Key of the transaction-scoped advisory lock of a maintenance step: one replica at a time.
pub const MAINTENANCE_LOCK: i64 = 0x6473_6d61_696e_7431; // "dsmaint1"

/// Whether each of the 24 month starts after the month of `$1` (UTC) lies in a partition.
const COVERED_MONTHS_SQL: &str = "\
SELECT EXISTS (SELECT 1 FROM audit_partitions() p
               WHERE COALESCE(p.lo, '-infinity') <= x.t AND x.t < p.hi) AS covered
FROM generate_series(1, 24) m(m),
     LATERAL (SELECT (date_trunc('month', $1 AT TIME ZONE 'UTC') + make_interval(months => m.m::integer))
                     AT TIME ZONE 'UTC' AS t) x
ORDER BY m.m";

/// Partitions whose every possible `received_at` is before `$1` (the latest cutoff): the only ones
/// that can have expired whole.
const DROP_CANDIDATES_SQL: &str = "SELECT name FROM audit_partitions() WHERE hi <= $1 ORDER BY 1";

/// The partitions of `audit_records`, counted.
const PARTITION_COUNT_SQL: &str = "SELECT count(*) AS n FROM audit_partitions()";

#[derive(QueryableByName)]
struct Covered {
    #[diesel(sql_type = Bool)]
    covered: bool,
}

#[derive(QueryableByName)]
struct Got {
    #[diesel(sql_type = Bool)]
    got: bool,
}

#[derive(QueryableByName)]
struct Created {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Dropped {
    #[diesel(sql_type = Nullable<BigInt>)]
    n: Option<i64>,
}

#[derive(QueryableByName)]
struct Batch {
    #[diesel(sql_type = BigInt)]
    named: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    next_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<BigInt>)]
    next_id: Option<i64>,
}

/// Takes the maintenance lock for the current transaction (one step of a run): `false` when
/// another replica holds it.
async fn locked(c: &mut AsyncPgConnection) -> Result<bool, PgStoreError> {
    Ok(
        diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS got")
            .bind::<BigInt, _>(MAINTENANCE_LOCK)
            .get_result::<Got>(c)
            .await?
            .got,
    )
}

/// Month partitions after the current one that exist without a gap.
async fn months_ahead(c: &mut AsyncPgConnection, now: DateTime<Utc>) -> Result<u32, PgStoreError> {
    let rows: Vec<Covered> = diesel::sql_query(COVERED_MONTHS_SQL)
        .bind::<Timestamptz, _>(now)
        .load(c)
        .await?;
    Ok(rows.iter().take_while(|r| r.covered).count() as u32)
}

/// How often a run looks again for a checkpoint that covers its purge entries.
const COVERAGE_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Purges logged and not carried out yet.
async fn pending(c: &mut AsyncPgConnection) -> Result<i64, PgStoreError> {
    Ok(diesel::sql_query("SELECT count(*) AS n FROM purge_pending")
        .get_result::<Created>(c)
        .await?
        .n)
}

/// The pace of deletions over a run (`rows_per_second`, at least `pause` between batches), and
/// the partition drops it deferred (their table stayed locked: tried again at the next run).
struct Pace {
    started: tokio::time::Instant,
    deleted: u64,
    deferred: Vec<i64>,
}

impl Pace {
    fn new() -> Pace {
        Pace {
            started: tokio::time::Instant::now(),
            deleted: 0,
            deferred: Vec::new(),
        }
    }

    async fn after(&mut self, settings: &MaintenanceSettings, deleted: u64) {
        self.deleted += deleted;
        tokio::time::sleep(settings.wait_before_next_batch(self.started.elapsed(), self.deleted))
            .await;
    }
}

#[derive(QueryableByName)]
struct Applied {
    #[diesel(sql_type = BigInt)]
    pending: i64,
    #[diesel(sql_type = BigInt)]
    deleted: i64,
    #[diesel(sql_type = Bool)]
    dropped: bool,
    #[diesel(sql_type = Bool)]
    deferred: bool,
}

/// Carries out every pending purge whose entry a signed checkpoint covers, one per transaction,
/// paced: `false` when another replica holds the maintenance role.
async fn apply_covered(
    c: &mut AsyncPgConnection,
    settings: &MaintenanceSettings,
    run: &mut MaintenanceRun,
    pace: &mut Pace,
) -> Result<bool, PgStoreError> {
    let wait_ms = i32::try_from(settings.drop_lock_wait.as_millis()).unwrap_or(i32::MAX);
    let mut after = 0_i64;
    loop {
        let (cursor, skip) = (after, pace.deferred.clone());
        let applied = c
            .transaction(async |c| -> Result<Option<Option<Applied>>, PgStoreError> {
                if !locked(c).await? {
                    return Ok(None);
                }
                let a: Option<Applied> = diesel::sql_query(
                    "SELECT pending, deleted, dropped, deferred FROM audit_purge_apply($1, $2, $3)",
                )
                .bind::<BigInt, _>(cursor)
                .bind::<diesel::sql_types::Array<BigInt>, _>(skip)
                .bind::<Integer, _>(wait_ms)
                .get_result(c)
                .await
                .optional()?;
                Ok(Some(a))
            })
            .await?;
        let a = match applied {
            None => return Ok(false),
            Some(None) => return Ok(true),
            Some(Some(a)) => a,
        };
        after = a.pending;
        let deleted = u64::try_from(a.deleted).unwrap_or(0);
        if a.deferred {
            run.drops_deferred += 1;
            pace.deferred.push(a.pending);
            tracing::warn!(
                "retention: a partition due to be dropped stayed locked (a long query on audit_records); the drop is tried again at the next run"
            );
            continue;
        }
        if a.dropped {
            run.partitions_dropped += 1;
            run.records_dropped += deleted;
            ds_metrics::RETENTION_PARTITIONS_DROPPED.increment(1);
            ds_metrics::RETENTION_RECORDS_PURGED.increment(deleted);
            tracing::info!(
                records = deleted,
                "retention: dropped a partition whose records all expired"
            );
            continue;
        }
        run.batches += 1;
        run.records_purged += deleted;
        // Counted per batch: a purge of millions of records shows its progress.
        ds_metrics::RETENTION_RECORDS_PURGED.increment(deleted);
        pace.after(settings, deleted).await;
    }
}

#[derive(QueryableByName)]
struct HoldRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    correlation_id: String,
    #[diesel(sql_type = Text)]
    reason: String,
    #[diesel(sql_type = Text)]
    placed_by: String,
    #[diesel(sql_type = Timestamptz)]
    placed_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Text>)]
    released_by: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    released_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    release_reason: Option<String>,
}

impl From<HoldRow> for Hold {
    fn from(r: HoldRow) -> Self {
        Hold {
            id: r.id,
            correlation_id: r.correlation_id,
            reason: r.reason,
            placed_by: r.placed_by,
            placed_at: Timestamp::from_utc(r.placed_at),
            released_by: r.released_by,
            released_at: r.released_at.map(Timestamp::from_utc),
            release_reason: r.release_reason,
        }
    }
}

const HOLD_COLUMNS: &str =
    "id, correlation_id, reason, placed_by, placed_at, released_by, released_at, release_reason";

/// The log entry of a hold placed or released (contract §9): what a reader of the log needs to
/// know who kept which records, and why.
async fn hold_entry(
    c: &mut AsyncPgConnection,
    kind: &str,
    body: serde_json::Value,
) -> Result<(), PgStoreError> {
    diesel::sql_query("INSERT INTO log_entries (kind, body) VALUES ($1, $2)")
        .bind::<Text, _>(kind)
        .bind::<Jsonb, _>(body)
        .execute(c)
        .await?;
    Ok(())
}

#[async_trait]
impl RetentionStore for PgStore {
    async fn place_hold(
        &self,
        correlation_id: &str,
        reason: &str,
        placed_by: &str,
    ) -> Result<Hold, StoreError> {
        let mut conn = self.conn().await?;
        let (correlation_id, reason, placed_by) = (
            correlation_id.to_owned(),
            reason.to_owned(),
            placed_by.to_owned(),
        );
        let row = conn
            .transaction(async |c| -> Result<HoldRow, PgStoreError> {
                // A purge batch running now finishes first; every later one sees this hold.
                diesel::sql_query("SELECT audit_holds_lock()").execute(c).await?;
                let row: HoldRow = diesel::sql_query(format!(
                    "INSERT INTO legal_holds (correlation_id, reason, placed_by) VALUES ($1, $2, $3) \
                     RETURNING {HOLD_COLUMNS}"
                ))
                .bind::<Text, _>(&correlation_id)
                .bind::<Text, _>(&reason)
                .bind::<Text, _>(&placed_by)
                .get_result(c)
                .await?;
                hold_entry(
                    c,
                    "hold",
                    json!({"hold": row.id, "correlationId": row.correlation_id,
                           "reason": row.reason, "placedBy": row.placed_by}),
                )
                .await?;
                Ok(row)
            })
            .await?;
        Ok(row.into())
    }

    async fn release_hold(
        &self,
        id: i64,
        reason: &str,
        released_by: &str,
    ) -> Result<Release, StoreError> {
        let mut conn = self.conn().await?;
        let (reason, released_by) = (reason.to_owned(), released_by.to_owned());
        Ok(conn
            .transaction(async |c| -> Result<Release, PgStoreError> {
                let found: Option<HoldRow> = diesel::sql_query(format!(
                    "SELECT {HOLD_COLUMNS} FROM legal_holds WHERE id = $1 FOR UPDATE"
                ))
                .bind::<BigInt, _>(id)
                .get_result(c)
                .await
                .optional()?;
                let Some(found) = found else {
                    return Ok(Release::NotFound);
                };
                if found.released_at.is_some() {
                    return Ok(Release::AlreadyReleased(found.into()));
                }
                let row: HoldRow = diesel::sql_query(format!(
                    "UPDATE legal_holds SET released_by = $2, released_at = now(), release_reason = $3 \
                     WHERE id = $1 RETURNING {HOLD_COLUMNS}"
                ))
                .bind::<BigInt, _>(id)
                .bind::<Text, _>(&released_by)
                .bind::<Text, _>(&reason)
                .get_result(c)
                .await?;
                hold_entry(
                    c,
                    "release",
                    json!({"hold": row.id, "correlationId": row.correlation_id,
                           "reason": reason, "releasedBy": released_by}),
                )
                .await?;
                Ok(Release::Released(row.into()))
            })
            .await?)
    }

    async fn holds(&self, active_only: bool) -> Result<Vec<Hold>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<HoldRow> = diesel::sql_query(format!(
            "SELECT {HOLD_COLUMNS} FROM legal_holds WHERE NOT $1 OR released_at IS NULL ORDER BY id DESC"
        ))
        .bind::<Bool, _>(active_only)
        .load(&mut conn)
        .await
        .map_err(PgStoreError::from)?;
        Ok(rows.into_iter().map(Hold::from).collect())
    }

    async fn status(&self, now: DateTime<Utc>) -> Result<RetentionStatus, StoreError> {
        let mut conn = self.conn().await?;
        let months_ahead = months_ahead(&mut conn, now).await?;
        let holds: Created =
            diesel::sql_query("SELECT count(*) AS n FROM legal_holds WHERE released_at IS NULL")
                .get_result(&mut conn)
                .await
                .map_err(PgStoreError::from)?;
        Ok(RetentionStatus {
            months_ahead,
            holds_active: holds.n,
        })
    }

    async fn maintain(
        &self,
        policy: &RetentionPolicy,
        settings: &MaintenanceSettings,
        now: DateTime<Utc>,
        purge: bool,
    ) -> Result<MaintenanceRun, StoreError> {
        let mut conn = self.conn().await?;
        Ok(maintain(&mut conn, policy, settings, now, purge).await?)
    }
}

async fn maintain(
    c: &mut AsyncPgConnection,
    policy: &RetentionPolicy,
    settings: &MaintenanceSettings,
    now: DateTime<Utc>,
    purge: bool,
) -> Result<MaintenanceRun, PgStoreError> {
    let mut run = MaintenanceRun::default();
    // Partitions: this month and `months_ahead` after it.
    let ahead = i32::try_from(settings.months_ahead).unwrap_or(i32::MAX);
    let created = c
        .transaction(async |c| -> Result<Option<i64>, PgStoreError> {
            if !locked(c).await? {
                return Ok(None);
            }
            let before: Created = diesel::sql_query(PARTITION_COUNT_SQL).get_result(c).await?;
            diesel::sql_query(
                "SELECT audit_partition_ensure($1 + make_interval(months => m)) FROM generate_series(0, $2) m",
            )
            .bind::<Timestamptz, _>(now)
            .bind::<Integer, _>(ahead)
            .execute(c)
            .await?;
            let after: Created = diesel::sql_query(PARTITION_COUNT_SQL).get_result(c).await?;
            Ok(Some(after.n - before.n))
        })
        .await?;
    let Some(created) = created else {
        return Ok(run);
    };
    run.ran = true;
    run.partitions_created = u32::try_from(created.max(0)).unwrap_or(u32::MAX);
    run.months_ahead = months_ahead(c, now).await?;
    if !purge || !policy.purges() {
        return Ok(run);
    }

    let cutoffs = policy.cutoffs_json(now);
    let description = policy.describe();
    let latest = policy.cutoffs(now).into_values().flatten().max();
    let mut pace = Pace::new();
    // What earlier runs logged and a checkpoint covers since.
    if !apply_covered(c, settings, &mut run, &mut pace).await? {
        return Ok(run);
    }
    // Whole partitions first: no row-by-row delete where a drop will do.
    if let Some(latest) = latest {
        let names: Vec<crate::rows::Name> = diesel::sql_query(DROP_CANDIDATES_SQL)
            .bind::<Timestamptz, _>(latest)
            .load(c)
            .await?;
        for part in names {
            let (cutoffs, description) = (cutoffs.clone(), description.clone());
            let name = part.name.clone();
            let logged = c
                .transaction(async |c| -> Result<Option<Option<i64>>, PgStoreError> {
                    if !locked(c).await? {
                        return Ok(None);
                    }
                    let d: Dropped =
                        diesel::sql_query("SELECT audit_purge_partition($1, $2, $3) AS n")
                            .bind::<Text, _>(name)
                            .bind::<Jsonb, _>(cutoffs)
                            .bind::<Jsonb, _>(description)
                            .get_result(c)
                            .await?;
                    Ok(Some(d.n))
                })
                .await?;
            match logged {
                None => return Ok(run),
                Some(Some(n)) => {
                    run.records_logged += u64::try_from(n).unwrap_or(0);
                    tracing::info!(
                        partition = %part.name,
                        records = n,
                        "retention: logged the drop of a partition whose records all expired"
                    );
                }
                Some(None) => {}
            }
        }
    }
    // Then expired records in bounded batches: each logged, then deleted once a checkpoint covers
    // its entry, at the pace of `rows_per_second`.
    let mut after: (Option<DateTime<Utc>>, Option<i64>) = (None, None);
    let batch = i32::try_from(settings.batch.max(1)).unwrap_or(i32::MAX);
    loop {
        let (cutoffs, description) = (cutoffs.clone(), description.clone());
        let cursor = after;
        let b = c
            .transaction(async |c| -> Result<Option<Batch>, PgStoreError> {
                if !locked(c).await? {
                    return Ok(None);
                }
                let b: Batch = diesel::sql_query(
                    "SELECT named, next_at, next_id FROM audit_purge($1, $2, $3, $4, $5)",
                )
                .bind::<Jsonb, _>(cutoffs)
                .bind::<Jsonb, _>(description)
                .bind::<Nullable<Timestamptz>, _>(cursor.0)
                .bind::<Nullable<BigInt>, _>(cursor.1)
                .bind::<Integer, _>(batch)
                .get_result(c)
                .await?;
                Ok(Some(b))
            })
            .await?;
        let Some(b) = b else {
            return Ok(run);
        };
        run.records_logged += u64::try_from(b.named).unwrap_or(0);
        if !apply_covered(c, settings, &mut run, &mut pace).await? {
            return Ok(run);
        }
        // Logging runs ahead of deleting by at most `max_pending` batches.
        let deadline = tokio::time::Instant::now() + settings.coverage_wait;
        while pending(c).await? - pace.deferred.len() as i64
            >= i64::from(settings.max_pending.max(1))
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(COVERAGE_POLL).await;
            if !apply_covered(c, settings, &mut run, &mut pace).await? {
                return Ok(run);
            }
        }
        match (b.next_at, b.next_id) {
            (Some(at), Some(id)) => after = (Some(at), Some(id)),
            _ => break,
        }
    }
    // The last entries, once a checkpoint covers them.
    let deadline = tokio::time::Instant::now() + settings.coverage_wait;
    loop {
        if !apply_covered(c, settings, &mut run, &mut pace).await? {
            return Ok(run);
        }
        run.pending = u64::try_from(pending(c).await?).unwrap_or(0);
        // Deferred drops stay pending until the next run.
        if run.pending <= pace.deferred.len() as u64 || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(COVERAGE_POLL).await;
    }
    if run.pending > 0 {
        tracing::warn!(
            pending = run.pending,
            "retention: purges logged but no signed checkpoint covers their entries yet: carried out at the next run"
        );
    }
    if run.records_purged > 0 {
        tracing::info!(
            records = run.records_purged,
            batches = run.batches,
            "retention: purged expired records"
        );
    }
    Ok(run)
}
