//! Decodes `chat.completion.chunk` events.

use eventsource_stream::Event;
use fungible_types::{ErrorKind, ProviderError, StreamEvent};

use super::types::{Chunk, reasoning_text};
use super::{arguments_text, convert_usage, finish_reason};
use crate::sse::{SseDecoder, parse_data};

pub(super) struct ChunkDecoder {
    provider: String,
    started: bool,
    done: bool,
    /// Upstream tool-call index -> ours, in order of first appearance, with the call's id.
    tool_indices: Vec<(u32, Option<String>)>,
    finished: bool,
}

impl ChunkDecoder {
    pub(super) fn new(provider: &str) -> ChunkDecoder {
        ChunkDecoder { provider: provider.to_owned(), started: false, done: false, tool_indices: Vec::new(), finished: false }
    }

    /// Our index for an upstream tool-call index, and whether the call is new. Servers that
    /// omit the index and send each call whole get consecutive indices; a delta without an
    /// index that repeats the last call's id continues that call.
    fn tool_index(&mut self, upstream: Option<u32>, id: Option<&str>, starts_new: bool) -> (u32, bool) {
        let upstream = match upstream {
            Some(i) => i,
            None if id.is_some() && self.tool_indices.last().is_some_and(|(_, last)| last.as_deref() == id) => {
                return ((self.tool_indices.len() - 1) as u32, false);
            }
            // Saturating: an upstream index of u32::MAX once overflowed here (the call after
            // it then continues that one rather than panicking).
            None if starts_new => self.tool_indices.iter().map(|(i, _)| *i).max().map_or(0, |m| m.saturating_add(1)),
            None => self.tool_indices.last().map_or(0, |(i, _)| *i),
        };
        match self.tool_indices.iter().position(|(i, _)| *i == upstream) {
            Some(pos) => (pos as u32, false),
            None => {
                self.tool_indices.push((upstream, id.map(str::to_owned)));
                ((self.tool_indices.len() - 1) as u32, true)
            }
        }
    }
}

/// Whether a chunk carries anything but metadata. Azure OpenAI opens its streams with a
/// chunk holding only `prompt_filter_results` (`"id":""`, `"created":0`, no choices).
fn has_payload(chunk: &Chunk) -> bool {
    chunk.usage.is_some() || chunk.choices.iter().any(|c| c.delta.is_some() || c.finish_reason.is_some())
}

impl SseDecoder for ChunkDecoder {
    fn on_event(&mut self, event: &Event, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            // A few servers end without ever sending a finish reason.
            if !self.finished {
                self.finished = true;
                let has_tools = !self.tool_indices.is_empty();
                out.push(StreamEvent::Finish { reason: finish_reason(None, has_tools) });
            }
            self.done = true;
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        let chunk: Chunk = parse_data(&self.provider, data)?;
        if let Some(error) = chunk.error {
            let message = error
                .get("message")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| error.to_string());
            return Err(ProviderError::new(ErrorKind::UpstreamServer, &self.provider, message));
        }
        if !self.started {
            if chunk.id.is_empty() && !has_payload(&chunk) {
                return Ok(());
            }
            self.started = true;
            let created = if chunk.created == 0 { crate::now_unix() } else { chunk.created };
            out.push(StreamEvent::Start { id: chunk.id, model: chunk.model, created });
        }
        for choice in chunk.choices {
            if let Some(delta) = choice.delta {
                if let Some(text) = reasoning_text(delta.reasoning_content, delta.reasoning) {
                    out.push(StreamEvent::ReasoningDelta { text });
                }
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    out.push(StreamEvent::TextDelta { text });
                }
                if let Some(text) = delta.refusal.filter(|t| !t.is_empty()) {
                    out.push(StreamEvent::Refusal { text });
                }
                for call in delta.tool_calls.unwrap_or_default() {
                    let (name, arguments) = match call.function {
                        Some(f) => (f.name, arguments_text(f.arguments)),
                        None => (None, String::new()),
                    };
                    // Gemini's OpenAI endpoint sends `"id": ""`: no id, not a shared one.
                    let id = call.id.filter(|id| !id.is_empty());
                    let starts_new = id.is_some() || name.is_some();
                    let (index, is_new) = self.tool_index(call.index, id.as_deref(), starts_new);
                    // DeepSeek, Qwen, Fireworks and LiteLLM repeat the id (and name) on every
                    // delta of a call; only its first delta starts it.
                    if starts_new && is_new {
                        out.push(StreamEvent::ToolCallStart {
                            index,
                            id: id.unwrap_or_else(|| format!("call_{index}")),
                            name: name.unwrap_or_default(),
                        });
                    }
                    if !arguments.is_empty() {
                        out.push(StreamEvent::ToolCallArgs { index, arguments });
                    }
                }
            }
            if let Some(reason) = choice.finish_reason.filter(|_| !self.finished) {
                self.finished = true;
                let has_tools = !self.tool_indices.is_empty();
                out.push(StreamEvent::Finish { reason: finish_reason(Some(&reason), has_tools) });
            }
        }
        if let Some(usage) = chunk.usage {
            out.push(StreamEvent::Usage(convert_usage(usage)));
        }
        Ok(())
    }

    fn is_done(&self) -> bool {
        self.done
    }
}
