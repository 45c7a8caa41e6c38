//! What one record may hold (`[store] max_record_bytes`): [`Bodies::capped`].
//!
//! The recorder's queue is bounded in bytes, so without a cap one client's huge requests
//! would fill it and push out everyone else's records. A capped record keeps the canonical
//! request's shape (every field, the messages in order) and cuts its long strings instead:
//! the longest texts first, each to a common length chosen so the whole fits, followed by
//! `…[truncated N bytes]`; a long JSON value (a tool's schema, a pass-through field) becomes
//! that marker alone. When the messages themselves are too many to fit (each costs its
//! structure even with empty texts), the first and the last are kept and the middle ones
//! omitted. The record is then marked: its `truncated` flag (a column), and a
//! `fungible_truncated` member in the stored request JSON saying what was left out.
//!
//! Capping borrows the request and copies only what it keeps, so recording a 30 MB request
//! costs the request path a copy of at most `max_record_bytes`, not of 30 MB.

use fungible_types::{
    AssistantMessage, ChatRequest, ChatResponse, ContentPart, ImageSource, JsonSchemaFormat, Message, ReasoningBlock,
    ResponseFormat, Tool, ToolCall,
};
use serde_json::Value;

use crate::record::{Bodies, estimate, message_structure_bytes, value_bytes};

/// The default `[store] max_record_bytes`.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 256 << 10;

/// What a capped record left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Truncation {
    /// Messages omitted from the middle of the conversation.
    pub omitted_messages: usize,
    /// Bytes cut from strings and JSON values (and the omitted messages' text).
    pub cut_bytes: usize,
}

impl Truncation {
    /// Both truncations of one record (its request capped first, then with its response).
    pub fn merge(a: Option<Truncation>, b: Option<Truncation>) -> Option<Truncation> {
        match (a, b) {
            (Some(a), Some(b)) => Some(Truncation {
                omitted_messages: a.omitted_messages + b.omitted_messages,
                cut_bytes: a.cut_bytes + b.cut_bytes,
            }),
            (a, b) => a.or(b),
        }
    }
}

/// The bytes the marker after a cut string takes, at most (`…[truncated 4294967296 bytes]`).
const MARKER_BYTES: usize = 32;

fn marker(cut: usize) -> String {
    format!("…[truncated {cut} bytes]")
}

impl Bodies {
    /// `request` and `response` as a record keeps them: whole when their estimated size
    /// ([`Bodies::estimated_bytes`]) is at most `max_bytes`, else cut to fit (see the module
    /// docs) and marked with a [`Truncation`].
    pub fn capped(request: &ChatRequest, response: Option<&ChatResponse>, max_bytes: usize) -> Bodies {
        if estimate(request, response) <= max_bytes {
            return Bodies { request: request.clone(), response: response.cloned(), truncation: None };
        }
        // The messages' structure takes at most half: the rest is for their text.
        let (head, tail) = kept_messages(&request.messages, max_bytes / 2);
        let kept = Kept { head, tail, len: request.messages.len() };
        let mut measure = Measure::default();
        let (skeleton, skeleton_response) = copy(request, response, kept, &mut measure);
        let fixed = estimate(&skeleton, skeleton_response.as_ref());
        let threshold = threshold(&measure.sizes, max_bytes.saturating_sub(fixed));
        let mut cut = Cut { threshold, cut_bytes: 0 };
        let (request_kept, response_kept) = copy(request, response, kept, &mut cut);
        let omitted: usize = request.messages[head..request.messages.len() - tail]
            .iter()
            .map(|m| estimate_message(m))
            .sum();
        Bodies {
            request: request_kept,
            response: response_kept,
            truncation: Some(Truncation {
                omitted_messages: request.messages.len() - head - tail,
                cut_bytes: cut.cut_bytes + omitted,
            }),
        }
    }
}

fn estimate_message(m: &Message) -> usize {
    crate::record::messages_bytes(std::slice::from_ref(m))
}

/// How many messages to keep from the start and from the end so that their structure fits
/// `budget`: all when it does, else alternately one from each end (the system prompt and
/// the first turn, the latest turns).
fn kept_messages(messages: &[Message], budget: usize) -> (usize, usize) {
    let total: usize = messages.iter().map(message_structure_bytes).sum();
    if total <= budget {
        return (messages.len(), 0);
    }
    let (mut head, mut tail, mut used) = (0, 0, 0);
    while head + tail < messages.len() {
        let next = if head <= tail { head } else { messages.len() - 1 - tail };
        let cost = message_structure_bytes(&messages[next]);
        if used + cost > budget {
            break;
        }
        used += cost;
        if head <= tail {
            head += 1;
        } else {
            tail += 1;
        }
    }
    (head, tail)
}

/// The longest length every cut string may keep so that the strings, each cut to it plus
/// its marker, take at most `room` bytes.
fn threshold(sizes: &[usize], room: usize) -> usize {
    let cost = |t: usize| -> usize { sizes.iter().map(|&s| if s <= t { s } else { t + MARKER_BYTES }).sum() };
    let (mut low, mut high) = (0, sizes.iter().copied().max().unwrap_or(0));
    while low < high {
        let mid = low + (high - low).div_ceil(2);
        if cost(mid) <= room {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    low
}

/// Which messages a capped copy keeps: the first `head` and the last `tail` of `len`.
#[derive(Debug, Clone, Copy)]
struct Kept {
    head: usize,
    tail: usize,
    len: usize,
}

impl Kept {
    fn keeps(&self, i: usize) -> bool {
        i < self.head || i >= self.len - self.tail
    }
}

/// What [`copy`] does with each string and JSON value that may be cut.
trait Cutter {
    fn text(&mut self, text: &str) -> String;
    fn value(&mut self, value: &Value) -> Value;
}

/// Notes each size and copies nothing: the copy is the record's fixed structure.
#[derive(Default)]
struct Measure {
    sizes: Vec<usize>,
}

impl Cutter for Measure {
    fn text(&mut self, text: &str) -> String {
        self.sizes.push(text.len());
        String::new()
    }

    fn value(&mut self, value: &Value) -> Value {
        self.sizes.push(value_bytes(value));
        Value::Null
    }
}

/// Copies each string up to `threshold` bytes, marking the cut.
struct Cut {
    threshold: usize,
    cut_bytes: usize,
}

impl Cutter for Cut {
    fn text(&mut self, text: &str) -> String {
        if text.len() <= self.threshold {
            return text.to_owned();
        }
        let mut end = self.threshold;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let cut = text.len() - end;
        self.cut_bytes += cut;
        let mut out = String::with_capacity(end + MARKER_BYTES);
        out.push_str(&text[..end]);
        out.push_str(&marker(cut));
        out
    }

    fn value(&mut self, value: &Value) -> Value {
        let size = value_bytes(value);
        if size <= self.threshold {
            return value.clone();
        }
        self.cut_bytes += size;
        Value::String(marker(size))
    }
}

/// `request` and `response` with the messages `kept` keeps and every long string through
/// `cutter`. Names, ids, the model and the metadata (bounded by the tag limits) are kept
/// whole.
fn copy(
    request: &ChatRequest,
    response: Option<&ChatResponse>,
    kept: Kept,
    cutter: &mut impl Cutter,
) -> (ChatRequest, Option<ChatResponse>) {
    let messages = request
        .messages
        .iter()
        .enumerate()
        .filter(|(i, _)| kept.keeps(*i))
        .map(|(_, m)| Message {
            role: m.role,
            content: m.content.iter().map(|p| copy_part(p, cutter)).collect(),
            name: m.name.clone(),
            tool_calls: m.tool_calls.iter().map(|c| copy_call(c, cutter)).collect(),
            tool_call_id: m.tool_call_id.clone(),
            reasoning: m.reasoning.iter().map(|r| copy_reasoning(r, cutter)).collect(),
            is_error: m.is_error,
            cache_control: m.cache_control.clone(),
        })
        .collect();
    let tools = request
        .tools
        .iter()
        .map(|t| Tool {
            name: t.name.clone(),
            description: t.description.as_deref().map(|d| cutter.text(d)),
            parameters: cutter.value(&t.parameters),
            strict: t.strict,
            cache_control: t.cache_control.clone(),
        })
        .collect();
    let response_format = request.response_format.as_ref().map(|f| match f {
        ResponseFormat::JsonSchema(s) => ResponseFormat::JsonSchema(JsonSchemaFormat {
            name: s.name.clone(),
            description: s.description.as_deref().map(|d| cutter.text(d)),
            schema: cutter.value(&s.schema),
            strict: s.strict,
        }),
        other => other.clone(),
    });
    let extra_body = request.extra_body.iter().map(|(k, v)| (k.clone(), cutter.value(v))).collect();
    let request = ChatRequest {
        model: request.model.clone(),
        messages,
        tools,
        tool_choice: request.tool_choice.clone(),
        parallel_tool_calls: request.parallel_tool_calls,
        response_format,
        params: request.params.clone(),
        reasoning: request.reasoning.clone(),
        stream: request.stream,
        stream_include_usage: request.stream_include_usage,
        user: request.user.clone(),
        metadata: request.metadata.clone(),
        openai: request.openai.clone(),
        extra_body,
        extra_body_vendor: request.extra_body_vendor,
    };
    let response = response.map(|r| ChatResponse {
        id: r.id.clone(),
        model: r.model.clone(),
        created: r.created,
        message: AssistantMessage {
            content: r.message.content.as_deref().map(|c| cutter.text(c)),
            tool_calls: r.message.tool_calls.iter().map(|c| copy_call(c, cutter)).collect(),
            reasoning: r.message.reasoning.iter().map(|b| copy_reasoning(b, cutter)).collect(),
            refusal: r.message.refusal.as_deref().map(|t| cutter.text(t)),
        },
        finish_reason: r.finish_reason.clone(),
        usage: r.usage,
    });
    (request, response)
}

fn copy_part(part: &ContentPart, cutter: &mut impl Cutter) -> ContentPart {
    match part {
        ContentPart::Text { text } => ContentPart::Text { text: cutter.text(text) },
        ContentPart::Image { source, detail } => ContentPart::Image {
            source: match source {
                ImageSource::Url(url) => ImageSource::Url(cutter.text(url)),
                ImageSource::Base64 { media_type, data } => {
                    ImageSource::Base64 { media_type: media_type.clone(), data: cutter.text(data) }
                }
            },
            detail: detail.clone(),
        },
    }
}

fn copy_call(call: &ToolCall, cutter: &mut impl Cutter) -> ToolCall {
    ToolCall { id: call.id.clone(), name: call.name.clone(), arguments: cutter.text(&call.arguments) }
}

fn copy_reasoning(block: &ReasoningBlock, cutter: &mut impl Cutter) -> ReasoningBlock {
    match block {
        ReasoningBlock::Thinking { text, signature } => ReasoningBlock::Thinking {
            text: cutter.text(text),
            signature: signature.as_deref().map(|s| cutter.text(s)),
        },
        ReasoningBlock::Redacted { data } => ReasoningBlock::Redacted { data: cutter.text(data) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fungible_types::{FinishReason, Role, Usage};

    fn request(messages: Vec<Message>) -> ChatRequest {
        ChatRequest { model: "a/b".into(), messages, ..ChatRequest::default() }
    }

    fn text_of(m: &Message) -> &str {
        match &m.content[0] {
            ContentPart::Text { text } => text,
            ContentPart::Image { .. } => panic!("an image"),
        }
    }

    #[test]
    fn a_record_under_the_cap_is_kept_whole() {
        let req = request(vec![Message::text(Role::User, "hello")]);
        let bodies = Bodies::capped(&req, None, 4096);
        assert_eq!(bodies.request, req);
        assert_eq!(bodies.truncation, None);
    }

    #[test]
    fn long_texts_are_cut_longest_first_and_marked() {
        let big = "é".repeat(1_000_000);
        let req = request(vec![
            Message::text(Role::System, "be brief"),
            Message::text(Role::User, big.clone()),
            Message::text(Role::User, "x".repeat(20_000)),
        ]);
        let response = ChatResponse {
            id: "r".into(),
            model: "b".into(),
            created: 0,
            message: AssistantMessage { content: Some("y".repeat(500_000)), ..AssistantMessage::default() },
            finish_reason: FinishReason::Stop,
            usage: Usage::default(),
        };
        let max = 256 << 10;
        let bodies = Bodies::capped(&req, Some(&response), max);
        assert!(bodies.estimated_bytes() <= max, "{} > {max}", bodies.estimated_bytes());
        let t = bodies.truncation.expect("truncated");
        assert_eq!(t.omitted_messages, 0);
        assert_eq!(bodies.request.messages.len(), 3);
        // The short text is whole; the long ones keep a common prefix (on a character
        // boundary) and say how much was cut.
        assert_eq!(text_of(&bodies.request.messages[0]), "be brief");
        let cut = text_of(&bodies.request.messages[1]);
        let (kept, mark) = cut.split_once('…').expect("a marker");
        assert!(big.starts_with(kept) && kept.len() > 50_000, "{}", kept.len());
        assert_eq!(mark, format!("[truncated {} bytes]", big.len() - kept.len()));
        let answer = bodies.response.as_ref().unwrap().message.content.as_deref().unwrap();
        assert!(answer.ends_with(" bytes]") && answer.len() < 200_000, "{}", answer.len());
        assert!(t.cut_bytes > 1_500_000, "{t:?}");
    }

    #[test]
    fn too_many_messages_keep_both_ends() {
        let messages: Vec<Message> = (0..10_000).map(|i| Message::text(Role::User, i.to_string())).collect();
        let req = request(messages);
        let max = 64 << 10;
        let bodies = Bodies::capped(&req, None, max);
        assert!(bodies.estimated_bytes() <= max, "{} > {max}", bodies.estimated_bytes());
        let kept = &bodies.request.messages;
        let t = bodies.truncation.expect("truncated");
        assert_eq!(kept.len() + t.omitted_messages, 10_000);
        assert!(kept.len() > 50, "{}", kept.len());
        assert_eq!(text_of(&kept[0]), "0");
        assert_eq!(text_of(kept.last().unwrap()), "9999");
    }

    #[test]
    fn a_huge_schema_becomes_a_marker() {
        let mut req = request(vec![Message::text(Role::User, "hi")]);
        let properties: serde_json::Map<String, Value> =
            (0..20_000).map(|i| (format!("p{i}"), serde_json::json!({"type": "string"}))).collect();
        req.tools.push(Tool::new("f", None, serde_json::json!({"type": "object", "properties": properties})));
        let bodies = Bodies::capped(&req, None, 16 << 10);
        assert!(bodies.tools_marked(), "{:?}", bodies.request.tools[0].parameters);
        assert_eq!(text_of(&bodies.request.messages[0]), "hi");
    }

    impl Bodies {
        fn tools_marked(&self) -> bool {
            self.request.tools[0].parameters.as_str().is_some_and(|s| s.starts_with("…[truncated "))
        }
    }
}
