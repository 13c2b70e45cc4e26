//! The JSON bodies of the API. Request records are validated by the domain (`ds_domain::parse_record`);
//! these types describe them for the OpenAPI document and shape the answers.

use ds_domain::Violation;
use ds_domain::kind::Kind;
use ds_domain::ports::{EmbeddingStatus, WriteOutcome, WriteStatus};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The answer to one written record (contract §2.8).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WriteResponse {
    pub id: i64,
    pub embedding_id: Option<i64>,
    pub embedding_status: EmbeddingStatus,
    pub status: WriteStatus,
    /// When the service committed the record (for a duplicate: the original's).
    #[schema(value_type = String, format = DateTime)]
    pub created_at: String,
    pub message: String,
}

impl WriteResponse {
    pub fn new(kind: Kind, o: &WriteOutcome) -> Self {
        WriteResponse {
            id: o.id,
            embedding_id: o.embedding_id,
            embedding_status: o.embedding_status,
            status: o.status,
            created_at: o.received_at.to_rfc3339(),
            message: kind.created_message().to_owned(),
        }
    }
}

/// The answer to a batch: one result per item, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    pub results: Vec<WriteResponse>,
}

/// One item of a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItem {
    pub kind: Kind,
    /// A record of that kind, as for its own endpoint.
    #[schema(value_type = Object)]
    pub record: Value,
}

/// `POST /api/v1/audit/batch`: 1 to 1000 records of any kinds, written all or nothing.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchRequest {
    pub records: Vec<BatchItem>,
}

/// A stored record: the record as written plus `id`, `kind`, `receivedAt`, `embeddingStatus`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordResponse {
    pub id: i64,
    pub kind: Kind,
    #[schema(value_type = String, format = DateTime)]
    pub received_at: String,
    pub embedding_status: EmbeddingStatus,
    /// The record's leaf in the transparency log; absent until the sequencer appended it (within
    /// `log.integrate_interval` of the write).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_index: Option<u64>,
    /// Every field of the record as written, unknown fields included.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub record: Map<String, Value>,
}

/// `GET /api/v1/audit/trail/{correlationId}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrailResponse {
    pub correlation_id: String,
    /// Oldest first: by `createdAt`, then `id`; at most `limit`.
    pub records: Vec<RecordResponse>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/audit/records`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListResponse {
    /// Newest first: by `receivedAt`, then `id`, both descending; at most `limit`.
    pub records: Vec<RecordResponse>,
    /// Pass as `cursor` (with the same filters) for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `POST /api/v1/audit/search`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchBody {
    /// Text to search by (embedded with the configured model): not blank; or give `vector`.
    pub query: Option<String>,
    /// A vector of the model's dimension; or give `query`.
    pub vector: Option<Vec<f32>>,
    /// Only records of these kinds (all kinds when absent).
    #[schema(min_items = 1)]
    pub kinds: Option<Vec<Kind>>,
    /// Only records of this namespace.
    pub namespace: Option<String>,
    /// Records created at or after this instant.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub since: Option<String>,
    /// Records created before this instant.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub until: Option<String>,
    /// How many hits at most (default 10).
    #[schema(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// Leave out hits less similar than this.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub min_similarity: Option<f64>,
}

/// One hit, best first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResult {
    pub kind: Kind,
    pub id: i64,
    pub name: String,
    pub namespace: String,
    pub phase: String,
    /// Cosine similarity to the query, 1 = same direction.
    pub similarity: f64,
    pub record: RecordResponse,
}

/// The answer to a search.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    pub results: Vec<SearchResult>,
}

/// Error details: the first violation, and all of them.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetails {
    pub field: String,
    pub constraint: String,
    pub violations: Vec<Violation>,
}

/// The error object.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorObject {
    /// A stable machine-readable code, e.g. `VALIDATION_ERROR`.
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<ErrorDetails>,
}

/// Every error answer (contract §4).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub error: ErrorObject,
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: String,
    pub path: String,
    pub correlation_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    pub status: String,
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: String,
}

/// `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyResponse {
    /// `ready` or `not_ready`.
    pub status: String,
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: String,
    #[schema(value_type = Object)]
    pub dependencies: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The record bodies: the document builds each from the common fields and the kind's (see
/// `openapi::records`); these names only reserve their place in it.
macro_rules! record_body {
    ($($name:ident),*) => {$(
        #[derive(ToSchema)]
        #[allow(dead_code)]
        pub struct $name;
    )*};
}
record_body!(
    RemediationRecord,
    AiAnalysisRecord,
    WorkflowRecord,
    ExecutionRecord
);

/// `GET /api/v1/log/proof/inclusion`: the RFC 6962 audit path of a record's leaf in a signed tree.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InclusionResponse {
    pub log_index: u64,
    /// The size of the signed checkpoint the proof is for.
    pub tree_size: u64,
    /// That checkpoint's root hash (base64).
    pub root_hash: String,
    /// SHA-256(0x00 ‖ the record's canonical leaf), base64.
    pub leaf_hash: String,
    /// Sibling hashes from the leaf up to the root (base64).
    pub hashes: Vec<String>,
}

/// `GET /api/v1/log/proof/consistency`: the RFC 6962 proof that the tree of `to` leaves extends the
/// tree of `from` leaves.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsistencyResponse {
    pub from: u64,
    pub to: u64,
    /// base64 hashes.
    pub hashes: Vec<String>,
}

/// `POST /api/v1/holds`: a legal hold on every record of a correlation id, written before or after.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoldBody {
    /// The trail to keep (the pattern of §2.1's correlationId).
    #[schema(pattern = r"^[a-z]+-[0-9]{4}-[0-9]{2}-[0-9]{2}-[a-z0-9]{6}$")]
    pub correlation_id: String,
    /// Why: not blank; kept without control characters, trimmed.
    pub reason: String,
}

/// `DELETE /api/v1/holds/{id}`: why the hold is released.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReleaseBody {
    /// Why: not blank; kept without control characters, trimmed.
    pub reason: String,
}

/// A legal hold: who placed it, when and why, and once released who, when and why.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoldResponse {
    pub id: i64,
    pub correlation_id: String,
    pub reason: String,
    pub placed_by: String,
    pub placed_at: String,
    pub released_by: Option<String>,
    pub released_at: Option<String>,
    pub release_reason: Option<String>,
}

/// `GET /api/v1/holds`: newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct HoldsResponse {
    pub holds: Vec<HoldResponse>,
}
