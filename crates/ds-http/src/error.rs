//! The one mapping from errors to HTTP (contract §4). Every error the service answers with is an
//! [`ApiError`]; [`ApiError::parts`] is the single exhaustive `match` that gives its status and code.
//! Errors raised by actix itself (unknown route, wrong method, payload too large, ...) are mapped by
//! status in [`crate::middleware`], so they too leave in the contract's shape.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use ds_domain::ports::{EmbedError, StoreError};
use ds_domain::{AuditError, Violation};

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The body is not `application/json`.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// Unknown route, kind or record.
    #[error("{0}")]
    NotFound(String),
    /// A header or path parameter breaks a rule.
    #[error("invalid request")]
    InvalidParameter(Violation),
    /// Shutting down.
    #[error("the service is shutting down")]
    ShuttingDown,
    /// Still starting (waiting for the database or its migrations).
    #[error("the service is starting")]
    Starting,
    /// The caller is over its write or search rate.
    #[error("rate limit exceeded")]
    RateLimited {
        retry_after_secs: u64,
        rate: f64,
        burst: u32,
        /// `write` or `search`.
        what: &'static str,
    },
    /// The peer's authentications failed too often: refused without a review for a while.
    #[error("too many failed authentications")]
    TooManyAuthFailures { retry_after_secs: u64 },
    /// The body is larger than the route's limit.
    #[error("payload too large")]
    PayloadTooLarge(usize),
    /// The bodies held at once would pass the body budget: shed at once.
    #[error("body budget exhausted")]
    BodyBudget,
    /// The app has no authorization gate: a wiring error, refused rather than let through.
    #[error("no authorization gate is configured")]
    NoGate,
    /// Every database slot is taken: shed at once instead of queueing.
    #[error("overloaded")]
    Overloaded,
    /// The request took longer than the request timeout.
    #[error("request timed out")]
    Timeout,
    /// No usable bearer token, or one the identity provider rejected.
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    /// Authenticated, but not allowed this access.
    #[error("forbidden")]
    Forbidden(ds_domain::ports::Access),
    /// The identity provider (Kubernetes API) could not answer.
    #[error("authentication unavailable")]
    AuthUnavailable,
    /// The JSON body nests deeper than allowed.
    #[error("JSON nested too deep")]
    TooDeep(usize),
}

/// Status, contract code, message for the client.
pub struct Parts {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub violations: Vec<Violation>,
    /// `Retry-After` in seconds (every 503 and 429 has one).
    pub retry_after: Option<u64>,
    /// `X-RateLimit-Limit` of a 429.
    pub rate_limit: Option<u32>,
}

/// `Retry-After` of a 409 `NOT_YET_INTEGRATED`: about one checkpoint interval.
const NOT_YET_INTEGRATED_RETRY_SECS: u64 = 5;

impl ApiError {
    /// The mapping. Messages of 5xx errors never carry internals (SQL, paths, stack): the detail is logged.
    pub fn parts(&self) -> Parts {
        let p = |status, code, message: &str| Parts {
            status,
            code,
            message: message.to_owned(),
            violations: Vec::new(),
            retry_after: (status == StatusCode::SERVICE_UNAVAILABLE).then_some(5),
            rate_limit: None,
        };
        match self {
            ApiError::Audit(AuditError::Validation(v)) => Parts {
                status: StatusCode::BAD_REQUEST,
                code: "VALIDATION_ERROR",
                message: summary(v),
                violations: v.clone(),
                retry_after: None,
                rate_limit: None,
            },
            ApiError::Audit(AuditError::InvalidJson(m)) => {
                p(StatusCode::BAD_REQUEST, "INVALID_JSON", m)
            }
            ApiError::Audit(AuditError::IdempotencyConflict) => p(
                StatusCode::CONFLICT,
                "DUPLICATE_AUDIT",
                "this Idempotency-Key was already used with a different body",
            ),
            ApiError::Audit(AuditError::NotFound) => {
                p(StatusCode::NOT_FOUND, "NOT_FOUND", "record not found")
            }
            ApiError::Audit(AuditError::Absent(m)) => p(StatusCode::NOT_FOUND, "NOT_FOUND", m),
            ApiError::Audit(AuditError::NotYetIntegrated) => Parts {
                retry_after: Some(NOT_YET_INTEGRATED_RETRY_SECS),
                ..p(
                    StatusCode::CONFLICT,
                    "NOT_YET_INTEGRATED",
                    "the record is stored but not yet in a signed checkpoint of the log; retry shortly",
                )
            },
            ApiError::Audit(AuditError::Embedding(
                EmbedError::Unavailable(_) | EmbedError::InvalidOutput(_) | EmbedError::Rejected(_),
            )) => p(
                StatusCode::SERVICE_UNAVAILABLE,
                "EMBEDDING_ERROR",
                "the embedding could not be generated; nothing was written, retry later",
            ),
            ApiError::Audit(AuditError::Store(StoreError::Unavailable(_))) => p(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
                "the database is unavailable; nothing was written, retry later",
            ),
            ApiError::Audit(AuditError::Store(StoreError::Query(_) | StoreError::Corrupt(_))) => p(
                StatusCode::INTERNAL_SERVER_ERROR,
                "DATABASE_ERROR",
                "the database failed to process the request",
            ),
            ApiError::UnsupportedMediaType => p(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "Content-Type must be application/json",
            ),
            ApiError::NotFound(m) => p(StatusCode::NOT_FOUND, "NOT_FOUND", m),
            ApiError::InvalidParameter(v) | ApiError::Audit(AuditError::InvalidParameter(v)) => {
                Parts {
                    status: StatusCode::BAD_REQUEST,
                    code: "VALIDATION_ERROR",
                    message: format!("{}: {}", v.field, v.message),
                    violations: vec![v.clone()],
                    retry_after: None,
                    rate_limit: None,
                }
            }
            ApiError::ShuttingDown => p(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
                "the service is shutting down; retry on another replica",
            ),
            ApiError::Starting => Parts {
                retry_after: Some(5),
                ..p(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SERVICE_UNAVAILABLE",
                    "the service is starting (waiting for its database); nothing was written, retry shortly",
                )
            },
            ApiError::RateLimited {
                retry_after_secs,
                rate,
                burst,
                what,
            } => Parts {
                retry_after: Some((*retry_after_secs).max(1)),
                rate_limit: Some(*burst),
                ..p(
                    StatusCode::TOO_MANY_REQUESTS,
                    "RATE_LIMIT_EXCEEDED",
                    &if *what == "search" {
                        format!(
                            "over this caller's search rate ({rate} searches/s, burst {burst}); retry after {} s",
                            (*retry_after_secs).max(1)
                        )
                    } else {
                        format!(
                            "over this caller's write rate ({rate} records/s, burst {burst}); nothing was written, retry after {} s",
                            (*retry_after_secs).max(1)
                        )
                    },
                )
            },
            ApiError::TooManyAuthFailures { retry_after_secs } => Parts {
                retry_after: Some((*retry_after_secs).max(1)),
                ..p(
                    StatusCode::TOO_MANY_REQUESTS,
                    "RATE_LIMIT_EXCEEDED",
                    "too many failed authentications from this address; retry later with a valid token",
                )
            },
            ApiError::PayloadTooLarge(limit) => p(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                &format!("the request body is larger than {limit} bytes"),
            ),
            ApiError::BodyBudget => Parts {
                retry_after: Some(1),
                ..p(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SERVICE_UNAVAILABLE",
                    "the service holds as many request bodies as it may; nothing was written, retry shortly",
                )
            },
            ApiError::NoGate => p(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "internal error",
            ),
            ApiError::Overloaded => Parts {
                retry_after: Some(1),
                ..p(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SERVICE_UNAVAILABLE",
                    "the service is at capacity; nothing was written, retry shortly",
                )
            },
            ApiError::Timeout => p(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
                "the request took longer than the request timeout; if it was a write, retrying it is safe (same content is stored once)",
            ),
            ApiError::Unauthorized(m) => p(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", m),
            ApiError::Forbidden(access) => p(
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                match access {
                    ds_domain::ports::Access::Write => "this identity may not write audit records",
                    ds_domain::ports::Access::Read => "this identity may not read audit records",
                    ds_domain::ports::Access::Metrics => "this identity may not read metrics",
                    ds_domain::ports::Access::HoldCreate => {
                        "this identity may not place legal holds"
                    }
                    ds_domain::ports::Access::HoldRelease => {
                        "this identity may not release legal holds"
                    }
                    ds_domain::ports::Access::HoldList => "this identity may not list legal holds",
                },
            ),
            ApiError::AuthUnavailable => p(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
                "the identity provider could not check the token; retry shortly",
            ),
            ApiError::TooDeep(max) => p(
                StatusCode::BAD_REQUEST,
                "INVALID_JSON",
                &format!("the JSON body nests deeper than {max} levels"),
            ),
        }
    }
}

fn summary(v: &[Violation]) -> String {
    match v {
        [one] => format!("{}: {}", one.field, one.message),
        many => format!("{} fields are invalid", many.len()),
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.parts().status
    }

    /// The body is written by the envelope middleware, which knows the request (path, correlation id).
    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).finish()
    }
}

/// The contract code of an error that actix raised itself, by status.
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_JSON",
        401 => "UNAUTHORIZED",
        403 => "FORBIDDEN",
        404 => "NOT_FOUND",
        405 => "METHOD_NOT_ALLOWED",
        409 => "DUPLICATE_AUDIT",
        413 => "PAYLOAD_TOO_LARGE",
        415 => "UNSUPPORTED_MEDIA_TYPE",
        429 => "RATE_LIMIT_EXCEEDED",
        503 => "SERVICE_UNAVAILABLE",
        s if s >= 500 => "INTERNAL_ERROR",
        _ => "BAD_REQUEST",
    }
}
