//! Virtual keys and what they may do: who a request is, which models it may use, and
//! whether its key's rate limits and budget admit it.
//!
//! - [`key`]: key text (`fk-` + 43 base62 characters), its SHA-256 (all the store keeps)
//!   and constant-time comparison for the admin key.
//! - [`limits`]: requests and tokens per minute (sliding windows) and budget reservations,
//!   in memory for one instance or in Redis (Lua scripts, atomic) for several.
//! - [`Access`] ties them to the store: it looks keys up by hash (cached for a short TTL, so
//!   a key revoked on one instance is refused by every instance within that TTL), checks
//!   model allowances, rate limits and budgets, and settles a request's real cost (and
//!   persists it per key and period, so spend survives a restart).
//!
//! This crate knows no HTTP: `fungible-server`'s `auth.rs` turns its answers into status
//! codes and each inbound API's error shape.

pub mod key;
pub mod limits;
pub mod period;
pub mod spend;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fungible_store::{KeyRecord, Store, StoreError};

pub use fungible_store::{BudgetPeriod, KeyBudget, Scope};
pub use limits::{Denial, Limits};

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("rate-limit state (Redis): {0}")]
    Redis(String),
}

/// Why a presented key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Unknown,
    Revoked,
    Expired,
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthFailure::Unknown => "invalid API key",
            AuthFailure::Revoked => "this API key has been revoked",
            AuthFailure::Expired => "this API key has expired",
        })
    }
}

/// A budget reservation held by a request in flight.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    pub period: String,
    pub amount: f64,
}

/// A key's spend in its current budget period.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SpendView {
    pub period: String,
    pub spent: f64,
}

/// Most distinct presented keys remembered; the cache starts over when full (so random
/// keys cannot grow it without bound).
const CACHE_CAPACITY: usize = 10_000;

struct Cached {
    at: Instant,
    key: Option<Arc<KeyRecord>>,
}

/// Keys, limits and budgets over one store and one counter backend. Cheap to share
/// (`Arc`).
pub struct Access {
    store: Store,
    limits: Limits,
    spend: spend::SpendWriter,
    ttl: Duration,
    cache: Mutex<HashMap<String, Cached>>,
    /// Spend the store had per (key, period), read at most once per `ttl`: the starting
    /// point of a budget counter that does not exist (yet, or again after Redis lost it).
    seeds: Mutex<HashMap<(String, String), (Instant, f64)>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("limits", &self.limits)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether `model` (an alias or `PROVIDER/MODEL`) matches one of `patterns`, where `*`
/// matches any run of characters (`openai/*`, `*-mini`). No patterns: every model.
pub fn model_allowed(patterns: &[String], model: &str) -> bool {
    patterns.is_empty()
        || patterns
            .iter()
            .any(|p| glob(p.as_bytes(), model.as_bytes()))
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    glob(pattern.as_bytes(), text.as_bytes())
}

fn glob(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative wildcard match with backtracking to the last `*`.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

impl Access {
    /// `ttl`: how long a key lookup is trusted before the store is asked again (and so how
    /// long a revocation on another instance takes to reach this one).
    ///
    /// Starts the task that persists spend ([`spend`]): call it inside a tokio runtime.
    pub fn new(store: Store, limits: Limits, ttl: Duration) -> Access {
        Access {
            spend: spend::SpendWriter::start(store.clone()),
            store,
            limits,
            ttl,
            cache: Mutex::default(),
            seeds: Mutex::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Forgets cached lookups (after a change through this instance's admin API).
    pub fn forget(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The key `presented` is, if it is a valid one now.
    pub async fn authenticate(
        &self,
        presented: &str,
    ) -> Result<Result<Arc<KeyRecord>, AuthFailure>, AccessError> {
        self.authenticate_hash(key::hash(presented)).await
    }

    /// The key whose SHA-256 is `hash` (what [`key::hash`] gives), if it is a valid one now:
    /// how a signed-in UI session, which keeps the hash and never the key, is checked on
    /// each request (revoked and expired keys end their sessions).
    pub async fn authenticate_hash(
        &self,
        hash: String,
    ) -> Result<Result<Arc<KeyRecord>, AuthFailure>, AccessError> {
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .get(&hash)
                .filter(|c| c.at.elapsed() < self.ttl)
                .map(|c| c.key.clone())
        };
        let found = match cached {
            Some(found) => found,
            None => {
                let found = self.store.key_by_hash(&hash).await?.map(Arc::new);
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= CACHE_CAPACITY {
                    cache.clear();
                }
                cache.insert(
                    hash,
                    Cached {
                        at: Instant::now(),
                        key: found.clone(),
                    },
                );
                found
            }
        };
        let Some(key) = found else {
            return Ok(Err(AuthFailure::Unknown));
        };
        if key.revoked_ms.is_some() {
            return Ok(Err(AuthFailure::Revoked));
        }
        if key.expires_ms.is_some_and(|at| at <= now_ms()) {
            return Ok(Err(AuthFailure::Expired));
        }
        Ok(Ok(key))
    }

    /// Counts a request against the key's RPM and checks its TPM (no budget: embeddings).
    pub async fn check_rate(&self, key: &KeyRecord) -> Result<Result<(), Denial>, AccessError> {
        self.limits.hit(&key.id, key.rpm, key.tpm, None, now_ms()).await
    }

    /// Admits a request of `key` in one atomic step: its RPM and TPM, and, when it has a
    /// budget, the reservation of `estimate` USD; refused, nothing is counted or reserved.
    pub async fn admit(
        &self,
        key: &KeyRecord,
        estimate: f64,
    ) -> Result<Result<Option<Reservation>, Denial>, AccessError> {
        let now = now_ms();
        let budget = match key.budget {
            Some(budget) => {
                let (period, reset) = period::window(budget.period, now);
                let seed = self.seed(&key.id, &period).await?;
                Some((budget, period, reset, seed))
            }
            None => None,
        };
        let ask = budget.as_ref().map(|(budget, period, reset, seed)| limits::BudgetAsk {
            period,
            limit: budget.usd,
            estimate,
            seed: *seed,
            // Counters outlive their period by a day, so a late settle still finds them.
            expires_ms: reset.map(|r| r - now + 86_400_000),
            resets_in_ms: reset.map(|r| r - now),
        });
        match self.limits.hit(&key.id, key.rpm, key.tpm, ask, now).await? {
            Ok(()) => Ok(Ok(budget.map(|(_, period, _, _)| Reservation {
                period,
                amount: estimate,
            }))),
            Err(denial) => Ok(Err(denial)),
        }
    }

    async fn seed(&self, key_id: &str, period: &str) -> Result<f64, AccessError> {
        let id = (key_id.to_owned(), period.to_owned());
        if let Some(&(at, seed)) = self
            .seeds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            && at.elapsed() < self.ttl
        {
            return Ok(seed);
        }
        let seed = self.store.key_spend(key_id, period).await?;
        let mut seeds = self.seeds.lock().unwrap_or_else(|e| e.into_inner());
        if seeds.len() >= CACHE_CAPACITY {
            seeds.clear();
        }
        seeds.insert(id, (Instant::now(), seed));
        Ok(seed)
    }

    /// Settles an answered (or failed) request: its real tokens go to the TPM window, its
    /// real cost replaces its reservation and is added to the store's spend (batched: see
    /// [`spend`]).
    pub async fn settle(
        &self,
        key: &KeyRecord,
        reservation: Option<Reservation>,
        tokens: u64,
        cost: f64,
    ) -> Result<(), AccessError> {
        if key.tpm.is_some() {
            self.limits.add_tokens(&key.id, tokens, now_ms()).await?;
        }
        let period = match (&reservation, key.budget) {
            (Some(r), _) => Some(r.period.clone()),
            (None, Some(b)) => Some(period::window(b.period, now_ms()).0),
            (None, None) => None,
        };
        if let Some(r) = &reservation {
            self.limits
                .settle(&key.id, &r.period, r.amount, cost)
                .await?;
        }
        if cost > 0.0 {
            let period = period.unwrap_or_else(|| "total".to_owned());
            self.spend.add(&key.id, &period, cost);
        }
        Ok(())
    }

    /// What the key spent in its current budget period (`total` when it has no budget), as
    /// the store has it.
    pub async fn spend(&self, key: &KeyRecord) -> Result<SpendView, AccessError> {
        let period = key.budget.map_or_else(
            || "total".to_owned(),
            |b| period::window(b.period, now_ms()).0,
        );
        self.spend.flush().await;
        let spent = self.store.key_spend(&key.id, &period).await?;
        Ok(SpendView { period, spent })
    }

    /// Writes every settled cost still waiting to the store (at shutdown).
    pub async fn flush(&self) {
        self.spend.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_globs() {
        let p = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(model_allowed(&[], "anything/at-all"));
        assert!(model_allowed(&p(&["openai/*"]), "openai/gpt-5"));
        assert!(!model_allowed(&p(&["openai/*"]), "anthropic/claude"));
        assert!(model_allowed(&p(&["*-mini", "cheap"]), "openai/gpt-5-mini"));
        assert!(model_allowed(&p(&["*-mini", "cheap"]), "cheap"));
        assert!(!model_allowed(&p(&["cheap"]), "cheaper"));
        assert!(model_allowed(&p(&["a*b*c"]), "axxbyyc"));
        assert!(!model_allowed(&p(&["a*b*c"]), "axxbyy"));
    }
}
