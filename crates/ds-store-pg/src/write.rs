//! One write transaction for a group of write requests: the unit of group commit.
//!
//! A group of one is an ordinary write; a group of many shares one transaction, one commit (one WAL
//! flush) and one multi-row statement per table, so that concurrent writers cost the database about
//! what a batch costs. Each request keeps its own answer:
//!
//! - Idempotency keys are claimed first, one statement per key, in (caller, key) order. A request
//!   whose key is already stored gets its replay (or conflict) and takes no further part. A request
//!   whose key is claimed by an earlier request *of the same group* is answered last, from the
//!   outcomes the earlier one stored: exactly what it would get one transaction later.
//! - Every row is written in a fixed order (table by table, by digest within a table), the same in
//!   every transaction, so concurrent groups cannot deadlock on each other.
//! - A record that occurs twice is `created` for the first request (request order) and `duplicate`
//!   for the others, as with sequential transactions.

use crate::error::PgStoreError;
use crate::pgv::Embedding;
use crate::rows::{NewEmbeddingRow, NewKeyRow};
use crate::schema::{embeddings, idempotency_keys};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bytea, Jsonb, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ds_domain::ports::{
    EmbeddingStatus, IdempotencyClaim, WriteOutcome, WriteRequest, WriteResult, WriteStatus,
};
use ds_domain::time::Timestamp;
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// Rows per multi-row INSERT or lookup (PostgreSQL takes at most 65,535 bind parameters).
pub(crate) const ROWS_PER_STATEMENT: usize = 1000;

/// How many times a transaction that hit a serialization failure or a deadlock is run again.
const TX_ATTEMPTS: usize = 3;

/// What the database answered for one stored record.
type StoredRow = (i64, DateTime<Utc>, Option<i64>);

/// Runs [`write_group`], again on a serialization failure or a deadlock (at most [`TX_ATTEMPTS`]).
pub(crate) async fn write_group_retrying(
    conn: &mut AsyncPgConnection,
    requests: &[&WriteRequest],
) -> Result<Vec<WriteResult>, PgStoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match write_group(conn, requests).await {
            Err(e) if e.is_retryable() && attempt < TX_ATTEMPTS => {
                tracing::warn!(attempt, error = %e, "retrying write transaction");
            }
            Err(e) if e.is_missing_partition() && attempt < TX_ATTEMPTS => {
                // The maintenance task keeps months ahead; a write that finds none creates it.
                let created: crate::rows::Name =
                    diesel::sql_query("SELECT audit_partition_ensure(now()) AS name")
                        .get_result(conn)
                        .await?;
                tracing::warn!(
                    partition = %created.name,
                    "a write found no partition for its month: created it (the maintenance task keeps months ahead; see docs/troubleshooting.md)"
                );
            }
            other => return other,
        }
    }
}

/// Writes every request of the group atomically; one result per request, in order.
///
/// A group without idempotency keys and without new vectors (mode `deferred`, or texts whose
/// vectors are stored) is one statement in autocommit: one round trip. Otherwise it is one
/// explicit transaction.
pub(crate) async fn write_group(
    conn: &mut AsyncPgConnection,
    requests: &[&WriteRequest],
) -> Result<Vec<WriteResult>, PgStoreError> {
    if requests
        .iter()
        .any(|r| r.embedding_digests.len() != r.records.len())
    {
        return Err(PgStoreError::Corrupt(
            "a write request needs one embedding digest per record".into(),
        ));
    }
    if requests
        .iter()
        .all(|r| r.idempotency.is_none() && r.new_embeddings.is_empty())
    {
        let all: Vec<usize> = (0..requests.len()).collect();
        let outcomes = write_records(conn, requests, &all).await?;
        return Ok(outcomes.into_iter().map(WriteResult::Written).collect());
    }
    conn.transaction(async |c| -> Result<Vec<WriteResult>, PgStoreError> {
        let n = requests.len();
        let mut results: Vec<Option<WriteResult>> = (0..n).map(|_| None).collect();

        // 1. Idempotency keys: claim each once; a concurrent transaction with the same key waits here.
        let mut keyed: Vec<(usize, &IdempotencyClaim)> = requests
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.idempotency.as_ref().map(|k| (i, k)))
            .collect();
        keyed.sort_by(|a, b| (&a.1.caller, &a.1.key).cmp(&(&b.1.caller, &b.1.key)));
        let mut claimed: HashSet<(&str, &str)> = HashSet::new();
        let mut repeats: Vec<(usize, &IdempotencyClaim)> = Vec::new();
        for (i, claim) in keyed {
            if !claimed.insert((&claim.caller, &claim.key)) {
                repeats.push((i, claim));
                continue;
            }
            let inserted = diesel::insert_into(idempotency_keys::table)
                .values(NewKeyRow {
                    caller: &claim.caller,
                    key: &claim.key,
                    request_digest: &claim.request_digest,
                    outcomes: Value::Array(Vec::new()),
                })
                .on_conflict_do_nothing()
                .execute(c)
                .await?;
            if inserted == 0 {
                results[i] = Some(stored_answer(c, claim).await?);
            }
        }
        let repeat_set: HashSet<usize> = repeats.iter().map(|(i, _)| *i).collect();
        let active: Vec<usize> = (0..n)
            .filter(|i| results[*i].is_none() && !repeat_set.contains(i))
            .collect();

        // 2. New vectors (mode inline).
        let mut new: Vec<_> = active
            .iter()
            .flat_map(|&i| &requests[i].new_embeddings)
            .collect();
        new.sort_by_key(|e| e.digest);
        new.dedup_by(|a, b| a.digest == b.digest);
        let rows: Vec<(&[u8], &str, &[f32])> = new
            .iter()
            .map(|e| (e.digest.as_slice(), e.model.as_str(), e.vector.as_slice()))
            .collect();
        insert_embeddings(c, &rows).await?;

        // 3. Jobs and records.
        let mut outcomes = write_records(c, requests, &active).await?;
        for &i in &active {
            let written: Vec<WriteOutcome> = std::mem::take(&mut outcomes[i]);
            // 4. Remember what this key answered.
            if let Some(claim) = &requests[i].idempotency {
                let json = serde_json::to_value(&written)
                    .map_err(|e| PgStoreError::Corrupt(format!("idempotency outcomes: {e}")))?;
                diesel::update(idempotency_keys::table.find((&claim.caller, &claim.key)))
                    .set(idempotency_keys::outcomes.eq(json))
                    .execute(c)
                    .await?;
            }
            results[i] = Some(WriteResult::Written(written));
        }

        // 5. Keys repeated within the group: answered from what the first request stored.
        for (i, claim) in repeats {
            results[i] = Some(stored_answer(c, claim).await?);
        }
        results
            .into_iter()
            .map(|r| r.ok_or_else(|| PgStoreError::Corrupt("a write got no answer".into())))
            .collect()
    })
    .await
}

/// Inserts vectors `(digest, model, vector)` that are not stored yet, in the given order (callers
/// sort by digest: the lock order), [`ROWS_PER_STATEMENT`] rows per statement. Shared by the write
/// path (mode inline) and the embedding worker.
pub(crate) async fn insert_embeddings(
    c: &mut AsyncPgConnection,
    vectors: &[(&[u8], &str, &[f32])],
) -> Result<(), diesel::result::Error> {
    for chunk in vectors.chunks(ROWS_PER_STATEMENT) {
        let rows: Vec<NewEmbeddingRow> = chunk
            .iter()
            .map(|&(digest, model, vector)| NewEmbeddingRow {
                digest,
                model,
                embedding: Embedding(vector.to_vec()),
            })
            .collect();
        diesel::insert_into(embeddings::table)
            .values(&rows)
            .on_conflict(embeddings::digest)
            .do_nothing()
            .execute(c)
            .await?;
    }
    Ok(())
}

/// Jobs and records of the `active` requests in one statement (the lock order: jobs, then records
/// by content digest); the outcomes of every request (empty for the others), records in order.
async fn write_records(
    c: &mut AsyncPgConnection,
    requests: &[&WriteRequest],
    active: &[usize],
) -> Result<Vec<Vec<WriteOutcome>>, PgStoreError> {
    // Durable jobs for the texts still without a vector (mode deferred, or the provider failed);
    // the statement leaves out the texts whose vector is stored.
    let mut jobs: Vec<_> = active.iter().flat_map(|&i| &requests[i].jobs).collect();
    jobs.sort_by_key(|j| j.digest);
    jobs.dedup_by(|a, b| a.digest == b.digest);
    // Records in content-digest order (stable: request order among equal digests), each linked to
    // its vector when that is stored.
    let mut order: Vec<(usize, usize)> = active
        .iter()
        .flat_map(|&i| (0..requests[i].records.len()).map(move |j| (i, j)))
        .collect();
    order.sort_by(|a, b| {
        let da = &requests[a.0].records[a.1].content_digest;
        da.cmp(&requests[b.0].records[b.1].content_digest)
    });
    let mut inserted: HashMap<Vec<u8>, StoredRow> = HashMap::new();
    // Each content once (`order` is sorted by digest): a repeat within the group is a duplicate of
    // the first.
    let mut distinct = order.clone();
    distinct.dedup_by(|a, b| {
        requests[a.0].records[a.1].content_digest == requests[b.0].records[b.1].content_digest
    });
    if !distinct.is_empty() {
        let rows = RecordColumns::of(requests, &distinct);
        let created: Vec<Inserted> = diesel::sql_query(WRITE_SQL)
            .bind::<Array<Text>, _>(rows.kind)
            .bind::<Array<Text>, _>(rows.name)
            .bind::<Array<Text>, _>(rows.namespace)
            .bind::<Array<Text>, _>(rows.phase)
            .bind::<Array<Text>, _>(rows.correlation_id)
            .bind::<Array<Nullable<Text>>, _>(rows.message)
            .bind::<Array<Timestamptz>, _>(rows.created_at)
            .bind::<Array<Nullable<Timestamptz>>, _>(rows.started_at)
            .bind::<Array<Nullable<Timestamptz>>, _>(rows.completed_at)
            .bind::<Array<Bytea>, _>(rows.content_digest)
            .bind::<Array<Jsonb>, _>(rows.details)
            .bind::<Array<Jsonb>, _>(rows.unknown_fields)
            .bind::<Array<Bytea>, _>(rows.embedding_digest)
            .bind::<Array<Bytea>, _>(jobs.iter().map(|j| j.digest.as_slice()).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(jobs.iter().map(|j| j.model.as_str()).collect::<Vec<_>>())
            .bind::<Array<Text>, _>(jobs.iter().map(|j| j.text.as_str()).collect::<Vec<_>>())
            .bind::<Array<Nullable<Bytea>>, _>(rows.record_canonical)
            .load(c)
            .await?;
        inserted.extend(
            created
                .into_iter()
                .map(|r| (r.content_digest, (r.id, r.received_at, r.embedding_id))),
        );
    }
    // Records stored before (or by a concurrent writer that committed first).
    let mut earlier: Vec<&[u8]> = order
        .iter()
        .map(|&(i, j)| requests[i].records[j].content_digest.as_slice())
        .filter(|d| !inserted.contains_key(*d))
        .collect();
    earlier.dedup();
    let mut existing: HashMap<Vec<u8>, StoredRow> = HashMap::new();
    for chunk in earlier.chunks(ROWS_PER_STATEMENT) {
        let found: Vec<Inserted> = diesel::sql_query(EXISTING_SQL)
            .bind::<Array<Bytea>, _>(chunk)
            .load(c)
            .await?;
        existing.extend(
            found
                .into_iter()
                .map(|r| (r.content_digest, (r.id, r.received_at, r.embedding_id))),
        );
    }

    // The first occurrence of a record this statement inserted is `created`.
    let mut outcomes: Vec<Vec<Option<WriteOutcome>>> = requests
        .iter()
        .map(|r| (0..r.records.len()).map(|_| None).collect())
        .collect();
    let mut first_seen: HashSet<&[u8]> = HashSet::new();
    for &(i, j) in &order {
        let digest = requests[i].records[j].content_digest.as_slice();
        let (row, status) = match inserted.get(digest) {
            Some(row) if first_seen.insert(digest) => (row, WriteStatus::Created),
            Some(row) => (row, WriteStatus::Duplicate),
            None => {
                let row = existing.get(digest).ok_or_else(|| {
                    PgStoreError::Corrupt("a record that conflicted on insert was not found".into())
                })?;
                (row, WriteStatus::Duplicate)
            }
        };
        let &(id, received, eid) = row;
        outcomes[i][j] = Some(WriteOutcome {
            id,
            embedding_id: eid,
            embedding_status: status_of(eid),
            status,
            received_at: Timestamp::from_utc(received),
        });
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.into_iter().flatten().collect())
        .collect())
}

/// The answer stored under a key: a replay for the same request, a conflict for another one.
async fn stored_answer(
    c: &mut AsyncPgConnection,
    claim: &IdempotencyClaim,
) -> Result<WriteResult, PgStoreError> {
    let (digest, outcomes): (Vec<u8>, Value) = idempotency_keys::table
        .find((&claim.caller, &claim.key))
        .select((idempotency_keys::request_digest, idempotency_keys::outcomes))
        .first(c)
        .await?;
    if digest != claim.request_digest {
        return Ok(WriteResult::KeyConflict);
    }
    let outcomes: Vec<WriteOutcome> = serde_json::from_value(outcomes)
        .map_err(|e| PgStoreError::Corrupt(format!("idempotency outcomes: {e}")))?;
    Ok(WriteResult::Replayed(outcomes))
}

/// The record rows of a group, column by column (the statement takes one array per column).
struct RecordColumns<'a> {
    kind: Vec<&'a str>,
    name: Vec<&'a str>,
    namespace: Vec<&'a str>,
    phase: Vec<&'a str>,
    correlation_id: Vec<&'a str>,
    message: Vec<Option<&'a str>>,
    created_at: Vec<DateTime<Utc>>,
    started_at: Vec<Option<DateTime<Utc>>>,
    completed_at: Vec<Option<DateTime<Utc>>>,
    content_digest: Vec<&'a [u8]>,
    details: Vec<Value>,
    unknown_fields: Vec<Value>,
    embedding_digest: Vec<&'a [u8]>,
    /// The canonical form of each record as reads will show it, when it can be known before the
    /// insert (the statement hashes it into the leaf hash with the id and `receivedAt` it assigns).
    record_canonical: Vec<Option<Vec<u8>>>,
}

impl<'a> RecordColumns<'a> {
    fn of(requests: &[&'a WriteRequest], order: &[(usize, usize)]) -> Self {
        let n = order.len();
        let mut c = RecordColumns {
            kind: Vec::with_capacity(n),
            name: Vec::with_capacity(n),
            namespace: Vec::with_capacity(n),
            phase: Vec::with_capacity(n),
            correlation_id: Vec::with_capacity(n),
            message: Vec::with_capacity(n),
            created_at: Vec::with_capacity(n),
            started_at: Vec::with_capacity(n),
            completed_at: Vec::with_capacity(n),
            content_digest: Vec::with_capacity(n),
            details: Vec::with_capacity(n),
            unknown_fields: Vec::with_capacity(n),
            embedding_digest: Vec::with_capacity(n),
            record_canonical: Vec::with_capacity(n),
        };
        for &(i, j) in order {
            let request: &'a WriteRequest = requests[i];
            let r = &request.records[j];
            c.kind.push(r.kind.as_str());
            c.name.push(&r.common.name);
            c.namespace.push(&r.common.namespace);
            c.phase.push(r.common.phase.as_str());
            c.correlation_id.push(&r.common.correlation_id);
            c.message.push(r.common.message.as_deref());
            c.created_at.push(r.common.created_at.as_utc());
            c.started_at.push(r.common.started_at.map(|t| t.as_utc()));
            c.completed_at
                .push(r.common.completed_at.map(|t| t.as_utc()));
            c.content_digest.push(&r.content_digest);
            c.details.push(Value::Object(r.details.clone()));
            c.unknown_fields.push(Value::Object(r.unknown.clone()));
            c.embedding_digest
                .push(request.embedding_digests[j].as_slice());
            c.record_canonical.push(crate::tlog::canonical_record(r));
        }
        c
    }
}

/// Stored records by content digest (their partition found from the digest's `received_at`).
const EXISTING_SQL: &str = "\
SELECT d.content_digest, r.id, r.received_at, r.embedding_id
FROM audit_digests d
JOIN audit_records r ON r.id = d.record_id AND r.received_at = d.received_at
WHERE d.content_digest = ANY($1)";

/// What the record insert returns for each row it inserted.
#[derive(QueryableByName)]
struct Inserted {
    #[diesel(sql_type = Bytea)]
    content_digest: Vec<u8>,
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Timestamptz)]
    received_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<BigInt>)]
    embedding_id: Option<i64>,
}

/// Jobs for the texts whose vector is not stored, then records from column arrays, each linked to
/// its stored vector if any, in the given order (the lock order); a record already stored is
/// skipped (and looked up afterwards). One statement: atomic on its own.
const WRITE_SQL: &str = "\
WITH jobs AS (
    INSERT INTO embedding_jobs (digest, model, text)
    SELECT j.digest, j.model, j.text
    FROM unnest($14::bytea[], $15::text[], $16::text[]) WITH ORDINALITY AS j(digest, model, text, ord)
    WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.digest = j.digest)
    ORDER BY j.ord
    ON CONFLICT (digest) DO NOTHING
), u AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
        $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::bytea[], $11::jsonb[],
        $12::jsonb[], $13::bytea[], $17::bytea[])
        WITH ORDINALITY AS u(kind, name, namespace, phase, correlation_id, message, created_at,
            started_at, completed_at, content_digest, details, unknown_fields, embedding_digest,
            record, ord)
), fresh AS (
    -- The contents not stored yet: a digest another writer inserted first (committed, or
    -- committing: this waits for it) is left out, and its record looked up afterwards.
    INSERT INTO audit_digests (content_digest, record_id, received_at)
    SELECT u.content_digest, nextval('audit_records_id_seq'), now() FROM u ORDER BY u.ord
    ON CONFLICT (content_digest) DO NOTHING
    RETURNING content_digest, record_id, received_at
)
INSERT INTO audit_records (id, received_at, kind, name, namespace, phase, correlation_id, message,
    created_at, started_at, completed_at, content_digest, details, unknown_fields, embedding_digest,
    embedding_id, leaf_hash)
SELECT f.record_id, f.received_at, u.kind, u.name, u.namespace, u.phase, u.correlation_id,
    u.message, u.created_at, u.started_at, u.completed_at, u.content_digest, u.details,
    u.unknown_fields, u.embedding_digest, e.id,
    -- The leaf hash (contract §8): SHA-256 of 0x00 and the canonical object of id, kind,
    -- receivedAt and the record's canonical form from the service; NULL when it sent none.
    sha256('\\x00'::bytea || convert_to('{\"id\":' || f.record_id || ',\"kind\":\"' || u.kind
        || '\",\"receivedAt\":\"'
        || to_char(f.received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
        || '\",\"record\":', 'UTF8') || u.record || '\\x7d'::bytea)
FROM fresh f
JOIN u ON u.content_digest = f.content_digest
LEFT JOIN embeddings e ON e.digest = u.embedding_digest
ORDER BY u.ord
RETURNING content_digest, id, received_at, embedding_id";

/// A record is `stored` exactly when it is linked to its vector.
pub(crate) fn status_of(embedding_id: Option<i64>) -> EmbeddingStatus {
    if embedding_id.is_some() {
        EmbeddingStatus::Stored
    } else {
        EmbeddingStatus::Pending
    }
}
