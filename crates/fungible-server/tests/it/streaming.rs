//! Streams that go wrong after they started, and clients that go away.

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use bytes::Bytes;
use fungible_mock::{MockBody, MockResponse};
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::{ANTHROPIC, GEMINI, Harness, OPENAI, ProviderCase, fixtures};

/// The first `n` SSE events of a vendor's stream fixture, as separate writes.
fn first_events(p: ProviderCase, n: usize) -> Vec<Bytes> {
    let text = std::fs::read_to_string(fixtures().join(p.name).join("stream.response.sse")).expect("fixture");
    let sep = if text.contains("\r\n\r\n") { "\r\n\r\n" } else { "\n\n" };
    text.split(sep).filter(|e| !e.trim().is_empty()).take(n).map(|e| Bytes::from(format!("{e}{sep}"))).collect()
}

async fn assert_ends_with_error_frame(p: ProviderCase, body: MockBody) {
    let h = Harness::new(p).await;
    h.mock.push(MockResponse::sse("").with_body(body));
    let res = h.post("/v1/chat/completions", Harness::inbound(p, "stream")).await;
    assert_eq!(res.status, 200, "the stream had started");
    let data = res.sse_data();
    let last = data.last().expect("some frames");
    assert!(!data.iter().any(|d| d == "[DONE]"), "a failed stream must not end like a finished one: {data:?}");
    assert!(!data.iter().any(|d| d.contains("\"finish_reason\":\"stop\"")), "no normal finish: {data:?}");
    let error: serde_json::Value = serde_json::from_str(last).expect("error frame is JSON");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with(p.name), "{error}");
}

async fn truncated(p: ProviderCase) {
    // Cut mid-stream by a reset, and closed cleanly but before the vendor's end marker.
    assert_ends_with_error_frame(p, MockBody::ChunksThenReset(first_events(p, 2))).await;
    assert_ends_with_error_frame(p, MockBody::Chunks(first_events(p, 2))).await;
}

async fn malformed_event(p: ProviderCase) {
    let mut events = first_events(p, 1);
    events.push(Bytes::from_static(b"data: {\"not json\n\n"));
    assert_ends_with_error_frame(p, MockBody::Chunks(events)).await;
}

async fn client_disconnect_cancels_upstream(p: ProviderCase) {
    let h = Harness::new(p).await;
    h.mock.push(MockResponse::sse("").with_body(MockBody::ChunksThenStall(first_events(p, 2))));
    let request = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(Harness::inbound(p, "stream")))
        .expect("request");
    let response = h.app.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.expect("a frame").expect("no error");
    assert!(first.data_ref().is_some_and(|d| d.starts_with(b"data: ")));
    assert_eq!(h.mock.disconnects(), 0, "upstream still streaming");
    drop(body);
    tokio::time::timeout(Duration::from_secs(30), h.mock.wait_for_disconnects(1))
        .await
        .expect("dropping the client stream must close the upstream connection");
}

/// A client that gives up on a non-streamed request (its timeout, a closed connection) cancels
/// the upstream call at once, as a dropped stream does: over a real socket, since it is hyper
/// that notices the closed connection and drops the handler.
#[tokio::test]
async fn a_client_leaving_a_non_streamed_request_cancels_the_upstream_request() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::new(OPENAI).await;
    h.mock.push(MockResponse::json(200, "").with_body(MockBody::Hang));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let limits = fungible_gateway::config::ConnectionLimits::default();
    let server = tokio::spawn(fungible_server::serve_on(h.state.clone(), listener, limits, async move {
        let _ = stopped.await;
    }));
    let body = Harness::inbound(OPENAI, "plain");
    let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await.expect("write");
    client.write_all(body.as_bytes()).await.expect("write");
    tokio::time::timeout(Duration::from_secs(30), h.mock.wait_for_requests(1)).await.expect("the request went upstream");
    assert_eq!(h.mock.disconnects(), 0, "upstream still waiting");
    drop(client);
    tokio::time::timeout(Duration::from_secs(30), h.mock.wait_for_disconnects(1))
        .await
        .expect("closing the client connection must cancel the upstream request");
    let _ = stop.send(());
    server.await.expect("server task").expect("server ends cleanly");
}

macro_rules! streaming {
    ($($provider:ident => $case:expr),* $(,)?) => {
        $(
            mod $provider {
                use super::*;
                #[tokio::test] async fn truncated_stream_ends_with_an_error_frame() { truncated($case).await }
                #[tokio::test] async fn malformed_event_ends_with_an_error_frame() { malformed_event($case).await }
                #[tokio::test] async fn client_disconnect_cancels_the_upstream_request() { client_disconnect_cancels_upstream($case).await }
            }
        )*
    };
}

streaming! {
    openai => OPENAI,
    anthropic => ANTHROPIC,
    gemini => GEMINI,
}
