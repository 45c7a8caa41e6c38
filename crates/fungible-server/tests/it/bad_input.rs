//! Bad requests get a 4xx in OpenAI's shape naming the field; nothing reaches a provider.

use axum::body::Body;
use axum::http::Request;

use crate::{Harness, OPENAI};

async fn rejected(body: &str, status: u16, param: Option<&str>) {
    let h = Harness::new(OPENAI).await;
    let res = h.post("/v1/chat/completions", body.to_owned()).await;
    let error = res.openai_error(status);
    assert_eq!(error["param"].as_str(), param, "{error}");
    assert!(h.mock.received().is_empty(), "a bad request must not reach the provider");
}

#[tokio::test]
async fn malformed_json() {
    rejected("{\"model\": ", 400, None).await;
}

#[tokio::test]
async fn missing_model() {
    rejected(r#"{"messages":[{"role":"user","content":"hi"}]}"#, 400, Some("model")).await;
}

#[tokio::test]
async fn unknown_model_is_404_naming_model() {
    rejected(r#"{"model":"nosuch/m","messages":[{"role":"user","content":"hi"}]}"#, 404, Some("model")).await;
    rejected(r#"{"model":"gpt-5","messages":[{"role":"user","content":"hi"}]}"#, 404, Some("model")).await;
}

#[tokio::test]
async fn wrong_types_and_empty_messages() {
    rejected(r#"{"model":"openai/gpt-5","messages":[]}"#, 400, Some("messages")).await;
    rejected(r#"{"model":"openai/gpt-5","messages":[{"role":"user","content":"hi"}],"stream":"yes"}"#, 400, Some("stream")).await;
    rejected(r#"{"model":"openai/gpt-5","messages":[{"role":"user"}]}"#, 400, Some("messages[0].content")).await;
}

#[tokio::test]
async fn oversized_body_is_413() {
    let h = Harness::with_server(OPENAI, "max_body_bytes = 1024").await;
    let big = format!(r#"{{"model":"openai/gpt-5","messages":[{{"role":"user","content":"{}"}}]}}"#, "x".repeat(2048));
    let res = h.post("/v1/chat/completions", big).await;
    let error = res.openai_error(413);
    assert!(error["message"].as_str().unwrap_or_default().contains("1024"), "{error}");
    assert!(h.mock.received().is_empty());
}

#[tokio::test]
async fn unknown_route_and_wrong_method_are_json() {
    let h = Harness::new(OPENAI).await;
    h.send(Request::get("/v1/nope").body(Body::empty()).expect("request")).await.openai_error(404);
    h.send(Request::get("/v1/chat/completions").body(Body::empty()).expect("request")).await.openai_error(405);
}

#[tokio::test]
async fn models_and_health() {
    let h = Harness::new(OPENAI).await;
    let res = h.send(Request::get("/v1/models").body(Body::empty()).expect("request")).await;
    assert_eq!(res.status, 200);
    let body = res.json();
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"].as_array().expect("data").iter().filter_map(|m| m["id"].as_str()).collect();
    assert!(ids.contains(&"openai/gpt-5"), "{ids:?}");
    let res = h.send(Request::get("/health").body(Body::empty()).expect("request")).await;
    assert_eq!(res.json()["status"], "ok");
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let spec: serde_json::Value = serde_json::from_str(fungible_server::OPENAPI).expect("openapi.json is JSON");
    assert_eq!(spec["openapi"], "3.1.0");
    let h = Harness::new(OPENAI).await;
    // As `fungible serve` builds it: with the web UI, whose sign-in is documented too.
    let app = fungible_server::app(h.state.clone().with_ui(fungible_server::ui::Ui::new(fungible_server::ui::Sessions::default())));
    let paths = spec["paths"].as_object().expect("paths");
    assert!(paths.len() >= 10, "{paths:?}");
    for (path, ops) in paths {
        let concrete = path
            .replace("{model}", "openai/gpt-5")
            .replace("{id}", "resp_unknown")
            .replace("{name}", "support")
            .replace("{row_id}", "row_1");
        let methods = ops.as_object().expect("operations").keys().filter(|k| {
            // A path item also holds shared `parameters`, which is not an operation.
            ["get", "post", "put", "patch", "delete", "head", "options"].contains(&k.as_str())
        });
        for method in methods {
            let request = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&concrete)
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .expect("request");
            let response = tower::ServiceExt::oneshot(app.clone(), request).await.expect("infallible");
            let status = response.status();
            let body = http_body_util::BodyExt::collect(response.into_body()).await.expect("body").to_bytes();
            let res = crate::TestResponse { status, headers: Default::default(), body };
            // Routed: anything but the router's own "no route" / "method not allowed".
            assert_ne!(res.status, 405, "{method} {path}");
            assert!(!res.text().contains("no route for"), "{method} {path} is documented but not routed: {}", res.text());
        }
    }
}
