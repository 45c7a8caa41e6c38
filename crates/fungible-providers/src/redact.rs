//! Answers that echo one of the provider's own credentials (its API key, a configured header
//! value) come back with it replaced by `[redacted]`: the operator's key never reaches the
//! client, the store, the cache or a span, whatever the upstream writes. Errors are scrubbed
//! where they are made (`http.rs`); this covers successful answers, whole and streamed.
//!
//! A stream's text arrives in small deltas and a key is many tokens long, so the stream holds
//! back the end of the text (and of the reasoning) only while it could be the start of a key
//! (`sk-li...`), until the next delta or the end shows whether it is: ordinary text is not
//! delayed at all.

use std::pin::Pin;
use std::task::{Context, Poll};

use fungible_types::{ChatResponse, ReasoningBlock, StreamEvent};
use futures::Stream;

use crate::{EventStream, Secret};

const REDACTED: &str = "[redacted]";

/// The credentials to keep out of answers (shorter than 8 characters: not worth the false
/// positives, and not a real key).
#[derive(Clone, Default)]
pub(crate) struct Redactions {
    secrets: std::sync::Arc<[Secret]>,
}

impl std::fmt::Debug for Redactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactions({} secrets)", self.secrets.len())
    }
}

impl Redactions {
    pub(crate) fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Redactions {
        Redactions { secrets: secrets.into_iter().filter(|s| s.expose().len() >= 8).cloned().collect() }
    }

    /// A provider's API key and configured header values.
    pub(crate) fn of(settings: &crate::ProviderSettings) -> Redactions {
        Redactions::new(settings.api_key.iter().chain(settings.headers.iter().map(|(_, value)| value)))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Whether `text` holds no secret and does not end with the start of one.
    fn is_clean(&self, text: &str) -> bool {
        !self.secrets.iter().any(|s| text.contains(s.expose())) && prefix_tail(text, &self.secrets) == 0
    }

    fn scrub(&self, text: &mut String) {
        for secret in self.secrets.iter() {
            if text.contains(secret.expose()) {
                *text = text.replace(secret.expose(), REDACTED);
            }
        }
    }

    /// `response` with every credential replaced, in every text it carries.
    pub(crate) fn response(&self, response: &mut ChatResponse) {
        if self.is_empty() {
            return;
        }
        let message = &mut response.message;
        for text in [&mut message.content, &mut message.refusal].into_iter().flatten() {
            self.scrub(text);
        }
        for call in &mut message.tool_calls {
            self.scrub(&mut call.arguments);
        }
        for block in &mut message.reasoning {
            if let ReasoningBlock::Thinking { text, .. } = block {
                self.scrub(text);
            }
        }
    }

    /// `stream` with every credential replaced (see the module docs).
    pub(crate) fn stream(&self, stream: EventStream) -> EventStream {
        if self.is_empty() {
            return stream;
        }
        Box::pin(RedactedStream { inner: stream, redactions: self.clone(), text: String::new(), reasoning: String::new(), queued: Default::default() })
    }
}

struct RedactedStream {
    inner: EventStream,
    redactions: Redactions,
    /// Text held back: it may be the start of a key.
    text: String,
    reasoning: String,
    /// Events ready to go out, in order.
    queued: std::collections::VecDeque<<EventStream as Stream>::Item>,
}

/// How many bytes at the end of `text` could be the start of a secret (and so must wait).
fn prefix_tail(text: &str, secrets: &[Secret]) -> usize {
    let bytes = text.as_bytes();
    let mut longest = 0;
    for secret in secrets {
        let secret = secret.expose().as_bytes();
        let max = (secret.len() - 1).min(bytes.len());
        for k in (longest + 1..=max).rev() {
            if bytes[bytes.len() - k] == secret[0] && bytes.ends_with(&secret[..k]) {
                longest = k;
                break;
            }
        }
    }
    longest
}

/// Takes from `held` (scrubbed) what can go out now, leaving the tail that may start a key
/// (nothing is left with `all`).
fn release(held: &mut String, secrets: &[Secret], all: bool) -> String {
    let keep = if all { 0 } else { prefix_tail(held, secrets) };
    let mut cut = held.len() - keep;
    while !held.is_char_boundary(cut) {
        cut -= 1;
    }
    let rest = held.split_off(cut);
    std::mem::replace(held, rest)
}

impl RedactedStream {
    /// Queues what the held text and reasoning may release (everything, with `all`).
    fn flush(&mut self, all: bool) {
        self.redactions.scrub(&mut self.text);
        self.redactions.scrub(&mut self.reasoning);
        let reasoning = release(&mut self.reasoning, &self.redactions.secrets, all);
        let text = release(&mut self.text, &self.redactions.secrets, all);
        if !reasoning.is_empty() {
            self.queued.push_back(Ok(StreamEvent::ReasoningDelta { text: reasoning }));
        }
        if !text.is_empty() {
            self.queued.push_back(Ok(StreamEvent::TextDelta { text }));
        }
    }
}

impl Stream for RedactedStream {
    type Item = <EventStream as Stream>::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(item) = this.queued.pop_front() {
                return Poll::Ready(Some(item));
            }
            match this.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                // The common case, nothing held and nothing that is or may start a key: the
                // event goes on as it is, with no copy.
                Poll::Ready(Some(Ok(StreamEvent::TextDelta { text })))
                    if this.text.is_empty() && this.redactions.is_clean(&text) =>
                {
                    return Poll::Ready(Some(Ok(StreamEvent::TextDelta { text })));
                }
                Poll::Ready(Some(Ok(StreamEvent::TextDelta { text }))) => {
                    this.text.push_str(&text);
                    this.flush(false);
                }
                Poll::Ready(Some(Ok(StreamEvent::ReasoningDelta { text }))) => {
                    this.reasoning.push_str(&text);
                    this.flush(false);
                }
                Poll::Ready(Some(Ok(mut event))) => {
                    // Anything else ends a run of text: the held text goes first.
                    match &mut event {
                        StreamEvent::ToolCallArgs { arguments, .. } => this.redactions.scrub(arguments),
                        StreamEvent::Refusal { text } => this.redactions.scrub(text),
                        _ => {}
                    }
                    this.flush(true);
                    this.queued.push_back(Ok(event));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.flush(true);
                    this.queued.push_back(Err(e));
                }
                Poll::Ready(None) => {
                    this.flush(true);
                    if this.queued.is_empty() {
                        return Poll::Ready(None);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    const KEY: &str = "sk-live-0123456789abcdef";

    fn redactions() -> Redactions {
        Redactions::new([&Secret::new(KEY), &Secret::new("short")])
    }

    #[test]
    fn a_whole_answer_echoing_the_key_is_redacted() {
        let mut response = ChatResponse {
            id: "r".into(),
            model: "m".into(),
            created: 0,
            message: fungible_types::AssistantMessage { content: Some(format!("your key is {KEY}.")), ..Default::default() },
            finish_reason: fungible_types::FinishReason::Stop,
            usage: fungible_types::Usage::default(),
        };
        response.message.tool_calls.push(fungible_types::ToolCall { id: "c".into(), name: "f".into(), arguments: format!("{{\"k\":\"{KEY}\"}}") });
        redactions().response(&mut response);
        assert_eq!(response.message.content.as_deref(), Some("your key is [redacted]."));
        assert_eq!(response.message.tool_calls[0].arguments, "{\"k\":\"[redacted]\"}");
    }

    #[tokio::test]
    async fn ordinary_text_is_not_held_back() {
        let events = ["Hello", " world", ", s", "o it went"].map(|t| Ok(StreamEvent::TextDelta { text: t.into() }));
        let mut stream = redactions().stream(Box::pin(futures::stream::iter(events).chain(futures::stream::pending())));
        // Each delta comes out as it arrives, except the "s" that may start the key, which
        // waits for the next one.
        for expected in ["Hello", " world", ", ", "so it went"] {
            match stream.next().await {
                Some(Ok(StreamEvent::TextDelta { text })) => assert_eq!(text, expected),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_key_split_over_many_deltas_is_redacted_and_other_text_kept_whole() {
        let text = format!("Here: {KEY} and the rest — ünïcode ok. short stays.");
        // One character per delta, as a tokenizer would split a key.
        let mut events: Vec<<EventStream as Stream>::Item> = vec![Ok(StreamEvent::Start { id: "x".into(), model: "m".into(), created: 0 })];
        events.extend(text.chars().map(|c| Ok(StreamEvent::TextDelta { text: c.to_string() })));
        events.push(Ok(StreamEvent::Finish { reason: fungible_types::FinishReason::Stop }));
        let stream: EventStream = Box::pin(futures::stream::iter(events));
        let out: Vec<StreamEvent> = redactions().stream(stream).map(|e| e.expect("no error")).collect().await;
        let joined: String = out.iter().filter_map(|e| match e {
            StreamEvent::TextDelta { text } => Some(text.as_str()),
            _ => None,
        }).collect();
        assert_eq!(joined, "Here: [redacted] and the rest — ünïcode ok. short stays.");
        assert!(matches!(out.first(), Some(StreamEvent::Start { .. })));
        assert!(matches!(out.last(), Some(StreamEvent::Finish { .. })), "the held text goes out before the finish: {out:?}");
    }
}
