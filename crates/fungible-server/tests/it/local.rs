//! The embedded models over HTTP: `local/smollm2-135m-instruct` on chat completions,
//! `local/all-minilm-l6-v2` on `/v1/embeddings`, and bad input around them. Uses the real
//! weights in `models/` (`scripts/setup-models.sh`); a missing models dir fails the test.

use std::path::PathBuf;
use std::sync::OnceLock;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use base64::Engine as _;
use fungible_gateway::{ConfigFile, Gateway, GatewayConfig};
use fungible_server::{AppState, app};
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::TestResponse;

pub(crate) fn models_dir() -> PathBuf {
    let dir = std::env::var_os("FUNGIBLE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models")));
    assert!(
        dir.join("SmolLM2-135M-Instruct.Q4_1.gguf").is_file() && dir.join("all-MiniLM-L6-v2/model.safetensors").is_file(),
        "the local models are not in {}: run scripts/setup-models.sh first",
        dir.display()
    );
    dir
}

/// A truncated copy of the GGUF, served as `local/broken`.
fn broken_gguf() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("fungible-server-broken-{}.gguf", std::process::id()));
        let bytes = std::fs::read(models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf")).expect("gguf");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write");
        path
    })
    .clone()
}

/// One app for the whole binary, so the models load once. One slot: tests compare the
/// outputs of separate requests, which are bit for bit the same only when no other request
/// shares their batch (batching changes llama.cpp's floating-point sums; the prompt cache,
/// on by default, does not).
fn local_app() -> Router {
    static APP: OnceLock<Router> = OnceLock::new();
    APP.get_or_init(|| {
        let toml = format!(
            "[local]\nmodels_dir = {:?}\nslots = 1\ncontext_size = 512\nchat_models = {{ broken = {:?} }}\n\
             [providers.openai]\nbase_url = \"http://127.0.0.1:9/v1\"\n",
            models_dir().display().to_string(),
            broken_gguf().display().to_string()
        );
        let file = ConfigFile::parse(&toml, "test.toml").expect("config parses");
        let config = GatewayConfig::resolve(file, &|_| None).expect("config is valid");
        let gateway = Gateway::new(&config).expect("gateway builds");
        app(AppState::new(gateway, config.max_body_bytes).with_inflight_budget(config.max_inflight_body_bytes))
    })
    .clone()
}

async fn post(path: &str, body: serde_json::Value) -> TestResponse {
    let request = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let response = local_app().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    TestResponse { status, headers, body }
}

fn capital(stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "local/smollm2-135m-instruct",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}
        ],
        "temperature": 0,
        "max_tokens": 40,
        "stream": stream,
        "stream_options": if stream { serde_json::json!({"include_usage": true}) } else { serde_json::Value::Null },
    })
}

#[tokio::test]
async fn local_chat_answers_over_http_streamed_and_not() {
    let res = post("/v1/chat/completions", capital(false)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let body = res.json();
    let text = body["choices"][0]["message"]["content"].as_str().expect("content").to_owned();
    assert!(text.contains("Paris"), "{text}");
    assert!(body["usage"]["prompt_tokens"].as_u64().is_some_and(|n| n > 10), "{body}");
    assert_eq!(res.headers["x-fungible-target"], "local/smollm2-135m-instruct");

    let res = post("/v1/chat/completions", capital(true)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let data = res.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let mut streamed = String::new();
    let mut usage = None;
    for frame in &data[..data.len() - 1] {
        let chunk: serde_json::Value = serde_json::from_str(frame).expect("chunk");
        if let Some(t) = chunk["choices"][0]["delta"]["content"].as_str() {
            streamed.push_str(t);
        }
        if chunk["usage"].is_object() {
            usage = Some(chunk["usage"].clone());
        }
    }
    assert_eq!(streamed, text);
    // The same counts; how many prompt tokens came from the prompt cache depends on what the
    // slot served in between (other tests share it).
    let counts = |usage: &serde_json::Value| {
        ["prompt_tokens", "completion_tokens", "total_tokens"].map(|k| usage[k].as_u64().expect("a count"))
    };
    assert_eq!(counts(&usage.expect("usage chunk")), counts(&body["usage"]));
}

#[tokio::test]
async fn local_models_are_listed() {
    let request = Request::get("/v1/models").body(Body::empty()).expect("request");
    let response = local_app().oneshot(request).await.expect("infallible");
    let body = response.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&body);
    for id in ["local/smollm2-135m-instruct", "local/all-minilm-l6-v2", "local/broken"] {
        assert!(text.contains(id), "{id} missing: {text}");
    }
    // A local chat model says what a request that sets nothing gets.
    let list: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let smol = list["data"].as_array().expect("data").iter().find(|m| m["id"] == "local/smollm2-135m-instruct").expect("listed");
    let defaults = &smol["defaults"];
    assert_eq!((defaults["temperature"].as_f64(), defaults["top_p"].as_f64()), (Some(0.2), Some(0.9)), "{smol}");
    assert_eq!(defaults["max_tokens"], 512, "{smol}");
    assert_eq!(defaults["stop_loops"], true, "{smol}");
}

#[tokio::test]
async fn the_readme_first_request_with_no_parameters_answers_within_the_default_cap() {
    let request = serde_json::json!({
        "model": "local/smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "What is the capital of France?"}]
    });
    let res = post("/v1/chat/completions", request).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let body = res.json();
    assert!(body["usage"]["completion_tokens"].as_u64().is_some_and(|n| (1..=512).contains(&n)), "{body}");
    assert!(["stop", "length"].contains(&body["choices"][0]["finish_reason"].as_str().unwrap_or_default()), "{body}");
}

#[tokio::test]
async fn bad_local_requests_get_clear_errors_and_the_rest_keeps_serving() {
    let mut req = capital(false);
    req["model"] = "local/nope".into();
    let err = post("/v1/chat/completions", req).await.openai_error(404);
    assert!(err["message"].as_str().unwrap().contains("unknown local chat model \"nope\""), "{err}");

    let mut req = capital(false);
    req["messages"] = serde_json::json!([{"role": "user", "content": "word ".repeat(1000)}]);
    let err = post("/v1/chat/completions", req).await.openai_error(400);
    assert!(err["message"].as_str().unwrap().contains("longer than the model's context of 512 tokens"), "{err}");

    let mut req = capital(false);
    req["messages"] = serde_json::json!([{"role": "user", "content": ""}]);
    let err = post("/v1/chat/completions", req).await.openai_error(400);
    assert!(err["message"].as_str().unwrap().contains("prompt is empty"), "{err}");

    let mut req = capital(true);
    req["model"] = "local/broken".into();
    let err = post("/v1/chat/completions", req).await.openai_error(503);
    assert!(err["message"].as_str().unwrap().contains("is not a loadable GGUF file"), "{err}");

    // The other local models still answer.
    let res = post("/v1/chat/completions", capital(false)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let res = post("/v1/embeddings", serde_json::json!({"model": "local/all-minilm-l6-v2", "input": "still here"})).await;
    assert_eq!(res.status, 200, "{}", res.text());
}

#[tokio::test]
async fn embeddings_in_float_and_base64_agree() {
    let body = serde_json::json!({"model": "local/all-minilm-l6-v2", "input": ["cat", "kitten", "stock market"]});
    let res = post("/v1/embeddings", body.clone()).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let floats = res.json();
    assert_eq!(floats["object"], "list");
    assert_eq!(floats["model"], "local/all-minilm-l6-v2");
    assert_eq!(floats["usage"]["prompt_tokens"], 10);
    assert_eq!(floats["usage"]["total_tokens"], 10);
    let data = floats["data"].as_array().expect("data");
    assert_eq!(data.len(), 3);
    let vectors: Vec<Vec<f32>> = data
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["index"], i);
            assert_eq!(d["object"], "embedding");
            d["embedding"].as_array().expect("floats").iter().map(|x| x.as_f64().expect("f") as f32).collect()
        })
        .collect();
    assert!(vectors.iter().all(|v| v.len() == 384));
    let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    assert!(cos(&vectors[0], &vectors[1]) > cos(&vectors[0], &vectors[2]));

    let mut b64 = body;
    b64["encoding_format"] = "base64".into();
    let res = post("/v1/embeddings", b64).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let encoded = res.json()["data"][0]["embedding"].as_str().expect("base64 string").to_owned();
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).expect("base64");
    let decoded: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(decoded, vectors[0]);
}

#[tokio::test]
async fn embeddings_bad_input_names_the_field() {
    let err = post("/v1/embeddings", serde_json::json!({"model": "local/all-minilm-l6-v2"})).await.openai_error(400);
    assert_eq!(err["param"], "input");
    let err = post("/v1/embeddings", serde_json::json!({"model": "local/all-minilm-l6-v2", "input": [1, 2]}))
        .await
        .openai_error(400);
    assert!(err["message"].as_str().unwrap().contains("input[0]"), "{err}");
    let err = post(
        "/v1/embeddings",
        serde_json::json!({"model": "local/all-minilm-l6-v2", "input": "x", "encoding_format": "int8"}),
    )
    .await
    .openai_error(400);
    assert_eq!(err["param"], "encoding_format");
    let err = post("/v1/embeddings", serde_json::json!({"model": "local/nope", "input": "x"})).await.openai_error(404);
    assert!(err["message"].as_str().unwrap().contains("unknown local embedding model"), "{err}");
}

/// `/v1/embeddings` with a remote model goes to the vendor's embeddings endpoint.
#[tokio::test]
async fn embeddings_through_an_openai_provider() {
    let h = crate::Harness::new(crate::OPENAI).await;
    h.mock.push(fungible_mock::MockResponse::fixture(200, crate::fixtures().join("openai").join("embeddings.response.json")));
    let body = serde_json::json!({"model": "openai/text-embedding-3-small", "input": ["cat", "kitten"]});
    let res = h.post("/v1/embeddings", body.to_string()).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let json = res.json();
    // The vendor answered out of order; the client gets input order.
    assert_eq!(json["data"][0]["embedding"], serde_json::json!([0.5, -0.25]));
    assert_eq!(json["data"][1]["embedding"], serde_json::json!([0.125, 1.0]));
    assert_eq!(json["usage"]["prompt_tokens"], 2);
    let sent = h.mock.single_request();
    assert_eq!(sent.uri, "/v1/embeddings");
    assert_eq!(sent.header("authorization"), Some(format!("Bearer {}", crate::OPENAI.key)).as_deref());
    assert_eq!(
        sent.json(),
        serde_json::json!({"model": "text-embedding-3-small", "input": ["cat", "kitten"], "encoding_format": "float"})
    );
}

fn weather(stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "local/smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [{"type": "function", "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"]
            }
        }}],
        "tool_choice": "required",
        "temperature": 0,
        "max_tokens": 80,
        "stream": stream,
    })
}

#[tokio::test]
async fn local_tool_calls_over_http_streamed_and_not() {
    let res = post("/v1/chat/completions", weather(false)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let body = res.json();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments = call["function"]["arguments"].as_str().expect("arguments string").to_owned();
    let parsed: serde_json::Value = serde_json::from_str(&arguments).expect("arguments are JSON");
    assert!(parsed["city"].is_string(), "{arguments}");
    assert!(["celsius", "fahrenheit"].contains(&parsed["unit"].as_str().unwrap_or("")), "{arguments}");

    let res = post("/v1/chat/completions", weather(true)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let data = res.sse_data();
    let mut name = String::new();
    let mut streamed = String::new();
    let mut finish = None;
    for frame in &data[..data.len() - 1] {
        let chunk: serde_json::Value = serde_json::from_str(frame).expect("chunk");
        let delta = &chunk["choices"][0]["delta"];
        if let Some(call) = delta["tool_calls"].get(0) {
            assert_eq!(call["index"], 0);
            name.push_str(call["function"]["name"].as_str().unwrap_or(""));
            streamed.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(reason) = chunk["choices"][0]["finish_reason"].as_str() {
            finish = Some(reason.to_owned());
        }
    }
    assert_eq!(name, "get_weather");
    assert_eq!(streamed, arguments);
    assert_eq!(finish.as_deref(), Some("tool_calls"));

    // A tool_choice naming a function that is not in tools is the client's error.
    let mut req = weather(false);
    req["tool_choice"] = serde_json::json!({"type": "function", "function": {"name": "nope"}});
    let err = post("/v1/chat/completions", req).await.openai_error(400);
    assert!(err["message"].as_str().unwrap().contains("not in tools"), "{err}");
}
