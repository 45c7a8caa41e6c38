//! Renders canonical responses as Anthropic `message` objects, and canonical stream events as
//! the Messages API's SSE sequence: `message_start`, `ping`, per content block
//! `content_block_start` / `content_block_delta` / `content_block_stop`, then `message_delta`
//! (stop reason, usage) and `message_stop`; `error` when the upstream fails mid-way.
//!
//! Usage goes back in Anthropic's meaning: `input_tokens` excludes the prompt tokens read from
//! or written to the cache, which are reported apart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use fungible_types::{ChatResponse, FinishReason, ReasoningBlock, StreamEvent, Usage};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::ApiError;

/// Token counts as Anthropic reports them, in its field order.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WireUsage {
    input_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    output_tokens: u64,
}

impl From<Usage> for WireUsage {
    fn from(u: Usage) -> WireUsage {
        WireUsage {
            input_tokens: u.input_tokens.saturating_sub(u.cache_read_tokens).saturating_sub(u.cache_write_tokens),
            cache_creation_input_tokens: u.cache_write_tokens,
            cache_read_input_tokens: u.cache_read_tokens,
            output_tokens: u.output_tokens,
        }
    }
}

/// A content block of a response (and the `content_block` of `content_block_start`).
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutBlock<'a> {
    Thinking { thinking: &'a str, signature: &'a str },
    RedactedThinking { data: &'a str },
    Text { text: &'a str },
    ToolUse { id: &'a str, name: &'a str, input: &'a RawValue },
}

/// The `delta` of a `content_block_delta`.
#[derive(Serialize)]
#[serde(tag = "type")]
enum OutDelta<'a> {
    #[serde(rename = "text_delta")]
    Text { text: &'a str },
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: &'a str },
    #[serde(rename = "signature_delta")]
    Signature { signature: &'a str },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: &'a str },
}

#[derive(Serialize)]
struct MessageStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: OutMessage<'a>,
}

#[derive(Serialize)]
struct BlockStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    content_block: OutBlock<'a>,
}

#[derive(Serialize)]
struct BlockDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    delta: OutDelta<'a>,
}

#[derive(Serialize)]
struct BlockStop {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
}

#[derive(Serialize)]
struct MessageDelta {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: StopDelta,
    usage: WireUsage,
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: Option<&'static str>,
}

/// `{}`, for a `tool_use` block whose input streams in deltas.
fn empty_input() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).unwrap_or_default()
}

/// A `message`, in the field order Anthropic sends (`model` first).
#[derive(Serialize)]
struct OutMessage<'a> {
    model: &'a str,
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    content: Vec<OutBlock<'a>>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<&'static str>,
    usage: WireUsage,
}

/// Anthropic's `stop_reason` for a canonical finish. A stop on a stop sequence is reported
/// as `end_turn`: the canonical reason does not tell the two apart.
pub(crate) fn stop_reason(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
    }
}

/// The id as a `msg_` id: Anthropic's own ids are kept, other vendors' get the prefix.
pub(crate) fn message_id(id: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    if id.starts_with("msg_") {
        return id.to_owned();
    }
    if id.is_empty() {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        return format!("msg_{nanos:x}{n:x}");
    }
    format!("msg_{id}")
}

/// Tool-call arguments as the object `tool_use.input` is, byte for byte as the model wrote
/// them. Arguments that are not a JSON object (a call cut off by `max_tokens`) cannot be shown
/// as one and become `{}`.
fn tool_input(arguments: &str) -> Box<RawValue> {
    match RawValue::from_string(arguments.trim().to_owned()) {
        Ok(raw) if raw.get().starts_with('{') => raw,
        _ => {
            if !arguments.trim().is_empty() {
                tracing::debug!("tool call arguments are not a JSON object; sending input {{}}");
            }
            empty_input()
        }
    }
}

pub fn message_body(r: &ChatResponse, requested_model: &str) -> Vec<u8> {
    let m = &r.message;
    let inputs: Vec<Box<RawValue>> = m.tool_calls.iter().map(|c| tool_input(&c.arguments)).collect();
    let mut content = Vec::new();
    for block in &m.reasoning {
        content.push(match block {
            ReasoningBlock::Thinking { text, signature } => {
                OutBlock::Thinking { thinking: text, signature: signature.as_deref().unwrap_or_default() }
            }
            ReasoningBlock::Redacted { data } => OutBlock::RedactedThinking { data },
        });
    }
    if let Some(text) = m.content.as_deref().filter(|t| !t.is_empty()) {
        content.push(OutBlock::Text { text });
    }
    if let Some(refusal) = m.refusal.as_deref().filter(|t| !t.is_empty()) {
        content.push(OutBlock::Text { text: refusal });
    }
    for (call, input) in m.tool_calls.iter().zip(&inputs) {
        content.push(OutBlock::ToolUse { id: &call.id, name: &call.name, input });
    }
    let reason = if m.refusal.is_some() { "refusal" } else { stop_reason(&r.finish_reason) };
    let id = message_id(&r.id);
    let body = OutMessage {
        id: &id,
        kind: "message",
        role: "assistant",
        model: if r.model.is_empty() { requested_model } else { &r.model },
        content,
        stop_reason: Some(reason),
        stop_sequence: None,
        usage: r.usage.into(),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

// ---- streaming ----

/// The content block that is open (started, not yet stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    /// A thinking block; `signed` once its signature came, which closes it for more text.
    Thinking { signed: bool },
    /// The `tool_use` block of canonical tool call `call`.
    Tool { call: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Started {
    No,
    /// `Start` came; `message_start` waits for the usage that may follow it.
    Pending,
    Sent,
}

/// Turns canonical stream events into Messages API SSE events, one event at a time.
///
/// `message_start` is held until the first content (so the upstream's prompt usage, which
/// may follow its start, is in it); `message_delta` is held until the upstream stream ends,
/// because some vendors (OpenAI) report usage after the finish reason.
pub struct EventEncoder {
    id: String,
    model: String,
    usage: Usage,
    started: Started,
    open: Option<Open>,
    /// Index the next content block gets.
    next_index: u32,
    /// Canonical tool-call index -> its content block index.
    tool_blocks: HashMap<u32, u32>,
    finish: Option<FinishReason>,
    refused: bool,
}

impl EventEncoder {
    /// `model` is reported until the upstream names its own.
    pub fn new(model: &str) -> EventEncoder {
        EventEncoder {
            id: String::new(),
            model: model.to_owned(),
            usage: Usage::default(),
            started: Started::No,
            open: None,
            next_index: 0,
            tool_blocks: HashMap::new(),
            finish: None,
            refused: false,
        }
    }

    /// The SSE events for one canonical event (often none, or a few).
    pub fn encode(&mut self, event: StreamEvent, out: &mut Vec<Bytes>) {
        match event {
            StreamEvent::Start { id, model, .. } => {
                if self.started == Started::No {
                    self.id = id;
                    if !model.is_empty() {
                        self.model = model;
                    }
                    self.started = Started::Pending;
                }
            }
            StreamEvent::Usage(usage) => self.usage = usage,
            StreamEvent::TextDelta { text } => self.text(&text, out),
            StreamEvent::Refusal { text } => {
                self.refused = true;
                self.text(&text, out);
            }
            StreamEvent::ReasoningDelta { text } => {
                if text.is_empty() {
                    return;
                }
                if self.open != Some(Open::Thinking { signed: false }) {
                    self.start_block(OutBlock::Thinking { thinking: "", signature: "" }, Open::Thinking { signed: false }, out);
                }
                self.delta(OutDelta::Thinking { thinking: &text }, out);
            }
            StreamEvent::ReasoningSignature { signature } => {
                if self.open != Some(Open::Thinking { signed: false }) {
                    self.start_block(OutBlock::Thinking { thinking: "", signature: "" }, Open::Thinking { signed: false }, out);
                }
                self.delta(OutDelta::Signature { signature: &signature }, out);
                self.open = Some(Open::Thinking { signed: true });
            }
            StreamEvent::RedactedReasoning { data } => {
                self.start_block(OutBlock::RedactedThinking { data: &data }, Open::Text, out);
                self.close_block(out);
            }
            StreamEvent::ToolCallStart { index, id, name } => {
                let input = empty_input();
                let block = OutBlock::ToolUse { id: &id, name: &name, input: &input };
                self.start_block(block, Open::Tool { call: index }, out);
                self.tool_blocks.insert(index, self.next_index - 1);
            }
            StreamEvent::ToolCallArgs { index, arguments } => {
                if arguments.is_empty() {
                    return;
                }
                let Some(&block) = self.tool_blocks.get(&index) else {
                    tracing::debug!(index, "dropping arguments of a tool call that never started");
                    return;
                };
                if self.open != Some(Open::Tool { call: index }) {
                    // Anthropic never interleaves blocks; an upstream that does gets its late
                    // arguments on the call's own (closed) block, which SDKs accumulate by index.
                    tracing::debug!(index, "tool call arguments after the call's block closed");
                }
                self.started(out);
                let delta = OutDelta::InputJson { partial_json: &arguments };
                out.push(event_frame("content_block_delta", &BlockDelta { kind: "content_block_delta", index: block, delta }));
            }
            StreamEvent::Finish { reason } => {
                self.started(out);
                self.close_block(out);
                self.finish = Some(reason);
            }
        }
    }

    /// The closing events of a stream that ended normally: `message_delta`, `message_stop`.
    pub fn finish(&mut self, out: &mut Vec<Bytes>) {
        self.started(out);
        self.close_block(out);
        let reason = match &self.finish {
            _ if self.refused => "refusal",
            Some(reason) => stop_reason(reason),
            None if !self.tool_blocks.is_empty() => "tool_use",
            None => "end_turn",
        };
        let delta = MessageDelta {
            kind: "message_delta",
            delta: StopDelta { stop_reason: reason, stop_sequence: None },
            usage: self.usage.into(),
        };
        out.push(event_frame("message_delta", &delta));
        out.push(Bytes::from_static(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    }

    /// The event for an error after the stream started: Anthropic's own `error` event, after
    /// which the stream ends without `message_stop`.
    pub fn error(&self, error: &ApiError) -> Bytes {
        let mut frame = b"event: error\ndata: ".to_vec();
        frame.extend_from_slice(&error.anthropic_body());
        frame.extend_from_slice(b"\n\n");
        Bytes::from(frame)
    }

    fn text(&mut self, text: &str, out: &mut Vec<Bytes>) {
        if text.is_empty() {
            return;
        }
        if self.open != Some(Open::Text) {
            self.start_block(OutBlock::Text { text: "" }, Open::Text, out);
        }
        self.delta(OutDelta::Text { text }, out);
    }

    /// `message_start` and a `ping`, once, before anything else.
    fn started(&mut self, out: &mut Vec<Bytes>) {
        if self.started == Started::Sent {
            return;
        }
        self.started = Started::Sent;
        self.id = message_id(&self.id);
        let message = OutMessage {
            id: &self.id,
            kind: "message",
            role: "assistant",
            model: &self.model,
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            usage: self.usage.into(),
        };
        out.push(event_frame("message_start", &MessageStart { kind: "message_start", message }));
        out.push(Bytes::from_static(b"event: ping\ndata: {\"type\": \"ping\"}\n\n"));
    }

    /// Closes the open block and starts `block` as the next index.
    fn start_block(&mut self, block: OutBlock<'_>, open: Open, out: &mut Vec<Bytes>) {
        self.started(out);
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some(open);
        out.push(event_frame("content_block_start", &BlockStart { kind: "content_block_start", index, content_block: block }));
    }

    fn delta(&mut self, delta: OutDelta<'_>, out: &mut Vec<Bytes>) {
        let index = self.next_index.saturating_sub(1);
        out.push(event_frame("content_block_delta", &BlockDelta { kind: "content_block_delta", index, delta }));
    }

    fn close_block(&mut self, out: &mut Vec<Bytes>) {
        if self.open.take().is_some() {
            let index = self.next_index.saturating_sub(1);
            out.push(event_frame("content_block_stop", &BlockStop { kind: "content_block_stop", index }));
        }
    }
}

fn event_frame(name: &str, data: &impl Serialize) -> Bytes {
    let json = serde_json::to_vec(data).unwrap_or_default();
    let mut frame = Vec::with_capacity(json.len() + name.len() + 16);
    frame.extend_from_slice(b"event: ");
    frame.extend_from_slice(name.as_bytes());
    frame.extend_from_slice(b"\ndata: ");
    frame.extend_from_slice(&json);
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

impl crate::streaming::FrameEncoder for EventEncoder {
    fn encode(&mut self, event: StreamEvent, out: &mut Vec<Bytes>) -> Result<(), ApiError> {
        EventEncoder::encode(self, event, out);
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Bytes>) -> Result<(), ApiError> {
        EventEncoder::finish(self, out);
        Ok(())
    }

    fn fail(&mut self, error: &ApiError, out: &mut Vec<Bytes>) {
        out.push(self.error(error));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fungible_types::{AssistantMessage, ToolCall};
    use serde_json::{Value, json};

    fn events(input: Vec<StreamEvent>) -> Vec<(String, Value)> {
        let mut enc = EventEncoder::new("m");
        let mut out = Vec::new();
        for e in input {
            enc.encode(e, &mut out);
        }
        enc.finish(&mut out);
        out.iter()
            .map(|frame| {
                let text = std::str::from_utf8(frame).expect("utf-8");
                let (head, data) = text.trim_end().split_once('\n').expect("two lines");
                let name = head.strip_prefix("event: ").expect("event line").to_owned();
                let data = serde_json::from_str(data.strip_prefix("data: ").expect("data line")).expect("JSON");
                (name, data)
            })
            .collect()
    }

    fn names(events: &[(String, Value)]) -> Vec<&str> {
        events.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn usage_excludes_cache_reads_and_writes_from_input() {
        let u = Usage { input_tokens: 100, output_tokens: 7, cache_read_tokens: 60, cache_write_tokens: 30, reasoning_tokens: 2 };
        assert_eq!(
            serde_json::to_value(WireUsage::from(u)).expect("serialises"),
            json!({"input_tokens": 10, "cache_creation_input_tokens": 30, "cache_read_input_tokens": 60, "output_tokens": 7})
        );
    }

    #[test]
    fn thinking_text_and_tools_get_their_own_blocks_in_order() {
        let out = events(vec![
            StreamEvent::Start { id: "chatcmpl-1".into(), model: "up".into(), created: 1 },
            StreamEvent::Usage(Usage { input_tokens: 9, ..Usage::default() }),
            StreamEvent::ReasoningDelta { text: "hm".into() },
            StreamEvent::ReasoningSignature { signature: "sig".into() },
            StreamEvent::TextDelta { text: "Hi".into() },
            StreamEvent::ToolCallStart { index: 0, id: "c0".into(), name: "f".into() },
            StreamEvent::ToolCallArgs { index: 0, arguments: "{\"a\":".into() },
            StreamEvent::ToolCallArgs { index: 0, arguments: "1}".into() },
            StreamEvent::ToolCallStart { index: 1, id: "c1".into(), name: "g".into() },
            StreamEvent::ToolCallArgs { index: 1, arguments: "{}".into() },
            StreamEvent::Finish { reason: FinishReason::ToolCalls },
            StreamEvent::Usage(Usage { input_tokens: 9, output_tokens: 4, ..Usage::default() }),
        ]);
        assert_eq!(
            names(&out),
            [
                "message_start", "ping",
                "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
                "content_block_start", "content_block_delta", "content_block_stop",
                "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
                "content_block_start", "content_block_delta", "content_block_stop",
                "message_delta", "message_stop",
            ]
        );
        let start = &out[0].1["message"];
        assert_eq!(start["id"], "msg_chatcmpl-1");
        assert_eq!(start["model"], "up");
        assert_eq!(start["usage"]["input_tokens"], 9, "usage that follows Start is in message_start");
        assert_eq!(out[2].1["content_block"], json!({"type": "thinking", "thinking": "", "signature": ""}));
        assert_eq!(out[4].1["delta"], json!({"type": "signature_delta", "signature": "sig"}));
        assert_eq!(out[6].1["index"], 1);
        assert_eq!(out[9].1["content_block"], json!({"type": "tool_use", "id": "c0", "name": "f", "input": {}}));
        assert_eq!(out[13].1["index"], 3);
        assert_eq!(out[14].1["delta"], json!({"type": "input_json_delta", "partial_json": "{}"}));
        assert_eq!(out[16].1["delta"], json!({"stop_reason": "tool_use", "stop_sequence": null}));
        assert_eq!(out[16].1["usage"]["output_tokens"], 4, "usage after the finish is reported");
    }

    #[test]
    fn an_empty_stream_still_starts_and_ends() {
        let out = events(vec![StreamEvent::Finish { reason: FinishReason::Length }]);
        assert_eq!(names(&out), ["message_start", "ping", "message_delta", "message_stop"]);
        assert!(out[0].1["message"]["id"].as_str().is_some_and(|id| id.starts_with("msg_")));
        assert_eq!(out[2].1["delta"]["stop_reason"], "max_tokens");
    }

    #[test]
    fn whole_message_has_anthropic_fields_in_order() {
        let r = ChatResponse {
            id: "msg_1".into(),
            model: "claude".into(),
            created: 0,
            message: AssistantMessage {
                content: Some("Hi".into()),
                tool_calls: vec![ToolCall { id: "t".into(), name: "f".into(), arguments: "{\"x\":1}".into() }],
                reasoning: vec![ReasoningBlock::Thinking { text: "hm".into(), signature: Some("s".into()) }],
                refusal: None,
            },
            finish_reason: FinishReason::ToolCalls,
            usage: Usage { input_tokens: 20, output_tokens: 5, cache_read_tokens: 8, ..Usage::default() },
        };
        let body = String::from_utf8(message_body(&r, "x")).expect("utf-8");
        assert_eq!(
            body,
            concat!(
                r#"{"model":"claude","id":"msg_1","type":"message","role":"assistant","content":["#,
                r#"{"type":"thinking","thinking":"hm","signature":"s"},{"type":"text","text":"Hi"},"#,
                r#"{"type":"tool_use","id":"t","name":"f","input":{"x":1}}],"stop_reason":"tool_use","stop_sequence":null,"#,
                r#""usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":8,"output_tokens":5}}"#
            )
        );
    }
}
