//! Routing tests without sockets: the executor driven by scripted attempts on tokio's paused
//! clock (so "not before 2 s" is checked exactly, in no wall-clock time), and request
//! planning on a gateway built from config.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fungible_types::{ChatRequest, ErrorKind, ProviderError, StreamEvent};
use futures::StreamExt;
use serde_json::json;
use tokio::time::Instant;

use super::balance::Strategy;
use super::breaker::BreakerConfig;
use super::config::{RouteConfig, RouteTargetConfig, StreamTimeouts};
use super::execute::{self, AttemptCtx, Limits, Plan, Watchdog};
use super::policy::{RetryBudget, RetryBudgetConfig, RetryPolicy};
use super::*;
use crate::{ConfigFile, GatewayConfig};

const S: Duration = Duration::from_secs(1);

fn route(targets: &[&str], retries: u32, breaker: BreakerConfig) -> Arc<Route> {
    let config = RouteConfig {
        targets: targets
            .iter()
            .map(|t| RouteTargetConfig::plain(Target::parse(t).unwrap(), StreamTimeouts::default()))
            .collect(),
        strategy: Strategy::Fallback,
        retries: RetryPolicy { attempts: retries, ..RetryPolicy::DEFAULT },
        breaker,
        sticky: None,
        attempt_timeout: None,
        continue_on_stream_failure: true,
        examples: None,
        shadow: Vec::new(),
        adaptive: None,
        guardrails: None,
    };
    Arc::new(Route::configured("r", &config))
}

fn plan_of(route: &Arc<Route>) -> Plan {
    Plan {
        legs: vec![(route.clone(), (0..route.targets.len()).collect())],
        info: RouteInfo { route: Some("r".into()), ..RouteInfo::default() },
    }
}

fn error(kind: ErrorKind, retry_after: Option<u64>) -> ProviderError {
    let mut e = ProviderError::new(kind, "p", "scripted");
    e.retry_after = retry_after;
    e
}

/// Scripted answers per target name, in order; a target with none left answers Ok.
type Answers = BTreeMap<String, Vec<Result<(), ProviderError>>>;

/// A scripted upstream: answers per target name, in order, and logs when each call began.
#[derive(Clone, Default)]
struct Script {
    answers: Arc<Mutex<Answers>>,
    calls: Arc<Mutex<Vec<(String, Instant, bool)>>>,
    /// How long every call takes.
    latency: Duration,
    /// The upstreams' `Retry-After` holds, across this script's requests.
    holds: Arc<super::holdoff::HoldOffs>,
}

impl Script {
    fn answer(self, target: &str, answers: Vec<Result<(), ProviderError>>) -> Script {
        self.answers.lock().unwrap().insert(target.to_owned(), answers);
        self
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().iter().map(|c| c.0.clone()).collect()
    }

    fn times(&self) -> Vec<Duration> {
        let calls = self.calls.lock().unwrap();
        let t0 = calls.first().map(|c| c.1);
        calls.iter().map(|c| c.1 - t0.unwrap_or(c.1)).collect()
    }

    fn last_chances(&self) -> Vec<bool> {
        self.calls.lock().unwrap().iter().map(|c| c.2).collect()
    }

    async fn run(&self, budget: &RetryBudget, max_attempts: u32, plan: Plan, total: Duration) -> (RouteInfo, Result<String, ProviderError>) {
        let limits = Limits { budget, max_attempts, holds: &self.holds };
        execute::execute(limits, plan, total, |ctx: AttemptCtx| {
            let name = ctx.route.targets[ctx.index].config.name.clone();
            self.calls.lock().unwrap().push((name.clone(), Instant::now(), ctx.last_chance));
            let answer = {
                let mut answers = self.answers.lock().unwrap();
                let list = answers.entry(name.clone()).or_default();
                if list.is_empty() { Ok(()) } else { list.remove(0) }
            };
            let latency = self.latency;
            async move {
                let _in_flight = ctx.in_flight;
                tokio::time::sleep(latency).await;
                answer.map(|()| name)
            }
        })
        .await
    }
}

fn budget() -> RetryBudget {
    RetryBudget::new(RetryBudgetConfig::DEFAULT)
}

fn outcomes(info: &RouteInfo) -> Vec<(String, AttemptOutcome)> {
    info.attempts.iter().map(|a| (a.target.to_string(), a.outcome)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_503_is_retried_on_the_same_target() {
    let r = route(&["a/m"], 2, BreakerConfig::DEFAULT);
    let script = Script::default().answer("a/m", vec![Err(error(ErrorKind::Unavailable, None))]);
    let (info, result) = script.run(&budget(), 6, plan_of(&r), 600 * S).await;
    assert_eq!(result.unwrap(), "a/m");
    assert_eq!(script.calls(), ["a/m", "a/m"]);
    assert_eq!(info.target, Target::parse("a/m"));
    assert_eq!(
        outcomes(&info),
        [("a/m".into(), AttemptOutcome::Failed(ErrorKind::Unavailable)), ("a/m".into(), AttemptOutcome::Ok)]
    );
    // Full jitter: the retry came within the first backoff cap (200 ms).
    assert!(script.times()[1] <= Duration::from_millis(200), "{:?}", script.times());
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_2_is_not_retried_before_2_s() {
    let r = route(&["a/m"], 2, BreakerConfig::DEFAULT);
    let script = Script::default().answer("a/m", vec![Err(error(ErrorKind::RateLimited, Some(2)))]);
    let (_, result) = script.run(&budget(), 6, plan_of(&r), 600 * S).await;
    assert!(result.is_ok());
    let times = script.times();
    assert_eq!(times.len(), 2);
    assert!(times[1] >= 2 * S, "retried after {:?}", times[1]);
    // The backoff (at most 200 ms before the first retry) is below the floor: exactly 2 s.
    assert_eq!(times[1], 2 * S);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_longer_than_max_backoff_falls_back_at_once() {
    let r = route(&["a/m", "b/m"], 2, BreakerConfig::DEFAULT);
    let script = Script::default().answer("a/m", vec![Err(error(ErrorKind::RateLimited, Some(60)))]);
    let (info, result) = script.run(&budget(), 6, plan_of(&r), 600 * S).await;
    assert_eq!(result.unwrap(), "b/m");
    assert_eq!(script.calls(), ["a/m", "b/m"]);
    assert_eq!(script.times()[1], Duration::ZERO, "no waiting for a 60 s Retry-After");
    assert_eq!(info.target, Target::parse("b/m"));
}

#[tokio::test(start_paused = true)]
async fn a_400_is_returned_at_once_and_not_sent_to_the_fallback() {
    for kind in [
        ErrorKind::InvalidRequest,
        ErrorKind::Authentication,
        ErrorKind::PermissionDenied,
        ErrorKind::NotFound,
        ErrorKind::Unprocessable,
    ] {
        let r = route(&["a/m", "b/m"], 2, BreakerConfig::DEFAULT);
        let script = Script::default().answer("a/m", vec![Err(error(kind, None))]);
        let (info, result) = script.run(&budget(), 6, plan_of(&r), 600 * S).await;
        assert_eq!(result.unwrap_err().kind, kind);
        assert_eq!(script.calls(), ["a/m"], "{kind:?}");
        assert_eq!(info.target, None);
    }
}

#[tokio::test(start_paused = true)]
async fn spent_retries_fall_back_to_the_next_target() {
    let r = route(&["a/m", "b/m"], 1, BreakerConfig::DEFAULT);
    let down = || Err(error(ErrorKind::UpstreamServer, None));
    let script = Script::default().answer("a/m", vec![down(), down()]);
    let (info, result) = script.run(&budget(), 6, plan_of(&r), 600 * S).await;
    assert_eq!(result.unwrap(), "b/m");
    assert_eq!(script.calls(), ["a/m", "a/m", "b/m"]);
    assert_eq!(info.target, Target::parse("b/m"));
}

#[tokio::test(start_paused = true)]
async fn the_last_failure_is_returned_when_every_target_fails() {
    let r = route(&["a/m", "b/m"], 0, BreakerConfig::DEFAULT);
    let script = Script::default()
        .answer("a/m", vec![Err(error(ErrorKind::Unavailable, None))])
        .answer("b/m", vec![Err(error(ErrorKind::RateLimited, Some(3)))]);
    let (info, result) = script.run(&budget(), 6, plan_of(&r), 600 * S).await;
    let error = result.unwrap_err();
    assert_eq!((error.kind, error.retry_after), (ErrorKind::RateLimited, Some(3)), "the client learns when to come back");
    assert_eq!(info.target, None);
    assert_eq!(info.attempts.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_is_skipped_without_a_call_then_probed_after_the_cooldown() {
    let breaker = BreakerConfig { failures: 2, window: 60 * S, cooldown: 30 * S };
    let r = route(&["a/m", "b/m"], 0, breaker);
    let down = || Err(error(ErrorKind::Unavailable, None));
    let script = Script::default().answer("a/m", vec![down(), down()]);
    let b = budget();
    for _ in 0..2 {
        let (_, result) = script.run(&b, 6, plan_of(&r), 600 * S).await;
        assert_eq!(result.unwrap(), "b/m");
    }
    assert_eq!(script.calls(), ["a/m", "b/m", "a/m", "b/m"]);
    // Two failures opened a's breaker: the next requests go straight to b.
    for _ in 0..3 {
        let (info, result) = script.run(&b, 6, plan_of(&r), 600 * S).await;
        assert_eq!(result.unwrap(), "b/m");
        assert_eq!(outcomes(&info)[0], ("a/m".into(), AttemptOutcome::CircuitOpen));
    }
    assert_eq!(script.calls().iter().filter(|c| *c == "a/m").count(), 2, "the dead target was not called");
    // After the cooldown one probe reaches a; it succeeds and closes the breaker.
    tokio::time::advance(30 * S).await;
    let (_, result) = script.run(&b, 6, plan_of(&r), 600 * S).await;
    assert_eq!(result.unwrap(), "a/m");
    let (_, result) = script.run(&b, 6, plan_of(&r), 600 * S).await;
    assert_eq!(result.unwrap(), "a/m");
    assert_eq!(r.targets[0].health.breaker.as_ref().map(|b| b.state(Instant::now())), Some(BreakerState::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_route_whose_every_breaker_is_open_fails_fast_with_a_retry_after() {
    let breaker = BreakerConfig { failures: 1, window: 60 * S, cooldown: 30 * S };
    let r = route(&["a/m"], 0, breaker);
    let script = Script::default().answer("a/m", vec![Err(error(ErrorKind::Unavailable, None))]);
    let b = budget();
    let _ = script.run(&b, 6, plan_of(&r), 600 * S).await;
    tokio::time::advance(10 * S).await;
    let (info, result) = script.run(&b, 6, plan_of(&r), 600 * S).await;
    let error = result.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Unavailable);
    assert_eq!(error.retry_after, Some(20));
    assert!(error.message.contains("open circuit breaker"), "{error}");
    assert_eq!(script.calls().len(), 1, "no call while open");
    assert_eq!(outcomes(&info), [("a/m".into(), AttemptOutcome::CircuitOpen)]);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_keeps_every_request_off_the_upstream_until_it_runs_out() {
    let r = route(&["a/m", "b/m"], 0, BreakerConfig::DEFAULT);
    let script = Script::default().answer("a/m", vec![Err(error(ErrorKind::Unavailable, Some(1)))]);
    let b = budget();
    let (_, result) = script.run(&b, 6, plan_of(&r), 600 * S).await;
    assert_eq!(result.unwrap(), "b/m");
    // The next requests skip a without calling it while its Retry-After runs...
    for _ in 0..3 {
        let (info, result) = script.run(&b, 6, plan_of(&r), 600 * S).await;
        assert_eq!(result.unwrap(), "b/m");
        assert_eq!(outcomes(&info), [("a/m".into(), AttemptOutcome::Backoff), ("b/m".into(), AttemptOutcome::Ok)]);
    }
    assert_eq!(script.calls(), ["a/m", "b/m", "b/m", "b/m", "b/m"]);
    // ...and go back to it once it has run out.
    tokio::time::advance(S).await;
    let (_, result) = script.run(&b, 6, plan_of(&r), 600 * S).await;
    assert_eq!(result.unwrap(), "a/m");
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_holds_the_upstream_for_other_routes_to_it_too() {
    let first = route(&["a/m", "b/m"], 0, BreakerConfig::DEFAULT);
    let other = route(&["a/m", "c/m"], 0, BreakerConfig::DEFAULT);
    let script = Script::default().answer("a/m", vec![Err(error(ErrorKind::RateLimited, Some(5)))]);
    let b = budget();
    assert_eq!(script.run(&b, 6, plan_of(&first), 600 * S).await.1.unwrap(), "b/m");
    let (info, result) = script.run(&b, 6, plan_of(&other), 600 * S).await;
    assert_eq!(result.unwrap(), "c/m");
    assert_eq!(outcomes(&info)[0], ("a/m".into(), AttemptOutcome::Backoff));
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_of_a_day_holds_the_upstream_off_five_minutes_at_most() {
    let r = route(&["a/m", "b/m"], 0, BreakerConfig::DEFAULT);
    let script = Script::default().answer("a/m", vec![Err(error(ErrorKind::RateLimited, Some(86_400)))]);
    let b = budget();
    assert_eq!(script.run(&b, 6, plan_of(&r), 600 * S).await.1.unwrap(), "b/m");
    tokio::time::advance(299 * S).await;
    assert_eq!(script.run(&b, 6, plan_of(&r), 600 * S).await.1.unwrap(), "b/m");
    tokio::time::advance(S).await;
    assert_eq!(script.run(&b, 6, plan_of(&r), 600 * S).await.1.unwrap(), "a/m");
}

#[tokio::test(start_paused = true)]
async fn the_last_upstream_left_is_waited_for_when_its_retry_after_is_short() {
    let r = route(&["a/m"], 0, BreakerConfig::DEFAULT);
    let script = Script::default().answer("a/m", vec![Err(error(ErrorKind::RateLimited, Some(2)))]);
    let b = budget();
    assert!(script.run(&b, 6, plan_of(&r), 600 * S).await.1.is_err());
    let (_, result) = script.run(&b, 6, plan_of(&r), 600 * S).await;
    assert_eq!(result.unwrap(), "a/m");
    assert_eq!(script.times(), [Duration::ZERO, 2 * S], "called again once its 2 s had passed");
}

#[tokio::test(start_paused = true)]
async fn a_long_retry_after_on_the_last_upstream_fails_fast_with_it() {
    let r = route(&["a/m"], 0, BreakerConfig::DEFAULT);
    let script = Script::default().answer("a/m", vec![Err(error(ErrorKind::RateLimited, Some(60)))]);
    let b = budget();
    assert!(script.run(&b, 6, plan_of(&r), 600 * S).await.1.is_err());
    tokio::time::advance(10 * S).await;
    let (info, result) = script.run(&b, 6, plan_of(&r), 600 * S).await;
    let error = result.unwrap_err();
    assert_eq!((error.kind, error.retry_after), (ErrorKind::Unavailable, Some(50)));
    assert!(error.message.contains("Retry-After"), "{error}");
    assert_eq!(script.calls().len(), 1, "not called while it asked to be left alone");
    assert_eq!(outcomes(&info), [("a/m".into(), AttemptOutcome::Backoff)]);
}

#[tokio::test(start_paused = true)]
async fn non_retryable_errors_do_not_trip_the_breaker() {
    let breaker = BreakerConfig { failures: 1, window: 60 * S, cooldown: 30 * S };
    let r = route(&["a/m"], 0, breaker);
    let script = Script::default().answer("a/m", vec![Err(error(ErrorKind::InvalidRequest, None))]);
    let b = budget();
    let _ = script.run(&b, 6, plan_of(&r), 600 * S).await;
    let (_, result) = script.run(&b, 6, plan_of(&r), 600 * S).await;
    assert!(result.is_ok(), "a client's bad request says nothing about the target's health");
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_bounds_retries_across_requests() {
    let r = route(&["a/m"], 3, BreakerConfig { failures: 1000, ..BreakerConfig::DEFAULT });
    let b = RetryBudget::new(RetryBudgetConfig { ratio: 0.2, burst: 2 });
    let script = Script::default()
        .answer("a/m", (0..1000).map(|_| Err(error(ErrorKind::Unavailable, None))).collect());
    for _ in 0..20 {
        let _ = script.run(&b, 6, plan_of(&r), 600 * S).await;
    }
    // Without a budget: 20 × 4 = 80 calls. With it: 20 first tries, the burst of 2, and
    // 0.2 per request after that (about 4).
    let calls = script.calls().len();
    assert!((20 + 2..=20 + 2 + 4).contains(&calls), "{calls} calls for 20 requests");
}

#[tokio::test(start_paused = true)]
async fn max_attempts_per_request_bounds_retries_and_fallbacks_together() {
    let r = route(&["a/m", "b/m", "c/m", "d/m"], 2, BreakerConfig::DEFAULT);
    let down = || (0..10).map(|_| Err(error(ErrorKind::Unavailable, None))).collect();
    let script = Script::default().answer("a/m", down()).answer("b/m", down()).answer("c/m", down()).answer("d/m", down());
    let (_, result) = script.run(&budget(), 4, plan_of(&r), 600 * S).await;
    assert!(result.is_err());
    assert_eq!(script.calls(), ["a/m", "a/m", "a/m", "b/m"]);
    assert_eq!(script.last_chances(), [false, false, false, true], "the 4th call is the last one allowed");
}

#[tokio::test(start_paused = true)]
async fn a_hung_target_times_out_per_attempt_and_falls_back() {
    let mut config_route = Arc::try_unwrap(route(&["a/m", "b/m"], 0, BreakerConfig::DEFAULT)).unwrap();
    config_route.attempt_timeout = Some(2 * S);
    let r = Arc::new(config_route);
    let script = Script { latency: 3600 * S, ..Script::default() };
    let started = Instant::now();
    let (info, result) = script.run(&budget(), 6, plan_of(&r), 600 * S).await;
    // Both hang: each gets its 2 s.
    assert_eq!(result.unwrap_err().kind, ErrorKind::Timeout);
    assert_eq!(started.elapsed(), 4 * S);
    assert_eq!(
        outcomes(&info),
        [
            ("a/m".into(), AttemptOutcome::Failed(ErrorKind::Timeout)),
            ("b/m".into(), AttemptOutcome::Failed(ErrorKind::Timeout)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_total_deadline_covers_every_attempt_and_wait() {
    let r = route(&["a/m"], 5, BreakerConfig::DEFAULT);
    let script = Script::default()
        .answer("a/m", (0..10).map(|_| Err(error(ErrorKind::RateLimited, Some(4)))).collect());
    let started = Instant::now();
    let (_, result) = script.run(&budget(), 10, plan_of(&r), 10 * S).await;
    assert_eq!(result.unwrap_err().kind, ErrorKind::RateLimited);
    // Calls at 0, 4 and 8 s; a wait to 12 s would pass the 10 s deadline, so it stops there.
    assert_eq!(script.times(), [Duration::ZERO, 4 * S, 8 * S]);
    assert_eq!(started.elapsed(), 8 * S);
}

#[tokio::test(start_paused = true)]
async fn in_flight_counts_calls_until_they_end() {
    let r = route(&["a/m"], 0, BreakerConfig::DEFAULT);
    let script = Script { latency: 5 * S, ..Script::default() };
    let b = budget();
    let running = script.run(&b, 6, plan_of(&r), 600 * S);
    tokio::pin!(running);
    tokio::select! {
        _ = &mut running => panic!("the call takes 5 s"),
        () = tokio::time::sleep(S) => {}
    }
    assert_eq!(r.targets[0].health.in_flight.load(Ordering::Relaxed), 1);
    let (_, result) = running.await;
    assert!(result.is_ok());
    assert_eq!(r.targets[0].health.in_flight.load(Ordering::Relaxed), 0);
    assert_eq!(r.targets[0].health.ttft.get(), Some(5 * S));
}

fn events(items: Vec<Result<StreamEvent, ProviderError>>) -> fungible_providers::EventStream {
    Box::pin(futures::stream::iter(items))
}

fn start() -> StreamEvent {
    StreamEvent::Start { id: "x".into(), model: "m".into(), created: 0 }
}

#[tokio::test]
async fn a_stream_failing_before_its_first_content_is_an_error_to_fall_back_on() {
    let stream = events(vec![
        Ok(start()),
        Ok(StreamEvent::TextDelta { text: String::new() }),
        Err(error(ErrorKind::Connection, None)),
    ]);
    let result = execute::until_first_content(stream).await;
    assert_eq!(result.err().map(|e| e.kind), Some(ErrorKind::Connection));
}

#[tokio::test]
async fn a_stream_with_content_is_handed_over_whole() {
    let stream = events(vec![
        Ok(start()),
        Ok(StreamEvent::TextDelta { text: "Hi".into() }),
        Err(error(ErrorKind::Connection, None)),
    ]);
    let Ok(stream) = execute::until_first_content(stream).await else { panic!("content flowed") };
    let all: Vec<_> = stream.collect().await;
    assert_eq!(all.len(), 3, "the events read ahead are replayed, the late error kept: {all:?}");
    assert_eq!(all[0], Ok(start()));
    assert!(all[2].is_err());
}

#[test]
fn what_commits_a_stream() {
    assert!(!execute::is_content(&start()));
    assert!(!execute::is_content(&StreamEvent::Usage(Default::default())));
    assert!(!execute::is_content(&StreamEvent::TextDelta { text: String::new() }));
    assert!(execute::is_content(&StreamEvent::TextDelta { text: "a".into() }));
    assert!(execute::is_content(&StreamEvent::ReasoningDelta { text: "a".into() }));
    assert!(execute::is_content(&StreamEvent::ToolCallStart { index: 0, id: "c".into(), name: "f".into() }));
}

// Planning, on a gateway built from config.

fn gateway(toml: &str) -> Gateway {
    let file = ConfigFile::parse(toml, "t.toml").unwrap();
    let env = |k: &str| matches!(k, "OPENAI_API_KEY" | "GROQ_API_KEY").then(|| "k".to_owned());
    Gateway::new(&GatewayConfig::resolve(file, &env).unwrap()).unwrap()
}

fn request(model: &str, extra: serde_json::Value) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        extra_body: extra.as_object().cloned().unwrap_or_default(),
        ..ChatRequest::default()
    }
}

fn leg_targets(plan: &Plan) -> Vec<Vec<String>> {
    plan.legs
        .iter()
        .map(|(route, order)| order.iter().map(|&i| route.targets[i].config.target.to_string()).collect())
        .collect()
}

#[test]
fn a_per_request_models_list_adds_fallback_legs_and_leaves_the_body() {
    let gw = gateway("[models.smart]\ntargets = [{ target = \"openai/gpt-5\" }, { target = \"groq/llama\" }]\n");
    let req = request("openai/gpt-5-mini", json!({"models": ["smart", "groq/qwen", "openai/gpt-5-mini"], "top_k": 3}));
    let (sent, plan) = gw.plan(&req, &RouteHints::default()).unwrap();
    assert_eq!(leg_targets(&plan), [vec!["openai/gpt-5-mini"], vec!["openai/gpt-5", "groq/llama"], vec!["groq/qwen"]]);
    assert!(!sent.extra_body.contains_key("models"), "not sent upstream");
    assert_eq!(sent.extra_body["top_k"], 3);
    // The direct leg is not retried; the alias keeps its route's retries.
    assert_eq!(plan.legs[0].0.retries.attempts, 0);
    assert_eq!(plan.legs[1].0.retries, RetryPolicy::DEFAULT);

    let req = request("smart", json!({"fallbacks": ["groq/llama-3"]}));
    let (sent, plan) = gw.plan(&req, &RouteHints::default()).unwrap();
    assert_eq!(plan.legs.len(), 2);
    assert!(sent.extra_body.is_empty());
    assert_eq!(plan.info.route.as_deref(), Some("smart"));
}

#[test]
fn a_bad_models_list_is_rejected_before_any_call() {
    let gw = gateway("");
    let err = gw.plan(&request("openai/a", json!({"models": ["openai/b", "nope"]})), &RouteHints::default()).unwrap_err();
    assert!(matches!(&err, GatewayError::UnknownModel(m) if m.starts_with("models[1]: ")), "{err}");
    let err = gw.plan(&request("openai/a", json!({"models": "openai/b"})), &RouteHints::default()).unwrap_err();
    assert!(err.to_string().contains("models: expected an array of model names"), "{err}");
    let err = gw.plan(&request("openai/a", json!({"fallbacks": [3]})), &RouteHints::default()).unwrap_err();
    assert!(err.to_string().contains("fallbacks[0]: expected a model name"), "{err}");
}

#[test]
fn target_params_and_extra_body_override_the_clients() {
    let gw = gateway(
        "[models.x]\ntargets = [{ target = \"openai/a\", params = { temperature = 0.1 }, extra_body = { top_k = 9 } }]\n",
    );
    let mut req = request("x", json!({"top_k": 1, "keep": true}));
    req.params.temperature = Some(1.5);
    req.params.seed = Some(7);
    let (_, plan) = gw.plan(&req, &RouteHints::default()).unwrap();
    let sent = request_for(&req, &plan.legs[0].0.targets[0], fungible_providers::ProviderKind::OpenAi);
    assert_eq!(sent.params.temperature, Some(0.1));
    assert_eq!(sent.params.seed, Some(7));
    assert_eq!(sent.extra_body["top_k"], 9);
    assert_eq!(sent.extra_body["keep"], true);
    let direct = Route::direct(Target::parse("openai/a").unwrap(), StreamTimeouts::default());
    assert!(matches!(request_for(&req, &direct.targets[0], fungible_providers::ProviderKind::OpenAi), Cow::Borrowed(_)));
}

const AB: &str = r#"
[models.ab]
strategy = "weighted"
sticky = "header:x-session-id"
targets = [{ target = "openai/a", name = "A" }, { target = "groq/b", name = "B" }]
[models.ab-user]
strategy = "weighted"
sticky = "user"
targets = [{ target = "openai/a", name = "A" }, { target = "groq/b", name = "B" }]
"#;

#[test]
fn sticky_variants_stay_sticky_and_are_counted() {
    let gw = gateway(AB);
    let mut seen = BTreeMap::<String, u32>::new();
    for session in 0..200 {
        let id = format!("s-{session}");
        let hints = gw.route_hints([("X-Session-Id", id.as_str()), ("authorization", "Bearer secret")]);
        assert_eq!(hints.header("authorization"), None, "only the headers a route is sticky on are kept");
        let variant = gw.plan(&request("ab", json!({})), &hints).unwrap().1.info.variant.unwrap();
        for _ in 0..5 {
            assert_eq!(gw.plan(&request("ab", json!({})), &hints).unwrap().1.info.variant.unwrap(), variant);
        }
        *seen.entry(variant).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "both variants get traffic: {seen:?}");
    let picks: u64 = gw.route_status().iter().filter(|t| t.route == "ab").map(|t| t.first_picks).sum();
    assert_eq!(picks, 200 * 6);

    let mut req = request("ab-user", json!({}));
    req.user = Some("user-42".into());
    let variant = gw.plan(&req, &RouteHints::default()).unwrap().1.info.variant;
    for _ in 0..20 {
        assert_eq!(gw.plan(&req, &RouteHints::default()).unwrap().1.info.variant, variant);
    }
}

#[test]
fn route_status_lists_every_target_of_every_route() {
    let gw = gateway(AB);
    let status = gw.route_status();
    let names: Vec<_> = status.iter().map(|t| format!("{}:{}:{}", t.route, t.name, t.target)).collect();
    assert_eq!(names, ["ab:A:openai/a", "ab:B:groq/b", "ab-user:A:openai/a", "ab-user:B:groq/b"]);
    assert!(status.iter().all(|t| t.breaker == BreakerState::Closed && t.in_flight == 0));
}

// Context-length fallback.

fn route_with_windows(targets: &[(&str, Option<u64>)]) -> Arc<Route> {
    let config = RouteConfig {
        targets: targets
            .iter()
            .map(|(t, window)| RouteTargetConfig {
                context_window: *window,
                ..RouteTargetConfig::plain(Target::parse(t).unwrap(), StreamTimeouts::default())
            })
            .collect(),
        strategy: Strategy::Fallback,
        retries: RetryPolicy { attempts: 2, ..RetryPolicy::DEFAULT },
        breaker: BreakerConfig::DEFAULT,
        sticky: None,
        attempt_timeout: None,
        continue_on_stream_failure: true,
        examples: None,
        shadow: Vec::new(),
        adaptive: None,
        guardrails: None,
    };
    Arc::new(Route::configured("r", &config))
}

#[tokio::test(start_paused = true)]
async fn a_context_length_error_skips_to_a_larger_window_without_retrying() {
    let r = route_with_windows(&[("a/small", Some(8_000)), ("b/same", Some(8_000)), ("c/smaller", Some(4_000)), ("d/big", Some(128_000))]);
    let script = Script::default().answer("a/small", vec![Err(error(ErrorKind::ContextLengthExceeded, None))]);
    let (info, result) = script.run(&budget(), 6, plan_of(&r), 600 * S).await;
    assert_eq!(result.unwrap(), "d/big");
    assert_eq!(script.calls(), ["a/small", "d/big"], "no retry, and no target that is no larger");
    assert_eq!(script.times()[1], Duration::ZERO, "no backoff before the larger target");
    assert_eq!(outcomes(&info)[0].1, AttemptOutcome::Failed(ErrorKind::ContextLengthExceeded));
    let status = r.targets[0].health.breaker.as_ref().unwrap().state(Instant::now());
    assert_eq!(status, BreakerState::Closed, "the request, not the target, was at fault");
}

#[tokio::test(start_paused = true)]
async fn unknown_windows_are_tried_and_the_error_is_kept_when_nothing_is_larger() {
    let r = route_with_windows(&[("a/m", None), ("b/m", Some(16_000)), ("c/m", None)]);
    let too_long = || Err(error(ErrorKind::ContextLengthExceeded, None));
    let script = Script::default().answer("a/m", vec![too_long()]).answer("b/m", vec![too_long()]).answer("c/m", vec![too_long()]);
    let (_, result) = script.run(&budget(), 6, plan_of(&r), 600 * S).await;
    assert_eq!(result.unwrap_err().kind, ErrorKind::ContextLengthExceeded);
    assert_eq!(script.calls(), ["a/m", "b/m", "c/m"]);

    let r = route_with_windows(&[("a/m", Some(32_000)), ("b/m", Some(16_000))]);
    let script = Script::default().answer("a/m", vec![too_long()]);
    let (info, result) = script.run(&budget(), 6, plan_of(&r), 600 * S).await;
    assert_eq!(result.unwrap_err().kind, ErrorKind::ContextLengthExceeded, "the client learns its prompt is too long");
    assert_eq!(script.calls(), ["a/m"]);
    assert_eq!(info.attempts.len(), 1);
}

// Stream timeouts, on the paused clock.

fn forever(head: Vec<Result<StreamEvent, ProviderError>>) -> EventStream {
    Box::pin(futures::stream::iter(head).chain(futures::stream::pending()))
}

#[tokio::test(start_paused = true)]
async fn a_stream_without_a_first_token_in_time_is_a_timeout_to_fall_back_on() {
    let started = Instant::now();
    let stream = forever(vec![Ok(start()), Ok(StreamEvent::TextDelta { text: String::new() })]);
    let watched = Box::pin(Watchdog::new(stream, "p", started, Some(2 * S), Some(S)));
    let error = execute::until_first_content(watched).await.err().expect("times out");
    assert_eq!(error.kind, ErrorKind::Timeout);
    assert!(error.kind.is_retryable(), "{error}");
    assert_eq!(started.elapsed(), 2 * S, "exactly the TTFT budget, from the call");
}

#[tokio::test(start_paused = true)]
async fn a_stall_after_content_ends_the_stream_with_a_timeout_after_the_idle_gap() {
    let started = Instant::now();
    let events = futures::stream::iter(vec![Ok(start()), Ok(StreamEvent::TextDelta { text: "Hel".into() })])
        .chain(futures::stream::once(async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok(StreamEvent::TextDelta { text: "lo".into() })
        }))
        .chain(futures::stream::pending());
    // The TTFT budget does not cut a stream that is slow but flowing: only the idle gap.
    let watched = Watchdog::new(Box::pin(events), "p", started, Some(S), Some(2 * S));
    let all: Vec<_> = watched.collect().await;
    assert_eq!(all.len(), 4, "{all:?}");
    assert_eq!(all[2], Ok(StreamEvent::TextDelta { text: "lo".into() }), "a 1.5 s gap is within the 2 s idle budget");
    assert_eq!(all[3].as_ref().err().map(|e| e.kind), Some(ErrorKind::Timeout));
    assert_eq!(started.elapsed(), Duration::from_millis(3500), "the last event plus the idle budget");
}

// Cheapest first.

#[test]
fn cheapest_orders_by_the_injected_prices_with_unknown_last() {
    let gw = gateway(
        "[models.c]\nstrategy = \"cheapest\"\ntargets = [{ target = \"openai/unknown\" }, { target = \"openai/dear\" }, { target = \"groq/cheap\" }]\n",
    );
    // Without prices every target is unknown: random order, all tried.
    let (_, plan) = gw.plan(&request("c", json!({})), &RouteHints::default()).unwrap();
    assert_eq!(plan.legs[0].1.len(), 3);
    let gw = gw.with_prices(Arc::new(|provider: &str, model: &str| match (provider, model) {
        ("openai", "dear") => Some(10.0),
        ("groq", "cheap") => Some(0.2),
        _ => None,
    }));
    for _ in 0..20 {
        let (_, plan) = gw.plan(&request("c", json!({})), &RouteHints::default()).unwrap();
        assert_eq!(leg_targets(&plan), [vec!["groq/cheap", "openai/dear", "openai/unknown"]]);
    }
    let status = gw.route_status();
    assert_eq!(status[0].strategy, Strategy::Cheapest);
}

/// A decider that sends requests mentioning "hard" to the second target.
#[derive(Debug)]
struct ByWord;

impl Decide for ByWord {
    fn decide(&self, req: &ChatRequest, targets: &[Target], _sticky: Option<&str>) -> Result<(Vec<usize>, RouteDecision), String> {
        if targets.len() != 2 {
            return Err(format!("trained for 2 targets, the route has {}", targets.len()));
        }
        let hard = req.messages.iter().any(|m| m.joined_text().contains("hard"));
        let order = if hard { vec![1] } else { vec![0, 1] };
        Ok((order, RouteDecision { by: "v7".into(), detail: json!({ "hard": hard }) }))
    }

    fn status(&self) -> serde_json::Value {
        json!({ "version": 7 })
    }
}

const LEARNED: &str = r#"
[models.smart]
strategy = "learned"
targets = [{ target = "groq/small" }, { target = "openai/large" }]
"#;

#[test]
fn a_learned_route_follows_its_decider_and_keeps_its_order_without_one() {
    use fungible_types::{Message, Role};
    let gw = gateway(LEARNED);
    let ask = |text: &str| ChatRequest { model: "smart".into(), messages: vec![Message::text(Role::User, text)], ..ChatRequest::default() };
    // No router yet: the configured order, and why.
    let (_, plan) = gw.plan(&ask("a hard one"), &RouteHints::default()).unwrap();
    assert_eq!(leg_targets(&plan), [["groq/small", "openai/large"]]);
    let decision = plan.info.decision.expect("recorded");
    assert_eq!(decision.by, "none");
    assert!(decision.detail["reason"].as_str().unwrap().contains("fungible route train"), "{decision:?}");

    gw.set_deciders(BTreeMap::from([("smart".to_owned(), Arc::new(ByWord) as Arc<dyn Decide>)]));
    let (_, plan) = gw.plan(&ask("a hard one"), &RouteHints::default()).unwrap();
    // A target the decider left out is still a fallback.
    assert_eq!(leg_targets(&plan), [["openai/large", "groq/small"]]);
    assert_eq!(plan.info.variant.as_deref(), Some("openai/large"));
    assert_eq!(plan.info.decision.as_ref().map(|d| d.by.as_str()), Some("v7"));
    let (_, plan) = gw.plan(&ask("an easy one"), &RouteHints::default()).unwrap();
    assert_eq!(leg_targets(&plan), [["groq/small", "openai/large"]]);
    assert_eq!(plan.info.decision.unwrap().detail, json!({ "hard": false }));
    // Other routes and direct calls record no decision.
    let (_, plan) = gw.plan(&request("openai/x", json!({})), &RouteHints::default()).unwrap();
    assert_eq!(plan.info.decision, None);
    assert_eq!(
        gw.routes_with(Strategy::Learned),
        [("smart".to_owned(), vec![Target::parse("groq/small").unwrap(), Target::parse("openai/large").unwrap()])]
    );
    assert_eq!(gw.decider_status("smart"), Some(json!({ "version": 7 })));
    assert_eq!(gw.decider_status("other"), None);
}

#[test]
fn a_learned_route_needs_two_targets() {
    let file = ConfigFile::parse("[models.one]\nstrategy = \"learned\"\ntarget = \"openai/a\"\n", "t.toml").unwrap();
    let error = GatewayConfig::resolve(file, &|k: &str| (k == "OPENAI_API_KEY").then(|| "k".to_owned())).unwrap_err();
    assert!(error.to_string().contains("models.one.targets: strategy \"learned\" chooses between targets"), "{error}");
}

#[test]
fn adaptive_settings_are_checked_with_their_paths() {
    let env = |k: &str| (k == "OPENAI_API_KEY").then(|| "k".to_owned());
    let two = "targets = [{ target = \"openai/a\" }, { target = \"openai/b\" }]\n";
    for (section, path) in [
        (format!("strategy = \"adaptive\"\nadaptive = {{ min_share = 0.6 }}\n{two}"), "models.t.adaptive.min_share: must be between 0 and 1/2"),
        (format!("strategy = \"adaptive\"\nadaptive = {{ metric = \"clicks\" }}\n{two}"), "models.t.adaptive.metric: \"clicks\""),
        (format!("strategy = \"adaptive\"\nadaptive = {{ confidence = 1.0 }}\n{two}"), "models.t.adaptive.confidence"),
        (format!("adaptive = {{ metric = \"score\" }}\n{two}"), "models.t.adaptive: only used with strategy = \"adaptive\""),
        ("strategy = \"adaptive\"\ntarget = \"openai/a\"\n".to_owned(), "strategy \"adaptive\" chooses between targets"),
    ] {
        let file = ConfigFile::parse(&format!("[models.t]\n{section}"), "t.toml").unwrap();
        let error = GatewayConfig::resolve(file, &env).unwrap_err().to_string();
        assert!(error.contains(path), "{section}: {error}");
    }
    let file = ConfigFile::parse(&format!("[models.t]\nstrategy = \"adaptive\"\nsticky = \"user\"\n{two}"), "t.toml").unwrap();
    let config = GatewayConfig::resolve(file, &env).unwrap();
    let adaptive = config.routes["t"].adaptive.clone().expect("defaults");
    assert_eq!((adaptive.min_share, adaptive.confidence, adaptive.min_samples), (0.1, 0.95, 100));
}

#[test]
fn guardrail_settings_are_checked_with_their_paths() {
    let env = |k: &str| (k == "OPENAI_API_KEY").then(|| "k".to_owned());
    for (section, path) in [
        ("guardrails = { deny = ['(unclosed'] }", "models.t.guardrails.deny[0]: not a regular expression"),
        ("guardrails = { deny_words = [' '] }", "models.t.guardrails.deny_words[0]: must not be empty"),
        ("guardrails = { max_input_tokens = 0 }", "models.t.guardrails.max_input_tokens"),
        ("guardrails = { action = \"redact\" }", "models.t.guardrails.action: \"redact\""),
    ] {
        let file = ConfigFile::parse(&format!("[models.t]\ntarget = \"openai/a\"\n{section}\n"), "t.toml").unwrap();
        let error = GatewayConfig::resolve(file, &env).unwrap_err().to_string();
        assert!(error.contains(path), "{section}: {error}");
    }
}
