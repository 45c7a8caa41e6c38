//! Shadow traffic (`[models.NAME] shadow`): the candidate gets a sample of the route's
//! requests off the client's path, is recorded linked to the primary and scored against it;
//! the client's answer never changes, whatever the candidate does, and the candidate's
//! concurrency and daily spend are bounded.

use std::time::Duration;

use fungible_gateway::{ConfigFile, Gateway, GatewayConfig};
use fungible_mock::{Fallback, MockBody, MockResponse, MockUpstream};
use fungible_server::{AppState, app};
use fungible_store::{InferenceFilter, PriceTable, Recorder, RecorderOptions, Store};
use serde_json::{Value, json};

use crate::routing::completion;
use crate::{Harness, TestResponse, fixtures};

/// A gateway whose route `smart` answers from mock `a` and shadows to mock `b` with the
/// `shadow` inline table's settings; `b/m` costs $0.40 per token.
struct Shadowed {
    h: Harness,
    b: MockUpstream,
    store: Store,
    recorder: Recorder,
}

impl Shadowed {
    async fn new(shadow: &str) -> Shadowed {
        let a = MockUpstream::start(Fallback::Fail).await;
        let b = MockUpstream::start(Fallback::Fail).await;
        let toml = format!(
            "[providers.a]\nbase_url = \"{}/v1\"\n[providers.b]\nbase_url = \"{}/v1\"\n\
             [models.smart]\ntarget = \"a/m\"\nshadow = [{{ target = \"b/m\", {shadow} }}]\n",
            a.url(),
            b.url()
        );
        let file = ConfigFile::parse(&toml, "shadow.toml").expect("config parses");
        let config = GatewayConfig::resolve(file, &|_: &str| None).expect("config is valid");
        let gateway = Gateway::new(&config).expect("gateway");
        let prices: toml::Table = toml::from_str("[\"b/m\"]\ninput = 400000.0\noutput = 400000.0\n").expect("prices");
        let prices = PriceTable::from_toml(Some(prices)).expect("prices");
        let shadows = fungible_server::shadow::Shadows::new(&config.routes, &gateway, &prices).expect("shadows");
        let store = crate::recording::sqlite_store().await;
        let recorder = Recorder::start(store.clone(), RecorderOptions::default());
        let state = AppState::new(gateway, config.max_body_bytes)
            .with_prices(prices)
            .with_recorder(store.clone(), recorder.clone())
            .with_shadows(shadows)
            .with_ui(fungible_server::ui::Ui::new(fungible_server::ui::Sessions::default()));
        Shadowed { h: Harness { mock: a, app: app(state.clone()), state }, b, store, recorder }
    }

    async fn chat(&self, stream: bool, headers: &[(&str, &str)]) -> TestResponse {
        let body = json!({"model": "smart", "stream": stream, "messages": [{"role": "user", "content": "Say hello."}]});
        let mut request = axum::http::Request::post("/v1/chat/completions").header("content-type", "application/json");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        self.h.send(request.body(axum::body::Body::from(body.to_string())).expect("request")).await
    }

    /// The candidate's tallies in `/v1/routes`.
    async fn tally(&self) -> Value {
        let routes = self.h.send(axum::http::Request::get("/v1/routes").body(axum::body::Body::empty()).expect("request")).await.json();
        routes["data"][0]["shadows"][0].clone()
    }

    /// Waits (generously) until the candidate's tallies satisfy `done`.
    async fn wait_for(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let tally = self.tally().await;
            if done(&tally) {
                return tally;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: {tally}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// An OpenAI answer with one tool call and no text.
fn tool_call(id: &str, arguments: &str) -> MockResponse {
    MockResponse::json(
        200,
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": id, "type": "function", "function": {"name": "weather", "arguments": arguments}}
            ]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        })
        .to_string(),
    )
}

/// A streamed answer's text.
fn deltas(res: &TestResponse) -> String {
    assert_eq!(res.status, 200, "{}", res.text());
    res.sse_data()
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect()
}

fn content(res: &TestResponse) -> String {
    assert_eq!(res.status, 200, "{}", res.text());
    res.json()["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_shadow_is_recorded_linked_and_scored_and_never_changes_the_answer() {
    let s = Shadowed::new("sample_rate = 1.0, score = \"exact\", daily_usd = 100.0").await;

    // Agrees.
    s.h.mock.push(completion("Hello!"));
    s.b.push(completion("Hello!"));
    let res = s.chat(false, &[("x-fungible-tags", "team=ads"), ("x-fungible-episode-id", "ep-1")]).await;
    assert_eq!(content(&res), "Hello!");
    let primary = res.headers["x-fungible-inference-id"].to_str().expect("id").to_owned();
    let t = s.wait_for("scored", |t| t["scored"] == 1).await;
    assert_eq!((t["answered"].as_u64(), t["agreed"].as_u64(), t["agreement"].as_f64()), (Some(1), Some(1), Some(1.0)));
    assert!(t["agreement_low"].as_f64().is_some_and(|l| l > 0.0 && l < 1.0), "{t}");
    assert!((t["cost_usd"].as_f64().unwrap_or_default() - 0.8).abs() < 1e-9, "{t}");
    // The candidate got the primary's request, whole, as one (non-streamed) call.
    let sent = s.b.single_request().json();
    assert_eq!(sent["model"], "m");
    assert_eq!(sent["messages"][0]["content"], "Say hello.");
    // Recorded as its own inference, linked to the primary, with its score as feedback.
    s.recorder.flush().await;
    let shadows = s
        .store
        .list(&InferenceFilter { tags: vec![format!("fungible.shadow_of={primary}")], ..InferenceFilter::default() })
        .await
        .expect("list");
    assert_eq!(shadows.len(), 1);
    let shadow = &shadows[0];
    assert_eq!((shadow.inbound.as_str(), shadow.provider.as_deref()), ("shadow", Some("b")));
    assert_eq!(shadow.tags["fungible.shadow_route"], "smart");
    // Not a turn of the client's episode.
    assert_eq!(shadow.episode_id, None);
    // The client's tags go with it; the primary is untouched.
    assert_eq!(shadow.tags["team"], "ads");
    let feedback = s.store.feedback(&shadow.id).await.expect("feedback");
    assert_eq!(feedback.len(), 1);
    assert_eq!((feedback[0].boolean, feedback[0].score), (Some(true), Some(1.0)));
    assert!(feedback[0].comment.as_deref().is_some_and(|c| c.contains(&primary)), "{feedback:?}");
    let record = s.store.get(&primary).await.expect("get").expect("the primary is recorded");
    assert_eq!((record.inbound.as_str(), record.provider.as_deref(), record.cost), ("openai_chat", Some("a"), None));
    assert_eq!(record.episode_id.as_deref(), Some("ep-1"));
    assert!(s.store.feedback(&primary).await.expect("feedback").is_empty());

    // The routes page shows the candidate's tallies.
    let page = s
        .h
        .send(axum::http::Request::get("/ui/routes").header("host", "localhost").body(axum::body::Body::empty()).expect("request"))
        .await;
    assert_eq!(page.status, 200, "{}", page.text());
    let html = page.text();
    assert!(html.contains("Shadow candidates") && html.contains("b&#x2f;m") && html.contains("100.0% <small>(20.7"), "{html}");

    // Disagrees.
    s.h.mock.push(completion("Hello!"));
    s.b.push(completion("Goodbye."));
    assert_eq!(content(&s.chat(false, &[]).await), "Hello!");
    let t = s.wait_for("scored twice", |t| t["scored"] == 2).await;
    assert_eq!((t["agreed"].as_u64(), t["agreement"].as_f64()), (Some(1), Some(0.5)));

    // Fails: only recorded.
    s.h.mock.push(completion("Hello!"));
    s.b.push(MockResponse::fixture(500, fixtures().join("openai").join("error.json")));
    assert_eq!(content(&s.chat(false, &[]).await), "Hello!");
    let t = s.wait_for("failed", |t| t["failed"] == 1).await;
    assert_eq!(t["answered"], 2);

    // Streams: the client's stream is the primary's, unchanged; the candidate answers whole
    // and is compared with the streamed text.
    let sse = std::fs::read(fixtures().join("openai").join("stream.response.sse")).expect("fixture");
    s.h.mock.push(MockResponse::sse(sse.clone()));
    s.b.push(completion("Hello!"));
    let res = s.chat(true, &[]).await;
    assert_eq!(res.status, 200);
    // What the same stream gives with no shadow.
    let plain = Shadowed::new("sample_rate = 0.0, score = \"exact\"").await;
    plain.h.mock.push(MockResponse::sse(sse));
    assert_eq!(deltas(&res), deltas(&plain.chat(true, &[]).await));
    assert_eq!(deltas(&res), "Hello!");
    let t = s.wait_for("the stream's shadow", |t| t["scored"] == 3).await;
    assert_eq!(t["agreed"], 2, "{t}");
    let last = s.b.received().pop().expect("the candidate was called").json();
    assert_ne!(last["stream"], true);

    // Tool calls are compared as calls: the same call with other ids and spacing agrees, a
    // call with other arguments does not (as text, both answers are empty).
    s.h.mock.push(tool_call("call_a", r#"{"city": "Paris"}"#));
    s.b.push(tool_call("call_b", r#"{"city":"Paris"}"#));
    assert_eq!(s.chat(false, &[]).await.status, 200);
    let t = s.wait_for("the same call", |t| t["scored"] == 4).await;
    assert_eq!(t["agreed"], 3, "{t}");
    s.h.mock.push(tool_call("call_a", r#"{"city": "Paris"}"#));
    s.b.push(tool_call("call_b", r#"{"city": "Lyon"}"#));
    assert_eq!(s.chat(false, &[]).await.status, 200);
    let t = s.wait_for("another call", |t| t["scored"] == 5).await;
    assert_eq!(t["agreed"], 3, "{t}");

    // The recorded calls, from the store: 6 calls (1 failed), 5 scored, 3 agreed.
    s.recorder.flush().await;
    let recorded = s.h.send(axum::http::Request::get("/v1/stats/shadows").body(axum::body::Body::empty()).expect("request")).await.json();
    let row = &recorded["data"][0];
    assert_eq!((row["route"].as_str(), row["candidate"].as_str()), (Some("smart"), Some("b/m")), "{recorded}");
    assert_eq!((row["calls"].as_u64(), row["failed"].as_u64(), row["scored"].as_u64(), row["agreed"].as_u64()), (Some(6), Some(1), Some(5), Some(3)), "{row}");
    assert_eq!(row["agreement"].as_f64(), Some(0.6));
    assert!(row["primary_mean_latency_ms"].as_f64().is_some() && row["cost"].as_f64().is_some_and(|c| (c - 4.0).abs() < 1e-9), "{row}");
    let page = s
        .h
        .send(axum::http::Request::get("/ui/routes").header("host", "localhost").body(axum::body::Body::empty()).expect("request"))
        .await
        .text();
    assert!(page.contains("Shadow calls recorded") && page.contains("60.0% <small>"), "{page}");

    // A hanging candidate: the client's answer does not wait for it.
    s.h.mock.push(completion("Hello!"));
    s.b.push(completion("").with_body(MockBody::Hang));
    let res = tokio::time::timeout(Duration::from_secs(30), s.chat(false, &[])).await.expect("the answer does not wait");
    assert_eq!(content(&res), "Hello!");
    s.wait_for("in flight", |t| t["in_flight"] == 1).await;
}

#[tokio::test]
async fn the_daily_cap_and_the_concurrency_bound_hold() {
    // Each answer costs $0.80: the first two fit under $1 (the second starts at $0.80), the
    // third is skipped.
    let s = Shadowed::new("sample_rate = 1.0, score = \"exact\", daily_usd = 1.0").await;
    for i in 1..=3u64 {
        s.h.mock.push(completion("Hello!"));
        if i < 3 {
            s.b.push(completion("Hello!"));
        }
        assert_eq!(content(&s.chat(false, &[]).await), "Hello!");
        s.wait_for("settled", |t| t["answered"].as_u64().unwrap_or(0) + t["skipped_budget"].as_u64().unwrap_or(0) == i).await;
    }
    let t = s.tally().await;
    assert_eq!((t["answered"].as_u64(), t["skipped_budget"].as_u64()), (Some(2), Some(1)), "{t}");
    assert!((t["spent_today_usd"].as_f64().unwrap_or_default() - 1.6).abs() < 1e-9, "{t}");
    assert_eq!(s.b.request_count(), 2);

    // One call in flight at most: a second request finds the slot taken.
    let s = Shadowed::new("sample_rate = 1.0, score = \"exact\", max_concurrent = 1").await;
    s.h.mock.push(completion("Hello!"));
    s.b.push(completion("").with_body(MockBody::Hang));
    assert_eq!(content(&s.chat(false, &[]).await), "Hello!");
    s.wait_for("in flight", |t| t["in_flight"] == 1).await;
    s.h.mock.push(completion("Hello!"));
    assert_eq!(content(&s.chat(false, &[]).await), "Hello!");
    let t = s.tally().await;
    assert_eq!((t["sampled"].as_u64(), t["skipped_busy"].as_u64()), (Some(2), Some(1)), "{t}");
    assert_eq!(s.b.request_count(), 1);
}

#[tokio::test]
async fn sampling_and_selection_pick_the_requests() {
    // Nothing sampled at 0.
    let s = Shadowed::new("sample_rate = 0.0, score = \"exact\"").await;
    for _ in 0..5 {
        s.h.mock.push(completion("Hello!"));
        assert_eq!(content(&s.chat(false, &[]).await), "Hello!");
    }
    assert_eq!(s.tally().await["sampled"], 0);
    assert_eq!(s.b.request_count(), 0);

    // Only the tagged requests.
    let s = Shadowed::new("sample_rate = 1.0, score = \"exact\", tags = [\"team=ads\"]").await;
    for tags in ["team=search", "team=ads", "beta"] {
        s.h.mock.push(completion("Hello!"));
        if tags == "team=ads" {
            s.b.push(completion("Hello!"));
        }
        assert_eq!(content(&s.chat(false, &[("x-fungible-tags", tags)]).await), "Hello!");
    }
    let t = s.wait_for("the tagged one", |t| t["scored"] == 1).await;
    assert_eq!(t["sampled"], 1);
    assert_eq!(s.b.request_count(), 1);
}

#[test]
fn bad_shadow_settings_are_refused_with_their_path() {
    for (shadow, path) in [
        ("target = \"b/m\", sample_rate = 1.5", "models.smart.shadow[0].sample_rate"),
        ("target = \"nope\", sample_rate = 0.5", "models.smart.shadow[0].target"),
        ("target = \"b/m\", sample_rate = 0.5, score = \"regex:x\"", "models.smart.shadow[0].score"),
        ("target = \"b/m\", sample_rate = 0.5, max_concurrent = 0", "models.smart.shadow[0].max_concurrent"),
        ("target = \"b/m\", sample_rate = 0.5, daily_usd = -1.0", "models.smart.shadow[0].daily_usd"),
        ("target = \"b/m\", sample_rate = 0.5 }, { target = \"b/m\", sample_rate = 0.1", "models.smart.shadow[1].target"),
    ] {
        let toml = format!(
            "[providers.a]\nbase_url = \"http://127.0.0.1:9/v1\"\n[providers.b]\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             [models.smart]\ntarget = \"a/m\"\nshadow = [{{ {shadow} }}]\n"
        );
        let file = ConfigFile::parse(&toml, "shadow.toml").expect("parses");
        let err = GatewayConfig::resolve(file, &|_: &str| None).expect_err(shadow).to_string();
        assert!(err.contains(path), "{shadow}: {err}");
    }
}
