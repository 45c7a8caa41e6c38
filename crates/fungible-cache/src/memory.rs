//! The in-memory backend: a bounded [`moka`] cache, least recently used evicted first.
//!
//! Each answer weighs its size in bytes, but at least `max_bytes / max_entries`, so both
//! bounds hold with one weight. Expiry is checked on read against tokio's clock (which tests
//! pause and advance); moka's own time-to-live only reclaims entries nobody reads again.

use std::sync::Arc;
use std::time::Duration;

use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use tokio::time::Instant;

use crate::{CacheKey, CachedAnswer};

#[derive(Clone)]
pub(crate) struct MemoryBackend {
    entries: Cache<CacheKey, Arc<Stored>>,
    ttl: Duration,
    min_weight: u64,
}

struct Stored {
    answer: CachedAnswer,
    weight: u32,
    expires: Instant,
}

impl MemoryBackend {
    pub(crate) fn new(max_entries: u64, max_bytes: u64, ttl: Duration) -> MemoryBackend {
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_key: &CacheKey, stored: &Arc<Stored>| stored.weight)
            .eviction_policy(EvictionPolicy::lru())
            .time_to_live(ttl)
            .build();
        MemoryBackend {
            entries,
            ttl,
            min_weight: (max_bytes / max_entries).max(1),
        }
    }

    pub(crate) fn get(&self, key: &CacheKey) -> Option<CachedAnswer> {
        let stored = self.entries.get(key)?;
        if Instant::now() >= stored.expires {
            self.entries.invalidate(key);
            return None;
        }
        Some(stored.answer.clone())
    }

    /// Keeps `answer`, which serialises to `size` bytes.
    pub(crate) fn insert(&self, key: CacheKey, answer: CachedAnswer, size: usize) {
        let weight = (size as u64).max(self.min_weight).min(u64::from(u32::MAX)) as u32;
        let stored = Stored {
            answer,
            weight,
            expires: Instant::now() + self.ttl,
        };
        self.entries.insert(key, Arc::new(stored));
    }

    /// Entries held, after applying pending evictions.
    pub(crate) fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }
}
