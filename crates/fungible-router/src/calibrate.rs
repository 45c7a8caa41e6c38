//! From predictions to decisions: the pick for one request, the cost–quality curve a
//! threshold sweep traces on labelled requests, the threshold that meets a goal, and the
//! average performance gap recovered (APGR).

use serde::{Deserialize, Serialize};

/// A threshold above every prediction (predictions are at most 1): no target is good
/// enough, so each request goes to its best-predicted target.
pub(crate) const NONE_CLEARS: f64 = 2.0;

/// What a route's threshold is calibrated to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// At least this fraction of the best single target's quality (e.g. 0.95), as cheaply
    /// as possible.
    Quality(f64),
    /// The best quality at most this cost per request.
    MaxCost(f64),
}

/// The cheapest target whose score clears `threshold` (the best-scored one when none does),
/// then the others by score, best first.
pub(crate) fn pick(scores: &[f64], costs: &[f64], threshold: f64) -> Vec<usize> {
    let n = scores.len().min(costs.len());
    let mut by_cost: Vec<usize> = (0..n).collect();
    by_cost.sort_by(|&a, &b| costs[a].total_cmp(&costs[b]).then(a.cmp(&b)));
    let best = (0..n).max_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(b.cmp(&a)));
    let Some(chosen) = by_cost.iter().copied().find(|&i| scores[i] >= threshold).or(best) else {
        return Vec::new();
    };
    let mut rest: Vec<usize> = (0..n).filter(|&i| i != chosen).collect();
    rest.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    std::iter::once(chosen).chain(rest).collect()
}

/// One threshold's outcome on labelled requests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub threshold: f64,
    /// Mean cost per request.
    pub cost: f64,
    /// Mean quality of the picked targets' answers.
    pub quality: f64,
    /// The share of requests sent to the cheapest target.
    pub cheapest_share: f64,
}

/// The outcome of routing each request (`preds[i]`, one score per target) at `threshold`,
/// where `truth[i]` is each target's real quality on it.
pub(crate) fn evaluate(preds: &[Vec<f64>], truth: &[Vec<f64>], costs: &[f64], threshold: f64) -> Point {
    let cheapest = cheapest(costs);
    let (mut cost, mut quality, mut cheap) = (0.0, 0.0, 0usize);
    for (p, t) in preds.iter().zip(truth) {
        let Some(&chosen) = pick(p, costs, threshold).first() else { continue };
        cost += costs[chosen];
        quality += t[chosen];
        cheap += usize::from(chosen == cheapest);
    }
    let n = preds.len().max(1) as f64;
    Point { threshold, cost: cost / n, quality: quality / n, cheapest_share: cheap as f64 / n }
}

pub(crate) fn cheapest(costs: &[f64]) -> usize {
    (0..costs.len()).min_by(|&a, &b| costs[a].total_cmp(&costs[b]).then(a.cmp(&b))).unwrap_or(0)
}

/// Every threshold worth trying, evaluated, by cost: 0, one above all predictions, and the
/// midpoint between each two neighbouring distinct predictions (at most 200 of them, spread
/// evenly). A threshold anywhere between two predictions splits these requests alike; the
/// midpoint leaves the most room on either side for requests not seen yet.
pub(crate) fn curve(preds: &[Vec<f64>], truth: &[Vec<f64>], costs: &[f64]) -> Vec<Point> {
    let mut values: Vec<f64> = preds.iter().flatten().copied().filter(|v| v.is_finite()).collect();
    values.sort_by(f64::total_cmp);
    values.dedup();
    let midpoints: Vec<f64> = values.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    let step = midpoints.len().div_ceil(200).max(1);
    let mut thresholds: Vec<f64> = midpoints.into_iter().step_by(step).collect();
    thresholds.push(0.0);
    thresholds.push(NONE_CLEARS);
    let mut points: Vec<Point> = thresholds.into_iter().map(|t| evaluate(preds, truth, costs, t)).collect();
    points.sort_by(|a, b| a.cost.total_cmp(&b.cost).then(b.quality.total_cmp(&a.quality)));
    points
}

/// The point that meets `goal`, where `best_quality` is the best single target's.
pub(crate) fn choose(curve: &[Point], goal: Goal, best_quality: f64) -> Option<Point> {
    match goal {
        Goal::Quality(fraction) => curve
            .iter()
            .filter(|p| p.quality >= fraction * best_quality - 1e-12)
            .min_by(|a, b| a.cost.total_cmp(&b.cost).then(b.quality.total_cmp(&a.quality)))
            .copied(),
        Goal::MaxCost(most) => curve
            .iter()
            .filter(|p| p.cost <= most + 1e-12)
            .max_by(|a, b| a.quality.total_cmp(&b.quality).then(b.cost.total_cmp(&a.cost)))
            .copied(),
    }
}

/// The average performance gap recovered (RouteLLM): over budgets evenly spaced from the
/// cheap target's cost to the strong one's, the mean of `(q(c) - q_cheap) / (q_strong -
/// q_cheap)`, where `q(c)` is the best quality the curve reaches at cost `c` (linear
/// between its points, as mixing two thresholds at random would). Random mixing scores 0.5.
/// `None` when the strong target is not both dearer and better: there is no gap to recover.
/// `cheap` and `strong` are `(cost, quality)`.
pub fn apgr(curve: &[Point], cheap: (f64, f64), strong: (f64, f64)) -> Option<f64> {
    if strong.0 <= cheap.0 || strong.1 <= cheap.1 {
        return None;
    }
    // The upper envelope: by cost, each point at least as good as every cheaper one.
    let mut envelope: Vec<(f64, f64)> = vec![cheap];
    let mut sorted: Vec<&Point> = curve.iter().collect();
    sorted.sort_by(|a, b| a.cost.total_cmp(&b.cost));
    for p in sorted {
        let best = envelope.last().map_or(f64::NEG_INFINITY, |e| e.1);
        if p.quality > best {
            envelope.push((p.cost.max(envelope.last().map_or(p.cost, |e| e.0)), p.quality));
        }
    }
    let q_at = |c: f64| -> f64 {
        let mut q = envelope[0].1;
        for pair in envelope.windows(2) {
            let ((c0, q0), (c1, q1)) = (pair[0], pair[1]);
            if c >= c1 {
                q = q1;
            } else if c > c0 {
                q = q0 + (q1 - q0) * (c - c0) / (c1 - c0);
                break;
            } else {
                break;
            }
        }
        q
    };
    let steps = 100;
    let total: f64 = (0..=steps)
        .map(|i| cheap.0 + (strong.0 - cheap.0) * f64::from(i) / f64::from(steps))
        .map(|c| (q_at(c) - cheap.1) / (strong.1 - cheap.1))
        .sum();
    Some(total / f64::from(steps + 1))
}
