//! Integrity (contract §8): append-only in PostgreSQL, one transparency log with signed checkpoints
//! and proofs, and `datastorage verify` catching each tampering of §8 — done here as the database
//! owner, the way an administrator would (triggers switched off with `session_replication_role`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use ds_server::config::DEFAULT_LOG_ORIGIN;
use ds_server::verify::{Verdict, online};
use ds_tests::log::{
    assert_verifies, checkpoint_covering, export, keys, temp, text, verify_offline,
};
use ds_tests::{TestApp, fixtures, spawn_app, until};
use ds_tlog::note::{CheckpointSigner, SignedCheckpoint, generate_key};
use ds_tlog::tree::{self, StoredHashes, check_consistency, check_inclusion};
use ds_tlog::verify::ExportLine;
use ds_tlog::{Hash, Leaf, hash_from_base64};
use rstest::rstest;
use serde_json::{Map, Value, json};

/// Posts workflow `records` in one batch; returns their ids.
async fn post_batch(app: &TestApp, records: Vec<Value>) -> Vec<i64> {
    let records: Vec<Value> = records
        .into_iter()
        .map(|r| json!({"kind": "workflow", "record": r}))
        .collect();
    let r = app
        .post("/api/v1/audit/batch", &json!({ "records": records }))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_i64().unwrap())
        .collect()
}

/// Writes `n` workflow records of the trail `trail` (numbers from `first`), returns their ids.
async fn write(app: &TestApp, trail: &str, first: u32, n: u32) -> Vec<i64> {
    let records = (first..first + n)
        .map(|i| {
            let mut r = fixtures::workflow(i);
            r["correlationId"] = json!(trail);
            r
        })
        .collect();
    post_batch(app, records).await
}

async fn owner(app: &TestApp) -> AsyncPgConnection {
    let mut c = app.db.conn().await.unwrap();
    // An administrator's session: triggers off.
    c.batch_execute("SET session_replication_role = replica")
        .await
        .unwrap();
    c
}

/// The log's leaves as the export shows them: (record, kind, leaf hash) in log order.
fn leaves_of(lines: &[ExportLine]) -> Vec<(i64, String, Hash)> {
    lines
        .iter()
        .map(|l| {
            (
                l.id,
                l.kind.clone(),
                hash_from_base64(&l.leaf_hash).unwrap(),
            )
        })
        .collect()
}

/// As the owner: replaces the whole log (its segments and record → leaf rows) by `leaves`, with
/// the stored hashes a sequencer would write for them: a log that is consistent in itself.
async fn rewrite_log(c: &mut AsyncPgConnection, leaves: &[(i64, String, Hash)]) {
    let hashes: Vec<Hash> = leaves.iter().map(|l| l.2).collect();
    let stored = tree::append(0, &hashes, &StoredHashes::new()).unwrap();
    let packed: String = stored.iter().map(|(_, h)| hex::encode(h.0)).collect();
    let ids: Vec<String> = leaves.iter().map(|l| l.0.to_string()).collect();
    let kinds: Vec<String> = leaves.iter().map(|l| l.1.clone()).collect();
    let positions: Vec<String> = leaves
        .iter()
        .enumerate()
        .map(|(n, l)| format!("({}, {n})", l.0))
        .collect();
    c.batch_execute(&format!(
        "DELETE FROM tlog_segments; DELETE FROM tlog_leaves;
         INSERT INTO tlog_segments (first_leaf, leaves, first_hash, hashes, record_ids, kinds)
             VALUES (0, {}, 0, '\\x{packed}', '{{{}}}', '{{{}}}');
         INSERT INTO tlog_leaves (record_id, log_index) VALUES {};",
        leaves.len(),
        ids.join(","),
        kinds.join(","),
        positions.join(",")
    ))
    .await
    .unwrap();
}

/// A session holding the sequencer's lock in an open transaction (a replica in the middle of a
/// run): no run appends until it ends (`ROLLBACK`, or dropping it).
async fn hold_sequencer(app: &TestApp) -> AsyncPgConnection {
    let mut holder = app.db.conn().await.unwrap();
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({})",
            ds_store_pg::SEQUENCER_LOCK
        ))
        .await
        .unwrap();
    holder
}

/// The `hashes` of a proof answer.
fn proof_hashes(answer: &Value) -> Vec<Hash> {
    answer["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| hash_from_base64(h.as_str().unwrap()).unwrap())
        .collect()
}

/// A record's fields as the leaf has them: the read answer without the identity and derived state.
fn fields(read: &Value) -> Map<String, Value> {
    let mut m = read.as_object().unwrap().clone();
    for k in ["id", "kind", "receivedAt", "embeddingStatus", "logIndex"] {
        m.remove(k);
    }
    m
}

#[tokio::test]
async fn the_runtime_role_cannot_change_or_delete_records_and_triggers_stop_the_owner() {
    let app = spawn_app().await.unwrap();
    let id = write(&app, "rr-2026-11-30-roles0", 1, 2).await[0];
    // Logged and signed: the log's tables have rows for the row triggers to refuse (two leaves: a
    // stored hash above them).
    checkpoint_covering(&app, 2).await;
    let mut runtime = AsyncPgConnection::establish(&app.db.runtime_url)
        .await
        .unwrap();
    for sql in [
        format!("UPDATE audit_records SET phase = 'Failed' WHERE id = {id}"),
        format!("DELETE FROM audit_records WHERE id = {id}"),
        "TRUNCATE audit_records".to_owned(),
        "DELETE FROM tlog_leaves".to_owned(),
        "UPDATE tlog_segments SET hashes = hashes".to_owned(),
        "DELETE FROM tlog_checkpoints".to_owned(),
        "ALTER TABLE audit_records DISABLE TRIGGER audit_records_append_only".to_owned(),
        "SET session_replication_role = replica".to_owned(),
    ] {
        let e = runtime.batch_execute(&sql).await.unwrap_err().to_string();
        assert!(
            e.contains("permission denied") || e.contains("must be owner"),
            "{sql}: {e}"
        );
    }
    // The derived embedding link is the one thing it may set.
    runtime
        .batch_execute(&format!(
            "UPDATE audit_records SET embedding_id = embedding_id WHERE id = {id}"
        ))
        .await
        .unwrap();

    // The owner (a superuser here) is stopped by the triggers while they are on.
    let mut owner = app.db.conn().await.unwrap();
    for sql in [
        format!("UPDATE audit_records SET phase = 'Failed' WHERE id = {id}"),
        format!("UPDATE audit_records SET unknown_fields = '{{\"x\":1}}' WHERE id = {id}"),
        format!("DELETE FROM audit_records WHERE id = {id}"),
        "TRUNCATE audit_records CASCADE".to_owned(),
        "UPDATE tlog_segments SET hashes = hashes".to_owned(),
        "UPDATE tlog_leaves SET log_index = log_index".to_owned(),
        "DELETE FROM tlog_segments".to_owned(),
        "DELETE FROM tlog_checkpoints".to_owned(),
    ] {
        let e = owner.batch_execute(&sql).await.unwrap_err().to_string();
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
    owner
        .batch_execute(&format!(
            "UPDATE audit_records SET embedding_id = embedding_id WHERE id = {id}"
        ))
        .await
        .unwrap();
    let r = app
        .get(&format!("/api/v1/audit/workflow/{id}"))
        .await
        .unwrap();
    assert_eq!(r.body["phase"], "Processing");
}

#[tokio::test]
async fn records_get_a_log_index_and_proofs_that_verify_against_signed_checkpoints() {
    let app = spawn_app().await.unwrap();
    let first = write(&app, "rr-2026-11-30-proofa", 1, 7).await;
    let (_, early) = checkpoint_covering(&app, 7).await;
    let second = write(&app, "rr-2026-11-30-proofb", 20, 13).await;
    let (note, latest) = checkpoint_covering(&app, 20).await;
    assert_eq!(latest.key, keys().open(note.as_bytes()).unwrap().key);

    let mut seen = std::collections::BTreeSet::new();
    for id in first.iter().chain(&second) {
        let read = app
            .get(&format!("/api/v1/audit/workflow/{id}"))
            .await
            .unwrap();
        let index = read.body["logIndex"].as_u64().unwrap();
        assert!(seen.insert(index), "logIndex {index} given twice");
        let leaf = Leaf {
            kind: "workflow",
            id: *id,
            received_at: read.body["receivedAt"].as_str().unwrap(),
            record: &fields(&read.body),
        }
        .hash();
        let p = app
            .get(&format!(
                "/api/v1/log/proof/inclusion?kind=workflow&id={id}&treeSize={}",
                latest.size
            ))
            .await
            .unwrap();
        assert_eq!(p.status, 200, "{}", p.body);
        assert_eq!(p.body["logIndex"], index);
        assert_eq!(
            hash_from_base64(p.body["leafHash"].as_str().unwrap()),
            Some(leaf)
        );
        assert_eq!(
            hash_from_base64(p.body["rootHash"].as_str().unwrap()),
            Some(latest.root)
        );
        let proof = proof_hashes(&p.body);
        assert!(check_inclusion(
            &proof,
            latest.size,
            latest.root,
            index,
            leaf
        ));
        assert!(!check_inclusion(
            &proof,
            latest.size,
            latest.root,
            index,
            Hash([1; 32])
        ));
    }
    assert_eq!(seen.len(), 20);
    assert_eq!(*seen.iter().next_back().unwrap(), 19, "20 leaves, 0..19");

    // Every checkpoint is kept, and the later tree extends the earlier one.
    let (status, kept) = text(&app, &format!("/api/v1/log/checkpoint?size={}", early.size)).await;
    assert_eq!(status, 200);
    assert_eq!(keys().open(kept.as_bytes()).unwrap().root, early.root);
    let c = app
        .get(&format!(
            "/api/v1/log/proof/consistency?from={}&to={}",
            early.size, latest.size
        ))
        .await
        .unwrap();
    assert_eq!(c.status, 200, "{}", c.body);
    let proof = proof_hashes(&c.body);
    assert!(check_consistency(
        &proof,
        early.size,
        early.root,
        latest.size,
        latest.root
    ));

    // Bad requests: contract errors, nothing else.
    for (path, status) in [
        (
            "/api/v1/log/proof/inclusion?kind=workflow&id=999999".to_owned(),
            404,
        ),
        ("/api/v1/log/proof/inclusion?kind=nope&id=1".to_owned(), 400),
        ("/api/v1/log/proof/inclusion?id=1".to_owned(), 400),
        (
            format!(
                "/api/v1/log/proof/inclusion?kind=remediation&id={}",
                first[0]
            ),
            404,
        ),
        ("/api/v1/log/proof/consistency?from=0&to=3".to_owned(), 400),
        ("/api/v1/log/proof/consistency?from=5&to=3".to_owned(), 400),
        (
            "/api/v1/log/proof/consistency?from=1&to=999999".to_owned(),
            404,
        ),
        (
            format!(
                "/api/v1/log/proof/inclusion?kind=workflow&id={}&treeSize=999999",
                first[0]
            ),
            404,
        ),
        (
            format!(
                "/api/v1/log/proof/inclusion?kind=workflow&id={}&treeSize={}",
                second[0], early.size
            ),
            404,
        ),
        ("/api/v1/log/checkpoint?size=999999".to_owned(), 404),
        ("/api/v1/log/checkpoint?size=-1".to_owned(), 400),
        ("/api/v1/log/checkpoint?sise=1".to_owned(), 400),
        ("/api/v1/audit/export?cursor=x".to_owned(), 400),
        ("/api/v1/audit/export?limit=0".to_owned(), 400),
        ("/api/v1/audit/export?kinds=workflow,nope".to_owned(), 400),
    ] {
        let r = app.get(&path).await.unwrap();
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert!(r.body["error"]["code"].is_string(), "{path}: {}", r.body);
    }

    // A filtered export: only that trail's records, in log order.
    let (status, body) = text(
        &app,
        "/api/v1/audit/export?correlationId=rr-2026-11-30-proofb&limit=5",
    )
    .await;
    assert_eq!(status, 200);
    let lines: Vec<ExportLine> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert!(lines.windows(2).all(|w| w[0].log_index < w[1].log_index));
    assert!(lines.iter().all(|l| second.contains(&l.id)));
}

#[tokio::test]
async fn a_record_not_yet_in_a_signed_tree_is_409_with_retry_after() {
    let app = spawn_app().await.unwrap();
    // The sequencer's role held elsewhere (a replica in the middle of a run): nothing is appended.
    let mut holder = hold_sequencer(&app).await;
    let id = write(&app, "rr-2026-11-30-pendin", 1, 1).await[0];
    let r = app
        .get(&format!(
            "/api/v1/log/proof/inclusion?kind=workflow&id={id}"
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "NOT_YET_INTEGRATED");
    assert!(r.header("retry-after").is_some());
    let read = app
        .get(&format!("/api/v1/audit/workflow/{id}"))
        .await
        .unwrap();
    assert!(read.body.get("logIndex").is_none(), "{}", read.body);
    // The replica holding the role dies: another one takes over.
    holder.batch_execute("ROLLBACK").await.unwrap();
    drop(holder);
    checkpoint_covering(&app, 1).await;
    let r = app
        .get(&format!(
            "/api/v1/log/proof/inclusion?kind=workflow&id={id}"
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A store with three trails of five records in two signed checkpoints (5 and 15 leaves).
struct Logged {
    app: TestApp,
    first: SignedCheckpoint,
    first_note: String,
    note: String,
    ids: Vec<i64>,
}

async fn logged_store() -> Logged {
    let app = spawn_app().await.unwrap();
    let mut ids = write(&app, "rr-2026-11-30-trlaaa", 1, 5).await;
    let (first_note, first) = checkpoint_covering(&app, 5).await;
    assert_eq!(first.size, 5);
    ids.extend(write(&app, "rr-2026-11-30-trlbbb", 10, 5).await);
    ids.extend(write(&app, "rr-2026-11-30-trlccc", 20, 5).await);
    let (note, latest) = checkpoint_covering(&app, 15).await;
    assert_eq!(latest.size, 15);
    Logged {
        app,
        first,
        first_note,
        note,
        ids,
    }
}

async fn leaf_of(app: &TestApp, id: i64) -> u64 {
    app.get(&format!("/api/v1/audit/workflow/{id}"))
        .await
        .unwrap()
        .body["logIndex"]
        .as_u64()
        .unwrap()
}

fn findings(v: Verdict) -> Vec<String> {
    match v {
        Verdict::Tampered(f) => f,
        Verdict::Verified(s) => panic!("tampering not detected: {s}"),
    }
}

#[tokio::test]
async fn an_untouched_store_verifies_offline_and_online() {
    let s = logged_store().await;
    let (file, lines) = export(&s.app).await;
    assert_eq!(lines.len(), 15);
    match verify_offline(&file, &[&s.first_note, &s.note]) {
        Verdict::Verified(summary) => assert!(summary.contains("[5, 15]"), "{summary}"),
        Verdict::Tampered(f) => panic!("{f:?}"),
    }
    let saved = [temp("cp", &s.first_note), temp("cp", &s.note)];
    match online(&s.app.url(""), None, &saved, &keys(), 15)
        .await
        .unwrap()
    {
        Verdict::Verified(summary) => {
            assert!(summary.contains("15 sampled records"), "{summary}")
        }
        Verdict::Tampered(f) => panic!("{f:?}"),
    }
}

#[derive(Debug, Clone, Copy)]
enum Tampering {
    ChangeAField,
    ChangeTheKind,
    DeleteARecord,
    DeleteATrail,
    InsertBackDated,
    ReorderTwoLeaves,
    TruncateTheLog,
    UnknownKey,
    RewriteHistory,
}

#[rstest]
#[case::change_a_field(Tampering::ChangeAField)]
#[case::change_the_kind(Tampering::ChangeTheKind)]
#[case::delete_a_record(Tampering::DeleteARecord)]
#[case::delete_a_trail(Tampering::DeleteATrail)]
#[case::insert_back_dated(Tampering::InsertBackDated)]
#[case::reorder_two_leaves(Tampering::ReorderTwoLeaves)]
#[case::truncate_the_log(Tampering::TruncateTheLog)]
#[case::unknown_key(Tampering::UnknownKey)]
#[case::rewrite_history(Tampering::RewriteHistory)]
#[tokio::test]
async fn each_tampering_is_detected_and_named(#[case] t: Tampering) {
    let s = logged_store().await;
    let app = &s.app;
    let mut checkpoints = vec![s.first_note.clone(), s.note.clone()];
    let mut online_too = true;
    let expect: Vec<String> = match t {
        Tampering::ChangeAField => {
            let id = s.ids[7];
            let at = leaf_of(app, id).await;
            owner(app)
                .await
                .batch_execute(&format!(
                    "UPDATE audit_records SET phase = 'Failed' WHERE id = {id}"
                ))
                .await
                .unwrap();
            vec![format!("logIndex {at} (workflow {id}): the record differs")]
        }
        Tampering::ChangeTheKind => {
            let id = s.ids[2];
            let at = leaf_of(app, id).await;
            owner(app)
                .await
                .batch_execute(&format!(
                    "UPDATE audit_records SET kind = 'execution' WHERE id = {id}"
                ))
                .await
                .unwrap();
            vec![format!(
                "logIndex {at} (execution {id}): the record differs"
            )]
        }
        Tampering::DeleteARecord => {
            let id = s.ids[3];
            let at = leaf_of(app, id).await;
            owner(app)
                .await
                .batch_execute(&format!("DELETE FROM audit_records WHERE id = {id}"))
                .await
                .unwrap();
            vec![format!(
                "logIndex {at} (workflow {id}): the log has the record but the store does not"
            )]
        }
        Tampering::DeleteATrail => {
            let mut expect = Vec::new();
            for id in &s.ids[5..10] {
                let at = leaf_of(app, *id).await;
                expect.push(format!(
                    "logIndex {at} (workflow {id}): the log has the record but the store does not"
                ));
            }
            owner(app)
                .await
                .batch_execute(
                    "DELETE FROM audit_records WHERE correlation_id = 'rr-2026-11-30-trlbbb'",
                )
                .await
                .unwrap();
            expect
        }
        Tampering::InsertBackDated => {
            // Inserted as a copy of a record, received two days ago; the triggers stay on (the
            // insert is logged, where it was inserted).
            let mut c = app.db.conn().await.unwrap();
            c.batch_execute(&format!(
                "INSERT INTO audit_records (kind, name, namespace, phase, correlation_id, message, created_at,
                     started_at, completed_at, received_at, content_digest, details, unknown_fields, embedding_digest)
                 SELECT kind, name || '-forged', namespace, phase, correlation_id, message, created_at,
                     started_at, completed_at, now() - interval '2 days', sha256(content_digest), details,
                     unknown_fields, embedding_digest
                 FROM audit_records WHERE id = {}",
                s.ids[0]
            ))
            .await
            .unwrap();
            let (note, _) = checkpoint_covering(app, 16).await;
            checkpoints.push(note);
            online_too = false; // online checks proofs, not times: the offline verdict names it
            vec![
                "logIndex 15 (workflow".to_owned(),
                "inserted back-dated".to_owned(),
            ]
        }
        Tampering::ReorderTwoLeaves => {
            // Leaves 8 and 11 swapped with their hashes, the tree rebuilt to match: each leaf
            // still matches its record.
            let (_, lines) = export(app).await;
            let mut leaves = leaves_of(&lines);
            leaves.swap(8, 11);
            rewrite_log(&mut owner(app).await, &leaves).await;
            vec![
                "tree size 15:".to_owned(),
                "rewritten between sizes 5 and 15".to_owned(),
            ]
        }
        Tampering::TruncateTheLog => {
            // The last three leaves and their records gone, and the checkpoints that covered them.
            let (_, lines) = export(app).await;
            let leaves = leaves_of(&lines);
            let mut c = owner(app).await;
            rewrite_log(&mut c, &leaves[..12]).await;
            let gone: Vec<String> = leaves[12..].iter().map(|l| l.0.to_string()).collect();
            c.batch_execute(&format!(
                "DELETE FROM audit_records WHERE id IN ({});
                 DELETE FROM tlog_checkpoints WHERE tree_size > 5;",
                gone.join(",")
            ))
            .await
            .unwrap();
            vec![
                "the log ends at size".to_owned(),
                "has size 15: the log was truncated".to_owned(),
            ]
        }
        Tampering::UnknownKey => {
            // Someone without the log's key signs a checkpoint of their own and serves it.
            let (private, _) = generate_key(DEFAULT_LOG_ORIGIN, [7; 32]).unwrap();
            let forged = CheckpointSigner::new(DEFAULT_LOG_ORIGIN, &private)
                .unwrap()
                .sign(16, Hash([9; 32]))
                .unwrap();
            let mut c = owner(app).await;
            c.batch_execute(&format!(
                "INSERT INTO tlog_checkpoints (tree_size, root_hash, note) VALUES (1000000, '\\x{}', $${forged}$$)",
                "09".repeat(32)
            ))
            .await
            .unwrap();
            checkpoints.push(forged);
            vec!["signed only by unknown keys".to_owned()]
        }
        Tampering::RewriteHistory => {
            // A record between the two checkpoints changed, and the log rebuilt to match it.
            let id = s.ids[8];
            let mut c = owner(app).await;
            c.batch_execute(&format!(
                "UPDATE audit_records SET phase = 'Failed' WHERE id = {id}"
            ))
            .await
            .unwrap();
            let (_, lines) = export(app).await;
            let leaves: Vec<(i64, String, Hash)> = lines
                .iter()
                .map(|l| (l.id, l.kind.clone(), l.record_leaf_hash().unwrap()))
                .collect();
            rewrite_log(&mut c, &leaves).await;
            vec![
                "tree size 15:".to_owned(),
                "rewritten between sizes 5 and 15".to_owned(),
            ]
        }
    };
    let (file, _) = export(app).await;
    let cps: Vec<&str> = checkpoints.iter().map(String::as_str).collect();
    let found = findings(verify_offline(&file, &cps));
    for e in &expect {
        assert!(
            found.iter().any(|f| f.contains(e.as_str())),
            "{t:?}: expected a finding with {e:?} among {found:#?}"
        );
    }
    if online_too {
        let saved = [temp("cp", &s.first_note), temp("cp", &s.note)];
        let found = findings(
            online(&app.url(""), None, &saved, &keys(), 16)
                .await
                .unwrap(),
        );
        assert!(!found.is_empty(), "{t:?}");
    }
    let _ = &s.first;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_writing_at_once_build_one_consistent_tree() {
    let db = ds_tests::TestDb::new().await.unwrap();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let config = ds_tests::test_config(
            &db.runtime_url,
            &[
                ("DATASTORAGE_EMBEDDING_MODE", "deferred"),
                ("DATASTORAGE_EMBEDDING_WORKER_INTERVAL_MS", "0"),
            ],
        )
        .unwrap();
        let running = ds_server::start(config).await.unwrap();
        running.wait_until_started().await.unwrap();
        replicas.push(running.spawn().0);
    }
    let client = ds_tests::http_client();
    // 3 replicas × 4 writers × 10 records, all at once.
    let writers: Vec<_> = (0..12u32)
        .map(|w| {
            let client = client.clone();
            let addr = replicas[w as usize % 3];
            tokio::spawn(async move {
                for i in 0..10u32 {
                    let mut r = fixtures::workflow(w * 100 + i);
                    r["correlationId"] = json!(format!("rr-2026-11-30-rep{w:03}"));
                    let resp = client
                        .post(format!("http://{addr}/api/v1/audit/workflow"))
                        .json(&r)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 201);
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let base = format!("http://{}", replicas[1]);
    until("the log holds every record", || {
        let client = client.clone();
        let base = base.clone();
        async move {
            let r = client
                .get(format!("{base}/api/v1/log/checkpoint"))
                .send()
                .await
                .unwrap();
            r.status() == 200
                && keys()
                    .open(r.text().await.unwrap().as_bytes())
                    .unwrap()
                    .size
                    == 120
        }
    })
    .await;
    // Each record exactly once, positions 0..119 without a gap.
    let shape = log_shape(&db.url, &[]).await;
    let records = db.count("audit_records").await.unwrap();
    assert_eq!(
        (shape.distinct_records, records, shape.top),
        (120, 120, 119)
    );
    let mut c = AsyncPgConnection::establish(&db.url).await.unwrap();
    use diesel_async::RunQueryDsl;
    // Every checkpoint any replica signed extends the one before (asked of each replica in turn).
    #[derive(diesel::QueryableByName)]
    struct Cp {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        tree_size: i64,
        #[diesel(sql_type = diesel::sql_types::Text)]
        note: String,
    }
    let cps: Vec<Cp> =
        diesel::sql_query("SELECT tree_size, note FROM tlog_checkpoints ORDER BY tree_size")
            .load(&mut c)
            .await
            .unwrap();
    let signed: Vec<SignedCheckpoint> = cps
        .iter()
        .map(|c| keys().open(c.note.as_bytes()).unwrap())
        .collect();
    assert!(
        signed
            .iter()
            .zip(&cps)
            .all(|(s, c)| s.size as i64 == c.tree_size)
    );
    for (k, pair) in signed.windows(2).enumerate().filter(|(_, p)| p[0].size > 0) {
        let addr = replicas[k % 3];
        let r = client
            .get(format!(
                "http://{addr}/api/v1/log/proof/consistency?from={}&to={}",
                pair[0].size, pair[1].size
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        let proof = proof_hashes(&body);
        assert!(
            check_consistency(
                &proof,
                pair[0].size,
                pair[0].root,
                pair[1].size,
                pair[1].root
            ),
            "{} -> {}",
            pair[0].size,
            pair[1].size
        );
    }
    // And the whole log verifies offline against every checkpoint.
    let body = client
        .get(format!("{base}/api/v1/audit/export"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let export = temp("export.ndjson", &body);
    let notes: Vec<&str> = cps.iter().map(|c| c.note.as_str()).collect();
    assert_verifies(&export, &notes);
}

/// What one write got: an answer (status, id when created), or no answer at all.
#[derive(Debug)]
enum Outcome {
    Answered(u16, Option<i64>),
    NoAnswer,
}

/// The sequencer's replica killed for real (`kill -9`) in the middle of a run, under concurrent
/// writes to two replicas: the role passes to the survivor, every acknowledged record is appended
/// exactly once, no answer is a server error, and the tree after the crash extends the one before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_sequencers_replica_mid_run_hands_the_role_over() {
    use ds_tests::replica::Replica;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let db = ds_tests::TestDb::new().await.unwrap();
    let env = ds_tests::test_env(
        &db.runtime_url,
        &[
            ("DATASTORAGE_EMBEDDING_MODE", "deferred"),
            ("DATASTORAGE_EMBEDDING_WORKER_INTERVAL_MS", "0"),
        ],
    );
    let bin = env!("CARGO_BIN_EXE_replica");
    let mut replicas = [
        Replica::start(bin, "replica_a", &env).await.unwrap(),
        Replica::start(bin, "replica_b", &env).await.unwrap(),
    ];
    let client = ds_tests::http_client();
    let checkpoint_of = |addr: std::net::SocketAddr| {
        let client = client.clone();
        async move {
            let r = client
                .get(format!("http://{addr}/api/v1/log/checkpoint"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let note = r.text().await.unwrap();
            (keys().open(note.as_bytes()).unwrap(), note)
        }
    };

    // A signed tree from before the crash.
    for n in 0..10u32 {
        let r = client
            .post(format!(
                "http://{}/api/v1/audit/workflow",
                replicas[n as usize % 2].addr
            ))
            .json(&fixtures::workflow(n))
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert_eq!(status, 201, "{}", r.text().await.unwrap_or_default());
    }
    let before = std::sync::Mutex::new(None);
    until("a checkpoint covers the first ten records", || async {
        let (c, note) = checkpoint_of(replicas[0].addr).await;
        let covers = c.size >= 10;
        *before.lock().unwrap() = Some((c, note));
        covers
    })
    .await;
    let (before, before_note) = before.into_inner().unwrap().unwrap();

    // The owner holds a lock that appending leaves waits for: the next run stops in its middle,
    // its records taken off the queue, the sequencer's role held.
    let mut owner = AsyncPgConnection::establish(&db.url).await.unwrap();
    owner
        .batch_execute("BEGIN; LOCK TABLE tlog_leaves IN EXCLUSIVE MODE")
        .await
        .unwrap();

    // Three writers per replica, each until told to stop or until its replica stops answering.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..6u32)
        .map(|w| {
            let (client, stop, acked) = (client.clone(), stop.clone(), acked.clone());
            let addr = replicas[w as usize % 2].addr;
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut n = 1000 + w * 100_000;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let sent = client
                        .post(format!("http://{addr}/api/v1/audit/workflow"))
                        .json(&fixtures::workflow(n))
                        .send()
                        .await;
                    let outcome = match sent {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body: Value = r.json().await.unwrap_or(Value::Null);
                            if status == 201 {
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Outcome::Answered(status, body["id"].as_i64())
                        }
                        Err(_) => Outcome::NoAnswer,
                    };
                    let gone = matches!(outcome, Outcome::NoAnswer);
                    outcomes.push(outcome);
                    if gone {
                        break;
                    }
                }
                outcomes
            })
        })
        .collect();

    // Whose run waits on the lock: that replica holds the sequencer's role.
    until("a sequencer run waits on the owner's lock", || async {
        sequencer_runs_waiting_on_a_lock(&db.url).await.len() == 1
    })
    .await;
    let holder = sequencer_runs_waiting_on_a_lock(&db.url).await.remove(0);
    let victim = replicas.iter().position(|r| r.name == holder).unwrap();
    let survivor = 1 - victim;
    until("writes are acknowledged while the run waits", || async {
        acked.load(Ordering::Relaxed) >= 20
    })
    .await;

    replicas[victim].kill().await.unwrap();
    let at_kill = acked.load(Ordering::Relaxed);
    until(
        "the survivor acknowledges writes after the kill",
        || async { acked.load(Ordering::Relaxed) >= at_kill + 20 },
    )
    .await;
    // The dead replica's backend still waits, holding the role; once the lock goes it finds its
    // client gone and rolls back, its records back on the queue.
    owner.batch_execute("ROLLBACK").await.unwrap();
    let victim_name = replicas[victim].name.clone();
    until("the dead replica's connections are gone", || async {
        connections_named(&db.url, &victim_name).await == 0
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    for w in writers {
        outcomes.extend(w.await.unwrap());
    }

    // Every answer was a 201 (a write cut by the kill got no answer, never an error).
    let answered: Vec<(u16, Option<i64>)> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Answered(s, id) => Some((*s, *id)),
            Outcome::NoAnswer => None,
        })
        .collect();
    assert!(
        answered.iter().all(|(s, id)| *s == 201 && id.is_some()),
        "{answered:?}"
    );
    let acknowledged: Vec<i64> = answered.iter().filter_map(|(_, id)| *id).collect();
    assert!(acknowledged.len() >= at_kill + 20);

    // The survivor appends everything: the queue empties, one leaf per record, no gap.
    let records = db.count("audit_records").await.unwrap() as u64;
    let after = std::sync::Mutex::new(None);
    until("the survivor's tree holds every record", || async {
        let (c, note) = checkpoint_of(replicas[survivor].addr).await;
        let all = c.size == records;
        *after.lock().unwrap() = Some((c, note));
        all
    })
    .await;
    let (after, after_note) = after.into_inner().unwrap().unwrap();
    let l = log_shape(&db.url, &acknowledged).await;
    assert_eq!(
        (l.distinct_records as u64, l.top as u64 + 1, l.pending),
        (records, records, 0)
    );
    assert_eq!(l.acknowledged_in_log as usize, acknowledged.len());

    // The tree after the crash extends the one before, by the survivor's own proof.
    let r = client
        .get(format!(
            "http://{}/api/v1/log/proof/consistency?from={}&to={}",
            replicas[survivor].addr, before.size, after.size
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let proof = proof_hashes(&r.json().await.unwrap());
    assert!(check_consistency(
        &proof,
        before.size,
        before.root,
        after.size,
        after.root
    ));
    // And the whole export verifies against both checkpoints.
    let body = client
        .get(format!(
            "http://{}/api/v1/audit/export",
            replicas[survivor].addr
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let export = temp("export-after-kill.ndjson", &body);
    assert_verifies(&export, &[&before_note, &after_note]);
}

async fn sequencer_runs_waiting_on_a_lock(url: &str) -> Vec<String> {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct App {
        #[diesel(sql_type = diesel::sql_types::Text)]
        application_name: String,
    }
    let mut c = AsyncPgConnection::establish(url).await.unwrap();
    diesel::sql_query(
        "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() \
         AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO tlog_leaves%'",
    )
    .load::<App>(&mut c)
    .await
    .unwrap()
    .into_iter()
    .map(|a| a.application_name)
    .collect()
}

async fn connections_named(url: &str, name: &str) -> i64 {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut c = AsyncPgConnection::establish(url).await.unwrap();
    diesel::sql_query("SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1")
        .bind::<diesel::sql_types::Text, _>(name)
        .get_result::<N>(&mut c)
        .await
        .unwrap()
        .n
}

#[derive(diesel::QueryableByName)]
struct LogShape {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    distinct_records: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    top: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pending: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    acknowledged_in_log: i64,
}

/// Distinct records among the leaves, the highest log index, the queue's length, and how many of
/// `acknowledged` have a leaf.
async fn log_shape(url: &str, acknowledged: &[i64]) -> LogShape {
    use diesel_async::RunQueryDsl;
    let mut c = AsyncPgConnection::establish(url).await.unwrap();
    diesel::sql_query(
        "SELECT (SELECT count(DISTINCT id) FROM tlog_segments, unnest(record_ids) id) AS distinct_records,
                (SELECT max(first_leaf + leaves) - 1 FROM tlog_segments) AS top,
                (SELECT count(*) FROM tlog_queue) AS pending,
                (SELECT count(*) FROM tlog_segments, unnest(record_ids) id WHERE id = ANY($1))
                    AS acknowledged_in_log",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(acknowledged)
    .get_result(&mut c)
    .await
    .unwrap()
}

/// A deterministic generator (a 64-bit LCG): the same cases on every run, many shapes of JSON.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.next() as usize % items.len()]
    }

    fn text(&mut self) -> String {
        const PIECES: &[&str] = &[
            "a",
            "Z",
            "0",
            " ",
            "\"",
            "\\",
            "/",
            "<b>",
            "&amp;",
            "\u{1}",
            "\u{1f}",
            "\n",
            "\t",
            "\u{7f}",
            "é",
            "😀",
            "\u{2028}",
            "\u{fffd}",
            "日本",
            "'; DROP TABLE x; --",
        ];
        let n = self.next() % 6;
        (0..n).map(|_| *self.pick(PIECES)).collect()
    }

    fn number(&mut self) -> Value {
        match self.next() % 12 {
            0 => json!(self.next() as i64 - (1 << 30)),
            1 => json!(i64::MIN),
            2 => json!(u64::MAX),
            3 => json!(0.1 + 0.2),
            4 => json!(-0.0),
            5 => json!(1e16),
            6 => json!(1.5e-7),
            7 => json!(123.0),
            8 => json!(1e300),
            9 => json!(5e-324),
            10 => json!((self.next() as f64) / 977.0),
            _ => json!(-(self.next() as f64) * 1e-3),
        }
    }

    fn value(&mut self, depth: u32) -> Value {
        match self.next() % if depth >= 3 { 4 } else { 6 } {
            0 => Value::Null,
            1 => json!(self.next().is_multiple_of(2)),
            2 => json!(self.text()),
            3 => self.number(),
            4 => Value::Array(
                (0..self.next() % 4)
                    .map(|_| self.value(depth + 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..self.next() % 4)
                    .map(|i| (format!("{}{i}", self.text()), self.value(depth + 1)))
                    .collect(),
            ),
        }
    }
}

/// The leaf hash the insert computes (from the canonical form the service sends) is, byte for byte,
/// the one the verifier recomputes from the stored record, over generated content: strings with
/// escapes, controls, markup and non-BMP characters, nested objects and arrays, integers at the
/// edges and floats PostgreSQL prints back differently (those get no write-time hash: the sequencer
/// computes theirs from the stored row, and they must verify too).
#[tokio::test]
async fn the_leaf_hash_computed_at_write_is_the_one_the_verifier_recomputes() {
    let app = spawn_app().await.unwrap();
    let mut g = Gen(0x5eed);
    let mut written = 0u64;
    for batch in 0..8u32 {
        let records = (0..25u32)
            .map(|i| {
                let mut r = fixtures::workflow(batch * 100 + i);
                r["correlationId"] = json!("rr-2026-11-30-gen000");
                for k in 0..3 {
                    r[format!("x-extra-{k}")] = g.value(0);
                }
                r
            })
            .collect();
        written += post_batch(&app, records).await.len() as u64;
    }
    checkpoint_covering(&app, written).await;
    let (export, lines) = export(&app).await;
    assert_eq!(lines.len() as u64, written);

    #[derive(diesel::QueryableByName)]
    struct AtWrite {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Bytea>)]
        leaf_hash: Option<Vec<u8>>,
    }
    use diesel_async::RunQueryDsl;
    let mut c = app.db.conn().await.unwrap();
    let at_write: std::collections::HashMap<i64, Option<Vec<u8>>> =
        diesel::sql_query("SELECT id, leaf_hash FROM audit_records")
            .load::<AtWrite>(&mut c)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.id, r.leaf_hash))
            .collect();
    let (mut fast, mut slow) = (0, 0);
    for line in &lines {
        let recomputed = line.record_leaf_hash().unwrap();
        assert_eq!(
            hash_from_base64(&line.leaf_hash).unwrap(),
            recomputed,
            "record {}",
            line.id
        );
        match &at_write[&line.id] {
            Some(h) => {
                assert_eq!(h.as_slice(), recomputed.0.as_slice(), "record {}", line.id);
                fast += 1;
            }
            None => slow += 1,
        }
    }
    // Both paths ran: most records were hashed at write, those with unpredictable numbers later.
    assert!(fast > 100 && slow > 0, "fast {fast}, slow {slow}");
    assert_verifies(&export, &[&checkpoint_covering(&app, written).await.0]);
}

/// A record inserted with the queue's trigger off (an administrator's session) is found by the
/// sequencer's sweep: queued, appended, counted in `datastorage_log_unqueued_records_total`; and
/// the log still verifies.
#[tokio::test]
async fn a_record_inserted_with_the_queue_off_is_swept_into_the_log_and_counted() {
    use diesel_async::RunQueryDsl;
    let app = spawn_app().await.unwrap();
    let ids = write(&app, "rr-2026-11-30-sweepa", 1, 3).await;
    checkpoint_covering(&app, 3).await;
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    let mut c = owner(&app).await;
    let sneaked: Id = diesel::sql_query(
        "INSERT INTO audit_records (kind, name, namespace, phase, correlation_id, message, created_at,
             started_at, completed_at, content_digest, details, unknown_fields, embedding_digest)
         SELECT kind, name || '-unqueued', namespace, phase, correlation_id, message, created_at,
             started_at, completed_at, sha256(content_digest), details, unknown_fields, embedding_digest
         FROM audit_records WHERE id = $1 RETURNING id",
    )
    .bind::<diesel::sql_types::BigInt, _>(ids[0])
    .get_result(&mut c)
    .await
    .unwrap();
    drop(c);
    let (note, _) = checkpoint_covering(&app, 4).await;
    assert_eq!(leaf_of(&app, sneaked.id).await, 3);
    let metrics = app.metrics_text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "datastorage_log_unqueued_records_total 1"),
        "{metrics}"
    );
    let (export, _) = export(&app).await;
    assert_verifies(&export, &[&note]);
}

/// One statement inserting 25,000 records (a COPY, a bulk insert) is queued in rows of at most
/// 10,000 (one per 10,000 ids), each a sequencer run can take, and all of it reaches the log.
#[tokio::test]
async fn a_large_insert_is_queued_in_rows_a_run_can_take() {
    use diesel_async::RunQueryDsl;
    let app = spawn_app().await.unwrap();
    let ids = write(&app, "rr-2026-11-30-bulkaa", 1, 1).await;
    checkpoint_covering(&app, 1).await;
    // The sequencer's role held elsewhere while the statement commits: the queue is seen whole.
    let mut holder = hold_sequencer(&app).await;
    let mut c = app.db.conn().await.unwrap();
    c.batch_execute(&format!(
        "INSERT INTO audit_records (kind, name, namespace, phase, correlation_id, message, created_at,
             started_at, completed_at, content_digest, details, unknown_fields, embedding_digest)
         SELECT kind, name || '-' || g, namespace, phase, correlation_id, message, created_at,
             started_at, completed_at, sha256(content_digest || int8send(g)), details, unknown_fields,
             embedding_digest
         FROM audit_records, generate_series(1, 25000) g WHERE id = {}",
        ids[0]
    ))
    .await
    .unwrap();
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        n: i32,
    }
    let rows: Vec<Row> =
        diesel::sql_query("SELECT cardinality(record_ids) AS n FROM tlog_queue ORDER BY batch")
            .load(&mut c)
            .await
            .unwrap();
    // Rows by ids / 10,000: three or four rows (the ids need not start at a multiple).
    let sizes: Vec<i32> = rows.iter().map(|r| r.n).collect();
    assert_eq!(sizes.iter().sum::<i32>(), 25_000, "{sizes:?}");
    assert!(sizes.iter().all(|&n| n <= 10_000), "{sizes:?}");
    assert!((3..=4).contains(&sizes.len()), "{sizes:?}");
    holder.batch_execute("ROLLBACK").await.unwrap();
    checkpoint_covering(&app, 25_001).await;
}

/// The log as the migration `log_segments` found it (a row per leaf and per stored hash) moves in
/// place: the store is taken back to that schema with its down migration, with records in the
/// queue, then migrated again; the tree afterwards is the one signed before (the verifier checks
/// consistency between the checkpoints) and grows on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_stored_a_row_per_leaf_migrates_to_segments_in_place() {
    const DOWN: &str = include_str!("../../migrations/2026-12-03-000000_log_segments/down.sql");
    let app = ds_tests::spawn_app_with(&[
        ("DATASTORAGE_EMBEDDING_MODE", "deferred"),
        ("DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND", "0"),
    ])
    .await
    .unwrap();
    // More than one segment of 1,024 leaves, appended by several runs.
    let mut ids = Vec::new();
    for k in 0..11 {
        ids.extend(write(&app, "rr-2026-11-30-migrat", k * 100, 100).await);
    }
    let (first_note, first) = checkpoint_covering(&app, 1100).await;
    let holder = hold_sequencer(&app).await;
    let queued = write(&app, "rr-2026-11-30-migrbb", 5000, 40).await;

    let mut c = owner(&app).await;
    c.batch_execute(&format!(
        "BEGIN; {DOWN}; DELETE FROM __diesel_schema_migrations WHERE version = '20261203000000'; COMMIT;"
    ))
    .await
    .unwrap();
    #[derive(diesel::QueryableByName)]
    struct OldShape {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        leaves: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        hashes: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        queued: i64,
    }
    use diesel_async::RunQueryDsl;
    let old: OldShape = diesel::sql_query(
        "SELECT (SELECT count(*) FROM tlog_leaves WHERE leaf_hash IS NOT NULL) AS leaves,
                (SELECT count(*) FROM tlog_hashes) AS hashes,
                (SELECT COALESCE(sum(cardinality(leaf_hashes)), 0)::bigint FROM tlog_queue) AS queued",
    )
    .get_result(&mut c)
    .await
    .unwrap();
    assert_eq!(old.leaves, first.size as i64);
    assert!(
        old.hashes >= old.leaves - 11,
        "{} stored hashes",
        old.hashes
    );
    assert_eq!(old.queued, 40);

    let applied = ds_store_pg::run_migrations(&app.db.url).await.unwrap();
    assert_eq!(applied, ["20261203000000"]);
    drop(holder);
    let (note, latest) = checkpoint_covering(&app, first.size + 40).await;
    let (file, lines) = export(&app).await;
    assert_verifies(&file, &[&first_note, &note]);
    assert_eq!(lines.len() as u64, latest.size);
    let logged: std::collections::HashSet<i64> = lines.iter().map(|l| l.id).collect();
    assert!(ids.iter().chain(&queued).all(|id| logged.contains(id)));
    // Proofs read the migrated segments: a record of each of the first two, against the latest.
    for id in [ids[3], ids[1050]] {
        let r = app
            .get(&format!(
                "/api/v1/log/proof/inclusion?kind=workflow&id={id}&treeSize={}",
                latest.size
            ))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let index = r.body["logIndex"].as_u64().unwrap();
        let read = app
            .get(&format!("/api/v1/audit/workflow/{id}"))
            .await
            .unwrap();
        assert_eq!(read.body["logIndex"].as_u64(), Some(index));
        let leaf = lines[index as usize].record_leaf_hash().unwrap();
        assert!(check_inclusion(
            &proof_hashes(&r.body),
            latest.size,
            latest.root,
            index,
            leaf
        ));
    }
}

/// A record queued again by hand gets no second leaf, whether it was logged already (the run that
/// meets it is redone without it: otherwise every run would fail on it and the log would stop) or
/// is still queued (one leaf for both), and what was queued with it is logged.
#[tokio::test]
async fn a_record_queued_again_by_hand_is_not_logged_twice() {
    let app = spawn_app().await.unwrap();
    let ids = write(&app, "rr-2026-11-30-requeu", 1, 3).await;
    checkpoint_covering(&app, 3).await;
    let holder = hold_sequencer(&app).await;
    let later = write(&app, "rr-2026-11-30-requeu", 10, 2).await;
    owner(&app)
        .await
        .batch_execute(&format!(
            "INSERT INTO tlog_queue (first_id, record_ids, kinds, leaf_hashes)
             VALUES ({id}, ARRAY[{id}::bigint], ARRAY['workflow'], decode(repeat('00', 32), 'hex')),
                    ({q}, ARRAY[{q}::bigint], ARRAY['workflow'], decode(repeat('00', 32), 'hex'))",
            id = ids[1],
            q = later[0]
        ))
        .await
        .unwrap();
    drop(holder);
    let (note, _) = checkpoint_covering(&app, 5).await;
    let after = write(&app, "rr-2026-11-30-requeu", 20, 1).await;
    let (last, latest) = checkpoint_covering(&app, 6).await;
    assert_eq!(latest.size, 6);
    let (file, lines) = export(&app).await;
    let mut logged: Vec<i64> = lines.iter().map(|l| l.id).collect();
    logged.sort_unstable();
    let mut written: Vec<i64> = ids.iter().chain(&later).chain(&after).copied().collect();
    written.sort_unstable();
    assert_eq!(logged, written);
    assert_verifies(&file, &[&note, &last]);
    let shape = log_shape(&app.db.url, &written).await;
    assert_eq!(shape.pending, 0);
}
