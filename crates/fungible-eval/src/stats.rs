//! Statistics for the eval report: confidence intervals, paired tests, percentiles and the
//! cost/quality Pareto frontier.
//!
//! Everything here is a pure function of its input. The bootstrap draws from a SplitMix64
//! generator written out below rather than a library RNG, because a library is free to change
//! its stream between versions and the report must stay byte-identical for the same run
//! directory.

use serde::Serialize;

/// The standard normal quantile for a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Resamples the report's bootstrap draws.
pub const BOOTSTRAP_RESAMPLES: u32 = 10_000;

/// The seed of the report's bootstrap (any fixed number; fixed so reports are reproducible).
pub const BOOTSTRAP_SEED: u64 = 0x6675_6e67_6962_6c65;

/// A closed interval `[low, high]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

impl Interval {
    pub fn contains(&self, x: f64) -> bool {
        self.low <= x && x <= self.high
    }
}

/// The Wilson score interval of a proportion `successes / n` at normal quantile `z`
/// (`Z95` for 95%). `None` when `n` is 0. Unlike the Wald interval it stays inside [0, 1] and
/// keeps its coverage near 0% and 100%.
pub fn wilson(successes: u64, n: u64, z: f64) -> Option<Interval> {
    if n == 0 || successes > n {
        return None;
    }
    let n = n as f64;
    let p = successes as f64 / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    Some(Interval {
        low: (centre - half).max(0.0),
        high: (centre + half).min(1.0),
    })
}

/// McNemar's test on the discordant pairs of a paired comparison: `b` items only the first
/// model passed, `c` items only the second passed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct McNemar {
    pub b: u64,
    pub c: u64,
    /// Exact two-sided p-value: the binomial test of `b` successes in `b + c` trials at 1/2.
    pub exact_p: f64,
    /// The chi-square statistic with continuity correction, `(|b - c| - 1)^2 / (b + c)`.
    pub chi2: f64,
    /// Its p-value (chi-square, one degree of freedom).
    pub chi2_p: f64,
}

/// McNemar's test (exact and chi-square with continuity correction). With no discordant
/// pairs both p-values are 1.
pub fn mcnemar(b: u64, c: u64) -> McNemar {
    let n = b + c;
    if n == 0 {
        return McNemar {
            b,
            c,
            exact_p: 1.0,
            chi2: 0.0,
            chi2_p: 1.0,
        };
    }
    let exact_p = (2.0 * binomial_cdf_half(b.min(c), n)).min(1.0);
    let diff = (b as f64 - c as f64).abs();
    let chi2 = (diff - 1.0).max(0.0).powi(2) / n as f64;
    McNemar {
        b,
        c,
        exact_p,
        chi2,
        chi2_p: chi2_1df_sf(chi2),
    }
}

/// `P(X <= k)` for `X ~ Binomial(n, 1/2)`, summed in log space so large `n` does not
/// underflow.
fn binomial_cdf_half(k: u64, n: u64) -> f64 {
    let ln_half_n = n as f64 * std::f64::consts::LN_2;
    let ln_n_fact = libm::lgamma(n as f64 + 1.0);
    let terms: Vec<f64> = (0..=k.min(n))
        .map(|i| {
            ln_n_fact
                - libm::lgamma(i as f64 + 1.0)
                - libm::lgamma((n - i) as f64 + 1.0)
                - ln_half_n
        })
        .collect();
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = terms.iter().map(|t| (t - max).exp()).sum();
    (max + sum.ln()).exp().min(1.0)
}

/// The survival function of the chi-square distribution with one degree of freedom:
/// `P(X > x) = erfc(sqrt(x / 2))`.
fn chi2_1df_sf(x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    libm::erfc((x / 2.0).sqrt())
}

/// SplitMix64 (Steele, Lea and Flood, 2014): small, fast and fully specified, so the same seed
/// gives the same stream on every platform and every version of this crate.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform index in `0..n` (multiply-shift; the bias is below 2^-32 for any `n` a
    /// dataset can have).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// The percentile bootstrap interval (at 95%) of `mean(second) - mean(first)` over paired
/// items: each resample draws items with replacement, keeping each item's pair together.
/// `None` when there are no pairs or the slices differ in length.
pub fn paired_bootstrap_diff(
    first: &[bool],
    second: &[bool],
    resamples: u32,
    seed: u64,
) -> Option<Interval> {
    if first.is_empty() || first.len() != second.len() || resamples == 0 {
        return None;
    }
    let deltas: Vec<i64> = first
        .iter()
        .zip(second)
        .map(|(&a, &b)| i64::from(b) - i64::from(a))
        .collect();
    let n = deltas.len();
    let mut rng = SplitMix64::new(seed);
    let mut diffs: Vec<f64> = (0..resamples)
        .map(|_| {
            let sum: i64 = (0..n).map(|_| deltas[rng.below(n)]).sum();
            sum as f64 / n as f64
        })
        .collect();
    diffs.sort_by(f64::total_cmp);
    let r = diffs.len();
    let low_rank = ((0.025 * r as f64).floor() as usize).min(r - 1);
    let high_rank = ((0.975 * r as f64).ceil() as usize).clamp(1, r) - 1;
    Some(Interval {
        low: diffs[low_rank],
        high: diffs[high_rank],
    })
}

/// A paired comparison of a candidate with a baseline on the items both answered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairedComparison {
    /// Items in the comparison.
    pub n: u64,
    /// Candidate accuracy minus baseline accuracy, in [-1, 1].
    pub diff: f64,
    /// The 95% paired bootstrap interval of `diff`.
    pub ci: Interval,
    /// The margin (as a fraction, 0.02 = 2 points) the non-inferiority test used.
    pub margin: f64,
    /// The exact (Clopper-Pearson) one-sided 97.5% upper bound on the share of items the
    /// candidate loses (the baseline passed, the candidate did not).
    pub loss_bound: f64,
    /// The candidate is at most `margin` worse (one-sided, 2.5%): the interval's lower end
    /// is above `-margin`, and so is the exact bound `wins/n - loss_bound`. The second
    /// keeps the verdict honest when few items disagree: with none, the bootstrap interval
    /// collapses to [0, 0] however few items there are, but 0 losses in `n` items only
    /// bound the loss rate by about 3.7/n.
    pub non_inferior: bool,
    /// The interval lies above 0.
    pub significantly_better: bool,
    /// The interval lies below 0.
    pub significantly_worse: bool,
    /// McNemar's test on the discordant pairs (`b`: only the baseline passed).
    pub mcnemar: McNemar,
}

/// Compares `candidate` with `baseline` over paired verdicts: the accuracy difference, its
/// bootstrap interval, McNemar's test and the non-inferiority verdict at `margin`.
pub fn paired_comparison(
    baseline: &[bool],
    candidate: &[bool],
    margin: f64,
    resamples: u32,
    seed: u64,
) -> Option<PairedComparison> {
    let ci = paired_bootstrap_diff(baseline, candidate, resamples, seed)?;
    let n = baseline.len();
    let b = baseline
        .iter()
        .zip(candidate)
        .filter(|(a, c)| **a && !**c)
        .count() as u64;
    let c = baseline
        .iter()
        .zip(candidate)
        .filter(|(a, c)| !**a && **c)
        .count() as u64;
    let diff = (c as f64 - b as f64) / n as f64;
    let loss_bound = binomial_upper_bound(b, n as u64, 0.025);
    Some(PairedComparison {
        n: n as u64,
        diff,
        ci,
        margin,
        loss_bound,
        non_inferior: ci.low > -margin && c as f64 / n as f64 - loss_bound > -margin,
        significantly_better: ci.low > 0.0,
        significantly_worse: ci.high < 0.0,
        mcnemar: mcnemar(b, c),
    })
}

/// The exact (Clopper-Pearson) one-sided upper confidence bound, at level `1 - alpha`, on a
/// binomial proportion observed as `k` successes in `n` trials: the `p` at which seeing at
/// most `k` has probability `alpha`.
pub fn binomial_upper_bound(k: u64, n: u64, alpha: f64) -> f64 {
    if n == 0 || k >= n {
        return 1.0;
    }
    if k == 0 {
        return 1.0 - alpha.powf(1.0 / n as f64);
    }
    // P(X <= k) falls as p grows: bisect between the observed share and 1.
    let (mut lo, mut hi) = (k as f64 / n as f64, 1.0);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if binomial_cdf(k, n, mid) > alpha {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

/// P(X <= k) for X ~ Binomial(n, p), 0 < p < 1, summed in logs.
fn binomial_cdf(k: u64, n: u64, p: f64) -> f64 {
    let (ln_p, ln_q) = (p.ln(), (1.0 - p).ln());
    let mut ln_choose = 0.0; // ln C(n, i)
    let mut sum = 0.0;
    for i in 0..=k.min(n) {
        sum += (ln_choose + i as f64 * ln_p + (n - i) as f64 * ln_q).exp();
        ln_choose += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    sum.min(1.0)
}

/// The nearest-rank percentile (`q` in (0, 1]) of sorted values, as `fungible stats`
/// computes it; `None` when empty.
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The indices of the points on the Pareto frontier of (cost, quality): no other point is
/// at most as expensive and at least as good while strictly better in one of the two.
/// Ordered by cost, then by quality descending, then by index.
pub fn pareto_frontier(points: &[(f64, f64)]) -> Vec<usize> {
    let mut frontier: Vec<usize> = (0..points.len())
        .filter(|&i| {
            let (ci, qi) = points[i];
            !points
                .iter()
                .any(|&(c, q)| c <= ci && q >= qi && (c < ci || q > qi))
        })
        .collect();
    frontier.sort_by(|&a, &b| {
        points[a]
            .0
            .total_cmp(&points[b].0)
            .then(points[b].1.total_cmp(&points[a].1))
            .then(a.cmp(&b))
    });
    frontier
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn wilson_matches_known_values() {
        // 50/100: [0.4038, 0.5962] (Wilson 1927; also statsmodels
        // `proportion_confint(50, 100, method="wilson")`).
        let ci = wilson(50, 100, Z95).expect("interval");
        assert!(close(ci.low, 0.403_831, 1e-5), "{ci:?}");
        assert!(close(ci.high, 0.596_169, 1e-5), "{ci:?}");
        // 0/10: [0, 0.2775] (statsmodels `proportion_confint(0, 10, method="wilson")`).
        let ci = wilson(0, 10, Z95).expect("interval");
        assert_eq!(ci.low, 0.0);
        assert!(close(ci.high, 0.277_535, 1e-5), "{ci:?}");
        // 95/100: [0.8882, 0.9785] (statsmodels, as above).
        let ci = wilson(95, 100, Z95).expect("interval");
        assert!(close(ci.low, 0.888_250, 1e-5), "{ci:?}");
        assert!(close(ci.high, 0.978_457, 1e-5), "{ci:?}");
        // 10/10: [0.7225, 1].
        let ci = wilson(10, 10, Z95).expect("interval");
        assert!(close(ci.high, 1.0, 1e-12), "{ci:?}");
        assert!(close(ci.low, 0.722_465, 1e-5), "{ci:?}");
        assert_eq!(wilson(0, 0, Z95), None);
        assert_eq!(wilson(3, 2, Z95), None);
    }

    #[test]
    fn mcnemar_matches_known_values() {
        // b=10, c=2: exact p = 2 * P(X <= 2 | n=12, 1/2) = 2 * (1 + 12 + 66) / 4096
        // = 0.038574; chi2 = (8 - 1)^2 / 12 = 4.083333, p = 0.043308 (statsmodels
        // `mcnemar([[0, 10], [2, 0]], exact=False, correction=True)`).
        let t = mcnemar(10, 2);
        assert!(close(t.exact_p, 158.0 / 4096.0, 1e-12), "{t:?}");
        assert!(close(t.chi2, 49.0 / 12.0, 1e-12), "{t:?}");
        assert!(close(t.chi2_p, 0.043_308, 1e-5), "{t:?}");
        // Symmetric in b and c.
        assert_eq!(mcnemar(2, 10).exact_p, t.exact_p);
        // b=5, c=5: no evidence; the doubled tail is capped at 1.
        let t = mcnemar(5, 5);
        assert_eq!(t.exact_p, 1.0);
        assert_eq!(t.chi2, 0.0);
        assert_eq!(t.chi2_p, 1.0);
        // b=0, c=6: exact p = 2 / 64 = 0.03125; chi2 = 25 / 6, p = 0.041227.
        let t = mcnemar(0, 6);
        assert!(close(t.exact_p, 0.031_25, 1e-12), "{t:?}");
        assert!(close(t.chi2_p, 0.041_227, 1e-5), "{t:?}");
        // Large counts stay finite: b=600, c=400, exact p = 2.728e-10 (scipy
        // `binomtest(400, 1000).pvalue`).
        let t = mcnemar(600, 400);
        assert!(t.exact_p > 1e-10 && t.exact_p < 5e-10, "{t:?}");
        assert_eq!(mcnemar(0, 0).exact_p, 1.0);
    }

    #[test]
    fn bootstrap_is_deterministic_and_near_the_normal_interval() {
        // Baseline passes all 100, the candidate fails 10: diff = -0.10, and the normal
        // approximation of the paired interval is -0.10 +- 1.96 * sqrt(0.1 * 0.9 / 100)
        // = [-0.159, -0.041].
        let baseline = vec![true; 100];
        let candidate: Vec<bool> = (0..100).map(|i| i % 10 != 0).collect();
        let ci = paired_bootstrap_diff(&baseline, &candidate, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
            .expect("interval");
        assert!(close(ci.low, -0.159, 0.015), "{ci:?}");
        assert!(close(ci.high, -0.041, 0.015), "{ci:?}");
        let again =
            paired_bootstrap_diff(&baseline, &candidate, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED);
        assert_eq!(again, Some(ci));
        // Identical verdicts: a zero-width interval at 0.
        let same = paired_bootstrap_diff(&candidate, &candidate, 1000, 1).expect("interval");
        assert_eq!(
            same,
            Interval {
                low: 0.0,
                high: 0.0
            }
        );
        assert_eq!(paired_bootstrap_diff(&[], &[], 1000, 1), None);
        assert_eq!(
            paired_bootstrap_diff(&[true], &[true, false], 1000, 1),
            None
        );
    }

    #[test]
    fn splitmix_matches_the_reference_stream() {
        // The first outputs of SplitMix64 seeded with 1234567 (the reference C implementation
        // by Vigna, xoshiro.di.unimi.it/splitmix64.c).
        let mut rng = SplitMix64::new(1_234_567);
        assert_eq!(rng.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(rng.next_u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn non_inferiority_at_a_margin() {
        // 1000 items, the candidate loses 5 the baseline passed and wins 3: diff = -0.002,
        // well within a 2-point margin.
        let baseline: Vec<bool> = (0..1000).map(|i| i % 4 != 0).collect();
        let mut candidate = baseline.clone();
        for i in [1, 2, 3, 5, 6] {
            candidate[i] = false;
        }
        for i in [0, 4, 8] {
            candidate[i] = true;
        }
        let cmp = paired_comparison(&baseline, &candidate, 0.02, 2000, 7).expect("comparison");
        assert!(close(cmp.diff, -0.002, 1e-12));
        assert!(cmp.non_inferior && !cmp.significantly_better && !cmp.significantly_worse);
        assert_eq!((cmp.mcnemar.b, cmp.mcnemar.c), (5, 3));
        // The candidate loses 100 of them: 10 points worse, neither non-inferior nor equal.
        let worse: Vec<bool> = baseline
            .iter()
            .enumerate()
            .map(|(i, &p)| p && i >= 133)
            .collect();
        let cmp = paired_comparison(&baseline, &worse, 0.02, 2000, 7).expect("comparison");
        assert!(!cmp.non_inferior && cmp.significantly_worse, "{cmp:?}");
    }

    #[test]
    fn exact_binomial_bounds() {
        // Zero of n: 1 - 0.025^(1/n) (the "rule of three" at 97.5%: about 3.7/n).
        assert!(close(binomial_upper_bound(0, 90, 0.025), 0.040_17, 1e-4));
        // Known Clopper-Pearson one-sided 97.5% upper bounds (R: binom.test(k, n)$conf.int[2]).
        assert!(close(binomial_upper_bound(5, 1000, 0.025), 0.011_63, 1e-4));
        assert!(close(binomial_upper_bound(1, 10, 0.025), 0.445_0, 1e-3));
        assert_eq!(binomial_upper_bound(10, 10, 0.025), 1.0);
    }

    #[test]
    fn identical_answers_on_few_items_are_not_non_inferior() {
        // Every item agrees: the bootstrap interval is [0, 0], but 90 items cannot bound a
        // loss below 2 points; about 183 can.
        let verdicts: Vec<bool> = (0..90).map(|i| i % 2 == 0).collect();
        let cmp = paired_comparison(&verdicts, &verdicts, 0.02, 2000, 7).expect("comparison");
        assert_eq!((cmp.ci.low, cmp.ci.high), (0.0, 0.0));
        assert!(!cmp.non_inferior && !cmp.significantly_worse, "{cmp:?}");
        let verdicts: Vec<bool> = (0..200).map(|i| i % 2 == 0).collect();
        let cmp = paired_comparison(&verdicts, &verdicts, 0.02, 2000, 7).expect("comparison");
        assert!(cmp.non_inferior, "{cmp:?}");
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.95), Some(95));
        assert_eq!(percentile(&[7], 0.95), Some(7));
        assert_eq!(percentile(&[1, 2, 3, 4], 0.5), Some(2));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn pareto_frontier_drops_dominated_points() {
        // (cost, accuracy)
        let pts = [
            (1.0, 0.80),
            (0.5, 0.70),
            (2.0, 0.78),
            (0.5, 0.60),
            (3.0, 0.90),
            (1.0, 0.80),
        ];
        // 2 is dominated by 0; 3 by 1; 0 and 5 are identical and both stay.
        assert_eq!(pareto_frontier(&pts), vec![1, 0, 5, 4]);
        assert!(pareto_frontier(&[]).is_empty());
    }
}
