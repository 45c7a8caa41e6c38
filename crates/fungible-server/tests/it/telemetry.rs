//! OpenTelemetry export end to end: requests through the HTTP front end, spans received by a
//! mock OTLP/HTTP collector (`POST /v1/traces`, protobuf decoded with `opentelemetry-proto`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::Request;
use fungible_gateway::{ConfigFile, Gateway, GatewayConfig};
use fungible_mock::{Fallback, MockResponse, MockUpstream};
use fungible_server::{AppState, app};
use fungible_telemetry::{Telemetry, TelemetryConfig};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Map, Value, json};

use crate::{Harness, TestResponse, fixtures};

const KEY_A: &str = "sk-upstream-secret-aaaa";
const KEY_B: &str = "sk-upstream-secret-bbbb";
const CLIENT_KEY: &str = "sk-client-secret-cccc";
const PROMPT: &str = "Say hello to the telemetry test.";
const ANSWER: &str = "Hello from upstream b.";
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID: &str = "b7ad6b7169203331";

/// A received span, flattened for assertions.
#[derive(Debug, Clone)]
struct Got {
    span: Span,
    attrs: Map<String, Value>,
    service: String,
}

impl Got {
    fn attr(&self, key: &str) -> &Value {
        self.attrs.get(key).unwrap_or(&Value::Null)
    }
}

#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<Got>>>);

impl Collected {
    fn spans(&self) -> Vec<Got> {
        self.0.lock().expect("lock").clone()
    }
}

fn any_value(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> Value {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => json!(s),
        Some(any_value::Value::BoolValue(b)) => json!(b),
        Some(any_value::Value::IntValue(i)) => json!(i),
        Some(any_value::Value::DoubleValue(d)) => json!(d),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(|v| any_value(Some(v))).collect())
        }
        _ => Value::Null,
    }
}

/// A mock OTLP/HTTP collector on a free port; `hang` never answers.
async fn collector(hang: bool) -> (String, Collected) {
    let collected = Collected::default();
    let sink = collected.clone();
    let route = axum::routing::post(move |body: Bytes| {
        let sink = sink.clone();
        async move {
            if hang {
                std::future::pending::<()>().await;
            }
            let request =
                ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
            for rs in request.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .map(|kv| any_value(kv.value.as_ref()))
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for span in ss.spans {
                        let attrs = span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), any_value(kv.value.as_ref())))
                            .collect();
                        sink.0.lock().expect("lock").push(Got {
                            span,
                            attrs,
                            service: service.clone(),
                        });
                    }
                }
            }
            (
                [("content-type", "application/x-protobuf")],
                ExportTraceServiceResponse {
                    partial_success: None,
                }
                .encode_to_vec(),
            )
        }
    });
    let router = axum::Router::new().route("/v1/traces", route);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{addr}"), collected)
}

/// Two upstreams (`a`, `b`, with keys) behind route `r` (a, then b), exporting to `endpoint`.
struct Traced {
    h: Harness,
    b: MockUpstream,
    telemetry: Telemetry,
}

impl Traced {
    async fn new(endpoint: &str, configure: impl FnOnce(&mut TelemetryConfig)) -> Traced {
        let a = MockUpstream::start(Fallback::Fail).await;
        let b = MockUpstream::start(Fallback::Fail).await;
        let toml = format!(
            "[providers.a]\nbase_url = \"{}/v1\"\napi_key_env = \"A_KEY\"\n\
             [providers.b]\nbase_url = \"{}/v1\"\napi_key_env = \"B_KEY\"\n\
             [models.r]\nretries = {{ attempts = 0 }}\ntargets = [{{ target = \"a/m\" }}, {{ target = \"b/m\" }}]\n",
            a.url(),
            b.url()
        );
        let file = ConfigFile::parse(&toml, "telemetry.toml").expect("config parses");
        let env = |k: &str| match k {
            "A_KEY" => Some(KEY_A.to_owned()),
            "B_KEY" => Some(KEY_B.to_owned()),
            _ => None,
        };
        let config = GatewayConfig::resolve(file, &env).expect("config is valid");
        let gateway = Gateway::new(&config).expect("gateway builds");
        let mut t = TelemetryConfig::new(endpoint).expect("endpoint");
        t.flush_interval = Duration::from_millis(5);
        configure(&mut t);
        let telemetry = Telemetry::start(&t).expect("telemetry starts");
        let state = AppState::new(gateway, config.max_body_bytes).with_inflight_budget(config.max_inflight_body_bytes).with_telemetry(telemetry.clone());
        Traced {
            h: Harness {
                mock: a,
                app: app(state.clone()),
                state,
            },
            b,
            telemetry,
        }
    }

    fn a(&self) -> &MockUpstream {
        &self.h.mock
    }

    async fn chat(&self, model: &str, traceparent: Option<&str>, extra: Value) -> TestResponse {
        let mut body = json!({
            "model": model,
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": PROMPT}
            ],
        });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let mut request = Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {CLIENT_KEY}"));
        if let Some(tp) = traceparent {
            request = request.header("traceparent", tp);
        }
        self.h
            .send(request.body(Body::from(body.to_string())).expect("request"))
            .await
    }
}

fn completion(text: &str) -> MockResponse {
    MockResponse::json(
        200,
        json!({
            "id": "chatcmpl-tel", "object": "chat.completion", "created": 1, "model": "m-2025",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 21, "completion_tokens": 7, "total_tokens": 28}
        })
        .to_string(),
    )
}

fn failure(status: u16) -> MockResponse {
    MockResponse::fixture(status, fixtures().join("openai").join("error.json"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every attribute value of every span, as text.
fn all_attribute_text(spans: &[Got]) -> String {
    spans
        .iter()
        .map(|s| Value::Object(s.attrs.clone()).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const STATUS_ERROR: i32 = 2;

#[tokio::test]
async fn a_fallback_is_one_inference_span_with_two_attempt_spans_under_the_callers_trace() {
    let (url, collected) = collector(false).await;
    let t = Traced::new(&url, |_| {}).await;
    t.a().push(failure(500));
    t.b.push(completion(ANSWER));
    let res = t
        .chat(
            "r",
            Some(&format!("00-{TRACE_ID}-{PARENT_ID}-01")),
            json!({"temperature": 0.3, "top_p": 0.9, "max_tokens": 50}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    t.telemetry.flush().await;

    let spans = collected.spans();
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let inference = spans
        .iter()
        .find(|s| s.span.kind == SERVER)
        .expect("the inference span");
    let mut attempts: Vec<&Got> = spans.iter().filter(|s| s.span.kind == CLIENT).collect();
    attempts.sort_by_key(|s| s.attr("fungible.attempt").as_i64());
    assert_eq!(attempts.len(), 2);

    // The inference: a child of the caller's span, in the caller's trace.
    assert_eq!(inference.span.name, "chat r");
    assert_eq!(hex(&inference.span.trace_id), TRACE_ID);
    assert_eq!(hex(&inference.span.parent_span_id), PARENT_ID);
    assert_eq!(inference.service, "fungible");
    let a = |k: &str| inference.attr(k).clone();
    assert_eq!(a("gen_ai.operation.name"), "chat");
    assert_eq!(a("gen_ai.request.model"), "r");
    assert_eq!(a("gen_ai.response.model"), "m-2025");
    assert_eq!(a("gen_ai.response.id"), "chatcmpl-tel");
    assert_eq!(a("gen_ai.provider.name"), "b");
    assert_eq!(a("gen_ai.system"), "b");
    assert_eq!(a("gen_ai.request.temperature"), 0.3);
    assert_eq!(a("gen_ai.request.top_p"), 0.9);
    assert_eq!(a("gen_ai.request.max_tokens"), 50);
    assert_eq!(a("gen_ai.usage.input_tokens"), 21);
    assert_eq!(a("gen_ai.usage.output_tokens"), 7);
    assert_eq!(a("gen_ai.response.finish_reasons"), json!(["stop"]));
    assert_eq!(a("fungible.route"), "r");
    assert_eq!(a("fungible.variant"), "a/m");
    assert_eq!(a("fungible.attempts"), 2);
    assert_eq!(a("fungible.stream"), false);
    assert_eq!(a("fungible.inference_id").as_str().map(str::len), Some(32));
    assert_eq!(a("error.type"), Value::Null);
    assert_ne!(
        inference.span.status.as_ref().map_or(0, |s| s.code),
        STATUS_ERROR
    );

    // The attempts: children of the inference, the failed one first.
    for s in &attempts {
        assert_eq!(s.span.trace_id, inference.span.trace_id);
        assert_eq!(s.span.parent_span_id, inference.span.span_id);
        assert_ne!(s.span.span_id, inference.span.span_id);
        assert_eq!(s.span.name, "chat m");
        assert_eq!(s.attr("gen_ai.request.model"), "m");
        assert!(s.span.start_time_unix_nano >= inference.span.start_time_unix_nano);
        assert!(s.span.end_time_unix_nano >= s.span.start_time_unix_nano);
        assert!(s.span.end_time_unix_nano <= inference.span.end_time_unix_nano);
    }
    assert_ne!(attempts[0].span.span_id, attempts[1].span.span_id);
    assert_eq!(attempts[0].attr("gen_ai.provider.name"), "a");
    assert_eq!(attempts[0].attr("fungible.attempt.status"), "failed");
    assert!(
        attempts[0].attr("error.type").is_string(),
        "{:?}",
        attempts[0].attrs
    );
    assert_eq!(
        attempts[0].span.status.as_ref().map(|s| s.code),
        Some(STATUS_ERROR)
    );
    assert_eq!(
        attempts[0].span.start_time_unix_nano,
        inference.span.start_time_unix_nano
    );
    assert_eq!(attempts[1].attr("gen_ai.provider.name"), "b");
    assert_eq!(attempts[1].attr("fungible.attempt.status"), "ok");
    assert_eq!(attempts[1].attr("gen_ai.usage.output_tokens"), 7);
    assert!(attempts[1].span.start_time_unix_nano >= attempts[0].span.end_time_unix_nano);

    // No secret and, by default, no content.
    let text = all_attribute_text(&spans);
    for secret in [
        KEY_A,
        KEY_B,
        CLIENT_KEY,
        "sk-upstream",
        PROMPT,
        ANSWER,
        "You are terse.",
    ] {
        assert!(!text.contains(secret), "{secret:?} exported: {text}");
    }
    assert!(inference.attr("gen_ai.input.messages").is_null());
    assert!(inference.attr("gen_ai.output.messages").is_null());
}

#[tokio::test]
async fn capture_content_exports_the_messages_and_a_new_trace_without_a_caller() {
    let (url, collected) = collector(false).await;
    let t = Traced::new(&url, |c| {
        c.capture_content = true;
        c.service_name = "gw-under-test".into();
    })
    .await;
    t.a().push(completion(ANSWER));
    let res = t.chat("a/m", None, json!({})).await;
    assert_eq!(res.status, 200, "{}", res.text());
    t.telemetry.flush().await;

    let spans = collected.spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let inference = spans
        .iter()
        .find(|s| s.span.kind == SERVER)
        .expect("the inference span");
    assert_eq!(inference.service, "gw-under-test");
    assert!(inference.span.parent_span_id.is_empty(), "a root span");
    assert_eq!(inference.span.trace_id.len(), 16);
    assert_eq!(inference.span.name, "chat a/m");
    assert_eq!(inference.attr("fungible.route"), &Value::Null);

    let text = |k: &str| {
        inference
            .attr(k)
            .as_str()
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let input: Value =
        serde_json::from_str(&text("gen_ai.input.messages")).expect("input messages are JSON");
    assert_eq!(
        input,
        json!([{"role": "user", "parts": [{"type": "text", "content": PROMPT}]}])
    );
    let system: Value = serde_json::from_str(&text("gen_ai.system_instructions"))
        .expect("system instructions are JSON");
    assert_eq!(
        system,
        json!([{"type": "text", "content": "You are terse."}])
    );
    let output: Value =
        serde_json::from_str(&text("gen_ai.output.messages")).expect("output messages are JSON");
    assert_eq!(
        output,
        json!([{"role": "assistant", "parts": [{"type": "text", "content": ANSWER}], "finish_reason": "stop"}])
    );
    let all = all_attribute_text(&spans);
    for secret in [KEY_A, KEY_B, CLIENT_KEY] {
        assert!(!all.contains(secret), "{secret:?} exported: {all}");
    }
}

#[tokio::test]
async fn a_stream_is_one_span_until_its_end_and_an_unsampled_caller_exports_nothing() {
    let (url, collected) = collector(false).await;
    let t = Traced::new(&url, |_| {}).await;
    t.a().push(MockResponse::fixture(
        200,
        fixtures().join("openai").join("stream.response.sse"),
    ));
    let res = t
        .chat(
            "a/m",
            None,
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    t.telemetry.flush().await;
    let spans = collected.spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let inference = spans
        .iter()
        .find(|s| s.span.kind == SERVER)
        .expect("the inference span");
    let attempt = spans
        .iter()
        .find(|s| s.span.kind == CLIENT)
        .expect("the attempt span");
    assert_eq!(inference.attr("fungible.stream"), true);
    assert!(
        inference
            .attr("gen_ai.usage.output_tokens")
            .as_i64()
            .is_some_and(|n| n > 0),
        "{:?}",
        inference.attrs
    );
    assert_eq!(
        attempt.span.end_time_unix_nano, inference.span.end_time_unix_nano,
        "the answering call lasts the stream"
    );

    // The caller did not sample its trace: neither do we.
    t.a().push(completion(ANSWER));
    let res = t
        .chat(
            "a/m",
            Some(&format!("00-{TRACE_ID}-{PARENT_ID}-00")),
            json!({}),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    t.telemetry.flush().await;
    assert_eq!(collected.spans().len(), 2, "no new span");
}

#[tokio::test]
async fn a_collector_that_never_answers_neither_slows_nor_blocks_requests() {
    let (url, collected) = collector(true).await;
    let t = Traced::new(&url, |c| {
        c.queue_capacity = 2;
        c.batch_size = 2;
        c.export_timeout = Duration::from_secs(600);
    })
    .await;
    let requests = async {
        for _ in 0..20 {
            t.a().push(completion(ANSWER));
            let res = t.chat("a/m", None, json!({})).await;
            assert_eq!(res.status, 200, "{}", res.text());
        }
    };
    tokio::time::timeout(Duration::from_secs(30), requests)
        .await
        .expect("requests are not held up by the collector");
    let c = t.telemetry.counters();
    use std::sync::atomic::Ordering::Relaxed;
    assert!(c.dropped.load(Relaxed) > 0, "a full queue drops spans");
    assert_eq!(c.exported.load(Relaxed), 0);
    assert!(collected.spans().is_empty());
}

#[tokio::test]
async fn shutdown_gives_up_on_a_collector_that_never_answers() {
    let (url, _collected) = collector(true).await;
    let t = Traced::new(&url, |c| c.export_timeout = Duration::from_secs(1)).await;
    t.a().push(completion(ANSWER));
    assert_eq!(t.chat("a/m", None, json!({})).await.status, 200);
    tokio::time::timeout(Duration::from_secs(30), t.telemetry.shutdown())
        .await
        .expect("shutdown is bounded");
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(
        t.telemetry.counters().dropped.load(Relaxed),
        2,
        "the inference and its attempt"
    );
    assert_eq!(t.telemetry.counters().export_errors.load(Relaxed), 1);
}
