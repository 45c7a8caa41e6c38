//! `report.html`: one self-contained page (inline CSS and SVG, no script, no external URL).
//! Every piece of text from the run directory (model outputs are untrusted) goes through
//! [`escape`], attributes included.

use std::fmt::Write as _;

use super::terminal::{ms, tokens};
use super::markup::escape;
use super::{LoadedRun, Report, Verdict, pct, points, svg, truncate_chars, usd};

pub(crate) const STYLE: &str = r#"
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
  max-width: 1200px; padding: 24px; color: #111; background: #fff; line-height: 1.4; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.2rem; margin: 32px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta { color: #555; font-size: 0.9rem; }
.meta code { background: #f3f3f3; padding: 0 3px; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; }
th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.rec li { margin: 6px 0; }
.note { color: #555; font-size: 0.85rem; max-width: 900px; }
.warn { color: #8a5300; }
.badge { display: inline-block; min-width: 3.2em; text-align: center; border-radius: 3px;
  padding: 0 4px; font-size: 0.8rem; font-weight: 600; }
.pass { background: #d7f0d8; color: #14541a; }
.fail { background: #f8d4d4; color: #7a1111; }
.error { background: #fde7c4; color: #7a4a00; }
.missing { background: #eee; color: #555; }
td.differs { outline: 2px solid #d33; outline-offset: -2px; background: #fff6f6; }
tr.disagree > td:first-child { border-left: 4px solid #d33; }
.agree td.cell { text-align: center; min-width: 90px; }
details summary { cursor: pointer; }
pre { white-space: pre-wrap; word-break: break-word; margin: 4px 0; font-size: 0.8rem;
  max-height: 24em; overflow: auto; background: #f8f8f8; padding: 4px; }
.items td { max-width: 320px; overflow-wrap: anywhere; }
.items .small { color: #555; font-size: 0.75rem; }
#only-disagree:checked ~ .items-wrap tr.same { display: none; }
svg.plot { max-width: 100%; height: auto; display: block; margin: 8px 0; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 6px; }
footer { margin-top: 40px; color: #777; font-size: 0.8rem; }
"#;

/// An optional piece of a sentence: nothing when absent.
fn or_empty<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_default()
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "–".to_owned())
}

pub(crate) fn report(r: &Report, run: &LoadedRun) -> String {
    let mut h = String::new();
    let title = format!("fungible eval: {} ({})", r.run.dataset_name, r.run.run_id);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(&title)
    );
    let _ = writeln!(
        h,
        "<header><h1>Eval report: {}</h1><p class=\"meta\">run <code>{}</code> · dataset \
         <code>{}</code>{} · {} items · scorers: {} · started {}{}{}</p></header>",
        escape(&r.run.dataset_name),
        escape(&r.run.run_id),
        escape(&r.run.dataset),
        or_empty(r.run.dataset_sha256.as_deref(), |s| format!(
            " (sha256 <code>{}</code>)",
            escape(&truncate_chars(s, 12))
        )),
        r.run.items,
        escape(&if r.run.scorers.is_empty() {
            "–".to_owned()
        } else {
            r.run.scorers.join(", ")
        }),
        escape(&r.run.started_at),
        or_empty(r.run.finished_at.as_deref(), |s| format!(
            " · finished {}",
            escape(s)
        )),
        or_empty(r.run.max_cost_usd, |c| format!(
            " · spend cap {}{}",
            usd(c),
            if r.run.stopped_by_budget {
                " (reached: the run stopped early)"
            } else {
                ""
            }
        )),
    );

    // Recommendation.
    h.push_str("<section id=\"recommendation\"><h2>Recommendation</h2><ul class=\"rec\">");
    for s in &r.recommendation {
        let _ = write!(h, "<li>{}</li>", escape(s));
    }
    let _ = writeln!(
        h,
        "</ul><p class=\"note\">Failed requests are reported as the error rate and are not \
         counted in accuracy (neither right nor wrong). Accuracy intervals are Wilson 95% \
         score intervals. Differences with the baseline ({}) are paired over the items both \
         models answered: 95% percentile bootstrap ({} resamples, fixed seed) and McNemar's \
         exact test. A model is non-inferior when the lower end of the interval of its \
         difference is above −{} points, and so is its share of wins minus the exact \
         (Clopper-Pearson) bound on its share of losses.</p></section>",
        escape(r.baseline.as_deref().unwrap_or("–")),
        crate::stats::BOOTSTRAP_RESAMPLES,
        points(r.margin).trim_start_matches('+'),
    );

    // Models.
    h.push_str(
        "<section id=\"models\"><h2>Models</h2><table class=\"models\"><thead><tr>\
         <th>model</th><th>accuracy</th><th>95% CI</th><th>answered</th><th>errors</th>\
         <th>missing</th><th>cost</th><th>cost / item</th><th>tokens in</th>\
         <th>tokens out</th><th>p50 latency</th><th>p95 latency</th><th>p50 TTFT</th>\
         </tr></thead><tbody>",
    );
    for (i, m) in r.models.iter().enumerate() {
        let targets = if m.targets.is_empty() || m.targets == [m.model.clone()] {
            String::new()
        } else {
            format!(
                "<div class=\"small\">{}</div>",
                escape(&m.targets.join(", "))
            )
        };
        let errors = if m.errors == 0 {
            "0".to_owned()
        } else {
            let kinds: Vec<String> = m
                .error_kinds
                .iter()
                .map(|(k, n)| format!("{k} ×{n}"))
                .collect();
            format!(
                "<span title=\"{}\">{} ({})</span>",
                escape(&kinds.join(", ")),
                m.errors,
                pct(m.error_rate.unwrap_or(0.0))
            )
        };
        let cost_note = if m.cost_unknown > 0 && m.cost_usd.is_some() {
            format!(
                " <span class=\"warn\" title=\"{} results without a price\">*</span>",
                m.cost_unknown
            )
        } else {
            String::new()
        };
        let _ = write!(
            h,
            "<tr><td><span class=\"swatch\" style=\"background:{}\"></span>{}{}{targets}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{errors}</td><td class=\"num\">{}</td><td class=\"num\">{}{cost_note}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            svg::colour(i),
            escape(&m.model),
            if i == 0 && r.models.len() > 1 {
                " <span class=\"small\">(baseline)</span>"
            } else {
                ""
            },
            opt(m.accuracy, pct),
            opt(m.accuracy_ci, |c| format!(
                "{} – {}",
                pct(c.low),
                pct(c.high)
            )),
            m.answered,
            m.missing,
            opt(m.cost_usd, usd),
            opt(m.cost_per_item_usd, usd),
            tokens(m.input_tokens),
            tokens(m.output_tokens),
            opt(m.latency_p50_ms, ms),
            opt(m.latency_p95_ms, ms),
            opt(m.ttft_p50_ms, ms),
        );
    }
    h.push_str("</tbody></table>");
    let scorers: Vec<&String> = r
        .models
        .iter()
        .flat_map(|m| m.scorer_means.keys())
        .collect();
    let mut scorers: Vec<&String> = scorers.into_iter().collect();
    scorers.sort();
    scorers.dedup();
    if scorers.len() > 1 {
        h.push_str("<p class=\"note\">Mean score per scorer (answered items):</p><table><thead><tr><th>model</th>");
        for s in &scorers {
            let _ = write!(h, "<th>{}</th>", escape(s));
        }
        h.push_str("</tr></thead><tbody>");
        for m in &r.models {
            let _ = write!(h, "<tr><td>{}</td>", escape(&m.model));
            for s in &scorers {
                let _ = write!(
                    h,
                    "<td class=\"num\">{}</td>",
                    opt(m.scorer_means.get(*s).copied(), pct)
                );
            }
            h.push_str("</tr>");
        }
        h.push_str("</tbody></table>");
    }
    h.push_str("</section>\n");

    // Plots.
    h.push_str("<section id=\"plots\"><h2>Cost and quality</h2>");
    match svg::cost_accuracy(&r.models, &r.pareto_frontier) {
        Some(plot) => {
            h.push_str(&plot);
            let unplotted: Vec<&str> = r
                .models
                .iter()
                .filter(|m| m.accuracy.is_some() && m.cost_per_item_usd.is_none())
                .map(|m| m.model.as_str())
                .collect();
            if !unplotted.is_empty() {
                let _ = write!(
                    h,
                    "<p class=\"note\">Not plotted (no price known): {}.</p>",
                    escape(&unplotted.join(", "))
                );
            }
        }
        None => h.push_str(
            "<p class=\"note\">No cost-vs-accuracy plot: no model has both a known price and \
             an answered item.</p>",
        ),
    }
    if let Some(plot) = svg::accuracy_latency(&r.models) {
        h.push_str(&plot);
    }
    h.push_str("</section>\n");

    // Against the baseline.
    if !r.comparisons.is_empty() {
        h.push_str(
            "<section id=\"baseline\"><h2>Against the baseline</h2><table><thead><tr>\
             <th>model</th><th>items both answered</th><th>difference (points)</th>\
             <th>95% CI</th><th>only baseline passed</th><th>only model passed</th>\
             <th>McNemar exact p</th><th>cost ratio</th><th>verdict</th></tr></thead><tbody>",
        );
        for c in &r.comparisons {
            let p = c.paired.as_ref();
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                escape(&c.model),
                opt(p, |p| p.n.to_string()),
                opt(p, |p| points(p.diff)),
                opt(p, |p| format!(
                    "{} to {}",
                    points(p.ci.low),
                    points(p.ci.high)
                )),
                opt(p, |p| p.mcnemar.b.to_string()),
                opt(p, |p| p.mcnemar.c.to_string()),
                opt(p, |p| format!("{:.4}", p.mcnemar.exact_p)),
                opt(c.cost_ratio, |x| format!("{x:.2}×")),
                escape(&c.verdict),
            );
        }
        h.push_str("</tbody></table></section>\n");
    }

    // Agreement matrix.
    if r.models.len() > 1 {
        h.push_str(
            "<section id=\"agreement\"><h2>Agreement</h2><p class=\"note\">How often two models \
             get the same verdict on the items both answered (n in brackets). * marks a pair \
             whose accuracies differ significantly (McNemar exact p &lt; 0.05).</p>\
             <table class=\"agree\"><thead><tr><th></th>",
        );
        for m in &r.models {
            let _ = write!(h, "<th>{}</th>", escape(&truncate_chars(&m.model, 24)));
        }
        h.push_str("</tr></thead><tbody>");
        for a in &r.models {
            let _ = write!(h, "<tr><th>{}</th>", escape(&truncate_chars(&a.model, 24)));
            for b in &r.models {
                if a.model == b.model {
                    h.push_str("<td class=\"cell\" style=\"background:#eee\">–</td>");
                    continue;
                }
                let cell = r.agreement.iter().find(|g| {
                    (g.model_a == a.model && g.model_b == b.model)
                        || (g.model_a == b.model && g.model_b == a.model)
                });
                match cell.and_then(|g| Some((g, g.rate?))) {
                    Some((g, rate)) => {
                        let hue = ((rate - 0.5).max(0.0) / 0.5 * 120.0).round();
                        let star = if g.mcnemar.exact_p < 0.05 { "*" } else { "" };
                        let _ = write!(
                            h,
                            "<td class=\"cell\" style=\"background:hsl({hue:.0},65%,82%)\" \
                             title=\"agree {} of {}; McNemar exact p = {:.4}\">{}{star} \
                             <span class=\"small\">({})</span></td>",
                            g.agree,
                            g.n,
                            g.mcnemar.exact_p,
                            pct(rate),
                            g.n
                        );
                    }
                    None => h.push_str("<td class=\"cell\">–</td>"),
                }
            }
            h.push_str("</tr>");
        }
        h.push_str("</tbody></table></section>\n");
    }

    // Pairwise judge.
    if !r.judge.is_empty() {
        h.push_str(
            "<section id=\"judge\"><h2>Pairwise judge</h2><p class=\"note\">Each pair judged in \
             both orders; a verdict that changes with the order counts as a tie.</p><table>\
             <thead><tr><th>model A</th><th>model B</th><th>judge</th><th>A wins</th>\
             <th>B wins</th><th>ties</th></tr></thead><tbody>",
        );
        for t in &r.judge {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                escape(&t.model_a),
                escape(&t.model_b),
                escape(&t.judge),
                t.wins_a,
                t.wins_b,
                t.ties
            );
        }
        h.push_str("</tbody></table></section>\n");
    }

    items_table(&mut h, r, run);

    if !r.warnings.is_empty() {
        h.push_str("<section id=\"warnings\"><h2>Warnings</h2><ul>");
        for w in &r.warnings {
            let _ = write!(h, "<li class=\"warn\">{}</li>", escape(w));
        }
        h.push_str("</ul></section>\n");
    }
    h.push_str(
        "<footer>Made by <code>fungible eval report</code> from run.json, results.jsonl and \
         pairwise.jsonl; the same directory always gives the same report.</footer>\n\
         </body></html>\n",
    );
    h
}

/// A long text as a short summary that opens to the whole text.
fn expandable(text: &str, max: usize) -> String {
    let short = truncate_chars(text, max);
    if short == text {
        format!("<pre>{}</pre>", escape(text))
    } else {
        format!(
            "<details><summary>{}</summary><pre>{}</pre></details>",
            escape(&short.replace('\n', " ")),
            escape(text)
        )
    }
}

fn items_table(h: &mut String, r: &Report, run: &LoadedRun) {
    let disagreements = r.items.iter().filter(|i| i.disagreement).count();
    let _ = write!(
        h,
        "<section id=\"items\"><h2>Items</h2><p class=\"note\">{} items; {} where a model's \
         verdict differs from the baseline's (marked in red). Click an answer to see it \
         whole.</p><input type=\"checkbox\" id=\"only-disagree\"> <label \
         for=\"only-disagree\">show only items where the models disagree</label>\
         <div class=\"items-wrap\"><table class=\"items\"><thead><tr><th>item</th>\
         <th>input</th><th>reference</th>",
        r.items.len(),
        disagreements
    );
    for m in &r.models {
        let _ = write!(h, "<th>{}</th>", escape(&truncate_chars(&m.model, 28)));
    }
    h.push_str("</tr></thead><tbody>");
    for row in &r.items {
        let (input, reference) = run.item_text(&row.item_id);
        let _ = write!(
            h,
            "<tr class=\"{}\"><td><code>{}</code></td><td>{}</td><td>{}</td>",
            if row.disagreement { "disagree" } else { "same" },
            escape(&row.item_id),
            expandable(input, 160),
            reference
                .map(|t| expandable(t, 80))
                .unwrap_or_else(|| "–".to_owned()),
        );
        let base = row.verdicts.first().and_then(|v| match v {
            Verdict::Pass => Some(true),
            Verdict::Fail => Some(false),
            _ => None,
        });
        for (k, (model, verdict)) in run.models.iter().zip(&row.verdicts).enumerate() {
            let mine = match verdict {
                Verdict::Pass => Some(true),
                Verdict::Fail => Some(false),
                _ => None,
            };
            let differs = k > 0 && base.is_some() && mine.is_some() && base != mine;
            let _ = write!(
                h,
                "<td class=\"{}\"><span class=\"badge {}\">{}</span>",
                if differs { "differs" } else { "" },
                verdict.label(),
                verdict.label()
            );
            if let Some(res) = run.result(&row.item_id, model) {
                if let Some(out) = &res.output {
                    h.push_str(&expandable(out, 120));
                }
                if let Some(err) = &res.error {
                    let _ = write!(
                        h,
                        "<div class=\"small warn\">{}</div>",
                        escape(&truncate_chars(err, 300))
                    );
                }
                let details: Vec<String> = res
                    .details
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", truncate_chars(v, 200)))
                    .collect();
                let _ = write!(
                    h,
                    "<div class=\"small\">{}{}{}</div>",
                    ms(res.latency_ms),
                    or_empty(res.cost_usd, |c| format!(" · {}", usd(c))),
                    if details.is_empty() {
                        String::new()
                    } else {
                        format!(" · {}", escape(&details.join("; ")))
                    }
                );
            }
            h.push_str("</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table></div></section>\n");
}
