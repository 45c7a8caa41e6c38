//! Tests for the Gemini provider: request bodies and responses checked against the fixture
//! files in `tests/fixtures/gemini/`, edge cases of the conversions, and one round trip
//! through a local HTTP server per endpoint.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use eventsource_stream::Eventsource;
use fungible_types::{JsonSchemaFormat, ReasoningConfig, ReasoningEffort, SamplingParams, StreamEvent, Tool};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::Secret;
use crate::sse::SseDecoder;

const PROVIDER: &str = "gemini";
const MODEL: &str = "gemini-2.5-flash";

fn fixture(name: &str) -> String {
    let path = format!("{}/../../tests/fixtures/gemini/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).unwrap()
}

fn body(req: &ChatRequest) -> Value {
    serde_json::from_slice(&encode_request(PROVIDER, req).unwrap()).unwrap()
}

// ---- the inbound cases, as the OpenAI front end turns them into canonical requests ----

fn weather_tool() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: Some("Current weather for a city.".into()),
        parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        strict: None,
        cache_control: None,
    }
}

fn plain_case(stream: bool) -> ChatRequest {
    ChatRequest {
        model: "gemini/gemini-2.5-flash".into(),
        messages: vec![Message::text(Role::System, "You are terse."), Message::text(Role::User, "Say hello.")],
        params: SamplingParams {
            temperature: Some(0.2),
            max_tokens: Some(50),
            stop: vec!["END".into()],
            seed: Some(7),
            ..Default::default()
        },
        stream,
        stream_include_usage: stream,
        user: Some("user-42".into()),
        ..Default::default()
    }
}

fn tools_case(question: &str, stream: bool) -> ChatRequest {
    ChatRequest {
        model: "gemini/gemini-2.5-flash".into(),
        messages: vec![Message::text(Role::User, question)],
        tools: vec![weather_tool()],
        tool_choice: Some(ToolChoice::Auto),
        parallel_tool_calls: stream.then_some(true),
        stream,
        stream_include_usage: stream,
        ..Default::default()
    }
}

fn assistant_call(id: &str, name: &str, arguments: &str) -> Message {
    let mut m = Message::new(Role::Assistant, Vec::new());
    m.tool_calls = vec![ToolCall { id: id.into(), name: name.into(), arguments: arguments.into() }];
    m
}

fn tool_message(id: &str, content: &str) -> Message {
    let mut m = Message::text(Role::Tool, content);
    m.tool_call_id = Some(id.into());
    m
}

fn tool_result_case() -> ChatRequest {
    ChatRequest {
        model: "gemini/gemini-2.5-flash".into(),
        messages: vec![
            Message::text(Role::User, "What's the weather in Paris?"),
            assistant_call("call_abc", "get_weather", r#"{"city":"Paris"}"#),
            tool_message("call_abc", r#"{"temp_c":18}"#),
        ],
        tools: vec![weather_tool()],
        ..Default::default()
    }
}

fn json_schema_case() -> ChatRequest {
    ChatRequest {
        model: "gemini/gemini-2.5-flash".into(),
        messages: vec![Message::text(Role::User, "Extract: Ada Lovelace was 36.")],
        response_format: Some(ResponseFormat::JsonSchema(JsonSchemaFormat {
            name: "person".into(),
            description: None,
            schema: json!({
                "type": "object",
                "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                "required": ["name", "age"],
                "additionalProperties": false
            }),
            strict: Some(true),
        })),
        ..Default::default()
    }
}

fn image_case() -> ChatRequest {
    let png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
    ChatRequest {
        model: "gemini/gemini-2.5-flash".into(),
        messages: vec![Message::new(
            Role::User,
            vec![
                ContentPart::Text { text: "What is in these images?".into() },
                ContentPart::Image {
                    source: ImageSource::Base64 { media_type: "image/png".into(), data: png.into() },
                    detail: None,
                },
                ContentPart::Image { source: ImageSource::Url("https://example.com/cat.jpg".into()), detail: None },
            ],
        )],
        ..Default::default()
    }
}

#[test]
fn request_bodies_match_the_fixtures() {
    let cases = [
        ("plain", plain_case(false)),
        ("stream", plain_case(true)),
        ("tools", tools_case("What's the weather in Paris?", false)),
        ("tools_stream", tools_case("Weather in Paris and Tokyo?", true)),
        ("tool_result", tool_result_case()),
        ("json_schema", json_schema_case()),
        ("image", image_case()),
    ];
    for (case, req) in cases {
        assert_eq!(body(&req), fixture_json(&format!("{case}.request.json")), "case {case}");
    }
}

// ---- responses ----

fn usage(input: u64, output: u64, cache_read: u64) -> (u64, u64, u64) {
    (input, output, cache_read)
}

fn usage_triple(u: &Usage) -> (u64, u64, u64) {
    (u.input_tokens, u.output_tokens, u.cache_read_tokens)
}

fn response_fixture(name: &str) -> ChatResponse {
    let wire: GenerateContentResponse = serde_json::from_str(&fixture(name)).unwrap();
    convert_response(PROVIDER, wire, MODEL).unwrap()
}

#[test]
fn text_responses_match_the_case_table() {
    let cases = [
        ("plain", "Hello!", usage(20, 5, 8)),
        ("tool_result", "It is 18°C in Paris.", usage(40, 8, 0)),
        ("json_schema", r#"{"name":"Ada Lovelace","age":36}"#, usage(25, 12, 0)),
        ("image", "A red pixel and a cat.", usage(300, 7, 0)),
    ];
    for (case, text, expected_usage) in cases {
        let r = response_fixture(&format!("{case}.response.json"));
        assert_eq!(r.message.content.as_deref(), Some(text), "case {case}");
        assert!(r.message.tool_calls.is_empty(), "case {case}");
        assert_eq!(r.finish_reason, FinishReason::Stop, "case {case}");
        assert_eq!(usage_triple(&r.usage), expected_usage, "case {case}");
        assert_eq!(r.model, MODEL);
        assert!(!r.id.is_empty());
    }
}

#[test]
fn tool_call_response_is_read_with_its_signature() {
    let r = response_fixture("tools.response.json");
    assert_eq!(r.id, "oZk2aej3NpqKz7IPvabOkQw");
    assert_eq!(r.message.content, None);
    assert_eq!(
        r.message.tool_calls,
        vec![ToolCall { id: "call_0".into(), name: "get_weather".into(), arguments: r#"{"city":"Paris"}"#.into() }]
    );
    assert_eq!(r.finish_reason, FinishReason::ToolCalls);
    assert_eq!(usage_triple(&r.usage), usage(30, 10, 0));
    assert_eq!(r.usage.reasoning_tokens, 5);
    assert!(matches!(
        r.message.reasoning.as_slice(),
        [ReasoningBlock::Thinking { text, signature: Some(sig) }] if text.is_empty() && sig.starts_with("CiQB")
    ));
    // The signature is invisible as reasoning text.
    assert_eq!(r.message.reasoning_text(), None);
}

#[test]
fn blocked_prompt_is_a_content_filter_finish() {
    let r = response_fixture("blocked.response.json");
    assert_eq!(r.message.content, None);
    assert_eq!(r.finish_reason, FinishReason::ContentFilter);
    assert_eq!(r.message.refusal.as_deref(), Some("blocked by Gemini safety filters: PROHIBITED_CONTENT"));
    assert_eq!(r.usage.input_tokens, 12);
}

#[test]
fn no_candidates_without_a_block_reason_is_malformed() {
    let wire: GenerateContentResponse = serde_json::from_str(r#"{"modelVersion":"m"}"#).unwrap();
    let err = convert_response(PROVIDER, wire, MODEL).unwrap_err();
    assert_eq!(err.kind, ErrorKind::MalformedResponse);
}

#[test]
fn missing_ids_are_made_up_and_model_falls_back_to_the_requested_one() {
    let wire: GenerateContentResponse = serde_json::from_str(
        r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"a"}},{"functionCall":{"id":"x9","name":"b","args":{"k":[1,2]}}}]},"finishReason":"STOP"}]}"#,
    )
    .unwrap();
    let r = convert_response(PROVIDER, wire, "gemini-x").unwrap();
    assert!(r.id.starts_with("gemini-"), "{}", r.id);
    assert_eq!(r.model, "gemini-x");
    assert_eq!(r.message.tool_calls[0].id, "call_0");
    assert_eq!(r.message.tool_calls[0].arguments, "{}");
    assert_eq!(r.message.tool_calls[1].id, "x9");
    assert_eq!(r.message.tool_calls[1].arguments, r#"{"k":[1,2]}"#);
    assert_eq!(r.usage, Usage::default());
}

#[test]
fn thought_parts_become_reasoning_not_content() {
    let wire: GenerateContentResponse = serde_json::from_str(
        r#"{"candidates":[{"content":{"parts":[{"text":"Pondering.","thought":true},{"text":"4","thoughtSignature":"c2ln"}],"role":"model"},"finishReason":"MAX_TOKENS"}],
           "usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":1,"thoughtsTokenCount":9}}"#,
    )
    .unwrap();
    let r = convert_response(PROVIDER, wire, MODEL).unwrap();
    assert_eq!(r.message.content.as_deref(), Some("4"));
    assert_eq!(r.message.reasoning_text().as_deref(), Some("Pondering."));
    assert_eq!(r.finish_reason, FinishReason::Length);
    assert_eq!((r.usage.output_tokens, r.usage.reasoning_tokens), (10, 9));
}

#[test]
fn finish_reasons_are_normalised() {
    assert_eq!(finish_reason(Some("STOP"), false), FinishReason::Stop);
    assert_eq!(finish_reason(Some("STOP"), true), FinishReason::ToolCalls);
    assert_eq!(finish_reason(Some("MAX_TOKENS"), true), FinishReason::Length);
    for reason in ["SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "LANGUAGE"] {
        assert_eq!(finish_reason(Some(reason), false), FinishReason::ContentFilter, "{reason}");
    }
    assert_eq!(finish_reason(Some("MALFORMED_FUNCTION_CALL"), false), FinishReason::Stop);
    assert_eq!(finish_reason(Some("OTHER"), false), FinishReason::Stop);
}

// ---- request conversions ----

#[test]
fn tool_result_name_is_found_from_the_latest_matching_call() {
    let mut req = tool_result_case();
    // Two turns reuse the id `call_0` (as Gemini's made-up ids do); the later call wins.
    req.messages = vec![
        Message::text(Role::User, "go"),
        assistant_call("call_0", "first", "{}"),
        tool_message("call_0", "plain text"),
        assistant_call("call_0", "second", ""),
        tool_message("call_0", "[1,2]"),
        tool_message("call_0", "\"quoted\""),
    ];
    let b = body(&req);
    let contents = b["contents"].as_array().unwrap();
    assert_eq!(contents.len(), 5, "{b}");
    assert_eq!(
        contents[2]["parts"][0]["functionResponse"],
        json!({"name": "first", "response": {"result": "plain text"}})
    );
    assert_eq!(contents[3]["parts"][0]["functionCall"], json!({"name": "second", "args": {}}));
    // Consecutive tool messages share one user turn.
    assert_eq!(
        contents[4]["parts"],
        json!([
            {"functionResponse": {"name": "second", "response": {"result": [1, 2]}}},
            {"functionResponse": {"name": "second", "response": {"result": "quoted"}}}
        ])
    );
}

#[test]
fn unknown_tool_call_id_is_an_invalid_request() {
    let mut req = tool_result_case();
    req.messages[2].tool_call_id = Some("call_nope".into());
    let err = encode_request(PROVIDER, &req).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
    assert!(err.message.contains("messages[2].tool_call_id"), "{}", err.message);
    assert!(err.message.contains("call_nope"), "{}", err.message);
}

#[test]
fn a_tool_result_before_its_call_is_an_invalid_request() {
    let req = ChatRequest {
        messages: vec![tool_message("call_abc", "{}"), assistant_call("call_abc", "get_weather", "{}")],
        ..Default::default()
    };
    assert_eq!(encode_request(PROVIDER, &req).unwrap_err().kind, ErrorKind::InvalidRequest);
}

#[test]
fn invalid_tool_arguments_name_their_path() {
    let mut req = tool_result_case();
    req.messages[1].tool_calls[0].arguments = "{not json".into();
    let err = encode_request(PROVIDER, &req).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
    assert!(
        err.message.starts_with("messages[1].tool_calls[0].function.arguments is not valid JSON"),
        "{}",
        err.message
    );

    req.messages[1].tool_calls[0].arguments = "[1]".into();
    let err = encode_request(PROVIDER, &req).unwrap_err();
    assert!(err.message.contains("is not a JSON object"), "{}", err.message);
}

#[test]
fn thought_signature_round_trips_onto_the_first_function_call() {
    let wire: GenerateContentResponse = serde_json::from_str(&fixture("tools.response.json")).unwrap();
    let r = convert_response(PROVIDER, wire, MODEL).unwrap();
    let signature = match &r.message.reasoning[0] {
        ReasoningBlock::Thinking { signature: Some(s), .. } => s.clone(),
        other => panic!("unexpected {other:?}"),
    };
    let mut assistant = Message::text(Role::Assistant, "Let me check.");
    assistant.tool_calls = r.message.tool_calls.clone();
    assistant.reasoning = r.message.reasoning.clone();
    let req = ChatRequest {
        messages: vec![
            Message::text(Role::User, "What's the weather in Paris?"),
            assistant,
            tool_message("call_0", r#"{"temp_c":18}"#),
        ],
        ..Default::default()
    };
    let b = body(&req);
    let parts = &b["contents"][1]["parts"];
    assert_eq!(parts[0], json!({"text": "Let me check."}));
    assert_eq!(parts[1]["functionCall"]["name"], "get_weather");
    assert_eq!(parts[1]["thoughtSignature"], json!(signature));
    assert_eq!(b["contents"][2]["parts"][0]["functionResponse"]["name"], "get_weather");
}

#[test]
fn thought_signature_goes_on_the_first_text_when_there_are_no_calls() {
    let mut assistant = Message::text(Role::Assistant, "");
    assistant.content.push(ContentPart::Text { text: "Hi".into() });
    assistant.reasoning = vec![
        ReasoningBlock::Thinking { text: "hidden".into(), signature: None },
        ReasoningBlock::Redacted { data: "x".into() },
        ReasoningBlock::Thinking { text: String::new(), signature: Some("c2ln".into()) },
    ];
    let req = ChatRequest { messages: vec![Message::text(Role::User, "hi"), assistant], ..Default::default() };
    // The empty text part is dropped; the thinking text is never sent back.
    assert_eq!(
        body(&req)["contents"][1],
        json!({"role": "model", "parts": [{"text": "Hi", "thoughtSignature": "c2ln"}]})
    );
}

#[test]
fn roles_merge_and_instructions_collect() {
    let req = ChatRequest {
        messages: vec![
            Message::text(Role::System, "a"),
            Message::text(Role::User, "1"),
            Message::text(Role::Developer, "b"),
            Message::text(Role::User, "2"),
            Message::new(Role::Assistant, Vec::new()),
            Message::text(Role::Assistant, "3"),
        ],
        ..Default::default()
    };
    assert_eq!(
        body(&req),
        json!({
            "contents": [
                {"role": "user", "parts": [{"text": "1"}, {"text": "2"}]},
                {"role": "model", "parts": [{"text": "3"}]}
            ],
            "systemInstruction": {"parts": [{"text": "a"}, {"text": "b"}]}
        })
    );
}

#[test]
fn empty_text_parts_are_not_sent() {
    let req = ChatRequest {
        messages: vec![
            Message::text(Role::System, ""),
            Message::text(Role::User, "hi"),
            Message::text(Role::Assistant, "hello"),
            Message::text(Role::User, ""),
            Message::new(
                Role::User,
                vec![ContentPart::Text { text: String::new() }, ContentPart::Text { text: "again".into() }],
            ),
        ],
        ..Default::default()
    };
    assert_eq!(
        body(&req),
        json!({
            "contents": [
                {"role": "user", "parts": [{"text": "hi"}]},
                {"role": "model", "parts": [{"text": "hello"}]},
                {"role": "user", "parts": [{"text": "again"}]}
            ]
        })
    );
}

#[test]
fn the_api_key_header_is_marked_sensitive() {
    let p = provider("http://127.0.0.1:9");
    let request = p.request("http://127.0.0.1:9/v1beta/models/m:generateContent").unwrap().build().unwrap();
    let key = request.headers().get("x-goog-api-key").unwrap();
    assert_eq!(key, "test-key-123");
    assert!(key.is_sensitive());
    assert!(!format!("{request:?}").contains("test-key-123"));

    let mut settings = p.settings.clone();
    settings.api_key = Some(Secret::new("bad\nkey"));
    let err = GeminiProvider::new(settings, p.http.clone()).request("http://127.0.0.1:9/").unwrap_err();
    assert_eq!(err.kind, ErrorKind::Authentication);
    assert!(!err.message.contains("bad"), "{}", err.message);
}

#[test]
fn tool_choice_and_generation_config_map() {
    let mut req = tools_case("q", false);
    req.tool_choice = Some(ToolChoice::Tool("get_weather".into()));
    req.params = SamplingParams {
        top_p: Some(0.9),
        top_k: Some(40),
        presence_penalty: Some(0.5),
        frequency_penalty: Some(0.25),
        ..Default::default()
    };
    req.response_format = Some(ResponseFormat::JsonObject);
    req.reasoning = Some(ReasoningConfig { effort: Some(ReasoningEffort::Low), budget_tokens: None });
    req.openai.logprobs = Some(true);
    req.metadata = Some(serde_json::Map::new());
    let b = body(&req);
    assert_eq!(
        b["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
    );
    assert_eq!(
        b["generationConfig"],
        json!({
            "topP": 0.9, "topK": 40, "presencePenalty": 0.5, "frequencyPenalty": 0.25,
            "responseMimeType": "application/json",
            "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": true}
        })
    );
    assert!(b.get("logprobs").is_none() && b.get("metadata").is_none(), "{b}");

    for (choice, mode) in [(ToolChoice::None, "NONE"), (ToolChoice::Required, "ANY"), (ToolChoice::Auto, "AUTO")] {
        req.tool_choice = Some(choice);
        assert_eq!(body(&req)["toolConfig"], json!({"functionCallingConfig": {"mode": mode}}));
    }

    req.reasoning = Some(ReasoningConfig { effort: Some(ReasoningEffort::None), budget_tokens: None });
    assert_eq!(body(&req)["generationConfig"]["thinkingConfig"], json!({"thinkingBudget": 0}));
}

#[test]
fn image_urls_get_a_guessed_mime_type() {
    assert_eq!(image_mime_type("https://x.test/a.PNG?size=2"), "image/png");
    assert_eq!(image_mime_type("https://x.test/a.gif#frag"), "image/gif");
    assert_eq!(image_mime_type("https://x.test/a.webp"), "image/webp");
    assert_eq!(image_mime_type("https://x.test/a.jpeg"), "image/jpeg");
    assert_eq!(image_mime_type("https://x.test/photo"), "image/jpeg");
    assert_eq!(image_mime_type("https://x.png/photo"), "image/jpeg");
}

#[test]
fn extra_body_is_merged_at_the_top_level_and_into_our_objects() {
    let mut req = plain_case(false);
    req.extra_body
        .insert("safetySettings".into(), json!([{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}]));
    let b = body(&req);
    assert_eq!(b["safetySettings"][0]["threshold"], "BLOCK_NONE");
    assert_eq!(b["generationConfig"]["temperature"], 0.2);

    req.extra_body
        .insert("generationConfig".into(), json!({"temperature": 1.0, "thinkingConfig": {"thinkingLevel": "low"}}));
    let b = body(&req);
    assert_eq!(
        b["generationConfig"],
        json!({"temperature": 1.0, "maxOutputTokens": 50, "stopSequences": ["END"], "seed": 7, "thinkingConfig": {"thinkingLevel": "low"}})
    );
    assert_eq!(b["safetySettings"][0]["threshold"], "BLOCK_NONE");
    assert_eq!(b["contents"][0]["parts"][0]["text"], "Say hello.");
}

#[test]
fn model_names_that_would_change_the_url_are_refused() {
    assert_eq!(url_model(PROVIDER, "gemini-2.5-flash").unwrap(), "gemini-2.5-flash");
    assert_eq!(url_model(PROVIDER, "models/gemini-2.5-pro").unwrap(), "gemini-2.5-pro");
    for bad in ["", "a/b", "a?alt=json", "a#b", "a b", "a\n", "../x", "a%2Fb", "models/"] {
        let err = url_model(PROVIDER, bad).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidRequest, "{bad:?}");
    }
}

#[test]
fn error_bodies_are_read_in_both_shapes() {
    assert_eq!(error_message(fixture("error.json").as_bytes()).as_deref(), Some("simulated upstream failure"));
    assert_eq!(error_message(br#"[{"error":{"code":400,"message":"bad"}}]"#).as_deref(), Some("bad"));
    assert_eq!(error_message(b"[]"), None);
}

// ---- streaming ----

/// Runs `sse` through the real SSE parser and the decoder, as `sse::event_stream` does.
async fn decode(sse: &str) -> Vec<Result<StreamEvent, ProviderError>> {
    let chunks: Vec<Result<bytes::Bytes, std::convert::Infallible>> = sse
        .as_bytes()
        .chunks(7) // split mid-line, as the network does
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let mut events = futures::stream::iter(chunks).eventsource();
    let mut decoder = stream::ChunkDecoder::new(PROVIDER, MODEL);
    let mut out = Vec::new();
    while let Some(event) = events.next().await {
        let mut batch = Vec::new();
        match decoder.on_event(&event.unwrap(), &mut batch) {
            Ok(()) => out.extend(batch.into_iter().map(Ok)),
            Err(e) => {
                out.push(Err(e));
                break;
            }
        }
        if decoder.is_done() {
            break;
        }
    }
    assert!(decoder.is_done() || matches!(out.last(), Some(Err(_))), "the decoder never finished");
    out
}

fn ok_events(events: Vec<Result<StreamEvent, ProviderError>>) -> Vec<StreamEvent> {
    events.into_iter().map(|e| e.unwrap()).collect()
}

#[tokio::test]
async fn stream_fixture_decodes_to_text_deltas() {
    let events = ok_events(decode(&fixture("stream.response.sse")).await);
    assert!(
        matches!(&events[0], StreamEvent::Start { id, model, .. } if id == "n5k2acDFKNW1z7IPz8C6yAk" && model == MODEL)
    );
    assert_eq!(
        events[1..],
        [
            StreamEvent::TextDelta { text: "Hel".into() },
            StreamEvent::TextDelta { text: "lo".into() },
            StreamEvent::TextDelta { text: "!".into() },
            StreamEvent::Usage(Usage {
                input_tokens: 20,
                output_tokens: 5,
                cache_read_tokens: 8,
                cache_write_tokens: 0,
                reasoning_tokens: 0
            }),
            StreamEvent::Finish { reason: FinishReason::Stop },
        ]
    );
}

#[tokio::test]
async fn tools_stream_fixture_decodes_to_two_calls() {
    let events = ok_events(decode(&fixture("tools_stream.response.sse")).await);
    assert!(matches!(&events[0], StreamEvent::Start { .. }));
    assert!(matches!(&events[1], StreamEvent::ReasoningSignature { signature } if signature.starts_with("CiQB")));
    assert_eq!(
        events[2..],
        [
            StreamEvent::ToolCallStart { index: 0, id: "call_0".into(), name: "get_weather".into() },
            StreamEvent::ToolCallArgs { index: 0, arguments: r#"{"city":"Paris"}"#.into() },
            StreamEvent::ToolCallStart { index: 1, id: "call_1".into(), name: "get_weather".into() },
            StreamEvent::ToolCallArgs { index: 1, arguments: r#"{"city":"Tokyo"}"#.into() },
            StreamEvent::Usage(Usage {
                input_tokens: 30,
                output_tokens: 20,
                cache_read_tokens: 0,
                cache_write_tokens: 0,
                reasoning_tokens: 10
            }),
            StreamEvent::Finish { reason: FinishReason::ToolCalls },
        ]
    );
}

#[tokio::test]
async fn stream_thoughts_become_reasoning_deltas() {
    let sse = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hmm.\",\"thought\": true}],\"role\": \"model\"},\"index\": 0}]}\r\n\r\n\
               data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Yes\"},{\"text\": \"\",\"thoughtSignature\": \"c2ln\"}],\"role\": \"model\"},\"finishReason\": \"SAFETY\",\"index\": 0}]}\r\n\r\n";
    let events = ok_events(decode(sse).await);
    assert!(matches!(&events[0], StreamEvent::Start { id, model, .. } if id.starts_with("gemini-") && model == MODEL));
    assert_eq!(
        events[1..],
        [
            StreamEvent::ReasoningDelta { text: "Hmm.".into() },
            StreamEvent::TextDelta { text: "Yes".into() },
            StreamEvent::ReasoningSignature { signature: "c2ln".into() },
            StreamEvent::Finish { reason: FinishReason::ContentFilter },
        ]
    );
}

#[tokio::test]
async fn blocked_stream_is_a_refusal() {
    let sse = "data: {\"promptFeedback\": {\"blockReason\": \"SAFETY\"},\"usageMetadata\": {\"promptTokenCount\": 9,\"totalTokenCount\": 9},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n";
    let events = ok_events(decode(sse).await);
    assert_eq!(
        events[1..],
        [
            StreamEvent::Refusal { text: "blocked by Gemini safety filters: SAFETY".into() },
            StreamEvent::Usage(Usage { input_tokens: 9, ..Usage::default() }),
            StreamEvent::Finish { reason: FinishReason::ContentFilter },
        ]
    );
}

#[tokio::test]
async fn error_chunk_is_a_classified_error() {
    let sse = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hel\"}],\"role\": \"model\"},\"index\": 0}]}\r\n\r\n\
               data: {\"error\": {\"code\": 429, \"message\": \"quota exhausted\", \"status\": \"RESOURCE_EXHAUSTED\"}}\r\n\r\n";
    let events = decode(sse).await;
    assert!(matches!(&events[1], Ok(StreamEvent::TextDelta { .. })));
    let err = events[2].as_ref().unwrap_err();
    assert_eq!(err.kind, ErrorKind::RateLimited);
    assert_eq!(err.message, "quota exhausted");

    let err = wire_error(PROVIDER, WireError { code: None, message: None, status: Some("UNAVAILABLE".into()) });
    assert_eq!((err.kind, err.message.as_str()), (ErrorKind::Unavailable, "UNAVAILABLE"));
}

#[tokio::test]
async fn garbage_chunk_is_malformed() {
    let events = decode("data: {\"candidates\": 7}\r\n\r\n").await;
    assert_eq!(events[0].as_ref().unwrap_err().kind, ErrorKind::MalformedResponse);
}

// ---- over HTTP ----

/// What the one-shot server saw.
struct Seen {
    head: String,
    body: Value,
}

/// Serves one request with `status`, `content_type` and `reply`, and reports what it saw.
async fn serve_once(status: &str, content_type: &str, reply: String) -> (String, tokio::task::JoinHandle<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let status = status.to_owned();
    let content_type = content_type.to_owned();
    let handle = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head, body) = loop {
            let n = socket.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the client closed early");
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                break (head, buf[end + 4..end + 4 + length].to_vec());
            }
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
            reply.len()
        );
        socket.write_all(response.as_bytes()).await.unwrap();
        socket.shutdown().await.unwrap();
        Seen { head, body: serde_json::from_slice(&body).unwrap() }
    });
    (base, handle)
}

fn provider(base: &str) -> GeminiProvider {
    let settings = ProviderSettings {
        name: PROVIDER.into(),
        base_url: format!("{base}/"),
        api_key: Some(Secret::new("test-key-123")),
        headers: Vec::new(),
    };
    GeminiProvider::new(settings, HttpClient::new(Duration::from_secs(5)).unwrap())
}

#[tokio::test]
async fn chat_posts_to_generate_content_with_the_key_header() {
    let (base, seen) = serve_once("200 OK", "application/json; charset=UTF-8", fixture("plain.response.json")).await;
    let r = provider(&base).chat(&plain_case(false), MODEL, None).await.unwrap();
    assert_eq!(r.message.content.as_deref(), Some("Hello!"));
    let seen = seen.await.unwrap();
    let head = seen.head.to_ascii_lowercase();
    assert!(head.starts_with("post /v1beta/models/gemini-2.5-flash:generatecontent http/1.1"), "{head}");
    assert!(head.contains("x-goog-api-key: test-key-123"), "{head}");
    assert!(!head.contains("key="), "{head}");
    assert_eq!(seen.body, fixture_json("plain.request.json"));
}

#[tokio::test]
async fn chat_stream_posts_to_stream_generate_content() {
    let (base, seen) = serve_once("200 OK", "text/event-stream", fixture("tools_stream.response.sse")).await;
    let req = tools_case("Weather in Paris and Tokyo?", true);
    let stream = provider(&base).chat_stream(&req, MODEL, None).await.unwrap();
    let events: Vec<StreamEvent> = stream.map(|e| e.unwrap()).collect().await;
    assert_eq!(events.last(), Some(&StreamEvent::Finish { reason: FinishReason::ToolCalls }));
    let seen = seen.await.unwrap();
    assert!(
        seen.head.starts_with("POST /v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse HTTP/1.1"),
        "{}",
        seen.head
    );
    assert_eq!(seen.body, fixture_json("tools_stream.request.json"));
}

#[tokio::test]
async fn upstream_error_status_uses_the_gemini_message() {
    let (base, _seen) = serve_once("500 Internal Server Error", "application/json", fixture("error.json")).await;
    let err = provider(&base).chat(&plain_case(false), MODEL, None).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::UpstreamServer);
    assert_eq!(err.upstream_status, Some(500));
    assert_eq!(err.message, "simulated upstream failure");
}

#[tokio::test]
async fn bad_model_fails_before_any_request() {
    let p = provider("http://127.0.0.1:9");
    let err = p.chat(&plain_case(false), "gemini?key=x", None).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
}

#[tokio::test]
async fn count_tokens_sends_the_whole_request_as_generate_content_request() {
    let (base, seen) = serve_once("200 OK", "application/json", r#"{"totalTokens": 31, "promptTokensDetails": []}"#.into()).await;
    let n = provider(&base).count_tokens(&plain_case(false), MODEL).await.unwrap();
    assert_eq!(n, 31);
    let seen = seen.await.unwrap();
    assert!(seen.head.starts_with("POST /v1beta/models/gemini-2.5-flash:countTokens HTTP/1.1"), "{}", seen.head);
    assert!(seen.head.to_ascii_lowercase().contains("x-goog-api-key: test-key-123"), "{}", seen.head);
    let mut expected = fixture_json("plain.request.json");
    expected["model"] = json!("models/gemini-2.5-flash");
    assert_eq!(seen.body, json!({ "generateContentRequest": expected }));
}
