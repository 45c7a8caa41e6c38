//! Rate limits and budget counters, in memory (one instance) or in Redis (several).
//!
//! - **Requests per minute** is a sliding-window log: the times of the requests admitted in
//!   the last 60 s; a request is admitted while there are fewer than the limit.
//! - **Tokens per minute** is a sliding window of the tokens each answered request really
//!   used (`add_tokens`, once the response is known); a request is admitted while the
//!   window's sum is below the limit.
//! - **Budgets** are `spent` and `reserved` per key and period: a request is admitted only
//!   if `spent + reserved + estimate <= limit`, which reserves `estimate`; `settle` moves the
//!   reservation to the actual cost. Concurrent requests see each other's reservations, so
//!   they cannot overspend together.
//!
//! In Redis every check-and-update is one Lua script (atomic across instances), and the
//! window clock is Redis's own `TIME`, so instances with skewed clocks agree. In memory the
//! state is one mutex'd map, never held across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use redis::Script;
use redis::aio::ConnectionManager;

use crate::AccessError;

/// The sliding windows' length.
pub const WINDOW_MS: i64 = 60_000;

/// Why a request was refused by a limit.
#[derive(Debug, Clone, PartialEq)]
pub enum Denial {
    Rpm {
        limit: u64,
        retry_after_ms: i64,
    },
    Tpm {
        limit: u64,
        retry_after_ms: i64,
    },
    Budget {
        limit: f64,
        spent: f64,
        reserved: f64,
        estimate: f64,
        retry_after_ms: Option<i64>,
    },
}

impl Denial {
    /// Seconds until the window resets enough to admit a request (at least 1).
    pub fn retry_after_secs(&self) -> Option<u64> {
        let ms = match self {
            Denial::Rpm { retry_after_ms, .. } | Denial::Tpm { retry_after_ms, .. } => {
                Some(*retry_after_ms)
            }
            Denial::Budget { retry_after_ms, .. } => *retry_after_ms,
        }?;
        Some(((ms.max(0) as u64).div_ceil(1000)).max(1))
    }
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denial::Rpm { limit, .. } => write!(
                f,
                "the key's limit of {limit} requests per minute is reached"
            ),
            Denial::Tpm { limit, .. } => {
                write!(f, "the key's limit of {limit} tokens per minute is reached")
            }
            Denial::Budget {
                limit,
                spent,
                reserved,
                estimate,
                ..
            } => write!(
                f,
                "the key's budget of ${limit:.6} does not cover this request: ${spent:.6} spent, ${reserved:.6} reserved by requests in flight, this one estimated at ${estimate:.6}"
            ),
        }
    }
}

/// A budget reservation asked for together with the rate limits ([`Limits::hit`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetAsk<'a> {
    pub period: &'a str,
    /// The budget, USD.
    pub limit: f64,
    /// What this request is estimated to cost, USD.
    pub estimate: f64,
    /// What the store says was spent, used when the counter does not exist yet.
    pub seed: f64,
    /// How long the counter is worth keeping, ms (`None`: for ever).
    pub expires_ms: Option<i64>,
    /// When the period starts again, ms from now (`None`: never), for `Retry-After`.
    pub resets_in_ms: Option<i64>,
}

/// Where the counters live. Cheap to clone.
#[derive(Clone)]
pub enum Limits {
    Memory(Arc<Mutex<MemoryState>>),
    Redis(RedisLimits),
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Limits::Memory(_) => "Limits::Memory",
            Limits::Redis(_) => "Limits::Redis",
        })
    }
}

#[derive(Default)]
pub struct MemoryState {
    requests: HashMap<String, VecDeque<i64>>,
    tokens: HashMap<String, TokenWindow>,
    budgets: HashMap<(String, String), Budget>,
}

/// The tokens answered requests used in the last minute, and their sum.
#[derive(Default)]
struct TokenWindow {
    entries: VecDeque<(i64, u64)>,
    sum: u64,
}

impl TokenWindow {
    fn expire(&mut self, now_ms: i64) {
        while let Some(&(t, n)) = self.entries.front()
            && t <= now_ms - WINDOW_MS
        {
            self.entries.pop_front();
            self.sum -= n;
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Budget {
    spent: f64,
    reserved: f64,
}

#[derive(Clone)]
pub struct RedisLimits {
    conn: ConnectionManager,
    hit: Arc<Script>,
    add_tokens: Arc<Script>,
    settle: Arc<Script>,
}

/// The time in ms inside a script: Redis's clock, shared by every instance.
const NOW: &str = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) ";

/// KEYS: requests zset, tokens zset, tokens' running sum, budget hash. ARGV: window ms, rpm
/// (-1: none), tpm (-1: none), a unique member, then the budget (limit, estimate, seed, ttl
/// ms; limit -1: no budget). Returns {0, 0} when admitted (and the request counted and its
/// estimate reserved), {1, retry ms} over RPM, {2, retry ms} over TPM, {3, spent, reserved}
/// over budget; a refused request changes nothing. Each call costs O(log n + what left the
/// window): the TPM sum is kept beside the window, never recomputed from it.
const HIT: &str = r"
local window = tonumber(ARGV[1])
local rpm = tonumber(ARGV[2])
local tpm = tonumber(ARGV[3])
if rpm >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  local n = redis.call('ZCARD', KEYS[1])
  if n >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    local retry = window
    if oldest[2] then retry = tonumber(oldest[2]) + window - now end
    return {1, tostring(retry), ''}
  end
end
if tpm >= 0 then
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - window)
  if #gone > 0 then
    local tokens = 0
    for i = 1, #gone do
      tokens = tokens + tonumber(string.match(gone[i], ':(%d+)$'))
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
    redis.call('DECRBY', KEYS[3], tokens)
  end
  local sum = 0
  if redis.call('ZCARD', KEYS[2]) == 0 then
    redis.call('DEL', KEYS[3])
  else
    sum = tonumber(redis.call('GET', KEYS[3]) or '0')
  end
  if sum >= tpm then
    -- Admitted again once enough of the oldest usage has left the window (looked for
    -- among the oldest 1,000 entries; past them, a whole window).
    local over = sum - tpm
    local retry = window
    local entries = redis.call('ZRANGE', KEYS[2], 0, 999, 'WITHSCORES')
    for i = 1, #entries, 2 do
      over = over - tonumber(string.match(entries[i], ':(%d+)$'))
      if over < 0 then
        retry = tonumber(entries[i + 1]) + window - now
        break
      end
    end
    return {2, tostring(retry), ''}
  end
end
if tonumber(ARGV[5]) >= 0 then
  redis.call('HSETNX', KEYS[4], 'spent', ARGV[7])
  local spent = tonumber(redis.call('HGET', KEYS[4], 'spent'))
  local reserved = tonumber(redis.call('HGET', KEYS[4], 'reserved') or '0')
  if tonumber(ARGV[8]) > 0 then redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[8])) end
  if spent + reserved + tonumber(ARGV[6]) > tonumber(ARGV[5]) then
    return {3, tostring(spent), tostring(reserved)}
  end
  redis.call('HINCRBYFLOAT', KEYS[4], 'reserved', ARGV[6])
end
if rpm >= 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window)
end
return {0, '', ''}
";

/// KEYS: tokens zset, tokens' running sum. ARGV: window ms, member `ID:TOKENS`, tokens.
const ADD_TOKENS: &str = r"
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('INCRBY', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[1]))
return 1
";

/// KEYS: budget hash. ARGV: reserved, actual.
const SETTLE: &str = r"
local reserved = tonumber(redis.call('HINCRBYFLOAT', KEYS[1], 'reserved', -tonumber(ARGV[1])))
if reserved < 0 then redis.call('HSET', KEYS[1], 'reserved', '0') end
redis.call('HINCRBYFLOAT', KEYS[1], 'spent', ARGV[2])
return 1
";

fn script(body: &str) -> Arc<Script> {
    Arc::new(Script::new(&format!("{NOW}{body}")))
}

fn redis_error(e: redis::RedisError) -> AccessError {
    AccessError::Redis(e.to_string())
}

/// The refusal of `ask` by a budget with `spent` and `reserved` already.
fn budget_denial(ask: &BudgetAsk<'_>, spent: f64, reserved: f64) -> Denial {
    Denial::Budget {
        limit: ask.limit,
        spent,
        reserved,
        estimate: ask.estimate,
        retry_after_ms: ask.resets_in_ms,
    }
}

/// A key's Redis key for `what`. The `{ID}` hash tag keeps one key's counters in one
/// Redis Cluster slot, so a script may touch them together.
fn redis_key(key_id: &str, what: &str) -> String {
    format!("fungible:{{{key_id}}}:{what}")
}

fn unique() -> String {
    crate::key::new_id()
}

impl Limits {
    pub fn memory() -> Limits {
        Limits::Memory(Arc::default())
    }

    /// Connects to Redis at `url` (reconnecting by itself when the connection drops).
    pub async fn redis(url: &str) -> Result<Limits, AccessError> {
        let client = redis::Client::open(url).map_err(redis_error)?;
        let conn = ConnectionManager::new(client).await.map_err(redis_error)?;
        Ok(Limits::Redis(RedisLimits {
            conn,
            hit: script(HIT),
            add_tokens: script(ADD_TOKENS),
            settle: script(SETTLE),
        }))
    }

    /// Admits a request of key `key_id` in one atomic step (one Redis round trip): checks
    /// `rpm` and `tpm`, reserves `budget`'s estimate when it fits, and counts the request
    /// against `rpm`; a refused request changes nothing. `now_ms` is the clock of the memory
    /// backend (Redis uses its own).
    pub async fn hit(
        &self,
        key_id: &str,
        rpm: Option<u64>,
        tpm: Option<u64>,
        budget: Option<BudgetAsk<'_>>,
        now_ms: i64,
    ) -> Result<Result<(), Denial>, AccessError> {
        if rpm.is_none() && tpm.is_none() && budget.is_none() {
            return Ok(Ok(()));
        }
        match self {
            Limits::Memory(state) => {
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(rpm) = rpm {
                    let window = state.requests.entry(key_id.to_owned()).or_default();
                    while window.front().is_some_and(|&t| t <= now_ms - WINDOW_MS) {
                        window.pop_front();
                    }
                    if window.len() as u64 >= rpm {
                        let retry = window
                            .front()
                            .map_or(WINDOW_MS, |&t| t + WINDOW_MS - now_ms);
                        return Ok(Err(Denial::Rpm {
                            limit: rpm,
                            retry_after_ms: retry,
                        }));
                    }
                }
                if let Some(tpm) = tpm {
                    let window = state.tokens.entry(key_id.to_owned()).or_default();
                    window.expire(now_ms);
                    if window.sum >= tpm {
                        let mut over = window.sum - tpm;
                        let mut retry = WINDOW_MS;
                        for &(t, n) in window.entries.iter() {
                            if n > over {
                                retry = t + WINDOW_MS - now_ms;
                                break;
                            }
                            over -= n;
                        }
                        return Ok(Err(Denial::Tpm {
                            limit: tpm,
                            retry_after_ms: retry,
                        }));
                    }
                }
                if let Some(ask) = &budget {
                    let b = state
                        .budgets
                        .entry((key_id.to_owned(), ask.period.to_owned()))
                        .or_insert(Budget {
                            spent: ask.seed,
                            reserved: 0.0,
                        });
                    if b.spent + b.reserved + ask.estimate > ask.limit {
                        return Ok(Err(budget_denial(ask, b.spent, b.reserved)));
                    }
                    b.reserved += ask.estimate;
                }
                if rpm.is_some() {
                    state
                        .requests
                        .entry(key_id.to_owned())
                        .or_default()
                        .push_back(now_ms);
                }
                Ok(Ok(()))
            }
            Limits::Redis(r) => {
                let period = budget.as_ref().map_or("none", |b| b.period);
                let (code, a, b): (i64, String, String) = r
                    .hit
                    .key(redis_key(key_id, "rpm"))
                    .key(redis_key(key_id, "tpm"))
                    .key(redis_key(key_id, "tpm-sum"))
                    .key(redis_key(key_id, &format!("budget:{period}")))
                    .arg(WINDOW_MS)
                    .arg(rpm.map_or(-1, |n| n as i64))
                    .arg(tpm.map_or(-1, |n| n as i64))
                    .arg(unique())
                    .arg(budget.as_ref().map_or(-1.0, |b| b.limit))
                    .arg(budget.as_ref().map_or(0.0, |b| b.estimate))
                    .arg(budget.as_ref().map_or(0.0, |b| b.seed))
                    .arg(budget.as_ref().and_then(|b| b.expires_ms).unwrap_or(0).max(0))
                    .invoke_async(&mut r.conn.clone())
                    .await
                    .map_err(redis_error)?;
                let retry = || a.parse::<i64>().unwrap_or(WINDOW_MS);
                Ok(match (code, rpm, tpm, &budget) {
                    (1, Some(limit), _, _) => Err(Denial::Rpm {
                        limit,
                        retry_after_ms: retry(),
                    }),
                    (2, _, Some(limit), _) => Err(Denial::Tpm {
                        limit,
                        retry_after_ms: retry(),
                    }),
                    (3, _, _, Some(ask)) => Err(budget_denial(
                        ask,
                        a.parse().unwrap_or(0.0),
                        b.parse().unwrap_or(0.0),
                    )),
                    _ => Ok(()),
                })
            }
        }
    }

    /// Adds the tokens an answered request really used to key `key_id`'s TPM window.
    pub async fn add_tokens(
        &self,
        key_id: &str,
        tokens: u64,
        now_ms: i64,
    ) -> Result<(), AccessError> {
        if tokens == 0 {
            return Ok(());
        }
        match self {
            Limits::Memory(state) => {
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                let window = state.tokens.entry(key_id.to_owned()).or_default();
                window.expire(now_ms);
                window.entries.push_back((now_ms, tokens));
                window.sum += tokens;
                Ok(())
            }
            Limits::Redis(r) => {
                let _: i64 = r
                    .add_tokens
                    .key(redis_key(key_id, "tpm"))
                    .key(redis_key(key_id, "tpm-sum"))
                    .arg(WINDOW_MS)
                    .arg(format!("{}:{tokens}", unique()))
                    .arg(tokens)
                    .invoke_async(&mut r.conn.clone())
                    .await
                    .map_err(redis_error)?;
                Ok(())
            }
        }
    }

    /// Replaces a reservation of `reserved` USD with the `actual` cost.
    pub async fn settle(
        &self,
        key_id: &str,
        period: &str,
        reserved: f64,
        actual: f64,
    ) -> Result<(), AccessError> {
        match self {
            Limits::Memory(state) => {
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                let budget = state
                    .budgets
                    .entry((key_id.to_owned(), period.to_owned()))
                    .or_default();
                budget.reserved = (budget.reserved - reserved).max(0.0);
                budget.spent += actual;
                Ok(())
            }
            Limits::Redis(r) => {
                let _: i64 = r
                    .settle
                    .key(redis_key(key_id, &format!("budget:{period}")))
                    .arg(reserved)
                    .arg(actual)
                    .invoke_async(&mut r.conn.clone())
                    .await
                    .map_err(redis_error)?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(period: &str, limit: f64, estimate: f64, seed: f64, expires_ms: Option<i64>) -> BudgetAsk<'_> {
        BudgetAsk {
            period,
            limit,
            estimate,
            seed,
            expires_ms,
            resets_in_ms: None,
        }
    }

    /// The `(spent, reserved)` of a budget refusal.
    fn refused(result: Result<(), Denial>) -> (f64, f64) {
        match result {
            Err(Denial::Budget { spent, reserved, .. }) => (spent, reserved),
            other => panic!("expected a budget refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn rpm_is_a_sliding_window() {
        let limits = Limits::memory();
        assert_eq!(limits.hit("k", Some(2), None, None, 1_000).await.unwrap(), Ok(()));
        assert_eq!(
            limits.hit("k", Some(2), None, None, 20_000).await.unwrap(),
            Ok(())
        );
        let denied = limits
            .hit("k", Some(2), None, None, 30_000)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(
            denied,
            Denial::Rpm {
                limit: 2,
                retry_after_ms: 31_000
            }
        );
        assert_eq!(denied.retry_after_secs(), Some(31));
        // Other keys have their own window; the first request leaves it at 61 s.
        assert_eq!(
            limits.hit("other", Some(2), None, None, 30_000).await.unwrap(),
            Ok(())
        );
        assert_eq!(
            limits.hit("k", Some(2), None, None, 61_001).await.unwrap(),
            Ok(())
        );
    }

    #[tokio::test]
    async fn tpm_counts_real_usage() {
        let limits = Limits::memory();
        assert_eq!(limits.hit("k", None, Some(100), None, 0).await.unwrap(), Ok(()));
        limits.add_tokens("k", 60, 0).await.unwrap();
        limits.add_tokens("k", 50, 10_000).await.unwrap();
        let denied = limits
            .hit("k", None, Some(100), None, 20_000)
            .await
            .unwrap()
            .unwrap_err();
        // Once the first 60 leave the window, 50 < 100.
        assert_eq!(
            denied,
            Denial::Tpm {
                limit: 100,
                retry_after_ms: 40_000
            }
        );
        assert_eq!(
            limits.hit("k", None, Some(100), None, 60_001).await.unwrap(),
            Ok(())
        );
    }

    #[tokio::test]
    async fn budgets_reserve_then_settle() {
        let limits = Limits::memory();
        assert_eq!(
            limits.hit("k", None, None, Some(ask("total", 1.0, 0.4, 0.1, None)), 0).await.unwrap(),
            Ok(())
        );
        assert_eq!(
            limits.hit("k", None, None, Some(ask("total", 1.0, 0.4, 0.1, None)), 0).await.unwrap(),
            Ok(())
        );
        // 0.1 spent + 0.8 reserved: another 0.4 does not fit, and a refusal counts nothing.
        let over = limits.hit("k", Some(100), None, Some(ask("total", 1.0, 0.4, 0.1, None)), 0);
        assert_eq!(refused(over.await.unwrap()), (0.1, 0.8));
        limits.settle("k", "total", 0.4, 0.1).await.unwrap();
        assert_eq!(
            limits.hit("k", None, None, Some(ask("total", 1.0, 0.4, 0.1, None)), 0).await.unwrap(),
            Ok(())
        );
        assert_eq!(
            limits.hit("k", None, None, Some(ask("other", 1.0, 1.0, 0.0, None)), 0).await.unwrap(),
            Ok(())
        );
    }

    /// The same behaviour through Redis, when `FUNGIBLE_TEST_REDIS_URL` is set.
    #[tokio::test]
    async fn redis_backend_matches() {
        let Ok(url) = std::env::var("FUNGIBLE_TEST_REDIS_URL") else {
            eprintln!("FUNGIBLE_TEST_REDIS_URL is not set: Redis case not run");
            return;
        };
        let limits = Limits::redis(&url).await.expect("redis");
        let key = crate::key::new_id();
        assert_eq!(limits.hit(&key, Some(2), None, None, 0).await.unwrap(), Ok(()));
        assert_eq!(limits.hit(&key, Some(2), None, None, 0).await.unwrap(), Ok(()));
        match limits.hit(&key, Some(2), None, None, 0).await.unwrap() {
            Err(Denial::Rpm {
                limit: 2,
                retry_after_ms,
            }) => assert!((1..=60_000).contains(&retry_after_ms)),
            other => panic!("{other:?}"),
        }
        assert_eq!(limits.hit(&key, None, Some(100), None, 0).await.unwrap(), Ok(()));
        limits.add_tokens(&key, 150, 0).await.unwrap();
        assert!(matches!(
            limits.hit(&key, None, Some(100), None, 0).await.unwrap(),
            Err(Denial::Tpm { limit: 100, .. })
        ));
        for _ in 0..2 {
            let admitted = limits.hit(&key, None, None, Some(ask("total", 1.0, 0.4, 0.1, Some(60_000))), 0);
            assert_eq!(admitted.await.unwrap(), Ok(()));
        }
        // Refused by the budget: the RPM window (2 already) is not counted again.
        let over = limits.hit(&key, Some(3), None, Some(ask("total", 1.0, 0.4, 0.1, None)), 0);
        let (spent, reserved) = refused(over.await.unwrap());
        assert!(
            (spent - 0.1).abs() < 1e-9 && (reserved - 0.8).abs() < 1e-9,
            "{spent} {reserved}"
        );
        limits.settle(&key, "total", 0.4, 0.1).await.unwrap();
        assert_eq!(
            limits.hit(&key, Some(3), None, Some(ask("total", 1.0, 0.4, 0.1, None)), 0).await.unwrap(),
            Ok(())
        );
        // That one was counted: the window holds 3 now.
        assert!(matches!(
            limits.hit(&key, Some(3), None, None, 0).await.unwrap(),
            Err(Denial::Rpm { limit: 3, .. })
        ));
    }
}
