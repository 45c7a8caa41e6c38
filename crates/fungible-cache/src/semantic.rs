//! The semantic index: answers found by the similarity of the question, not its bytes.
//!
//! Entries are grouped by scope ([`CacheKey::semantic_scope`]: the virtual key, the model and
//! the whole request except the text of the last user message), so a similar question only
//! ever matches within the same conversation, tools, parameters, model and key: a wrong
//! cached answer is worse than a miss. Within a scope, the entry whose embedding has the
//! highest cosine similarity at or above the threshold wins. Scopes are bounded in number
//! (least recently used dropped first) and each holds a bounded number of questions (oldest
//! dropped first). With the memory backend the index lives in this process; with Redis it is
//! shared (`ResponseCache::semantic_find` / `semantic_insert`): each scope is a Redis list of
//! (embedding, answer) entries, newest first and bounded like the local one, and each instance
//! keeps a bounded local copy that it reads again from Redis when it finds no match there.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use tokio::time::Instant;

use crate::{CacheKey, CachedAnswer, SemanticConfig};

#[derive(Clone)]
pub struct SemanticIndex {
    scopes: Cache<CacheKey, Arc<Mutex<VecDeque<Entry>>>>,
    per_scope: usize,
    threshold: f32,
    ttl: Duration,
}

struct Entry {
    embedding: Vec<f32>,
    answer: Arc<CachedAnswer>,
    expires: Instant,
}

impl SemanticIndex {
    pub(crate) fn new(config: &SemanticConfig, ttl: Duration) -> SemanticIndex {
        let scopes = Cache::builder()
            .max_capacity(config.max_scopes)
            .eviction_policy(EvictionPolicy::lru())
            .time_to_live(ttl)
            .build();
        SemanticIndex {
            scopes,
            per_scope: config.max_entries_per_scope,
            threshold: config.threshold,
            ttl,
        }
    }

    /// The cached answer of the most similar earlier question in `scope`, with its
    /// similarity, when that is at least the threshold.
    pub fn find(&self, scope: &CacheKey, embedding: &[f32]) -> Option<(CachedAnswer, f32)> {
        let entries = self.scopes.get(scope)?;
        let now = Instant::now();
        let mut entries = entries.lock().ok()?;
        entries.retain(|e| e.expires > now);
        let (best, similarity) = entries
            .iter()
            .map(|e| (e, cosine(&e.embedding, embedding)))
            .filter(|(_, s)| *s >= self.threshold)
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        Some(((*best.answer).clone(), similarity))
    }

    pub(crate) fn per_scope(&self) -> usize {
        self.per_scope
    }

    /// Replaces what this process holds for `scope` with `entries` (newest first, as read
    /// from the shared index).
    pub(crate) fn replace_scope(&self, scope: CacheKey, entries: Vec<(Vec<f32>, CachedAnswer)>) {
        let now = Instant::now();
        let mut local: VecDeque<Entry> = VecDeque::with_capacity(entries.len().min(self.per_scope));
        for (embedding, answer) in entries.into_iter().take(self.per_scope) {
            // Oldest first, as `insert` keeps them; the shared list's own expiry bounds its age.
            local.push_front(Entry { embedding, answer: Arc::new(answer), expires: now + self.ttl });
        }
        self.scopes.insert(scope, Arc::new(Mutex::new(local)));
    }

    /// Remembers `answer` for the question embedded as `embedding` in `scope`.
    pub fn insert(&self, scope: CacheKey, embedding: Vec<f32>, answer: CachedAnswer) {
        if embedding.is_empty() {
            return;
        }
        let entries = self
            .scopes
            .get_with(scope, || Arc::new(Mutex::new(VecDeque::new())));
        let Ok(mut entries) = entries.lock() else {
            return;
        };
        let now = Instant::now();
        entries.retain(|e| e.expires > now);
        while entries.len() >= self.per_scope {
            entries.pop_front();
        }
        entries.push_back(Entry {
            embedding,
            answer: Arc::new(answer),
            expires: now + self.ttl,
        });
    }
}

/// One shared entry: the embedding as little-endian `f32`s (base64), and the answer.
#[derive(serde::Serialize, serde::Deserialize)]
struct Shared {
    e: String,
    a: CachedAnswer,
}

pub(crate) fn encode(embedding: &[f32], answer: &CachedAnswer) -> Option<Vec<u8>> {
    use base64::Engine;
    let bytes: Vec<u8> = embedding.iter().flat_map(|x| x.to_le_bytes()).collect();
    let shared = Shared { e: base64::engine::general_purpose::STANDARD.encode(bytes), a: answer.clone() };
    serde_json::to_vec(&shared).ok()
}

pub(crate) fn decode(bytes: &[u8]) -> Option<(Vec<f32>, CachedAnswer)> {
    use base64::Engine;
    let shared: Shared = serde_json::from_slice(bytes).ok()?;
    let raw = base64::engine::general_purpose::STANDARD.decode(shared.e).ok()?;
    let embedding = raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Some((embedding, shared.a))
}

/// Cosine similarity; 0 when either vector is zero or their lengths differ.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}
