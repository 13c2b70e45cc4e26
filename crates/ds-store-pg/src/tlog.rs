//! The transparency log's storage (contract §8): the sequencer, checkpoints, stored hashes, export.
//!
//! Tables (migrations `append_only_and_log`, `leaf_hash_at_write`, `log_segments`): `tlog_queue`
//! (records committed and not yet in the log, one row per inserting statement, filled by a trigger
//! on every insert), `tlog_segments` (the log: up to 1,024 consecutive leaves per row, with their
//! records and every stored hash their append created), `tlog_leaves` (record → log index),
//! `tlog_checkpoints` (every signed checkpoint).
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
    Checkpoint, ExportEntry, ExportFilter, Integrated, LeafContent, LeafPosition, LogStatus,
    LogStore,
};
use ds_domain::ports::{StoreError, StoredRecord};
use ds_tlog::Hash;
use ds_tlog::note::CheckpointSigner;
use ds_tlog::tree::{self, StoredHashes};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
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

/// Most leaves in one `tlog_segments` row (the migration's CHECK says the same).
const SEGMENT_LEAVES: usize = 1024;

/// One inserting statement's records, as the queue holds them: `leaf_hashes` is 32 bytes per
/// record, zeros where the insert did not compute it.
#[derive(QueryableByName)]
struct QueuedBatch {
    #[diesel(sql_type = Array<BigInt>)]
    record_ids: Vec<i64>,
    #[diesel(sql_type = Array<Text>)]
    kinds: Vec<String>,
    #[diesel(sql_type = Bytea)]
    leaf_hashes: Vec<u8>,
}

/// A record taken off the queue.
struct QueuedLeaf {
    record_id: i64,
    kind: String,
    leaf_hash: Option<Hash>,
}

#[derive(QueryableByName)]
struct StoredHash {
    #[diesel(sql_type = BigInt)]
    idx: i64,
    #[diesel(sql_type = Bytea)]
    hash: Vec<u8>,
}

/// A `tlog_segments` row.
#[derive(QueryableByName)]
struct Segment {
    #[diesel(sql_type = BigInt)]
    first_leaf: i64,
    #[diesel(sql_type = BigInt)]
    first_hash: i64,
    #[diesel(sql_type = Bytea)]
    hashes: Vec<u8>,
    #[diesel(sql_type = Array<BigInt>)]
    record_ids: Vec<i64>,
    #[diesel(sql_type = Array<Text>)]
    kinds: Vec<String>,
}

impl Segment {
    /// The leaf hash of leaf `n` of the log, when this segment holds it.
    fn leaf_hash(&self, n: u64) -> Result<Hash, PgStoreError> {
        let at = tree::stored_hash_index(0, n)
            .checked_sub(to_u64(self.first_hash, "hash index")?)
            .and_then(|k| usize::try_from(k).ok())
            .and_then(|k| self.hashes.get(k * 32..k * 32 + 32))
            .ok_or_else(|| {
                PgStoreError::Corrupt(format!(
                    "the log segment at {} lacks the hash of leaf {n}",
                    self.first_leaf
                ))
            })?;
        hash(at)
    }
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

/// The stored hashes at `indexes`; all of them, or `Corrupt`. Each is a 32-byte slice of the
/// segment that appended the leaf that stored it (one primary-key probe and one TOAST chunk each).
async fn read_hashes(
    c: &mut AsyncPgConnection,
    indexes: &[u64],
) -> Result<StoredHashes, PgStoreError> {
    if indexes.is_empty() {
        return Ok(StoredHashes::new());
    }
    let wanted: Vec<i64> = indexes.iter().map(|&i| to_i64(i)).collect();
    let leaves: Vec<i64> = indexes
        .iter()
        .map(|&i| to_i64(tree::stored_by_leaf(i)))
        .collect();
    let rows: Vec<StoredHash> = diesel::sql_query(
        "SELECT q.i AS idx, substring(s.hashes FROM ((q.i - s.first_hash) * 32 + 1)::integer FOR 32) AS hash \
         FROM unnest($1::bigint[], $2::bigint[]) AS q(i, leaf) \
         CROSS JOIN LATERAL (SELECT first_leaf, leaves, first_hash, hashes FROM tlog_segments \
                             WHERE first_leaf <= q.leaf ORDER BY first_leaf DESC LIMIT 1) s \
         WHERE q.leaf < s.first_leaf + s.leaves",
    )
    .bind::<Array<BigInt>, _>(&wanted)
    .bind::<Array<BigInt>, _>(&leaves)
    .load(c)
    .await?;
    let mut out = StoredHashes::with_capacity(rows.len());
    for r in rows {
        out.insert(to_u64(r.idx, "hash index")?, hash(&r.hash)?);
    }
    if let Some(missing) = indexes.iter().find(|i| !out.contains_key(i)) {
        return Err(PgStoreError::Corrupt(format!(
            "the transparency log lacks stored hash {missing}"
        )));
    }
    Ok(out)
}

/// The size of the log: the end of its last segment.
const SIZE_SQL: &str = "SELECT COALESCE((SELECT first_leaf + leaves FROM tlog_segments \
     ORDER BY first_leaf DESC LIMIT 1), 0) AS n";

/// Writes the leaves `records` (record, kind, leaf hash) at `size` and the stored hashes their
/// append created (`new`: every index from that of leaf `size` on, in order): the record → leaf
/// rows, then one segment per [`SEGMENT_LEAVES`] leaves.
async fn write_leaves(
    c: &mut AsyncPgConnection,
    size: u64,
    records: &[(i64, String, Hash)],
    new: &[(u64, Hash)],
) -> Result<(), PgStoreError> {
    let first_new = tree::stored_hash_index(0, size);
    if new.first().is_some_and(|(i, _)| *i != first_new)
        || new.windows(2).any(|w| w[1].0 != w[0].0 + 1)
    {
        return Err(PgStoreError::Corrupt(
            "appended hashes that are not one run of indexes".into(),
        ));
    }
    let ids: Vec<i64> = records.iter().map(|r| r.0).collect();
    let indexes: Vec<i64> = (size..).take(records.len()).map(to_i64).collect();
    diesel::sql_query(
        "INSERT INTO tlog_leaves (record_id, log_index) SELECT * FROM unnest($1::bigint[], $2::bigint[])",
    )
    .bind::<Array<BigInt>, _>(&ids)
    .bind::<Array<BigInt>, _>(&indexes)
    .execute(c)
    .await?;
    let mut first = size;
    for chunk in records.chunks(SEGMENT_LEAVES) {
        let end = first + chunk.len() as u64;
        let (from, to) = (
            tree::stored_hash_index(0, first) - first_new,
            tree::stored_hash_index(0, end) - first_new,
        );
        let hashes: Vec<u8> = new
            .get(
                usize::try_from(from).unwrap_or(usize::MAX)
                    ..usize::try_from(to).unwrap_or(usize::MAX),
            )
            .ok_or_else(|| PgStoreError::Corrupt("fewer appended hashes than leaves need".into()))?
            .iter()
            .flat_map(|(_, h)| h.0)
            .collect();
        let ids: Vec<i64> = chunk.iter().map(|r| r.0).collect();
        let kinds: Vec<&str> = chunk.iter().map(|r| r.1.as_str()).collect();
        diesel::sql_query(
            "INSERT INTO tlog_segments (first_leaf, leaves, first_hash, hashes, record_ids, kinds, integrated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, clock_timestamp())",
        )
        .bind::<BigInt, _>(to_i64(first))
        .bind::<diesel::sql_types::Integer, _>(i32::try_from(chunk.len()).unwrap_or(i32::MAX))
        .bind::<BigInt, _>(to_i64(tree::stored_hash_index(0, first)))
        .bind::<Bytea, _>(&hashes)
        .bind::<Array<BigInt>, _>(&ids)
        .bind::<Array<Text>, _>(&kinds)
        .execute(c)
        .await?;
        first = end;
    }
    Ok(())
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
    SELECT id FROM audit_records
    WHERE id > $1 AND id < COALESCE((SELECT first_id FROM tlog_queue ORDER BY first_id LIMIT 1),
                                    9223372036854775807)
    ORDER BY id LIMIT $2
), missing AS (
    SELECT r.id, r.kind, r.leaf_hash FROM span s JOIN audit_records r ON r.id = s.id
    WHERE NOT EXISTS (SELECT 1 FROM tlog_leaves l WHERE l.record_id = s.id)
), queued AS (
    INSERT INTO tlog_queue (first_id, record_ids, kinds, leaf_hashes)
    SELECT min(id), array_agg(id ORDER BY id), array_agg(kind ORDER BY id),
           string_agg(COALESCE(leaf_hash, decode(repeat('00', 32), 'hex')), ''::bytea ORDER BY id)
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
    filter_logged: bool,
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
    let size = diesel::sql_query(SIZE_SQL).get_result::<Size>(c).await?.n;
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
    let mut pending: Vec<QueuedLeaf> = Vec::new();
    for b in batches {
        if b.kinds.len() != b.record_ids.len() || b.leaf_hashes.len() != 32 * b.record_ids.len() {
            return Err(PgStoreError::Corrupt(
                "a queued batch whose arrays differ in length".into(),
            ));
        }
        for ((record_id, kind), h) in b
            .record_ids
            .into_iter()
            .zip(b.kinds)
            .zip(b.leaf_hashes.chunks_exact(32))
        {
            // 32 zero bytes: the insert did not compute it (no SHA-256 output is that).
            let leaf_hash = (h != [0; 32]).then(|| hash(h)).transpose()?;
            pending.push(QueuedLeaf {
                record_id,
                kind,
                leaf_hash,
            });
        }
    }
    pending.sort_unstable_by_key(|p| p.record_id);
    // A record queued twice (by hand) is one leaf.
    pending.dedup_by_key(|p| p.record_id);
    if filter_logged {
        // A record queued again by hand after it was logged is not appended twice (without this,
        // its second leaf fails the run on `tlog_leaves`' primary key; the caller then asks).
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
    }
    // Records queued without their leaf hash (another writer, an earlier version, or numbers the
    // writer could not predict): computed from the stored row.
    let without: Vec<i64> = pending
        .iter()
        .filter(|p| p.leaf_hash.is_none())
        .map(|p| p.record_id)
        .collect();
    let mut computed: HashMap<i64, (String, Hash)> = HashMap::new();
    if !without.is_empty() {
        let rows: Vec<RecordRow> = diesel::sql_query(format!(
            "SELECT {RECORD_COLUMNS} FROM audit_records r WHERE r.id = ANY($1)"
        ))
        .bind::<Array<BigInt>, _>(&without)
        .load(c)
        .await?;
        for row in rows {
            let r = PgStore::to_stored(row)?;
            computed.insert(r.id, (r.kind.as_str().to_owned(), leaf_hash(&r)));
        }
        // The log's own entries (purges, holds, releases) are queued without a leaf hash.
        let entries: Vec<i64> = without
            .iter()
            .copied()
            .filter(|id| !computed.contains_key(id))
            .collect();
        if !entries.is_empty() {
            for (id, kind, content) in log_entries(c, &entries).await? {
                let h = content_leaf_hash(&kind, id, &content);
                computed.insert(id, (kind, h));
            }
        }
    }
    let mut records: Vec<(i64, String, Hash)> = Vec::with_capacity(pending.len());
    let mut vanished = 0usize;
    for p in pending {
        match p.leaf_hash {
            Some(h) => {
                // A record's kind, as its insert queued it.
                let kind: Kind = p
                    .kind
                    .parse()
                    .map_err(|e| PgStoreError::Corrupt(format!("{e}")))?;
                records.push((p.record_id, kind.as_str().to_owned(), h));
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
        write_leaves(c, size, &records, &new).await?;
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

/// The earliest `first_leaf` of a segment that may hold leaf `n` (a segment has at most
/// [`SEGMENT_LEAVES`]): the lower bound that lets a range of leaves be read by primary key.
fn segments_from(n: u64) -> i64 {
    to_i64(n.saturating_sub(SEGMENT_LEAVES as u64 - 1))
}

/// A run that would give a record a second leaf (`tlog_leaves`' primary key refused it).
fn is_second_leaf(e: &PgStoreError) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    matches!(e, PgStoreError::Query(Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info))
        if info.constraint_name() == Some("tlog_leaves_pkey"))
}

/// Leaves in `[$1, $2)` whose records pass the filter, in log order: the segments in order from
/// `$8` (the earliest start of a segment holding leaf `$1`, [`segments_from`]), each leaf's record
/// probed by id.
const EXPORT_FILTERED_SQL: &str = "\
SELECT x.n AS log_index,
       substring(s.hashes FROM ((2 * x.n - bit_count(x.n::bit(64)) - s.first_hash) * 32 + 1)::integer FOR 32) AS leaf_hash,
       {RECORD_COLUMNS}
FROM tlog_segments s
CROSS JOIN LATERAL unnest(s.record_ids) WITH ORDINALITY AS u(id, o)
CROSS JOIN LATERAL (SELECT s.first_leaf + u.o - 1 AS n) x
JOIN audit_records r ON r.id = u.id
WHERE s.first_leaf >= $8 AND s.first_leaf < $2 AND x.n >= $1 AND x.n < $2
  AND ($4::timestamptz IS NULL OR r.received_at >= $4)
  AND ($5::timestamptz IS NULL OR r.received_at < $5)
  AND ($6::text IS NULL OR r.correlation_id = $6)
  AND (cardinality($7::text[]) = 0 OR r.kind = ANY($7))
ORDER BY s.first_leaf, u.o
LIMIT $3";

const STATUS_SQL: &str = "\
SELECT COALESCE((SELECT first_leaf + leaves FROM tlog_segments
            ORDER BY first_leaf DESC LIMIT 1), 0) AS tree_size,
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
        let mut run = c
            .transaction(async |c| {
                integrate(c, max, signer, checkpoint_every, swept_to, false).await
            })
            .await;
        if run.as_ref().is_err_and(is_second_leaf) {
            // Records queued again after they were logged (by hand: every insert queues a record
            // once): the run is redone leaving out those already in the log.
            tracing::warn!(
                "records queued for the transparency log were already in it (queued again by hand): left out"
            );
            run = c
                .transaction(async |c| {
                    integrate(c, max, signer, checkpoint_every, swept_to, true).await
                })
                .await;
        }
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
        let rows: Vec<CheckpointRow> = crate::store::read!(self, true, |_| false, |conn| async {
            diesel::sql_query(
                "SELECT tree_size, root_hash, note FROM tlog_checkpoints \
                 WHERE $1::bigint IS NULL OR tree_size = $1 ORDER BY tree_size DESC LIMIT 1",
            )
            .bind::<Nullable<BigInt>, _>(size.map(to_i64))
            .load(conn)
            .await
            .map_err(PgStoreError::from)
        })?;
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
        Ok(crate::store::read!(self, false, |_| false, |conn| export(
            conn, filter, from, below, limit
        ))?)
    }

    fn pinned(&self) -> Arc<dyn LogStore> {
        Arc::new(PgStore::pinned(self))
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

#[derive(QueryableByName)]
struct EntryRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = diesel::sql_types::Jsonb)]
    body: Value,
    #[diesel(sql_type = Timestamptz)]
    created_at: chrono::DateTime<chrono::Utc>,
}

/// The log's own entries among `ids` (contract §9: purges, holds, releases): id, kind, and what
/// their leaf commits to (the body, received when created).
async fn log_entries(
    c: &mut AsyncPgConnection,
    ids: &[i64],
) -> Result<Vec<(i64, String, LeafContent)>, PgStoreError> {
    let rows: Vec<EntryRow> =
        diesel::sql_query("SELECT id, kind, body, created_at FROM log_entries WHERE id = ANY($1)")
            .bind::<Array<BigInt>, _>(ids)
            .load(c)
            .await?;
    rows.into_iter()
        .map(|r| {
            let Value::Object(fields) = r.body else {
                return Err(PgStoreError::Corrupt(format!(
                    "the log entry {} has a body that is not an object",
                    r.id
                )));
            };
            Ok((
                r.id,
                r.kind,
                LeafContent {
                    received_at: ds_domain::time::Timestamp::from_utc(r.created_at),
                    fields,
                },
            ))
        })
        .collect()
}

/// The leaf hash of a leaf's content: what the verifier recomputes from its export line.
fn content_leaf_hash(kind: &str, id: i64, content: &LeafContent) -> Hash {
    let received_at = content.received_at.to_rfc3339();
    ds_tlog::Leaf {
        kind,
        id,
        received_at: &received_at,
        record: &content.fields,
    }
    .hash()
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
        |log_index: i64, kind: String, id: i64, leaf_hash: &[u8], content: Option<LeafContent>| {
            let log_index = to_u64(log_index, "log index")?;
            Ok::<_, PgStoreError>(ExportEntry {
                log_index,
                kind,
                id,
                leaf_hash: hash(leaf_hash)?,
                content,
            })
        };
    if filter.is_everything() {
        // Every leaf, records gone included: what the offline verifier rebuilds the tree from.
        let segments: Vec<Segment> = diesel::sql_query(
            "SELECT first_leaf, first_hash, hashes, record_ids, kinds FROM tlog_segments \
             WHERE first_leaf >= $3 AND first_leaf < $2 AND first_leaf + leaves > $1 \
             ORDER BY first_leaf",
        )
        .bind::<BigInt, _>(to_i64(from))
        // The segments holding the leaves [from, from + limit), not more.
        .bind::<BigInt, _>(to_i64(
            below.min(from.saturating_add(to_u64(limit, "limit")?)),
        ))
        .bind::<BigInt, _>(segments_from(from))
        .load(c)
        .await?;
        let mut leaves: Vec<(u64, i64, String, Hash)> = Vec::new();
        for s in &segments {
            if s.kinds.len() != s.record_ids.len() {
                return Err(PgStoreError::Corrupt(format!(
                    "the log segment at {} has {} records and {} kinds",
                    s.first_leaf,
                    s.record_ids.len(),
                    s.kinds.len()
                )));
            }
            let first = to_u64(s.first_leaf, "log index")?;
            for ((n, id), kind) in (first..).zip(&s.record_ids).zip(&s.kinds) {
                if n >= from && n < below && leaves.len() < usize::try_from(limit).unwrap_or(0) {
                    leaves.push((n, *id, kind.clone(), s.leaf_hash(n)?));
                }
            }
        }
        let ids: Vec<i64> = leaves.iter().map(|l| l.1).collect();
        let rows: Vec<RecordRow> = diesel::sql_query(format!(
            "SELECT {RECORD_COLUMNS} FROM audit_records r WHERE r.id = ANY($1)"
        ))
        .bind::<Array<BigInt>, _>(&ids)
        .load(c)
        .await?;
        let mut by_id: HashMap<i64, (String, LeafContent)> = HashMap::with_capacity(rows.len());
        for row in rows {
            let r = PgStore::to_stored(row)?;
            by_id.insert(r.id, (r.kind.as_str().to_owned(), r.into()));
        }
        // The log's own entries (purges, holds, releases): ids the records do not have.
        let others: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !by_id.contains_key(id))
            .collect();
        if !others.is_empty() {
            for e in log_entries(c, &others).await? {
                by_id.insert(e.0, (e.1, e.2));
            }
        }
        leaves
            .into_iter()
            .map(|(n, id, leaf_kind, leaf_hash)| {
                // A record's kind is content: the line shows the stored record's (a kind changed
                // after logging then fails the leaf check); the leaf's own kind only for a record
                // gone.
                let (kind, content) = match by_id.remove(&id) {
                    Some((kind, content)) => (kind, Some(content)),
                    None => (leaf_kind, None),
                };
                entry(to_i64(n), kind, id, &leaf_hash.0, content)
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
                .bind::<BigInt, _>(segments_from(from))
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
                    Some(r.into()),
                )
            })
            .collect()
    }
}
