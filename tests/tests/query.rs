//! Queries at scale (contract §10): the list of records and the paged trail over HTTP, across month
//! partitions, against an oracle computed from how the records were made; and the plan PostgreSQL
//! chooses for every combination of filters, read from `EXPLAIN` of the very statement the service
//! runs, at a size where a missing index shows as a sequential scan.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use chrono::{DateTime, Duration, SubsecRound, Utc};
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
use ds_domain::kind::{Kind, Phase};
use ds_domain::query::{ListFilters, ListQuery, Position};
use ds_domain::time::Timestamp;
use ds_tests::{TestApp, TestDb, fixtures, names, spawn_app};
use serde_json::{Value, json};

const KINDS: [&str; 4] = ["remediation", "aianalysis", "workflow", "execution"];
const PHASES: [&str; 4] = ["Pending", "Processing", "Completed", "Failed"];

/// The attributes of made record `g` (1-based); received at `base + (g / 2) * step`, so that pairs
/// share a `receivedAt` and only the id orders them.
#[derive(Debug, Clone)]
struct Made {
    g: i64,
    kind: &'static str,
    namespace: String,
    phase: &'static str,
    correlation_id: String,
    received_at: DateTime<Utc>,
}

fn made(g: i64, base: DateTime<Utc>, step: Duration) -> Made {
    Made {
        g,
        kind: KINDS[(g % 4) as usize],
        namespace: format!("ns-{}", g % 5),
        phase: PHASES[((g / 4) % 4) as usize],
        correlation_id: format!("rr-2026-11-30-c{:05}", g % 13),
        received_at: base + step * i32::try_from(g / 2).unwrap(),
    }
}

/// Inserts records `1..=n` as [`made`] says (as the owner, as a restore would), every partition they
/// need created first; ids are `g`.
async fn make(c: &mut AsyncPgConnection, n: i64, base: DateTime<Utc>, step: Duration) {
    let last = base + step * i32::try_from(n / 2).unwrap();
    let (b, s) = (base.to_rfc3339(), step.num_microseconds().unwrap());
    c.batch_execute(&format!(
        "SELECT audit_partition_ensure('{b}'::timestamptz);
         SELECT audit_partition_ensure('{last}'::timestamptz);
         SELECT audit_partition_ensure(t) FROM generate_series('{b}'::timestamptz, '{last}'::timestamptz, interval '20 days') t;
         INSERT INTO audit_records (id, received_at, kind, name, namespace, phase, correlation_id,
             created_at, content_digest, details, embedding_digest)
         SELECT g, '{b}'::timestamptz + (g / 2) * interval '{s} microseconds',
             (ARRAY['remediation','aianalysis','workflow','execution'])[1 + g % 4],
             'made-' || g, 'ns-' || g % 5,
             (ARRAY['Pending','Processing','Completed','Failed'])[1 + (g / 4) % 4],
             'rr-2026-11-30-c' || lpad((g % 13)::text, 5, '0'), '{b}'::timestamptz,
             sha256(('made-' || g)::bytea), '{{\"x\": 1}}'::jsonb, sha256('made'::bytea)
         FROM generate_series(1, {n}) g;
         INSERT INTO audit_digests (content_digest, record_id, received_at)
         SELECT sha256(('made-' || g)::bytea), g, '{b}'::timestamptz + (g / 2) * interval '{s} microseconds'
         FROM generate_series(1, {n}) g;
         SELECT setval('audit_records_id_seq', {n});
         ANALYZE audit_records;"
    ))
    .await
    .unwrap();
}

/// The partitions that hold records (the empty ones, months ahead, cost nothing to scan).
async fn partitions_used(c: &mut AsyncPgConnection) -> Vec<String> {
    names(
        c,
        "SELECT DISTINCT tableoid::regclass::text AS name FROM audit_records",
    )
    .await
}

/// Every page of the list for `query` (a query string without `cursor`), `limit` records a page;
/// the ids in order. Fails on a page larger than `limit`, a repeated id, or a runaway scroll.
async fn scroll(app: &TestApp, path: &str, query: &str, key: &str) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let url = match &cursor {
            None => format!("{path}?{query}"),
            Some(c) => format!("{path}?{query}&cursor={c}"),
        };
        let r = app.get(&url).await.unwrap();
        assert_eq!(r.status, 200, "{url}: {}", r.body);
        let page = r.body[key].as_array().unwrap();
        for rec in page {
            ids.push(rec["id"].as_i64().unwrap());
        }
        match &r.body["nextCursor"] {
            Value::Null => {
                let mut seen = ids.clone();
                seen.sort_unstable();
                seen.dedup();
                assert_eq!(seen.len(), ids.len(), "{query}: an id came twice");
                return ids;
            }
            Value::String(c) => {
                assert!(
                    !page.is_empty(),
                    "{query}: an empty page with a next cursor"
                );
                cursor = Some(c.clone());
            }
            other => panic!("nextCursor {other}"),
        }
    }
    panic!("{query}: more than 1000 pages");
}

/// `GET path` must be a 400 about one parameter: its field and constraint.
async fn refused(app: &TestApp, path: &str) -> (String, String) {
    let r = app.get(path).await.unwrap();
    assert_eq!(r.status, 400, "{path}: {}", r.body);
    assert_eq!(r.body["error"]["code"], "VALIDATION_ERROR", "{path}");
    let d = &r.body["error"]["details"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (text(&d["field"]), text(&d["constraint"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_pages_through_every_filter_newest_first_across_partitions() {
    let app = spawn_app().await.unwrap();
    let mut c = app.db.conn().await.unwrap();
    let base = Utc::now().trunc_subsecs(0) - Duration::days(20);
    let step = Duration::hours(6);
    let n = 700;
    make(&mut c, n, base, step).await;
    assert!(
        partitions_used(&mut c).await.len() >= 2,
        "the records span month partitions"
    );
    let all: Vec<Made> = (1..=n).map(|g| made(g, base, step)).collect();
    let at = |g: i64| {
        (base + step * i32::try_from(g / 2).unwrap())
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let (since, until) = (at(200), at(500));
    // (query string, which made records it selects)
    type Pick = Box<dyn Fn(&Made) -> bool>;
    let cases: Vec<(String, Pick)> = vec![
        (String::new(), Box::new(|_| true)),
        ("kind=workflow".into(), Box::new(|m| m.kind == "workflow")),
        ("namespace=ns-3".into(), Box::new(|m| m.namespace == "ns-3")),
        ("phase=Failed".into(), Box::new(|m| m.phase == "Failed")),
        (
            "correlationId=rr-2026-11-30-c00007".into(),
            Box::new(|m| m.correlation_id == "rr-2026-11-30-c00007"),
        ),
        (format!("since={since}&until={until}"), {
            let (s, u) = (
                DateTime::parse_from_rfc3339(&since)
                    .unwrap()
                    .with_timezone(&Utc),
                DateTime::parse_from_rfc3339(&until)
                    .unwrap()
                    .with_timezone(&Utc),
            );
            Box::new(move |m| m.received_at >= s && m.received_at < u)
        }),
        (
            format!("kind=execution&namespace=ns-1&since={since}&until={until}"),
            {
                let (s, u) = (
                    DateTime::parse_from_rfc3339(&since)
                        .unwrap()
                        .with_timezone(&Utc),
                    DateTime::parse_from_rfc3339(&until)
                        .unwrap()
                        .with_timezone(&Utc),
                );
                Box::new(move |m| {
                    m.kind == "execution"
                        && m.namespace == "ns-1"
                        && m.received_at >= s
                        && m.received_at < u
                })
            },
        ),
        (
            "kind=execution&namespace=ns-2&phase=Completed&correlationId=rr-2026-11-30-c00011"
                .into(),
            Box::new(|m| {
                m.kind == "execution"
                    && m.namespace == "ns-2"
                    && m.phase == "Completed"
                    && m.correlation_id == "rr-2026-11-30-c00011"
            }),
        ),
    ];
    for (query, pick) in &cases {
        let expected: Vec<i64> = all.iter().rev().filter(|m| pick(m)).map(|m| m.g).collect();
        assert!(!expected.is_empty(), "{query}: the case selects something");
        let limit_query = if query.is_empty() {
            "limit=37".to_owned()
        } else {
            format!("{query}&limit=37")
        };
        let got = scroll(&app, "/api/v1/audit/records", &limit_query, "records").await;
        assert_eq!(got, expected, "{query}");
    }
    // The default page is 100 records; a page holds each record as `GET` answers it.
    let first = app
        .get("/api/v1/audit/records?namespace=ns-4")
        .await
        .unwrap();
    let page = first.body["records"].as_array().unwrap();
    assert_eq!(page.len(), 100);
    let one = app
        .get(&format!(
            "/api/v1/audit/{}/{}",
            page[0]["kind"].as_str().unwrap(),
            page[0]["id"]
        ))
        .await
        .unwrap();
    assert_eq!(page[0], one.body);
    assert_eq!(page[0]["name"], json!(format!("made-{}", page[0]["id"])));
    // A filter that matches nothing is an empty last page.
    let none = app
        .get("/api/v1/audit/records?namespace=nowhere")
        .await
        .unwrap();
    assert_eq!(none.status, 200);
    assert_eq!(none.body, json!({"records": [], "nextCursor": null}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_over_http_are_listed_newest_first_and_bad_queries_change_nothing() {
    let app = spawn_app().await.unwrap();
    let mut ids = Vec::new();
    for n in 1..=5 {
        let r = app
            .post("/api/v1/audit/workflow", &fixtures::workflow(n))
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
        ids.push(r.body["id"].as_i64().unwrap());
    }
    ids.reverse();
    let listed = scroll(
        &app,
        "/api/v1/audit/records",
        &format!("correlationId={}&limit=2", fixtures::CORRELATION),
        "records",
    )
    .await;
    assert_eq!(listed, ids);

    let first = app.get("/api/v1/audit/records?limit=2").await.unwrap();
    let cursor = first.body["nextCursor"].as_str().unwrap().to_owned();
    let bad = app
        .get(&format!(
            "/api/v1/audit/records?kind=nope&limit=0&phase=failed&offset=3&namespace=x&cursor={cursor}"
        ))
        .await
        .unwrap();
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.body["error"]["code"], "VALIDATION_ERROR");
    let mut fields: Vec<String> = bad.body["error"]["details"]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            format!(
                "{}:{}",
                v["field"].as_str().unwrap(),
                v["constraint"].as_str().unwrap()
            )
        })
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        ["kind:enum", "limit:minimum", "offset:unknown", "phase:enum"]
    );
    // The cursor of the unfiltered list does not continue a filtered one.
    assert_eq!(
        refused(
            &app,
            &format!("/api/v1/audit/records?kind=workflow&cursor={cursor}")
        )
        .await,
        ("cursor".into(), "filters".into())
    );
    assert_eq!(
        refused(
            &app,
            "/api/v1/audit/records?cursor=%00%27%3B%20DROP%20TABLE%20audit_records%3B"
        )
        .await,
        ("cursor".into(), "format".into())
    );
    assert_eq!(app.db.count("audit_records").await.unwrap(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trail_pages_in_its_order_and_a_cursor_belongs_to_its_trail() {
    let app = spawn_app().await.unwrap();
    let mut c = app.db.conn().await.unwrap();
    let base = Utc::now().trunc_subsecs(0) - Duration::days(2);
    make(&mut c, 260, base, Duration::seconds(1)).await;
    // c00004: made records 4, 17, 30, ... all created at `base`: the id alone orders them.
    let trail = "rr-2026-11-30-c00004";
    let expected: Vec<i64> = (1..=260).filter(|g| g % 13 == 4).collect();
    let got = scroll(
        &app,
        &format!("/api/v1/audit/trail/{trail}"),
        "limit=3",
        "records",
    )
    .await;
    assert_eq!(got, expected);
    // Without `limit`, one page of up to 1000.
    let whole = app
        .get(&format!("/api/v1/audit/trail/{trail}"))
        .await
        .unwrap();
    assert_eq!(
        whole.body["records"].as_array().unwrap().len(),
        expected.len()
    );
    assert_eq!(whole.body["nextCursor"], Value::Null);
    assert_eq!(whole.body["correlationId"], trail);

    let page = app
        .get(&format!("/api/v1/audit/trail/{trail}?limit=3"))
        .await
        .unwrap();
    let cursor = page.body["nextCursor"].as_str().unwrap();
    assert_eq!(
        refused(
            &app,
            &format!("/api/v1/audit/trail/rr-2026-11-30-c00005?cursor={cursor}")
        )
        .await,
        ("cursor".into(), "filters".into())
    );
    assert_eq!(
        refused(&app, &format!("/api/v1/audit/records?cursor={cursor}")).await,
        ("cursor".into(), "scope".into())
    );
    for (bad, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("since=2025-01-01T00:00:00Z", "since"),
    ] {
        let (got, _) = refused(&app, &format!("/api/v1/audit/trail/{trail}?{bad}")).await;
        assert_eq!(got, field, "{bad}");
    }
}

/// Every combination of the six filters, with and without a cursor (the service has each page
/// planned with its values, never from a prepared statement's generic plan): no sequential scan of a records partition, and the cursor's position is an index
/// bound (so page 1,000 reads what page 1 reads). The control drops the indexes in a transaction
/// and sees the sequential scan that this size makes the planner prefer without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_filter_combination_is_served_by_an_index() {
    let db = TestDb::new().await.unwrap();
    let mut c = db.conn().await.unwrap();
    let base = Utc::now().trunc_subsecs(0) - Duration::days(20);
    make(&mut c, 40_000, base, Duration::seconds(300)).await;
    let used = partitions_used(&mut c).await;
    assert!(used.len() >= 2, "{used:?}");
    let at = |s: i64| Timestamp::from_utc(base + Duration::seconds(s));
    let query = |mask: u32, cursor: bool| ListQuery {
        filters: ListFilters {
            kind: (mask & 1 != 0).then_some(Kind::Execution),
            namespace: (mask & 2 != 0).then(|| "ns-3".to_owned()),
            phase: (mask & 4 != 0).then_some(Phase::Failed),
            correlation_id: (mask & 8 != 0).then(|| "rr-2026-11-30-c00007".to_owned()),
            since: (mask & 16 != 0).then(|| at(86_400)),
            until: (mask & 32 != 0).then(|| at(20 * 86_400)),
        },
        limit: 100,
        after: cursor.then(|| Position {
            at: at(10 * 86_400),
            id: 11_520,
        }),
    };
    for mask in 0..64 {
        for cursor in [false, true] {
            let q = query(mask, cursor);
            let plan = ds_store_pg::explain_list(&mut c, &q, false)
                .await
                .unwrap()
                .join("\n");
            for partition in &used {
                assert!(
                    !plan.contains(&format!("Seq Scan on {partition} ")),
                    "filters {:?}, cursor {cursor}:\n{plan}",
                    q.filters
                );
            }
            assert!(plan.contains("Index"), "{plan}");
            if cursor {
                // The position is in an index condition of each partition that holds records,
                // never only in a filter.
                let (mut bound, mut filtered, mut holds_records) = (0, 0, false);
                for line in plan.lines() {
                    // A bitmap's index scans and AND/OR nodes belong to the heap scan above them.
                    let under_heap_scan =
                        line.contains("Bitmap") && !line.contains("Bitmap Heap Scan");
                    if line.contains("->") && !under_heap_scan {
                        holds_records = used.iter().any(|p| line.contains(&format!(" on {p} ")));
                    } else if holds_records && line.contains("ROW(received_at, id) <") {
                        if line.contains("Index Cond") {
                            bound += 1;
                        } else if line.contains("Filter") {
                            filtered += 1;
                        }
                    }
                }
                assert!(bound > 0 && filtered == 0, "{:?}:\n{plan}", q.filters);
            }
        }
    }
    // The control: without the indexes the same statement scans the table at this size.
    c.batch_execute(
        "BEGIN;
         DROP INDEX audit_records_list_kind_namespace, audit_records_list_namespace,
             audit_records_list_kind, audit_records_list_phase, audit_records_list_correlation,
             audit_records_received, audit_records_trail, audit_records_pending_age;",
    )
    .await
    .unwrap();
    let plan = ds_store_pg::explain_list(&mut c, &query(2, false), false)
        .await
        .unwrap()
        .join("\n");
    c.batch_execute("ROLLBACK").await.unwrap();
    assert!(
        plan.contains(&format!("Seq Scan on {} ", used[0])),
        "{used:?}\n{plan}"
    );
}
