//! The transparency log as pure code, shared by the service (which appends and proves) and by
//! `datastorage verify` (which checks): no I/O, no framework, no database.
//!
//! - [`leaf`]: what a leaf commits to (a record's canonical form with its kind, id and receivedAt).
//! - [`tree`]: RFC 6962 tree arithmetic on Go's stored-hash layout (`tlog_tiles`), as two steps: which
//!   stored hashes an operation needs (so that the store reads them in one query), then the operation.
//! - [`note`]: C2SP checkpoints as Ed25519 signed notes (`signed_note`), keys and their rotation.
//! - [`verify`]: the offline verifier of an export against signed checkpoints.

pub mod canonical;
pub mod leaf;
pub mod note;
pub mod tree;
pub mod verify;

pub use leaf::Leaf;
pub use tlog_tiles::Hash;

/// What can go wrong in the log's pure code.
#[derive(Debug, thiserror::Error)]
pub enum TlogError {
    /// A tree operation got sizes or indexes that do not describe the tree (a proof for a leaf
    /// beyond the tree, a consistency proof from a larger tree...).
    #[error("invalid tree request: {0}")]
    InvalidRequest(String),
    /// Stored hashes the operation needs were not given: storage and tree size disagree.
    #[error("the stored hashes do not cover the tree: {0}")]
    MissingHashes(String),
    /// A key could not be read (format, algorithm, key id).
    #[error("key: {0}")]
    Key(String),
    /// A checkpoint could not be formed or signed.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
}

/// Base64 (standard, padded) of a hash, as checkpoints and proofs carry it.
pub fn hash_to_base64(h: &Hash) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(h.0)
}

/// A hash from base64 (standard, padded).
pub fn hash_from_base64(s: &str) -> Option<Hash> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    Some(Hash(bytes.try_into().ok()?))
}
