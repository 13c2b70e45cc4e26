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
    let applied = ds_server::migrate(&url).await.unwrap();
    assert_eq!(applied, ds_store_pg::known_migrations());
    assert!(
        ds_server::migrate(&url).await.unwrap().is_empty(),
        "a second run applies nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_a_vector_column_of_another_dimension_naming_both() {
    let db = TestDb::new().await.unwrap();
    let mut c = db.conn().await.unwrap();
    c.batch_execute(
        "DROP INDEX embeddings_embedding_hnsw; ALTER TABLE embeddings ALTER COLUMN embedding TYPE vector(768);",
    )
    .await
    .unwrap();
    let running = ds_server::start(config(&db.url, &[])).await.unwrap();
    let err = running
        .wait_until_started()
        .await
        .expect_err("must refuse to start");
    // The process then stops with that error.
    let stopped = running.until(std::future::pending()).await.unwrap_err();
    assert!(
        format!("{stopped:#}").contains("dimension mismatch"),
        "{stopped:#}"
    );
    let msg = format!("{err:#}");
    assert!(
        msg.contains("dimension mismatch") && msg.contains("384") && msg.contains("768"),
        "{msg}"
    );
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
