//! Authentication and authorization end to end: the service's real kube client talks HTTPS to a fake
//! Kubernetes API server of ours (TokenReview, SubjectAccessReview) through a kubeconfig.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use ds_tests::kube_server::{FakeKubeApi, TokenInfo};
use ds_tests::{Reply, TestApp, fixtures, spawn_app_with};
use serde_json::{Value, json};

const WRITER: &str = "system:serviceaccount:kubernaut:gateway";
const READER: &str = "system:serviceaccount:kubernaut:dashboard";
const SCRAPER: &str = "system:serviceaccount:monitoring:prometheus";

async fn setup(extra: &[(&str, &str)]) -> (FakeKubeApi, TestApp) {
    let kube = FakeKubeApi::start().await.unwrap();
    let ours = vec!["datastorage".to_owned()];
    let token = |user: &str, audiences: &[String], expired| TokenInfo {
        username: user.to_owned(),
        groups: vec!["system:serviceaccounts".into()],
        audiences: audiences.to_vec(),
        expired,
    };
    kube.add_token("writer-token", token(WRITER, &ours, false));
    kube.add_token("reader-token", token(READER, &ours, false));
    kube.add_token("scraper-token", token(SCRAPER, &ours, false));
    kube.add_token("expired-token", token(WRITER, &ours, true));
    kube.add_token(
        "other-audience-token",
        token(WRITER, &["vault".to_owned()], false),
    );
    kube.allow(WRITER, "create");
    kube.allow(WRITER, "get");
    kube.allow(READER, "get");
    kube.allow(SCRAPER, "metrics");
    let path = kube.kubeconfig.display().to_string();
    let mut env = vec![
        ("DATASTORAGE_AUTH_MODE", "kubernetes"),
        ("DATASTORAGE_AUTH_KUBECONFIG", path.as_str()),
        ("DATASTORAGE_AUTH_AUDIENCES", "datastorage"),
    ];
    env.extend_from_slice(extra);
    let app = spawn_app_with(&env).await.unwrap();
    (kube, app)
}

async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    body: Option<&Value>,
    auth: Option<&str>,
) -> Reply {
    let url = app.url(path);
    let mut req = match method {
        "GET" => app.client.get(url),
        _ => app.client.post(url),
    };
    if let Some(b) = body {
        req = req.json(b);
    }
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    app.send(req).await.unwrap()
}

/// Every route of `/api/v1`, with whether it writes.
fn routes() -> Vec<(&'static str, String, Option<Value>, bool)> {
    let mut r: Vec<(&'static str, String, Option<Value>, bool)> =
        ["remediation", "aianalysis", "workflow", "execution"]
            .iter()
            .map(|k| {
                (
                    "POST",
                    format!("/api/v1/audit/{k}"),
                    Some(fixtures::of(k, 1)),
                    true,
                )
            })
            .collect();
    r.push((
        "POST",
        "/api/v1/audit/batch".into(),
        Some(json!({"records": [{"kind": "workflow", "record": fixtures::workflow(9)}]})),
        true,
    ));
    r.push(("GET", "/api/v1/audit/remediation/1".into(), None, false));
    r.push((
        "GET",
        format!("/api/v1/audit/trail/{}", fixtures::CORRELATION),
        None,
        false,
    ));
    r.push((
        "POST",
        "/api/v1/audit/search".into(),
        Some(json!({"query": "OOMKilled", "limit": 3})),
        false,
    ));
    r.push(("GET", "/api/v1/openapi.json".into(), None, false));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_bad_credentials_and_a_reader_cannot_write() {
    let (kube, app) = setup(&[]).await;
    let refused: [(Option<&str>, u16, &str); 7] = [
        (None, 401, "UNAUTHORIZED"),
        (Some("Basic d3JpdGVyOnB3"), 401, "UNAUTHORIZED"),
        (Some("Bearer"), 401, "UNAUTHORIZED"),
        (Some("Bearer two words"), 401, "UNAUTHORIZED"),
        (Some("Bearer unknown-token"), 401, "UNAUTHORIZED"),
        (Some("Bearer expired-token"), 401, "UNAUTHORIZED"),
        (Some("Bearer other-audience-token"), 401, "UNAUTHORIZED"),
    ];
    for (method, path, body, writes) in routes() {
        for (auth, status, code) in refused {
            let r = call(&app, method, &path, body.as_ref(), auth).await;
            assert_eq!(
                r.status, status,
                "{method} {path} with {auth:?}: {:#}",
                r.body
            );
            assert_eq!(r.body["error"]["code"], code);
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"datastorage\"")
            );
        }
        let r = call(
            &app,
            method,
            &path,
            body.as_ref(),
            Some("Bearer reader-token"),
        )
        .await;
        if writes {
            assert_eq!(r.status, 403, "reader on {method} {path}: {:#}", r.body);
            assert_eq!(r.body["error"]["code"], "FORBIDDEN");
        } else {
            assert!(
                r.status == 200 || r.status == 404,
                "reader on {method} {path}: {} {:#}",
                r.status,
                r.body
            );
        }
    }
    assert_eq!(
        app.db.count("audit_records").await.unwrap(),
        0,
        "no refused write changed anything"
    );
    for (method, path, body, _) in routes() {
        let r = call(
            &app,
            method,
            &path,
            body.as_ref(),
            Some("Bearer writer-token"),
        )
        .await;
        assert!(
            [200, 201, 404].contains(&r.status),
            "writer on {method} {path}: {} {:#}",
            r.status,
            r.body
        );
    }
    assert_eq!(app.db.count("audit_records").await.unwrap(), 5);
    // Probes stay open.
    assert_eq!(app.get("/healthz").await.unwrap().status, 200);
    assert_eq!(app.get("/readyz").await.unwrap().status, 200);
    assert_eq!(
        kube.unauthenticated_calls(),
        0,
        "the service presents its own credentials"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_with_one_token_makes_one_review_and_denials_are_cached_too() {
    let (kube, app) = setup(&[]).await;
    let bodies: Vec<Value> = (0..20).map(|i| fixtures::workflow(100 + i)).collect();
    let replies = futures_util::future::join_all(bodies.iter().map(|b| {
        call(
            &app,
            "POST",
            "/api/v1/audit/workflow",
            Some(b),
            Some("Bearer writer-token"),
        )
    }))
    .await;
    assert!(replies.iter().all(|r| r.status == 201));
    assert_eq!(kube.token_reviews(), 1, "one TokenReview for 20 requests");
    assert_eq!(
        kube.access_reviews(),
        1,
        "one SubjectAccessReview for 20 writes"
    );
    // Reading is another question: one more SubjectAccessReview, no new TokenReview.
    call(
        &app,
        "GET",
        "/api/v1/audit/workflow/1",
        None,
        Some("Bearer writer-token"),
    )
    .await;
    assert_eq!((kube.token_reviews(), kube.access_reviews()), (1, 2));
    for _ in 0..5 {
        let r = call(
            &app,
            "GET",
            "/api/v1/audit/workflow/1",
            None,
            Some("Bearer unknown-token"),
        )
        .await;
        assert_eq!(r.status, 401);
    }
    assert_eq!(kube.token_reviews(), 2, "a denied token is cached as well");
    for _ in 0..3 {
        let r = call(
            &app,
            "POST",
            "/api/v1/audit/workflow",
            Some(&fixtures::workflow(1)),
            Some("Bearer reader-token"),
        )
        .await;
        assert_eq!(r.status, 403);
    }
    assert_eq!((kube.token_reviews(), kube.access_reviews()), (3, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_failures_are_503_and_are_not_cached() {
    let (kube, app) = setup(&[]).await;
    kube.set_down(Some(500));
    let r = call(
        &app,
        "POST",
        "/api/v1/audit/workflow",
        Some(&fixtures::workflow(1)),
        Some("Bearer writer-token"),
    )
    .await;
    assert_eq!(r.status, 503, "{:#}", r.body);
    assert_eq!(r.body["error"]["code"], "SERVICE_UNAVAILABLE");
    assert!(r.header("retry-after").is_some());
    kube.set_down(None);
    let r = call(
        &app,
        "POST",
        "/api/v1/audit/workflow",
        Some(&fixtures::workflow(1)),
        Some("Bearer writer-token"),
    )
    .await;
    assert_eq!(r.status, 201, "{:#}", r.body);
    assert_eq!(kube.token_reviews(), 2, "the failure was not cached");

    // The API server gone entirely: still 503, never 401.
    kube.stop().await;
    let r = call(
        &app,
        "GET",
        "/api/v1/audit/workflow/1",
        None,
        Some("Bearer reader-token"),
    )
    .await;
    assert_eq!(r.status, 503, "{:#}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_protected_with_their_own_permission() {
    let (_kube, app) = setup(&[]).await;
    let scrape = |auth: Option<&'static str>| {
        let mut req = app
            .client
            .get(format!("http://{}/metrics", app.metrics_addr));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        app.send(req)
    };
    let r = scrape(None).await.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["code"], "UNAUTHORIZED");
    assert_eq!(
        scrape(Some("Bearer reader-token")).await.unwrap().status,
        403
    );
    let res = app
        .client
        .get(format!("http://{}/metrics", app.metrics_addr))
        .header("Authorization", "Bearer scraper-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(
        text.contains("datastorage_auth_failures_total{reason=\"forbidden\"}"),
        "{text}"
    );
    for token in ["reader-token", "scraper-token", "writer-token"] {
        assert!(!text.contains(token));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_list_decides_without_subject_access_reviews() {
    let (kube, app) = setup(&[
        ("DATASTORAGE_AUTHZ_MODE", "allowlist"),
        ("DATASTORAGE_AUTHZ_WRITERS", WRITER),
        ("DATASTORAGE_AUTHZ_READERS", "group:system:serviceaccounts"),
    ])
    .await;
    let w = call(
        &app,
        "POST",
        "/api/v1/audit/workflow",
        Some(&fixtures::workflow(1)),
        Some("Bearer writer-token"),
    )
    .await;
    assert_eq!(w.status, 201);
    let r = call(
        &app,
        "POST",
        "/api/v1/audit/workflow",
        Some(&fixtures::workflow(2)),
        Some("Bearer reader-token"),
    )
    .await;
    assert_eq!(r.status, 403);
    let r = call(
        &app,
        "GET",
        &format!("/api/v1/audit/workflow/{}", w.body["id"]),
        None,
        Some("Bearer reader-token"),
    )
    .await;
    assert_eq!(r.status, 200, "readers by group");
    assert_eq!(kube.access_reviews(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_idempotency_keys_belong_to_the_authenticated_caller() {
    let (kube, app) = setup(&[
        ("DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND", "0.001"),
        ("DATASTORAGE_RATE_LIMIT_BURST", "1"),
    ])
    .await;
    kube.add_token(
        "second-writer-token",
        TokenInfo {
            username: "system:serviceaccount:kubernaut:executor".into(),
            groups: vec![],
            audiences: vec!["datastorage".into()],
            expired: false,
        },
    );
    kube.allow("system:serviceaccount:kubernaut:executor", "create");
    let write = |n: u32, token: &'static str| {
        let req = app
            .client
            .post(app.url("/api/v1/audit/execution"))
            .header("Authorization", format!("Bearer {token}"))
            .header("Idempotency-Key", "same-key")
            .json(&fixtures::execution(n));
        app.send(req)
    };
    assert_eq!(write(1, "writer-token").await.unwrap().status, 201);
    assert_eq!(write(2, "writer-token").await.unwrap().status, 429);
    // Same key, another caller, another body: not a conflict, another bucket.
    assert_eq!(write(3, "second-writer-token").await.unwrap().status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_logs_errors_or_metrics() {
    let sink = ds_tests::LogSink::default();
    let writer = sink.clone();
    tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .init();
    let (kube, app) = setup(&[("DATASTORAGE_AUTH_TIMEOUT_MS", "1000")]).await;
    let mut bodies = String::new();
    for auth in [
        "Bearer writer-token",
        "Bearer reader-token",
        "Bearer unknown-secret-token",
        "Bearer expired-token",
        "Basic c2VjcmV0LXBhc3N3b3Jk",
    ] {
        let r = call(
            &app,
            "POST",
            "/api/v1/audit/workflow",
            Some(&fixtures::workflow(1)),
            Some(auth),
        )
        .await;
        bodies.push_str(&r.body.to_string());
    }
    kube.set_down(Some(503));
    let r = call(
        &app,
        "GET",
        "/api/v1/audit/workflow/1",
        None,
        Some("Bearer down-secret-token"),
    )
    .await;
    assert_eq!(r.status, 503);
    bodies.push_str(&r.body.to_string());
    let logs = sink.text();
    assert!(
        logs.contains("\"caller\":\"system:serviceaccount:kubernaut:gateway\""),
        "request log names the caller"
    );
    for secret in [
        "writer-token",
        "reader-token",
        "unknown-secret-token",
        "expired-token",
        "c2VjcmV0LXBhc3N3b3Jk",
        "down-secret-token",
        ds_tests::kube_server::SERVICE_TOKEN,
    ] {
        assert!(!logs.contains(secret), "{secret} in the logs");
        assert!(!bodies.contains(secret), "{secret} in a response");
    }
}

/// Spellings of `path` that a router might take for it: percent-encoded letters (each in turn, upper-
/// and lower-case hex, and all at once), doubled slashes, dot segments (plain and encoded), other
/// letter cases, a trailing slash, and absolute-form request targets of several of them.
fn spellings(path: &str, authority: &str) -> Vec<String> {
    let encode_at = |i: usize, lower: bool| -> String {
        path.char_indices()
            .map(|(j, c)| match (j == i, lower) {
                (true, false) => format!("%{:02X}", c as u32),
                (true, true) => format!("%{:02x}", c as u32),
                _ => c.to_string(),
            })
            .collect()
    };
    let letters: Vec<usize> = path
        .char_indices()
        .filter(|(_, c)| c.is_ascii_alphanumeric())
        .map(|(i, _)| i)
        .collect();
    let mut out = vec![path.to_owned()];
    out.extend(letters.iter().map(|&i| encode_at(i, false)));
    out.push(encode_at(1, true));
    out.push(
        path.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    format!("%{:02X}", c as u32)
                } else {
                    c.to_string()
                }
            })
            .collect(),
    );
    let slashes: Vec<usize> = path.match_indices('/').map(|(i, _)| i).collect();
    for &i in &slashes {
        out.push(format!("{}/{}", &path[..i], &path[i..]));
        out.push(format!("{}/.{}", &path[..i], &path[i..]));
        out.push(format!("{}/%2e{}", &path[..i], &path[i..]));
    }
    if let Some(&second) = slashes.get(1) {
        out.push(format!("{}/x/..{}", &path[..second], &path[second..]));
        out.push(format!("{}/x/%2e%2e{}", &path[..second], &path[second..]));
    }
    out.push(path.to_uppercase());
    out.push(path.replacen("/api/", "/API/", 1));
    out.push(path.replacen("/v1/", "/V1/", 1));
    out.push(format!("{path}/"));
    out.push(format!("{path}%2F"));
    for target in [
        path.to_owned(),
        encode_at(1, false),
        format!("/{path}"),
        path.replacen("/v1/", "/v%31/", 1),
    ] {
        out.push(format!("http://{authority}{target}"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_registered_route_in_every_spelling_refuses_anonymous_and_wrong_callers() {
    let (kube, app) = setup(&[("DATASTORAGE_RATE_LIMIT_SEARCHES_PER_SECOND", "0")]).await;
    // Write-only and metrics-only identities: the wrong caller of read routes.
    for (token, user, verb) in [
        (
            "writeonly-token",
            "system:serviceaccount:kubernaut:writeonly",
            "create",
        ),
        (
            "metricsonly-token",
            "system:serviceaccount:monitoring:other",
            "metrics",
        ),
        (
            "counsel-token",
            "system:serviceaccount:legal:counsel",
            "legalholds/create",
        ),
    ] {
        kube.add_token(
            token,
            TokenInfo {
                username: user.into(),
                groups: vec![],
                audiences: vec!["datastorage".into()],
                expired: false,
            },
        );
        kube.allow(user, verb);
    }
    for verb in ["legalholds/delete", "legalholds/list"] {
        kube.allow("system:serviceaccount:legal:counsel", verb);
    }
    // A record to read, so that a read that got through would answer 200 with data.
    let written = call(
        &app,
        "POST",
        "/api/v1/audit/remediation",
        Some(&fixtures::remediation(1)),
        Some("Bearer writer-token"),
    )
    .await;
    assert_eq!(written.status, 201);
    let id = written.body["id"].as_i64().unwrap().to_string();
    let authority = app.addr.to_string();
    let methods = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "BREW",
    ];
    let routes = ds_http::routes::api_routes();
    let (mut routed, mut checked) = (0, 0);
    for route in &routes {
        let path = route
            .pattern
            .replace("{correlation_id}", fixtures::CORRELATION)
            .replace("{kind}", "remediation")
            .replace("{id}", &id);
        assert!(
            !path.contains('{'),
            "a parameter this test cannot fill: {path}"
        );
        let kind = route.pattern.rsplit('/').next().unwrap_or_default();
        let body = match route.method.as_str() {
            "POST" if route.pattern.ends_with("/batch") => {
                json!({"records": [{"kind": "workflow", "record": fixtures::workflow(2)}]})
            }
            "POST" if route.pattern.ends_with("/search") => json!({"query": "OOMKilled"}),
            "POST" if route.pattern.ends_with("/holds") => {
                json!({"correlationId": fixtures::CORRELATION, "reason": "audit"})
            }
            "DELETE" if route.pattern.starts_with("/api/v1/holds/") => json!({"reason": "done"}),
            "POST" => fixtures::of(kind, 2),
            _ => Value::Null,
        };
        let body = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&body).unwrap()
        };
        let (right, wrong) = match route.access {
            ds_domain::ports::Access::Write => ("Bearer writer-token", "Bearer reader-token"),
            ds_domain::ports::Access::HoldCreate
            | ds_domain::ports::Access::HoldRelease
            | ds_domain::ports::Access::HoldList => ("Bearer counsel-token", "Bearer writer-token"),
            _ => ("Bearer reader-token", "Bearer writeonly-token"),
        };
        for target in spellings(&path, &authority) {
            let send = |method: &'static str, auth: Option<&'static str>| {
                let target = target.clone();
                let body = body.clone();
                async move {
                    let mut headers = vec![("Content-Type", "application/json")];
                    if let Some(a) = auth {
                        headers.push(("Authorization", a));
                    }
                    ds_tests::raw_http::request(app.addr, method, &target, &headers, &body)
                        .await
                        .unwrap()
                }
            };
            let method: &'static str = methods
                .iter()
                .find(|m| **m == route.method.as_str())
                .unwrap();
            let allowed = send(method, Some(right)).await;
            assert_ne!(allowed.status, 401, "{method} {target}: {}", allowed.body);
            assert_ne!(allowed.status, 403, "{method} {target}: {}", allowed.body);
            // 404/405: the router sends this spelling to no handler of this method (or to another
            // handler, which answered "not found"); anything else came from this route's handler.
            let routes_here = ![404, 405].contains(&allowed.status);
            routed += usize::from(routes_here);
            for m in methods {
                for auth in [None, Some(wrong), Some("Bearer metricsonly-token")] {
                    let r = send(m, auth).await;
                    checked += 1;
                    assert!(
                        !(200..300).contains(&r.status) && r.status < 500,
                        "{m} {target} as {auth:?}: {} {}",
                        r.status,
                        r.body
                    );
                    if m == method && routes_here {
                        let expected = if auth.is_none() { 401 } else { 403 };
                        assert_eq!(r.status, expected, "{m} {target} as {auth:?}: {}", r.body);
                    }
                    if !routes_here {
                        let refused = if auth.is_none() { 401 } else { 403 };
                        assert!(
                            [refused, 404, 405].contains(&r.status),
                            "{m} {target} as {auth:?}: {} {}",
                            r.status,
                            r.body
                        );
                    }
                }
            }
        }
    }
    assert!(
        routed > routes.len() * 3,
        "encoded spellings route: {routed}"
    );
    assert!(checked > 1000);
    // Only the right callers' writes were stored: one of each write route's record, at most.
    let stored = app.db.count("audit_records").await.unwrap();
    assert!(stored <= 7, "{stored} records: a refused write got through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_random_tokens_cost_a_bounded_number_of_reviews() {
    let (kube, app) = setup(&[
        ("DATASTORAGE_AUTH_FAILURE_BURST", "20"),
        ("DATASTORAGE_AUTH_FAILURES_PER_MINUTE", "1"),
        ("DATASTORAGE_AUTH_MAX_CONCURRENT_REVIEWS", "4"),
    ])
    .await;
    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<u16, usize>::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let worker = || async {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= 10_000 {
                break;
            }
            let token = format!("Bearer random.{}.{i}", uuid::Uuid::new_v4().simple());
            let r = call(
                &app,
                "GET",
                "/api/v1/audit/remediation/1",
                None,
                Some(&token),
            )
            .await;
            if r.status == 429 {
                assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
            }
            *statuses.lock().unwrap().entry(r.status).or_default() += 1;
        }
    };
    futures_util::future::join_all((0..16).map(|_| worker())).await;
    let statuses = statuses.into_inner().unwrap();
    let reviews = kube.token_reviews();
    assert!(
        (20..=24).contains(&reviews),
        "{reviews} TokenReviews for 10,000 random tokens (burst 20 + 4 in flight at most): {statuses:?}"
    );
    assert_eq!(statuses.get(&401).copied().unwrap_or(0), reviews);
    assert_eq!(statuses.get(&429).copied().unwrap_or(0), 10_000 - reviews);
    // The limit is the address's: a valid token from it is refused too until it regains a unit, and
    // the decision cache still serves known callers elsewhere (another address is not limited).
    let r = call(
        &app,
        "GET",
        "/api/v1/audit/remediation/1",
        None,
        Some("Bearer writer-token"),
    )
    .await;
    assert_eq!(r.status, 429);
}
