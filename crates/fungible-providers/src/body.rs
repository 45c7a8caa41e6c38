//! Encoding a vendor request body with the client's `extra_body` merged in.
//!
//! The merge is the same for every vendor: a key fungible does not set is added; where both
//! set one, objects are merged key by key and anything else is replaced, so the client's
//! value wins and no key is ever written twice.

use fungible_types::ProviderError;
use serde::Serialize;
use serde_json::{Map, Value};

pub(crate) fn encode<T: Serialize>(provider: &str, wire: &T, extra: &Map<String, Value>) -> Result<Vec<u8>, ProviderError> {
    let encode_error =
        |e: serde_json::Error| ProviderError::invalid_request(provider, format!("could not encode the request: {e}"));
    if extra.is_empty() {
        return serde_json::to_vec(wire).map_err(encode_error);
    }
    let mut body = serde_json::to_value(wire).map_err(encode_error)?;
    if let Value::Object(target) = &mut body {
        for (key, value) in extra {
            match target.get_mut(key) {
                Some(existing) => merge_json(existing, value),
                None => {
                    target.insert(key.clone(), value.clone());
                }
            }
        }
    }
    serde_json::to_vec(&body).map_err(encode_error)
}

/// `wire` as a JSON value with `extra` merged in, for a body that nests the request.
pub(crate) fn merged_value<T: Serialize>(provider: &str, wire: &T, extra: &Map<String, Value>) -> Result<Value, ProviderError> {
    let mut body = serde_json::to_value(wire)
        .map_err(|e| ProviderError::invalid_request(provider, format!("could not encode the request: {e}")))?;
    if let Value::Object(target) = &mut body {
        for (key, value) in extra {
            match target.get_mut(key) {
                Some(existing) => merge_json(existing, value),
                None => {
                    target.insert(key.clone(), value.clone());
                }
            }
        }
    }
    Ok(body)
}

/// Merges `patch` into `target`: objects key by key, recursively; anything else replaces.
fn merge_json(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                match target.get_mut(key) {
                    Some(existing) => merge_json(existing, value),
                    None => {
                        target.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_keys_win_and_objects_merge() {
        let wire = json!({"model": "m", "max_tokens": 10, "config": {"a": 1, "b": 2}});
        let extra = json!({"max_tokens": 20, "config": {"b": 3}, "top_k": 4});
        let Value::Object(extra) = extra else { unreachable!() };
        let body: Value = serde_json::from_slice(&encode("p", &wire, &extra).unwrap()).unwrap();
        assert_eq!(body, json!({"model": "m", "max_tokens": 20, "config": {"a": 1, "b": 3}, "top_k": 4}));
    }
}
