//! The OpenAPI 3 document of the API, generated from the code with utoipa and served at
//! `GET /api/v1/openapi.json`.

use crate::dto::*;
use actix_web::HttpResponse;
use ds_domain::kind::Kind;
use ds_domain::record::{CommonInput, RESERVED_FIELDS};
use ds_domain::retention::MAX_REASON_CHARS;
use ds_domain::sanitize::NOT_BLANK_PATTERN;
use ds_domain::search::MAX_QUERY_CHARS;
use serde_json::{Value, json};
use utoipa::OpenApi;

/// Paths documented here have no handler of their own: their shapes are what the handlers answer.
/// The refusals every API operation shares (401, 403, 429, 503, and 413/415 for a body) are added by
/// [`document`], not written here.
#[allow(dead_code)]
mod paths {
    use super::*;

    #[utoipa::path(post, path = "/api/v1/audit/remediation", tag = "write",
        request_body(content = RemediationRecord, content_type = "application/json"),
        params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[!-~]{1,255}$", description = "1–255 visible ASCII characters, scoped to the caller: a retry with the same key and body answers the first write; another body is 409"),
               ("X-Correlation-ID" = Option<String>, Header, description = "echoed back; generated when absent")),
        responses((status = 201, body = WriteResponse, description = "stored (or, for a retry, the record stored before: `status` = `duplicate`)"),
                  (status = 400, body = ErrorBody, description = "invalid JSON, or a record that breaks a rule: every violation is listed"),
                  (status = 409, body = ErrorBody, description = "`DUPLICATE_AUDIT`: the Idempotency-Key was used with another body")))]
    pub fn remediation() {}

    #[utoipa::path(post, path = "/api/v1/audit/aianalysis", tag = "write",
        request_body(content = AiAnalysisRecord, content_type = "application/json"),
        params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[!-~]{1,255}$", description = "1–255 visible ASCII characters, scoped to the caller")),
        responses((status = 201, body = WriteResponse, description = "stored (or the record stored before: `status` = `duplicate`)"),
                  (status = 400, body = ErrorBody, description = "invalid JSON, or a record that breaks a rule: every violation is listed"),
                  (status = 409, body = ErrorBody, description = "`DUPLICATE_AUDIT`: the Idempotency-Key was used with another body")))]
    pub fn aianalysis() {}

    #[utoipa::path(post, path = "/api/v1/audit/workflow", tag = "write",
        request_body(content = WorkflowRecord, content_type = "application/json"),
        params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[!-~]{1,255}$", description = "1–255 visible ASCII characters, scoped to the caller")),
        responses((status = 201, body = WriteResponse, description = "stored (or the record stored before: `status` = `duplicate`)"),
                  (status = 400, body = ErrorBody, description = "invalid JSON, or a record that breaks a rule: every violation is listed"),
                  (status = 409, body = ErrorBody, description = "`DUPLICATE_AUDIT`: the Idempotency-Key was used with another body")))]
    pub fn workflow() {}

    #[utoipa::path(post, path = "/api/v1/audit/execution", tag = "write",
        request_body(content = ExecutionRecord, content_type = "application/json"),
        params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[!-~]{1,255}$", description = "1–255 visible ASCII characters, scoped to the caller")),
        responses((status = 201, body = WriteResponse, description = "stored (or the record stored before: `status` = `duplicate`)"),
                  (status = 400, body = ErrorBody, description = "invalid JSON, or a record that breaks a rule: every violation is listed"),
                  (status = 409, body = ErrorBody, description = "`DUPLICATE_AUDIT`: the Idempotency-Key was used with another body")))]
    pub fn execution() {}

    #[utoipa::path(post, path = "/api/v1/audit/batch", tag = "write",
        request_body(content = BatchRequest, content_type = "application/json"),
        params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[!-~]{1,255}$", description = "1–255 visible ASCII characters, scoped to the caller")),
        responses((status = 201, body = BatchResponse, description = "every record stored, in one transaction"),
                  (status = 400, body = ErrorBody, description = "any invalid item: nothing is written, every violation is listed under `records[i]`"),
                  (status = 409, body = ErrorBody, description = "`DUPLICATE_AUDIT`: the Idempotency-Key was used with another body")))]
    pub fn batch() {}

    #[utoipa::path(get, path = "/api/v1/audit/{kind}/{id}", tag = "read",
        params(("kind" = ds_domain::kind::Kind, Path), ("id" = i64, Path)),
        responses((status = 200, body = RecordResponse),
                  (status = 400, body = ErrorBody, description = "`id` is not an integer"),
                  (status = 404, body = ErrorBody, description = "no record of this kind with this id")))]
    pub fn get_record() {}

    #[utoipa::path(get, path = "/api/v1/audit/trail/{correlationId}", tag = "read",
        params(("correlationId" = String, Path, pattern = r"^[a-z]+-[0-9]{4}-[0-9]{2}-[0-9]{2}-[a-z0-9]{6}$"),
               ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "records per page (default 1000)"),
               ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page of this trail, as it came")),
        responses((status = 200, body = TrailResponse, description = "a page of the trail, oldest first (`createdAt`, then `id`)"),
                  (status = 400, body = ErrorBody, description = "a malformed correlation id, `limit` out of range, an unknown or repeated parameter, or a cursor of another trail or endpoint")))]
    pub fn trail() {}

    #[utoipa::path(get, path = "/api/v1/audit/records", tag = "read",
        params(("kind" = Option<ds_domain::kind::Kind>, Query, description = "records of this kind"),
               ("namespace" = Option<String>, Query, min_length = 1, max_length = 63, pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description = "records of this namespace"),
               ("phase" = Option<ds_domain::kind::Phase>, Query, description = "records in this phase"),
               ("correlationId" = Option<String>, Query, pattern = r"^[a-z]+-[0-9]{4}-[0-9]{2}-[0-9]{2}-[a-z0-9]{6}$", description = "records of this trail"),
               ("since" = Option<String>, Query, format = DateTime, description = "records received at or after (RFC 3339 with offset)"),
               ("until" = Option<String>, Query, format = DateTime, description = "records received before (RFC 3339 with offset; after `since`)"),
               ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "records per page (default 100)"),
               ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page, with the same filters")),
        responses((status = 200, body = ListResponse, description = "a page of the records that pass every filter, newest first (`receivedAt`, then `id`)"),
                  (status = 400, body = ErrorBody, description = "a filter that breaks its rule, `limit` out of range, `until` not after `since`, an unknown or repeated parameter, or a cursor of other filters or another endpoint; every violation is listed")))]
    pub fn list() {}

    #[utoipa::path(post, path = "/api/v1/audit/search", tag = "read",
        request_body(content = SearchBody, content_type = "application/json"),
        responses((status = 200, body = SearchResponse, description = "the most similar records, best first"),
                  (status = 400, body = ErrorBody, description = "invalid JSON, or a search that breaks a rule (a vector of another dimension included): every violation is listed")))]
    pub fn search() {}

    #[utoipa::path(get, path = "/api/v1/audit/export", tag = "integrity",
        params(("since" = Option<String>, Query, format = DateTime, description = "records received at or after (RFC 3339 with offset)"),
               ("until" = Option<String>, Query, format = DateTime, description = "records received before (RFC 3339 with offset)"),
               ("correlationId" = Option<String>, Query, pattern = r"^[a-z]+-[0-9]{4}-[0-9]{2}-[0-9]{2}-[a-z0-9]{6}$", description = "one trail"),
               ("kinds" = Option<String>, Query, pattern = r"^ *(remediation|aianalysis|workflow|execution) *(, *(remediation|aianalysis|workflow|execution) *)*$", description = "comma-separated kinds"),
               ("cursor" = Option<u64>, Query, minimum = 0, maximum = 9223372036854775807_i64, description = "the log index to start from (default 0)"),
               ("limit" = Option<u64>, Query, minimum = 1, maximum = 9223372036854775807_i64, description = "at most this many lines")),
        responses((status = 200, content_type = "application/x-ndjson", description = "one leaf per line in log order: `{logIndex, leafHash, kind, id, receivedAt, record}` (`record` null when the store no longer holds it), up to the latest signed checkpoint at the request (`X-Log-Tree-Size`), then on to the one latest when it gets there (verify against the checkpoint whose size is the line count)"),
                  (status = 400, body = ErrorBody, description = "a parameter that breaks its rule, unknown or repeated")))]
    pub fn export() {}

    #[utoipa::path(get, path = "/api/v1/log/checkpoint", tag = "integrity",
        params(("size" = Option<u64>, Query, minimum = 0, maximum = 9223372036854775807_i64, description = "the kept checkpoint of this tree size (default: the latest)")),
        responses((status = 200, content_type = "text/plain", description = "a C2SP signed note: origin, tree size, base64 root hash, Ed25519 signature line(s)"),
                  (status = 400, body = ErrorBody, description = "a parameter that breaks its rule, unknown or repeated"),
                  (status = 404, body = ErrorBody, description = "no checkpoint (of that size) yet")))]
    pub fn checkpoint() {}

    #[utoipa::path(get, path = "/api/v1/log/proof/inclusion", tag = "integrity",
        params(("kind" = ds_domain::kind::Kind, Query), ("id" = i64, Query, minimum = 0),
               ("treeSize" = Option<u64>, Query, minimum = 0, maximum = 9223372036854775807_i64, description = "the size of a signed checkpoint (default: the latest)")),
        responses((status = 200, body = InclusionResponse),
                  (status = 400, body = ErrorBody, description = "a parameter that breaks its rule, unknown or repeated; a tree size that is no kept checkpoint"),
                  (status = 404, body = ErrorBody, description = "no record of this kind with this id, or no checkpoint yet"),
                  (status = 409, body = ErrorBody, description = "`NOT_YET_INTEGRATED`: stored, not yet in a signed checkpoint (`Retry-After`)")))]
    pub fn inclusion() {}

    #[utoipa::path(get, path = "/api/v1/log/proof/consistency", tag = "integrity",
        params(("from" = u64, Query, minimum = 1, maximum = 9223372036854775807_i64, description = "the size of a signed checkpoint, ≥ 1"), ("to" = u64, Query, minimum = 1, maximum = 9223372036854775807_i64, description = "the size of a later signed checkpoint")),
        responses((status = 200, body = ConsistencyResponse),
                  (status = 400, body = ErrorBody, description = "a parameter that breaks its rule, unknown or repeated; sizes that are no kept checkpoints, or `from` > `to`"),
                  (status = 404, body = ErrorBody, description = "no checkpoint yet")))]
    pub fn consistency() {}

    #[utoipa::path(post, path = "/api/v1/holds", tag = "holds",
        request_body(content = HoldBody, content_type = "application/json"),
        responses((status = 201, body = HoldResponse, description = "placed"),
                  (status = 400, body = ErrorBody, description = "invalid JSON, or a hold that breaks a rule: every violation is listed")))]
    pub fn place_hold() {}

    #[utoipa::path(delete, path = "/api/v1/holds/{id}", tag = "holds",
        params(("id" = i64, Path, minimum = 1)),
        request_body(content = ReleaseBody, content_type = "application/json"),
        responses((status = 200, body = HoldResponse, description = "released now, or before (the recorded release, unchanged)"),
                  (status = 400, body = ErrorBody, description = "invalid JSON, a release that breaks a rule, or an id that is not a positive integer"),
                  (status = 404, body = ErrorBody, description = "no hold with this id")))]
    pub fn release_hold() {}

    #[utoipa::path(get, path = "/api/v1/holds", tag = "holds",
        params(("active" = Option<bool>, Query, description = "only holds not released")),
        responses((status = 200, body = HoldsResponse),
                  (status = 400, body = ErrorBody, description = "a parameter that breaks its rule, unknown or repeated")))]
    pub fn list_holds() {}

    #[utoipa::path(get, path = "/api/v1/openapi.json", tag = "read",
        responses((status = 200, description = "this document")))]
    pub fn openapi() {}

    #[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = HealthResponse)))]
    pub fn healthz() {}

    #[utoipa::path(get, path = "/readyz", tag = "operations",
        responses((status = 200, body = ReadyResponse), (status = 503, body = ReadyResponse)))]
    pub fn readyz() {}
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Kubernaut datastorage",
        description = "The audit-trail store of the Kubernaut platform. docs/api.md in the repository explains every rule; this document states each one that a JSON Schema can."
    ),
    paths(
        paths::remediation,
        paths::aianalysis,
        paths::workflow,
        paths::execution,
        paths::batch,
        paths::get_record,
        paths::search,
        paths::trail,
        paths::list,
        paths::export,
        paths::checkpoint,
        paths::inclusion,
        paths::consistency,
        paths::place_hold,
        paths::release_hold,
        paths::list_holds,
        paths::openapi,
        paths::healthz,
        paths::readyz
    ),
    components(schemas(
        ErrorBody,
        WriteResponse,
        BatchResponse,
        RecordResponse,
        TrailResponse,
        ListResponse,
        InclusionResponse,
        ConsistencyResponse,
        HoldBody,
        ReleaseBody,
        HoldResponse,
        HoldsResponse,
        CommonInput,
        ds_domain::record::RemediationInput,
        ds_domain::record::AiAnalysisInput,
        ds_domain::record::WorkflowInput,
        ds_domain::record::ExecutionInput
    ))
)]
struct ApiDoc;

/// What the document depends on in a deployment.
#[derive(Debug, Clone, Copy)]
pub struct Deployment {
    /// The embedding dimension: the length of a search `vector`.
    pub dimension: usize,
    /// The most records of a batch.
    pub batch_items: usize,
}

/// The four record bodies: the kind's schema, its own fields and the common ones.
const RECORDS: [(&str, &str, Kind); 4] = [
    ("RemediationRecord", "RemediationInput", Kind::Remediation),
    ("AiAnalysisRecord", "AiAnalysisInput", Kind::AiAnalysis),
    ("WorkflowRecord", "WorkflowInput", Kind::Workflow),
    ("ExecutionRecord", "ExecutionInput", Kind::Execution),
];

/// The operations answered for each kind, to link a write to its reads.
const WRITES: [(&str, &str); 4] = [
    ("remediation", "remediation"),
    ("aianalysis", "aianalysis"),
    ("workflow", "workflow"),
    ("execution", "execution"),
];

/// The document of a deployment, as served.
pub fn document(d: Deployment) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    records(&mut doc);
    search(&mut doc, d.dimension);
    batch(&mut doc, d.batch_items);
    holds(&mut doc);
    refusals(&mut doc);
    links(&mut doc);
    security(&mut doc);
    doc
}

/// Every `/api/` operation takes a Kubernetes bearer token (a ServiceAccount token, checked with
/// TokenReview, its access with SubjectAccessReview); the probes take none.
fn security(doc: &mut Value) {
    doc["components"]["securitySchemes"] = json!({
        "kubernetesBearer": {
            "type": "http", "scheme": "bearer",
            "description": "a Kubernetes token (e.g. a projected ServiceAccount token for the service's audience); with `auth.mode = none` (loopback only) none is needed"
        }
    });
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let guarded = path.starts_with("/api/");
        for op in item
            .as_object_mut()
            .into_iter()
            .flat_map(|o| o.values_mut())
        {
            op["security"] = if guarded {
                json!([{"kubernetesBearer": []}])
            } else {
                json!([])
            };
        }
    }
}

/// The schema of an unknown field's value: any JSON without the NUL character, which PostgreSQL's
/// `jsonb` cannot hold, in a string or a key at any depth.
fn unknown_value() -> Value {
    json!({
        "description": "an unknown field's value, kept verbatim: any JSON without the NUL character (U+0000) in a string or key at any depth",
        "anyOf": [
            {"type": "string", "pattern": NO_NUL},
            {"type": ["number", "boolean", "null"]},
            {"type": "array", "items": {"$ref": "#/components/schemas/UnknownFieldValue"}},
            {"type": "object", "propertyNames": {"pattern": NO_NUL},
             "additionalProperties": {"$ref": "#/components/schemas/UnknownFieldValue"}}
        ]
    })
}

const NO_NUL: &str = r"^[^\u0000]*$";

/// Each record body as one object: the common fields and the kind's, required ones required; any other
/// field is kept verbatim unless it is one the service sets (`RESERVED_FIELDS`) or holds NUL.
fn records(doc: &mut Value) {
    let schemas = &mut doc["components"]["schemas"];
    let common = schemas["CommonInput"].clone();
    for (name, input, kind) in RECORDS {
        let own = schemas[input].clone();
        let mut properties = common["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        properties.extend(own["properties"].as_object().cloned().unwrap_or_default());
        // The names the service sets may not be sent: a property that no value satisfies.
        for reserved in RESERVED_FIELDS {
            properties.insert(reserved.to_owned(), json!(false));
        }
        let mut required: Vec<Value> = common["required"].as_array().cloned().unwrap_or_default();
        required.extend(own["required"].as_array().cloned().unwrap_or_default());
        schemas[name] = json!({
            "type": "object",
            "description": format!(
                "A {kind} record: the common fields (contract §2.1) and the kind's own. A field the kind does not define is kept verbatim (§2.6), except the names the service sets and names or strings holding NUL. Rules that span fields: `startedAt` ≥ `createdAt`; `completedAt` ≥ `startedAt` (or ≥ `createdAt` without `startedAt`){}.",
                if kind == Kind::Workflow { "; `currentStep` ≤ `stepCount`; `completedCount` + `failedCount` + `skippedCount` ≤ `stepCount`; each step's `completedAt` ≥ its `startedAt`" } else { "" }
            ),
            "properties": properties,
            "required": required,
            "propertyNames": {"pattern": NO_NUL},
            "additionalProperties": {"$ref": "#/components/schemas/UnknownFieldValue"},
        });
    }
    for (_, input, _) in RECORDS {
        if let Some(m) = schemas.as_object_mut() {
            m.remove(input);
        }
    }
    if let Some(m) = schemas.as_object_mut() {
        m.remove("CommonInput");
        m.insert("UnknownFieldValue".into(), unknown_value());
    }
}

/// The search body: exactly one of `query` (text that is not blank) and `vector` (of the deployment's
/// dimension); unknown fields refused.
fn search(doc: &mut Value, dimension: usize) {
    let s = &mut doc["components"]["schemas"]["SearchBody"];
    s["additionalProperties"] = json!(false);
    s["oneOf"] = json!([
        {"required": ["query"], "properties": {"query": {"type": "string"}}},
        {"required": ["vector"], "properties": {"vector": {"type": "array"}}}
    ]);
    s["properties"]["query"]["pattern"] = json!(NOT_BLANK_PATTERN);
    s["properties"]["query"]["maxLength"] = json!(MAX_QUERY_CHARS);
    s["properties"]["vector"]["items"] = json!({
        "type": "number", "minimum": -f64::from(f32::MAX), "maximum": f64::from(f32::MAX),
        "description": "a finite number of single precision"
    });
    // Not (about) all zeros: a zero vector has no direction to compare.
    let smallest = f64::from(f32::MIN_POSITIVE);
    s["properties"]["vector"]["contains"] =
        json!({"anyOf": [{"minimum": smallest}, {"maximum": -smallest}]});
    s["properties"]["vector"]["minItems"] = json!(dimension);
    s["properties"]["vector"]["maxItems"] = json!(dimension);
    s["properties"]["vector"]["description"] = json!(format!(
        "a vector of the model's dimension ({dimension}); or give `query`"
    ));
}

/// The batch body: 1 to `batch_items` items, each a kind and a record of that kind.
fn batch(doc: &mut Value, batch_items: usize) {
    let items: Vec<Value> = RECORDS
        .iter()
        .map(|(name, _, kind)| {
            json!({
                "type": "object",
                "properties": {
                    "kind": {"type": "string", "enum": [kind.as_str()]},
                    "record": {"$ref": format!("#/components/schemas/{name}")}
                },
                "required": ["kind", "record"],
                "additionalProperties": false
            })
        })
        .collect();
    let schemas = &mut doc["components"]["schemas"];
    schemas["BatchRequest"] = json!({
        "type": "object",
        "description": format!("1 to {batch_items} records of any kinds, written all or nothing (one transaction)."),
        "properties": {
            "records": {"type": "array", "minItems": 1, "maxItems": batch_items, "items": {"oneOf": items}}
        },
        "required": ["records"],
        "additionalProperties": false
    });
    if let Some(m) = schemas.as_object_mut() {
        m.remove("BatchItem");
    }
}

/// Hold bodies refuse unknown fields; a reason is not blank.
fn holds(doc: &mut Value) {
    for name in ["HoldBody", "ReleaseBody"] {
        let s = &mut doc["components"]["schemas"][name];
        s["additionalProperties"] = json!(false);
        s["properties"]["reason"]["pattern"] = json!(NOT_BLANK_PATTERN);
        s["properties"]["reason"]["maxLength"] = json!(MAX_REASON_CHARS);
    }
}

fn error_example(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}, "timestamp": "2026-01-01T00:00:00.000000Z",
           "path": "/api/v1/audit/remediation", "correlationId": "01a2302f-5ccd-7436-83ce-3b1c0f294626"})
}

/// The refusals every API operation can answer, whoever its handler: the gate's (401, 403, 429 with
/// `Retry-After`), the service's (503 with `Retry-After`: starting, shutting down, overloaded, a
/// dependency away), 405 on a method the path does not take, and for a body 413 and 415.
fn refusals(doc: &mut Value) {
    let retry_after = json!({"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer", "minimum": 0}}});
    let error = |description: &str, code: &str, message: &str, headers: Option<&Value>| {
        let mut r = json!({
            "description": description,
            "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ErrorBody"},
                "example": error_example(code, message)
            }}
        });
        if let Some(h) = headers {
            r["headers"] = h.clone();
        }
        r
    };
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        if !path.starts_with("/api/") {
            continue;
        }
        let Some(ops) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in ops.iter_mut() {
            let has_body = op.get("requestBody").is_some();
            let responses = &mut op["responses"];
            let mut add = |status: &str, r: Value| {
                if responses.get(status).is_none() {
                    responses[status] = r;
                }
            };
            add(
                "401",
                error(
                    "no usable bearer token, or one the identity provider rejected",
                    "UNAUTHORIZED",
                    "a bearer token is required",
                    None,
                ),
            );
            add(
                "403",
                error(
                    "authenticated, but not allowed this access",
                    "FORBIDDEN",
                    "not allowed",
                    None,
                ),
            );
            add(
                "405",
                error(
                    "a method this path does not take",
                    "METHOD_NOT_ALLOWED",
                    "method not allowed",
                    None,
                ),
            );
            add(
                "431",
                error(
                    "the request's headers are larger than the limit",
                    "BAD_REQUEST",
                    "request headers too large",
                    None,
                ),
            );
            add(
                "429",
                error(
                    "over the caller's rate, or too many failed authentications from this address",
                    "RATE_LIMIT_EXCEEDED",
                    "rate limit exceeded",
                    Some(&retry_after),
                ),
            );
            add(
                "503",
                error(
                    "starting, shutting down, overloaded or a dependency unavailable",
                    "SERVICE_UNAVAILABLE",
                    "the database is unavailable",
                    Some(&retry_after),
                ),
            );
            if has_body || method == "post" {
                add(
                    "413",
                    error(
                        "the body is larger than the route's limit",
                        "PAYLOAD_TOO_LARGE",
                        "request body too large",
                        None,
                    ),
                );
                add(
                    "415",
                    error(
                        "Content-Type is not application/json",
                        "UNSUPPORTED_MEDIA_TYPE",
                        "Content-Type must be application/json",
                        None,
                    ),
                );
            }
            if op.get("parameters").is_some() || has_body {
                let responses = &mut op["responses"];
                if responses.get("400").is_none() {
                    responses["400"] = error(
                        "a parameter that breaks its rule",
                        "VALIDATION_ERROR",
                        "invalid parameter",
                        None,
                    );
                }
            }
        }
    }
}

/// OpenAPI links from each write to the reads of what it wrote, for clients and stateful testers.
fn links(doc: &mut Value) {
    for (path_kind, op_kind) in WRITES {
        let path = format!("/api/v1/audit/{path_kind}");
        let created = &mut doc["paths"][path.as_str()]["post"]["responses"]["201"];
        created["links"] = json!({
            "GetRecord": {"operationId": "get_record", "parameters": {"kind": op_kind, "id": "$response.body#/id"},
                          "description": "the record as stored"},
            "GetTrail": {"operationId": "trail", "parameters": {"correlationId": "$request.body#/correlationId"},
                         "description": "the trail the record belongs to"},
            "GetInclusionProof": {"operationId": "inclusion", "parameters": {"kind": op_kind, "id": "$response.body#/id"},
                                  "description": "its inclusion proof, once a signed checkpoint holds it (409 until then)"}
        });
    }
    doc["paths"]["/api/v1/audit/batch"]["post"]["responses"]["201"]["links"] = json!({
        "GetFirstRecord": {"operationId": "get_record",
                           "parameters": {"kind": "$request.body#/records/0/kind", "id": "$response.body#/results/0/id"},
                           "description": "the batch's first record as stored"}
    });
    doc["paths"]["/api/v1/holds"]["post"]["responses"]["201"]["links"] = json!({
        "ReleaseHold": {"operationId": "release_hold", "parameters": {"id": "$response.body#/id"},
                        "description": "release this hold"},
        "GetTrail": {"operationId": "trail", "parameters": {"correlationId": "$response.body#/correlationId"},
                     "description": "the held trail"}
    });
}

pub async fn serve(
    _auth: crate::auth::Authorized<crate::auth::Read>,
    state: actix_web::web::Data<crate::AppState>,
) -> HttpResponse {
    HttpResponse::Ok().json(document(Deployment {
        dimension: state.service.embedder().dimension(),
        batch_items: state.limits.batch_items,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{PUBLIC_ROUTES, api_routes};
    use std::collections::BTreeSet;

    const TEST_DEPLOYMENT: Deployment = Deployment {
        dimension: 384,
        batch_items: 1000,
    };

    /// The document describes exactly the routes the router has: every registered route (from the same
    /// declaration that builds the router) and the probes, no more; and every guarded operation lists
    /// the gate's refusals.
    #[test]
    fn the_document_lists_exactly_the_registered_routes_and_their_refusals() {
        let doc = document(TEST_DEPLOYMENT);
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                documented.insert((method.to_uppercase(), path.clone()));
                if path.starts_with("/api/") {
                    for status in ["401", "403", "429", "503"] {
                        assert!(
                            op["responses"].get(status).is_some(),
                            "{method} {path} does not document {status}"
                        );
                    }
                }
            }
        }
        let mut registered: BTreeSet<(String, String)> = api_routes()
            .into_iter()
            .map(|r| {
                // actix's `{correlation_id}` is the document's `{correlationId}`.
                let pattern = r.pattern.replace("{correlation_id}", "{correlationId}");
                (r.method.to_string(), pattern)
            })
            .collect();
        for p in PUBLIC_ROUTES {
            registered.insert(("GET".to_owned(), p.to_owned()));
        }
        assert_eq!(documented, registered);
    }

    /// The query parameters of the paged reads are the domain's, with the domain's bounds.
    #[test]
    fn the_paged_reads_document_the_parameters_the_domain_accepts() {
        use ds_domain::query::{LIST_PARAMETERS, MAX_LIMIT, TRAIL_PARAMETERS};
        let doc = document(TEST_DEPLOYMENT);
        for (path, known) in [
            ("/api/v1/audit/records", &LIST_PARAMETERS[..]),
            ("/api/v1/audit/trail/{correlationId}", &TRAIL_PARAMETERS[..]),
        ] {
            let op = &doc["paths"][path]["get"];
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let query: BTreeSet<&str> = params
                .iter()
                .filter(|p| p["in"] == "query")
                .filter_map(|p| p["name"].as_str())
                .collect();
            assert_eq!(query, known.iter().copied().collect(), "{path}");
            let limit = params.iter().find(|p| p["name"] == "limit");
            let schema = &limit.map(|l| l["schema"].clone()).unwrap_or_default();
            assert_eq!(schema["minimum"], 1, "{path}: {schema}");
            assert_eq!(schema["maximum"], MAX_LIMIT, "{path}: {schema}");
            for status in ["200", "400"] {
                assert!(op["responses"].get(status).is_some(), "{path} {status}");
            }
        }
        let next = &doc["components"]["schemas"]["ListResponse"]["properties"]["nextCursor"];
        assert!(next.is_object(), "{next}");
    }
}

#[cfg(test)]
#[path = "openapi_rules_tests.rs"]
mod rules_tests;
