//! The eval report: reads a run directory (see [`crate::results`]) and writes `report.json`
//! and a self-contained `report.html` (inline CSS and SVG, no script, no external URL);
//! [`compare`] puts two runs side by side.
//!
//! The report is a pure function of the run directory: no clock is read, every list has a
//! fixed order (models as in `run.json`, items in natural order of their ids) and the
//! bootstrap is seeded, so the same directory always gives byte-identical files, whether the
//! run finished in one go or was resumed.
//!
//! Failed requests are counted in a model's error rate and left out of its accuracy; paired
//! statistics use only the items both models answered.

mod compare;
mod compute;
mod format;
mod html;
mod load;
mod markup;
mod recommend;
mod svg;
mod terminal;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use compare::{
    COMPARE_HTML_FILE, COMPARE_JSON_FILE, Comparison, ItemChange, ModelDelta, compare,
    compare_with_options,
};

use crate::results::ItemResult;
use crate::stats::{Interval, McNemar, PairedComparison};
use crate::truncate_chars;
use compute::{compute, model_stats, run_info};
pub(crate) use compute::{LoadedRun, verdict_word};
pub(crate) use format::{cost_phrase, pct, points, usd};

pub const REPORT_JSON_FILE: &str = "report.json";
pub const REPORT_HTML_FILE: &str = "report.html";

/// Version of the `report.json` layout.
pub const REPORT_FORMAT: u32 = 1;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// How the report judges the models.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReportOptions {
    /// The non-inferiority margin as a fraction (0.02 = 2 accuracy points).
    pub margin: f64,
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self { margin: 0.02 }
    }
}

/// Everything the report shows; `report.json` is this, serialized.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub format: u32,
    pub run: RunInfo,
    /// The first model of the run: the one the others are compared with.
    pub baseline: Option<String>,
    /// The non-inferiority margin, as a fraction.
    pub margin: f64,
    pub models: Vec<ModelStats>,
    /// Every other model against the baseline, on the items both answered.
    pub comparisons: Vec<BaselineComparison>,
    /// Every pair of models (upper triangle, in model order).
    pub agreement: Vec<Agreement>,
    /// The models on the cost/accuracy Pareto frontier (cheapest first); only models with
    /// a known cost and at least one answer take part.
    pub pareto_frontier: Vec<String>,
    /// Pairwise-judge tallies from `pairwise.jsonl`.
    pub judge: Vec<JudgeTally>,
    /// The recommendation, one sentence or short paragraph per entry.
    pub recommendation: Vec<String>,
    /// Per item: each model's verdict.
    pub items: Vec<ItemRow>,
    /// What was odd about the directory (unreadable lines, duplicates, results for unknown
    /// models).
    pub warnings: Vec<String>,
}

/// The run, as `run.json` describes it.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub run_id: String,
    pub dataset: String,
    pub dataset_name: String,
    pub dataset_sha256: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Items in the dataset (after `--limit`).
    pub items: u64,
    pub scorers: Vec<String>,
    pub max_cost_usd: Option<f64>,
    pub stopped_by_budget: bool,
}

/// One model's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStats {
    pub model: String,
    /// The `PROVIDER/MODEL`s that answered for it (more than one for a route).
    pub targets: Vec<String>,
    /// Results recorded (answered + errors).
    pub results: u64,
    /// Answered and scored.
    pub answered: u64,
    /// Failed requests (or answers that could not be scored).
    pub errors: u64,
    /// Dataset items with no result (the run was stopped or is still running).
    pub missing: u64,
    /// `errors / results`.
    pub error_rate: Option<f64>,
    pub passed: u64,
    /// `passed / answered`: errors are not counted as wrong.
    pub accuracy: Option<f64>,
    /// Wilson 95% interval of the accuracy.
    pub accuracy_ci: Option<Interval>,
    /// Mean score per scorer over answered items.
    pub scorer_means: BTreeMap<String, f64>,
    /// The most common error messages (class prefix), with counts.
    pub error_kinds: Vec<(String, u64)>,
    /// Total cost over the results with a known price; `None` when no price was known.
    pub cost_usd: Option<f64>,
    /// Mean cost per result with a known price.
    pub cost_per_item_usd: Option<f64>,
    /// Results whose cost is unknown.
    pub cost_unknown: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Latency percentiles over answered items, in milliseconds.
    pub latency_p50_ms: Option<u64>,
    pub latency_p95_ms: Option<u64>,
    pub ttft_p50_ms: Option<u64>,
}

/// A model against the baseline.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineComparison {
    pub baseline: String,
    pub model: String,
    /// `None` when no item was answered by both.
    pub paired: Option<PairedComparison>,
    /// Mean cost per item of the model divided by the baseline's; `None` when either is
    /// unknown or the baseline's is 0.
    pub cost_ratio: Option<f64>,
    /// The verdict in one word: `better`, `non-inferior`, `worse`, `inconclusive`,
    /// `no-data`.
    pub verdict: String,
}

/// How often two models get the same verdict on the items both answered.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    pub model_a: String,
    pub model_b: String,
    pub n: u64,
    pub agree: u64,
    pub rate: Option<f64>,
    /// `b`: items only `model_a` passed, `c`: only `model_b` passed.
    pub mcnemar: McNemar,
}

/// Pairwise-judge outcomes for one pair of models and one judge.
#[derive(Debug, Clone, Serialize)]
pub struct JudgeTally {
    pub model_a: String,
    pub model_b: String,
    pub judge: String,
    pub wins_a: u64,
    pub wins_b: u64,
    pub ties: u64,
}

/// One dataset item across the models.
#[derive(Debug, Clone, Serialize)]
pub struct ItemRow {
    pub item_id: String,
    /// One verdict per model, in model order.
    pub verdicts: Vec<Verdict>,
    /// Some model's verdict differs from the baseline's (both answered).
    pub disagreement: bool,
}

/// One model's outcome on one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Error,
    Missing,
}

impl Verdict {
    fn of(result: Option<&ItemResult>) -> Self {
        match result {
            None => Verdict::Missing,
            Some(r) if r.error.is_some() => Verdict::Error,
            Some(r) => match r.passed {
                Some(true) => Verdict::Pass,
                Some(false) => Verdict::Fail,
                None => Verdict::Error,
            },
        }
    }

    pub(crate) fn answered(self) -> Option<bool> {
        match self {
            Verdict::Pass => Some(true),
            Verdict::Fail => Some(false),
            Verdict::Error | Verdict::Missing => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Error => "error",
            Verdict::Missing => "missing",
        }
    }
}

/// What `write_report` computed and where it wrote it.
#[derive(Debug, Clone)]
pub struct ReportSummary {
    pub report: Report,
    pub json_path: PathBuf,
    pub html_path: PathBuf,
}

impl ReportSummary {
    /// The summary as aligned text tables for the terminal.
    pub fn terminal(&self) -> String {
        let mut out = terminal::report(&self.report);
        out.push_str(&format!(
            "\nreport: {}\n        {}\n",
            self.html_path.display(),
            self.json_path.display()
        ));
        out
    }
}

/// Reads `run_dir`, computes the statistics and writes `report.json` and `report.html`
/// into it, with the default options.
pub fn write_report(run_dir: &Path) -> Result<ReportSummary, ReportError> {
    write_report_with_options(run_dir, &ReportOptions::default())
}

/// [`write_report`] with explicit options.
pub fn write_report_with_options(
    run_dir: &Path,
    options: &ReportOptions,
) -> Result<ReportSummary, ReportError> {
    let run = load::load(run_dir)?;
    let report = compute(&run, options);
    let json_path = run_dir.join(REPORT_JSON_FILE);
    let html_path = run_dir.join(REPORT_HTML_FILE);
    write_file(&json_path, &to_json(&report, &json_path)?)?;
    write_file(&html_path, html::report(&report, &run).as_bytes())?;
    Ok(ReportSummary {
        report,
        json_path,
        html_path,
    })
}

/// The HTML report of `run_dir`, computed now and not written (the web UI's eval pages).
pub fn render_html(run_dir: &Path, options: &ReportOptions) -> Result<String, ReportError> {
    let run = load::load(run_dir)?;
    let report = compute(&run, options);
    Ok(html::report(&report, &run))
}

/// Computes the report of `run_dir` without writing anything.
pub fn build_report(run_dir: &Path, options: &ReportOptions) -> Result<Report, ReportError> {
    let run = load::load(run_dir)?;
    Ok(compute(&run, options))
}

fn to_json<T: Serialize>(value: &T, path: &Path) -> Result<Vec<u8>, ReportError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| ReportError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Writes through a temporary file and a rename, so a reader never sees half a report.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let err = |source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
