//! The HTTP face of the service: actix-web routes, DTOs, middleware, and the one mapping from errors
//! to HTTP statuses and contract error codes ([`error::ApiError`]).
//!
//! Architecture invariant: only this crate knows JSON DTOs and status codes.

pub mod admission;
pub mod auth;
pub mod dto;
pub mod error;
mod handlers;
mod hold_handlers;
mod log_handlers;
pub mod middleware;
pub mod openapi;
pub mod routes;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, web};
use ds_domain::AuditService;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use error::ApiError;

/// Request limits (contract §6).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Body limit of the single-record endpoints (2 MiB).
    pub body_bytes: usize,
    /// Body limit of `/api/v1/audit/batch` (16 MiB).
    pub batch_body_bytes: usize,
    /// Most records in one batch (1000).
    pub batch_items: usize,
    /// Budget of the readiness check (5 s).
    pub readiness_timeout: Duration,
    /// Longest time a request may work before it is answered 503 (30 s).
    pub request_timeout: Duration,
    /// Deepest nesting of a JSON body (32).
    pub json_depth: usize,
    /// Most bytes of request headers, names and values (16 KiB).
    pub header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_bytes: 2 * 1024 * 1024,
            batch_body_bytes: 16 * 1024 * 1024,
            batch_items: 1000,
            readiness_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            json_depth: 32,
            header_bytes: 16 * 1024,
        }
    }
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub service: AuditService,
    /// The transparency log's reads (checkpoints, proofs, export).
    pub log: ds_domain::log::LogService,
    pub limits: Limits,
    /// Rate limits and load shedding.
    pub admission: admission::Admission,
    /// Who may call: the authorization gate every API handler's `Authorized<_>` asks.
    pub gate: auth::Gate,
    /// Peers whose `X-Forwarded-For` is believed (for the gate's per-peer limit).
    trusted_proxies: Vec<std::net::IpAddr>,
    /// Set when shutdown begins: readiness answers 503 from then on.
    pub shutting_down: Arc<AtomicBool>,
    /// Until start-up is complete (database reachable, migrations applied): why not yet. API requests
    /// are answered 503 and readiness reports the reason meanwhile.
    pub startup: Arc<Startup>,
    /// Legal holds (contract §9); `None`: the hold routes answer 503.
    pub retention: Option<Arc<dyn ds_domain::retention::RetentionStore>>,
}

/// The start-up phase, shared by the task that waits for the database and the handlers.
#[derive(Debug, Default)]
pub struct Startup {
    started: AtomicBool,
    waiting_for: std::sync::Mutex<String>,
}

impl Startup {
    /// A service that still has to start.
    pub fn pending(reason: &str) -> Self {
        Startup {
            started: AtomicBool::new(false),
            waiting_for: std::sync::Mutex::new(reason.to_owned()),
        }
    }

    /// A service that is started.
    pub fn done() -> Self {
        Startup {
            started: AtomicBool::new(true),
            waiting_for: std::sync::Mutex::default(),
        }
    }

    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Why the service is not started yet (`None` once it is).
    pub fn waiting_for(&self) -> Option<String> {
        if self.is_started() {
            return None;
        }
        Some(match self.waiting_for.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
    }

    pub fn set_waiting_for(&self, reason: String) {
        match self.waiting_for.lock() {
            Ok(mut g) => *g = reason,
            Err(poisoned) => *poisoned.into_inner() = reason,
        }
    }

    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
    }
}

impl AppState {
    /// With the default admission settings (500 writes/s, burst 750 per caller; 128 requests in the
    /// database).
    pub fn new(service: AuditService, log: ds_domain::log::LogService, limits: Limits) -> Self {
        Self::with_admission(
            service,
            log,
            limits,
            admission::AdmissionSettings::default(),
        )
    }

    pub fn with_admission(
        service: AuditService,
        log: ds_domain::log::LogService,
        limits: Limits,
        admission: admission::AdmissionSettings,
    ) -> Self {
        let startup = Arc::new(Startup::done());
        AppState {
            service,
            log,
            limits,
            trusted_proxies: admission.trusted_proxies.clone(),
            admission: admission::Admission::new(admission),
            gate: auth::Gate::open(startup.clone()),
            shutting_down: Arc::new(AtomicBool::new(false)),
            startup,
            retention: None,
        }
    }

    /// Serves legal holds from `store`.
    pub fn with_retention(mut self, store: Arc<dyn ds_domain::retention::RetentionStore>) -> Self {
        self.retention = Some(store);
        self
    }

    /// Gates the API on `startup` (see [`Startup`]).
    pub fn with_startup(mut self, startup: Arc<Startup>) -> Self {
        self.gate = self.gate.with_startup(startup.clone());
        self.startup = startup;
        self
    }

    /// Requires a bearer token on every API route (and on the metrics listener), checked by `auth`;
    /// a peer whose authentications fail more than `failures` allows is answered 429.
    pub fn with_auth(
        mut self,
        auth: Arc<dyn ds_domain::ports::Authenticator>,
        failures: auth::ReviewLimits,
    ) -> Self {
        self.gate = auth::Gate::checking(
            auth,
            self.startup.clone(),
            self.trusted_proxies.clone(),
            failures,
        );
        self
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// The application: every route of the API (each guarded by its handler's `Authorized<_>`, see
/// [`routes`]), the probes, and the middleware that gives every response an `X-Correlation-ID` and
/// every error the contract's JSON shape.
pub fn app(
    state: AppState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let gate = state.gate.clone();
    App::new()
        .app_data(web::Data::new(gate))
        .app_data(web::Data::new(state))
        .wrap(actix_web::middleware::from_fn(middleware::envelope))
        .configure(routes::configure)
}

/// The metrics listener's application: `GET /metrics` answered by `scrape`, every request (whatever
/// its path) checked for access `Metrics` by `gate` first.
pub fn metrics_app<F, Fut>(
    gate: auth::Gate,
    scrape: F,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
>
where
    F: Fn() -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = String> + 'static,
{
    App::new()
        .app_data(web::Data::new(gate))
        .wrap(actix_web::middleware::from_fn(auth::metrics))
        .wrap(actix_web::middleware::from_fn(middleware::envelope))
        .route(
            "/metrics",
            web::get().to(move || {
                let scrape = scrape.clone();
                async move {
                    actix_web::HttpResponse::Ok()
                        .content_type("text/plain; version=0.0.4")
                        .body(scrape().await)
                }
            }),
        )
}
