//! What a web page can make its visitor's browser send to a gateway with keys off
//! (`fungible_server::guard`): DNS rebinding (a foreign `Host`), cross-site requests (a
//! foreign `Origin`, form and text bodies that need no CORS preflight). Each test performs
//! the attack and checks it reaches nothing.

use axum::body::Body;
use axum::http::Request;
use fungible_gateway::{ConfigFile, Gateway, GatewayConfig};
use fungible_mock::MockResponse;
use fungible_providers::Secret;
use fungible_server::auth::Auth;
use fungible_server::{AppState, app};

use crate::{Harness, OPENAI, fixtures};

const ADMIN: &str = "admin-key-guard-tests-0123456789";

fn chat(host: Option<&str>, content_type: &str) -> Request<Body> {
    let mut request = Request::post("/v1/chat/completions").header("content-type", content_type);
    if let Some(host) = host {
        request = request.header("host", host);
    }
    request.body(Body::from(Harness::inbound(OPENAI, "plain"))).expect("request")
}

fn get(path: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::empty()).expect("request")
}

fn answer(h: &Harness) {
    h.mock.push(MockResponse::fixture(200, fixtures().join("openai/plain.response.json")));
}

#[tokio::test]
async fn dns_rebinding_a_foreign_host_is_refused_with_auth_off() {
    let h = Harness::new(OPENAI).await;
    let res = h.send(chat(Some("evil.example"), "application/json")).await;
    let error = res.openai_error(403);
    assert_eq!(error["type"], "permission_error");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("host \"evil.example\" is not served"), "{message}");
    assert!(message.contains("allowed_hosts"), "{message}");
    // Reading is refused too, and each API answers in its own shape.
    let res = h.send(get("/v1/models", &[("host", "evil.example:4000")])).await;
    res.openai_error(403);
    let messages = Request::post("/v1/messages")
        .header("host", "rebind.evil.example:4000")
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .expect("request");
    let res = h.send(messages).await;
    assert_eq!(res.status, 403, "{}", res.text());
    assert_eq!(res.json()["type"], "error");
    assert_eq!(res.json()["error"]["type"], "permission_error");
    // A name that only starts like a loopback one is foreign.
    let res = h.send(chat(Some("localhost.evil.example"), "application/json")).await;
    res.openai_error(403);
    assert_eq!(h.mock.request_count(), 0, "a refused request reached the upstream");
}

#[tokio::test]
async fn loopback_hosts_are_served_with_auth_off() {
    let h = Harness::new(OPENAI).await;
    for host in ["localhost:8080", "localhost", "127.0.0.1:4000", "[::1]:4000"] {
        answer(&h);
        let res = h.send(chat(Some(host), "application/json")).await;
        assert_eq!(res.status, 200, "{host}: {}", res.text());
    }
    // No Host at all is no browser's request (HTTP/1.0 tools).
    answer(&h);
    let res = h.send(chat(None, "application/json; charset=utf-8")).await;
    assert_eq!(res.status, 200, "{}", res.text());
    // A load balancer probing /health by address is answered.
    let res = h.send(get("/health", &[("host", "10.0.0.5:4000")])).await;
    assert_eq!(res.status, 200, "{}", res.text());
}

#[tokio::test]
async fn a_configured_allowed_host_is_served() {
    let h = Harness::with_server(OPENAI, r#"allowed_hosts = ["gateway.internal", "*.corp.example"]"#).await;
    for host in ["gateway.internal:4000", "llm.corp.example", "localhost:4000"] {
        answer(&h);
        let res = h.send(chat(Some(host), "application/json")).await;
        assert_eq!(res.status, 200, "{host}: {}", res.text());
    }
    let res = h.send(chat(Some("corp.example.evil.example"), "application/json")).await;
    res.openai_error(403);
    // An allowed name is allowed as an Origin too.
    let res = h.send(get("/v1/models", &[("host", "gateway.internal"), ("origin", "https://app.corp.example")])).await;
    assert_eq!(res.status, 200, "{}", res.text());
}

#[tokio::test]
async fn with_auth_on_any_host_is_served_and_the_key_decides() {
    let h = Harness::new(OPENAI).await;
    let toml = format!("[providers.openai]\nbase_url = \"{}/v1\"\n", h.mock.url());
    let file = ConfigFile::parse(&toml, "test.toml").expect("config");
    let env = |k: &str| (k == "OPENAI_API_KEY").then(|| OPENAI.key.to_owned());
    let config = GatewayConfig::resolve(file, &env).expect("config");
    let auth = Auth { enabled: true, admin_key: Some(Secret::new(ADMIN)), ..Auth::default() };
    let state = AppState::new(Gateway::new(&config).expect("gateway"), config.max_body_bytes).with_inflight_budget(config.max_inflight_body_bytes).with_auth(auth);
    let h = Harness { mock: h.mock, app: app(state.clone()), state };
    // No key: the key check refuses it (401), not the host check.
    let res = h.send(get("/v1/models", &[("host", "evil.example")])).await;
    res.openai_error(401);
    let bearer = format!("Bearer {ADMIN}");
    let res = h.send(get("/v1/models", &[("host", "evil.example"), ("authorization", &bearer)])).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let res = h.send(get("/v1/models", &[("host", "gw.example.com"), ("origin", "https://app.example.com"), ("authorization", &bearer)])).await;
    assert_eq!(res.status, 200, "{}", res.text());
}

#[tokio::test]
async fn cross_site_form_and_text_bodies_are_refused() {
    let h = Harness::new(OPENAI).await;
    for content_type in ["text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let res = h.send(chat(Some("localhost:4000"), content_type)).await;
        let error = res.openai_error(415);
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(error["code"], "unsupported_media_type");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains("application/json"), "{message}");
    }
    // Each API in its own shape.
    let messages = Request::post("/v1/messages")
        .header("content-type", "text/plain")
        .body(Body::from("{}"))
        .expect("request");
    let res = h.send(messages).await;
    assert_eq!(res.status, 415, "{}", res.text());
    assert_eq!(res.json()["error"]["type"], "invalid_request_error");
    let gemini = Request::post("/v1beta/models/openai/gpt-5:generateContent")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from("{}"))
        .expect("request");
    let res = h.send(gemini).await;
    assert_eq!(res.status, 415, "{}", res.text());
    assert_eq!(res.json()["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(h.mock.request_count(), 0, "a refused request reached the upstream");
}

#[tokio::test]
async fn a_foreign_origin_is_refused_with_auth_off() {
    let h = Harness::new(OPENAI).await;
    for origin in ["https://evil.example", "null", "http://localhost.evil.example:4000", "evil"] {
        let mut request = chat(Some("localhost:4000"), "application/json");
        request.headers_mut().insert("origin", origin.parse().expect("header"));
        let res = h.send(request).await;
        let error = res.openai_error(403);
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(&format!("origin {origin:?} may not call this gateway")), "{message}");
    }
    assert_eq!(h.mock.request_count(), 0, "a refused request reached the upstream");
    // A page served from a loopback name (a local tool's UI) may call it.
    answer(&h);
    let mut request = chat(Some("localhost:4000"), "application/json");
    request.headers_mut().insert("origin", "http://localhost:3000".parse().expect("header"));
    let res = h.send(request).await;
    assert_eq!(res.status, 200, "{}", res.text());
}

#[tokio::test]
async fn no_cors_headers_let_another_origin_read_an_answer() {
    let h = Harness::new(OPENAI).await;
    let preflight = Request::options("/v1/chat/completions")
        .header("host", "localhost:4000")
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .body(Body::empty())
        .expect("request");
    let responses = [
        h.send(preflight).await,
        h.send(get("/v1/models", &[("host", "localhost:4000"), ("origin", "http://localhost:3000")])).await,
        h.send(get("/v1/models", &[("host", "localhost:4000"), ("origin", "https://evil.example")])).await,
    ];
    for res in responses {
        let cors: Vec<_> = res.headers.keys().filter(|name| name.as_str().starts_with("access-control-")).collect();
        assert!(cors.is_empty(), "{}: {cors:?}", res.status);
    }
}
