//! The transparency log's storage (contract §8): the sequencer, checkpoints, stored hashes, export.
//!
//! Tables (migrations `append_only_and_log`, `leaf_hash_at_write`): `tlog_queue` (records committed
//! and not yet in the log, one row per inserting statement, filled by a trigger on every insert), `tlog_leaves` (log index → record), `tlog_hashes` (every
//! complete subtree's hash at its linear index), `tlog_checkpoints` (every signed checkpoint).
//!
//! The leaf hash of a record the service writes is computed by its insert statement (migration
//! `leaf_hash_at_write`: the service sends the record's canonical form, the statement adds the id and
//! `receivedAt` it assigns) and travels in the queue: the sequencer appends it without reading the
//! record. A record queued without one is read and hashed by the sequencer.
//!
//! One sequencer at a time: each run takes a transaction-scoped advisory lock
//! (`pg_try_advisory_xact_lock`); a replica that does not get it skips the run, and a replica that
//! dies mid-run loses the lock with its connection, its transaction rolled back. Appending, emptying
//! the queue and signing happen in that one transaction: each record is appended exactly once.

use crate::error::PgStoreError;
use crate::rows::RecordRow;
use crate::store::PgStore;
use async_trait::async_trait;
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Bool, Bytea, Double, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use ds_domain::ValidRecord;
use ds_domain::kind::Kind;
use ds_domain::log::{
    Checkpoint, ExportEntry, ExportFilter, Integrated, LeafPosition, LogStatus, LogStore,
};
use ds_domain::ports::{StoreError, StoredRecord};
use ds_tlog::Hash;
use ds_tlog::note::CheckpointSigner;
use ds_tlog::tree::{self, StoredHashes};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

/// Key of the sequencer's advisory lock ("tlogseq\0").
pub const SEQUENCER_LOCK: i64 = 0x746c_6f67_7365_7100;

const RECORD_COLUMNS: &str = "r.id, r.kind, r.name, r.namespace, r.phase, r.correlation_id, r.message, \
     r.created_at, r.started_at, r.completed_at, r.received_at, r.details, r.unknown_fields, r.embedding_id";

#[derive(QueryableByName)]
struct Got {
    #[diesel(sql_type = Bool)]
    got: bool,
}

#[derive(QueryableByName)]
struct Size {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct RecordId {
    #[diesel(sql_type = BigInt)]
    record_id: i64,
}

/// One inserting statement's records, as the queue holds them.
#[derive(QueryableByName)]
struct QueuedBatch {
    #[diesel(sql_type = Array<BigInt>)]
    record_ids: Vec<i64>,
    #[diesel(sql_type = Array<Text>)]
    kinds: Vec<String>,
    #[diesel(sql_type = Array<Nullable<Bytea>>)]
    leaf_hashes: Vec<Option<Vec<u8>>>,
}

/// A record taken off the queue.
struct Pending {
    record_id: i64,
    kind: String,
    leaf_hash: Option<Vec<u8>>,
}

#[derive(QueryableByName)]
struct StoredHash {
    #[diesel(sql_type = BigInt)]
    idx: i64,
    #[diesel(sql_type = Bytea)]
    hash: Vec<u8>,
}

#[derive(QueryableByName)]
struct LastCheckpoint {
    #[diesel(sql_type = BigInt)]
    tree_size: i64,
    #[diesel(sql_type = Bool)]
    due: bool,
}

#[derive(QueryableByName)]
struct CheckpointRow {
    #[diesel(sql_type = BigInt)]
    tree_size: i64,
    #[diesel(sql_type = Bytea)]
    root_hash: Vec<u8>,
    #[diesel(sql_type = Text)]
    note: String,
}

#[derive(QueryableByName)]
struct LeafRow {
    #[diesel(sql_type = BigInt)]
    log_index: i64,
    #[diesel(sql_type = BigInt)]
    record_id: i64,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Bytea)]
    leaf_hash: Vec<u8>,
}

#[derive(QueryableByName)]
struct Position {
    #[diesel(sql_type = Nullable<BigInt>)]
    log_index: Option<i64>,
    #[diesel(sql_type = Bool)]
    present: bool,
}

#[derive(QueryableByName)]
struct FilteredRow {
    #[diesel(sql_type = BigInt)]
    log_index: i64,
    #[diesel(sql_type = Bytea)]
    leaf_hash: Vec<u8>,
    #[diesel(embed)]
    record: RecordRow,
}

#[derive(QueryableByName)]
struct StatusRow {
    #[diesel(sql_type = BigInt)]
    tree_size: i64,
    #[diesel(sql_type = BigInt)]
    pending: i64,
    #[diesel(sql_type = Double)]
    oldest_pending_seconds: f64,
    #[diesel(sql_type = BigInt)]
    checkpoint_size: i64,
    #[diesel(sql_type = Double)]
    checkpoint_age_seconds: f64,
}

#[derive(QueryableByName)]
struct IndexOf {
    #[diesel(sql_type = BigInt)]
    record_id: i64,
    #[diesel(sql_type = BigInt)]
    log_index: i64,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64, what: &str) -> Result<u64, PgStoreError> {
    u64::try_from(n).map_err(|_| PgStoreError::Corrupt(format!("a negative {what}: {n}")))
}

fn hash(bytes: &[u8]) -> Result<Hash, PgStoreError> {
    Ok(Hash(bytes.try_into().map_err(|_| {
        PgStoreError::Corrupt(format!("a stored hash of {} bytes", bytes.len()))
    })?))
}

fn tlog(e: ds_tlog::TlogError) -> PgStoreError {
    PgStoreError::Corrupt(format!("transparency log: {e}"))
}

/// The leaf hash of a stored record: what the verifier recomputes from an export line.
pub(crate) fn leaf_hash(r: &StoredRecord) -> Hash {
    let received_at = r.received_at.to_rfc3339();
    ds_tlog::Leaf {
        kind: r.kind.as_str(),
        id: r.id,
        received_at: &received_at,
        record: &r.record,
    }
    .hash()
}

/// The canonical form of `r` as a read of the stored row will show it (the `record` of its leaf),
/// or `None` when that cannot be known before the insert: a number PostgreSQL would print back
/// differently than serde_json wrote it (`jsonb` keeps exact decimals and drops the exponent and the
/// sign of zero: `1e16` comes back `10000000000000000`, `-0.0` comes back `0.0`). The sequencer
/// computes the leaf hash of those from the stored row.
pub(crate) fn canonical_record(r: &ValidRecord) -> Option<Vec<u8>> {
    fn round_trips(v: &Value) -> bool {
        match v {
            Value::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() => {
                    let negative_zero = f == 0.0 && f.is_sign_negative();
                    let exponent = n.to_string().contains(['e', 'E']);
                    !(negative_zero || exponent)
                }
                _ => true,
            },
            Value::Array(items) => items.iter().all(round_trips),
            Value::Object(m) => m.values().all(round_trips),
            Value::Null | Value::Bool(_) | Value::String(_) => true,
        }
    }
    if !r
        .details
        .values()
        .chain(r.unknown.values())
        .all(round_trips)
    {
        return None;
    }
    let mut out = Vec::with_capacity(1024);
    // Writing into a Vec cannot fail, nor can serializing a `Value`.
    ds_tlog::canonical::write_object(&r.to_json(), &mut out).ok()?;
    Some(out)
}

/// The stored hashes at `indexes`; all of them, or `Corrupt`. Level 0 (the leaf hashes) is
/// `tlog_leaves.leaf_hash`, the levels above are rows of `tlog_hashes`: one query for both.
async fn read_hashes(
    c: &mut AsyncPgConnection,
    indexes: &[u64],
) -> Result<StoredHashes, PgStoreError> {
    if indexes.is_empty() {
        return Ok(StoredHashes::new());
    }
    let (mut leaves, mut above) = (Vec::new(), Vec::new());
    for &i in indexes {
        match tree::split_stored_hash_index(i) {
            (0, n) => leaves.push(to_i64(n)),
            _ => above.push(to_i64(i)),
        }
    }
    let rows: Vec<StoredHash> = diesel::sql_query(
        "SELECT idx, hash FROM tlog_hashes WHERE idx = ANY($1) \
         UNION ALL SELECT -1 - log_index, leaf_hash FROM tlog_leaves WHERE log_index = ANY($2)",
    )
    .bind::<Array<BigInt>, _>(&above)
    .bind::<Array<BigInt>, _>(&leaves)
    .load(c)
    .await?;
    let mut out = StoredHashes::with_capacity(rows.len());
    for r in rows {
        // Leaves come back as -1 - log index (a stored hash index is never negative).
        let index = if r.idx < 0 {
            tree::stored_hash_index(0, to_u64(-1 - r.idx, "log index")?)
        } else {
            to_u64(r.idx, "hash index")?
        };
        out.insert(index, hash(&r.hash)?);
    }
    if let Some(missing) = indexes.iter().find(|i| !out.contains_key(i)) {
        return Err(PgStoreError::Corrupt(format!(
            "the transparency log lacks stored hash {missing}"
        )));
    }
    Ok(out)
}

/// The log index of each record that has one.
pub(crate) async fn log_indexes(
    c: &mut AsyncPgConnection,
    record_ids: &[i64],
) -> Result<HashMap<i64, u64>, PgStoreError> {
    if record_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<IndexOf> =
        diesel::sql_query("SELECT record_id, log_index FROM tlog_leaves WHERE record_id = ANY($1)")
            .bind::<Array<BigInt>, _>(record_ids)
            .load(c)
            .await?;
    rows.into_iter()
        .map(|r| Ok((r.record_id, to_u64(r.log_index, "log index")?)))
        .collect()
}

/// Fills `log_index` of records read.
pub(crate) async fn attach_log_indexes(
    c: &mut AsyncPgConnection,
    records: &mut [StoredRecord],
) -> Result<(), PgStoreError> {
    let ids: Vec<i64> = records.iter().map(|r| r.id).collect();
    let indexes = log_indexes(c, &ids).await?;
    for r in records {
        r.log_index = indexes.get(&r.id).copied();
    }
    Ok(())
}

/// The sweep of one run: records after `after` (up to `max` of them, in id order) that are
/// neither leaves nor queued are queued. Every committed record has one or the other (the trigger
/// queues it in its own transaction; the sequencer dequeues it in the transaction that appends it),
/// so any found was inserted with the trigger off. The sweep stays below the first queued id (no
/// record there is queued, so only the leaves need asking; it moves on as the queue drains).
/// Returns how many it queued, the first of them, and the last id it looked at.
const SWEEP_SQL: &str = "\
WITH span AS (
    SELECT id, kind, leaf_hash FROM audit_records
    WHERE id > $1 AND id < COALESCE((SELECT min(first_id) FROM tlog_queue), 9223372036854775807)
    ORDER BY id LIMIT $2
), missing AS (
    SELECT s.id, s.kind, s.leaf_hash FROM span s
    WHERE NOT EXISTS (SELECT 1 FROM tlog_leaves l WHERE l.record_id = s.id)
), queued AS (
    INSERT INTO tlog_queue (first_id, record_ids, kinds, leaf_hashes)
    SELECT min(id), array_agg(id ORDER BY id), array_agg(kind ORDER BY id),
           array_agg(leaf_hash ORDER BY id)
    FROM missing HAVING count(*) > 0
    RETURNING first_id, cardinality(record_ids) AS n
)
SELECT (SELECT max(id) FROM span) AS upto,
       (SELECT COALESCE(sum(n), 0) FROM queued)::bigint AS found,
       (SELECT min(first_id) FROM queued) AS first";

#[derive(QueryableByName)]
struct Swept {
    #[diesel(sql_type = Nullable<BigInt>)]
    upto: Option<i64>,
    #[diesel(sql_type = BigInt)]
    found: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    first: Option<i64>,
}

async fn integrate(
    c: &mut AsyncPgConnection,
    max: usize,
    signer: &CheckpointSigner,
    checkpoint_every: Duration,
    swept_to: &std::sync::atomic::AtomicI64,
) -> Result<(Integrated, i64), PgStoreError> {
    let got = diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS got")
        .bind::<BigInt, _>(SEQUENCER_LOCK)
        .get_result::<Got>(c)
        .await?
        .got;
    if !got {
        let unchanged = swept_to.load(std::sync::atomic::Ordering::Acquire);
        return Ok((Integrated::default(), unchanged));
    }
    let size = diesel::sql_query("SELECT COALESCE(max(log_index) + 1, 0) AS n FROM tlog_leaves")
        .get_result::<Size>(c)
        .await?
        .n;
    let size = to_u64(size, "tree size")?;
    let after = swept_to.load(std::sync::atomic::Ordering::Acquire);
    let swept: Swept = diesel::sql_query(SWEEP_SQL)
        .bind::<BigInt, _>(after)
        .bind::<BigInt, _>(to_i64(max as u64))
        .get_result(c)
        .await?;
    let unqueued = usize::try_from(swept.found).unwrap_or(0);
    if unqueued > 0 {
        tracing::error!(
            records = unqueued,
            first_id = swept.first,
            "committed records were neither in the transparency log nor queued for it (inserted with its trigger off): queued now"
        );
    }
    // The oldest queued statements' records (at least one statement, up to `max` records), taken
    // off the queue (the transaction's rollback puts them back), with the leaf hash their insert
    // computed when it did.
    let batches: Vec<QueuedBatch> = diesel::sql_query(
        "DELETE FROM tlog_queue WHERE batch IN ( \
             SELECT batch FROM ( \
                 SELECT batch, sum(cardinality(record_ids)) OVER (ORDER BY batch) AS upto \
                 FROM (SELECT batch, record_ids FROM tlog_queue ORDER BY batch LIMIT $1) oldest \
             ) q WHERE upto <= $1 OR batch = (SELECT min(batch) FROM tlog_queue)) \
         RETURNING record_ids, kinds, leaf_hashes",
    )
    .bind::<BigInt, _>(to_i64(max as u64))
    .load::<QueuedBatch>(c)
    .await?;
    let mut pending: Vec<Pending> = Vec::new();
    for b in batches {
        if b.kinds.len() != b.record_ids.len() || b.leaf_hashes.len() != b.record_ids.len() {
            return Err(PgStoreError::Corrupt(
                "a queued batch whose arrays differ in length".into(),
            ));
        }
        pending.extend(
            b.record_ids
                .into_iter()
                .zip(b.kinds)
                .zip(b.leaf_hashes)
                .map(|((record_id, kind), leaf_hash)| Pending {
                    record_id,
                    kind,
                    leaf_hash,
                }),
        );
    }
    pending.sort_unstable_by_key(|p| p.record_id);
    // A record queued again by hand after it was logged is not appended twice.
    let ids: Vec<i64> = pending.iter().map(|p| p.record_id).collect();
    let logged: std::collections::HashSet<i64> =
        diesel::sql_query("SELECT record_id FROM tlog_leaves WHERE record_id = ANY($1)")
            .bind::<Array<BigInt>, _>(&ids)
            .load::<RecordId>(c)
            .await?
            .into_iter()
            .map(|p| p.record_id)
            .collect();
    pending.retain(|p| !logged.contains(&p.record_id));
    // Records queued without their leaf hash (another writer, an earlier version, or numbers the
    // writer could not predict): computed from the stored row.
    let without: Vec<i64> = pending
        .iter()
        .filter(|p| p.leaf_hash.is_none())
        .map(|p| p.record_id)
        .collect();
    let mut computed: HashMap<i64, (Kind, Hash)> = HashMap::new();
    if !without.is_empty() {
        let rows: Vec<RecordRow> = diesel::sql_query(format!(
            "SELECT {RECORD_COLUMNS} FROM audit_records r WHERE r.id = ANY($1)"
        ))
        .bind::<Array<BigInt>, _>(&without)
        .load(c)
        .await?;
        for row in rows {
            let r = PgStore::to_stored(row)?;
            computed.insert(r.id, (r.kind, leaf_hash(&r)));
        }
    }
    let mut records: Vec<(i64, Kind, Hash)> = Vec::with_capacity(pending.len());
    let mut vanished = 0usize;
    for p in pending {
        match p.leaf_hash {
            Some(h) => {
                let kind: Kind = p
                    .kind
                    .parse()
                    .map_err(|e| PgStoreError::Corrupt(format!("{e}")))?;
                records.push((p.record_id, kind, hash(&h)?));
            }
            None => match computed.remove(&p.record_id) {
                Some((kind, h)) => records.push((p.record_id, kind, h)),
                None => vanished += 1,
            },
        }
    }
    if vanished > 0 {
        // A queued record that is gone was deleted before it could be logged (the triggers refuse
        // that to every role; only an owner who disabled them can): nothing to append for it.
        tracing::error!(
            vanished,
            "records queued for the transparency log are gone from audit_records: deleted before they were logged"
        );
    }
    let leaves: Vec<Hash> = records.iter().map(|r| r.2).collect();
    let appended = leaves.len();
    let new_size = size + appended as u64;
    let mut known = read_hashes(
        c,
        &tree::append_indexes(size, appended as u64).map_err(tlog)?,
    )
    .await?;
    if appended > 0 {
        let new = tree::append(size, &leaves, &known).map_err(tlog)?;
        let indexes: Vec<i64> = (size..new_size).map(to_i64).collect();
        let ids: Vec<i64> = records.iter().map(|r| r.0).collect();
        let kinds: Vec<&str> = records.iter().map(|r| r.1.as_str()).collect();
        let leaf_hashes: Vec<&[u8]> = leaves.iter().map(|h| h.0.as_slice()).collect();
        diesel::sql_query(
            "INSERT INTO tlog_leaves (log_index, record_id, kind, leaf_hash, integrated_at) \
             SELECT *, clock_timestamp() FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bytea[])",
        )
        .bind::<Array<BigInt>, _>(&indexes)
        .bind::<Array<BigInt>, _>(&ids)
        .bind::<Array<Text>, _>(&kinds)
        .bind::<Array<Bytea>, _>(&leaf_hashes)
        .execute(c)
        .await?;
        // Level 0 is in tlog_leaves: the levels above only.
        let above: Vec<&(u64, Hash)> = new
            .iter()
            .filter(|(i, _)| tree::split_stored_hash_index(*i).0 > 0)
            .collect();
        let hash_ids: Vec<i64> = above.iter().map(|(i, _)| to_i64(*i)).collect();
        let hashes: Vec<&[u8]> = above.iter().map(|(_, h)| h.0.as_slice()).collect();
        diesel::sql_query(
            "INSERT INTO tlog_hashes (idx, hash) SELECT * FROM unnest($1::bigint[], $2::bytea[])",
        )
        .bind::<Array<BigInt>, _>(&hash_ids)
        .bind::<Array<Bytea>, _>(&hashes)
        .execute(c)
        .await?;
        known.extend(new);
    }
    let last: Option<LastCheckpoint> = diesel::sql_query(
        "SELECT tree_size, clock_timestamp() - created_at >= make_interval(secs => $1) AS due \
         FROM tlog_checkpoints ORDER BY tree_size DESC LIMIT 1",
    )
    .bind::<Double, _>(checkpoint_every.as_secs_f64())
    .get_result(c)
    .await
    .map(Some)
    .or_else(|e| match e {
        diesel::result::Error::NotFound => Ok(None),
        e => Err(e),
    })?;
    let sign = match last {
        None => true,
        Some(l) => l.due && to_u64(l.tree_size, "tree size")? < new_size,
    };
    let mut signed = None;
    if sign {
        let needed = tree::root_indexes(new_size).map_err(tlog)?;
        let missing: Vec<u64> = needed
            .iter()
            .copied()
            .filter(|i| !known.contains_key(i))
            .collect();
        known.extend(read_hashes(c, &missing).await?);
        let root = tree::root(new_size, &known).map_err(tlog)?;
        let note = signer.sign(new_size, root).map_err(tlog)?;
        diesel::sql_query(
            "INSERT INTO tlog_checkpoints (tree_size, root_hash, note) VALUES ($1, $2, $3)",
        )
        .bind::<BigInt, _>(to_i64(new_size))
        .bind::<Bytea, _>(root.0.as_slice())
        .bind::<Text, _>(&note)
        .execute(c)
        .await?;
        signed = Some(new_size);
    }
    // The sweep moves on once the run commits (the caller stores where to).
    Ok((
        Integrated {
            sequencer: true,
            appended,
            tree_size: new_size,
            signed,
            unqueued,
        },
        swept.upto.unwrap_or(after).max(after),
    ))
}

const EXPORT_FILTERED_SQL: &str = "\
SELECT l.log_index, l.leaf_hash, {RECORD_COLUMNS}
FROM tlog_leaves l JOIN audit_records r ON r.id = l.record_id
WHERE l.log_index >= $1 AND l.log_index < $2
  AND ($4::timestamptz IS NULL OR r.received_at >= $4)
  AND ($5::timestamptz IS NULL OR r.received_at < $5)
  AND ($6::text IS NULL OR r.correlation_id = $6)
  AND (cardinality($7::text[]) = 0 OR r.kind = ANY($7))
ORDER BY l.log_index
LIMIT $3";

const STATUS_SQL: &str = "\
SELECT (SELECT COALESCE(max(log_index) + 1, 0) FROM tlog_leaves) AS tree_size,
       (SELECT COALESCE(sum(cardinality(record_ids)), 0)::bigint
            FROM (SELECT record_ids FROM tlog_queue ORDER BY batch LIMIT 100000) q) AS pending,
       COALESCE(EXTRACT(EPOCH FROM now() - (SELECT queued_at FROM tlog_queue
            ORDER BY batch LIMIT 1)), 0)::float8 AS oldest_pending_seconds,
       COALESCE((SELECT max(tree_size) FROM tlog_checkpoints), 0) AS checkpoint_size,
       COALESCE(EXTRACT(EPOCH FROM now() - (SELECT created_at FROM tlog_checkpoints
            ORDER BY tree_size DESC LIMIT 1))::float8, 0) AS checkpoint_age_seconds";

#[async_trait]
impl LogStore for PgStore {
    async fn integrate(
        &self,
        max: usize,
        signer: &CheckpointSigner,
        checkpoint_every: Duration,
    ) -> Result<Integrated, StoreError> {
        let mut own = self.sequencer.lock().await;
        if own.is_none() {
            let (statement_timeout, connect_timeout) = self.own_connection;
            let mut c = tokio::time::timeout(connect_timeout, self.target.connect())
                .await
                .map_err(|_| PgStoreError::Connect("connecting timed out".into()))?
                .map_err(|e| PgStoreError::Connect(e.to_string()))?;
            c.batch_execute(&format!(
                "SET statement_timeout = {}",
                statement_timeout.as_millis()
            ))
            .await
            .map_err(PgStoreError::from)?;
            *own = Some(c);
        }
        let Some(c) = own.as_mut() else {
            return Err(PgStoreError::Connect("no sequencer connection".into()).into());
        };
        let swept_to = &self.swept_to;
        let run = c
            .transaction(async |c| integrate(c, max, signer, checkpoint_every, swept_to).await)
            .await;
        match run {
            Ok((integrated, swept)) => {
                self.swept_to
                    .store(swept, std::sync::atomic::Ordering::Release);
                Ok(integrated)
            }
            Err(e) => {
                // Whatever failed, the next run starts on a fresh connection.
                *own = None;
                Err(e.into())
            }
        }
    }

    async fn checkpoint(&self, size: Option<u64>) -> Result<Option<Checkpoint>, StoreError> {
        let mut conn = self.conn().await?;
        let rows: Vec<CheckpointRow> = diesel::sql_query(
            "SELECT tree_size, root_hash, note FROM tlog_checkpoints \
             WHERE $1::bigint IS NULL OR tree_size = $1 ORDER BY tree_size DESC LIMIT 1",
        )
        .bind::<Nullable<BigInt>, _>(size.map(to_i64))
        .load(&mut conn)
        .await
        .map_err(PgStoreError::from)?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        Ok(Some(Checkpoint {
            size: to_u64(row.tree_size, "tree size")?,
            root: hash(&row.root_hash)?,
            note: row.note,
        }))
    }

    async fn leaf(&self, kind: Kind, id: i64) -> Result<LeafPosition, StoreError> {
        let mut conn = self.conn().await?;
        let p: Position = diesel::sql_query(
            "SELECT (SELECT log_index FROM tlog_leaves WHERE record_id = $1) AS log_index, \
                    EXISTS (SELECT 1 FROM audit_records WHERE id = $1 AND kind = $2) AS present",
        )
        .bind::<BigInt, _>(id)
        .bind::<Text, _>(kind.as_str())
        .get_result(&mut conn)
        .await
        .map_err(PgStoreError::from)?;
        Ok(match (p.present, p.log_index) {
            (false, _) => LeafPosition::Absent,
            (true, None) => LeafPosition::Pending,
            (true, Some(i)) => LeafPosition::Integrated(to_u64(i, "log index")?),
        })
    }

    async fn hashes(&self, indexes: &[u64]) -> Result<StoredHashes, StoreError> {
        let mut conn = self.conn().await?;
        Ok(read_hashes(&mut conn, indexes).await?)
    }

    async fn export(
        &self,
        filter: &ExportFilter,
        from: u64,
        below: u64,
        limit: usize,
    ) -> Result<Vec<ExportEntry>, StoreError> {
        let mut conn = self.conn().await?;
        Ok(export(&mut conn, filter, from, below, limit).await?)
    }

    async fn status(&self) -> Result<LogStatus, StoreError> {
        let mut conn = self.conn().await?;
        let s: StatusRow = diesel::sql_query(STATUS_SQL)
            .get_result(&mut conn)
            .await
            .map_err(PgStoreError::from)?;
        Ok(LogStatus {
            tree_size: to_u64(s.tree_size, "tree size")?,
            pending: s.pending,
            oldest_pending_seconds: s.oldest_pending_seconds,
            checkpoint_size: to_u64(s.checkpoint_size, "tree size")?,
            checkpoint_age_seconds: s.checkpoint_age_seconds,
        })
    }
}

async fn export(
    c: &mut AsyncPgConnection,
    filter: &ExportFilter,
    from: u64,
    below: u64,
    limit: usize,
) -> Result<Vec<ExportEntry>, PgStoreError> {
    let limit = to_i64(limit as u64);
    let entry =
        |log_index: i64, kind: String, id: i64, leaf_hash: &[u8], record: Option<StoredRecord>| {
            let log_index = to_u64(log_index, "log index")?;
            Ok::<_, PgStoreError>(ExportEntry {
                log_index,
                kind,
                id,
                leaf_hash: hash(leaf_hash)?,
                record: record.map(|mut r| {
                    r.log_index = Some(log_index);
                    r
                }),
            })
        };
    if filter.is_everything() {
        // Every leaf, records gone included: what the offline verifier rebuilds the tree from.
        let leaves: Vec<LeafRow> = diesel::sql_query(
            "SELECT log_index, record_id, kind, leaf_hash FROM tlog_leaves \
             WHERE log_index >= $1 AND log_index < $2 ORDER BY log_index LIMIT $3",
        )
        .bind::<BigInt, _>(to_i64(from))
        .bind::<BigInt, _>(to_i64(below))
        .bind::<BigInt, _>(limit)
        .load(c)
        .await?;
        let ids: Vec<i64> = leaves.iter().map(|l| l.record_id).collect();
        let rows: Vec<RecordRow> = diesel::sql_query(format!(
            "SELECT {RECORD_COLUMNS} FROM audit_records r WHERE r.id = ANY($1)"
        ))
        .bind::<Array<BigInt>, _>(&ids)
        .load(c)
        .await?;
        let mut by_id: HashMap<i64, StoredRecord> = HashMap::with_capacity(rows.len());
        for row in rows {
            let r = PgStore::to_stored(row)?;
            by_id.insert(r.id, r);
        }
        leaves
            .into_iter()
            .map(|l| {
                // A record's kind is content: the line shows the stored record's (a kind changed
                // after logging then fails the leaf check); the leaf's own kind only for a record
                // gone.
                let record = by_id.remove(&l.record_id);
                let kind = record
                    .as_ref()
                    .map_or(l.kind, |r| r.kind.as_str().to_owned());
                entry(l.log_index, kind, l.record_id, &l.leaf_hash, record)
            })
            .collect()
    } else {
        let kinds: Vec<&str> = filter.kinds.iter().map(|k| k.as_str()).collect();
        let rows: Vec<FilteredRow> =
            diesel::sql_query(EXPORT_FILTERED_SQL.replace("{RECORD_COLUMNS}", RECORD_COLUMNS))
                .bind::<BigInt, _>(to_i64(from))
                .bind::<BigInt, _>(to_i64(below))
                .bind::<BigInt, _>(limit)
                .bind::<Nullable<Timestamptz>, _>(filter.since.map(|t| t.as_utc()))
                .bind::<Nullable<Timestamptz>, _>(filter.until.map(|t| t.as_utc()))
                .bind::<Nullable<Text>, _>(filter.correlation_id.as_deref())
                .bind::<Array<Text>, _>(&kinds)
                .load(c)
                .await?;
        rows.into_iter()
            .map(|row| {
                let r = PgStore::to_stored(row.record)?;
                entry(
                    row.log_index,
                    r.kind.as_str().to_owned(),
                    r.id,
                    &row.leaf_hash,
                    Some(r),
                )
            })
            .collect()
    }
}
