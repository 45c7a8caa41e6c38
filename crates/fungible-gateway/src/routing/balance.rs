//! Load balancing: the order in which a route tries its targets. `fallback` keeps the
//! configured order; `weighted` draws targets by weight without replacement (the A/B split:
//! the first draw is the variant, the rest are its fallbacks), seeded from a sticky key when
//! the route has one so the same user or session always gets the same variant;
//! `least_latency` prefers the lowest moving average of time to first token; `least_busy`
//! the fewest requests in flight; `cheapest` the lowest price per token (from the price table
//! the binary injects, see `Gateway::with_prices`), unknown prices last. Ties are broken at
//! random so equal targets share traffic. `learned` is decided per request by the route's
//! trained router (`Gateway::set_deciders`); here it is the configured order, what the route
//! does while it has no router. `adaptive` is drawn by its bandit's shares, likewise set at
//! run time; here (no feedback read yet) it is an even `weighted` draw.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::RngExt;
use serde::Deserialize;

/// `[models.NAME] strategy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The configured order: the first target, then the next when it fails.
    #[default]
    Fallback,
    /// Random by `weight`; with `sticky`, the same key always draws the same order.
    Weighted,
    /// Lowest EWMA of observed time to first token first; unmeasured targets first of all.
    LeastLatency,
    /// Fewest requests in flight first.
    LeastBusy,
    /// Lowest blended price per token first; targets without a known price last.
    Cheapest,
    /// Per request, the cheapest target that the route's trained router predicts good
    /// enough (`fungible route train`); the configured order while it has none.
    Learned,
    /// An A/B test that moves traffic to the variant its feedback favours and stops with a
    /// winner (a bandit, `Gateway::set_deciders`); an even split until it has feedback.
    Adaptive,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Fallback => "fallback",
            Strategy::Weighted => "weighted",
            Strategy::LeastLatency => "least_latency",
            Strategy::LeastBusy => "least_busy",
            Strategy::Cheapest => "cheapest",
            Strategy::Learned => "learned",
            Strategy::Adaptive => "adaptive",
        }
    }
}

/// What the balancer knows of one target when it orders them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub weight: u32,
    pub ewma_ttft: Option<Duration>,
    pub in_flight: u64,
    /// Blended USD per million tokens, `None` when unknown.
    pub price: Option<f64>,
}

/// The indices of `loads` in the order to try them.
pub fn order(strategy: Strategy, loads: &[Load], rng: &mut impl rand::Rng) -> Vec<usize> {
    match strategy {
        Strategy::Fallback | Strategy::Learned => (0..loads.len()).collect(),
        Strategy::Weighted | Strategy::Adaptive => weighted_order(loads, rng),
        Strategy::LeastLatency => {
            let mut idx = shuffled(loads.len(), rng);
            // Unmeasured targets sort first, so every target gets measured.
            idx.sort_by_key(|&i| loads[i].ewma_ttft.unwrap_or(Duration::ZERO));
            idx
        }
        Strategy::LeastBusy => {
            let mut idx = shuffled(loads.len(), rng);
            idx.sort_by_key(|&i| loads[i].in_flight);
            idx
        }
        Strategy::Cheapest => {
            let mut idx = shuffled(loads.len(), rng);
            // Stable: equal prices keep their random order. Unknown (or nonsense) prices last.
            let key = |i: usize| loads[i].price.filter(|p| p.is_finite() && *p >= 0.0).unwrap_or(f64::INFINITY);
            idx.sort_by(|&a, &b| key(a).total_cmp(&key(b)));
            idx
        }
    }
}

/// Puts a variant with a share first for that percent of the draws, ahead of `own` (the
/// configured targets in their strategy's order); the variants not drawn go last, as the
/// route's final fallbacks. The shares together are at most 99.
pub fn with_shares(own: Vec<usize>, shares: &[(usize, u32)], rng: &mut impl rand::Rng) -> Vec<usize> {
    if shares.is_empty() {
        return own;
    }
    let draw = rng.random_range(0..100u32);
    let mut cumulative = 0;
    let first = shares.iter().find(|(_, percent)| {
        cumulative += percent;
        draw < cumulative
    });
    let mut out = Vec::with_capacity(own.len() + shares.len());
    out.extend(first.map(|(i, _)| *i));
    out.extend(own);
    out.extend(shares.iter().map(|(i, _)| *i).filter(|i| first.map(|(f, _)| f) != Some(i)));
    out
}

fn shuffled(n: usize, rng: &mut impl rand::Rng) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    // Fisher-Yates.
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        idx.swap(i, j);
    }
    idx
}

/// Weighted sampling without replacement; zero-weight targets come last, in config order
/// (fallbacks only).
fn weighted_order(loads: &[Load], rng: &mut impl rand::Rng) -> Vec<usize> {
    let mut left: Vec<usize> = (0..loads.len()).filter(|&i| loads[i].weight > 0).collect();
    let mut out = Vec::with_capacity(loads.len());
    while !left.is_empty() {
        let total: u64 = left.iter().map(|&i| u64::from(loads[i].weight)).sum();
        let mut point = rng.random_range(0..total);
        let mut pick = left.len() - 1;
        for (pos, &i) in left.iter().enumerate() {
            let w = u64::from(loads[i].weight);
            if point < w {
                pick = pos;
                break;
            }
            point -= w;
        }
        out.push(left.remove(pick));
    }
    out.extend((0..loads.len()).filter(|&i| loads[i].weight == 0));
    out
}

/// A seed from a route name and a sticky key (a user, a session id) that is the same on
/// every run of the same build: FNV-1a, then a splitmix64 finaliser to spread the bits.
pub fn sticky_seed(route: &str, key: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in route.bytes().chain([0xff]).chain(key.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// An exponentially weighted moving average of durations (weight 1/5 for a new sample),
/// lock-free. Concurrent updates may lose a sample, which a moving average tolerates.
#[derive(Debug)]
pub struct Ewma {
    /// Microseconds; `u64::MAX` while nothing was observed.
    micros: AtomicU64,
}

impl Default for Ewma {
    fn default() -> Ewma {
        Ewma { micros: AtomicU64::new(u64::MAX) }
    }
}

impl Ewma {
    pub fn observe(&self, sample: Duration) {
        let sample = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX - 1).min(u64::MAX - 1);
        let old = self.micros.load(Ordering::Relaxed);
        let new = if old == u64::MAX {
            sample
        } else {
            let old = i128::from(old);
            let blended = old + (i128::from(sample) - old) / 5;
            u64::try_from(blended).unwrap_or(sample)
        };
        self.micros.store(new, Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<Duration> {
        match self.micros.load(Ordering::Relaxed) {
            u64::MAX => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    fn load(weight: u32) -> Load {
        Load { weight, ewma_ttft: None, in_flight: 0, price: None }
    }

    #[test]
    fn weighted_split_is_within_statistical_bounds_over_10k_picks() {
        let loads = [load(3), load(1), load(6)];
        let mut rng = SmallRng::seed_from_u64(42);
        let mut first = [0u32; 3];
        for _ in 0..10_000 {
            let order = order(Strategy::Weighted, &loads, &mut rng);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2], "every target appears once: {order:?}");
            first[order[0]] += 1;
        }
        // Expected 3000 / 1000 / 6000. The standard deviation of a binomial with n = 10k is
        // at most 50, so ±4 sigma is 200: a correct sampler fails this about once in 10^4 seeds.
        for (count, expected) in first.iter().zip([3000, 1000, 6000]) {
            assert!(count.abs_diff(expected) < 200, "first picks {first:?}, expected ≈ [3000, 1000, 6000]");
        }
    }

    #[test]
    fn a_shared_variant_gets_its_percent_of_first_picks_under_any_strategy() {
        // A fallback route [0, 1] and a variant 2 with 10%, another 3 with 5%.
        let mut rng = SmallRng::seed_from_u64(7);
        let mut first = [0u32; 4];
        for _ in 0..10_000 {
            let own = order(Strategy::Fallback, &[load(1), load(1)], &mut rng);
            let order = with_shares(own, &[(2, 10), (3, 5)], &mut rng);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2, 3], "every target appears once: {order:?}");
            if order[0] == 0 {
                assert_eq!(&order[1..2], [1], "the route's own order stays: {order:?}");
            }
            first[order[0]] += 1;
        }
        // Expected 8500 / 0 / 1000 / 500; binomial sigma <= 50, ±4 sigma.
        for (count, expected) in first.iter().zip([8500, 0, 1000, 500]) {
            assert!(count.abs_diff(expected) < 200, "first picks {first:?}");
        }
        assert_eq!(with_shares(vec![1, 0], &[], &mut rng), [1, 0]);
    }

    #[test]
    fn zero_weight_targets_are_only_fallbacks() {
        let loads = [load(0), load(1), load(1)];
        let mut rng = SmallRng::seed_from_u64(3);
        for _ in 0..100 {
            let order = order(Strategy::Weighted, &loads, &mut rng);
            assert_eq!(order[2], 0, "{order:?}");
        }
    }

    #[test]
    fn a_sticky_seed_always_draws_the_same_variant() {
        let loads = [load(1), load(1)];
        let draw = |user: &str| order(Strategy::Weighted, &loads, &mut SmallRng::seed_from_u64(sticky_seed("ab", user)));
        let mut firsts = [0u32; 2];
        for u in 0..1000 {
            let user = format!("user-{u}");
            let assigned = draw(&user);
            for _ in 0..5 {
                assert_eq!(draw(&user), assigned, "{user} must keep its variant");
            }
            firsts[assigned[0]] += 1;
        }
        // Sticky, yet still split by weight across users (expected 500 each, sigma ≈ 16).
        assert!(firsts.iter().all(|&c| c.abs_diff(500) < 80), "{firsts:?}");
        assert_ne!(sticky_seed("ab", "u1"), sticky_seed("ab", "u2"));
        assert_ne!(sticky_seed("ab", "u1"), sticky_seed("cd", "u1"), "routes split independently");
    }

    #[test]
    fn fallback_keeps_the_configured_order() {
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(order(Strategy::Fallback, &[load(1), load(9), load(1)], &mut rng), [0, 1, 2]);
    }

    #[test]
    fn least_latency_prefers_the_fastest_and_measures_the_unmeasured_first() {
        let ms = |m: u64| Some(Duration::from_millis(m));
        let loads = [
            Load { ewma_ttft: ms(300), ..load(1) },
            Load { ewma_ttft: ms(100), ..load(1) },
            Load { ewma_ttft: None, ..load(1) },
        ];
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(order(Strategy::LeastLatency, &loads, &mut rng), [2, 1, 0]);
    }

    #[test]
    fn least_busy_prefers_the_fewest_in_flight_and_shares_ties() {
        let loads = [Load { in_flight: 4, ..load(1) }, Load { in_flight: 1, ..load(1) }, Load { in_flight: 1, ..load(1) }];
        let mut rng = SmallRng::seed_from_u64(5);
        let mut firsts = [0u32; 3];
        for _ in 0..1000 {
            let order = order(Strategy::LeastBusy, &loads, &mut rng);
            assert_eq!(order[2], 0, "the busiest goes last: {order:?}");
            firsts[order[0]] += 1;
        }
        assert!(firsts[1] > 400 && firsts[2] > 400, "ties share: {firsts:?}");
    }

    #[test]
    fn cheapest_orders_by_price_with_unknown_prices_last_and_shares_ties() {
        let price = |p: Option<f64>| Load { price: p, ..load(1) };
        let loads = [price(None), price(Some(3.0)), price(Some(0.5)), price(Some(0.5)), price(Some(f64::NAN))];
        let mut rng = SmallRng::seed_from_u64(9);
        let mut firsts = [0u32; 5];
        for _ in 0..1000 {
            let order = order(Strategy::Cheapest, &loads, &mut rng);
            assert_eq!(order[2], 1, "{order:?}");
            let mut tail = order[3..].to_vec();
            tail.sort_unstable();
            assert_eq!(tail, [0, 4], "unknown prices last: {order:?}");
            firsts[order[0]] += 1;
        }
        assert!(firsts[2] > 400 && firsts[3] > 400, "equal prices share: {firsts:?}");
    }

    #[test]
    fn ewma_starts_at_the_first_sample_and_moves_a_fifth_of_the_way() {
        let e = Ewma::default();
        assert_eq!(e.get(), None);
        e.observe(Duration::from_millis(100));
        assert_eq!(e.get(), Some(Duration::from_millis(100)));
        e.observe(Duration::from_millis(200));
        assert_eq!(e.get(), Some(Duration::from_millis(120)));
    }
}
