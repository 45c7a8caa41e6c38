//! Renders canonical responses as OpenAI Responses API `response` objects (the stream's
//! events are `super::events`, built on the items here).
//!
//! A response's output is a list of items: `reasoning` (visible thinking as a summary, a
//! vendor's signature or encrypted reasoning as `encrypted_content`), one assistant
//! `message` (`output_text` and `refusal` parts) and one `function_call` per tool call.

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use fungible_types::{
    AssistantMessage, ChatResponse, FinishReason, ReasoningBlock, ToolCall, ToolChoice, Usage,
};
use serde::Serialize;
use serde_json::{Map, Value};

use super::request::{Echo, EchoFormat, EchoTool, REDACTED_PREFIX};
use crate::error::ApiError;

/// A fresh id with OpenAI's prefix (`resp_`, `msg_`, `fc_`, `rs_`) and 48 hex digits that
/// are hard to guess (SipHash with the process's random keys over a counter and the clock),
/// since anyone who knows a response id can read it back.
pub fn new_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let mut id = String::with_capacity(prefix.len() + 48);
    id.push_str(prefix);
    for salt in 0..3u64 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u64(nanos);
        h.write_u64(salt);
        let _ = write!(id, "{:016x}", h.finish());
    }
    id
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What every rendering of one response shares: its id, time, model and the request echo.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub id: String,
    pub created_at: u64,
    pub model: String,
    pub echo: Echo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    InProgress,
    Completed,
    Incomplete,
}

impl Status {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Incomplete => "incomplete",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Part {
    Text(String),
    Refusal(String),
}

/// One output item, as it is built.
#[derive(Debug, Clone)]
pub(super) enum Item {
    Reasoning { id: String, text: String, signature: Option<String>, redacted: Option<String> },
    Message { id: String, parts: Vec<Part>, status: Status },
    FunctionCall { id: String, call_id: String, name: String, arguments: String, status: Status },
}

impl Item {
    pub(super) fn id(&self) -> &str {
        match self {
            Item::Reasoning { id, .. } | Item::Message { id, .. } | Item::FunctionCall { id, .. } => id,
        }
    }

    pub(super) fn set_status(&mut self, new: Status) {
        match self {
            Item::Message { status, .. } | Item::FunctionCall { status, .. } => *status = new,
            Item::Reasoning { .. } => {}
        }
    }

    pub(super) fn wire(&self) -> WireItem<'_> {
        match self {
            Item::Reasoning { id, text, signature, redacted } => WireItem::Reasoning {
                id,
                kind: "reasoning",
                summary: if text.is_empty() { Vec::new() } else { vec![WirePart::SummaryText { text }] },
                encrypted_content: match (signature, redacted) {
                    (_, Some(data)) => Some(Cow::Owned(format!("{REDACTED_PREFIX}{data}"))),
                    (Some(signature), None) => Some(Cow::Borrowed(signature)),
                    (None, None) => None,
                },
            },
            Item::Message { id, parts, status } => WireItem::Message {
                id,
                kind: "message",
                status: status.as_str(),
                content: parts.iter().map(Part::wire).collect(),
                role: "assistant",
            },
            Item::FunctionCall { id, call_id, name, arguments, status } => {
                WireItem::FunctionCall { id, kind: "function_call", status: status.as_str(), arguments, call_id, name }
            }
        }
    }
}

impl Part {
    pub(super) fn wire(&self) -> WirePart<'_> {
        match self {
            Part::Text(text) => WirePart::OutputText { annotations: [], logprobs: [], text },
            Part::Refusal(refusal) => WirePart::Refusal { refusal },
        }
    }

    pub(super) fn empty_like(&self) -> Part {
        match self {
            Part::Text(_) => Part::Text(String::new()),
            Part::Refusal(_) => Part::Refusal(String::new()),
        }
    }
}

// ---- wire shapes ----

#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum WireItem<'a> {
    Reasoning {
        id: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
        summary: Vec<WirePart<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        encrypted_content: Option<Cow<'a, str>>,
    },
    Message {
        id: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
        status: &'static str,
        content: Vec<WirePart<'a>>,
        role: &'static str,
    },
    FunctionCall {
        id: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
        status: &'static str,
        arguments: &'a str,
        call_id: &'a str,
        name: &'a str,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum WirePart<'a> {
    OutputText { annotations: [(); 0], logprobs: [(); 0], text: &'a str },
    Refusal { refusal: &'a str },
    SummaryText { text: &'a str },
}

#[derive(Serialize)]
pub(super) struct WireResponse<'a> {
    id: &'a str,
    object: &'static str,
    created_at: u64,
    status: &'static str,
    background: bool,
    completed_at: Option<u64>,
    error: Option<WireError<'a>>,
    incomplete_details: Option<Incomplete>,
    instructions: Option<&'a str>,
    max_output_tokens: Option<u32>,
    max_tool_calls: Option<u64>,
    model: &'a str,
    output: Vec<WireItem<'a>>,
    parallel_tool_calls: bool,
    previous_response_id: Option<&'a str>,
    prompt_cache_key: Option<&'a str>,
    reasoning: WireReasoning<'a>,
    safety_identifier: Option<&'a str>,
    service_tier: &'a str,
    store: bool,
    temperature: f64,
    text: WireText<'a>,
    tool_choice: WireToolChoice<'a>,
    tools: &'a [EchoTool],
    top_logprobs: u32,
    top_p: f64,
    truncation: &'a str,
    usage: Option<WireUsage>,
    user: Option<&'a str>,
    metadata: &'a Map<String, Value>,
}

#[derive(Serialize)]
pub(super) struct WireError<'a> {
    code: &'static str,
    message: &'a str,
}

#[derive(Serialize)]
pub(super) struct Incomplete {
    reason: &'static str,
}

#[derive(Serialize)]
pub(super) struct WireReasoning<'a> {
    effort: Option<&'a str>,
    summary: Option<&'a str>,
}

#[derive(Serialize)]
pub(super) struct WireText<'a> {
    format: &'a EchoFormat,
    verbosity: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum WireToolChoice<'a> {
    Mode(&'static str),
    Function {
        #[serde(rename = "type")]
        kind: &'static str,
        name: &'a str,
    },
}

#[derive(Serialize)]
pub(super) struct WireUsage {
    input_tokens: u64,
    input_tokens_details: InputDetails,
    output_tokens: u64,
    output_tokens_details: OutputDetails,
    total_tokens: u64,
}

#[derive(Serialize)]
pub(super) struct InputDetails {
    cached_tokens: u64,
    cache_write_tokens: u64,
}

#[derive(Serialize)]
pub(super) struct OutputDetails {
    reasoning_tokens: u64,
}

impl From<Usage> for WireUsage {
    fn from(u: Usage) -> WireUsage {
        WireUsage {
            input_tokens: u.input_tokens,
            input_tokens_details: InputDetails {
                cached_tokens: u.cache_read_tokens,
                cache_write_tokens: u.cache_write_tokens,
            },
            output_tokens: u.output_tokens,
            output_tokens_details: OutputDetails { reasoning_tokens: u.reasoning_tokens },
            total_tokens: u.total_tokens(),
        }
    }
}

/// How a response ended, for its `status`.
pub(super) enum End<'a> {
    InProgress,
    Finished(&'a FinishReason, Usage),
    Failed(&'a ApiError),
}

/// `incomplete_details.reason` when `reason` ended the response early.
pub(super) fn incomplete_reason(reason: &FinishReason) -> Option<&'static str> {
    match reason {
        FinishReason::Stop | FinishReason::ToolCalls => None,
        FinishReason::Length => Some("max_output_tokens"),
        FinishReason::ContentFilter => Some("content_filter"),
    }
}

/// The `code` of a failed response's `error`, from the gateway error's status.
pub(super) fn failure_code(error: &ApiError) -> &'static str {
    match error.status.as_u16() {
        429 => "rate_limit_exceeded",
        400 | 413 | 422 => "invalid_prompt",
        _ => "server_error",
    }
}

pub(super) fn wire_response<'a>(head: &'a ResponseHead, items: &'a [Item], end: End<'a>) -> WireResponse<'a> {
    let (status, completed_at, error, incomplete_details, usage) = match end {
        End::InProgress => ("in_progress", None, None, None, None),
        End::Finished(reason, usage) => match incomplete_reason(reason) {
            None => ("completed", Some(now_unix()), None, None, Some(usage.into())),
            Some(reason) => ("incomplete", None, None, Some(Incomplete { reason }), Some(usage.into())),
        },
        End::Failed(e) => ("failed", None, Some(WireError { code: failure_code(e), message: &e.message }), None, None),
    };
    let e = &head.echo;
    WireResponse {
        id: &head.id,
        object: "response",
        created_at: head.created_at,
        status,
        background: false,
        completed_at,
        error,
        incomplete_details,
        instructions: e.instructions.as_deref(),
        max_output_tokens: e.max_output_tokens,
        max_tool_calls: e.max_tool_calls,
        model: &head.model,
        output: items.iter().map(Item::wire).collect(),
        parallel_tool_calls: e.parallel_tool_calls,
        previous_response_id: e.previous_response_id.as_deref(),
        prompt_cache_key: e.prompt_cache_key.as_deref(),
        reasoning: WireReasoning { effort: e.reasoning_effort.as_deref(), summary: e.reasoning_summary.as_deref() },
        safety_identifier: e.safety_identifier.as_deref(),
        service_tier: &e.service_tier,
        store: e.store,
        temperature: e.temperature,
        text: WireText { format: &e.format, verbosity: &e.verbosity },
        tool_choice: match &e.tool_choice {
            None | Some(ToolChoice::Auto) => WireToolChoice::Mode("auto"),
            Some(ToolChoice::None) => WireToolChoice::Mode("none"),
            Some(ToolChoice::Required) => WireToolChoice::Mode("required"),
            Some(ToolChoice::Tool(name)) => WireToolChoice::Function { kind: "function", name },
        },
        tools: &e.tools,
        top_logprobs: e.top_logprobs,
        top_p: e.top_p,
        truncation: &e.truncation,
        usage,
        user: e.user.as_deref(),
        metadata: &e.metadata,
    }
}

/// The output items for a whole assistant message, in OpenAI's order: reasoning, the
/// message, the function calls.
pub(super) fn items_for(message: &AssistantMessage, incomplete: bool) -> Vec<Item> {
    let mut items = Vec::new();
    for block in &message.reasoning {
        items.push(match block {
            ReasoningBlock::Thinking { text, signature } => {
                Item::Reasoning { id: new_id("rs_"), text: text.clone(), signature: signature.clone(), redacted: None }
            }
            ReasoningBlock::Redacted { data } => Item::Reasoning {
                id: new_id("rs_"),
                text: String::new(),
                signature: None,
                redacted: Some(data.clone()),
            },
        });
    }
    let mut parts = Vec::new();
    if let Some(text) = &message.content {
        parts.push(Part::Text(text.clone()));
    }
    if let Some(refusal) = &message.refusal {
        parts.push(Part::Refusal(refusal.clone()));
    }
    if !parts.is_empty() {
        items.push(Item::Message { id: new_id("msg_"), parts, status: Status::Completed });
    }
    for call in &message.tool_calls {
        items.push(Item::FunctionCall {
            id: new_id("fc_"),
            call_id: call.id.clone(),
            name: call.name.clone(),
            arguments: call.arguments.clone(),
            status: Status::Completed,
        });
    }
    if let Some(last) = items.last_mut().filter(|_| incomplete) {
        last.set_status(Status::Incomplete);
    }
    items
}

/// The canonical assistant message the items stand for (what a continuation sends back).
pub(super) fn message_of(items: &[Item]) -> AssistantMessage {
    let mut message = AssistantMessage::default();
    for item in items {
        match item {
            Item::Reasoning { text, signature, redacted, .. } => message.reasoning.push(match redacted {
                Some(data) => ReasoningBlock::Redacted { data: data.clone() },
                None => ReasoningBlock::Thinking { text: text.clone(), signature: signature.clone() },
            }),
            Item::Message { parts, .. } => {
                for part in parts {
                    let (slot, text) = match part {
                        Part::Text(t) => (&mut message.content, t),
                        Part::Refusal(r) => (&mut message.refusal, r),
                    };
                    slot.get_or_insert_with(String::new).push_str(text);
                }
            }
            Item::FunctionCall { call_id, name, arguments, .. } => message.tool_calls.push(ToolCall {
                id: call_id.clone(),
                name: name.clone(),
                arguments: arguments.clone(),
            }),
        }
    }
    message
}

/// A rendered response: the JSON body, and the assistant turn it holds for the store.
pub struct Rendered {
    pub body: Bytes,
    pub message: AssistantMessage,
}

/// The response object for a whole (non-streamed) answer.
pub fn response_body(head: &ResponseHead, r: &ChatResponse) -> Rendered {
    let incomplete = incomplete_reason(&r.finish_reason).is_some();
    let items = items_for(&r.message, incomplete);
    let body =
        serde_json::to_vec(&wire_response(head, &items, End::Finished(&r.finish_reason, r.usage))).unwrap_or_default();
    Rendered { body: Bytes::from(body), message: r.message.clone() }
}
