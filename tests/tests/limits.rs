//! Admission control and request limits end to end: per-caller write rate (429 with `Retry-After` and
//! `X-RateLimit-*`), batches charged per record, trusted proxies, load shedding (503 at once), request
//! and statement timeouts, JSON depth and header size limits, each in the contract's error shape and
//! each changing nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use diesel_async::{AsyncConnection, SimpleAsyncConnection};
use ds_tests::{Reply, TestApp, fixtures, spawn_app_with};
use serde_json::json;

/// One record per 1000 s after the burst: nothing refills while a test runs.
const SLOW: (&str, &str) = ("DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND", "0.001");

fn assert_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{:#}", r.body);
    assert_eq!(r.body["error"]["code"], code, "{:#}", r.body);
    assert!(r.header("x-correlation-id").is_some());
}

async fn write(app: &TestApp, n: u32, forwarded_for: Option<&str>) -> Reply {
    let mut req = app
        .client
        .post(app.url("/api/v1/audit/remediation"))
        .json(&fixtures::remediation(n));
    if let Some(xff) = forwarded_for {
        req = req.header("X-Forwarded-For", xff);
    }
    app.send(req).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_rate_gets_429_with_retry_after_and_nothing_is_written() {
    let app = spawn_app_with(&[SLOW, ("DATASTORAGE_RATE_LIMIT_BURST", "3")])
        .await
        .unwrap();
    for (n, remaining) in [(1, "2"), (2, "1"), (3, "0")] {
        let r = write(&app, n, None).await;
        assert_eq!(r.status, 201, "{:#}", r.body);
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some(remaining));
    }
    let r = write(&app, 4, None).await;
    assert_error(&r, 429, "RATE_LIMIT_EXCEEDED");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1, "Retry-After {retry}");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(app.db.count("audit_records").await.unwrap(), 3);
    // Reads are not rate limited.
    let r = app
        .get("/api/v1/audit/trail/rr-2025-10-06-abc123")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_costs_one_unit_per_record() {
    let app = spawn_app_with(&[SLOW, ("DATASTORAGE_RATE_LIMIT_BURST", "5")])
        .await
        .unwrap();
    let batch = |from: u32, n: u32| json!({"records": (from..from + n).map(|i| json!({"kind": "remediation", "record": fixtures::remediation(i)})).collect::<Vec<_>>()});
    let r = app.post("/api/v1/audit/batch", &batch(1, 4)).await.unwrap();
    assert_eq!(r.status, 201, "{:#}", r.body);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("1"));
    let r = app
        .post("/api/v1/audit/batch", &batch(10, 2))
        .await
        .unwrap();
    assert_error(&r, 429, "RATE_LIMIT_EXCEEDED");
    assert_eq!(app.db.count("audit_records").await.unwrap(), 4);
    let r = write(&app, 20, None).await;
    assert_eq!(r.status, 201, "the last unit is still there for one record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    // Not trusted: X-Forwarded-For is ignored, both "clients" are the one peer.
    let app = spawn_app_with(&[SLOW, ("DATASTORAGE_RATE_LIMIT_BURST", "1")])
        .await
        .unwrap();
    assert_eq!(write(&app, 1, Some("10.0.0.1")).await.status, 201);
    assert_eq!(write(&app, 2, Some("10.0.0.2")).await.status, 429);

    // Trusted: each forwarded client has its own bucket; a spoofed left-most entry does not help.
    let app = spawn_app_with(&[
        SLOW,
        ("DATASTORAGE_RATE_LIMIT_BURST", "1"),
        ("DATASTORAGE_TRUSTED_PROXIES", "127.0.0.1, ::1"),
    ])
    .await
    .unwrap();
    assert_eq!(write(&app, 1, Some("10.0.0.1")).await.status, 201);
    assert_eq!(write(&app, 2, Some("10.0.0.2")).await.status, 201);
    assert_eq!(write(&app, 3, Some("10.0.0.1")).await.status, 429);
    assert_eq!(
        write(&app, 4, Some("10.9.9.9, 10.0.0.1")).await.status,
        429,
        "the right-most untrusted address is the client"
    );
}

/// Holds an exclusive lock on `audit_records` until dropped (rolled back).
async fn lock_records(app: &TestApp) -> diesel_async::AsyncPgConnection {
    let mut conn = diesel_async::AsyncPgConnection::establish(&app.db.url)
        .await
        .unwrap();
    conn.batch_execute("BEGIN; LOCK TABLE audit_records IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    conn
}

/// Sends a write from a task of its own; the handle gives its status.
fn write_in_background(app: &TestApp, n: u32) -> tokio::task::JoinHandle<u16> {
    let client = app.client.clone();
    let url = app.url("/api/v1/audit/remediation");
    tokio::spawn(async move {
        client
            .post(url)
            .json(&fixtures::remediation(n))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

/// Waits until `n` requests hold a database slot (a condition on the service's state, not a delay).
async fn until_in_database(app: &TestApp, n: usize) {
    while app.state.admission.db_in_use() < n {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_database_concurrency_requests_are_shed_at_once_with_503() {
    let app = spawn_app_with(&[("DATASTORAGE_DB_CONCURRENCY", "1")])
        .await
        .unwrap();
    let mut lock = lock_records(&app).await;
    let blocked = write_in_background(&app, 1);
    until_in_database(&app, 1).await;
    let r = app
        .get("/api/v1/audit/trail/rr-2025-10-06-abc123")
        .await
        .unwrap();
    assert_error(&r, 503, "SERVICE_UNAVAILABLE");
    assert_eq!(r.header("retry-after"), Some("1"));
    let r = write(&app, 2, None).await;
    assert_error(&r, 503, "SERVICE_UNAVAILABLE");
    lock.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        blocked.await.unwrap(),
        201,
        "the admitted request completes"
    );
    assert_eq!(app.db.count("audit_records").await.unwrap(), 1);
    assert_eq!(write(&app, 2, None).await.status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_request_timeout_gets_503_and_leaves_nothing() {
    let app = spawn_app_with(&[("DATASTORAGE_REQUEST_TIMEOUT_SECS", "1")])
        .await
        .unwrap();
    let mut lock = lock_records(&app).await;
    let r = write(&app, 1, None).await;
    assert_error(&r, 503, "SERVICE_UNAVAILABLE");
    assert!(r.header("retry-after").is_some());
    // The caller is gone: the group commit cancels its statement, which stops waiting on the lock.
    until_no_lock_waits(&app).await;
    lock.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(app.db.count("audit_records").await.unwrap(), 0);
    assert_eq!(write(&app, 1, None).await.status, 201);
}

/// Waits until no session of this test's database waits on a lock; panics after 10 s.
async fn until_no_lock_waits(app: &TestApp) {
    use diesel_async::RunQueryDsl;
    let mut conn = app.db.conn().await.unwrap();
    for _ in 0..1000 {
        let w: Waiting = diesel::sql_query(
            // The write's statement (the embedding worker's housekeeping may wait on the lock too).
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE 'WITH jobs AS%'",
        )
        .get_result(&mut conn)
        .await
        .unwrap();
        if w.n == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the abandoned write still waits on the lock: it was not cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_over_the_statement_timeout_is_a_503_not_a_500() {
    let app = spawn_app_with(&[("DATASTORAGE_DB_STATEMENT_TIMEOUT_MS", "200")])
        .await
        .unwrap();
    let mut lock = lock_records(&app).await;
    let r = write(&app, 1, None).await;
    assert_error(&r, 503, "SERVICE_UNAVAILABLE");
    assert!(!r.body.to_string().contains("statement"), "{:#}", r.body);
    lock.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(app.db.count("audit_records").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_nested_deeper_than_the_limit_is_refused_before_parsing() {
    let app = spawn_app_with(&[]).await.unwrap();
    let mut record = fixtures::remediation(1);
    let mut deep = json!("leaf");
    for _ in 0..40 {
        deep = json!([deep]);
    }
    record["extraDeep"] = deep;
    let r = app
        .post("/api/v1/audit/remediation", &record)
        .await
        .unwrap();
    assert_error(&r, 400, "INVALID_JSON");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("32"));
    // A hostile body: a million brackets, no panic, no stack overflow.
    let body = "[".repeat(1_000_000);
    let r = app
        .send(
            app.client
                .post(app.url("/api/v1/audit/batch"))
                .header("content-type", "application/json")
                .body(body),
        )
        .await
        .unwrap();
    assert_error(&r, 400, "INVALID_JSON");
    // Brackets inside strings do not count.
    let mut record = fixtures::remediation(2);
    record["message"] = json!(
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ {{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{ \" ]"
    );
    let r = app
        .post("/api/v1/audit/remediation", &record)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{:#}", r.body);
    assert_eq!(app.db.count("audit_records").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_in_the_contract_shape() {
    let app = spawn_app_with(&[]).await.unwrap();
    let r = app
        .send(
            app.client
                .post(app.url("/api/v1/audit/remediation"))
                .header("x-padding", "a".repeat(20 * 1024))
                .json(&fixtures::remediation(1)),
        )
        .await
        .unwrap();
    assert_error(&r, 431, "PAYLOAD_TOO_LARGE");
    assert_eq!(app.db.count("audit_records").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_is_a_503_after_the_wait_timeout_not_a_hang() {
    // The embedding worker and the maintenance task stay off: their housekeeping would compete
    // for the one connection.
    let app = spawn_app_with(&[
        ("DATASTORAGE_DB_POOL_SIZE", "1"),
        ("DATASTORAGE_DB_WAIT_TIMEOUT_MS", "300"),
        ("DATASTORAGE_EMBEDDING_WORKER_INTERVAL_MS", "0"),
        ("DATASTORAGE_RETENTION_MAINTENANCE_INTERVAL_MS", "0"),
    ])
    .await
    .unwrap();
    let mut lock = lock_records(&app).await;
    let blocked = write_in_background(&app, 1);
    until_waiting_on_a_lock(&app).await;
    // The write holds the only connection (waiting on the lock): a read cannot get one.
    let r = app
        .get("/api/v1/audit/trail/rr-2025-10-06-abc123")
        .await
        .unwrap();
    assert_error(&r, 503, "SERVICE_UNAVAILABLE");
    assert!(r.header("retry-after").is_some());
    lock.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(blocked.await.unwrap(), 201);
}

#[derive(diesel::QueryableByName)]
struct Waiting {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Waits until a session of this test's database waits on a lock (a condition, not a delay).
async fn until_waiting_on_a_lock(app: &TestApp) {
    use diesel_async::RunQueryDsl;
    let mut conn = app.db.conn().await.unwrap();
    for _ in 0..4000 {
        let w: Waiting = diesel::sql_query(
            // The write's statement (the embedding worker's housekeeping may wait on the lock too).
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE 'WITH jobs AS%'",
        )
        .get_result(&mut conn)
        .await
        .unwrap();
        if w.n > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("the write never waited on the lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_held_at_once_stay_within_the_body_budget() {
    const MIB: usize = 1024 * 1024;
    let app = spawn_app_with(&[
        ("DATASTORAGE_MAX_BODY_BYTES", "1048576"),
        ("DATASTORAGE_MAX_BATCH_BODY_BYTES", "1048576"),
        ("DATASTORAGE_MAX_BODY_BUDGET_BYTES", "2097152"),
    ])
    .await
    .unwrap();
    let target = "/api/v1/audit/remediation";
    let json = [("Content-Type", "application/json")];
    // A valid record padded with whitespace to exactly 1 MiB.
    let body = |n: u32| {
        let mut b = serde_json::to_vec(&fixtures::remediation(n)).unwrap();
        b.resize(MIB, b' ');
        b
    };
    // Two requests declare 1 MiB each and send half: together they hold the whole budget.
    let mut held = Vec::new();
    for n in [1, 2] {
        let mut conn = ds_tests::raw_http::start(app.addr, "POST", target, &json, MIB)
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut conn, &body(n)[..MIB / 2])
            .await
            .unwrap();
        held.push((n, conn));
    }
    // Both are admitted and hold their declared bytes (reached on the server's time: asked until then).
    let mut polls = 0;
    while app.state.admission.body_bytes_held() < 2 * MIB {
        polls += 1;
        assert!(polls < 4000, "the half-sent bodies never held the budget");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // A third is refused at once, before its body is read: 503 with Retry-After.
    let conn = ds_tests::raw_http::start(app.addr, "POST", target, &json, MIB)
        .await
        .unwrap();
    let refused = ds_tests::raw_http::finish(conn).await.unwrap();
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(
        refused.body.contains("SERVICE_UNAVAILABLE"),
        "{}",
        refused.body
    );
    // A body declared over the limit is 413 at once, whatever the budget.
    let conn = ds_tests::raw_http::start(app.addr, "POST", target, &json, MIB + 1)
        .await
        .unwrap();
    let r = ds_tests::raw_http::finish(conn).await.unwrap();
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("PAYLOAD_TOO_LARGE"));
    // The held requests complete, and release the budget for the next.
    for (n, mut conn) in held {
        tokio::io::AsyncWriteExt::write_all(&mut conn, &body(n)[MIB / 2..])
            .await
            .unwrap();
        let r = ds_tests::raw_http::finish(conn).await.unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let r = ds_tests::raw_http::request(app.addr, "POST", target, &json, &body(3))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(app.db.count("audit_records").await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_have_a_per_caller_limit_of_their_own() {
    let app = spawn_app_with(&[
        ("DATASTORAGE_RATE_LIMIT_SEARCHES_PER_SECOND", "0.001"),
        ("DATASTORAGE_RATE_LIMIT_SEARCH_BURST", "2"),
    ])
    .await
    .unwrap();
    let query = json!({"query": "OOMKilled"});
    let search = || app.post("/api/v1/audit/search", &query);
    assert_eq!(search().await.unwrap().status, 200);
    assert_eq!(search().await.unwrap().status, 200);
    let r = search().await.unwrap();
    assert_error(&r, 429, "RATE_LIMIT_EXCEEDED");
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    // Writes are another budget.
    assert_eq!(write(&app, 1, None).await.status, 201);
}
