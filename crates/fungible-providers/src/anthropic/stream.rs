//! Decodes the Messages API event stream: `message_start`, then per content block
//! `content_block_start` / `_delta` / `_stop`, then `message_delta` (stop reason, usage) and
//! `message_stop`; `ping` and `error` may come at any point.

use std::collections::HashMap;

use eventsource_stream::Event;
use fungible_types::{ErrorKind, ProviderError, StreamEvent};

use super::types::{Delta, ResponseBlock, WireError, WireEvent, WireUsage};
use super::{arguments_text, convert_usage, finish_reason};
use crate::sse::{SseDecoder, parse_data};

pub(super) struct EventDecoder {
    provider: String,
    /// Reported in `Start` if the stream names no model.
    model: String,
    started: bool,
    finished: bool,
    done: bool,
    usage_sent: bool,
    /// `message_start` carried prompt counts not yet passed on: they go out as a `Usage` just
    /// before the next content or end event (so a stream that fails right after its start
    /// yields only `Start`).
    start_usage_pending: bool,
    /// Counts so far: `message_start`'s, updated by `message_delta`.
    usage: WireUsage,
    /// Content block index -> what the block is.
    blocks: HashMap<u64, BlockKind>,
    tool_calls: u32,
}

enum BlockKind {
    /// A `tool_use` block: our tool-call index, and whether any argument text was sent.
    Tool {
        index: u32,
        has_args: bool,
    },
    Other,
}

impl EventDecoder {
    pub(super) fn new(provider: &str, model: &str) -> EventDecoder {
        EventDecoder {
            provider: provider.to_owned(),
            model: model.to_owned(),
            started: false,
            finished: false,
            done: false,
            usage_sent: false,
            start_usage_pending: false,
            usage: WireUsage::default(),
            blocks: HashMap::new(),
            tool_calls: 0,
        }
    }

    /// `Start` comes first even if the vendor skipped `message_start`.
    fn start(&mut self, id: String, model: String, out: &mut Vec<StreamEvent>) {
        if self.started {
            return;
        }
        self.started = true;
        let model = if model.is_empty() { self.model.clone() } else { model };
        out.push(StreamEvent::Start { id, model, created: crate::now_unix() });
    }

    fn ensure_started(&mut self, out: &mut Vec<StreamEvent>) {
        self.start(String::new(), String::new(), out);
    }

    fn finish(&mut self, reason: Option<&str>, out: &mut Vec<StreamEvent>) {
        if self.finished {
            return;
        }
        self.ensure_started(out);
        if !self.usage_sent {
            self.usage_sent = true;
            out.push(StreamEvent::Usage(convert_usage(self.usage)));
        }
        self.finished = true;
        out.push(StreamEvent::Finish { reason: finish_reason(reason, self.tool_calls > 0) });
    }

    fn block_start(&mut self, index: u64, block: ResponseBlock, out: &mut Vec<StreamEvent>) {
        let kind = match block {
            ResponseBlock::Text { text } => {
                if !text.is_empty() {
                    out.push(StreamEvent::TextDelta { text });
                }
                BlockKind::Other
            }
            ResponseBlock::ToolUse { id, name, input } => {
                let call = self.tool_calls;
                self.tool_calls = self.tool_calls.saturating_add(1);
                let id = if id.is_empty() { format!("toolu_{call}") } else { id };
                out.push(StreamEvent::ToolCallStart { index: call, id, name });
                // Anthropic starts with `"input":{}` and streams the arguments; a server that
                // sends the whole input here is taken at its word.
                let whole = input.as_object().is_some_and(|o| !o.is_empty());
                if whole {
                    out.push(StreamEvent::ToolCallArgs { index: call, arguments: arguments_text(&input) });
                }
                BlockKind::Tool { index: call, has_args: whole }
            }
            ResponseBlock::Thinking { thinking, signature } => {
                if !thinking.is_empty() {
                    out.push(StreamEvent::ReasoningDelta { text: thinking });
                }
                if let Some(signature) = signature.filter(|s| !s.is_empty()) {
                    out.push(StreamEvent::ReasoningSignature { signature });
                }
                BlockKind::Other
            }
            ResponseBlock::RedactedThinking { data } => {
                out.push(StreamEvent::RedactedReasoning { data });
                BlockKind::Other
            }
            ResponseBlock::Other => BlockKind::Other,
        };
        self.blocks.insert(index, kind);
    }

    fn block_delta(&mut self, index: u64, delta: Delta, out: &mut Vec<StreamEvent>) {
        match delta {
            Delta::Text { text } if !text.is_empty() => out.push(StreamEvent::TextDelta { text }),
            Delta::Thinking { thinking } if !thinking.is_empty() => {
                out.push(StreamEvent::ReasoningDelta { text: thinking });
            }
            Delta::Signature { signature } if !signature.is_empty() => {
                out.push(StreamEvent::ReasoningSignature { signature });
            }
            Delta::InputJson { partial_json } if !partial_json.is_empty() => {
                // Input deltas of server tools (web search, ...) are not the client's calls.
                if let Some(BlockKind::Tool { index, has_args }) = self.blocks.get_mut(&index) {
                    *has_args = true;
                    out.push(StreamEvent::ToolCallArgs { index: *index, arguments: partial_json });
                }
            }
            _ => {}
        }
    }

    /// A tool call without parameters streams no argument text; its arguments are `{}`, as
    /// in a whole response.
    fn block_stop(&mut self, index: u64, out: &mut Vec<StreamEvent>) {
        if let Some(BlockKind::Tool { index, has_args }) = self.blocks.get_mut(&index)
            && !*has_args
        {
            *has_args = true;
            out.push(StreamEvent::ToolCallArgs { index: *index, arguments: "{}".to_owned() });
        }
    }

    /// `message_delta` usage is cumulative; fields it carries win over `message_start`'s.
    fn merge_usage(&mut self, delta: WireUsage) -> WireUsage {
        let old = self.usage;
        self.usage = WireUsage {
            input_tokens: delta.input_tokens.or(old.input_tokens),
            output_tokens: delta.output_tokens.or(old.output_tokens),
            cache_read_input_tokens: delta.cache_read_input_tokens.or(old.cache_read_input_tokens),
            cache_creation_input_tokens: delta.cache_creation_input_tokens.or(old.cache_creation_input_tokens),
        };
        self.usage
    }
}

impl SseDecoder for EventDecoder {
    fn on_event(&mut self, event: &Event, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        let data = event.data.trim();
        if data.is_empty() || self.done {
            return Ok(());
        }
        let event = parse_data::<WireEvent>(&self.provider, data)?;
        if self.start_usage_pending && !matches!(event, WireEvent::Ping | WireEvent::Error { .. } | WireEvent::Other) {
            // Front ends that report usage when a stream starts (Anthropic's own
            // `message_start`) get the prompt's counts before the first content.
            self.start_usage_pending = false;
            out.push(StreamEvent::Usage(convert_usage(self.usage)));
        }
        match event {
            WireEvent::MessageStart { message } => {
                self.usage = message.usage;
                self.start_usage_pending = self.usage.input_tokens.is_some();
                self.start(message.id, message.model, out);
            }
            WireEvent::ContentBlockStart { index, content_block } => {
                self.ensure_started(out);
                self.block_start(index, content_block, out);
            }
            WireEvent::ContentBlockDelta { index, delta } => {
                self.ensure_started(out);
                self.block_delta(index, delta, out);
            }
            WireEvent::ContentBlockStop { index } => self.block_stop(index, out),
            WireEvent::MessageDelta { delta, usage } => {
                self.ensure_started(out);
                if let Some(usage) = usage {
                    let merged = self.merge_usage(usage);
                    self.usage_sent = true;
                    out.push(StreamEvent::Usage(convert_usage(merged)));
                }
                if let Some(reason) = delta.stop_reason {
                    self.finish(Some(&reason), out);
                }
            }
            WireEvent::MessageStop => {
                // A stream that never gave a stop reason still ends with a finish.
                self.finish(None, out);
                self.done = true;
            }
            WireEvent::Error { error } => return Err(stream_error(&self.provider, error)),
            WireEvent::Ping | WireEvent::Other => {}
        }
        Ok(())
    }

    fn is_done(&self) -> bool {
        self.done
    }
}

/// An `error` event: Anthropic reports mid-stream failures (mostly `overloaded_error`) this way
/// once the 200 status has been sent.
fn stream_error(provider: &str, error: WireError) -> ProviderError {
    let message = if error.message.is_empty() {
        format!("the stream failed with {}", if error.kind.is_empty() { "an unnamed error" } else { &error.kind })
    } else {
        error.message
    };
    ProviderError::new(error_kind(&error.kind), provider, message)
}

/// Anthropic's `error.type` names, classified as their HTTP statuses would be.
pub(super) fn error_kind(kind: &str) -> ErrorKind {
    match kind {
        "overloaded_error" => ErrorKind::Overloaded,
        "rate_limit_error" => ErrorKind::RateLimited,
        "invalid_request_error" => ErrorKind::InvalidRequest,
        "authentication_error" => ErrorKind::Authentication,
        "permission_error" => ErrorKind::PermissionDenied,
        "not_found_error" => ErrorKind::NotFound,
        "request_too_large" => ErrorKind::PayloadTooLarge,
        "timeout_error" => ErrorKind::Timeout,
        _ => ErrorKind::UpstreamServer,
    }
}
