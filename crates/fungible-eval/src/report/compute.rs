//! What the report computes from a run: per-model statistics, the comparisons with the
//! baseline, the judges' tallies.

use std::collections::BTreeMap;

use super::recommend::recommend;
use super::{
    Agreement, BaselineComparison, ItemRow, JudgeTally, ModelStats, REPORT_FORMAT, Report, ReportOptions, RunInfo,
    Verdict,
};
use crate::results::{ItemResult, RunMeta};
use crate::stats::{self, PairedComparison};
use crate::truncate_chars;

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

pub(super) fn compute(run: &LoadedRun, options: &ReportOptions) -> Report {
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

pub(super) fn run_info(meta: &RunMeta) -> RunInfo {
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

pub(super) fn model_stats(run: &LoadedRun, model: &str) -> ModelStats {
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
