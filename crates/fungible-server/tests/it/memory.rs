//! Attacks on the gateway's memory, in process: bodies over the in-flight budget
//! (`[server] max_inflight_body_bytes`), requests with more messages, parts or tools than any
//! vendor accepts, and one client's huge records crowding the recorder's queue
//! (`[store] max_record_bytes`). `crates/fungible/tests/memory.rs` sends the big bodies to a
//! real `fungible serve` and measures its peak RSS.

use axum::body::Body;
use axum::http::Request;
use fungible_mock::{MockBody, MockResponse};
use fungible_server::app;
use fungible_store::{Recorder, RecorderOptions, Store};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::{Harness, OPENAI};

/// An OpenAI Chat request with one user message of `text`.
fn chat(text: &str) -> String {
    json!({"model": "openai/gpt-5", "messages": [{"role": "user", "content": text}]}).to_string()
}

#[tokio::test]
async fn bodies_over_the_inflight_budget_are_refused_in_each_apis_shape() {
    // 4 MiB for bodies of up to 1 MiB: two bodies of 1 MB (each charged twice its size,
    // its bytes and their parsed copy) fill it.
    let h = Harness::with_server(OPENAI, "max_body_bytes = 1048576\nmax_inflight_body_bytes = 4194304").await;
    let big = chat(&"a".repeat(1_000_000));
    // Two requests are let in and hold their charge while the upstream never answers.
    for _ in 0..2 {
        h.mock.push(MockResponse::json(200, "").with_body(MockBody::Hang));
    }
    let mut held = JoinSet::new();
    for _ in 0..2 {
        let (app, body) = (h.app.clone(), big.clone());
        held.spawn(async move {
            let request = Request::post("/v1/chat/completions").header("content-type", "application/json").body(Body::from(body));
            tower::ServiceExt::oneshot(app, request.expect("request")).await
        });
    }
    h.mock.wait_for_requests(2).await;
    let free = h.state.budget.available();
    assert!(free < 1_000_000, "two bodies hold the budget: {free} bytes free");

    // Every other body is refused at once, in its own API's error shape, with Retry-After.
    let refused = h.post("/v1/chat/completions", big.clone()).await;
    let error = refused.openai_error(503);
    assert_eq!(error["type"], "overloaded_error");
    assert_eq!(error["code"], "inflight_budget_exhausted");
    assert!(error["message"].as_str().unwrap().contains("server.max_inflight_body_bytes"), "{error}");
    assert_eq!(refused.headers["retry-after"], "1");
    // With a Content-Length, before a byte of the body is charged.
    let request = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("content-length", big.len())
        .body(Body::from(big.clone()))
        .expect("request");
    assert_eq!(h.send(request).await.status, 503);
    let anthropic = h.post("/v1/messages", big.clone()).await;
    assert_eq!(anthropic.status, 503, "{}", anthropic.text());
    assert_eq!(anthropic.json()["error"]["type"], "overloaded_error");
    let gemini = h.post("/v1beta/models/openai/gpt-5:generateContent", big.clone()).await;
    assert_eq!(gemini.status, 503, "{}", gemini.text());
    assert_eq!(gemini.json()["error"]["status"], "UNAVAILABLE");
    assert_eq!(h.state.budget.available(), free, "a refused body keeps nothing");

    // A body whose parse alone would take more than the whole budget can never be served:
    // 413, not a 503 to retry. 30,000 tiny messages: 0.9 MB of JSON, ~40 MB as a tree.
    let tiny = format!(
        r#"{{"model":"openai/gpt-5","messages":[{}]}}"#,
        vec![r#"{"role":"user","content":"a"}"#; 30_000].join(",")
    );
    let too_large = h.post("/v1/chat/completions", tiny).await;
    let error = too_large.openai_error(413);
    assert!(error["message"].as_str().unwrap().contains("more than the gateway's limit of 4194304 bytes"), "{error}");

    // Once the held requests end (their clients gone), their charge is back.
    held.shutdown().await;
    assert_eq!(h.state.budget.available(), h.state.budget.bytes());
    h.mock.push(MockResponse::fixture(200, crate::fixtures().join("openai/plain.response.json")));
    let served = h.post("/v1/chat/completions", big).await;
    assert_eq!(served.status, 200, "{}", served.text());
    assert_eq!(h.state.budget.available(), h.state.budget.bytes(), "a finished request keeps nothing");
}

/// `items` copies of `item`, comma-separated.
fn many(item: &str, items: usize) -> String {
    vec![item; items].join(",")
}

#[tokio::test]
async fn too_many_messages_parts_or_tools_are_a_400_naming_the_field_and_the_limit() {
    let h = Harness::new(OPENAI).await;
    let m = r#""model":"openai/gpt-5""#;
    let hi = r#"{"role":"user","content":"hi"}"#;
    let tiny = r#"{"role":"user","content":"a"}"#;
    let text = r#"{"type":"text","text":"a"}"#;
    let cases = [
        // 100,000 one-character messages (3 MB), in every API.
        ("/v1/chat/completions", format!("{{{m},\"messages\":[{}]}}", many(tiny, 100_000)), "messages", 10_000),
        ("/v1/messages", format!("{{{m},\"max_tokens\":5,\"messages\":[{}]}}", many(tiny, 100_000)), "messages", 10_000),
        ("/v1/responses", format!("{{{m},\"input\":[{}]}}", many(tiny, 100_000)), "input", 10_000),
        (
            "/v1beta/models/openai/gpt-5:generateContent",
            format!("{{\"contents\":[{}]}}", many(r#"{"role":"user","parts":[{"text":"a"}]}"#, 100_000)),
            "contents",
            10_000,
        ),
        // 1,001 parts in one message.
        (
            "/v1/chat/completions",
            format!("{{{m},\"messages\":[{{\"role\":\"user\",\"content\":[{}]}}]}}", many(text, 1001)),
            "messages[0].content",
            1000,
        ),
        (
            "/v1/messages",
            format!("{{{m},\"max_tokens\":5,\"messages\":[{{\"role\":\"user\",\"content\":[{}]}}]}}", many(text, 1001)),
            "messages[0].content",
            1000,
        ),
        (
            "/v1/responses",
            format!(
                "{{{m},\"input\":[{{\"role\":\"user\",\"content\":[{}]}}]}}",
                many(r#"{"type":"input_text","text":"a"}"#, 1001)
            ),
            "input[0].content",
            1000,
        ),
        (
            "/v1beta/models/openai/gpt-5:generateContent",
            format!("{{\"contents\":[{{\"role\":\"user\",\"parts\":[{}]}}]}}", many(r#"{"text":"a"}"#, 1001)),
            "contents[0].parts",
            1000,
        ),
        // 129 tools.
        (
            "/v1/chat/completions",
            format!("{{{m},\"messages\":[{hi}],\"tools\":[{}]}}", many(r#"{"type":"function","function":{"name":"f"}}"#, 129)),
            "tools",
            128,
        ),
        (
            "/v1/messages",
            format!(
                "{{{m},\"max_tokens\":5,\"messages\":[{hi}],\"tools\":[{}]}}",
                many(r#"{"name":"f","input_schema":{"type":"object"}}"#, 129)
            ),
            "tools",
            128,
        ),
        (
            "/v1/responses",
            format!("{{{m},\"input\":\"hi\",\"tools\":[{}]}}", many(r#"{"type":"function","name":"f"}"#, 129)),
            "tools",
            128,
        ),
        (
            "/v1beta/models/openai/gpt-5:generateContent",
            format!(
                "{{\"contents\":[{{\"parts\":[{{\"text\":\"hi\"}}]}}],\"tools\":[{{\"functionDeclarations\":[{}]}}]}}",
                many(r#"{"name":"f"}"#, 129)
            ),
            "tools[0].functionDeclarations",
            128,
        ),
    ];
    for (path, body, field, limit) in cases {
        let response = h.post(path, body).await;
        assert_eq!(response.status, 400, "{path} {field}: {}", response.text());
        let error = &response.json()["error"];
        let message = error["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(&format!("{field}: at most {limit} items are accepted, got {}", limit + 1))
                || message.starts_with(&format!("{field}: at most {limit} items are accepted, got 100000")),
            "{path}: {message}"
        );
        if path.starts_with("/v1/chat") || path.starts_with("/v1/responses") {
            assert_eq!(error["param"], field, "{path}");
        }
    }
    assert_eq!(h.mock.request_count(), 0, "no request over a limit reached the upstream");
    assert_eq!(h.state.budget.available(), h.state.budget.bytes());
}

#[tokio::test]
async fn one_clients_huge_records_do_not_push_out_anothers() {
    // A queue of 8 MiB that is written only when flushed: without the record cap, the
    // first 3.4 MB records fill it and every later record is dropped.
    let mut h = Harness::new(OPENAI).await;
    let dir = std::env::temp_dir().join("fungible-server-memory-tests");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{}.db", fungible_store::new_id()));
    let store = Store::open(&format!("sqlite://{}?mode=rwc", path.display())).await.expect("store opens");
    let recorder = Recorder::start(
        store.clone(),
        RecorderOptions {
            queue_bytes: 8 << 20,
            batch_size: 10_000,
            flush_interval: std::time::Duration::from_secs(3600),
            ..RecorderOptions::default()
        },
    );
    assert_eq!(recorder.max_record_bytes(), 256 << 10);
    h.app = app(h.state.clone().with_recorder(store, recorder.clone()));

    let big_text = "b".repeat(3_400_000);
    for i in 0..36 {
        h.mock.push(MockResponse::fixture(200, crate::fixtures().join("openai/plain.response.json")));
        let (user, text) = if i < 25 { ("big", big_text.clone()) } else { ("small", format!("small question {i}")) };
        let request = Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .header("x-fungible-user", user)
            .body(Body::from(chat(&text)))
            .expect("request");
        let response = h.send(request).await;
        assert_eq!(response.status, 200, "{}", response.text());
    }
    assert!(recorder.counters().queued_bytes.load(std::sync::atomic::Ordering::SeqCst) < 8 << 20);
    recorder.flush().await;
    assert_eq!(recorder.counters().dropped.load(std::sync::atomic::Ordering::SeqCst), 0);

    let list = h.send(Request::get("/v1/inferences?limit=100").body(Body::empty()).expect("request")).await;
    assert_eq!(list.status, 200, "{}", list.text());
    let records: Vec<Value> = list.json()["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(records.len(), 36);
    let content = |r: &Value| r["request"]["messages"][0]["content"][0]["Text"]["text"].as_str().map(str::to_owned);
    for r in &records {
        let text = content(r).unwrap_or_else(|| panic!("no text: {}", r["request"]["messages"][0]));
        if r["user"] == "big" {
            assert_eq!(r["truncated"], true);
            let (kept, marker) = text.split_once('…').expect("a marker");
            assert!(big_text.starts_with(kept), "a prefix of the text is kept");
            assert_eq!(marker, format!("[truncated {} bytes]", big_text.len() - kept.len()));
            assert!(text.len() <= 256 << 10, "{}", text.len());
            assert_eq!(r["request"]["fungible_truncated"]["omitted_messages"], 0);
        } else {
            assert_eq!(r["user"], "small");
            assert_eq!(r["truncated"], false);
            assert!(text.starts_with("small question "), "{text}");
            assert!(r["request"].get("fungible_truncated").is_none());
        }
    }
    assert_eq!(records.iter().filter(|r| r["user"] == "small").count(), 11);
}
