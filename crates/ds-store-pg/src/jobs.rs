//! The SQL of the embedding job lifecycle (policy in `ds_domain::jobs`): claims under a lease,
//! completion (vectors, links, done), failures (attempts, backoff, parking), releases, the sweep and the
//! retirement of finished jobs, listing and re-queueing parked jobs, and the counts behind the gauges.

use crate::error::PgStoreError;
use crate::rows::RecordRow;
use crate::schema::embedding_jobs;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Bytea, Double, Integer, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ds_domain::digest::Sha256Digest;
use ds_domain::jobs::{ClaimedJob, FailedJob, JobInfo, Verdict};
use std::time::Duration;

/// Claims: open jobs of a model whose time has come and whose lease (if any) has ended, oldest due
/// first, locked only for the statement (`SKIP LOCKED`: concurrent claims take other jobs).
const CLAIM_SQL: &str = "\
UPDATE embedding_jobs j SET leased_until = now() + make_interval(secs => $3)
WHERE j.digest IN (
    SELECT digest FROM embedding_jobs
    WHERE model = $1 AND done_at IS NULL AND parked_at IS NULL AND next_attempt_at <= now()
      AND (leased_until IS NULL OR leased_until < now())
    ORDER BY next_attempt_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED)
RETURNING j.digest, j.text, j.attempts";

/// Links the waiting records of the given digests to their (now stored) vectors.
const LINK_RECORDS_SQL: &str = "\
UPDATE audit_records r SET embedding_id = e.id
FROM embeddings e
WHERE e.digest = ANY($1) AND r.embedding_digest = e.digest AND r.embedding_id IS NULL";

/// Charges failed attempts: `$2` seconds until the next one, or parked when `$3`.
const FAIL_SQL: &str = "\
UPDATE embedding_jobs j
SET attempts = j.attempts + 1, last_error = f.error, leased_until = NULL,
    next_attempt_at = now() + make_interval(secs => f.wait),
    parked_at = CASE WHEN f.park THEN now() END
FROM unnest($1::bytea[], $2::float8[], $3::bool[], $4::text[]) AS f(digest, wait, park, error)
WHERE j.digest = f.digest AND j.done_at IS NULL";

/// The sweep, one slice at a time: the next `$3` pending records in digest order after `$2` (the
/// partial index `audit_records_pending`), and of those, up to `$1` whose vector is stored are
/// linked. Returns how many it linked, the last digest of the slice and the slice's size (fewer
/// than `$3`: the sweep went round, the next starts from the first digest). A sweep over every
/// pending record at once read them all each time: 250–470 ms with 128,000 records waiting for the
/// worker, and past the statement timeout with a million.
const HEAL_SQL: &str = "\
WITH slice AS (
    SELECT embedding_digest AS digest FROM audit_records
    WHERE embedding_id IS NULL AND embedding_digest > $2
    ORDER BY embedding_digest LIMIT $3
), picked AS MATERIALIZED (
    -- Chosen once (a subquery in the UPDATE's WHERE may be scanned again, and each scan skips the
    -- rows it just linked: more than `$1` a call).
    SELECT p.id FROM audit_records p JOIN embeddings v ON v.digest = p.embedding_digest
    WHERE p.embedding_id IS NULL AND p.embedding_digest IN (SELECT digest FROM slice)
    LIMIT $1
    FOR UPDATE OF p SKIP LOCKED
), healed AS (
    UPDATE audit_records r SET embedding_id = e.id
    FROM picked k, embeddings e
    WHERE r.id = k.id AND e.digest = r.embedding_digest AND r.embedding_id IS NULL
    RETURNING 1
)
SELECT (SELECT count(*) FROM healed) AS healed,
       (SELECT digest FROM slice ORDER BY digest DESC LIMIT 1) AS upto,
       (SELECT count(*) FROM slice) AS seen";

/// The pending records of the sweep's slice (digests after `$1` up to `$2`) that have neither a
/// vector nor a job (open, parked or done) for their digest: at most `$3`. A record and its job
/// are committed together and a job is deleted only when no record waits for it (or, retired, once
/// its records are linked), so these are records whose job or vector was deleted under a writer
/// (docs/embeddings.md, "Records without a job").
const WITHOUT_JOB_SQL: &str = "\
SELECT r.* FROM audit_records r
WHERE r.embedding_id IS NULL AND r.embedding_digest > $1 AND r.embedding_digest <= $2
  AND NOT EXISTS (SELECT 1 FROM embedding_jobs j WHERE j.digest = r.embedding_digest)
  AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.digest = r.embedding_digest)
ORDER BY r.embedding_digest
LIMIT $3";

/// How many pending records one sweep call looks at, per record it may link.
const HEAL_SLICE_PER_LINK: i64 = 4;

#[derive(QueryableByName)]
struct Healed {
    #[diesel(sql_type = BigInt)]
    healed: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Bytea>)]
    upto: Option<Vec<u8>>,
    #[diesel(sql_type = BigInt)]
    seen: i64,
}

/// Retirement: deletes the jobs done more than `$1` seconds ago and links their records once more (a
/// writer that saw such a job committed within the grace period, so this statement sees its record).
const RETIRE_SQL: &str = "\
WITH retired AS (
    DELETE FROM embedding_jobs WHERE done_at < now() - make_interval(secs => $1) RETURNING digest
)
UPDATE audit_records r SET embedding_id = e.id
FROM retired t JOIN embeddings e ON e.digest = t.digest
WHERE r.embedding_digest = t.digest AND r.embedding_id IS NULL";

/// Jobs for `datastorage jobs list`, newest first.
const LIST_SQL: &str = "\
SELECT digest, model, attempts,
       CASE WHEN parked_at IS NOT NULL THEN 'parked' WHEN done_at IS NOT NULL THEN 'done' ELSE 'open' END AS state,
       to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS created_at,
       to_char(next_attempt_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS next_attempt_at,
       last_error, left(text, 80) AS text
FROM embedding_jobs
WHERE done_at IS NULL AND ($1 = false OR parked_at IS NOT NULL)
ORDER BY created_at DESC
LIMIT $2";

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = Bytea)]
    digest: Vec<u8>,
    #[diesel(sql_type = Text)]
    text: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
}

#[derive(QueryableByName)]
struct Listed {
    #[diesel(sql_type = Bytea)]
    digest: Vec<u8>,
    #[diesel(sql_type = Text)]
    model: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Text)]
    created_at: String,
    #[diesel(sql_type = Text)]
    next_attempt_at: String,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = Text)]
    text: String,
}

fn digest(bytes: &[u8]) -> Result<Sha256Digest, PgStoreError> {
    bytes
        .try_into()
        .map_err(|_| PgStoreError::Corrupt(format!("a job digest of {} bytes", bytes.len())))
}

pub(crate) async fn claim(
    c: &mut AsyncPgConnection,
    model: &str,
    limit: usize,
    lease: Duration,
) -> Result<Vec<ClaimedJob>, PgStoreError> {
    let rows: Vec<Claimed> = diesel::sql_query(CLAIM_SQL)
        .bind::<Text, _>(model)
        .bind::<BigInt, _>(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind::<Double, _>(lease.as_secs_f64())
        .load(c)
        .await?;
    rows.into_iter()
        .map(|r| {
            Ok(ClaimedJob {
                digest: digest(&r.digest)?,
                text: r.text,
                attempts: u32::try_from(r.attempts).unwrap_or(0),
            })
        })
        .collect()
}

/// Vectors stored, records linked, jobs marked done, in one transaction; rows in digest order (the
/// write path's lock order). A finished job is kept (done) until it is retired: see [`retire`].
pub(crate) async fn complete(
    c: &mut AsyncPgConnection,
    model: &str,
    done: &[(Sha256Digest, Vec<f32>)],
) -> Result<usize, PgStoreError> {
    let mut order: Vec<&(Sha256Digest, Vec<f32>)> = done.iter().collect();
    order.sort_by_key(|(d, _)| *d);
    order.dedup_by(|a, b| a.0 == b.0);
    let n = order.len();
    c.transaction(async |c| -> Result<(), PgStoreError> {
        let rows: Vec<(&[u8], &str, &[f32])> = order
            .iter()
            .map(|(d, v)| (d.as_slice(), model, v.as_slice()))
            .collect();
        crate::write::insert_embeddings(c, &rows).await?;
        let digests: Vec<&[u8]> = order.iter().map(|(d, _)| d.as_slice()).collect();
        diesel::sql_query(LINK_RECORDS_SQL)
            .bind::<Array<Bytea>, _>(&digests)
            .execute(c)
            .await?;
        diesel::update(embedding_jobs::table.filter(embedding_jobs::digest.eq_any(&digests)))
            .set((
                embedding_jobs::done_at
                    .eq(diesel::dsl::sql::<Nullable<diesel::sql_types::Timestamptz>>("now()")),
                embedding_jobs::leased_until.eq(None::<chrono::DateTime<chrono::Utc>>),
            ))
            .execute(c)
            .await?;
        Ok(())
    })
    .await?;
    Ok(n)
}

pub(crate) async fn fail(
    c: &mut AsyncPgConnection,
    failed: &[FailedJob],
) -> Result<(), PgStoreError> {
    let digests: Vec<&[u8]> = failed.iter().map(|f| f.digest.as_slice()).collect();
    let waits: Vec<f64> = failed
        .iter()
        .map(|f| match f.verdict {
            Verdict::RetryIn(d) => d.as_secs_f64(),
            Verdict::Park => 0.0,
        })
        .collect();
    let parks: Vec<bool> = failed.iter().map(|f| f.verdict == Verdict::Park).collect();
    let errors: Vec<String> = failed
        .iter()
        .map(|f| f.error.chars().take(1000).collect())
        .collect();
    diesel::sql_query(FAIL_SQL)
        .bind::<Array<Bytea>, _>(&digests)
        .bind::<Array<Double>, _>(&waits)
        .bind::<Array<Bool>, _>(&parks)
        .bind::<Array<Text>, _>(&errors)
        .execute(c)
        .await?;
    for f in failed.iter().filter(|f| f.verdict == Verdict::Park) {
        tracing::warn!(job = %hex::encode(f.digest), error = %f.error, "embedding job parked after repeated failures");
    }
    Ok(())
}

pub(crate) async fn release(
    c: &mut AsyncPgConnection,
    digests: &[Sha256Digest],
) -> Result<(), PgStoreError> {
    let digests: Vec<&[u8]> = digests.iter().map(|d| d.as_slice()).collect();
    diesel::update(embedding_jobs::table.filter(embedding_jobs::digest.eq_any(&digests)))
        .set(embedding_jobs::leased_until.eq(None::<chrono::DateTime<chrono::Utc>>))
        .execute(c)
        .await?;
    Ok(())
}

/// The sweep's next slice, then the retirement: how many records they linked, and the slice's
/// pending records with neither vector nor job. `from` is where the sweep goes on (the last digest
/// of the previous slice; empty: from the first), moved along.
/// Housekeeping never queues behind a lock for long (rows locked by writers are skipped; a table
/// lock gives up after 2 s): it runs again in a few seconds.
pub(crate) async fn heal(
    c: &mut AsyncPgConnection,
    limit: usize,
    grace: Duration,
    from: &mut Vec<u8>,
) -> Result<Swept, PgStoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX / HEAL_SLICE_PER_LINK);
    let slice = limit.saturating_mul(HEAL_SLICE_PER_LINK);
    let (healed, next) = c
        .transaction(async |c| -> Result<(Swept, Vec<u8>), PgStoreError> {
            diesel::sql_query("SET LOCAL lock_timeout = '2s'")
                .execute(c)
                .await?;
            let h: Healed = diesel::sql_query(HEAL_SQL)
                .bind::<BigInt, _>(limit)
                .bind::<diesel::sql_types::Bytea, _>(from.as_slice())
                .bind::<BigInt, _>(slice)
                .get_result(c)
                .await?;
            let retired = diesel::sql_query(RETIRE_SQL)
                .bind::<Double, _>(grace.as_secs_f64())
                .execute(c)
                .await?;
            let without_job: Vec<RecordRow> = match &h.upto {
                Some(upto) => {
                    diesel::sql_query(WITHOUT_JOB_SQL)
                        .bind::<Bytea, _>(from.as_slice())
                        .bind::<Bytea, _>(upto.as_slice())
                        .bind::<BigInt, _>(limit)
                        .load(c)
                        .await?
                }
                None => Vec::new(),
            };
            let next = match h.upto {
                Some(upto) if h.seen >= slice => upto,
                _ => Vec::new(),
            };
            Ok((
                Swept {
                    linked: u64::try_from(h.healed).unwrap_or(0) + retired as u64,
                    without_job,
                },
                next,
            ))
        })
        .await?;
    *from = next;
    Ok(healed)
}

/// What [`heal`] found: how many records it linked, and pending records with neither vector nor job.
pub(crate) struct Swept {
    pub(crate) linked: u64,
    pub(crate) without_job: Vec<RecordRow>,
}

pub(crate) async fn list(
    c: &mut AsyncPgConnection,
    parked_only: bool,
    limit: usize,
) -> Result<Vec<JobInfo>, PgStoreError> {
    let rows: Vec<Listed> = diesel::sql_query(LIST_SQL)
        .bind::<Bool, _>(parked_only)
        .bind::<BigInt, _>(i64::try_from(limit).unwrap_or(i64::MAX))
        .load(c)
        .await?;
    rows.into_iter()
        .map(|r| {
            Ok(JobInfo {
                digest: digest(&r.digest)?,
                model: r.model,
                attempts: u32::try_from(r.attempts).unwrap_or(0),
                state: match r.state.as_str() {
                    "parked" => "parked",
                    "done" => "done",
                    _ => "open",
                },
                created_at: r.created_at,
                next_attempt_at: r.next_attempt_at,
                last_error: r.last_error,
                text: r.text,
            })
        })
        .collect()
}

pub(crate) async fn retry_parked(
    c: &mut AsyncPgConnection,
    digests: Option<&[Sha256Digest]>,
) -> Result<u64, PgStoreError> {
    let parked = embedding_jobs::table.filter(embedding_jobs::parked_at.is_not_null());
    let reset = (
        embedding_jobs::parked_at.eq(None::<chrono::DateTime<chrono::Utc>>),
        embedding_jobs::attempts.eq(0),
        embedding_jobs::next_attempt_at
            .eq(diesel::dsl::sql::<diesel::sql_types::Timestamptz>("now()")),
    );
    let n = match digests {
        None => diesel::update(parked).set(reset).execute(c).await?,
        Some(ds) => {
            let ds: Vec<&[u8]> = ds.iter().map(|d| d.as_slice()).collect();
            diesel::update(parked.filter(embedding_jobs::digest.eq_any(&ds)))
                .set(reset)
                .execute(c)
                .await?
        }
    };
    Ok(n as u64)
}

pub(crate) async fn open_count(c: &mut AsyncPgConnection) -> Result<i64, PgStoreError> {
    Ok(embedding_jobs::table
        .filter(embedding_jobs::done_at.is_null())
        .filter(embedding_jobs::parked_at.is_null())
        .count()
        .get_result(c)
        .await?)
}

pub(crate) async fn parked_count(c: &mut AsyncPgConnection) -> Result<i64, PgStoreError> {
    Ok(embedding_jobs::table
        .filter(embedding_jobs::parked_at.is_not_null())
        .count()
        .get_result(c)
        .await?)
}
