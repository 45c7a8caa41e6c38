//! Cache keys: what of a request decides its answer.
//!
//! A key is the SHA-256 of a canonical JSON form of the [`ChatRequest`] with every field that
//! does not change the answer removed (`stream`, `stream_include_usage`, `user`, `metadata`,
//! OpenAI's `store`, `service_tier`, `prompt_cache_key` and `safety_identifier`, and prompt
//! caching hints), object keys sorted, plus the scope: the virtual key id (when the request
//! authenticated with one) and the model as the client named it (it is part of the request).
//! Since the key is computed on the canonical request, a hit from any inbound API may serve
//! any other.

use fungible_types::ChatRequest;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The version of the key derivation; changing what goes into a key bumps it, so entries
/// written by an older build are never read as matches.
const KEY_VERSION: &str = "fungible-cache-v1";

/// A cache key: a lowercase hex SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// The exact-match key of `req` for the virtual key `key_id` (`None`: no auth).
    pub fn exact(req: &ChatRequest, key_id: Option<&str>) -> CacheKey {
        CacheKey::of("exact", &canonical(req), key_id)
    }

    /// The key of the semantic scope of `req`: everything but the text of the last user
    /// message (so two requests share a scope only when their whole conversation, tools,
    /// parameters and model match except for that text). `None` when the last message is
    /// not a user message of text only.
    pub fn semantic_scope(req: &ChatRequest, key_id: Option<&str>) -> Option<CacheKey> {
        fungible_types::last_user_text(&req.messages)?;
        let mut req = req.clone();
        if let Some(last) = req.messages.last_mut() {
            last.content.clear();
        }
        Some(CacheKey::of("semantic", &canonical(&req), key_id))
    }

    fn of(kind: &str, canonical: &Value, key_id: Option<&str>) -> CacheKey {
        let scope = serde_json::json!({ "v": KEY_VERSION, "kind": kind, "key": key_id, "request": canonical });
        let digest = Sha256::digest(scope.to_string().as_bytes());
        let mut hex = String::with_capacity(64);
        for byte in digest {
            hex.push_str(&format!("{byte:02x}"));
        }
        CacheKey(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `req` asks for a reproducible answer: temperature 0, or a seed.
pub fn is_deterministic(req: &ChatRequest) -> bool {
    req.params.temperature == Some(0.0) || req.params.seed.is_some()
}

/// The request as JSON with the fields that do not change the answer removed and object keys
/// sorted.
fn canonical(req: &ChatRequest) -> Value {
    let mut req = req.clone();
    req.stream = false;
    req.stream_include_usage = false;
    req.user = None;
    req.metadata = None;
    req.openai.store = None;
    req.openai.service_tier = None;
    req.openai.prompt_cache_key = None;
    req.openai.safety_identifier = None;
    for message in &mut req.messages {
        message.cache_control = None;
    }
    for tool in &mut req.tools {
        tool.cache_control = None;
    }
    sorted(serde_json::to_value(&req).unwrap_or(Value::Null))
}

fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fungible_types::{Message, Role};

    fn request(text: &str) -> ChatRequest {
        ChatRequest {
            model: "mock/m".into(),
            messages: vec![Message::text(Role::User, text)],
            params: fungible_types::SamplingParams {
                temperature: Some(0.0),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn fields_that_do_not_change_the_answer_are_ignored() {
        let a = request("hi");
        let mut b = a.clone();
        b.stream = true;
        b.stream_include_usage = true;
        b.user = Some("u1".into());
        b.metadata = Some(serde_json::Map::from_iter([(
            "k".to_owned(),
            Value::from("v"),
        )]));
        b.openai.prompt_cache_key = Some("p".into());
        assert_eq!(CacheKey::exact(&a, None), CacheKey::exact(&b, None));
        assert_eq!(CacheKey::exact(&a, None).as_str().len(), 64);
    }

    #[test]
    fn answer_fields_and_scope_change_the_key() {
        let a = request("hi");
        let mut other_model = a.clone();
        other_model.model = "mock/n".into();
        let mut other_temp = a.clone();
        other_temp.params.max_tokens = Some(5);
        let keys = [
            CacheKey::exact(&a, None),
            CacheKey::exact(&request("hello"), None),
            CacheKey::exact(&other_model, None),
            CacheKey::exact(&other_temp, None),
            CacheKey::exact(&a, Some("key-1")),
            CacheKey::exact(&a, Some("key-2")),
        ];
        for (i, x) in keys.iter().enumerate() {
            for y in &keys[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }

    #[test]
    fn object_key_order_does_not_matter() {
        let mut a = request("hi");
        a.extra_body.insert("b".into(), Value::from(1));
        a.extra_body
            .insert("a".into(), serde_json::json!({"y": 1, "x": 2}));
        let mut b = request("hi");
        b.extra_body
            .insert("a".into(), serde_json::json!({"x": 2, "y": 1}));
        b.extra_body.insert("b".into(), Value::from(1));
        assert_eq!(CacheKey::exact(&a, None), CacheKey::exact(&b, None));
    }

    #[test]
    fn determinism_needs_temperature_zero_or_a_seed() {
        let mut r = request("hi");
        assert!(is_deterministic(&r));
        r.params.temperature = Some(0.7);
        assert!(!is_deterministic(&r));
        r.params.seed = Some(7);
        assert!(is_deterministic(&r));
        r.params = Default::default();
        assert!(!is_deterministic(&r));
    }

    #[test]
    fn semantic_scope_ignores_only_the_last_user_text() {
        let a = request("what is the capital of France?");
        let b = request("which city is France's capital?");
        assert_eq!(
            CacheKey::semantic_scope(&a, None),
            CacheKey::semantic_scope(&b, None)
        );
        assert_ne!(
            CacheKey::semantic_scope(&a, None),
            Some(CacheKey::exact(&a, None))
        );
        assert_ne!(
            CacheKey::semantic_scope(&a, None),
            CacheKey::semantic_scope(&a, Some("k"))
        );
        let mut with_system = b.clone();
        with_system
            .messages
            .insert(0, Message::text(Role::System, "be brief"));
        assert_ne!(
            CacheKey::semantic_scope(&a, None),
            CacheKey::semantic_scope(&with_system, None)
        );
        let mut assistant_last = a.clone();
        assistant_last
            .messages
            .push(Message::text(Role::Assistant, "Paris"));
        assert_eq!(CacheKey::semantic_scope(&assistant_last, None), None);
        assert_eq!(
            fungible_types::last_user_text(&a.messages).as_deref(),
            Some("what is the capital of France?")
        );
    }
}
