//! The `openai` provider against a real HTTP server speaking the OpenAI embeddings API on loopback
//! (backed by the local model), with scripted 429/5xx/timeouts/malformed answers; the batcher over it;
//! and the service end to end with the provider down and back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use ds_domain::ports::{EmbedError, Embedder, ProviderHealth};
use ds_embed_cache::{BatchSettings, BatchingEmbedder};
use ds_embed_local::LocalEmbedder;
use ds_embed_openai::{ApiKey, OpenAiEmbedder, OpenAiSettings, RetryPolicy};
use ds_tests::openai_server::{FakeOpenAi, Script};
use ds_tests::{fixtures, model_dir, spawn_app_with};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

fn settings(server: &FakeOpenAi) -> OpenAiSettings {
    let mut s = OpenAiSettings::new(&server.base_url(), "all-minilm", 384);
    s.api_key = Some(ApiKey::new("sk-test-secret").unwrap());
    s.retry = RetryPolicy {
        max_retries: 2,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        budget: Duration::from_secs(30),
    };
    s.attempt_timeout = Duration::from_secs(20);
    s
}

fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("pod payments-{i} OOMKilled in namespace prod-{i}"))
        .collect()
}

fn assert_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    let max = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(max < 1e-5, "vectors differ by {max}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectors_match_the_local_model_in_input_order_across_chunked_requests() {
    let server = FakeOpenAi::start().await.unwrap();
    let mut s = settings(&server);
    s.max_batch = 2;
    s.dimensions = Some(384);
    let openai = OpenAiEmbedder::new(s).unwrap();
    let local = LocalEmbedder::load(&model_dir(), None).unwrap();
    let input = texts(5);

    let got = openai.embed(input.clone()).await.unwrap();
    let want = local.embed(input.clone()).await.unwrap();
    assert_eq!(got.len(), 5);
    for (g, w) in got.iter().zip(&want) {
        assert_close(g, w);
    }
    let seen = server.seen();
    assert_eq!(
        seen.iter().map(|r| r.inputs.len()).collect::<Vec<_>>(),
        [2, 2, 1]
    );
    assert_eq!(seen[0].inputs, input[..2]);
    assert_eq!(seen[0].model, "all-minilm");
    assert_eq!(seen[0].dimensions, Some(384));
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some("Bearer sk-test-secret")
    );
    assert_eq!(openai.provider(), "openai");
    assert_eq!(openai.model_id(), "all-minilm@384d");
    assert!(!format!("{openai:?}").contains("sk-test-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_server_errors_are_retried_until_success() {
    let server = FakeOpenAi::start().await.unwrap();
    let openai = OpenAiEmbedder::new(settings(&server)).unwrap();
    server.script([Script::Status(429, Some("0")), Script::Status(503, None)]);
    let v = openai.embed(texts(1)).await.unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(server.seen().len(), 3, "two failures, then the answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_after_max_retries() {
    let server = FakeOpenAi::start().await.unwrap();
    let openai = OpenAiEmbedder::new(settings(&server)).unwrap();
    server.set_down(Some(500));
    let e = openai.embed(texts(1)).await.unwrap_err();
    assert!(
        matches!(&e, EmbedError::Unavailable(m) if m.contains("500") && m.contains("3 attempt")),
        "{e}"
    );
    assert_eq!(server.seen().len(), 3, "1 attempt + 2 retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_beyond_the_budget_is_not_overridden_by_a_sooner_retry() {
    let server = FakeOpenAi::start().await.unwrap();
    let openai = OpenAiEmbedder::new(settings(&server)).unwrap();
    // The provider asks for an hour; the call's budget is 30 s: give up now rather than retry sooner.
    server.script([Script::Status(429, Some("3600"))]);
    let e = openai.embed(texts(1)).await.unwrap_err();
    assert!(
        matches!(&e, EmbedError::Unavailable(m) if m.contains("429") && m.contains("budget")),
        "{e}"
    );
    assert_eq!(server.seen().len(), 1);
    // An HTTP-date Retry-After in the past means "now": retried at once.
    server.script([Script::Status(429, Some("Wed, 21 Oct 2015 07:28:00 GMT"))]);
    openai.embed(texts(1)).await.unwrap();
    assert_eq!(server.seen().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_that_hangs_times_out_and_is_retried() {
    let server = FakeOpenAi::start().await.unwrap();
    let mut s = settings(&server);
    s.attempt_timeout = Duration::from_millis(300);
    let openai = OpenAiEmbedder::new(s).unwrap();
    server.script([Script::Hang]);
    let v = openai.embed(texts(2)).await.unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(server.seen().len(), 2);

    server.script([Script::Hang, Script::Hang, Script::Hang]);
    let e = openai.embed(texts(1)).await.unwrap_err();
    assert!(
        matches!(&e, EmbedError::Unavailable(m) if m.contains("in time")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_answers_wrong_dimensions_and_client_errors_are_not_retried() {
    let server = FakeOpenAi::start().await.unwrap();
    let openai = OpenAiEmbedder::new(settings(&server)).unwrap();

    server.script([Script::Malformed]);
    let e = openai.embed(texts(1)).await.unwrap_err();
    assert!(
        matches!(&e, EmbedError::InvalidOutput(m) if m.contains("not an embeddings response")),
        "{e}"
    );
    assert_eq!(server.seen().len(), 1);

    server.script([Script::Dimension(768)]);
    let e = openai.embed(texts(1)).await.unwrap_err();
    assert!(
        matches!(&e, EmbedError::InvalidOutput(m) if m.contains("768") && m.contains("384")),
        "{e}"
    );
    assert_eq!(server.seen().len(), 2);

    server.script([Script::Status(401, None)]);
    let e = openai.embed(texts(1)).await.unwrap_err();
    assert!(
        matches!(&e, EmbedError::Unavailable(m) if m.contains("401")),
        "{e}"
    );
    assert_eq!(server.seen().len(), 3);
    assert!(!e.to_string().contains("sk-test-secret"));

    // A vector of zeros cannot be normalised.
    server.script([Script::Dimension(384)]);
    let v = openai.embed(texts(1)).await.unwrap();
    let norm: f32 = v[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "answers are L2-normalised");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_after_repeated_failures_and_stops_calling_the_provider() {
    let server = FakeOpenAi::start().await.unwrap();
    let mut s = settings(&server);
    s.retry.max_retries = 0;
    s.circuit_threshold = 2;
    s.circuit_cooldown = Duration::from_secs(3600);
    let openai = OpenAiEmbedder::new(s).unwrap();
    server.set_down(Some(503));
    for _ in 0..2 {
        openai.embed(texts(1)).await.unwrap_err();
    }
    assert_eq!(server.seen().len(), 2);
    assert!(matches!(openai.health(), ProviderHealth::Degraded(_)));
    let e = openai.embed(texts(1)).await.unwrap_err();
    assert!(
        matches!(&e, EmbedError::Unavailable(m) if m.contains("circuit")),
        "{e}"
    );
    assert_eq!(server.seen().len(), 2, "an open circuit makes no call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_circuit_closes_on_a_successful_trial() {
    let server = FakeOpenAi::start().await.unwrap();
    let mut s = settings(&server);
    s.retry.max_retries = 0;
    s.circuit_threshold = 1;
    s.circuit_cooldown = Duration::ZERO;
    let openai = OpenAiEmbedder::new(s).unwrap();
    server.script([Script::Status(500, None)]);
    openai.embed(texts(1)).await.unwrap_err();
    assert!(matches!(openai.health(), ProviderHealth::Degraded(_)));
    // Cool-down zero: the next call is the trial; it succeeds and closes the circuit.
    openai.embed(texts(1)).await.unwrap();
    assert_eq!(openai.health(), ProviderHealth::Up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_while_the_provider_is_busy() {
    let server = FakeOpenAi::start().await.unwrap();
    let openai: Arc<dyn Embedder> = Arc::new(OpenAiEmbedder::new(settings(&server)).unwrap());
    let batcher = BatchingEmbedder::new(
        openai,
        BatchSettings {
            max_batch: 8,
            max_wait: Duration::ZERO,
            max_in_flight: 1,
            queue: 64,
        },
    );
    let (release, held) = tokio::sync::oneshot::channel();
    server.script([Script::Hold(held)]);
    let first = batcher.submit(texts(1)).await.unwrap();
    assert_eq!(server.next_arrival().await, Some(0));
    // The only call slot is busy: these 19 requests queue up.
    let inputs: Vec<String> = (0..19)
        .map(|i| format!("alert {i}: disk full on node-{i}"))
        .collect();
    let mut pending = Vec::new();
    for t in &inputs {
        pending.push(batcher.submit(vec![t.clone()]).await.unwrap());
    }
    release.send(()).unwrap();
    assert_eq!(first.wait().await.unwrap().len(), 1);
    let mut got = Vec::new();
    for p in pending {
        got.push(p.wait().await.unwrap().remove(0));
    }
    let sizes: Vec<usize> = server.seen().iter().map(|r| r.inputs.len()).collect();
    assert_eq!(sizes, [1, 8, 8, 3], "20 requests in 4 provider calls");
    let local = LocalEmbedder::load(&model_dir(), None).unwrap();
    let want = local.embed(inputs).await.unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert_close(g, w);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_fails_each_of_its_requests() {
    let server = FakeOpenAi::start().await.unwrap();
    let mut s = settings(&server);
    s.retry.max_retries = 0;
    let openai: Arc<dyn Embedder> = Arc::new(OpenAiEmbedder::new(s).unwrap());
    let batcher = BatchingEmbedder::new(
        openai,
        BatchSettings {
            max_batch: 8,
            max_in_flight: 1,
            ..BatchSettings::default()
        },
    );
    let (release, held) = tokio::sync::oneshot::channel();
    server.script([Script::Hold(held), Script::Status(500, None)]);
    let first = batcher.submit(texts(1)).await.unwrap();
    server.next_arrival().await;
    let a = batcher.submit(texts(2)).await.unwrap();
    let b = batcher.submit(texts(3)).await.unwrap();
    release.send(()).unwrap();
    first.wait().await.unwrap();
    assert!(matches!(a.wait().await, Err(EmbedError::Unavailable(_))));
    assert!(matches!(b.wait().await, Err(EmbedError::Unavailable(_))));
    assert_eq!(server.seen().len(), 2);
}

fn openai_env(server: &FakeOpenAi) -> Vec<(&'static str, String)> {
    vec![
        ("DATASTORAGE_EMBEDDING_PROVIDER", "openai".into()),
        ("DATASTORAGE_EMBEDDING_OPENAI_BASE_URL", server.base_url()),
        ("DATASTORAGE_EMBEDDING_OPENAI_MODEL", "all-minilm".into()),
        (
            "DATASTORAGE_EMBEDDING_OPENAI_API_KEY",
            "sk-e2e-secret".into(),
        ),
        ("DATASTORAGE_EMBEDDING_MAX_RETRIES", "1".into()),
        ("DATASTORAGE_EMBEDDING_RETRY_BASE_MS", "1".into()),
        ("DATASTORAGE_EMBEDDING_CIRCUIT_THRESHOLD", "2".into()),
        ("DATASTORAGE_EMBEDDING_CIRCUIT_COOLDOWN_SECS", "0".into()),
        ("DATASTORAGE_EMBEDDING_WORKER_INTERVAL_MS", "0".into()),
    ]
}

async fn spawn(env: &[(&'static str, String)]) -> anyhow::Result<ds_tests::TestApp> {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    spawn_app_with(&pairs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_down_writes_still_succeed_and_the_backlog_drains_when_it_returns() {
    let server = FakeOpenAi::start().await.unwrap();
    server.set_down(Some(503));
    // The start-up probe fails: the service starts anyway.
    let app = spawn(&openai_env(&server)).await.unwrap();
    let mut twin = fixtures::remediation(1);
    twin["name"] = json!("twin-of-1");
    let bodies = [
        ("remediation", fixtures::remediation(1)),
        ("remediation", twin),
        ("workflow", fixtures::workflow(2)),
        ("aianalysis", fixtures::aianalysis(3)),
    ];
    let mut ids = Vec::new();
    for (kind, b) in &bodies {
        let r = app.post(&format!("/api/v1/audit/{kind}"), b).await.unwrap();
        assert_eq!(r.status, 201, "{:#}", r.body);
        assert_eq!(r.body["embeddingStatus"], "pending");
        ids.push((kind, r.body["id"].as_i64().unwrap()));
    }
    assert_eq!(app.state.service.pending_jobs().await.unwrap(), 3);
    assert_eq!(app.db.count("embeddings").await.unwrap(), 0);
    let ready = app.get("/readyz").await.unwrap();
    assert_eq!(
        ready.status, 200,
        "a degraded provider keeps the replica ready"
    );
    assert_eq!(
        ready.body["dependencies"]["embedding"]["status"],
        "degraded"
    );

    // Still down: the worker's attempt fails and every job stays queued.
    assert!(app.state.service.run_embedding_jobs(100).await.is_err());
    assert_eq!(app.state.service.pending_jobs().await.unwrap(), 3);

    server.set_down(None);
    assert_eq!(app.state.service.run_embedding_jobs(100).await.unwrap(), 3);
    assert_eq!(app.state.service.run_embedding_jobs(100).await.unwrap(), 0);
    assert_eq!(app.state.service.pending_jobs().await.unwrap(), 0);
    assert_eq!(
        app.db.count("embeddings").await.unwrap(),
        3,
        "one vector per distinct text"
    );
    for (kind, id) in &ids {
        let got = app
            .get(&format!("/api/v1/audit/{kind}/{id}"))
            .await
            .unwrap();
        assert_eq!(got.body["embeddingStatus"], "stored", "{kind} {id}");
    }
    let ready = app.get("/readyz").await.unwrap();
    assert_eq!(ready.body["dependencies"]["embedding"]["status"], "up");

    // The same texts again: no provider call (cache), no new vector (content-addressed).
    let calls = server.seen().len();
    let r = app
        .post("/api/v1/audit/remediation", &fixtures::remediation(1))
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(r.body["status"], "duplicate");
    assert_eq!(server.seen().len(), calls);

    let metrics = app.metrics_text().await.unwrap();
    for needle in [
        "datastorage_embedding_provider_errors_total{provider=\"openai\",kind=\"server_error\"}",
        "datastorage_embedding_provider_retries_total{provider=\"openai\"}",
        "datastorage_embedding_circuit_open{provider=\"openai\"}",
        "datastorage_embedding_batch_size",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from /metrics");
    }
    assert!(!metrics.contains("sk-e2e-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reject_answers_503_and_writes_nothing_when_the_provider_is_down() {
    let server = FakeOpenAi::start().await.unwrap();
    server.set_down(Some(500));
    let mut env = openai_env(&server);
    env.push(("DATASTORAGE_EMBEDDING_FAILURE_POLICY", "reject".into()));
    let app = spawn(&env).await.unwrap();
    let r = app
        .post("/api/v1/audit/remediation", &fixtures::remediation(1))
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{:#}", r.body);
    assert_eq!(r.body["error"]["code"], "EMBEDDING_ERROR");
    assert!(!r.body.to_string().contains("sk-e2e-secret"));
    assert!(!r.body.to_string().contains("127.0.0.1"), "{:#}", r.body);
    assert_eq!(app.db.count("audit_records").await.unwrap(), 0);
    assert_eq!(
        app.db
            .count("embedding_jobs WHERE done_at IS NULL")
            .await
            .unwrap(),
        0
    );

    server.set_down(None);
    let r = app
        .post("/api/v1/audit/remediation", &fixtures::remediation(1))
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{:#}", r.body);
    assert_eq!(r.body["embeddingStatus"], "stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_a_provider_whose_dimension_differs_from_the_column() {
    let server = FakeOpenAi::start().await.unwrap();
    server.script([Script::Dimension(768)]);
    let e = match spawn(&openai_env(&server)).await {
        Ok(_) => panic!("started with a 768-dimension provider"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("768") && e.contains("384"), "{e}");
    assert!(e.contains("DATASTORAGE_EMBEDDING_OPENAI_DIMENSIONS"), "{e}");
    assert!(!e.contains("sk-e2e-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_embeds_its_query_through_the_openai_provider() {
    let server = FakeOpenAi::start().await.unwrap();
    let app = spawn(&openai_env(&server)).await.unwrap();
    for n in 1..=3 {
        let r = app
            .post("/api/v1/audit/workflow", &fixtures::workflow(n))
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{:#}", r.body);
        assert_eq!(r.body["embeddingStatus"], "stored");
    }
    let r = app
        .post(
            "/api/v1/audit/search",
            &json!({"query": "restart the crashing deployment", "limit": 2}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert_eq!(r.body["results"].as_array().unwrap().len(), 2);
    let last = server.seen().pop().unwrap();
    assert_eq!(last.inputs, ["restart the crashing deployment"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_the_provider_refuses_is_isolated_charged_and_parked_while_the_rest_drains() {
    let server = FakeOpenAi::start().await.unwrap();
    let mut env = openai_env(&server);
    env.extend([
        ("DATASTORAGE_EMBEDDING_MODE", "deferred".to_owned()),
        ("DATASTORAGE_EMBEDDING_JOB_MAX_ATTEMPTS", "2".to_owned()),
        ("DATASTORAGE_EMBEDDING_JOB_BACKOFF_MS", "0".to_owned()),
    ]);
    let app = spawn(&env).await.unwrap();
    server.refuse_inputs_containing(Some("POISON"));
    let mut ids = Vec::new();
    for n in 0..6 {
        let mut r = fixtures::remediation(n);
        r["message"] = json!(if n == 3 {
            "a message the provider refuses: POISON".to_owned()
        } else {
            format!("pod {n} restarted after an OOMKill")
        });
        let w = app.post("/api/v1/audit/remediation", &r).await.unwrap();
        assert_eq!(w.status, 201, "{:#}", w.body);
        ids.push(w.body["id"].as_i64().unwrap());
    }
    let service = &app.state.service;
    let before = server.seen().len();
    // The batch fails, is split until the refused text is found; the five others are stored.
    assert_eq!(service.run_embedding_jobs(100).await.unwrap(), 5);
    assert!(
        server.seen().len() > before + 1,
        "the failed batch was split"
    );
    assert!(
        matches!(
            service.embedder().health(),
            ds_domain::ports::ProviderHealth::Up
        ),
        "a refused input does not open the circuit"
    );
    let status = async |id: i64| app.embedding_status("remediation", id).await.unwrap();
    for (n, id) in ids.iter().enumerate() {
        let expected = if n == 3 { "pending" } else { "stored" };
        assert_eq!(status(*id).await, expected, "record {n}");
    }
    assert_eq!(service.pending_jobs().await.unwrap(), 1);
    assert_eq!(
        service.parked_jobs().await.unwrap(),
        0,
        "one attempt of two"
    );
    // The second attempt fails too: parked, and no longer claimed.
    assert_eq!(service.run_embedding_jobs(100).await.unwrap(), 0);
    assert_eq!(service.parked_jobs().await.unwrap(), 1);
    assert_eq!(service.pending_jobs().await.unwrap(), 0);
    let seen = server.seen().len();
    assert_eq!(service.run_embedding_jobs(100).await.unwrap(), 0);
    assert_eq!(server.seen().len(), seen, "a parked job is not tried again");

    // `datastorage jobs list --parked` shows it with its error; `jobs retry` re-queues it.
    let config = ds_tests::test_config(&app.db.url, &[]).unwrap();
    let parked = ds_server::jobs_list(&config, true, 10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].state, "parked");
    assert_eq!(parked[0].attempts, 2);
    assert!(
        parked[0].text.starts_with("remediation "),
        "{:?}",
        parked[0]
    );
    let error = parked[0].last_error.clone().unwrap_or_default();
    assert!(
        error.contains("400") && error.contains("context length"),
        "{error}"
    );
    let bad = vec!["not-hex".to_owned()];
    assert!(ds_server::jobs_retry(&config, Some(&bad)).await.is_err());
    let digest = vec![hex::encode(parked[0].digest)];
    assert_eq!(
        ds_server::jobs_retry(&config, Some(&digest)).await.unwrap(),
        1
    );
    assert_eq!(service.parked_jobs().await.unwrap(), 0);
    let open = ds_server::jobs_list(&config, false, 10).await.unwrap();
    assert_eq!(
        (open.len(), open[0].state, open[0].attempts),
        (1, "open", 0)
    );
    // Once the provider takes it, the last record is stored too.
    server.refuse_inputs_containing(None);
    assert_eq!(service.run_embedding_jobs(100).await.unwrap(), 1);
    assert_eq!(status(ids[3]).await, "stored");
    assert_eq!(ds_server::jobs_retry(&config, None).await.unwrap(), 0);
}
