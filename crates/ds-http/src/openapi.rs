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
                  (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 503, body = ErrorBody)))]
    pub fn remediation() {}

    #[utoipa::path(post, path = "/api/v1/audit/aianalysis", tag = "write",
        request_body(content = AiAnalysisRecord, content_type = "application/json"),
        params(("Idempotency-Key" = Option<String>, Header, description = "≤ 255 visible ASCII characters, scoped to the caller")),
        responses((status = 201, body = WriteResponse), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
                  (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 503, body = ErrorBody)))]
    pub fn aianalysis() {}

    #[utoipa::path(post, path = "/api/v1/audit/workflow", tag = "write",
        request_body(content = WorkflowRecord, content_type = "application/json"),
        params(("Idempotency-Key" = Option<String>, Header, description = "≤ 255 visible ASCII characters, scoped to the caller")),
        responses((status = 201, body = WriteResponse), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
                  (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 503, body = ErrorBody)))]
    pub fn workflow() {}

    #[utoipa::path(post, path = "/api/v1/audit/execution", tag = "write",
        request_body(content = ExecutionRecord, content_type = "application/json"),
        params(("Idempotency-Key" = Option<String>, Header, description = "≤ 255 visible ASCII characters, scoped to the caller")),
        responses((status = 201, body = WriteResponse), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
                  (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 503, body = ErrorBody)))]
    pub fn execution() {}

    #[utoipa::path(post, path = "/api/v1/audit/batch", tag = "write",
        request_body(content = BatchRequest, content_type = "application/json"),
        params(("Idempotency-Key" = Option<String>, Header, description = "≤ 255 visible ASCII characters, scoped to the caller")),
        responses((status = 201, body = BatchResponse), (status = 400, body = ErrorBody, description = "any invalid item: nothing is written"),
                  (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
    pub fn batch() {}

    #[utoipa::path(get, path = "/api/v1/audit/{kind}/{id}", tag = "read",
        params(("kind" = String, Path, description = "remediation | aianalysis | workflow | execution"), ("id" = i64, Path)),
        responses((status = 200, body = RecordResponse), (status = 404, body = ErrorBody)))]
    pub fn get_record() {}

    #[utoipa::path(get, path = "/api/v1/audit/trail/{correlationId}", tag = "read",
        params(("correlationId" = String, Path)),
        responses((status = 200, body = TrailResponse), (status = 400, body = ErrorBody)))]
    pub fn trail() {}

    #[utoipa::path(post, path = "/api/v1/audit/search", tag = "read",
        request_body(content = SearchBody, content_type = "application/json"),
        responses((status = 200, body = SearchResponse), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
    pub fn search() {}

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
        paths::healthz,
        paths::readyz
    ),
    components(schemas(ErrorBody, WriteResponse, BatchResponse, RecordResponse, TrailResponse))
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub async fn serve() -> HttpResponse {
    HttpResponse::Ok().json(document())
}
