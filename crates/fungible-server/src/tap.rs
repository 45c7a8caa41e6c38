//! The one stream tap: a streamed answer is put together once, from its events as they pass
//! (nothing is held back), and handed when the stream ends to what needs it — the key's
//! settlement (the usage reported), the response cache (only after a clean finish) and the
//! record (also after an error, or when the client goes away). In durable recording the
//! stream's end waits for the record's commit.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use fungible_gateway::Target;
use fungible_providers::EventStream;
use fungible_types::{AssistantMessage, ChatResponse, FinishReason, ReasoningBlock, StreamEvent, ToolCall, Usage};
use futures::Stream;

use crate::auth::Ticket;
use crate::cache::StreamStore;
use crate::recording::StreamRecord;

/// Where a stream's answer goes when it ends.
pub(crate) struct Sinks {
    pub record: Option<StreamRecord>,
    pub cache: Option<StreamStore>,
    /// The key's ticket, and the target that answered (what it is priced at).
    pub ticket: (Ticket, Option<Target>),
}

/// `stream` with its answer handed to `sinks` at its end; `stream` itself when no sink needs
/// it.
pub(crate) fn tap(stream: EventStream, sinks: Sinks) -> EventStream {
    if sinks.record.is_none() && sinks.cache.is_none() && sinks.ticket.0.is_settled() {
        return stream;
    }
    let started = sinks.record.as_ref().map_or_else(Instant::now, StreamRecord::started);
    Box::pin(Tap {
        inner: stream,
        acc: Accumulated::default(),
        started,
        finished: false,
        sinks: Some(sinks),
        settling: None,
    })
}

struct Tap {
    inner: EventStream,
    acc: Accumulated,
    /// When the request arrived (the record's time to first token counts from it).
    started: Instant,
    /// A finish event was seen.
    finished: bool,
    /// `None` once the answer was handed over.
    sinks: Option<Sinks>,
    /// Durable recording: the record's commit, awaited before the stream ends.
    settling: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Tap {
    /// Hands the answer over (`error`: how the stream ended early); the commit to wait for.
    fn end(&mut self, error: Option<String>) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        let Sinks { record, cache, ticket: (ticket, target) } = self.sinks.take()?;
        ticket.finish(target.as_ref(), &self.acc.usage());
        if record.is_none() && cache.is_none() {
            return None;
        }
        let response = self.acc.response();
        if let Some(cache) = cache.filter(|_| error.is_none() && self.finished) {
            cache.store(&response);
        }
        let settled = record?.finish(&response, error, self.finished, self.acc.ttft_ms())?;
        Some(Box::pin(settled))
    }
}

impl Stream for Tap {
    type Item = <EventStream as Stream>::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(settling) = &mut this.settling {
            return match settling.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.settling = None;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            };
        }
        let poll = this.inner.as_mut().poll_next(cx);
        match &poll {
            Poll::Ready(Some(Ok(event))) => match &this.sinks {
                // The record or the cache needs the whole answer.
                Some(Sinks { record: Some(_), .. } | Sinks { cache: Some(_), .. }) => {
                    this.finished |= matches!(event, StreamEvent::Finish { .. });
                    this.acc.add(event, this.started);
                }
                // The ticket needs only the usage: no copy of the text per event.
                Some(_) if matches!(event, StreamEvent::Usage(_)) => this.acc.add(event, this.started),
                _ => {}
            },
            Poll::Ready(Some(Err(e))) => {
                // Durable or not, an error frame goes out at once; the record follows it.
                let error = e.kind.class().to_owned();
                drop(this.end(Some(error)));
            }
            Poll::Ready(None) => {
                // Durable: the stream (and so the client's last frame) ends once the record
                // is committed.
                if let Some(settled) = this.end(None) {
                    this.settling = Some(settled);
                    return self.poll_next(cx);
                }
            }
            _ => {}
        }
        poll
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // The client went away: what was used so far still counts, and is recorded.
        drop(self.end(Some("client_disconnected".into())));
    }
}

/// A stream's answer so far, put together from its events.
#[derive(Default)]
pub(crate) struct Accumulated {
    id: String,
    model: String,
    created: u64,
    text: String,
    reasoning: String,
    signature: Option<String>,
    redacted: Vec<String>,
    refusal: Option<String>,
    tool_calls: Vec<ToolCall>,
    usage: Usage,
    finish: Option<FinishReason>,
    ttft_ms: Option<f64>,
}

impl Accumulated {
    /// The usage the stream reported so far.
    pub(crate) fn usage(&self) -> Usage {
        self.usage
    }

    /// Milliseconds from the start to the first content event.
    pub(crate) fn ttft_ms(&self) -> Option<f64> {
        self.ttft_ms
    }

    pub(crate) fn add(&mut self, event: &StreamEvent, started: Instant) {
        let content = !matches!(
            event,
            StreamEvent::Start { .. } | StreamEvent::Usage(_) | StreamEvent::Finish { .. }
        );
        if content && self.ttft_ms.is_none() {
            self.ttft_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        }
        match event {
            StreamEvent::Start { id, model, created } => {
                self.id = id.clone();
                self.model = model.clone();
                self.created = *created;
            }
            StreamEvent::TextDelta { text } => self.text.push_str(text),
            StreamEvent::ReasoningDelta { text } => self.reasoning.push_str(text),
            StreamEvent::ReasoningSignature { signature } => {
                self.signature = Some(signature.clone())
            }
            StreamEvent::RedactedReasoning { data } => self.redacted.push(data.clone()),
            StreamEvent::ToolCallStart { index, id, name } => {
                let i = *index as usize;
                if self.tool_calls.len() <= i {
                    self.tool_calls.resize(
                        i + 1,
                        ToolCall {
                            id: String::new(),
                            name: String::new(),
                            arguments: String::new(),
                        },
                    );
                }
                self.tool_calls[i].id = id.clone();
                self.tool_calls[i].name = name.clone();
            }
            StreamEvent::ToolCallArgs { index, arguments } => {
                if let Some(call) = self.tool_calls.get_mut(*index as usize) {
                    call.arguments.push_str(arguments);
                }
            }
            StreamEvent::Refusal { text } => {
                self.refusal.get_or_insert_with(String::new).push_str(text)
            }
            StreamEvent::Usage(u) => self.usage = *u,
            StreamEvent::Finish { reason } => self.finish = Some(reason.clone()),
        }
    }

    pub(crate) fn response(&mut self) -> ChatResponse {
        let mut reasoning = Vec::new();
        if !self.reasoning.is_empty() || self.signature.is_some() {
            reasoning.push(ReasoningBlock::Thinking {
                text: std::mem::take(&mut self.reasoning),
                signature: self.signature.take(),
            });
        }
        reasoning.extend(
            self.redacted
                .drain(..)
                .map(|data| ReasoningBlock::Redacted { data }),
        );
        ChatResponse {
            id: std::mem::take(&mut self.id),
            model: std::mem::take(&mut self.model),
            created: self.created,
            message: AssistantMessage {
                content: (!self.text.is_empty()).then(|| std::mem::take(&mut self.text)),
                tool_calls: std::mem::take(&mut self.tool_calls),
                reasoning,
                refusal: self.refusal.take(),
            },
            finish_reason: self.finish.clone().unwrap_or(FinishReason::Stop),
            usage: self.usage,
        }
    }
}
