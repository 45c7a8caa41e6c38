//! OpenAI Chat Completions, and every server that speaks it (vLLM, Ollama, llama.cpp,
//! Groq, Together, DeepSeek, Mistral, OpenRouter, Fireworks, ...). The servers differ only by
//! [`OpenAiFlavor`], set from config.

mod embeddings;
mod stream;
mod types;

use fungible_types::{
    AssistantMessage, ChatRequest, ChatResponse, ContentPart, FinishReason, ImageSource, ProviderError, ReasoningBlock,
    ResponseFormat, Role, ToolCall, ToolChoice, Usage,
};
use serde_json::{Value, json};

use crate::http::{self, HttpClient};
use crate::capture::Capture;
use crate::{ChatProvider, EventStream, ProviderKind, ProviderSettings, body, sse};
use crate::redact::Redactions;
use types::*;

/// Which name the server takes for the output-token limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxTokensField {
    /// `max_completion_tokens` (OpenAI; required by its reasoning models).
    MaxCompletionTokens,
    /// `max_tokens` (most OpenAI-compatible servers).
    MaxTokens,
}

/// How one OpenAI-compatible server differs from OpenAI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenAiFlavor {
    pub kind: ProviderKind,
    /// Whether the server accepts the `developer` role; if not it is sent as `system`.
    pub developer_role: bool,
    pub max_tokens_field: MaxTokensField,
    /// Whether the server accepts `stream_options.include_usage`.
    pub stream_usage: bool,
    /// How the server continues a trailing assistant message, if it can.
    pub prefill: Prefill,
}

/// How an OpenAI-compatible server is asked to continue a request's trailing assistant
/// message (prefill) instead of answering after it. Plain OpenAI cannot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Prefill {
    /// Not supported: a trailing assistant message is sent as it is.
    #[default]
    None,
    /// `"prefix": true` on the trailing assistant message (DeepSeek, Mistral).
    Prefix,
    /// `"continue_final_message": true, "add_generation_prompt": false` (vLLM, SGLang).
    ContinueFinalMessage,
}

impl Prefill {
    pub fn parse(text: &str) -> Option<Prefill> {
        match text {
            "none" => Some(Prefill::None),
            "prefix" => Some(Prefill::Prefix),
            "continue_final_message" => Some(Prefill::ContinueFinalMessage),
            _ => None,
        }
    }
}

impl OpenAiFlavor {
    pub const OPENAI: OpenAiFlavor = OpenAiFlavor {
        kind: ProviderKind::OpenAi,
        developer_role: true,
        max_tokens_field: MaxTokensField::MaxCompletionTokens,
        stream_usage: true,
        prefill: Prefill::None,
    };

    pub const COMPATIBLE: OpenAiFlavor = OpenAiFlavor {
        kind: ProviderKind::OpenAiCompatible,
        developer_role: false,
        max_tokens_field: MaxTokensField::MaxTokens,
        stream_usage: true,
        prefill: Prefill::None,
    };
}

#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    settings: ProviderSettings,
    flavor: OpenAiFlavor,
    http: HttpClient,
    url: String,
    /// The credentials kept out of answers, built once.
    redactions: Redactions,
}

impl OpenAiProvider {
    pub(crate) fn redactions(&self) -> &Redactions {
        &self.redactions
    }

    pub fn new(settings: ProviderSettings, flavor: OpenAiFlavor, http: HttpClient) -> OpenAiProvider {
        let url = format!("{}/chat/completions", settings.base_url.trim_end_matches('/'));
        let redactions = Redactions::of(&settings);
        OpenAiProvider { settings, flavor, http, url, redactions }
    }

    pub fn kind(&self) -> ProviderKind {
        self.flavor.kind
    }

    /// Whether (and how) this server continues a trailing assistant message.
    pub fn prefill(&self) -> Prefill {
        self.flavor.prefill
    }

    fn request(&self) -> reqwest::RequestBuilder {
        let rb = self.http.post(&self.url);
        match &self.settings.api_key {
            Some(key) => rb.bearer_auth(key.expose()),
            None => rb,
        }
    }

    async fn send(
        &self,
        req: &ChatRequest,
        model: &str,
        stream: bool,
        capture: Option<&Capture>,
    ) -> Result<http::Sent, ProviderError> {
        let wire = build_request(req, model, stream, self.flavor);
        let body = body::encode(&self.settings.name, &wire, &req.extra_body)?;
        http::send_json(&self.settings, self.request(), body, http::error_message_field, capture).await
    }
}

impl ChatProvider for OpenAiProvider {
    async fn chat(&self, req: &ChatRequest, model: &str, capture: Option<&Capture>) -> Result<ChatResponse, ProviderError> {
        let response = self.send(req, model, false, capture).await?;
        let wire: Response = http::read_json(&self.settings, response).await?;
        convert_response(&self.settings.name, wire, model)
    }

    async fn chat_stream(&self, req: &ChatRequest, model: &str, capture: Option<&Capture>) -> Result<EventStream, ProviderError> {
        let response = self.send(req, model, true, capture).await?;
        Ok(sse::event_stream(&self.settings, response, stream::ChunkDecoder::new(&self.settings.name)))
    }

    /// Chat Completions has no token-counting endpoint: a local estimate.
    async fn count_tokens(&self, req: &ChatRequest, _model: &str) -> Result<u64, ProviderError> {
        crate::estimate::input_tokens(&self.settings.name, req).await
    }
}

fn build_request<'a>(req: &'a ChatRequest, model: &'a str, stream: bool, flavor: OpenAiFlavor) -> Request<'a> {
    let (max_tokens, max_completion_tokens) = match flavor.max_tokens_field {
        MaxTokensField::MaxTokens => (req.params.max_tokens, None),
        MaxTokensField::MaxCompletionTokens => (None, req.params.max_tokens),
    };
    let is_openai = flavor.kind == ProviderKind::OpenAi;
    let o = &req.openai;
    // A trailing assistant message is the start of the answer (prefill), where the server can.
    let prefilled = req.messages.last().is_some_and(|m| m.role == Role::Assistant && m.tool_calls.is_empty());
    let mut messages: Vec<WireMessage<'_>> = req.messages.iter().map(|m| wire_message(m, flavor)).collect();
    if prefilled
        && flavor.prefill == Prefill::Prefix
        && let Some(last) = messages.last_mut()
    {
        last.prefix = Some(true);
    }
    let continue_final = (prefilled && flavor.prefill == Prefill::ContinueFinalMessage).then_some(true);
    Request {
        model,
        messages,
        tools: req
            .tools
            .iter()
            .map(|t| WireTool {
                kind: "function",
                function: WireFunction {
                    name: &t.name,
                    description: t.description.as_deref(),
                    parameters: &t.parameters,
                    strict: t.strict,
                },
            })
            .collect(),
        tool_choice: req.tool_choice.as_ref().map(|c| match c {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
        }),
        parallel_tool_calls: req.parallel_tool_calls,
        response_format: req.response_format.as_ref().map(|f| match f {
            ResponseFormat::Text => json!({"type": "text"}),
            ResponseFormat::JsonObject => json!({"type": "json_object"}),
            ResponseFormat::JsonSchema(s) => {
                let mut schema = json!({"name": s.name, "schema": s.schema});
                if let Some(d) = &s.description {
                    schema["description"] = json!(d);
                }
                if let Some(strict) = s.strict {
                    schema["strict"] = json!(strict);
                }
                json!({"type": "json_schema", "json_schema": schema})
            }
        }),
        temperature: req.params.temperature,
        top_p: req.params.top_p,
        max_tokens,
        max_completion_tokens,
        stop: &req.params.stop,
        seed: req.params.seed,
        presence_penalty: req.params.presence_penalty,
        frequency_penalty: req.params.frequency_penalty,
        reasoning_effort: req.reasoning.as_ref().and_then(|r| r.effort).map(|e| e.as_str()),
        user: req.user.as_deref(),
        metadata: if is_openai { req.metadata.as_ref() } else { None },
        logprobs: o.logprobs,
        top_logprobs: o.top_logprobs,
        logit_bias: o.logit_bias.as_ref(),
        service_tier: o.service_tier.as_deref(),
        store: if is_openai { o.store } else { None },
        verbosity: o.verbosity.as_deref(),
        prompt_cache_key: o.prompt_cache_key.as_deref(),
        safety_identifier: o.safety_identifier.as_deref(),
        stream,
        // Always ask for usage upstream: it is recorded whether or not the client wants it.
        stream_options: (stream && flavor.stream_usage).then_some(StreamOptions { include_usage: true }),
        continue_final_message: continue_final,
        add_generation_prompt: continue_final.map(|_| false),
    }
}

fn wire_message(m: &fungible_types::Message, flavor: OpenAiFlavor) -> WireMessage<'_> {
    let role = match m.role {
        Role::Developer if !flavor.developer_role => "system",
        role => role.as_str(),
    };
    let content = match m.role {
        Role::Assistant if m.content.is_empty() => WireContent::Null,
        _ => wire_content(&m.content),
    };
    WireMessage {
        role,
        content,
        name: m.name.as_deref(),
        tool_calls: m
            .tool_calls
            .iter()
            .map(|c| WireToolCall {
                id: &c.id,
                kind: "function",
                function: WireFunctionCall { name: &c.name, arguments: &c.arguments },
            })
            .collect(),
        tool_call_id: m.tool_call_id.as_deref(),
        prefix: None,
    }
}

/// A single text part goes as a plain string (every compatible server takes that); anything
/// else as an array of parts.
fn wire_content(parts: &[ContentPart]) -> WireContent<'_> {
    match parts {
        [] => WireContent::Text(""),
        [ContentPart::Text { text }] => WireContent::Text(text),
        parts => WireContent::Parts(
            parts
                .iter()
                .map(|p| match p {
                    ContentPart::Text { text } => WirePart::Text { text },
                    ContentPart::Image { source, detail } => WirePart::ImageUrl {
                        image_url: WireImageUrl {
                            url: match source {
                                ImageSource::Url(url) => url.as_str().into(),
                                inline => inline.to_openai_url().into(),
                            },
                            detail: detail.as_deref(),
                        },
                    },
                })
                .collect(),
        ),
    }
}

/// What `chat` does with a 2xx body, and `chat_stream`'s decoder, for [`crate::fuzzing`].
pub(crate) fn decode_response(provider: &str, bytes: &[u8], model: &str) -> Result<ChatResponse, ProviderError> {
    convert_response(provider, http::parse_json(provider, bytes)?, model)
}

pub(crate) fn stream_decoder(provider: &str) -> impl sse::SseDecoder + use<> {
    stream::ChunkDecoder::new(provider)
}

/// The body `chat` sends for `req` to a server of `flavor` (also what fuzzing and dataset
/// exports encode with).
pub fn encode_request(
    provider: &str,
    req: &ChatRequest,
    model: &str,
    stream: bool,
    flavor: OpenAiFlavor,
) -> Result<Vec<u8>, ProviderError> {
    body::encode(provider, &build_request(req, model, stream, flavor), &req.extra_body)
}

fn convert_response(provider: &str, wire: Response, model: &str) -> Result<ChatResponse, ProviderError> {
    let Some(choice) = wire.choices.into_iter().next() else {
        return Err(ProviderError::malformed(provider, "the response has no choices"));
    };
    let mut tool_calls = Vec::new();
    for (i, call) in choice.message.tool_calls.unwrap_or_default().into_iter().enumerate() {
        tool_calls.push(ToolCall {
            id: call.id.unwrap_or_else(|| format!("call_{i}")),
            name: call.function.name,
            arguments: arguments_text(call.function.arguments),
        });
    }
    let finish_reason = finish_reason(choice.finish_reason.as_deref(), !tool_calls.is_empty());
    let reasoning = reasoning_text(choice.message.reasoning_content, choice.message.reasoning)
        .map(|text| vec![ReasoningBlock::Thinking { text, signature: None }])
        .unwrap_or_default();
    Ok(ChatResponse {
        id: wire.id,
        model: if wire.model.is_empty() { model.to_owned() } else { wire.model },
        created: if wire.created == 0 { crate::now_unix() } else { wire.created },
        message: AssistantMessage {
            content: choice.message.content,
            tool_calls,
            reasoning,
            refusal: choice.message.refusal,
        },
        finish_reason,
        usage: wire.usage.map(convert_usage).unwrap_or_default(),
    })
}

/// Arguments as JSON text, whether the server sent a string or an object.
fn arguments_text(arguments: Option<Value>) -> String {
    match arguments {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
    }
}

/// Some servers report `stop` for a turn that ended in tool calls; clients branch on
/// `tool_calls`, so the reason is normalised.
fn finish_reason(reason: Option<&str>, has_tool_calls: bool) -> FinishReason {
    match reason {
        Some("length") => FinishReason::Length,
        Some("content_filter") => FinishReason::ContentFilter,
        Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
        _ if has_tool_calls => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

fn convert_usage(u: WireUsage) -> Usage {
    Usage {
        input_tokens: u.prompt_tokens,
        output_tokens: u.completion_tokens,
        cache_read_tokens: u.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0),
        cache_write_tokens: 0,
        reasoning_tokens: u.completion_tokens_details.and_then(|d| d.reasoning_tokens).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fungible_types::{Message, SamplingParams, StreamEvent};

    fn request() -> ChatRequest {
        ChatRequest {
            model: "openai/gpt-5".into(),
            messages: vec![Message::text(Role::Developer, "be brief"), Message::text(Role::User, "hi")],
            params: SamplingParams { max_tokens: Some(10), ..Default::default() },
            ..Default::default()
        }
    }

    #[test]
    fn compatible_servers_get_system_role_and_max_tokens() {
        let req = request();
        let body = serde_json::to_value(build_request(&req, "llama", false, OpenAiFlavor::COMPATIBLE)).unwrap();
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["max_tokens"], 10);
        assert!(body.get("max_completion_tokens").is_none());
    }

    #[test]
    fn openai_gets_developer_role_and_max_completion_tokens() {
        let req = request();
        let body = serde_json::to_value(build_request(&req, "gpt-5", true, OpenAiFlavor::OPENAI)).unwrap();
        assert_eq!(body["messages"][0]["role"], "developer");
        assert_eq!(body["max_completion_tokens"], 10);
        assert_eq!(body["stream_options"]["include_usage"], true);
    }

    #[test]
    fn extra_body_is_merged_at_top_level() {
        let mut req = request();
        req.extra_body.insert("top_k".into(), json!(5));
        let wire = build_request(&req, "m", false, OpenAiFlavor::COMPATIBLE);
        let body: Value = serde_json::from_slice(&body::encode("p", &wire, &req.extra_body).unwrap()).unwrap();
        assert_eq!(body["top_k"], 5);
    }

    #[test]
    fn stop_with_tool_calls_is_reported_as_tool_calls() {
        assert_eq!(finish_reason(Some("stop"), true), FinishReason::ToolCalls);
        assert_eq!(finish_reason(Some("stop"), false), FinishReason::Stop);
    }

    /// Runs each `data` through the chunk decoder; the first error ends it.
    fn decode(data: &[&str]) -> Result<Vec<StreamEvent>, ProviderError> {
        let mut decoder = stream::ChunkDecoder::new("p");
        let mut out = Vec::new();
        for d in data {
            let event = eventsource_stream::Event { data: (*d).to_owned(), ..Default::default() };
            crate::sse::SseDecoder::on_event(&mut decoder, &event, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn a_tool_call_after_one_with_index_u32_max_does_not_overflow() {
        let events = decode(&[
            r#"{"id":"c","choices":[{"delta":{"tool_calls":[{"index":4294967295,"id":"a","function":{"name":"f"}}]}}]}"#,
            r#"{"id":"c","choices":[{"delta":{"tool_calls":[{"id":"b","function":{"name":"g","arguments":"{}"}}]}}]}"#,
        ])
        .expect("decodes");
        let starts = events.iter().filter(|e| matches!(e, StreamEvent::ToolCallStart { .. })).count();
        assert_eq!(starts, 1, "{events:?}");
    }

    #[test]
    fn reasoning_and_reasoning_content_in_one_message_are_not_a_parse_error() {
        let wire: Response = serde_json::from_str(
            r#"{"id":"x","model":"m","created":1,"choices":[{"message":{"role":"assistant","content":"4","reasoning":"2+2","reasoning_content":"2+2"},"finish_reason":"stop"}]}"#,
        )
        .expect("both reasoning fields parse");
        let r = convert_response("p", wire, "m").expect("converts");
        assert_eq!(r.message.reasoning_text().as_deref(), Some("2+2"));

        let wire: Response = serde_json::from_str(
            r#"{"choices":[{"message":{"content":"4","reasoning_content":null,"reasoning":"new name"}}]}"#,
        )
        .expect("parses");
        let r = convert_response("p", wire, "m").expect("converts");
        assert_eq!(r.message.reasoning_text().as_deref(), Some("new name"));

        let events = decode(&[
            r#"{"id":"c","choices":[{"delta":{"reasoning":"hm","reasoning_content":"hm"}}]}"#,
            r#"{"id":"c","choices":[{"delta":{"reasoning":null,"reasoning_content":"m"}}]}"#,
        ])
        .expect("deltas with both reasoning fields decode");
        let reasoning: Vec<&StreamEvent> =
            events.iter().filter(|e| matches!(e, StreamEvent::ReasoningDelta { .. })).collect();
        assert_eq!(
            reasoning,
            [&StreamEvent::ReasoningDelta { text: "hm".into() }, &StreamEvent::ReasoningDelta { text: "m".into() }]
        );
    }

    #[test]
    fn a_tool_call_id_repeated_on_every_delta_starts_one_call() {
        // DeepSeek / Qwen / Fireworks style: id, type and name on every delta of a call.
        let events = decode(&[
            r#"{"id":"c","choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"f","arguments":""}}]}}]}"#,
            r#"{"id":"c","choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"f","arguments":"{\"x\":"}}]}}]}"#,
            r#"{"id":"c","choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"arguments":"1}"}}]}}]}"#,
            r#"{"id":"c","choices":[{"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"g","arguments":"{}"}}]}}]}"#,
            r#"{"id":"c","choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
            "[DONE]",
        ])
        .expect("decodes");
        let starts: Vec<(u32, &str, &str)> = events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::ToolCallStart { index, id, name } => Some((*index, id.as_str(), name.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(starts, [(0, "call_a", "f"), (1, "call_b", "g")]);
        let args: String = events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::ToolCallArgs { index: 0, arguments } => Some(arguments.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(args, r#"{"x":1}"#);

        // The same without indices: a repeated id continues the call, a new id starts one.
        let events = decode(&[
            r#"{"id":"c","choices":[{"delta":{"tool_calls":[{"id":"call_a","function":{"name":"f","arguments":"{"}}]}}]}"#,
            r#"{"id":"c","choices":[{"delta":{"tool_calls":[{"id":"call_a","function":{"arguments":"}"}}]}}]}"#,
            r#"{"id":"c","choices":[{"delta":{"tool_calls":[{"id":"call_b","function":{"name":"g","arguments":"{}"}}]}}]}"#,
        ])
        .expect("decodes");
        let starts = events.iter().filter(|e| matches!(e, StreamEvent::ToolCallStart { .. })).count();
        assert_eq!(starts, 2, "{events:?}");
        assert!(events.contains(&StreamEvent::ToolCallArgs { index: 0, arguments: "}".into() }), "{events:?}");
        assert!(events.contains(&StreamEvent::ToolCallArgs { index: 1, arguments: "{}".into() }), "{events:?}");

        // Gemini's OpenAI endpoint: whole calls, no index, `"id": ""`; two calls stay two.
        let events = decode(&[
            r#"{"id":"c","choices":[{"delta":{"tool_calls":[{"id":"","function":{"name":"f","arguments":"{}"}}]}}]}"#,
            r#"{"id":"c","choices":[{"delta":{"tool_calls":[{"id":"","function":{"name":"g","arguments":"{}"}}]}}]}"#,
        ])
        .expect("decodes");
        let starts: Vec<&StreamEvent> =
            events.iter().filter(|e| matches!(e, StreamEvent::ToolCallStart { .. })).collect();
        assert_eq!(
            starts,
            [
                &StreamEvent::ToolCallStart { index: 0, id: "call_0".into(), name: "f".into() },
                &StreamEvent::ToolCallStart { index: 1, id: "call_1".into(), name: "g".into() },
            ]
        );
    }

    #[test]
    fn azure_prompt_filter_preamble_does_not_become_the_start() {
        let events = decode(&[
            r#"{"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]}"#,
            r#"{"id":"chatcmpl-1","created":1700000000,"model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}"#,
        ])
        .expect("decodes");
        assert_eq!(
            events,
            [
                StreamEvent::Start { id: "chatcmpl-1".into(), model: "gpt-4o".into(), created: 1_700_000_000 },
                StreamEvent::TextDelta { text: "Hi".into() },
            ]
        );

        // A server that never sends `created` still gets a timestamp.
        let events = decode(&[r#"{"id":"x","choices":[{"delta":{"content":"a"}}]}"#]).expect("decodes");
        assert!(matches!(events[0], StreamEvent::Start { created, .. } if created > 0), "{events:?}");
    }
}
