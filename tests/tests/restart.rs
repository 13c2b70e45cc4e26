//! PostgreSQL restarted under concurrent writes (`pg_ctl restart -m immediate` and `-m fast`), in both
//! embedding modes: no answer is a 500 (a database going away is 503 + `Retry-After`), every 201 is
//! stored, and every acknowledged record reaches `stored` (its vector linked) once the load ends.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use diesel::QueryableByName;
use ds_tests::tls_postgres::TlsPostgres;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

#[derive(QueryableByName)]
struct N {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

async fn count(url: &str, sql: &str) -> i64 {
    use diesel_async::RunQueryDsl;
    let mut c = ds_store_pg::connect::establish(url).await.unwrap();
    diesel::sql_query(sql)
        .get_result::<N>(&mut c)
        .await
        .unwrap()
        .n
}

/// A record of its own (unique name) whose embedding text is one of eight: recurring texts, as
/// Kubernaut's components send them.
fn record(n: u32) -> serde_json::Value {
    let mut r = ds_tests::fixtures::remediation(n);
    r["message"] = serde_json::json!(format!("Pod restarted after OOMKill in shard {}", n % 8));
    r
}

async fn restart_under_load(mode: &str) {
    let pg = TlsPostgres::start().unwrap();
    let url = pg.url("127.0.0.1", "postgres", "sslmode=disable");
    let running = ds_server::start(
        ds_tests::test_config(
            &url,
            &[
                ("DATASTORAGE_EMBEDDING_MODE", mode),
                ("DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND", "0"),
                ("DATASTORAGE_DB_WAIT_TIMEOUT_MS", "2000"),
                ("DATASTORAGE_DB_CONNECT_RETRY_MAX_MS", "200"),
                ("DATASTORAGE_EMBEDDING_WORKER_INTERVAL_MS", "50"),
            ],
        )
        .unwrap(),
    )
    .await
    .unwrap();
    running.wait_until_started().await.unwrap();
    let (addr, _state) = running.spawn();
    let client = ds_tests::http_client();
    let next = Arc::new(AtomicU32::new(0));
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (client, next, acked, stop) =
                (client.clone(), next.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen: Vec<(u16, Option<i64>, bool)> = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let res = client
                        .post(format!("http://{addr}/api/v1/audit/remediation"))
                        .json(&record(n))
                        .send()
                        .await;
                    let Ok(res) = res else { continue };
                    let status = res.status().as_u16();
                    let retry_after = res.headers().contains_key("retry-after");
                    let body: serde_json::Value = res.json().await.unwrap_or_default();
                    if status == 201 {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    seen.push((status, body["id"].as_i64(), retry_after));
                }
                seen
            })
        })
        .collect();
    let until_acked = |n: usize| {
        let acked = acked.clone();
        async move {
            for _ in 0..6000 {
                if acked.load(Ordering::SeqCst) >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("writes never reached {n} acknowledgements");
        }
    };
    until_acked(300).await;
    pg.restart("immediate").unwrap();
    let after_first = acked.load(Ordering::SeqCst);
    until_acked(after_first + 300).await;
    pg.restart("fast").unwrap();
    let after_second = acked.load(Ordering::SeqCst);
    until_acked(after_second + 300).await;
    stop.store(true, Ordering::SeqCst);

    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut ids = Vec::new();
    for w in writers {
        for (status, id, retry_after) in w.await.unwrap() {
            *statuses.entry(status).or_default() += 1;
            if status == 503 {
                assert!(retry_after, "a 503 without Retry-After");
            }
            if status == 201 {
                ids.push(id.unwrap());
            }
        }
    }
    let unexpected: Vec<_> = statuses
        .keys()
        .filter(|s| ![201, 503].contains(*s))
        .collect();
    assert!(unexpected.is_empty(), "{mode}: {statuses:?}");
    ids.sort_unstable();
    ids.dedup();
    let list = ids
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let stored = count(
        &url,
        &format!("SELECT count(*) AS n FROM audit_records WHERE id IN ({list})"),
    )
    .await;
    assert_eq!(
        stored as usize,
        ids.len(),
        "{mode}: every 201 is stored ({statuses:?})"
    );
    // Every acknowledged record reaches `stored` (the workers and the sweep heal what is pending).
    let mut pending = -1;
    // Bounded: a job whose claim's answer was lost in a crash waits for its lease (60 s) to end.
    for _ in 0..4500 {
        pending = count(
            &url,
            &format!(
                "SELECT count(*) AS n FROM audit_records WHERE id IN ({list}) AND embedding_id IS NULL"
            ),
        )
        .await;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        pending, 0,
        "{mode}: acknowledged records still pending ({statuses:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarts_under_inline_writes_answer_503_and_lose_nothing() {
    restart_under_load("inline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarts_under_deferred_writes_answer_503_and_lose_nothing() {
    restart_under_load("deferred").await;
}
