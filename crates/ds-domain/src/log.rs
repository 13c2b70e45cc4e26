//! The transparency log's use-cases (contract §8): appending committed records (the sequencer),
//! signed checkpoints, inclusion and consistency proofs, and the export in log order.
//!
//! The tree arithmetic, the leaf encoding and the checkpoint format are `ds_tlog`'s; the storage is
//! the [`LogStore`] port's. A proof is two steps: `ds_tlog::tree` names the stored hashes it needs,
//! the store reads exactly those (O(log n) rows, one query), the tree code assembles the proof.

use crate::error::{AuditError, Violation};
use crate::kind::Kind;
use crate::ports::{StoreError, StoredRecord};
use crate::time::Timestamp;
use async_trait::async_trait;
use ds_tlog::Hash;
use ds_tlog::note::CheckpointSigner;
use ds_tlog::tree::{self, StoredHashes};
use std::sync::Arc;
use std::time::Duration;

/// A signed checkpoint as kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub size: u64,
    pub root: Hash,
    /// The C2SP signed note.
    pub note: String,
}

/// Where a record stands in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafPosition {
    /// A leaf at this index.
    Integrated(u64),
    /// Committed, waiting for the sequencer.
    Pending,
    /// No such record (or a record of another kind).
    Absent,
}

/// Which records an export holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportFilter {
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    pub correlation_id: Option<String>,
    pub kinds: Vec<Kind>,
}

impl ExportFilter {
    /// No filter: every leaf, records gone included (what the offline verifier needs).
    pub fn is_everything(&self) -> bool {
        self == &ExportFilter::default()
    }
}

/// One leaf of an export.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportEntry {
    pub log_index: u64,
    pub kind: String,
    pub id: i64,
    /// The leaf hash the log holds.
    pub leaf_hash: Hash,
    /// What the leaf commits to, or `None` when the store no longer holds it (a record purged, or
    /// deleted).
    pub content: Option<LeafContent>,
}

/// What a leaf commits to besides its kind and id: a record's fields, or the body of one of the
/// log's own entries (`purge`, `hold`, `release`: contract §9), and when the store received it.
#[derive(Debug, Clone, PartialEq)]
pub struct LeafContent {
    pub received_at: Timestamp,
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl From<StoredRecord> for LeafContent {
    fn from(r: StoredRecord) -> Self {
        LeafContent {
            received_at: r.received_at,
            fields: r.record,
        }
    }
}

/// What one run of the sequencer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Integrated {
    /// Whether this replica held the sequencer's role for the run.
    pub sequencer: bool,
    /// Leaves appended.
    pub appended: usize,
    pub tree_size: u64,
    /// The size of the checkpoint signed in this run, if one was.
    pub signed: Option<u64>,
    /// Committed records the run found neither in the log nor queued (inserted with the queue's
    /// trigger off), and queued.
    pub unqueued: usize,
}

/// The log's state, for metrics and readiness.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LogStatus {
    pub tree_size: u64,
    /// Records committed and not yet in the log.
    pub pending: i64,
    /// How long the oldest of them has waited (0 when none).
    pub oldest_pending_seconds: f64,
    /// The latest checkpoint's size and age.
    pub checkpoint_size: u64,
    pub checkpoint_age_seconds: f64,
}

/// Storage of the log. Error contract: [`StoreError`]; nothing changed on error.
#[async_trait]
pub trait LogStore: Send + Sync {
    /// One run of the sequencer, if this replica gets the role (one replica at a time, decided by the
    /// database): appends up to `max` committed records not yet in the log, in the order it finds
    /// them, and signs a checkpoint when the tree grew and the last one is older than
    /// `checkpoint_every` (or none exists), all in one transaction.
    async fn integrate(
        &self,
        max: usize,
        signer: &CheckpointSigner,
        checkpoint_every: Duration,
    ) -> Result<Integrated, StoreError>;

    /// The latest checkpoint, or the one of `size`.
    async fn checkpoint(&self, size: Option<u64>) -> Result<Option<Checkpoint>, StoreError>;

    /// Where the record `kind`/`id` stands.
    async fn leaf(&self, kind: Kind, id: i64) -> Result<LeafPosition, StoreError>;

    /// The stored hashes at `indexes` (all of them, or an error).
    async fn hashes(&self, indexes: &[u64]) -> Result<StoredHashes, StoreError>;

    /// Leaves from `from` (inclusive) below `below`, in log order, that pass `filter`; at most
    /// `limit`.
    async fn export(
        &self,
        filter: &ExportFilter,
        from: u64,
        below: u64,
        limit: usize,
    ) -> Result<Vec<ExportEntry>, StoreError>;

    async fn status(&self) -> Result<LogStatus, StoreError>;

    /// This store with its reads pinned to one copy of the database (a read replica or the
    /// primary) for a sequence of reads that must agree with each other: an export's pages and the
    /// checkpoint it ends at.
    fn pinned(&self) -> std::sync::Arc<dyn LogStore>;
}

/// An inclusion proof (RFC 6962 audit path) of a record in a signed tree.
#[derive(Debug, Clone, PartialEq)]
pub struct InclusionProof {
    pub log_index: u64,
    pub tree_size: u64,
    pub root: Hash,
    pub leaf_hash: Hash,
    pub hashes: Vec<Hash>,
}

/// A consistency proof between two signed trees.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsistencyProof {
    pub from: u64,
    pub to: u64,
    pub hashes: Vec<Hash>,
}

/// The log's use-cases.
#[derive(Clone)]
pub struct LogService {
    store: Arc<dyn LogStore>,
}

impl std::fmt::Debug for LogService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogService").finish_non_exhaustive()
    }
}

fn invalid(field: &str, message: String) -> AuditError {
    AuditError::InvalidParameter(Violation::new(field, "range", message))
}

fn corrupt(e: ds_tlog::TlogError) -> AuditError {
    AuditError::Store(StoreError::Corrupt(format!("transparency log: {e}")))
}

impl LogService {
    pub fn new(store: Arc<dyn LogStore>) -> Self {
        Self { store }
    }

    /// One run of the sequencer (see [`LogStore::integrate`]).
    pub async fn integrate(
        &self,
        max: usize,
        signer: &CheckpointSigner,
        checkpoint_every: Duration,
    ) -> Result<Integrated, AuditError> {
        Ok(self.store.integrate(max, signer, checkpoint_every).await?)
    }

    /// The latest signed checkpoint, or the one of `size`.
    pub async fn checkpoint(&self, size: Option<u64>) -> Result<Checkpoint, AuditError> {
        self.store.checkpoint(size).await?.ok_or_else(|| {
            AuditError::Absent(match size {
                Some(s) => format!("no checkpoint of size {s}"),
                None => "no checkpoint yet: the log's sequencer has not run".into(),
            })
        })
    }

    /// The checkpoint a proof is made against: the one of `size`, or the latest.
    async fn signed_tree(&self, size: Option<u64>, field: &str) -> Result<Checkpoint, AuditError> {
        match self.store.checkpoint(size).await? {
            Some(c) => Ok(c),
            // A size that names no kept checkpoint names nothing there is: 404, as for the checkpoint
            // itself.
            None if size.is_some() => Err(AuditError::Absent(format!(
                "{field}: there is no signed checkpoint of size {}: use the size of a checkpoint",
                size.unwrap_or_default()
            ))),
            None => Err(AuditError::NotYetIntegrated),
        }
    }

    /// The inclusion proof of the record `kind`/`id` in the signed tree of `tree_size` (default: the
    /// latest checkpoint). `NotYetIntegrated` while the record waits for the sequencer or for a
    /// checkpoint that covers it.
    pub async fn inclusion(
        &self,
        kind: Kind,
        id: i64,
        tree_size: Option<u64>,
    ) -> Result<InclusionProof, AuditError> {
        let log_index = match self.store.leaf(kind, id).await? {
            LeafPosition::Absent => return Err(AuditError::NotFound),
            LeafPosition::Pending => return Err(AuditError::NotYetIntegrated),
            LeafPosition::Integrated(i) => i,
        };
        let tree = self.signed_tree(tree_size, "treeSize").await?;
        if log_index >= tree.size {
            return match tree_size {
                Some(_) => Err(AuditError::Absent(format!(
                    "the record is not in the tree of {} leaves (its logIndex is {log_index})",
                    tree.size
                ))),
                None => Err(AuditError::NotYetIntegrated),
            };
        }
        let leaf_index = tree::stored_hash_index(0, log_index);
        let mut indexes = tree::inclusion_indexes(tree.size, log_index).map_err(corrupt)?;
        indexes.push(leaf_index);
        let stored = self.store.hashes(&indexes).await?;
        let hashes = tree::inclusion(tree.size, log_index, &stored).map_err(corrupt)?;
        let leaf_hash = *stored
            .get(&leaf_index)
            .ok_or_else(|| corrupt(ds_tlog::TlogError::MissingHashes("the leaf".into())))?;
        Ok(InclusionProof {
            log_index,
            tree_size: tree.size,
            root: tree.root,
            leaf_hash,
            hashes,
        })
    }

    /// The consistency proof between the signed trees of `from` and `to` leaves.
    pub async fn consistency(&self, from: u64, to: u64) -> Result<ConsistencyProof, AuditError> {
        if from == 0 || from > to {
            return Err(invalid(
                "from",
                format!("a consistency proof needs 1 <= from <= to (from {from}, to {to})"),
            ));
        }
        self.signed_tree(Some(from), "from").await?;
        self.signed_tree(Some(to), "to").await?;
        let indexes = tree::consistency_indexes(from, to).map_err(corrupt)?;
        let stored = self.store.hashes(&indexes).await?;
        let hashes = tree::consistency(from, to, &stored).map_err(corrupt)?;
        Ok(ConsistencyProof { from, to, hashes })
    }

    /// This service with its reads pinned to one copy of the database (see [`LogStore::pinned`]):
    /// an export runs on one.
    pub fn pinned(&self) -> LogService {
        LogService::new(self.store.pinned())
    }

    /// The size an export stops at: the latest checkpoint's (what an auditor can verify), or 0.
    pub async fn export_end(&self) -> Result<u64, AuditError> {
        Ok(self.store.checkpoint(None).await?.map_or(0, |c| c.size))
    }

    /// One page of an export.
    pub async fn export_page(
        &self,
        filter: &ExportFilter,
        from: u64,
        below: u64,
        limit: usize,
    ) -> Result<Vec<ExportEntry>, AuditError> {
        Ok(self.store.export(filter, from, below, limit).await?)
    }

    pub async fn status(&self) -> Result<LogStatus, AuditError> {
        Ok(self.store.status().await?)
    }
}
