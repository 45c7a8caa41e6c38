//! Integration tests of the HTTP server against the mock upstream: the provider matrix,
//! error mapping, streaming edge cases and bad input, and attacks on the server itself
//! (`guard`, `serve`). One binary for the crate.

mod anthropic_messages;
mod auth;
mod bad_input;
mod cache;
mod errors;
mod examples;
mod guard;
mod guardrails;
mod learned;
mod adaptive;
mod local;
mod memory;
mod conformance;
mod datasets;
mod recording;
mod routing;
mod serve;
mod shadow;
mod streaming;
mod telemetry;
mod tenant;
mod tune;
mod ui;

use std::path::PathBuf;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use fungible_gateway::{ConfigFile, Gateway, GatewayConfig};
use fungible_mock::{Fallback, MockUpstream};
use fungible_server::{AppState, app};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// The providers every matrix test runs over, with the model name clients use and the
/// secret the mock must see.
#[derive(Debug, Clone, Copy)]
pub struct ProviderCase {
    pub name: &'static str,
    pub model: &'static str,
    pub key: &'static str,
}

pub const OPENAI: ProviderCase = ProviderCase { name: "openai", model: "gpt-5", key: "sk-test-openai-0123456789" };
pub const ANTHROPIC: ProviderCase = ProviderCase { name: "anthropic", model: "claude-sonnet-4-5", key: "sk-ant-test-0123456789" };
pub const GEMINI: ProviderCase = ProviderCase { name: "gemini", model: "gemini-2.5-flash", key: "gm-test-0123456789" };
pub const GROQ: ProviderCase = ProviderCase { name: "groq", model: "llama-3.3-70b-versatile", key: "gsk-test-0123456789" };

pub fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures"))
}

pub struct Harness {
    pub mock: MockUpstream,
    pub app: Router,
    /// What `app` was built from, for tests that serve it on a socket.
    pub state: AppState,
}

impl Harness {
    pub async fn new(p: ProviderCase) -> Harness {
        Harness::with_server(p, "").await
    }

    /// `server` is extra TOML for the `[server]` section.
    pub async fn with_server(p: ProviderCase, server: &str) -> Harness {
        let mock = MockUpstream::start(Fallback::Fail).await;
        let base = match p.name {
            "openai" => format!("{}/v1", mock.url()),
            "groq" => format!("{}/openai/v1", mock.url()),
            _ => mock.url(),
        };
        let toml = format!("[server]\n{server}\n[providers.{}]\nbase_url = \"{base}\"\n", p.name);
        let file = ConfigFile::parse(&toml, "test.toml").expect("test config parses");
        let key_var = format!("{}_API_KEY", p.name.to_ascii_uppercase());
        let key = p.key.to_owned();
        let env = move |k: &str| (k == key_var).then(|| key.clone());
        let config = GatewayConfig::resolve(file, &env).expect("test config is valid");
        let gateway = Gateway::new(&config).expect("gateway builds");
        let state = AppState::new(gateway, config.max_body_bytes).with_inflight_budget(config.max_inflight_body_bytes).with_allowed_hosts(config.allowed_hosts.clone());
        let app = app(state.clone());
        Harness { mock, app, state }
    }

    pub async fn post(&self, path: &str, body: impl Into<Body>) -> TestResponse {
        let request = Request::post(path).header("content-type", "application/json").body(body.into()).expect("request");
        self.send(request).await
    }

    pub async fn send(&self, request: Request<Body>) -> TestResponse {
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.expect("body").to_bytes();
        TestResponse { status, headers, body }
    }

    /// The inbound case file with `{model}` replaced for this provider.
    pub fn inbound(p: ProviderCase, case: &str) -> String {
        let path = fixtures().join("inbound").join("openai_chat").join(format!("{case}.json"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.replace("{model}", &format!("{}/{}", p.name, p.model))
    }
}

#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `data:` payloads of an SSE body, in order.
    pub fn sse_data(&self) -> Vec<String> {
        self.text()
            .split("\n\n")
            .filter_map(|frame| frame.strip_prefix("data: "))
            .map(str::to_owned)
            .collect()
    }

    /// Asserts an OpenAI-shaped error with this status; returns `error`.
    pub fn openai_error(&self, status: u16) -> serde_json::Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        let body = self.json();
        let error = body.get("error").unwrap_or_else(|| panic!("no error object: {body}")).clone();
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        assert!(error["type"].as_str().is_some(), "{body}");
        error
    }
}
