//! A real HTTP server on loopback that speaks OpenAI's `POST /v1/embeddings` wire format, backed by the
//! local model (so its vectors are the `local` provider's), with scripted failures for the retry,
//! timeout, circuit and malformed-answer paths.
//!
//! It answers `data` in reverse index order, as the API allows, so a client that ignores `index` gets
//! the wrong vectors.

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use anyhow::{Context, Result};
use ds_domain::ports::Embedder;
use ds_embed_local::LocalEmbedder;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// What the server does with one request.
pub enum Script {
    /// Embed with the local model.
    Ok,
    /// Answer this status with an OpenAI error body, and `Retry-After` when given.
    Status(u16, Option<&'static str>),
    /// `200` with a body that is not JSON.
    Malformed,
    /// `200` with vectors of this many numbers.
    Dimension(usize),
    /// Never answer.
    Hang,
    /// Answer (as `Ok`) only once the sender fires or is dropped.
    Hold(oneshot::Receiver<()>),
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub inputs: Vec<String>,
    pub model: String,
    pub dimensions: Option<u64>,
    pub authorization: Option<String>,
}

struct State {
    model: LocalEmbedder,
    script: Mutex<VecDeque<Script>>,
    /// Used when the script is empty: `None` embeds, `Some(status)` fails every request.
    down: Mutex<Option<u16>>,
    seen: Mutex<Vec<Seen>>,
    arrivals: mpsc::UnboundedSender<usize>,
    /// A request with an input containing this is refused with 400, as a real provider refuses an
    /// input over its context length.
    refuse: Mutex<Option<String>>,
    /// Models served with vectors of another dimension: the local model's vector repeated to that
    /// length (its cosine similarities unchanged), as a wider model of the same meaning.
    widths: Mutex<Vec<(String, usize)>>,
}

/// The running server.
pub struct FakeOpenAi {
    pub addr: SocketAddr,
    state: Arc<State>,
    arrivals: tokio::sync::Mutex<mpsc::UnboundedReceiver<usize>>,
    handle: actix_web::dev::ServerHandle,
}

impl FakeOpenAi {
    pub async fn start() -> Result<Self> {
        let model = LocalEmbedder::load(&crate::model_dir(), None)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(State {
            model,
            script: Mutex::new(VecDeque::new()),
            down: Mutex::new(None),
            seen: Mutex::new(Vec::new()),
            arrivals: tx,
            refuse: Mutex::new(None),
            widths: Mutex::new(Vec::new()),
        });
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::JsonConfig::default().limit(64 << 20))
                .route("/v1/embeddings", web::post().to(embeddings))
        })
        .workers(2)
        .disable_signals()
        .bind("127.0.0.1:0")?;
        let addr = *server.addrs().first().context("no address")?;
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(FakeOpenAi {
            addr,
            state,
            arrivals: tokio::sync::Mutex::new(rx),
            handle,
        })
    }

    /// The base URL to configure (`http://127.0.0.1:PORT/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues what the next requests get, in order.
    pub fn script(&self, steps: impl IntoIterator<Item = Script>) {
        self.state
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(steps);
    }

    /// `Some(status)`: every unscripted request fails with it; `None`: back to embedding.
    pub fn set_down(&self, status: Option<u16>) {
        *self.state.down.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }

    /// `Some(text)`: any request with an input containing `text` is answered 400 (the whole request,
    /// as providers do); `None`: no input is refused.
    pub fn refuse_inputs_containing(&self, text: Option<&str>) {
        *self.state.refuse.lock().unwrap_or_else(|p| p.into_inner()) = text.map(str::to_owned);
    }

    /// Serves `model` with vectors of `dimension` numbers: the local model's, repeated to that length
    /// (so that similar texts stay similar). Other models get the local model's 384.
    pub fn serve_model_of_dimension(&self, model: &str, dimension: usize) {
        self.state
            .widths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((model.to_owned(), dimension));
    }

    /// The requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until the next request has arrived; returns its number (0-based).
    pub async fn next_arrival(&self) -> Option<usize> {
        self.arrivals.lock().await.recv().await
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

fn error(status: u16, retry_after: Option<&str>, message: &str) -> HttpResponse {
    let code = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = HttpResponse::build(code);
    if let Some(v) = retry_after {
        r.insert_header(("Retry-After", v));
    }
    r.json(
        json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}}),
    )
}

async fn embeddings(
    state: web::Data<State>,
    req: HttpRequest,
    body: web::Json<Value>,
) -> HttpResponse {
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let seen = Seen {
        inputs: inputs.clone(),
        model: body["model"].as_str().unwrap_or_default().to_owned(),
        dimensions: body["dimensions"].as_u64(),
        authorization: req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    let number = {
        let mut all = state.seen.lock().unwrap_or_else(|p| p.into_inner());
        all.push(seen);
        all.len() - 1
    };
    let _ = state.arrivals.send(number);
    let step = state
        .script
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop_front();
    let down = *state.down.lock().unwrap_or_else(|p| p.into_inner());
    let refused = state
        .refuse
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .is_some_and(|r| inputs.iter().any(|i| i.contains(&r)));
    if refused {
        return error(
            400,
            None,
            "This model's maximum context length is 8192 tokens; your input is longer.",
        );
    }
    let step = match (step, down) {
        (Some(s), _) => s,
        (None, Some(status)) => Script::Status(status, None),
        (None, None) => Script::Ok,
    };
    let vectors = match step {
        Script::Status(status, retry_after) => {
            return error(status, retry_after, "scripted failure");
        }
        Script::Malformed => {
            return HttpResponse::Ok()
                .content_type("application/json")
                .body("{\"object\": \"list\", \"data\": [oops");
        }
        Script::Hang => {
            std::future::pending::<()>().await;
            return HttpResponse::InternalServerError().finish();
        }
        Script::Dimension(n) => inputs.iter().map(|_| vec![0.5f32; n]).collect(),
        Script::Hold(release) => {
            let _ = release.await;
            match state.model.embed(inputs.clone()).await {
                Ok(v) => v,
                Err(e) => return error(500, None, &e.to_string()),
            }
        }
        Script::Ok => {
            if inputs.is_empty() {
                return error(400, None, "input must not be empty");
            }
            let width = state
                .widths
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|(m, _)| body["model"] == m.as_str())
                .map(|(_, d)| *d);
            match state.model.embed(inputs.clone()).await {
                Ok(v) => match width {
                    Some(d) => v
                        .into_iter()
                        .map(|x| (0..d).map(|i| x[i % x.len()]).collect())
                        .collect(),
                    None => v,
                },
                Err(e) => return error(500, None, &e.to_string()),
            }
        }
    };
    let tokens: usize = inputs.iter().map(|t| t.split_whitespace().count()).sum();
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .rev()
        .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
        .collect();
    HttpResponse::Ok().json(json!({
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}
