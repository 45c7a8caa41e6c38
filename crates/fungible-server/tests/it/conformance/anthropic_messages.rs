//! Anthropic Messages as a conformance-matrix row: `POST /v1/messages`, read back the way the
//! official SDKs read it (the whole `message`, or the SSE event sequence with its block
//! indices), with the two auth styles the SDK generations use.

use axum::body::Body;
use axum::http::Request;
use serde_json::Value;

use super::{Inbound, Outcome, inbound_file, is_stream};
use crate::TestResponse;

pub struct AnthropicMessages;

impl Inbound for AnthropicMessages {
    const NAME: &'static str = "anthropic_messages";

    fn request(case: &str, model: &str) -> Request<Body> {
        let body = inbound_file("anthropic_messages", case).replace("{model}", model);
        let request = Request::post("/v1/messages").header("content-type", "application/json");
        // SDK 0.x/1.x send `x-api-key`; SDK 2.x send a bearer token and a newer version.
        let request = if is_stream(case) {
            request.header("authorization", "Bearer sk-ant-client").header("anthropic-version", "2026-10-21")
        } else {
            request.header("x-api-key", "sk-ant-client").header("anthropic-version", "2023-06-01")
        };
        request.body(Body::from(body)).expect("request")
    }

    /// Anthropic requires `max_tokens` (the cases without a limit send the Anthropic
    /// provider's default, 4096, which other vendors then receive), has no `seed`, and names
    /// no JSON schema.
    fn unexpressible(provider: &str, case: &str) -> &'static [&'static str] {
        match (provider, case) {
            ("openai", "plain" | "stream") => &["/seed"],
            ("groq", "plain" | "stream") => &["/seed"],
            ("gemini", "plain" | "stream") => &["/generationConfig/seed"],
            ("openai", "json_schema") => &["/max_completion_tokens", "/response_format/json_schema/name"],
            ("groq", "json_schema") => &["/max_tokens", "/response_format/json_schema/name"],
            ("gemini", "json_schema") => &["/generationConfig/maxOutputTokens"],
            ("openai", _) => &["/max_completion_tokens"],
            ("groq", _) => &["/max_tokens"],
            ("gemini", _) => &["/generationConfig"],
            _ => &[],
        }
    }

    fn outcome(case: &str, res: &TestResponse) -> Outcome {
        if is_stream(case) { read_stream(res) } else { read_message(res) }
    }

    fn error_message(res: &TestResponse, status: u16) -> String {
        assert_eq!(res.status.as_u16(), status, "body: {}", res.text());
        error_of(&res.json(), status)
    }

    fn stream_error_message(res: &TestResponse) -> String {
        let events = sse_events(res);
        assert!(!events.iter().any(|(name, _)| name == "message_stop"), "a failed stream must not end like a finished one");
        let (name, data) = events.last().expect("events");
        assert_eq!(name, "error", "the last event is an error: {events:?}");
        error_of(data, 0)
    }
}

/// The message of an Anthropic error body; with a status, checks the error type matches it.
fn error_of(body: &Value, status: u16) -> String {
    assert_eq!(body["type"], "error", "{body}");
    let kind = body["error"]["type"].as_str().unwrap_or_else(|| panic!("no error.type: {body}"));
    if status == 429 {
        assert_eq!(kind, "rate_limit_error");
    }
    let message = body["error"]["message"].as_str().unwrap_or_else(|| panic!("no error.message: {body}"));
    assert!(!message.is_empty());
    message.to_owned()
}

fn finish_of(stop_reason: &str) -> String {
    match stop_reason {
        "end_turn" | "stop_sequence" => "stop",
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        other => panic!("unknown stop_reason {other:?}"),
    }
    .to_owned()
}

/// (input with cache reads and writes added back, output, cache read).
fn usage_of(u: &Value) -> (u64, u64, u64) {
    let n = |key: &str| u[key].as_u64().unwrap_or_else(|| panic!("usage.{key} missing in {u}"));
    let cache_read = n("cache_read_input_tokens");
    (n("input_tokens") + n("cache_creation_input_tokens") + cache_read, n("output_tokens"), cache_read)
}

fn read_message(res: &TestResponse) -> Outcome {
    let body = res.json();
    assert_eq!(body["type"], "message", "{body}");
    assert_eq!(body["role"], "assistant");
    assert!(body["id"].as_str().is_some_and(|id| id.starts_with("msg_")), "{body}");
    assert!(body["model"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(body["stop_sequence"].is_null(), "{body}");
    let mut content: Option<String> = None;
    let mut tools = Vec::new();
    for block in body["content"].as_array().expect("content is an array") {
        match block["type"].as_str() {
            Some("text") => content.get_or_insert_with(String::new).push_str(block["text"].as_str().expect("text")),
            Some("tool_use") => {
                assert!(block["input"].is_object(), "input is an object: {block}");
                tools.push((
                    block["id"].as_str().unwrap_or_default().to_owned(),
                    block["name"].as_str().unwrap_or_default().to_owned(),
                    block["input"].to_string(),
                ));
            }
            // Reasoning (Gemini's thought signatures come back as signed empty thinking blocks,
            // so a client can send them back) is not part of the outcome.
            Some("thinking") => {
                assert!(block["thinking"].is_string() && block["signature"].is_string(), "{block}");
            }
            Some("redacted_thinking") => assert!(block["data"].is_string(), "{block}"),
            other => panic!("unexpected block type {other:?}: {block}"),
        }
    }
    Outcome {
        content,
        tool_calls: tools,
        finish: finish_of(body["stop_reason"].as_str().expect("stop_reason")),
        usage: usage_of(&body["usage"]),
    }
}

/// The `(event, data)` pairs of an SSE body; each event's name equals its data's `type`.
fn sse_events(res: &TestResponse) -> Vec<(String, Value)> {
    assert_eq!(res.headers.get("content-type").and_then(|v| v.to_str().ok()), Some("text/event-stream"));
    res.text()
        .split("\n\n")
        .filter(|frame| !frame.trim().is_empty())
        .map(|frame| {
            let (head, data) = frame.split_once('\n').unwrap_or_else(|| panic!("frame without data: {frame:?}"));
            let name = head.strip_prefix("event: ").unwrap_or_else(|| panic!("no event line: {frame:?}"));
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").expect("data line")).expect("data is JSON");
            assert_eq!(data["type"], name, "event name and type agree: {frame}");
            (name.to_owned(), data)
        })
        .collect()
}

fn read_stream(res: &TestResponse) -> Outcome {
    let events = sse_events(res);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{names:?}");
    assert_eq!(names.get(1), Some(&"ping"), "{names:?}");
    assert_eq!(names.last(), Some(&"message_stop"), "{names:?}");
    assert_eq!(names[names.len() - 2], "message_delta", "{names:?}");

    let start = &events[0].1["message"];
    assert!(start["id"].as_str().is_some_and(|id| id.starts_with("msg_")), "{start}");
    assert_eq!((start["type"].as_str(), start["role"].as_str()), (Some("message"), Some("assistant")));
    assert_eq!(start["content"], serde_json::json!([]));
    assert!(start["stop_reason"].is_null() && start["stop_sequence"].is_null(), "{start}");
    usage_of(&start["usage"]);

    let mut content: Option<String> = None;
    // (id, name, partial JSON) per tool_use block, in block order.
    let mut tools: Vec<(String, String, String)> = Vec::new();
    let mut open: Option<(u64, String)> = None;
    let mut next_index = 0;
    for (name, data) in &events[2..events.len() - 2] {
        match name.as_str() {
            "content_block_start" => {
                assert!(open.is_none(), "one block at a time: {data}");
                let index = data["index"].as_u64().expect("index");
                assert_eq!(index, next_index, "block indices are dense and in order");
                next_index += 1;
                let block = &data["content_block"];
                let kind = block["type"].as_str().expect("block type").to_owned();
                if kind == "tool_use" {
                    assert_eq!(block["input"], serde_json::json!({}), "{block}");
                    tools.push((
                        block["id"].as_str().unwrap_or_default().to_owned(),
                        block["name"].as_str().unwrap_or_default().to_owned(),
                        String::new(),
                    ));
                }
                open = Some((index, kind));
            }
            "content_block_delta" => {
                let (index, kind) = open.as_ref().expect("a delta inside a block");
                assert_eq!(data["index"].as_u64(), Some(*index), "{data}");
                let delta = &data["delta"];
                match (kind.as_str(), delta["type"].as_str()) {
                    ("text", Some("text_delta")) => {
                        content.get_or_insert_with(String::new).push_str(delta["text"].as_str().expect("text"));
                    }
                    ("thinking", Some("thinking_delta")) => assert!(delta["thinking"].is_string(), "{data}"),
                    ("thinking", Some("signature_delta")) => assert!(delta["signature"].is_string(), "{data}"),
                    ("tool_use", Some("input_json_delta")) => {
                        let last = tools.last_mut().expect("a tool block");
                        last.2.push_str(delta["partial_json"].as_str().expect("partial_json"));
                    }
                    other => panic!("delta {other:?} does not fit its block: {data}"),
                }
            }
            "content_block_stop" => {
                let (index, _) = open.take().expect("a stop closes an open block");
                assert_eq!(data["index"].as_u64(), Some(index), "{data}");
            }
            "ping" => {}
            other => panic!("unexpected event {other} between message_start and message_delta: {data}"),
        }
    }
    assert!(open.is_none(), "every block is stopped before message_delta");
    let delta = &events[events.len() - 2].1;
    assert!(delta["delta"]["stop_sequence"].is_null(), "{delta}");
    let tool_calls = tools
        .into_iter()
        .map(|(id, name, json)| {
            let input: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("input {json:?} is not JSON: {e}"));
            assert!(input.is_object(), "{input}");
            (id, name, json)
        })
        .collect();
    Outcome {
        content,
        tool_calls,
        finish: finish_of(delta["delta"]["stop_reason"].as_str().expect("stop_reason")),
        usage: usage_of(&delta["usage"]),
    }
}
