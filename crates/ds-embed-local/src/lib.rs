//! The `local` embedding provider: sentence-transformers' all-MiniLM-L6-v2 (384 dimensions), run
//! in-process on the CPU with candle. No network and no key at run time: the weights are files in a
//! directory (fetched at set-up time by `cargo xtask fetch-model`, never committed).
//!
//! Inference is CPU-bound (~20 ms of CPU per short sentence, optimised build), so it runs on tokio's
//! blocking pool, at most one call per core at a time, never on the async executor.

mod bert;

use async_trait::async_trait;
use bert::{Bert, BertConfig};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use ds_domain::ports::{EmbedError, Embedder};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};
use tokio::sync::Semaphore;

/// The files of a model directory.
pub const MODEL_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];
/// Longest input in tokens; longer texts are truncated (the model was trained on 256).
pub const MAX_TOKENS: usize = 256;
/// The largest batch run through the model at once (padding makes huge batches wasteful).
const MAX_BATCH: usize = 32;

/// Errors of loading or running the local model.
#[derive(Debug, thiserror::Error)]
pub enum LocalEmbedError {
    #[error("model file {path} is missing: run `cargo xtask fetch-model` or point the model directory at the files ({files})", path = .0.display(), files = MODEL_FILES.join(", "))]
    Missing(PathBuf),
    #[error("cannot read {path}: {err}", path = .0.display(), err = .1)]
    Io(PathBuf, std::io::Error),
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
}

impl From<LocalEmbedError> for EmbedError {
    fn from(e: LocalEmbedError) -> Self {
        match e {
            LocalEmbedError::Tokenizer(_) | LocalEmbedError::Model(_) => {
                EmbedError::InvalidOutput(e.to_string())
            }
            other => EmbedError::Unavailable(other.to_string()),
        }
    }
}

struct Model {
    bert: Bert,
    tokenizer: Tokenizer,
}

impl Model {
    fn run(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, LocalEmbedError> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(MAX_BATCH) {
            let inputs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let encodings = self
                .tokenizer
                .encode_batch(inputs, true)
                .map_err(|e| LocalEmbedError::Tokenizer(e.to_string()))?;
            let seq = encodings
                .first()
                .map(|e| e.get_ids().len())
                .unwrap_or(0)
                .max(1);
            let mut ids = Vec::with_capacity(chunk.len() * seq);
            let mut mask = Vec::with_capacity(chunk.len() * seq);
            for e in &encodings {
                ids.extend_from_slice(e.get_ids());
                mask.extend_from_slice(e.get_attention_mask());
            }
            let device = self.bert.device();
            let ids = Tensor::from_vec(ids, (chunk.len(), seq), device)?;
            let mask = Tensor::from_vec(mask, (chunk.len(), seq), device)?;
            out.extend(self.bert.embed(&ids, &mask)?.to_vec2::<f32>()?);
        }
        Ok(out)
    }
}

/// The local provider.
#[derive(Clone)]
pub struct LocalEmbedder {
    model: Arc<Model>,
    model_id: String,
    dimension: usize,
    permits: Arc<Semaphore>,
    /// How many inference calls may run at once (the size of `permits`).
    slots: usize,
}

impl LocalEmbedder {
    /// Loads the model from `dir` (its `config.json`, `tokenizer.json` and `model.safetensors`), once.
    /// `max_concurrency` bounds the inference calls running at once (default: the number of cores).
    pub fn load(dir: &Path, max_concurrency: Option<usize>) -> Result<Self, LocalEmbedError> {
        let read = |name: &str| -> Result<Vec<u8>, LocalEmbedError> {
            let path = dir.join(name);
            if !path.is_file() {
                return Err(LocalEmbedError::Missing(path));
            }
            std::fs::read(&path).map_err(|e| LocalEmbedError::Io(path, e))
        };
        let config: BertConfig = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| LocalEmbedError::Config(e.to_string()))?;
        if config.hidden_act.as_deref().is_some_and(|a| a != "gelu") {
            return Err(LocalEmbedError::Config(format!(
                "unsupported activation {:?}",
                config.hidden_act
            )));
        }
        let mut tokenizer = Tokenizer::from_bytes(read("tokenizer.json")?)
            .map_err(|e| LocalEmbedError::Tokenizer(e.to_string()))?;
        // Pad each batch to its longest member (the file pads to a fixed 128, which wastes compute).
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| LocalEmbedError::Tokenizer(e.to_string()))?;
        let weights = read("model.safetensors")?;
        let short_hash = hex::encode(&Sha256::digest(&weights)[..4]);
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)?;
        let bert = Bert::new(&config, vb)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "local".into());
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Ok(LocalEmbedder {
            model: Arc::new(Model { bert, tokenizer }),
            model_id: format!("{name}@{short_hash}"),
            dimension: config.hidden_size,
            permits: Arc::new(Semaphore::new(max_concurrency.unwrap_or(cores).max(1))),
            slots: max_concurrency.unwrap_or(cores).max(1),
        })
    }

    /// Embeds on the calling thread (blocking); for tests and tools.
    pub fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, LocalEmbedError> {
        self.model.run(texts)
    }
}

#[async_trait]
impl Embedder for LocalEmbedder {
    fn provider(&self) -> &'static str {
        "local"
    }

    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    /// A call of several texts is split across the inference slots (one per core by default), so
    /// that a batch uses every core; vectors come back in the order of `texts`.
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let parts = self.slots.min(texts.len()).max(1);
        let size = texts.len().div_ceil(parts);
        let mut chunks = Vec::with_capacity(parts);
        let mut rest = texts;
        while rest.len() > size {
            let tail = rest.split_off(size);
            chunks.push(rest);
            rest = tail;
        }
        chunks.push(rest);
        let runs = chunks.into_iter().map(|chunk| self.run_chunk(chunk));
        let mut vectors = Vec::new();
        for part in futures_util::future::join_all(runs).await {
            vectors.extend(part?);
        }
        Ok(vectors)
    }
}

impl LocalEmbedder {
    /// One inference call on a blocking thread, holding an inference slot.
    async fn run_chunk(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let _permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| EmbedError::Unavailable("embedder is shutting down".into()))?;
        let model = self.model.clone();
        tokio::task::spawn_blocking(move || model.run(&texts))
            .await
            .map_err(|e| EmbedError::Unavailable(format!("embedding task failed: {e}")))?
            .map_err(EmbedError::from)
    }
}
