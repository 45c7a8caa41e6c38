//! Decodes `chat.completion.chunk` events.

use eventsource_stream::Event;
use fungible_types::{ErrorKind, ProviderError, StreamEvent};

use super::types::Chunk;
use super::{arguments_text, convert_usage, finish_reason};
use crate::sse::{SseDecoder, parse_data};

pub(super) struct ChunkDecoder {
    provider: String,
    started: bool,
    done: bool,
    /// Upstream tool-call index -> ours, in order of first appearance.
    tool_indices: Vec<u32>,
    finished: bool,
}

impl ChunkDecoder {
    pub(super) fn new(provider: &str) -> ChunkDecoder {
        ChunkDecoder { provider: provider.to_owned(), started: false, done: false, tool_indices: Vec::new(), finished: false }
    }

    /// Our index for an upstream tool-call index. Servers that omit the index and send each
    /// call whole get consecutive indices.
    fn tool_index(&mut self, upstream: Option<u32>, starts_new: bool) -> u32 {
        let upstream = match upstream {
            Some(i) => i,
            None if starts_new => self.tool_indices.iter().max().map_or(0, |m| m + 1),
            None => self.tool_indices.last().copied().unwrap_or(0),
        };
        match self.tool_indices.iter().position(|&i| i == upstream) {
            Some(pos) => pos as u32,
            None => {
                self.tool_indices.push(upstream);
                (self.tool_indices.len() - 1) as u32
            }
        }
    }
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
            self.started = true;
            out.push(StreamEvent::Start { id: chunk.id, model: chunk.model, created: chunk.created });
        }
        for choice in chunk.choices {
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.reasoning_content.filter(|t| !t.is_empty()) {
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
                    let starts_new = call.id.is_some() || name.is_some();
                    let index = self.tool_index(call.index, starts_new);
                    if starts_new {
                        out.push(StreamEvent::ToolCallStart {
                            index,
                            id: call.id.unwrap_or_else(|| format!("call_{index}")),
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
