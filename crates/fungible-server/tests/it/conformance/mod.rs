//! The conformance matrix: every inbound API × every provider × every case, from one table.
//!
//! For each cell the mock upstream answers with the provider's byte-exact fixture, and the
//! test checks
//! 1. what fungible sent upstream: the exact path, auth headers and JSON body in
//!    `tests/fixtures/<provider>/<case>.request.json` — the same file whatever the inbound
//!    API, less the fields an API cannot express ([`Inbound::unexpressible`]);
//! 2. what the client got, read back through the inbound API's own format: content, tool
//!    calls (whole, with unique ids), finish reason and usage equal to the case's one
//!    expected [`Outcome`] — identical for every pair;
//! 3. the exact bytes the client got, with ids and timestamps normalised, against a snapshot
//!    in `tests/fixtures/conformance/<api>/<provider>/<case>.txt` (written when
//!    `UPDATE_SNAPSHOTS=1`, reviewed like code);
//! 4. that an upstream error, before or during a stream, reaches the client in the inbound
//!    API's own error shape.
//!
//! A new inbound API implements [`Inbound`] and adds one line to `conformance!` below; a new
//! provider adds one line to `providers!`. Either joins the whole matrix at once.

mod anthropic_messages;
mod gemini_api;
mod openai_chat;
mod openai_responses;

use axum::body::Body;
use axum::http::Request;
use fungible_mock::{MockBody, MockResponse};
use serde_json::Value;

use crate::{Harness, ProviderCase, TestResponse, fixtures};

/// What a client must end up with, whatever the API and provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub content: Option<String>,
    /// (id, name, arguments JSON text), in order.
    pub tool_calls: Vec<(String, String, String)>,
    /// Canonical finish reason: `stop`, `length`, `tool_calls` or `content_filter`.
    pub finish: String,
    /// input (cached included), output, cache read.
    pub usage: (u64, u64, u64),
}

struct Expect {
    content: Option<&'static str>,
    tools: &'static [(&'static str, &'static str)],
    finish: &'static str,
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

pub fn is_stream(case: &str) -> bool {
    matches!(case, "stream" | "tools_stream")
}

/// One inbound API, as a client of it would use it.
pub trait Inbound {
    /// Folder name under `tests/fixtures/conformance/`.
    const NAME: &'static str;

    /// The request a client of this API sends for `case`, asking for `model`
    /// (`PROVIDER/MODEL`). `case` is one of the expectation cases; stream cases stream.
    fn request(case: &str, model: &str) -> Request<Body>;

    /// JSON pointers (`/seed`, `/response_format/json_schema/name`) into the provider's
    /// expected upstream body that this API has no way to express for `case`.
    fn unexpressible(_provider: &str, _case: &str) -> &'static [&'static str] {
        &[]
    }

    /// The client's view of a successful response.
    fn outcome(case: &str, res: &TestResponse) -> Outcome;

    /// Asserts `res` is this API's error shape with `status`; returns the error message.
    fn error_message(res: &TestResponse, status: u16) -> String;

    /// Asserts a stream that failed after it started ended with this API's error event, and
    /// not like a finished response; returns the error message.
    fn stream_error_message(res: &TestResponse) -> String;
}

pub fn inbound_file(api: &str, case: &str) -> String {
    let path = fixtures().join("inbound").join(api).join(format!("{case}.json"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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

fn remove_pointer(value: &mut Value, pointer: &str) {
    let Some((parent, key)) = pointer.rsplit_once('/') else { return };
    if let Some(Value::Object(map)) = value.pointer_mut(parent) {
        map.remove(key);
    }
}

/// Replaces what legitimately differs between runs and providers (ids, timestamps, model
/// versions, signatures) with placeholders, in the raw text, so the snapshot keeps the exact
/// bytes (key order, spacing, framing) of everything the API contract fixes.
fn normalise(text: &str) -> String {
    static VOLATILE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        let keys = [
            "id",
            "created",
            "created_at",
            "completed_at",
            "model",
            "modelVersion",
            "responseId",
            "system_fingerprint",
            "call_id",
            "item_id",
            "tool_use_id",
            "tool_call_id",
            "signature",
            "thoughtSignature",
            "previous_response_id",
        ]
        .join("|");
        regex::Regex::new(&format!(r#""({keys})":\s*("(?:[^"\\]|\\.)*"|-?[0-9]+)"#)).expect("valid regex")
    });
    VOLATILE.replace_all(text, "\"$1\":\"<$1>\"").into_owned()
}

fn check_snapshot(api: &str, p: ProviderCase, case: &str, res: &TestResponse) {
    let path = fixtures().join("conformance").join(api).join(p.name).join(format!("{case}.txt"));
    let actual = format!("HTTP {}\n\n{}", res.status.as_u16(), normalise(&res.text()));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("create snapshot dir");
        std::fs::write(&path, &actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_SNAPSHOTS=1 to create it, then review it)", path.display()));
    assert_eq!(actual, expected, "client bytes differ from the snapshot {}", path.display());
}

pub async fn check_case<A: Inbound>(p: ProviderCase, case: &str) {
    let stream = is_stream(case);
    let dir = fixtures().join(p.name);
    let response_file = dir.join(format!("{case}.response.{}", if stream { "sse" } else { "json" }));
    let h = Harness::new(p).await;
    h.mock.push(MockResponse::fixture(200, response_file));

    let res = h.send(A::request(case, &format!("{}/{}", p.name, p.model))).await;
    assert_eq!(res.status, 200, "{}", res.text());

    // 1. What went upstream.
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
    let mut expected_body: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{case}.request.json"))).expect("request fixture"),
    )
    .expect("request fixture is JSON");
    let mut sent_body = sent.json();
    for pointer in A::unexpressible(p.name, case) {
        remove_pointer(&mut expected_body, pointer);
        remove_pointer(&mut sent_body, pointer);
    }
    assert_eq!(sent_body, expected_body, "upstream body for {} -> {}/{case}", A::NAME, p.name);

    // 2. What the client got, through its own API.
    let expect = expectation(case);
    let got = A::outcome(case, &res);
    assert_eq!(got.content.as_deref(), expect.content, "content");
    assert_eq!(got.tool_calls.len(), expect.tools.len(), "tool calls: {:?}", got.tool_calls);
    let mut ids = std::collections::HashSet::new();
    for ((id, name, args), (want_name, want_args)) in got.tool_calls.iter().zip(expect.tools) {
        assert!(!id.is_empty() && ids.insert(id.clone()), "tool call ids must be present and unique: {:?}", got.tool_calls);
        assert_eq!(name, want_name);
        let parsed: Value = serde_json::from_str(args).unwrap_or_else(|e| panic!("arguments {args:?} are not JSON: {e}"));
        let want: Value = serde_json::from_str(want_args).expect("expected args");
        assert_eq!(parsed, want, "tool call arguments arrive whole");
    }
    assert_eq!(got.finish, expect.finish, "finish reason");
    assert_eq!(got.usage, expect.usage, "usage (input, output, cached)");

    // 3. The exact bytes.
    check_snapshot(A::NAME, p, case, &res);
}

/// An upstream error status, and a stream cut after it started: both reach the client in
/// the inbound API's own error shape, naming the provider.
pub async fn check_errors<A: Inbound>(p: ProviderCase) {
    for stream in [false, true] {
        let case = if stream { "stream" } else { "plain" };
        let h = Harness::new(p).await;
        h.mock.push(MockResponse::fixture(429, fixtures().join(p.name).join("error.json")).with_header("retry-after", "3"));
        let res = h.send(A::request(case, &format!("{}/{}", p.name, p.model))).await;
        let message = A::error_message(&res, 429);
        assert!(message.contains("simulated upstream failure") && message.contains(p.name), "{message}");
        assert_eq!(res.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("3"));
        assert!(!res.text().contains(p.key), "secret leaked");
    }

    // Cut mid-way: the first two upstream events, then a reset.
    let text = std::fs::read_to_string(fixtures().join(p.name).join("stream.response.sse")).expect("fixture");
    let sep = if text.contains("\r\n\r\n") { "\r\n\r\n" } else { "\n\n" };
    let first: Vec<bytes::Bytes> =
        text.split(sep).filter(|e| !e.trim().is_empty()).take(2).map(|e| bytes::Bytes::from(format!("{e}{sep}"))).collect();
    let h = Harness::new(p).await;
    h.mock.push(MockResponse::sse("").with_body(MockBody::ChunksThenReset(first)));
    let res = h.send(A::request("stream", &format!("{}/{}", p.name, p.model))).await;
    assert_eq!(res.status, 200, "the stream had started");
    let message = A::stream_error_message(&res);
    assert!(message.starts_with(p.name), "{message}");
}

macro_rules! cells {
    ($api:ty, $provider:expr) => {
        #[tokio::test] async fn plain() { check_case::<$api>($provider, "plain").await }
        #[tokio::test] async fn stream() { check_case::<$api>($provider, "stream").await }
        #[tokio::test] async fn tools() { check_case::<$api>($provider, "tools").await }
        #[tokio::test] async fn tools_stream() { check_case::<$api>($provider, "tools_stream").await }
        #[tokio::test] async fn tool_result() { check_case::<$api>($provider, "tool_result").await }
        #[tokio::test] async fn json_schema() { check_case::<$api>($provider, "json_schema").await }
        #[tokio::test] async fn image() { check_case::<$api>($provider, "image").await }
        #[tokio::test] async fn upstream_error_and_stream_cut() { check_errors::<$api>($provider).await }
    };
}

macro_rules! providers {
    ($api:ty) => {
        mod openai { use super::super::*; cells!($api, crate::OPENAI); }
        mod anthropic { use super::super::*; cells!($api, crate::ANTHROPIC); }
        mod gemini { use super::super::*; cells!($api, crate::GEMINI); }
        mod openai_compatible { use super::super::*; cells!($api, crate::GROQ); }
    };
}

macro_rules! conformance {
    ($($module:ident => $api:ty),* $(,)?) => {
        $( mod $module { providers!($api); } )*
    };
}

conformance! {
    openai_chat_in => openai_chat::OpenAiChat,
    anthropic_messages_in => anthropic_messages::AnthropicMessages,
    gemini_api_in => gemini_api::GeminiApi,
    openai_responses_in => openai_responses::OpenAiResponses,
}
