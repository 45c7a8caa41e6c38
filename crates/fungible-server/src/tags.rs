//! How many tags one request may ask to record, and how large, so that no request becomes
//! thousands of stored tag rows.
//!
//! A client's tags reach a record two ways, each checked where it is read, before any
//! upstream call or record:
//!
//! - `metadata` in an OpenAI front end's body (Chat Completions, Responses), with OpenAI's
//!   own limits: 16 pairs, keys up to 64 characters, values up to 512 (a value that is not a
//!   string counts as its JSON text). OpenAI refuses more, so a client that works against
//!   OpenAI works here;
//! - the `x-fungible-tags: k=v,...` header (every chat API), read by the recording middleware:
//!   64 tags, keys up to 64 bytes, values up to 256 bytes.
//!
//! So a record holds at most 80 tags from the client (a virtual key's own tags are the
//! operator's and added as they are). Over a limit is a 400 in the client's API shape that
//! names the limit.

use serde_json::{Map, Value};

use crate::error::ApiError;

pub const MAX_METADATA_PAIRS: usize = 16;
pub const MAX_METADATA_KEY_CHARS: usize = 64;
pub const MAX_METADATA_VALUE_CHARS: usize = 512;
pub const MAX_HEADER_TAGS: usize = 64;
pub const MAX_HEADER_TAG_KEY_BYTES: usize = 64;
pub const MAX_HEADER_TAG_VALUE_BYTES: usize = 256;

/// Checks a request body's `metadata` against OpenAI's limits.
pub(crate) fn check_metadata(metadata: &Map<String, Value>) -> Result<(), ApiError> {
    let bad = |param: String, message: String| ApiError::invalid_request(Some(param.clone()), format!("{param}: {message}"));
    if metadata.len() > MAX_METADATA_PAIRS {
        return Err(bad("metadata".into(), format!("at most {MAX_METADATA_PAIRS} pairs are allowed, got {}", metadata.len())));
    }
    for (key, value) in metadata {
        let chars = key.chars().count();
        if chars > MAX_METADATA_KEY_CHARS {
            return Err(bad("metadata".into(), format!("keys are at most {MAX_METADATA_KEY_CHARS} characters, got one of {chars}")));
        }
        let chars = match value {
            Value::String(text) => text.chars().count(),
            other => other.to_string().chars().count(),
        };
        if chars > MAX_METADATA_VALUE_CHARS {
            return Err(bad(
                format!("metadata.{key}"),
                format!("values are at most {MAX_METADATA_VALUE_CHARS} characters, got {chars}"),
            ));
        }
    }
    Ok(())
}

/// Parses `x-fungible-tags: k=v,...` within the header's limits (an item without `=` is
/// ignored, as it always was).
pub(crate) fn parse_header(list: &str) -> Result<Map<String, Value>, ApiError> {
    let bad = |message: String| ApiError::invalid_request(None, format!("x-fungible-tags: {message}"));
    let pairs: Vec<(&str, &str)> = list
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.trim(), value.trim()))
        .collect();
    if pairs.len() > MAX_HEADER_TAGS {
        return Err(bad(format!("at most {MAX_HEADER_TAGS} tags are allowed, got {}", pairs.len())));
    }
    let mut tags = Map::new();
    for (key, value) in pairs {
        if key.len() > MAX_HEADER_TAG_KEY_BYTES {
            return Err(bad(format!("keys are at most {MAX_HEADER_TAG_KEY_BYTES} bytes, got one of {}", key.len())));
        }
        if value.len() > MAX_HEADER_TAG_VALUE_BYTES {
            return Err(bad(format!("the value of {key:?} is {} bytes, more than {MAX_HEADER_TAG_VALUE_BYTES}", value.len())));
        }
        tags.insert(key.to_owned(), Value::String(value.to_owned()));
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metadata(value: Value) -> Result<(), String> {
        let Value::Object(map) = value else { panic!("an object") };
        check_metadata(&map).map_err(|e| e.message)
    }

    #[test]
    fn metadata_follows_openai_limits() {
        let pairs = |n: usize| Value::Object((0..n).map(|i| (format!("k{i}"), json!("v"))).collect());
        assert_eq!(metadata(pairs(16)), Ok(()));
        assert_eq!(metadata(pairs(17)), Err("metadata: at most 16 pairs are allowed, got 17".into()));
        assert_eq!(metadata(json!({"k".repeat(64): "v"})), Ok(()));
        assert_eq!(metadata(json!({"k".repeat(65): "v"})), Err("metadata: keys are at most 64 characters, got one of 65".into()));
        // Characters, not bytes, as OpenAI counts.
        assert_eq!(metadata(json!({"k": "é".repeat(512)})), Ok(()));
        assert_eq!(metadata(json!({"k": "v".repeat(513)})), Err("metadata.k: values are at most 512 characters, got 513".into()));
        assert_eq!(metadata(json!({"k": vec![1; 300]})), Err("metadata.k: values are at most 512 characters, got 601".into()));
    }

    #[test]
    fn header_tags_are_bounded() {
        let parsed = parse_header(" team = search ,bare, env=prod").unwrap();
        assert_eq!(Value::Object(parsed), json!({"team": "search", "env": "prod"}));
        let list = |n: usize| (0..n).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
        assert_eq!(parse_header(&list(64)).map(|t| t.len()), Ok(64));
        let err = parse_header(&list(8000)).unwrap_err();
        assert_eq!(err.message, "x-fungible-tags: at most 64 tags are allowed, got 8000");
        let err = parse_header(&format!("{}=v", "k".repeat(65))).unwrap_err();
        assert_eq!(err.message, "x-fungible-tags: keys are at most 64 bytes, got one of 65");
        let err = parse_header(&format!("k={}", "v".repeat(257))).unwrap_err();
        assert_eq!(err.message, "x-fungible-tags: the value of \"k\" is 257 bytes, more than 256");
    }
}
