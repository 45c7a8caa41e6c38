//! The report's recommendation: which models can replace the baseline, in sentences.

use super::{Report, cost_phrase, pct, points, usd};

pub(super) fn recommend(report: &Report) -> Vec<String> {
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
    // Significantly more accurate at no more cost: (accuracy gain, model, cost phrase).
    let mut better_no_costlier: Vec<(f64, &str, String)> = Vec::new();
    for (cmp, other) in report.comparisons.iter().zip(others) {
        // Both priced at zero (local models): equal in cost, which is not "unknown".
        let both_free = base.cost_per_item_usd == Some(0.0) && other.cost_per_item_usd == Some(0.0);
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
                    None if both_free => " (both cost nothing)".to_owned(),
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
            (Some(p), Some(r)) if p.significantly_better && r <= 1.0 => {
                better_no_costlier.push((p.diff, other.model.as_str(), cost_phrase(r)))
            }
            (Some(p), None) if p.significantly_better && both_free => {
                better_no_costlier.push((p.diff, other.model.as_str(), "no cost either".to_owned()))
            }
            _ => {}
        }
        match (&cmp.paired, cmp.cost_ratio) {
            (Some(p), Some(r)) if p.non_inferior && r < 1.0 => {
                non_inferior_cheaper.push((r, other.model.as_str()))
            }
            // Unpriced only when a price is missing (a free baseline against a paid model is
            // priced: the paid one is not cheaper).
            (Some(p), None)
                if p.non_inferior && (base.cost_per_item_usd.is_none() || other.cost_per_item_usd.is_none()) =>
            {
                non_inferior_unpriced.push(other.model.as_str())
            }
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
    better_no_costlier.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    if let Some((diff, m, cost)) = better_no_costlier.first() {
        out.push(format!(
            "Recommendation: replace {} with {m}, {:.1} points more accurate at {cost} (95% confidence).",
            base.model,
            diff * 100.0
        ));
    } else if let Some((r, m)) = non_inferior_cheaper.first() {
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
