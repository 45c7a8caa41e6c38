//! Routing under fault injection, end to end through the HTTP front end: two mock
//! upstreams serve as two providers (`a` and `b`, OpenAI-compatible) behind routes with
//! retries, fallbacks, breakers and A/B variants.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
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
        TwoUpstreams::with_providers("", "", routes).await
    }

    /// `a` and `b` are extra TOML lines for `[providers.a]` / `[providers.b]` (`kind = ...`).
    async fn with_providers(a_extra: &str, b_extra: &str, routes: &str) -> TwoUpstreams {
        let a = MockUpstream::start(Fallback::Fail).await;
        let b = MockUpstream::start(Fallback::Fail).await;
        let base = |url: String, extra: &str| {
            // Anthropic's and Gemini's base URLs have no `/v1`.
            if extra.contains("anthropic") || extra.contains("gemini") { url } else { format!("{url}/v1") }
        };
        let toml = format!(
            "[providers.a]\nbase_url = \"{}\"\n{a_extra}\n[providers.b]\nbase_url = \"{}\"\n{b_extra}\n{routes}\n",
            base(a.url(), a_extra),
            base(b.url(), b_extra)
        );
        let file = ConfigFile::parse(&toml, "routing.toml").expect("test config parses");
        let config = GatewayConfig::resolve(file, &|_: &str| None).expect("test config is valid");
        let gateway = Gateway::new(&config).expect("gateway builds");
        let state = AppState::new(gateway, config.max_body_bytes).with_inflight_budget(config.max_inflight_body_bytes);
        TwoUpstreams { h: Harness { mock: a, app: app(state.clone()), state }, b }
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
pub(crate) fn completion(text: &str) -> MockResponse {
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
async fn an_upstream_that_asked_to_wait_is_skipped_by_the_next_requests() {
    // No retries: the 503 falls back at once, and its Retry-After (60 s) keeps a out.
    let routes = "[models.r]\nretries = { attempts = 0 }\ntargets = [{ target = \"a/m\" }, { target = \"b/m\" }]\n";
    let t = TwoUpstreams::new(routes).await;
    t.a().push(failure(503).with_header("retry-after", "60"));
    for i in 0..3 {
        t.b.push(completion("from b"));
        let res = t.chat("r", json!({})).await;
        assert_eq!(answer_text(&res), "from b", "request {i}");
    }
    assert_eq!(t.a().received().len(), 1, "a asked for 60 s and was called only once");
    assert_eq!(t.b.received().len(), 3);
    // The route's status says how long a still asked for.
    let request = axum::http::Request::get("/v1/routes").body(axum::body::Body::empty()).expect("request");
    let body = t.h.send(request).await.json();
    let held = body["data"][0]["targets"][0]["retry_after_s"].as_f64().unwrap_or_default();
    assert!(held > 50.0 && held <= 60.0, "{body}");
    assert!(body["data"][0]["targets"][1]["retry_after_s"].is_null(), "{body}");
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

fn stream_request(model: &str) -> String {
    json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "Say hello."}]}).to_string()
}

/// The text of an OpenAI chat stream, and how many chunks carried a finish reason.
fn streamed_text(data: &[String]) -> (String, usize) {
    let chunks: Vec<serde_json::Value> = data.iter().filter_map(|d| serde_json::from_str(d).ok()).collect();
    let text = chunks.iter().filter_map(|v| v["choices"][0]["delta"]["content"].as_str()).collect();
    let finishes = chunks.iter().filter(|v| v["choices"][0]["finish_reason"].is_string()).count();
    (text, finishes)
}

// Stream timeouts.

#[tokio::test]
async fn a_stream_without_a_first_token_in_time_falls_back() {
    let routes = "[models.r]\nretries = { attempts = 0 }\nttft_timeout_ms = 300\ntargets = [{ target = \"a/m\" }, { target = \"b/m\" }]\n";
    let t = TwoUpstreams::new(routes).await;
    // a opens (role chunk, no content) and then says nothing.
    t.a().push(MockResponse::sse("").with_body(MockBody::ChunksThenStall(stream_events(1))));
    t.b.push(full_stream());
    let res = tokio::time::timeout(Duration::from_secs(30), t.h.post("/v1/chat/completions", stream_request("r")))
        .await
        .expect("the TTFT timeout fires long before this");
    let data = res.sse_data();
    assert_eq!(streamed_text(&data), ("Hello!".to_owned(), 1), "{data:?}");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(res.headers.get("x-fungible-attempts").and_then(|v| v.to_str().ok()), Some("2"));
    // The stalled upstream response was dropped, not left open.
    tokio::time::timeout(Duration::from_secs(30), t.a().wait_for_disconnects(1)).await.expect("a's stream was dropped");
}

#[tokio::test]
async fn a_per_target_ttft_timeout_overrides_the_routes() {
    // The route allows 60 s; target a only 300 ms (target > route > [routing]).
    let routes = "[routing]\nttft_timeout_ms = 60000\n[models.r]\nretries = { attempts = 0 }\ntargets = [{ target = \"a/m\", ttft_timeout_ms = 300 }, { target = \"b/m\" }]\n";
    let t = TwoUpstreams::new(routes).await;
    t.a().push(MockResponse::json(200, "").with_body(MockBody::Hang));
    t.b.push(full_stream());
    let res = tokio::time::timeout(Duration::from_secs(30), t.h.post("/v1/chat/completions", stream_request("r")))
        .await
        .expect("a's 300 ms applies, not the route's 60 s");
    assert_eq!(streamed_text(&res.sse_data()).0, "Hello!");
}

#[tokio::test]
async fn a_stall_after_content_without_a_prefill_target_ends_with_an_error() {
    let routes = "[models.r]\nretries = { attempts = 0 }\nidle_timeout_ms = 300\ntargets = [{ target = \"a/m\" }, { target = \"b/m\" }]\n";
    let t = TwoUpstreams::new(routes).await;
    t.a().push(MockResponse::sse("").with_body(MockBody::ChunksThenStall(stream_events(2))));
    let res = tokio::time::timeout(Duration::from_secs(30), t.h.post("/v1/chat/completions", stream_request("r")))
        .await
        .expect("the idle timeout fires");
    let data = res.sse_data();
    assert_eq!(streamed_text(&data).0, "Hel");
    let last = data.last().cloned().unwrap_or_default();
    assert!(last.contains("\"error\"") && last.contains("idle_timeout_ms"), "an explicit error, not a silent finish: {data:?}");
    assert_eq!(t.b.received().len(), 0, "plain OpenAI-compatible b cannot continue a message");
}

// Continuing a stream that failed after content.

/// An Anthropic stream whose text is `pieces`.
fn anthropic_stream(pieces: &[&str]) -> MockResponse {
    let mut out = String::from(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":14,\"output_tokens\":1}}}\n\n\
         event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    );
    for piece in pieces {
        out.push_str(&format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{}}}}}\n\n",
            serde_json::Value::from(*piece)
        ));
    }
    out.push_str(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
         event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":2}}\n\n\
         event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    MockResponse::sse(out)
}

#[tokio::test]
async fn a_stream_cut_after_content_is_continued_by_an_anthropic_target_with_a_prefill() {
    let routes = "[models.r]\nretries = { attempts = 0 }\ntargets = [{ target = \"a/m\" }, { target = \"b/claude\" }]\n";
    let t = TwoUpstreams::with_providers("", "kind = \"anthropic\"", routes).await;
    t.a().push(MockResponse::sse("").with_body(MockBody::ChunksThenReset(stream_events(2))));
    t.b.push(anthropic_stream(&["lo", "!"]));
    let body = json!({"model": "r", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "Say hello."}]});
    let res = t.h.post("/v1/chat/completions", body.to_string()).await;
    assert_eq!(res.status, 200);
    let data = res.sse_data();
    assert_eq!(streamed_text(&data), ("Hello!".to_owned(), 1), "the text once, one finish: {data:?}");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(!data.iter().any(|d| d.contains("\"error\"")), "{data:?}");
    let sent = t.b.single_request().json();
    let messages = sent["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().cloned().unwrap_or_default();
    assert_eq!(last["role"], "assistant", "{sent}");
    let prefix = last["content"].as_str().map(str::to_owned).or_else(|| last["content"][0]["text"].as_str().map(str::to_owned));
    assert_eq!(prefix.as_deref(), Some("Hel"), "the text so far is the prefill: {sent}");
    let usage = data.iter().filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok()).find(|v| v["usage"].is_object());
    assert_eq!(usage.map(|u| u["usage"]["completion_tokens"].clone()), Some(json!(2)), "b's usage (a reported none)");
}

/// `[store] raw_bodies` with a continuation: the continuation's call is made while the
/// client reads the stream, and its bodies are recorded beside the first call's.
#[tokio::test]
async fn a_continuations_raw_bodies_are_recorded_beside_the_first_calls() {
    let routes = "[models.r]\nretries = { attempts = 0 }\ntargets = [{ target = \"a/m\" }, { target = \"b/claude\" }]\n";
    let mut t = TwoUpstreams::with_providers("", "kind = \"anthropic\"", routes).await;
    let store = crate::recording::sqlite_store().await;
    let recorder = fungible_store::Recorder::start(store.clone(), fungible_store::RecorderOptions::default());
    let mut state = t.h.state.clone().with_recorder(store, recorder.clone());
    state.shared_mut().recording.raw_bodies = Some(1 << 20);
    t.h.app = app(state.clone());
    t.h.state = state;
    t.a().push(MockResponse::sse("").with_body(MockBody::ChunksThenReset(stream_events(2))));
    t.b.push(anthropic_stream(&["lo", "!"]));
    let res = t.h.post("/v1/chat/completions", stream_request("r")).await;
    assert_eq!(streamed_text(&res.sse_data()).0, "Hello!");
    recorder.flush().await;
    let list = t.h.send(Request::get("/v1/inferences").body(Body::empty()).expect("request")).await.json();
    let id = list["data"][0]["id"].as_str().expect("one record").to_owned();
    let full = t.h.send(Request::get(format!("/v1/inferences/{id}")).body(Body::empty()).expect("request")).await.json();
    let raw = full["raw"].as_array().cloned().unwrap_or_default();
    let providers: Vec<&str> = raw.iter().filter_map(|r| r["provider"].as_str()).collect();
    assert_eq!(providers, ["a", "b"], "{full}");
    assert_eq!(raw[1]["request"].as_str().map(str::as_bytes), Some(&t.b.single_request().body[..]));
    assert!(raw[1]["response"].as_str().is_some_and(|r| r.contains("message_stop")), "b's raw SSE: {}", raw[1]);
}

#[tokio::test]
async fn a_stall_after_content_is_continued_by_a_prefix_flavoured_server() {
    for (flavour, check) in [
        ("prefix", "prefix"),
        ("continue_final_message", "continue_final_message"),
    ] {
        let routes = "[models.r]\nretries = { attempts = 0 }\nidle_timeout_ms = 300\ntargets = [{ target = \"a/m\" }, { target = \"b/m\" }]\n";
        let t = TwoUpstreams::with_providers("", &format!("prefill = \"{flavour}\""), routes).await;
        t.a().push(MockResponse::sse("").with_body(MockBody::ChunksThenStall(stream_events(2))));
        // b streams the rest of the answer as OpenAI chunks.
        let rest: Vec<Bytes> = stream_events(16).into_iter().skip(3).collect();
        let mut head = stream_events(1);
        head.push(Bytes::from(
            "data: {\"id\":\"c2\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\n",
        ));
        head.extend(rest);
        t.b.push(MockResponse::sse("").with_body(MockBody::Chunks(head)));
        let res = tokio::time::timeout(Duration::from_secs(30), t.h.post("/v1/chat/completions", stream_request("r")))
            .await
            .expect("the stall is noticed");
        let data = res.sse_data();
        assert_eq!(streamed_text(&data), ("Hello!".to_owned(), 1), "{flavour}: {data:?}");
        let sent = t.b.single_request().json();
        let last = sent["messages"].as_array().and_then(|m| m.last()).cloned().unwrap_or_default();
        assert_eq!((last["role"].as_str(), last["content"].as_str()), (Some("assistant"), Some("Hel")), "{sent}");
        match check {
            "prefix" => assert_eq!(last["prefix"], true, "{sent}"),
            _ => {
                assert_eq!(sent["continue_final_message"], true, "{sent}");
                assert_eq!(sent["add_generation_prompt"], false, "{sent}");
            }
        }
    }
}

/// A cut stream is continued on its own target first when that target can prefill; the
/// fallback is not called.
#[tokio::test]
async fn a_stream_cut_after_content_is_continued_on_the_same_target_when_it_can_prefill() {
    let routes = "[models.r]\nretries = { attempts = 0 }\ntargets = [{ target = \"a/m\" }, { target = \"b/m\" }]\n";
    let t = TwoUpstreams::with_providers("prefill = \"prefix\"", "prefill = \"prefix\"", routes).await;
    t.a().push(MockResponse::sse("").with_body(MockBody::ChunksThenReset(stream_events(2))));
    let rest: Vec<Bytes> = stream_events(16).into_iter().skip(3).collect();
    let mut head = stream_events(1);
    head.push(Bytes::from(
        "data: {\"id\":\"c2\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\n",
    ));
    head.extend(rest);
    t.a().push(MockResponse::sse("").with_body(MockBody::Chunks(head)));
    let data = t.h.post("/v1/chat/completions", stream_request("r")).await.sse_data();
    assert_eq!(streamed_text(&data), ("Hello!".to_owned(), 1), "{data:?}");
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let received = t.a().received();
    assert_eq!(received.len(), 2, "a was asked again");
    let last = received[1].json()["messages"].as_array().and_then(|m| m.last()).cloned().unwrap_or_default();
    assert_eq!((last["role"].as_str(), last["content"].as_str(), last["prefix"].as_bool()), (Some("assistant"), Some("Hel"), Some(true)));
    assert_eq!(t.b.received().len(), 0, "the fallback was not needed");
}

#[tokio::test]
async fn no_continuation_when_switched_off_or_a_tool_call_was_under_way() {
    let routes = "[models.r]\nretries = { attempts = 0 }\ncontinue_on_stream_failure = false\ntargets = [{ target = \"a/m\" }, { target = \"b/claude\" }]\n";
    let t = TwoUpstreams::with_providers("", "kind = \"anthropic\"", routes).await;
    t.a().push(MockResponse::sse("").with_body(MockBody::ChunksThenReset(stream_events(2))));
    let data = t.h.post("/v1/chat/completions", stream_request("r")).await.sse_data();
    assert!(data.last().is_some_and(|d| d.contains("\"error\"")), "{data:?}");
    assert_eq!(t.b.received().len(), 0);

    let routes = "[models.r]\nretries = { attempts = 0 }\ntargets = [{ target = \"a/m\" }, { target = \"b/claude\" }]\n";
    let t = TwoUpstreams::with_providers("", "kind = \"anthropic\"", routes).await;
    let tool_chunk = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\"\"}}]},\"finish_reason\":null}]}\n\n";
    let mut head = stream_events(1);
    head.push(Bytes::from(tool_chunk));
    t.a().push(MockResponse::sse("").with_body(MockBody::ChunksThenReset(head)));
    let data = t.h.post("/v1/chat/completions", stream_request("r")).await.sse_data();
    assert!(data.last().is_some_and(|d| d.contains("\"error\"")), "{data:?}");
    assert_eq!(t.b.received().len(), 0, "half a tool call cannot be continued");
}

// Context-length fallback, with each vendor's own error body.

#[tokio::test]
async fn a_context_length_error_falls_back_to_a_larger_window_for_every_vendor() {
    let cases = [
        (
            "",
            400,
            r#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
        ),
        (
            "",
            400,
            r#"{"error":{"message":"Your input exceeds the context window of this model. Please adjust your input and try again.","type":"invalid_request_error","param":"input","code":"context_length_exceeded"}}"#,
        ),
        (
            "kind = \"anthropic\"",
            400,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 208310 tokens > 200000 maximum"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#,
        ),
        (
            "kind = \"gemini\"",
            400,
            r#"{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#,
        ),
        (
            "",
            400,
            r#"{"object":"error","message":"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens (4000 in the messages, 1000 in the completion). Please reduce the length of the messages or completion.","type":"BadRequestError","param":null,"code":400}"#,
        ),
    ];
    let routes = "[models.r]\ntargets = [{ target = \"a/small\", context_window = 8192 }, { target = \"b/big\", context_window = 1000000 }]\n";
    for (a_kind, status, body) in cases {
        let t = TwoUpstreams::with_providers(a_kind, "", routes).await;
        t.a().push(MockResponse::json(status, body));
        t.b.push(completion("from b"));
        let res = t.chat("r", json!({})).await;
        assert_eq!(answer_text(&res), "from b", "{a_kind}: {body}");
        assert_eq!(t.a().received().len(), 1, "not retried on the same target: {body}");
    }

    // Nothing larger: the client gets the vendor's words as a 400 with OpenAI's code.
    let routes = "[models.r]\ntargets = [{ target = \"a/big\", context_window = 128000 }, { target = \"b/small\", context_window = 8192 }]\n";
    let t = TwoUpstreams::with_providers("kind = \"anthropic\"", "", routes).await;
    t.a().push(MockResponse::json(400, cases[2].2));
    let error = t.chat("r", json!({})).await.openai_error(400);
    assert_eq!(error["code"], "context_length_exceeded", "{error}");
    assert!(error["message"].as_str().unwrap_or_default().contains("prompt is too long"), "{error}");
    assert_eq!(t.b.received().len(), 0, "a smaller window would fail the same way");
}

#[tokio::test]
async fn an_ordinary_400_still_does_not_fall_back() {
    let routes = "[models.r]\ntargets = [{ target = \"a/m\", context_window = 8192 }, { target = \"b/m\", context_window = 128000 }]\n";
    let t = TwoUpstreams::new(routes).await;
    t.a().push(MockResponse::json(400, r#"{"error":{"message":"Invalid value for 'temperature'","type":"invalid_request_error","param":"temperature","code":"invalid_value"}}"#));
    t.chat("r", json!({})).await.openai_error(400);
    assert_eq!(t.b.received().len(), 0);
}

// GET /v1/routes.

#[tokio::test]
async fn routes_status_reports_breakers_and_counts() {
    let routes = "[models.r]\nretries = { attempts = 0 }\nbreaker = { failures = 1, cooldown_secs = 60 }\ntargets = [{ target = \"a/m\", name = \"primary\" }, { target = \"b/m\" }]\n";
    let t = TwoUpstreams::new(routes).await;
    t.a().push(failure(503));
    t.b.push(completion("from b"));
    assert_eq!(answer_text(&t.chat("r", json!({})).await), "from b");
    let request = axum::http::Request::get("/v1/routes").body(axum::body::Body::empty()).expect("request");
    let res = t.h.send(request).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let body = res.json();
    assert_eq!(body["object"], "list");
    let route = &body["data"][0];
    assert_eq!((route["route"].as_str(), route["strategy"].as_str()), (Some("r"), Some("fallback")));
    let targets = route["targets"].as_array().cloned().unwrap_or_default();
    assert_eq!(targets.len(), 2);
    assert_eq!(targets[0]["name"], "primary");
    assert_eq!(targets[0]["target"], "a/m");
    assert_eq!(targets[0]["breaker"], "open", "one failure opened it: {body}");
    assert_eq!((targets[0]["attempts"].as_u64(), targets[0]["failures"].as_u64()), (Some(1), Some(1)));
    assert_eq!(targets[0]["first_picks"], 1);
    assert_eq!(targets[1]["breaker"], "closed");
    assert_eq!((targets[1]["attempts"].as_u64(), targets[1]["in_flight"].as_u64()), (Some(1), Some(0)));
    assert!(targets[1]["ewma_ttft_ms"].as_f64().is_some(), "{body}");
    assert!(targets[0]["ewma_ttft_ms"].is_null(), "a never answered: {body}");
}

/// A route over two vendors: the Anthropic client's own fields reach the Anthropic target and
/// never the OpenAI fallback (they are narrowed per target, at the call).
#[tokio::test]
async fn another_vendors_fields_never_reach_a_fallback_of_a_different_vendor() {
    let routes = format!("[models.r]\ntargets = [{{ target = \"a/m\" }}, {{ target = \"b/m\" }}]\n{FAST_RETRIES}\n");
    let t = TwoUpstreams::with_providers("kind = \"anthropic\"", "", &routes).await;
    for _ in 0..3 {
        t.a().push(failure(503));
    }
    t.b.push(completion("from b"));
    let body = json!({"model": "r", "max_tokens": 16, "output_config": {"effort": "high"},
        "messages": [{"role": "user", "content": "Hi"}]});
    let res = t.h.post("/v1/messages", body.to_string()).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let to_a = t.a().received();
    assert!(!to_a.is_empty());
    assert_eq!(to_a[0].json()["output_config"], json!({"effort": "high"}), "the Anthropic target gets its field");
    let to_b = t.b.single_request().json();
    assert!(to_b.get("output_config").is_none(), "the OpenAI fallback gets no Anthropic field: {to_b}");
}
