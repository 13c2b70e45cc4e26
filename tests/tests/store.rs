//! The PostgreSQL store against a real database: atomicity of record + embedding, batches, sharing of
//! identical embeddings, timestamp precision.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use diesel_async::SimpleAsyncConnection;
use ds_domain::kind::Kind;
use ds_domain::parse_record;
use ds_domain::ports::{AuditStore, StoreError, WriteResult, WriteStatus};
use ds_store_pg::{PgStore, PoolSettings};
use ds_tests::writes::{record, request};
use ds_tests::{TestDb, fixtures};

async fn store(db: &TestDb) -> PgStore {
    PgStore::new(&db.url, &PoolSettings::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_embedding_insert_writes_no_record() {
    let db = TestDb::new().await.unwrap();
    let mut c = db.conn().await.unwrap();
    c.batch_execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON embeddings FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .await
    .unwrap();
    let s = store(&db).await;
    let err = s.write(request(vec![record(1)], 384)).await.unwrap_err();
    assert!(matches!(err, StoreError::Query(_)), "{err:?}");
    assert_eq!(db.count("audit_records").await.unwrap(), 0);
    assert_eq!(db.count("embeddings").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_record_insert_rolls_back_its_embedding() {
    let db = TestDb::new().await.unwrap();
    let mut c = db.conn().await.unwrap();
    c.batch_execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON audit_records FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .await
    .unwrap();
    let s = store(&db).await;
    assert!(s.write(request(vec![record(1)], 384)).await.is_err());
    assert_eq!(
        db.count("embeddings").await.unwrap(),
        0,
        "the embedding went with the record"
    );
    assert_eq!(db.count("audit_records").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_constraint_violation_mid_batch_leaves_nothing() {
    let db = TestDb::new().await.unwrap();
    let mut c = db.conn().await.unwrap();
    // The third record (in content-digest order, whichever it is) breaks a constraint.
    c.batch_execute(
        "CREATE FUNCTION third() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF (SELECT count(*) FROM audit_records) >= 2 THEN RAISE EXCEPTION 'third row'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER third BEFORE INSERT ON audit_records FOR EACH ROW EXECUTE FUNCTION third();",
    )
    .await
    .unwrap();
    let s = store(&db).await;
    assert!(
        s.write(request((0..5).map(record).collect(), 384))
            .await
            .is_err()
    );
    assert_eq!(db.count("audit_records").await.unwrap(), 0);
    assert_eq!(db.count("embeddings").await.unwrap(), 0);
    c.batch_execute("DROP TRIGGER third ON audit_records")
        .await
        .unwrap();
    let WriteResult::Written(out) = s
        .write(request((0..5).map(record).collect(), 384))
        .await
        .unwrap()
    else {
        panic!("expected a write")
    };
    assert_eq!(out.len(), 5);
    assert!(out.iter().all(|o| o.status == WriteStatus::Created));
    assert_eq!(db.count("audit_records").await.unwrap(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_embedding_texts_share_one_vector() {
    let db = TestDb::new().await.unwrap();
    let s = store(&db).await;
    // Records 1 and 2 differ only in name: same signal, target, phase, message → same embedding text.
    let mut a = fixtures::remediation(1);
    let mut b = fixtures::remediation(1);
    a["name"] = "alert-a".into();
    b["name"] = "alert-b".into();
    let (a, b) = (
        parse_record(Kind::Remediation, a).unwrap(),
        parse_record(Kind::Remediation, b).unwrap(),
    );
    assert_eq!(a.embedding_text, b.embedding_text);
    assert_ne!(a.content_digest, b.content_digest);
    let WriteResult::Written(first) = s.write(request(vec![a], 384)).await.unwrap() else {
        panic!()
    };
    let WriteResult::Written(second) = s.write(request(vec![b], 384)).await.unwrap() else {
        panic!()
    };
    assert_eq!(first[0].embedding_id, second[0].embedding_id);
    assert_ne!(first[0].id, second[0].id);
    assert_eq!(db.count("embeddings").await.unwrap(), 1);
    assert_eq!(db.count("audit_records").await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_round_trip_to_the_microsecond_in_utc() {
    let db = TestDb::new().await.unwrap();
    let s = store(&db).await;
    let mut v = fixtures::execution(1);
    v["createdAt"] = "2025-10-06T23:59:59.999999-05:00".into();
    let r = parse_record(Kind::Execution, v).unwrap();
    let WriteResult::Written(out) = s.write(request(vec![r], 384)).await.unwrap() else {
        panic!()
    };
    let got = s.get(Kind::Execution, out[0].id).await.unwrap().unwrap();
    assert_eq!(got.record["createdAt"], "2025-10-07T04:59:59.999999Z");
    assert_eq!(got.received_at, out[0].received_at);
    assert!(
        s.get(Kind::Workflow, out[0].id).await.unwrap().is_none(),
        "kind is part of the key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_migrations_and_the_vector_dimension() {
    let db = TestDb::new().await.unwrap();
    let h = store(&db).await.health().await.unwrap();
    assert_eq!(h.migrations_pending, 0);
    assert_eq!(h.migrations_applied, ds_store_pg::known_migrations().len());
    assert_eq!(h.vector_indexes, vec![384]);
    let unreachable = PgStore::new(
        "postgres://postgres@127.0.0.1:1/none",
        &PoolSettings::default(),
    )
    .unwrap();
    assert!(matches!(
        unreachable.health().await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_batch_larger_than_one_statement_stores_every_vector() {
    // The worker's vector INSERT is split every 1,000 rows (PostgreSQL takes at most 65,535
    // parameters per statement, 3 per row: unsplit, a batch above ~21,800 failed); a batch across
    // the boundary stores every vector and still commits as one.
    let db = TestDb::new().await.unwrap();
    let mut c = db.conn().await.unwrap();
    let embedder = ds_embed_local::LocalEmbedder::load(&ds_tests::model_dir(), None).unwrap();
    let model = ds_domain::ports::Embedder::model_id(&embedder).to_owned();
    let jobs: usize = 1_001;
    c.batch_execute(&format!(
        "INSERT INTO embedding_jobs (digest, model, text)
         SELECT sha256(convert_to('job ' || i, 'UTF8')), '{model}', 'pod ' || i
         FROM generate_series(1, {jobs}) AS i"
    ))
    .await
    .unwrap();
    let service = ds_domain::AuditService::new(
        std::sync::Arc::new(store(&db).await),
        std::sync::Arc::new(embedder),
    );
    assert_eq!(service.run_embedding_jobs(5_000).await.unwrap(), jobs);
    assert_eq!(db.count("embeddings").await.unwrap(), jobs as i64);
    assert_eq!(
        db.count("embedding_jobs WHERE done_at IS NULL")
            .await
            .unwrap(),
        0
    );
}

/// The embedding sweep links pending records whose vector is stored a bounded slice at a time
/// (four pending records read per record it may link, in digest order), and its slices go round:
/// every such record is linked, no other, never more than the limit in one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_links_pending_records_a_bounded_slice_at_a_time() {
    let db = TestDb::new().await.unwrap();
    let s = store(&db).await;
    let mut req = request((1..=40).map(record).collect(), 384);
    req.new_embeddings.clear();
    s.write(req).await.unwrap();
    // Vectors arrive for half of the texts and nothing links their records (as after a worker that
    // died between storing and linking).
    db.conn()
        .await
        .unwrap()
        .batch_execute(
            "INSERT INTO embeddings (digest, model, embedding)
             SELECT embedding_digest, 'test-model', array_fill(0.5::real, ARRAY[384])::vector
             FROM audit_records WHERE id % 2 = 0",
        )
        .await
        .unwrap();
    let grace = std::time::Duration::from_secs(86_400);
    let mut calls = Vec::new();
    // The other half has neither a vector nor a job (the request queued none): each call names
    // those of its slice, up to its limit.
    let mut without_job = std::collections::BTreeSet::new();
    while calls.iter().sum::<u64>() < 20 {
        assert!(calls.len() < 100, "the sweep stopped linking: {calls:?}");
        let healed = s.heal_embeddings(2, grace).await.unwrap();
        assert!(healed.linked <= 2, "{} linked in one call", healed.linked);
        assert!(healed.without_job.len() <= 2);
        without_job.extend(healed.without_job.iter().map(|r| r.id));
        calls.push(healed.linked);
    }
    // Once round again: nothing left to link.
    for _ in 0..6 {
        let healed = s.heal_embeddings(2, grace).await.unwrap();
        assert_eq!(healed.linked, 0);
        without_job.extend(healed.without_job.iter().map(|r| r.id));
    }
    assert!(!without_job.is_empty());
    assert!(without_job.iter().all(|id| id % 2 == 1), "{without_job:?}");
    // Slices larger than the pending records: the rest of this round, then a whole round, name
    // them all.
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..2 {
        let healed = s.heal_embeddings(100, grace).await.unwrap();
        ids.extend(healed.without_job.iter().map(|r| r.id));
    }
    assert_eq!(ids.len(), 20, "{ids:?}");
    assert!(ids.iter().all(|id| id % 2 == 1), "{ids:?}");
    assert_eq!(
        db.count("audit_records WHERE embedding_id IS NULL AND id % 2 = 1")
            .await
            .unwrap(),
        20
    );
    assert_eq!(
        db.count("audit_records WHERE embedding_id IS NOT NULL AND id % 2 = 0")
            .await
            .unwrap(),
        20
    );
}

/// Replicas starting together each find the index of their dimension missing; one builds it, the
/// others wait for it instead of dropping the index being built as invalid (found by a fresh-clone
/// CI run: three replicas starting together, two refused to start). Forced: both are past their
/// first check and polling for the lock, held here, before either may build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_making_the_same_vector_index_build_it_once() {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let db = TestDb::new().await.unwrap();
    let mut holder = db.conn().await.unwrap();
    holder
        .batch_execute(&format!(
            "SELECT pg_advisory_lock({})",
            ds_store_pg::VECTOR_INDEX_LOCK
        ))
        .await
        .unwrap();
    let url = db.url.clone();
    let a = tokio::spawn(async move { ds_store_pg::ensure_vector_index(&url, 8).await });
    let url = db.url.clone();
    let b = tokio::spawn(async move { ds_store_pg::ensure_vector_index(&url, 8).await });
    ds_tests::until("both builders poll for the lock", || async {
        use diesel_async::RunQueryDsl;
        let mut c = db.conn().await.unwrap();
        {
            let n: N = diesel::sql_query(
                "SELECT count(DISTINCT pid) AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND query LIKE 'SELECT pg_try_advisory_lock(%'",
            )
            .get_result(&mut c)
            .await
            .unwrap();
            n.n >= 2
        }
    })
    .await;
    holder
        .batch_execute(&format!(
            "SELECT pg_advisory_unlock({})",
            ds_store_pg::VECTOR_INDEX_LOCK
        ))
        .await
        .unwrap();
    let mut built = vec![a.await.unwrap().unwrap(), b.await.unwrap().unwrap()];
    built.sort();
    assert_eq!(built, vec![false, true], "built once");
    let s = PgStore::new(&db.url, &PoolSettings::default()).unwrap();
    assert_eq!(s.health().await.unwrap().vector_indexes, vec![8, 384]);
}
