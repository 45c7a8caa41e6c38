//! Tenant safety, attacked as a tenant would: each test performs one attack a virtual key
//! made against the gateway and asserts the refusal. No key gets past its model allowance,
//! its budget or its data scope, and no client's input poisons a shared target.

use axum::body::Body;
use axum::http::Request;
use fungible_access::Limits;
use fungible_store::InferenceFilter;
use serde_json::{Value, json};

use crate::TestResponse;
use crate::auth::{Gw, gateway};

/// A route over two targets, the second one unpriced, beside the harness's `cheap`.
const ROUTES: &str = "[models.mixed]\ntargets = [{ target = \"openai/gpt-5\" }, { target = \"openai/o3-unpriced\" }]\n\
                      [models.guarded]\ntarget = \"openai/gpt-5\"\nbreaker = { failures = 2, cooldown_secs = 30 }\n";

async fn post(gw: &Gw, key: &str, path: &str, body: Value) -> TestResponse {
    let request = Request::post(path)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    gw.send(request).await
}

async fn get(gw: &Gw, key: &str, path: &str) -> TestResponse {
    let request = Request::get(path).header("authorization", format!("Bearer {key}")).body(Body::empty()).expect("request");
    gw.send(request).await
}

fn chat(model: &str, extra: Value) -> Value {
    let mut body = json!({"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]});
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    body
}

fn message(error: &Value) -> String {
    error["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn pass_through_fields_cannot_set_what_fungible_owns() {
    let gw = gateway(ROUTES, Limits::memory()).await;
    let (_, key) = gw.key(json!({"models": ["openai/gpt-5"], "budget": {"usd": 10, "period": "total"}})).await;
    for (extra, field) in [
        // The allowance says gpt-5; the upstream would have been asked for another model.
        (json!({"extra_body": {"model": "gpt-6"}}), "model"),
        // The budget reserved 1 output token; the upstream would have produced 100,000.
        (json!({"extra_body": {"max_completion_tokens": 100000}}), "max_completion_tokens"),
        (json!({"max_output_tokens": 100000}), "max_output_tokens"),
        (json!({"extra_body": {"stream": true}}), "stream"),
        (json!({"extra_body": {"n": 16}}), "n"),
    ] {
        let r = post(&gw, &key, "/v1/chat/completions", chat("openai/gpt-5", extra.clone())).await;
        let error = r.openai_error(400);
        assert!(message(&error).contains(&format!("{field}: fungible sets this field itself")), "{extra}: {error}");
    }
    assert_eq!(gw.mock.request_count(), 0, "nothing went upstream");
    // Anthropic and Gemini clients' unknown fields are held to the same rule.
    let r = post(
        &gw,
        &key,
        "/v1/chat/completions",
        chat("openai/gpt-5", json!({"extra_body": {"generationConfig": {"maxOutputTokens": 9000}}})),
    )
    .await;
    assert!(message(&r.openai_error(400)).contains("generationConfig.maxOutputTokens"));
    // A vendor knob fungible does not own still passes through.
    let r = post(&gw, &key, "/v1/chat/completions", chat("openai/gpt-5", json!({"top_k": 3}))).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
}

#[tokio::test]
async fn every_target_a_request_can_reach_is_admitted_against_the_keys_allowance() {
    let gw = gateway(ROUTES, Limits::memory()).await;
    let (_, key) = gw.key(json!({"models": ["openai/gpt-5"]})).await;
    // Per-request fallback lists, in OpenRouter's and LiteLLM's spelling.
    for list in ["models", "fallbacks"] {
        let r = post(&gw, &key, "/v1/chat/completions", chat("openai/gpt-5", json!({list: ["openai/gpt-4o"]}))).await;
        let error = r.openai_error(403);
        assert!(message(&error).contains("may not use model \"openai/gpt-4o\""), "{error}");
    }
    // A route whose fallback target the key may not use.
    let r = post(&gw, &key, "/v1/chat/completions", chat("mixed", json!({}))).await;
    let error = r.openai_error(403);
    assert!(message(&error).contains("\"openai/o3-unpriced\" (through \"mixed\")"), "{error}");
    assert_eq!(gw.mock.request_count(), 0, "nothing went upstream");
    // Granted by its own name, a route is granted whole.
    let (_, route_key) = gw.key(json!({"models": ["mixed"]})).await;
    let r = post(&gw, &route_key, "/v1/chat/completions", chat("mixed", json!({}))).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    // A budget reserves for the dearest reachable target: an unpriced one among them is refused.
    let (_, budgeted) = gw.key(json!({"models": ["mixed"], "budget": {"usd": 10, "period": "total"}})).await;
    let r = post(&gw, &budgeted, "/v1/chat/completions", chat("mixed", json!({}))).await;
    let error = r.openai_error(403);
    assert!(message(&error).contains("openai/o3-unpriced has no known price"), "{error}");
}

#[tokio::test]
async fn token_counts_and_embeddings_are_admitted_like_chats() {
    let gw = gateway(ROUTES, Limits::memory()).await;
    let (_, key) = gw.key(json!({"models": ["openai/gpt-5"], "rpm": 1})).await;
    let count = json!({"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "Hi"}]});
    let r = post(&gw, &key, "/v1/messages/count_tokens", count).await;
    assert_eq!(r.status.as_u16(), 403, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "permission_error");
    let gemini = json!({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]});
    let r = post(&gw, &key, "/v1beta/models/openai/gpt-4o:countTokens", gemini.clone()).await;
    assert_eq!(r.status.as_u16(), 403, "{}", r.text());
    let r = post(&gw, &key, "/v1/embeddings", json!({"model": "openai/text-embedding-3-small", "input": "Hi"})).await;
    r.openai_error(403);
    // Allowed, a token count still counts against the key's RPM.
    let allowed = json!({"model": "openai/gpt-5", "messages": [{"role": "user", "content": "Hi"}]});
    let r = post(&gw, &key, "/v1/messages/count_tokens", allowed.clone()).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let r = post(&gw, &key, "/v1/messages/count_tokens", allowed).await;
    assert_eq!(r.status.as_u16(), 429, "{}", r.text());
    let r = post(&gw, &key, "/v1beta/models/openai/gpt-5:countTokens", gemini).await;
    assert_eq!(r.status.as_u16(), 429, "{}", r.text());
}

#[tokio::test]
async fn a_key_reads_and_annotates_only_its_own_inferences() {
    let gw = gateway(ROUTES, Limits::memory()).await;
    let (a_id, a) = gw.key(json!({"name": "tenant a"})).await;
    let (b_id, b) = gw.key(json!({"name": "tenant b"})).await;
    assert_eq!(gw.chat(&a, "openai/gpt-5").await.status.as_u16(), 200);
    assert_eq!(gw.chat(&b, "openai/gpt-5").await.status.as_u16(), 200);
    gw.recorder.flush().await;
    let all = gw.store.list(&InferenceFilter::default()).await.expect("list");
    let of = |key: &str| all.iter().find(|r| r.key_id.as_deref() == Some(key)).expect("recorded").id.clone();
    let (a_inference, b_inference) = (of(&a_id), of(&b_id));

    // B lists, reads, counts and annotates; A's inference is nowhere to be seen.
    let list = get(&gw, &b, "/v1/inferences").await;
    assert_eq!(list.status.as_u16(), 200);
    let ids: Vec<String> = list.json()["data"].as_array().expect("data").iter().filter_map(|r| r["id"].as_str().map(str::to_owned)).collect();
    assert_eq!(ids, [b_inference.clone()]);
    get(&gw, &b, &format!("/v1/inferences?key_id={a_id}")).await.openai_error(403);
    get(&gw, &b, &format!("/v1/inferences/{a_inference}")).await.openai_error(404);
    assert_eq!(get(&gw, &b, &format!("/v1/inferences/{b_inference}")).await.status.as_u16(), 200);
    let stats = get(&gw, &b, "/v1/stats?by=key").await.json();
    let keys: Vec<&str> = stats["data"].as_array().expect("rows").iter().filter_map(|r| r["key"].as_str()).collect();
    assert_eq!(keys, [b_id.as_str()], "{stats}");
    let feedback = post(&gw, &b, "/v1/feedback", json!({"inference_id": a_inference, "boolean": false})).await;
    feedback.openai_error(404);
    assert!(gw.store.feedback(&a_inference).await.expect("feedback").is_empty(), "nothing stored on A's inference");
    // Operational endpoints are for read:all (or the admin key).
    get(&gw, &b, "/metrics").await.openai_error(403);
    get(&gw, &b, "/v1/routes").await.openai_error(403);
    // Datasets hold every key's traffic: building one, listing or exporting them is for
    // read:all too, so B cannot lift A's conversations through a dataset.
    let build = post(&gw, &b, "/v1/datasets", json!({"name": "lift", "curation": {"near_duplicates": null}})).await;
    build.openai_error(403);
    get(&gw, &b, "/v1/datasets").await.openai_error(403);
    get(&gw, &b, "/v1/datasets/lift/export?format=openai").await.openai_error(403);
    assert!(gw.store.list_datasets().await.expect("datasets").is_empty(), "nothing was built");

    // A key with read:all reads everyone's; one without read scopes reads nothing.
    let (_, ops) = gw.key(json!({"scopes": ["read:all"]})).await;
    assert_eq!(get(&gw, &ops, &format!("/v1/inferences/{a_inference}")).await.status.as_u16(), 200);
    assert_eq!(get(&gw, &ops, "/metrics").await.status.as_u16(), 200);
    // Tuning jobs spend money: not even read:all may launch or list them.
    let launch = post(&gw, &ops, "/v1/tune/jobs", json!({"provider": "openai", "model": "gpt-4.1-mini", "dataset": "all"})).await;
    assert!(message(&launch.openai_error(403)).contains("admin key only"));
    get(&gw, &ops, "/v1/tune/jobs").await.openai_error(403);
    // read:all reads datasets; building one (every key's traffic) is the admin's.
    let built = post(&gw, &ops, "/v1/datasets", json!({"name": "all", "curation": {"near_duplicates": null, "dedup": false}})).await;
    assert!(message(&built.openai_error(403)).contains("admin key"));
    let built = gw.admin("POST", "/v1/datasets", Some(json!({"name": "all", "curation": {"near_duplicates": null, "dedup": false}}))).await;
    assert_eq!(built.status.as_u16(), 201, "{}", built.text());
    assert_eq!(built.json()["rows"], 2, "built from every key's traffic");
    assert_eq!(get(&gw, &ops, "/v1/datasets").await.json()["data"][0]["name"], "all");
    assert_eq!(gw.chat(&ops, "openai/gpt-5").await.openai_error(403)["type"], "permission_error");
    let (_, inference_only) = gw.key(json!({"scopes": ["inference"]})).await;
    get(&gw, &inference_only, "/v1/inferences").await.openai_error(403);
    let bad = gw.admin("POST", "/admin/keys", Some(json!({"scopes": ["admin"]}))).await;
    assert!(message(&bad.openai_error(400)).contains("unknown scope \"admin\""));
}

#[tokio::test]
async fn a_stored_response_is_reachable_only_by_the_key_that_made_it() {
    let gw = gateway(ROUTES, Limits::memory()).await;
    let (_, a) = gw.key(json!({})).await;
    let (_, b) = gw.key(json!({})).await;
    let created = post(&gw, &a, "/v1/responses", json!({"model": "openai/gpt-5", "input": "my secret plan"})).await;
    assert_eq!(created.status.as_u16(), 200, "{}", created.text());
    let id = created.json()["id"].as_str().expect("id").to_owned();
    let upstream_calls = gw.mock.request_count();

    get(&gw, &b, &format!("/v1/responses/{id}")).await.openai_error(404);
    let request = Request::delete(format!("/v1/responses/{id}"))
        .header("authorization", format!("Bearer {b}"))
        .body(Body::empty())
        .expect("request");
    gw.send(request).await.openai_error(404);
    // Continuing it would send A's conversation upstream in B's request.
    let r = post(&gw, &b, "/v1/responses", json!({"model": "openai/gpt-5", "input": "go on", "previous_response_id": id})).await;
    assert_eq!(r.openai_error(404)["code"], "previous_response_not_found");
    assert_eq!(gw.mock.request_count(), upstream_calls, "nothing of A's went upstream for B");

    assert_eq!(get(&gw, &a, &format!("/v1/responses/{id}")).await.status.as_u16(), 200);
    let r = post(&gw, &a, "/v1/responses", json!({"model": "openai/gpt-5", "input": "go on", "previous_response_id": id})).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
}

#[tokio::test]
async fn a_clients_own_input_never_opens_a_shared_targets_breaker() {
    let gw = gateway(ROUTES, Limits::memory()).await;
    let (_, attacker) = gw.key(json!({})).await;
    let (_, victim) = gw.key(json!({})).await;
    // The attack that made the upstream answer SSE to a JSON call, many times over.
    for _ in 0..5 {
        let r = post(&gw, &attacker, "/v1/chat/completions", chat("guarded", json!({"extra_body": {"stream": true}}))).await;
        r.openai_error(400);
    }
    let r = post(&gw, &victim, "/v1/chat/completions", chat("guarded", json!({}))).await;
    assert_eq!(r.status.as_u16(), 200, "the route still serves others: {}", r.text());
    let routes = gw.admin("GET", "/v1/routes", None).await.json();
    let guarded = routes["data"].as_array().expect("routes").iter().find(|r| r["route"] == "guarded").expect("listed").clone();
    assert_eq!(guarded["targets"][0]["breaker"], "closed", "{guarded}");
}

#[tokio::test]
async fn a_provider_key_echoed_in_a_successful_answer_reaches_neither_the_client_nor_the_store() {
    let gw = gateway(ROUTES, Limits::memory()).await;
    let (_, key) = gw.key(json!({})).await;
    let provider_key = crate::OPENAI.key;
    let fixture = std::fs::read_to_string(crate::fixtures().join("openai/plain.response.json")).expect("fixture");
    let echoed = fixture.replace("\"Hello!\"", &format!("\"Sure, the key I was called with is {provider_key}.\""));
    gw.mock.push(fungible_mock::MockResponse::json(200, echoed));
    let r = post(&gw, &key, "/v1/chat/completions", chat("openai/gpt-5", json!({}))).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert!(!r.text().contains(provider_key), "{}", r.text());
    assert!(r.text().contains("called with is [redacted]."), "{}", r.text());

    // Streamed, the key split over many events.
    let words: Vec<String> = format!("The key is {provider_key}, see?").chars().map(String::from).collect();
    let mut sse = String::new();
    for word in &words {
        let chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-5",
            "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": null}]});
        sse.push_str(&format!("data: {chunk}\n\n"));
    }
    let last = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-5",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    sse.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
    gw.mock.push(fungible_mock::MockResponse::sse(sse));
    let r = post(&gw, &key, "/v1/chat/completions", chat("openai/gpt-5", json!({"stream": true}))).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let text: String = r
        .sse_data()
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "The key is [redacted], see?");

    gw.recorder.flush().await;
    for record in gw.store.list(&InferenceFilter::default()).await.expect("list") {
        let stored = serde_json::to_string(&record).expect("json");
        assert!(!stored.contains(provider_key), "{stored}");
    }
}
