//! A fine-tuning job as fungible keeps it: what was asked, where it runs, how far it is, and
//! the model it made.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Where a job is, in the same words for every provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The provider is checking the files.
    Validating,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Validating => "validating",
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

/// What the job trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Supervised fine-tuning on the rows' answers.
    Sft,
    /// Direct preference optimisation on the rows' answer and rejected answer.
    Dpo,
}

impl Method {
    pub fn parse(s: &str) -> Option<Method> {
        match s {
            "sft" | "supervised" => Some(Method::Sft),
            "dpo" | "preference" => Some(Method::Dpo),
            _ => None,
        }
    }
}

/// Something the provider reported about the job (a message, or training metrics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The provider's event id, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub time_ms: i64,
    pub level: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_loss: Option<f64>,
}

/// A share of a configured route given to the tuned model (`fungible tune promote`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    pub route: String,
    /// Of the route's first picks, 1 to 99 (the route's own targets share the rest and stay
    /// its fallbacks).
    pub percent: u32,
}

/// One job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// fungible's id (`tune_...`).
    pub id: String,
    /// The configured provider it runs on (`openai`, `together`, `mistral`, ...).
    pub provider: String,
    /// The provider's id of the job.
    pub provider_job_id: String,
    pub base_model: String,
    pub method: Method,
    pub dataset: String,
    pub dataset_version: i64,
    pub training_file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_file: Option<String>,
    /// Passed through with the provider's names.
    #[serde(default)]
    pub hyperparameters: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// The name the tuned model is served under (`/v1/models`, requests).
    pub alias: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Promotion>,
    /// The eval to run once the job succeeds (tuned model against base model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<crate::eval::EvalSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_result: Option<crate::eval::EvalResult>,
    pub status: Status,
    /// The status in the provider's words.
    pub provider_status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tuned_model: Option<String>,
    /// Training tokens of the file (the `o200k_base` estimate), before epochs.
    pub dataset_tokens: u64,
    /// Billable tokens, as the provider reports them once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_tokens: Option<u64>,
    /// USD, from the training price table; `None` when the price is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_cost: Option<f64>,
    /// USD, from `trained_tokens` once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    #[serde(default)]
    pub events: Vec<Event>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
}

impl Job {
    /// The losses reported so far, by step: `(step, train, valid)`.
    pub fn losses(&self) -> Vec<(u64, Option<f64>, Option<f64>)> {
        self.events.iter().filter_map(|e| Some((e.step?, e.train_loss, e.valid_loss))).collect()
    }

    /// The target the tuned model is served as, once there is one: `PROVIDER/MODEL`.
    pub fn target(&self) -> Option<fungible_gateway::Target> {
        Some(fungible_gateway::Target { provider: self.provider.clone(), model: self.fine_tuned_model.clone()? })
    }
}
