//! The OpenAPI 3 document of the API, generated from the code with utoipa and served at
//! `GET /api/v1/openapi.json`.

use crate::dto::*;
use actix_web::HttpResponse;
use utoipa::OpenApi;

/// Paths documented here have no handler of their own: their shapes are what the handlers answer.
#[allow(dead_code)]
mod paths {
    use super::*;

    #[utoipa::path(post, path = "/api/v1/audit/remediation", tag = "write",
        request_body(content = RemediationRecord, content_type = "application/json"),
        params(("Idempotency-Key" = Option<String>, Header, description = "≤ 255 visible ASCII characters, scoped to the caller"),
               ("X-Correlation-ID" = Option<String>, Header, description = "echoed back; generated when absent")),
        responses((status = 201, body = WriteResponse), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
                  (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 503, body = ErrorBody),
                  (status = 401, body = ErrorBody, description = "no usable bearer token, or one the identity provider rejected"), (status = 403, body = ErrorBody, description = "authenticated, but not allowed this access"), (status = 429, body = ErrorBody, description = "over the caller's rate, or too many failed authentications from this address (`Retry-After`)")))]
    pub fn remediation() {}

    #[utoipa::path(post, path = "/api/v1/audit/aianalysis", tag = "write",
        request_body(content = AiAnalysisRecord, content_type = "application/json"),
        params(("Idempotency-Key" = Option<String>, Header, description = "≤ 255 visible ASCII characters, scoped to the caller")),
        responses((status = 201, body = WriteResponse), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
                  (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 503, body = ErrorBody),
                  (status = 401, body = ErrorBody, description = "no usable bearer token, or one the identity provider rejected"), (status = 403, body = ErrorBody, description = "authenticated, but not allowed this access"), (status = 429, body = ErrorBody, description = "over the caller's rate, or too many failed authentications from this address (`Retry-After`)")))]
    pub fn aianalysis() {}

    #[utoipa::path(post, path = "/api/v1/audit/workflow", tag = "write",
        request_body(content = WorkflowRecord, content_type = "application/json"),
        params(("Idempotency-Key" = Option<String>, Header, description = "≤ 255 visible ASCII characters, scoped to the caller")),
        responses((status = 201, body = WriteResponse), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
                  (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 503, body = ErrorBody),
                  (status = 401, body = ErrorBody, description = "no usable bearer token, or one the identity provider rejected"), (status = 403, body = ErrorBody, description = "authenticated, but not allowed this access"), (status = 429, body = ErrorBody, description = "over the caller's rate, or too many failed authentications from this address (`Retry-After`)")))]
    pub fn workflow() {}

    #[utoipa::path(post, path = "/api/v1/audit/execution", tag = "write",
        request_body(content = ExecutionRecord, content_type = "application/json"),
        params(("Idempotency-Key" = Option<String>, Header, description = "≤ 255 visible ASCII characters, scoped to the caller")),
        responses((status = 201, body = WriteResponse), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
                  (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 503, body = ErrorBody),
                  (status = 401, body = ErrorBody, description = "no usable bearer token, or one the identity provider rejected"), (status = 403, body = ErrorBody, description = "authenticated, but not allowed this access"), (status = 429, body = ErrorBody, description = "over the caller's rate, or too many failed authentications from this address (`Retry-After`)")))]
    pub fn execution() {}

    #[utoipa::path(post, path = "/api/v1/audit/batch", tag = "write",
        request_body(content = BatchRequest, content_type = "application/json"),
        params(("Idempotency-Key" = Option<String>, Header, description = "≤ 255 visible ASCII characters, scoped to the caller")),
        responses((status = 201, body = BatchResponse), (status = 400, body = ErrorBody, description = "any invalid item: nothing is written"),
                  (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody),
                  (status = 401, body = ErrorBody, description = "no usable bearer token, or one the identity provider rejected"), (status = 403, body = ErrorBody, description = "authenticated, but not allowed this access"), (status = 429, body = ErrorBody, description = "over the caller's rate, or too many failed authentications from this address (`Retry-After`)"), (status = 415, body = ErrorBody, description = "Content-Type is not application/json")))]
    pub fn batch() {}

    #[utoipa::path(get, path = "/api/v1/audit/{kind}/{id}", tag = "read",
        params(("kind" = String, Path, description = "remediation | aianalysis | workflow | execution"), ("id" = i64, Path)),
        responses((status = 200, body = RecordResponse), (status = 404, body = ErrorBody),
                  (status = 401, body = ErrorBody, description = "no usable bearer token, or one the identity provider rejected"), (status = 403, body = ErrorBody, description = "authenticated, but not allowed this access"), (status = 429, body = ErrorBody, description = "over the caller's rate, or too many failed authentications from this address (`Retry-After`)"), (status = 503, body = ErrorBody, description = "starting, shutting down, overloaded or a dependency unavailable (`Retry-After`)")))]
    pub fn get_record() {}

    #[utoipa::path(get, path = "/api/v1/audit/trail/{correlationId}", tag = "read",
        params(("correlationId" = String, Path, pattern = r"^[a-z]+-[0-9]{4}-[0-9]{2}-[0-9]{2}-[a-z0-9]{6}$"),
               ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "records per page (default 1000)"),
               ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page of this trail, as it came")),
        responses((status = 200, body = TrailResponse, description = "a page of the trail, oldest first (`createdAt`, then `id`)"),
                  (status = 400, body = ErrorBody, description = "a malformed correlation id, `limit` out of range, an unknown or repeated parameter, or a cursor of another trail or endpoint"),
                  (status = 401, body = ErrorBody, description = "no usable bearer token, or one the identity provider rejected"), (status = 403, body = ErrorBody, description = "authenticated, but not allowed this access"), (status = 429, body = ErrorBody, description = "over the caller's rate, or too many failed authentications from this address (`Retry-After`)"), (status = 503, body = ErrorBody, description = "starting, shutting down, overloaded or a dependency unavailable (`Retry-After`)")))]
    pub fn trail() {}

    #[utoipa::path(get, path = "/api/v1/audit/records", tag = "read",
        params(("kind" = Option<ds_domain::kind::Kind>, Query, description = "records of this kind"),
               ("namespace" = Option<String>, Query, pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 63, description = "records of this namespace"),
               ("phase" = Option<ds_domain::kind::Phase>, Query, description = "records in this phase"),
               ("correlationId" = Option<String>, Query, pattern = r"^[a-z]+-[0-9]{4}-[0-9]{2}-[0-9]{2}-[a-z0-9]{6}$", description = "records of this trail"),
               ("since" = Option<String>, Query, format = DateTime, description = "records received at or after (RFC 3339 with offset)"),
               ("until" = Option<String>, Query, format = DateTime, description = "records received before (RFC 3339 with offset; after `since`)"),
               ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "records per page (default 100)"),
               ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page, with the same filters")),
        responses((status = 200, body = ListResponse, description = "a page of the records that pass every filter, newest first (`receivedAt`, then `id`)"),
                  (status = 400, body = ErrorBody, description = "a filter that breaks its rule, `limit` out of range, `until` not after `since`, an unknown or repeated parameter, or a cursor of other filters or another endpoint; every violation is listed"),
                  (status = 401, body = ErrorBody, description = "no usable bearer token, or one the identity provider rejected"), (status = 403, body = ErrorBody, description = "authenticated, but not allowed this access"), (status = 429, body = ErrorBody, description = "over the caller's rate, or too many failed authentications from this address (`Retry-After`)"), (status = 503, body = ErrorBody, description = "starting, shutting down, overloaded or a dependency unavailable (`Retry-After`)")))]
    pub fn list() {}

    #[utoipa::path(post, path = "/api/v1/audit/search", tag = "read",
        request_body(content = SearchBody, content_type = "application/json"),
        responses((status = 200, body = SearchResponse), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody),
                  (status = 401, body = ErrorBody, description = "no usable bearer token, or one the identity provider rejected"), (status = 403, body = ErrorBody, description = "authenticated, but not allowed this access"), (status = 429, body = ErrorBody, description = "over the caller's rate, or too many failed authentications from this address (`Retry-After`)"), (status = 413, body = ErrorBody, description = "the body is larger than the route's limit"), (status = 415, body = ErrorBody, description = "Content-Type is not application/json")))]
    pub fn search() {}

    #[utoipa::path(get, path = "/api/v1/audit/export", tag = "integrity",
        params(("since" = Option<String>, Query, description = "records received at or after (RFC 3339)"),
               ("until" = Option<String>, Query, description = "records received before (RFC 3339)"),
               ("correlationId" = Option<String>, Query, description = "one trail"),
               ("kinds" = Option<String>, Query, description = "comma-separated kinds"),
               ("cursor" = Option<u64>, Query, description = "the log index to start from (default 0)"),
               ("limit" = Option<u64>, Query, description = "at most this many lines (≥ 1)")),
        responses((status = 200, content_type = "application/x-ndjson", description = "one leaf per line in log order: `{logIndex, leafHash, kind, id, receivedAt, record}` (`record` null when the store no longer holds it), up to the latest signed checkpoint at the request (`X-Log-Tree-Size`), then on to the one latest when it gets there (verify against the checkpoint whose size is the line count)"),
                  (status = 400, body = ErrorBody), (status = 401, body = ErrorBody, description = "no usable bearer token, or one the identity provider rejected"), (status = 403, body = ErrorBody, description = "authenticated, but not allowed this access"), (status = 429, body = ErrorBody, description = "over the caller's rate, or too many failed authentications from this address (`Retry-After`)"), (status = 503, body = ErrorBody, description = "starting, shutting down, overloaded or a dependency unavailable (`Retry-After`)")))]
    pub fn export() {}

    #[utoipa::path(get, path = "/api/v1/log/checkpoint", tag = "integrity",
        params(("size" = Option<u64>, Query, description = "the kept checkpoint of this tree size (default: the latest)")),
        responses((status = 200, content_type = "text/plain", description = "a C2SP signed note: origin, tree size, base64 root hash, Ed25519 signature line(s)"),
                  (status = 400, body = ErrorBody), (status = 404, body = ErrorBody, description = "no checkpoint (of that size) yet"), (status = 401, body = ErrorBody, description = "no usable bearer token, or one the identity provider rejected"), (status = 403, body = ErrorBody, description = "authenticated, but not allowed this access"), (status = 429, body = ErrorBody, description = "over the caller's rate, or too many failed authentications from this address (`Retry-After`)"), (status = 503, body = ErrorBody, description = "starting, shutting down, overloaded or a dependency unavailable (`Retry-After`)")))]
    pub fn checkpoint() {}

    #[utoipa::path(get, path = "/api/v1/log/proof/inclusion", tag = "integrity",
        params(("kind" = String, Query, description = "remediation | aianalysis | workflow | execution"), ("id" = i64, Query),
               ("treeSize" = Option<u64>, Query, description = "the size of a signed checkpoint (default: the latest)")),
        responses((status = 200, body = InclusionResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
                  (status = 409, body = ErrorBody, description = "`NOT_YET_INTEGRATED`: stored, not yet in a signed checkpoint (`Retry-After`)"), (status = 401, body = ErrorBody, description = "no usable bearer token, or one the identity provider rejected"), (status = 403, body = ErrorBody, description = "authenticated, but not allowed this access"), (status = 429, body = ErrorBody, description = "over the caller's rate, or too many failed authentications from this address (`Retry-After`)"), (status = 503, body = ErrorBody, description = "starting, shutting down, overloaded or a dependency unavailable (`Retry-After`)")))]
    pub fn inclusion() {}

    #[utoipa::path(get, path = "/api/v1/log/proof/consistency", tag = "integrity",
        params(("from" = u64, Query, description = "the size of a signed checkpoint, ≥ 1"), ("to" = u64, Query, description = "the size of a later signed checkpoint")),
        responses((status = 200, body = ConsistencyResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody, description = "no usable bearer token, or one the identity provider rejected"), (status = 403, body = ErrorBody, description = "authenticated, but not allowed this access"), (status = 429, body = ErrorBody, description = "over the caller's rate, or too many failed authentications from this address (`Retry-After`)"), (status = 503, body = ErrorBody, description = "starting, shutting down, overloaded or a dependency unavailable (`Retry-After`)")))]
    pub fn consistency() {}

    #[utoipa::path(post, path = "/api/v1/holds", tag = "holds",
        request_body(content = HoldBody, content_type = "application/json"),
        responses((status = 201, body = HoldResponse), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
                  (status = 401, body = ErrorBody, description = "no usable bearer token, or one the identity provider rejected"), (status = 403, body = ErrorBody, description = "authenticated, but not allowed `create` on `legalholds`"), (status = 429, body = ErrorBody, description = "too many failed authentications from this address (`Retry-After`)"), (status = 503, body = ErrorBody, description = "starting, shutting down, overloaded or a dependency unavailable (`Retry-After`)")))]
    pub fn place_hold() {}

    #[utoipa::path(delete, path = "/api/v1/holds/{id}", tag = "holds",
        params(("id" = i64, Path, minimum = 1)),
        request_body(content = ReleaseBody, content_type = "application/json"),
        responses((status = 200, body = HoldResponse, description = "released now, or before (the recorded release, unchanged)"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
                  (status = 401, body = ErrorBody, description = "no usable bearer token, or one the identity provider rejected"), (status = 403, body = ErrorBody, description = "authenticated, but not allowed `delete` on `legalholds`"), (status = 429, body = ErrorBody, description = "too many failed authentications from this address (`Retry-After`)"), (status = 503, body = ErrorBody, description = "starting, shutting down, overloaded or a dependency unavailable (`Retry-After`)")))]
    pub fn release_hold() {}

    #[utoipa::path(get, path = "/api/v1/holds", tag = "holds",
        params(("active" = Option<bool>, Query, description = "only holds not released")),
        responses((status = 200, body = HoldsResponse), (status = 400, body = ErrorBody),
                  (status = 401, body = ErrorBody, description = "no usable bearer token, or one the identity provider rejected"), (status = 403, body = ErrorBody, description = "authenticated, but not allowed `list` on `legalholds`"), (status = 429, body = ErrorBody, description = "too many failed authentications from this address (`Retry-After`)"), (status = 503, body = ErrorBody, description = "starting, shutting down, overloaded or a dependency unavailable (`Retry-After`)")))]
    pub fn list_holds() {}

    #[utoipa::path(get, path = "/api/v1/openapi.json", tag = "read",
        responses((status = 200, description = "this document"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
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
        description = "The audit-trail store of the Kubernaut platform."
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
        HoldsResponse
    ))
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub async fn serve(_auth: crate::auth::Authorized<crate::auth::Read>) -> HttpResponse {
    HttpResponse::Ok().json(document())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{PUBLIC_ROUTES, api_routes};
    use std::collections::BTreeSet;

    /// The document describes exactly the routes the router has: every registered route (from the same
    /// declaration that builds the router) and the probes, no more; and every guarded operation lists
    /// the gate's refusals.
    #[test]
    fn the_document_lists_exactly_the_registered_routes_and_their_refusals() {
        let doc = serde_json::to_value(document()).unwrap_or_default();
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
        let doc = serde_json::to_value(document()).unwrap_or_default();
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
