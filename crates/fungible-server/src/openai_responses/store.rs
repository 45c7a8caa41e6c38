//! The in-memory store behind `previous_response_id`, `GET /v1/responses/{id}` and
//! `DELETE /v1/responses/{id}`.
//!
//! For every stored response it keeps the rendered response object (what `GET` returns) and
//! the whole canonical conversation that produced it, its own output included, so a request
//! naming it as `previous_response_id` continues the chain without the client resending
//! anything. The store is bounded by a number of responses and by an estimate of their size;
//! the oldest are evicted first. It lives in this process only and is lost on restart; a
//! persistent store (shared between gateway replicas) is planned and will sit behind the same
//! three calls.
//!
//! A std `Mutex` guards it: every operation is a short map update, never held across an
//! `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use fungible_types::Message;

/// Responses kept by default before the oldest is evicted.
pub const DEFAULT_MAX_RESPONSES: usize = 10_000;
/// Bytes (estimated as the JSON size of each response and its conversation) kept by default.
pub const DEFAULT_MAX_BYTES: usize = 256 * 1024 * 1024;

/// One stored response.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    /// The response object exactly as the client received it.
    pub body: Bytes,
    /// The conversation up to and including this response's output, without the
    /// `instructions` (which, as in OpenAI's API, do not carry over to the next response).
    pub conversation: Arc<Vec<Message>>,
}

#[derive(Debug, Clone)]
pub struct ResponseStore {
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

impl ResponseStore {
    pub fn new(max_responses: usize, max_bytes: usize) -> ResponseStore {
        ResponseStore { inner: Arc::default(), max_responses: max_responses.max(1), max_bytes }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves the maps consistent (every update
        // is a single insert or remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores `response` under `id`, evicting the oldest responses to stay within bounds.
    /// A response larger than the whole byte budget is not stored.
    pub fn insert(&self, id: String, response: StoredResponse) {
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

    pub fn get(&self, id: &str) -> Option<StoredResponse> {
        self.lock().entries.get(id).map(|(response, _)| response.clone())
    }

    /// Removes `id`; whether it was there.
    pub fn delete(&self, id: &str) -> bool {
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
        }
    }

    #[test]
    fn the_oldest_response_is_evicted_at_the_count_limit() {
        let store = ResponseStore::new(2, usize::MAX);
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
        let store = ResponseStore::new(100, 2 * one);
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
        let store = ResponseStore::new(2, usize::MAX);
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
