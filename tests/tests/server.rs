//! Start-up of the real service: migrations, and the checks that refuse to start with a clear message.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use diesel_async::SimpleAsyncConnection;
use ds_server::config::Config;
use ds_tests::{TestDb, model_dir};
use std::collections::HashMap;

fn config(url: &str, extra: &[(&str, &str)]) -> Config {
    let mut env: HashMap<String, String> = HashMap::from([
        ("DATASTORAGE_DATABASE_URL".into(), url.to_owned()),
        ("DATASTORAGE_HTTP_ADDR".into(), "127.0.0.1:0".into()),
        ("DATASTORAGE_METRICS_ADDR".into(), "127.0.0.1:0".into()),
        (
            "DATASTORAGE_EMBEDDING_LOCAL_MODEL_DIR".into(),
            model_dir().display().to_string(),
        ),
    ]);
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    Config::from_lookup(&|k| env.get(k).cloned()).unwrap()
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
    let err = ds_server::start(config(&db.url, &[]))
        .await
        .err()
        .expect("must refuse to start");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_a_database_that_lacks_migrations_when_not_migrating() {
    let db = TestDb::empty().await.unwrap();
    let url = db.url.clone();
    let msg = format!(
        "{:#}",
        ds_server::start(config(&url, &[("DATASTORAGE_MIGRATE_ON_START", "false")]))
            .await
            .err()
            .expect("must refuse")
    );
    assert!(msg.contains("datastorage migrate"), "{msg}");
}
