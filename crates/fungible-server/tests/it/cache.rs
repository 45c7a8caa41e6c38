//! The response cache through the HTTP API: hits and misses, stream replay, the request
//! headers that steer it, scope per virtual key, the Redis backend shared by two servers,
//! the semantic cache with the real local embedding model, and what is never cached.

use std::path::PathBuf;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::Request;
use fungible_cache::{CacheConfig, ResponseCache};
use fungible_gateway::{ConfigFile, Gateway, GatewayConfig};
use fungible_mock::{Fallback, MockBody, MockResponse, MockUpstream};
use fungible_server::principal::Principal;
use fungible_server::{AppState, app};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{OPENAI, TestResponse, fixtures};

struct Cached {
    mock: MockUpstream,
    app: Router,
    cache: ResponseCache,
}

/// A server on the mock OpenAI upstream with `[cache]` = `cache_toml` (and the local models
/// when `local`).
async fn cached_on(mock: MockUpstream, cache_toml: &str, local: bool) -> Cached {
    let mut toml = format!("[providers.openai]\nbase_url = \"{}/v1\"\n", mock.url());
    if local {
        toml.push_str(&format!(
            "[local]\nmodels_dir = {:?}\n",
            models_dir().display().to_string()
        ));
    } else {
        toml.push_str("[local]\nenabled = false\n");
    }
    let file = ConfigFile::parse(&toml, "test.toml").expect("config parses");
    let env = |k: &str| (k == "OPENAI_API_KEY").then(|| OPENAI.key.to_owned());
    let config = GatewayConfig::resolve(file, &env).expect("config is valid");
    let gateway = Gateway::new(&config).expect("gateway builds");
    let cache_config = CacheConfig::from_toml(Some(cache_toml.parse().expect("cache toml")), None)
        .expect("cache config");
    let cache = ResponseCache::open(cache_config)
        .await
        .expect("cache opens");
    let app = app(AppState::new(gateway, config.max_body_bytes).with_inflight_budget(config.max_inflight_body_bytes).with_cache(cache.clone()));
    Cached { mock, app, cache }
}

async fn cached(cache_toml: &str) -> Cached {
    cached_on(MockUpstream::start(Fallback::Fail).await, cache_toml, false).await
}

fn models_dir() -> PathBuf {
    let dir = std::env::var_os("FUNGIBLE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models")));
    assert!(
        dir.join("all-MiniLM-L6-v2/model.safetensors").is_file(),
        "the local models are not in {}: run scripts/setup-models.sh first",
        dir.display()
    );
    dir
}

fn chat(text: &str, temperature: f64, stream: bool) -> Value {
    json!({
        "model": "openai/gpt-5",
        "messages": [{"role": "user", "content": text}],
        "temperature": temperature,
        "stream": stream,
    })
}

impl Cached {
    async fn send(
        &self,
        body: &Value,
        headers: &[(&str, &str)],
        principal: Option<&str>,
    ) -> TestResponse {
        let mut request =
            Request::post("/v1/chat/completions").header("content-type", "application/json");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let mut request = request.body(Body::from(body.to_string())).expect("request");
        if let Some(key_id) = principal {
            request.extensions_mut().insert(Principal {
                key_id: key_id.into(),
                key_name: None,
                tags: Vec::new(),
                scopes: fungible_store::Scope::DEFAULT.to_vec(),
            });
        }
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body")
            .to_bytes();
        TestResponse {
            status,
            headers,
            body,
        }
    }

    async fn post(&self, body: &Value) -> TestResponse {
        self.send(body, &[], None).await
    }

    fn push_plain(&self) {
        self.mock.push(MockResponse::fixture(
            200,
            fixtures().join("openai/plain.response.json"),
        ));
    }
}

fn cache_header(r: &TestResponse) -> &str {
    r.headers
        .get("x-fungible-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn a_repeated_request_is_a_hit_with_the_same_body_and_target() {
    let c = cached("").await;
    c.push_plain();
    let first = c.post(&chat("Say hello.", 0.0, false)).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(cache_header(&first), "miss");
    let second = c.post(&chat("Say hello.", 0.0, false)).await;
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(cache_header(&second), "hit");
    assert_eq!(second.headers["x-fungible-cache-match"], "exact");
    assert_eq!(second.headers["x-fungible-target"], "openai/gpt-5");
    assert_eq!(second.json(), first.json());
    assert_eq!(
        c.mock.request_count(),
        1,
        "the hit did not call the upstream"
    );
    // Fields that do not change the answer do not change the key.
    let mut with_user = chat("Say hello.", 0.0, false);
    with_user["user"] = "someone".into();
    assert_eq!(cache_header(&c.post(&with_user).await), "hit");
    // A different question misses.
    c.push_plain();
    assert_eq!(
        cache_header(&c.post(&chat("Say goodbye.", 0.0, false)).await),
        "miss"
    );
    assert_eq!(c.mock.request_count(), 2);
}

#[tokio::test]
async fn non_deterministic_requests_are_not_cached_unless_forced() {
    let c = cached("").await;
    for _ in 0..2 {
        c.push_plain();
        assert_eq!(
            cache_header(&c.post(&chat("Say hello.", 0.7, false)).await),
            "miss"
        );
    }
    assert_eq!(c.mock.request_count(), 2);
    c.push_plain();
    let q = chat("Say hello.", 0.7, false);
    assert_eq!(
        cache_header(&c.send(&q, &[("x-fungible-cache", "force")], None).await),
        "miss"
    );
    assert_eq!(
        cache_header(&c.send(&q, &[("x-fungible-cache", "force")], None).await),
        "hit"
    );
    assert_eq!(c.mock.request_count(), 3);
    // A seed makes a request deterministic too.
    let mut seeded = chat("Say hello.", 1.0, false);
    seeded["seed"] = 7.into();
    c.push_plain();
    assert_eq!(cache_header(&c.post(&seeded).await), "miss");
    assert_eq!(cache_header(&c.post(&seeded).await), "hit");
}

#[tokio::test]
async fn deterministic_only_can_be_switched_off() {
    let c = cached("deterministic_only = false").await;
    c.push_plain();
    assert_eq!(
        cache_header(&c.post(&chat("Say hello.", 0.7, false)).await),
        "miss"
    );
    assert_eq!(
        cache_header(&c.post(&chat("Say hello.", 0.7, false)).await),
        "hit"
    );
}

#[tokio::test]
async fn request_headers_steer_the_cache() {
    let c = cached("").await;
    let q = chat("Say hello.", 0.0, false);
    // no-store: answered, not kept.
    c.push_plain();
    assert_eq!(
        cache_header(&c.send(&q, &[("x-fungible-cache", "no-store")], None).await),
        "miss"
    );
    c.push_plain();
    assert_eq!(cache_header(&c.post(&q).await), "miss");
    assert_eq!(c.mock.request_count(), 2);
    // Now cached: no-cache skips the lookup (and refreshes the entry), off skips both.
    c.push_plain();
    assert_eq!(
        cache_header(&c.send(&q, &[("cache-control", "no-cache")], None).await),
        "miss"
    );
    c.push_plain();
    assert_eq!(
        cache_header(&c.send(&q, &[("x-fungible-cache", "off")], None).await),
        "miss"
    );
    assert_eq!(c.mock.request_count(), 4);
    // no-store may still be served from the cache.
    assert_eq!(
        cache_header(&c.send(&q, &[("cache-control", "no-store")], None).await),
        "hit"
    );
    assert_eq!(cache_header(&c.post(&q).await), "hit");
    assert_eq!(c.mock.request_count(), 4);
}

#[tokio::test]
async fn entries_are_scoped_per_virtual_key() {
    let c = cached("").await;
    let q = chat("Say hello.", 0.0, false);
    c.push_plain();
    assert_eq!(cache_header(&c.send(&q, &[], Some("key-a")).await), "miss");
    assert_eq!(cache_header(&c.send(&q, &[], Some("key-a")).await), "hit");
    c.push_plain();
    assert_eq!(cache_header(&c.send(&q, &[], Some("key-b")).await), "miss");
    c.push_plain();
    assert_eq!(
        cache_header(&c.post(&q).await),
        "miss",
        "no key is its own scope"
    );
    assert_eq!(c.mock.request_count(), 3);
}

/// The text, tool calls and finish reason of an OpenAI SSE body.
fn stream_answer(r: &TestResponse) -> (String, Vec<(String, String, String)>, String) {
    let (mut text, mut calls, mut finish) = (
        String::new(),
        Vec::<(String, String, String)>::new(),
        String::new(),
    );
    for data in r.sse_data() {
        if data == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(&data).expect("chunk json");
        assert!(chunk.get("error").is_none(), "{chunk}");
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        if let Some(t) = choice["delta"]["content"].as_str() {
            text.push_str(t);
        }
        for call in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = call["index"].as_u64().expect("index") as usize;
            if calls.len() <= i {
                calls.resize(i + 1, Default::default());
            }
            if let Some(id) = call["id"].as_str() {
                calls[i].0 = id.into();
            }
            if let Some(name) = call["function"]["name"].as_str() {
                calls[i].1 = name.into();
            }
            if let Some(args) = call["function"]["arguments"].as_str() {
                calls[i].2.push_str(args);
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.into();
        }
    }
    (text, calls, finish)
}

#[tokio::test]
async fn a_streamed_answer_is_stored_at_its_end_and_replayed_as_a_stream() {
    let c = cached("").await;
    c.mock.push(MockResponse::fixture(
        200,
        fixtures().join("openai/stream.response.sse"),
    ));
    let first = c.post(&chat("Say hello.", 0.0, true)).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(cache_header(&first), "miss");
    let second = c.post(&chat("Say hello.", 0.0, true)).await;
    assert_eq!(cache_header(&second), "hit");
    assert_eq!(second.headers["content-type"], "text/event-stream");
    assert_eq!(stream_answer(&second), stream_answer(&first));
    assert_eq!(stream_answer(&first).0, "Hello!");
    assert_eq!(second.sse_data().last().map(String::as_str), Some("[DONE]"));
    // The same answer serves a non-streamed request.
    let whole = c.post(&chat("Say hello.", 0.0, false)).await;
    assert_eq!(cache_header(&whole), "hit");
    assert_eq!(whole.json()["choices"][0]["message"]["content"], "Hello!");
    assert_eq!(c.mock.request_count(), 1);
}

#[tokio::test]
async fn streamed_tool_calls_replay_with_their_arguments() {
    let c = cached("").await;
    let text = std::fs::read_to_string(fixtures().join("inbound/openai_chat/tools_stream.json"))
        .expect("fixture");
    let mut body: Value =
        serde_json::from_str(&text.replace("{model}", "openai/gpt-5")).expect("json");
    body["temperature"] = 0.into();
    c.mock.push(MockResponse::fixture(
        200,
        fixtures().join("openai/tools_stream.response.sse"),
    ));
    let first = c.post(&body).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let second = c.post(&body).await;
    assert_eq!(cache_header(&second), "hit");
    let (_, calls, finish) = stream_answer(&second);
    assert!(
        !calls.is_empty()
            && calls
                .iter()
                .all(|(id, name, args)| !id.is_empty() && !name.is_empty() && !args.is_empty()),
        "{calls:?}"
    );
    assert_eq!(finish, "tool_calls");
    assert_eq!(stream_answer(&second), stream_answer(&first));
    assert_eq!(c.mock.request_count(), 1);
}

/// The first `n` events of the OpenAI stream fixture.
fn first_events(n: usize) -> Vec<Bytes> {
    let text =
        std::fs::read_to_string(fixtures().join("openai/stream.response.sse")).expect("fixture");
    text.split_inclusive("\n\n")
        .take(n)
        .map(|e| Bytes::from(e.to_owned()))
        .collect()
}

#[tokio::test]
async fn errors_and_cut_streams_are_never_cached() {
    let c = cached("").await;
    let q = chat("Say hello.", 0.0, false);
    c.mock.push(MockResponse::fixture(
        500,
        fixtures().join("openai/error.json"),
    ));
    let failed = c.post(&q).await;
    assert!(failed.status.is_server_error(), "{}", failed.status);
    c.push_plain();
    assert_eq!(
        cache_header(&c.post(&q).await),
        "miss",
        "the error was not cached"
    );

    let s = chat("Stream hello.", 0.0, true);
    for body in [
        MockBody::ChunksThenReset(first_events(3)),
        MockBody::Chunks(first_events(3)),
    ] {
        c.mock.push(MockResponse::sse("").with_body(body));
        let cut = c.post(&s).await;
        assert!(cut.text().contains("error"), "{}", cut.text());
    }
    c.mock.push(MockResponse::fixture(
        200,
        fixtures().join("openai/stream.response.sse"),
    ));
    let whole = c.post(&s).await;
    assert_eq!(
        cache_header(&whole),
        "miss",
        "the cut streams were not cached"
    );
    assert_eq!(stream_answer(&whole).0, "Hello!");
    assert_eq!(cache_header(&c.post(&s).await), "hit");
}

#[tokio::test]
async fn a_disconnected_stream_is_not_cached() {
    let c = cached("").await;
    let s = chat("Stream hello.", 0.0, true);
    c.mock
        .push(MockResponse::sse("").with_body(MockBody::ChunksThenStall(first_events(3))));
    let request = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(s.to_string()))
        .expect("request");
    let response = c.app.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), 200);
    drop(response); // the client goes away mid-stream
    c.mock.wait_for_disconnects(1).await;
    assert_eq!(c.cache.memory_entries(), Some(0));
}

#[tokio::test]
async fn two_servers_share_answers_through_redis() {
    let url = std::env::var("FUNGIBLE_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let prefix = format!(
        "fungible-test:server:{}:{}:",
        std::process::id(),
        fungible_store::new_id()
    );
    let toml = format!("backend = \"redis\"\nredis_url = {url:?}\nkey_prefix = {prefix:?}\n");
    let a = cached(&toml).await;
    let b = cached_on(MockUpstream::start(Fallback::Fail).await, &toml, false).await;
    a.push_plain();
    let first = a.post(&chat("Say hello.", 0.0, false)).await;
    assert_eq!(cache_header(&first), "miss");
    let second = b.post(&chat("Say hello.", 0.0, false)).await;
    assert_eq!(cache_header(&second), "hit", "{}", second.text());
    assert_eq!(second.json(), first.json());
    assert_eq!(b.mock.request_count(), 0, "b never called its upstream");
}

#[tokio::test]
async fn semantic_cache_serves_a_paraphrase_and_not_an_unrelated_question() {
    let c = cached_on(
        MockUpstream::start(Fallback::Fail).await,
        "[semantic]\nmodels = [\"openai/gpt-5\"]\nthreshold = 0.85\n",
        true,
    )
    .await;
    c.push_plain();
    let first = c
        .post(&chat("What is the capital of France?", 0.0, false))
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(cache_header(&first), "miss");
    let paraphrase = c
        .post(&chat("What's the capital city of France?", 0.0, false))
        .await;
    assert_eq!(cache_header(&paraphrase), "hit", "{}", paraphrase.text());
    assert_eq!(paraphrase.headers["x-fungible-cache-match"], "semantic");
    assert_eq!(paraphrase.json(), first.json());
    c.push_plain();
    let unrelated = c
        .post(&chat("How do I bake sourdough bread at home?", 0.0, false))
        .await;
    assert_eq!(cache_header(&unrelated), "miss");
    // Another conversation (a system prompt) is another scope, however similar the question.
    let mut other = chat("What's the capital city of France?", 0.0, false);
    other["messages"] = json!([{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "What's the capital city of France?"}]);
    c.push_plain();
    assert_eq!(cache_header(&c.post(&other).await), "miss");
    assert_eq!(c.mock.request_count(), 3);
}

#[tokio::test]
async fn semantic_cache_applies_only_to_the_models_that_opt_in() {
    let c = cached_on(
        MockUpstream::start(Fallback::Fail).await,
        "[semantic]\nmodels = [\"fast\"]\nthreshold = 0.85\n",
        true,
    )
    .await;
    c.push_plain();
    assert_eq!(
        cache_header(
            &c.post(&chat("What is the capital of France?", 0.0, false))
                .await
        ),
        "miss"
    );
    c.push_plain();
    assert_eq!(
        cache_header(
            &c.post(&chat("What's the capital city of France?", 0.0, false))
                .await
        ),
        "miss"
    );
}

#[tokio::test]
async fn a_hit_is_recorded_as_a_cache_hit_that_cost_nothing() {
    let mock = MockUpstream::start(Fallback::Fail).await;
    let toml = format!(
        "[providers.openai]\nbase_url = \"{}/v1\"\n[local]\nenabled = false\n",
        mock.url()
    );
    let file = ConfigFile::parse(&toml, "test.toml").expect("config parses");
    let env = |k: &str| (k == "OPENAI_API_KEY").then(|| OPENAI.key.to_owned());
    let config = GatewayConfig::resolve(file, &env).expect("config is valid");
    let gateway = Gateway::new(&config).expect("gateway builds");
    let dir = std::env::temp_dir().join("fungible-server-cache-tests");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let store = fungible_store::Store::open(&format!(
        "sqlite://{}?mode=rwc",
        dir.join(format!("{}.db", fungible_store::new_id()))
            .display()
    ))
    .await
    .expect("store opens");
    let recorder =
        fungible_store::Recorder::start(store.clone(), fungible_store::RecorderOptions::default());
    let cache = ResponseCache::open(CacheConfig::default())
        .await
        .expect("cache");
    let state = AppState::new(gateway, 1 << 20)
        .with_recorder(store.clone(), recorder.clone())
        .with_cache(cache.clone());
    let c = Cached {
        mock,
        app: app(state),
        cache,
    };
    c.push_plain();
    assert_eq!(
        cache_header(&c.post(&chat("Say hello.", 0.0, false)).await),
        "miss"
    );
    assert_eq!(
        cache_header(&c.post(&chat("Say hello.", 0.0, true)).await),
        "hit"
    );
    recorder.flush().await;
    let records = store
        .list(&fungible_store::InferenceFilter::default())
        .await
        .expect("list");
    assert_eq!(records.len(), 2);
    let (hits, misses): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| r.cache_hit);
    let (hit, miss) = (&hits[0], &misses[0]);
    assert!(miss.cost.is_some_and(|c| c > 0.0), "{:?}", miss.cost);
    assert_eq!(hit.cost, Some(0.0));
    assert!(hit.attempts.is_empty());
    assert!(hit.stream);
    assert_eq!(
        (hit.provider.as_deref(), hit.model.as_deref()),
        (Some("openai"), Some("gpt-5"))
    );
    assert_eq!(hit.response, miss.response);
}
