//! The envelope: every request gets a correlation id (from `X-Correlation-ID`, else a new UUIDv7), every
//! response carries it back, and every error response, the framework's own included, gets the
//! contract's JSON body. One log line per request, with the correlation id.

use crate::dto::{ErrorBody, ErrorDetails, ErrorObject};
use crate::error::{ApiError, Parts, code_for_status};
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse};
use ds_domain::Timestamp;
use ds_metrics::labels::{Method, Route, Status};
use std::time::{Duration, Instant};
use tracing::Instrument;

pub const CORRELATION_HEADER: &str = "x-correlation-id";
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The per-request context that handlers can read from the request extensions.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub correlation_id: String,
    pub request_id: Option<String>,
}

/// A header value we are willing to echo: 1 to 255 visible ASCII characters.
fn echoable(v: Option<&HeaderValue>) -> Option<String> {
    let s = v?.to_str().ok()?;
    let ok = !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| s.to_owned())
}

pub async fn envelope(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let correlation_id = echoable(req.headers().get(CORRELATION_HEADER))
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let request_id = echoable(req.headers().get(REQUEST_ID_HEADER));
    let ctx = RequestContext {
        correlation_id: correlation_id.clone(),
        request_id: request_id.clone(),
    };
    req.extensions_mut().insert(ctx);
    let method = req.method().to_string();
    let path = req.path().to_owned();

    let max_header_bytes = req
        .app_data::<actix_web::web::Data<crate::AppState>>()
        .map_or(usize::MAX, |s| s.limits.header_bytes);
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > max_header_bytes {
        let parts = Parts {
            status: actix_web::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            code: "PAYLOAD_TOO_LARGE",
            message: format!("the request headers exceed {max_header_bytes} bytes"),
            violations: Vec::new(),
            retry_after: None,
            rate_limit: None,
        };
        let response = error_response(&parts, &path, &correlation_id, request_id);
        let mut res = ServiceResponse::new(req.into_parts().0, response);
        if let Ok(v) = HeaderValue::from_str(&correlation_id) {
            res.headers_mut()
                .insert(HeaderName::from_static(CORRELATION_HEADER), v);
        }
        tracing::info!(correlation_id = %correlation_id, %method, %path, status = 431, header_bytes, "request headers too large");
        record_metrics(&method, Route::matched(None), 431, started.elapsed());
        return Ok(res);
    }

    // The request must not be cloned before routing (actix needs it unshared to record path
    // parameters). Handlers' errors arrive as responses; an `Err` here comes from actix's own service
    // stack and is rendered by actix.
    // The span carries what identifies the request (every line logged inside it has it); the outcome
    // (status, latency, caller) is on the request's own line only: each field recorded into a span
    // re-encodes the span's JSON, a measured ~5 % of the service's CPU under write load.
    let span = tracing::info_span!(
        "request",
        correlation_id = %correlation_id,
        %method,
        route = tracing::field::Empty,
    );
    let res = next
        .call(req)
        .instrument(span.clone())
        .await?
        .map_into_boxed_body();
    let route = Route::matched(res.request().match_pattern());
    span.record("route", route.as_str());
    let _entered = span.enter();
    let status = res.status();
    // Error answers that a handler wrote itself as JSON (readiness' 503) are left as they are.
    let handler_json = res.response().error().is_none()
        && res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
    let mut res = if (status.is_client_error() || status.is_server_error()) && !handler_json {
        let parts = match res
            .response()
            .error()
            .and_then(|e| e.as_error::<ApiError>())
        {
            Some(api) => api.parts(),
            None => framework_parts(&res),
        };
        if status.is_server_error() {
            let detail = res
                .response()
                .error()
                .map(|e| e.to_string())
                .unwrap_or_default();
            tracing::error!(correlation_id = %correlation_id, %method, %path, status = status.as_u16(), code = parts.code, error = %detail, "request failed");
        }
        let mut response = error_response(&parts, &path, &correlation_id, request_id);
        if let Some(allow) = res.headers().get(header::ALLOW) {
            response.headers_mut().insert(header::ALLOW, allow.clone());
        }
        let (http_req, _) = res.into_parts();
        ServiceResponse::new(http_req, response)
    } else {
        res
    };
    if let Ok(v) = HeaderValue::from_str(&correlation_id) {
        res.headers_mut()
            .insert(HeaderName::from_static(CORRELATION_HEADER), v);
    }
    let caller = res
        .request()
        .extensions()
        .get::<crate::admission::Caller>()
        .map(|c| c.username.clone());
    let status = res.status().as_u16();
    let elapsed = started.elapsed();
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    let caller = caller.as_deref().unwrap_or("-");
    // correlation_id, method and route are the span's.
    tracing::info!(%path, caller, status, latency_ms, "request");
    record_metrics(&method, route, status, elapsed);
    Ok(res)
}

/// The route label is the pattern the router matched, or `unmatched` (never the raw path); the
/// method one of RFC 9110's, else `OTHER`: a client cannot create series of its own.
fn record_metrics(method: &str, route: Route, status: u16, elapsed: Duration) {
    ds_metrics::HTTP_REQUEST_DURATION_SECONDS
        .with((route.clone(),))
        .record(elapsed.as_secs_f64());
    ds_metrics::HTTP_REQUESTS
        .with((Method::of(method), route, Status(status)))
        .increment(1);
}

/// The contract's error body for `parts`, with `Retry-After` / `X-RateLimit-*` when they apply.
fn error_response(
    parts: &Parts,
    path: &str,
    correlation_id: &str,
    request_id: Option<String>,
) -> HttpResponse {
    let body = ErrorBody {
        error: ErrorObject {
            code: parts.code.to_owned(),
            message: parts.message.clone(),
            details: parts.violations.first().map(|first| ErrorDetails {
                field: first.field.clone(),
                constraint: first.constraint.clone(),
                violations: parts.violations.clone(),
            }),
        },
        timestamp: Timestamp::now().to_rfc3339(),
        path: path.to_owned(),
        correlation_id: correlation_id.to_owned(),
        request_id,
    };
    let mut builder = HttpResponse::build(parts.status);
    if parts.status == actix_web::http::StatusCode::UNAUTHORIZED {
        builder.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"datastorage\""));
    }
    if let Some(secs) = parts.retry_after {
        builder.insert_header((header::RETRY_AFTER, secs.to_string()));
    }
    if let Some(limit) = parts.rate_limit {
        builder.insert_header(("x-ratelimit-limit", limit.to_string()));
        builder.insert_header(("x-ratelimit-remaining", "0"));
    }
    builder.json(body)
}

/// Errors raised by actix itself: status from actix, code from the status, a message that says what
/// went wrong without internals.
fn framework_parts(res: &ServiceResponse<BoxBody>) -> Parts {
    let status = res.status();
    let message = match status.as_u16() {
        404 => "no such route".to_owned(),
        405 => "method not allowed on this route".to_owned(),
        413 => "the request body is too large".to_owned(),
        415 => "Content-Type must be application/json".to_owned(),
        s if s >= 500 => "internal error".to_owned(),
        _ => res
            .response()
            .error()
            .map(|e| e.to_string())
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned()),
    };
    Parts {
        status,
        code: code_for_status(status),
        message,
        violations: Vec::new(),
        retry_after: (status.as_u16() == 503).then_some(5),
        rate_limit: None,
    }
}
