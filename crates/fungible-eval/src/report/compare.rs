//! `fungible eval compare A B`: two saved runs side by side. Each model present in both runs
//! is compared with itself (A -> B) on the items both runs answered, with the same paired
//! statistics as the report; when the runs share no model, their baselines are compared.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::html::STYLE;
use super::markup::escape;
use super::terminal::{Table, ms, opt};
use super::{
    LoadedRun, ModelStats, ReportError, ReportOptions, RunInfo, Verdict, load, model_stats, pct,
    points, run_info, truncate_chars, usd, verdict_word, write_file,
};
use crate::stats::{self, PairedComparison};

pub const COMPARE_JSON_FILE: &str = "compare.json";
pub const COMPARE_HTML_FILE: &str = "compare.html";

/// Two runs compared; `compare.json` is this, serialized.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub format: u32,
    pub run_a: RunInfo,
    pub run_b: RunInfo,
    /// Whether both runs used the same dataset bytes (`None` when a hash is missing).
    pub same_dataset: Option<bool>,
    /// Item ids present in both runs.
    pub shared_items: u64,
    pub margin: f64,
    pub models: Vec<ModelDelta>,
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
    /// Plain-language summary, one entry per model pair.
    pub summary: Vec<String>,
    /// Items whose verdict changed between the runs (both answered), per model pair.
    pub changed_items: Vec<ItemChange>,
    pub warnings: Vec<String>,
}

/// One model in run A against one model (usually the same) in run B.
#[derive(Debug, Clone, Serialize)]
pub struct ModelDelta {
    pub model_a: String,
    pub model_b: String,
    /// Whole-run numbers of each side.
    pub a: ModelStats,
    pub b: ModelStats,
    /// B minus A over the shared items both answered.
    pub paired: Option<PairedComparison>,
    pub verdict: String,
    /// Mean cost per item of B over A's.
    pub cost_ratio: Option<f64>,
}

/// An item whose verdict changed between the runs.
#[derive(Debug, Clone, Serialize)]
pub struct ItemChange {
    pub item_id: String,
    pub model_a: String,
    pub model_b: String,
    pub verdict_a: Verdict,
    pub verdict_b: Verdict,
    /// The answers, cut to 2,000 characters.
    pub output_a: Option<String>,
    pub output_b: Option<String>,
}

/// Compares run `a` (the earlier one) with run `b`, with the default options.
pub fn compare(a: &Path, b: &Path) -> Result<Comparison, ReportError> {
    compare_with_options(a, b, &ReportOptions::default())
}

/// [`compare`] with explicit options.
pub fn compare_with_options(
    a: &Path,
    b: &Path,
    options: &ReportOptions,
) -> Result<Comparison, ReportError> {
    let ra = load::load(a)?;
    let rb = load::load(b)?;
    Ok(build(&ra, &rb, options))
}

fn build(ra: &LoadedRun, rb: &LoadedRun, options: &ReportOptions) -> Comparison {
    let in_b: BTreeSet<&String> = rb.items.iter().collect();
    let shared: Vec<&String> = ra.items.iter().filter(|i| in_b.contains(i)).collect();
    let mut pairs: Vec<(String, String)> = ra
        .models
        .iter()
        .filter(|m| rb.models.contains(m))
        .map(|m| (m.clone(), m.clone()))
        .collect();
    let mut warnings: Vec<String> = Vec::new();
    for w in &ra.warnings {
        warnings.push(format!("run A: {w}"));
    }
    for w in &rb.warnings {
        warnings.push(format!("run B: {w}"));
    }
    if pairs.is_empty()
        && let (Some(x), Some(y)) = (ra.models.first(), rb.models.first())
    {
        warnings.push(format!(
            "the runs share no model; comparing their baselines {x} (A) and {y} (B)"
        ));
        pairs.push((x.clone(), y.clone()));
    }
    let only_in_a: Vec<String> = ra
        .models
        .iter()
        .filter(|m| !pairs.iter().any(|p| &p.0 == *m))
        .cloned()
        .collect();
    let only_in_b: Vec<String> = rb
        .models
        .iter()
        .filter(|m| !pairs.iter().any(|p| &p.1 == *m))
        .cloned()
        .collect();

    let same_dataset = match (&ra.meta.dataset_sha256, &rb.meta.dataset_sha256) {
        (Some(x), Some(y)) => Some(x == y),
        _ => None,
    };
    if same_dataset == Some(false) {
        warnings.push(format!(
            "the runs used different datasets; only the {} item ids both have are compared",
            shared.len()
        ));
    }

    let mut models = Vec::new();
    let mut changed_items = Vec::new();
    for (ma, mb) in &pairs {
        let (va, vb): (Vec<bool>, Vec<bool>) = shared
            .iter()
            .filter_map(|item| {
                Some((
                    ra.verdict(item, ma).answered()?,
                    rb.verdict(item, mb).answered()?,
                ))
            })
            .unzip();
        let paired = stats::paired_comparison(
            &va,
            &vb,
            options.margin,
            stats::BOOTSTRAP_RESAMPLES,
            stats::BOOTSTRAP_SEED,
        );
        let a = model_stats(ra, ma);
        let b = model_stats(rb, mb);
        let cost_ratio = match (a.cost_per_item_usd, b.cost_per_item_usd) {
            (Some(x), Some(y)) if x > 0.0 => Some(y / x),
            _ => None,
        };
        for item in &shared {
            let (x, y) = (ra.verdict(item, ma), rb.verdict(item, mb));
            if x.answered().is_some() && y.answered().is_some() && x != y {
                let cut = |r: Option<&crate::results::ItemResult>| {
                    r.and_then(|r| r.output.as_deref())
                        .map(|o| truncate_chars(o, 2000))
                };
                changed_items.push(ItemChange {
                    item_id: (*item).clone(),
                    model_a: ma.clone(),
                    model_b: mb.clone(),
                    verdict_a: x,
                    verdict_b: y,
                    output_a: cut(ra.result(item, ma)),
                    output_b: cut(rb.result(item, mb)),
                });
            }
        }
        models.push(ModelDelta {
            model_a: ma.clone(),
            model_b: mb.clone(),
            verdict: verdict_word(paired.as_ref()).to_owned(),
            paired,
            cost_ratio,
            a,
            b,
        });
    }

    let summary = models.iter().map(|d| sentence(d, options.margin)).collect();
    Comparison {
        format: super::REPORT_FORMAT,
        run_a: run_info(&ra.meta),
        run_b: run_info(&rb.meta),
        same_dataset,
        shared_items: shared.len() as u64,
        margin: options.margin,
        models,
        only_in_a,
        only_in_b,
        summary,
        changed_items,
        warnings,
    }
}

fn name(d: &ModelDelta) -> String {
    if d.model_a == d.model_b {
        d.model_a.clone()
    } else {
        format!("{} -> {}", d.model_a, d.model_b)
    }
}

fn sentence(d: &ModelDelta, margin: f64) -> String {
    let margin_pts = points(margin).trim_start_matches('+').to_owned();
    let Some(p) = &d.paired else {
        return format!(
            "{}: no shared item answered in both runs, nothing to compare.",
            name(d)
        );
    };
    let diff = format!(
        "{} points from A to B, 95% CI {} to {}, over {} shared items",
        points(p.diff),
        points(p.ci.low),
        points(p.ci.high),
        p.n
    );
    let cost = d
        .cost_ratio
        .map(|r| format!("; B costs {}", super::cost_phrase(r)));
    let cost = cost.unwrap_or_default();
    let mut s = if p.significantly_better {
        format!(
            "{}: B is significantly more accurate ({diff}){cost}.",
            name(d)
        )
    } else if p.significantly_worse {
        format!(
            "{}: B is significantly less accurate ({diff}){cost}{}.",
            name(d),
            if p.non_inferior {
                ", though within the margin"
            } else {
                ""
            }
        )
    } else if p.non_inferior {
        format!(
            "{}: no loss beyond {margin_pts} points ({diff}){cost}.",
            name(d)
        )
    } else {
        format!(
            "{}: no significant change, but a loss beyond {margin_pts} points is not ruled out ({diff}){cost}.",
            name(d)
        )
    };
    if let (Some(ea), Some(eb)) = (d.a.error_rate, d.b.error_rate)
        && (ea - eb).abs() > 1e-12
    {
        s.push_str(&format!(" Error rate {} -> {}.", pct(ea), pct(eb)));
    }
    s
}

impl Comparison {
    /// The comparison as aligned text tables for the terminal.
    pub fn terminal(&self) -> String {
        let mut out = format!(
            "compare {} (A) with {} (B): {} shared items{}\n\n",
            self.run_a.run_id,
            self.run_b.run_id,
            self.shared_items,
            match self.same_dataset {
                Some(true) => ", same dataset",
                Some(false) => ", DIFFERENT datasets",
                None => "",
            }
        );
        let mut t = Table::new(&[
            "model",
            "acc A",
            "acc B",
            "diff",
            "95% CI",
            "McNemar p",
            "err A",
            "err B",
            "cost/item A",
            "cost/item B",
            "p50 A",
            "p50 B",
            "verdict",
        ]);
        for d in &self.models {
            let p = d.paired.as_ref();
            t.row(vec![
                name(d),
                opt(d.a.accuracy, pct),
                opt(d.b.accuracy, pct),
                opt(p, |p| points(p.diff)),
                opt(p, |p| {
                    format!("{} to {}", points(p.ci.low), points(p.ci.high))
                }),
                opt(p, |p| format!("{:.3}", p.mcnemar.exact_p)),
                opt(d.a.error_rate, pct),
                opt(d.b.error_rate, pct),
                opt(d.a.cost_per_item_usd, usd),
                opt(d.b.cost_per_item_usd, usd),
                opt(d.a.latency_p50_ms, ms),
                opt(d.b.latency_p50_ms, ms),
                d.verdict.clone(),
            ]);
        }
        out.push_str(&t.render());
        out.push('\n');
        for s in &self.summary {
            out.push_str(&format!("* {s}\n"));
        }
        if !self.only_in_a.is_empty() {
            out.push_str(&format!("only in A: {}\n", self.only_in_a.join(", ")));
        }
        if !self.only_in_b.is_empty() {
            out.push_str(&format!("only in B: {}\n", self.only_in_b.join(", ")));
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        out
    }

    /// `compare.json`, pretty-printed.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// `compare.html`: one self-contained page.
    pub fn to_html(&self) -> String {
        let mut h = String::new();
        let _ = write!(
            h,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>fungible \
             eval compare: {} vs {}</title><style>{STYLE}</style></head><body>\n<header><h1>\
             Compare runs</h1><p class=\"meta\">A: <code>{}</code> ({}, {}) · B: <code>{}</code> \
             ({}, {}) · {} shared items{}</p></header>\n",
            escape(&self.run_a.run_id),
            escape(&self.run_b.run_id),
            escape(&self.run_a.run_id),
            escape(&self.run_a.dataset_name),
            escape(&self.run_a.started_at),
            escape(&self.run_b.run_id),
            escape(&self.run_b.dataset_name),
            escape(&self.run_b.started_at),
            self.shared_items,
            match self.same_dataset {
                Some(true) => " · same dataset",
                Some(false) => " · <strong class=\"warn\">different datasets</strong>",
                None => "",
            }
        );
        h.push_str("<section><h2>Summary</h2><ul class=\"rec\">");
        for s in &self.summary {
            let _ = write!(h, "<li>{}</li>", escape(s));
        }
        for w in &self.warnings {
            let _ = write!(h, "<li class=\"warn\">{}</li>", escape(w));
        }
        h.push_str(
            "</ul><p class=\"note\">Differences are B minus A, paired over the items both runs \
             answered (95% percentile bootstrap, McNemar's exact test); failed requests are \
             left out of accuracy and shown as error rates.</p></section>\n<section><h2>Models\
             </h2><table><thead><tr><th>model</th><th>accuracy A</th><th>accuracy B</th>\
             <th>difference</th><th>95% CI</th><th>McNemar exact p</th><th>errors A</th>\
             <th>errors B</th><th>cost/item A</th><th>cost/item B</th><th>p50 A</th>\
             <th>p50 B</th><th>verdict</th></tr></thead><tbody>",
        );
        for d in &self.models {
            let p = d.paired.as_ref();
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td>{}</td></tr>",
                escape(&name(d)),
                opt(d.a.accuracy, pct),
                opt(d.b.accuracy, pct),
                opt(p, |p| points(p.diff)),
                opt(p, |p| format!(
                    "{} to {}",
                    points(p.ci.low),
                    points(p.ci.high)
                )),
                opt(p, |p| format!("{:.4}", p.mcnemar.exact_p)),
                opt(d.a.error_rate, pct),
                opt(d.b.error_rate, pct),
                opt(d.a.cost_per_item_usd, usd),
                opt(d.b.cost_per_item_usd, usd),
                opt(d.a.latency_p50_ms, ms),
                opt(d.b.latency_p50_ms, ms),
                escape(&d.verdict)
            );
        }
        h.push_str("</tbody></table></section>\n");
        let _ = write!(
            h,
            "<section><h2>Changed items</h2><p class=\"note\">{} item verdicts changed between \
             the runs.</p><table class=\"items\"><thead><tr><th>item</th><th>model</th>\
             <th>A</th><th>B</th></tr></thead><tbody>",
            self.changed_items.len()
        );
        for c in &self.changed_items {
            let cell = |v: Verdict, out: &Option<String>| {
                format!(
                    "<span class=\"badge {0}\">{0}</span><pre>{1}</pre>",
                    v.label(),
                    escape(out.as_deref().unwrap_or(""))
                )
            };
            let model = if c.model_a == c.model_b {
                c.model_a.clone()
            } else {
                format!("{} -> {}", c.model_a, c.model_b)
            };
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&c.item_id),
                escape(&model),
                cell(c.verdict_a, &c.output_a),
                cell(c.verdict_b, &c.output_b)
            );
        }
        h.push_str("</tbody></table></section>\n</body></html>\n");
        h
    }

    /// Writes `compare.json` and `compare.html` into `out_dir` (created if missing) and
    /// returns their paths.
    pub fn write(&self, out_dir: &Path) -> Result<(PathBuf, PathBuf), ReportError> {
        let json = out_dir.join(COMPARE_JSON_FILE);
        let html = out_dir.join(COMPARE_HTML_FILE);
        write_file(&json, self.to_json().as_bytes())?;
        write_file(&html, self.to_html().as_bytes())?;
        Ok((json, html))
    }
}
