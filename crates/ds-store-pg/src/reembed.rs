//! The SQL of a change of embedding model (policy in `ds_domain::service`, `reembed_page`;
//! docs/embeddings.md, "Changing the model"): records re-pointed at the new model's vector of their
//! text, each keeping its link to the vector of the model it came from (`previous_embeddings`) so
//! that replicas still on that model find it until the switch; the switch drops those links, the
//! jobs and the vectors of the models no longer in use.

use crate::error::PgStoreError;
use crate::rows::RecordRow;
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Bytea, Double, Nullable, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ds_domain::ports::{Repoint, Switched};
use std::time::Duration;

/// Records (after an id) whose vector is not of the model and that wait for no job of it.
const RECORDS_WITHOUT_MODEL_SQL: &str = "\
SELECT r.* FROM audit_records r
LEFT JOIN embeddings e ON e.id = r.embedding_id
WHERE r.id > $1
  AND e.model IS DISTINCT FROM $2
  AND NOT (r.embedding_id IS NULL
           AND EXISTS (SELECT 1 FROM embedding_jobs j WHERE j.digest = r.embedding_digest AND j.model = $2))
ORDER BY r.id
LIMIT $3";

/// Before re-pointing: locks the records (so that a link made meanwhile, by a worker of the old model,
/// is seen) and keeps the vector each points at, of the model it comes from, searchable by replicas
/// still on that model. A record waiting for its vector keeps the link it kept before, if any.
const KEEP_PREVIOUS_SQL: &str = "\
WITH locked AS (
    SELECT r.id, r.received_at, r.embedding_id FROM audit_records r
    WHERE r.id = ANY($1)
    ORDER BY r.id
    FOR NO KEY UPDATE
)
INSERT INTO previous_embeddings (record_id, received_at, embedding_id)
SELECT id, received_at, embedding_id FROM locked WHERE embedding_id IS NOT NULL
ON CONFLICT (record_id) DO UPDATE SET embedding_id = EXCLUDED.embedding_id";

/// After re-pointing: a kept link of the model the records now point at is theirs again (a record
/// pointed back at an earlier model): dropped, so that no search meets a record twice.
const DROP_CURRENT_MODEL_KEPT_SQL: &str = "\
DELETE FROM previous_embeddings p USING embeddings e
WHERE p.record_id = ANY($1) AND e.id = p.embedding_id AND e.model = $2";

/// Re-points records at the model's vector of their text: a job for each text without a stored vector,
/// then each record linked to its stored vector, or left waiting (embedding_id NULL) for its job.
const REPOINT_SQL: &str = "\
WITH items AS (
    SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::text[]) AS t(id, digest, text)
), jobs AS (
    INSERT INTO embedding_jobs (digest, model, text)
    SELECT DISTINCT ON (i.digest) i.digest, $4, i.text FROM items i
    WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.digest = i.digest)
    ORDER BY i.digest
    ON CONFLICT (digest) DO NOTHING
)
UPDATE audit_records r
SET embedding_digest = i.digest,
    embedding_id = (SELECT e.id FROM embeddings e WHERE e.digest = i.digest)
FROM items i
WHERE r.id = i.id";

/// Jobs of other models that no record waits for any more (their records were re-pointed).
const ORPHAN_JOBS_SQL: &str = "\
DELETE FROM embedding_jobs j
WHERE j.model <> $1
  AND NOT EXISTS (SELECT 1 FROM audit_records r WHERE r.embedding_digest = j.digest AND r.embedding_id IS NULL)";

/// A model other than `$1` that a record received in the last `$2` seconds points at (its vector's,
/// or its job's while it waits): the received-at index, newest first.
const OTHER_MODEL_SQL: &str = "\
SELECT COALESCE(e.model, j.model) AS model
FROM audit_records r
LEFT JOIN embeddings e ON e.id = r.embedding_id
LEFT JOIN embedding_jobs j ON r.embedding_id IS NULL AND j.digest = r.embedding_digest
WHERE r.received_at > now() - make_interval(secs => $2)
  AND COALESCE(e.model, j.model) <> $1
LIMIT 1";

/// The switch, first step: up to `$1` kept links dropped.
const DROP_KEPT_SQL: &str = "\
DELETE FROM previous_embeddings
WHERE record_id IN (SELECT record_id FROM previous_embeddings ORDER BY record_id LIMIT $1)";

/// The switch, last step: of the next `$3` vectors after id `$2`, those of other models than `$1`
/// that no record links are deleted. Returns how many, and the last id looked at (NULL: the end).
/// A record linked to one meanwhile makes the statement fail (the foreign keys): nothing is lost.
const DROP_VECTORS_SQL: &str = "\
WITH walked AS (
    SELECT id, model FROM embeddings WHERE id > $2 ORDER BY id LIMIT $3
), doomed AS (
    SELECT w.id FROM walked w
    WHERE w.model <> $1
      AND NOT EXISTS (SELECT 1 FROM audit_records r WHERE r.embedding_id = w.id)
      AND NOT EXISTS (SELECT 1 FROM previous_embeddings p WHERE p.embedding_id = w.id)
), deleted AS (
    DELETE FROM embeddings e USING doomed d WHERE e.id = d.id RETURNING 1
)
SELECT (SELECT count(*) FROM deleted) AS deleted, (SELECT max(id) FROM walked) AS upto";

#[derive(QueryableByName)]
struct Model {
    #[diesel(sql_type = Text)]
    model: String,
}

#[derive(QueryableByName)]
struct Dropped {
    #[diesel(sql_type = BigInt)]
    deleted: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    upto: Option<i64>,
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

pub(crate) async fn records_without_model(
    c: &mut AsyncPgConnection,
    model: &str,
    after_id: i64,
    limit: usize,
) -> Result<Vec<RecordRow>, PgStoreError> {
    Ok(diesel::sql_query(RECORDS_WITHOUT_MODEL_SQL)
        .bind::<BigInt, _>(after_id)
        .bind::<Text, _>(model)
        .bind::<BigInt, _>(i64::try_from(limit).unwrap_or(i64::MAX))
        .load(c)
        .await?)
}

/// Keeps the current links, re-points, drops kept links of `model` and the jobs no record waits
/// for, in one transaction. Returns how many records moved.
pub(crate) async fn repoint(
    c: &mut AsyncPgConnection,
    model: &str,
    items: &[Repoint],
) -> Result<usize, PgStoreError> {
    let ids: Vec<i64> = items.iter().map(|i| i.id).collect();
    let digests: Vec<&[u8]> = items.iter().map(|i| i.digest.as_slice()).collect();
    let texts: Vec<&str> = items.iter().map(|i| i.text.as_str()).collect();
    Ok(
        c.transaction(async |c| -> Result<usize, diesel::result::Error> {
            diesel::sql_query(KEEP_PREVIOUS_SQL)
                .bind::<Array<BigInt>, _>(&ids)
                .execute(c)
                .await?;
            let moved = diesel::sql_query(REPOINT_SQL)
                .bind::<Array<BigInt>, _>(&ids)
                .bind::<Array<Bytea>, _>(&digests)
                .bind::<Array<Text>, _>(&texts)
                .bind::<Text, _>(model)
                .execute(c)
                .await?;
            diesel::sql_query(DROP_CURRENT_MODEL_KEPT_SQL)
                .bind::<Array<BigInt>, _>(&ids)
                .bind::<Text, _>(model)
                .execute(c)
                .await?;
            diesel::sql_query(ORPHAN_JOBS_SQL)
                .bind::<Text, _>(model)
                .execute(c)
                .await?;
            Ok(moved)
        })
        .await?,
    )
}

pub(crate) async fn other_model_in_use(
    c: &mut AsyncPgConnection,
    model: &str,
    window: Duration,
) -> Result<Option<String>, PgStoreError> {
    let found: Vec<Model> = diesel::sql_query(OTHER_MODEL_SQL)
        .bind::<Text, _>(model)
        .bind::<Double, _>(window.as_secs_f64())
        .load(c)
        .await?;
    Ok(found.into_iter().next().map(|m| m.model))
}

/// Each step in bounded statements, each its own transaction: an interrupted switch is finished by
/// running it again.
pub(crate) async fn finish_switch(
    c: &mut AsyncPgConnection,
    model: &str,
    batch: usize,
) -> Result<Switched, PgStoreError> {
    let batch = i64::try_from(batch.max(1)).unwrap_or(i64::MAX);
    let mut switched = Switched::default();
    loop {
        let n = diesel::sql_query(DROP_KEPT_SQL)
            .bind::<BigInt, _>(batch)
            .execute(c)
            .await?;
        if n == 0 {
            break;
        }
        switched.kept_links += count(n);
    }
    switched.jobs = count(
        diesel::sql_query(ORPHAN_JOBS_SQL)
            .bind::<Text, _>(model)
            .execute(c)
            .await?,
    );
    let mut after = 0i64;
    loop {
        let dropped: Dropped = diesel::sql_query(DROP_VECTORS_SQL)
            .bind::<Text, _>(model)
            .bind::<BigInt, _>(after)
            .bind::<BigInt, _>(batch)
            .get_result(c)
            .await?;
        switched.vectors += u64::try_from(dropped.deleted).unwrap_or(0);
        match dropped.upto {
            Some(id) => after = id,
            None => break,
        }
    }
    Ok(switched)
}
