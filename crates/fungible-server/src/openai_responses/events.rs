//! The Responses API's stream: canonical stream events become the API's typed SSE events
//! (`response.created` ... `response.completed`), one at a time. The encoder opens and
//! closes the output items (`crate::openai_responses::response`) as the canonical events
//! arrive, numbers every event from 0 with `sequence_number`, and ends with the whole
//! response object.

use bytes::Bytes;
use fungible_types::{FinishReason, StreamEvent, Usage};
use serde::Serialize;

use super::response::{
    End, Item, Part, Rendered, ResponseHead, Status, WireItem, WirePart, WireResponse, failure_code,
    incomplete_reason, message_of, new_id, wire_response,
};
use crate::error::ApiError;

/// Every event's envelope: `type` and `sequence_number` first, then the event's fields.
#[derive(Serialize)]
struct Envelope<'a, B: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    sequence_number: u64,
    #[serde(flatten)]
    body: B,
}

/// The fields of one event; each event sets the ones it has, in OpenAI's order.
#[derive(Serialize, Default)]
struct Fields<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<WireResponse<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    item_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary_index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    item: Option<WireItem<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    part: Option<WirePart<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logprobs: Option<[(); 0]>,
}

/// The `error` event's fields.
#[derive(Serialize)]
struct ErrorFields<'a> {
    code: &'static str,
    message: &'a str,
    param: Option<&'a str>,
}

fn frame<B: Serialize>(kind: &str, sequence_number: u64, body: B) -> Bytes {
    let json = serde_json::to_vec(&Envelope { kind, sequence_number, body }).unwrap_or_default();
    let mut frame = Vec::with_capacity(json.len() + kind.len() + 16);
    frame.extend_from_slice(b"event: ");
    frame.extend_from_slice(kind.as_bytes());
    frame.extend_from_slice(b"\ndata: ");
    frame.extend_from_slice(&json);
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

/// The item events are being added to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    /// A reasoning item; `summary` when its summary part has been added.
    Reasoning {
        index: usize,
        summary: bool,
    },
    /// The assistant message; its last part is the open one.
    Message(usize),
    FunctionCall(usize),
}

/// Turns canonical stream events into Responses API events, one event at a time.
pub struct EventEncoder {
    head: ResponseHead,
    sequence: u64,
    started: bool,
    items: Vec<Item>,
    open: Open,
    /// Canonical tool call index -> output index.
    calls: Vec<(u32, usize)>,
    usage: Usage,
    finish: Option<FinishReason>,
}

impl EventEncoder {
    /// `head.model` is used until the upstream reports its own.
    pub fn new(head: ResponseHead) -> EventEncoder {
        EventEncoder {
            head,
            sequence: 0,
            started: false,
            items: Vec::new(),
            open: Open::None,
            calls: Vec::new(),
            usage: Usage::default(),
            finish: None,
        }
    }

    fn next(&mut self) -> u64 {
        let n = self.sequence;
        self.sequence += 1;
        n
    }

    /// `response.created` and `response.in_progress`, once.
    fn ensure_started(&mut self, out: &mut Vec<Bytes>) {
        if self.started {
            return;
        }
        self.started = true;
        for kind in ["response.created", "response.in_progress"] {
            let n = self.next();
            let response = wire_response(&self.head, &self.items, End::InProgress);
            out.push(frame(kind, n, Fields { response: Some(response), ..Fields::default() }));
        }
    }

    /// The frames for one event.
    pub fn encode(&mut self, event: StreamEvent, out: &mut Vec<Bytes>) {
        if let StreamEvent::Start { model, .. } = &event
            && !self.started
            && !model.is_empty()
        {
            self.head.model.clone_from(model);
        }
        self.ensure_started(out);
        match event {
            StreamEvent::Start { .. } => {}
            StreamEvent::Usage(usage) => self.usage = usage,
            StreamEvent::Finish { reason } => self.finish = Some(reason),
            StreamEvent::TextDelta { text } => self.part_delta(Part::Text(String::new()), &text, out),
            StreamEvent::Refusal { text } => self.part_delta(Part::Refusal(String::new()), &text, out),
            StreamEvent::ReasoningDelta { text } => self.reasoning_delta(&text, out),
            StreamEvent::ReasoningSignature { signature } => {
                if let Open::Reasoning { index, .. } = self.open {
                    if let Some(Item::Reasoning { signature: slot, .. }) = self.items.get_mut(index) {
                        *slot = Some(signature);
                    }
                    // The signature closes the thinking block it signs.
                    self.close_open(Status::Completed, out);
                } else {
                    self.whole_reasoning(Some(signature), None, out);
                }
            }
            StreamEvent::RedactedReasoning { data } => self.whole_reasoning(None, Some(data), out),
            StreamEvent::ToolCallStart { index, id, name } => {
                self.close_open(Status::Completed, out);
                let output_index = self.items.len();
                self.items.push(Item::FunctionCall {
                    id: new_id("fc_"),
                    call_id: id,
                    name,
                    arguments: String::new(),
                    status: Status::InProgress,
                });
                self.calls.push((index, output_index));
                self.open = Open::FunctionCall(output_index);
                self.item_added(output_index, out);
            }
            StreamEvent::ToolCallArgs { index, arguments } => {
                let Some(&(_, output_index)) = self.calls.iter().find(|(i, _)| *i == index) else {
                    tracing::debug!(index, "tool call arguments for a call that never started; dropped");
                    return;
                };
                // Arguments for a call already closed (vendors interleaving parallel calls,
                // which none is known to do) still go out as deltas; the final response
                // carries them whole.
                if let Some(Item::FunctionCall { arguments: all, .. }) = self.items.get_mut(output_index) {
                    all.push_str(&arguments);
                }
                let n = self.next();
                let item_id = self.items[output_index].id();
                out.push(frame(
                    "response.function_call_arguments.delta",
                    n,
                    Fields {
                        item_id: Some(item_id),
                        output_index: Some(output_index),
                        delta: Some(&arguments),
                        ..Fields::default()
                    },
                ));
            }
        }
    }

    fn item_added(&mut self, output_index: usize, out: &mut Vec<Bytes>) {
        let n = self.next();
        let item = self.items[output_index].wire();
        out.push(frame(
            "response.output_item.added",
            n,
            Fields { output_index: Some(output_index), item: Some(item), ..Fields::default() },
        ));
    }

    fn item_done(&mut self, output_index: usize, out: &mut Vec<Bytes>) {
        let n = self.next();
        let item = self.items[output_index].wire();
        out.push(frame(
            "response.output_item.done",
            n,
            Fields { output_index: Some(output_index), item: Some(item), ..Fields::default() },
        ));
    }

    /// A reasoning item that arrives whole: a signature with no thinking text before it, or
    /// redacted reasoning.
    fn whole_reasoning(&mut self, signature: Option<String>, redacted: Option<String>, out: &mut Vec<Bytes>) {
        self.close_open(Status::Completed, out);
        let output_index = self.items.len();
        self.items.push(Item::Reasoning { id: new_id("rs_"), text: String::new(), signature, redacted });
        self.item_added(output_index, out);
        self.item_done(output_index, out);
    }

    fn reasoning_delta(&mut self, text: &str, out: &mut Vec<Bytes>) {
        let (index, summary) = match self.open {
            Open::Reasoning { index, summary } => (index, summary),
            _ => {
                self.close_open(Status::Completed, out);
                let index = self.items.len();
                self.items.push(Item::Reasoning {
                    id: new_id("rs_"),
                    text: String::new(),
                    signature: None,
                    redacted: None,
                });
                self.item_added(index, out);
                (index, false)
            }
        };
        if !summary {
            let n = self.next();
            out.push(frame(
                "response.reasoning_summary_part.added",
                n,
                Fields {
                    item_id: Some(self.items[index].id()),
                    output_index: Some(index),
                    summary_index: Some(0),
                    part: Some(WirePart::SummaryText { text: "" }),
                    ..Fields::default()
                },
            ));
        }
        self.open = Open::Reasoning { index, summary: true };
        if let Some(Item::Reasoning { text: all, .. }) = self.items.get_mut(index) {
            all.push_str(text);
        }
        let n = self.next();
        out.push(frame(
            "response.reasoning_summary_text.delta",
            n,
            Fields {
                item_id: Some(self.items[index].id()),
                output_index: Some(index),
                summary_index: Some(0),
                delta: Some(text),
                ..Fields::default()
            },
        ));
    }

    /// A piece of text or refusal for the assistant message, opening the message and the
    /// part as needed.
    fn part_delta(&mut self, kind: Part, delta: &str, out: &mut Vec<Bytes>) {
        let index = match self.open {
            Open::Message(index) => index,
            _ => {
                self.close_open(Status::Completed, out);
                let index = self.items.len();
                self.items.push(Item::Message { id: new_id("msg_"), parts: Vec::new(), status: Status::InProgress });
                self.item_added(index, out);
                self.open = Open::Message(index);
                index
            }
        };
        let same_kind = match &self.items[index] {
            Item::Message { parts, .. } => {
                parts.last().is_some_and(|p| std::mem::discriminant(p) == std::mem::discriminant(&kind))
            }
            _ => false,
        };
        if !same_kind {
            self.close_part(index, out);
            if let Some(Item::Message { parts, .. }) = self.items.get_mut(index) {
                parts.push(kind.empty_like());
            }
            let n = self.next();
            let (item_id, content_index, part) = self.part_view(index);
            out.push(frame(
                "response.content_part.added",
                n,
                Fields {
                    item_id: Some(item_id),
                    output_index: Some(index),
                    content_index: Some(content_index),
                    part: Some(part),
                    ..Fields::default()
                },
            ));
        }
        let is_text = if let Some(Item::Message { parts, .. }) = self.items.get_mut(index) {
            match parts.last_mut() {
                Some(Part::Text(t)) => {
                    t.push_str(delta);
                    true
                }
                Some(Part::Refusal(r)) => {
                    r.push_str(delta);
                    false
                }
                None => return,
            }
        } else {
            return;
        };
        let n = self.next();
        let (item_id, content_index, _) = self.part_view(index);
        let fields = Fields {
            item_id: Some(item_id),
            output_index: Some(index),
            content_index: Some(content_index),
            delta: Some(delta),
            logprobs: is_text.then_some([]),
            ..Fields::default()
        };
        let kind = if is_text { "response.output_text.delta" } else { "response.refusal.delta" };
        out.push(frame(kind, n, fields));
    }

    /// The message's id, its last part's index, and that part.
    fn part_view(&self, index: usize) -> (&str, usize, WirePart<'_>) {
        match &self.items[index] {
            Item::Message { id, parts, .. } => {
                let last = parts.len().saturating_sub(1);
                let part = parts.last().map(Part::wire).unwrap_or(WirePart::OutputText {
                    annotations: [],
                    logprobs: [],
                    text: "",
                });
                (id, last, part)
            }
            other => (other.id(), 0, WirePart::OutputText { annotations: [], logprobs: [], text: "" }),
        }
    }

    /// The `.done` events of the message's last part, if it has one.
    fn close_part(&mut self, index: usize, out: &mut Vec<Bytes>) {
        let Some(Item::Message { parts, .. }) = self.items.get(index) else { return };
        let Some(last) = parts.last() else { return };
        let is_text = matches!(last, Part::Text(_));
        let n = self.next();
        let (item_id, content_index, part) = self.part_view(index);
        let mut fields = Fields {
            item_id: Some(item_id),
            output_index: Some(index),
            content_index: Some(content_index),
            ..Fields::default()
        };
        let kind = match &part {
            WirePart::OutputText { text, .. } => {
                fields.text = Some(text);
                fields.logprobs = Some([]);
                "response.output_text.done"
            }
            WirePart::Refusal { refusal } => {
                fields.refusal = Some(refusal);
                "response.refusal.done"
            }
            WirePart::SummaryText { .. } => return,
        };
        debug_assert_eq!(is_text, kind == "response.output_text.done");
        out.push(frame(kind, n, fields));
        let n = self.next();
        let (item_id, content_index, part) = self.part_view(index);
        out.push(frame(
            "response.content_part.done",
            n,
            Fields {
                item_id: Some(item_id),
                output_index: Some(index),
                content_index: Some(content_index),
                part: Some(part),
                ..Fields::default()
            },
        ));
    }

    /// Closes the open item with its `.done` events; it ends with `status`.
    fn close_open(&mut self, status: Status, out: &mut Vec<Bytes>) {
        let open = std::mem::replace(&mut self.open, Open::None);
        match open {
            Open::None => {}
            Open::Reasoning { index, summary } => {
                if summary {
                    let text = match &self.items[index] {
                        Item::Reasoning { text, .. } => text.as_str(),
                        _ => "",
                    };
                    let item_id = self.items[index].id();
                    let n = self.sequence;
                    out.push(frame(
                        "response.reasoning_summary_text.done",
                        n,
                        Fields {
                            item_id: Some(item_id),
                            output_index: Some(index),
                            summary_index: Some(0),
                            text: Some(text),
                            ..Fields::default()
                        },
                    ));
                    out.push(frame(
                        "response.reasoning_summary_part.done",
                        n + 1,
                        Fields {
                            item_id: Some(item_id),
                            output_index: Some(index),
                            summary_index: Some(0),
                            part: Some(WirePart::SummaryText { text }),
                            ..Fields::default()
                        },
                    ));
                    self.sequence += 2;
                }
                self.item_done(index, out);
            }
            Open::Message(index) => {
                self.close_part(index, out);
                self.items[index].set_status(status);
                self.item_done(index, out);
            }
            Open::FunctionCall(index) => {
                self.items[index].set_status(status);
                let n = self.next();
                let (item_id, arguments) = match &self.items[index] {
                    Item::FunctionCall { id, arguments, .. } => (id.as_str(), arguments.as_str()),
                    other => (other.id(), ""),
                };
                out.push(frame(
                    "response.function_call_arguments.done",
                    n,
                    Fields {
                        item_id: Some(item_id),
                        output_index: Some(index),
                        arguments: Some(arguments),
                        ..Fields::default()
                    },
                ));
                self.item_done(index, out);
            }
        }
    }

    /// The closing events of a stream that ended normally, ending with `response.completed`
    /// (or `response.incomplete`); returns the final response object for the store.
    pub fn finish(&mut self, out: &mut Vec<Bytes>) -> Rendered {
        self.ensure_started(out);
        let reason = self.finish.clone().unwrap_or(FinishReason::Stop);
        let incomplete = incomplete_reason(&reason).is_some();
        self.close_open(if incomplete { Status::Incomplete } else { Status::Completed }, out);
        let n = self.next();
        let response = wire_response(&self.head, &self.items, End::Finished(&reason, self.usage));
        let body = Bytes::from(serde_json::to_vec(&response).unwrap_or_default());
        let kind = if incomplete { "response.incomplete" } else { "response.completed" };
        out.push(frame(kind, n, Fields { response: Some(response), ..Fields::default() }));
        Rendered { body, message: message_of(&self.items) }
    }

    /// The events for an error after the stream started: OpenAI's `error` event, then
    /// `response.failed` with the items so far. Nothing may follow.
    pub fn fail(&mut self, error: &ApiError, out: &mut Vec<Bytes>) {
        self.ensure_started(out);
        let n = self.next();
        out.push(frame("error", n, ErrorFields { code: failure_code(error), message: &error.message, param: None }));
        if let Open::Message(index) | Open::FunctionCall(index) = self.open {
            self.items[index].set_status(Status::Incomplete);
        }
        let n = self.next();
        let response = wire_response(&self.head, &self.items, End::Failed(error));
        out.push(frame("response.failed", n, Fields { response: Some(response), ..Fields::default() }));
    }

    /// The response id.
    pub fn id(&self) -> &str {
        &self.head.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fungible_types::ReasoningBlock;
    use serde_json::{Value, json};

    fn head() -> ResponseHead {
        let echo = super::super::request::parse(br#"{"model":"m","input":"x"}"#).expect("test").echo;
        ResponseHead { id: "resp_1".into(), created_at: 1, model: "m".into(), echo }
    }

    /// (event name, data) of each frame; checks the name matches `type` and the numbering.
    fn events(frames: &[Bytes]) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let text = std::str::from_utf8(f).expect("test");
            let (head, rest) = text.strip_prefix("event: ").expect("test").split_once("\ndata: ").expect("test");
            let data: Value = serde_json::from_str(rest.strip_suffix("\n\n").expect("test")).expect("test");
            assert_eq!(data["type"], head);
            assert_eq!(data["sequence_number"], i as u64, "{text}");
            out.push((head.to_owned(), data));
        }
        out
    }

    fn run(stream: Vec<StreamEvent>) -> (Vec<(String, Value)>, Rendered) {
        let mut enc = EventEncoder::new(head());
        let mut out = Vec::new();
        for e in stream {
            enc.encode(e, &mut out);
        }
        let rendered = enc.finish(&mut out);
        (events(&out), rendered)
    }

    #[test]
    fn reasoning_then_text_then_calls_open_and_close_items_in_order() {
        let (events, rendered) = run(vec![
            StreamEvent::Start { id: "x".into(), model: "up-model".into(), created: 1 },
            StreamEvent::ReasoningDelta { text: "hm".into() },
            StreamEvent::ReasoningSignature { signature: "sig".into() },
            StreamEvent::TextDelta { text: "Hi".into() },
            StreamEvent::ToolCallStart { index: 0, id: "c0".into(), name: "f".into() },
            StreamEvent::ToolCallArgs { index: 0, arguments: "{}".into() },
            StreamEvent::Finish { reason: FinishReason::ToolCalls },
        ]);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        assert_eq!(events[0].1["response"]["model"], "up-model");
        assert_eq!(events[7].1["item"]["encrypted_content"], "sig");
        assert_eq!(events[13].1["output_index"], 1);
        assert_eq!(events[14].1["item"]["status"], "in_progress");
        let done = &events[18].1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["output"][2]["arguments"], "{}");
        assert_eq!(rendered.message.content.as_deref(), Some("Hi"));
        assert_eq!(
            rendered.message.reasoning,
            vec![ReasoningBlock::Thinking { text: "hm".into(), signature: Some("sig".into()) }]
        );
        let body: Value = serde_json::from_slice(&rendered.body).expect("test");
        assert_eq!(&body, done);
    }

    #[test]
    fn length_finish_makes_the_response_and_the_open_item_incomplete() {
        let (events, _) = run(vec![
            StreamEvent::TextDelta { text: "cut".into() },
            StreamEvent::Finish { reason: FinishReason::Length },
        ]);
        let (name, last) = events.last().expect("test");
        assert_eq!(name, "response.incomplete");
        assert_eq!(last["response"]["incomplete_details"], json!({"reason": "max_output_tokens"}));
        assert_eq!(last["response"]["output"][0]["status"], "incomplete");
    }

    #[test]
    fn a_refusal_after_text_is_a_second_part() {
        let (events, rendered) = run(vec![
            StreamEvent::TextDelta { text: "a".into() },
            StreamEvent::Refusal { text: "no".into() },
            StreamEvent::Finish { reason: FinishReason::ContentFilter },
        ]);
        let refusal_delta = events.iter().find(|(n, _)| n == "response.refusal.delta").expect("test");
        assert_eq!(refusal_delta.1["content_index"], 1);
        assert_eq!(rendered.message.refusal.as_deref(), Some("no"));
    }

    #[test]
    fn failure_ends_with_error_then_response_failed() {
        let mut enc = EventEncoder::new(head());
        let mut out = Vec::new();
        enc.encode(StreamEvent::TextDelta { text: "a".into() }, &mut out);
        let err = ApiError::from_provider(&fungible_types::ProviderError::new(
            fungible_types::ErrorKind::Connection,
            "p",
            "reset",
        ));
        enc.fail(&err, &mut out);
        let events = events(&out);
        let n = events.len();
        assert_eq!(events[n - 2].0, "error");
        assert_eq!(events[n - 2].1["code"], "server_error");
        assert_eq!(events[n - 1].0, "response.failed");
        assert_eq!(events[n - 1].1["response"]["status"], "failed");
        assert_eq!(events[n - 1].1["response"]["error"]["message"], "p: reset");
    }

    #[test]
    fn ids_are_prefixed_and_unique() {
        let a = new_id("resp_");
        assert!(a.starts_with("resp_") && a.len() == 53, "{a}");
        assert_ne!(a, new_id("resp_"));
    }
}
