//! A real HTTPS server on loopback that speaks the Kubernetes TokenReview and SubjectAccessReview APIs
//! (JSON over HTTP, as the API server does), with a certificate authority made for the test and a
//! kubeconfig that points the service's real kube client at it.
//!
//! Tokens and RBAC are tables the test fills in; every review is counted; the server can be made to
//! fail (5xx) to test that API server failures are 503s and are not cached.

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::{Context, Result};
use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The token the service itself presents to the API server (from the kubeconfig).
pub const SERVICE_TOKEN: &str = "datastorage-service-account-token";

/// A token the fake API server knows.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub username: String,
    pub groups: Vec<String>,
    /// Audiences the token is valid for (empty: the API server's default).
    pub audiences: Vec<String>,
    pub expired: bool,
}

#[derive(Default)]
struct State {
    tokens: Mutex<HashMap<String, TokenInfo>>,
    /// (username, verb) pairs allowed on auditrecords; (username, "legalholds/<verb>") on legal
    /// holds; (username, "metrics") for `/metrics`.
    rbac: Mutex<HashSet<(String, String)>>,
    down: Mutex<Option<u16>>,
    token_reviews: AtomicUsize,
    access_reviews: AtomicUsize,
    /// Requests that did not carry the service's own credentials.
    unauthenticated_calls: AtomicUsize,
}

pub struct FakeKubeApi {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    dir: PathBuf,
    state: web::Data<State>,
    handle: actix_web::dev::ServerHandle,
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl FakeKubeApi {
    pub async fn start() -> Result<Self> {
        ds_embed_openai::install_tls_provider();
        // A CA of our own, and a server certificate for 127.0.0.1 signed by it.
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "fake-kubernetes-ca");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let leaf_key = KeyPair::generate()?;
        let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned()])?;
        leaf_params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
        let tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::from(leaf_key),
            )?;

        let state = web::Data::new(State::default());
        let data = state.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route(
                    "/apis/authentication.k8s.io/v1/tokenreviews",
                    web::post().to(token_review),
                )
                .route(
                    "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                    web::post().to(access_review),
                )
        })
        .workers(1)
        .disable_signals()
        .bind_rustls_0_23("127.0.0.1:0", tls)?;
        let addr = *server.addrs().first().context("no address")?;
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);

        let dir = std::env::temp_dir().join(format!("ds-fake-kube-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = dir.join("kubeconfig");
        let ca_b64 = base64::engine::general_purpose::STANDARD.encode(ca_cert.pem());
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {
                "server": format!("https://{addr}"),
                "certificate-authority-data": ca_b64,
            }}],
            "users": [{"name": "datastorage", "user": {"token": SERVICE_TOKEN}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "datastorage"}}],
            "current-context": "fake",
        });
        std::fs::write(&kubeconfig, serde_json::to_vec_pretty(&config)?)?;
        Ok(FakeKubeApi {
            addr,
            kubeconfig,
            dir,
            state,
            handle,
        })
    }

    pub fn add_token(&self, token: &str, info: TokenInfo) {
        self.state
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.to_owned(), info);
    }

    /// Allows `username` the `verb` (`create`, `get`) on auditrecords, `legalholds/<verb>` on legal
    /// holds, or `metrics` for `/metrics`.
    pub fn allow(&self, username: &str, verb: &str) {
        self.state
            .rbac
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((username.to_owned(), verb.to_owned()));
    }

    /// `Some(status)`: every review fails with it.
    pub fn set_down(&self, status: Option<u16>) {
        *self.state.down.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }

    pub fn token_reviews(&self) -> usize {
        self.state.token_reviews.load(Ordering::SeqCst)
    }

    pub fn access_reviews(&self) -> usize {
        self.state.access_reviews.load(Ordering::SeqCst)
    }

    pub fn unauthenticated_calls(&self) -> usize {
        self.state.unauthenticated_calls.load(Ordering::SeqCst)
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

/// The API server's own checks: our credentials, and the failure switch.
fn gate(state: &State, req: &HttpRequest) -> Option<HttpResponse> {
    let expected = format!("Bearer {SERVICE_TOKEN}");
    if req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        != Some(expected.as_str())
    {
        state.unauthenticated_calls.fetch_add(1, Ordering::SeqCst);
        return Some(HttpResponse::Unauthorized().json(json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "Unauthorized", "reason": "Unauthorized", "code": 401
        })));
    }
    let down = *state.down.lock().unwrap_or_else(|p| p.into_inner());
    down.map(|code| {
        HttpResponse::build(
            actix_web::http::StatusCode::from_u16(code)
                .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR),
        )
        .json(json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "etcdserver: request timed out", "reason": "InternalError", "code": code
        }))
    })
}

async fn token_review(
    state: web::Data<State>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    state.token_reviews.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = gate(&state, &req) {
        return r;
    }
    let token = body["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<String> = body["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let known = state
        .tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(token)
        .cloned();
    let status = match known {
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
        Some(t) if t.expired => json!({"authenticated": false, "error": "token has expired"}),
        Some(t) => {
            // As the API server does: with audiences asked for, the token must be for one of them.
            let granted: Vec<&String> = if wanted.is_empty() {
                t.audiences.iter().collect()
            } else {
                wanted.iter().filter(|w| t.audiences.contains(w)).collect()
            };
            if !wanted.is_empty() && granted.is_empty() {
                json!({"authenticated": false, "error": "token audiences do not match"})
            } else {
                json!({
                    "authenticated": true,
                    "user": {"username": t.username, "uid": "u-1", "groups": t.groups},
                    "audiences": granted,
                })
            }
        }
    };
    HttpResponse::Created().json(json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": body["spec"],
        "status": status,
    }))
}

async fn access_review(
    state: web::Data<State>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    state.access_reviews.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = gate(&state, &req) {
        return r;
    }
    let spec = &body["spec"];
    let user = spec["user"].as_str().unwrap_or_default().to_owned();
    let res = &spec["resourceAttributes"];
    let verb = if res.is_object() {
        let verb = res["verb"].as_str().unwrap_or_default();
        if res["group"] != ds_auth_kube::API_GROUP {
            None
        } else if res["resource"] == ds_auth_kube::RESOURCE {
            Some(verb.to_owned())
        } else if res["resource"] == ds_auth_kube::HOLDS_RESOURCE {
            Some(format!("{}/{verb}", ds_auth_kube::HOLDS_RESOURCE))
        } else {
            None
        }
    } else {
        let nr = &spec["nonResourceAttributes"];
        (nr["path"] == "/metrics" && nr["verb"] == "get").then(|| "metrics".to_owned())
    };
    let allowed = verb.is_some_and(|v| {
        state
            .rbac
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(user, v))
    });
    HttpResponse::Created().json(json!({
        "kind": "SubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": {"allowed": allowed, "reason": if allowed { "RBAC: allowed" } else { "" }},
    }))
}
