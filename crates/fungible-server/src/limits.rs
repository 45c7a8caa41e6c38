//! How many messages, content parts and tools one request may carry, the same in every
//! inbound API; more is a 400 that names the field and the limit.
//!
//! The in-flight budget ([`crate::budget`]) already bounds the memory a request takes; these
//! bound the work and the structure one request can ask for, whatever its size. They sit
//! above what the vendors themselves accept, so no request a vendor would serve is refused:
//! - messages (`messages`, `contents`, `input` items): 10,000. Azure OpenAI refuses more than
//!   2,048 messages and Anthropic documents 100,000; long agent sessions (a tool call and its
//!   result are two messages) pass 2,048, and none comes near 10,000 within a context window;
//! - content parts per message (and system blocks, tool calls per turn): 1,000;
//! - tools (function declarations): 128, OpenAI's documented limit for Chat Completions and
//!   Responses.
//!
//! [`precheck`] counts the top-level arrays before the body becomes a `serde_json::Value`
//! tree, so a flood of tiny messages is refused at the cost of its bytes, not of a tree 35
//! times their size; the parsers check every count again as they convert.

use std::collections::HashMap;

use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use crate::error::ApiError;

pub const MAX_MESSAGES: usize = 10_000;
pub const MAX_PARTS: usize = 1_000;
pub const MAX_TOOLS: usize = 128;

/// A 400 naming `field` when it holds more than `max` items.
pub(crate) fn check(field: &str, len: usize, max: usize) -> Result<(), ApiError> {
    if len <= max {
        return Ok(());
    }
    Err(ApiError::invalid_request(
        Some(field.to_owned()),
        format!("{field}: at most {max} items are accepted, got {len}"),
    ))
}

/// Checks the item counts of the top-level arrays `fields` of a JSON object body, as
/// [`check`] does, without building values for them. A body that is not a JSON object and a
/// field that is not an array pass: the parser reports those.
pub(crate) fn precheck(body: &[u8], fields: &[(&str, usize)]) -> Result<(), ApiError> {
    let Ok(top) = serde_json::from_slice::<HashMap<String, &RawValue>>(body) else {
        return Ok(());
    };
    for &(field, max) in fields {
        // A `Vec` of a zero-sized type never allocates: this costs a scan of the array.
        if let Some(raw) = top.get(field)
            && let Ok(items) = serde_json::from_str::<Vec<IgnoredAny>>(raw.get())
        {
            check(field, items.len(), max)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_limit_names_the_field_and_the_limit() {
        assert!(check("messages", 10_000, MAX_MESSAGES).is_ok());
        let e = check("messages", 10_001, MAX_MESSAGES).unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        assert_eq!(e.param.as_deref(), Some("messages"));
        assert_eq!(e.message, "messages: at most 10000 items are accepted, got 10001");
    }

    #[test]
    fn precheck_counts_top_level_arrays_and_leaves_the_rest_to_the_parser() {
        let body = format!(r#"{{"model":"m","messages":[{}],"tools":[1,2,3]}}"#, vec!["{}"; 11].join(","));
        assert!(precheck(body.as_bytes(), &[("messages", 11), ("tools", 3)]).is_ok());
        let e = precheck(body.as_bytes(), &[("messages", 10), ("tools", 3)]).unwrap_err();
        assert_eq!(e.message, "messages: at most 10 items are accepted, got 11");
        let e = precheck(body.as_bytes(), &[("messages", 11), ("tools", 2)]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools"));
        for other in ["{", "[]", r#"{"messages":"hi"}"#, r#"{"messages":[1,}"#] {
            assert!(precheck(other.as_bytes(), &[("messages", 0)]).is_ok(), "{other}");
        }
    }
}
