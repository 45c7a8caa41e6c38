//! The Gemini API as a conformance-matrix row: `POST /v1beta/models/{model}:generateContent`
//! and `:streamGenerateContent?alt=sse` (and the `/v1/` spellings), plus the parts of the
//! front end the matrix does not reach: JSON-array streaming, `countTokens`, unsupported
//! methods, Gemini-only fields and errors before the upstream is called.

use axum::body::Body;
use axum::http::Request;
use fungible_mock::MockResponse;
use serde_json::{Value, json};

use super::{Inbound, Outcome, inbound_file};
use crate::{GEMINI, Harness, OPENAI, TestResponse, fixtures};

pub struct GeminiApi;

/// How each case reaches the gateway, so every URL form a Google SDK uses is exercised:
/// `v1beta` (SDK 1.x) and `v1` (SDK 3.x), a plain or percent-encoded `/` in the model, and
/// the key as a header or a query parameter.
fn url(case: &str, model: &str) -> String {
    match case {
        "stream" => format!("/v1beta/models/{model}:streamGenerateContent?alt=sse"),
        "tools_stream" => format!("/v1/models/{}:streamGenerateContent?alt=sse&key=client-key", model.replace('/', "%2F")),
        "tools" | "tool_result" => format!("/v1/models/{}:generateContent?key=client-key", model.replace('/', "%2F")),
        _ => format!("/v1beta/models/{model}:generateContent"),
    }
}

impl Inbound for GeminiApi {
    const NAME: &'static str = "gemini_api";

    fn request(case: &str, model: &str) -> Request<Body> {
        Request::post(url(case, model))
            .header("content-type", "application/json")
            .header("x-goog-api-key", "client-key")
            .body(Body::from(inbound_file("gemini_api", case)))
            .expect("request")
    }

    fn unexpressible(provider: &str, case: &str) -> &'static [&'static str] {
        match (provider, case) {
            // Gemini has no end-user id, no schema name or strictness flag (its schemas are
            // always enforced) and no switch for parallel calls.
            ("openai" | "groq", "plain" | "stream") => &["/user"],
            ("openai" | "groq", "json_schema") => &["/response_format/json_schema/name", "/response_format/json_schema/strict"],
            ("openai" | "groq", "tools_stream") => &["/parallel_tool_calls"],
            ("anthropic", "plain" | "stream") => &["/metadata"],
            _ => &[],
        }
    }

    fn outcome(case: &str, res: &TestResponse) -> Outcome {
        if super::is_stream(case) { read_stream(res) } else { read_response(res) }
    }

    fn error_message(res: &TestResponse, status: u16) -> String {
        gemini_error(res, status)
    }

    fn stream_error_message(res: &TestResponse) -> String {
        let events = sse_events(res);
        let (last, before) = events.split_last().expect("events");
        for event in before {
            assert!(event.get("error").is_none(), "only the last event is an error: {event}");
            assert!(event["candidates"][0].get("finishReason").is_none(), "a failed stream must not finish: {event}");
        }
        let error = last.get("error").unwrap_or_else(|| panic!("last event is not an error: {last}"));
        assert!(error["code"].as_u64().is_some() && error["status"].as_str().is_some(), "{last}");
        error["message"].as_str().expect("message").to_owned()
    }
}

/// Asserts Google's error shape with this status; returns the message.
pub fn gemini_error(res: &TestResponse, status: u16) -> String {
    assert_eq!(res.status.as_u16(), status, "body: {}", res.text());
    let body = res.json();
    let error = body.get("error").unwrap_or_else(|| panic!("no error object: {body}"));
    assert_eq!(error["code"], status, "{body}");
    assert!(error["status"].as_str().is_some_and(|s| s.chars().all(|c| c.is_ascii_uppercase() || c == '_')), "{body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
    error["message"].as_str().filter(|m| !m.is_empty()).unwrap_or_else(|| panic!("no message: {body}")).to_owned()
}

/// The JSON of every `data:` event of a `?alt=sse` stream; Google ends events with `\r\n\r\n`.
fn sse_events(res: &TestResponse) -> Vec<Value> {
    let text = res.text();
    assert!(text.ends_with("\r\n\r\n"), "events end with CRLF CRLF: {text:?}");
    text.split("\r\n\r\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e.strip_prefix("data: ").unwrap_or_else(|| panic!("not a data event: {e:?}"));
            serde_json::from_str(data).unwrap_or_else(|err| panic!("event is not JSON ({err}): {data}"))
        })
        .collect()
}

fn usage_of(u: &Value) -> (u64, u64, u64) {
    let n = |key: &str| u[key].as_u64().unwrap_or(0);
    let (input, visible, thoughts) = (n("promptTokenCount"), n("candidatesTokenCount"), n("thoughtsTokenCount"));
    assert_eq!(n("totalTokenCount"), input + visible + thoughts, "totalTokenCount: {u}");
    (input, visible + thoughts, n("cachedContentTokenCount"))
}

fn finish_of(reason: &str, has_calls: bool) -> String {
    match reason {
        "STOP" if has_calls => "tool_calls",
        "STOP" => "stop",
        "MAX_TOKENS" => "length",
        "SAFETY" => "content_filter",
        other => panic!("unexpected finishReason {other}"),
    }
    .to_owned()
}

/// Adds the parts of one candidate to what the client has so far.
fn collect_parts(candidate: &Value, content: &mut Option<String>, calls: &mut Vec<(String, String, String)>) {
    let Some(parts) = candidate["content"]["parts"].as_array() else { return };
    assert_eq!(candidate["content"]["role"], "model", "{candidate}");
    for part in parts {
        if part["thought"] == true {
            continue;
        }
        if let Some(text) = part["text"].as_str().filter(|t| !t.is_empty()) {
            content.get_or_insert_with(String::new).push_str(text);
        }
        if let Some(call) = part.get("functionCall") {
            assert!(call["args"].is_object(), "args is an object: {call}");
            calls.push((
                call["id"].as_str().unwrap_or_default().to_owned(),
                call["name"].as_str().expect("name").to_owned(),
                call["args"].to_string(),
            ));
        }
    }
}

fn read_response(res: &TestResponse) -> Outcome {
    let body = res.json();
    assert!(body["responseId"].as_str().is_some_and(|s| !s.is_empty()), "{body}");
    assert!(body["modelVersion"].as_str().is_some_and(|s| !s.is_empty()), "{body}");
    let candidates = body["candidates"].as_array().expect("candidates");
    assert_eq!(candidates.len(), 1);
    let candidate = &candidates[0];
    assert_eq!(candidate["index"], 0);
    let (mut content, mut calls) = (None, Vec::new());
    collect_parts(candidate, &mut content, &mut calls);
    let finish = finish_of(candidate["finishReason"].as_str().expect("finishReason"), !calls.is_empty());
    Outcome { content, tool_calls: calls, finish, usage: usage_of(&body["usageMetadata"]) }
}

fn read_stream(res: &TestResponse) -> Outcome {
    assert_eq!(res.headers.get("content-type").and_then(|v| v.to_str().ok()), Some("text/event-stream"));
    let events = sse_events(res);
    let (mut content, mut calls) = (None, Vec::new());
    let mut id = None;
    let (last, before) = events.split_last().expect("events");
    for chunk in &events {
        assert!(chunk.get("error").is_none(), "error event: {chunk}");
        let this_id = chunk["responseId"].as_str().unwrap_or_default().to_owned();
        assert_eq!(id.get_or_insert_with(|| this_id.clone()), &this_id, "one responseId");
        let candidate = &chunk["candidates"][0];
        // Google's SDKs drop a streamed turn that has a chunk without parts.
        assert!(candidate["content"]["parts"].as_array().is_some_and(|p| !p.is_empty()), "{chunk}");
        collect_parts(candidate, &mut content, &mut calls);
    }
    for chunk in before {
        assert!(chunk["candidates"][0].get("finishReason").is_none(), "only the last chunk finishes: {chunk}");
        assert!(chunk.get("usageMetadata").is_none(), "usage comes with the last chunk: {chunk}");
    }
    let finish = finish_of(last["candidates"][0]["finishReason"].as_str().expect("finishReason"), !calls.is_empty());
    Outcome { content, tool_calls: calls, finish, usage: usage_of(&last["usageMetadata"]) }
}

// ---- what the matrix does not cover ----

#[tokio::test]
async fn json_array_streaming_without_alt_sse() {
    let h = Harness::new(GEMINI).await;
    h.mock.push(MockResponse::fixture(200, fixtures().join("gemini").join("stream.response.sse")));
    let res = h.post("/v1beta/models/gemini/gemini-2.5-flash:streamGenerateContent", inbound_file("gemini_api", "stream")).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/json"));
    let chunks: Vec<Value> = serde_json::from_slice(&res.body).unwrap_or_else(|e| panic!("not a JSON array ({e}): {}", res.text()));
    let text: String = chunks.iter().filter_map(|c| c["candidates"][0]["content"]["parts"][0]["text"].as_str()).collect();
    assert_eq!(text, "Hello!");
    assert_eq!(chunks.last().map(|c| c["candidates"][0]["finishReason"].clone()), Some(json!("STOP")));
}

#[tokio::test]
async fn embed_content_goes_through_the_gateway_embeddings() {
    let h = Harness::new(GEMINI).await;
    h.mock.push(fungible_mock::MockResponse::fixture(200, crate::fixtures().join("gemini").join("embed.response.json")));
    let body = r#"{"content":{"parts":[{"text":"cat"}]},"taskType":"SEMANTIC_SIMILARITY"}"#;
    let res = h.post("/v1beta/models/gemini/text-embedding-004:embedContent", body).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["embedding"]["values"], json!([0.125, -0.5, 0.25, 1.0]));
    let sent = h.mock.single_request();
    assert_eq!(sent.uri, "/v1beta/models/text-embedding-004:batchEmbedContents");
    assert_eq!(
        sent.json(),
        json!({"requests": [{"model": "models/text-embedding-004", "content": {"parts": [{"text": "cat"}]}}]})
    );
    // Anthropic has no embeddings: a clear 400 in Google's shape.
    let h = Harness::new(crate::ANTHROPIC).await;
    let res = h.post("/v1beta/models/anthropic/claude-sonnet-4-5:batchEmbedContents", r#"{"requests":[{"content":{"parts":[{"text":"x"}]}}]}"#).await;
    assert!(gemini_error(&res, 400).contains("no embeddings API"));
    assert!(h.mock.received().is_empty());
}

#[tokio::test]
async fn unsupported_methods_and_unknown_models_answer_in_googles_shape() {
    let h = Harness::new(GEMINI).await;
    let body = inbound_file("gemini_api", "plain");
    let res = h.post("/v1beta/models/gemini/gemini-2.5-flash:predict", body.clone()).await;
    assert!(gemini_error(&res, 404).contains("predict"));
    let res = h.post("/v1/models/nosuch/model:generateContent", body.clone()).await;
    assert!(gemini_error(&res, 404).contains("nosuch"));
    let res = h.post("/v1beta/models/gemini/gemini-2.5-flash:generateContent", r#"{"contents":[{"role":"robot","parts":[]}]}"#).await;
    assert!(gemini_error(&res, 400).starts_with("contents[0].role"));
    let res = h.post("/v1beta/models/gemini/gemini-2.5-flash:generateContent", "{").await;
    gemini_error(&res, 400);
    // Only POST belongs to the Gemini API: OpenAI's `GET /v1/models/{id}` stays a 404.
    let res = h.send(Request::get("/v1/models/gemini/gemini-2.5-flash").body(Body::empty()).expect("request")).await;
    assert_eq!(res.status, 404);
    assert!(h.mock.received().is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn count_tokens_asks_the_provider() {
    let h = Harness::new(GEMINI).await;
    h.mock.push(MockResponse::json(200, r#"{"totalTokens": 31, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 31}]}"#));
    let res = h.post("/v1beta/models/gemini/gemini-2.5-flash:countTokens", r#"{"contents":[{"role":"user","parts":[{"text":"Say hello."}]}]}"#).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json(), json!({"totalTokens": 31}));
    let sent = h.mock.single_request();
    assert_eq!(sent.uri, "/v1beta/models/gemini-2.5-flash:countTokens");
    assert_eq!(sent.json()["generateContentRequest"]["contents"][0]["parts"][0]["text"], "Say hello.");

    // OpenAI has no counting endpoint: the count is estimated locally.
    let h = Harness::new(OPENAI).await;
    let res = h.post("/v1/models/openai/gpt-5:countTokens", r#"{"generateContentRequest":{"contents":[{"parts":[{"text":"Say hello."}]}]}}"#).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(res.json()["totalTokens"].as_u64().is_some_and(|n| n > 0), "{}", res.text());
    assert!(h.mock.received().is_empty());
}

#[tokio::test]
async fn gemini_only_fields_reach_gemini_and_no_other_vendor() {
    let body = json!({
        "contents": [{"role": "user", "parts": [{"text": "Say hello."}]}],
        "safety_settings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}],
        "generationConfig": {"temperature": 0.5, "responseModalities": ["TEXT"]},
        "tools": [{"googleSearch": {}}],
    })
    .to_string();

    let h = Harness::new(GEMINI).await;
    h.mock.push(MockResponse::fixture(200, fixtures().join("gemini").join("plain.response.json")));
    let res = h.post("/v1beta/models/gemini/gemini-2.5-flash:generateContent", body.clone()).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let sent = h.mock.single_request().json();
    assert_eq!(sent["safetySettings"][0]["threshold"], "BLOCK_NONE");
    assert_eq!(sent["generationConfig"], json!({"temperature": 0.5, "responseModalities": ["TEXT"]}));
    assert_eq!(sent["tools"], json!([{"googleSearch": {}}]));

    let h = Harness::new(OPENAI).await;
    h.mock.push(MockResponse::fixture(200, fixtures().join("openai").join("plain.response.json")));
    let res = h.post("/v1beta/models/openai/gpt-5:generateContent", body).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let sent = h.mock.single_request().json();
    assert_eq!(
        sent,
        json!({"model": "gpt-5", "messages": [{"role": "user", "content": "Say hello."}], "temperature": 0.5})
    );
}

#[tokio::test]
async fn a_tool_call_round_trip_without_ids_matches_responses_by_name() {
    // What a Gemini client sends back: the model's calls without ids, answered in order.
    let body = json!({
        "contents": [
            {"role": "user", "parts": [{"text": "Weather in Paris and Tokyo?"}]},
            {"role": "model", "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2ln"},
                {"functionCall": {"name": "get_weather", "args": {"city": "Tokyo"}}},
            ]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp_c": 18}}},
                {"functionResponse": {"name": "get_weather", "response": {"temp_c": 25}}},
            ]},
        ],
        "tools": [{"functionDeclarations": [{"name": "get_weather", "parametersJsonSchema": {"type": "object"}}]}],
    })
    .to_string();
    let h = Harness::new(OPENAI).await;
    h.mock.push(MockResponse::fixture(200, fixtures().join("openai").join("tool_result.response.json")));
    let res = h.post("/v1beta/models/openai/gpt-5:generateContent", body).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let sent = h.mock.single_request().json();
    let messages = sent["messages"].as_array().expect("messages");
    let ids: Vec<&str> =
        messages[1]["tool_calls"].as_array().expect("calls").iter().map(|c| c["id"].as_str().expect("id")).collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    assert_eq!((messages[2]["tool_call_id"].as_str(), messages[2]["content"].as_str()), (Some(ids[0]), Some(r#"{"temp_c":18}"#)));
    assert_eq!((messages[3]["tool_call_id"].as_str(), messages[3]["content"].as_str()), (Some(ids[1]), Some(r#"{"temp_c":25}"#)));
}

#[tokio::test]
async fn a_blocked_prompt_finishes_with_safety_and_no_content() {
    let h = Harness::new(GEMINI).await;
    h.mock.push(MockResponse::fixture(200, fixtures().join("gemini").join("blocked.response.json")));
    let res = h.post("/v1beta/models/gemini/gemini-2.5-flash:generateContent", inbound_file("gemini_api", "plain")).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let candidate = &res.json()["candidates"][0];
    assert_eq!(candidate["finishReason"], "SAFETY");
    assert!(candidate.get("content").is_none(), "{candidate}");
    assert!(candidate["finishMessage"].as_str().is_some_and(|m| m.contains("PROHIBITED_CONTENT")), "{candidate}");
}
