//! The errors of the use-cases. Callers branch on the variants; the HTTP crate maps each one to a status
//! and a contract error code in one exhaustive `match`.

use crate::ports::{EmbedError, StoreError};
use serde::Serialize;

/// One failed rule: which field (a JSON path such as `stepStatuses[3].retryCount`, or
/// `records[2].record.name` inside a batch), which constraint, and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Violation {
    pub field: String,
    pub constraint: String,
    pub message: String,
}

impl Violation {
    pub fn new(
        field: impl Into<String>,
        constraint: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Violation {
            field: field.into(),
            constraint: constraint.into(),
            message: message.into(),
        }
    }

    /// The same violation, with its field path placed under `prefix` (`records[2].record`).
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.field = if self.field.is_empty() {
            prefix.to_owned()
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
    }
}

/// What can go wrong in a use-case.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The body is JSON but breaks one or more rules of contract §2; every broken rule is listed.
    #[error("validation failed: {} violation(s)", .0.len())]
    Validation(Vec<Violation>),
    /// The body is not JSON, or not JSON of the right shape (e.g. an array where an object belongs).
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// An `Idempotency-Key` was reused with a different body.
    #[error("idempotency key reused with a different body")]
    IdempotencyConflict,
    /// No such record.
    #[error("record not found")]
    NotFound,
    /// Nothing of that name (a checkpoint of a size that was never signed...).
    #[error("not found: {0}")]
    Absent(String),
    /// A query parameter out of its range, as one violation.
    #[error("invalid parameter: {}", .0.message)]
    InvalidParameter(Violation),
    /// The record is committed but not yet in the transparency log (or in no signed checkpoint yet).
    #[error("not yet integrated into the log")]
    NotYetIntegrated,
    /// The embedding provider could not embed the record(s); nothing was written.
    #[error("embedding failed: {0}")]
    Embedding(#[from] EmbedError),
    /// The store failed; see [`StoreError`] for which cases are retryable.
    #[error("store failed: {0}")]
    Store(#[from] StoreError),
}
