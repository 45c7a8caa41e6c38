//! Continuing a stream that failed after its content started: the client already has part of
//! the answer, so a retry from scratch would repeat it. Instead the first target that can
//! **prefill**, of the one whose stream failed and then the route's later ones, (continue a trailing assistant message: Anthropic natively, DeepSeek
//! and Mistral with `prefix`, vLLM with `continue_final_message`; see
//! `fungible_providers::openai::Prefill`) is asked again with the text so far as the start
//! of its answer, and its output is spliced onto the client's stream: its `Start` is dropped,
//! whitespace the prefix lost is not sent twice, its usage is added to what the failed
//! stream reported, and its finish is the one finish the client sees.
//!
//! No continuation is tried (the failure reaches the client as the stream's error event, as
//! before) when it is switched off (`continue_on_stream_failure = false`), when the error is
//! not retryable, when a tool call or a refusal was under way or the stream had finished,
//! when neither that target nor a later one can prefill, or when the request's attempt limit
//! is spent. Each
//! continuation is recorded as an attempt in [`RouteInfo::continuations`](super::RouteInfo).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use fungible_providers::{EventStream, Provider};
use fungible_types::{ChatRequest, ContentPart, ErrorKind, Message, ProviderError, Role, StreamEvent, Usage};
use tokio::time::Instant;

use super::breaker::Admission;
use super::execute::{self, InFlight, TrackedStream, Watchdog};
use super::{Attempt, AttemptOutcome, LateAttempts, Route, request_for};
use crate::Gateway;
use fungible_providers::capture::Capture;

/// What a continuation needs besides the stream: where to go next and what to ask.
pub(crate) struct Continuation {
    pub gateway: Gateway,
    /// The request as planned (per-request fallback keys removed), before target params.
    pub req: ChatRequest,
    /// The target that answered, then the ones after it in the order they would have been
    /// tried.
    pub rest: Vec<(Arc<Route>, usize)>,
    /// Upstream calls this request may still make.
    pub calls_left: u32,
    pub log: LateAttempts,
    /// Where the continuation's upstream calls note their bodies (`[store] raw_bodies`).
    pub capture: Option<Capture>,
}

/// Whether `provider` continues a trailing assistant message of `req`.
pub(crate) fn supports_prefill(provider: &Provider, req: &ChatRequest) -> bool {
    match provider {
        // Anthropic rejects a prefilled answer when extended thinking is on.
        Provider::Anthropic(_) => req.reasoning.as_ref().and_then(|r| r.effective_budget()).is_none(),
        Provider::OpenAi(p) => p.prefill() != fungible_providers::openai::Prefill::None,
        Provider::Gemini(_) | Provider::Local(_) => false,
    }
}

/// `stream` (a target's, already past its first content or handed over as the last chance),
/// continued when it fails on the first target that can prefill: its own, then the later ones.
pub(crate) fn continuing(stream: EventStream, continuation: Continuation) -> EventStream {
    let state = State {
        current: stream,
        cont: continuation,
        text: String::new(),
        seen_content: false,
        blocked: false,
        failed_usage: Usage::default(),
        last_usage: None,
        strip_leading_space: false,
        continued: false,
        done: false,
    };
    Box::pin(futures::stream::unfold(state, |mut state| async move {
        let item = state.next_item().await?;
        Some((item, state))
    }))
}

struct State {
    current: EventStream,
    cont: Continuation,
    /// The answer's text as the client got it.
    text: String,
    seen_content: bool,
    /// A tool call or refusal was under way, or the stream finished: nothing to continue.
    blocked: bool,
    /// The last usage each failed stream reported, summed.
    failed_usage: Usage,
    /// The last usage the current stream reported.
    last_usage: Option<Usage>,
    /// The prefix lost trailing whitespace the client already has: drop the continuation's
    /// leading whitespace.
    strip_leading_space: bool,
    continued: bool,
    done: bool,
}

impl State {
    async fn next_item(&mut self) -> Option<Result<StreamEvent, ProviderError>> {
        if self.done {
            return None;
        }
        loop {
            match self.current.next().await {
                None => {
                    self.done = true;
                    return None;
                }
                Some(Ok(event)) => {
                    if let Some(event) = self.pass(event) {
                        return Some(Ok(event));
                    }
                }
                Some(Err(error)) => {
                    if self.may_continue(&error)
                        && let Some(stream) = self.continue_elsewhere(&error).await
                    {
                        self.current = stream;
                        continue;
                    }
                    self.done = true;
                    return Some(Err(error));
                }
            }
        }
    }

    /// The event as the client gets it (`None`: dropped), noting what it means for a
    /// continuation.
    fn pass(&mut self, event: StreamEvent) -> Option<StreamEvent> {
        if execute::is_content(&event) {
            self.seen_content = true;
        }
        match event {
            StreamEvent::Start { .. } if self.continued => None,
            StreamEvent::TextDelta { text } => {
                let text = if self.strip_leading_space {
                    let kept = text.trim_start();
                    if kept.is_empty() {
                        return None;
                    }
                    self.strip_leading_space = false;
                    kept.to_owned()
                } else {
                    text
                };
                self.text.push_str(&text);
                Some(StreamEvent::TextDelta { text })
            }
            StreamEvent::Usage(usage) => {
                self.last_usage = Some(usage);
                Some(StreamEvent::Usage(add(self.failed_usage, usage)))
            }
            event @ (StreamEvent::ToolCallStart { .. }
            | StreamEvent::ToolCallArgs { .. }
            | StreamEvent::Refusal { .. }
            | StreamEvent::Finish { .. }) => {
                self.blocked = true;
                Some(event)
            }
            event => Some(event),
        }
    }

    fn may_continue(&self, error: &ProviderError) -> bool {
        self.seen_content && !self.blocked && error.kind.is_retryable() && self.cont.calls_left > 0
    }

    /// Opens the first target left that can prefill with the answer so far, up to its first
    /// content; `None` when none could.
    async fn continue_elsewhere(&mut self, error: &ProviderError) -> Option<EventStream> {
        while self.cont.calls_left > 0 && !self.cont.rest.is_empty() {
            let (route, index) = self.cont.rest.remove(0);
            let target = &route.targets[index];
            let Ok(provider) = self.cont.gateway.provider_of(&target.config.target) else { continue };
            if !supports_prefill(provider, &self.cont.req) {
                continue;
            }
            if let Some(breaker) = &target.health.breaker
                && let Admission::Denied { .. } = breaker.admit(Instant::now())
            {
                self.cont.log.push(Attempt {
                    target: target.config.target.clone(),
                    outcome: AttemptOutcome::CircuitOpen,
                    latency: Duration::ZERO,
                });
                continue;
            }
            if self.cont.gateway.inner.routing.holds.remaining(&target.config.target, Instant::now()).is_some() {
                self.cont.log.push(Attempt {
                    target: target.config.target.clone(),
                    outcome: AttemptOutcome::Backoff,
                    latency: Duration::ZERO,
                });
                continue;
            }
            self.cont.calls_left -= 1;
            let (req, stripped) = self.prefilled(&request_for(&self.cont.req, target, provider.kind()));
            tracing::info!(
                upstream = %target.config.target,
                sent_chars = self.text.len(),
                "continuing a stream that failed after content ({error}) with a prefilled request"
            );
            let in_flight = InFlight::start(route.clone(), index);
            let started = Instant::now();
            let limit = route.attempt_timeout.unwrap_or(self.cont.gateway.inner.request_timeout);
            let timeouts = target.config.stream_timeouts;
            let open = async {
                let stream = provider.chat_stream(&req, &target.config.target.model, self.cont.capture.as_ref()).await?;
                let stream: EventStream = if Watchdog::needed(timeouts.ttft, timeouts.idle) {
                    Box::pin(Watchdog::new(stream, &target.config.target.provider, started, timeouts.ttft, timeouts.idle))
                } else {
                    stream
                };
                execute::until_first_content(stream).await
            };
            let result = match tokio::time::timeout(limit, open).await {
                Ok(result) => result,
                Err(_) => Err(ProviderError::new(
                    ErrorKind::Timeout,
                    &target.config.target.provider,
                    "no continuation within the attempt timeout",
                )),
            };
            let latency = started.elapsed();
            target.health.attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match result {
                Ok(stream) => {
                    target.health.record_success(latency);
                    self.cont.log.push(Attempt { target: target.config.target.clone(), outcome: AttemptOutcome::Ok, latency });
                    let failed = self.last_usage.take().unwrap_or_default();
                    self.failed_usage = add(self.failed_usage, failed);
                    self.strip_leading_space = stripped;
                    self.continued = true;
                    return Some(Box::pin(TrackedStream::new(stream, in_flight)));
                }
                Err(e) => {
                    if e.kind.is_retryable() {
                        let now = Instant::now();
                        target.health.record_failure(now);
                        if let Some(secs) = e.retry_after.filter(|&s| s > 0) {
                            let hold = Duration::from_secs(secs).min(super::holdoff::MAX_HOLD);
                            self.cont.gateway.inner.routing.holds.hold(&target.config.target, now + hold, now);
                        }
                    }
                    tracing::debug!(upstream = %target.config.target, "continuation failed: {e}");
                    self.cont.log.push(Attempt {
                        target: target.config.target.clone(),
                        outcome: AttemptOutcome::Failed(e.kind),
                        latency,
                    });
                }
            }
        }
        None
    }

    /// `req` with the answer so far as its trailing assistant message (appended to one the
    /// client already prefilled), trailing whitespace trimmed (Anthropic rejects it); also
    /// whether whitespace was trimmed.
    fn prefilled(&self, req: &ChatRequest) -> (ChatRequest, bool) {
        let mut req = req.clone();
        let prefix = self.text.trim_end();
        let stripped = prefix.len() < self.text.len();
        if prefix.is_empty() {
            return (req, stripped);
        }
        match req.messages.last_mut() {
            Some(last) if last.role == Role::Assistant && last.tool_calls.is_empty() => match last.content.last_mut() {
                Some(ContentPart::Text { text }) => text.push_str(prefix),
                _ => last.content.push(ContentPart::Text { text: prefix.to_owned() }),
            },
            _ => req.messages.push(Message::text(Role::Assistant, prefix)),
        }
        (req, stripped)
    }
}

/// Two legs' usage summed; saturating, since the counts are the vendors'.
fn add(a: Usage, b: Usage) -> Usage {
    Usage {
        input_tokens: a.input_tokens.saturating_add(b.input_tokens),
        output_tokens: a.output_tokens.saturating_add(b.output_tokens),
        cache_read_tokens: a.cache_read_tokens.saturating_add(b.cache_read_tokens),
        cache_write_tokens: a.cache_write_tokens.saturating_add(b.cache_write_tokens),
        reasoning_tokens: a.reasoning_tokens.saturating_add(b.reasoning_tokens),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_of_two_legs_with_vendor_counts_near_u64_max_does_not_overflow() {
        let huge = Usage { input_tokens: u64::MAX, output_tokens: u64::MAX - 1, ..Usage::default() };
        let small = Usage { input_tokens: 5, output_tokens: 5, cache_read_tokens: 1, ..Usage::default() };
        let sum = add(huge, small);
        assert_eq!((sum.input_tokens, sum.output_tokens, sum.cache_read_tokens), (u64::MAX, u64::MAX, 1));
    }
}
