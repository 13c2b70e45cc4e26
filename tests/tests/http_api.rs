//! End to end over HTTP against the real service (real PostgreSQL + pgvector, real local model).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use ds_tests::fixtures::{self, CORRELATION};
use ds_tests::{TestApp, spawn_app, until};
use serde_json::{Value, json};

const KINDS: [&str; 4] = ["remediation", "aianalysis", "workflow", "execution"];

fn assert_error_shape(r: &ds_tests::Reply, status: u16, code: &str, path: &str) {
    assert_eq!(r.status, status, "{:#}", r.body);
    assert_eq!(r.body["error"]["code"], code, "{:#}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{:#}",
        r.body
    );
    assert_eq!(r.body["path"], path);
    assert!(
        r.body["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let corr = r.body["correlationId"].as_str().unwrap_or_default();
    assert!(!corr.is_empty());
    assert_eq!(
        r.header("x-correlation-id"),
        Some(corr),
        "header and body carry the same correlation id"
    );
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );
}

async fn write(app: &TestApp, kind: &str, body: &Value) -> ds_tests::Reply {
    app.post(&format!("/api/v1/audit/{kind}"), body)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_round_trips_with_every_field() {
    let app = spawn_app().await.unwrap();
    let messages = [
        "Audit record created successfully",
        "AI analysis audit record created successfully",
        "Workflow audit record created successfully",
        "Execution audit record created successfully",
    ];
    for (kind, message) in KINDS.iter().zip(messages) {
        let sent = fixtures::of(kind, 1);
        let r = write(&app, kind, &sent).await;
        assert_eq!(r.status, 201, "{kind}: {:#}", r.body);
        assert_eq!(r.body["message"], message);
        assert_eq!(r.body["status"], "created");
        assert_eq!(r.body["embeddingStatus"], "stored");
        assert!(r.body["embeddingId"].as_i64().is_some());
        let id = r.body["id"].as_i64().unwrap();
        assert!(r.header("x-correlation-id").is_some());

        let got = app
            .get(&format!("/api/v1/audit/{kind}/{id}"))
            .await
            .unwrap();
        assert_eq!(got.status, 200);
        let mut expected = sent.as_object().unwrap().clone();
        if kind == &"remediation" {
            expected.insert(
                "fingerprint".into(),
                json!("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"),
            );
        }
        for (k, v) in &expected {
            assert_eq!(&got.body[k], v, "{kind}.{k} read back differs");
        }
        assert_eq!(got.body["id"], id);
        assert_eq!(got.body["kind"], *kind);
        assert_eq!(got.body["embeddingStatus"], "stored");
        assert_eq!(got.body["receivedAt"], r.body["createdAt"]);
        // `logIndex` comes once the sequencer appended the record (every 50 ms in the tests).
        let extra: Vec<&String> = got
            .body
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| !expected.contains_key(*k) && *k != "logIndex")
            .collect();
        assert_eq!(
            extra,
            ["embeddingStatus", "id", "kind", "receivedAt"],
            "nothing else is added"
        );
        // The same id under another kind does not exist.
        let other = if *kind == "remediation" {
            "workflow"
        } else {
            "remediation"
        };
        let miss = app
            .get(&format!("/api/v1/audit/{other}/{id}"))
            .await
            .unwrap();
        assert_error_shape(
            &miss,
            404,
            "NOT_FOUND",
            &format!("/api/v1/audit/{other}/{id}"),
        );
    }
    assert_eq!(app.db.count("audit_records").await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_without_key_is_a_duplicate_and_a_changed_field_is_a_new_version() {
    let app = spawn_app().await.unwrap();
    let first = write(&app, "remediation", &fixtures::remediation(7)).await;
    // Same content, keys in another order and the timestamp with another offset: still the same record.
    let mut same = fixtures::remediation(7);
    same["createdAt"] = json!("2025-10-06T12:00:46.123456+02:00");
    let again = write(&app, "remediation", &same).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.body["status"], "duplicate");
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(again.body["createdAt"], first.body["createdAt"]);
    let mut changed = fixtures::remediation(7);
    changed["phase"] = json!("Completed");
    let v2 = write(&app, "remediation", &changed).await;
    assert_eq!(v2.body["status"], "created");
    assert_ne!(v2.body["id"], first.body["id"]);
    assert_eq!(app.db.count("audit_records").await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_replay_the_original_and_refuse_another_body() {
    let app = spawn_app().await.unwrap();
    let post = |body: Value, key: &'static str| {
        app.send(
            app.client
                .post(app.url("/api/v1/audit/workflow"))
                .header("Idempotency-Key", key)
                .json(&body),
        )
    };
    let first = post(fixtures::workflow(1), "key-1").await.unwrap();
    assert_eq!(first.status, 201);
    let replay = post(fixtures::workflow(1), "key-1").await.unwrap();
    assert_eq!(replay.status, 201);
    assert_eq!(
        replay.body, first.body,
        "a replay answers exactly what the first request got"
    );
    let conflict = post(fixtures::workflow(2), "key-1").await.unwrap();
    assert_error_shape(&conflict, 409, "DUPLICATE_AUDIT", "/api/v1/audit/workflow");
    assert_eq!(
        app.db.count("audit_records").await.unwrap(),
        1,
        "the conflicting body was not written"
    );
    let bad = app
        .send(
            app.client
                .post(app.url("/api/v1/audit/workflow"))
                .header("Idempotency-Key", "x".repeat(256))
                .json(&fixtures::workflow(3)),
        )
        .await
        .unwrap();
    assert_error_shape(&bad, 400, "VALIDATION_ERROR", "/api/v1/audit/workflow");
    assert_eq!(bad.body["error"]["details"]["field"], "Idempotency-Key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_identical_writes_store_one_row() {
    let app = spawn_app().await.unwrap();
    let body = fixtures::execution(50);
    let replies =
        futures_util::future::join_all((0..50).map(|_| write(&app, "execution", &body))).await;
    let ids: std::collections::BTreeSet<i64> = replies
        .iter()
        .map(|r| r.body["id"].as_i64().unwrap())
        .collect();
    assert!(replies.iter().all(|r| r.status == 201));
    assert_eq!(ids.len(), 1, "every answer names the same record");
    assert_eq!(
        replies
            .iter()
            .filter(|r| r.body["status"] == "created")
            .count(),
        1
    );
    assert_eq!(app.db.count("audit_records").await.unwrap(), 1);
    assert_eq!(app.db.count("embeddings").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_kept_verbatim_and_reserved_ones_refused() {
    let app = spawn_app().await.unwrap();
    let mut body = fixtures::aianalysis(3);
    body["futureField"] =
        json!({"nested": [1, "two", null, {"deep": true}], "html": "<b>kept as is</b>"});
    body["modelVersion"] = json!(3.5);
    let r = write(&app, "aianalysis", &body).await;
    assert_eq!(r.status, 201, "{:#}", r.body);
    let got = app
        .get(&format!("/api/v1/audit/aianalysis/{}", r.body["id"]))
        .await
        .unwrap();
    assert_eq!(got.body["futureField"], body["futureField"]);
    assert_eq!(got.body["modelVersion"], 3.5);

    let mut reserved = fixtures::aianalysis(4);
    reserved["receivedAt"] = json!("2025-01-01T00:00:00Z");
    let r = write(&app, "aianalysis", &reserved).await;
    assert_error_shape(&r, 400, "VALIDATION_ERROR", "/api/v1/audit/aianalysis");
    assert_eq!(r.body["error"]["details"]["field"], "receivedAt");
}

/// Found by the conformance run: PostgreSQL writes a jsonb number out in full (f64::MAX as 309 digits),
/// and a parser that is not exact read that back as "number out of range". The record was stored and
/// acknowledged, then every read of it answered 500 and the log's sequencer stopped at it. Numbers at
/// the limits of f64 read back unchanged, and the record reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_at_the_limits_of_a_double_read_back_and_reach_the_log() {
    let app = spawn_app().await.unwrap();
    let extremes = json!([
        f64::MAX,
        -f64::MAX,
        f64::MIN_POSITIVE,
        5e-324,
        1e-5,
        0.1,
        u64::MAX,
        i64::MIN,
        1.7976931348623155e308
    ]);
    let mut body = fixtures::aianalysis(5);
    body["extremes"] = extremes.clone();
    let r = write(&app, "aianalysis", &body).await;
    assert_eq!(r.status, 201, "{:#}", r.body);
    let id = r.body["id"].as_i64().unwrap();
    let got = app
        .get(&format!("/api/v1/audit/aianalysis/{id}"))
        .await
        .unwrap();
    assert_eq!(got.status, 200, "{:#}", got.body);
    assert_eq!(got.body["extremes"], extremes);
    let trail = app
        .get(&format!(
            "/api/v1/audit/trail/{}",
            body["correlationId"].as_str().unwrap()
        ))
        .await
        .unwrap();
    assert_eq!(trail.status, 200, "{:#}", trail.body);
    assert_eq!(trail.body["records"][0]["extremes"], extremes);
    let list = app.get("/api/v1/audit/records").await.unwrap();
    assert_eq!(list.status, 200, "{:#}", list.body);
    until("the record is in a signed checkpoint", || async {
        app.get(&format!(
            "/api/v1/log/proof/inclusion?kind=aianalysis&id={id}"
        ))
        .await
        .is_ok_and(|p| p.status == 200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trail_is_ordered_by_created_at_then_id_across_kinds() {
    let app = spawn_app().await.unwrap();
    let at = |kind: &str, n: u32, t: &str| {
        let mut v = fixtures::of(kind, n);
        v["createdAt"] = json!(t);
        v.as_object_mut().unwrap().remove("startedAt");
        v.as_object_mut().unwrap().remove("completedAt");
        v
    };
    let late = write(
        &app,
        "execution",
        &at("execution", 1, "2025-10-06T10:10:00.000000Z"),
    )
    .await;
    let early = write(
        &app,
        "remediation",
        &at("remediation", 1, "2025-10-06T10:00:00.000000Z"),
    )
    .await;
    let tie_a = write(
        &app,
        "workflow",
        &at("workflow", 1, "2025-10-06T10:05:00.000000Z"),
    )
    .await;
    let tie_b = write(
        &app,
        "aianalysis",
        &at("aianalysis", 1, "2025-10-06T10:05:00.000000Z"),
    )
    .await;
    let mut other = fixtures::remediation(9);
    other["correlationId"] = json!("rr-2025-10-06-zzz999");
    write(&app, "remediation", &other).await;

    let trail = app
        .get(&format!("/api/v1/audit/trail/{CORRELATION}"))
        .await
        .unwrap();
    assert_eq!(trail.status, 200);
    let ids: Vec<i64> = trail.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    let id = |r: &ds_tests::Reply| r.body["id"].as_i64().unwrap();
    assert_eq!(ids, [id(&early), id(&tie_a), id(&tie_b), id(&late)]);
    assert_eq!(trail.body["records"][0]["kind"], "remediation");

    let empty = app
        .get("/api/v1/audit/trail/rr-2025-10-06-nonone")
        .await
        .unwrap();
    assert_eq!(empty.status, 200);
    assert_eq!(empty.body["records"], json!([]));
    let bad = app.get("/api/v1/audit/trail/not%20valid").await.unwrap();
    assert_error_shape(
        &bad,
        400,
        "VALIDATION_ERROR",
        "/api/v1/audit/trail/not%20valid",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_all_or_nothing_and_names_the_bad_item() {
    let app = spawn_app().await.unwrap();
    let records: Vec<Value> = KINDS
        .iter()
        .map(|k| json!({"kind": k, "record": fixtures::of(k, 5)}))
        .collect();
    let ok = app
        .post("/api/v1/audit/batch", &json!({ "records": records }))
        .await
        .unwrap();
    assert_eq!(ok.status, 201, "{:#}", ok.body);
    let results = ok.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(
        results[1]["message"],
        "AI analysis audit record created successfully"
    );
    for (k, r) in KINDS.iter().zip(results) {
        let got = app
            .get(&format!("/api/v1/audit/{k}/{}", r["id"]))
            .await
            .unwrap();
        assert_eq!(got.status, 200, "results are in request order");
    }

    let mut bad = fixtures::workflow(6);
    bad["name"] = json!("Not_A_DNS_Name");
    bad["stepCount"] = json!(0);
    let mixed = json!({"records": [
        {"kind": "remediation", "record": fixtures::remediation(6)},
        {"kind": "workflow", "record": bad},
        {"kind": "nosuchkind", "record": {}}
    ]});
    let r = app.post("/api/v1/audit/batch", &mixed).await.unwrap();
    assert_error_shape(&r, 400, "VALIDATION_ERROR", "/api/v1/audit/batch");
    let fields: Vec<&str> = r.body["error"]["details"]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"records[1].record.name"), "{fields:?}");
    assert!(
        fields.contains(&"records[1].record.stepCount"),
        "{fields:?}"
    );
    assert!(fields.contains(&"records[2].kind"), "{fields:?}");
    assert_eq!(
        app.db.count("audit_records").await.unwrap(),
        4,
        "nothing of the bad batch was written"
    );

    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"kind": "remediation", "record": fixtures::remediation(i)}))
        .collect();
    let r = app
        .post("/api/v1/audit/batch", &json!({ "records": too_many }))
        .await
        .unwrap();
    assert_error_shape(&r, 400, "VALIDATION_ERROR", "/api/v1/audit/batch");
    assert_eq!(r.body["error"]["details"]["constraint"], "maxItems");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_violation_is_reported_together() {
    let app = spawn_app().await.unwrap();
    let body = json!({
        "name": "UPPER", "namespace": "-bad-", "phase": "Sleeping", "createdAt": "yesterday",
        "correlationId": "nope", "signalType": "prometheus", "signalName": 5,
        "targetType": "deployment", "targetName": "api", "targetNamespace": "payments"
    });
    let r = write(&app, "remediation", &body).await;
    assert_error_shape(&r, 400, "VALIDATION_ERROR", "/api/v1/audit/remediation");
    let v = r.body["error"]["details"]["violations"].as_array().unwrap();
    let mut fields: Vec<&str> = v.iter().map(|x| x["field"].as_str().unwrap()).collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "correlationId",
            "createdAt",
            "name",
            "namespace",
            "phase",
            "signalName",
            "signalNamespace"
        ],
        "{v:#?}"
    );
    assert_eq!(app.db.count("audit_records").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framework_errors_come_in_the_contract_shape() {
    let app = spawn_app().await.unwrap();
    let path = "/api/v1/audit/remediation";
    let raw = |body: Vec<u8>, ct: &str| {
        app.client
            .post(app.url(path))
            .header("content-type", ct)
            .body(body)
    };

    let r = app
        .send(raw(b"{\"name\": ".to_vec(), "application/json"))
        .await
        .unwrap();
    assert_error_shape(&r, 400, "INVALID_JSON", path);
    let r = app
        .send(raw(
            b"{\"name\": \"\xff\xfe\"}".to_vec(),
            "application/json",
        ))
        .await
        .unwrap();
    assert_error_shape(&r, 400, "INVALID_JSON", path);
    let r = app
        .send(raw(b"[1,2]".to_vec(), "application/json"))
        .await
        .unwrap();
    assert_error_shape(&r, 400, "INVALID_JSON", path);
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let r = app
        .send(raw(
            format!("{{\"x\": {deep}}}").into_bytes(),
            "application/json",
        ))
        .await
        .unwrap();
    assert_error_shape(&r, 400, "INVALID_JSON", path);
    let r = app.send(raw(b"{}".to_vec(), "text/plain")).await.unwrap();
    assert_error_shape(&r, 415, "UNSUPPORTED_MEDIA_TYPE", path);
    let r = app
        .send(raw(vec![b' '; 3 * 1024 * 1024], "application/json"))
        .await
        .unwrap();
    assert_error_shape(&r, 413, "PAYLOAD_TOO_LARGE", path);
    let r = app.get(path).await.unwrap();
    assert_error_shape(&r, 405, "METHOD_NOT_ALLOWED", path);
    let r = app.get("/api/v1/nothing/here").await.unwrap();
    assert_error_shape(&r, 404, "NOT_FOUND", "/api/v1/nothing/here");
    let r = app
        .get("/api/v1/audit/remediation/not-a-number")
        .await
        .unwrap();
    assert_error_shape(
        &r,
        404,
        "NOT_FOUND",
        "/api/v1/audit/remediation/not-a-number",
    );
    let r = app.get("/api/v1/audit/remediation/999999").await.unwrap();
    assert_error_shape(&r, 404, "NOT_FOUND", "/api/v1/audit/remediation/999999");

    let r = app
        .send(
            app.client
                .get(app.url("/nope"))
                .header("X-Correlation-ID", "corr-123")
                .header("X-Request-ID", "req-9"),
        )
        .await
        .unwrap();
    assert_eq!(r.body["correlationId"], "corr-123");
    assert_eq!(r.body["requestId"], "req-9");
    assert_eq!(
        app.db.count("audit_records").await.unwrap(),
        0,
        "no error wrote anything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_is_sanitized_or_refused_never_a_500() {
    let app = spawn_app().await.unwrap();
    let mut body = fixtures::remediation(11);
    body["message"] =
        json!("<script>alert(1)</script>OOM\u{0} in 'payments'; DROP TABLE audit_records;--");
    let r = write(&app, "remediation", &body).await;
    assert_eq!(r.status, 201, "{:#}", r.body);
    let got = app
        .get(&format!("/api/v1/audit/remediation/{}", r.body["id"]))
        .await
        .unwrap();
    assert_eq!(
        got.body["message"],
        "OOM in 'payments'; DROP TABLE audit_records;--"
    );

    let mut nul = fixtures::remediation(12);
    nul["signalName"] = json!("Kube\u{0}Alert");
    let r = write(&app, "remediation", &nul).await;
    assert_error_shape(&r, 400, "VALIDATION_ERROR", "/api/v1/audit/remediation");
    assert_eq!(r.body["error"]["details"]["constraint"], "noControlChars");

    let mut nul_unknown = fixtures::remediation(13);
    nul_unknown["extra"] = json!({"k": "a\u{0}b"});
    let r = write(&app, "remediation", &nul_unknown).await;
    assert_error_shape(&r, 400, "VALIDATION_ERROR", "/api/v1/audit/remediation");

    let mut huge = fixtures::remediation(14);
    huge["message"] = json!("x".repeat(10 * 1024 + 1));
    let r = write(&app, "remediation", &huge).await;
    assert_error_shape(&r, 400, "VALIDATION_ERROR", "/api/v1/audit/remediation");
    assert_eq!(r.body["error"]["details"]["constraint"], "maxLength");
    assert_eq!(app.db.count("audit_records").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_the_openapi_document() {
    let app = spawn_app().await.unwrap();
    let h = app.get("/healthz").await.unwrap();
    assert_eq!(h.status, 200);
    assert_eq!(h.body["status"], "healthy");
    let r = app.get("/readyz").await.unwrap();
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert_eq!(r.body["status"], "ready");
    assert_eq!(r.body["dependencies"]["postgresql"]["status"], "up");
    assert_eq!(
        r.body["dependencies"]["postgresql"]["embeddingDimension"],
        384
    );
    assert_eq!(
        r.body["dependencies"]["embedding"]["model"],
        "all-MiniLM-L6-v2@53aa5117"
    );

    let doc = app.get("/api/v1/openapi.json").await.unwrap();
    assert_eq!(doc.status, 200);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/api/v1/audit/remediation",
        "/api/v1/audit/batch",
        "/api/v1/audit/{kind}/{id}",
        "/readyz",
    ] {
        assert!(doc.body["paths"].get(p).is_some(), "{p} is documented");
    }
    let required = &doc.body["components"]["schemas"]["RemediationRecord"]["required"];
    assert!(
        required
            .as_array()
            .unwrap()
            .contains(&json!("correlationId")),
        "{required}"
    );
    // The deployment's dimension is the length of a search vector.
    let vector = &doc.body["components"]["schemas"]["SearchBody"]["properties"]["vector"];
    assert_eq!(vector["minItems"], 384, "{vector}");
    assert_eq!(vector["maxItems"], 384, "{vector}");

    app.state
        .shutting_down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let r = app.get("/readyz").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.body["status"], "not_ready");
    assert_eq!(r.body["reason"], "shutting down");
    assert_eq!(r.header("retry-after"), Some("5"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_writes_and_validation_failures() {
    let app = spawn_app().await.unwrap();
    assert_eq!(
        write(&app, "remediation", &fixtures::remediation(1))
            .await
            .status,
        201
    );
    assert_eq!(
        write(&app, "remediation", &fixtures::remediation(1))
            .await
            .status,
        201
    );
    let mut bad = fixtures::remediation(2);
    bad["namespace"] = json!("Bad");
    assert_eq!(write(&app, "remediation", &bad).await.status, 400);
    let text = app.metrics_text().await.unwrap();
    for line in [
        r#"datastorage_audit_writes_total{kind="remediation",status="created"} 1"#,
        r#"datastorage_audit_writes_total{kind="remediation",status="duplicate"} 1"#,
        r#"datastorage_validation_failures_total{kind="remediation",field="namespace"} 1"#,
        r#"datastorage_embedding_cache_misses_total 1"#,
        r#"datastorage_embedding_cache_hits_total 0"#,
        r#"datastorage_embedding_generation_duration_seconds_count{provider="local"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line} in:\n{text}"
        );
    }
}
