//! Retry policy: how often a target is retried, how long to wait in between (exponential
//! backoff with full jitter, never sooner than the upstream's `Retry-After`), and the global
//! retry budget that stops a failing upstream from turning into a retry storm.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::RngExt;

/// Retries of one target, from `[models.NAME] retries` (or `[routing] retries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try of a target (0: try it once).
    pub attempts: u32,
    /// The backoff cap before the first retry; it doubles with every retry.
    pub initial_backoff: Duration,
    /// The longest the gateway waits before a retry. An upstream that asks (by
    /// `Retry-After`) for a longer wait is not retried: the route falls back instead.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    pub const DEFAULT: RetryPolicy =
        RetryPolicy { attempts: 2, initial_backoff: Duration::from_millis(200), max_backoff: Duration::from_secs(10) };

    /// No retries: what a request naming `PROVIDER/MODEL` directly gets.
    pub const NONE: RetryPolicy = RetryPolicy { attempts: 0, ..RetryPolicy::DEFAULT };

    /// The upper bound of the jittered wait before retry number `retry` (0-based):
    /// `min(max_backoff, initial_backoff * 2^retry)`.
    pub fn backoff_cap(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }

    /// How long to wait before retry number `retry`: a uniformly random duration in
    /// `[0, backoff_cap(retry)]` ("full jitter"), raised to the upstream's `Retry-After`
    /// when it asked for longer. `None` when the upstream asked for more than
    /// `max_backoff`: waiting that long is worse than trying the next target.
    pub fn delay(&self, retry: u32, retry_after_secs: Option<u64>, rng: &mut impl rand::Rng) -> Option<Duration> {
        let cap = self.backoff_cap(retry);
        let cap_us = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX);
        let jittered = Duration::from_micros(if cap_us == 0 { 0 } else { rng.random_range(0..=cap_us) });
        match retry_after_secs.map(Duration::from_secs) {
            Some(wait) if wait > self.max_backoff => None,
            Some(wait) => Some(jittered.max(wait)),
            None => Some(jittered),
        }
    }
}

/// The global retry budget: a token bucket that every request fills by `ratio` tokens and
/// every retry empties by one, holding at most `burst` tokens (and starting full). Over any
/// stretch of traffic, retries are bounded by `burst + ratio × requests`, so an upstream
/// that fails everything gets at most `1 + ratio` times its normal load, not
/// `1 + retries` times. Falling back to another target is not a retry and costs nothing:
/// it moves load away from the failing upstream instead of adding to it.
#[derive(Debug)]
pub struct RetryBudget {
    /// In thousandths of a token.
    milli_tokens: AtomicU64,
    deposit: u64,
    capacity: u64,
}

/// `[routing] retry_budget`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    /// Retries allowed per request, on average (0.2: one retry per five requests).
    pub ratio: f64,
    /// Retries allowed at once before the ratio applies (the bucket's size).
    pub burst: u32,
}

impl RetryBudgetConfig {
    pub const DEFAULT: RetryBudgetConfig = RetryBudgetConfig { ratio: 0.2, burst: 10 };
}

impl RetryBudget {
    pub fn new(config: RetryBudgetConfig) -> RetryBudget {
        let capacity = u64::from(config.burst) * 1000;
        // `ratio` is validated to [0, 1]: the cast neither overflows nor goes negative.
        let deposit = (config.ratio.clamp(0.0, 1.0) * 1000.0).round() as u64;
        RetryBudget { milli_tokens: AtomicU64::new(capacity), deposit, capacity }
    }

    /// A request started: it earns `ratio` of a retry.
    pub fn deposit(&self) {
        let _ = self.milli_tokens.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
            Some(t.saturating_add(self.deposit).min(self.capacity))
        });
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_withdraw(&self) -> bool {
        self.milli_tokens.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| t.checked_sub(1000)).is_ok()
    }

    /// Whole retries left, for status reports.
    pub fn available(&self) -> u64 {
        self.milli_tokens.load(Ordering::Relaxed) / 1000
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    fn policy(initial_ms: u64, max_ms: u64) -> RetryPolicy {
        RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(initial_ms),
            max_backoff: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn backoff_cap_doubles_up_to_the_maximum() {
        let p = policy(200, 1000);
        let caps: Vec<u128> = (0..5).map(|r| p.backoff_cap(r).as_millis()).collect();
        assert_eq!(caps, [200, 400, 800, 1000, 1000]);
        assert_eq!(p.backoff_cap(200), Duration::from_millis(1000), "no overflow on huge retry numbers");
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_cap_and_spreads_out() {
        let p = policy(200, 10_000);
        let mut rng = SmallRng::seed_from_u64(7);
        for retry in 0..6 {
            let cap = p.backoff_cap(retry);
            let delays: Vec<Duration> = (0..1000).map(|_| p.delay(retry, None, &mut rng).unwrap_or_default()).collect();
            assert!(delays.iter().all(|d| *d <= cap), "retry {retry}: a delay above {cap:?}");
            let mean = delays.iter().sum::<Duration>() / 1000;
            // Uniform on [0, cap]: the mean is cap/2; 1000 samples put it well within ±10%.
            assert!(mean > cap * 4 / 10 && mean < cap * 6 / 10, "retry {retry}: mean {mean:?} for cap {cap:?}");
        }
    }

    #[test]
    fn retry_after_is_a_floor_and_too_long_a_wait_means_fall_back() {
        let p = policy(200, 10_000);
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..100 {
            assert!(p.delay(0, Some(2), &mut rng).is_some_and(|d| d >= Duration::from_secs(2)));
        }
        assert_eq!(p.delay(0, Some(10), &mut rng).map(|d| d >= Duration::from_secs(10)), Some(true));
        assert_eq!(p.delay(0, Some(11), &mut rng), None, "a wait over max_backoff is not worth it");
    }

    #[test]
    fn zero_backoff_retries_at_once() {
        let p = policy(0, 0);
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(p.delay(3, None, &mut rng), Some(Duration::ZERO));
    }

    #[test]
    fn retry_budget_allows_a_burst_then_the_ratio() {
        let budget = RetryBudget::new(RetryBudgetConfig { ratio: 0.2, burst: 10 });
        // 100 requests that all fail and all want a retry.
        let mut retries = 0;
        for _ in 0..100 {
            budget.deposit();
            if budget.try_withdraw() {
                retries += 1;
            }
        }
        // The bucket starts full (10, deposits while full are lost), then 0.2 per request.
        assert!((25..=30).contains(&retries), "{retries} retries for 100 requests");
        // Healthy traffic refills it, up to the burst.
        for _ in 0..1000 {
            budget.deposit();
        }
        assert_eq!(budget.available(), 10);
    }

    #[test]
    fn a_zero_budget_allows_no_retries() {
        let budget = RetryBudget::new(RetryBudgetConfig { ratio: 0.0, burst: 0 });
        budget.deposit();
        assert!(!budget.try_withdraw());
    }
}
