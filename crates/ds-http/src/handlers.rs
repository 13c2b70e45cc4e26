//! Route handlers.

use crate::AppState;
use crate::auth::{Authorized, Read, Write};
use crate::dto::{
    BatchResponse, HealthResponse, ListResponse, ReadyResponse, RecordResponse, SearchResponse,
    SearchResult, TrailResponse, WriteResponse,
};
use crate::error::ApiError;
use crate::middleware::RequestContext;
use actix_web::http::header;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use ds_domain::error::AuditError;
use ds_domain::kind::Kind;
use ds_domain::ports::{ProviderHealth, StoredRecord};
use ds_domain::service::IdempotencyKey;
use ds_domain::{Timestamp, ValidRecord, Violation, parse_record};
use ds_metrics::labels::{Field, WriteKind, WriteStatus};
use serde_json::{Value, json};
use std::time::Instant;

/// The caller identity that idempotency keys are scoped to when no one is authenticated (auth mode
/// `none`); otherwise the authenticated username.
const ANONYMOUS: &str = "system:anonymous";

pub(crate) async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".into()))
}

/// `Content-Type: application/json` (parameters such as `charset=utf-8` allowed) or 415.
pub(crate) fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    match req.mime_type() {
        Ok(Some(m))
            if m.type_() == "application"
                && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json")) =>
        {
            Ok(())
        }
        _ => Err(ApiError::UnsupportedMediaType),
    }
}

/// True when the JSON text nests `[`/`{` deeper than `max` (strings skipped); checked before parsing so
/// a hostile body costs one linear scan, not a deep recursion.
fn nests_deeper_than(body: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Runs a use-case call holding a database slot (503 at once when none is free) and within the request
/// timeout (503 when it runs out; the dropped future rolls its transaction back).
pub(crate) async fn guarded<T>(
    state: &AppState,
    call: impl std::future::Future<Output = Result<T, AuditError>>,
) -> Result<T, ApiError> {
    let _slot = state.admission.db_slot()?;
    match actix_web::rt::time::timeout(state.limits.request_timeout, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ApiError::Timeout),
    }
}

fn with_rate(mut response: HttpResponse, rate: crate::admission::RateInfo) -> HttpResponse {
    if rate.limit > 0 {
        for (k, v) in rate.headers() {
            response.headers_mut().insert(k, v);
        }
    }
    response
}

pub(crate) fn parse_json_within(body: &[u8], max_depth: usize) -> Result<Value, ApiError> {
    if nests_deeper_than(body, max_depth) {
        return Err(ApiError::TooDeep(max_depth));
    }
    parse_json(body)
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let reason = match e.classify() {
            serde_json::error::Category::Eof => "the body ends before the JSON does".to_owned(),
            _ => format!("the body is not valid JSON: {e}"),
        };
        ApiError::Audit(AuditError::InvalidJson(reason))
    })
}

/// The `Idempotency-Key` header: ≤ 255 visible ASCII characters, scoped to the caller.
fn idempotency_key<A>(
    req: &HttpRequest,
    auth: &Authorized<A>,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(v) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::InvalidParameter(Violation::new(
            "Idempotency-Key",
            "format",
            "must be 1 to 255 visible ASCII characters",
        ))
    };
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    let caller = auth
        .caller()
        .map_or_else(|| ANONYMOUS.to_owned(), |c| c.username.clone());
    Ok(Some(IdempotencyKey {
        caller,
        key: s.to_owned(),
    }))
}

/// Counts each violation under its top-level field; a field the kind does not define (a client's own
/// name) is counted as `unknown`, so the label's values stay a closed set.
fn count_validation_failures(kind: Kind, err: &AuditError) {
    if let AuditError::Validation(violations) = err {
        for v in violations {
            ds_metrics::VALIDATION_FAILURES
                .with((kind, metric_field(kind, &v.field)))
                .increment(1);
        }
    }
}

/// The `field` label of a violation of `path`: its top-level field when `kind` defines it, else
/// `unknown`.
pub(crate) fn metric_field(kind: Kind, path: &str) -> Field {
    let top = path.split(['.', '[']).next().unwrap_or_default();
    ds_domain::record::defined_field(kind, top).map_or(Field::UNKNOWN, Field)
}

fn count_written(kind: Kind, r: &ValidRecord, status: WriteStatus) {
    ds_metrics::AUDIT_WRITES.with((kind, status)).increment(1);
    if !r.unknown.is_empty() {
        ds_metrics::UNKNOWN_FIELDS
            .with((kind,))
            .increment(r.unknown.len() as u64);
    }
}

/// Admission before the body: the caller is authorized (the extractor), within its rate, and the
/// service has a database slot free; only then is the body read, within its limit and the body budget.
pub(crate) async fn write_one(
    kind: Kind,
    auth: Authorized<Write>,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    require_json(&req)?;
    let key = idempotency_key(&req, &auth)?;
    let rate = state.admission.admit_writes(&req, 1)?;
    state.admission.check_capacity()?;
    let body = state
        .admission
        .read_body(&req, payload, state.limits.body_bytes)
        .await?;
    let record = parse_json_within(&body.bytes, state.limits.json_depth).and_then(|v| {
        parse_record(kind, v).map_err(|e| {
            count_validation_failures(kind, &e);
            ApiError::from(e)
        })
    })?;
    let counted = record.clone();
    let report = guarded(&state, state.service.write(vec![record], key)).await?;
    let outcome = report.outcomes.first().ok_or_else(|| {
        ApiError::Audit(AuditError::Store(ds_domain::ports::StoreError::Corrupt(
            "no outcome for the record".into(),
        )))
    })?;
    count_written(kind, &counted, status_label(outcome.status));
    ds_metrics::AUDIT_WRITE_DURATION_SECONDS
        .with((WriteKind::One(kind),))
        .record(started.elapsed().as_secs_f64());
    Ok(with_rate(
        HttpResponse::Created().json(WriteResponse::new(kind, outcome)),
        rate,
    ))
}

fn status_label(s: ds_domain::ports::WriteStatus) -> WriteStatus {
    match s {
        ds_domain::ports::WriteStatus::Created => WriteStatus::Created,
        ds_domain::ports::WriteStatus::Duplicate => WriteStatus::Duplicate,
    }
}

/// Validates a whole batch; every violation of every item is reported, under `records[i]`.
fn parse_batch(value: Value, max_items: usize) -> Result<Vec<ValidRecord>, AuditError> {
    let Value::Object(mut envelope) = value else {
        return Err(AuditError::InvalidJson(
            "a batch must be a JSON object {\"records\": [...]}".into(),
        ));
    };
    let mut violations = Vec::new();
    for k in envelope.keys().filter(|k| k.as_str() != "records") {
        violations.push(Violation::new(
            k.clone(),
            "unknownField",
            "a batch holds only `records`",
        ));
    }
    let items = match envelope.remove("records") {
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(AuditError::Validation(vec![Violation::new(
                "records",
                "type",
                "must be an array",
            )]));
        }
        None => {
            return Err(AuditError::Validation(vec![Violation::new(
                "records",
                "required",
                "is required",
            )]));
        }
    };
    if items.is_empty() || items.len() > max_items {
        violations.push(Violation::new(
            "records",
            if items.is_empty() {
                "minItems"
            } else {
                "maxItems"
            },
            format!("must hold 1 to {max_items} records, holds {}", items.len()),
        ));
        return Err(AuditError::Validation(violations));
    }
    let mut records = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let at = format!("records[{i}]");
        let Value::Object(mut item) = item else {
            violations.push(Violation::new(
                at,
                "type",
                "must be an object {\"kind\": ..., \"record\": {...}}",
            ));
            continue;
        };
        let kind = match item.remove("kind") {
            Some(Value::String(k)) => match k.parse::<Kind>() {
                Ok(kind) => Some(kind),
                Err(e) => {
                    violations.push(Violation::new(format!("{at}.kind"), "enum", e.to_string()));
                    None
                }
            },
            Some(_) => {
                violations.push(Violation::new(
                    format!("{at}.kind"),
                    "type",
                    "must be a string",
                ));
                None
            }
            None => {
                violations.push(Violation::new(
                    format!("{at}.kind"),
                    "required",
                    "is required",
                ));
                None
            }
        };
        for k in item.keys().filter(|k| k.as_str() != "record") {
            violations.push(Violation::new(
                format!("{at}.{k}"),
                "unknownField",
                "an item holds only `kind` and `record`",
            ));
        }
        let Some(record) = item.remove("record") else {
            violations.push(Violation::new(
                format!("{at}.record"),
                "required",
                "is required",
            ));
            continue;
        };
        let Some(kind) = kind else { continue };
        match parse_record(kind, record) {
            Ok(r) => records.push(r),
            Err(AuditError::Validation(v)) => {
                count_validation_failures(kind, &AuditError::Validation(v.clone()));
                violations.extend(v.into_iter().map(|v| v.prefixed(&format!("{at}.record"))));
            }
            Err(AuditError::InvalidJson(m)) => {
                violations.push(Violation::new(format!("{at}.record"), "type", m))
            }
            Err(other) => return Err(other),
        }
    }
    if violations.is_empty() {
        Ok(records)
    } else {
        Err(AuditError::Validation(violations))
    }
}

/// Admission as for one record, except the rate: a caller known to have no unit left is refused before
/// the body is read; the batch is charged (one unit per record, at most the burst) once parsed, so a
/// refused batch costs nothing.
pub(crate) async fn write_batch(
    auth: Authorized<Write>,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    require_json(&req)?;
    let key = idempotency_key(&req, &auth)?;
    state.admission.precheck_writes(&req)?;
    state.admission.check_capacity()?;
    let body = state
        .admission
        .read_body(&req, payload, state.limits.batch_body_bytes)
        .await?;
    let max = state.limits.batch_items;
    let depth = state.limits.json_depth;
    // Parsing and validating up to 16 MiB is CPU work: off the async executor. The body's bytes stay
    // counted against the budget until the answer.
    let (parsed, body) = web::block(move || {
        let parsed = parse_json_within(&body.bytes, depth)
            .and_then(|v| parse_batch(v, max).map_err(ApiError::from));
        (parsed, body)
    })
    .await
    .map_err(|_| ApiError::ShuttingDown)?;
    let parsed = parsed?;
    let kinds: Vec<Kind> = parsed.iter().map(|r| r.kind).collect();
    let rate = state.admission.admit_writes(&req, parsed.len())?;
    let counted = parsed.clone();
    let report = guarded(&state, state.service.write(parsed, key)).await?;
    let results: Vec<WriteResponse> = kinds
        .iter()
        .zip(&report.outcomes)
        .map(|(k, o)| WriteResponse::new(*k, o))
        .collect();
    for (r, o) in counted.iter().zip(&report.outcomes) {
        count_written(r.kind, r, status_label(o.status));
    }
    drop(body);
    ds_metrics::WRITE_BATCH_SIZE.record(results.len() as f64);
    ds_metrics::AUDIT_WRITE_DURATION_SECONDS
        .with((WriteKind::Batch,))
        .record(started.elapsed().as_secs_f64());
    Ok(with_rate(
        HttpResponse::Created().json(BatchResponse { results }),
        rate,
    ))
}

pub(crate) fn record_response(r: StoredRecord) -> RecordResponse {
    RecordResponse {
        id: r.id,
        kind: r.kind,
        received_at: r.received_at.to_rfc3339(),
        embedding_status: r.embedding_status,
        log_index: r.log_index,
        record: r.record,
    }
}

pub(crate) async fn get_record(
    _auth: Authorized<Read>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (kind, id) = path.into_inner();
    let kind: Kind = kind
        .parse()
        .map_err(|e: ds_domain::kind::UnknownKind| ApiError::NotFound(e.to_string()))?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::NotFound("record ids are 64-bit integers".into()))?;
    let record = guarded(&state, state.service.get(kind, id)).await?;
    Ok(HttpResponse::Ok().json(record_response(record)))
}

/// The pairs of a query string, in order (repeated names kept, for the domain to refuse).
pub(crate) fn query_pairs(req: &HttpRequest) -> Result<Vec<(String, String)>, ApiError> {
    web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| {
            ApiError::InvalidParameter(Violation::new(
                "query",
                "format",
                format!("unreadable query string: {e}"),
            ))
        })
}

pub(crate) async fn trail(
    _auth: Authorized<Read>,
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let correlation_id = path.into_inner();
    let query = ds_domain::query::parse_trail(&correlation_id, &query_pairs(&req)?)?;
    let page = guarded(&state, state.service.trail(&query)).await?;
    Ok(HttpResponse::Ok().json(TrailResponse {
        correlation_id,
        records: page.records.into_iter().map(record_response).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// The list of contract §10: filters, newest first, a page at a time.
pub(crate) async fn list(
    _auth: Authorized<Read>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = ds_domain::query::parse_list(&query_pairs(&req)?)?;
    let page = guarded(&state, state.service.list(&query)).await?;
    Ok(HttpResponse::Ok().json(ListResponse {
        records: page.records.into_iter().map(record_response).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// A search costs a model call and an index scan: it has its own per-caller rate, charged before the
/// body is read.
pub(crate) async fn search(
    _auth: Authorized<Read>,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_json(&req)?;
    let rate = state.admission.admit_search(&req)?;
    state.admission.check_capacity()?;
    let body = state
        .admission
        .read_body(&req, payload, state.limits.body_bytes)
        .await?;
    let request = parse_json_within(&body.bytes, state.limits.json_depth)
        .and_then(|v| ds_domain::search::parse_search(v).map_err(ApiError::from))?;
    let hits = guarded(&state, state.service.search(request)).await?;
    let results = hits
        .into_iter()
        .map(|h| SearchResult {
            kind: h.record.kind,
            id: h.record.id,
            name: h
                .record
                .record
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            namespace: h
                .record
                .record
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            phase: h
                .record
                .record
                .get("phase")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            similarity: h.similarity,
            record: record_response(h.record),
        })
        .collect();
    Ok(with_rate(
        HttpResponse::Ok().json(SearchResponse { results }),
        rate,
    ))
}

pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(HealthResponse {
        status: "healthy".into(),
        timestamp: Timestamp::now().to_rfc3339(),
    })
}

pub(crate) async fn readyz(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let embedder = state.service.embedder();
    // A degraded provider does not make the replica unready: with policy `defer` writes still succeed.
    let (status, reason) = match embedder.health() {
        ProviderHealth::Up => ("up", None),
        ProviderHealth::Degraded(r) => ("degraded", Some(r)),
    };
    let embedding = json!({
        "status": status,
        "reason": reason,
        "provider": embedder.provider(),
        "model": embedder.model_id(),
        "dimension": embedder.dimension(),
    });
    let not_ready = |reason: String, postgresql: Value| {
        let ctx = req
            .extensions()
            .get::<RequestContext>()
            .map(|c| c.correlation_id.clone());
        tracing::warn!(correlation_id = ctx.as_deref().unwrap_or_default(), %reason, "not ready");
        HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, "5"))
            .json(ReadyResponse {
                status: "not_ready".into(),
                timestamp: Timestamp::now().to_rfc3339(),
                dependencies: json!({"postgresql": postgresql, "embedding": embedding}),
                reason: Some(reason),
            })
    };
    if state.is_shutting_down() {
        return not_ready("shutting down".into(), json!({"status": "unknown"}));
    }
    if let Some(waiting_for) = state.startup.waiting_for() {
        return not_ready(
            format!("starting: {waiting_for}"),
            json!({"status": "starting"}),
        );
    }
    let started = Instant::now();
    let health =
        actix_web::rt::time::timeout(state.limits.readiness_timeout, state.service.store_health())
            .await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    match health {
        Err(_) => not_ready(
            format!(
                "postgresql did not answer within {:?}",
                state.limits.readiness_timeout
            ),
            json!({"status": "down"}),
        ),
        Ok(Err(e)) => not_ready(
            format!("postgresql: {}", public_reason(&e)),
            json!({"status": "down"}),
        ),
        Ok(Ok(h)) => {
            let pg = json!({
                "status": if h.migrations_pending == 0 { "up" } else { "migrations_pending" },
                "latencyMs": latency_ms,
                "migrationsApplied": h.migrations_applied,
                "migrationsPending": h.migrations_pending,
                "embeddingDimension": embedder.dimension(),
                "vectorIndexes": h.vector_indexes,
            });
            if h.migrations_pending > 0 {
                return not_ready(
                    format!("{} migration(s) not applied", h.migrations_pending),
                    pg,
                );
            }
            if !h.vector_indexes.contains(&embedder.dimension()) {
                return not_ready(
                    format!(
                        "embedding dimension mismatch: no search index for the provider's {} dimensions (run `datastorage migrate`)",
                        embedder.dimension(),
                    ),
                    pg,
                );
            }
            // An unusable read replica leaves the service ready (reads go to the primary); the
            // answer says so.
            let mut dependencies = json!({"postgresql": pg, "embedding": embedding});
            if let Some(replica) = h.read_replica {
                dependencies["readReplica"] = json!(replica);
            }
            HttpResponse::Ok().json(ReadyResponse {
                status: "ready".into(),
                timestamp: Timestamp::now().to_rfc3339(),
                dependencies,
                reason: None,
            })
        }
    }
}

/// A readiness reason without internals: the class of failure, not the driver's text.
fn public_reason(e: &AuditError) -> &'static str {
    match e {
        AuditError::Store(ds_domain::ports::StoreError::Unavailable(_)) => "unreachable",
        AuditError::Store(_) => "query failed",
        _ => "unexpected error",
    }
}

#[cfg(test)]
mod tests {
    use super::metric_field;
    use ds_domain::kind::Kind;

    #[test]
    fn validation_labels_name_only_fields_the_kind_defines() {
        assert_eq!(metric_field(Kind::Remediation, "name").0, "name");
        assert_eq!(metric_field(Kind::Remediation, "labels.app").0, "labels");
        assert_eq!(
            metric_field(Kind::Workflow, "stepStatuses[3].name").0,
            "stepStatuses"
        );
        assert_eq!(metric_field(Kind::Remediation, "id").0, "id");
        assert_eq!(metric_field(Kind::Remediation, "stepStatuses").0, "unknown");
        assert_eq!(metric_field(Kind::Execution, "x-client-42").0, "unknown");
        assert_eq!(metric_field(Kind::Execution, "").0, "unknown");
    }
}
