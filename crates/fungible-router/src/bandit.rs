//! The adaptive A/B test (`strategy = "adaptive"`): Thompson sampling over a route's
//! variants, driven by the feedback each one's answers got. Each variant's share of new
//! requests is the probability that it is the best (from its posterior), above a floor that
//! keeps every variant explored; the test stops, and its winner gets every request, once each
//! variant has the minimum number of rated answers and one is the best with the chosen
//! confidence.
//!
//! The assessment is a pure function of the feedback counts and a seed, so every instance
//! reading the same store assigns requests alike.

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Beta, Distribution, Normal};
use serde::{Deserialize, Serialize};

/// Posterior draws behind each probability of being best.
const DRAWS: usize = 4_000;

/// What the feedback on a variant's answers counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// The share of answers rated `true` (a Beta posterior).
    Boolean,
    /// The mean `score` (a normal posterior of the mean, scores assumed near 0 to 1).
    Score,
}

/// One variant's feedback so far: `rated` answers whose values sum to `sum` (a boolean
/// counts 1 for `true`) and whose squares sum to `sum_sq`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Arm {
    pub rated: u64,
    pub sum: f64,
    pub sum_sq: f64,
}

impl Arm {
    pub fn mean(&self) -> Option<f64> {
        (self.rated > 0).then(|| self.sum / self.rated as f64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub metric: Metric,
    /// Each variant's least share of requests while the test runs.
    pub min_share: f64,
    /// How sure the winner must be the best.
    pub confidence: f64,
    /// Rated answers each variant needs before the test may stop.
    pub min_samples: u64,
}

/// Where the test stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assessment {
    /// Each variant's share of new requests (summing to 1).
    pub shares: Vec<f64>,
    /// The probability that each variant is the best.
    pub p_best: Vec<f64>,
    /// Set once the test has stopped: every request goes to it.
    pub winner: Option<usize>,
}

/// Assesses `arms` under `settings`; `seed` fixes the posterior draws.
pub fn assess(arms: &[Arm], settings: &Settings, seed: u64) -> Assessment {
    let k = arms.len();
    if k == 0 {
        return Assessment { shares: Vec::new(), p_best: Vec::new(), winner: None };
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let posteriors: Vec<Posterior> = arms.iter().map(|a| Posterior::of(a, settings.metric)).collect();
    let mut wins = vec![0u32; k];
    let mut draw = vec![0.0f64; k];
    for _ in 0..DRAWS {
        for (d, p) in draw.iter_mut().zip(&posteriors) {
            *d = p.sample(&mut rng);
        }
        // Ties go to the lower index; continuous draws make them rare.
        let best = (0..k).fold(0, |b, i| if draw[i] > draw[b] { i } else { b });
        wins[best] += 1;
    }
    let p_best: Vec<f64> = wins.iter().map(|&w| f64::from(w) / DRAWS as f64).collect();
    let leader = (0..k).fold(0, |b, i| if p_best[i] > p_best[b] { i } else { b });
    let enough = arms.iter().all(|a| a.rated >= settings.min_samples);
    if enough && p_best[leader] >= settings.confidence {
        let shares = (0..k).map(|i| if i == leader { 1.0 } else { 0.0 }).collect();
        return Assessment { shares, p_best, winner: Some(leader) };
    }
    let floor = settings.min_share.clamp(0.0, 1.0 / k as f64);
    let shares = p_best.iter().map(|p| floor + (1.0 - floor * k as f64) * p).collect();
    Assessment { shares, p_best, winner: None }
}

enum Posterior {
    Beta(Beta<f64>),
    Normal(Normal<f64>),
}

impl Posterior {
    fn of(arm: &Arm, metric: Metric) -> Posterior {
        let n = arm.rated as f64;
        match metric {
            Metric::Boolean => {
                let successes = arm.sum.clamp(0.0, n);
                // A uniform prior: Beta(1, 1).
                match Beta::new(1.0 + successes, 1.0 + n - successes) {
                    Ok(b) => Posterior::Beta(b),
                    Err(_) => Posterior::Beta(Beta::new(1.0, 1.0).unwrap_or_else(|_| unreachable!("Beta(1, 1) is valid"))),
                }
            }
            Metric::Score => {
                // One pseudo-answer of 0.5 with variance 0.25 (a fair coin) as the prior.
                let mean = (arm.sum + 0.5) / (n + 1.0);
                let variance = if arm.rated >= 2 {
                    ((arm.sum_sq - arm.sum * arm.sum / n) / (n - 1.0)).max(1e-4)
                } else {
                    0.25
                };
                let sd = (variance / (n + 1.0)).sqrt();
                Posterior::Normal(Normal::new(mean, sd).unwrap_or_else(|_| Normal::new(0.5, 0.5).unwrap_or_else(|_| unreachable!("valid"))))
            }
        }
    }

    fn sample(&self, rng: &mut SmallRng) -> f64 {
        match self {
            Posterior::Beta(b) => b.sample(rng),
            Posterior::Normal(n) => n.sample(rng),
        }
    }
}

/// Picks a variant by `shares` for a uniform draw `u` in [0, 1): the one whose stretch of
/// the cumulative shares holds `u`. A sticky key's draw is fixed, so it keeps its variant
/// while the shares move little.
pub fn pick(shares: &[f64], u: f64) -> usize {
    let total: f64 = shares.iter().sum();
    let mut cumulative = 0.0;
    for (i, s) in shares.iter().enumerate() {
        cumulative += s / total.max(f64::MIN_POSITIVE);
        if u < cumulative {
            return i;
        }
    }
    shares.iter().rposition(|s| *s > 0.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    const SETTINGS: Settings = Settings { metric: Metric::Boolean, min_share: 0.1, confidence: 0.95, min_samples: 100 };

    /// Runs the test on simulated traffic: batches of 50 requests split by the shares, each
    /// answer rated `true` with its variant's probability; returns the winner, the requests
    /// it took, and the smallest share any variant had before the stop.
    fn simulate(rates: &[f64], settings: &Settings, seed: u64) -> (Option<usize>, usize, f64) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut arms = vec![Arm::default(); rates.len()];
        let mut least: f64 = 1.0;
        for batch in 0..400 {
            let a = assess(&arms, settings, seed ^ batch);
            if let Some(w) = a.winner {
                return (Some(w), batch as usize * 50, least);
            }
            least = least.min(a.shares.iter().copied().fold(1.0, f64::min));
            for _ in 0..50 {
                let i = pick(&a.shares, rng.random());
                let good = rng.random::<f64>() < rates[i];
                arms[i].rated += 1;
                arms[i].sum += if good { 1.0 } else { 0.0 };
                arms[i].sum_sq += if good { 1.0 } else { 0.0 };
            }
        }
        (None, 20_000, least)
    }

    #[test]
    fn the_bandit_stops_with_the_better_variant_on_a_known_gap() {
        let mut stopped = 0;
        for seed in 0..10 {
            let (winner, took, least) = simulate(&[0.5, 0.65, 0.55], &SETTINGS, seed);
            if let Some(w) = winner {
                assert_eq!(w, 1, "seed {seed}: the 65% variant wins");
                assert!(took >= 300, "seed {seed}: never before 100 rated answers each ({took})");
                stopped += 1;
            }
            assert!(least >= 0.1 - 1e-12, "seed {seed}: a variant fell to {least} of the requests");
        }
        assert!(stopped >= 9, "stopped in {stopped} of 10 runs");
    }

    #[test]
    fn equal_variants_share_and_keep_running() {
        let (winner, _, least) = simulate(&[0.6, 0.6], &Settings { confidence: 0.99, ..SETTINGS }, 3);
        assert_eq!(winner, None, "no winner between equals at 99%");
        assert!(least >= 0.1 - 1e-12);
    }

    #[test]
    fn scores_work_as_booleans_do_and_no_feedback_splits_evenly() {
        let arms = [Arm { rated: 400, sum: 200.0, sum_sq: 120.0 }, Arm { rated: 400, sum: 280.0, sum_sq: 210.0 }];
        let a = assess(&arms, &Settings { metric: Metric::Score, ..SETTINGS }, 1);
        assert_eq!(a.winner, Some(1), "{a:?}");
        assert_eq!(a.shares, [0.0, 1.0]);
        let none = assess(&[Arm::default(); 4], &SETTINGS, 1);
        assert!(none.shares.iter().all(|s| (s - 0.25).abs() < 0.05), "{none:?}");
        assert!((none.shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        // A floor above 1/k is cut to 1/k.
        let even = assess(&[Arm::default(); 4], &Settings { min_share: 0.5, ..SETTINGS }, 1);
        assert!(even.shares.iter().all(|s| (s - 0.25).abs() < 1e-9), "{even:?}");
    }

    #[test]
    fn the_same_counts_and_seed_give_the_same_assessment() {
        let arms = [Arm { rated: 50, sum: 20.0, sum_sq: 20.0 }, Arm { rated: 60, sum: 33.0, sum_sq: 33.0 }];
        assert_eq!(assess(&arms, &SETTINGS, 9), assess(&arms, &SETTINGS, 9));
        assert_eq!(pick(&[0.2, 0.8], 0.1), 0);
        assert_eq!(pick(&[0.2, 0.8], 0.5), 1);
        assert_eq!(pick(&[0.0, 1.0], 0.0), 1);
        assert_eq!(pick(&[0.5, 0.5], 0.9999999), 1);
    }
}
