//! Renders canonical responses and stream events as OpenAI `chat.completion` objects and
//! `chat.completion.chunk` SSE frames.

use bytes::Bytes;
use fungible_types::{ChatResponse, StreamEvent, Usage};
use serde::Serialize;

use crate::error::ApiError;

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: WireUsage,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: OutMessage<'a>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct OutMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<OutToolCall<'a>>,
    /// Visible reasoning, under the name DeepSeek and vLLM use.
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<String>,
}

#[derive(Serialize)]
struct OutToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: OutFunction<'a>,
}

#[derive(Serialize)]
struct OutFunction<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
pub(crate) struct WireUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetails,
    completion_tokens_details: CompletionDetails,
}

#[derive(Serialize)]
struct PromptDetails {
    cached_tokens: u64,
    /// Not in OpenAI's schema: tokens written to a prompt cache (Anthropic bills them).
    #[serde(skip_serializing_if = "is_zero")]
    cache_write_tokens: u64,
}

#[derive(Serialize)]
struct CompletionDetails {
    reasoning_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl From<Usage> for WireUsage {
    fn from(u: Usage) -> WireUsage {
        WireUsage {
            prompt_tokens: u.input_tokens,
            completion_tokens: u.output_tokens,
            total_tokens: u.total_tokens(),
            prompt_tokens_details: PromptDetails { cached_tokens: u.cache_read_tokens, cache_write_tokens: u.cache_write_tokens },
            completion_tokens_details: CompletionDetails { reasoning_tokens: u.reasoning_tokens },
        }
    }
}

pub fn completion_body(r: &ChatResponse) -> Vec<u8> {
    let m = &r.message;
    let body = Completion {
        id: &r.id,
        object: "chat.completion",
        created: r.created,
        model: &r.model,
        choices: [Choice {
            index: 0,
            message: OutMessage {
                role: "assistant",
                content: m.content.as_deref(),
                refusal: m.refusal.as_deref(),
                tool_calls: m
                    .tool_calls
                    .iter()
                    .map(|c| OutToolCall {
                        id: &c.id,
                        kind: "function",
                        function: OutFunction { name: &c.name, arguments: &c.arguments },
                    })
                    .collect(),
                reasoning_content: m.reasoning_text(),
            },
            logprobs: None,
            finish_reason: r.finish_reason.as_openai_str(),
        }],
        usage: r.usage.into(),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

// ---- streaming ----

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<WireUsage>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[DeltaToolCall<'a>; 1]>,
}

#[derive(Serialize)]
struct DeltaToolCall<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: DeltaFunction<'a>,
}

#[derive(Serialize)]
struct DeltaFunction<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

/// Turns canonical stream events into SSE frames, one event at a time.
pub struct ChunkEncoder {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    role_sent: bool,
    usage: Option<Usage>,
}

impl ChunkEncoder {
    /// `model` is used until the upstream reports its own.
    pub fn new(model: &str, include_usage: bool) -> ChunkEncoder {
        ChunkEncoder {
            id: String::new(),
            model: model.to_owned(),
            created: 0,
            include_usage,
            role_sent: false,
            usage: None,
        }
    }

    /// The frames for one event (none, or one, or two when the role chunk goes first).
    pub fn encode(&mut self, event: StreamEvent, out: &mut Vec<Bytes>) {
        let delta = match &event {
            StreamEvent::Start { id, model, created } => {
                self.id.clone_from(id);
                if !model.is_empty() {
                    self.model.clone_from(model);
                }
                self.created = *created;
                self.ensure_role(out);
                return;
            }
            StreamEvent::Usage(usage) => {
                self.usage = Some(*usage);
                return;
            }
            StreamEvent::ReasoningSignature { .. } | StreamEvent::RedactedReasoning { .. } => return,
            StreamEvent::TextDelta { text } => Delta { content: Some(text), ..Delta::default() },
            StreamEvent::ReasoningDelta { text } => Delta { reasoning_content: Some(text), ..Delta::default() },
            StreamEvent::Refusal { text } => Delta { refusal: Some(text), ..Delta::default() },
            StreamEvent::ToolCallStart { index, id, name } => Delta {
                tool_calls: Some([DeltaToolCall {
                    index: *index,
                    id: Some(id),
                    kind: Some("function"),
                    function: DeltaFunction { name: Some(name), arguments: "" },
                }]),
                ..Delta::default()
            },
            StreamEvent::ToolCallArgs { index, arguments } => Delta {
                tool_calls: Some([DeltaToolCall {
                    index: *index,
                    id: None,
                    kind: None,
                    function: DeltaFunction { name: None, arguments },
                }]),
                ..Delta::default()
            },
            StreamEvent::Finish { reason } => {
                self.ensure_role(out);
                let choice = ChunkChoice {
                    index: 0,
                    delta: Delta::default(),
                    logprobs: None,
                    finish_reason: Some(reason.as_openai_str()),
                };
                out.push(self.frame(&[choice], None));
                return;
            }
        };
        self.ensure_role(out);
        let choice = ChunkChoice { index: 0, delta, logprobs: None, finish_reason: None };
        out.push(self.frame(&[choice], None));
    }

    /// The closing frames of a stream that ended normally: usage (if asked for), `[DONE]`.
    pub fn finish(&mut self, out: &mut Vec<Bytes>) {
        if self.include_usage {
            let usage = self.usage.unwrap_or_default();
            out.push(self.frame(&[], Some(usage.into())));
        }
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    }

    /// The frame for an error after the stream started: OpenAI's own mid-stream error shape,
    /// which the official SDKs raise as an exception.
    pub fn error(&self, error: &ApiError) -> Bytes {
        let body = error.openai_body();
        let mut frame = Vec::with_capacity(body.len() + 8);
        frame.extend_from_slice(b"data: ");
        frame.extend_from_slice(&body);
        frame.extend_from_slice(b"\n\n");
        Bytes::from(frame)
    }

    fn ensure_role(&mut self, out: &mut Vec<Bytes>) {
        if self.role_sent {
            return;
        }
        self.role_sent = true;
        let delta = Delta { role: Some("assistant"), content: Some(""), ..Delta::default() };
        let choice = ChunkChoice { index: 0, delta, logprobs: None, finish_reason: None };
        out.push(self.frame(&[choice], None));
    }

    fn frame(&self, choices: &[ChunkChoice<'_>], usage: Option<WireUsage>) -> Bytes {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage,
        };
        // Serialised straight into the frame: one buffer per chunk, no copy.
        let mut frame = Vec::with_capacity(256);
        frame.extend_from_slice(b"data: ");
        if serde_json::to_writer(&mut frame, &chunk).is_err() {
            frame.truncate(6);
            frame.extend_from_slice(b"{}");
        }
        frame.extend_from_slice(b"\n\n");
        Bytes::from(frame)
    }
}

impl crate::streaming::FrameEncoder for ChunkEncoder {
    fn encode(&mut self, event: StreamEvent, out: &mut Vec<Bytes>) -> Result<(), ApiError> {
        ChunkEncoder::encode(self, event, out);
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Bytes>) -> Result<(), ApiError> {
        ChunkEncoder::finish(self, out);
        Ok(())
    }

    fn fail(&mut self, error: &ApiError, out: &mut Vec<Bytes>) {
        out.push(self.error(error));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fungible_types::FinishReason;

    fn frames(events: Vec<StreamEvent>, include_usage: bool) -> Vec<String> {
        let mut enc = ChunkEncoder::new("m", include_usage);
        let mut out = Vec::new();
        for e in events {
            enc.encode(e, &mut out);
        }
        enc.finish(&mut out);
        out.into_iter().map(|b| String::from_utf8(b.to_vec()).unwrap()).collect()
    }

    #[test]
    fn tool_call_deltas_carry_index_id_and_name_once() {
        let out = frames(
            vec![
                StreamEvent::Start { id: "x".into(), model: "m".into(), created: 1 },
                StreamEvent::ToolCallStart { index: 1, id: "c1".into(), name: "f".into() },
                StreamEvent::ToolCallArgs { index: 1, arguments: "{\"a\":".into() },
                StreamEvent::Finish { reason: FinishReason::ToolCalls },
            ],
            false,
        );
        assert_eq!(out.len(), 5);
        assert!(out[1].contains(r#""tool_calls":[{"index":1,"id":"c1","type":"function","function":{"name":"f","arguments":""}}]"#), "{}", out[1]);
        assert!(out[2].contains(r#""tool_calls":[{"index":1,"function":{"arguments":"{\"a\":"}}]"#), "{}", out[2]);
        assert!(out[3].contains(r#""finish_reason":"tool_calls""#));
        assert_eq!(out[4], "data: [DONE]\n\n");
    }

    #[test]
    fn usage_chunk_comes_last_with_empty_choices() {
        let usage = Usage { input_tokens: 3, output_tokens: 2, ..Usage::default() };
        let out = frames(
            vec![StreamEvent::Usage(usage), StreamEvent::TextDelta { text: "hi".into() }, StreamEvent::Finish { reason: FinishReason::Stop }],
            true,
        );
        let usage_frame = &out[out.len() - 2];
        assert!(usage_frame.contains(r#""choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5"#), "{usage_frame}");
    }
}
