//! Anthropic Messages API (`POST {base}/v1/messages`): the canonical request mapped to Claude's
//! wire format and the answer mapped back, whole or streamed.
//!
//! What the mapping has to bridge: instructions are a top-level `system` field, not messages;
//! roles must alternate, so consecutive turns of one role are merged; tool results are `user`
//! turns made of `tool_result` blocks; `max_tokens` is required; usage reports cached prompt
//! tokens apart from `input_tokens` (they are added back, see [`fungible_types::Usage`]).

mod stream;
#[cfg(test)]
mod tests;
mod types;

use std::borrow::Cow;

use fungible_types::{
    AssistantMessage, ChatRequest, ChatResponse, ContentPart, ErrorKind, FinishReason, ImageSource, Message,
    ProviderError, ReasoningBlock, ResponseFormat, Role, ToolCall, ToolChoice, Usage,
};
use serde_json::{Value, json};

use crate::http::{self, HttpClient};
use crate::capture::Capture;
use crate::{ChatProvider, EventStream, ProviderSettings, body, sse};
use crate::redact::Redactions;
use types::*;

/// `max_tokens` sent when the client gives none (Anthropic requires the field).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// The `anthropic-version` header every request carries.
const API_VERSION: &str = "2023-06-01";

#[derive(Debug, Clone)]
pub struct AnthropicProvider {
    settings: ProviderSettings,
    http: HttpClient,
    url: String,
    count_url: String,
    default_max_tokens: u32,
    /// The credentials kept out of answers, built once.
    redactions: Redactions,
}

impl AnthropicProvider {
    pub(crate) fn redactions(&self) -> &Redactions {
        &self.redactions
    }

    /// `default_max_tokens` is sent when a request sets no limit; 0 (never valid upstream)
    /// means [`DEFAULT_MAX_TOKENS`].
    pub fn new(settings: ProviderSettings, http: HttpClient, default_max_tokens: u32) -> AnthropicProvider {
        let url = format!("{}/v1/messages", settings.base_url.trim_end_matches('/'));
        let count_url = format!("{url}/count_tokens");
        let default_max_tokens = if default_max_tokens == 0 { DEFAULT_MAX_TOKENS } else { default_max_tokens };
        let redactions = Redactions::of(&settings);
        AnthropicProvider { settings, http, url, count_url, default_max_tokens, redactions }
    }

    fn request(&self, url: &str) -> Result<reqwest::RequestBuilder, ProviderError> {
        let rb = self.http.post(url).header("anthropic-version", API_VERSION);
        let Some(key) = &self.settings.api_key else {
            return Ok(rb);
        };
        let mut value = reqwest::header::HeaderValue::from_str(key.expose()).map_err(|_| {
            ProviderError::new(
                ErrorKind::Authentication,
                &self.settings.name,
                "the configured API key is not a valid HTTP header value",
            )
        })?;
        value.set_sensitive(true);
        Ok(rb.header("x-api-key", value))
    }

    async fn send(
        &self,
        req: &ChatRequest,
        model: &str,
        stream: bool,
        capture: Option<&Capture>,
    ) -> Result<http::Sent, ProviderError> {
        let body = build_request(&self.settings.name, req, model, stream, self.default_max_tokens)?;
        let body = body::encode(&self.settings.name, &body, &req.extra_body)?;
        // Anthropic's error body is `{"type":"error","error":{"type":..,"message":..}}`, which
        // the shared `error.message` reader handles; the type is implied by the status.
        http::send_json(&self.settings, self.request(&self.url)?, body, http::error_message_field, capture).await
    }
}

impl ChatProvider for AnthropicProvider {
    async fn chat(&self, req: &ChatRequest, model: &str, capture: Option<&Capture>) -> Result<ChatResponse, ProviderError> {
        let response = self.send(req, model, false, capture).await?;
        let wire: Response = http::read_json(&self.settings, response).await?;
        Ok(convert_response(wire, model))
    }

    async fn chat_stream(&self, req: &ChatRequest, model: &str, capture: Option<&Capture>) -> Result<EventStream, ProviderError> {
        let response = self.send(req, model, true, capture).await?;
        let decoder = stream::EventDecoder::new(&self.settings.name, model);
        Ok(sse::event_stream(&self.settings, response, decoder))
    }

    /// `POST /v1/messages/count_tokens` with the prompt part of the Messages body.
    async fn count_tokens(&self, req: &ChatRequest, model: &str) -> Result<u64, ProviderError> {
        let Request { model, system, messages, tools, tool_choice, output_config, thinking, .. } =
            build_request(&self.settings.name, req, model, false, self.default_max_tokens)?;
        let wire = CountTokensRequest { model, system, messages, tools, tool_choice, output_config, thinking };
        let body = body::encode(&self.settings.name, &wire, &req.extra_body)?;
        let response =
            http::send_json(&self.settings, self.request(&self.count_url)?, body, http::error_message_field, None).await?;
        let count: CountTokensResponse = http::read_json(&self.settings, response).await?;
        Ok(count.input_tokens)
    }
}

fn build_request<'a>(
    provider: &str,
    req: &'a ChatRequest,
    model: &'a str,
    stream: bool,
    default_max_tokens: u32,
) -> Result<Request<'a>, ProviderError> {
    let (system, messages) = convert_messages(provider, &req.messages)?;
    let budget = thinking_budget(provider, req);
    let max_tokens = match (req.params.max_tokens, budget) {
        (Some(max), _) => max,
        // The limit counts thinking too, and must exceed the budget.
        (None, Some(budget)) if default_max_tokens <= budget => budget.saturating_add(default_max_tokens),
        (None, _) => default_max_tokens,
    };
    log_dropped(provider, req);
    Ok(Request {
        model,
        max_tokens,
        system,
        messages,
        tools: req
            .tools
            .iter()
            .map(|t| WireTool {
                name: &t.name,
                description: t.description.as_deref(),
                input_schema: if t.parameters.is_null() {
                    Cow::Owned(json!({"type": "object", "properties": {}}))
                } else {
                    Cow::Borrowed(&t.parameters)
                },
                strict: (t.strict == Some(true)).then_some(true),
                cache_control: WireCacheControl::from_canonical(t.cache_control.as_ref()),
            })
            .collect(),
        tool_choice: tool_choice(provider, req),
        output_config: req.response_format.as_ref().and_then(|f| match f {
            ResponseFormat::Text => None,
            ResponseFormat::JsonObject => {
                Some(json!({"format": {"type": "json_schema", "schema": {"type": "object"}}}))
            }
            ResponseFormat::JsonSchema(s) => Some(json!({"format": {"type": "json_schema", "schema": s.schema}})),
        }),
        thinking: budget.map(|b| json!({"type": "enabled", "budget_tokens": b})),
        temperature: req.params.temperature,
        top_p: req.params.top_p,
        top_k: req.params.top_k,
        stop_sequences: &req.params.stop,
        metadata: req.user.as_deref().map(|user_id| WireMetadata { user_id }),
        stream,
    })
}

/// The smallest `thinking.budget_tokens` Anthropic accepts.
const MIN_THINKING_BUDGET: u32 = 1024;

/// The thinking budget to send, if any. Anthropic requires it to be below `max_tokens`; a
/// budget derived from an effort level (not one the client set) is fitted under the client's
/// limit, as the limit counts reasoning too in OpenAI's API, and thinking is left off when
/// no valid budget fits.
fn thinking_budget(provider: &str, req: &ChatRequest) -> Option<u32> {
    let reasoning = req.reasoning.as_ref()?;
    let budget = reasoning.effective_budget().filter(|&b| b > 0)?;
    let Some(max) = req.params.max_tokens else {
        return Some(budget);
    };
    if reasoning.budget_tokens.is_some() || budget < max {
        return Some(budget);
    }
    let fitted = max.saturating_sub(1);
    if fitted < MIN_THINKING_BUDGET {
        tracing::debug!(provider, max, "leaving thinking off: max_tokens leaves no room for a thinking budget");
        return None;
    }
    Some(fitted)
}

/// Canonical fields the Messages API has no equivalent for are dropped, not sent: Anthropic
/// rejects unknown fields.
fn log_dropped(provider: &str, req: &ChatRequest) {
    let p = &req.params;
    let mut dropped = Vec::new();
    if p.seed.is_some() {
        dropped.push("seed");
    }
    if p.presence_penalty.is_some() {
        dropped.push("presence_penalty");
    }
    if p.frequency_penalty.is_some() {
        dropped.push("frequency_penalty");
    }
    if req.metadata.is_some() {
        dropped.push("metadata");
    }
    if !req.openai.is_empty() {
        dropped.push("openai options");
    }
    if !dropped.is_empty() {
        tracing::debug!(provider, ?dropped, "dropping request fields the Anthropic Messages API does not take");
    }
}

fn tool_choice(provider: &str, req: &ChatRequest) -> Option<Value> {
    if req.tools.is_empty() {
        // Anthropic rejects `tool_choice` without `tools`; without tools no call can happen.
        if req.tool_choice.is_some() || req.parallel_tool_calls.is_some() {
            tracing::debug!(provider, "dropping tool_choice / parallel_tool_calls: the request has no tools");
        }
        return None;
    }
    let mut choice = req.tool_choice.as_ref().map(|c| match c {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
        ToolChoice::None => json!({"type": "none"}),
    });
    // `{"type":"none"}` takes no `disable_parallel_tool_use`, and needs none.
    if req.parallel_tool_calls == Some(false) && req.tool_choice != Some(ToolChoice::None) {
        let choice = choice.get_or_insert_with(|| json!({"type": "auto"}));
        if let Some(object) = choice.as_object_mut() {
            object.insert("disable_parallel_tool_use".into(), json!(true));
        }
    }
    choice
}

/// Splits the canonical messages into the `system` blocks and alternating `messages`. A
/// message's cache breakpoint goes on its last block (a system message's own block, a tool
/// result's `tool_result` block), which is where Anthropic reads it.
fn convert_messages<'a>(
    provider: &str,
    messages: &'a [Message],
) -> Result<(Vec<SystemBlock<'a>>, Vec<WireMessage<'a>>), ProviderError> {
    let mut system = Vec::new();
    let mut out: Vec<WireMessage<'a>> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let cache_control = || WireCacheControl::from_canonical(m.cache_control.as_ref());
        match m.role {
            Role::System | Role::Developer => {
                let text = m.joined_text();
                // Anthropic rejects empty text blocks.
                if !text.is_empty() {
                    system.push(SystemBlock { kind: "text", text, cache_control: cache_control() });
                }
            }
            Role::User => push_blocks(&mut out, "user", marked(user_blocks(&m.content), cache_control())),
            Role::Assistant => {
                push_blocks(&mut out, "assistant", marked(assistant_blocks(provider, i, m)?, cache_control()));
            }
            Role::Tool => {
                let Some(tool_use_id) = m.tool_call_id.as_deref() else {
                    return Err(ProviderError::invalid_request(
                        provider,
                        format!("messages[{i}].tool_call_id is required in a tool message"),
                    ));
                };
                let block = Block::ToolResult { tool_use_id, content: tool_result_content(&m.content), is_error: m.is_error };
                push_tool_result(&mut out, WireBlock { block, cache_control: cache_control() });
            }
        }
    }
    Ok((system, out))
}

/// `blocks` as wire blocks, the last one carrying `cache_control`.
fn marked<'a>(blocks: Vec<Block<'a>>, cache_control: Option<WireCacheControl<'a>>) -> Vec<WireBlock<'a>> {
    let mut out: Vec<WireBlock<'a>> = blocks.into_iter().map(WireBlock::from).collect();
    if let Some(last) = out.last_mut() {
        last.cache_control = cache_control;
    }
    out
}

/// A tool result's text as one string, or text and image blocks when it has images.
fn tool_result_content(parts: &[ContentPart]) -> ToolResultContent<'_> {
    if parts.iter().any(|p| matches!(p, ContentPart::Image { .. })) {
        ToolResultContent::Blocks(user_blocks(parts))
    } else {
        ToolResultContent::Text(fungible_types::joined_text(parts))
    }
}

/// Appends `blocks` as a turn of `role`, merged into the previous turn if it has that role
/// (the Messages API wants roles to alternate). A message with no blocks adds nothing.
fn push_blocks<'a>(out: &mut Vec<WireMessage<'a>>, role: &'static str, blocks: Vec<WireBlock<'a>>) {
    if blocks.is_empty() {
        return;
    }
    match out.last_mut() {
        Some(last) if last.role == role => last.content.extend(blocks),
        _ => out.push(WireMessage { role, content: blocks }),
    }
}

/// Tool results travel in a `user` turn, before any other block of it (Anthropic requires
/// them first), so consecutive results share one turn and a following user message joins it.
fn push_tool_result<'a>(out: &mut Vec<WireMessage<'a>>, block: WireBlock<'a>) {
    match out.last_mut() {
        Some(last) if last.role == "user" => {
            let at = last.content.iter().take_while(|b| matches!(b.block, Block::ToolResult { .. })).count();
            last.content.insert(at, block);
        }
        _ => out.push(WireMessage { role: "user", content: vec![block] }),
    }
}

fn user_blocks(parts: &[ContentPart]) -> Vec<Block<'_>> {
    parts
        .iter()
        .filter_map(|part| match part {
            ContentPart::Text { text } if text.is_empty() => None,
            ContentPart::Text { text } => Some(Block::Text { text }),
            ContentPart::Image { source, .. } => Some(Block::Image { source: image_source(source) }),
        })
        .collect()
}

fn image_source(source: &ImageSource) -> WireImageSource<'_> {
    match source {
        ImageSource::Url(url) => WireImageSource::Url { url },
        ImageSource::Base64 { media_type, data } => WireImageSource::Base64 { media_type, data },
    }
}

/// Thinking blocks first, then text, then tool calls: the order Claude produced them in.
fn assistant_blocks<'a>(provider: &str, i: usize, m: &'a Message) -> Result<Vec<Block<'a>>, ProviderError> {
    let mut blocks = Vec::new();
    for block in &m.reasoning {
        match block {
            ReasoningBlock::Thinking { text, signature: Some(signature) } if !signature.is_empty() => {
                blocks.push(Block::Thinking { thinking: text, signature });
            }
            // Reasoning without a signature came from another vendor; Anthropic would reject it.
            ReasoningBlock::Thinking { .. } => {
                tracing::debug!(provider, message = i, "dropping an unsigned thinking block");
            }
            ReasoningBlock::Redacted { data } => blocks.push(Block::RedactedThinking { data }),
        }
    }
    for part in &m.content {
        match part {
            ContentPart::Text { text } if !text.is_empty() => blocks.push(Block::Text { text }),
            ContentPart::Text { .. } => {}
            ContentPart::Image { .. } => {
                tracing::debug!(provider, message = i, "dropping an image in an assistant message");
            }
        }
    }
    for (j, call) in m.tool_calls.iter().enumerate() {
        blocks.push(Block::ToolUse {
            id: &call.id,
            name: &call.name,
            input: tool_input(provider, i, j, &call.arguments)?,
        });
    }
    Ok(blocks)
}

/// The arguments JSON text as the object `tool_use.input` takes; empty arguments are `{}`.
fn tool_input(provider: &str, i: usize, j: usize, arguments: &str) -> Result<Value, ProviderError> {
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    let field = format!("messages[{i}].tool_calls[{j}].function.arguments");
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(ProviderError::invalid_request(provider, format!("{field} must be a JSON object"))),
        Err(e) => Err(ProviderError::invalid_request(provider, format!("{field} is not valid JSON: {e}"))),
    }
}

/// What `chat` does with a 2xx body, and `chat_stream`'s decoder, for [`crate::fuzzing`].
pub(crate) fn decode_response(provider: &str, bytes: &[u8], model: &str) -> Result<ChatResponse, ProviderError> {
    Ok(convert_response(http::parse_json(provider, bytes)?, model))
}

pub(crate) fn stream_decoder(provider: &str, model: &str) -> impl sse::SseDecoder + use<> {
    stream::EventDecoder::new(provider, model)
}

/// The body `chat` sends for `req`, for [`crate::fuzzing`].
pub(crate) fn encode_request(provider: &str, req: &ChatRequest, model: &str, stream: bool) -> Result<Vec<u8>, ProviderError> {
    body::encode(provider, &build_request(provider, req, model, stream, DEFAULT_MAX_TOKENS)?, &req.extra_body)
}

fn convert_response(wire: Response, model: &str) -> ChatResponse {
    let mut content = String::new();
    let mut tool_calls = Vec::new();
    let mut reasoning = Vec::new();
    for block in wire.content {
        match block {
            ResponseBlock::Text { text } => content.push_str(&text),
            ResponseBlock::ToolUse { id, name, input } => {
                tool_calls.push(ToolCall { id, name, arguments: arguments_text(&input) });
            }
            ResponseBlock::Thinking { thinking, signature } => {
                reasoning.push(ReasoningBlock::Thinking { text: thinking, signature });
            }
            ResponseBlock::RedactedThinking { data } => reasoning.push(ReasoningBlock::Redacted { data }),
            ResponseBlock::Other => {}
        }
    }
    let finish_reason = finish_reason(wire.stop_reason.as_deref(), !tool_calls.is_empty());
    ChatResponse {
        id: wire.id,
        model: if wire.model.is_empty() { model.to_owned() } else { wire.model },
        created: crate::now_unix(),
        message: AssistantMessage {
            content: (!content.is_empty()).then_some(content),
            tool_calls,
            reasoning,
            refusal: None,
        },
        finish_reason,
        usage: convert_usage(wire.usage),
    }
}

/// A `tool_use.input` object as compact JSON text.
fn arguments_text(input: &Value) -> String {
    match input {
        Value::Null => "{}".to_owned(),
        other => other.to_string(),
    }
}

fn finish_reason(reason: Option<&str>, has_tool_calls: bool) -> FinishReason {
    match reason {
        Some("max_tokens" | "model_context_window_exceeded") => FinishReason::Length,
        Some("tool_use") => FinishReason::ToolCalls,
        Some("refusal") => FinishReason::ContentFilter,
        Some("end_turn" | "stop_sequence" | "pause_turn") => FinishReason::Stop,
        _ if has_tool_calls => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

/// Anthropic's `input_tokens` excludes cache reads and writes; the canonical count includes
/// them.
fn convert_usage(u: WireUsage) -> Usage {
    let cache_read = u.cache_read_input_tokens.unwrap_or(0);
    let cache_write = u.cache_creation_input_tokens.unwrap_or(0);
    Usage {
        input_tokens: u.input_tokens.unwrap_or(0).saturating_add(cache_read).saturating_add(cache_write),
        output_tokens: u.output_tokens.unwrap_or(0),
        cache_read_tokens: cache_read,
        cache_write_tokens: cache_write,
        reasoning_tokens: 0,
    }
}
