//! Similarity search: the real model finds a paraphrased incident first; filters never silently drop
//! results, whichever plan PostgreSQL picks (a B-tree on the filter then an exact sort, or the HNSW index
//! with pgvector 0.8's iterative scan).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use diesel_async::SimpleAsyncConnection;
use ds_domain::digest::embedding_digest;
use ds_domain::kind::Kind;
use ds_domain::parse_record;
use ds_domain::ports::{AuditStore, NewEmbedding, WriteRequest};
use ds_domain::search::SearchFilters;
use ds_store_pg::{PgStore, PoolSettings};
use ds_tests::{TestDb, fixtures, spawn_app};
use serde_json::{Value, json};

fn incident(n: u32, namespace: &str, message: &str, target: &str) -> Value {
    let mut v = fixtures::remediation(n);
    v["namespace"] = json!(namespace);
    v["message"] = json!(message);
    v["targetName"] = json!(target);
    v["signalName"] = json!("Incident");
    v["reason"] = json!(message);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paraphrased_query_finds_the_right_incident_first() {
    let app = spawn_app().await.unwrap();
    let incidents = [
        (
            "payments",
            "Container was OOMKilled: memory limit exceeded",
            "checkout-api",
        ),
        (
            "payments",
            "TLS handshake failed: x509 certificate has expired",
            "gateway",
        ),
        (
            "storage",
            "Node disk full: no space left on device for the log volume",
            "logs",
        ),
        (
            "network",
            "DNS resolution failed for the upstream service",
            "resolver",
        ),
        (
            "batch",
            "CronJob took too long and missed its schedule",
            "nightly",
        ),
    ];
    let records: Vec<Value> = incidents
        .iter()
        .enumerate()
        .map(|(i, (ns, msg, target))| json!({"kind": "remediation", "record": incident(i as u32, ns, msg, target)}))
        .collect();
    let w = app
        .post("/api/v1/audit/batch", &json!({ "records": records }))
        .await
        .unwrap();
    assert_eq!(w.status, 201, "{:#}", w.body);

    let cases = [
        ("the pod ran out of memory and was killed", "checkout-api"),
        ("certificate no longer valid", "gateway"),
        ("volume has no free space", "logs"),
    ];
    for (query, expected) in cases {
        let r = app
            .post("/api/v1/audit/search", &json!({"query": query, "limit": 5}))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{:#}", r.body);
        let results = r.body["results"].as_array().unwrap();
        assert_eq!(results.len(), 5);
        assert_eq!(
            results[0]["record"]["targetName"], expected,
            "{query}: {:#}",
            r.body
        );
        let sims: Vec<f64> = results
            .iter()
            .map(|h| h["similarity"].as_f64().unwrap())
            .collect();
        assert!(
            sims.windows(2).all(|w| w[0] >= w[1]),
            "best first: {sims:?}"
        );
        assert!(sims[0] <= 1.0 + 1e-6 && sims[0] > sims[4]);
        assert_eq!(results[0]["kind"], "remediation");
        assert!(results[0]["id"].as_i64().is_some() && results[0]["name"].is_string());
    }

    let r = app
        .post(
            "/api/v1/audit/search",
            &json!({"query": "out of memory", "namespace": "storage", "kinds": ["remediation"]}),
        )
        .await
        .unwrap();
    let results = r.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["namespace"], "storage");
    let r = app
        .post(
            "/api/v1/audit/search",
            &json!({"query": "out of memory", "kinds": ["workflow"]}),
        )
        .await
        .unwrap();
    assert_eq!(r.body["results"], json!([]));
    let r = app
        .post(
            "/api/v1/audit/search",
            &json!({"query": "out of memory", "minSimilarity": 0.99}),
        )
        .await
        .unwrap();
    assert_eq!(r.body["results"], json!([]), "nothing is that similar");

    let r = app
        .post("/api/v1/audit/search", &json!({"vector": [0.1, 0.2]}))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["details"]["constraint"], "dimension");
    let r = app
        .post("/api/v1/audit/search", &json!({"limit": 0}))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "VALIDATION_ERROR");
}

fn unit(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn axis(i: usize, w: f32, base: &mut [f32]) {
    base[i] += w;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_hold_with_more_closer_non_matching_rows_than_ef_search() {
    let db = TestDb::new().await.unwrap();
    let mut c = db.conn().await.unwrap();
    let dbname = db.url.rsplit('/').next().unwrap().to_owned();
    // No sequential scans: the planner must answer through an index (here it picks the B-tree on the
    // namespace, then sorts exactly; with unselective filters it picks HNSW).
    c.batch_execute(&format!("ALTER DATABASE {dbname} SET enable_seqscan = off"))
        .await
        .unwrap();
    let store = PgStore::new(&db.url, &PoolSettings::default()).unwrap();

    // 300 noise records very close to the query, in namespace `noise`; one farther target in `target`.
    let mut records = Vec::new();
    let mut vectors = Vec::new();
    for i in 0..301u32 {
        let mut v = vec![0.0f32; 384];
        axis(0, 1.0, &mut v);
        let ns = if i == 300 { "target" } else { "noise" };
        if i == 300 {
            axis(2, 1.5, &mut v);
        } else {
            axis(1, 0.001 * i as f32, &mut v);
            axis(3 + (i as usize % 300), 0.01, &mut v);
        }
        let mut rec = fixtures::remediation(i);
        rec["namespace"] = json!(ns);
        rec["message"] = json!(format!("record {i}"));
        records.push(parse_record(Kind::Remediation, rec).unwrap());
        vectors.push(unit(v));
    }
    let digests: Vec<_> = records
        .iter()
        .map(|r| embedding_digest("synthetic", &r.embedding_text))
        .collect();
    let new_embeddings = digests
        .iter()
        .zip(&vectors)
        .map(|(d, v)| NewEmbedding {
            digest: *d,
            model: "synthetic".into(),
            vector: v.clone(),
        })
        .collect();
    store
        .write(WriteRequest {
            records,
            embedding_digests: digests,
            new_embeddings,
            jobs: Vec::new(),
            idempotency: None,
        })
        .await
        .unwrap();

    let mut q = vec![0.0f32; 384];
    q[0] = 1.0;
    let filters = SearchFilters {
        namespace: Some("target".into()),
        ..Default::default()
    };
    let hits = store
        .search(q.clone(), "synthetic", &filters, 5)
        .await
        .unwrap();
    assert_eq!(
        hits.len(),
        1,
        "the one matching record is found behind 300 closer ones"
    );
    assert_eq!(hits[0].record.record["namespace"], "target");
    assert!(
        (hits[0].similarity - (1.0 / (1.0f64 + 2.25).sqrt())).abs() < 1e-3,
        "{}",
        hits[0].similarity
    );

    let all = store
        .search(q.clone(), "synthetic", &SearchFilters::default(), 10)
        .await
        .unwrap();
    assert_eq!(all.len(), 10);
    assert!(all.iter().all(|h| h.record.record["namespace"] == "noise"));
    assert!(
        store
            .search(q, "another-model", &SearchFilters::default(), 10)
            .await
            .unwrap()
            .is_empty(),
        "vectors of another model are never compared"
    );
}
