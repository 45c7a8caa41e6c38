//! Google's Gemini API (`generativelanguage.googleapis.com`, v1beta): `generateContent` and
//! `streamGenerateContent?alt=sse`, authenticated with `x-goog-api-key`.
//!
//! Gemini has no tool-call ids: a function response names the function it answers, so the
//! name is found by looking the canonical `tool_call_id` up among the earlier assistant turns,
//! and ids on the way back are made up (`call_0`, `call_1`, ...) unless the vendor sends some.
//! Thought signatures (Gemini's opaque reasoning state) travel as
//! [`ReasoningBlock::Thinking`] blocks with empty text and the signature, so they can be sent
//! back on the next turn.

mod embeddings;
mod stream;
mod types;

use std::sync::atomic::{AtomicU64, Ordering};

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

#[derive(Debug, Clone)]
pub struct GeminiProvider {
    settings: ProviderSettings,
    http: HttpClient,
    /// The origin, without a trailing `/` (nor `/v1beta`, which is appended per request).
    base: String,
    /// The credentials kept out of answers, built once.
    redactions: Redactions,
}

impl GeminiProvider {
    pub(crate) fn redactions(&self) -> &Redactions {
        &self.redactions
    }

    pub fn new(settings: ProviderSettings, http: HttpClient) -> GeminiProvider {
        let base = settings.base_url.trim_end_matches('/');
        // Forgive a base URL given with the version, as some SDKs document it.
        let base = base.strip_suffix("/v1beta").unwrap_or(base).to_owned();
        let redactions = Redactions::of(&settings);
        GeminiProvider { settings, http, base, redactions }
    }

    fn count_url(&self, model: &str) -> Result<String, ProviderError> {
        let model = url_model(&self.settings.name, model)?;
        Ok(format!("{}/v1beta/models/{model}:countTokens", self.base))
    }

    fn url(&self, model: &str, stream: bool) -> Result<String, ProviderError> {
        let model = url_model(&self.settings.name, model)?;
        Ok(if stream {
            format!("{}/v1beta/models/{model}:streamGenerateContent?alt=sse", self.base)
        } else {
            format!("{}/v1beta/models/{model}:generateContent", self.base)
        })
    }

    /// The POST to `url` with the key header, marked sensitive so that no `Debug` of the
    /// request (nor an HTTP/2 header table) shows it.
    fn request(&self, url: &str) -> Result<reqwest::RequestBuilder, ProviderError> {
        let request = self.http.post(url);
        let Some(key) = &self.settings.api_key else {
            return Ok(request);
        };
        let mut value = reqwest::header::HeaderValue::from_str(key.expose()).map_err(|_| {
            ProviderError::new(
                ErrorKind::Authentication,
                &self.settings.name,
                "the configured API key is not a valid HTTP header value",
            )
        })?;
        value.set_sensitive(true);
        Ok(request.header("x-goog-api-key", value))
    }

    async fn send(
        &self,
        req: &ChatRequest,
        model: &str,
        stream: bool,
        capture: Option<&Capture>,
    ) -> Result<http::Sent, ProviderError> {
        let url = self.url(model, stream)?;
        let body = encode_request(&self.settings.name, req)?;
        http::send_json(&self.settings, self.request(&url)?, body, error_message, capture).await
    }
}

impl ChatProvider for GeminiProvider {
    async fn chat(&self, req: &ChatRequest, model: &str, capture: Option<&Capture>) -> Result<ChatResponse, ProviderError> {
        let response = self.send(req, model, false, capture).await?;
        let wire: GenerateContentResponse = http::read_json(&self.settings, response).await?;
        convert_response(&self.settings.name, wire, model)
    }

    async fn chat_stream(&self, req: &ChatRequest, model: &str, capture: Option<&Capture>) -> Result<EventStream, ProviderError> {
        let response = self.send(req, model, true, capture).await?;
        let decoder = stream::ChunkDecoder::new(&self.settings.name, model);
        Ok(sse::event_stream(&self.settings, response, decoder))
    }

    /// `POST {model}:countTokens` with the whole request as `generateContentRequest`, so the
    /// system instruction and tool declarations count too (plain `contents` would leave them
    /// out).
    async fn count_tokens(&self, req: &ChatRequest, model: &str) -> Result<u64, ProviderError> {
        let url = self.count_url(model)?;
        let name = &self.settings.name;
        let mut inner = body::merged_value(name, &build_request(name, req)?, &req.extra_body)?;
        if let Value::Object(fields) = &mut inner {
            let model = url_model(name, model)?;
            fields.insert("model".into(), Value::String(format!("models/{model}")));
        }
        let body = serde_json::to_vec(&json!({ "generateContentRequest": inner }))
            .map_err(|e| ProviderError::invalid_request(name, format!("could not encode the request: {e}")))?;
        let response = http::send_json(&self.settings, self.request(&url)?, body, error_message, None).await?;
        let count: CountTokensResponse = http::read_json(&self.settings, response).await?;
        Ok(count.total_tokens)
    }
}

/// The model as it goes into the URL path. A leading `models/` (the vendor's resource name)
/// is accepted; anything that would change the path or query is not.
fn url_model<'a>(provider: &str, model: &'a str) -> Result<&'a str, ProviderError> {
    let name = model.strip_prefix("models/").unwrap_or(model);
    let bad = |c: char| matches!(c, '/' | '?' | '#' | '%' | '\\') || c.is_whitespace() || c.is_control();
    if name.is_empty() || name.contains(bad) {
        return Err(ProviderError::invalid_request(
            provider,
            format!(
                "invalid Gemini model name {model:?}: it must be non-empty and contain no '/', '?', '#', '%', '\\' or whitespace"
            ),
        ));
    }
    Ok(name)
}

/// The message of a Gemini error body: `{"error": {...}}`, or the same inside a one-element
/// array (what the JSON-array streaming endpoint sends).
pub(crate) fn error_message(bytes: &[u8]) -> Option<String> {
    if let Some(message) = http::error_message_field(bytes) {
        return Some(message);
    }
    let value: Value = serde_json::from_slice(bytes).ok()?;
    let message = value.as_array()?.first()?.get("error")?.get("message")?.as_str()?;
    Some(message.to_owned())
}

/// A mid-stream (or otherwise in-body) error, classified by its HTTP-style code, or by its
/// status name when the code is missing.
fn wire_error(provider: &str, error: WireError) -> ProviderError {
    let status = error.code.and_then(|c| u16::try_from(c).ok()).or_else(|| {
        Some(match error.status.as_deref()? {
            "INVALID_ARGUMENT" | "FAILED_PRECONDITION" => 400,
            "UNAUTHENTICATED" => 401,
            "PERMISSION_DENIED" => 403,
            "NOT_FOUND" => 404,
            "RESOURCE_EXHAUSTED" => 429,
            "UNAVAILABLE" => 503,
            "DEADLINE_EXCEEDED" => 504,
            _ => 500,
        })
    });
    let kind = status.map_or(ErrorKind::UpstreamServer, ErrorKind::from_upstream_status);
    let message = error
        .message
        .filter(|m| !m.is_empty())
        .or(error.status)
        .unwrap_or_else(|| "the upstream reported an error without a message".to_owned());
    ProviderError::new(kind, provider, message)
}

// ---- request ----

/// The request body as bytes, with `extra_body` merged in (see [`crate::body`]).
pub fn encode_request(provider: &str, req: &ChatRequest) -> Result<Vec<u8>, ProviderError> {
    body::encode(provider, &build_request(provider, req)?, &req.extra_body)
}

fn build_request<'a>(
    provider: &str,
    req: &'a ChatRequest,
) -> Result<GenerateContentRequest<'a>, ProviderError> {
    if !req.openai.is_empty() || req.parallel_tool_calls.is_some() {
        tracing::debug!(provider, "dropping OpenAI-only options Gemini has no equivalent for");
    }
    if req.user.is_some() || req.metadata.is_some() {
        tracing::debug!(provider, "dropping user and metadata: Gemini takes neither");
    }

    let mut system = Vec::new();
    let mut contents: Vec<Content<'a>> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        match m.role {
            Role::System | Role::Developer => {
                for part in &m.content {
                    match part {
                        ContentPart::Text { text } if text.is_empty() => {}
                        ContentPart::Text { text } => system.push(Part { text: Some(text), ..Part::default() }),
                        ContentPart::Image { .. } => {
                            tracing::debug!(provider, "dropping an image from a system message");
                        }
                    }
                }
            }
            Role::User => {
                let parts = m.content.iter().filter(|p| !is_empty_text(p)).map(wire_part).collect();
                push_content(&mut contents, "user", parts);
            }
            Role::Assistant => push_content(&mut contents, "model", assistant_parts(provider, i, m)?),
            Role::Tool => {
                let part = function_response(provider, i, m, &req.messages[..i])?;
                push_content(&mut contents, "user", vec![part]);
            }
        }
    }

    let tools = if req.tools.is_empty() {
        Vec::new()
    } else {
        vec![WireTool {
            function_declarations: req
                .tools
                .iter()
                .map(|t| FunctionDeclaration {
                    name: &t.name,
                    description: t.description.as_deref(),
                    parameters_json_schema: (!t.parameters.is_null()).then_some(&t.parameters),
                })
                .collect(),
        }]
    };
    let tool_config = match &req.tool_choice {
        Some(choice) if !req.tools.is_empty() => {
            let (mode, allowed_function_names) = match choice {
                ToolChoice::Auto => ("AUTO", Vec::new()),
                ToolChoice::None => ("NONE", Vec::new()),
                ToolChoice::Required => ("ANY", Vec::new()),
                ToolChoice::Tool(name) => ("ANY", vec![name.as_str()]),
            };
            Some(ToolConfig { function_calling_config: FunctionCallingConfig { mode, allowed_function_names } })
        }
        _ => None,
    };

    let p = &req.params;
    let (response_mime_type, response_json_schema) = match &req.response_format {
        Some(ResponseFormat::JsonSchema(s)) => (Some("application/json"), Some(&s.schema)),
        Some(ResponseFormat::JsonObject) => (Some("application/json"), None),
        Some(ResponseFormat::Text) | None => (None, None),
    };
    let thinking_config = req
        .reasoning
        .as_ref()
        .and_then(|r| r.effective_budget())
        .map(|b| ThinkingConfig { thinking_budget: b, include_thoughts: (b > 0).then_some(true) });
    let generation_config = GenerationConfig {
        temperature: p.temperature,
        top_p: p.top_p,
        top_k: p.top_k,
        max_output_tokens: p.max_tokens,
        stop_sequences: &p.stop,
        seed: p.seed,
        presence_penalty: p.presence_penalty,
        frequency_penalty: p.frequency_penalty,
        response_mime_type,
        response_json_schema,
        thinking_config,
    };

    Ok(GenerateContentRequest {
        contents,
        system_instruction: (!system.is_empty()).then_some(SystemInstruction { parts: system }),
        tools,
        tool_config,
        generation_config: (!generation_config.is_empty()).then_some(generation_config),
    })
}

/// Appends a turn, merging it into the previous one when the role is the same (Gemini wants
/// turns to alternate). Turns with no parts are dropped: Gemini rejects them.
fn push_content<'a>(contents: &mut Vec<Content<'a>>, role: &'static str, parts: Vec<Part<'a>>) {
    if parts.is_empty() {
        return;
    }
    match contents.last_mut() {
        Some(last) if last.role == role => last.parts.extend(parts),
        _ => contents.push(Content { role, parts }),
    }
}

/// An empty text part is an unset `data` oneof to Gemini's protobuf API, which rejects it
/// ("required oneof field 'data' must have one initialized field"); OpenAI accepts `""`.
fn is_empty_text(part: &ContentPart) -> bool {
    matches!(part, ContentPart::Text { text } if text.is_empty())
}

fn wire_part(part: &ContentPart) -> Part<'_> {
    match part {
        ContentPart::Text { text } => Part { text: Some(text), ..Part::default() },
        ContentPart::Image { source: ImageSource::Base64 { media_type, data }, .. } => {
            Part { inline_data: Some(Blob { mime_type: media_type, data }), ..Part::default() }
        }
        ContentPart::Image { source: ImageSource::Url(url), .. } => {
            Part { file_data: Some(FileData { mime_type: image_mime_type(url), file_uri: url }), ..Part::default() }
        }
    }
}

/// Gemini wants a MIME type with every file URI; guess it from the extension.
fn image_mime_type(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let file = path.rsplit('/').next().unwrap_or(path);
    let ext = file.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        _ => "image/jpeg",
    }
}

/// An assistant turn: its text and images, then its function calls. A thought signature from
/// an earlier Gemini response goes back on the first function call, or on the first text
/// part when the turn made no calls.
fn assistant_parts<'a>(provider: &str, i: usize, m: &'a Message) -> Result<Vec<Part<'a>>, ProviderError> {
    let mut parts: Vec<Part<'a>> = m
        .content
        .iter()
        .filter(|p| !is_empty_text(p))
        .map(wire_part)
        .collect();
    for (j, call) in m.tool_calls.iter().enumerate() {
        let args = parse_arguments(&call.arguments).map_err(|why| {
            ProviderError::invalid_request(provider, format!("messages[{i}].tool_calls[{j}].function.arguments {why}"))
        })?;
        parts.push(Part { function_call: Some(FunctionCall { name: &call.name, args }), ..Part::default() });
    }
    let signature = m.reasoning.iter().find_map(|block| match block {
        ReasoningBlock::Thinking { signature: Some(sig), .. } if !sig.is_empty() => Some(sig.as_str()),
        _ => None,
    });
    if let Some(signature) = signature {
        let target = match parts.iter().position(|p| p.function_call.is_some()) {
            Some(pos) => Some(pos),
            None => parts.iter().position(|p| p.text.is_some()),
        };
        match target.and_then(|pos| parts.get_mut(pos)) {
            Some(part) => part.thought_signature = Some(signature),
            None => tracing::debug!(provider, "dropping a thought signature: the turn has no part to carry it"),
        }
    }
    Ok(parts)
}

/// Tool-call arguments as the JSON object Gemini takes; empty text means no arguments.
fn parse_arguments(arguments: &str) -> Result<Value, String> {
    if arguments.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err("is not a JSON object".to_owned()),
        Err(e) => Err(format!("is not valid JSON: {e}")),
    }
}

/// A tool message as a `functionResponse` part. Gemini matches responses to calls by function
/// name, found here from the call this message answers (the latest earlier call with that id).
fn function_response<'a>(
    provider: &str,
    i: usize,
    m: &'a Message,
    earlier: &'a [Message],
) -> Result<Part<'a>, ProviderError> {
    let name = match m.tool_call_id.as_deref() {
        Some(id) => earlier
            .iter()
            .rev()
            .filter(|e| e.role == Role::Assistant)
            .flat_map(|e| e.tool_calls.iter())
            .find(|c| c.id == id)
            .map(|c| c.name.as_str())
            .ok_or_else(|| {
                ProviderError::invalid_request(
                    provider,
                    format!("messages[{i}].tool_call_id {id:?} matches no tool call of an earlier assistant message"),
                )
            })?,
        None => m.name.as_deref().ok_or_else(|| {
            ProviderError::invalid_request(provider, format!("messages[{i}] is a tool message without a tool_call_id"))
        })?,
    };
    if m.content.iter().any(|p| matches!(p, ContentPart::Image { .. })) {
        tracing::debug!(provider, "dropping images from a tool message");
    }
    let text = m.joined_text();
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(value @ Value::Object(_)) => value,
        Ok(value) => json!({ "result": value }),
        Err(_) => json!({ "result": text }),
    };
    Ok(Part { function_response: Some(FunctionResponse { name, response }), ..Part::default() })
}

// ---- response ----

/// What `chat` does with a 2xx body, and `chat_stream`'s decoder, for [`crate::fuzzing`]
/// (which also sends fuzzed requests through [`encode_request`] and error bodies through
/// [`error_message`]).
pub(crate) fn decode_response(provider: &str, bytes: &[u8], model: &str) -> Result<ChatResponse, ProviderError> {
    convert_response(provider, http::parse_json(provider, bytes)?, model)
}

pub(crate) fn stream_decoder(provider: &str, model: &str) -> impl sse::SseDecoder + use<> {
    stream::ChunkDecoder::new(provider, model)
}

fn convert_response(provider: &str, wire: GenerateContentResponse, model: &str) -> Result<ChatResponse, ProviderError> {
    if let Some(error) = wire.error {
        return Err(wire_error(provider, error));
    }
    let id = wire.response_id.filter(|id| !id.is_empty()).unwrap_or_else(generated_id);
    let model = wire.model_version.filter(|m| !m.is_empty()).unwrap_or_else(|| model.to_owned());
    let usage = wire.usage_metadata.map(convert_usage).unwrap_or_default();
    let Some(candidate) = wire.candidates.unwrap_or_default().into_iter().next() else {
        let Some(reason) = wire.prompt_feedback.and_then(|f| f.block_reason) else {
            return Err(ProviderError::malformed(provider, "the response has no candidates"));
        };
        return Ok(ChatResponse {
            id,
            model,
            created: crate::now_unix(),
            message: AssistantMessage { refusal: Some(block_message(&reason)), ..AssistantMessage::default() },
            finish_reason: FinishReason::ContentFilter,
            usage,
        });
    };

    let mut content: Option<String> = None;
    let mut tool_calls = Vec::new();
    let mut reasoning = Vec::new();
    for part in candidate.content.and_then(|c| c.parts).unwrap_or_default() {
        if part.thought == Some(true) {
            reasoning.push(ReasoningBlock::Thinking {
                text: part.text.unwrap_or_default(),
                signature: part.thought_signature,
            });
            continue;
        }
        if let Some(signature) = part.thought_signature {
            reasoning.push(ReasoningBlock::Thinking { text: String::new(), signature: Some(signature) });
        }
        if let Some(text) = part.text {
            content.get_or_insert_default().push_str(&text);
        }
        if let Some(call) = part.function_call {
            let n = tool_calls.len();
            tool_calls.push(ToolCall {
                id: call.id.filter(|id| !id.is_empty()).unwrap_or_else(|| format!("call_{n}")),
                name: call.name,
                arguments: arguments_text(call.args),
            });
        }
    }
    let finish_reason = finish_reason(candidate.finish_reason.as_deref(), !tool_calls.is_empty());
    Ok(ChatResponse {
        id,
        model,
        created: crate::now_unix(),
        message: AssistantMessage { content, tool_calls, reasoning, refusal: None },
        finish_reason,
        usage,
    })
}

/// Function-call arguments as compact JSON text; none means an empty object.
fn arguments_text(args: Option<Value>) -> String {
    match args {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(value) => value.to_string(),
    }
}

fn finish_reason(reason: Option<&str>, has_tool_calls: bool) -> FinishReason {
    match reason {
        Some("MAX_TOKENS") => FinishReason::Length,
        Some("SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" | "LANGUAGE") => {
            FinishReason::ContentFilter
        }
        _ if has_tool_calls => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

fn block_message(reason: &str) -> String {
    format!("blocked by Gemini safety filters: {reason}")
}

fn convert_usage(u: UsageMetadata) -> Usage {
    Usage {
        input_tokens: u.prompt_token_count,
        output_tokens: u.candidates_token_count.saturating_add(u.thoughts_token_count),
        cache_read_tokens: u.cached_content_token_count,
        cache_write_tokens: 0,
        reasoning_tokens: u.thoughts_token_count,
    }
}

/// An id for a response that came without `responseId`: the time and a process-wide counter.
fn generated_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("gemini-{nanos:x}-{n}")
}

#[cfg(test)]
mod tests;
