//! Lifecycle of the real service: start-up that waits for its database (and for migrations run by a
//! Job), replicas migrating at once, and SIGTERM under load.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use diesel::QueryableByName;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ds_tests::{TestDb, fixtures, http_client, test_config, until};
use std::collections::HashSet;
use std::net::SocketAddr;

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    let mut c = db.conn().await.unwrap();
    diesel::sql_query(sql)
        .get_result::<N>(&mut c)
        .await
        .unwrap()
        .n
}

async fn status_and_body(req: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

async fn readyz(client: &reqwest::Client, addr: SocketAddr) -> (u16, serde_json::Value) {
    status_and_body(client.get(format!("http://{addr}/readyz"))).await
}

async fn write(client: &reqwest::Client, addr: SocketAddr, n: u32) -> (u16, serde_json::Value) {
    status_and_body(
        client
            .post(format!("http://{addr}/api/v1/audit/remediation"))
            .json(&fixtures::remediation(n)),
    )
    .await
}

const FAST_RETRY: (&str, &str) = ("DATASTORAGE_DB_CONNECT_RETRY_MAX_MS", "50");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_waits_for_a_database_that_is_not_up_yet_and_readiness_says_so() {
    let db = TestDb::not_yet_created().await.unwrap();
    let running = ds_server::start(test_config(&db.url, &[FAST_RETRY]).unwrap())
        .await
        .expect("listeners bind without a database");
    let client = http_client();
    let addr = running.http_addr;
    let (outcome_tx, outcome) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let started = running.wait_until_started().await.is_ok();
        let _ = running.spawn();
        let _ = outcome_tx.send(started);
    });
    // Alive, not ready, and the reason names what it waits for; the API refuses without a 500.
    let health = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let (status, body) = readyz(&client, addr).await;
    assert_eq!(status, 503, "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("waiting for the database"), "{reason}");
    assert!(
        !reason.contains(&db.url),
        "no connection string in readiness: {reason}"
    );
    let (status, body) = write(&client, addr, 1).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE");

    // The database comes up (empty): the service migrates it and starts.
    db.create_now().await.unwrap();
    assert!(
        outcome.await.unwrap(),
        "start-up completes once the database is up"
    );
    let (status, body) = readyz(&client, addr).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = write(&client, addr, 2).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(db.count("audit_records").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_migrate_on_start_it_waits_for_the_migration_job() {
    let db = TestDb::empty().await.unwrap();
    let running = ds_server::start(
        test_config(
            &db.url,
            &[FAST_RETRY, ("DATASTORAGE_MIGRATE_ON_START", "false")],
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let addr = running.http_addr;
    let client = http_client();
    let (status, _) = readyz(&client, addr).await;
    assert_eq!(status, 503);
    until("readiness names the pending migrations", || {
        let client = client.clone();
        async move {
            let (_, body) = readyz(&client, addr).await;
            body["reason"]
                .as_str()
                .is_some_and(|r| r.contains("migration(s)") && r.contains("datastorage migrate"))
        }
    })
    .await;
    let (status, _) = write(&client, addr, 1).await;
    assert_eq!(status, 503);
    // Nothing was created by the waiting service.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM pg_tables WHERE tablename = 'audit_records'"
        )
        .await,
        0
    );

    // The Job runs `datastorage migrate`.
    let applied = ds_server::migrate(&db.url, 384).await.unwrap();
    assert_eq!(applied, ds_store_pg::known_migrations());
    running.wait_until_started().await.unwrap();
    let (addr, _state) = running.spawn();
    let (status, body) = readyz(&client, addr).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = write(&client, addr, 2).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once() {
    let db = TestDb::empty().await.unwrap();
    let start = || async {
        let running = ds_server::start(test_config(&db.url, &[FAST_RETRY]).unwrap())
            .await
            .unwrap();
        running.wait_until_started().await.unwrap();
        running
    };
    let (a, b, c) = tokio::join!(start(), start(), start());
    let client = http_client();
    for running in [a, b, c] {
        let (addr, _state) = running.spawn();
        let (status, body) = readyz(&client, addr).await;
        assert_eq!(status, 200, "{body}");
    }
    let versions = ds_store_pg::known_migrations().len() as i64;
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM __diesel_schema_migrations").await,
        versions
    );
}

/// What one request of the load came to.
#[derive(Debug)]
enum Outcome {
    /// An HTTP answer.
    Answered(u16),
    /// The connection was refused: the request was never sent.
    Refused,
    /// Sent (or being sent) but no answer: only acceptable if the request was never processed.
    NoAnswer(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_request_it_took_and_loses_no_acknowledged_record() {
    let db = TestDb::new().await.unwrap();
    let config = test_config(
        &db.url,
        &[
            ("DATASTORAGE_EMBEDDING_MODE", "deferred"),
            ("DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND", "0"),
            ("DATASTORAGE_DB_STATEMENT_TIMEOUT_MS", "60000"),
            ("DATASTORAGE_EMBEDDING_WORKER_BATCH", "4"),
            ("DATASTORAGE_EMBEDDING_WORKER_INTERVAL_MS", "10"),
        ],
    )
    .unwrap();
    let running = ds_server::start(config).await.unwrap();
    running.wait_until_started().await.unwrap();
    let addr = running.http_addr;
    let state = running.state.clone();
    // The SIGTERM handler is installed here, before the signal is sent.
    let server = tokio::spawn(running.until_signal());
    // One connection per request: a refused connection is a request never sent.
    ds_embed_openai::install_tls_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();

    // A request that is in flight when SIGTERM arrives: its idempotency key is held by our open
    // transaction, so it waits on that row lock inside the service.
    let mut holder = db.conn().await.unwrap();
    holder
        .batch_execute(
            "BEGIN; INSERT INTO idempotency_keys (caller, key, request_digest, outcomes) \
             VALUES ('system:anonymous', 'held-key', decode(repeat('00', 32), 'hex'), '[]')",
        )
        .await
        .unwrap();
    let held = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .post(format!("http://{addr}/api/v1/audit/remediation"))
                .header("Idempotency-Key", "held-key")
                .json(&fixtures::remediation(999_999))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    until("the held request waits on its key", || async {
        count(
            &db,
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await
            > 0
    })
    .await;

    // The load: 12 clients writing as fast as they can until the service stops taking connections.
    let (answered_tx, mut answered) = tokio::sync::watch::channel(0usize);
    let answered_tx = std::sync::Arc::new(answered_tx);
    let clients: Vec<_> = (0..12u32)
        .map(|c| {
            let client = client.clone();
            let answered_tx = answered_tx.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for i in 0..100_000u32 {
                    let n = c * 100_000 + i;
                    let sent = client
                        .post(format!("http://{addr}/api/v1/audit/remediation"))
                        .json(&fixtures::remediation(n))
                        .send()
                        .await;
                    let outcome = match sent {
                        Ok(r) => Outcome::Answered(r.status().as_u16()),
                        Err(e) if e.is_connect() => Outcome::Refused,
                        Err(e) => Outcome::NoAnswer(format!("{e:?}")),
                    };
                    let done = !matches!(outcome, Outcome::Answered(_));
                    outcomes.push((n, outcome));
                    answered_tx.send_modify(|a| *a += 1);
                    if done {
                        break;
                    }
                }
                outcomes
            })
        })
        .collect();
    answered.wait_for(|n| *n >= 100).await.unwrap();

    let kill = tokio::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .await
        .unwrap();
    assert!(kill.success());
    until("readiness turns 503", || async { state.is_shutting_down() }).await;
    until("the listener stops accepting", || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(
        !held.is_finished(),
        "the held request is still in flight after the listener closed"
    );
    // Release the key: the in-flight request finishes and is answered although shutdown began.
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(held.await.unwrap().unwrap(), 201);
    server
        .await
        .unwrap()
        .expect("a graceful shutdown ends without error (exit 0)");

    let mut outcomes = Vec::new();
    for c in clients {
        outcomes.extend(c.await.unwrap());
    }
    drop(holder);
    let mut conn = db.conn().await.unwrap();
    let stored: HashSet<String> = diesel::sql_query("SELECT name FROM audit_records")
        .load::<Name>(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    drop(conn);
    let name = |n: u32| format!("rr-payments-{n}");
    assert!(
        stored.contains(&name(999_999)),
        "the held request's record is stored"
    );
    let mut acknowledged = 0;
    for (n, outcome) in &outcomes {
        match outcome {
            Outcome::Answered(201) => {
                acknowledged += 1;
                assert!(
                    stored.contains(&name(*n)),
                    "acknowledged record {n} is lost"
                );
            }
            Outcome::Answered(s) => assert_eq!(*s, 503, "request {n}: unexpected status {s}"),
            Outcome::Refused => {}
            Outcome::NoAnswer(e) => assert!(
                !stored.contains(&name(*n)),
                "request {n} was processed but cut off without an answer: {e}"
            ),
        }
    }
    assert!(acknowledged >= 100, "{acknowledged} writes acknowledged");
    assert_eq!(
        stored.len(),
        acknowledged + 1,
        "nothing stored that was not acknowledged"
    );
    // Every record kept its vector or its job; the pool is closed (no connection of the service left).
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM audit_records r WHERE r.embedding_id IS NULL \
             AND NOT EXISTS (SELECT 1 FROM embedding_jobs j WHERE j.digest = r.embedding_digest)"
        )
        .await,
        0
    );
    until("the service's connections are closed", || async {
        count(
            &db,
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await
            == 0
    })
    .await;
}
