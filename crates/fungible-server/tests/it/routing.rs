//! Routing under fault injection, end to end through the HTTP front end: two mock
//! upstreams serve as two providers (`a` and `b`, OpenAI-compatible) behind routes with
//! retries, fallbacks, breakers and A/B variants.

use std::time::{Duration, Instant};

use bytes::Bytes;
use fungible_gateway::{ConfigFile, Gateway, GatewayConfig};
use fungible_mock::{Fallback, MockBody, MockResponse, MockUpstream};
use fungible_server::{AppState, app};
use serde_json::json;

use crate::{Harness, TestResponse, fixtures};

/// Two upstreams: `h.mock` is provider `a`, `b` is provider `b`.
struct TwoUpstreams {
    h: Harness,
    b: MockUpstream,
}

impl TwoUpstreams {
    /// `routes` is TOML for `[models.*]` / `[routing]`.
    async fn new(routes: &str) -> TwoUpstreams {
        let a = MockUpstream::start(Fallback::Fail).await;
        let b = MockUpstream::start(Fallback::Fail).await;
        let toml = format!(
            "[providers.a]\nbase_url = \"{}/v1\"\n[providers.b]\nbase_url = \"{}/v1\"\n{routes}\n",
            a.url(),
            b.url()
        );
        let file = ConfigFile::parse(&toml, "routing.toml").expect("test config parses");
        let config = GatewayConfig::resolve(file, &|_: &str| None).expect("test config is valid");
        let gateway = Gateway::new(&config).expect("gateway builds");
        let app = app(AppState::new(gateway, config.max_body_bytes));
        TwoUpstreams { h: Harness { mock: a, app }, b }
    }

    fn a(&self) -> &MockUpstream {
        &self.h.mock
    }

    async fn chat(&self, model: &str, extra: serde_json::Value) -> TestResponse {
        let mut body = json!({"model": model, "messages": [{"role": "user", "content": "Say hello."}]});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        self.h.post("/v1/chat/completions", body.to_string()).await
    }
}

/// An OpenAI completion whose text says who answered.
fn completion(text: &str) -> MockResponse {
    MockResponse::json(
        200,
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        })
        .to_string(),
    )
}

fn failure(status: u16) -> MockResponse {
    MockResponse::fixture(status, fixtures().join("openai").join("error.json"))
}

fn answer_text(res: &TestResponse) -> String {
    assert_eq!(res.status, 200, "{}", res.text());
    res.json()["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned()
}

/// The first `n` events of the OpenAI stream fixture, each its own write.
fn stream_events(n: usize) -> Vec<Bytes> {
    let text = std::fs::read_to_string(fixtures().join("openai").join("stream.response.sse")).expect("fixture");
    text.split("\n\n").filter(|e| !e.trim().is_empty()).take(n).map(|e| Bytes::from(format!("{e}\n\n"))).collect()
}

fn full_stream() -> MockResponse {
    MockResponse::fixture(200, fixtures().join("openai").join("stream.response.sse"))
}

const FAST_RETRIES: &str = "retries = { attempts = 2, initial_backoff_ms = 1, max_backoff_ms = 5000 }";

#[tokio::test]
async fn a_503_then_success_is_retried_on_the_same_target() {
    let t = TwoUpstreams::new(&format!("[models.r]\ntarget = \"a/m\"\n{FAST_RETRIES}\n")).await;
    t.a().push(failure(503));
    t.a().push(completion("from a"));
    let res = t.chat("r", json!({})).await;
    assert_eq!(answer_text(&res), "from a");
    assert_eq!(t.a().received().len(), 2);
    assert_eq!(t.a().received()[1].json()["model"], "m");
}

#[tokio::test]
async fn a_429_with_retry_after_is_not_retried_sooner() {
    let t = TwoUpstreams::new(&format!("[models.r]\ntarget = \"a/m\"\n{FAST_RETRIES}\n")).await;
    t.a().push(failure(429).with_header("retry-after", "1"));
    t.a().push(completion("from a"));
    let started = Instant::now();
    let res = t.chat("r", json!({})).await;
    assert_eq!(answer_text(&res), "from a");
    assert!(started.elapsed() >= Duration::from_secs(1), "retried after {:?}", started.elapsed());
    assert_eq!(t.a().received().len(), 2);
}

#[tokio::test]
async fn a_400_is_not_retried_and_not_sent_to_the_fallback() {
    let t = TwoUpstreams::new(&format!("[models.r]\ntargets = [{{ target = \"a/m\" }}, {{ target = \"b/m\" }}]\n{FAST_RETRIES}\n")).await;
    t.a().push(failure(400));
    let res = t.chat("r", json!({})).await;
    res.openai_error(400);
    assert_eq!(t.a().received().len(), 1);
    assert_eq!(t.b.received().len(), 0, "a bad request is not the next provider's problem");
}

#[tokio::test]
async fn the_first_target_down_falls_back_to_the_next() {
    let routes = format!(
        "[models.r]\n{FAST_RETRIES}\ntargets = [{{ target = \"a/m1\" }}, {{ target = \"b/m2\", params = {{ temperature = 0.1 }} }}]\n"
    );
    let t = TwoUpstreams::new(&routes).await;
    for _ in 0..3 {
        t.a().push(failure(502));
    }
    t.b.push(completion("from b"));
    let res = t.chat("r", json!({"temperature": 0.9})).await;
    assert_eq!(answer_text(&res), "from b");
    assert_eq!(t.a().received().len(), 3, "the first try and two retries");
    let header = |name: &str| res.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(header("x-fungible-target").as_deref(), Some("b/m2"), "the target that answered");
    assert_eq!(header("x-fungible-attempts").as_deref(), Some("4"));
    assert_eq!(header("x-fungible-route").as_deref(), Some("r"));
    let sent = t.b.single_request().json();
    assert_eq!(sent["model"], "m2");
    assert_eq!(sent["temperature"], 0.1, "the target's params win");
}

#[tokio::test]
async fn a_reset_connection_falls_back() {
    let t = TwoUpstreams::new("[models.r]\nretries = { attempts = 0 }\ntargets = [{ target = \"a/m\" }, { target = \"b/m\" }]\n").await;
    t.a().push(MockResponse::json(200, "").with_body(MockBody::Reset));
    t.b.push(completion("from b"));
    assert_eq!(answer_text(&t.chat("r", json!({})).await), "from b");
}

#[tokio::test]
async fn an_open_breaker_keeps_the_dead_target_from_being_called() {
    let routes = "[models.r]\nretries = { attempts = 0 }\nbreaker = { failures = 2, cooldown_secs = 60 }\ntargets = [{ target = \"a/m\" }, { target = \"b/m\" }]\n";
    let t = TwoUpstreams::new(routes).await;
    t.a().push(failure(503));
    t.a().push(failure(503));
    for _ in 0..5 {
        t.b.push(completion("from b"));
    }
    for _ in 0..5 {
        assert_eq!(answer_text(&t.chat("r", json!({})).await), "from b");
    }
    assert_eq!(t.a().received().len(), 2, "after two failures the breaker opened and a was skipped");
    assert_eq!(t.b.received().len(), 5);
}

#[tokio::test]
async fn every_target_open_fails_fast_with_503_and_retry_after() {
    let routes = "[models.r]\ntarget = \"a/m\"\nretries = { attempts = 0 }\nbreaker = { failures = 1, cooldown_secs = 60 }\n";
    let t = TwoUpstreams::new(routes).await;
    t.a().push(failure(503));
    t.chat("r", json!({})).await.openai_error(503);
    let res = t.chat("r", json!({})).await;
    let error = res.openai_error(503);
    assert!(error["message"].as_str().unwrap_or_default().contains("open circuit breaker"), "{error}");
    assert!(res.headers.get("retry-after").is_some());
    assert_eq!(t.a().received().len(), 1);
}

#[tokio::test]
async fn a_stream_failing_before_its_first_token_falls_back_transparently() {
    let t = TwoUpstreams::new("[models.r]\nretries = { attempts = 0 }\ntargets = [{ target = \"a/m\" }, { target = \"b/m\" }]\n").await;
    // a sends its opening chunk (role, empty content) and dies; b streams the whole answer.
    t.a().push(MockResponse::sse("").with_body(MockBody::ChunksThenReset(stream_events(1))));
    t.b.push(full_stream());
    let res = t.h.post("/v1/chat/completions", json!({"model": "r", "stream": true, "messages": [{"role": "user", "content": "hi"}]}).to_string()).await;
    assert_eq!(res.status, 200);
    let data = res.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    assert!(!data.iter().any(|d| d.contains("\"error\"")), "no trace of a's failure: {data:?}");
    let text: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "Hello!");
    assert_eq!(t.a().received().len(), 1);
    assert_eq!(t.b.received().len(), 1);
}

#[tokio::test]
async fn a_stream_that_cannot_open_falls_back() {
    let t = TwoUpstreams::new("[models.r]\nretries = { attempts = 0 }\ntargets = [{ target = \"a/m\" }, { target = \"b/m\" }]\n").await;
    t.a().push(failure(529));
    t.b.push(full_stream());
    let res = t.h.post("/v1/chat/completions", json!({"model": "r", "stream": true, "messages": [{"role": "user", "content": "hi"}]}).to_string()).await;
    assert_eq!(res.sse_data().last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test]
async fn a_stream_failing_after_content_ends_with_an_error_not_a_retry() {
    let t = TwoUpstreams::new("[models.r]\nretries = { attempts = 0 }\ntargets = [{ target = \"a/m\" }, { target = \"b/m\" }]\n").await;
    t.a().push(MockResponse::sse("").with_body(MockBody::ChunksThenReset(stream_events(2))));
    let res = t.h.post("/v1/chat/completions", json!({"model": "r", "stream": true, "messages": [{"role": "user", "content": "hi"}]}).to_string()).await;
    assert_eq!(res.status, 200);
    let data = res.sse_data();
    assert!(data.iter().any(|d| d.contains("\"Hel\"")), "{data:?}");
    assert!(data.last().is_some_and(|d| d.contains("\"error\"")), "explicit error, not a silent finish: {data:?}");
    assert!(!data.iter().any(|d| d == "[DONE]"));
    assert_eq!(t.b.received().len(), 0, "content had flowed: no retry");
}

#[tokio::test]
async fn a_per_request_models_list_is_a_fallback_route() {
    let t = TwoUpstreams::new("").await;
    t.a().push(failure(503));
    t.b.push(completion("from b"));
    let res = t.chat("a/m1", json!({"models": ["b/m2"]})).await;
    assert_eq!(answer_text(&res), "from b");
    let sent = t.b.single_request().json();
    assert_eq!(sent["model"], "m2");
    assert!(sent.get("models").is_none(), "the fallback list is not sent upstream: {sent}");
    assert!(t.a().single_request().json().get("models").is_none());

    // An unknown model in the list is the client's mistake, found before any call.
    let res = t.chat("a/m1", json!({"fallbacks": ["b/m2", "nope"]})).await;
    let error = res.openai_error(404);
    assert!(error["message"].as_str().unwrap_or_default().starts_with("fallbacks[1]"), "{error}");
    assert_eq!(t.a().received().len(), 1);
}

#[tokio::test]
async fn a_direct_model_is_not_retried() {
    let t = TwoUpstreams::new("").await;
    t.a().push(failure(503));
    t.chat("a/m", json!({})).await.openai_error(503);
    assert_eq!(t.a().received().len(), 1);
}

#[tokio::test]
async fn sticky_variants_send_each_user_to_one_target() {
    let routes = "[models.ab]\nstrategy = \"weighted\"\nsticky = \"user\"\ntargets = [{ target = \"a/m\" }, { target = \"b/m\" }]\n";
    let t = TwoUpstreams::new(routes).await;
    for _ in 0..8 {
        t.a().push(completion("a"));
        t.b.push(completion("b"));
    }
    let first = answer_text(&t.chat("ab", json!({"user": "user-7"})).await);
    for _ in 0..7 {
        assert_eq!(answer_text(&t.chat("ab", json!({"user": "user-7"})).await), first);
    }
    let (same, other) = if first == "a" { (t.a(), &t.b) } else { (&t.b, t.a()) };
    assert_eq!((same.received().len(), other.received().len()), (8, 0));
}

/// Every inbound API says which target answered, streamed or not.
#[tokio::test]
async fn every_front_end_reports_the_target_that_answered() {
    let routes = format!("[models.r]\n{FAST_RETRIES}\ntargets = [{{ target = \"a/m1\" }}, {{ target = \"b/m2\" }}]\n");
    let requests: [(&str, serde_json::Value); 4] = [
        ("/v1/chat/completions", json!({"model": "r", "messages": [{"role": "user", "content": "hi"}]})),
        ("/v1/messages", json!({"model": "r", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})),
        ("/v1/responses", json!({"model": "r", "input": "hi"})),
        ("/v1beta/models/r:generateContent", json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})),
    ];
    for (path, body) in requests {
        for stream in [false, true] {
            let t = TwoUpstreams::new(&routes).await;
            for _ in 0..3 {
                t.a().push(failure(503));
            }
            t.b.push(if stream { full_stream() } else { completion("from b") });
            let mut body = body.clone();
            let path = if stream && path.contains(":generateContent") {
                path.replace(":generateContent", ":streamGenerateContent?alt=sse")
            } else {
                if stream {
                    body["stream"] = json!(true);
                }
                path.to_owned()
            };
            let res = t.h.post(&path, body.to_string()).await;
            assert_eq!(res.status, 200, "{path}: {}", res.text());
            let target = res.headers.get("x-fungible-target").and_then(|v| v.to_str().ok());
            assert_eq!(target, Some("b/m2"), "{path} stream={stream}");
        }
    }
}
