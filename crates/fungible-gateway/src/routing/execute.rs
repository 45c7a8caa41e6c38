//! The executor: walks a request's plan (its legs, each a route with its targets in the
//! order the balancer chose), calling targets until one answers. Retryable failures are
//! retried on the same target with backoff (never sooner than `Retry-After`, within the
//! retry budget), then the next target is tried; a non-retryable failure ends the request
//! at once, except a context-length error, which moves on to the next target whose context
//! window is larger (or unknown). Open circuit breakers are skipped without a call, and so
//! are upstreams whose `Retry-After` still runs (`holdoff`), except the last target, which
//! is waited for when its wait is short. What
//! the attempt is (a whole
//! chat, or a stream up to its first token) is a closure, so this file knows nothing of
//! providers and is tested with scripted attempts on tokio's paused clock.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use fungible_providers::EventStream;
use fungible_types::{ErrorKind, ProviderError, StreamEvent};
use tokio::time::Instant;

use super::breaker::{Admission, BreakerState};
use super::holdoff::HoldOffs;
use super::policy::RetryBudget;
use super::{Attempt, AttemptOutcome, Route, RouteInfo};

/// The legs of one request: the model it named, then its per-request fallbacks.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Each leg's route and the order to try its targets in.
    pub legs: Vec<(Arc<Route>, Vec<usize>)>,
    pub info: RouteInfo,
}

/// What one call gets.
pub(crate) struct AttemptCtx {
    pub route: Arc<Route>,
    pub index: usize,
    /// Nothing is left to try after this call: a stream need not be held back until its
    /// first token, since a failure could not be retried anyway.
    pub last_chance: bool,
    /// Counts the call as in flight until dropped (a stream keeps it until it ends).
    pub in_flight: InFlight,
}

/// Limits over all routes.
pub(crate) struct Limits<'a> {
    pub budget: &'a RetryBudget,
    pub max_attempts: u32,
    /// Upstreams that asked to be left alone until later.
    pub holds: &'a HoldOffs,
}

/// Runs `plan`, calling `attempt` for each try. Returns the route taken and the answer, or
/// the last failure.
pub(crate) async fn execute<T, F, Fut>(
    limits: Limits<'_>,
    plan: Plan,
    total: Duration,
    mut attempt: F,
) -> (RouteInfo, Result<T, ProviderError>)
where
    F: FnMut(AttemptCtx) -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let Plan { legs, mut info } = plan;
    let deadline = Instant::now() + total;
    limits.budget.deposit();
    let candidates: Vec<(usize, usize)> =
        legs.iter().enumerate().flat_map(|(leg, (_, order))| order.iter().map(move |&i| (leg, i))).collect();
    let mut last_error: Option<ProviderError> = None;
    let mut open_wait: Option<Duration> = None;
    let mut calls = 0u32;
    // After a context-length error: `Some(largest window known too small)`, `Some(0)` when
    // the window that failed is unknown.
    let mut too_long: Option<u64> = None;

    'targets: for (position, &(leg, index)) in candidates.iter().enumerate() {
        let route = &legs[leg].0;
        let target = &route.targets[index];
        if let (Some(limit), Some(window)) = (too_long, target.config.context_window)
            && window <= limit
        {
            continue 'targets;
        }
        let mut retry = 0u32;
        loop {
            if calls >= limits.max_attempts {
                break 'targets;
            }
            let now = Instant::now();
            if let Some(breaker) = &target.health.breaker
                && let Admission::Denied { retry_in } = breaker.admit(now)
            {
                info.attempts.push(Attempt {
                    target: target.config.target.clone(),
                    outcome: AttemptOutcome::CircuitOpen,
                    latency: Duration::ZERO,
                });
                open_wait = Some(open_wait.map_or(retry_in, |w| w.min(retry_in)));
                continue 'targets;
            }
            if let Some(wait) = limits.holds.remaining(&target.config.target, now) {
                // The upstream asked to be left alone: another target takes the request;
                // the last one left is waited for when its wait is short (as a retry would).
                let last = position + 1 == candidates.len();
                if !last || wait > route.retries.max_backoff || now + wait >= deadline {
                    info.attempts.push(Attempt {
                        target: target.config.target.clone(),
                        outcome: AttemptOutcome::Backoff,
                        latency: Duration::ZERO,
                    });
                    open_wait = Some(open_wait.map_or(wait, |w| w.min(wait)));
                    continue 'targets;
                }
                // Then everything is checked again (the deadline, the breaker, a newer hold).
                tokio::time::sleep(wait).await;
                continue;
            }
            let remaining = deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                break 'targets;
            }
            let timeout = route.attempt_timeout.map_or(remaining, |t| t.min(remaining));
            let last_chance = calls + 1 >= limits.max_attempts
                || (position + 1 == candidates.len() && retry >= route.retries.attempts);
            calls += 1;
            let ctx = AttemptCtx { route: route.clone(), index, last_chance, in_flight: InFlight::start(route.clone(), index) };
            let started = Instant::now();
            let result = match tokio::time::timeout(timeout, attempt(ctx)).await {
                Ok(result) => result,
                Err(_) => Err(timed_out(&target.config.target.provider, timeout)),
            };
            let latency = started.elapsed();
            target.health.attempts.fetch_add(1, Ordering::Relaxed);
            let error = match result {
                Ok(value) => {
                    target.health.record_success(latency);
                    info.attempts.push(Attempt { target: target.config.target.clone(), outcome: AttemptOutcome::Ok, latency });
                    info.target = Some(target.config.target.clone());
                    return (info, Ok(value));
                }
                Err(error) => error,
            };
            info.attempts.push(Attempt {
                target: target.config.target.clone(),
                outcome: AttemptOutcome::Failed(error.kind),
                latency,
            });
            if error.kind == ErrorKind::ContextLengthExceeded {
                // The prompt does not fit here, nor anywhere smaller: try a larger window.
                let window = target.config.context_window.unwrap_or(0);
                too_long = Some(too_long.map_or(window, |w| w.max(window)));
                tracing::debug!(upstream = %target.config.target, "context window exceeded: {error}");
                last_error = Some(error);
                continue 'targets;
            }
            if !error.kind.is_retryable() {
                // The request itself is at fault (or the credentials): another try, here or
                // on the next target, would fail the same way.
                return (info, Err(error));
            }
            let now = Instant::now();
            target.health.record_failure(now);
            if let Some(secs) = error.retry_after.filter(|&s| s > 0) {
                limits.holds.hold(&target.config.target, now + Duration::from_secs(secs).min(super::holdoff::MAX_HOLD), now);
            }
            let delay = if retry < route.retries.attempts {
                route.retries.delay(retry, error.retry_after, &mut rand::rng())
            } else {
                None
            };
            tracing::debug!(
                upstream = %target.config.target,
                kind = ?error.kind,
                retry_in_ms = delay.map(|d| d.as_millis()),
                "attempt failed: {error}"
            );
            last_error = Some(error);
            let Some(delay) = delay else { continue 'targets };
            let breaker_opened = target.health.breaker.as_ref().is_some_and(|b| b.state(now) != BreakerState::Closed);
            if breaker_opened || now + delay >= deadline || !limits.budget.try_withdraw() {
                continue 'targets;
            }
            tokio::time::sleep(delay).await;
            retry += 1;
        }
    }

    let error = match (last_error, open_wait) {
        (Some(error), _) => error,
        (None, Some(wait)) => {
            let mut error = ProviderError::new(
                ErrorKind::Unavailable,
                "fungible",
                format!(
                    "every target of {} is unavailable (failing with an open circuit breaker, or asked by its upstream's Retry-After to wait); the next try is possible in {} s",
                    match info.route.as_deref() {
                        Some(route) => format!("{route:?}"),
                        None => candidates
                            .first()
                            .map(|&(leg, i)| format!("{:?}", legs[leg].0.targets[i].config.target.to_string()))
                            .unwrap_or_default(),
                    },
                    wait.as_secs_f64().ceil().max(1.0)
                ),
            );
            error.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
            error
        }
        (None, None) => {
            let provider = candidates
                .first()
                .map(|&(leg, i)| legs[leg].0.targets[i].config.target.provider.clone())
                .unwrap_or_else(|| "fungible".to_owned());
            timed_out(&provider, total)
        }
    };
    (info, Err(error))
}

fn timed_out(provider: &str, after: Duration) -> ProviderError {
    let after = if after.subsec_millis() == 0 { format!("{} s", after.as_secs()) } else { format!("{} ms", after.as_millis()) };
    ProviderError::new(ErrorKind::Timeout, provider, format!("no response within {after}"))
}

/// A call in flight on a route target, for `least_busy`; counted until dropped.
#[derive(Debug)]
pub(crate) struct InFlight {
    route: Arc<Route>,
    index: usize,
}

impl InFlight {
    pub(crate) fn start(route: Arc<Route>, index: usize) -> InFlight {
        route.targets[index].health.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { route, index }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.route.targets[self.index].health.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a stream event commits the stream to its target: anything the client would see
/// as output. `Start` and `Usage` (input counts some vendors send first) do not, nor an
/// empty text delta (OpenAI opens with `content: ""`).
pub(crate) fn is_content(event: &StreamEvent) -> bool {
    match event {
        StreamEvent::Start { .. } | StreamEvent::Usage(_) => false,
        StreamEvent::TextDelta { text } | StreamEvent::ReasoningDelta { text } => !text.is_empty(),
        _ => true,
    }
}

/// Reads `stream` up to its first content event, so that a failure before it is an `Err`
/// here (and can be retried or fall back) instead of an error event after the client's
/// response started. The events read are replayed in front of the rest.
pub(crate) async fn until_first_content(mut stream: EventStream) -> Result<EventStream, ProviderError> {
    let mut head = Vec::new();
    loop {
        match stream.next().await {
            Some(Ok(event)) => {
                let content = is_content(&event);
                head.push(Ok(event));
                if content {
                    return Ok(Box::pin(futures::stream::iter(head).chain(stream)));
                }
            }
            Some(Err(error)) => return Err(error),
            None => return Ok(Box::pin(futures::stream::iter(head))),
        }
    }
}

/// A stream handed to the client: keeps its target counted in flight until it ends, and
/// tells the target's breaker about a failure after it started.
pub(crate) struct TrackedStream {
    inner: EventStream,
    in_flight: InFlight,
}

impl TrackedStream {
    pub(crate) fn new(inner: EventStream, in_flight: InFlight) -> TrackedStream {
        TrackedStream { inner, in_flight }
    }
}

impl Stream for TrackedStream {
    type Item = Result<StreamEvent, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = futures::ready!(self.inner.as_mut().poll_next(cx));
        if let Some(Err(error)) = &item
            && error.kind.is_retryable()
        {
            self.in_flight.route.targets[self.in_flight.index].health.record_failure(Instant::now());
        }
        Poll::Ready(item)
    }
}

/// A stream with deadlines: the first content must come by `first_content` (the time to
/// first token, counted from the call), and once content flowed no gap between two events may
/// exceed `idle`. A missed deadline ends the stream with a `Timeout` error (dropping the
/// upstream response): before content that error fails over like any retryable failure;
/// after it, it is a stream failure the continuation logic may recover.
pub(crate) struct Watchdog {
    inner: EventStream,
    provider: String,
    first_content: Option<(Instant, Duration)>,
    idle: Option<Duration>,
    seen_content: bool,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
}

impl Watchdog {
    /// `started` is when the call began; `ttft` and `idle` as configured for the target.
    pub(crate) fn new(inner: EventStream, provider: &str, started: Instant, ttft: Option<Duration>, idle: Option<Duration>) -> Watchdog {
        let timer = ttft.map(|t| Box::pin(tokio::time::sleep_until(started + t)));
        Watchdog {
            inner,
            provider: provider.to_owned(),
            first_content: ttft.map(|t| (started, t)),
            idle,
            seen_content: false,
            timer,
            done: false,
        }
    }

    /// Whether the stream needs watching at all.
    pub(crate) fn needed(ttft: Option<Duration>, idle: Option<Duration>) -> bool {
        ttft.is_some() || idle.is_some()
    }
}

impl Stream for Watchdog {
    type Item = Result<StreamEvent, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(event))) => {
                if is_content(&event) {
                    this.seen_content = true;
                }
                if this.seen_content {
                    this.timer = this.idle.map(|idle| Box::pin(tokio::time::sleep(idle)));
                }
                return Poll::Ready(Some(Ok(event)));
            }
            Poll::Ready(other) => {
                this.done = true;
                return Poll::Ready(other);
            }
            Poll::Pending => {}
        }
        let Some(timer) = this.timer.as_mut() else { return Poll::Pending };
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.done = true;
        // Drop the upstream response now: a stalled vendor connection is not kept open.
        this.inner = Box::pin(futures::stream::empty());
        let message = match (this.seen_content, this.first_content, this.idle) {
            (false, Some((_, ttft)), _) => format!("no first token within {} (ttft_timeout_ms)", show(ttft)),
            (_, _, Some(idle)) => format!("the stream stalled: nothing for {} after content (idle_timeout_ms)", show(idle)),
            _ => "the stream timed out".to_owned(),
        };
        Poll::Ready(Some(Err(ProviderError::new(ErrorKind::Timeout, &this.provider, message))))
    }
}

fn show(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{} s", d.as_secs()) } else { format!("{} ms", d.as_millis()) }
}
