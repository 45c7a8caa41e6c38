//! Tests of the Anthropic mapping: the fixture cases both ways, the message-shaping rules, the
//! stream decoder, and one HTTP round trip against a local socket.

use std::time::Duration;

use eventsource_stream::Eventsource;
use fungible_types::{
    CacheControl, ChatRequest, JsonSchemaFormat, Message, ReasoningConfig, ReasoningEffort, SamplingParams, StreamEvent, Tool,
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::sse::SseDecoder;
use crate::{ProviderSettings, Secret};

const MODEL: &str = "claude-sonnet-4-5";

fn fixture(name: &str) -> String {
    let path = format!("{}/../../tests/fixtures/anthropic/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("could not read {path}: {e}"))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).expect("fixture is JSON")
}

// ---- the inbound cases, as the OpenAI front end turns them into canonical requests ----

fn weather_tool() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: Some("Current weather for a city.".into()),
        parameters: json!({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}),
        strict: None,
        cache_control: None,
    }
}

fn base(messages: Vec<Message>) -> ChatRequest {
    ChatRequest { model: format!("anthropic/{MODEL}"), messages, ..Default::default() }
}

fn case_plain() -> ChatRequest {
    ChatRequest {
        params: SamplingParams {
            temperature: Some(0.2),
            max_tokens: Some(50),
            stop: vec!["END".into()],
            seed: Some(7),
            ..Default::default()
        },
        user: Some("user-42".into()),
        ..base(vec![Message::text(Role::System, "You are terse."), Message::text(Role::User, "Say hello.")])
    }
}

fn case_stream() -> ChatRequest {
    ChatRequest { stream: true, stream_include_usage: true, ..case_plain() }
}

fn case_tools() -> ChatRequest {
    ChatRequest {
        tools: vec![weather_tool()],
        tool_choice: Some(ToolChoice::Auto),
        ..base(vec![Message::text(Role::User, "What's the weather in Paris?")])
    }
}

fn case_tools_stream() -> ChatRequest {
    ChatRequest {
        tools: vec![weather_tool()],
        tool_choice: Some(ToolChoice::Auto),
        parallel_tool_calls: Some(true),
        stream: true,
        stream_include_usage: true,
        ..base(vec![Message::text(Role::User, "Weather in Paris and Tokyo?")])
    }
}

fn case_tool_result() -> ChatRequest {
    let mut assistant = Message::new(Role::Assistant, Vec::new());
    assistant.tool_calls =
        vec![ToolCall { id: "call_abc".into(), name: "get_weather".into(), arguments: r#"{"city":"Paris"}"#.into() }];
    let mut tool = Message::text(Role::Tool, r#"{"temp_c":18}"#);
    tool.tool_call_id = Some("call_abc".into());
    ChatRequest {
        tools: vec![weather_tool()],
        ..base(vec![Message::text(Role::User, "What's the weather in Paris?"), assistant, tool])
    }
}

fn case_json_schema() -> ChatRequest {
    ChatRequest {
        response_format: Some(ResponseFormat::JsonSchema(JsonSchemaFormat {
            name: "person".into(),
            description: None,
            schema: json!({
                "type":"object",
                "properties":{"name":{"type":"string"},"age":{"type":"integer"}},
                "required":["name","age"],
                "additionalProperties":false
            }),
            strict: Some(true),
        })),
        ..base(vec![Message::text(Role::User, "Extract: Ada Lovelace was 36.")])
    }
}

fn case_image() -> ChatRequest {
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
    base(vec![Message::new(
        Role::User,
        vec![
            ContentPart::Text { text: "What is in these images?".into() },
            ContentPart::Image {
                source: ImageSource::Base64 { media_type: "image/png".into(), data: png.into() },
                detail: None,
            },
            ContentPart::Image { source: ImageSource::Url("https://example.com/cat.jpg".into()), detail: None },
        ],
    )])
}

fn body(req: &ChatRequest) -> Value {
    let wire = build_request("anthropic", req, MODEL, req.stream, DEFAULT_MAX_TOKENS).expect("request converts");
    let bytes = crate::body::encode("anthropic", &wire, &req.extra_body).expect("request serialises");
    serde_json::from_slice(&bytes).expect("body is JSON")
}

#[test]
fn every_case_sends_the_fixture_body() {
    let cases: [(&str, ChatRequest); 7] = [
        ("plain", case_plain()),
        ("stream", case_stream()),
        ("tools", case_tools()),
        ("tools_stream", case_tools_stream()),
        ("tool_result", case_tool_result()),
        ("json_schema", case_json_schema()),
        ("image", case_image()),
    ];
    for (name, req) in cases {
        assert_eq!(body(&req), fixture_json(&format!("{name}.request.json")), "case {name}");
    }
}

#[test]
fn wire_field_order_starts_with_model_max_tokens_system_messages() {
    let req = case_plain();
    let wire = build_request("anthropic", &req, MODEL, false, DEFAULT_MAX_TOKENS).expect("converts");
    let text = serde_json::to_string(&wire).expect("serialises");
    assert!(text.starts_with(r#"{"model":"claude-sonnet-4-5","max_tokens":50,"system":[{"#), "{text}");
    assert!(text.find(r#""system""#) < text.find(r#""messages""#));
    assert!(text.find(r#""messages""#) < text.find(r#""temperature""#));
}

// ---- the response fixtures ----

struct Expected {
    content: Option<&'static str>,
    tool_calls: &'static [(&'static str, &'static str)],
    finish: FinishReason,
    /// input, output, cache read
    usage: (u64, u64, u64),
}

fn expected(case: &str) -> Expected {
    let e = |content, tool_calls, finish, usage| Expected { content, tool_calls, finish, usage };
    match case {
        "plain" | "stream" => e(Some("Hello!"), &[], FinishReason::Stop, (20, 5, 8)),
        "tools" => e(None, &[("get_weather", r#"{"city":"Paris"}"#)], FinishReason::ToolCalls, (30, 10, 0)),
        "tools_stream" => e(
            None,
            &[("get_weather", r#"{"city":"Paris"}"#), ("get_weather", r#"{"city":"Tokyo"}"#)],
            FinishReason::ToolCalls,
            (30, 20, 0),
        ),
        "tool_result" => e(Some("It is 18°C in Paris."), &[], FinishReason::Stop, (40, 8, 0)),
        "json_schema" => e(Some(r#"{"name":"Ada Lovelace","age":36}"#), &[], FinishReason::Stop, (25, 12, 0)),
        "image" => e(Some("A red pixel and a cat."), &[], FinishReason::Stop, (300, 7, 0)),
        other => panic!("no expectation for {other}"),
    }
}

#[test]
fn every_response_fixture_means_what_the_case_table_says() {
    for case in ["plain", "tools", "tool_result", "json_schema", "image"] {
        let wire: Response = serde_json::from_str(&fixture(&format!("{case}.response.json"))).expect("response parses");
        let response = convert_response(wire, MODEL);
        let want = expected(case);
        assert_eq!(response.message.content.as_deref(), want.content, "case {case}");
        let calls: Vec<(&str, &str)> =
            response.message.tool_calls.iter().map(|c| (c.name.as_str(), c.arguments.as_str())).collect();
        assert_eq!(calls, want.tool_calls, "case {case}");
        assert_eq!(response.finish_reason, want.finish, "case {case}");
        let u = response.usage;
        assert_eq!((u.input_tokens, u.output_tokens, u.cache_read_tokens), want.usage, "case {case}");
        assert!(!response.id.is_empty() && response.model.starts_with(MODEL), "case {case}");
        assert!(response.created > 0);
    }
}

#[test]
fn tool_use_ids_come_back_unchanged() {
    let wire: Response = serde_json::from_str(&fixture("tools.response.json")).expect("parses");
    let response = convert_response(wire, MODEL);
    assert_eq!(response.message.tool_calls[0].id, "toolu_01A09q90qw90lq917835lq9");
}

/// Runs `sse` through the real SSE parser, cut into small chunks so events straddle reads.
async fn decode_sse(sse: &str) -> (Vec<StreamEvent>, Result<(), ProviderError>, bool) {
    let chunks: Vec<Result<Vec<u8>, std::convert::Infallible>> =
        sse.as_bytes().chunks(7).map(|c| Ok(c.to_vec())).collect();
    let mut events = futures::stream::iter(chunks).eventsource();
    let mut decoder = stream::EventDecoder::new("anthropic", MODEL);
    let mut out = Vec::new();
    while let Some(event) = events.next().await {
        let event = event.expect("well-formed SSE");
        if let Err(e) = decoder.on_event(&event, &mut out) {
            return (out, Err(e), decoder.is_done());
        }
        if decoder.is_done() {
            break;
        }
    }
    (out, Ok(()), decoder.is_done())
}

/// What a client would assemble from a stream.
#[derive(Debug, Default)]
struct Assembled {
    text: String,
    reasoning: String,
    signature: String,
    tool_calls: Vec<(String, String, String)>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    text_deltas: usize,
    arg_deltas: usize,
}

fn assemble(events: &[StreamEvent]) -> Assembled {
    let mut a = Assembled::default();
    assert!(matches!(events.first(), Some(StreamEvent::Start { .. })), "Start comes first: {events:?}");
    for (i, event) in events.iter().enumerate() {
        match event {
            StreamEvent::Start { .. } => assert_eq!(i, 0, "one Start"),
            StreamEvent::TextDelta { text } => {
                a.text_deltas += 1;
                a.text.push_str(text);
            }
            StreamEvent::ReasoningDelta { text } => a.reasoning.push_str(text),
            StreamEvent::ReasoningSignature { signature } => a.signature.push_str(signature),
            StreamEvent::ToolCallStart { index, id, name } => {
                assert_eq!(*index as usize, a.tool_calls.len(), "tool calls are numbered in order");
                a.tool_calls.push((id.clone(), name.clone(), String::new()));
            }
            StreamEvent::ToolCallArgs { index, arguments } => {
                a.arg_deltas += 1;
                a.tool_calls[*index as usize].2.push_str(arguments);
            }
            StreamEvent::Usage(u) => {
                assert!(a.finish.is_none(), "Usage comes before Finish");
                a.usage = Some(*u);
            }
            StreamEvent::Finish { reason } => {
                assert!(a.finish.is_none(), "one Finish");
                a.finish = Some(reason.clone());
            }
            StreamEvent::RedactedReasoning { .. } | StreamEvent::Refusal { .. } => {}
        }
    }
    a
}

#[tokio::test]
async fn every_stream_fixture_means_what_the_case_table_says() {
    for case in ["stream", "tools_stream"] {
        let (events, result, done) = decode_sse(&fixture(&format!("{case}.response.sse"))).await;
        result.expect("stream decodes");
        assert!(done, "message_stop ends the stream ({case})");
        let Some(StreamEvent::Start { id, model, .. }) = events.first() else { panic!("no Start in {case}") };
        assert!(id.starts_with("msg_") && model.starts_with(MODEL), "{id} {model}");
        let a = assemble(&events);
        let want = expected(case);
        assert_eq!((!a.text.is_empty()).then_some(a.text.as_str()), want.content, "case {case}");
        let calls: Vec<(&str, &str)> = a.tool_calls.iter().map(|(_, n, args)| (n.as_str(), args.as_str())).collect();
        assert_eq!(calls, want.tool_calls, "case {case}");
        assert_eq!(a.finish, Some(want.finish), "case {case}");
        let u = a.usage.expect("usage");
        assert_eq!((u.input_tokens, u.output_tokens, u.cache_read_tokens), want.usage, "case {case}");
        // The fixtures split text and arguments over several deltas.
        assert!(a.text_deltas >= 3 || a.arg_deltas >= 6, "case {case}: {a:?}");
    }
}

#[tokio::test]
async fn usage_of_message_start_is_used_when_message_delta_only_has_output() {
    let sse = concat!(
        "event: message_start\n",
        r#"data: {"type":"message_start","message":{"id":"msg_1","model":"m","usage":{"input_tokens":3,"cache_read_input_tokens":4,"cache_creation_input_tokens":5,"output_tokens":1}}}"#,
        "\n\n",
        "event: message_delta\n",
        r#"data: {"type":"message_delta","delta":{"stop_reason":"max_tokens","stop_sequence":null},"usage":{"output_tokens":9}}"#,
        "\n\n",
        "event: message_stop\n",
        r#"data: {"type":"message_stop"}"#,
        "\n\n",
    );
    let (events, result, _) = decode_sse(sse).await;
    result.expect("decodes");
    let a = assemble(&events);
    assert_eq!(
        a.usage,
        Some(Usage {
            input_tokens: 12,
            output_tokens: 9,
            cache_read_tokens: 4,
            cache_write_tokens: 5,
            reasoning_tokens: 0
        })
    );
    assert_eq!(a.finish, Some(FinishReason::Length));
}

#[tokio::test]
async fn prompt_usage_of_message_start_comes_before_the_first_content() {
    let (events, result, _) = decode_sse(&fixture("stream.response.sse")).await;
    result.expect("decodes");
    let prompt = Usage { input_tokens: 20, output_tokens: 1, cache_read_tokens: 8, ..Usage::default() };
    assert!(matches!(events[0], StreamEvent::Start { .. }), "{events:?}");
    assert_eq!(events[1], StreamEvent::Usage(prompt), "{events:?}");
    assert_eq!(events[2], StreamEvent::TextDelta { text: "Hel".into() }, "{events:?}");
}

#[tokio::test]
async fn thinking_streams_as_reasoning_and_unknown_events_are_skipped() {
    let sse = concat!(
        "event: message_start\n",
        r#"data: {"type":"message_start","message":{"id":"msg_1","model":"m","usage":{"input_tokens":3,"output_tokens":1}}}"#,
        "\n\n",
        "event: content_block_start\n",
        r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
        "\n\n",
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me "}}"#,
        "\n\n",
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"think."}}"#,
        "\n\n",
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM"}}"#,
        "\n\n",
        "event: content_block_stop\n",
        r#"data: {"type":"content_block_stop","index":0}"#,
        "\n\n",
        "event: some_future_event\n",
        r#"data: {"type":"some_future_event","whatever":[1,2]}"#,
        "\n\n",
        "event: content_block_start\n",
        r#"data: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#,
        "\n\n",
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":1,"delta":{"type":"citations_delta","citation":{}}}"#,
        "\n\n",
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"42"}}"#,
        "\n\n",
        "event: message_delta\n",
        r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}"#,
        "\n\n",
        "event: message_stop\n",
        r#"data: {"type":"message_stop"}"#,
        "\n\n",
    );
    let (events, result, _) = decode_sse(sse).await;
    result.expect("decodes");
    let a = assemble(&events);
    assert_eq!(a.reasoning, "Let me think.");
    assert_eq!(a.signature, "EqQBCgIYAhIM");
    assert_eq!(a.text, "42");
    assert_eq!(a.finish, Some(FinishReason::Stop));
}

#[tokio::test]
async fn a_tool_call_without_argument_text_gets_an_empty_object() {
    let sse = concat!(
        "event: message_start\n",
        r#"data: {"type":"message_start","message":{"id":"msg_1","model":"m","usage":{"input_tokens":3,"output_tokens":1}}}"#,
        "\n\n",
        "event: content_block_start\n",
        r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_1","name":"now","input":{}}}"#,
        "\n\n",
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":""}}"#,
        "\n\n",
        "event: content_block_stop\n",
        r#"data: {"type":"content_block_stop","index":0}"#,
        "\n\n",
        "event: message_stop\n",
        r#"data: {"type":"message_stop"}"#,
        "\n\n",
    );
    let (events, result, _) = decode_sse(sse).await;
    result.expect("decodes");
    let a = assemble(&events);
    assert_eq!(a.tool_calls, vec![("toolu_1".to_owned(), "now".to_owned(), "{}".to_owned())]);
    // No message_delta: the finish is inferred, with message_start's usage before it.
    assert_eq!(a.finish, Some(FinishReason::ToolCalls));
    assert_eq!(a.usage.map(|u| u.input_tokens), Some(3));
}

#[tokio::test]
async fn error_events_become_classified_errors() {
    let cases = [
        ("overloaded_error", ErrorKind::Overloaded),
        ("rate_limit_error", ErrorKind::RateLimited),
        ("api_error", ErrorKind::UpstreamServer),
        ("invalid_request_error", ErrorKind::InvalidRequest),
        ("brand_new_error", ErrorKind::UpstreamServer),
    ];
    for (kind, want) in cases {
        let sse = format!(
            "event: message_start\ndata: {}\n\nevent: ping\ndata: {{\"type\": \"ping\"}}\n\nevent: error\ndata: {}\n\n",
            r#"{"type":"message_start","message":{"id":"msg_1","model":"m","usage":{"input_tokens":3,"output_tokens":1}}}"#,
            json!({"type":"error","error":{"type":kind,"message":"Overloaded"}}),
        );
        let (events, result, done) = decode_sse(&sse).await;
        let err = result.expect_err("an error event fails the stream");
        assert_eq!(err.kind, want, "{kind}");
        assert_eq!(err.message, "Overloaded");
        assert_eq!(err.provider, "anthropic");
        assert!(!done);
        assert_eq!(events.len(), 1, "only Start was emitted: {events:?}");
    }
}

#[tokio::test]
async fn garbage_data_is_a_malformed_response_not_a_panic() {
    for data in ["not json", r#"{"type":"content_block_delta"}"#, r#"{"type":"content_block_start","index":-1}"#, "[]"]
    {
        let (_, result, _) = decode_sse(&format!("data: {data}\n\n")).await;
        assert_eq!(result.expect_err(data).kind, ErrorKind::MalformedResponse, "{data}");
    }
}

// ---- request shaping ----

fn messages_of(req: &ChatRequest) -> Value {
    body(req)["messages"].clone()
}

#[test]
fn instructions_are_hoisted_and_same_role_turns_merged() {
    let req = base(vec![
        Message::text(Role::System, "one"),
        Message::text(Role::User, "a"),
        Message::text(Role::Developer, "two"),
        Message::text(Role::User, "b"),
        Message::text(Role::Assistant, "c"),
        Message::text(Role::Assistant, "d"),
        Message::text(Role::User, ""),
    ]);
    let body = body(&req);
    assert_eq!(body["system"], json!([{"type":"text","text":"one"},{"type":"text","text":"two"}]));
    assert_eq!(
        body["messages"],
        json!([
            {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
            {"role":"assistant","content":[{"type":"text","text":"c"},{"type":"text","text":"d"}]},
        ])
    );
}

#[test]
fn tool_results_share_one_user_turn_before_its_text() {
    let mut assistant = Message::text(Role::Assistant, "Checking.");
    assistant.tool_calls = vec![
        ToolCall { id: "t1".into(), name: "f".into(), arguments: r#"{"x":1}"#.into() },
        ToolCall { id: "t2".into(), name: "g".into(), arguments: String::new() },
    ];
    let mut r1 = Message::text(Role::Tool, "one");
    r1.tool_call_id = Some("t1".into());
    let mut r2 = Message::new(Role::Tool, Vec::new());
    r2.tool_call_id = Some("t2".into());
    let req = base(vec![Message::text(Role::User, "go"), assistant, r1, r2, Message::text(Role::User, "and?")]);
    assert_eq!(
        messages_of(&req),
        json!([
            {"role":"user","content":[{"type":"text","text":"go"}]},
            {"role":"assistant","content":[
                {"type":"text","text":"Checking."},
                {"type":"tool_use","id":"t1","name":"f","input":{"x":1}},
                {"type":"tool_use","id":"t2","name":"g","input":{}},
            ]},
            {"role":"user","content":[
                {"type":"tool_result","tool_use_id":"t1","content":"one"},
                {"type":"tool_result","tool_use_id":"t2"},
                {"type":"text","text":"and?"},
            ]},
        ])
    );
}

#[test]
fn cache_breakpoints_go_on_the_last_block_of_a_marked_message_and_on_tools() {
    let one_hour = Some(CacheControl { ttl: Some("1h".into()) });
    let mut system = Message::text(Role::System, "long instructions");
    system.cache_control = Some(CacheControl::default());
    let mut user = Message::new(
        Role::User,
        vec![ContentPart::Text { text: "a".into() }, ContentPart::Text { text: "b".into() }],
    );
    user.cache_control = one_hour.clone();
    let mut assistant = Message::new(Role::Assistant, Vec::new());
    assistant.tool_calls = vec![ToolCall { id: "t1".into(), name: "f".into(), arguments: "{}".into() }];
    let mut result = Message::text(Role::Tool, "boom");
    result.tool_call_id = Some("t1".into());
    result.is_error = true;
    result.cache_control = Some(CacheControl::default());
    let req = ChatRequest {
        tools: vec![Tool { cache_control: one_hour, ..weather_tool() }, Tool::new("f", None, json!({"type":"object"}))],
        ..base(vec![system, Message::text(Role::System, "unmarked"), user, assistant, result, Message::text(Role::User, "next")])
    };
    let body = body(&req);
    assert_eq!(
        body["system"],
        json!([
            {"type":"text","text":"long instructions","cache_control":{"type":"ephemeral"}},
            {"type":"text","text":"unmarked"},
        ])
    );
    assert_eq!(
        body["messages"],
        json!([
            {"role":"user","content":[
                {"type":"text","text":"a"},
                {"type":"text","text":"b","cache_control":{"type":"ephemeral","ttl":"1h"}},
            ]},
            {"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f","input":{}}]},
            {"role":"user","content":[
                {"type":"tool_result","tool_use_id":"t1","content":"boom","is_error":true,"cache_control":{"type":"ephemeral"}},
                {"type":"text","text":"next"},
            ]},
        ])
    );
    assert_eq!(body["tools"][0]["cache_control"], json!({"type":"ephemeral","ttl":"1h"}));
    assert!(body["tools"][1].get("cache_control").is_none(), "{}", body["tools"][1]);
}

#[test]
fn a_tool_result_with_an_image_is_sent_as_blocks() {
    let mut assistant = Message::new(Role::Assistant, Vec::new());
    assistant.tool_calls = vec![ToolCall { id: "t1".into(), name: "shot".into(), arguments: "{}".into() }];
    let mut result = Message::new(
        Role::Tool,
        vec![
            ContentPart::Text { text: "here".into() },
            ContentPart::Image { source: ImageSource::Url("https://example.com/s.png".into()), detail: None },
        ],
    );
    result.tool_call_id = Some("t1".into());
    let req = base(vec![Message::text(Role::User, "go"), assistant, result]);
    assert_eq!(
        messages_of(&req)[2]["content"][0],
        json!({"type":"tool_result","tool_use_id":"t1","content":[
            {"type":"text","text":"here"},
            {"type":"image","source":{"type":"url","url":"https://example.com/s.png"}},
        ]})
    );
}

#[test]
fn invalid_tool_arguments_are_an_invalid_request_naming_the_field() {
    let mut assistant = Message::new(Role::Assistant, Vec::new());
    assistant.tool_calls = vec![
        ToolCall { id: "t1".into(), name: "f".into(), arguments: "{}".into() },
        ToolCall { id: "t2".into(), name: "f".into(), arguments: "{not json".into() },
    ];
    let req = base(vec![Message::text(Role::User, "go"), assistant]);
    let err = build_request("anthropic", &req, MODEL, false, DEFAULT_MAX_TOKENS).err().expect("rejected");
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
    assert!(
        err.message.starts_with("messages[1].tool_calls[1].function.arguments is not valid JSON"),
        "{}",
        err.message
    );

    let mut assistant = Message::new(Role::Assistant, Vec::new());
    assistant.tool_calls = vec![ToolCall { id: "t1".into(), name: "f".into(), arguments: "[1]".into() }];
    let req = base(vec![assistant]);
    let err = build_request("anthropic", &req, MODEL, false, DEFAULT_MAX_TOKENS).err().expect("rejected");
    assert_eq!(err.message, "messages[0].tool_calls[0].function.arguments must be a JSON object");
}

#[test]
fn a_tool_message_without_a_call_id_is_rejected() {
    let req = base(vec![Message::text(Role::Tool, "x")]);
    let err = build_request("anthropic", &req, MODEL, false, DEFAULT_MAX_TOKENS).err().expect("rejected");
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
    assert!(err.message.contains("messages[0].tool_call_id"), "{}", err.message);
}

#[test]
fn thinking_blocks_round_trip_with_their_signatures() {
    let wire: Response = serde_json::from_value(json!({
        "id": "msg_1", "model": "m", "type": "message", "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "Paris is in France.", "signature": "EqQBCgIYAhIM"},
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
            {"type": "text", "text": "Let me check."},
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "x"}},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris", "units": ["c"]}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 1, "output_tokens": 2}
    }))
    .expect("parses");
    let response = convert_response(wire, MODEL);
    assert_eq!(response.message.reasoning_text().as_deref(), Some("Paris is in France."));
    assert_eq!(response.message.tool_calls[0].arguments, r#"{"city":"Paris","units":["c"]}"#);
    assert_eq!(response.finish_reason, FinishReason::ToolCalls);

    let mut assistant = Message::text(Role::Assistant, response.message.content.clone().expect("text"));
    assistant.reasoning = response.message.reasoning.clone();
    assistant.reasoning.push(ReasoningBlock::Thinking { text: "from another vendor".into(), signature: None });
    assistant.tool_calls = response.message.tool_calls.clone();
    let req = base(vec![Message::text(Role::User, "weather?"), assistant]);
    assert_eq!(
        messages_of(&req)[1],
        json!({"role":"assistant","content":[
            {"type":"thinking","thinking":"Paris is in France.","signature":"EqQBCgIYAhIM"},
            {"type":"redacted_thinking","data":"EmwKAhgBEgy3va3pzix"},
            {"type":"text","text":"Let me check."},
            {"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris","units":["c"]}},
        ]})
    );
}

#[test]
fn stop_reasons_map_to_finish_reasons() {
    assert_eq!(finish_reason(Some("end_turn"), false), FinishReason::Stop);
    assert_eq!(finish_reason(Some("stop_sequence"), false), FinishReason::Stop);
    assert_eq!(finish_reason(Some("pause_turn"), false), FinishReason::Stop);
    assert_eq!(finish_reason(Some("max_tokens"), true), FinishReason::Length);
    assert_eq!(finish_reason(Some("tool_use"), true), FinishReason::ToolCalls);
    assert_eq!(finish_reason(Some("refusal"), false), FinishReason::ContentFilter);
    assert_eq!(finish_reason(None, true), FinishReason::ToolCalls);
}

#[test]
fn tool_choice_and_parallel_calls_map_to_anthropic_shapes() {
    let with = |choice: Option<ToolChoice>, parallel: Option<bool>| {
        let req = ChatRequest {
            tools: vec![weather_tool()],
            tool_choice: choice,
            parallel_tool_calls: parallel,
            ..base(vec![Message::text(Role::User, "x")])
        };
        body(&req).get("tool_choice").cloned()
    };
    assert_eq!(with(Some(ToolChoice::Required), None), Some(json!({"type":"any"})));
    assert_eq!(with(Some(ToolChoice::None), Some(false)), Some(json!({"type":"none"})));
    assert_eq!(
        with(Some(ToolChoice::Tool("get_weather".into())), Some(false)),
        Some(json!({"type":"tool","name":"get_weather","disable_parallel_tool_use":true}))
    );
    assert_eq!(with(None, Some(false)), Some(json!({"type":"auto","disable_parallel_tool_use":true})));
    assert_eq!(with(None, Some(true)), None);

    let req = ChatRequest { tool_choice: Some(ToolChoice::Auto), ..base(vec![Message::text(Role::User, "x")]) };
    assert!(body(&req).get("tool_choice").is_none(), "no tools, no tool_choice");
}

#[test]
fn strict_tools_and_tools_without_parameters() {
    let tool = Tool { strict: Some(true), ..Tool::new("now", None, Value::Null) };
    let lax = Tool { strict: Some(false), ..weather_tool() };
    let req = ChatRequest { tools: vec![tool, lax], ..base(vec![Message::text(Role::User, "x")]) };
    let tools = body(&req)["tools"].clone();
    assert_eq!(tools[0], json!({"name":"now","input_schema":{"type":"object","properties":{}},"strict":true}));
    assert!(tools[1].get("strict").is_none());
}

#[test]
fn json_object_format_asks_for_any_object() {
    let req =
        ChatRequest { response_format: Some(ResponseFormat::JsonObject), ..base(vec![Message::text(Role::User, "x")]) };
    assert_eq!(body(&req)["output_config"], json!({"format":{"type":"json_schema","schema":{"type":"object"}}}));
    let req = ChatRequest { response_format: Some(ResponseFormat::Text), ..req };
    assert!(body(&req).get("output_config").is_none());
}

#[test]
fn reasoning_turns_thinking_on_and_makes_room_for_it() {
    let thinking = |effort, budget, max_tokens| {
        let req = ChatRequest {
            reasoning: Some(ReasoningConfig { effort, budget_tokens: budget }),
            params: SamplingParams { max_tokens, ..Default::default() },
            ..base(vec![Message::text(Role::User, "x")])
        };
        let body = body(&req);
        (body.get("thinking").cloned(), body["max_tokens"].as_u64())
    };
    assert_eq!(
        thinking(Some(ReasoningEffort::High), None, None),
        (Some(json!({"type":"enabled","budget_tokens":24576})), Some(24576 + 4096))
    );
    assert_eq!(
        thinking(Some(ReasoningEffort::Low), None, None),
        (Some(json!({"type":"enabled","budget_tokens":2048})), Some(4096))
    );
    assert_eq!(
        thinking(None, Some(10_000), Some(12_000)),
        (Some(json!({"type":"enabled","budget_tokens":10000})), Some(12_000))
    );
    assert_eq!(thinking(Some(ReasoningEffort::None), None, None), (None, Some(4096)));
}

#[test]
fn an_effort_budget_at_or_above_max_tokens_is_fitted_under_it() {
    let thinking = |effort, budget, max_tokens| {
        let req = ChatRequest {
            reasoning: Some(ReasoningConfig { effort, budget_tokens: budget }),
            params: SamplingParams { max_tokens: Some(max_tokens), ..Default::default() },
            ..base(vec![Message::text(Role::User, "x")])
        };
        let body = body(&req);
        (body.get("thinking").cloned(), body["max_tokens"].as_u64())
    };
    // `reasoning_effort: high` (24576) with `max_completion_tokens: 16000`: Anthropic rejects
    // a budget that is not below max_tokens, so the budget shrinks and the limit stays.
    assert_eq!(
        thinking(Some(ReasoningEffort::High), None, 16_000),
        (Some(json!({"type":"enabled","budget_tokens":15_999})), Some(16_000))
    );
    assert_eq!(
        thinking(Some(ReasoningEffort::Minimal), None, 1024),
        (None, Some(1024)),
        "no budget of at least 1024 fits below 1024"
    );
    assert_eq!(thinking(Some(ReasoningEffort::Low), None, 500), (None, Some(500)));
    // A budget the client set itself is sent as it is: the vendor's error is the client's.
    assert_eq!(
        thinking(None, Some(20_000), 16_000),
        (Some(json!({"type":"enabled","budget_tokens":20_000})), Some(16_000))
    );
}

#[test]
fn vendor_less_fields_are_dropped_and_extra_body_is_merged() {
    let mut req = case_plain();
    req.params.top_p = Some(0.9);
    req.params.top_k = Some(40);
    req.params.presence_penalty = Some(0.5);
    req.params.frequency_penalty = Some(0.5);
    req.openai.logprobs = Some(true);
    req.openai.service_tier = Some("flex".into());
    req.metadata = Some(serde_json::Map::from_iter([("k".to_owned(), json!("v"))]));
    req.extra_body.insert("container".into(), json!("c_1"));
    let body = body(&req);
    let mut keys: Vec<&str> = body.as_object().expect("object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "container",
            "max_tokens",
            "messages",
            "metadata",
            "model",
            "stop_sequences",
            "system",
            "temperature",
            "top_k",
            "top_p"
        ]
    );
    assert_eq!(body["metadata"], json!({"user_id":"user-42"}));
    assert_eq!(body["top_k"], 40);
}

#[test]
fn usage_counts_cached_prompt_tokens_as_input() {
    let u = convert_usage(WireUsage {
        input_tokens: Some(10),
        output_tokens: Some(3),
        cache_read_input_tokens: Some(100),
        cache_creation_input_tokens: Some(20),
    });
    assert_eq!(
        u,
        Usage {
            input_tokens: 130,
            output_tokens: 3,
            cache_read_tokens: 100,
            cache_write_tokens: 20,
            reasoning_tokens: 0
        }
    );
    let huge = convert_usage(WireUsage {
        input_tokens: Some(u64::MAX),
        cache_read_input_tokens: Some(u64::MAX),
        ..Default::default()
    });
    assert_eq!(huge.input_tokens, u64::MAX);
}

// ---- HTTP round trip against a local socket ----

/// Answers one HTTP/1.1 request with `status` and `body`; yields the raw request it read.
async fn serve_once(
    status: &'static str,
    content_type: &'static str,
    body: String,
) -> (String, tokio::task::JoinHandle<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut request = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let n = socket.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
            let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().expect("content-length"));
            if request.len() >= end + 4 + length {
                break;
            }
        }
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(response.as_bytes()).await.expect("write");
        socket.shutdown().await.ok();
        String::from_utf8(request).expect("utf-8 request")
    });
    (format!("http://{addr}/"), task)
}

fn provider(base_url: String) -> AnthropicProvider {
    let settings = ProviderSettings {
        name: "anthropic".into(),
        base_url,
        api_key: Some(Secret::new("sk-ant-test-key")),
        headers: vec![("anthropic-beta".into(), Secret::new("test-beta"))],
    };
    AnthropicProvider::new(settings, HttpClient::new(Duration::from_secs(5)).expect("client"), DEFAULT_MAX_TOKENS)
}

fn split_request(raw: &str) -> (String, Value) {
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    (head.to_ascii_lowercase(), serde_json::from_str(body).expect("JSON body"))
}

#[tokio::test]
async fn chat_posts_the_fixture_body_with_anthropic_headers() {
    let (url, server) = serve_once("200 OK", "application/json", fixture("plain.response.json")).await;
    let response = provider(url).chat(&case_plain(), MODEL, None).await.expect("chat succeeds");
    assert_eq!(response.message.content.as_deref(), Some("Hello!"));
    assert_eq!(response.usage.input_tokens, 20);

    let (head, body) = split_request(&server.await.expect("server"));
    assert!(head.starts_with("post /v1/messages http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nx-api-key: sk-ant-test-key"), "{head}");
    assert!(head.contains("\r\nanthropic-version: 2023-06-01"), "{head}");
    assert!(head.contains("\r\nanthropic-beta: test-beta"), "{head}");
    assert!(head.contains("\r\ncontent-type: application/json"), "{head}");
    assert!(!head.contains("authorization"), "{head}");
    assert_eq!(body, fixture_json("plain.request.json"));
}

#[tokio::test]
async fn count_tokens_posts_the_prompt_without_sampling_fields() {
    let (url, server) = serve_once("200 OK", "application/json", r#"{"input_tokens":17}"#.into()).await;
    let n = provider(url).count_tokens(&case_plain(), MODEL).await.expect("count succeeds");
    assert_eq!(n, 17);

    let (head, body) = split_request(&server.await.expect("server"));
    assert!(head.starts_with("post /v1/messages/count_tokens http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nx-api-key: sk-ant-test-key"), "{head}");
    assert!(head.contains("\r\nanthropic-version: 2023-06-01"), "{head}");
    let mut expected = fixture_json("plain.request.json");
    for key in ["max_tokens", "temperature", "stop_sequences", "metadata"] {
        expected.as_object_mut().expect("object").remove(key);
    }
    assert_eq!(body, expected);
}

#[tokio::test]
async fn chat_stream_yields_the_fixture_events() {
    let (url, server) = serve_once("200 OK", "text/event-stream", fixture("stream.response.sse")).await;
    let events: Vec<StreamEvent> = provider(url)
        .chat_stream(&case_stream(), MODEL, None)
        .await
        .expect("stream starts")
        .map(|e| e.expect("no stream error"))
        .collect()
        .await;
    let a = assemble(&events);
    assert_eq!(a.text, "Hello!");
    assert_eq!(a.finish, Some(FinishReason::Stop));
    let (_, body) = split_request(&server.await.expect("server"));
    assert_eq!(body, fixture_json("stream.request.json"));
}

#[tokio::test]
async fn an_error_status_carries_the_vendor_message() {
    let (url, _server) = serve_once("500 Internal Server Error", "application/json", fixture("error.json")).await;
    let err = provider(url).chat(&case_plain(), MODEL, None).await.expect_err("fails");
    assert_eq!(err.kind, ErrorKind::UpstreamServer);
    assert_eq!(err.upstream_status, Some(500));
    assert_eq!(err.message, "simulated upstream failure");

    let (url, _server) = serve_once("529 Overloaded", "application/json", fixture("error.json")).await;
    let err = provider(url).chat_stream(&case_stream(), MODEL, None).await.err().expect("fails");
    assert_eq!(err.kind, ErrorKind::Overloaded);
}

#[tokio::test]
async fn a_mid_stream_error_event_echoing_the_key_is_scrubbed() {
    let sse = format!(
        "event: message_start\ndata: {}\n\nevent: error\ndata: {}\n\n",
        r#"{"type":"message_start","message":{"id":"msg_1","model":"m","usage":{"input_tokens":3,"output_tokens":1}}}"#,
        json!({"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key: sk-ant-test-key"}}),
    );
    let (url, _server) = serve_once("200 OK", "text/event-stream", sse).await;
    let events: Vec<Result<StreamEvent, ProviderError>> =
        provider(url).chat_stream(&case_stream(), MODEL, None).await.expect("stream starts").collect().await;
    let err = events.last().expect("some events").as_ref().expect_err("the stream fails");
    assert_eq!(err.kind, ErrorKind::Authentication);
    assert_eq!(err.message, "invalid x-api-key: [redacted]");
}

#[tokio::test]
async fn a_truncated_stream_is_an_error() {
    let sse = fixture("stream.response.sse");
    let cut = sse.find("event: message_delta").expect("has message_delta");
    let (url, _server) = serve_once("200 OK", "text/event-stream", sse[..cut].to_owned()).await;
    let events: Vec<Result<StreamEvent, ProviderError>> =
        provider(url).chat_stream(&case_stream(), MODEL, None).await.expect("stream starts").collect().await;
    let last = events.last().expect("some events");
    assert_eq!(last.as_ref().err().map(|e| e.kind), Some(ErrorKind::Connection));
}
