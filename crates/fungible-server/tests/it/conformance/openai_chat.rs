//! OpenAI Chat Completions as a conformance-matrix row: `POST /v1/chat/completions`.

use axum::body::Body;
use axum::http::Request;
use serde_json::Value;

use super::{Inbound, Outcome, inbound_file};
use crate::TestResponse;

pub struct OpenAiChat;

impl Inbound for OpenAiChat {
    const NAME: &'static str = "openai_chat";

    fn request(case: &str, model: &str) -> Request<Body> {
        let body = inbound_file("openai_chat", case).replace("{model}", model);
        Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .header("authorization", "Bearer sk-client")
            .body(Body::from(body))
            .expect("request")
    }

    fn outcome(case: &str, res: &TestResponse) -> Outcome {
        if super::is_stream(case) { read_stream(res) } else { read_completion(res) }
    }

    fn error_message(res: &TestResponse, status: u16) -> String {
        let error = res.openai_error(status);
        error["message"].as_str().unwrap_or_default().to_owned()
    }

    fn stream_error_message(res: &TestResponse) -> String {
        let data = res.sse_data();
        assert!(!data.iter().any(|d| d == "[DONE]"), "a failed stream must not end like a finished one: {data:?}");
        let last: Value = serde_json::from_str(data.last().expect("frames")).expect("error frame is JSON");
        last["error"]["message"].as_str().unwrap_or_else(|| panic!("last frame is not an error: {last}")).to_owned()
    }
}


fn usage_of(u: &Value) -> (u64, u64, u64) {
    let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("usage field missing in {u}"));
    let (input, output) = (n(&u["prompt_tokens"]), n(&u["completion_tokens"]));
    assert_eq!(n(&u["total_tokens"]), input + output, "total_tokens");
    (input, output, n(&u["prompt_tokens_details"]["cached_tokens"]))
}

fn read_completion(res: &TestResponse) -> Outcome {
    let body = res.json();
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().is_some_and(|s| !s.is_empty()), "{body}");
    assert!(body["created"].as_u64().is_some(), "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    let message = &choice["message"];
    assert_eq!(message["role"], "assistant");
    let tools = message["tool_calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .map(|c| {
                    assert_eq!(c["type"], "function");
                    (
                        c["id"].as_str().unwrap_or_default().to_owned(),
                        c["function"]["name"].as_str().unwrap_or_default().to_owned(),
                        c["function"]["arguments"].as_str().expect("arguments is a string").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Outcome {
        content: message["content"].as_str().map(str::to_owned),
        tool_calls: tools,
        finish: choice["finish_reason"].as_str().unwrap_or_default().to_owned(),
        usage: usage_of(&body["usage"]),
    }
}

fn read_stream(res: &TestResponse) -> Outcome {
    assert_eq!(res.headers.get("content-type").and_then(|v| v.to_str().ok()), Some("text/event-stream"));
    let data = res.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "stream must end with [DONE]: {data:?}");
    let mut content: Option<String> = None;
    let mut tools: Vec<(String, String, String)> = Vec::new();
    let mut finish = String::new();
    let mut usage = None;
    let mut id = None;
    for (i, frame) in data[..data.len() - 1].iter().enumerate() {
        let chunk: Value = serde_json::from_str(frame).unwrap_or_else(|e| panic!("frame {i} is not JSON ({e}): {frame}"));
        assert_eq!(chunk["object"], "chat.completion.chunk", "{frame}");
        assert!(chunk.get("error").is_none(), "error frame: {frame}");
        // Every chunk of one response carries the same id.
        let this_id = chunk["id"].as_str().unwrap_or_default().to_owned();
        assert_eq!(id.get_or_insert_with(|| this_id.clone()), &this_id);
        if i == 0 {
            assert_eq!(chunk["choices"][0]["delta"]["role"], "assistant", "first chunk carries the role");
        }
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            assert!(chunk["choices"].as_array().is_some_and(Vec::is_empty), "usage chunk has no choices");
            assert!(usage.is_none(), "one usage chunk");
            usage = Some(usage_of(u));
            continue;
        }
        assert!(usage.is_none(), "usage chunk must be the last before [DONE]");
        let choice = &chunk["choices"][0];
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str() {
            if !text.is_empty() {
                content.get_or_insert_with(String::new).push_str(text);
            }
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().expect("tool call delta has an index") as usize;
            if let Some(call_id) = call["id"].as_str() {
                assert_eq!(index, tools.len(), "tool call indices are dense and in order");
                let name = call["function"]["name"].as_str().expect("first delta names the function");
                tools.push((call_id.to_owned(), name.to_owned(), String::new()));
            }
            let entry = tools.get_mut(index).unwrap_or_else(|| panic!("arguments for unknown index {index}"));
            entry.2.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            assert!(finish.is_empty(), "one finish_reason");
            finish = reason.to_owned();
        }
    }
    Outcome { content, tool_calls: tools, finish, usage: usage.expect("a usage chunk (include_usage was set)") }
}

