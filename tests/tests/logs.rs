//! The service's logs as it writes them (the binary's own subscriber, `telemetry::init_logging`): JSON
//! lines, one request span with correlation id, method and route, the request's line with status,
//! latency and caller; secrets never.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use ds_tests::{LogSink, TestDb, fixtures, http_client, test_config};
use serde_json::Value;

const PASSWORD: &str = "s3cret-db-password";
const API_KEY: &str = "sk-never-logged-4242";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_with_the_request_span_and_no_secret() {
    let db = TestDb::not_yet_created().await.unwrap();
    // The local cluster trusts loopback: the password is not checked, only carried.
    let url = db
        .url
        .replacen("://postgres@", &format!("://postgres:{PASSWORD}@"), 1);
    assert!(url.contains(PASSWORD), "{url}");
    let key_file = std::env::temp_dir().join(format!("ds-logs-key-{}", std::process::id()));
    std::fs::write(&key_file, API_KEY).unwrap();
    let config = test_config(
        &url,
        &[
            ("DATASTORAGE_DB_CONNECT_RETRY_MAX_MS", "50"),
            ("DATASTORAGE_LOG_FORMAT", "json"),
        ],
    )
    .unwrap();
    let sink = LogSink::default();
    let writer = sink.clone();
    ds_server::telemetry::init_logging(&config, move || writer.clone());

    let running = ds_server::start(config).await.unwrap();
    let client = http_client();
    let addr = running.http_addr;
    // Logged while waiting for the database (its error names the database, not the password).
    let ready = client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    db.create_now().await.unwrap();
    running.wait_until_started().await.unwrap();
    let (addr, _state) = running.spawn();

    let created = client
        .post(format!("http://{addr}/api/v1/audit/remediation"))
        .header("X-Correlation-ID", "log-corr-1")
        .header("Authorization", format!("Bearer {API_KEY}"))
        .json(&fixtures::remediation(1))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let mut invalid = fixtures::remediation(2);
    invalid["phase"] = serde_json::json!("Nope");
    let refused = client
        .post(format!("http://{addr}/api/v1/audit/remediation"))
        .header("X-Correlation-ID", "log-corr-2")
        .json(&invalid)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let lookup = client
        .get(format!("http://{addr}/api/v1/audit/remediation/1"))
        .header("X-Correlation-ID", "log-corr-3")
        .send()
        .await
        .unwrap();
    assert_eq!(lookup.status(), 200);

    let logs = sink.text();
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(lines.iter().any(|l| {
        l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("waiting for the database"))
            && l["fields"]["attempt"].as_u64().is_some()
    }));
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "started: the database is ready")
    );
    let request = |corr: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == "request" && l["span"]["correlation_id"] == corr)
            .unwrap_or_else(|| panic!("no request line for {corr}:\n{logs}"))
    };
    let r = request("log-corr-1");
    assert_eq!(r["level"], "INFO");
    assert_eq!(r["span"]["name"], "request");
    assert_eq!(r["span"]["method"], "POST");
    assert_eq!(r["span"]["route"], "/api/v1/audit/remediation");
    assert_eq!(r["fields"]["status"], 201);
    assert!(r["fields"]["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(r["fields"]["caller"].is_string());
    assert_eq!(r["fields"]["path"], "/api/v1/audit/remediation");
    // The outcome is said once, on the request's line: the span identifies the request.
    for once in ["status", "latency_ms", "caller"] {
        assert!(r["span"].get(once).is_none(), "{once} in the span: {r}");
    }
    assert_eq!(request("log-corr-2")["fields"]["status"], 400);
    assert_eq!(
        request("log-corr-3")["span"]["route"],
        "/api/v1/audit/{kind}/{id}"
    );
    for secret in [PASSWORD, API_KEY] {
        assert!(!logs.contains(secret), "{secret} is in the logs");
    }
    std::fs::remove_file(&key_file).unwrap();
}
