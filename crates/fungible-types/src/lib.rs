//! The canonical types every front end converts to and every provider converts from.
//!
//! This crate does no I/O and knows no vendor's wire format: it is the contract between
//! inbound API front ends (OpenAI Chat, Anthropic Messages, ...) and outbound providers.
//! Keeping it vendor-neutral is what makes every inbound × outbound pair work by
//! construction.
//!
//! Conventions that every converter must keep:
//! - [`Usage::input_tokens`] counts *all* prompt tokens, cached ones included (OpenAI's
//!   meaning of `prompt_tokens`); `cache_read_tokens` and `cache_write_tokens` are the parts of
//!   it that were read from / written to a prompt cache. A vendor that reports them separately
//!   (Anthropic) adds them up on the way in.
//! - [`Usage::output_tokens`] includes reasoning tokens; `reasoning_tokens` is the part of it
//!   spent thinking.
//! - Tool-call arguments are kept as the raw JSON text the model produced, never re-encoded.

pub mod date;
mod error;
mod stream;

pub use error::{ErrorKind, ProviderError};
pub use stream::StreamEvent;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One chat request, whatever API it arrived in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model as the client named it (`openai/gpt-5`, an alias, ...). Resolution to a
    /// provider happens in the gateway; providers receive the provider's own model name.
    pub model: String,
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<ResponseFormat>,
    pub params: SamplingParams,
    pub reasoning: Option<ReasoningConfig>,
    pub stream: bool,
    /// The client asked for a final usage chunk on a stream (`stream_options.include_usage`).
    pub stream_include_usage: bool,
    pub user: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    /// OpenAI-specific knobs that other vendors have no equivalent for; providers that do not
    /// understand them ignore them.
    pub openai: OpenAiOptions,
    /// Fields the front end did not recognise. They are merged into the provider's request
    /// body as they are (the `extra_body` escape hatch), so a client can use a vendor feature
    /// fungible has no canonical name for.
    pub extra_body: Map<String, Value>,
    /// Whose fields `extra_body` holds: `None` for any provider (an OpenAI Chat client's
    /// extensions, such as vLLM's `top_k`), or one vendor family's own fields (an Anthropic
    /// client's `thinking`), which only a provider of that family receives: the gateway drops
    /// them for a target of another family, at the call, so a route over several vendors
    /// never sends one vendor's fields to another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_body_vendor: Option<VendorFamily>,
}

/// A family of wire formats whose own fields a request may carry ([`ChatRequest::extra_body_vendor`]).
/// The names are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VendorFamily {
    /// OpenAI and every OpenAI-compatible server.
    OpenAi,
    Anthropic,
    Gemini,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    /// Upper bound on generated tokens (reasoning included), whichever spelling the client used.
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
}

/// Options only OpenAI-family servers understand. Kept typed (not in `extra_body`) so that
/// providers of other families can drop them instead of sending a field the vendor rejects.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenAiOptions {
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    pub logit_bias: Option<Map<String, Value>>,
    pub service_tier: Option<String>,
    pub store: Option<bool>,
    pub verbosity: Option<String>,
    pub prompt_cache_key: Option<String>,
    pub safety_identifier: Option<String>,
}

impl OpenAiOptions {
    pub fn is_empty(&self) -> bool {
        *self == OpenAiOptions::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasoningEffort {
    None,
    Minimal,
    Low,
    Medium,
    High,
}

impl ReasoningEffort {
    pub fn as_str(self) -> &'static str {
        match self {
            ReasoningEffort::None => "none",
            ReasoningEffort::Minimal => "minimal",
            ReasoningEffort::Low => "low",
            ReasoningEffort::Medium => "medium",
            ReasoningEffort::High => "high",
        }
    }

    /// A thinking-token budget for vendors that take a number instead of a level.
    pub fn budget_tokens(self) -> u32 {
        match self {
            ReasoningEffort::None => 0,
            ReasoningEffort::Minimal => 1024,
            ReasoningEffort::Low => 2048,
            ReasoningEffort::Medium => 8192,
            ReasoningEffort::High => 24576,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReasoningConfig {
    pub effort: Option<ReasoningEffort>,
    /// An explicit budget (Anthropic `thinking.budget_tokens`, Gemini `thinkingBudget`);
    /// wins over `effort` where a vendor takes a number.
    pub budget_tokens: Option<u32>,
}

impl ReasoningConfig {
    /// The budget to send to a vendor that takes a number; `None` when thinking is off.
    pub fn effective_budget(&self) -> Option<u32> {
        match (self.budget_tokens, self.effort) {
            (Some(b), _) => Some(b),
            (None, Some(e)) => Some(e.budget_tokens()),
            (None, None) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    /// OpenAI's newer name for system instructions; vendors without it treat it as system.
    Developer,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    pub fn is_instruction(self) -> bool {
        matches!(self, Role::System | Role::Developer)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: Vec<ContentPart>,
    /// Optional participant name (OpenAI `name`).
    pub name: Option<String>,
    /// Tool calls the assistant made in this turn.
    pub tool_calls: Vec<ToolCall>,
    /// For `Role::Tool`: which call this message answers.
    pub tool_call_id: Option<String>,
    /// Reasoning the assistant produced in this turn, kept so it can be sent back to vendors
    /// that require it (Anthropic thinking blocks with signatures).
    pub reasoning: Vec<ReasoningBlock>,
    /// For `Role::Tool`: the tool failed and `content` describes the failure (Anthropic
    /// `tool_result.is_error`). Vendors without the notion send the content as it is.
    pub is_error: bool,
    /// A prompt-cache breakpoint after this message; see [`CacheControl`].
    pub cache_control: Option<CacheControl>,
}

impl Message {
    pub fn new(role: Role, content: Vec<ContentPart>) -> Message {
        Message {
            role,
            content,
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            reasoning: Vec::new(),
            is_error: false,
            cache_control: None,
        }
    }

    pub fn text(role: Role, text: impl Into<String>) -> Message {
        Message::new(role, vec![ContentPart::Text { text: text.into() }])
    }

    /// All text parts joined, for vendors that only take a string.
    pub fn joined_text(&self) -> String {
        joined_text(&self.content)
    }
}

/// The text of the last message when it is a user message made of text only, and not blank:
/// what the semantic cache and retrieved examples embed.
pub fn last_user_text(messages: &[Message]) -> Option<String> {
    let last = messages.last()?;
    if last.role != Role::User || last.content.is_empty() {
        return None;
    }
    if !last.content.iter().all(|p| matches!(p, ContentPart::Text { .. })) {
        return None;
    }
    let text = last.joined_text();
    (!text.trim().is_empty()).then_some(text)
}

/// The text parts of `parts` joined with newlines; non-text parts are skipped.
pub fn joined_text(parts: &[ContentPart]) -> String {
    let mut out = String::new();
    for part in parts {
        if let ContentPart::Text { text } = part {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(text);
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ContentPart {
    Text { text: String },
    Image { source: ImageSource, detail: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ImageSource {
    /// An `http(s)` URL the vendor fetches itself.
    Url(String),
    /// Inline bytes, base64 encoded (standard alphabet), with their media type.
    Base64 { media_type: String, data: String },
}

impl ImageSource {
    /// Parse what OpenAI's `image_url.url` carries: either a `data:` URL or a plain URL.
    pub fn from_openai_url(url: &str) -> Result<ImageSource, String> {
        let Some(rest) = url.strip_prefix("data:") else {
            return Ok(ImageSource::Url(url.to_owned()));
        };
        let Some((meta, data)) = rest.split_once(',') else {
            return Err("data URL has no ',' separating metadata from data".into());
        };
        let Some(media_type) = meta.strip_suffix(";base64") else {
            return Err("only base64 data URLs are supported (expected ';base64')".into());
        };
        if media_type.is_empty() {
            return Err("data URL has no media type".into());
        }
        Ok(ImageSource::Base64 { media_type: media_type.to_owned(), data: data.to_owned() })
    }

    pub fn to_openai_url(&self) -> String {
        match self {
            ImageSource::Url(url) => url.clone(),
            ImageSource::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReasoningBlock {
    Thinking { text: String, signature: Option<String> },
    /// Reasoning the vendor returned encrypted; only sent back as it came.
    Redacted { data: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as the raw JSON text the model produced.
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    pub parameters: Value,
    pub strict: Option<bool>,
    /// A prompt-cache breakpoint after this tool's definition; see [`CacheControl`].
    pub cache_control: Option<CacheControl>,
}

impl Tool {
    /// A tool with no strictness setting and no cache breakpoint.
    pub fn new(name: impl Into<String>, description: Option<String>, parameters: Value) -> Tool {
        Tool { name: name.into(), description, parameters, strict: None, cache_control: None }
    }
}

/// A prompt-cache breakpoint: the client asks the vendor to cache the prompt up to and
/// including the marked message or tool definition, so later requests that share that prefix
/// are billed (and served) as cache reads. Vendors with explicit breakpoints (Anthropic
/// `cache_control: {"type": "ephemeral"}`) receive it; vendors that cache prefixes on their
/// own (OpenAI, Gemini, most OpenAI-compatible servers) ignore it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheControl {
    /// How long the cache entry should live, in the vendor's notation (`"5m"`, `"1h"`);
    /// `None` leaves the vendor's default.
    pub ttl: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Tool(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema(JsonSchemaFormat),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonSchemaFormat {
    pub name: String,
    pub description: Option<String>,
    pub schema: Value,
    pub strict: Option<bool>,
}

/// A whole (non-streamed) response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The vendor's id for this response (or one made up when the vendor has none).
    pub id: String,
    /// The model as the vendor reported it.
    pub model: String,
    /// Unix seconds.
    pub created: u64,
    pub message: AssistantMessage,
    pub finish_reason: FinishReason,
    pub usage: Usage,
}

/// Embedding vectors for a request, one per input, in input order (any provider's).
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    /// Tokens of all inputs as the provider counted them.
    pub prompt_tokens: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    /// The text content; `None` when the model produced only tool calls.
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub reasoning: Vec<ReasoningBlock>,
    /// A refusal message (OpenAI structured outputs), kept apart from content.
    pub refusal: Option<String>,
}

impl AssistantMessage {
    /// The visible reasoning text, joined; `None` when there is none.
    pub fn reasoning_text(&self) -> Option<String> {
        let mut out = String::new();
        for block in &self.reasoning {
            if let ReasoningBlock::Thinking { text, .. } = block {
                out.push_str(text);
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    /// The vendor blocked the output (safety filters, refusals).
    ContentFilter,
}

impl FinishReason {
    pub fn as_openai_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

/// Token counts, normalised (see the crate docs for the conventions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
}

impl Usage {
    /// Input plus output; saturating, since both are the vendor's numbers (a `u64::MAX` from
    /// a broken upstream overflowed here: `fuzz/regressions/openai_response/`).
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_tokens_of_vendor_counts_near_u64_max_does_not_overflow() {
        let usage = Usage { input_tokens: u64::MAX, output_tokens: 1, ..Usage::default() };
        assert_eq!(usage.total_tokens(), u64::MAX);
    }

    #[test]
    fn data_url_parses_into_base64_source() {
        let src = ImageSource::from_openai_url("data:image/png;base64,iVBORw0KGgo=").unwrap();
        assert_eq!(
            src,
            ImageSource::Base64 { media_type: "image/png".into(), data: "iVBORw0KGgo=".into() }
        );
        assert_eq!(src.to_openai_url(), "data:image/png;base64,iVBORw0KGgo=");
    }

    #[test]
    fn plain_url_is_kept() {
        let src = ImageSource::from_openai_url("https://example.com/a.png").unwrap();
        assert_eq!(src, ImageSource::Url("https://example.com/a.png".into()));
    }

    #[test]
    fn non_base64_data_url_is_rejected() {
        let err = ImageSource::from_openai_url("data:image/png,abc").unwrap_err();
        assert!(err.contains("base64"), "{err}");
    }

    #[test]
    fn reasoning_budget_prefers_explicit_number() {
        let cfg = ReasoningConfig { effort: Some(ReasoningEffort::High), budget_tokens: Some(5) };
        assert_eq!(cfg.effective_budget(), Some(5));
        let cfg = ReasoningConfig { effort: Some(ReasoningEffort::Low), budget_tokens: None };
        assert_eq!(cfg.effective_budget(), Some(2048));
    }
}
