//! LoRA fine-tuning of a local GGUF chat model, in-process on the CPU (candle), and the
//! adapter exported as a GGUF LoRA file that llama.cpp serves on the same base.
//!
//! - `data.rs`: each example rendered with the model's own chat template and tokenized by
//!   llama.cpp's tokenizer, exactly as the server renders and tokenizes a request, with the
//!   loss on the answer's tokens only (through the end-of-turn token); examples packed into
//!   micro-batches that never attend across examples.
//! - `model.rs`: the llama forward pass over the GGUF's weights (dequantized to f32, frozen:
//!   no gradient is computed for them) with trainable low-rank adapters on the chosen
//!   projections.
//! - `train.rs`: AdamW with warmup and a cosine or linear schedule, gradient accumulation,
//!   clipping, a validation loss each epoch, early stopping, checkpoints and resume.
//! - `export.rs`: the adapter as llama.cpp loads it (`general.type = adapter`).
//! - `merge.rs`: the adapter merged into its base's weights, which serves at the base's speed.

mod data;
mod export;
pub mod merge;
mod model;
#[cfg(test)]
mod tests;
mod train;

use std::path::PathBuf;
use std::time::Duration;

use fungible_types::{ChatRequest, Message};
use serde::{Deserialize, Serialize};

pub use train::{ADAPTER_FILE, OUTCOME_FILE, train};

/// The projections of a llama block an adapter can train, by their GGUF names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Projection {
    #[serde(alias = "q_proj", alias = "q")]
    AttnQ,
    #[serde(alias = "k_proj", alias = "k")]
    AttnK,
    #[serde(alias = "v_proj", alias = "v")]
    AttnV,
    #[serde(alias = "o_proj", alias = "o")]
    AttnOutput,
    #[serde(alias = "gate_proj", alias = "gate")]
    FfnGate,
    #[serde(alias = "up_proj", alias = "up")]
    FfnUp,
    #[serde(alias = "down_proj", alias = "down")]
    FfnDown,
}

impl Projection {
    pub const ALL: [Projection; 7] = [
        Projection::AttnQ,
        Projection::AttnK,
        Projection::AttnV,
        Projection::AttnOutput,
        Projection::FfnGate,
        Projection::FfnUp,
        Projection::FfnDown,
    ];

    /// The tensor name in the GGUF, after `blk.N.`.
    pub fn gguf(self) -> &'static str {
        match self {
            Projection::AttnQ => "attn_q",
            Projection::AttnK => "attn_k",
            Projection::AttnV => "attn_v",
            Projection::AttnOutput => "attn_output",
            Projection::FfnGate => "ffn_gate",
            Projection::FfnUp => "ffn_up",
            Projection::FfnDown => "ffn_down",
        }
    }
}

/// How the learning rate moves after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Half a cosine from the peak down to zero at the last step.
    Cosine,
    /// A straight line down to zero at the last step.
    Linear,
    Constant,
}

/// The hyperparameters of a local LoRA job (`hyperparameters` of a launch with provider
/// `local`). Unknown names are an error, so a typo does not train with a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraSettings {
    /// Rank of each adapter.
    pub rank: usize,
    /// The adapter's output is scaled by `alpha / rank` (in training and by llama.cpp).
    pub alpha: f32,
    /// Dropout on the adapters' input while training.
    pub dropout: f32,
    /// The projections that get an adapter, in every block.
    pub target_modules: Vec<Projection>,
    /// Peak learning rate (AdamW).
    pub learning_rate: f64,
    /// Share of the steps spent warming the learning rate up from zero.
    pub warmup_ratio: f64,
    pub schedule: Schedule,
    pub weight_decay: f64,
    /// Gradients are scaled down to this global L2 norm when above it.
    pub max_grad_norm: f64,
    #[serde(alias = "n_epochs")]
    pub epochs: usize,
    /// Tokens per micro-batch: examples are packed up to this many.
    pub batch_tokens: usize,
    /// Micro-batches per optimizer step.
    pub gradient_accumulation: usize,
    /// Longer examples are cut to this many tokens (their answer shortened); an example whose
    /// prompt alone is this long is left out.
    pub max_seq_len: usize,
    /// Stop after this many epochs without a better validation loss (needs validation
    /// rows); the best epoch's adapter is the one exported. `0`: never stop early.
    pub patience: usize,
    /// A checkpoint every this many optimizer steps (and at the end of every epoch).
    pub checkpoint_steps: usize,
    pub seed: u64,
}

impl Default for LoraSettings {
    fn default() -> LoraSettings {
        LoraSettings {
            rank: 8,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: Projection::ALL.to_vec(),
            learning_rate: 1e-3,
            warmup_ratio: 0.05,
            schedule: Schedule::Cosine,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            epochs: 3,
            batch_tokens: 1024,
            gradient_accumulation: 1,
            max_seq_len: 1024,
            patience: 2,
            checkpoint_steps: 50,
            seed: 42,
        }
    }
}

/// The most tokens of one example or one micro-batch.
pub const MAX_TOKENS: usize = 16_384;

impl LoraSettings {
    /// Settings from a launch's `hyperparameters`, over the defaults.
    pub fn from_json(hyperparameters: &serde_json::Map<String, serde_json::Value>) -> Result<LoraSettings, String> {
        let settings: LoraSettings = serde_json::from_value(serde_json::Value::Object(hyperparameters.clone()))
            .map_err(|e| format!("hyperparameters: {e}"))?;
        settings.check()?;
        Ok(settings)
    }

    pub fn check(&self) -> Result<(), String> {
        let bad = |m: String| Err(format!("hyperparameters: {m}"));
        if !(1..=256).contains(&self.rank) {
            return bad(format!("rank must be 1 to 256, got {}", self.rank));
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return bad(format!("alpha must be positive, got {}", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if self.target_modules.is_empty() {
            return bad("target_modules must name at least one of attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down".into());
        }
        if !(self.learning_rate > 0.0 && self.learning_rate < 1.0) {
            return bad(format!("learning_rate must be in (0, 1), got {}", self.learning_rate));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad(format!("warmup_ratio must be in [0, 1), got {}", self.warmup_ratio));
        }
        if !((0.0..=1.0).contains(&self.weight_decay) && self.max_grad_norm > 0.0 && self.max_grad_norm.is_finite()) {
            return bad("weight_decay must be 0 to 1 and max_grad_norm a positive number".into());
        }
        if !(1..=1000).contains(&self.epochs) {
            return bad(format!("epochs must be 1 to 1000, got {}", self.epochs));
        }
        // Attention keeps a tokens × tokens matrix per head while it runs: bounded so that a
        // typo cannot take the memory of the process that serves.
        if !(16..=MAX_TOKENS).contains(&self.max_seq_len) || !(self.max_seq_len..=MAX_TOKENS).contains(&self.batch_tokens) {
            return bad(format!(
                "max_seq_len must be 16 to {MAX_TOKENS} and batch_tokens max_seq_len to {MAX_TOKENS} (got {} and {})",
                self.max_seq_len, self.batch_tokens
            ));
        }
        if self.gradient_accumulation == 0 || self.checkpoint_steps == 0 {
            return bad("gradient_accumulation and checkpoint_steps must be at least 1".into());
        }
        Ok(())
    }
}

/// One training example: a conversation and the assistant turn to learn after it.
#[derive(Debug, Clone)]
pub struct TrainExample {
    pub request: ChatRequest,
    pub answer: Message,
}

/// What to train.
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// The base model's GGUF file (the one the server loads, before any conversion).
    pub base: PathBuf,
    pub train: Vec<TrainExample>,
    pub validation: Vec<TrainExample>,
    pub settings: LoraSettings,
    /// Checkpoints and the adapter go here; a checkpoint found here is resumed.
    pub dir: PathBuf,
    /// The name written into the adapter (`general.name`).
    pub name: String,
}

/// Where training is, reported after every optimizer step and validation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    /// 1-based.
    pub epoch: usize,
    pub epochs: usize,
    /// Optimizer steps done, and planned (all epochs).
    pub step: usize,
    pub steps: usize,
    /// Mean loss per answer token of the last step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    /// Set on the report that ends an epoch with validation rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_loss: Option<f64>,
    /// Tokens (prompts and answers) through forward and backward per second.
    pub tokens_per_second: f64,
    pub elapsed: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta: Option<Duration>,
}

/// How a training run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOutcome {
    /// The GGUF adapter file.
    pub adapter: PathBuf,
    /// Trainable parameters (the adapters' `A` and `B`).
    pub parameters: usize,
    pub steps: usize,
    pub epochs_run: usize,
    pub stopped_early: bool,
    /// The epoch whose adapter was exported (the best validation loss, else the last).
    pub best_epoch: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_valid_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_train_loss: Option<f64>,
    /// Tokens through forward and backward, all epochs.
    pub trained_tokens: u64,
    pub tokens_per_second: f64,
    /// Examples left out because their prompt alone is `max_seq_len` long or more, and
    /// examples whose answer was cut.
    pub skipped_examples: usize,
    pub truncated_examples: usize,
    /// Steps this run did after resuming from a checkpoint at `resumed_at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_at: Option<usize>,
}

/// Why training stopped without an adapter.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    BadInput(String),
    /// Asked to stop: a checkpoint of where it stopped is kept, which a new run over the
    /// same directory resumes from.
    #[error("training was stopped at step {step}")]
    Cancelled { step: usize },
    #[error("training failed: {0}")]
    Engine(String),
    #[error("training: {0}")]
    Io(#[from] std::io::Error),
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> TrainError {
        TrainError::Engine(e.to_string())
    }
}
