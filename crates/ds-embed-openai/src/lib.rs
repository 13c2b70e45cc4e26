//! The `openai` embedding provider: any OpenAI-compatible `POST {base}/embeddings` endpoint (OpenAI,
//! Azure-compatible gateways, Ollama, vLLM, LocalAI) through async-openai.
//!
//! - Each call: at most [`OpenAiSettings::max_batch`] texts per HTTP request, per-attempt timeout,
//!   retries with exponential backoff and full jitter on 429/5xx/timeouts/connection failures,
//!   `Retry-After` honoured, the whole call bounded by a time budget ([`transport`]).
//! - A circuit breaker ([`breaker`]) stops calling a provider that keeps failing: calls fail at once
//!   (`EmbedError::Unavailable`, so policy `defer` commits the record as pending) until the cool-down
//!   ends, then one trial call decides.
//! - Answers are checked: one vector per text, in `index` order, of the configured dimension, finite,
//!   non-zero; vectors are L2-normalised (Ollama's are not).
//! - The API key never appears in logs, errors or `Debug` output.
//!
//! Metrics: `datastorage_embedding_provider_errors_total{provider="openai",kind}` (per failed attempt,
//! kinds in [`FailureKind`]), `datastorage_embedding_provider_retries_total{provider}`,
//! `datastorage_embedding_circuit_open{provider}` (1 while open).

pub mod breaker;
pub mod transport;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::embeddings::{CreateEmbeddingRequestArgs, EmbeddingInput};
use async_trait::async_trait;
use breaker::{Breaker, Permit, State};
use ds_domain::ports::{EmbedError, Embedder, ProviderHealth};
use std::sync::Mutex;
use std::time::{Duration, Instant};
pub use transport::{FailureKind, RetryPolicy, TransportError};

/// The `provider` label of this adapter's metrics.
pub(crate) const OPENAI: ds_metrics::labels::Provider = ds_metrics::labels::Provider("openai");
use transport::{RetryingTransport, count_failure};

/// Installs rustls' ring provider as the process default; later calls do nothing. Every reqwest client
/// of this process needs it first: the workspace builds reqwest with `rustls-no-provider` (one TLS
/// stack, no aws-lc, no OpenSSL), and reqwest panics when it builds a client without a provider.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An API key: checked to be sendable as a header, never printed.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Trims surrounding whitespace (a key file's trailing newline); refuses characters that cannot go
    /// in an HTTP header. The error never contains the key.
    pub fn new(raw: &str) -> Result<Self, OpenAiError> {
        let key = raw.trim();
        if key.is_empty() || !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(OpenAiError::Setting {
                setting: "api key",
                reason: "must be non-empty printable ASCII without spaces".into(),
            });
        }
        Ok(ApiKey(key.to_owned()))
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// How to reach and call the provider.
#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    /// The API base, including `/v1` (e.g. `https://api.openai.com/v1`, `http://ollama:11434/v1`).
    pub base_url: String,
    /// The provider's model name (e.g. `text-embedding-3-small`, `nomic-embed-text`).
    pub model: String,
    /// Sent as `dimensions` when set (models that can shorten their vectors).
    pub dimensions: Option<u32>,
    /// The dimension every answer must have (the database column's).
    pub expected_dimension: usize,
    pub api_key: Option<ApiKey>,
    /// Longest wait for one HTTP attempt, body included.
    pub attempt_timeout: Duration,
    pub retry: RetryPolicy,
    /// Consecutive failed calls that open the circuit (0 disables it).
    pub circuit_threshold: u32,
    /// How long an open circuit refuses calls before one trial call.
    pub circuit_cooldown: Duration,
    /// Most texts in one HTTP request.
    pub max_batch: usize,
}

impl OpenAiSettings {
    /// Defaults for everything but where and what to call.
    pub fn new(base_url: &str, model: &str, expected_dimension: usize) -> Self {
        OpenAiSettings {
            base_url: base_url.trim_end_matches('/').to_owned(),
            model: model.to_owned(),
            dimensions: None,
            expected_dimension,
            api_key: None,
            attempt_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            circuit_threshold: 5,
            circuit_cooldown: Duration::from_secs(30),
            max_batch: 64,
        }
    }
}

/// Errors of building the provider.
#[derive(Debug, thiserror::Error)]
pub enum OpenAiError {
    #[error("invalid {setting}: {reason}")]
    Setting {
        setting: &'static str,
        reason: String,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// The provider.
pub struct OpenAiEmbedder {
    client: Client<OpenAIConfig>,
    settings: OpenAiSettings,
    model_id: String,
    breaker: Mutex<Breaker>,
}

impl std::fmt::Debug for OpenAiEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiEmbedder")
            .field("base_url", &self.settings.base_url)
            .field("model_id", &self.model_id)
            .finish_non_exhaustive()
    }
}

/// Gives a half-open trial's place back when a call ends without an outcome (its future was dropped).
struct Outcome<'a> {
    breaker: &'a Mutex<Breaker>,
    settled: bool,
}

impl Outcome<'_> {
    fn with<R>(&mut self, f: impl FnOnce(&mut Breaker) -> R) -> R {
        self.settled = true;
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        let r = f(&mut b);
        let open = matches!(b.state(), State::Open { .. });
        ds_metrics::EMBEDDING_CIRCUIT_OPEN
            .with((OPENAI,))
            .set(if open { 1.0 } else { 0.0 });
        r
    }
}

impl Drop for Outcome<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
            b.on_abandoned();
        }
    }
}

impl OpenAiEmbedder {
    pub fn new(settings: OpenAiSettings) -> Result<Self, OpenAiError> {
        if !(settings.base_url.starts_with("http://") || settings.base_url.starts_with("https://"))
        {
            return Err(OpenAiError::Setting {
                setting: "base URL",
                reason: format!("{:?} is not an http(s) URL", settings.base_url),
            });
        }
        if settings.model.trim().is_empty() {
            return Err(OpenAiError::Setting {
                setting: "model",
                reason: "is empty".into(),
            });
        }
        if settings.max_batch == 0 || settings.expected_dimension == 0 {
            return Err(OpenAiError::Setting {
                setting: "batch size / dimension",
                reason: "must be at least 1".into(),
            });
        }
        install_tls_provider();
        let http = reqwest::Client::builder()
            .timeout(settings.attempt_timeout)
            .connect_timeout(settings.attempt_timeout)
            .build()
            .map_err(|e| OpenAiError::Client(e.to_string()))?;
        let config = OpenAIConfig::new()
            .with_api_base(settings.base_url.clone())
            .with_api_key(
                settings
                    .api_key
                    .as_ref()
                    .map(|k| k.0.clone())
                    .unwrap_or_default(),
            )
            .with_org_id("")
            .with_project_id("");
        let client = Client::with_config(config)
            .with_http_client(http.clone())
            .with_http_service(RetryingTransport {
                http,
                policy: settings.retry.clone(),
            });
        let model_id = match settings.dimensions {
            Some(d) => format!("{}@{d}d", settings.model),
            None => settings.model.clone(),
        };
        let breaker = Mutex::new(Breaker::new(
            settings.circuit_threshold,
            settings.circuit_cooldown,
        ));
        Ok(OpenAiEmbedder {
            client,
            settings,
            model_id,
            breaker,
        })
    }

    /// One call with one text; the dimension of the answer, whatever it is. Start-up uses it to
    /// refuse a provider whose vectors do not fit the database column.
    pub async fn probe_dimension(&self) -> Result<usize, EmbedError> {
        let data = self
            .request(vec!["datastorage dimension probe".into()])
            .await
            .map_err(|f| f.error)?;
        data.first()
            .map(Vec::len)
            .ok_or_else(|| EmbedError::InvalidOutput("the provider returned no vector".into()))
    }

    /// One HTTP exchange (with its retries); vectors in input order, unchecked dimension.
    async fn request(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, Failure> {
        let n = texts.len();
        let mut args = CreateEmbeddingRequestArgs::default();
        args.model(self.settings.model.clone())
            .input(EmbeddingInput::StringArray(texts));
        if let Some(d) = self.settings.dimensions {
            args.dimensions(d);
        }
        let request = args
            .build()
            .map_err(|e| EmbedError::InvalidOutput(format!("building the request: {e}")))?;
        let response = self
            .client
            .embeddings()
            .create(request)
            .await
            .map_err(|e| classify(&e))?;
        let mut data = response.data;
        if data.len() != n {
            count_failure(FailureKind::InvalidOutput);
            return Err(EmbedError::InvalidOutput(format!(
                "asked for {n} vectors, the provider returned {}",
                data.len()
            ))
            .into());
        }
        data.sort_by_key(|e| e.index);
        if data.iter().enumerate().any(|(i, e)| e.index as usize != i) {
            count_failure(FailureKind::InvalidOutput);
            return Err(EmbedError::InvalidOutput(
                "the provider's answer does not index each input once".into(),
            )
            .into());
        }
        Ok(data.into_iter().map(|e| e.embedding).collect())
    }

    fn check(&self, mut v: Vec<f32>) -> Result<Vec<f32>, EmbedError> {
        let expected = self.settings.expected_dimension;
        if v.len() != expected {
            count_failure(FailureKind::InvalidOutput);
            return Err(EmbedError::InvalidOutput(format!(
                "the provider returned {} dimensions, the database column has {expected}",
                v.len()
            )));
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if !norm.is_finite() || norm == 0.0 {
            count_failure(FailureKind::InvalidOutput);
            return Err(EmbedError::InvalidOutput(
                "the provider returned a zero or non-finite vector".into(),
            ));
        }
        v.iter_mut().for_each(|x| *x /= norm);
        Ok(v)
    }
}

/// A failed call, with the provider's `Retry-After` for the breaker, and whether it says anything about
/// the provider's health (a refusal of the request does not: it does not count toward the circuit).
struct Failure {
    error: EmbedError,
    retry_after: Option<Duration>,
    counts_for_circuit: bool,
}

impl From<EmbedError> for Failure {
    fn from(error: EmbedError) -> Self {
        Failure {
            error,
            retry_after: None,
            counts_for_circuit: true,
        }
    }
}

/// Statuses that refuse the inputs themselves (too long, malformed): another input may pass.
const INPUT_REFUSALS: [u16; 3] = [400, 413, 422];

fn classify(e: &OpenAIError) -> Failure {
    match e {
        OpenAIError::Boxed(b) => match b.downcast_ref::<TransportError>() {
            // 400/413/422: these inputs are refused; others may pass. Other 4xx (a wrong key, an
            // unknown model): the deployment is wrong, nothing is embedded until it is fixed. Neither
            // counts toward the circuit: the provider answered.
            Some(t) if t.status.is_some_and(|s| INPUT_REFUSALS.contains(&s)) => Failure {
                error: EmbedError::Rejected(format!("embedding provider: {}", t.detail)),
                retry_after: None,
                counts_for_circuit: false,
            },
            Some(t) if t.status.is_some() => Failure {
                error: EmbedError::Unavailable(format!("embedding provider: {}", t.detail)),
                retry_after: None,
                counts_for_circuit: false,
            },
            Some(t) => Failure {
                error: EmbedError::Unavailable(format!("embedding provider: {t}")),
                retry_after: t.retry_after,
                counts_for_circuit: true,
            },
            None => EmbedError::Unavailable(format!("embedding provider: {b}")).into(),
        },
        OpenAIError::ApiError(r) => EmbedError::Unavailable(format!(
            "the provider refused the request: {}",
            truncate(&r.to_string(), 300)
        ))
        .into(),
        OpenAIError::JSONDeserialize(..) => {
            count_failure(FailureKind::Malformed);
            EmbedError::InvalidOutput("the provider's answer is not an embeddings response".into())
                .into()
        }
        other => EmbedError::Unavailable(format!("embedding provider: {other}")).into(),
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn provider(&self) -> &'static str {
        "openai"
    }

    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dimension(&self) -> usize {
        self.settings.expected_dimension
    }

    fn health(&self) -> ProviderHealth {
        let b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        match b.state() {
            State::Closed => ProviderHealth::Up,
            State::Open { .. } | State::HalfOpen => ProviderHealth::Degraded(
                "circuit open after repeated provider failures; writes are deferred".into(),
            ),
        }
    }

    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let permit = {
            let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
            b.try_acquire(Instant::now())
        };
        if let Permit::Refused { retry_at } = permit {
            count_failure(FailureKind::CircuitOpen);
            let wait = retry_at.map(|t| t.saturating_duration_since(Instant::now()));
            return Err(EmbedError::Unavailable(format!(
                "embedding provider circuit is open after repeated failures{}",
                wait.map(|w| format!("; next trial in {}s", w.as_secs()))
                    .unwrap_or_default()
            )));
        }
        let mut outcome = Outcome {
            breaker: &self.breaker,
            settled: false,
        };
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.settings.max_batch) {
            let result = match self.request(chunk.to_vec()).await {
                Ok(vectors) => vectors
                    .into_iter()
                    .map(|v| self.check(v))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(Failure::from),
                Err(f) => Err(f),
            };
            match result {
                Ok(v) => out.extend(v),
                Err(f) if !f.counts_for_circuit => {
                    outcome.with(|b| b.on_success());
                    return Err(f.error);
                }
                Err(f) => {
                    outcome.with(|b| b.on_failure(Instant::now(), f.retry_after));
                    return Err(f.error);
                }
            }
        }
        outcome.with(|b| b.on_success());
        Ok(out)
    }
}
