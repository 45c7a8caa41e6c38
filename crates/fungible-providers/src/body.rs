//! Encoding a vendor request body with the client's `extra_body` merged in.
//!
//! The merge is the same for every vendor: a key fungible does not set is added; where both
//! set one, objects are merged key by key and anything else is replaced, so the client's
//! value wins and no key is ever written twice. The fields fungible owns ([`check_extra_body`])
//! are never the client's to set this way.

use fungible_types::ProviderError;
use serde::Serialize;
use serde_json::{Map, Value};

/// Fields fungible decides, in every vendor's spelling: what is asked for (model, input), how
/// it is answered (stream, n) and how much it may cost (every max-tokens spelling). Admission,
/// pricing, routing and recording read the canonical request; a pass-through field that set
/// one of these upstream would make the call differ from what was admitted and recorded.
const OWNED: &[&str] = &[
    "model",
    "messages",
    "input",
    "contents",
    "system",
    "systemInstruction",
    "system_instruction",
    "instructions",
    "stream",
    "stream_options",
    "n",
    "best_of",
    "candidateCount",
    "candidate_count",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "maxOutputTokens",
    "max_tokens_to_sample",
    "previous_response_id",
];

/// Objects whose members are merged from `extra_body`, and the members of each fungible owns.
const OWNED_NESTED: &[(&str, &[&str])] = &[
    ("generationConfig", &["maxOutputTokens", "max_output_tokens", "candidateCount", "candidate_count"]),
    ("generation_config", &["maxOutputTokens", "max_output_tokens", "candidateCount", "candidate_count"]),
];

/// Refuses a client's pass-through fields that would set a field fungible owns ([`OWNED`]),
/// naming it: `Err` is the message for a 400.
pub fn check_extra_body(extra: &Map<String, Value>) -> Result<(), String> {
    for key in extra.keys() {
        if OWNED.contains(&key.as_str()) {
            return Err(format!(
                "{key}: fungible sets this field itself; it cannot be passed through (send it as the request's own field)"
            ));
        }
    }
    for (object, members) in OWNED_NESTED {
        if let Some(Value::Object(inner)) = extra.get(*object) {
            for member in *members {
                if inner.contains_key(*member) {
                    return Err(format!(
                        "{object}.{member}: fungible sets this field itself; it cannot be passed through"
                    ));
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn encode<T: Serialize>(provider: &str, wire: &T, extra: &Map<String, Value>) -> Result<Vec<u8>, ProviderError> {
    check_extra_body(extra).map_err(|e| ProviderError::invalid_request(provider, e))?;
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
    check_extra_body(extra).map_err(|e| ProviderError::invalid_request(provider, e))?;
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
        let wire = json!({"model": "m", "temperature": 0.5, "config": {"a": 1, "b": 2}});
        let extra = json!({"temperature": 0.7, "config": {"b": 3}, "top_k": 4});
        let Value::Object(extra) = extra else { unreachable!() };
        let body: Value = serde_json::from_slice(&encode("p", &wire, &extra).unwrap()).unwrap();
        assert_eq!(body, json!({"model": "m", "temperature": 0.7, "config": {"a": 1, "b": 3}, "top_k": 4}));
    }

    #[test]
    fn fields_fungible_owns_are_refused_by_name() {
        let wire = json!({"model": "gpt-4o-mini", "max_tokens": 1});
        for (extra, field) in [
            (json!({"model": "gpt-5"}), "model"),
            (json!({"max_completion_tokens": 100000}), "max_completion_tokens"),
            (json!({"stream": true}), "stream"),
            (json!({"n": 8}), "n"),
            (json!({"generationConfig": {"maxOutputTokens": 100000}}), "generationConfig.maxOutputTokens"),
        ] {
            let Value::Object(extra) = extra else { unreachable!() };
            let err = encode("openai", &wire, &extra).unwrap_err();
            assert_eq!(err.kind, fungible_types::ErrorKind::InvalidRequest);
            assert!(err.message.starts_with(&format!("{field}: fungible sets this field itself")), "{}", err.message);
        }
        // A vendor knob inside the same object is still the client's.
        let extra = json!({"generationConfig": {"responseModalities": ["TEXT"]}});
        let Value::Object(extra) = extra else { unreachable!() };
        assert!(check_extra_body(&extra).is_ok());
    }
}
