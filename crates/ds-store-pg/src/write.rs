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
use crate::rows::{NewEmbeddingRow, NewJobRow, NewKeyRow, NewRecordRow};
use crate::schema::{audit_records, embedding_jobs, embeddings, idempotency_keys};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ds_domain::digest::Sha256Digest;
use ds_domain::ports::{
    EmbeddingStatus, IdempotencyClaim, WriteOutcome, WriteRequest, WriteResult, WriteStatus,
};
use ds_domain::time::Timestamp;
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// Rows per multi-row INSERT. PostgreSQL takes at most 65,535 bind parameters per statement; a
/// record row has 14.
pub(crate) const ROWS_PER_STATEMENT: usize = 1000;

/// How many times a transaction that hit a serialization failure or a deadlock is run again.
const TX_ATTEMPTS: usize = 3;

/// What the database answered for one stored record.
type StoredRow = (i64, DateTime<Utc>, Option<i64>);
/// A stored record's content digest and [`StoredRow`].
type DigestRow = (Vec<u8>, i64, DateTime<Utc>, Option<i64>);

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
            other => return other,
        }
    }
}

/// Writes every request of the group in one transaction; one result per request, in order.
pub(crate) async fn write_group(
    conn: &mut AsyncPgConnection,
    requests: &[&WriteRequest],
) -> Result<Vec<WriteResult>, PgStoreError> {
    conn.transaction(async |c| -> Result<Vec<WriteResult>, PgStoreError> {
        let n = requests.len();
        if requests
            .iter()
            .any(|r| r.embedding_digests.len() != r.records.len())
        {
            return Err(PgStoreError::Corrupt(
                "a write request needs one embedding digest per record".into(),
            ));
        }
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

        // 2. New vectors, then the ids of every vector the records point at.
        let mut new: Vec<_> = active
            .iter()
            .flat_map(|&i| &requests[i].new_embeddings)
            .collect();
        new.sort_by_key(|e| e.digest);
        new.dedup_by(|a, b| a.digest == b.digest);
        for chunk in new.chunks(ROWS_PER_STATEMENT) {
            let rows: Vec<NewEmbeddingRow> = chunk
                .iter()
                .map(|e| NewEmbeddingRow {
                    digest: &e.digest,
                    model: &e.model,
                    embedding: Embedding(e.vector.clone()),
                })
                .collect();
            diesel::insert_into(embeddings::table)
                .values(&rows)
                .on_conflict(embeddings::digest)
                .do_nothing()
                .execute(c)
                .await?;
        }
        let mut wanted: Vec<&[u8]> = active
            .iter()
            .flat_map(|&i| requests[i].embedding_digests.iter().map(|d| d.as_slice()))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let ids: HashMap<Vec<u8>, i64> = embeddings::table
            .filter(embeddings::digest.eq_any(&wanted))
            .select((embeddings::digest, embeddings::id))
            .load::<(Vec<u8>, i64)>(c)
            .await?
            .into_iter()
            .collect();

        // Durable jobs for the texts still without a vector (mode deferred, or the provider failed).
        let mut jobs: Vec<_> = active
            .iter()
            .flat_map(|&i| &requests[i].jobs)
            .filter(|j| !ids.contains_key(j.digest.as_slice()))
            .collect();
        jobs.sort_by_key(|j| j.digest);
        jobs.dedup_by(|a, b| a.digest == b.digest);
        for chunk in jobs.chunks(ROWS_PER_STATEMENT) {
            let rows: Vec<NewJobRow> = chunk
                .iter()
                .map(|j| NewJobRow {
                    digest: &j.digest,
                    model: &j.model,
                    text: &j.text,
                })
                .collect();
            diesel::insert_into(embedding_jobs::table)
                .values(&rows)
                .on_conflict(embedding_jobs::digest)
                .do_nothing()
                .execute(c)
                .await?;
        }

        // 3. Records, in content-digest order (stable: request order among equal digests).
        let mut order: Vec<(usize, usize)> = active
            .iter()
            .flat_map(|&i| (0..requests[i].records.len()).map(move |j| (i, j)))
            .collect();
        order.sort_by(|a, b| {
            let da = &requests[a.0].records[a.1].content_digest;
            da.cmp(&requests[b.0].records[b.1].content_digest)
        });
        let mut inserted: HashMap<Vec<u8>, StoredRow> = HashMap::new();
        for chunk in order.chunks(ROWS_PER_STATEMENT) {
            let rows: Vec<NewRecordRow> = chunk
                .iter()
                .map(|&(i, j)| record_row(requests[i], j, &ids))
                .collect();
            let created: Vec<DigestRow> = diesel::insert_into(audit_records::table)
                .values(&rows)
                .on_conflict(audit_records::content_digest)
                .do_nothing()
                .returning((
                    audit_records::content_digest,
                    audit_records::id,
                    audit_records::received_at,
                    audit_records::embedding_id,
                ))
                .get_results(c)
                .await?;
            inserted.extend(created.into_iter().map(|(d, id, at, e)| (d, (id, at, e))));
        }
        // Records that were stored before this transaction.
        let mut earlier: Vec<&[u8]> = order
            .iter()
            .map(|&(i, j)| requests[i].records[j].content_digest.as_slice())
            .filter(|d| !inserted.contains_key(*d))
            .collect();
        earlier.dedup();
        let mut existing: HashMap<Vec<u8>, StoredRow> = HashMap::new();
        for chunk in earlier.chunks(ROWS_PER_STATEMENT) {
            let found: Vec<DigestRow> = audit_records::table
                .filter(audit_records::content_digest.eq_any(chunk))
                .select((
                    audit_records::content_digest,
                    audit_records::id,
                    audit_records::received_at,
                    audit_records::embedding_id,
                ))
                .load(c)
                .await?;
            existing.extend(found.into_iter().map(|(d, id, at, e)| (d, (id, at, e))));
        }

        // Outcomes: the first occurrence of a record this transaction inserted is `created`.
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
                        PgStoreError::Corrupt(
                            "a record that conflicted on insert was not found".into(),
                        )
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
        for &i in &active {
            let written: Vec<WriteOutcome> = std::mem::take(&mut outcomes[i])
                .into_iter()
                .flatten()
                .collect();
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

fn record_row<'a>(
    request: &'a WriteRequest,
    j: usize,
    ids: &HashMap<Vec<u8>, i64>,
) -> NewRecordRow<'a> {
    let r = &request.records[j];
    let edigest: &Sha256Digest = &request.embedding_digests[j];
    NewRecordRow {
        kind: r.kind.as_str(),
        name: &r.common.name,
        namespace: &r.common.namespace,
        phase: r.common.phase.as_str(),
        correlation_id: &r.common.correlation_id,
        message: r.common.message.as_deref(),
        created_at: r.common.created_at.as_utc(),
        started_at: r.common.started_at.map(|t| t.as_utc()),
        completed_at: r.common.completed_at.map(|t| t.as_utc()),
        content_digest: &r.content_digest,
        details: Value::Object(r.details.clone()),
        unknown_fields: Value::Object(r.unknown.clone()),
        embedding_digest: edigest,
        embedding_id: ids.get(edigest.as_slice()).copied(),
    }
}

/// A record is `stored` exactly when it is linked to its vector.
pub(crate) fn status_of(embedding_id: Option<i64>) -> EmbeddingStatus {
    if embedding_id.is_some() {
        EmbeddingStatus::Stored
    } else {
        EmbeddingStatus::Pending
    }
}
