//! The eval a job asks for when it succeeds: the tuned model against its base model on a
//! stored dataset (by default the job's own version, validation split), through the same
//! gateway that serves them, with the report kept beside the job. Unless the items are the
//! rows the model was tuned on, a third arm is the base model given the nearest of those
//! rows as few-shot examples (`fungible-datasets`' `fewshot`): the adaptation with no
//! training that tuning has to beat.

use std::path::PathBuf;
use std::sync::Arc;

use fungible_datasets::Split;
use serde::{Deserialize, Serialize};

/// What to evaluate once the job succeeds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    /// `NAME` or `NAME@VERSION` [default: the job's dataset version].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// [default: validation].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    /// `fungible eval` scorer specs [default: by item].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scorers: Vec<String>,
    /// At most this many items.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// `max_tokens` of every request [default: the eval's].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// The model the base + retrieved examples arm embeds questions with [default:
    /// `local/all-minilm-l6-v2`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalState {
    Running,
    Done,
    Failed,
}

/// One model's line of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalModel {
    pub model: String,
    pub accuracy: Option<f64>,
    pub answered: u64,
    pub errors: u64,
    pub cost_usd: Option<f64>,
}

/// How the eval went, kept with the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub state: EvalState,
    /// The instance that runs it.
    pub by: String,
    /// The run directory (`report.html`, `report.json`, `results.jsonl`).
    pub run_dir: String,
    pub started_ms: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<EvalModel>,
    /// The report's recommendation (is the tuned model better, non-inferior, worse?).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recommendation: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Runs the eval of `dataset` on `models` into `run_dir` through `gateway`; the report's
/// per-model lines and recommendation.
pub(crate) async fn run(
    dataset: &fungible_eval::dataset::Dataset,
    models: Vec<String>,
    spec: &EvalSpec,
    gateway: fungible_gateway::Gateway,
    prices: fungible_store::PriceTable,
    examples: fungible_datasets::Examples,
    run_dir: PathBuf,
) -> Result<(Vec<EvalModel>, Vec<String>), String> {
    let mut dataset = dataset.clone();
    if let Some(limit) = spec.limit {
        dataset.truncate(limit);
    }
    let mut opts = fungible_eval::runner::RunOptions::new(models, run_dir.clone());
    opts.scorers = fungible_eval::scorers::ScorerSet::parse(&spec.scorers).map_err(|e| e.to_string())?;
    if spec.max_tokens.is_some() {
        opts.max_tokens = spec.max_tokens;
    }
    let backend = Arc::new(fungible_eval::backend::GatewayBackend::new(gateway, prices).with_examples(examples));
    fungible_eval::runner::run(&dataset, backend, opts).await.map_err(|e| e.to_string())?;
    let summary = tokio::task::spawn_blocking(move || fungible_eval::report::write_report(&run_dir))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let models = summary
        .report
        .models
        .iter()
        .map(|m| EvalModel { model: m.model.clone(), accuracy: m.accuracy, answered: m.answered, errors: m.errors, cost_usd: m.cost_usd })
        .collect();
    Ok((models, summary.report.recommendation.clone()))
}
