//! Authentication and authorization (contract §6), attached to handlers by construction.
//!
//! Every API handler takes an [`Authorized<A>`] as its first argument, where `A` is [`Write`] or
//! [`Read`]. The extractor runs after routing, for the handler actix chose, whatever spelling of the
//! path led there (percent-encoded, absolute-form, ...): it checks that the service is started, reads
//! `Authorization: Bearer <token>`, asks the [`Authenticator`] port (TokenReview) who it is and whether
//! that identity has access `A`, and only then lets actix call the handler. API routes can only be
//! registered through [`crate::routes::Api`], whose `route` accepts only handlers whose first argument
//! is an `Authorized<_>` (the [`Guarded`] bound): a handler without it does not compile into the
//! router, and the access a route requires is read off its handler's type.
//!
//! The gate fails closed: an app without a [`Gate`] refuses every API request (500), it never lets one
//! through. Without an authenticator (auth mode `none`, loopback only) every caller is allowed.
//!
//! Token reviews are bounded before they are made: a credential that cannot be a bearer token (RFC 6750
//! `b64token` characters, at most 8 KiB) is refused without a review, and a peer whose authentications
//! keep failing is answered 429 for a while (per-peer limit on failed authentications, [`ReviewLimits`]).
//!
//! The token never leaves this module except to the authenticator: not logged, not in errors.

use crate::admission::{Caller, client_ip};
use crate::error::ApiError;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use ds_domain::ports::{Access, AuthError, Authenticator};
use ds_metrics::labels::AuthFailure;
use futures_util::future::LocalBoxFuture;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use std::marker::PhantomData;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest bearer token accepted (service account tokens are ~1 KB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a request was refused, as counted in `datastorage_auth_failures_total{reason}`.
fn count_failure(reason: AuthFailure) {
    ds_metrics::AUTH_FAILURES.with((reason,)).increment(1);
}

/// An access level a handler requires, as a type.
pub trait AccessLevel: 'static {
    const ACCESS: Access;
}

/// Write audit records (verb `create`).
#[derive(Debug)]
pub struct Write;
/// Read audit records, trails, search, the API document (verb `get`).
#[derive(Debug)]
pub struct Read;

/// Place a legal hold (resource `legalholds`, verb `create`).
#[derive(Debug)]
pub struct PlaceHold;
/// Release a legal hold (resource `legalholds`, verb `delete`).
#[derive(Debug)]
pub struct ReleaseHold;
/// List legal holds (resource `legalholds`, verb `list`).
#[derive(Debug)]
pub struct ListHolds;

impl AccessLevel for PlaceHold {
    const ACCESS: Access = Access::HoldCreate;
}
impl AccessLevel for ReleaseHold {
    const ACCESS: Access = Access::HoldRelease;
}
impl AccessLevel for ListHolds {
    const ACCESS: Access = Access::HoldList;
}

impl AccessLevel for Write {
    const ACCESS: Access = Access::Write;
}
impl AccessLevel for Read {
    const ACCESS: Access = Access::Read;
}

/// Proof that the caller was allowed access `A`: only the extractor makes one.
#[derive(Debug)]
pub struct Authorized<A> {
    caller: Option<Caller>,
    _access: PhantomData<A>,
}

impl<A> Authorized<A> {
    /// The authenticated caller (`None` in auth mode `none`).
    pub fn caller(&self) -> Option<&Caller> {
        self.caller.as_ref()
    }
}

/// Handler argument lists whose first element is an [`Authorized`]: the only handlers
/// [`crate::routes::Api`] registers. `ACCESS` is the access that first argument demands.
pub trait Guarded {
    const ACCESS: Access;
}

macro_rules! guarded {
    ($($t:ident),*) => {
        impl<A: AccessLevel, $($t),*> Guarded for (Authorized<A>, $($t,)*) {
            const ACCESS: Access = A::ACCESS;
        }
    };
}
guarded!();
guarded!(B);
guarded!(B, C);
guarded!(B, C, D);
guarded!(B, C, D, E);
guarded!(B, C, D, E, F);

/// What bounds the reviews of tokens the authenticator does not know yet: a per-peer limit on failed
/// authentications (each failure costs the peer one unit; a peer out of units is answered 429 without
/// a review until it has one again), and a bound on such reviews in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReviewLimits {
    /// Failures per minute a peer regains; 0 turns the limit off.
    pub per_minute: u32,
    /// Failures a peer may have in a row.
    pub burst: u32,
    /// Reviews of unknown tokens in flight at once.
    pub concurrent: usize,
    /// Longest wait for one of those (then 503).
    pub wait: Duration,
}

impl Default for ReviewLimits {
    fn default() -> Self {
        ReviewLimits {
            per_minute: 60,
            burst: 50,
            concurrent: 16,
            wait: Duration::from_secs(5),
        }
    }
}

type PeerLimiter =
    RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock, StateInformationMiddleware>;

/// Everything the extractor needs, registered as app data by [`crate::app`]; shared by all workers.
#[derive(Clone)]
pub struct Gate {
    /// Who may call (`None`: auth mode `none`, nothing checked).
    auth: Option<Arc<dyn Authenticator>>,
    startup: Arc<crate::Startup>,
    trusted_proxies: Arc<Vec<IpAddr>>,
    failures: Option<Arc<PeerLimiter>>,
    /// Peers out of failure units, and until when.
    blocked: Arc<quick_cache::sync::Cache<IpAddr, Instant>>,
    /// Reviews of tokens the authenticator does not know, in flight.
    reviews: Arc<tokio::sync::Semaphore>,
    review_wait: Duration,
}

impl Gate {
    /// A gate that lets every caller in (auth mode `none`).
    pub fn open(startup: Arc<crate::Startup>) -> Self {
        Gate {
            auth: None,
            startup,
            trusted_proxies: Arc::new(Vec::new()),
            failures: None,
            blocked: Arc::new(quick_cache::sync::Cache::new(16)),
            reviews: Arc::new(tokio::sync::Semaphore::new(1)),
            review_wait: Duration::ZERO,
        }
    }

    /// A gate that asks `auth` about every caller.
    pub fn checking(
        auth: Arc<dyn Authenticator>,
        startup: Arc<crate::Startup>,
        trusted_proxies: Vec<IpAddr>,
        limits: ReviewLimits,
    ) -> Self {
        let limiter = NonZeroU32::new(limits.per_minute).map(|per_minute| {
            let burst = NonZeroU32::new(limits.burst.max(1)).unwrap_or(NonZeroU32::MIN);
            Arc::new(
                RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst))
                    .with_middleware::<StateInformationMiddleware>(),
            )
        });
        Gate {
            auth: Some(auth),
            startup,
            trusted_proxies: Arc::new(trusted_proxies),
            failures: limiter,
            blocked: Arc::new(quick_cache::sync::Cache::new(65_536)),
            reviews: Arc::new(tokio::sync::Semaphore::new(limits.concurrent.max(1))),
            review_wait: limits.wait,
        }
    }

    /// The same gate, waiting for `startup`.
    pub fn with_startup(mut self, startup: Arc<crate::Startup>) -> Self {
        self.startup = startup;
        self
    }

    /// 429 when `peer` used up its failed authentications.
    fn check_peer(&self, peer: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(peer) = peer else { return Ok(()) };
        if let Some(until) = self.blocked.get(&peer) {
            let now = Instant::now();
            if until > now {
                count_failure(AuthFailure::TooManyFailures);
                return Err(ApiError::TooManyAuthFailures {
                    retry_after_secs: ceil_secs(until - now),
                });
            }
            self.blocked.remove_if(&peer, |u| *u <= now);
        }
        Ok(())
    }

    /// Charges one failed authentication to `peer`; the failure that uses its last unit blocks it until
    /// it regains one, so that no review is made for it meanwhile.
    fn charge_failure(&self, peer: Option<IpAddr>) {
        let (Some(peer), Some(limiter)) = (peer, &self.failures) else {
            return;
        };
        let wait = match limiter.check_key(&peer) {
            Ok(snapshot) if snapshot.remaining_burst_capacity() > 0 => None,
            Ok(snapshot) => Some(snapshot.quota().replenish_interval()),
            Err(not_until) => Some(not_until.wait_time_from(DefaultClock::default().now())),
        };
        if let Some(wait) = wait {
            self.blocked.insert(peer, Instant::now() + wait);
        }
        if limiter.len() > 65_536 {
            limiter.retain_recent();
        }
    }

    /// The whole check: started, token, authentication, authorization. `Ok(None)` in auth mode `none`.
    pub async fn authorize(
        &self,
        req: &HttpRequest,
        access: Access,
    ) -> Result<Option<Caller>, ApiError> {
        if access != Access::Metrics && !self.startup.is_started() {
            return Err(ApiError::Starting);
        }
        let Some(auth) = self.auth.clone() else {
            return Ok(None);
        };
        let peer = client_ip(req, &self.trusted_proxies);
        self.check_peer(peer)?;
        let token = bearer(req)?;
        let known = auth.known(&token);
        let answer = match known {
            Some(answer) => answer,
            None => {
                // A review: wait for one of the review slots, then look at the peer again (failures
                // of others may have used up its units meanwhile): at most `concurrent` reviews run
                // past a peer's last unit.
                let slot = tokio::time::timeout(self.review_wait, self.reviews.acquire()).await;
                let Ok(Ok(_slot)) = slot else {
                    count_failure(AuthFailure::Unavailable);
                    tracing::warn!("authentication unavailable: every review slot stayed busy");
                    return Err(ApiError::AuthUnavailable);
                };
                self.check_peer(peer)?;
                auth.authenticate(&token).await
            }
        };
        let who = match answer {
            Ok(who) => who,
            Err(AuthError::Unauthenticated(_)) => {
                count_failure(AuthFailure::InvalidToken);
                self.charge_failure(peer);
                return Err(ApiError::Unauthorized(
                    "the bearer token is not valid for this service",
                ));
            }
            Err(AuthError::Unavailable(e)) => {
                count_failure(AuthFailure::Unavailable);
                tracing::warn!(error = %e, "authentication unavailable: the Kubernetes API could not review the token");
                return Err(ApiError::AuthUnavailable);
            }
        };
        let allowed = auth.authorize(&who, access).await.map_err(|e| {
            count_failure(AuthFailure::Unavailable);
            tracing::warn!(error = %e, caller = %who.username, "authorization unavailable: the Kubernetes API could not answer the access review");
            ApiError::AuthUnavailable
        })?;
        if !allowed {
            count_failure(AuthFailure::Forbidden);
            tracing::info!(caller = %who.username, ?access, "access denied");
            return Err(ApiError::Forbidden(access));
        }
        let caller = Caller {
            username: who.username,
            groups: who.groups,
        };
        req.extensions_mut().insert(caller.clone());
        Ok(Some(caller))
    }
}

/// Whole seconds to wait, rounded up, at least 1: a client told `Retry-After: 0` retries into the
/// same limit.
pub fn ceil_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Whether `token` can be a bearer token at all: RFC 6750's `b64token` (letters, digits,
/// `-._~+/`, then `=` padding), at most [`MAX_TOKEN_BYTES`].
pub fn plausible_token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && token.len() <= MAX_TOKEN_BYTES
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// The bearer token of the request, or why there is none usable.
fn bearer(req: &HttpRequest) -> Result<String, ApiError> {
    let mut values = req
        .headers()
        .get_all(actix_web::http::header::AUTHORIZATION);
    let Some(value) = values.next() else {
        count_failure(AuthFailure::Missing);
        return Err(ApiError::Unauthorized(
            "an Authorization: Bearer token is required",
        ));
    };
    let malformed = || {
        count_failure(AuthFailure::Malformed);
        ApiError::Unauthorized("the Authorization header must be `Bearer <token>`")
    };
    if values.next().is_some() {
        return Err(malformed());
    }
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = value.split_once(' ').ok_or_else(malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || !plausible_token(token) {
        return Err(malformed());
    }
    Ok(token.to_owned())
}

fn gate(req: &HttpRequest) -> Result<Gate, ApiError> {
    req.app_data::<web::Data<Gate>>()
        .map(|g| g.get_ref().clone())
        .ok_or(ApiError::NoGate)
}

/// The outcome of the route's gatekeeper, for the handler's extractor.
#[derive(Debug, Clone)]
struct Checked {
    access: Access,
    caller: Option<Caller>,
}

/// The middleware [`crate::routes::Api::route`] puts on every API route: authorizes `access` before
/// any of the handler's arguments is extracted (so no other argument can fail, or read anything,
/// first), and leaves the outcome for the handler's [`Authorized`].
pub(crate) async fn gatekeeper(
    access: Access,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let checked = match gate(req.request()) {
        Ok(g) => g.authorize(req.request(), access).await,
        Err(e) => Err(e),
    };
    match checked {
        Ok(caller) => {
            req.extensions_mut().insert(Checked { access, caller });
            Ok(next.call(req).await?.map_into_boxed_body())
        }
        Err(e) => Ok(req.error_response(e)),
    }
}

impl<A: AccessLevel> FromRequest for Authorized<A> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    /// The gatekeeper's outcome for this access; without one (a handler registered some other way),
    /// the whole check here.
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let checked = req
            .extensions()
            .get::<Checked>()
            .filter(|c| c.access == A::ACCESS)
            .cloned();
        let req = req.clone();
        Box::pin(async move {
            let caller = match checked {
                Some(c) => c.caller,
                None => gate(&req)?.authorize(&req, A::ACCESS).await?,
            };
            Ok(Authorized {
                caller,
                _access: PhantomData,
            })
        })
    }
}

/// The metrics listener's middleware: every request is a scrape (access `Metrics`), whatever its path.
/// Fails closed like the extractor: no [`Gate`], no scrape.
pub async fn metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let checked = match gate(req.request()) {
        Ok(g) => g.authorize(req.request(), Access::Metrics).await,
        Err(e) => Err(e),
    };
    if let Err(e) = checked {
        return Ok(req.error_response(e));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
