//! The gate on its own: the real router (`routes::configure`) with only a [`Gate`] as app data, and an
//! in-memory identity provider behind the `Authenticator` port. A refused request never reaches a
//! handler: the handlers need an `AppState` this app does not have, so one that ran would answer 500.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use super::*;
use crate::routes::{api_routes, configure};
use actix_web::http::StatusCode;
use actix_web::test::{TestRequest, call_service, init_service, read_body};
use actix_web::{App, HttpResponse};
use ds_domain::ports::Identity;
use rstest::rstest;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Tokens and what each identity may do.
#[derive(Default)]
struct Directory {
    tokens: HashMap<&'static str, (&'static str, Vec<Access>)>,
    reviews: AtomicUsize,
    asked: Mutex<Vec<Access>>,
}

#[async_trait::async_trait]
impl Authenticator for Directory {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        self.reviews.fetch_add(1, Ordering::SeqCst);
        match self.tokens.get(token) {
            Some((user, _)) => Ok(Identity {
                username: (*user).to_owned(),
                groups: Vec::new(),
            }),
            None => Err(AuthError::Unauthenticated("unknown token".into())),
        }
    }
    async fn authorize(&self, who: &Identity, access: Access) -> Result<bool, AuthError> {
        self.asked.lock().unwrap().push(access);
        Ok(self
            .tokens
            .values()
            .any(|(u, allowed)| *u == who.username && allowed.contains(&access)))
    }
}

fn directory() -> Arc<Directory> {
    let mut d = Directory::default();
    d.tokens
        .insert("writer", ("sa:writer", vec![Access::Write, Access::Read]));
    d.tokens
        .insert("writeonly", ("sa:writeonly", vec![Access::Write]));
    d.tokens.insert("reader", ("sa:reader", vec![Access::Read]));
    d.tokens
        .insert("scraper", ("sa:scraper", vec![Access::Metrics]));
    d.tokens.insert(
        "counsel",
        (
            "sa:counsel",
            vec![Access::HoldCreate, Access::HoldRelease, Access::HoldList],
        ),
    );
    Arc::new(d)
}

fn gate(dir: Arc<Directory>, failures: ReviewLimits) -> Gate {
    Gate::checking(dir, Arc::new(crate::Startup::done()), Vec::new(), failures)
}

/// The real router behind the envelope, with `gate` as its only app data.
macro_rules! router {
    ($gate:expr) => {
        init_service(
            App::new()
                .app_data(web::Data::new($gate))
                .wrap(actix_web::middleware::from_fn(crate::middleware::envelope))
                .configure(configure),
        )
        .await
    };
}

/// A concrete path for a route pattern.
fn concrete(pattern: &str) -> String {
    pattern
        .replace("{correlation_id}", "rr-2025-10-06-abc123")
        .replace("{kind}", "remediation")
        .replace("{id}", "1")
}

/// The path with its `i`-th letter percent-encoded.
fn encoded_at(path: &str, i: usize) -> String {
    path.char_indices()
        .map(|(j, c)| {
            if j == i {
                format!("%{:02X}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

async fn status_of(
    app: &impl actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
    >,
    method: &actix_web::http::Method,
    uri: &str,
    token: Option<&str>,
) -> StatusCode {
    let mut req = TestRequest::default()
        .method(method.clone())
        .uri(uri)
        .peer_addr("10.1.2.3:4000".parse().unwrap())
        .insert_header(("content-type", "application/json"))
        .set_payload("{}");
    if let Some(t) = token {
        req = req.insert_header(("authorization", format!("Bearer {t}")));
    }
    call_service(app, req.to_request()).await.status()
}

#[actix_web::test]
async fn every_registered_route_refuses_anonymous_and_wrong_callers_in_every_spelling() {
    let dir = directory();
    // Thousands of bad tokens from one address: the per-peer limit is off here (tested below).
    let no_limit = ReviewLimits {
        per_minute: 0,
        ..ReviewLimits::default()
    };
    let app = router!(gate(dir.clone(), no_limit));
    let routes = api_routes();
    assert!(routes.len() >= 9, "the declaration registers the API");
    for route in &routes {
        let path = concrete(&route.pattern);
        // Every letter encoded in turn (lower- and upper-case hex), and the whole path.
        let mut spellings: Vec<String> = path
            .char_indices()
            .filter(|(_, c)| c.is_ascii_alphanumeric())
            .flat_map(|(i, _)| {
                let upper = encoded_at(&path, i);
                [upper.to_lowercase().replace("/API", "/api"), upper]
            })
            .collect();
        spellings.push(format!("http://datastorage.local{path}"));
        spellings.push(format!("http://datastorage.local{}", encoded_at(&path, 1)));
        spellings.push(path.clone());
        let wrong = match route.access {
            Access::Write => "reader",
            _ => "scraper",
        };
        for uri in &spellings {
            let anonymous = status_of(&app, &route.method, uri, None).await;
            let wrong_access = status_of(&app, &route.method, uri, Some(wrong)).await;
            let bad_token = status_of(&app, &route.method, uri, Some("not-a-known-token")).await;
            // A spelling either routes to the handler (then the gate answers) or routes nowhere.
            assert!(
                [StatusCode::UNAUTHORIZED, StatusCode::NOT_FOUND].contains(&anonymous),
                "{} {uri} anonymous: {anonymous}",
                route.method
            );
            if anonymous == StatusCode::UNAUTHORIZED {
                assert_eq!(
                    wrong_access,
                    StatusCode::FORBIDDEN,
                    "{} {uri}",
                    route.method
                );
                assert_eq!(
                    bad_token,
                    StatusCode::UNAUTHORIZED,
                    "{} {uri}",
                    route.method
                );
            } else {
                assert_eq!(
                    wrong_access,
                    StatusCode::NOT_FOUND,
                    "{} {uri}",
                    route.method
                );
            }
        }
        // The canonical spelling and its encoded forms do route: the gate, not the router, refused.
        assert_eq!(
            status_of(&app, &route.method, &path, None).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status_of(&app, &route.method, &encoded_at(&path, 1), None).await,
            StatusCode::UNAUTHORIZED,
            "{} {}",
            route.method,
            encoded_at(&path, 1)
        );
    }
}

#[actix_web::test]
async fn the_access_asked_is_the_one_the_handler_declares() {
    let dir = directory();
    let app = router!(gate(dir.clone(), ReviewLimits::default()));
    for route in api_routes() {
        dir.asked.lock().unwrap().clear();
        let path = concrete(&route.pattern);
        // An allowed caller passes the gate; the handler then fails for want of its state (500).
        let token = match route.access {
            Access::Write => "writeonly",
            Access::HoldCreate | Access::HoldRelease | Access::HoldList => "counsel",
            _ => "reader",
        };
        let passed = status_of(&app, &route.method, &path, Some(token)).await;
        assert_ne!(passed, StatusCode::UNAUTHORIZED);
        assert_ne!(passed, StatusCode::FORBIDDEN, "{} {path}", route.method);
        assert_eq!(*dir.asked.lock().unwrap(), vec![route.access]);
    }
}

#[actix_web::test]
async fn an_app_without_a_gate_fails_closed() {
    let ran = Arc::new(AtomicUsize::new(0));
    let seen = ran.clone();
    let app = init_service(App::new().route(
        "/api/v1/probe",
        web::get().to(move |_: Authorized<Read>| {
            seen.fetch_add(1, Ordering::SeqCst);
            async { HttpResponse::Ok().finish() }
        }),
    ))
    .await;
    let res = call_service(&app, TestRequest::get().uri("/api/v1/probe").to_request()).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[actix_web::test]
async fn a_service_still_starting_answers_503_before_any_review() {
    let dir = directory();
    let g = gate(dir.clone(), ReviewLimits::default())
        .with_startup(Arc::new(crate::Startup::pending("waiting")));
    let app = router!(g);
    for route in api_routes() {
        let s = status_of(
            &app,
            &route.method,
            &concrete(&route.pattern),
            Some("writer"),
        )
        .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(dir.reviews.load(Ordering::SeqCst), 0);
}

#[actix_web::test]
async fn a_peer_that_keeps_failing_is_refused_without_reviews() {
    let dir = directory();
    let limits = ReviewLimits {
        per_minute: 1,
        burst: 3,
        ..ReviewLimits::default()
    };
    let app = router!(gate(dir.clone(), limits));
    let uri = "/api/v1/audit/remediation/1";
    for i in 0..3 {
        let s = status_of(
            &app,
            &actix_web::http::Method::GET,
            uri,
            Some(&format!("random{i}")),
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    for i in 3..50 {
        let req = TestRequest::get()
            .uri(uri)
            .peer_addr("10.1.2.3:4000".parse().unwrap())
            .insert_header(("authorization", format!("Bearer random{i}")))
            .to_request();
        let res = call_service(&app, req).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = res
            .headers()
            .get("retry-after")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1, "Retry-After {retry}");
    }
    assert_eq!(
        dir.reviews.load(Ordering::SeqCst),
        3,
        "one review per allowed failure"
    );
    // Another peer is not affected, and neither is a valid token from it.
    let req = TestRequest::get()
        .uri(uri)
        .peer_addr("10.9.9.9:4000".parse().unwrap())
        .insert_header(("authorization", "Bearer random-other"))
        .to_request();
    assert_eq!(
        call_service(&app, req).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[actix_web::test]
async fn credentials_that_cannot_be_tokens_are_refused_without_a_review() {
    let dir = directory();
    let app = router!(gate(dir.clone(), ReviewLimits::default()));
    let long = "a".repeat(MAX_TOKEN_BYTES + 1);
    for value in [
        "Bearer",
        "Bearer ",
        "Basic d3JpdGVyOnB3",
        "Bearer two words",
        "Bearer tok\"en",
        "Bearer {json}",
        "Bearer ====",
        &format!("Bearer {long}"),
    ] {
        let req = TestRequest::get()
            .uri("/api/v1/audit/remediation/1")
            .insert_header(("authorization", value))
            .to_request();
        let res = call_service(&app, req).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{value:.40}");
        let body = read_body(res).await;
        assert!(!String::from_utf8_lossy(&body).contains("word"));
    }
    // Two Authorization headers are ambiguous: refused too.
    let req = TestRequest::get()
        .uri("/api/v1/audit/remediation/1")
        .append_header(("authorization", "Bearer writer"))
        .append_header(("authorization", "Bearer reader"))
        .to_request();
    assert_eq!(
        call_service(&app, req).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(dir.reviews.load(Ordering::SeqCst), 0);
}

#[rstest]
#[case("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl", true)]
#[case("abc-DEF_123.~+/", true)]
#[case("dG9rZW4=", true)]
#[case("dG9rZW4==", true)]
#[case("", false)]
#[case("=", false)]
#[case("to=ken", false)]
#[case("tok en", false)]
#[case("tök", false)]
#[case("tok\"en", false)]
#[case("tok,en", false)]
fn plausible_tokens(#[case] token: &str, #[case] ok: bool) {
    assert_eq!(plausible_token(token), ok, "{token:?}");
}

#[test]
fn the_longest_plausible_token_is_the_limit() {
    assert!(plausible_token(&"a".repeat(MAX_TOKEN_BYTES)));
    assert!(!plausible_token(&"a".repeat(MAX_TOKEN_BYTES + 1)));
}

#[rstest]
#[case(Duration::ZERO, 1)]
#[case(Duration::from_nanos(1), 1)]
#[case(Duration::from_millis(999), 1)]
#[case(Duration::from_secs(1), 1)]
#[case(Duration::from_millis(1001), 2)]
#[case(Duration::from_secs(7), 7)]
fn retry_after_is_rounded_up_and_never_zero(#[case] wait: Duration, #[case] secs: u64) {
    assert_eq!(ceil_secs(wait), secs);
}
