//! The run directory's files: the one interface between the runner (which writes them as
//! results arrive) and the report (which reads them back, also for `eval compare`).
//!
//! - `run.json` — [`RunMeta`], written at start (and rewritten when the run ends).
//! - `results.jsonl` — one [`ItemResult`] per line, appended as each (item, model) finishes.
//!   On resume, pairs already present are skipped; a line cut off by a kill is ignored.
//! - `pairwise.jsonl` — one [`PairwiseResult`] per line when a pairwise judge ran.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const RUN_META_FILE: &str = "run.json";
pub const RESULTS_FILE: &str = "results.jsonl";
pub const PAIRWISE_FILE: &str = "pairwise.jsonl";

/// What was run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    /// Format version of the run directory.
    pub version: u32,
    pub run_id: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Dataset path or `traces:<filter>`, its display name and the SHA-256 of its bytes.
    pub dataset: String,
    pub dataset_name: String,
    pub dataset_sha256: Option<String>,
    /// Items in the dataset after `--limit`.
    pub items: u64,
    /// The models as given (`PROVIDER/MODEL` or a route alias), in command-line order; the
    /// first one is the baseline the recommendation compares the others with.
    pub models: Vec<String>,
    /// Scorer names, in the order they were configured (the names used as keys of
    /// [`ItemResult::scores`]).
    pub scorers: Vec<String>,
    pub concurrency: u32,
    /// The spend cap in USD, if any, and whether the run stopped because it was reached.
    pub max_cost_usd: Option<f64>,
    pub stopped_by_budget: bool,
}

/// One dataset item answered (or failed) by one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    pub item_id: String,
    pub model: String,
    /// The `PROVIDER/MODEL` that answered (differs from `model` for routes).
    pub target: Option<String>,
    /// A short rendering of the input (the last user message), for the per-item table.
    pub input: String,
    pub reference: Option<String>,
    /// The answer's text; `None` when the request failed.
    pub output: Option<String>,
    /// Why the request failed (`error class: message`); a failed item is counted in the
    /// model's error rate, never scored as wrong.
    pub error: Option<String>,
    /// Scorer name -> score in [0, 1].
    pub scores: BTreeMap<String, f64>,
    /// The item's verdict: every scorer passed. `None` when the request failed, or when no
    /// configured scorer applied to the item (no reference, schema or tests): check `error`
    /// to count failures.
    pub passed: Option<bool>,
    /// Scorer name -> a short explanation (the extracted number, the failing test, the
    /// judge's reasoning).
    #[serde(default)]
    pub details: BTreeMap<String, String>,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// `None` when the price is unknown (never 0 for unknown).
    pub cost_usd: Option<f64>,
}

/// A pairwise judgement of two models' answers to one item (both orders asked, so position
/// bias cancels: `winner` is the verdict after swapping; a disagreement is a tie).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairwiseResult {
    pub item_id: String,
    pub model_a: String,
    pub model_b: String,
    pub judge: String,
    /// `"a"`, `"b"` or `"tie"`.
    pub winner: String,
    #[serde(default)]
    pub reason: Option<String>,
}
