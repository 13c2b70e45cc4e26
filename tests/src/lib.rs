//! Test support: a fresh PostgreSQL database per test, and the real service started on port 0.
//!
//! Databases: the first test to need one builds a migrated template database (under an advisory lock,
//! so parallel test processes build it once); every test then gets `CREATE DATABASE … TEMPLATE …`, its
//! own, dropped when the [`TestDb`] is dropped.
//!
//! Where PostgreSQL comes from: `DATABASE_URL` (an admin connection to a server with pgvector; `cargo
//! xtask test` starts one and sets it), or, with `DATASTORAGE_TEST_DB=docker`, a pgvector container from
//! testcontainers-modules (machines with a Docker engine only).

pub mod cluster;
pub mod kube_server;
pub mod log;
pub mod openai_server;
pub mod raw_http;
pub mod replica;
pub mod tls_postgres;

use anyhow::{Context, Result};
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use ds_server::config::Config;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::sync::OnceCell;

/// An advisory lock key for building the template.
const TEMPLATE_LOCK: i64 = 0x7465_7374_7470_6c00;

/// Replaces the database name of a `postgres://` URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

async fn admin_url() -> Result<String> {
    static ADMIN: OnceCell<String> = OnceCell::const_new();
    ADMIN
        .get_or_try_init(|| async {
            if std::env::var("DATASTORAGE_TEST_DB").is_ok_and(|v| v == "docker") {
                return docker_admin_url().await;
            }
            std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()).context(
                "DATABASE_URL is not set: run the tests through `cargo xtask test` (it starts PostgreSQL with \
                 pgvector), set DATABASE_URL to an admin connection of a server with pgvector, or set \
                 DATASTORAGE_TEST_DB=docker on a machine with Docker",
            )
        })
        .await
        .cloned()
}

#[cfg(not(feature = "docker"))]
async fn docker_admin_url() -> Result<String> {
    anyhow::bail!(
        "DATASTORAGE_TEST_DB=docker needs the tests built with `--features ds-tests/docker`: run `cargo xtask test`, which adds it"
    )
}

#[cfg(feature = "docker")]
async fn docker_admin_url() -> Result<String> {
    use testcontainers_modules::postgres::Postgres;
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    use testcontainers_modules::testcontainers::{ContainerAsync, ImageExt};
    static CONTAINER: OnceCell<ContainerAsync<Postgres>> = OnceCell::const_new();
    let node = CONTAINER
        .get_or_try_init(|| async {
            Postgres::default()
                .with_name("pgvector/pgvector")
                .with_tag("0.8.0-pg15")
                .start()
                .await
                .context("DATASTORAGE_TEST_DB=docker: could not start the pgvector container (is a Docker engine running and reachable?)")
        })
        .await?;
    let port = node.get_host_port_ipv4(5432).await?;
    Ok(format!(
        "postgres://postgres:postgres@127.0.0.1:{port}/postgres"
    ))
}

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    exists: bool,
}

/// The login role the service runs as in the tests: a member of `datastorage_runtime` (which the
/// migrations create and grant), so it may read and append records but not change or delete them.
pub const RUNTIME_ROLE: &str = "datastorage_app";

/// A database of one test's own, migrated, dropped on drop.
pub struct TestDb {
    /// As the owner (a superuser): migrations, assertions, tampering.
    pub url: String,
    /// As the runtime role [`RUNTIME_ROLE`]: what the service connects with.
    pub runtime_url: String,
    name: String,
    admin: String,
}

impl TestDb {
    pub async fn new() -> Result<Self> {
        let admin = admin_url().await?;
        let template = template_name();
        let mut conn = AsyncPgConnection::establish(&admin)
            .await
            .with_context(|| format!("connecting to {admin}"))?;
        conn.batch_execute(&format!("SELECT pg_advisory_lock({TEMPLATE_LOCK})"))
            .await?;
        let built = ensure_template(&mut conn, &admin, &template).await;
        conn.batch_execute(&format!("SELECT pg_advisory_unlock({TEMPLATE_LOCK})"))
            .await?;
        built?;
        Self::create(conn, admin, &format!("TEMPLATE {template}")).await
    }

    /// A database of its own with no migration applied (for tests of migrating and of start-up).
    pub async fn empty() -> Result<Self> {
        let admin = admin_url().await?;
        let conn = AsyncPgConnection::establish(&admin)
            .await
            .with_context(|| format!("connecting to {admin}"))?;
        Self::create(conn, admin, "").await
    }

    async fn create(mut conn: AsyncPgConnection, admin: String, options: &str) -> Result<Self> {
        let db = Self::named(admin);
        conn.batch_execute(&format!("CREATE DATABASE {} {options}", db.name))
            .await?;
        Ok(db)
    }

    fn named(admin: String) -> Self {
        let name = format!("ds_test_{}", uuid::Uuid::new_v4().simple());
        TestDb {
            url: with_database(&admin, &name),
            runtime_url: with_user(&with_database(&admin, &name), RUNTIME_ROLE, RUNTIME_ROLE),
            name,
            admin,
        }
    }

    /// The URL of a database that does not exist yet (for tests of a database that comes up late);
    /// [`TestDb::create_now`] creates it, empty.
    pub async fn not_yet_created() -> Result<Self> {
        Ok(Self::named(admin_url().await?))
    }

    pub async fn create_now(&self) -> Result<()> {
        let mut conn = AsyncPgConnection::establish(&self.admin).await?;
        conn.batch_execute(&format!("CREATE DATABASE {}", self.name))
            .await?;
        Ok(())
    }

    /// A connection to this test's database, for assertions on what is stored.
    pub async fn conn(&self) -> Result<AsyncPgConnection> {
        Ok(AsyncPgConnection::establish(&self.url).await?)
    }

    /// `SELECT count(*) FROM <table>`.
    pub async fn count(&self, table: &str) -> Result<i64> {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut c = self.conn().await?;
        Ok(
            diesel::sql_query(format!("SELECT count(*) AS n FROM {table}"))
                .get_result::<N>(&mut c)
                .await?
                .n,
        )
    }
}

/// The `name` column (text) of every row `sql` answers, in order; panics on a failed query.
#[allow(clippy::expect_used)] // test helper: a failed query is a failed test
pub async fn names(c: &mut AsyncPgConnection, sql: &str) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    diesel::sql_query(sql)
        .load::<Name>(c)
        .await
        .expect("the query of names")
        .into_iter()
        .map(|n| n.name)
        .collect()
}

/// Replaces the user and password of a `postgres://` URL.
pub fn with_user(url: &str, user: &str, password: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let host = rest.rfind('@').map_or(rest, |at| &rest[at + 1..]);
    format!("{}{user}:{password}@{host}", &url[..scheme_end])
}

/// The template's name changes with the set of migrations, so a new migration gets a new template.
/// The template's name: a digest of the migrations' versions and of their SQL as the source tree
/// has it, so that an edited migration gets a template of its own.
fn template_name() -> String {
    let mut key = ds_store_pg::known_migrations().join(",").into_bytes();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .flat_map(|e| [e.path().join("up.sql"), e.path().join("down.sql")])
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    for f in files {
        key.extend(std::fs::read(&f).unwrap_or_default());
    }
    let digest = ds_domain::digest::sha256(&key);
    format!("ds_template_{}", hex_prefix(&digest))
}

fn hex_prefix(d: &[u8]) -> String {
    d.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

async fn ensure_template(conn: &mut AsyncPgConnection, admin: &str, template: &str) -> Result<()> {
    let exists = diesel::sql_query(format!(
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = '{template}') AS exists"
    ))
    .get_result::<Exists>(conn)
    .await?
    .exists;
    if exists {
        return Ok(());
    }
    let building = format!("{template}_building");
    conn.batch_execute(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
        .await?;
    conn.batch_execute(&format!("CREATE DATABASE {building}"))
        .await?;
    ds_store_pg::run_migrations(&with_database(admin, &building))
        .await
        .context("migrating the template database")?;
    // The search index of the local model's vectors, as `datastorage migrate` makes it.
    ds_store_pg::ensure_vector_index(&with_database(admin, &building), 384)
        .await
        .context("making the template's vector index")?;
    // The runtime role exists once the migrations ran; its login member belongs to the cluster.
    conn.batch_execute(&format!(
        "DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{RUNTIME_ROLE}') THEN
                CREATE ROLE {RUNTIME_ROLE} LOGIN PASSWORD '{RUNTIME_ROLE}' IN ROLE datastorage_runtime;
            END IF;
        END $$"
    ))
    .await?;
    conn.batch_execute(&format!("ALTER DATABASE {building} RENAME TO {template}"))
        .await?;
    Ok(())
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread of our own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut c) = AsyncPgConnection::establish(&admin).await {
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A log sink for one test process (nextest runs each test in its own process): install it as the
/// subscriber's writer, read what was logged with [`LogSink::text`].
#[derive(Clone, Default)]
pub struct LogSink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogSink {
    pub fn text(&self) -> String {
        let bytes = match self.0.lock() {
            Ok(b) => b.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock() {
            Ok(mut b) => b.extend_from_slice(buf),
            Err(poisoned) => poisoned.into_inner().extend_from_slice(buf),
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The local model's directory.
pub fn model_dir() -> PathBuf {
    std::env::var_os("DATASTORAGE_EMBEDDING_LOCAL_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/models/all-MiniLM-L6-v2")
        })
}

/// The real service on an ephemeral port, over its own database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub db: TestDb,
    pub client: reqwest::Client,
    pub state: ds_http::AppState,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs JSON; returns status, headers and the parsed body (Null when the body is not JSON).
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Result<Reply> {
        self.send(self.client.post(self.url(path)).json(body)).await
    }

    pub async fn get(&self, path: &str) -> Result<Reply> {
        self.send(self.client.get(self.url(path))).await
    }

    /// The `embeddingStatus` of record `id` of `kind` as `GET` answers it.
    pub async fn embedding_status(&self, kind: &str, id: i64) -> Result<serde_json::Value> {
        Ok(self.get(&format!("/api/v1/audit/{kind}/{id}")).await?.body["embeddingStatus"].clone())
    }

    /// The metrics listener's exposition text (unauthenticated scrape).
    pub async fn metrics_text(&self) -> Result<String> {
        Ok(self
            .client
            .get(format!("http://{}/metrics", self.metrics_addr))
            .send()
            .await?
            .text()
            .await?)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<Reply> {
        let res = req.send().await?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok(Reply {
            status,
            headers,
            body,
        })
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The configuration of a test service over `database_url` (ports 0, the local model, 2 HTTP workers,
/// 8 connections), with `extra` keys over it.
pub fn test_config(database_url: &str, extra: &[(&str, &str)]) -> Result<Config> {
    let env = test_env(database_url, extra);
    Ok(Config::from_lookup(&|k| env.get(k).cloned())?)
}

/// The `DATASTORAGE_*` variables of [`test_config`] (for a service in a process of its own).
pub fn test_env(database_url: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = HashMap::from([
        ("DATASTORAGE_DATABASE_URL".into(), database_url.to_owned()),
        (
            "DATASTORAGE_LOG_SIGNING_KEY_FILE".into(),
            log_key().path.display().to_string(),
        ),
        // The sequencer and the checkpoints at test speed.
        ("DATASTORAGE_LOG_INTEGRATE_INTERVAL_MS".into(), "50".into()),
        (
            "DATASTORAGE_LOG_CHECKPOINT_INTERVAL_MS".into(),
            "100".into(),
        ),
        ("DATASTORAGE_HTTP_ADDR".into(), "127.0.0.1:0".into()),
        ("DATASTORAGE_METRICS_ADDR".into(), "127.0.0.1:0".into()),
        (
            "DATASTORAGE_EMBEDDING_LOCAL_MODEL_DIR".into(),
            model_dir().display().to_string(),
        ),
        ("DATASTORAGE_HTTP_WORKERS".into(), "2".into()),
        ("DATASTORAGE_DB_POOL_SIZE".into(), "8".into()),
    ]);
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

/// The checkpoint signing key of this test process's services.
pub struct LogKey {
    /// The private key's file.
    pub path: PathBuf,
    /// Its verifier key.
    pub verifier_key: String,
}

/// One signing key per test process, in a file of its own.
#[allow(clippy::expect_used)] // test helper: without a key file no service can start
pub fn log_key() -> &'static LogKey {
    static KEY: std::sync::OnceLock<LogKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let seed = *uuid::Uuid::new_v4().as_bytes();
        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(&seed);
        bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        let (private, verifier_key) =
            ds_tlog::note::generate_key(ds_server::config::DEFAULT_LOG_ORIGIN, bytes)
                .expect("a valid key name");
        let path = std::env::temp_dir().join(format!(
            "ds-test-log-key-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, private).expect("writing the test signing key");
        LogKey { path, verifier_key }
    })
}

/// Starts the service as `datastorage serve` would, with extra configuration keys; it connects as
/// the runtime role.
pub async fn spawn_app_with(extra: &[(&str, &str)]) -> Result<TestApp> {
    let db = TestDb::new().await?;
    let running = ds_server::start(test_config(&db.runtime_url, extra)?).await?;
    running.wait_until_started().await?;
    let metrics_addr = running.metrics_addr;
    let (addr, state) = running.spawn();
    Ok(TestApp {
        addr,
        metrics_addr,
        db,
        client: http_client(),
        state,
    })
}

/// Polls `check` (every 10 ms, at most 20 s) until it holds; panics naming `what` after that.
pub async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..2000 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

/// An HTTP client for tests (after installing the process's TLS provider, which reqwest needs).
pub fn http_client() -> reqwest::Client {
    ds_embed_openai::install_tls_provider();
    reqwest::Client::new()
}

pub async fn spawn_app() -> Result<TestApp> {
    spawn_app_with(&[]).await
}

/// Valid records of each kind with every field set; `n` varies the content so records differ.
/// Store-level write requests for the store tests (the service builds these from HTTP requests).
pub mod writes {
    use ds_domain::digest::embedding_digest;
    use ds_domain::kind::Kind;
    use ds_domain::ports::{NewEmbedding, WriteRequest};
    use ds_domain::{ValidRecord, parse_record};

    /// The remediation record of [`super::fixtures::remediation`] number `n`, validated.
    #[allow(clippy::expect_used)] // test helper: a fixture that does not validate is a failed test
    pub fn record(n: u32) -> ValidRecord {
        parse_record(Kind::Remediation, super::fixtures::remediation(n)).expect("fixture is valid")
    }

    /// A write of `records` with a new `dim`-dimensional vector (all 0.5) of model `test-model` for
    /// each record's embedding text.
    pub fn request(records: Vec<ValidRecord>, dim: usize) -> WriteRequest {
        let digests: Vec<_> = records
            .iter()
            .map(|r| embedding_digest("test-model", &r.embedding_text))
            .collect();
        let new_embeddings = digests
            .iter()
            .map(|d| NewEmbedding {
                digest: *d,
                model: "test-model".into(),
                vector: vec![0.5; dim],
            })
            .collect();
        WriteRequest {
            records,
            embedding_digests: digests,
            new_embeddings,
            jobs: Vec::new(),
            idempotency: None,
        }
    }
}

pub mod fixtures {
    use serde_json::{Value, json};

    pub const CORRELATION: &str = "rr-2025-10-06-abc123";

    pub fn remediation(n: u32) -> Value {
        json!({
            "name": format!("rr-payments-{n}"), "namespace": "payments", "phase": "Processing",
            "message": format!("Pod restarted after OOMKill #{n}"),
            "createdAt": "2025-10-06T10:00:46.123456Z", "startedAt": "2025-10-06T10:00:47.000001Z",
            "completedAt": "2025-10-06T10:01:00.000000Z", "correlationId": CORRELATION,
            "signalType": "prometheus", "signalName": "KubePodOOMKilled", "signalNamespace": "monitoring",
            "targetType": "deployment", "targetName": "checkout-api", "targetNamespace": "payments",
            "environment": "production", "priority": "P1",
            "fingerprint": "sha256:ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789",
            "reason": "memory limit exceeded", "labels": {"app": "checkout", "team": "payments"},
            "originalPayload": "eyJhbGVydCI6Im9vbSJ9"
        })
    }

    pub fn aianalysis(n: u32) -> Value {
        json!({
            "name": format!("ai-payments-{n}"), "namespace": "payments", "phase": "Completed",
            "createdAt": "2025-10-06T10:02:00.000000Z", "correlationId": CORRELATION,
            "remediationRequestRef": format!("rr-payments-{n}"), "signalType": "prometheus",
            "signalContext": {"pod": "checkout-api-7d9f"}, "llmProvider": "local", "llmModel": "llama-3-8b",
            "temperature": 0.2, "rootCause": "The container's memory limit is below its working set",
            "confidence": 0.87, "recommendedAction": "Raise the memory limit to 1Gi", "requiresApproval": true,
            "investigationId": "inv-42", "tokensUsed": 1234, "investigationTimeSeconds": 12
        })
    }

    pub fn workflow(n: u32) -> Value {
        json!({
            "name": format!("wf-payments-{n}"), "namespace": "payments", "phase": "Processing",
            "createdAt": "2025-10-06T10:03:00.000000Z", "correlationId": CORRELATION,
            "remediationRequestRef": format!("rr-payments-{n}"), "workflowName": "increase-memory", "stepCount": 3,
            "aiAnalysisRef": format!("ai-payments-{n}"), "isAutoApproved": false, "requiresApproval": true,
            "currentStep": 2, "completedCount": 1, "failedCount": 0, "skippedCount": 1,
            "stepStatuses": [
                {"name": "patch-limits", "phase": "Completed", "startedAt": "2025-10-06T10:03:01.000000Z",
                 "completedAt": "2025-10-06T10:03:02.000000Z", "retryCount": 0, "message": "patched"},
                {"name": "rollout", "phase": "Processing", "retryCount": 1}
            ]
        })
    }

    pub fn execution(n: u32) -> Value {
        json!({
            "name": format!("ex-payments-{n}"), "namespace": "payments", "phase": "Completed",
            "createdAt": "2025-10-06T10:04:00.000000Z", "correlationId": CORRELATION,
            "workflowExecutionRef": format!("wf-payments-{n}"), "actionType": "scale_deployment",
            "targetType": "deployment", "targetName": "checkout-api", "targetNamespace": "payments",
            "stepName": "rollout", "actionData": {"replicas": "3"}, "enableDryRun": true, "enableValidation": true,
            "enableRollback": true, "isRolledBack": false, "actionResult": "success", "resourceVersion": "12345",
            "previousVersion": "12344", "dryRunResult": "would scale to 3", "validationResult": "ok",
            "validationWarnings": ["PDB allows 1 disruption"]
        })
    }

    pub fn of(kind: &str, n: u32) -> Value {
        match kind {
            "remediation" => remediation(n),
            "aianalysis" => aianalysis(n),
            "workflow" => workflow(n),
            _ => execution(n),
        }
    }
}
