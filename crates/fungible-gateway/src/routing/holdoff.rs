//! Upstreams that asked not to be called for a while: a `Retry-After` (or `retry-after-ms`)
//! on a failure is the upstream's word about itself, so until it runs out every request
//! skips that upstream (falling back, or waiting where it is the last one and the wait is
//! short), not only the request that received it. Kept per upstream (`PROVIDER/MODEL`), so
//! routes and direct requests that share one upstream share its hold.
//!
//! Time is passed in (`now`), on tokio's clock, so the executor's tests run on a paused clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::Target;

/// Holds kept at most; past it, the expired ones are dropped on the next hold.
const PRUNE_AT: usize = 1024;

/// The longest hold an upstream gets: a `Retry-After` of a day (or a bogus one) must not take
/// a target out until a restart.
pub(crate) const MAX_HOLD: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
pub(crate) struct HoldOffs {
    until: Mutex<HashMap<Target, Instant>>,
    /// Whether `until` may hold anything: every attempt of every request asks, and almost
    /// always none is held, so the common case takes no lock.
    any: AtomicBool,
}

impl HoldOffs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Target, Instant>> {
        self.until.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `target` asked not to be called before `until` (a later hold wins).
    pub fn hold(&self, target: &Target, until: Instant, now: Instant) {
        let mut holds = self.lock();
        if holds.len() >= PRUNE_AT {
            holds.retain(|_, t| *t > now);
        }
        let entry = holds.entry(target.clone()).or_insert(until);
        *entry = (*entry).max(until);
        self.any.store(true, Ordering::Release);
    }

    /// How long `target` still asked to be left alone, if at all.
    pub fn remaining(&self, target: &Target, now: Instant) -> Option<Duration> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let mut holds = self.lock();
        let until = *holds.get(target)?;
        if until > now {
            return Some(until - now);
        }
        holds.remove(target);
        if holds.is_empty() {
            self.any.store(false, Ordering::Release);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_lasts_until_its_time_and_the_later_one_wins() {
        let holds = HoldOffs::default();
        let (a, b) = (Target::parse("a/m").unwrap(), Target::parse("b/m").unwrap());
        let t0 = Instant::now();
        holds.hold(&a, t0 + Duration::from_secs(2), t0);
        holds.hold(&a, t0 + Duration::from_secs(1), t0);
        assert_eq!(holds.remaining(&a, t0), Some(Duration::from_secs(2)));
        assert_eq!(holds.remaining(&b, t0), None);
        assert_eq!(holds.remaining(&a, t0 + Duration::from_secs(2)), None);
        assert!(holds.lock().is_empty(), "an expired hold is dropped");
        assert!(!holds.any.load(Ordering::Acquire), "and the lock-free check says so");
    }
}
