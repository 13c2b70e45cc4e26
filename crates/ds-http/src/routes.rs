//! The route table. API routes are declared once, in [`declare`], through [`Api::route`], which accepts
//! only handlers whose first argument is an [`Authorized`](crate::auth::Authorized) (the
//! [`Guarded`] bound) and reads the access each route requires off that type. The same declaration
//! builds the actix router ([`configure`]) and the list of registered routes ([`api_routes`]) that the
//! tests walk and the OpenAPI check compares, so neither can drift from the router.

use crate::auth::Guarded;
use crate::{handlers, hold_handlers, log_handlers};
use actix_web::http::Method;
use actix_web::{FromRequest, Handler, Responder, web};
use ds_domain::kind::Kind;
use ds_domain::ports::Access;

/// One registered API route: method, actix path pattern, and the access its handler demands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub method: Method,
    pub pattern: String,
    pub access: Access,
}

/// The API routes being declared: every one guarded by construction.
#[derive(Default)]
pub struct Api {
    resources: Vec<(String, Option<actix_web::Resource>)>,
    routes: Vec<RouteInfo>,
}

impl Api {
    /// Registers `handler` for `method` on `pattern`. Only handlers that take an `Authorized<_>` first
    /// compile here.
    pub fn route<F, Args>(&mut self, method: Method, pattern: &str, handler: F)
    where
        F: Handler<Args>,
        Args: FromRequest + Guarded + 'static,
        F::Output: Responder + 'static,
    {
        self.routes.push(RouteInfo {
            method: method.clone(),
            pattern: pattern.to_owned(),
            access: Args::ACCESS,
        });
        let access = Args::ACCESS;
        let route = web::method(method)
            .to(handler)
            .wrap(actix_web::middleware::from_fn(move |req, next| {
                crate::auth::gatekeeper(access, req, next)
            }));
        // One resource per pattern: actix answers 405 from the first resource whose pattern matches.
        match self.resources.iter_mut().find(|(p, _)| p == pattern) {
            Some((_, slot)) => *slot = slot.take().map(|r| r.route(route)),
            None => self.resources.push((
                pattern.to_owned(),
                Some(web::resource(pattern).route(route)),
            )),
        }
    }
}

/// Every API route, in matching order (a literal segment before a parameter in the same place).
fn declare(api: &mut Api) {
    for kind in Kind::ALL {
        api.route(
            Method::POST,
            &format!("/api/v1/audit/{}", kind.as_str()),
            move |auth, s, r, b| handlers::write_one(kind, auth, s, r, b),
        );
    }
    api.route(Method::POST, "/api/v1/audit/batch", handlers::write_batch);
    api.route(Method::POST, "/api/v1/audit/search", handlers::search);
    api.route(Method::GET, "/api/v1/audit/records", handlers::list);
    api.route(
        Method::GET,
        "/api/v1/audit/trail/{correlation_id}",
        handlers::trail,
    );
    api.route(
        Method::GET,
        "/api/v1/audit/{kind}/{id}",
        handlers::get_record,
    );
    api.route(Method::GET, "/api/v1/audit/export", log_handlers::export);
    api.route(
        Method::GET,
        "/api/v1/log/checkpoint",
        log_handlers::checkpoint,
    );
    api.route(
        Method::GET,
        "/api/v1/log/proof/inclusion",
        log_handlers::inclusion,
    );
    api.route(
        Method::GET,
        "/api/v1/log/proof/consistency",
        log_handlers::consistency,
    );
    api.route(Method::POST, "/api/v1/holds", hold_handlers::place);
    api.route(Method::GET, "/api/v1/holds", hold_handlers::list);
    api.route(Method::DELETE, "/api/v1/holds/{id}", hold_handlers::release);
    api.route(Method::GET, "/api/v1/openapi.json", crate::openapi::serve);
}

/// The registered API routes, from the same declaration that builds the router.
pub fn api_routes() -> Vec<RouteInfo> {
    let mut api = Api::default();
    declare(&mut api);
    api.routes
}

/// The public routes (probes), which need no token.
pub const PUBLIC_ROUTES: [&str; 2] = ["/healthz", "/readyz"];

/// Registers every route: the API (guarded), the probes, and a JSON 404 for everything else.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let mut api = Api::default();
    declare(&mut api);
    for resource in api.resources.into_iter().filter_map(|(_, r)| r) {
        cfg.service(resource);
    }
    cfg.service(web::resource(PUBLIC_ROUTES[0]).route(web::get().to(handlers::healthz)))
        .service(web::resource(PUBLIC_ROUTES[1]).route(web::get().to(handlers::readyz)))
        .default_service(web::to(handlers::not_found));
}
