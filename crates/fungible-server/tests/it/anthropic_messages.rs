//! The Anthropic Messages front end beyond the conformance matrix: its errors, token
//! counting over every provider, which vendor fields pass through, prompt-cache breakpoints
//! and thinking surviving Anthropic -> Anthropic, and both auth styles.

use axum::body::Body;
use axum::http::Request;
use fungible_mock::MockResponse;
use serde_json::{Value, json};

use crate::{ANTHROPIC, GEMINI, GROQ, Harness, OPENAI, ProviderCase, TestResponse, fixtures};

fn model(p: ProviderCase) -> String {
    format!("{}/{}", p.name, p.model)
}

/// Asserts Anthropic's error shape with `status` and `kind`; returns the message.
fn anthropic_error(res: &TestResponse, status: u16, kind: &str) -> String {
    assert_eq!(res.status.as_u16(), status, "body: {}", res.text());
    let body = res.json();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    body["error"]["message"].as_str().expect("message").to_owned()
}

async fn rejected(body: Value, status: u16, kind: &str, field: &str) {
    let h = Harness::new(ANTHROPIC).await;
    let res = h.post("/v1/messages", body.to_string()).await;
    let message = anthropic_error(&res, status, kind);
    assert!(message.contains(field), "{message}");
    assert!(h.mock.received().is_empty(), "a bad request must not reach the provider");
}

#[tokio::test]
async fn bad_requests_are_anthropic_errors_naming_the_field() {
    let m = model(ANTHROPIC);
    let hi = json!([{"role": "user", "content": "hi"}]);
    rejected(json!({"model": m, "messages": hi}), 400, "invalid_request_error", "max_tokens").await;
    rejected(json!({"model": m, "max_tokens": 5}), 400, "invalid_request_error", "messages").await;
    rejected(
        json!({"model": m, "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
        400,
        "invalid_request_error",
        "messages[0].content[0].type",
    )
    .await;
    rejected(json!({"model": "nosuch/m", "max_tokens": 5, "messages": hi}), 404, "not_found_error", "nosuch").await;

    let h = Harness::new(ANTHROPIC).await;
    let res = h.post("/v1/messages", "{\"model\": ").await;
    anthropic_error(&res, 400, "invalid_request_error");
}

#[tokio::test]
async fn upstream_errors_keep_their_class() {
    // An overloaded upstream (529) and an unavailable one (503) both answer 503, each with its
    // own type.
    for (status, kind) in
        [(401, "authentication_error"), (404, "not_found_error"), (500, "api_error"), (503, "api_error"), (529, "overloaded_error")]
    {
        let h = Harness::new(OPENAI).await;
        h.mock.push(MockResponse::fixture(status, fixtures().join("openai").join("error.json")));
        let body = crate::conformance::inbound_file("anthropic_messages", "plain").replace("{model}", &model(OPENAI));
        let res = h.post("/v1/messages", body).await;
        let expected_status = match status {
            500 => 502,
            529 => 503,
            s => s,
        };
        let message = anthropic_error(&res, expected_status, kind);
        assert!(message.starts_with("openai"), "{message}");
    }
}

async fn count(p: ProviderCase, upstream: Option<&str>) -> (u64, Option<fungible_mock::RecordedRequest>) {
    let h = Harness::new(p).await;
    if let Some(body) = upstream {
        h.mock.push(MockResponse::json(200, body.to_owned()));
    }
    let body = json!({
        "model": model(p),
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "Say hello."}],
        "tools": [{"name": "get_weather", "description": "Current weather for a city.", "input_schema": {"type": "object"}}],
    });
    let res = h.post("/v1/messages/count_tokens", body.to_string()).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let json = res.json();
    assert_eq!(json.as_object().map(|o| o.len()), Some(1), "only input_tokens: {json}");
    let n = json["input_tokens"].as_u64().expect("input_tokens");
    (n, h.mock.received().into_iter().next())
}

#[tokio::test]
async fn count_tokens_asks_the_vendor_or_estimates() {
    let (n, sent) = count(ANTHROPIC, Some(r#"{"input_tokens":14}"#)).await;
    assert_eq!(n, 14);
    let sent = sent.expect("anthropic counts upstream");
    assert_eq!(sent.uri, "/v1/messages/count_tokens");
    let body = sent.json();
    assert_eq!(body["model"], ANTHROPIC.model);
    assert_eq!(body["system"], json!([{"type": "text", "text": "You are terse."}]));
    assert!(body.get("max_tokens").is_none(), "{body}");

    let (n, sent) = count(GEMINI, Some(r#"{"totalTokens":31}"#)).await;
    assert_eq!(n, 31);
    let sent = sent.expect("gemini counts upstream");
    assert_eq!(sent.uri, format!("/v1beta/models/{}:countTokens", GEMINI.model));
    let body = sent.json();
    assert_eq!(body["generateContentRequest"]["model"], format!("models/{}", GEMINI.model));
    assert_eq!(body["generateContentRequest"]["systemInstruction"]["parts"][0]["text"], "You are terse.");

    for p in [OPENAI, GROQ] {
        let (n, sent) = count(p, None).await;
        assert!(sent.is_none(), "{}: the OpenAI family is estimated locally", p.name);
        assert!((15..200).contains(&n), "{}: estimate {n}", p.name);
    }
}

#[tokio::test]
async fn count_tokens_errors_are_anthropic_errors() {
    let h = Harness::new(ANTHROPIC).await;
    h.mock.push(MockResponse::fixture(429, fixtures().join("anthropic").join("error.json")).with_header("retry-after", "2"));
    let body = json!({"model": model(ANTHROPIC), "messages": [{"role": "user", "content": "hi"}]});
    let res = h.post("/v1/messages/count_tokens", body.to_string()).await;
    let message = anthropic_error(&res, 429, "rate_limit_error");
    assert!(message.contains("simulated upstream failure"), "{message}");
    assert_eq!(res.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("2"));
}

fn with_vendor_fields(p: ProviderCase) -> String {
    json!({
        "model": model(p),
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "Say hello."}],
        "service_tier": "auto",
        "context_management": {"edits": []},
        "output_config": {"effort": "high"},
    })
    .to_string()
}

#[tokio::test]
async fn vendor_fields_reach_anthropic_and_no_other_vendor() {
    let h = Harness::new(ANTHROPIC).await;
    h.mock.push(MockResponse::fixture(200, fixtures().join("anthropic").join("plain.response.json")));
    let res = h.post("/v1/messages", with_vendor_fields(ANTHROPIC)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let body = h.mock.single_request().json();
    assert_eq!(body["service_tier"], "auto");
    assert_eq!(body["context_management"], json!({"edits": []}));
    assert_eq!(body["output_config"], json!({"effort": "high"}));

    for p in [OPENAI, GEMINI, GROQ] {
        let h = Harness::new(p).await;
        h.mock.push(MockResponse::fixture(200, fixtures().join(p.name).join("plain.response.json")));
        let res = h.post("/v1/messages", with_vendor_fields(p)).await;
        assert_eq!(res.status, 200, "{}", res.text());
        let body = h.mock.single_request().json();
        for key in ["service_tier", "context_management", "output_config"] {
            assert!(body.get(key).is_none(), "{}: {key} leaked: {body}", p.name);
        }
    }
}

#[tokio::test]
async fn cache_breakpoints_and_thinking_survive_anthropic_to_anthropic() {
    let h = Harness::new(ANTHROPIC).await;
    h.mock.push(MockResponse::fixture(200, fixtures().join("anthropic").join("plain.response.json")));
    let tool = json!({"name": "f", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral", "ttl": "1h"}});
    let request = json!({
        "model": model(ANTHROPIC),
        "max_tokens": 16000,
        "thinking": {"type": "enabled", "budget_tokens": 8000},
        "system": [
            {"type": "text", "text": "You are Claude Code."},
            {"type": "text", "text": "Long instructions.", "cache_control": {"type": "ephemeral"}},
        ],
        "tools": [tool],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Run it."}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "I should run f.", "signature": "sig-1"},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "failed", "is_error": true},
                {"type": "text", "text": "Fix it.", "cache_control": {"type": "ephemeral"}},
            ]},
        ],
    });
    let res = h.post("/v1/messages", request.to_string()).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let sent = h.mock.single_request().json();
    assert_eq!(sent["system"], request["system"]);
    assert_eq!(sent["tools"], json!([tool]));
    assert_eq!(sent["messages"], request["messages"]);
    assert_eq!(sent["thinking"], json!({"type": "enabled", "budget_tokens": 8000}));
    assert_eq!(sent["max_tokens"], 16000);
}

#[tokio::test]
async fn both_auth_styles_and_none_are_accepted() {
    let body = crate::conformance::inbound_file("anthropic_messages", "plain").replace("{model}", &model(ANTHROPIC));
    let styles: [&[(&str, &str)]; 3] = [
        &[("x-api-key", "sk-ant-a"), ("anthropic-version", "2023-06-01")],
        &[("authorization", "Bearer sk-ant-b"), ("anthropic-version", "2026-10-21")],
        &[],
    ];
    for headers in styles {
        let h = Harness::new(ANTHROPIC).await;
        h.mock.push(MockResponse::fixture(200, fixtures().join("anthropic").join("plain.response.json")));
        let mut request = Request::post("/v1/messages").header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let res = h.send(request.body(Body::from(body.clone())).expect("request")).await;
        assert_eq!(res.status, 200, "{headers:?}: {}", res.text());
        let sent = h.mock.single_request();
        assert_eq!(sent.header("x-api-key"), Some(ANTHROPIC.key), "the gateway's key goes upstream, not the client's");
        assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    }
}
