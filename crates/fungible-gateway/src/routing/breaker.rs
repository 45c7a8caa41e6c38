//! The circuit breaker of one route target: it opens after `failures` consecutive retryable
//! failures within `window`, so the route skips the target without a request paying for it;
//! after `cooldown` it half-opens and lets one probe request through, which closes it on
//! success or opens it again on failure.
//!
//! Time is passed in (`now`), so the state machine is tested without a clock. The lock is a
//! std `Mutex` held for a few instructions, never across an `.await`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// `[models.NAME] breaker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures within `window` that open the breaker.
    pub failures: u32,
    pub window: Duration,
    /// How long an open breaker keeps the target out before a probe.
    pub cooldown: Duration,
}

impl BreakerConfig {
    pub const DEFAULT: BreakerConfig =
        BreakerConfig { failures: 5, window: Duration::from_secs(30), cooldown: Duration::from_secs(30) };
}

/// What a status report shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Whether a request may use the target now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Allowed as the one probe of a half-open breaker.
    Probe,
    /// Open: skip this target; it may be probed again in `retry_in`.
    Denied { retry_in: Duration },
}

#[derive(Debug)]
enum State {
    /// Times of the failures since the last success, oldest first (at most `failures`).
    Closed { recent: VecDeque<Instant> },
    Open { until: Instant },
    /// A probe went out at `since`; if it never reports (its client went away), another
    /// one is let through a cooldown later.
    HalfOpen { since: Instant },
}

#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: Mutex<State>,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> CircuitBreaker {
        CircuitBreaker { config, state: Mutex::new(State::Closed { recent: VecDeque::new() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn admit(&self, now: Instant) -> Admission {
        let mut state = self.lock();
        match &mut *state {
            State::Closed { .. } => Admission::Allowed,
            State::Open { until } => {
                if now >= *until {
                    *state = State::HalfOpen { since: now };
                    Admission::Probe
                } else {
                    Admission::Denied { retry_in: *until - now }
                }
            }
            State::HalfOpen { since } => {
                let next = *since + self.config.cooldown;
                if now >= next {
                    *since = now;
                    Admission::Probe
                } else {
                    Admission::Denied { retry_in: next - now }
                }
            }
        }
    }

    /// A request to the target succeeded.
    pub fn record_success(&self) {
        let mut state = self.lock();
        match &mut *state {
            State::Closed { recent } => recent.clear(),
            State::HalfOpen { .. } => *state = State::Closed { recent: VecDeque::new() },
            // A request admitted before the breaker opened: stale news, the probe decides.
            State::Open { .. } => {}
        }
    }

    /// A request to the target failed with a retryable error.
    pub fn record_failure(&self, now: Instant) {
        let mut state = self.lock();
        match &mut *state {
            State::Closed { recent } => {
                while recent.front().is_some_and(|t| now.saturating_duration_since(*t) > self.config.window) {
                    recent.pop_front();
                }
                recent.push_back(now);
                if recent.len() >= self.config.failures as usize {
                    *state = State::Open { until: now + self.config.cooldown };
                }
            }
            State::HalfOpen { .. } => *state = State::Open { until: now + self.config.cooldown },
            State::Open { .. } => {}
        }
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match &*self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if now >= *until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig { failures: 3, window: 10 * S, cooldown: 30 * S })
    }

    #[test]
    fn opens_after_n_failures_within_the_window() {
        let b = breaker();
        let t0 = Instant::now();
        b.record_failure(t0);
        b.record_failure(t0 + S);
        assert_eq!(b.admit(t0 + S), Admission::Allowed);
        b.record_failure(t0 + 2 * S);
        assert_eq!(b.state(t0 + 2 * S), BreakerState::Open);
        assert_eq!(b.admit(t0 + 2 * S), Admission::Denied { retry_in: 30 * S });
        assert_eq!(b.admit(t0 + 12 * S), Admission::Denied { retry_in: 20 * S });
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not_open_it() {
        let b = breaker();
        let t0 = Instant::now();
        for i in 0..10 {
            b.record_failure(t0 + i * 6 * S);
        }
        assert_eq!(b.state(t0 + 60 * S), BreakerState::Closed);
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = breaker();
        let t0 = Instant::now();
        b.record_failure(t0);
        b.record_failure(t0);
        b.record_success();
        b.record_failure(t0);
        b.record_failure(t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
    }

    #[test]
    fn half_opens_after_the_cooldown_and_lets_one_probe_through() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record_failure(t0);
        }
        let later = t0 + 30 * S;
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert_eq!(b.admit(later), Admission::Probe);
        assert_eq!(b.admit(later), Admission::Denied { retry_in: 30 * S }, "only one probe at a time");
        // The probe succeeds: closed again, everyone is let through.
        b.record_success();
        assert_eq!(b.state(later), BreakerState::Closed);
        assert_eq!(b.admit(later), Admission::Allowed);
    }

    #[test]
    fn a_failed_probe_opens_it_for_another_cooldown() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record_failure(t0);
        }
        let probe_at = t0 + 31 * S;
        assert_eq!(b.admit(probe_at), Admission::Probe);
        b.record_failure(probe_at + S);
        assert_eq!(b.admit(probe_at + 2 * S), Admission::Denied { retry_in: 29 * S });
        assert_eq!(b.admit(probe_at + 31 * S), Admission::Probe);
    }

    #[test]
    fn a_probe_that_never_reports_does_not_wedge_the_breaker() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record_failure(t0);
        }
        assert_eq!(b.admit(t0 + 30 * S), Admission::Probe);
        // Its client went away; a cooldown later another probe is let through.
        assert_eq!(b.admit(t0 + 60 * S), Admission::Probe);
    }

    #[test]
    fn a_late_success_from_before_it_opened_does_not_close_it() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record_failure(t0);
        }
        b.record_success();
        assert_eq!(b.state(t0 + S), BreakerState::Open);
    }
}
