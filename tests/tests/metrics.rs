//! The metrics a running service emits, scraped after real traffic, against the catalogue
//! (`ds_server::telemetry::CATALOGUE`); and every metric the shipped alert rules, dashboard and docs
//! name is one of them and is emitted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use ds_domain::kind::Kind;
use ds_metrics::labels::{AuthFailure, ConnState, Field, ProviderFailure, Route};
use ds_metrics::{
    AUDIT_WRITES, AUTH_FAILURES, DB_POOL_CONNECTIONS, EMBEDDING_PROVIDER_ERRORS, HTTP_REQUESTS,
    Label, VALIDATION_FAILURES,
};
use ds_server::telemetry::{CATALOGUE, Type};
use ds_tests::kube_server::{FakeKubeApi, TokenInfo};
use ds_tests::openai_server::{FakeOpenAi, Script};
use ds_tests::{TestApp, fixtures, spawn_app_with};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A Prometheus text exposition: `# TYPE` per family, and every sample's name and labels.
#[derive(Debug, Default)]
struct Exposition {
    types: HashMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>)>,
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let name = rest[..eq].trim_start_matches(',').trim().to_owned();
        let after = &rest[eq + 1..];
        assert!(
            after.starts_with('"'),
            "label value of {name} is not quoted: {s}"
        );
        let mut value = String::new();
        let mut chars = after[1..].char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(e);
                    }
                }
                '"' => {
                    end = Some(i + 2);
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(name, value);
        rest = &after[end.expect("closing quote")..];
    }
    labels
}

fn parse(text: &str) -> Exposition {
    let mut e = Exposition::default();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap();
            e.types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, _value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n.to_owned(), parse_labels(l.trim_end_matches('}'))),
            None => (series.to_owned(), BTreeMap::new()),
        };
        e.samples.push((name, labels));
    }
    e
}

const WRITER: &str = "system:serviceaccount:kubernaut-system:gateway";
const READER: &str = "system:serviceaccount:kubernaut-system:console";
const SCRAPER: &str = "system:serviceaccount:monitoring:prometheus";

/// A service with Kubernetes auth and the `openai` provider (so that every metric family can appear),
/// a small burst so that the rate limit can be hit.
async fn service() -> (FakeKubeApi, FakeOpenAi, TestApp) {
    let kube = FakeKubeApi::start().await.unwrap();
    let aud = vec!["datastorage".to_owned()];
    for (token, user) in [
        ("writer-token", WRITER),
        ("reader-token", READER),
        ("scraper-token", SCRAPER),
    ] {
        kube.add_token(
            token,
            TokenInfo {
                username: user.to_owned(),
                groups: vec![],
                audiences: aud.clone(),
                expired: false,
            },
        );
    }
    kube.allow(WRITER, "create");
    kube.allow(WRITER, "get");
    kube.allow(READER, "get");
    kube.allow(SCRAPER, "metrics");
    let openai = FakeOpenAi::start().await.unwrap();
    let kubeconfig = kube.kubeconfig.display().to_string();
    let base_url = openai.base_url();
    let app = spawn_app_with(&[
        ("DATASTORAGE_AUTH_MODE", "kubernetes"),
        ("DATASTORAGE_AUTH_KUBECONFIG", &kubeconfig),
        ("DATASTORAGE_AUTH_AUDIENCES", "datastorage"),
        ("DATASTORAGE_EMBEDDING_PROVIDER", "openai"),
        ("DATASTORAGE_EMBEDDING_OPENAI_BASE_URL", &base_url),
        ("DATASTORAGE_EMBEDDING_OPENAI_MODEL", "all-minilm"),
        ("DATASTORAGE_EMBEDDING_MAX_RETRIES", "2"),
        ("DATASTORAGE_EMBEDDING_RETRY_BASE_MS", "1"),
        ("DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND", "0.001"),
        ("DATASTORAGE_RATE_LIMIT_BURST", "30"),
    ])
    .await
    .unwrap();
    (kube, openai, app)
}

async fn call(app: &TestApp, method: &str, path: &str, body: Option<Value>, token: &str) -> u16 {
    let mut req = match method {
        "GET" => app.client.get(app.url(path)),
        _ => app.client.post(app.url(path)),
    };
    if let Some(b) = body {
        req = req.json(&b);
    }
    if !token.is_empty() {
        req = req.bearer_auth(token);
    }
    app.send(req).await.unwrap().status
}

/// Traffic that exercises every metric family.
async fn traffic(app: &TestApp, openai: &FakeOpenAi) {
    let w = "writer-token";
    // The first embedding call fails once (a retry and a provider error), then succeeds.
    openai.script([Script::Status(500, None)]);
    let records = [
        ("remediation", fixtures::remediation(1)),
        ("aianalysis", fixtures::aianalysis(1)),
        ("workflow", fixtures::workflow(1)),
        ("execution", fixtures::execution(1)),
    ];
    for (kind, record) in &records {
        let status = call(
            app,
            "POST",
            &format!("/api/v1/audit/{kind}"),
            Some(record.clone()),
            w,
        )
        .await;
        assert_eq!(status, 201, "{kind}");
    }
    // A duplicate (cache hit), an unknown field, a validation failure.
    assert_eq!(
        call(
            app,
            "POST",
            "/api/v1/audit/remediation",
            Some(records[0].1.clone()),
            w
        )
        .await,
        201
    );
    let mut unknown = fixtures::remediation(2);
    unknown["futureField"] = json!("kept");
    assert_eq!(
        call(app, "POST", "/api/v1/audit/remediation", Some(unknown), w).await,
        201
    );
    let mut invalid = fixtures::remediation(3);
    invalid["phase"] = json!("Exploded");
    assert_eq!(
        call(app, "POST", "/api/v1/audit/remediation", Some(invalid), w).await,
        400
    );
    // A batch, reads, a search, an unknown route.
    let batch = json!({"records": [
        {"kind": "remediation", "record": fixtures::remediation(4)},
        {"kind": "workflow", "record": fixtures::workflow(4)},
    ]});
    assert_eq!(
        call(app, "POST", "/api/v1/audit/batch", Some(batch), w).await,
        201
    );
    assert_eq!(
        call(
            app,
            "GET",
            "/api/v1/audit/remediation/1",
            None,
            "reader-token"
        )
        .await,
        200
    );
    assert_eq!(
        call(
            app,
            "GET",
            &format!("/api/v1/audit/trail/{}", fixtures::CORRELATION),
            None,
            "reader-token"
        )
        .await,
        200
    );
    let search = json!({"query": "container ran out of memory", "limit": 3});
    assert_eq!(
        call(
            app,
            "POST",
            "/api/v1/audit/search",
            Some(search),
            "reader-token"
        )
        .await,
        200
    );
    assert_eq!(
        call(app, "GET", "/api/v1/nothing/here", None, "reader-token").await,
        404
    );
    // Refusals: no token, a reader writing, and a batch over the caller's remaining burst.
    for (token, status) in [("", 401), ("reader-token", 403)] {
        let body = Some(fixtures::remediation(5));
        assert_eq!(
            call(app, "POST", "/api/v1/audit/remediation", body, token).await,
            status
        );
    }
    let big: Vec<Value> = (0..40)
        .map(|n| json!({"kind": "remediation", "record": fixtures::remediation(100 + n)}))
        .collect();
    assert_eq!(
        call(
            app,
            "POST",
            "/api/v1/audit/batch",
            Some(json!({"records": big})),
            w
        )
        .await,
        429
    );
}

fn catalogue_type(t: Type) -> &'static str {
    match t {
        Type::Counter => "counter",
        Type::Gauge => "gauge",
        Type::Histogram => "histogram",
    }
}

/// The metric family a name in a query belongs to (`_bucket`/`_sum`/`_count` of a histogram).
fn family(name: &str) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && CATALOGUE
                .iter()
                .any(|m| m.name == base && m.kind == Type::Histogram)
        {
            return base.to_owned();
        }
    }
    name.to_owned()
}

/// Names with the metrics' prefix that are PostgreSQL roles of the docs, not metrics.
const DATABASE_ROLES: [&str; 3] = [
    "datastorage_runtime",
    "datastorage_owner",
    "datastorage_app",
];

fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("datastorage_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // `datastorage_` inside a longer word (e.g. a path) is not a metric.
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '/')
            && !DATABASE_ROLES.contains(&&tail[..end])
        {
            out.insert(family(&tail[..end]));
        }
        rest = &tail[end.max(1)..];
    }
    out
}

fn repo_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_catalogued_metric_is_emitted_with_its_type_and_labels_and_the_alerts_use_only_those()
{
    let (_kube, openai, app) = service().await;
    traffic(&app, &openai).await;

    let scrape = app
        .client
        .get(format!("http://{}/metrics", app.metrics_addr))
        .bearer_auth("scraper-token")
        .send()
        .await
        .unwrap();
    assert_eq!(scrape.status(), 200);
    let text = scrape.text().await.unwrap();
    let e = parse(&text);

    // The read replica's metrics need a streaming replica: tests/tests/read_replica.rs checks them.
    for m in CATALOGUE
        .iter()
        .filter(|m| !matches!(m.emitted, ds_server::telemetry::Emitted::ReadReplica))
    {
        let kind = catalogue_type(m.kind);
        assert_eq!(
            e.types.get(m.name).map(String::as_str),
            Some(kind),
            "{} is not emitted as a {kind}",
            m.name
        );
        let sample_name = match m.kind {
            Type::Histogram => format!("{}_bucket", m.name),
            _ => m.name.to_owned(),
        };
        let expected: BTreeSet<&str> = m.labels.iter().copied().collect();
        let series: Vec<_> = e
            .samples
            .iter()
            .filter(|(n, _)| *n == sample_name)
            .collect();
        assert!(!series.is_empty(), "{} has no sample", m.name);
        for (_, labels) in &series {
            let keys: BTreeSet<&str> = labels
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "le")
                .collect();
            assert_eq!(keys, expected, "labels of {}", m.name);
        }
        if m.kind == Type::Histogram {
            let les: BTreeSet<String> = series
                .iter()
                .filter_map(|(_, l)| l.get("le").cloned())
                .filter(|le| le != "+Inf")
                .collect();
            let want: BTreeSet<String> = m.buckets.iter().map(|b| b.to_string()).collect();
            assert_eq!(les, want, "buckets of {}", m.name);
        }
    }
    // Nothing is emitted that the catalogue does not describe.
    for name in e.types.keys() {
        assert!(
            CATALOGUE.iter().any(|m| m.name == name),
            "{name} is emitted but not in the catalogue"
        );
    }
    // The traffic shows up in the labels operators query.
    let has = |name: &str, key: &str, value: &str| {
        e.samples
            .iter()
            .any(|(n, l)| n == name && l.get(key).is_some_and(|v| v == value))
    };
    // Series named by the declarations and their label types, as the service emits them.
    let route = |r: Route| r.value().to_string();
    assert!(has(
        HTTP_REQUESTS.def.name,
        Route::NAME,
        &route(Route::matched(Some("/api/v1/audit/{kind}/{id}".into())))
    ));
    assert!(has(HTTP_REQUESTS.def.name, Route::NAME, Route::UNMATCHED));
    assert!(has(
        AUDIT_WRITES.def.name,
        Kind::NAME,
        Kind::Execution.as_str()
    ));
    assert!(has(VALIDATION_FAILURES.def.name, Field::NAME, "phase"));
    assert!(has(
        AUTH_FAILURES.def.name,
        AuthFailure::NAME,
        AuthFailure::Forbidden.as_str()
    ));
    assert!(has(
        EMBEDDING_PROVIDER_ERRORS.def.name,
        ProviderFailure::NAME,
        ProviderFailure::ServerError.as_str()
    ));
    assert!(has(
        DB_POOL_CONNECTIONS.def.name,
        ConnState::NAME,
        ConnState::InUse.as_str()
    ));
    assert!(!text.contains("writer-token") && !text.contains("scraper-token"));

    // Alerts, dashboard and docs name only catalogued metrics, and those are emitted.
    let mut files = vec![
        "deploy/monitoring/prometheusrule.yaml".to_owned(),
        "deploy/monitoring/dashboard.json".to_owned(),
        "README.md".to_owned(),
    ];
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    for entry in std::fs::read_dir(docs).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") {
            files.push(format!("docs/{name}"));
        }
    }
    for file in &files {
        let names = names_in(&repo_file(file));
        let must_name = file.contains("monitoring") || file.ends_with("operations.md");
        assert!(!must_name || !names.is_empty(), "{file} names no metric");
        for name in names {
            let Some(m) = CATALOGUE.iter().find(|m| m.name == name) else {
                panic!("{file} references {name}, which the service does not emit");
            };
            // The read replica's are checked against a streaming replica (read_replica.rs).
            assert!(
                e.types.contains_key(&name)
                    || matches!(m.emitted, ds_server::telemetry::Emitted::ReadReplica),
                "{file}: {name} was not emitted"
            );
        }
    }
    // The dashboard is valid JSON and its panels all query something.
    let dashboard: Value =
        serde_json::from_str(&repo_file("deploy/monitoring/dashboard.json")).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            !panel["targets"].as_array().unwrap().is_empty(),
            "{}",
            panel["title"]
        );
    }
}

/// GitHub's anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_runbook_link_of_the_alerts_points_at_a_troubleshooting_section() {
    let rules = repo_file("deploy/monitoring/prometheusrule.yaml");
    let doc = repo_file("docs/troubleshooting.md");
    let anchors: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("### ").or_else(|| l.strip_prefix("## ")))
        .map(anchor)
        .collect();
    let mut links = 0;
    for line in rules.lines() {
        if let Some((_, target)) = line.split_once("runbook_url: docs/troubleshooting.md#") {
            links += 1;
            assert!(
                anchors.contains(target.trim()),
                "no section #{target} in docs/troubleshooting.md"
            );
        }
    }
    assert!(links >= 10, "{links} runbook links");
    let alerts = rules.matches("- alert:").count();
    assert_eq!(alerts, links, "every alert has a runbook");
}

/// Collapses whitespace (Markdown wraps lines).
fn normalized(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn sources(dir: &std::path::Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn every_log_line_the_runbooks_quote_is_one_the_code_writes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
    let mut code = String::new();
    sources(&root, &mut code);
    let code = normalized(&code);
    let doc = normalized(&repo_file("docs/troubleshooting.md"));
    let mut quoted = 0;
    for (i, _) in doc.match_indices("log `") {
        let rest = &doc[i + 5..];
        let message = &rest[..rest.find('`').unwrap()];
        quoted += 1;
        assert!(
            code.contains(message),
            "docs/troubleshooting.md quotes log `{message}`, which no code writes"
        );
    }
    assert!(quoted >= 12, "{quoted} log lines quoted");
    let scenarios = repo_file("docs/troubleshooting.md")
        .lines()
        .filter(|l| l.starts_with("### "))
        .count();
    assert!(scenarios >= 12, "{scenarios} scenarios");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_chosen_methods_and_field_names_create_no_series() {
    let app = spawn_app_with(&[("DATASTORAGE_RATE_LIMIT_WRITES_PER_SECOND", "0")])
        .await
        .unwrap();
    // 10,000 methods of the client's own.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let methods = || async {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= 10_000 {
                break;
            }
            let m = reqwest::Method::from_bytes(format!("M{i:05}").as_bytes()).unwrap();
            let r = app
                .send(app.client.request(m, app.url("/api/v1/audit/remediation")))
                .await
                .unwrap();
            assert_eq!(r.status, 405);
        }
    };
    futures_util::future::join_all((0..8).map(|_| methods())).await;
    // 10,000 field names of the client's own, each a violation (NUL in an unknown field).
    for chunk in 0..10 {
        let records: Vec<Value> = (0..1000)
            .map(|i| {
                let mut r = fixtures::remediation(chunk * 1000 + i);
                r[format!("x-field-{chunk}-{i}")] = json!("nul\u{0}here");
                json!({"kind": "remediation", "record": r})
            })
            .collect();
        let r = app
            .post("/api/v1/audit/batch", &json!({"records": records}))
            .await
            .unwrap();
        assert_eq!(r.status, 400);
    }
    let text = app.metrics_text().await.unwrap();
    let series = |family: &str| {
        text.lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .collect::<Vec<_>>()
    };
    let requests = series("datastorage_http_requests_total");
    let failures = series("datastorage_validation_failures_total");
    assert!(requests.len() <= 10, "{requests:#?}");
    assert!(
        requests
            .iter()
            .any(|l| l.contains("method=\"OTHER\"") && l.ends_with(" 10000")),
        "{requests:#?}"
    );
    assert_eq!(failures.len(), 1, "{failures:#?}");
    assert!(
        failures[0].contains("field=\"unknown\"") && failures[0].ends_with(" 10000"),
        "{failures:#?}"
    );
}
