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
    /// Requests in the database at once.
    pub db_concurrency: usize,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        AdmissionSettings {
            writes_per_second: 500.0,
            burst: 750,
            db_concurrency: 128,
            trusted_proxies: Vec::new(),
        }
    }
}

type Limiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// The state of admission control, shared by all workers.
#[derive(Clone)]
pub struct Admission {
    settings: Arc<AdmissionSettings>,
    limiter: Option<Arc<Limiter>>,
    clock: DefaultClock,
    db: Arc<Semaphore>,
    checks: Arc<AtomicU64>,
}

/// What a write's response says about the caller's rate: `X-RateLimit-Limit` is the bucket (the burst),
/// `X-RateLimit-Remaining` what is left of it now; the bucket refills at the sustained rate.
#[derive(Debug, Clone, Copy)]
pub struct RateInfo {
    pub limit: u32,
    pub remaining: u32,
}

impl RateInfo {
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

impl Admission {
    pub fn new(settings: AdmissionSettings) -> Self {
        let rate = settings.writes_per_second;
        let limiter = if rate.is_finite() && rate > 0.0 {
            let period = std::time::Duration::from_secs_f64((1.0 / rate).min(1e9));
            let burst = NonZeroU32::new(settings.burst.max(1)).unwrap_or(NonZeroU32::MIN);
            Quota::with_period(period).map(|q| {
                Arc::new(
                    RateLimiter::keyed(q.allow_burst(burst))
                        .with_middleware::<StateInformationMiddleware>(),
                )
            })
        } else {
            None
        };
        let db = Arc::new(Semaphore::new(settings.db_concurrency.max(1)));
        Admission {
            settings: Arc::new(settings),
            limiter,
            clock: DefaultClock::default(),
            db,
            checks: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The key a caller's rate is counted under.
    pub fn caller_key(&self, req: &HttpRequest) -> String {
        if let Some(c) = req.extensions().get::<Caller>() {
            return format!("user:{}", c.username);
        }
        let peer = req.peer_addr().map(|a| a.ip());
        let trusted = |ip: &IpAddr| self.settings.trusted_proxies.contains(ip);
        if let Some(p) = peer
            && trusted(&p)
            && let Some(xff) = req
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
        {
            let client = xff
                .rsplit(',')
                .filter_map(|a| a.trim().parse::<IpAddr>().ok())
                .find(|a| !trusted(a));
            if let Some(c) = client {
                return format!("ip:{c}");
            }
        }
        peer.map_or_else(|| "ip:unknown".into(), |p| format!("ip:{p}"))
    }

    /// Charges `records` writes to the caller; 429 when over its rate.
    pub fn admit_writes(&self, req: &HttpRequest, records: usize) -> Result<RateInfo, ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(RateInfo {
                limit: 0,
                remaining: 0,
            });
        };
        let burst = self.settings.burst.max(1);
        let cost = u32::try_from(records).unwrap_or(u32::MAX).clamp(1, burst);
        let key = self.caller_key(req);
        // Forget idle callers now and then, so the table stays as small as the set of active callers.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let n = NonZeroU32::new(cost).unwrap_or(NonZeroU32::MIN);
        match limiter.check_key_n(&key, n) {
            Ok(Ok(snapshot)) => Ok(RateInfo {
                limit: burst,
                remaining: snapshot.remaining_burst_capacity(),
            }),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.clock.now());
                metrics::counter!("datastorage_rate_limit_exceeded_total").increment(1);
                Err(ApiError::RateLimited {
                    retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                    rate: self.settings.writes_per_second,
                    burst,
                })
            }
            // Cannot happen: the cost is clamped to the burst.
            Err(_) => Err(ApiError::RateLimited {
                retry_after_secs: 1,
                rate: self.settings.writes_per_second,
                burst,
            }),
        }
    }

    /// A slot in the database, or 503 at once when every slot is taken.
    pub fn db_slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.db.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("datastorage_load_shed_total").increment(1);
            ApiError::Overloaded
        })
    }

    /// Requests in the database now.
    pub fn db_in_use(&self) -> usize {
        self.settings.db_concurrency.max(1) - self.db.available_permits()
    }
}
