//! OpenAI Responses as a conformance-matrix row: `POST /v1/responses`; and, below the row,
//! what only this API has: the response store (`previous_response_id`, `GET` and `DELETE
//! /v1/responses/{id}`) and its request checks.

use axum::body::Body;
use axum::http::Request;
use fungible_mock::MockResponse;
use serde_json::{Value, json};

use super::{Inbound, Outcome, inbound_file};
use crate::{ANTHROPIC, GEMINI, GROQ, Harness, OPENAI, ProviderCase, TestResponse, fixtures};

pub struct OpenAiResponses;

impl Inbound for OpenAiResponses {
    const NAME: &'static str = "openai_responses";

    fn request(case: &str, model: &str) -> Request<Body> {
        let body = inbound_file("openai_responses", case).replace("{model}", model);
        Request::post("/v1/responses")
            .header("content-type", "application/json")
            .header("authorization", "Bearer sk-client")
            .body(Body::from(body))
            .expect("request")
    }

    /// The Responses API has no `stop` and no `seed`.
    fn unexpressible(provider: &str, case: &str) -> &'static [&'static str] {
        match (provider, case) {
            ("openai" | "groq", "plain" | "stream") => &["/stop", "/seed"],
            ("anthropic", "plain" | "stream") => &["/stop_sequences"],
            ("gemini", "plain" | "stream") => &["/generationConfig/stopSequences", "/generationConfig/seed"],
            _ => &[],
        }
    }

    fn outcome(case: &str, res: &TestResponse) -> Outcome {
        if super::is_stream(case) {
            read_stream(res)
        } else {
            assert_eq!(res.headers.get("content-type").and_then(|v| v.to_str().ok()), Some("application/json"));
            read_response(&res.json())
        }
    }

    fn error_message(res: &TestResponse, status: u16) -> String {
        let error = res.openai_error(status);
        error["message"].as_str().unwrap_or_default().to_owned()
    }

    fn stream_error_message(res: &TestResponse) -> String {
        let events = events(res);
        assert!(
            !events.iter().any(|(name, _)| name == "response.completed" || name == "response.incomplete"),
            "a failed stream must not end like a finished one"
        );
        let (name, error) = &events[events.len() - 2];
        assert_eq!(name, "error", "an error event before the end");
        let (name, last) = events.last().expect("events");
        assert_eq!(name, "response.failed", "the stream ends with response.failed");
        assert_eq!(last["response"]["status"], "failed");
        let message = last["response"]["error"]["message"].as_str().expect("response.error.message").to_owned();
        assert_eq!(error["message"], message.as_str());
        assert!(last["response"]["error"]["code"].as_str().is_some_and(|c| !c.is_empty()), "{last}");
        message
    }
}

/// (event name, data) of every SSE frame, checking what holds for every Responses stream:
/// the `event:` name is the data's `type`, `sequence_number` counts from 0 without gaps, and
/// the stream opens with `response.created` then `response.in_progress` for one response id.
fn events(res: &TestResponse) -> Vec<(String, Value)> {
    assert_eq!(res.headers.get("content-type").and_then(|v| v.to_str().ok()), Some("text/event-stream"));
    let text = res.text();
    let mut out: Vec<(String, Value)> = Vec::new();
    for frame in text.split("\n\n").filter(|f| !f.is_empty()) {
        let (name, data) = frame
            .strip_prefix("event: ")
            .and_then(|rest| rest.split_once("\ndata: "))
            .unwrap_or_else(|| panic!("frame is not `event: ...\\ndata: ...`: {frame:?}"));
        let data: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {data}"));
        assert_eq!(data["type"], name, "{frame}");
        assert_eq!(data["sequence_number"], out.len() as u64, "sequence numbers count from 0 without gaps: {frame}");
        out.push((name.to_owned(), data));
    }
    assert!(out.len() >= 2, "{text}");
    assert_eq!(out[0].0, "response.created");
    assert_eq!(out[1].0, "response.in_progress");
    let id = out[0].1["response"]["id"].as_str().expect("response id").to_owned();
    assert!(id.starts_with("resp_"), "{id}");
    for (name, data) in &out {
        if let Some(response) = data.get("response") {
            assert_eq!(response["id"], id.as_str(), "{name}: one response id");
        }
    }
    out
}

fn usage_of(u: &Value) -> (u64, u64, u64) {
    let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("usage field missing in {u}"));
    let (input, output) = (n(&u["input_tokens"]), n(&u["output_tokens"]));
    assert_eq!(n(&u["total_tokens"]), input + output, "total_tokens");
    n(&u["output_tokens_details"]["reasoning_tokens"]);
    (input, output, n(&u["input_tokens_details"]["cached_tokens"]))
}

/// The client's view of a `response` object.
fn read_response(body: &Value) -> Outcome {
    assert_eq!(body["object"], "response", "{body}");
    assert!(body["id"].as_str().is_some_and(|s| s.starts_with("resp_")), "{body}");
    assert!(body["created_at"].as_u64().is_some(), "{body}");
    let mut content: Option<String> = None;
    let mut tools = Vec::new();
    let mut item_ids = std::collections::HashSet::new();
    for item in body["output"].as_array().expect("output is an array") {
        assert!(item_ids.insert(item["id"].as_str().expect("every item has an id").to_owned()), "item ids are unique");
        match item["type"].as_str() {
            Some("message") => {
                assert!(item["id"].as_str().is_some_and(|s| s.starts_with("msg_")), "{item}");
                assert_eq!(item["role"], "assistant");
                for part in item["content"].as_array().expect("content") {
                    if part["type"] == "output_text" {
                        assert_eq!(part["annotations"], json!([]));
                        content.get_or_insert_with(String::new).push_str(part["text"].as_str().expect("text"));
                    }
                }
            }
            Some("function_call") => {
                assert!(item["id"].as_str().is_some_and(|s| s.starts_with("fc_")), "{item}");
                assert_eq!(item["status"], "completed");
                tools.push((
                    item["call_id"].as_str().unwrap_or_default().to_owned(),
                    item["name"].as_str().unwrap_or_default().to_owned(),
                    item["arguments"].as_str().expect("arguments is a string").to_owned(),
                ));
            }
            Some("reasoning") => assert!(item["id"].as_str().is_some_and(|s| s.starts_with("rs_")), "{item}"),
            other => panic!("unexpected output item type {other:?}: {item}"),
        }
    }
    let finish = match body["status"].as_str() {
        Some("completed") => {
            assert!(body["incomplete_details"].is_null());
            if tools.is_empty() { "stop" } else { "tool_calls" }
        }
        Some("incomplete") => match body["incomplete_details"]["reason"].as_str() {
            Some("max_output_tokens") => "length",
            Some("content_filter") => "content_filter",
            other => panic!("incomplete reason {other:?}"),
        },
        other => panic!("status {other:?}: {body}"),
    };
    Outcome { content, tool_calls: tools, finish: finish.to_owned(), usage: usage_of(&body["usage"]) }
}

/// Rebuilds the output from the events alone (as an SDK's stream accumulator does), checks it
/// against the final response, and reads the outcome from that response.
fn read_stream(res: &TestResponse) -> Outcome {
    let events = events(res);
    let (last_name, last) = events.last().expect("events");
    assert!(last_name == "response.completed" || last_name == "response.incomplete", "ends with {last_name}");
    let final_response = &last["response"];
    let output = final_response["output"].as_array().expect("output");

    // output_index -> (item as added, accumulated text / arguments, done)
    let mut built: Vec<(Value, String, bool)> = Vec::new();
    for (name, e) in &events[2..events.len() - 1] {
        let index = e["output_index"].as_u64().map(|i| i as usize);
        match name.as_str() {
            "response.output_item.added" => {
                assert_eq!(index, Some(built.len()), "items are added in output_index order");
                assert_eq!(e["item"]["status"].as_str().unwrap_or("in_progress"), "in_progress", "{e}");
                built.push((e["item"].clone(), String::new(), false));
            }
            "response.output_item.done" => {
                let entry = &mut built[index.expect("output_index")];
                assert!(!entry.2, "done once");
                assert_eq!(e["item"]["id"], entry.0["id"], "same item id from added to done");
                entry.2 = true;
                assert_eq!(&e["item"], &output[index.expect("index")], "the done item is the final one");
            }
            "response.output_text.delta" | "response.function_call_arguments.delta" => {
                let entry = &mut built[index.expect("output_index")];
                assert!(!entry.2, "delta after done: {e}");
                assert_eq!(e["item_id"], entry.0["id"]);
                entry.1.push_str(e["delta"].as_str().expect("delta"));
            }
            "response.output_text.done" => {
                let entry = &built[index.expect("output_index")];
                assert_eq!(e["text"].as_str(), Some(entry.1.as_str()), "done text is the deltas joined");
            }
            "response.function_call_arguments.done" => {
                let entry = &built[index.expect("output_index")];
                assert_eq!(e["arguments"].as_str(), Some(entry.1.as_str()), "done arguments are the deltas joined");
            }
            "response.content_part.added" | "response.content_part.done" => {
                assert_eq!(e["item_id"], built[index.expect("output_index")].0["id"]);
                assert_eq!(e["content_index"], 0);
            }
            "response.reasoning_summary_part.added"
            | "response.reasoning_summary_part.done"
            | "response.reasoning_summary_text.delta"
            | "response.reasoning_summary_text.done" => {
                assert_eq!(e["item_id"], built[index.expect("output_index")].0["id"]);
            }
            other => panic!("unexpected event {other}: {e}"),
        }
    }
    assert_eq!(built.len(), output.len(), "every item in the final response was streamed");
    assert!(built.iter().all(|(_, _, done)| *done), "every item was closed before the end");
    read_response(final_response)
}

// ---- the store, and requests only this API has ----

fn post(body: Value) -> Request<Body> {
    Request::post("/v1/responses")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

fn model(p: ProviderCase) -> String {
    format!("{}/{}", p.name, p.model)
}

fn weather_tool() -> Value {
    json!({"type": "function", "name": "get_weather", "description": "Current weather for a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}})
}

/// A tool call, then its result sent with `previous_response_id` alone: the second upstream
/// request carries the whole earlier turn — exactly the provider's `tool_result` fixture,
/// with the vendor's call id (and Gemini's thought signature, kept through the store).
async fn chain_continues(p: ProviderCase, stream_first: bool) {
    let h = Harness::new(p).await;
    let dir = fixtures().join(p.name);
    let first_file = if stream_first { "tools_stream.response.sse" } else { "tools.response.json" };
    h.mock.push(MockResponse::fixture(200, dir.join(first_file)));
    h.mock.push(MockResponse::fixture(200, dir.join("tool_result.response.json")));

    let mut first = json!({"model": model(p), "input": "What's the weather in Paris?", "tools": [weather_tool()]});
    if stream_first {
        first["stream"] = json!(true);
    }
    let res = h.send(post(first)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let response = if stream_first { events(&res).last().expect("events").1["response"].clone() } else { res.json() };
    let id = response["id"].as_str().expect("id").to_owned();
    let output = response["output"].as_array().expect("output");
    let call = output.iter().find(|i| i["type"] == "function_call").expect("a function call");
    let call_id = call["call_id"].as_str().expect("call_id").to_owned();

    let second = json!({
        "model": model(p),
        "previous_response_id": id,
        "input": [{"type": "function_call_output", "call_id": call_id, "output": "{\"temp_c\":18}"}],
        "tools": [weather_tool()],
    });
    let res = h.send(post(second)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let body = res.json();
    assert_eq!(read_response(&body).content.as_deref(), Some("It is 18°C in Paris."));
    assert_eq!(body["previous_response_id"], id.as_str());

    let sent = h.mock.received();
    assert_eq!(sent.len(), 2);
    let sent = sent[1].json();
    if stream_first {
        // The streamed first turn made two calls; the continuation carries both.
        let text = sent.to_string();
        assert!(["Paris", "Tokyo", "temp_c"].iter().all(|w| text.contains(w)), "{text}");
        return;
    }
    let expected =
        std::fs::read_to_string(dir.join("tool_result.request.json")).expect("fixture").replace("call_abc", &call_id);
    let mut expected: Value = serde_json::from_str(&expected).expect("fixture JSON");
    if p.name == "gemini" {
        let signature = output.iter().find(|i| i["type"] == "reasoning").expect("the signature as a reasoning item")
            ["encrypted_content"]
            .clone();
        expected["contents"][1]["parts"][0]["thoughtSignature"] = signature;
    }
    assert_eq!(sent, expected, "the continuation sends the earlier turn");
}

#[tokio::test]
async fn previous_response_id_continues_the_conversation_over_every_provider() {
    for p in [OPENAI, ANTHROPIC, GEMINI, GROQ] {
        chain_continues(p, false).await;
        chain_continues(p, true).await;
    }
}

#[tokio::test]
async fn stored_responses_can_be_read_back_and_deleted() {
    let h = Harness::new(OPENAI).await;
    h.mock.push(MockResponse::fixture(200, fixtures().join("openai/plain.response.json")));
    let res = h.send(OpenAiResponses::request("plain", &model(OPENAI))).await;
    assert_eq!(res.status, 200);
    let id = res.json()["id"].as_str().expect("id").to_owned();

    let get = |id: String| Request::get(format!("/v1/responses/{id}")).body(Body::empty()).expect("request");
    let got = h.send(get(id.clone())).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, res.body, "GET returns the response as it was sent");

    let delete = |id: String| Request::delete(format!("/v1/responses/{id}")).body(Body::empty()).expect("request");
    let deleted = h.send(delete(id.clone())).await;
    assert_eq!(deleted.json(), json!({"id": id, "object": "response", "deleted": true}));

    let error = h.send(get(id.clone())).await.openai_error(404);
    assert!(error["message"].as_str().is_some_and(|m| m.contains(&id)), "{error}");
    h.send(delete(id.clone())).await.openai_error(404);

    let error = h
        .send(post(json!({"model": model(OPENAI), "previous_response_id": id, "input": "hi"})))
        .await
        .openai_error(404);
    assert_eq!(error["param"], "previous_response_id");
    assert_eq!(error["code"], "previous_response_not_found");
    assert_eq!(h.mock.received().len(), 1, "nothing went upstream for an unknown previous response");
}

#[tokio::test]
async fn store_false_keeps_nothing() {
    let h = Harness::new(OPENAI).await;
    h.mock.push(MockResponse::fixture(200, fixtures().join("openai/plain.response.json")));
    let res = h.send(post(json!({"model": model(OPENAI), "input": "hi", "store": false}))).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["store"], false);
    let id = res.json()["id"].as_str().expect("id").to_owned();
    let get = Request::get(format!("/v1/responses/{id}")).body(Body::empty()).expect("request");
    h.send(get).await.openai_error(404);
}

#[tokio::test]
async fn unknown_fields_reach_openai_family_servers_only() {
    for (p, passed) in [(OPENAI, true), (GROQ, true), (ANTHROPIC, false), (GEMINI, false)] {
        let h = Harness::new(p).await;
        h.mock.push(MockResponse::fixture(200, fixtures().join(p.name).join("plain.response.json")));
        let body = json!({"model": model(p), "input": "hi", "top_k": 3, "include": ["reasoning.encrypted_content"],
                          "truncation": "disabled", "store": false});
        let res = h.send(post(body)).await;
        assert_eq!(res.status, 200, "{}", res.text());
        let sent = h.mock.single_request().json();
        assert_eq!(sent.to_string().contains("top_k"), passed, "{}: {sent}", p.name);
        assert!(!sent.to_string().contains("truncation") && !sent.to_string().contains("include"), "{sent}");
    }
}

#[tokio::test]
async fn bad_requests_get_openai_errors_naming_the_field() {
    let h = Harness::new(OPENAI).await;
    let cases = [
        (json!({"model": model(OPENAI), "input": "x", "tools": [{"type": "web_search"}]}), "tools[0].type"),
        (
            json!({"model": model(OPENAI), "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]}),
            "input[0].content[0].file_id",
        ),
        (json!({"model": model(OPENAI)}), "input"),
    ];
    for (body, param) in cases {
        let error = h.send(post(body)).await.openai_error(400);
        assert_eq!(error["param"], param);
        assert_eq!(error["type"], "invalid_request_error");
    }
    let error = h.send(post(json!({"model": "nosuch/model", "input": "x"}))).await.openai_error(404);
    assert_eq!(error["param"], "model");
    assert!(h.mock.received().is_empty());
}
