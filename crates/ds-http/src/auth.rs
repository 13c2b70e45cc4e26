//! Authentication and authorization of requests (contract §6): `Authorization: Bearer <token>` →
//! the [`Authenticator`] port (TokenReview) → an identity, put in the request extensions as
//! [`Caller`] → the authorization question for the route (write, read, metrics).
//!
//! Public: `/healthz`, `/readyz` (probes). Everything under `/api/v1/` needs a token: `POST` is a write
//! except `POST /api/v1/audit/search`, which reads; `GET` reads. On the metrics listener every path is
//! a metrics scrape. Without an authenticator (auth mode `none`) nothing is checked.
//!
//! The token never leaves this module except to the authenticator: not logged, not in errors.

use crate::AppState;
use crate::error::ApiError;
use crate::guard::Caller;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use ds_domain::ports::{Access, AuthError};

/// The longest bearer token accepted (service account tokens are ~1 KB).
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a request was refused, as counted in `datastorage_auth_failures_total{reason}`.
fn count_failure(reason: &'static str) {
    metrics::counter!("datastorage_auth_failures_total", "reason" => reason).increment(1);
}

/// What an API request wants, or `None` for public routes.
fn api_access(method: &Method, path: &str) -> Option<Access> {
    if !path.starts_with("/api/v1/") {
        return None;
    }
    Some(match *method {
        Method::GET | Method::HEAD => Access::Read,
        Method::POST if path == "/api/v1/audit/search" => Access::Read,
        _ => Access::Write,
    })
}

/// The bearer token of the request, or why there is none usable.
fn bearer(req: &ServiceRequest) -> Result<String, ApiError> {
    let Some(value) = req.headers().get(actix_web::http::header::AUTHORIZATION) else {
        count_failure("missing");
        return Err(ApiError::Unauthorized(
            "an Authorization: Bearer token is required",
        ));
    };
    let malformed = || {
        count_failure("malformed");
        ApiError::Unauthorized("the Authorization header must be `Bearer <token>`")
    };
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer")
        || token.is_empty()
        || token.len() > MAX_TOKEN_BYTES
        || !token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(malformed());
    }
    Ok(token.to_owned())
}

async fn check(req: &ServiceRequest, access: Access) -> Result<(), ApiError> {
    let Some(state) = req.app_data::<web::Data<AppState>>() else {
        return Ok(());
    };
    let Some(auth) = state.auth.clone() else {
        return Ok(());
    };
    let token = bearer(req)?;
    let who = auth.authenticate(&token).await.map_err(|e| match e {
        AuthError::Unauthenticated(_) => {
            count_failure("invalid_token");
            ApiError::Unauthorized("the bearer token is not valid for this service")
        }
        AuthError::Unavailable(e) => {
            count_failure("unavailable");
            tracing::warn!(error = %e, "authentication unavailable: the Kubernetes API could not review the token");
            ApiError::AuthUnavailable
        }
    })?;
    let allowed = auth.authorize(&who, access).await.map_err(|e| {
        count_failure("unavailable");
        tracing::warn!(error = %e, caller = %who.username, "authorization unavailable: the Kubernetes API could not answer the access review");
        ApiError::AuthUnavailable
    })?;
    if !allowed {
        count_failure("forbidden");
        tracing::info!(caller = %who.username, ?access, "access denied");
        return Err(ApiError::Forbidden(access));
    }
    req.extensions_mut().insert(Caller {
        username: who.username,
        groups: who.groups,
    });
    Ok(())
}

/// The API listener's middleware.
pub async fn api(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if let Some(access) = api_access(req.method(), req.path()) {
        let starting = req
            .app_data::<web::Data<AppState>>()
            .is_some_and(|s| !s.startup.is_started());
        if starting {
            return Ok(req.error_response(ApiError::Starting));
        }
        if let Err(e) = check(&req, access).await {
            return Ok(req.error_response(e));
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// The metrics listener's middleware: every request is a scrape.
pub async fn metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if let Err(e) = check(&req, Access::Metrics).await {
        return Ok(req.error_response(e));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}
