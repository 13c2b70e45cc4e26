//! The transparency log's endpoints (contract §8): the signed checkpoint, inclusion and consistency
//! proofs, and the export in log order (NDJSON, streamed page by page: memory stays bounded whatever
//! the size of the log).

use crate::AppState;
use crate::auth::{Authorized, Read};
use crate::dto::{ConsistencyResponse, InclusionResponse};
use crate::error::ApiError;
use crate::handlers::guarded;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use ds_domain::Violation;
use ds_domain::kind::Kind;
use ds_domain::log::{ExportEntry, ExportFilter};
use ds_domain::time::Timestamp;
use ds_tlog::hash_to_base64;
use ds_tlog::verify::ExportLine;
use std::collections::HashMap;

/// Leaves per page of an export (one database round trip each).
const EXPORT_PAGE: usize = 1_000;

/// The query parameters of a request, each at most once, none that the route does not know.
pub(crate) struct Params(pub(crate) HashMap<String, String>);

pub(crate) fn bad(field: &str, constraint: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidParameter(Violation::new(field, constraint, message))
}

impl Params {
    pub(crate) fn parse(req: &HttpRequest, known: &[&str]) -> Result<Self, ApiError> {
        let mut out = HashMap::new();
        for (k, v) in crate::handlers::query_pairs(req)? {
            if !known.contains(&k.as_str()) {
                return Err(bad(
                    &k,
                    "unknown",
                    format!("unknown parameter; this route takes {}", known.join(", ")),
                ));
            }
            if out.insert(k.clone(), v).is_some() {
                return Err(bad(&k, "repeated", "given more than once"));
            }
        }
        Ok(Params(out))
    }

    fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.0
            .get(name)
            .map(|v| {
                v.parse::<u64>()
                    .ok()
                    .filter(|n| i64::try_from(*n).is_ok())
                    .ok_or_else(|| bad(name, "type", "must be an integer from 0 to 2^63-1"))
            })
            .transpose()
    }

    fn required_u64(&self, name: &str) -> Result<u64, ApiError> {
        self.u64(name)?
            .ok_or_else(|| bad(name, "required", "is required"))
    }

    fn time(&self, name: &str) -> Result<Option<Timestamp>, ApiError> {
        self.0
            .get(name)
            .map(|v| {
                Timestamp::parse(v)
                    .map_err(|e| bad(name, "format", format!("must be RFC 3339: {e}")))
            })
            .transpose()
    }

    fn kind(&self, name: &str, value: &str) -> Result<Kind, ApiError> {
        value
            .parse()
            .map_err(|e: ds_domain::kind::UnknownKind| bad(name, "enum", e.to_string()))
    }
}

/// `GET /api/v1/log/checkpoint[?size=N]`: the latest signed checkpoint, or the kept one of size N.
pub(crate) async fn checkpoint(
    _auth: Authorized<Read>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let size = Params::parse(&req, &["size"])?.u64("size")?;
    let c = guarded(&state, state.log.checkpoint(size)).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        // A checkpoint of a given size never changes; the latest does.
        .insert_header((
            "Cache-Control",
            if size.is_some() {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            },
        ))
        .body(c.note))
}

/// `GET /api/v1/log/proof/inclusion?kind=K&id=N[&treeSize=S]`.
pub(crate) async fn inclusion(
    _auth: Authorized<Read>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q = Params::parse(&req, &["kind", "id", "treeSize"])?;
    let kind =
        q.0.get("kind")
            .ok_or_else(|| bad("kind", "required", "is required"))?;
    let kind = q.kind("kind", kind)?;
    let id = q.required_u64("id")?;
    let tree_size = q.u64("treeSize")?;
    let id = i64::try_from(id).map_err(|_| bad("id", "type", "out of range"))?;
    let p = guarded(&state, state.log.inclusion(kind, id, tree_size)).await?;
    Ok(HttpResponse::Ok().json(InclusionResponse {
        log_index: p.log_index,
        tree_size: p.tree_size,
        root_hash: hash_to_base64(&p.root),
        leaf_hash: hash_to_base64(&p.leaf_hash),
        hashes: p.hashes.iter().map(hash_to_base64).collect(),
    }))
}

/// `GET /api/v1/log/proof/consistency?from=M&to=N`.
pub(crate) async fn consistency(
    _auth: Authorized<Read>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q = Params::parse(&req, &["from", "to"])?;
    let (from, to) = (q.required_u64("from")?, q.required_u64("to")?);
    let p = guarded(&state, state.log.consistency(from, to)).await?;
    Ok(HttpResponse::Ok().json(ConsistencyResponse {
        from: p.from,
        to: p.to,
        hashes: p.hashes.iter().map(hash_to_base64).collect(),
    }))
}

fn line(e: ExportEntry) -> ExportLine {
    let (received_at, record) = match e.content {
        Some(c) => (Some(c.received_at.to_rfc3339()), Some(c.fields)),
        None => (None, None),
    };
    ExportLine {
        log_index: e.log_index,
        leaf_hash: hash_to_base64(&e.leaf_hash),
        kind: e.kind,
        id: e.id,
        received_at,
        record,
    }
}

/// An export failing mid-stream: the status is sent, so the stream ends early (the client sees an
/// incomplete body, never a short export that looks whole).
fn failed(e: ApiError, from: u64) -> actix_web::Error {
    tracing::warn!(error = %e, from, "export failed mid-stream");
    actix_web::Error::from(e)
}

/// Where an export stands: the next log index, the lines it may still send, the tree size it
/// goes up to, and whether that was moved on to the latest checkpoint already.
struct ExportCursor {
    from: u64,
    left: u64,
    end: u64,
    extended: bool,
}

/// `GET /api/v1/audit/export?since&until&correlationId&kinds&cursor&limit`: one JSON line per leaf in
/// log order, from `cursor` (a log index, default 0), at most `limit` lines, up to the latest signed
/// checkpoint at the time of the request (its size is the `X-Log-Tree-Size` header) and then on to
/// the latest one when it got there. Without filters every leaf is there, records gone included
/// (`"record": null`): what `datastorage verify` rebuilds the tree from.
///
/// Why on to the latest checkpoint: a purge deletes records only once a signed checkpoint covers
/// its entry, so a record this export finds gone was deleted after a checkpoint that names why
/// was signed, and the checkpoint current when the export reaches its end is at least that one
/// (docs/retention.md, "Log first, delete after").
pub(crate) async fn export(
    _auth: Authorized<Read>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q = Params::parse(
        &req,
        &[
            "since",
            "until",
            "correlationId",
            "kinds",
            "cursor",
            "limit",
        ],
    )?;
    let limit = match q.u64("limit")? {
        Some(0) => return Err(bad("limit", "minimum", "must be at least 1")),
        Some(n) => n,
        None => u64::MAX,
    };
    let mut kinds = Vec::new();
    if let Some(list) = q.0.get("kinds") {
        for k in list.split(',') {
            kinds.push(q.kind("kinds", k.trim())?);
        }
    }
    let correlation_id = q.0.get("correlationId").cloned();
    if let Some(c) = &correlation_id
        && !ds_domain::record::is_correlation_id(c)
    {
        return Err(bad(
            "correlationId",
            "pattern",
            format!("must match {}", ds_domain::record::CORRELATION_ID.as_str()),
        ));
    }
    let filter = ExportFilter {
        since: q.time("since")?,
        until: q.time("until")?,
        correlation_id,
        kinds,
    };
    let from = q.u64("cursor")?.unwrap_or(0);
    // Every read of this export on one copy of the database (the read replica if usable now), so
    // that its pages and its checkpoints agree.
    let log = state.log.pinned();
    let end = guarded(&state, log.export_end()).await?;
    let start = ExportCursor {
        from,
        left: limit,
        end,
        extended: false,
    };
    let body = futures_util::stream::unfold(Some(start), move |next| {
        let state = state.clone();
        let log = log.clone();
        let filter = filter.clone();
        async move {
            let mut at = next?;
            loop {
                if at.left == 0 {
                    return None;
                }
                if at.from >= at.end {
                    // Once: on to the checkpoint that is the latest now.
                    if at.extended {
                        return None;
                    }
                    at.extended = true;
                    match guarded(&state, log.export_end()).await {
                        Ok(latest) if latest > at.end => {
                            at.end = latest;
                            continue;
                        }
                        Ok(_) => return None,
                        Err(e) => return Some((Err(failed(e, at.from)), None)),
                    }
                }
                let want = usize::try_from(at.left)
                    .unwrap_or(EXPORT_PAGE)
                    .min(EXPORT_PAGE);
                let page = guarded(&state, log.export_page(&filter, at.from, at.end, want)).await;
                let entries = match page {
                    Err(e) => return Some((Err(failed(e, at.from)), None)),
                    Ok(entries) => entries,
                };
                if entries.is_empty() {
                    // Nothing more below `end`.
                    at.from = at.end;
                    continue;
                }
                let full = entries.len() == want;
                at.left -= entries.len() as u64;
                let last = entries.last().map_or(at.from, |e| e.log_index);
                let mut out = Vec::with_capacity(entries.len() * 512);
                for e in entries {
                    // Serializing a struct of strings, integers and JSON values cannot fail.
                    let _ = serde_json::to_writer(&mut out, &line(e));
                    out.push(b'\n');
                }
                // A page short of `want` had nothing more below `end`.
                at.from = if full { last + 1 } else { at.end };
                return Some((Ok::<_, actix_web::Error>(Bytes::from(out)), Some(at)));
            }
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header(("X-Log-Tree-Size", end.to_string()))
        .streaming(body))
}
