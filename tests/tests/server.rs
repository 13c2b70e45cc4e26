//! Start-up of the real service: migrations, and the checks that refuse to start with a clear message.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use diesel_async::SimpleAsyncConnection;
use ds_server::config::Config;
use ds_tests::TestDb;

fn config(url: &str, extra: &[(&str, &str)]) -> Config {
    ds_tests::test_config(url, extra).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_every_migration_once_on_an_empty_database() {
    let db = TestDb::empty().await.unwrap();
    let url = db.url.clone();
    let applied = ds_server::migrate(&url, 384).await.unwrap();
    assert_eq!(applied, ds_store_pg::known_migrations());
    assert!(
        ds_server::migrate(&url, 384).await.unwrap().is_empty(),
        "a second run applies nothing"
    );
}

/// A service whose embedding dimension has no search index (another model's database, or one
/// migrated with another `embedding.dimension`) waits when it may not migrate, its readiness naming
/// the dimension and the fix; allowed to migrate, it makes the index and starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_without_the_index_of_its_dimension_refuses_or_makes_it() {
    let db = TestDb::new().await.unwrap();
    let mut c = db.conn().await.unwrap();
    c.batch_execute("DROP INDEX embeddings_hnsw_384")
        .await
        .unwrap();
    let running = ds_server::start(config(
        &db.url,
        &[("DATASTORAGE_MIGRATE_ON_START", "false")],
    ))
    .await
    .unwrap();
    let addr = running.http_addr;
    let (_addr, _state) = running.spawn();
    let client = ds_tests::http_client();
    // It waits, and readiness names the dimension and the fix.
    ds_tests::until("readiness names the missing index and the fix", || async {
        let Ok(r) = client.get(format!("http://{addr}/readyz")).send().await else {
            return false;
        };
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        status == 503
            && body["reason"].as_str().is_some_and(|m| {
                m.contains("dimension mismatch")
                    && m.contains("384")
                    && m.contains("datastorage migrate")
            })
    })
    .await;

    let running = ds_server::start(config(&db.url, &[("DATASTORAGE_MIGRATE_ON_START", "true")]))
        .await
        .unwrap();
    running.wait_until_started().await.unwrap();
    use ds_domain::ports::AuditStore;
    let h = ds_store_pg::PgStore::new(&db.url, &ds_store_pg::PoolSettings::default())
        .unwrap()
        .health()
        .await
        .unwrap();
    assert_eq!(h.vector_indexes, vec![384]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_a_missing_model_naming_the_key_and_the_fix() {
    let db = TestDb::new().await.unwrap();
    let cfg = config(
        &db.url,
        &[(
            "DATASTORAGE_EMBEDDING_LOCAL_MODEL_DIR",
            "/nonexistent/model",
        )],
    );
    let msg = format!(
        "{:#}",
        ds_server::start(cfg)
            .await
            .err()
            .expect("must refuse to start")
    );
    assert!(
        msg.contains("DATASTORAGE_EMBEDDING_LOCAL_MODEL_DIR")
            && msg.contains("cargo xtask fetch-model"),
        "{msg}"
    );
}
