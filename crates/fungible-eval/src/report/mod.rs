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
mod html;
mod load;
mod markup;
mod svg;
mod terminal;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use compare::{
    COMPARE_HTML_FILE, COMPARE_JSON_FILE, Comparison, ItemChange, ModelDelta, compare,
    compare_with_options,
};

use crate::results::{ItemResult, RunMeta};
use crate::stats::{self, Interval, McNemar, PairedComparison};
use crate::truncate_chars;

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

/// A run directory as read back: its metadata, and every (item, model) result.
#[derive(Debug, Clone)]
pub(crate) struct LoadedRun {
    pub meta: RunMeta,
    /// Models in report order: `meta.models`, then any others found in the results, sorted.
    pub models: Vec<String>,
    /// Item ids in natural order.
    pub items: Vec<String>,
    /// (item id, model) -> result (the last line of a duplicated pair).
    pub results: BTreeMap<(String, String), ItemResult>,
    pub pairwise: Vec<crate::results::PairwiseResult>,
    pub warnings: Vec<String>,
}

impl LoadedRun {
    pub fn result(&self, item: &str, model: &str) -> Option<&ItemResult> {
        self.results.get(&(item.to_owned(), model.to_owned()))
    }

    pub fn verdict(&self, item: &str, model: &str) -> Verdict {
        Verdict::of(self.result(item, model))
    }

    /// The input and reference of an item, from the first model that has a result for it.
    pub fn item_text(&self, item: &str) -> (&str, Option<&str>) {
        self.models
            .iter()
            .find_map(|m| self.result(item, m))
            .map(|r| (r.input.as_str(), r.reference.as_deref()))
            .unwrap_or(("", None))
    }

    /// The verdicts of `a` and `b` on the items both answered, in item order.
    pub fn paired(&self, a: &str, b: &str) -> (Vec<bool>, Vec<bool>) {
        self.items
            .iter()
            .filter_map(|item| {
                Some((
                    self.verdict(item, a).answered()?,
                    self.verdict(item, b).answered()?,
                ))
            })
            .unzip()
    }
}

fn compute(run: &LoadedRun, options: &ReportOptions) -> Report {
    let models: Vec<ModelStats> = run.models.iter().map(|m| model_stats(run, m)).collect();
    let baseline = run.models.first().cloned();

    let comparisons: Vec<BaselineComparison> = match models.split_first() {
        Some((base, others)) => others
            .iter()
            .map(|other| baseline_comparison(run, base, other, options.margin))
            .collect(),
        None => Vec::new(),
    };

    let mut agreement = Vec::new();
    for (i, a) in run.models.iter().enumerate() {
        for b in &run.models[i + 1..] {
            let (va, vb) = run.paired(a, b);
            let agree = va.iter().zip(&vb).filter(|(x, y)| x == y).count() as u64;
            let only_a = va.iter().zip(&vb).filter(|(x, y)| **x && !**y).count() as u64;
            let only_b = va.iter().zip(&vb).filter(|(x, y)| !**x && **y).count() as u64;
            let n = va.len() as u64;
            agreement.push(Agreement {
                model_a: a.clone(),
                model_b: b.clone(),
                n,
                agree,
                rate: (n > 0).then(|| agree as f64 / n as f64),
                mcnemar: stats::mcnemar(only_a, only_b),
            });
        }
    }

    let plotted: Vec<(usize, (f64, f64))> = models
        .iter()
        .enumerate()
        .filter_map(|(i, m)| Some((i, (m.cost_per_item_usd?, m.accuracy?))))
        .collect();
    let points: Vec<(f64, f64)> = plotted.iter().map(|(_, p)| *p).collect();
    let pareto_frontier = stats::pareto_frontier(&points)
        .into_iter()
        .map(|k| models[plotted[k].0].model.clone())
        .collect();

    let items = run
        .items
        .iter()
        .map(|item| {
            let verdicts: Vec<Verdict> = run.models.iter().map(|m| run.verdict(item, m)).collect();
            let base = verdicts.first().and_then(|v| v.answered());
            let disagreement = base.is_some_and(|b| {
                verdicts[1..]
                    .iter()
                    .any(|v| v.answered().is_some_and(|x| x != b))
            });
            ItemRow {
                item_id: item.clone(),
                verdicts,
                disagreement,
            }
        })
        .collect();

    let mut report = Report {
        format: REPORT_FORMAT,
        run: run_info(&run.meta),
        baseline,
        margin: options.margin,
        models,
        comparisons,
        agreement,
        pareto_frontier,
        judge: judge_tallies(run),
        recommendation: Vec::new(),
        items,
        warnings: run.warnings.clone(),
    };
    report.recommendation = recommend(&report);
    report
}

fn run_info(meta: &RunMeta) -> RunInfo {
    RunInfo {
        run_id: meta.run_id.clone(),
        dataset: meta.dataset.clone(),
        dataset_name: meta.dataset_name.clone(),
        dataset_sha256: meta.dataset_sha256.clone(),
        started_at: meta.started_at.clone(),
        finished_at: meta.finished_at.clone(),
        items: meta.items,
        scorers: meta.scorers.clone(),
        max_cost_usd: meta.max_cost_usd,
        stopped_by_budget: meta.stopped_by_budget,
    }
}

fn model_stats(run: &LoadedRun, model: &str) -> ModelStats {
    let results: Vec<&ItemResult> = run
        .items
        .iter()
        .filter_map(|i| run.result(i, model))
        .collect();
    let mut targets: Vec<String> = results.iter().filter_map(|r| r.target.clone()).collect();
    targets.sort();
    targets.dedup();

    let verdicts: Vec<Verdict> = results.iter().map(|r| Verdict::of(Some(*r))).collect();
    let answered: Vec<&ItemResult> = results
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| v.answered().is_some())
        .map(|(r, _)| *r)
        .collect();
    let passed = verdicts.iter().filter(|v| **v == Verdict::Pass).count() as u64;
    let errors = (results.len() - answered.len()) as u64;
    let n_answered = answered.len() as u64;

    let mut scorer_sums: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    for r in &answered {
        for (name, score) in &r.scores {
            let e = scorer_sums.entry(name.clone()).or_default();
            e.0 += score;
            e.1 += 1;
        }
    }
    let scorer_means = scorer_sums
        .into_iter()
        .map(|(k, (s, n))| (k, s / n as f64))
        .collect();

    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for r in &results {
        match (&r.error, r.passed) {
            (Some(e), _) => *kinds.entry(error_class(e)).or_default() += 1,
            (None, None) => *kinds.entry("not scored".to_owned()).or_default() += 1,
            _ => {}
        }
    }
    let mut error_kinds: Vec<(String, u64)> = kinds.into_iter().collect();
    error_kinds.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    error_kinds.truncate(5);

    let costs: Vec<f64> = results.iter().filter_map(|r| r.cost_usd).collect();
    let cost_usd = (!costs.is_empty()).then(|| costs.iter().sum::<f64>());
    let cost_per_item_usd = cost_usd.map(|c| c / costs.len() as f64);

    let mut latencies: Vec<u64> = answered.iter().map(|r| r.latency_ms).collect();
    latencies.sort_unstable();
    let mut ttfts: Vec<u64> = answered.iter().filter_map(|r| r.ttft_ms).collect();
    ttfts.sort_unstable();

    ModelStats {
        model: model.to_owned(),
        targets,
        results: results.len() as u64,
        answered: n_answered,
        errors,
        missing: run
            .meta
            .items
            .max(run.items.len() as u64)
            .saturating_sub(results.len() as u64),
        error_rate: (!results.is_empty()).then(|| errors as f64 / results.len() as f64),
        passed,
        accuracy: (n_answered > 0).then(|| passed as f64 / n_answered as f64),
        accuracy_ci: stats::wilson(passed, n_answered, stats::Z95),
        scorer_means,
        error_kinds,
        cost_usd,
        cost_per_item_usd,
        cost_unknown: (results.len() - costs.len()) as u64,
        input_tokens: results.iter().filter_map(|r| r.input_tokens).sum(),
        output_tokens: results.iter().filter_map(|r| r.output_tokens).sum(),
        latency_p50_ms: stats::percentile(&latencies, 0.50),
        latency_p95_ms: stats::percentile(&latencies, 0.95),
        ttft_p50_ms: stats::percentile(&ttfts, 0.50),
    }
}

/// The class of an error message (`"timeout: upstream took 30s"` -> `"timeout"`), bounded in
/// length.
fn error_class(error: &str) -> String {
    let class = error.split(':').next().unwrap_or(error).trim();
    truncate_chars(if class.is_empty() { "error" } else { class }, 60)
}

fn baseline_comparison(
    run: &LoadedRun,
    base: &ModelStats,
    other: &ModelStats,
    margin: f64,
) -> BaselineComparison {
    let (vb, vo) = run.paired(&base.model, &other.model);
    let paired = stats::paired_comparison(
        &vb,
        &vo,
        margin,
        stats::BOOTSTRAP_RESAMPLES,
        stats::BOOTSTRAP_SEED,
    );
    let cost_ratio = match (base.cost_per_item_usd, other.cost_per_item_usd) {
        (Some(b), Some(o)) if b > 0.0 => Some(o / b),
        _ => None,
    };
    BaselineComparison {
        baseline: base.model.clone(),
        model: other.model.clone(),
        verdict: verdict_word(paired.as_ref()).to_owned(),
        paired,
        cost_ratio,
    }
}

pub(crate) fn verdict_word(paired: Option<&PairedComparison>) -> &'static str {
    match paired {
        None => "no-data",
        Some(p) if p.significantly_better => "better",
        Some(p) if p.non_inferior => "non-inferior",
        Some(p) if p.significantly_worse => "worse",
        Some(_) => "inconclusive",
    }
}

/// (model A's rank, model B's rank, model A, model B, judge): ordered as the models are.
type JudgeKey = (usize, usize, String, String, String);

fn judge_tallies(run: &LoadedRun) -> Vec<JudgeTally> {
    let mut tallies: BTreeMap<JudgeKey, (u64, u64, u64)> = BTreeMap::new();
    let rank = |m: &str| run.models.iter().position(|x| x == m).unwrap_or(usize::MAX);
    for p in &run.pairwise {
        let key = (
            rank(&p.model_a),
            rank(&p.model_b),
            p.model_a.clone(),
            p.model_b.clone(),
            p.judge.clone(),
        );
        let t = tallies.entry(key).or_default();
        match p.winner.as_str() {
            "a" => t.0 += 1,
            "b" => t.1 += 1,
            _ => t.2 += 1,
        }
    }
    tallies
        .into_iter()
        .map(
            |((_, _, model_a, model_b, judge), (wins_a, wins_b, ties))| JudgeTally {
                model_a,
                model_b,
                judge,
                wins_a,
                wins_b,
                ties,
            },
        )
        .collect()
}

/// Formats a fraction as percentage points with one decimal: `0.853` -> `85.3%`.
pub(crate) fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Formats a difference in accuracy points with its sign: `-0.004` -> `-0.4`.
pub(crate) fn points(x: f64) -> String {
    let v = x * 100.0;
    let v = if v.abs() < 0.05 { 0.0 } else { v };
    if v > 0.0 {
        format!("+{v:.1}")
    } else {
        format!("{v:.1}")
    }
}

/// Formats US dollars with three significant digits (`$0.000123`, `$1.23`, `$1234`).
pub(crate) fn usd(x: f64) -> String {
    if x == 0.0 {
        return "$0".to_owned();
    }
    let magnitude = x.abs().log10().floor() as i32;
    let decimals = (2 - magnitude).clamp(0, 10) as usize;
    format!("${x:.decimals$}")
}

/// Formats a cost ratio for a sentence: `0.18` -> `18% of the cost`, `1.4` -> `1.4x the cost`.
pub(crate) fn cost_phrase(ratio: f64) -> String {
    if ratio == 0.0 {
        "no cost".to_owned()
    } else if (ratio - 1.0).abs() < 0.005 {
        "the same cost".to_owned()
    } else if ratio < 1.0 {
        let p = ratio * 100.0;
        if p < 1.0 {
            format!("{p:.2}% of the cost")
        } else {
            format!("{p:.0}% of the cost")
        }
    } else {
        format!("{ratio:.1}x the cost")
    }
}

fn recommend(report: &Report) -> Vec<String> {
    let mut out = Vec::new();
    let Some((base, others)) = report.models.split_first() else {
        out.push("No results yet: the run directory has no models.".to_owned());
        return out;
    };
    let margin_pts = format!("{:.0}", report.margin * 100.0);
    let margin_pts = if (report.margin * 100.0).fract().abs() > 1e-9 {
        format!("{:.1}", report.margin * 100.0)
    } else {
        margin_pts
    };
    if others.is_empty() {
        out.push(format!(
            "Only one model ({}) was run, so there is nothing to compare it with; run again \
             with a second model to get a recommendation.",
            base.model
        ));
    }
    if base.answered == 0 && !others.is_empty() {
        out.push(format!(
            "No recommendation: the baseline {} answered no item ({} of {} requests failed), \
             so no model can be compared with it.",
            base.model, base.errors, base.results
        ));
    }
    let mut non_inferior_cheaper: Vec<(f64, &str)> = Vec::new();
    let mut non_inferior_unpriced: Vec<&str> = Vec::new();
    for (cmp, other) in report.comparisons.iter().zip(others) {
        let mut s = match &cmp.paired {
            None if base.answered == 0 => continue,
            None if other.answered == 0 => format!(
                "{} answered no item ({} of {} requests failed), so it cannot replace {}.",
                other.model, other.errors, other.results, base.model
            ),
            None => format!(
                "{} and {} answered no item in common, so they cannot be compared.",
                other.model, base.model
            ),
            Some(p) => {
                let diff = format!(
                    "{} points, 95% CI {} to {}, over {} items both answered",
                    points(p.diff),
                    points(p.ci.low),
                    points(p.ci.high),
                    p.n
                );
                let cost = match cmp.cost_ratio {
                    Some(r) => format!(" at {}", cost_phrase(r)),
                    None => String::new(),
                };
                if p.significantly_better {
                    format!(
                        "{} is significantly more accurate than {} ({diff}){cost}.",
                        other.model, base.model
                    )
                } else if p.non_inferior {
                    let worse = if p.significantly_worse {
                        " (slightly but significantly worse, yet within the margin)"
                    } else {
                        ""
                    };
                    format!(
                        "{} is statistically non-inferior to {} within {margin_pts} points{cost}{worse} ({diff}).",
                        other.model, base.model
                    )
                } else if p.significantly_worse {
                    format!(
                        "{} is less accurate than {} ({diff}){cost}; it is not a replacement \
                         within {margin_pts} points.",
                        other.model, base.model
                    )
                } else if p.ci.low > -p.margin {
                    // The interval alone would pass: too few items disagree to trust it.
                    format!(
                        "Inconclusive: {} vs {} ({diff}){cost}. Only {} of the items differ: \
                         {} lost items out of {} could hide a loss rate of up to {} points \
                         (exact 97.5% bound), more than {margin_pts}; more items would narrow it.",
                        other.model,
                        base.model,
                        p.mcnemar.b + p.mcnemar.c,
                        p.mcnemar.b,
                        p.n,
                        format!("{:.1}", p.loss_bound * 100.0)
                    )
                } else {
                    format!(
                        "Inconclusive: {} vs {} ({diff}){cost}. The interval does not rule out \
                         a loss of more than {margin_pts} points; more items would narrow it.",
                        other.model, base.model
                    )
                }
            }
        };
        if cmp.paired.is_some() {
            match (base.cost_per_item_usd, other.cost_per_item_usd) {
                (Some(b), Some(o)) if b == 0.0 && o > 0.0 => s.push_str(&format!(
                    " It costs {} per item where {} costs nothing.",
                    usd(o),
                    base.model
                )),
                (Some(_), Some(_)) => {}
                (None, None) => s.push_str(" Costs are unknown for both (no price)."),
                (None, Some(_)) => s.push_str(&format!(
                    " The cost of {} is unknown (no price).",
                    base.model
                )),
                (Some(_), None) => s.push_str(&format!(
                    " The cost of {} is unknown (no price).",
                    other.model
                )),
            }
        }
        if other.errors > 0 {
            s.push_str(&format!(
                " {} failed {} of {} requests ({}); failures are not counted as wrong answers.",
                other.model,
                other.errors,
                other.results,
                pct(other.error_rate.unwrap_or(0.0))
            ));
        }
        match (&cmp.paired, cmp.cost_ratio) {
            (Some(p), Some(r)) if p.non_inferior && r < 1.0 => {
                non_inferior_cheaper.push((r, other.model.as_str()))
            }
            (Some(p), None) if p.non_inferior => non_inferior_unpriced.push(other.model.as_str()),
            _ => {}
        }
        out.push(s);
    }
    if base.errors > 0 && base.answered > 0 {
        out.push(format!(
            "The baseline {} failed {} of {} requests ({}); failures are not counted as wrong \
             answers.",
            base.model,
            base.errors,
            base.results,
            pct(base.error_rate.unwrap_or(0.0))
        ));
    }
    non_inferior_cheaper.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    if let Some((r, m)) = non_inferior_cheaper.first() {
        out.push(format!(
            "Recommendation: {m} can replace {} at {} with at most a {margin_pts}-point loss in \
             accuracy (95% confidence).",
            base.model,
            cost_phrase(*r)
        ));
    } else if !non_inferior_unpriced.is_empty() {
        out.push(format!(
            "Recommendation: {} within {margin_pts} points of {}, but without prices the costs \
             cannot be compared here.",
            match non_inferior_unpriced.as_slice() {
                [one] => format!("{one} is"),
                many => format!("{} are", many.join(", ")),
            },
            base.model
        ));
    } else if !others.is_empty() && base.answered > 0 {
        out.push(format!(
            "Recommendation: keep {}; no cheaper model is shown to be within {margin_pts} points \
             of it.",
            base.model
        ));
    }
    if report.run.stopped_by_budget {
        out.push(
            "The run stopped at its spend cap, so not every item was answered; the numbers \
             cover the answered items only."
                .to_owned(),
        );
    }
    out
}
