//! Group commit against a real database: writes that arrive together share one transaction and each
//! still gets exactly the answer it would get alone (created/duplicate, idempotency replay/conflict),
//! and one failing write does not fail its neighbours.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use ds_domain::ValidRecord;
use ds_domain::ports::{
    AuditStore, IdempotencyClaim, StoreError, WriteOutcome, WriteRequest, WriteResult, WriteStatus,
};
use ds_domain::service::request_digest;
use ds_store_pg::{GroupCommitSettings, PgStore, PoolSettings};
use ds_tests::TestDb;
use ds_tests::writes::{record, request};

fn store(db: &TestDb, slots: usize) -> PgStore {
    PgStore::new(
        &db.url,
        &PoolSettings {
            group_commit: GroupCommitSettings {
                max_in_flight: slots,
                ..GroupCommitSettings::default()
            },
            ..PoolSettings::default()
        },
    )
    .unwrap()
}

fn keyed(records: Vec<ValidRecord>, caller: &str, key: &str) -> WriteRequest {
    let mut r = request(records, 384);
    r.idempotency = Some(IdempotencyClaim {
        caller: caller.into(),
        key: key.into(),
        request_digest: request_digest(&r.records),
    });
    r
}

fn written(r: &Result<WriteResult, StoreError>) -> &[WriteOutcome] {
    match r {
        Ok(WriteResult::Written(o)) => o,
        other => panic!("expected a write, got {other:?}"),
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// How many transactions wrote the stored records.
async fn transactions(db: &TestDb) -> i64 {
    let mut c = db.conn().await.unwrap();
    diesel::sql_query("SELECT count(DISTINCT xmin::text) AS n FROM audit_records")
        .get_result::<Count>(&mut c)
        .await
        .unwrap()
        .n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_commits_once_and_answers_each_write() {
    let db = TestDb::new().await.unwrap();
    let s = store(&db, 1);
    let results = s
        .commit_as_one_group(vec![
            request(vec![record(1)], 384),
            request(vec![record(2), record(3), record(4)], 384),
            request(vec![record(5)], 384),
        ])
        .await;
    assert_eq!(results.len(), 3);
    assert_eq!(written(&results[0]).len(), 1);
    assert_eq!(written(&results[1]).len(), 3);
    assert_eq!(written(&results[2]).len(), 1);
    let ids: Vec<i64> = results
        .iter()
        .flat_map(|r| written(r).iter().map(|o| o.id))
        .collect();
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 5, "five records, five ids: {ids:?}");
    for r in &results {
        assert!(written(r).iter().all(|o| o.status == WriteStatus::Created));
    }
    assert_eq!(db.count("audit_records").await.unwrap(), 5);
    assert_eq!(db.count("embeddings").await.unwrap(), 5);
    assert_eq!(transactions(&db).await, 1, "one commit for the group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_in_two_writes_of_a_group_is_created_for_the_first() {
    let db = TestDb::new().await.unwrap();
    let s = store(&db, 1);
    let results = s
        .commit_as_one_group(vec![
            request(vec![record(1)], 384),
            request(vec![record(1), record(2)], 384),
        ])
        .await;
    let a = written(&results[0]);
    let b = written(&results[1]);
    assert_eq!(a[0].status, WriteStatus::Created);
    assert_eq!(b[0].status, WriteStatus::Duplicate);
    assert_eq!(b[0].id, a[0].id, "the duplicate names the stored record");
    assert_eq!(b[1].status, WriteStatus::Created);
    assert_eq!(db.count("audit_records").await.unwrap(), 2);

    // And against a record stored by an earlier transaction.
    let later = s
        .commit_as_one_group(vec![
            request(vec![record(2)], 384),
            request(vec![record(3)], 384),
        ])
        .await;
    assert_eq!(written(&later[0])[0].status, WriteStatus::Duplicate);
    assert_eq!(written(&later[0])[0].id, b[1].id);
    assert_eq!(written(&later[1])[0].status, WriteStatus::Created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_repeated_in_a_group_replays_the_first_answer_or_conflicts() {
    let db = TestDb::new().await.unwrap();
    let s = store(&db, 1);
    let results = s
        .commit_as_one_group(vec![
            keyed(vec![record(1)], "alice", "k1"),
            keyed(vec![record(1)], "alice", "k1"),
            keyed(vec![record(2)], "alice", "k1"),
            keyed(vec![record(3)], "bob", "k1"),
        ])
        .await;
    let first = written(&results[0]).to_vec();
    assert_eq!(first[0].status, WriteStatus::Created);
    match &results[1] {
        Ok(WriteResult::Replayed(o)) => assert_eq!(o, &first, "the replay is the first answer"),
        other => panic!("expected a replay, got {other:?}"),
    }
    assert!(
        matches!(results[2], Ok(WriteResult::KeyConflict)),
        "{:?}",
        results[2]
    );
    assert_eq!(
        written(&results[3])[0].status,
        WriteStatus::Created,
        "keys are scoped to their caller"
    );
    // The conflicting request wrote nothing.
    assert_eq!(db.count("audit_records").await.unwrap(), 2);
    assert_eq!(db.count("idempotency_keys").await.unwrap(), 2);

    // A key stored by an earlier transaction is answered inside a later group as well.
    let again = s
        .commit_as_one_group(vec![
            keyed(vec![record(1)], "alice", "k1"),
            request(vec![record(4)], 384),
        ])
        .await;
    match &again[0] {
        Ok(WriteResult::Replayed(o)) => assert_eq!(o, &first),
        other => panic!("expected a replay, got {other:?}"),
    }
    assert_eq!(written(&again[1])[0].status, WriteStatus::Created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_write_does_not_fail_its_group() {
    let db = TestDb::new().await.unwrap();
    // The database refuses the one write whose vector has 3 numbers.
    let mut c = db.conn().await.unwrap();
    diesel_async::SimpleAsyncConnection::batch_execute(
        &mut c,
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
             IF vector_dims(NEW.embedding) = 3 THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON embeddings FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .await
    .unwrap();
    let s = store(&db, 1);
    let results = s
        .commit_as_one_group(vec![
            request(vec![record(1)], 384),
            request(vec![record(2)], 3),
            request(vec![record(3)], 384),
        ])
        .await;
    assert_eq!(written(&results[0])[0].status, WriteStatus::Created);
    assert!(
        matches!(results[1], Err(StoreError::Query(_))),
        "{:?}",
        results[1]
    );
    assert_eq!(written(&results[2])[0].status, WriteStatus::Created);
    assert_eq!(db.count("audit_records").await.unwrap(), 2);
    assert_eq!(db.count("embeddings").await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_the_queue_land_exactly_once() {
    let db = TestDb::new().await.unwrap();
    let s = store(&db, 2);
    // 60 distinct records, each written by two concurrent callers.
    let writes = (0..120u32).map(|i| {
        let s = s.clone();
        tokio::spawn(async move { (i % 60, s.write(request(vec![record(i % 60)], 384)).await) })
    });
    let mut by_record: std::collections::HashMap<u32, Vec<WriteOutcome>> = Default::default();
    for w in writes {
        let (n, result) = w.await.unwrap();
        by_record
            .entry(n)
            .or_default()
            .push(written(&result)[0].clone());
    }
    assert_eq!(by_record.len(), 60);
    for (n, outcomes) in by_record {
        let created = outcomes
            .iter()
            .filter(|o| o.status == WriteStatus::Created)
            .count();
        assert_eq!(created, 1, "record {n}: {outcomes:?}");
        assert_eq!(outcomes[0].id, outcomes[1].id, "record {n}");
    }
    assert_eq!(db.count("audit_records").await.unwrap(), 60);
}
