//! The response cache: answers to repeated (or, per route, similar) chat requests served
//! without calling a provider.
//!
//! - [`key`]: which request fields decide the answer ([`CacheKey::exact`]), whether a request
//!   is deterministic, the semantic scope.
//! - [`ResponseCache`]: the exact-match cache over one backend, in memory (bounded, LRU) or in
//!   Redis (shared between gateways), with a TTL; a backend failure is a miss, never an error.
//! - [`SemanticIndex`]: the similar-question index of the routes that opt in.
//!
//! What is cached is the canonical [`ChatResponse`] and the target that produced it, so an
//! answer cached through one inbound API can be served through any other. The crate knows no
//! HTTP: `fungible-server/src/cache.rs` decides per request and wires it into dispatch.

mod config;
pub mod key;
mod memory;
mod redis_backend;
mod semantic;

use std::sync::Arc;

use fungible_types::ChatResponse;
use serde::{Deserialize, Serialize};

pub use config::{
    BackendConfig, CacheConfig, CacheConfigError, DEFAULT_EMBEDDING_MODEL, DEFAULT_REDIS_URL,
    SemanticConfig,
};
pub use key::CacheKey;
pub use semantic::{SemanticIndex, cosine};

/// One cached answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAnswer {
    pub response: ChatResponse,
    /// The `PROVIDER/MODEL` that produced it.
    pub target: Option<String>,
    /// The alias it was asked through, if any.
    #[serde(default)]
    pub route: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis: {0}")]
    Redis(String),
    #[error("undecodable cache entry: {0}")]
    Decode(String),
}

/// The response cache (cheap to clone; clones share the entries).
#[derive(Clone)]
pub struct ResponseCache {
    inner: Arc<Inner>,
}

struct Inner {
    config: CacheConfig,
    backend: Backend,
    semantic: Option<SemanticIndex>,
}

enum Backend {
    Memory(memory::MemoryBackend),
    Redis(redis_backend::RedisBackend),
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.inner.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        };
        f.debug_struct("ResponseCache")
            .field("backend", &backend)
            .finish_non_exhaustive()
    }
}

impl ResponseCache {
    /// Opens the configured backend (connecting to Redis: an unreachable Redis fails here, at
    /// start, not on the first request).
    pub async fn open(config: CacheConfig) -> Result<ResponseCache, CacheError> {
        let backend = match &config.backend {
            BackendConfig::Memory {
                max_entries,
                max_bytes,
            } => Backend::Memory(memory::MemoryBackend::new(
                *max_entries,
                *max_bytes,
                config.ttl,
            )),
            BackendConfig::Redis { url, key_prefix } => {
                Backend::Redis(redis_backend::RedisBackend::connect(url, key_prefix, config.ttl).await?)
            }
        };
        let semantic = config
            .semantic
            .as_ref()
            .map(|s| SemanticIndex::new(s, config.ttl));
        Ok(ResponseCache {
            inner: Arc::new(Inner {
                config,
                backend,
                semantic,
            }),
        })
    }

    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// The similar-question index, when `[cache.semantic]` is configured.
    pub fn semantic(&self) -> Option<&SemanticIndex> {
        self.inner.semantic.as_ref()
    }

    /// The cached answer of the most similar earlier question in `scope` (see
    /// [`SemanticIndex::find`]), with its similarity. With the Redis backend the index is
    /// shared: a scope this instance does not find a match in is read again from Redis (one
    /// round trip, only on a miss, which costs an upstream call anyway), so a question answered
    /// through any instance is found by every instance.
    pub async fn semantic_find(&self, scope: &CacheKey, embedding: &[f32]) -> Option<(CachedAnswer, f32)> {
        let index = self.inner.semantic.as_ref()?;
        if let Some(hit) = index.find(scope, embedding) {
            return Some(hit);
        }
        let Backend::Redis(redis) = &self.inner.backend else { return None };
        let name = format!("sem:{scope}");
        let entries = match redis.list(&name).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!("semantic cache read failed: {e}");
                return None;
            }
        };
        let entries: Vec<(Vec<f32>, CachedAnswer)> = entries.iter().filter_map(|bytes| semantic::decode(bytes)).collect();
        index.replace_scope(scope.clone(), entries);
        index.find(scope, embedding)
    }

    /// Remembers `answer` for the question embedded as `embedding` in `scope`: in this
    /// process, and with the Redis backend for every instance (a failure is logged).
    pub async fn semantic_insert(&self, scope: CacheKey, embedding: Vec<f32>, answer: CachedAnswer) {
        let Some(index) = &self.inner.semantic else { return };
        if let Backend::Redis(redis) = &self.inner.backend
            && let Some(bytes) = self.encode(&answer).and_then(|_| semantic::encode(&embedding, &answer))
            && let Err(e) = redis.push_bounded(&format!("sem:{scope}"), bytes, index.per_scope()).await
        {
            tracing::warn!("semantic cache write failed: {e}");
        }
        index.insert(scope, embedding, answer);
    }

    /// The answer cached under `key`; a backend failure is logged and is a miss.
    pub async fn get(&self, key: &CacheKey) -> Option<CachedAnswer> {
        match &self.inner.backend {
            Backend::Memory(m) => m.get(key),
            Backend::Redis(r) => {
                let decoded = match r.get(key).await {
                    Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                        .map_err(|e| CacheError::Decode(e.to_string())),
                    Ok(None) => return None,
                    Err(e) => Err(e),
                };
                decoded
                    .inspect_err(|e| tracing::warn!("response cache read failed: {e}"))
                    .ok()
            }
        }
    }

    /// Caches `answer` under `key` (unless it is larger than `max_entry_bytes`); a backend
    /// failure is logged.
    pub async fn put(&self, key: &CacheKey, answer: &CachedAnswer) {
        let Some(bytes) = self.encode(answer) else {
            return;
        };
        match &self.inner.backend {
            Backend::Memory(m) => m.insert(key.clone(), answer.clone(), bytes.len()),
            Backend::Redis(r) => {
                if let Err(e) = r.set(key, bytes).await {
                    tracing::warn!("response cache write failed: {e}");
                }
            }
        }
    }

    /// Like [`ResponseCache::put`] without waiting: the memory backend stores at once, a
    /// Redis write runs on its own task. For callers that cannot await (a stream's end).
    pub fn store(&self, key: CacheKey, answer: CachedAnswer) {
        match &self.inner.backend {
            Backend::Memory(m) => {
                if let Some(bytes) = self.encode(&answer) {
                    m.insert(key, answer, bytes.len());
                }
            }
            Backend::Redis(_) => {
                let cache = self.clone();
                tokio::spawn(async move { cache.put(&key, &answer).await });
            }
        }
    }

    /// Answers held by the memory backend (`None` for Redis), after pending evictions.
    pub fn memory_entries(&self) -> Option<u64> {
        match &self.inner.backend {
            Backend::Memory(m) => Some(m.len()),
            Backend::Redis(_) => None,
        }
    }

    fn encode(&self, answer: &CachedAnswer) -> Option<Vec<u8>> {
        let bytes = serde_json::to_vec(answer).ok()?;
        if bytes.len() as u64 > self.inner.config.max_entry_bytes {
            tracing::debug!(bytes = bytes.len(), "answer too large to cache");
            return None;
        }
        Some(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fungible_types::{AssistantMessage, ChatRequest, FinishReason, Message, Role, Usage};
    use std::time::Duration;

    fn answer(text: &str) -> CachedAnswer {
        CachedAnswer {
            response: ChatResponse {
                id: "r1".into(),
                model: "m".into(),
                created: 1,
                message: AssistantMessage {
                    content: Some(text.into()),
                    ..Default::default()
                },
                finish_reason: FinishReason::Stop,
                usage: Usage {
                    input_tokens: 3,
                    output_tokens: 2,
                    ..Default::default()
                },
            },
            target: Some("mock/m".into()),
            route: None,
        }
    }

    fn key(text: &str) -> CacheKey {
        let req = ChatRequest {
            model: "mock/m".into(),
            messages: vec![Message::text(Role::User, text)],
            ..Default::default()
        };
        CacheKey::exact(&req, None)
    }

    async fn memory(config: CacheConfig) -> ResponseCache {
        ResponseCache::open(config).await.unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn memory_entries_expire_after_the_ttl() {
        let cache = memory(CacheConfig {
            ttl: Duration::from_secs(60),
            ..CacheConfig::default()
        })
        .await;
        cache.put(&key("a"), &answer("A")).await;
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(cache.get(&key("a")).await, Some(answer("A")));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(cache.get(&key("a")).await, None);
    }

    #[tokio::test]
    async fn memory_is_bounded_by_entries_least_recently_used_first() {
        let backend = BackendConfig::Memory {
            max_entries: 3,
            max_bytes: 1024 * 1024,
        };
        let cache = memory(CacheConfig {
            backend,
            ..CacheConfig::default()
        })
        .await;
        for k in ["a", "b", "c"] {
            cache.put(&key(k), &answer(k)).await;
        }
        assert_eq!(cache.memory_entries(), Some(3));
        assert!(cache.get(&key("a")).await.is_some()); // "b" is now the least recently used
        cache.put(&key("d"), &answer("d")).await;
        assert_eq!(cache.memory_entries(), Some(3));
        assert!(cache.get(&key("b")).await.is_none());
        for k in ["a", "c", "d"] {
            assert!(cache.get(&key(k)).await.is_some(), "{k}");
        }
    }

    #[tokio::test]
    async fn memory_is_bounded_by_bytes_and_skips_oversized_answers() {
        let size = serde_json::to_vec(&answer(&"x".repeat(1000)))
            .unwrap()
            .len() as u64;
        let backend = BackendConfig::Memory {
            max_entries: 1000,
            max_bytes: size * 2,
        };
        let cache = memory(CacheConfig {
            backend,
            max_entry_bytes: size,
            ..CacheConfig::default()
        })
        .await;
        for k in ["a", "b", "c"] {
            cache.put(&key(k), &answer(&k.repeat(1000))).await;
        }
        assert_eq!(cache.memory_entries(), Some(2));
        cache.put(&key("big"), &answer(&"y".repeat(2000))).await;
        assert!(cache.get(&key("big")).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn semantic_index_matches_above_the_threshold_within_a_scope() {
        let config = SemanticConfig {
            models: vec!["m".into()],
            threshold: 0.9,
            max_entries_per_scope: 2,
            ..SemanticConfig::default()
        };
        let index = SemanticIndex::new(&config, Duration::from_secs(10));
        let (s1, s2) = (key("scope1"), key("scope2"));
        index.insert(s1.clone(), vec![1.0, 0.0], answer("east"));
        index.insert(s1.clone(), vec![0.0, 1.0], answer("north"));
        let (hit, sim) = index.find(&s1, &[0.99, 0.1]).unwrap();
        assert_eq!(hit, answer("east"));
        assert!(sim > 0.99);
        assert!(
            index.find(&s1, &[0.7, 0.7]).is_none(),
            "0.707 is under the threshold"
        );
        assert!(index.find(&s2, &[1.0, 0.0]).is_none(), "another scope");
        index.insert(s1.clone(), vec![-1.0, 0.0], answer("west"));
        assert!(
            index.find(&s1, &[1.0, 0.0]).is_none(),
            "the oldest entry was dropped"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(index.find(&s1, &[0.0, 1.0]).is_none(), "expired");
    }

    #[test]
    fn cosine_of_mismatched_or_zero_vectors_is_zero() {
        assert_eq!(cosine(&[1.0], &[1.0, 0.0]), 0.0);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
        assert!((cosine(&[1.0, 1.0], &[2.0, 2.0]) - 1.0).abs() < 1e-6);
    }
}
