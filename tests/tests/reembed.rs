//! Re-embedding after a change of model: records embedded by model A are queued for model B, the worker
//! embeds them, searches of model B find them while searches of model A still do until the switch;
//! vectors of B already stored are linked at once; a second run has nothing to do; jobs of A that no
//! record waits for are dropped; the switch removes A's links, jobs and vectors.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use async_trait::async_trait;
use diesel::QueryableByName;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use ds_domain::kind::Kind;
use ds_domain::ports::{EmbedError, Embedder};
use ds_domain::search::parse_search;
use ds_domain::service::{EmbeddingMode, FailurePolicy};
use ds_domain::{AuditService, parse_record};
use ds_embed_local::LocalEmbedder;
use ds_store_pg::{PgStore, PoolSettings};
use ds_tests::{TestDb, fixtures, model_dir};
use serde_json::json;
use std::sync::Arc;

/// The local model under another name: as far as the store knows, another model.
struct Named(&'static str, Arc<LocalEmbedder>);

#[async_trait]
impl Embedder for Named {
    fn provider(&self) -> &'static str {
        "local"
    }
    fn model_id(&self) -> &str {
        self.0
    }
    fn dimension(&self) -> usize {
        self.1.dimension()
    }
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.1.embed(texts).await
    }
}

#[derive(QueryableByName, Debug, PartialEq)]
struct Link {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    model: Option<String>,
}

#[derive(QueryableByName)]
struct Job {
    #[diesel(sql_type = diesel::sql_types::Text)]
    model: String,
}

async fn links(db: &TestDb) -> Vec<Link> {
    let mut c = db.conn().await.unwrap();
    diesel::sql_query(
        "SELECT r.name, e.model FROM audit_records r LEFT JOIN embeddings e ON e.id = r.embedding_id ORDER BY r.id",
    )
    .load(&mut c)
    .await
    .unwrap()
}

async fn job_models(db: &TestDb) -> Vec<String> {
    let mut c = db.conn().await.unwrap();
    let jobs: Vec<Job> =
        diesel::sql_query("SELECT model FROM embedding_jobs WHERE done_at IS NULL ORDER BY model")
            .load(&mut c)
            .await
            .unwrap();
    jobs.into_iter().map(|j| j.model).collect()
}

/// The model of the vector each record kept of the model it was re-pointed from (None: none kept).
async fn kept(db: &TestDb) -> Vec<Link> {
    let mut c = db.conn().await.unwrap();
    diesel::sql_query(
        "SELECT r.name, e.model FROM audit_records r
         LEFT JOIN previous_embeddings p ON p.record_id = r.id
         LEFT JOIN embeddings e ON e.id = p.embedding_id ORDER BY r.id",
    )
    .load(&mut c)
    .await
    .unwrap()
}

async fn vectors_of(db: &TestDb, model: &str) -> i64 {
    db.count(&format!("embeddings WHERE model = '{model}'"))
        .await
        .unwrap()
}

fn link(name: &str, model: Option<&str>) -> Link {
    Link {
        name: name.to_owned(),
        model: model.map(str::to_owned),
    }
}

async fn reembed_all(service: &AuditService) -> usize {
    let (mut after, mut moved) = (0, 0);
    while let (n, Some(last)) = service.reembed_page(after, 2).await.unwrap() {
        moved += n;
        after = last;
    }
    moved
}

async fn found(service: &AuditService, query: &str) -> Vec<String> {
    let request = parse_search(json!({"query": query, "limit": 10})).unwrap();
    service
        .search(request)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.record.record["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_an_earlier_model_are_queued_embedded_and_found_under_the_new_one() {
    let db = TestDb::new().await.unwrap();
    let store = Arc::new(PgStore::new(&db.url, &PoolSettings::default()).unwrap());
    let local = Arc::new(LocalEmbedder::load(&model_dir(), None).unwrap());
    let service = |model: &'static str, mode| {
        AuditService::with_options(
            store.clone(),
            Arc::new(Named(model, local.clone())),
            mode,
            FailurePolicy::Defer,
        )
    };
    let a = service("model-a", EmbeddingMode::Inline);
    let a_deferred = service("model-a", EmbeddingMode::Deferred);
    let b = service("model-b", EmbeddingMode::Inline);

    // Two records embedded by A, one waiting for A's worker.
    for n in [1, 2] {
        let r = parse_record(Kind::Remediation, fixtures::remediation(n)).unwrap();
        a.write(vec![r], None).await.unwrap();
    }
    let r = parse_record(Kind::Remediation, fixtures::remediation(3)).unwrap();
    a_deferred.write(vec![r], None).await.unwrap();
    assert_eq!(job_models(&db).await, vec!["model-a"]);
    assert_eq!(
        found(&a, "Pod restarted after OOMKill").await.len(),
        2,
        "A finds its two"
    );
    assert!(found(&b, "Pod restarted after OOMKill").await.is_empty());

    // The model becomes B: every record is queued for B; A's job, which no record waits for any
    // more, is dropped; the two with A's vector keep it.
    assert_eq!(reembed_all(&b).await, 3);
    assert_eq!(
        kept(&db).await,
        vec![
            link("rr-payments-1", Some("model-a")),
            link("rr-payments-2", Some("model-a")),
            link("rr-payments-3", None)
        ]
    );
    assert_eq!(job_models(&db).await, vec!["model-b"; 3]);
    assert_eq!(
        links(&db).await,
        vec![
            link("rr-payments-1", None),
            link("rr-payments-2", None),
            link("rr-payments-3", None)
        ]
    );
    assert_eq!(
        reembed_all(&b).await,
        0,
        "queued records are not queued twice"
    );
    // Until B has embedded them, replicas still on A find what they found, B nothing yet.
    assert_eq!(found(&a, "Pod restarted after OOMKill").await.len(), 2);
    assert!(found(&b, "Pod restarted after OOMKill").await.is_empty());

    // B's worker embeds them; B's searches find them all, A's still its two.
    assert_eq!(b.run_embedding_jobs(10).await.unwrap(), 3);
    assert_eq!(
        links(&db).await,
        vec![
            link("rr-payments-1", Some("model-b")),
            link("rr-payments-2", Some("model-b")),
            link("rr-payments-3", Some("model-b"))
        ]
    );
    assert_eq!(found(&b, "Pod restarted after OOMKill").await.len(), 3);
    assert_eq!(found(&a, "Pod restarted after OOMKill").await.len(), 2);
    assert_eq!(reembed_all(&b).await, 0, "nothing left to do");

    // A replica still on A writes a record whose text B has already embedded: re-embedding links it
    // to B's stored vector at once, without a job.
    let mut same_text = fixtures::remediation(1);
    same_text["name"] = json!("rr-payments-1-again");
    let r = parse_record(Kind::Remediation, same_text).unwrap();
    a.write(vec![r], None).await.unwrap();
    assert_eq!(reembed_all(&b).await, 1);
    assert!(job_models(&db).await.is_empty());
    assert_eq!(
        links(&db).await.pop().unwrap(),
        link("rr-payments-1-again", Some("model-b"))
    );
    assert_eq!(
        kept(&db).await.pop().unwrap(),
        link("rr-payments-1-again", Some("model-a"))
    );
    assert_eq!(found(&a, "Pod restarted after OOMKill").await.len(), 3);

    // A replica still on A wrote a record a moment ago: the switch would take A's vectors from it.
    let r = parse_record(Kind::Remediation, fixtures::remediation(4)).unwrap();
    a.write(vec![r], None).await.unwrap();
    let minute = std::time::Duration::from_secs(60);
    assert_eq!(
        b.other_model_in_use(minute).await.unwrap().as_deref(),
        Some("model-a")
    );
    assert_eq!(
        a.other_model_in_use(minute).await.unwrap().as_deref(),
        Some("model-b")
    );
    assert_eq!(
        b.other_model_in_use(std::time::Duration::ZERO)
            .await
            .unwrap(),
        None
    );

    // Every replica runs B: what A wrote since is queued, then the switch removes A's kept links,
    // and A's vectors, which no record links any more. B finds every record, A none.
    assert_eq!(reembed_all(&b).await, 1);
    assert_eq!(b.run_embedding_jobs(10).await.unwrap(), 1);
    let a_vectors = vectors_of(&db, "model-a").await;
    assert_eq!(a_vectors, 3, "the texts of records 1, 2 and 4");
    let switched = b.finish_switch().await.unwrap();
    assert_eq!(
        switched,
        ds_domain::ports::Switched {
            kept_links: 4,
            jobs: 0,
            vectors: 3
        }
    );
    assert_eq!(vectors_of(&db, "model-a").await, 0);
    assert!(kept(&db).await.iter().all(|k| k.model.is_none()));
    assert!(found(&a, "Pod restarted after OOMKill").await.is_empty());
    assert_eq!(found(&b, "Pod restarted after OOMKill").await.len(), 5);
    assert_eq!(
        b.finish_switch().await.unwrap(),
        ds_domain::ports::Switched::default(),
        "nothing left to remove"
    );

    // A replica still on A writes after the switch: its write finds A's vector gone and queues a
    // job of A, which B's workers leave alone (the next `reembed` re-points the record).
    let mut late = fixtures::remediation(1);
    late["name"] = json!("rr-payments-1-late");
    let r = parse_record(Kind::Remediation, late).unwrap();
    a.write(vec![r], None).await.unwrap();
    assert_eq!(job_models(&db).await, vec!["model-a".to_owned()]);
    // Were that job deleted under it (here by hand), the record would have neither vector nor job:
    // the sweep finds it and queues it again, for the running model (B's vector of the text is
    // stored: linked at once).
    db.conn()
        .await
        .unwrap()
        .batch_execute("DELETE FROM embedding_jobs WHERE model = 'model-a'")
        .await
        .unwrap();
    let stranded = "audit_records r WHERE r.embedding_id IS NULL AND NOT EXISTS \
                    (SELECT 1 FROM embedding_jobs j WHERE j.digest = r.embedding_digest)";
    assert_eq!(db.count(stranded).await.unwrap(), 1);
    assert_eq!(b.heal_embeddings().await.unwrap(), (0, 1));
    assert_eq!(db.count(stranded).await.unwrap(), 0);
    assert_eq!(
        links(&db).await.pop().unwrap(),
        link("rr-payments-1-late", Some("model-b"))
    );
}

/// A worker of the old model links a waiting record while `reembed` re-points it: the link made
/// meanwhile is kept (replicas on the old model find the record), whatever the order. Forced: the
/// link's transaction holds the record while `reembed` starts, and commits once `reembed` waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_made_while_reembed_runs_is_kept_for_the_old_model() {
    let db = TestDb::new().await.unwrap();
    let store = Arc::new(PgStore::new(&db.url, &PoolSettings::default()).unwrap());
    let local = Arc::new(LocalEmbedder::load(&model_dir(), None).unwrap());
    let service = |model: &'static str, mode| {
        AuditService::with_options(
            store.clone(),
            Arc::new(Named(model, local.clone())),
            mode,
            FailurePolicy::Defer,
        )
    };
    let a = service("model-a", EmbeddingMode::Inline);
    let a_deferred = service("model-a", EmbeddingMode::Deferred);
    let b = Arc::new(service("model-b", EmbeddingMode::Inline));
    let r = parse_record(Kind::Remediation, fixtures::remediation(1)).unwrap();
    a.write(vec![r], None).await.unwrap();
    let r = parse_record(Kind::Remediation, fixtures::remediation(2)).unwrap();
    a_deferred.write(vec![r], None).await.unwrap();
    assert_eq!(found(&a, "Pod restarted after OOMKill").await.len(), 1);

    // A's worker, step by step: the vector of the waiting record's job stored and the record linked,
    // in a transaction left open.
    let mut worker = db.conn().await.unwrap();
    worker
        .batch_execute(
            "BEGIN;
             INSERT INTO embeddings (digest, model, embedding)
             SELECT j.digest, j.model, (SELECT embedding FROM embeddings LIMIT 1)
             FROM embedding_jobs j WHERE j.model = 'model-a';
             UPDATE audit_records r SET embedding_id = e.id FROM embeddings e
             WHERE e.digest = r.embedding_digest AND r.embedding_id IS NULL;",
        )
        .await
        .unwrap();
    let reembed = tokio::spawn({
        let b = b.clone();
        async move { reembed_all(&b).await }
    });
    ds_tests::until("reembed waits for the worker's transaction", || async {
        db.count("pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")
            .await
            .unwrap()
            == 1
    })
    .await;
    worker.batch_execute("COMMIT").await.unwrap();
    assert_eq!(reembed.await.unwrap(), 2);

    assert_eq!(
        kept(&db).await,
        vec![
            link("rr-payments-1", Some("model-a")),
            link("rr-payments-2", Some("model-a"))
        ]
    );
    assert_eq!(found(&a, "Pod restarted after OOMKill").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reembed_command_queues_what_the_configured_model_lacks() {
    let app = ds_tests::spawn_app_with(&[("DATASTORAGE_EMBEDDING_WORKER_INTERVAL_MS", "0")])
        .await
        .unwrap();
    for n in [1, 2] {
        let r = app
            .post("/api/v1/audit/remediation", &fixtures::remediation(n))
            .await
            .unwrap();
        assert_eq!(r.status, 201);
    }
    let config = || ds_tests::test_config(&app.db.url, &[]).unwrap();
    assert_eq!(
        ds_server::reembed(config(), 100).await.unwrap(),
        0,
        "up to date"
    );
    // As if the vectors had been made by the model used before (vectors are addressed by model + text).
    let mut c = app.db.conn().await.unwrap();
    c.batch_execute("UPDATE embeddings SET model = 'previous-model', digest = sha256(digest)")
        .await
        .unwrap();
    assert_eq!(ds_server::reembed(config(), 1).await.unwrap(), 2);
    assert_eq!(
        app.db
            .count("embedding_jobs WHERE done_at IS NULL")
            .await
            .unwrap(),
        2
    );
    assert_eq!(ds_server::reembed(config(), 1).await.unwrap(), 0);
}

/// A deployment moves from the local 384-dimension model to a 768-dimension one served over the
/// OpenAI API: `migrate` with the new dimension makes its index (the old one stays), `reembed` queues
/// every record for the new model, the new service's worker embeds them with vectors of 768 numbers
/// and its searches find them, the best hit the same as before, while the old service still finds
/// them with its 384; `reembed --finish` is refused while the old service writes, then removes the
/// 384 vectors, and only the new service finds the records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_moves_from_384_to_768_dimensions_both_searchable_until_the_switch() {
    use ds_domain::ports::AuditStore;
    let old = ds_tests::spawn_app().await.unwrap();
    let texts = [
        "Pod restarted after OOMKill in payments",
        "Disk pressure evicted pods on node seven",
        "Certificate expired for the ingress gateway",
    ];
    for (n, text) in texts.iter().enumerate() {
        let mut r = fixtures::remediation(n as u32 + 1);
        r["message"] = json!(text);
        let w = old.post("/api/v1/audit/remediation", &r).await.unwrap();
        assert_eq!(w.status, 201, "{}", w.body);
    }
    let names = |body: &serde_json::Value| -> Vec<String> {
        body["results"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| h["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let search = json!({"query": "certificate expired on the gateway", "limit": 3});
    let before = old.post("/api/v1/audit/search", &search).await.unwrap();
    assert_eq!(before.status, 200, "{}", before.body);
    assert_eq!(names(&before.body).len(), 3);
    let best = names(&before.body)[0].clone();

    let openai = ds_tests::openai_server::FakeOpenAi::start().await.unwrap();
    openai.serve_model_of_dimension("wide-768", 768);
    let base_url = openai.base_url();
    let env = [
        ("DATASTORAGE_EMBEDDING_PROVIDER", "openai"),
        ("DATASTORAGE_EMBEDDING_OPENAI_BASE_URL", base_url.as_str()),
        ("DATASTORAGE_EMBEDDING_OPENAI_MODEL", "wide-768"),
        ("DATASTORAGE_EMBEDDING_DIMENSION", "768"),
        ("DATASTORAGE_EMBEDDING_WORKER_INTERVAL_MS", "20"),
        ("DATASTORAGE_MIGRATE_ON_START", "false"),
    ];
    let config = || ds_tests::test_config(&old.db.url, &env).unwrap();

    // Before `migrate` with the new dimension, `reembed` refuses and says what to run.
    let err = ds_server::reembed(config(), 100).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("768") && msg.contains("datastorage migrate"),
        "{msg}"
    );
    assert!(
        ds_server::migrate(&old.db.url, 768)
            .await
            .unwrap()
            .is_empty()
    );
    let store =
        ds_store_pg::PgStore::new(&old.db.url, &ds_store_pg::PoolSettings::default()).unwrap();
    assert_eq!(store.health().await.unwrap().vector_indexes, vec![384, 768]);

    assert_eq!(ds_server::reembed(config(), 2).await.unwrap(), 3);
    let running = ds_server::start(config()).await.unwrap();
    running.wait_until_started().await.unwrap();
    let (addr, _state) = running.spawn();
    let client = ds_tests::http_client();
    let new_search = || {
        let client = client.clone();
        let search = search.clone();
        async move {
            let r = client
                .post(format!("http://{addr}/api/v1/audit/search"))
                .json(&search)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    ds_tests::until("the new model's worker embedded every record", || async {
        names(&new_search().await).len() == 3
    })
    .await;
    // The new vectors are the new model's: 768 numbers each, next to the old ones.
    #[derive(diesel::QueryableByName)]
    struct Dims {
        #[diesel(sql_type = diesel::sql_types::Text)]
        model: String,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        dims: i32,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut c = old.db.conn().await.unwrap();
    let dims: Vec<Dims> = diesel::sql_query(
        "SELECT model, vector_dims(embedding) AS dims, count(*) AS n FROM embeddings GROUP BY 1, 2 ORDER BY 2",
    )
    .load(&mut c)
    .await
    .unwrap();
    assert_eq!(dims.len(), 2);
    assert_eq!((dims[0].dims, dims[0].n), (384, 3));
    assert_eq!(
        (dims[1].model.as_str(), dims[1].dims, dims[1].n),
        ("wide-768", 768, 3)
    );
    // Same meaning, same best hit; the old service, still running, finds what it found.
    assert_eq!(names(&new_search().await)[0], best);
    let during = old.post("/api/v1/audit/search", &search).await.unwrap();
    assert_eq!(names(&during.body), names(&before.body));
    // A vector of the old dimension is refused by the new service, as any of another dimension.
    let r = client
        .post(format!("http://{addr}/api/v1/audit/search"))
        .json(&json!({"vector": vec![0.1f32; 384]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // The old service writes one more: the switch is refused, naming the model still in use.
    let mut r = fixtures::remediation(4);
    r["message"] = json!("Certificate rotation failed on the gateway");
    let w = old.post("/api/v1/audit/remediation", &r).await.unwrap();
    assert_eq!(w.status, 201, "{}", w.body);
    let minute = std::time::Duration::from_secs(60);
    let err = ds_server::reembed_finish(config(), 100, minute)
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("all-MiniLM-L6-v2@") && msg.contains("wide-768"),
        "{msg}"
    );
    // Once every replica runs the new model: the last record queued, the old links and vectors gone.
    let (queued, switched) = ds_server::reembed_finish(config(), 100, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(queued, 1);
    assert_eq!((switched.kept_links, switched.vectors), (4, 4));
    assert_eq!(
        old.db
            .count("embeddings WHERE vector_dims(embedding) = 384")
            .await
            .unwrap(),
        0
    );
    let after = old.post("/api/v1/audit/search", &search).await.unwrap();
    assert_eq!(after.status, 200, "{}", after.body);
    assert!(names(&after.body).is_empty(), "{}", after.body);
    ds_tests::until(
        "the new model's worker embedded the last record",
        || async {
            names(&new_search().await).len() == 3
                && old
                    .db
                    .count("audit_records WHERE embedding_id IS NULL")
                    .await
                    .unwrap()
                    == 0
        },
    )
    .await;
}
