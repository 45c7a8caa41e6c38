//! Upstream failures of every class, over every provider, reach the client as the right
//! status in OpenAI's error shape, naming the provider and never a secret.

use std::time::Duration;

use fungible_mock::{MockBody, MockResponse};

use crate::{ANTHROPIC, GEMINI, GROQ, Harness, OPENAI, ProviderCase, fixtures};

/// Upstream status -> client status.
const STATUS_MAP: &[(u16, u16)] = &[
    (400, 400),
    (401, 401),
    (403, 403),
    (404, 404),
    (408, 504),
    (409, 409),
    (413, 413),
    (422, 422),
    (429, 429),
    (500, 502),
    (502, 502),
    (503, 503),
    (504, 504),
    (529, 503),
];

async fn upstream_statuses(p: ProviderCase, stream: bool) {
    let case = if stream { "stream" } else { "plain" };
    for &(upstream, client) in STATUS_MAP {
        let h = Harness::new(p).await;
        let mut response = MockResponse::fixture(upstream, fixtures().join(p.name).join("error.json"));
        if upstream == 429 {
            response = response.with_header("retry-after", "2");
        }
        h.mock.push(response);
        let res = h.post("/v1/chat/completions", Harness::inbound(p, case)).await;
        let error = res.openai_error(client);
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains("simulated upstream failure"), "{upstream}: {message}");
        assert!(message.starts_with(p.name), "provider named first: {message}");
        assert!(!res.text().contains(p.key), "secret leaked: {}", res.text());
        let retry_after = res.headers.get("retry-after").and_then(|v| v.to_str().ok());
        assert_eq!(retry_after, (upstream == 429).then_some("2"), "upstream {upstream}");
    }
}

async fn transport_failures(p: ProviderCase) {
    // Connection reset before any response.
    let h = Harness::new(p).await;
    h.mock.push(MockResponse::json(200, "").with_body(MockBody::Reset));
    let res = h.post("/v1/chat/completions", Harness::inbound(p, "plain")).await;
    let error = res.openai_error(502);
    assert!(error["message"].as_str().unwrap_or_default().starts_with(p.name), "{error}");

    // A 200 whose body is not the vendor's JSON.
    let h = Harness::new(p).await;
    h.mock.push(MockResponse::json(200, "{\"truncated\": "));
    let res = h.post("/v1/chat/completions", Harness::inbound(p, "plain")).await;
    let error = res.openai_error(502);
    assert!(error["message"].as_str().unwrap_or_default().contains("could not parse"), "{error}");

    // An upstream that never answers: the request deadline turns it into a 504.
    let h = Harness::with_server(p, "request_timeout_secs = 1").await;
    h.mock.push(MockResponse::json(200, "").with_body(MockBody::Hang));
    let res = tokio::time::timeout(Duration::from_secs(30), h.post("/v1/chat/completions", Harness::inbound(p, "plain")))
        .await
        .expect("the gateway must give up on its own");
    res.openai_error(504);

    // An error body that echoes the key back is scrubbed.
    let h = Harness::new(p).await;
    h.mock.push(MockResponse::json(401, format!("{{\"error\":{{\"message\":\"Incorrect API key provided: {}\"}}}}", p.key)));
    let res = h.post("/v1/chat/completions", Harness::inbound(p, "plain")).await;
    res.openai_error(401);
    assert!(!res.text().contains(p.key), "secret leaked: {}", res.text());
}

macro_rules! errors {
    ($($provider:ident => $case:expr),* $(,)?) => {
        $(
            mod $provider {
                use super::*;
                #[tokio::test] async fn upstream_status_classes() { upstream_statuses($case, false).await }
                #[tokio::test] async fn upstream_status_classes_when_streaming() { upstream_statuses($case, true).await }
                #[tokio::test] async fn resets_timeouts_and_malformed_bodies() { transport_failures($case).await }
            }
        )*
    };
}

errors! {
    openai => OPENAI,
    anthropic => ANTHROPIC,
    gemini => GEMINI,
    openai_compatible => GROQ,
}
