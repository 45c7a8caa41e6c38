//! A local estimate of a request's input tokens, for vendors with no token-counting endpoint
//! (OpenAI Chat Completions and the servers that speak it).
//!
//! It is an estimate, not the vendor's count: the text of every message, tool call and tool
//! definition is encoded with `o200k_base` (the tokenizer of GPT-4o, GPT-4.1, GPT-5 and the `o`
//! series), plus the per-message framing OpenAI documents (about 3 tokens a message, 3 to prime
//! the reply) and a fixed [`IMAGE_TOKENS`] per image. Other models' tokenizers differ by some
//! percent. Encoding is CPU work, so it runs on the blocking pool, off the request threads.

use std::sync::LazyLock;

use fungible_types::{ChatRequest, ContentPart, ErrorKind, ProviderError, ResponseFormat};
use tiktoken_rs::CoreBPE;

/// Framing tokens per message (`<|start|>role ... <|end|>`).
const PER_MESSAGE: u64 = 3;
/// Tokens that prime the assistant's reply.
const REPLY_PRIMING: u64 = 3;
/// Framing tokens per tool definition, and once for the tool list.
const PER_TOOL: u64 = 8;
const TOOLS_OVERHEAD: u64 = 12;
/// An image whose size is not known here: OpenAI's cost of a 1024 × 1024 image at high
/// detail (85 base + 4 tiles × 170).
pub const IMAGE_TOKENS: u64 = 765;

/// `None` when the tokenizer data could not be loaded (it ships inside the crate, so only a
/// broken build gets there); the estimate then falls back to 4 bytes a token.
static O200K: LazyLock<Option<CoreBPE>> = LazyLock::new(|| tiktoken_rs::o200k_base().ok());

/// The estimated input tokens of `req` as an OpenAI-family server would count them.
pub(crate) async fn input_tokens(provider: &str, req: &ChatRequest) -> Result<u64, ProviderError> {
    let (texts, fixed) = pieces(req);
    tokio::task::spawn_blocking(move || fixed.saturating_add(texts.iter().map(|t| text_tokens(t)).sum::<u64>()))
        .await
        .map_err(|e| ProviderError::new(ErrorKind::UpstreamServer, provider, format!("token counting failed: {e}")))
}

/// The same estimate, on the calling thread (for batch work such as datasets, already off
/// the request path).
pub fn request_tokens(req: &ChatRequest) -> u64 {
    let (texts, fixed) = pieces(req);
    fixed.saturating_add(texts.iter().map(|t| text_tokens(t)).sum::<u64>())
}

/// The texts to encode, and the tokens known without encoding.
fn pieces(req: &ChatRequest) -> (Vec<String>, u64) {
    let mut texts = Vec::new();
    let mut fixed = REPLY_PRIMING;
    for m in &req.messages {
        fixed += PER_MESSAGE;
        texts.push(m.role.as_str().to_owned());
        if let Some(name) = &m.name {
            texts.push(name.clone());
        }
        for part in &m.content {
            match part {
                ContentPart::Text { text } => texts.push(text.clone()),
                ContentPart::Image { .. } => fixed += IMAGE_TOKENS,
            }
        }
        for call in &m.tool_calls {
            texts.push(call.name.clone());
            texts.push(call.arguments.clone());
        }
        if let Some(id) = &m.tool_call_id {
            texts.push(id.clone());
        }
    }
    if !req.tools.is_empty() {
        fixed += TOOLS_OVERHEAD;
    }
    for tool in &req.tools {
        fixed += PER_TOOL;
        texts.push(tool.name.clone());
        if let Some(description) = &tool.description {
            texts.push(description.clone());
        }
        texts.push(tool.parameters.to_string());
    }
    if let Some(ResponseFormat::JsonSchema(schema)) = &req.response_format {
        texts.push(schema.name.clone());
        texts.push(schema.schema.to_string());
    }
    (texts, fixed)
}

fn text_tokens(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    match O200K.as_ref() {
        Some(bpe) => bpe.encode_ordinary(text).len() as u64,
        None => (text.len() as u64).div_ceil(4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fungible_types::{ImageSource, Message, Role, Tool};
    use serde_json::json;

    #[tokio::test]
    async fn counts_text_framing_images_and_tools() {
        let hello = ChatRequest { messages: vec![Message::text(Role::User, "Hello world")], ..Default::default() };
        // "user" (1) + "Hello world" (2) + 3 framing + 3 priming.
        assert_eq!(input_tokens("p", &hello).await.expect("counts"), 9);

        let mut with_image = hello.clone();
        with_image.messages[0]
            .content
            .push(ContentPart::Image { source: ImageSource::Url("https://example.com/a.png".into()), detail: None });
        assert_eq!(input_tokens("p", &with_image).await.expect("counts"), 9 + IMAGE_TOKENS);

        let mut with_tool = hello.clone();
        with_tool.tools.push(Tool::new("get_weather", Some("Current weather.".into()), json!({"type": "object"})));
        let n = input_tokens("p", &with_tool).await.expect("counts");
        assert!(n > 9 + PER_TOOL + TOOLS_OVERHEAD, "{n}");
    }

    #[tokio::test]
    async fn long_whitespace_does_not_fail() {
        let req = ChatRequest { messages: vec![Message::text(Role::User, " ".repeat(200_000))], ..Default::default() };
        assert!(input_tokens("p", &req).await.expect("counts") > 0);
    }
}
