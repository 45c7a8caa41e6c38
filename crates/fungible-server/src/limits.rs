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
}
