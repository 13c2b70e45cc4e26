//! Row types: what diesel reads and writes.

use crate::pgv::Embedding;
use crate::schema::{audit_records, embeddings, idempotency_keys};
use chrono::{DateTime, Utc};
use diesel::prelude::*;

#[derive(Insertable)]
#[diesel(table_name = embeddings)]
pub struct NewEmbeddingRow<'a> {
    pub digest: &'a [u8],
    pub model: &'a str,
    pub embedding: Embedding,
}

#[derive(Insertable)]
#[diesel(table_name = idempotency_keys)]
pub struct NewKeyRow<'a> {
    pub caller: &'a str,
    pub key: &'a str,
    pub request_digest: &'a [u8],
    pub outcomes: serde_json::Value,
}

#[derive(Queryable, QueryableByName, Selectable, Debug)]
#[diesel(table_name = audit_records, check_for_backend(diesel::pg::Pg))]
pub struct RecordRow {
    pub id: i64,
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub phase: String,
    pub correlation_id: String,
    pub message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
    pub details: serde_json::Value,
    pub unknown_fields: serde_json::Value,
    pub embedding_id: Option<i64>,
}

/// A search result row: the record and its cosine distance to the query.
#[derive(QueryableByName, Debug)]
pub struct SearchRow {
    #[diesel(embed)]
    pub record: RecordRow,
    #[diesel(sql_type = diesel::sql_types::Double)]
    pub distance: f64,
}

/// One text column `name` (e.g. the partition a function created).
#[derive(QueryableByName)]
pub struct Name {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub name: String,
}
