//! Renders canonical responses and stream events as Gemini `GenerateContentResponse`
//! objects: whole, or as `streamGenerateContent` chunks framed as SSE (`?alt=sse`) or as one
//! JSON array (Google's default framing).

use axum::http::StatusCode;
use bytes::Bytes;
use fungible_types::{ChatResponse, FinishReason, ReasoningBlock, StreamEvent, Usage};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::{ApiError, ApiFormat};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    candidates: [Candidate<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage_metadata: Option<UsageMetadata>,
    model_version: &'a str,
    response_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_message: Option<&'a str>,
    index: u32,
}

#[derive(Serialize)]
struct Content<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    parts: Vec<Part<'a>>,
    role: &'static str,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct Part<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thought: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_call: Option<FunctionCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thought_signature: Option<&'a str>,
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    id: &'a str,
    name: &'a str,
    args: Box<RawValue>,
}

/// The cache and thinking counts are left out when zero, as Google's proto3 JSON does.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    prompt_token_count: u64,
    candidates_token_count: u64,
    total_token_count: u64,
    #[serde(skip_serializing_if = "is_zero")]
    cached_content_token_count: u64,
    #[serde(skip_serializing_if = "is_zero")]
    thoughts_token_count: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl From<Usage> for UsageMetadata {
    /// Gemini counts visible output (`candidates`) and thinking (`thoughts`) apart; the
    /// canonical output count includes reasoning.
    fn from(u: Usage) -> UsageMetadata {
        UsageMetadata {
            prompt_token_count: u.input_tokens,
            candidates_token_count: u.output_tokens.saturating_sub(u.reasoning_tokens),
            total_token_count: u.total_tokens(),
            cached_content_token_count: u.cache_read_tokens,
            thoughts_token_count: u.reasoning_tokens,
        }
    }
}

fn finish_reason(reason: &FinishReason) -> &'static str {
    match reason {
        // Gemini ends a turn of function calls with STOP too.
        FinishReason::Stop | FinishReason::ToolCalls => "STOP",
        FinishReason::Length => "MAX_TOKENS",
        FinishReason::ContentFilter => "SAFETY",
    }
}

/// Tool-call arguments (raw JSON text) as the object Gemini puts in `args`, compact as Google
/// sends it, in the model's key order (a `serde_json::Value` would sort the keys).
fn args_object(provider: &str, name: &str, arguments: &str) -> Result<Box<RawValue>, ApiError> {
    let text = arguments.trim();
    let text = if text.is_empty() { "{}" } else { text };
    let fail = |why: String| {
        ApiError {
            status: StatusCode::BAD_GATEWAY,
            kind: "api_error",
            ..ApiError::invalid_request(None, format!("{provider}: the arguments of the call to {name} {why}"))
        }
    };
    if !text.starts_with('{') {
        return Err(fail("are not a JSON object".to_owned()));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| fail(format!("are not valid JSON: {e}")))?;
    RawValue::from_string(minify(text)).map_err(|e| fail(format!("are not valid JSON: {e}")))
}

/// `json` (valid JSON) without whitespace between tokens; strings are kept as they are.
fn minify(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    out
}

/// A whole `generateContent` answer. `provider` names the upstream in errors.
pub fn response_body(r: &ChatResponse, include_thoughts: bool, provider: &str) -> Result<Vec<u8>, ApiError> {
    let m = &r.message;
    let mut parts = Vec::new();
    let mut signatures = Vec::new();
    for block in &m.reasoning {
        match block {
            ReasoningBlock::Thinking { text, signature } if !text.is_empty() => {
                if include_thoughts {
                    parts.push(Part {
                        text: Some(text),
                        thought: Some(true),
                        thought_signature: signature.as_deref(),
                        ..Part::default()
                    });
                }
            }
            ReasoningBlock::Thinking { signature: Some(signature), .. } => signatures.push(signature.as_str()),
            ReasoningBlock::Thinking { .. } => {}
            ReasoningBlock::Redacted { .. } => {
                tracing::debug!("dropping redacted reasoning: Gemini has no part for it");
            }
        }
    }
    let first_answer = parts.len();
    if let Some(text) = m.content.as_deref().filter(|t| !t.is_empty()) {
        parts.push(Part { text: Some(text), ..Part::default() });
    }
    for call in &m.tool_calls {
        let args = args_object(provider, &call.name, &call.arguments)?;
        parts.push(Part { function_call: Some(FunctionCall { id: &call.id, name: &call.name, args }), ..Part::default() });
    }
    // A thought signature goes on the first function call, else on the first text part, as
    // Gemini places it.
    if let Some(signature) = signatures.first().copied() {
        let target = parts[first_answer..]
            .iter()
            .position(|p| p.function_call.is_some())
            .or_else(|| (first_answer < parts.len()).then_some(0))
            .map(|i| i + first_answer);
        match target.and_then(|i| parts.get_mut(i)) {
            Some(part) => part.thought_signature = Some(signature),
            None => parts.push(Part { text: Some(""), thought_signature: Some(signature), ..Part::default() }),
        }
    }
    let content = (!parts.is_empty() || r.finish_reason != FinishReason::ContentFilter)
        .then_some(Content { parts, role: "model" });
    let wire = Wire {
        candidates: [Candidate {
            content,
            finish_reason: Some(finish_reason(&r.finish_reason)),
            finish_message: m.refusal.as_deref(),
            index: 0,
        }],
        usage_metadata: Some(r.usage.into()),
        model_version: &r.model,
        response_id: &r.id,
    };
    Ok(serde_json::to_vec(&wire).unwrap_or_default())
}

/// The `countTokens` answer.
pub fn count_tokens_body(total: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "totalTokens": total })).unwrap_or_default()
}

// ---- streaming ----

/// How stream chunks are framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `?alt=sse`: `data: {chunk}\r\n\r\n` per chunk.
    Sse,
    /// Google's default: one JSON array, `[{chunk}` then `,\r\n{chunk}` ... `]`.
    JsonArray,
}

impl Framing {
    pub fn content_type(self) -> &'static str {
        match self {
            Framing::Sse => "text/event-stream",
            Framing::JsonArray => "application/json",
        }
    }
}

/// A function call whose arguments are still arriving.
struct PendingCall {
    index: u32,
    id: String,
    name: String,
    arguments: String,
    signature: Option<String>,
}

/// Turns canonical stream events into Gemini stream chunks, one event at a time: a chunk per
/// text delta, function calls whole once their arguments are complete, and a last chunk with
/// `finishReason` and `usageMetadata`.
pub struct StreamEncoder {
    framing: Framing,
    /// Whether a frame went out (for the JSON array: whether `[` did).
    opened: bool,
    provider: String,
    id: String,
    model: String,
    include_thoughts: bool,
    /// A thought signature waiting for the part it belongs to (the next one).
    signature: Option<String>,
    calls: Vec<PendingCall>,
    finish: Option<FinishReason>,
    refusal: String,
    usage: Usage,
}

impl StreamEncoder {
    /// `model` is reported until the upstream names its own; `provider` names it in errors.
    pub fn new(framing: Framing, model: &str, provider: &str, include_thoughts: bool) -> StreamEncoder {
        StreamEncoder {
            framing,
            opened: false,
            provider: provider.to_owned(),
            id: String::new(),
            model: model.to_owned(),
            include_thoughts,
            signature: None,
            calls: Vec::new(),
            finish: None,
            refusal: String::new(),
            usage: Usage::default(),
        }
    }

    /// The frames for one event (often none: usage and the finish reason wait for the end).
    /// An error means the upstream sent something Gemini cannot carry; the stream must end
    /// with [`StreamEncoder::error`].
    pub fn encode(&mut self, event: StreamEvent, out: &mut Vec<Bytes>) -> Result<(), ApiError> {
        match event {
            StreamEvent::Start { id, model, .. } => {
                self.id = id;
                if !model.is_empty() {
                    self.model = model;
                }
            }
            StreamEvent::TextDelta { text } => {
                if text.is_empty() {
                    return Ok(());
                }
                self.flush_calls(out)?;
                let signature = self.signature.take();
                let part = Part { text: Some(&text), thought_signature: signature.as_deref(), ..Part::default() };
                out.push(self.chunk(vec![part], None));
            }
            StreamEvent::ReasoningDelta { text } => {
                if !self.include_thoughts || text.is_empty() {
                    return Ok(());
                }
                self.flush_calls(out)?;
                out.push(self.chunk(vec![Part { text: Some(&text), thought: Some(true), ..Part::default() }], None));
            }
            StreamEvent::ReasoningSignature { signature } => {
                if let Some(earlier) = self.signature.replace(signature) {
                    // Two signatures with no part between them: the first goes out alone.
                    out.push(self.chunk(vec![Part { text: Some(""), thought_signature: Some(&earlier), ..Part::default() }], None));
                }
            }
            StreamEvent::RedactedReasoning { .. } => {
                tracing::debug!("dropping redacted reasoning: Gemini has no part for it");
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                // A new call starts: the ones before it are complete.
                self.flush_calls(out)?;
                let signature = self.signature.take();
                self.calls.push(PendingCall { index, id, name, arguments: String::new(), signature });
            }
            StreamEvent::ToolCallArgs { index, arguments } => match self.calls.iter_mut().find(|c| c.index == index) {
                Some(call) => call.arguments.push_str(&arguments),
                None => {
                    return Err(ApiError {
                        status: StatusCode::BAD_GATEWAY,
                        kind: "api_error",
                        ..ApiError::invalid_request(
                            None,
                            format!("{}: tool call arguments arrived for call {index}, which had not started or was complete", self.provider),
                        )
                    });
                }
            },
            StreamEvent::Refusal { text } => self.refusal.push_str(&text),
            StreamEvent::Usage(usage) => self.usage = usage,
            StreamEvent::Finish { reason } => self.finish = Some(reason),
        }
        Ok(())
    }

    /// The closing frames of a stream that ended normally: the last chunk (remaining function
    /// calls, finish reason, usage) and, for the JSON array, its `]`.
    pub fn finish(&mut self, out: &mut Vec<Bytes>) -> Result<(), ApiError> {
        let calls = std::mem::take(&mut self.calls);
        let args = calls
            .iter()
            .map(|c| args_object(&self.provider, &c.name, &c.arguments))
            .collect::<Result<Vec<_>, _>>()?;
        let signature = self.signature.take();
        let mut parts: Vec<Part<'_>> = calls
            .iter()
            .zip(args)
            .map(|(c, args)| Part {
                function_call: Some(FunctionCall { id: &c.id, name: &c.name, args }),
                thought_signature: c.signature.as_deref(),
                ..Part::default()
            })
            .collect();
        if let Some(signature) = signature.as_deref() {
            match parts.first_mut().filter(|p| p.thought_signature.is_none()) {
                Some(part) => part.thought_signature = Some(signature),
                None => parts.push(Part { text: Some(""), thought_signature: Some(signature), ..Part::default() }),
            }
        }
        if parts.is_empty() {
            // Google's SDKs treat a chunk without parts as an invalid turn.
            parts.push(Part { text: Some(""), ..Part::default() });
        }
        let reason = self.finish.clone().unwrap_or(FinishReason::Stop);
        let refusal = (!self.refusal.is_empty()).then_some(self.refusal.as_str());
        let json = self.chunk_json(parts, Some((finish_reason(&reason), refusal, self.usage)));
        out.push(self.frame(&json));
        if self.framing == Framing::JsonArray {
            out.push(Bytes::from_static(b"]"));
        }
        Ok(())
    }

    /// The frame for an error after the stream started: Google's error object as the last
    /// chunk, which the google-genai SDKs raise.
    pub fn error(&mut self, error: &ApiError) -> Bytes {
        let body = error.body(ApiFormat::Gemini);
        match self.framing {
            Framing::Sse => sse_frame(&body),
            Framing::JsonArray => {
                let mut frame = self.array_prefix();
                frame.extend_from_slice(&body);
                frame.push(b']');
                Bytes::from(frame)
            }
        }
    }

    /// Emits the buffered function calls (their arguments are complete) as one chunk.
    fn flush_calls(&mut self, out: &mut Vec<Bytes>) -> Result<(), ApiError> {
        if self.calls.is_empty() {
            return Ok(());
        }
        let calls = std::mem::take(&mut self.calls);
        let mut parts = Vec::with_capacity(calls.len());
        for c in &calls {
            let args = args_object(&self.provider, &c.name, &c.arguments)?;
            parts.push(Part {
                function_call: Some(FunctionCall { id: &c.id, name: &c.name, args }),
                thought_signature: c.signature.as_deref(),
                ..Part::default()
            });
        }
        out.push(self.chunk(parts, None));
        Ok(())
    }

    fn array_prefix(&mut self) -> Vec<u8> {
        let prefix: &[u8] = if self.opened { b",\r\n" } else { b"[" };
        self.opened = true;
        prefix.to_vec()
    }

    /// One chunk, framed; `last` carries the finish reason, a finish message and the usage.
    fn chunk(&mut self, parts: Vec<Part<'_>>, last: Option<(&'static str, Option<&str>, Usage)>) -> Bytes {
        let json = self.chunk_json(parts, last);
        self.frame(&json)
    }

    fn chunk_json(&self, parts: Vec<Part<'_>>, last: Option<(&'static str, Option<&str>, Usage)>) -> Vec<u8> {
        let wire = Wire {
            candidates: [Candidate {
                content: Some(Content { parts, role: "model" }),
                finish_reason: last.map(|(reason, _, _)| reason),
                finish_message: last.and_then(|(_, message, _)| message),
                index: 0,
            }],
            usage_metadata: last.map(|(_, _, usage)| usage.into()),
            model_version: &self.model,
            response_id: &self.id,
        };
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    fn frame(&mut self, json: &[u8]) -> Bytes {
        match self.framing {
            Framing::Sse => sse_frame(json),
            Framing::JsonArray => {
                let mut frame = self.array_prefix();
                frame.extend_from_slice(json);
                Bytes::from(frame)
            }
        }
    }
}

fn sse_frame(json: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(json.len() + 10);
    frame.extend_from_slice(b"data: ");
    frame.extend_from_slice(json);
    frame.extend_from_slice(b"\r\n\r\n");
    Bytes::from(frame)
}

impl crate::streaming::FrameEncoder for StreamEncoder {
    fn encode(&mut self, event: StreamEvent, out: &mut Vec<Bytes>) -> Result<(), ApiError> {
        StreamEncoder::encode(self, event, out)
    }

    fn finish(&mut self, out: &mut Vec<Bytes>) -> Result<(), ApiError> {
        StreamEncoder::finish(self, out)
    }

    fn fail(&mut self, error: &ApiError, out: &mut Vec<Bytes>) {
        out.push(self.error(error));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fungible_types::{AssistantMessage, ToolCall};

    fn run(framing: Framing, events: Vec<StreamEvent>, include_thoughts: bool) -> String {
        let mut enc = StreamEncoder::new(framing, "m", "p", include_thoughts);
        let mut out = Vec::new();
        for e in events {
            enc.encode(e, &mut out).unwrap();
        }
        enc.finish(&mut out).unwrap();
        out.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect()
    }

    fn start() -> StreamEvent {
        StreamEvent::Start { id: "r1".into(), model: "v1".into(), created: 0 }
    }

    #[test]
    fn text_streams_per_delta_and_the_last_chunk_carries_finish_and_usage() {
        let usage = Usage { input_tokens: 20, output_tokens: 5, cache_read_tokens: 8, ..Usage::default() };
        let out = run(
            Framing::Sse,
            vec![
                start(),
                StreamEvent::TextDelta { text: "Hel".into() },
                StreamEvent::TextDelta { text: "lo".into() },
                StreamEvent::Finish { reason: FinishReason::Stop },
                StreamEvent::Usage(usage),
            ],
            false,
        );
        assert_eq!(
            out,
            concat!(
                "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hel\"}],\"role\":\"model\"},\"index\":0}],\"modelVersion\":\"v1\",\"responseId\":\"r1\"}\r\n\r\n",
                "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"lo\"}],\"role\":\"model\"},\"index\":0}],\"modelVersion\":\"v1\",\"responseId\":\"r1\"}\r\n\r\n",
                "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"\"}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],",
                "\"usageMetadata\":{\"promptTokenCount\":20,\"candidatesTokenCount\":5,\"totalTokenCount\":25,\"cachedContentTokenCount\":8},",
                "\"modelVersion\":\"v1\",\"responseId\":\"r1\"}\r\n\r\n",
            )
        );
    }

    #[test]
    fn function_calls_go_out_whole_once_complete() {
        let out = run(
            Framing::JsonArray,
            vec![
                start(),
                StreamEvent::ReasoningSignature { signature: "sig".into() },
                StreamEvent::ToolCallStart { index: 0, id: "a".into(), name: "f".into() },
                StreamEvent::ToolCallArgs { index: 0, arguments: "{\"x\":\n".into() },
                StreamEvent::ToolCallArgs { index: 0, arguments: "1}".into() },
                StreamEvent::ToolCallStart { index: 1, id: "b".into(), name: "f".into() },
                StreamEvent::ToolCallArgs { index: 1, arguments: "{\"z\": 2, \"y\": \"a \\\" b\"}".into() },
                StreamEvent::Finish { reason: FinishReason::ToolCalls },
            ],
            false,
        );
        assert_eq!(
            out,
            concat!(
                "[{\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"id\":\"a\",\"name\":\"f\",\"args\":{\"x\":1}},\"thoughtSignature\":\"sig\"}],\"role\":\"model\"},\"index\":0}],\"modelVersion\":\"v1\",\"responseId\":\"r1\"}",
                ",\r\n{\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"id\":\"b\",\"name\":\"f\",\"args\":{\"z\":2,\"y\":\"a \\\" b\"}}}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],",
                "\"usageMetadata\":{\"promptTokenCount\":0,\"candidatesTokenCount\":0,\"totalTokenCount\":0},\"modelVersion\":\"v1\",\"responseId\":\"r1\"}]",
            )
        );
    }

    #[test]
    fn thoughts_show_only_when_asked_and_signatures_follow_them() {
        let events = || {
            vec![
                start(),
                StreamEvent::ReasoningDelta { text: "hmm".into() },
                StreamEvent::ReasoningSignature { signature: "s".into() },
                StreamEvent::TextDelta { text: "ok".into() },
                StreamEvent::Finish { reason: FinishReason::Stop },
            ]
        };
        let shown = run(Framing::Sse, events(), true);
        assert!(shown.contains(r#"{"text":"hmm","thought":true}"#), "{shown}");
        assert!(shown.contains(r#"{"text":"ok","thoughtSignature":"s"}"#), "{shown}");
        let hidden = run(Framing::Sse, events(), false);
        assert!(!hidden.contains("hmm"), "{hidden}");
    }

    #[test]
    fn bad_arguments_and_mid_stream_errors() {
        let mut enc = StreamEncoder::new(Framing::Sse, "m", "openai", false);
        let mut out = Vec::new();
        enc.encode(StreamEvent::ToolCallStart { index: 0, id: "a".into(), name: "f".into() }, &mut out).unwrap();
        enc.encode(StreamEvent::ToolCallArgs { index: 0, arguments: "{oops".into() }, &mut out).unwrap();
        let e = enc.finish(&mut out).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_GATEWAY);
        assert!(e.message.starts_with("openai: the arguments of the call to f"), "{}", e.message);
        let frame = enc.error(&e);
        let text = String::from_utf8_lossy(&frame);
        assert!(text.starts_with("data: {\"error\":{\"code\":502,") && text.ends_with("\r\n\r\n"), "{text}");
    }

    #[test]
    fn whole_response_places_signature_and_splits_usage() {
        let r = ChatResponse {
            id: "r".into(),
            model: "m".into(),
            created: 0,
            message: AssistantMessage {
                content: None,
                tool_calls: vec![ToolCall { id: "c".into(), name: "f".into(), arguments: r#"{"b":1,"a":2}"#.into() }],
                reasoning: vec![ReasoningBlock::Thinking { text: String::new(), signature: Some("sig".into()) }],
                refusal: None,
            },
            finish_reason: FinishReason::ToolCalls,
            usage: Usage { input_tokens: 30, output_tokens: 10, reasoning_tokens: 5, ..Usage::default() },
        };
        let body = String::from_utf8(response_body(&r, false, "p").unwrap()).unwrap();
        assert_eq!(
            body,
            concat!(
                r#"{"candidates":[{"content":{"parts":[{"functionCall":{"id":"c","name":"f","args":{"b":1,"a":2}},"thoughtSignature":"sig"}],"role":"model"},"finishReason":"STOP","index":0}],"#,
                r#""usageMetadata":{"promptTokenCount":30,"candidatesTokenCount":5,"totalTokenCount":40,"thoughtsTokenCount":5},"modelVersion":"m","responseId":"r"}"#
            )
        );
    }
}
