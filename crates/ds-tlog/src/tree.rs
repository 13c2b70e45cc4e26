//! RFC 6962 tree arithmetic on the stored-hash layout of Go's `sumdb/tlog` (ported by `tlog_tiles`).
//!
//! Every complete subtree's hash is stored once, at a linear index (`stored_hash_index(level, n)`);
//! appending leaf `n` stores its hash and the hashes of the subtrees it completes (two per leaf on
//! average). A root, an inclusion proof or a consistency proof then needs at most ~2·log₂ n stored
//! hashes. Each operation here comes in two steps: `*_indexes` says which stored hashes it needs
//! (the tree functions ask for them in one call whose indexes depend on sizes only, never on hash
//! values, so a dry run with a recording reader finds them), the store reads exactly those rows in
//! one query, and the operation runs on them.

use crate::TlogError;
use std::cell::RefCell;
use std::collections::HashMap;
pub use tlog_tiles::{
    EMPTY_HASH, Hash, node_hash, record_hash, split_stored_hash_index, stored_hash_index,
};
use tlog_tiles::{Error as TreeError, HashReader};

/// Stored hashes by their linear index.
pub type StoredHashes = HashMap<u64, Hash>;

/// Answers zero hashes and remembers every index asked for.
struct Recorder(RefCell<Vec<u64>>);

impl HashReader for Recorder {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, TreeError> {
        self.0.borrow_mut().extend_from_slice(indexes);
        Ok(vec![Hash([0; 32]); indexes.len()])
    }
}

/// Answers from hashes read beforehand (and, while appending, from those just computed).
struct Known<'a> {
    stored: &'a StoredHashes,
    new: Option<&'a StoredHashes>,
}

impl HashReader for Known<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, TreeError> {
        indexes
            .iter()
            .map(|i| {
                self.stored
                    .get(i)
                    .or_else(|| self.new.and_then(|n| n.get(i)))
                    .copied()
                    .ok_or(TreeError::IndexesNotInTree)
            })
            .collect()
    }
}

fn tree_error(e: TreeError) -> TlogError {
    match e {
        TreeError::IndexesNotInTree => TlogError::MissingHashes(e.to_string()),
        other => TlogError::InvalidRequest(other.to_string()),
    }
}

fn plan<T>(op: impl FnOnce(&Recorder) -> Result<T, TreeError>) -> Result<Vec<u64>, TlogError> {
    let r = Recorder(RefCell::new(Vec::new()));
    op(&r).map_err(tree_error)?;
    let mut indexes = r.0.into_inner();
    indexes.sort_unstable();
    indexes.dedup();
    Ok(indexes)
}

fn run<T>(
    stored: &StoredHashes,
    op: impl FnOnce(&Known<'_>) -> Result<T, TreeError>,
) -> Result<T, TlogError> {
    op(&Known { stored, new: None }).map_err(tree_error)
}

/// The stored hashes the root of a tree of `size` leaves needs.
pub fn root_indexes(size: u64) -> Result<Vec<u64>, TlogError> {
    plan(|r| tlog_tiles::tree_hash(size, r))
}

/// The root hash of the tree of `size` leaves (RFC 6962 MTH; the empty tree's is SHA-256 of "").
pub fn root(size: u64, stored: &StoredHashes) -> Result<Hash, TlogError> {
    run(stored, |r| tlog_tiles::tree_hash(size, r))
}

fn check_leaf(size: u64, index: u64) -> Result<(), TlogError> {
    if index >= size {
        return Err(TlogError::InvalidRequest(format!(
            "leaf {index} is not in a tree of {size} leaves"
        )));
    }
    Ok(())
}

/// The stored hashes the inclusion proof of leaf `index` in the tree of `size` leaves needs.
pub fn inclusion_indexes(size: u64, index: u64) -> Result<Vec<u64>, TlogError> {
    check_leaf(size, index)?;
    plan(|r| tlog_tiles::prove_record(size, index, r))
}

/// The RFC 6962 audit path of leaf `index` in the tree of `size` leaves, leaf to root.
pub fn inclusion(size: u64, index: u64, stored: &StoredHashes) -> Result<Vec<Hash>, TlogError> {
    check_leaf(size, index)?;
    run(stored, |r| tlog_tiles::prove_record(size, index, r))
}

fn check_sizes(from: u64, to: u64) -> Result<(), TlogError> {
    if from == 0 || from > to {
        return Err(TlogError::InvalidRequest(format!(
            "a consistency proof needs 1 <= from <= to (from {from}, to {to})"
        )));
    }
    Ok(())
}

/// The stored hashes the consistency proof from `from` leaves to `to` leaves needs.
pub fn consistency_indexes(from: u64, to: u64) -> Result<Vec<u64>, TlogError> {
    check_sizes(from, to)?;
    plan(|r| tlog_tiles::prove_tree(to, from, r))
}

/// The RFC 6962 consistency proof that the tree of `to` leaves extends the tree of `from` leaves.
pub fn consistency(from: u64, to: u64, stored: &StoredHashes) -> Result<Vec<Hash>, TlogError> {
    check_sizes(from, to)?;
    run(stored, |r| tlog_tiles::prove_tree(to, from, r))
}

/// The stored hashes (of the tree before them) that appending `count` leaves to a tree of `size`
/// leaves needs.
pub fn append_indexes(size: u64, count: u64) -> Result<Vec<u64>, TlogError> {
    let first_new = stored_hash_index(0, size);
    let r = Recorder(RefCell::new(Vec::new()));
    for n in size..size + count {
        tlog_tiles::stored_hashes_for_record_hash(n, Hash([0; 32]), &r).map_err(tree_error)?;
    }
    let mut indexes: Vec<u64> =
        r.0.into_inner()
            .into_iter()
            .filter(|&i| i < first_new)
            .collect();
    indexes.sort_unstable();
    indexes.dedup();
    Ok(indexes)
}

/// The leaf whose append stores hash `index`: the last leaf of the complete subtree it is the hash
/// of. Appending leaves `[a, b)` stores exactly the hashes with indexes
/// `[stored_hash_index(0, a), stored_hash_index(0, b))`, so a store that keeps each run's new hashes
/// together finds hash `index` with the run that appended this leaf.
pub fn stored_by_leaf(index: u64) -> u64 {
    let (level, n) = split_stored_hash_index(index);
    let last = ((u128::from(n) + 1) << level) - 1;
    u64::try_from(last).unwrap_or(u64::MAX)
}

/// Appends `leaves` (leaf hashes) to a tree of `size` leaves: the stored hashes to write, by index,
/// in index order. `stored` holds at least the hashes [`append_indexes`] named.
pub fn append(
    size: u64,
    leaves: &[Hash],
    stored: &StoredHashes,
) -> Result<Vec<(u64, Hash)>, TlogError> {
    let mut new = StoredHashes::new();
    let mut out = Vec::with_capacity(leaves.len() * 2 + 1);
    for (n, leaf) in (size..).zip(leaves) {
        let hashes = tlog_tiles::stored_hashes_for_record_hash(
            n,
            *leaf,
            &Known {
                stored,
                new: Some(&new),
            },
        )
        .map_err(tree_error)?;
        let first = stored_hash_index(0, n);
        for (i, h) in (first..).zip(hashes) {
            new.insert(i, h);
            out.push((i, h));
        }
    }
    Ok(out)
}

/// Checks an inclusion proof: leaf `index` with hash `leaf` is in the tree of `size` leaves whose
/// root is `root`.
pub fn check_inclusion(proof: &[Hash], size: u64, root: Hash, index: u64, leaf: Hash) -> bool {
    index < size && tlog_tiles::check_record(&proof.to_vec(), size, root, index, leaf).is_ok()
}

/// Checks a consistency proof: the tree of `to` leaves with root `to_root` extends the tree of
/// `from` leaves with root `from_root`.
pub fn check_consistency(
    proof: &[Hash],
    from: u64,
    from_root: Hash,
    to: u64,
    to_root: Hash,
) -> bool {
    from >= 1
        && from <= to
        && tlog_tiles::check_tree(&proof.to_vec(), to, to_root, from, from_root).is_ok()
}

/// The right edge of a tree being built leaf by leaf: the roots of its complete subtrees, largest
/// first (at most one per bit of the size). Root at any size in O(log n) memory; the verifier
/// streams an export through it. Written here from RFC 6962 §2.1 on its own, not on `tlog_tiles`.
#[derive(Debug, Clone, Default)]
pub struct CompactRange {
    size: u64,
    subtrees: Vec<Hash>,
}

impl CompactRange {
    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.subtrees.push(leaf);
        // Each trailing one bit of the old size is a subtree of the new leaf's size to merge with.
        let mut s = self.size;
        while s & 1 == 1 {
            let (Some(right), Some(left)) = (self.subtrees.pop(), self.subtrees.pop()) else {
                // The subtrees match the bits of the size: there are as many as the merges need.
                unreachable!("a compact range holds one subtree per bit of its size");
            };
            self.subtrees.push(node_hash(left, right));
            s >>= 1;
        }
        self.size += 1;
    }

    /// The root of the tree so far: MTH(D[n]) = H(0x01 ‖ MTH(D[0:k]) ‖ MTH(D[k:n])), which folds
    /// the complete subtrees from the right.
    pub fn root(&self) -> Hash {
        let mut it = self.subtrees.iter().rev();
        let Some(&last) = it.next() else {
            return EMPTY_HASH;
        };
        it.fold(last, |acc, &left| node_hash(left, acc))
    }
}

#[cfg(test)]
#[path = "tree_tests.rs"]
mod tests;
