//! Retention and legal hold (contract §9), in the database: month partitions, a write that finds
//! no partition, the existing store partitioned in place, the purge function that is the one way
//! records are deleted, and holds that it never crosses — a race with it forced by holding its
//! lock between the steps.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz};
use diesel::{OptionalExtension, QueryableByName};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use ds_tests::{TestApp, fixtures, names, spawn_app, spawn_app_with};
use serde_json::{Value, json};

/// Posts `n` records of `kind` to the trail `trail` (numbers from `first`) in one batch; their ids.
async fn write(app: &TestApp, kind: &str, trail: &str, first: u32, n: u32) -> Vec<i64> {
    let records: Vec<Value> = (first..first + n)
        .map(|i| {
            let mut r = fixtures::of(kind, i);
            r["correlationId"] = json!(trail);
            json!({"kind": kind, "record": r})
        })
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

#[derive(QueryableByName, Debug)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn count(c: &mut AsyncPgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<N>(c).await.unwrap().n
}

/// Polls `sql` (a `count(*) AS n`) on `url` until `holds` says yes; panics naming `what` after
/// the wait of [`ds_tests::until`].
async fn until_count(url: &str, what: &str, sql: &str, holds: impl Fn(i64) -> bool) {
    ds_tests::until(what, || async {
        let mut c = AsyncPgConnection::establish(url).await.unwrap();
        holds(count(&mut c, sql).await)
    })
    .await;
}

/// The partition each of `ids` is stored in.
async fn partitions_of(c: &mut AsyncPgConnection, ids: &[i64]) -> Vec<String> {
    let list: Vec<String> = ids.iter().map(ToString::to_string).collect();
    names(
        c,
        &format!(
            "SELECT DISTINCT tableoid::regclass::text AS name FROM audit_records WHERE id IN ({})",
            list.join(",")
        ),
    )
    .await
}

async fn runtime(app: &TestApp) -> AsyncPgConnection {
    AsyncPgConnection::establish(&app.db.runtime_url)
        .await
        .unwrap()
}

/// Places a hold the way the service does: under the lock purge batches take.
async fn place_hold(c: &mut AsyncPgConnection, trail: &str) -> i64 {
    c.batch_execute("BEGIN; SELECT audit_holds_lock()")
        .await
        .unwrap();
    let id = count(
        c,
        &format!(
            "INSERT INTO legal_holds (correlation_id, reason, placed_by)
             VALUES ('{trail}', 'litigation', 'system:serviceaccount:legal:counsel') RETURNING id AS n"
        ),
    )
    .await;
    c.batch_execute("COMMIT").await.unwrap();
    id
}

/// Waits until every record is in the log (the purge removes only records the log holds).
async fn until_logged(app: &TestApp) {
    until_count(
        &app.db.url,
        "every record is logged",
        "SELECT count(*) AS n FROM audit_records r
                 WHERE NOT EXISTS (SELECT 1 FROM tlog_leaves l WHERE l.record_id = r.id)",
        |n| n == 0,
    )
    .await;
}

/// SQL that puts back records `ids` of `kind`, received 100 days ago, with their digests, as an
/// administrator's restore would (queued for the log by the trigger; the sequencer computes their
/// leaf hashes); `tag` keeps their contents apart from another restore's.
fn restored(tag: &str, kind: &str, ids: std::ops::RangeInclusive<u32>) -> String {
    let (lo, hi) = (ids.start(), ids.end());
    format!(
        "INSERT INTO audit_digests (content_digest, record_id, received_at)
         SELECT sha256(('{tag}-' || g)::bytea), g, now() - interval '100 days' FROM generate_series({lo}, {hi}) g;
         INSERT INTO audit_records (id, received_at, kind, name, namespace, phase, correlation_id,
             created_at, content_digest, details, embedding_digest)
         SELECT g, now() - interval '100 days', '{kind}', '{tag}-' || g, 'payments', 'Completed',
             'rr-2026-08-22-{tag}' || lpad((g % 100)::text, 3, '0'), now() - interval '100 days',
             sha256(('{tag}-' || g)::bytea), '{{}}'::jsonb, sha256('{tag}'::bytea)
         FROM generate_series({lo}, {hi}) g;
         SELECT setval('audit_records_id_seq', {hi});"
    )
}

#[derive(QueryableByName, Debug)]
struct Batch {
    #[diesel(sql_type = BigInt)]
    examined: i64,
    #[diesel(sql_type = BigInt)]
    named: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    next_at: Option<chrono::DateTime<chrono::Utc>>,
    #[diesel(sql_type = Nullable<BigInt>)]
    next_id: Option<i64>,
}

/// Logs the purge of every record of `kind` received before `days_ahead` days from now (a clock
/// the test moves: the cutoff the purge is given), in batches of `max_rows` until the end; the
/// records go once a checkpoint covers the entries ([`apply_all`]). Returns (records examined,
/// records named by purge entries, batches).
async fn purge_all(
    c: &mut AsyncPgConnection,
    kind: &str,
    days_ahead: i64,
    max_rows: i64,
) -> (i64, i64, usize) {
    let (mut examined, mut named, mut batches) = (0, 0, 0);
    let mut after: (Option<chrono::DateTime<chrono::Utc>>, Option<i64>) = (None, None);
    loop {
        let b: Batch = diesel::sql_query(
            "SELECT * FROM audit_purge(jsonb_build_object($1::text, now() + make_interval(days => $2::int)),
                                       '{\"days\": {\"default\": 90}}'::jsonb, $3, $4, $5::int)",
        )
        .bind::<Text, _>(kind)
        .bind::<BigInt, _>(days_ahead)
        .bind::<Nullable<Timestamptz>, _>(after.0)
        .bind::<Nullable<BigInt>, _>(after.1)
        .bind::<BigInt, _>(max_rows)
        .get_result(c)
        .await
        .unwrap();
        examined += b.examined;
        named += b.named;
        batches += 1;
        assert!(b.examined <= max_rows);
        match (b.next_at, b.next_id) {
            (Some(at), Some(id)) => after = (Some(at), Some(id)),
            _ => return (examined, named, batches),
        }
    }
}

#[derive(QueryableByName, Debug)]
struct Applied {
    #[diesel(sql_type = BigInt)]
    deleted: i64,
    #[diesel(sql_type = Bool)]
    dropped: bool,
}

/// One call of `audit_purge_apply` (as the service's role): the oldest pending purge a checkpoint
/// covers, carried out; `None` when nothing pending is covered.
async fn apply_one(c: &mut AsyncPgConnection) -> Option<Applied> {
    diesel::sql_query("SELECT deleted, dropped FROM audit_purge_apply(0, '{}', 2000)")
        .get_result::<Applied>(c)
        .await
        .optional()
        .unwrap()
}

/// Carries out every pending purge as checkpoints come to cover their entries (the running
/// service's sequencer signs one every 100 ms), polling as [`ds_tests::until`] does; returns the
/// records deleted.
async fn apply_all(c: &mut AsyncPgConnection) -> i64 {
    let mut deleted = 0;
    for _ in 0..2000 {
        while let Some(a) = apply_one(c).await {
            deleted += a.deleted;
        }
        if count(c, "SELECT count(*) AS n FROM purge_pending").await == 0 {
            return deleted;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until every logged purge is carried out");
}

#[tokio::test]
async fn records_are_stored_in_the_partition_of_their_month_and_months_ahead_can_be_ensured() {
    let app = spawn_app().await.unwrap();
    let ids = write(&app, "workflow", "rr-2026-11-30-parts0", 1, 3).await;
    let mut c = app.db.conn().await.unwrap();
    // This month's partition (on a fresh store, the one the migration made of the existing table).
    let this_month = names(&mut c, "SELECT audit_partition_ensure(now()) AS name").await;
    assert_eq!(partitions_of(&mut c, &ids).await, this_month);
    assert_eq!(
        names(
            &mut c,
            "SELECT relkind::text AS name FROM pg_class WHERE relname = 'audit_records'"
        )
        .await,
        ["p"]
    );
    // Four months from this one: four partitions, each created once however often it is asked.
    let mut months = Vec::new();
    for _ in 0..2 {
        months = names(
            &mut c,
            "SELECT audit_partition_ensure(now() + make_interval(months => m)) AS name
             FROM generate_series(0, 3) m ORDER BY m",
        )
        .await;
    }
    let distinct: std::collections::HashSet<_> = months.iter().collect();
    assert_eq!(distinct.len(), 4, "{months:?}");
    let attached = count(
        &mut c,
        "SELECT count(*) AS n FROM pg_inherits WHERE inhparent = 'audit_records'::regclass",
    )
    .await;
    assert!(attached >= 4, "{attached} partitions");
    // Each ahead covers its month: a record received then would go there.
    for (m, name) in months.iter().enumerate().skip(1) {
        let found = names(
            &mut c,
            &format!(
                "SELECT c.relname::text AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'audit_records'::regclass AND c.relname = '{name}'
                   AND pg_get_expr(c.relpartbound, c.oid) LIKE '%' || to_char(date_trunc('month', now() AT TIME ZONE 'UTC') + interval '{m} months', 'YYYY-MM-01') || '%'"
            ),
        )
        .await;
        assert_eq!(found, std::slice::from_ref(name), "month +{m}");
    }
}

#[tokio::test]
async fn a_write_that_finds_no_partition_for_its_month_creates_it() {
    let sink = ds_tests::LogSink::default();
    let writer = sink.clone();
    tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .init();
    // The maintenance task off: it would create the partition again.
    let app = spawn_app_with(&[
        ("DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND", "0"),
        ("DATASTORAGE_RETENTION_MAINTENANCE_INTERVAL_MS", "0"),
    ])
    .await
    .unwrap();
    let mut c = app.db.conn().await.unwrap();
    // This month's partition taken away (empty on a fresh store), as if maintenance had not run.
    let this_month = names(&mut c, "SELECT audit_partition_ensure(now()) AS name").await;
    c.batch_execute(&format!(
        "ALTER TABLE audit_records DETACH PARTITION {}; DROP TABLE {}",
        this_month[0], this_month[0]
    ))
    .await
    .unwrap();
    let ids = write(&app, "execution", "rr-2026-11-30-nopart", 1, 2).await;
    let now = partitions_of(&mut c, &ids).await;
    assert_eq!(now.len(), 1);
    assert!(now[0].starts_with("audit_records_y"), "{now:?}");
    assert!(
        sink.text()
            .contains("a write found no partition for its month: created it"),
        "{}",
        sink.text()
    );
    // Read back, and a replay is still a replay.
    let r = app
        .get(&format!("/api/v1/audit/execution/{}", ids[0]))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let again = write(&app, "execution", "rr-2026-11-30-nopart", 1, 2).await;
    assert_eq!(again, ids);
}

#[tokio::test]
async fn an_existing_store_is_partitioned_in_place_keeping_every_record_its_replays_and_its_log() {
    const DOWN: &str =
        include_str!("../../migrations/2026-12-04-000000_retention_and_holds/down.sql");
    // The migrations after it, undone first.
    const LATER_DOWN: &str =
        include_str!("../../migrations/2026-12-05-000000_list_indexes/down.sql");
    let app = spawn_app_with(&[("DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND", "0")])
        .await
        .unwrap();
    let mut c = app.db.conn().await.unwrap();
    // Today's schema, with data in it: records of every kind, then back to that schema with the
    // down migration (which copies them into one table), and one more inserted there the way
    // today's service does (its conflict arbiter: the content digest's unique index).
    let mut ids = Vec::new();
    for kind in ["remediation", "aianalysis", "workflow", "execution"] {
        ids.extend(write(&app, kind, "rr-2026-11-30-inplce", 1, 5).await);
    }
    c.batch_execute(&format!(
        "BEGIN; {LATER_DOWN}; {DOWN};
         DELETE FROM __diesel_schema_migrations WHERE version IN ('20261204000000', '20261205000000'); COMMIT;"
    ))
    .await
    .unwrap();
    assert_eq!(
        names(
            &mut c,
            "SELECT relkind::text AS name FROM pg_class WHERE relname = 'audit_records'"
        )
        .await,
        ["r"]
    );
    let old = count(
        &mut c,
        &format!(
            "INSERT INTO audit_records (kind, name, namespace, phase, correlation_id, message, created_at,
                 started_at, completed_at, content_digest, details, unknown_fields, embedding_digest)
             SELECT kind, name || '-old', namespace, phase, correlation_id, message, created_at,
                 started_at, completed_at, sha256(content_digest), details, unknown_fields, embedding_digest
             FROM audit_records WHERE id = {}
             ON CONFLICT (content_digest) DO NOTHING RETURNING id AS n",
            ids[0]
        ),
    )
    .await;
    ids.push(old);

    let applied = ds_store_pg::run_migrations(&app.db.url).await.unwrap();
    assert_eq!(applied, ["20261204000000", "20261205000000"]);
    assert_eq!(
        names(
            &mut c,
            "SELECT relkind::text AS name FROM pg_class WHERE relname = 'audit_records'"
        )
        .await,
        ["p"]
    );
    // Not copied: the table itself is the first partition.
    assert_eq!(partitions_of(&mut c, &ids).await, ["audit_records_first"]);
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM audit_records").await,
        21
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM audit_digests").await,
        21
    );
    // A replay finds its original; a new record is new.
    let again = write(&app, "workflow", "rr-2026-11-30-inplce", 1, 5).await;
    assert_eq!(again, ids[10..15]);
    let new = write(&app, "workflow", "rr-2026-11-30-inplce", 100, 1).await;
    assert!(new[0] > *ids.iter().max().unwrap());
    // The content is what was written.
    let r = app
        .get(&format!("/api/v1/audit/aianalysis/{}", ids[5]))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["correlationId"], "rr-2026-11-30-inplce");
    // The migrated table keeps its guards: append-only and queued for the log.
    let e = c
        .batch_execute(&format!("DELETE FROM audit_records WHERE id = {}", ids[0]))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("append-only"), "{e}");
    let e = c
        .batch_execute("TRUNCATE audit_records_first")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("append-only"), "{e}");
    assert_eq!(
        count(
            &mut c,
            &format!(
                "SELECT count(*) AS n FROM tlog_queue WHERE {} = ANY(record_ids)",
                new[0]
            )
        )
        .await
            + count(
                &mut c,
                &format!(
                    "SELECT count(*) AS n FROM tlog_leaves WHERE record_id = {}",
                    new[0]
                )
            )
            .await,
        1
    );
}

#[tokio::test]
async fn the_purge_deletes_expired_records_no_hold_covers_in_bounded_batches_and_logs_them() {
    let app = spawn_app_with(&[("DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND", "0")])
        .await
        .unwrap();
    let free = write(&app, "workflow", "rr-2026-11-30-purgea", 1, 7).await;
    let mut rt = runtime(&app).await;
    place_hold(&mut rt, "rr-2026-11-30-purgeb").await;
    // Written after the hold was placed: covered too.
    let held = write(&app, "workflow", "rr-2026-11-30-purgeb", 1, 4).await;
    // Another kind, whose retention has not run out.
    let other = write(&app, "execution", "rr-2026-11-30-purgea", 1, 3).await;

    // The service's role may not delete, even saying it purges; only the function may.
    let e = rt
        .batch_execute(&format!(
            "SET datastorage.purge = 'on'; DELETE FROM audit_records WHERE id = {}",
            free[0]
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("permission denied"), "{e}");
    rt.batch_execute("RESET datastorage.purge").await.unwrap();

    // Workflows past retention (the cutoff a day ahead), batches of 3; the sequencer held, so
    // that what the purge queued for the log stays in the queue to be seen.
    until_logged(&app).await;
    let mut holder = app.db.conn().await.unwrap();
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({})",
            ds_store_pg::SEQUENCER_LOCK
        ))
        .await
        .unwrap();
    let (examined, named, batches) = purge_all(&mut rt, "workflow", 1, 3).await;
    assert_eq!(named, 7);
    assert!(batches >= 4, "{batches} batches");
    assert!(examined >= 11, "{examined} examined");
    // Logged first: nothing is deleted while no checkpoint covers the entries (the sequencer is
    // held), and logging again names nothing twice.
    let mut c = app.db.conn().await.unwrap();
    assert!(apply_one(&mut rt).await.is_none());
    assert_eq!(purge_all(&mut rt, "workflow", 1, 3).await.1, 0);
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM audit_records").await,
        14
    );
    // Each batch that named records is a purge entry naming them, queued for the log.
    #[derive(QueryableByName)]
    struct Entry {
        #[diesel(sql_type = diesel::sql_types::Jsonb)]
        body: Value,
    }
    let entries: Vec<Entry> =
        diesel::sql_query("SELECT body FROM log_entries WHERE kind = 'purge' ORDER BY id")
            .load(&mut c)
            .await
            .unwrap();
    let named: Vec<i64> = entries
        .iter()
        .flat_map(|e| e.body["records"].as_array().unwrap().clone())
        .map(|r| r.as_i64().unwrap())
        .collect();
    let mut expected = free.clone();
    expected.sort_unstable();
    assert_eq!(named, expected);
    assert_eq!(
        entries
            .iter()
            .map(|e| e.body["count"].as_i64().unwrap())
            .sum::<i64>(),
        7
    );
    assert_eq!(entries[0].body["reason"], "retention");
    assert!(entries[0].body["cutoffs"]["workflow"].is_string());
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM tlog_queue q JOIN log_entries e ON e.id = ANY(q.record_ids)
             WHERE q.kinds = ARRAY['purge']"
        )
        .await,
        entries.len() as i64
    );
    // The sequencer let go, checkpoints cover the entries: the records go.
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(apply_all(&mut rt).await, 7);
    let left: Vec<i64> = diesel::sql_query("SELECT id AS n FROM audit_records ORDER BY id")
        .load::<N>(&mut c)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.n)
        .collect();
    let mut kept: Vec<i64> = held.iter().chain(&other).copied().collect();
    kept.sort_unstable();
    assert_eq!(left, kept);
    // Their digests went with them: the same content again is a new record.
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM audit_digests").await,
        7
    );
    let again = write(&app, "workflow", "rr-2026-11-30-purgea", 1, 1).await;
    assert!(!free.contains(&again[0]));

    // Released, the held trail goes at the next purge; the release is recorded once, never undone.
    rt.batch_execute(
        "UPDATE legal_holds SET released_by = 'system:serviceaccount:legal:counsel',
                released_at = now(), release_reason = 'case closed'
         WHERE correlation_id = 'rr-2026-11-30-purgeb'",
    )
    .await
    .unwrap();
    for sql in [
        "UPDATE legal_holds SET release_reason = 'another reason'",
        "UPDATE legal_holds SET reason = 'rewritten'",
        "DELETE FROM legal_holds",
    ] {
        let e = c.batch_execute(sql).await.unwrap_err().to_string();
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
    until_logged(&app).await;
    let (_, named, _) = purge_all(&mut rt, "workflow", 1, 100).await;
    assert_eq!(named, 5); // the held four and the one written again
    assert_eq!(apply_all(&mut rt).await, 5);
}

#[tokio::test]
async fn a_hold_placed_while_a_logged_purge_waits_to_be_carried_out_protects_its_records() {
    let app = spawn_app_with(&[("DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND", "0")])
        .await
        .unwrap();
    let ids = write(&app, "remediation", "rr-2026-11-30-racehd", 1, 3).await;
    until_logged(&app).await;
    // The purge is logged, and a checkpoint covers its entry: it is due to be carried out...
    let mut rt = runtime(&app).await;
    assert_eq!(purge_all(&mut rt, "remediation", 1, 100).await.1, 3);
    until_count(
        &app.db.url,
        "a checkpoint covers the purge entry",
        "SELECT count(*) AS n FROM purge_pending p JOIN tlog_leaves l ON l.record_id = p.entry_id
         WHERE l.log_index < (SELECT max(tree_size) FROM tlog_checkpoints)",
        |n| n == 1,
    )
    .await;
    // ...when a hold's transaction has the lock and its row, not committed yet...
    let mut placing = runtime(&app).await;
    placing
        .batch_execute(
            "BEGIN; SELECT audit_holds_lock();
             INSERT INTO legal_holds (correlation_id, reason, placed_by)
             VALUES ('rr-2026-11-30-racehd', 'incident review', 'system:serviceaccount:sre:oncall')",
        )
        .await
        .unwrap();
    // ...and the purge is carried out: it waits for the lock.
    let url = app.db.runtime_url.clone();
    let purge = tokio::spawn(async move {
        let mut c = AsyncPgConnection::establish(&url).await.unwrap();
        apply_all(&mut c).await
    });
    let mut c = app.db.conn().await.unwrap();
    until_count(
        &app.db.url,
        "carrying out the purge waits for the holds' lock",
        "SELECT count(*) AS n FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND query LIKE '%audit_purge_apply%'",
        |n| n == 1,
    )
    .await;
    placing.batch_execute("COMMIT").await.unwrap();
    // The hold committed first: nothing goes (the entry names records that stay, which the
    // verifier accepts: a purge entry explains records gone, it does not demand them gone).
    assert_eq!(purge.await.unwrap(), 0);
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM audit_records").await,
        ids.len() as i64
    );
}

#[tokio::test]
async fn a_partition_is_dropped_whole_only_when_all_its_records_expired_and_none_is_held() {
    let app = spawn_app_with(&[("DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND", "0")])
        .await
        .unwrap();
    let mut ids = write(&app, "workflow", "rr-2026-11-30-dropa0", 1, 6).await;
    ids.extend(write(&app, "aianalysis", "rr-2026-11-30-dropb0", 1, 2).await);
    let mut rt = runtime(&app).await;
    let hold = place_hold(&mut rt, "rr-2026-11-30-dropb0").await;
    until_logged(&app).await;
    let mut c = app.db.conn().await.unwrap();
    let part = partitions_of(&mut c, &ids).await;
    assert_eq!(part.len(), 1);
    let url = app.db.runtime_url.clone();
    let drop = |cutoffs: &'static str| {
        let (part, url) = (part[0].clone(), url.clone());
        async move {
            let mut rt = AsyncPgConnection::establish(&url).await.unwrap();
            #[derive(QueryableByName)]
            struct Dropped {
                #[diesel(sql_type = Nullable<BigInt>)]
                n: Option<i64>,
            }
            diesel::sql_query(format!(
                "SELECT audit_purge_partition($1, {cutoffs}, '{{\"days\": {{\"default\": 90}}}}'::jsonb) AS n"
            ))
            .bind::<Text, _>(part)
            .get_result::<Dropped>(&mut rt)
            .await
            .unwrap()
            .n
        }
    };
    let both = "jsonb_build_object('workflow', now() + interval '1 day', 'aianalysis', now() + interval '1 day')";
    // One held record keeps the whole partition.
    assert_eq!(drop(both).await, None);
    // So does one record whose kind is kept longer (here: forever, no cutoff).
    rt.batch_execute(&format!(
        "UPDATE legal_holds SET released_by = 'system:serviceaccount:legal:counsel',
                released_at = now(), release_reason = 'case closed' WHERE id = {hold}"
    ))
    .await
    .unwrap();
    assert_eq!(
        drop("jsonb_build_object('workflow', now() + interval '1 day')").await,
        None
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM audit_records").await,
        8
    );
    // All expired, none held: the drop is logged (logging it again does nothing)...
    assert_eq!(drop(both).await, Some(8));
    assert_eq!(drop(both).await, None);
    // ...but a hold placed before it is carried out keeps the partition, and the entry names
    // records that stay.
    let late = place_hold(&mut rt, "rr-2026-11-30-dropa0").await;
    assert_eq!(apply_all(&mut rt).await, 0);
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM audit_records").await,
        8
    );
    rt.batch_execute(&format!(
        "UPDATE legal_holds SET released_by = 'system:serviceaccount:legal:counsel',
                released_at = now(), release_reason = 'case closed' WHERE id = {late}"
    ))
    .await
    .unwrap();
    // Logged again and carried out: dropped, its digests and records gone, an entry with its
    // ranges.
    assert_eq!(drop(both).await, Some(8));
    let applied = std::sync::Arc::new(std::sync::Mutex::new(None));
    ds_tests::until("a checkpoint covers the drop's entry", || {
        let (url, applied) = (url.clone(), applied.clone());
        async move {
            let mut rt = AsyncPgConnection::establish(&url).await.unwrap();
            let a = apply_one(&mut rt).await;
            let got = a.is_some();
            *applied.lock().unwrap() = a;
            got
        }
    })
    .await;
    let applied = applied.lock().unwrap().take().unwrap();
    assert!(applied.dropped);
    assert_eq!(applied.deleted, 8);
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM audit_records").await,
        0
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM audit_digests").await,
        0
    );
    assert_eq!(
        count(
            &mut c,
            &format!(
                "SELECT count(*) AS n FROM pg_class WHERE relname = '{}'",
                part[0]
            )
        )
        .await,
        0
    );
    #[derive(QueryableByName)]
    struct Entry {
        #[diesel(sql_type = diesel::sql_types::Jsonb)]
        body: Value,
    }
    let e: Entry = diesel::sql_query(
        "SELECT body FROM log_entries WHERE kind = 'purge' ORDER BY id DESC LIMIT 1",
    )
    .get_result(&mut c)
    .await
    .unwrap();
    assert_eq!(e.body["count"], 8);
    assert_eq!(e.body["partition"]["name"], part[0].as_str());
    let mut covered: Vec<i64> = Vec::new();
    for r in e.body["ranges"].as_array().unwrap() {
        let (lo, hi) = (r[0].as_i64().unwrap(), r[1].as_i64().unwrap());
        covered.extend(lo..=hi);
    }
    covered.sort_unstable();
    ids.sort_unstable();
    assert_eq!(covered, ids);
    // A write afterwards finds (or makes) its month's partition again.
    let after = write(&app, "workflow", "rr-2026-11-30-dropa0", 50, 1).await;
    assert_eq!(after.len(), 1);
}

#[tokio::test]
async fn the_verifier_tells_a_purge_by_policy_from_a_deletion() {
    use ds_server::verify::Verdict;
    use ds_tests::log::{checkpoint_covering, export, verify_offline};
    let app = spawn_app_with(&[("DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND", "0")])
        .await
        .unwrap();
    let purged = write(&app, "workflow", "rr-2026-11-30-vfypga", 1, 6).await;
    // Kept (the purge is for workflows), logged before the held ones: what bounds when they were
    // received, once the records logged before them are gone.
    write(&app, "execution", "rr-2026-11-30-vfypga", 1, 1).await;
    let (_, _) = checkpoint_covering(&app, 7).await;
    let held = write(&app, "workflow", "rr-2026-11-30-vfypgb", 1, 3).await;
    let (first_note, _) = checkpoint_covering(&app, 10).await;
    let mut rt = runtime(&app).await;
    place_hold(&mut rt, "rr-2026-11-30-vfypgb").await;
    let (_, n, _) = purge_all(&mut rt, "workflow", 1, 100).await;
    assert_eq!(n, 6);
    assert_eq!(apply_all(&mut rt).await, 6);
    // The purge entry is a leaf like the records: logged, signed, exported.
    let (note, cp) = checkpoint_covering(&app, 11).await;
    assert_eq!(cp.size, 11);
    let (file, lines) = export(&app).await;
    assert_eq!(lines.len(), 11);
    let gone: Vec<i64> = lines
        .iter()
        .filter(|l| l.record.is_none())
        .map(|l| l.id)
        .collect();
    let mut expected = purged.clone();
    expected.sort_unstable();
    let mut gone_sorted = gone.clone();
    gone_sorted.sort_unstable();
    assert_eq!(gone_sorted, expected);
    let entry = lines.iter().find(|l| l.kind == "purge").unwrap();
    assert_eq!(entry.record.as_ref().unwrap()["count"], 6);
    match verify_offline(&file, &[&first_note, &note]) {
        Verdict::Verified(summary) => assert!(
            summary.contains(&format!(
                "6 records purged by policy on {} (purge at logIndex {}, policy {{\"days\":{{\"default\":90}}}})",
                entry.received_at.as_deref().unwrap(),
                entry.log_index
            )),
            "{summary}"
        ),
        Verdict::Tampered(f) => panic!("{f:?}"),
    }

    // An administrator deletes two held records, one of them named by a purge entry forged for it
    // (with a cutoff its receipt does not precede): both are deletions.
    let mut c = app.db.conn().await.unwrap();
    c.batch_execute(&format!(
        "INSERT INTO log_entries (kind, body) VALUES ('purge',
             '{{\"reason\": \"retention\", \"cutoffs\": {{\"workflow\": \"2020-01-01T00:00:00Z\"}},
               \"count\": 1, \"records\": [{}]}}');
         SET session_replication_role = replica;
         DELETE FROM audit_records WHERE id IN ({}, {});",
        held[0], held[0], held[1]
    ))
    .await
    .unwrap();
    let (forged_note, _) = checkpoint_covering(&app, 12).await;
    let (file, lines) = export(&app).await;
    let index_of = |id: i64| lines.iter().find(|l| l.id == id).unwrap().log_index;
    match verify_offline(&file, &[&first_note, &note, &forged_note]) {
        Verdict::Tampered(findings) => {
            assert_eq!(findings.len(), 2, "{findings:?}");
            assert!(
                findings.iter().any(|f| f.starts_with(&format!(
                    "logIndex {} (workflow {}): the store does not have the record; the purge at logIndex 11 names it, but it was received after that purge's cutoff",
                    index_of(held[0]),
                    held[0]
                ))),
                "{findings:?}"
            );
            assert!(
                findings.iter().any(|f| f
                    == &format!(
                        "logIndex {} (workflow {}): the log has the record but the store does not: deleted",
                        index_of(held[1]),
                        held[1]
                    )),
                "{findings:?}"
            );
        }
        Verdict::Verified(s) => panic!("verified: {s}"),
    }
}

fn policy(days: &[(ds_domain::Kind, u32)]) -> ds_domain::retention::RetentionPolicy {
    ds_domain::retention::RetentionPolicy {
        default_days: 90,
        kinds: days.iter().copied().collect(),
    }
}

#[tokio::test]
async fn maintenance_on_a_clock_the_test_moves_purges_what_expired_and_keeps_what_is_held() {
    use ds_domain::Kind;
    use ds_domain::retention::{MaintenanceSettings, RetentionStore};
    use ds_server::verify::Verdict;
    use ds_tests::log::{checkpoint_covering, export, verify_offline};
    let app = spawn_app_with(&[("DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND", "0")])
        .await
        .unwrap();
    let expired = write(&app, "workflow", "rr-2026-11-30-mainta", 1, 6).await;
    let held = write(&app, "execution", "rr-2026-11-30-maintb", 1, 3).await;
    let forever = write(&app, "remediation", "rr-2026-11-30-maintc", 1, 2).await;
    let mut rt = runtime(&app).await;
    let hold = place_hold(&mut rt, "rr-2026-11-30-maintb").await;
    until_logged(&app).await;
    // The service's own store, as the service's role.
    let store =
        ds_store_pg::PgStore::new(&app.db.runtime_url, &ds_store_pg::PoolSettings::default())
            .unwrap();
    let settings = MaintenanceSettings {
        months_ahead: 3,
        batch: 2,
        pause: std::time::Duration::ZERO,
        rows_per_second: 0,
        drop_lock_wait: std::time::Duration::from_millis(200),
        coverage_wait: std::time::Duration::from_secs(30),
        max_pending: 100,
    };

    // Forty days on, workflows and executions are kept 30 days, remediations forever: the
    // workflows go (in batches of two), the held executions and the remediations stay, and so
    // does their partition.
    let now = chrono::Utc::now() + chrono::Duration::days(40);
    let p = policy(&[
        (Kind::Workflow, 30),
        (Kind::Execution, 30),
        (Kind::Remediation, 0),
    ]);
    let run = store.maintain(&p, &settings, now, true).await.unwrap();
    assert!(run.ran);
    assert!(run.months_ahead >= 3, "{run:?}");
    assert_eq!(run.records_purged, 6, "{run:?}");
    // Logged, then carried out within the run once checkpoints covered the entries.
    assert_eq!((run.records_logged, run.pending), (6, 0), "{run:?}");
    assert_eq!(run.partitions_dropped, 0, "{run:?}");
    assert!(run.batches >= 3, "{run:?}");
    let mut c = app.db.conn().await.unwrap();
    let left = count(&mut c, "SELECT count(*) AS n FROM audit_records").await;
    assert_eq!(left, (held.len() + forever.len()) as i64);
    // Without `purge` a run only keeps partitions ahead.
    let again = store.maintain(&p, &settings, now, false).await.unwrap();
    assert_eq!((again.records_purged, again.partitions_dropped), (0, 0));

    // The hold released and remediations kept 30 days too, seventy days on: the partition holds
    // nothing that may stay, and is dropped whole.
    rt.batch_execute(&format!(
        "UPDATE legal_holds SET released_by = 'system:serviceaccount:legal:counsel',
                released_at = now(), release_reason = 'case closed' WHERE id = {hold}"
    ))
    .await
    .unwrap();
    let now = chrono::Utc::now() + chrono::Duration::days(70);
    let p = policy(&[
        (Kind::Workflow, 30),
        (Kind::Execution, 30),
        (Kind::Remediation, 30),
    ]);
    let run = store.maintain(&p, &settings, now, true).await.unwrap();
    // (And any month partition that ended before the cutoff empty: dropped without an entry.)
    assert!(run.partitions_dropped >= 1, "{run:?}");
    assert_eq!(run.records_dropped, 5, "{run:?}");
    assert_eq!(
        count(&mut c, "SELECT count(*) AS n FROM audit_records").await,
        0
    );
    let status = store.status(chrono::Utc::now()).await.unwrap();
    assert_eq!(status.holds_active, 0);

    // Every purge (each batch that removed records, and the partition) is a leaf; the verifier
    // explains every record gone by them and finds nothing deleted.
    let entries = count(&mut c, "SELECT count(*) AS n FROM log_entries").await;
    assert!(entries >= 4, "{entries} entries"); // three batches of two workflows, one partition
    let (note, _) = checkpoint_covering(&app, 11 + entries as u64).await;
    let (file, lines) = export(&app).await;
    let purges: Vec<_> = lines.iter().filter(|l| l.kind == "purge").collect();
    assert_eq!(purges.len() as i64, entries);
    assert_eq!(
        purges
            .iter()
            .map(|l| l.record.as_ref().unwrap()["count"].as_i64().unwrap())
            .sum::<i64>(),
        11
    );
    match verify_offline(&file, &[&note]) {
        Verdict::Verified(summary) => {
            assert!(summary.contains("5 records purged by policy"), "{summary}");
            assert_eq!(
                summary.matches("2 records purged by policy").count(),
                3,
                "{summary}"
            );
        }
        Verdict::Tampered(f) => panic!("{f:?}"),
    }
    let all: Vec<i64> = expired
        .iter()
        .chain(&held)
        .chain(&forever)
        .copied()
        .collect();
    assert!(
        lines
            .iter()
            .filter(|l| all.contains(&l.id))
            .all(|l| l.record.is_none())
    );
}

#[tokio::test]
async fn the_service_keeps_months_ahead_and_reports_them() {
    let app = spawn_app_with(&[("DATASTORAGE_RETENTION_MAINTENANCE_INTERVAL_MS", "50")])
        .await
        .unwrap();
    let mut c = app.db.conn().await.unwrap();
    // The third month ahead taken away (empty), as if the task had not run for months.
    let third = names(
        &mut c,
        "SELECT audit_partition_ensure(now() + interval '3 months') AS name",
    )
    .await;
    c.batch_execute(&format!(
        "ALTER TABLE audit_records DETACH PARTITION {0}; DROP TABLE {0}",
        third[0]
    ))
    .await
    .unwrap();
    ds_tests::until("the maintenance task creates the partition again", || {
        let url = app.db.url.clone();
        let name = third[0].clone();
        async move {
            let mut c = AsyncPgConnection::establish(&url).await.unwrap();
            count(
                &mut c,
                &format!("SELECT count(*) AS n FROM pg_class WHERE relname = '{name}'"),
            )
            .await
                == 1
        }
    })
    .await;
    let text = app.metrics_text().await.unwrap();
    let ahead: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("datastorage_retention_months_ahead "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(ahead >= 3.0, "{ahead}");
    assert!(text.contains("datastorage_legal_holds_active 0"), "{text}");
}

#[tokio::test]
async fn holds_are_an_api_with_their_own_rbac_and_each_is_a_log_entry() {
    use ds_tests::kube_server::{FakeKubeApi, TokenInfo};
    const COUNSEL: &str = "system:serviceaccount:legal:counsel";
    const AUDITOR: &str = "system:serviceaccount:legal:auditor";
    const WRITER: &str = "system:serviceaccount:kubernaut:gateway";
    let kube = FakeKubeApi::start().await.unwrap();
    for (token, user) in [
        ("counsel-token", COUNSEL),
        ("auditor-token", AUDITOR),
        ("writer-token", WRITER),
    ] {
        kube.add_token(
            token,
            TokenInfo {
                username: user.into(),
                groups: vec!["system:serviceaccounts".into()],
                audiences: vec!["datastorage".into()],
                expired: false,
            },
        );
    }
    for verb in ["create", "delete", "list"] {
        kube.allow(COUNSEL, &format!("legalholds/{verb}"));
    }
    kube.allow(AUDITOR, "legalholds/list");
    kube.allow(WRITER, "create");
    kube.allow(WRITER, "get");
    let path = kube.kubeconfig.display().to_string();
    let app = spawn_app_with(&[
        ("DATASTORAGE_AUTH_MODE", "kubernetes"),
        ("DATASTORAGE_AUTH_KUBECONFIG", path.as_str()),
        ("DATASTORAGE_AUTH_AUDIENCES", "datastorage"),
        ("DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND", "0"),
    ])
    .await
    .unwrap();
    let send = |method: reqwest::Method, path: &str, token: &str, body: Option<Value>| {
        let mut req = app.client.request(method, app.url(path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        app.send(req)
    };
    let hold = json!({"correlationId": "rr-2026-11-30-holdap", "reason": "litigation 2026-117"});

    // Only who may create holds places one; a writer of records may not, nor may an auditor.
    for token in ["writer-token", "auditor-token"] {
        let r = send(
            reqwest::Method::POST,
            "/api/v1/holds",
            token,
            Some(hold.clone()),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 403, "{token}: {}", r.body);
        assert_eq!(r.body["error"]["code"], "FORBIDDEN");
    }
    let r = send(
        reqwest::Method::POST,
        "/api/v1/holds",
        "counsel-token",
        Some(hold.clone()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_i64().unwrap();
    assert_eq!(r.body["correlationId"], "rr-2026-11-30-holdap");
    assert_eq!(r.body["placedBy"], COUNSEL);
    assert!(r.body["placedAt"].is_string());
    assert!(r.body.get("releasedAt").is_none());
    // Bad input: every violation named, nothing placed.
    let r = send(
        reqwest::Method::POST,
        "/api/v1/holds",
        "counsel-token",
        Some(json!({"correlationId": "not a trail", "reason": "", "extra": 1})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    let fields: Vec<&str> = r.body["error"]["details"]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields.len(), 3, "{fields:?}");

    // Listing: the auditor may, the writer may not.
    let r = send(
        reqwest::Method::GET,
        "/api/v1/holds?active=true",
        "auditor-token",
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["holds"].as_array().unwrap().len(), 1);
    let r = send(reqwest::Method::GET, "/api/v1/holds", "writer-token", None)
        .await
        .unwrap();
    assert_eq!(r.status, 403);

    // Releasing: only counsel; a reason is required; the release is recorded and stands.
    let release = json!({"reason": "case closed"});
    let r = send(
        reqwest::Method::DELETE,
        &format!("/api/v1/holds/{id}"),
        "auditor-token",
        Some(release.clone()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403);
    let r = send(
        reqwest::Method::DELETE,
        &format!("/api/v1/holds/{id}"),
        "counsel-token",
        Some(json!({})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    let r = send(
        reqwest::Method::DELETE,
        &format!("/api/v1/holds/{id}"),
        "counsel-token",
        Some(release.clone()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["releasedBy"], COUNSEL);
    assert_eq!(r.body["releaseReason"], "case closed");
    let first_release = r.body["releasedAt"].clone();
    let r = send(
        reqwest::Method::DELETE,
        &format!("/api/v1/holds/{id}"),
        "counsel-token",
        Some(json!({"reason": "again"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body["releaseReason"], "case closed");
    assert_eq!(r.body["releasedAt"], first_release);
    let r = send(
        reqwest::Method::DELETE,
        "/api/v1/holds/999999",
        "counsel-token",
        Some(release),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    let r = send(
        reqwest::Method::GET,
        "/api/v1/holds?active=true",
        "counsel-token",
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.body["holds"].as_array().unwrap().len(), 0);
    let r = send(reqwest::Method::GET, "/api/v1/holds", "counsel-token", None)
        .await
        .unwrap();
    assert_eq!(r.body["holds"].as_array().unwrap().len(), 1);

    // Placing and releasing are leaves of the log: who, what, why.
    let mut c = app.db.conn().await.unwrap();
    #[derive(QueryableByName)]
    struct Entry {
        #[diesel(sql_type = Text)]
        kind: String,
        #[diesel(sql_type = diesel::sql_types::Jsonb)]
        body: Value,
    }
    let entries: Vec<Entry> = diesel::sql_query("SELECT kind, body FROM log_entries ORDER BY id")
        .load(&mut c)
        .await
        .unwrap();
    assert_eq!(
        entries.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["hold", "release"]
    );
    assert_eq!(entries[0].body["placedBy"], COUNSEL);
    assert_eq!(entries[0].body["correlationId"], "rr-2026-11-30-holdap");
    assert_eq!(entries[1].body["releasedBy"], COUNSEL);
    assert_eq!(entries[1].body["reason"], "case closed");
    until_count(
        &app.db.url,
        "the sequencer appends both entries",
        "SELECT count(*) AS n FROM tlog_leaves l JOIN log_entries e ON e.id = l.record_id",
        |n| n == 2,
    )
    .await;
}

/// A replica purging (bounded batches with pauses) killed for real (`kill -9`) while writes arrive:
/// every record gone is named by exactly one purge entry, every acknowledged write is kept, no
/// answer is a server error, and the next replica finishes the purge; the log verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_purge_under_writes_leaves_every_deletion_named_and_nothing_acknowledged_lost()
 {
    use ds_server::verify::Verdict;
    use ds_tests::replica::Replica;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let db = ds_tests::TestDb::new().await.unwrap();
    // 400 workflows received 100 days ago, put back as an administrator's restore would (queued
    // for the log by the trigger; the sequencer computes their leaf hashes).
    let mut c = db.conn().await.unwrap();
    c.batch_execute(&restored("old", "workflow", 1..=400))
        .await
        .unwrap();
    let env = ds_tests::test_env(
        &db.runtime_url,
        &[
            ("DATASTORAGE_EMBEDDING_MODE", "deferred"),
            ("DATASTORAGE_EMBEDDING_WORKER_INTERVAL_MS", "0"),
            ("DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND", "0"),
            ("DATASTORAGE_RETENTION_DAYS_WORKFLOW", "30"),
            ("DATASTORAGE_RETENTION_BATCH", "10"),
            ("DATASTORAGE_RETENTION_BATCH_PAUSE_MS", "100"),
            ("DATASTORAGE_RETENTION_MAINTENANCE_INTERVAL_MS", "200"),
        ],
    );
    let bin = env!("CARGO_BIN_EXE_replica");
    // Logged first, by a replica that does not purge (the purge leaves a record the log does not
    // hold yet for a later run).
    {
        let mut logger_env = env.clone();
        logger_env.insert(
            "DATASTORAGE_RETENTION_MAINTENANCE_INTERVAL_MS".into(),
            "0".into(),
        );
        let mut logger = Replica::start(bin, "logger", &logger_env).await.unwrap();
        until_count(
            &db.url,
            "the 400 are logged",
            "SELECT count(*) AS n FROM tlog_leaves WHERE record_id <= 400",
            |n| n == 400,
        )
        .await;
        logger.kill().await.unwrap();
    }
    let mut first = Replica::start(bin, "purger_a", &env).await.unwrap();

    // Writes to it meanwhile: new workflows, not expired.
    let client = ds_tests::http_client();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, stop, addr) = (client.clone(), stop.clone(), first.addr);
        tokio::spawn(async move {
            let (mut acked, mut statuses) = (Vec::new(), Vec::new());
            let mut n = 0u32;
            while !AtomicBool::load(&stop, Ordering::SeqCst) {
                n += 1;
                let mut r = fixtures::workflow(n);
                r["correlationId"] = json!("rr-2026-11-30-purgew");
                match client
                    .post(format!("http://{addr}/api/v1/audit/workflow"))
                    .json(&r)
                    .send()
                    .await
                {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        statuses.push(status);
                        if status == 201 {
                            let body: Value = resp.json().await.unwrap();
                            acked.push(body["id"].as_i64().unwrap());
                        }
                    }
                    Err(_) => break, // the replica is gone
                }
            }
            (acked, statuses)
        })
    };
    // Killed once a few batches are done.
    until_count(
        &db.url,
        "the replica has purged a few batches",
        "SELECT count(*) AS n FROM audit_records WHERE id <= 400",
        |n| n <= 370,
    )
    .await;
    first.kill().await.unwrap();
    stop.store(true, Ordering::SeqCst);
    let (acked, statuses) = writer.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");

    // Whatever it did, it did whole: every record gone is named by an entry, and the records
    // named and not gone are exactly those of the purges logged and not carried out yet.
    async fn named_and_gone(c: &mut AsyncPgConnection) -> (Vec<i64>, Vec<i64>) {
        #[derive(QueryableByName)]
        struct Id {
            #[diesel(sql_type = BigInt)]
            id: i64,
        }
        let named: Vec<i64> = diesel::sql_query(
            "SELECT jsonb_array_elements(body -> 'records')::bigint AS id
             FROM log_entries WHERE kind = 'purge' ORDER BY 1",
        )
        .load::<Id>(c)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
        let gone: Vec<i64> = diesel::sql_query(
            "SELECT g::bigint AS id FROM generate_series(1, 400) g
             WHERE NOT EXISTS (SELECT 1 FROM audit_records r WHERE r.id = g) ORDER BY 1",
        )
        .load::<Id>(c)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
        (named, gone)
    }
    let (named, gone) = named_and_gone(&mut c).await;
    assert!(!gone.is_empty() && gone.len() < 400, "{} gone", gone.len());
    assert!(
        gone.iter().all(|id| named.contains(id)),
        "{gone:?} {named:?}"
    );
    #[derive(QueryableByName)]
    struct Pending {
        #[diesel(sql_type = BigInt)]
        id: i64,
    }
    let pending: Vec<i64> = diesel::sql_query(
        "SELECT unnest(records) AS id FROM purge_pending WHERE records IS NOT NULL ORDER BY 1",
    )
    .load::<Pending>(&mut c)
    .await
    .unwrap()
    .into_iter()
    .map(|p| p.id)
    .collect();
    let named_not_gone: Vec<i64> = named
        .iter()
        .filter(|id| !gone.contains(id))
        .copied()
        .collect();
    assert_eq!(named_not_gone, pending);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) AS n FROM audit_digests WHERE record_id <= 400"
        )
        .await,
        (400 - gone.len()) as i64
    );

    // The next replica finishes it.
    let second = Replica::start(bin, "purger_b", &env).await.unwrap();
    until_count(
        &db.url,
        "the purge finishes",
        "SELECT count(*) AS n FROM audit_records WHERE id <= 400",
        |n| n == 0,
    )
    .await;
    let (named, gone) = named_and_gone(&mut c).await;
    assert_eq!(gone, (1..=400).collect::<Vec<i64>>());
    assert_eq!(named, gone, "each named once");
    // Every acknowledged write kept.
    let kept = count(
        &mut c,
        &format!(
            "SELECT count(*) AS n FROM audit_records WHERE id IN ({})",
            acked
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
    )
    .await;
    assert!(!acked.is_empty());
    assert_eq!(kept, acked.len() as i64);

    // The log: every leaf, the purges explaining all 400.
    // (Writes cut off by the kill may have committed unacknowledged: counted from the store.)
    let leaves = 400
        + count(&mut c, "SELECT count(*) AS n FROM audit_records").await as u64
        + count(&mut c, "SELECT count(*) AS n FROM log_entries").await as u64;
    let note = {
        let found = std::sync::Mutex::new(String::new());
        ds_tests::until("a checkpoint covers every leaf", || {
            let (client, found) = (client.clone(), &found);
            let addr = second.addr;
            async move {
                let r = client
                    .get(format!("http://{addr}/api/v1/log/checkpoint"))
                    .send()
                    .await
                    .unwrap();
                let note = r.text().await.unwrap();
                let Ok(cp) = ds_tests::log::keys().open(note.as_bytes()) else {
                    return false;
                };
                *found.lock().unwrap() = note;
                cp.size >= leaves
            }
        })
        .await;
        found.into_inner().unwrap()
    };
    let body = client
        .get(format!("http://{}/api/v1/audit/export", second.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let file = ds_tests::log::temp("purge-export.ndjson", &body);
    match ds_tests::log::verify_offline(&file, &[&note]) {
        Verdict::Verified(summary) => {
            let purged: u64 = summary
                .split("; ")
                .filter_map(|p| p.split(' ').next()?.parse::<u64>().ok())
                .sum();
            assert_eq!(purged, 400, "{summary}");
            assert!(
                summary.contains(r#"policy {"days":{"default":90,"workflow":30}}"#),
                "{summary}"
            );
        }
        Verdict::Tampered(f) => panic!("{f:?}"),
    }
    // An auditor who knows workflows are kept 30 days finds nothing wrong; one told 60 finds
    // that every purge removed what it should have kept.
    let expecting = |days| {
        ds_tests::log::verify_offline_expecting(&file, &[&note], Some(chrono::Duration::days(days)))
    };
    assert!(matches!(expecting(30), Verdict::Verified(_)));
    match expecting(60) {
        Verdict::Tampered(f) => {
            assert_eq!(f.len(), 400, "{f:?}");
            assert!(
                f.iter()
                    .all(|f| f.contains("is less than the 60 days of retention you expect")),
                "{f:?}"
            );
        }
        Verdict::Verified(s) => panic!("verified: {s}"),
    }
}

/// The body of an HTTP/1.1 response read whole from `stream` (chunked or not), after `head` bytes
/// already read.
async fn rest_of_body(stream: &mut tokio::net::TcpStream, mut raw: Vec<u8>) -> (String, String) {
    use tokio::io::AsyncReadExt;
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let (mut out, mut at) = (Vec::new(), 0);
        loop {
            let eol = at + body[at..].windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&body[at..eol]).unwrap().trim(), 16)
                    .unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&body[eol + 2..eol + 2 + size]);
            at = eol + 2 + size + 2;
        }
        body = out;
    }
    (head, String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn an_export_that_reads_on_while_a_purge_is_carried_out_still_verifies() {
    use ds_server::verify::Verdict;
    use ds_tests::log::{checkpoint_covering, temp, text, verify_offline};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(&[("DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND", "0")])
        .await
        .unwrap();
    // 40,000 records received 100 days ago, put back as an administrator's restore would (queued
    // for the log by the trigger): executions, then, once they are logged, 100 workflows, whose
    // leaves end the log.
    let mut c = app.db.conn().await.unwrap();
    c.batch_execute(&restored("exp", "execution", 1..=39_900))
        .await
        .unwrap();
    checkpoint_covering(&app, 39_900).await;
    c.batch_execute(&restored("exp", "workflow", 39_901..=40_000))
        .await
        .unwrap();
    let (first_note, _) = checkpoint_covering(&app, 40_000).await;

    // An export starts (the latest checkpoint: 40,000 leaves) and its reader stops after a little,
    // with a small receive buffer: the service cannot read its last pages before it goes on.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /api/v1/audit/export HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                app.addr
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < raw.len() {
        let n = stream.read(&mut raw[got..]).await.unwrap();
        assert!(n > 0, "the export ended early");
        got += n;
    }
    raw.truncate(got);

    // Meanwhile the workflows' purge is logged, a checkpoint covers its entry, and it is carried
    // out: the records of the export's last leaves are gone before it reads them.
    let mut rt = runtime(&app).await;
    assert_eq!(purge_all(&mut rt, "workflow", 1, 1000).await.1, 100);
    assert_eq!(apply_all(&mut rt).await, 100);

    // The export reads on: past the 40,000 it started with, to the checkpoint that is the latest
    // when it gets there, which holds the purge entry.
    let (head, body) = rest_of_body(&mut stream, raw).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-log-tree-size: 40000"),
        "{head}"
    );
    let lines: Vec<ds_tlog::verify::ExportLine> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() > 40_000, "{} lines", lines.len());
    let gone: Vec<(u64, i64)> = lines
        .iter()
        .filter(|l| l.record.is_none())
        .map(|l| (l.log_index, l.id))
        .collect();
    assert_eq!(gone.len(), 100, "{gone:?} of {}", lines.len());
    let entry = lines.iter().find(|l| l.kind == "purge").unwrap();
    let (status, note) = text(
        &app,
        &format!("/api/v1/log/checkpoint?size={}", lines.len()),
    )
    .await;
    assert_eq!(status, 200, "{note}");
    let file = temp("export-during-purge.ndjson", &body);
    match verify_offline(&file, &[&first_note, &note]) {
        Verdict::Verified(summary) => assert!(
            summary.contains(&format!(
                "100 records purged by policy on {} (purge at logIndex {}, policy {{\"days\":{{\"default\":90}}}})",
                entry.received_at.as_deref().unwrap(),
                entry.log_index
            )),
            "{summary}"
        ),
        Verdict::Tampered(f) => panic!("{f:?}"),
    }
}
