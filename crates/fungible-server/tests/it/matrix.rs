//! The same cases over every provider: what fungible sends upstream (path, headers, exact
//! body) and what the client gets back (content, tool calls, finish reason, usage).

use fungible_mock::MockResponse;
use serde_json::Value;

use crate::{ANTHROPIC, GEMINI, GROQ, Harness, OPENAI, ProviderCase, TestResponse, fixtures};

struct Expect {
    content: Option<&'static str>,
    tools: &'static [(&'static str, &'static str)],
    finish: &'static str,
    /// input, output, cache read
    usage: (u64, u64, u64),
}

fn expectation(case: &str) -> Expect {
    const WEATHER_PARIS: &[(&str, &str)] = &[("get_weather", r#"{"city":"Paris"}"#)];
    const WEATHER_BOTH: &[(&str, &str)] = &[("get_weather", r#"{"city":"Paris"}"#), ("get_weather", r#"{"city":"Tokyo"}"#)];
    match case {
        "plain" | "stream" => Expect { content: Some("Hello!"), tools: &[], finish: "stop", usage: (20, 5, 8) },
        "tools" => Expect { content: None, tools: WEATHER_PARIS, finish: "tool_calls", usage: (30, 10, 0) },
        "tools_stream" => Expect { content: None, tools: WEATHER_BOTH, finish: "tool_calls", usage: (30, 20, 0) },
        "tool_result" => Expect { content: Some("It is 18°C in Paris."), tools: &[], finish: "stop", usage: (40, 8, 0) },
        "json_schema" => {
            Expect { content: Some(r#"{"name":"Ada Lovelace","age":36}"#), tools: &[], finish: "stop", usage: (25, 12, 0) }
        }
        "image" => Expect { content: Some("A red pixel and a cat."), tools: &[], finish: "stop", usage: (300, 7, 0) },
        other => panic!("no expectation for case {other}"),
    }
}

fn is_stream(case: &str) -> bool {
    matches!(case, "stream" | "tools_stream")
}

fn expected_path(p: ProviderCase, stream: bool) -> String {
    match p.name {
        "openai" => "/v1/chat/completions".into(),
        "groq" => "/openai/v1/chat/completions".into(),
        "anthropic" => "/v1/messages".into(),
        "gemini" if stream => format!("/v1beta/models/{}:streamGenerateContent?alt=sse", p.model),
        "gemini" => format!("/v1beta/models/{}:generateContent", p.model),
        other => panic!("unknown provider {other}"),
    }
}

async fn check(p: ProviderCase, case: &str) {
    let stream = is_stream(case);
    let dir = fixtures().join(p.name);
    let response_file = dir.join(format!("{case}.response.{}", if stream { "sse" } else { "json" }));
    let h = Harness::new(p).await;
    h.mock.push(MockResponse::fixture(200, response_file));

    let res = h.post("/v1/chat/completions", Harness::inbound(p, case)).await;
    assert_eq!(res.status, 200, "{}", res.text());

    // What went upstream.
    let sent = h.mock.single_request();
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.uri, expected_path(p, stream));
    assert_eq!(sent.header("content-type"), Some("application/json"));
    match p.name {
        "anthropic" => {
            assert_eq!(sent.header("x-api-key"), Some(p.key));
            assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
            assert_eq!(sent.header("authorization"), None);
        }
        "gemini" => {
            assert_eq!(sent.header("x-goog-api-key"), Some(p.key));
            assert!(!sent.uri.contains(p.key), "key leaked into the URL");
        }
        _ => assert_eq!(sent.header("authorization"), Some(format!("Bearer {}", p.key)).as_deref()),
    }
    let expected_body: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{case}.request.json"))).expect("request fixture"),
    )
    .expect("request fixture is JSON");
    assert_eq!(sent.json(), expected_body, "upstream body for {}/{case}", p.name);

    // What the client got.
    let expect = expectation(case);
    let (content, tools, finish, usage) = if stream { read_stream(&res) } else { read_completion(&res) };
    assert_eq!(content.as_deref(), expect.content, "content");
    assert_eq!(tools.len(), expect.tools.len(), "tool calls: {tools:?}");
    let mut ids = std::collections::HashSet::new();
    for ((id, name, args), (want_name, want_args)) in tools.iter().zip(expect.tools) {
        assert!(!id.is_empty() && ids.insert(id.clone()), "tool call ids must be present and unique: {tools:?}");
        assert_eq!(name, want_name);
        let got: Value = serde_json::from_str(args).unwrap_or_else(|e| panic!("arguments {args:?} are not JSON: {e}"));
        let want: Value = serde_json::from_str(want_args).expect("expected args");
        assert_eq!(got, want);
    }
    assert_eq!(finish, expect.finish, "finish_reason");
    assert_eq!(usage, expect.usage, "usage (input, output, cached)");
}

type Outcome = (Option<String>, Vec<(String, String, String)>, String, (u64, u64, u64));

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
    (
        message["content"].as_str().map(str::to_owned),
        tools,
        choice["finish_reason"].as_str().unwrap_or_default().to_owned(),
        usage_of(&body["usage"]),
    )
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
    (content, tools, finish, usage.expect("a usage chunk (include_usage was set)"))
}

macro_rules! matrix {
    ($($provider:ident => $case:expr),* $(,)?) => {
        $(
            mod $provider {
                use super::*;
                #[tokio::test] async fn plain() { check($case, "plain").await }
                #[tokio::test] async fn stream() { check($case, "stream").await }
                #[tokio::test] async fn tools() { check($case, "tools").await }
                #[tokio::test] async fn tools_stream() { check($case, "tools_stream").await }
                #[tokio::test] async fn tool_result() { check($case, "tool_result").await }
                #[tokio::test] async fn json_schema() { check($case, "json_schema").await }
                #[tokio::test] async fn image() { check($case, "image").await }
            }
        )*
    };
}

matrix! {
    openai => OPENAI,
    anthropic => ANTHROPIC,
    gemini => GEMINI,
    openai_compatible => GROQ,
}
