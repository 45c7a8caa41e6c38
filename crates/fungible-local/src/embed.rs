//! BERT-style sentence-embedding models (all-MiniLM-L6-v2 and kin) through candle, on the
//! CPU: tokenize with the model's `tokenizer.json` (padded to the longest input of the
//! batch, not the fixed length some tokenizer files ask for), run the encoder, mean-pool over
//! the attention mask, L2-normalise — what sentence-transformers does for these models.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use fungible_types::{Embeddings, ErrorKind, ProviderError};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};
use tokio::sync::OnceCell;

use crate::gate::Gate;
use crate::{error, invalid, mib, resident_bytes};

/// Most inputs embedded in one forward pass; bigger requests run in several.
const MAX_BATCH: usize = 64;

#[derive(Debug)]
pub struct EmbeddingModel {
    name: String,
    dir: PathBuf,
    loaded: OnceCell<Arc<Loaded>>,
    token_table: OnceCell<Arc<StaticEmbedding>>,
}

/// A static embedding from a BERT model's input token embeddings: the mean of the text's
/// token vectors, L2-normalised. No encoder pass, so tens of microseconds a text instead of
/// milliseconds: what the learned router embeds requests with. Coarser than the sentence
/// embedding (it sees words, not their context), which the router's report measures.
pub struct StaticEmbedding {
    name: String,
    tokenizer: Tokenizer,
    dims: usize,
    /// Vocabulary × dims, half precision (23 MB for MiniLM's 30,522 × 384).
    table: Vec<half::f16>,
}

impl std::fmt::Debug for StaticEmbedding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticEmbedding").field("name", &self.name).field("dims", &self.dims).finish_non_exhaustive()
    }
}

impl StaticEmbedding {
    /// `static:MODEL`: what a router records as its embedding.
    pub fn name(&self) -> String {
        format!("static:{}", self.name)
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    /// The text's vector: all zeros for a text without tokens.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>, ProviderError> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| error(ErrorKind::UpstreamServer, format!("tokenizing failed: {e}")))?;
        let mut sum = vec![0f32; self.dims];
        let rows = self.table.len() / self.dims.max(1);
        for &id in encoding.get_ids() {
            let id = id as usize;
            if id >= rows {
                continue;
            }
            for (acc, v) in sum.iter_mut().zip(&self.table[id * self.dims..(id + 1) * self.dims]) {
                *acc += v.to_f32();
            }
        }
        let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            sum.iter_mut().for_each(|x| *x /= norm);
        }
        Ok(sum)
    }
}

pub(crate) struct Loaded {
    model: BertModel,
    tokenizer: Tokenizer,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded").finish_non_exhaustive()
    }
}

impl EmbeddingModel {
    pub fn new(name: &str, dir: PathBuf) -> EmbeddingModel {
        EmbeddingModel { name: name.to_owned(), dir, loaded: OnceCell::new(), token_table: OnceCell::new() }
    }

    /// The model's static embedding ([`StaticEmbedding`]), loaded on first use.
    pub async fn static_embedding(&self) -> Result<Arc<StaticEmbedding>, ProviderError> {
        self.token_table
            .get_or_try_init(|| async {
                let name = self.name.clone();
                let dir = self.dir.clone();
                tokio::task::spawn_blocking(move || load_static(&name, &dir))
                    .await
                    .map_err(|e| error(ErrorKind::Unavailable, e.to_string()))?
                    .map(Arc::new)
            })
            .await
            .cloned()
    }

    pub(crate) async fn loaded(&self) -> Result<Arc<Loaded>, ProviderError> {
        self.loaded
            .get_or_try_init(|| async {
                let name = self.name.clone();
                let dir = self.dir.clone();
                tokio::task::spawn_blocking(move || load(&name, dir))
                    .await
                    .map_err(|e| error(ErrorKind::Unavailable, e.to_string()))?
                    .map(Arc::new)
            })
            .await
            .cloned()
    }

    /// One vector per input; `prompt_tokens` counts special tokens, not padding.
    pub async fn embed(&self, inputs: Vec<String>) -> Result<Embeddings, ProviderError> {
        if inputs.is_empty() {
            return Err(invalid("input must not be empty"));
        }
        if let Some(i) = inputs.iter().position(|s| s.is_empty()) {
            return Err(invalid(format!("input[{i}] is an empty string")));
        }
        let loaded = self.loaded().await?;
        tokio::task::spawn_blocking(move || {
            let mut out = Embeddings { vectors: Vec::with_capacity(inputs.len()), prompt_tokens: 0 };
            for chunk in inputs.chunks(MAX_BATCH) {
                let (vectors, tokens) = embed_batch(&loaded, chunk)?;
                out.vectors.extend(vectors);
                out.prompt_tokens += tokens;
            }
            Ok(out)
        })
        .await
        .map_err(|e| error(ErrorKind::Unavailable, e.to_string()))?
    }
}

fn load(name: &str, dir: PathBuf) -> Result<Loaded, ProviderError> {
    let unavailable = |message: String| error(ErrorKind::Unavailable, format!("local embedding model {name:?}: {message}"));
    let before = resident_bytes();
    let started = Instant::now();
    let (config, mut tokenizer) = config_and_tokenizer(&dir, &unavailable)?;
    let pad_id = tokenizer.get_padding().map_or(0, |p| p.pad_id);
    let pad_token = tokenizer.get_padding().map_or_else(|| "[PAD]".to_owned(), |p| p.pad_token.clone());
    tokenizer.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        pad_id,
        pad_token,
        ..PaddingParams::default()
    }));
    let max_length = max_seq_length(&dir).unwrap_or(512).min(config.max_position_embeddings);
    tokenizer
        .with_truncation(Some(TruncationParams { max_length, ..TruncationParams::default() }))
        .map_err(|e| unavailable(e.to_string()))?;
    let weights = dir.join("model.safetensors");
    let vb = VarBuilder::from_mmaped_safetensors_checked(&weights)
        .map_err(|e| unavailable(format!("cannot load {}: {e}", weights.display())))?;
    let model = BertModel::load(vb, &config).map_err(|e| unavailable(format!("{}: {e}", weights.display())))?;
    let taken = match (before, resident_bytes()) {
        (Some(b), Some(a)) => mib(a.saturating_sub(b)),
        _ => "unknown".to_owned(),
    };
    tracing::info!(
        model = %format!("local/{name}"),
        dir = %dir.display(),
        memory = %taken,
        dims = config.hidden_size,
        "loaded local embedding model in {} ms",
        started.elapsed().as_millis()
    );
    Ok(Loaded { model, tokenizer })
}

/// The model folder's `config.json` and `tokenizer.json`, read.
fn config_and_tokenizer(dir: &std::path::Path, unavailable: &dyn Fn(String) -> ProviderError) -> Result<(Config, Tokenizer), ProviderError> {
    let config_text = std::fs::read_to_string(dir.join("config.json"))
        .map_err(|e| unavailable(format!("cannot read {}: {e}", dir.join("config.json").display())))?;
    let config: Config = serde_json::from_str(&config_text)
        .map_err(|e| unavailable(format!("{} is not a BERT config: {e}", dir.join("config.json").display())))?;
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
        .map_err(|e| unavailable(format!("cannot load {}: {e}", dir.join("tokenizer.json").display())))?;
    Ok((config, tokenizer))
}

fn load_static(name: &str, dir: &std::path::Path) -> Result<StaticEmbedding, ProviderError> {
    let unavailable = |message: String| error(ErrorKind::Unavailable, format!("local embedding model {name:?}: {message}"));
    let (config, mut tokenizer) = config_and_tokenizer(dir, &unavailable)?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams { max_length: config.max_position_embeddings, ..TruncationParams::default() }))
        .map_err(|e| unavailable(e.to_string()))?;
    let weights = dir.join("model.safetensors");
    let vb = VarBuilder::from_mmaped_safetensors_checked(&weights)
        .map_err(|e| unavailable(format!("cannot load {}: {e}", weights.display())))?;
    // Where candle's BERT finds it: under `bert.` in some checkpoints.
    let key = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
        "bert.embeddings.word_embeddings.weight"
    } else {
        "embeddings.word_embeddings.weight"
    };
    let table = vb
        .get((config.vocab_size, config.hidden_size), key)
        .and_then(|t| t.to_dtype(DType::F16)?.flatten_all()?.to_vec1::<half::f16>())
        .map_err(|e| unavailable(format!("{}: {e}", weights.display())))?;
    Ok(StaticEmbedding { name: name.to_owned(), tokenizer, dims: config.hidden_size, table })
}

/// `sentence_bert_config.json`'s `max_seq_length` (256 for all-MiniLM-L6-v2).
fn max_seq_length(dir: &std::path::Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join("sentence_bert_config.json")).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value.get("max_seq_length")?.as_u64().map(|n| n as usize)
}

trait VarBuilderExt: Sized {
    fn from_mmaped_safetensors_checked(path: &std::path::Path) -> candle_core::Result<Self>;
}

impl VarBuilderExt for VarBuilder<'static> {
    /// Reads the file (no mmap: the workspace forbids `unsafe`).
    fn from_mmaped_safetensors_checked(path: &std::path::Path) -> candle_core::Result<Self> {
        let bytes = std::fs::read(path)?;
        VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)
    }
}

fn embed_batch(loaded: &Loaded, inputs: &[String]) -> Result<(Vec<Vec<f32>>, u64), ProviderError> {
    let engine = |e: &dyn std::fmt::Display| error(ErrorKind::UpstreamServer, format!("embedding failed: {e}"));
    let encodings = loaded.tokenizer.encode_batch(inputs.to_vec(), true).map_err(|e| engine(&e))?;
    let rows = encodings.len();
    let cols = encodings.first().map_or(0, |e| e.get_ids().len());
    let mut ids = Vec::with_capacity(rows * cols);
    let mut mask = Vec::with_capacity(rows * cols);
    let mut types = Vec::with_capacity(rows * cols);
    let mut tokens = 0u64;
    for encoding in &encodings {
        ids.extend(encoding.get_ids().iter().copied());
        mask.extend(encoding.get_attention_mask().iter().copied());
        types.extend(encoding.get_type_ids().iter().copied());
        tokens += encoding.get_attention_mask().iter().filter(|m| **m == 1).count() as u64;
    }
    let device = Device::Cpu;
    let run = || -> candle_core::Result<Vec<Vec<f32>>> {
        let ids = Tensor::from_vec(ids, (rows, cols), &device)?;
        let types = Tensor::from_vec(types, (rows, cols), &device)?;
        let mask = Tensor::from_vec(mask, (rows, cols), &device)?;
        let hidden = loaded.model.forward(&ids, &types, Some(&mask))?; // (rows, cols, dims)
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (rows, cols, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (rows, dims)
        let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?; // (rows, 1)
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        mean.broadcast_div(&norm)?.to_vec2::<f32>()
    };
    // candle's matrix products use every core.
    let vectors = {
        let _turn = Gate::global().enter(usize::MAX);
        run().map_err(|e| engine(&e))?
    };
    Ok((vectors, tokens))
}
