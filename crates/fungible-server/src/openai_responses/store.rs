//! The store behind `previous_response_id`, `GET /v1/responses/{id}` and
//! `DELETE /v1/responses/{id}`.
//!
//! For every stored response it keeps the rendered response object (what `GET` returns), the
//! whole canonical conversation that produced it, its own output included, so a request
//! naming it as `previous_response_id` continues the chain without the client resending
//! anything, and its **owner**: the virtual key that created it. Only that key sees it (a
//! response of another key is "not found", for reading, deleting and continuing alike);
//! with auth off, or with the admin key, nothing is scoped.
//!
//! Two backends behind the same three calls:
//! - **memory** (the default): this process only, bounded by a number of responses and by
//!   an estimate of their size, oldest evicted first, lost on restart. A std `Mutex` guards
//!   it: every operation is a short map update, never held across an `.await`.
//! - **Redis** (`[state] redis`): shared by every instance, one string per response
//!   (`fungible:resp:{id}`, JSON) expiring after the retention (default 30 days, as
//!   OpenAI keeps them). Behind a load balancer each turn of a conversation may land on
//!   another instance and still find the previous one.
//! - **the store** (a PostgreSQL `[store]` and no Redis): the same, in the `responses` table.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use fungible_types::Message;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::principal::DataScope;

/// Responses kept by default before the oldest is evicted.
pub const DEFAULT_MAX_RESPONSES: usize = 10_000;
/// Bytes (estimated as the JSON size of each response and its conversation) kept by default;
/// also the largest single response the Redis backend stores.
pub const DEFAULT_MAX_BYTES: usize = 256 * 1024 * 1024;
/// How long the Redis backend keeps a response.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// One stored response.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    /// The response object exactly as the client received it.
    pub body: Bytes,
    /// The conversation up to and including this response's output, without the
    /// `instructions` (which, as in OpenAI's API, do not carry over to the next response).
    pub conversation: Arc<Vec<Message>>,
    /// The virtual key that created it; `None`: made without one (auth off, admin key).
    pub owner: Option<String>,
}

/// The Redis value of a stored response.
#[derive(Serialize, Deserialize)]
struct Encoded<'a> {
    owner: Option<std::borrow::Cow<'a, str>>,
    /// The response object's JSON text.
    body: std::borrow::Cow<'a, str>,
    conversation: std::borrow::Cow<'a, [Message]>,
}

/// Why the shared backend could not answer.
#[derive(Debug, thiserror::Error)]
#[error("the response store failed: {0}")]
pub struct StoreError(String);

#[derive(Debug, Clone)]
pub struct ResponseStore {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Memory(Memory),
    Redis { conn: ConnectionManager, retention: Duration, max_bytes: usize },
    Store { store: fungible_store::Store, retention: Duration, max_bytes: usize },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Memory(m) => m.fmt(f),
            Backend::Redis { retention, .. } => f.debug_struct("Redis").field("retention", retention).finish_non_exhaustive(),
            Backend::Store { retention, .. } => f.debug_struct("Store").field("retention", retention).finish_non_exhaustive(),
        }
    }
}

#[derive(Debug, Clone)]
struct Memory {
    inner: Arc<Mutex<Inner>>,
    max_responses: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, (StoredResponse, usize)>,
    /// Ids in insertion order; may still hold ids deleted since (skipped when evicting).
    order: VecDeque<String>,
    bytes: usize,
}

impl Default for ResponseStore {
    fn default() -> Self {
        ResponseStore::new(DEFAULT_MAX_RESPONSES, DEFAULT_MAX_BYTES)
    }
}

fn redis_key(id: &str) -> String {
    format!("fungible:resp:{id}")
}

impl ResponseStore {
    /// In this process, within `max_responses` and `max_bytes`.
    pub fn new(max_responses: usize, max_bytes: usize) -> ResponseStore {
        ResponseStore {
            backend: Backend::Memory(Memory { inner: Arc::default(), max_responses: max_responses.max(1), max_bytes }),
        }
    }

    /// In Redis at `url`, shared by every instance, each response kept for `retention`.
    pub async fn redis(url: &str, retention: Duration) -> Result<ResponseStore, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let conn = client.get_connection_manager_with_config(config).await.map_err(|e| StoreError(e.to_string()))?;
        Ok(ResponseStore { backend: Backend::Redis { conn, retention, max_bytes: DEFAULT_MAX_BYTES } })
    }

    /// In the inference store (PostgreSQL, shared by every instance on it), each response kept
    /// for `retention`.
    pub fn in_store(store: fungible_store::Store, retention: Duration) -> ResponseStore {
        ResponseStore { backend: Backend::Store { store, retention, max_bytes: DEFAULT_MAX_BYTES } }
    }

    /// Stores `response` under `id`. A response larger than the byte budget is not stored
    /// (logged): it cannot be continued.
    pub async fn insert(&self, id: String, response: StoredResponse) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Memory(memory) => {
                memory.insert(id, response);
                Ok(())
            }
            Backend::Redis { conn, retention, max_bytes } => {
                let encoded = Encoded {
                    owner: response.owner.as_deref().map(Into::into),
                    body: String::from_utf8_lossy(&response.body),
                    conversation: response.conversation.as_slice().into(),
                };
                let value = serde_json::to_vec(&encoded).map_err(|e| StoreError(e.to_string()))?;
                if value.len() > *max_bytes {
                    tracing::warn!(size = value.len(), limit = max_bytes, "response {id} is too large to store; it cannot be continued");
                    return Ok(());
                }
                let millis = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
                redis::cmd("SET")
                    .arg(redis_key(&id))
                    .arg(value)
                    .arg("PX")
                    .arg(millis)
                    .query_async::<()>(&mut conn.clone())
                    .await
                    .map_err(|e| StoreError(e.to_string()))
            }
            Backend::Store { store, retention, max_bytes } => {
                let conversation = serde_json::to_string(response.conversation.as_slice()).map_err(|e| StoreError(e.to_string()))?;
                if conversation.len() + response.body.len() > *max_bytes {
                    tracing::warn!(limit = max_bytes, "response {id} is too large to store; it cannot be continued");
                    return Ok(());
                }
                let row = fungible_store::StoredResponseRow {
                    owner: response.owner,
                    body: String::from_utf8_lossy(&response.body).into_owned(),
                    conversation,
                };
                let now = fungible_store::now_ms();
                let expires = now.saturating_add(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
                store.put_response(&id, &row, now, expires).await.map_err(|e| StoreError(e.to_string()))
            }
        }
    }

    /// The response `id`, if `scope` may see it.
    pub async fn get(&self, id: &str, scope: &DataScope) -> Result<Option<StoredResponse>, StoreError> {
        let found = match &self.backend {
            Backend::Memory(memory) => memory.get(id),
            Backend::Store { store, .. } => {
                match store.response(id, fungible_store::now_ms()).await.map_err(|e| StoreError(e.to_string()))? {
                    None => None,
                    Some(row) => Some(StoredResponse {
                        body: Bytes::from(row.body),
                        conversation: Arc::new(serde_json::from_str(&row.conversation).map_err(|e| StoreError(e.to_string()))?),
                        owner: row.owner,
                    }),
                }
            }
            Backend::Redis { conn, .. } => {
                let value: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(redis_key(id))
                    .query_async(&mut conn.clone())
                    .await
                    .map_err(|e| StoreError(e.to_string()))?;
                match value {
                    None => None,
                    Some(bytes) => {
                        let encoded: Encoded<'_> = serde_json::from_slice(&bytes).map_err(|e| StoreError(e.to_string()))?;
                        Some(StoredResponse {
                            body: Bytes::from(encoded.body.into_owned()),
                            conversation: Arc::new(encoded.conversation.into_owned()),
                            owner: encoded.owner.map(std::borrow::Cow::into_owned),
                        })
                    }
                }
            }
        };
        Ok(found.filter(|r| scope.sees(r.owner.as_deref())))
    }

    /// Removes `id` if `scope` may see it; whether it did.
    pub async fn delete(&self, id: &str, scope: &DataScope) -> Result<bool, StoreError> {
        if self.get(id, scope).await?.is_none() {
            return Ok(false);
        }
        match &self.backend {
            Backend::Memory(memory) => Ok(memory.delete(id)),
            Backend::Store { store, .. } => store.delete_response(id).await.map_err(|e| StoreError(e.to_string())),
            Backend::Redis { conn, .. } => {
                let removed: u64 = redis::cmd("DEL")
                    .arg(redis_key(id))
                    .query_async(&mut conn.clone())
                    .await
                    .map_err(|e| StoreError(e.to_string()))?;
                Ok(removed > 0)
            }
        }
    }
}

impl Memory {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves the maps consistent (every update
        // is a single insert or remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn insert(&self, id: String, response: StoredResponse) {
        let size = response.body.len() + conversation_size(&response.conversation);
        if size > self.max_bytes {
            tracing::warn!(size, limit = self.max_bytes, "response {id} is too large to store; it cannot be continued");
            return;
        }
        let mut inner = self.lock();
        if let Some((_, old)) = inner.entries.remove(&id) {
            inner.bytes -= old;
        }
        while inner.entries.len() >= self.max_responses || inner.bytes + size > self.max_bytes {
            let Some(oldest) = inner.order.pop_front() else { break };
            if let Some((_, evicted)) = inner.entries.remove(&oldest) {
                inner.bytes -= evicted;
            }
        }
        inner.bytes += size;
        inner.entries.insert(id.clone(), (response, size));
        inner.order.push_back(id);
        // Deleted ids linger in `order`; drop them once they outnumber the live ones.
        if inner.order.len() > 2 * self.max_responses {
            let Inner { entries, order, .. } = &mut *inner;
            order.retain(|id| entries.contains_key(id));
        }
    }

    fn get(&self, id: &str) -> Option<StoredResponse> {
        self.lock().entries.get(id).map(|(response, _)| response.clone())
    }

    /// Removes `id`; whether it was there.
    fn delete(&self, id: &str) -> bool {
        let mut inner = self.lock();
        match inner.entries.remove(id) {
            Some((_, size)) => {
                inner.bytes -= size;
                true
            }
            None => false,
        }
    }
}

/// The conversation's size as JSON: a fair estimate of the memory it holds.
fn conversation_size(conversation: &[Message]) -> usize {
    serde_json::to_vec(conversation).map(|v| v.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fungible_types::Role;

    fn response(text: &str) -> StoredResponse {
        StoredResponse {
            body: Bytes::from(format!("{{\"text\":\"{text}\"}}")),
            conversation: Arc::new(vec![Message::text(Role::User, text)]),
            owner: None,
        }
    }

    fn memory(max_responses: usize, max_bytes: usize) -> Memory {
        Memory { inner: Arc::default(), max_responses, max_bytes }
    }

    #[tokio::test]
    async fn a_response_is_seen_only_by_the_key_that_made_it() {
        let store = ResponseStore::default();
        let mine = StoredResponse { owner: Some("key_a".into()), ..response("secret") };
        store.insert("r".into(), mine.clone()).await.unwrap();
        let a = DataScope::Key("key_a".into());
        let b = DataScope::Key("key_b".into());
        assert_eq!(store.get("r", &a).await.unwrap(), Some(mine));
        assert_eq!(store.get("r", &b).await.unwrap(), None);
        assert!(!store.delete("r", &b).await.unwrap(), "another key cannot delete it");
        assert!(store.get("r", &DataScope::All).await.unwrap().is_some(), "the admin sees it");
        // One made without a key is not any key's.
        store.insert("open".into(), response("x")).await.unwrap();
        assert_eq!(store.get("open", &a).await.unwrap(), None);
        assert!(store.delete("r", &a).await.unwrap());
    }

    #[test]
    fn the_oldest_response_is_evicted_at_the_count_limit() {
        let store = memory(2, usize::MAX);
        store.insert("a".into(), response("a"));
        store.insert("b".into(), response("b"));
        store.insert("c".into(), response("c"));
        assert!(store.get("a").is_none());
        assert!(store.get("b").is_some() && store.get("c").is_some());
    }

    #[test]
    fn the_byte_budget_evicts_oldest_first_and_refuses_what_never_fits() {
        let one = {
            let r = response("x");
            r.body.len() + conversation_size(&r.conversation)
        };
        let store = memory(100, 2 * one);
        store.insert("a".into(), response("x"));
        store.insert("b".into(), response("y"));
        store.insert("c".into(), response("z"));
        assert!(store.get("a").is_none());
        assert!(store.get("c").is_some());
        store.insert("huge".into(), response(&"h".repeat(4 * one)));
        assert!(store.get("huge").is_none());
        assert!(store.get("b").is_some(), "a response that cannot fit evicts nothing");
    }

    #[test]
    fn delete_frees_the_slot_and_stale_order_is_compacted() {
        let store = memory(2, usize::MAX);
        for i in 0..10 {
            store.insert(format!("r{i}"), response("x"));
            assert!(store.delete(&format!("r{i}")));
        }
        assert!(!store.delete("r0"));
        store.insert("kept".into(), response("k"));
        assert!(store.get("kept").is_some());
        let inner = store.lock();
        assert_eq!(inner.entries.len(), 1);
        assert!(inner.order.len() <= 4, "{:?}", inner.order);
        assert_eq!(inner.bytes, inner.entries.values().map(|(_, s)| s).sum::<usize>());
    }
}
