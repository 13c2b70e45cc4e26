//! Admission control (contract §6): who the caller is for rate limiting, the per-caller write rate, and
//! the bound on requests working in the database at once (load shedding).
//!
//! - Caller: the authenticated identity when there is one ([`Caller`] in the request extensions); else
//!   the peer address; `X-Forwarded-For` only when the peer is a configured trusted proxy, and then the
//!   right-most address that is not itself a trusted proxy.
//! - Rate: a GCRA limiter per caller (governor), `per_second` with `burst`; a batch costs one unit per
//!   record, at most `burst` (so the largest batch can always pass when the caller is idle).
//! - Load: at most `db_concurrency` requests use the database at once; one more is answered 503 with
//!   `Retry-After` at once, never queued.

use crate::error::ApiError;
use actix_web::HttpMessage;
use actix_web::HttpRequest;
use actix_web::http::header::{HeaderName, HeaderValue};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The client's address: the peer, or, when the peer is a trusted proxy, the right-most address of
/// `X-Forwarded-For` (every line of it, in order) that is not itself a trusted proxy.
pub fn client_ip(req: &HttpRequest, trusted_proxies: &[IpAddr]) -> Option<IpAddr> {
    let peer = req.peer_addr().map(|a| a.ip())?;
    let trusted = |ip: &IpAddr| trusted_proxies.contains(ip);
    if !trusted(&peer) {
        return Some(peer);
    }
    let lines: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .collect();
    let client = lines
        .iter()
        .rev()
        .flat_map(|line| line.rsplit(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .find(|a| !trusted(a));
    Some(client.unwrap_or(peer))
}

/// The authenticated caller, put in the request extensions by authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The username (`system:serviceaccount:<ns>:<name>` for service accounts).
    pub username: String,
    pub groups: Vec<String>,
}

/// Admission settings.
#[derive(Debug, Clone)]
pub struct AdmissionSettings {
    /// Sustained writes (records) per second per caller (fractions allowed); 0 disables rate limiting.
    pub writes_per_second: f64,
    /// Records a caller may write at once after being idle.
    pub burst: u32,
    /// Sustained searches per second per caller (fractions allowed); 0 disables the search limit.
    pub searches_per_second: f64,
    /// Searches a caller may make at once after being idle.
    pub search_burst: u32,
    /// Requests in the database at once.
    pub db_concurrency: usize,
    /// Bytes of request bodies held at once across all requests (503 past it).
    pub body_budget_bytes: usize,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        AdmissionSettings {
            writes_per_second: 500.0,
            burst: 750,
            searches_per_second: 20.0,
            search_burst: 40,
            db_concurrency: 128,
            body_budget_bytes: 64 * 1024 * 1024,
            trusted_proxies: Vec::new(),
        }
    }
}

type Limiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// One per-caller rate (GCRA, governor): `per_second` sustained, `burst` at once.
#[derive(Clone)]
struct Rate {
    limiter: Arc<Limiter>,
    per_second: f64,
    burst: u32,
    checks: Arc<AtomicU64>,
    /// Callers without a single unit left, and until when: refused before their body is read.
    empty_until: Arc<quick_cache::sync::Cache<String, std::time::Instant>>,
}

impl Rate {
    /// `None` when `per_second` is 0 (no limit).
    fn new(per_second: f64, burst: u32) -> Option<Rate> {
        if !(per_second.is_finite() && per_second > 0.0) {
            return None;
        }
        let period = std::time::Duration::from_secs_f64((1.0 / per_second).min(1e9));
        let burst = burst.max(1);
        let quota = Quota::with_period(period)?
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Some(Rate {
            limiter: Arc::new(
                RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            ),
            per_second,
            burst,
            checks: Arc::new(AtomicU64::new(0)),
            empty_until: Arc::new(quick_cache::sync::Cache::new(65_536)),
        })
    }

    fn limited(&self, retry_after: std::time::Duration, what: &'static str) -> ApiError {
        ds_metrics::RATE_LIMIT_EXCEEDED.increment(1);
        ApiError::RateLimited {
            retry_after_secs: crate::auth::ceil_secs(retry_after),
            rate: self.per_second,
            burst: self.burst,
            what,
        }
    }

    /// 429 when `key` is known to have no unit left (a charge failed for it moments ago), without
    /// charging anything: what a batch is asked before its body is read.
    fn precheck(&self, key: &str, what: &'static str) -> Result<(), ApiError> {
        let now = std::time::Instant::now();
        match self.empty_until.get(key) {
            Some(until) if until > now => Err(self.limited(until - now, what)),
            Some(_) => {
                self.empty_until.remove_if(key, |u| *u <= now);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Charges `units` (clamped to 1..=burst) to `key`.
    fn charge(&self, key: &str, units: usize, what: &'static str) -> Result<RateInfo, ApiError> {
        let cost = u32::try_from(units)
            .unwrap_or(u32::MAX)
            .clamp(1, self.burst);
        // Forget idle callers now and then, so the table stays as small as the set of active callers.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        let n = NonZeroU32::new(cost).unwrap_or(NonZeroU32::MIN);
        match self.limiter.check_key_n(&key.to_owned(), n) {
            Ok(Ok(snapshot)) => Ok(RateInfo {
                limit: self.burst,
                remaining: snapshot.remaining_burst_capacity(),
            }),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                // When even one unit is not there yet, remember until when: the next batch of this
                // caller is refused before its body is read.
                let period = std::time::Duration::from_secs_f64(1.0 / self.per_second);
                let one = wait.saturating_sub(period.saturating_mul(cost - 1));
                if !one.is_zero() {
                    self.empty_until
                        .insert(key.to_owned(), std::time::Instant::now() + one);
                }
                Err(self.limited(wait, what))
            }
            // Cannot happen: the cost is clamped to the burst.
            Err(_) => Err(ApiError::RateLimited {
                retry_after_secs: 1,
                rate: self.per_second,
                burst: self.burst,
                what,
            }),
        }
    }
}

/// The state of admission control, shared by all workers.
#[derive(Clone)]
pub struct Admission {
    settings: Arc<AdmissionSettings>,
    writes: Option<Rate>,
    searches: Option<Rate>,
    db: Arc<Semaphore>,
    bodies: Arc<Semaphore>,
}

/// What a write's response says about the caller's rate: `X-RateLimit-Limit` is the bucket (the burst),
/// `X-RateLimit-Remaining` what is left of it now; the bucket refills at the sustained rate.
#[derive(Debug, Clone, Copy)]
pub struct RateInfo {
    pub limit: u32,
    pub remaining: u32,
}

impl RateInfo {
    const NONE: RateInfo = RateInfo {
        limit: 0,
        remaining: 0,
    };

    pub fn headers(&self) -> [(HeaderName, HeaderValue); 2] {
        [
            (
                HeaderName::from_static("x-ratelimit-limit"),
                HeaderValue::from(self.limit),
            ),
            (
                HeaderName::from_static("x-ratelimit-remaining"),
                HeaderValue::from(self.remaining),
            ),
        ]
    }
}

/// A request body, read within its limit and the body budget; the bytes it holds stay counted against
/// the budget until this is dropped (at the end of the request).
#[derive(Debug)]
pub struct Body {
    pub bytes: actix_web::web::Bytes,
    _budget: Option<OwnedSemaphorePermit>,
}

impl Admission {
    pub fn new(settings: AdmissionSettings) -> Self {
        let writes = Rate::new(settings.writes_per_second, settings.burst);
        let searches = Rate::new(settings.searches_per_second, settings.search_burst);
        let db = Arc::new(Semaphore::new(settings.db_concurrency.max(1)));
        let budget = settings.body_budget_bytes.clamp(1, Semaphore::MAX_PERMITS);
        Admission {
            settings: Arc::new(settings),
            writes,
            searches,
            db,
            bodies: Arc::new(Semaphore::new(budget)),
        }
    }

    /// The key a caller's rate is counted under: the authenticated user, else the client address.
    pub fn caller_key(&self, req: &HttpRequest) -> String {
        if let Some(c) = req.extensions().get::<Caller>() {
            return format!("user:{}", c.username);
        }
        client_ip(req, &self.settings.trusted_proxies)
            .map_or_else(|| "ip:unknown".into(), |p| format!("ip:{p}"))
    }

    /// Charges `records` writes to the caller; 429 when over its rate.
    pub fn admit_writes(&self, req: &HttpRequest, records: usize) -> Result<RateInfo, ApiError> {
        match &self.writes {
            None => Ok(RateInfo::NONE),
            Some(rate) => rate.charge(&self.caller_key(req), records, "write"),
        }
    }

    /// 429 before a batch's body is read when the caller has no unit left (known from a refusal moments
    /// ago); the batch is charged once parsed, so a refused batch costs nothing.
    pub fn precheck_writes(&self, req: &HttpRequest) -> Result<(), ApiError> {
        match &self.writes {
            None => Ok(()),
            Some(rate) => rate.precheck(&self.caller_key(req), "write"),
        }
    }

    /// Charges one search to the caller; 429 when over its search rate.
    pub fn admit_search(&self, req: &HttpRequest) -> Result<RateInfo, ApiError> {
        match &self.searches {
            None => Ok(RateInfo::NONE),
            Some(rate) => rate.charge(&self.caller_key(req), 1, "search"),
        }
    }

    /// 503 at once when every database slot is taken: checked before a body is read, so that a
    /// request that would be shed costs no memory.
    pub fn check_capacity(&self) -> Result<(), ApiError> {
        if self.db.available_permits() == 0 {
            ds_metrics::LOAD_SHED.increment(1);
            return Err(ApiError::Overloaded);
        }
        Ok(())
    }

    /// Reads the request body: 413 past `limit` (at once when `Content-Length` says so), 503 +
    /// `Retry-After` when the bytes of bodies held at once would pass the body budget. A declared length
    /// is reserved before the first byte is read; a chunked body reserves as it arrives.
    pub async fn read_body(
        &self,
        req: &HttpRequest,
        mut payload: actix_web::web::Payload,
        limit: usize,
    ) -> Result<Body, ApiError> {
        use futures_util::StreamExt;
        let declared = req
            .headers()
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        let mut held: Option<OwnedSemaphorePermit> = None;
        let reserve = |held: &mut Option<OwnedSemaphorePermit>, n: usize| -> Result<(), ApiError> {
            if n == 0 {
                return Ok(());
            }
            let n = u32::try_from(n).map_err(|_| ApiError::PayloadTooLarge(limit))?;
            let permit = self.bodies.clone().try_acquire_many_owned(n).map_err(|_| {
                ds_metrics::LOAD_SHED.increment(1);
                ApiError::BodyBudget
            })?;
            match held {
                Some(h) => h.merge(permit),
                None => *held = Some(permit),
            }
            Ok(())
        };
        let reserved = declared.unwrap_or(0);
        reserve(&mut held, reserved)?;
        let mut buf = actix_web::web::BytesMut::with_capacity(reserved);
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::Audit(ds_domain::AuditError::InvalidJson(format!(
                    "the body could not be read: {e}"
                )))
            })?;
            if buf.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge(limit));
            }
            let beyond = (buf.len() + chunk.len()).saturating_sub(reserved.max(buf.len()));
            reserve(&mut held, beyond)?;
            buf.extend_from_slice(&chunk);
        }
        Ok(Body {
            bytes: buf.freeze(),
            _budget: held,
        })
    }

    /// A slot in the database, or 503 at once when every slot is taken.
    pub fn db_slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.db.clone().try_acquire_owned().map_err(|_| {
            ds_metrics::LOAD_SHED.increment(1);
            ApiError::Overloaded
        })
    }

    /// Bytes of request bodies held now (reserved against the body budget).
    pub fn body_bytes_held(&self) -> usize {
        self.settings
            .body_budget_bytes
            .clamp(1, Semaphore::MAX_PERMITS)
            .saturating_sub(self.bodies.available_permits())
    }

    /// Requests in the database now.
    pub fn db_in_use(&self) -> usize {
        self.settings.db_concurrency.max(1) - self.db.available_permits()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
    use super::*;
    use actix_web::test::TestRequest;

    fn proxy() -> IpAddr {
        "10.0.0.1".parse().unwrap()
    }

    #[test]
    fn every_forwarded_for_line_is_read_and_the_right_most_untrusted_address_wins() {
        let req = TestRequest::default()
            .peer_addr("10.0.0.1:5000".parse().unwrap())
            .append_header(("x-forwarded-for", "203.0.113.9, 198.51.100.7"))
            .append_header(("x-forwarded-for", "192.0.2.44, 10.0.0.1"))
            .to_http_request();
        assert_eq!(
            client_ip(&req, &[proxy()]),
            Some("192.0.2.44".parse().unwrap())
        );
    }

    #[test]
    fn forwarded_for_from_an_untrusted_peer_is_ignored() {
        let req = TestRequest::default()
            .peer_addr("192.0.2.1:5000".parse().unwrap())
            .append_header(("x-forwarded-for", "203.0.113.9"))
            .to_http_request();
        assert_eq!(
            client_ip(&req, &[proxy()]),
            Some("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn a_search_limit_of_its_own_refuses_with_retry_after_of_at_least_one_second() {
        let admission = Admission::new(AdmissionSettings {
            searches_per_second: 0.5,
            search_burst: 2,
            ..AdmissionSettings::default()
        });
        let req = TestRequest::default()
            .peer_addr("192.0.2.1:5000".parse().unwrap())
            .to_http_request();
        assert!(admission.admit_search(&req).is_ok());
        assert!(admission.admit_search(&req).is_ok());
        match admission.admit_search(&req) {
            Err(ApiError::RateLimited {
                retry_after_secs,
                what,
                ..
            }) => {
                assert!(retry_after_secs >= 1);
                assert_eq!(what, "search");
            }
            other => panic!("expected 429, got {other:?}"),
        }
        // Writes are counted apart.
        assert!(admission.admit_writes(&req, 1).is_ok());
    }
}
