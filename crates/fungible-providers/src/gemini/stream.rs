//! Decodes `streamGenerateContent?alt=sse`: every `data:` event is a whole
//! `GenerateContentResponse` holding the next piece of the answer. Gemini sends no end marker;
//! the chunk carrying a `finishReason` (or a blocked prompt's `promptFeedback`) is the last.

use eventsource_stream::Event;
use fungible_types::{FinishReason, ProviderError, StreamEvent, Usage};

use super::types::GenerateContentResponse;
use super::{arguments_text, block_message, convert_usage, finish_reason, generated_id, wire_error};
use crate::sse::{SseDecoder, parse_data};

pub(super) struct ChunkDecoder {
    provider: String,
    /// The requested model, reported when the chunks carry no `modelVersion`.
    model: String,
    started: bool,
    done: bool,
    /// Function calls seen so far; the next one's index.
    tool_calls: u32,
    /// The latest usage; Gemini repeats running totals on most chunks.
    usage: Option<Usage>,
}

impl ChunkDecoder {
    pub(super) fn new(provider: &str, model: &str) -> ChunkDecoder {
        ChunkDecoder {
            provider: provider.to_owned(),
            model: model.to_owned(),
            started: false,
            done: false,
            tool_calls: 0,
            usage: None,
        }
    }

    fn finish(&mut self, reason: FinishReason, out: &mut Vec<StreamEvent>) {
        if let Some(usage) = self.usage {
            out.push(StreamEvent::Usage(usage));
        }
        out.push(StreamEvent::Finish { reason });
        self.done = true;
    }
}

impl SseDecoder for ChunkDecoder {
    fn on_event(&mut self, event: &Event, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError> {
        let data = event.data.trim();
        if data.is_empty() || self.done {
            return Ok(());
        }
        let chunk: GenerateContentResponse = parse_data(&self.provider, data)?;
        if let Some(error) = chunk.error {
            return Err(wire_error(&self.provider, error));
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: chunk.response_id.filter(|id| !id.is_empty()).unwrap_or_else(generated_id),
                model: chunk.model_version.filter(|m| !m.is_empty()).unwrap_or_else(|| self.model.clone()),
                created: crate::now_unix(),
            });
        }
        if let Some(usage) = chunk.usage_metadata {
            self.usage = Some(convert_usage(usage));
        }

        let Some(candidate) = chunk.candidates.unwrap_or_default().into_iter().next() else {
            if let Some(reason) = chunk.prompt_feedback.and_then(|f| f.block_reason) {
                out.push(StreamEvent::Refusal { text: block_message(&reason) });
                self.finish(FinishReason::ContentFilter, out);
            }
            return Ok(());
        };
        for part in candidate.content.and_then(|c| c.parts).unwrap_or_default() {
            if part.thought == Some(true) {
                if let Some(text) = part.text.filter(|t| !t.is_empty()) {
                    out.push(StreamEvent::ReasoningDelta { text });
                }
                if let Some(signature) = part.thought_signature.filter(|s| !s.is_empty()) {
                    out.push(StreamEvent::ReasoningSignature { signature });
                }
                continue;
            }
            // The signature stands for the thinking that led to this part, so it comes first.
            if let Some(signature) = part.thought_signature.filter(|s| !s.is_empty()) {
                out.push(StreamEvent::ReasoningSignature { signature });
            }
            if let Some(text) = part.text.filter(|t| !t.is_empty()) {
                out.push(StreamEvent::TextDelta { text });
            }
            if let Some(call) = part.function_call {
                let index = self.tool_calls;
                self.tool_calls = self.tool_calls.saturating_add(1);
                out.push(StreamEvent::ToolCallStart {
                    index,
                    id: call.id.filter(|id| !id.is_empty()).unwrap_or_else(|| format!("call_{index}")),
                    name: call.name,
                });
                out.push(StreamEvent::ToolCallArgs { index, arguments: arguments_text(call.args) });
            }
        }
        if let Some(reason) = candidate.finish_reason.filter(|r| !r.is_empty()) {
            let reason = finish_reason(Some(&reason), self.tool_calls > 0);
            self.finish(reason, out);
        }
        Ok(())
    }

    fn is_done(&self) -> bool {
        self.done
    }
}
