//! Legal holds (contract §9): `POST /api/v1/holds`, `DELETE /api/v1/holds/{id}`,
//! `GET /api/v1/holds[?active=true]`, each its own RBAC verb on `legalholds`.

use crate::AppState;
use crate::auth::{Authorized, ListHolds, PlaceHold, ReleaseHold};
use crate::error::ApiError;
use crate::handlers::{guarded, parse_json_within, require_json};
use crate::log_handlers::{Params, bad};
use actix_web::{HttpRequest, HttpResponse, web};
use ds_domain::AuditError;
use ds_domain::ports::StoreError;
use ds_domain::retention::{Hold, Release, RetentionStore};
use serde::Serialize;
use std::sync::Arc;

/// `GET /api/v1/holds`.
#[derive(Debug, Serialize)]
struct HoldsResponse {
    holds: Vec<Hold>,
}

fn store(state: &AppState) -> Result<Arc<dyn RetentionStore>, ApiError> {
    state.retention.clone().ok_or_else(|| {
        ApiError::Audit(AuditError::Store(StoreError::Unavailable(
            "legal holds are not served by this replica".into(),
        )))
    })
}

/// Who did it, as the log and the hold record it (`anonymous` in auth mode `none`, loopback only).
fn who<A>(auth: &Authorized<A>) -> String {
    auth.caller()
        .map_or_else(|| "anonymous".to_owned(), |c| c.username.clone())
}

async fn body(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<serde_json::Value, ApiError> {
    require_json(req)?;
    state.admission.check_capacity()?;
    let body = state
        .admission
        .read_body(req, payload, state.limits.body_bytes)
        .await?;
    parse_json_within(&body.bytes, state.limits.json_depth)
}

/// `POST /api/v1/holds {"correlationId", "reason"}` → 201 with the hold.
pub(crate) async fn place(
    auth: Authorized<PlaceHold>,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    Params::parse(&req, &[])?;
    let (correlation_id, reason) =
        ds_domain::retention::parse_hold(body(&state, &req, payload).await?)?;
    let store = store(&state)?;
    let by = who(&auth);
    let hold = guarded(&state, async {
        Ok::<_, AuditError>(store.place_hold(&correlation_id, &reason, &by).await?)
    })
    .await?;
    tracing::info!(hold = hold.id, correlation_id = %hold.correlation_id, placed_by = %hold.placed_by, "legal hold placed");
    Ok(HttpResponse::Created().json(hold))
}

/// `DELETE /api/v1/holds/{id} {"reason"}` → 200 with the hold as released (a hold released
/// before: 200 with its recorded release, unchanged); 404 for an unknown id.
pub(crate) async fn release(
    auth: Authorized<ReleaseHold>,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    Params::parse(&req, &[])?;
    let raw = req.match_info().get("id").unwrap_or_default();
    let id: i64 = raw
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| bad("id", "type", "must be a positive integer"))?;
    let reason = ds_domain::retention::parse_release(body(&state, &req, payload).await?)?;
    let store = store(&state)?;
    let by = who(&auth);
    let outcome = guarded(&state, async {
        Ok::<_, AuditError>(store.release_hold(id, &reason, &by).await?)
    })
    .await?;
    match outcome {
        Release::Released(hold) => {
            tracing::info!(hold = hold.id, correlation_id = %hold.correlation_id, released_by = %by, "legal hold released");
            Ok(HttpResponse::Ok().json(hold))
        }
        Release::AlreadyReleased(hold) => Ok(HttpResponse::Ok().json(hold)),
        Release::NotFound => Err(ApiError::Audit(AuditError::Absent(format!(
            "no legal hold has id {id}"
        )))),
    }
}

/// `GET /api/v1/holds[?active=true|false]` → `{"holds": [...]}`, newest first.
pub(crate) async fn list(
    _auth: Authorized<ListHolds>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q = Params::parse(&req, &["active"])?;
    let active = match q.0.get("active").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(bad("active", "type", "must be true or false")),
    };
    let store = store(&state)?;
    let holds = guarded(&state, async {
        Ok::<_, AuditError>(store.holds(active).await?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(HoldsResponse { holds }))
}
