//! A programmable mock upstream: the vendor servers fungible talks to, on loopback.
//!
//! Tests script it response by response ([`MockUpstream::push`]) and read back exactly what
//! fungible sent ([`MockUpstream::received`]); when nothing is scripted it falls back to a
//! [`Fallback`]: vendor fixtures chosen by path and model (end-to-end runs with the official
//! SDKs), or one fixed body (benchmarks). It can also misbehave on purpose: hang before
//! headers, stall or reset mid-stream, and report when the client went away. For load tests,
//! [`Chaos`] fails a seeded random share of requests (500, 503, 429, connection resets).
//! The fine-tuning APIs (files and jobs of OpenAI, Mistral and Together) are simulated with
//! state of their own (`tuning`), whatever the fallback.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;

mod tuning;

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct MockResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: MockBody,
}

#[derive(Debug, Clone)]
pub enum MockBody {
    /// The whole body in one write.
    Full(Bytes),
    /// Each piece written as its own frame.
    Chunks(Vec<Bytes>),
    /// The pieces, then silence until the client goes away.
    ChunksThenStall(Vec<Bytes>),
    /// The pieces, then the connection is cut (a truncated stream).
    ChunksThenReset(Vec<Bytes>),
    /// No response at all until the client goes away.
    Hang,
    /// The connection is closed without a response.
    Reset,
}

impl MockResponse {
    pub fn json(status: u16, body: impl Into<Bytes>) -> MockResponse {
        MockResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: MockBody::Full(body.into()),
        }
    }

    pub fn sse(body: impl Into<Bytes>) -> MockResponse {
        MockResponse {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: MockBody::Full(body.into()),
        }
    }

    /// A fixture file: `.sse` is served as an event stream, anything else as JSON.
    pub fn fixture(status: u16, path: impl Into<PathBuf>) -> MockResponse {
        let path = path.into();
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
        if path.extension().is_some_and(|e| e == "sse") {
            MockResponse { status, ..MockResponse::sse(body) }
        } else {
            MockResponse::json(status, body)
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> MockResponse {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn with_body(mut self, body: MockBody) -> MockResponse {
        self.body = body;
        self
    }
}

/// What the mock answers when no scripted response is queued.
#[derive(Debug, Clone)]
pub enum Fallback {
    /// 500 with a plain message: an unscripted request is a test bug.
    Fail,
    /// Vendor fixtures under a directory, chosen from the request (see [`fixture_for`]).
    Fixtures(PathBuf),
    /// One JSON body, or one SSE body when the request asks for a stream (benchmarks).
    Fixed { json: Bytes, sse: Bytes },
}

/// Random failures for load tests: each request fails with probability `rate`, with a
/// 500, 503 or 429 (OpenAI's error shape, no `Retry-After`) or, for `reset_share` of the
/// failures, a connection closed without a response. Request number `n` (in arrival order)
/// fails or not as `seed` and `n` decide, so a run's failure count is reproducible.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chaos {
    /// 0 to 1.
    pub rate: f64,
    pub seed: u64,
    /// The share of failures that are connection resets, 0 to 1.
    pub reset_share: f64,
}

impl Chaos {
    pub fn new(rate: f64, seed: u64) -> Chaos {
        Chaos { rate, seed, reset_share: 0.05 }
    }

    /// The failure for request number `n`, if it fails.
    pub fn failure(&self, n: u64) -> Option<MockResponse> {
        let draw = |salt: u64| (splitmix64(self.seed ^ splitmix64(n.wrapping_mul(4).wrapping_add(salt))) >> 11) as f64 / (1u64 << 53) as f64;
        if draw(0) >= self.rate {
            return None;
        }
        if draw(1) < self.reset_share {
            return Some(MockResponse::json(200, "").with_body(MockBody::Reset));
        }
        let (status, kind) = match (draw(2) * 3.0) as u32 {
            0 => (500, "server_error"),
            1 => (503, "service_unavailable"),
            _ => (429, "rate_limit_exceeded"),
        };
        Some(MockResponse::json(
            status,
            format!("{{\"error\":{{\"message\":\"mock: injected failure {status}\",\"type\":\"{kind}\",\"param\":null,\"code\":null}}}}"),
        ))
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A request as the mock received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RecordedRequest {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

struct Shared {
    queue: Mutex<VecDeque<MockResponse>>,
    received: Mutex<Vec<RecordedRequest>>,
    record: bool,
    fallback: Fallback,
    disconnects: AtomicUsize,
    disconnected: Notify,
    chaos: Mutex<Option<Chaos>>,
    /// Requests answered so far (numbers them for [`Chaos`]).
    requests: AtomicU64,
    /// Woken by each request received.
    arrived: Notify,
    /// Failures [`Chaos`] injected.
    injected: AtomicU64,
    /// Files and fine-tuning jobs (see [`tuning`]).
    tuning: tuning::Tuning,
    /// OpenAI `/embeddings` answered by [`embed`] (never from the queue); off by default.
    embeddings: std::sync::atomic::AtomicBool,
}

/// A running mock; it stops when dropped.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    /// Starts on an ephemeral loopback port, recording every request.
    pub async fn start(fallback: Fallback) -> MockUpstream {
        MockUpstream::start_on("127.0.0.1:0".parse().expect("loopback address"), fallback, true)
            .await
            .expect("bind a loopback port")
    }

    /// Starts on `addr`. With `record` false nothing is kept per request (benchmarks).
    pub async fn start_on(addr: SocketAddr, fallback: Fallback, record: bool) -> std::io::Result<MockUpstream> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            received: Mutex::new(Vec::new()),
            record,
            fallback,
            disconnects: AtomicUsize::new(0),
            disconnected: Notify::new(),
            chaos: Mutex::new(None),
            requests: AtomicU64::new(0),
            arrived: Notify::new(),
            injected: AtomicU64::new(0),
            tuning: tuning::Tuning::default(),
            embeddings: std::sync::atomic::AtomicBool::new(false),
        });
        let task = tokio::spawn(serve(listener, shared.clone()));
        Ok(MockUpstream { addr, shared, task })
    }

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers OpenAI `/embeddings` requests itself from now on, with [`embed`]'s vectors, and
    /// leaves the scripted queue to the other requests (whatever order they come in).
    pub fn answer_embeddings(&self) {
        self.shared.embeddings.store(true, Ordering::Relaxed);
    }

    /// Fails a random share of the requests that have no scripted response (see [`Chaos`]);
    /// `None` stops it.
    pub fn set_chaos(&self, chaos: Option<Chaos>) {
        *lock(&self.shared.chaos) = chaos;
    }

    /// How many failures [`Chaos`] injected so far.
    pub fn injected_failures(&self) -> u64 {
        self.shared.injected.load(Ordering::Relaxed)
    }

    /// How many requests the mock received so far (recorded or not).
    pub fn request_count(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` requests have arrived.
    pub async fn wait_for_requests(&self, n: u64) {
        loop {
            let notified = self.shared.arrived.notified();
            if self.request_count() >= n {
                return;
            }
            notified.await;
        }
    }

    /// Queues a response for the next request (first in, first out).
    pub fn push(&self, response: MockResponse) {
        lock(&self.shared.queue).push_back(response);
    }

    /// Everything received so far, in order.
    pub fn received(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.received).clone()
    }

    /// The only request received; panics (a test failure) if there were not exactly one.
    pub fn single_request(&self) -> RecordedRequest {
        let received = self.received();
        assert_eq!(received.len(), 1, "expected exactly one upstream request, got {}", received.len());
        received.into_iter().next().expect("one request")
    }

    /// How many streamed or hanging responses ended because the client went away.
    pub fn disconnects(&self) -> usize {
        self.shared.disconnects.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` clients have gone away mid-response.
    pub async fn wait_for_disconnects(&self, n: usize) {
        loop {
            let notified = self.shared.disconnected.notified();
            if self.disconnects() >= n {
                return;
            }
            notified.await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, shared.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Debug)]
struct ResetConnection;

impl std::fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mock: connection reset on purpose")
    }
}

impl std::error::Error for ResetConnection {}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Body>, ResetConnection> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let uri = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let n = shared.requests.fetch_add(1, Ordering::Relaxed);
    let path = uri.split('?').next().unwrap_or(&uri).to_owned();
    // The tuning APIs keep state of their own; scripted answers are for everything else.
    let tuning = tuning::handles(&path);
    let embedding = path.ends_with("/embeddings") && shared.embeddings.load(Ordering::Relaxed);
    let scripted = if tuning || embedding { None } else { lock(&shared.queue).pop_front() };
    let chaos = *lock(&shared.chaos);
    let response = match (scripted, chaos.and_then(|c| c.failure(n))) {
        _ if tuning => shared.tuning.respond(parts.method.as_str(), &uri, &parts.headers, body.clone()).await,
        _ if embedding => embeddings_response(&body),
        (Some(r), _) => r,
        (None, Some(failure)) => {
            shared.injected.fetch_add(1, Ordering::Relaxed);
            failure
        }
        (None, None) => fallback_response(&shared.fallback, &uri, &body),
    };
    if shared.record {
        lock(&shared.received).push(RecordedRequest {
            method: parts.method.to_string(),
            uri,
            headers: parts.headers,
            body,
        });
    }
    shared.arrived.notify_waiters();
    build(response, shared).await
}

async fn build(response: MockResponse, shared: Arc<Shared>) -> Result<Response<Body>, ResetConnection> {
    let body: Body = match response.body {
        MockBody::Reset => return Err(ResetConnection),
        MockBody::Hang => {
            // Park until the client drops the connection (hyper then drops this future).
            let _guard = DisconnectGuard(shared.clone());
            std::future::pending::<()>().await;
            unreachable!("pending never resolves")
        }
        MockBody::Full(bytes) => Full::new(bytes).map_err(|never: Infallible| match never {}).boxed(),
        MockBody::Chunks(chunks) => stream_body(chunks, Tail::End, shared),
        MockBody::ChunksThenStall(chunks) => stream_body(chunks, Tail::Stall, shared),
        MockBody::ChunksThenReset(chunks) => stream_body(chunks, Tail::Reset, shared),
    };
    let mut builder = Response::builder().status(StatusCode::from_u16(response.status).unwrap_or(StatusCode::OK));
    for (name, value) in &response.headers {
        builder = builder.header(name, value);
    }
    Ok(builder.body(body).unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).map_err(|n| match n {}).boxed())))
}

enum Tail {
    End,
    Stall,
    Reset,
}

/// Counts a client that went away while the mock was still answering.
struct DisconnectGuard(Arc<Shared>);

impl Drop for DisconnectGuard {
    fn drop(&mut self) {
        self.0.disconnects.fetch_add(1, Ordering::SeqCst);
        self.0.disconnected.notify_waiters();
    }
}

fn stream_body(chunks: Vec<Bytes>, tail: Tail, shared: Arc<Shared>) -> Body {
    let guard = match tail {
        Tail::Stall => Some(DisconnectGuard(shared)),
        _ => None,
    };
    let head = futures::stream::iter(chunks.into_iter().map(|c| Ok(Frame::data(c))));
    let tail = futures::stream::once(async move {
        // Give hyper a chance to flush what was written before the tail acts, so a reset
        // really happens mid-stream rather than before the headers left.
        tokio::task::yield_now().await;
        match tail {
            Tail::End => None,
            Tail::Reset => Some(Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "mock reset"))),
            Tail::Stall => {
                let _guard = guard;
                std::future::pending::<()>().await;
                None
            }
        }
    })
    .filter_map(futures::future::ready);
    BodyExt::boxed(StreamBody::new(head.chain(tail)))
}

fn fallback_response(fallback: &Fallback, uri: &str, body: &[u8]) -> MockResponse {
    match fallback {
        Fallback::Fail => MockResponse::json(500, format!("{{\"error\":\"mock: no scripted response for {uri}\"}}")),
        Fallback::Fixed { json, sse } => {
            if wants_stream(uri, body) {
                MockResponse::sse(sse.clone())
            } else {
                MockResponse::json(200, json.clone())
            }
        }
        Fallback::Fixtures(dir) => match fixture_for(dir, uri, body) {
            Some(r) => r,
            None => MockResponse::json(
                404,
                format!("{{\"error\":{{\"message\":\"mock: no fixture for {uri}\",\"type\":\"not_found_error\",\"code\":404}}}}"),
            ),
        },
    }
}

fn wants_stream(uri: &str, body: &[u8]) -> bool {
    if uri.contains(":streamGenerateContent") {
        return true;
    }
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("stream").and_then(|s| s.as_bool()))
        .unwrap_or(false)
}

/// Picks a fixture from the request: the vendor from the path (`/v1/chat/completions` ->
/// `openai`, `/v1/messages` and `/v1/messages/count_tokens` -> `anthropic`,
/// `/v1beta/models/M:...` -> `gemini`), the case from the model name. Model `error_<status>`
/// answers that status with the vendor's `error.json` (and `Retry-After: 1` for 429 and 503);
/// any other model `M` answers `M.response.sse` for a stream, else `M.response.json`.
pub fn fixture_for(dir: &std::path::Path, uri: &str, body: &[u8]) -> Option<MockResponse> {
    let path = uri.split('?').next().unwrap_or(uri);
    let (vendor, model) = if path.ends_with("/chat/completions") {
        ("openai", model_from_body(body)?)
    } else if path.ends_with("/v1/messages") || path.ends_with("/v1/messages/count_tokens") {
        ("anthropic", model_from_body(body)?)
    } else {
        let rest = path.split("/models/").nth(1)?;
        ("gemini", rest.split(':').next()?.to_owned())
    };
    let vendor_dir = dir.join(vendor);
    if let Some(status) = model.strip_prefix("error_").and_then(|s| s.parse::<u16>().ok()) {
        let mut response = MockResponse::fixture(status, vendor_dir.join("error.json"));
        if status == 429 || status == 503 {
            response = response.with_header("retry-after", "1");
        }
        return Some(response);
    }
    let file = if wants_stream(uri, body) {
        vendor_dir.join(format!("{model}.response.sse"))
    } else {
        vendor_dir.join(format!("{model}.response.json"))
    };
    file.exists().then(|| MockResponse::fixture(200, file))
}

/// A deterministic stand-in for an embedding model: the counts of a text's lowercase words,
/// hashed into 64 dimensions, so texts that share words are near and others far.
pub fn embed(text: &str) -> Vec<f32> {
    let mut v = vec![0.0f32; 64];
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        let hash = word.to_lowercase().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        v[(hash % 64) as usize] += 1.0;
    }
    v
}

/// An OpenAI embeddings response to `body` (`input`: a string or a list of strings).
fn embeddings_response(body: &[u8]) -> MockResponse {
    let request: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let inputs: Vec<String> = match &request["input"] {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(list) => list.iter().map(|x| x.as_str().unwrap_or_default().to_owned()).collect(),
        _ => return MockResponse::json(400, r#"{"error":{"message":"input is required","type":"invalid_request_error"}}"#),
    };
    let data: Vec<serde_json::Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| serde_json::json!({"object": "embedding", "index": i, "embedding": embed(text)}))
        .collect();
    let tokens: usize = inputs.iter().map(|t| t.split_whitespace().count()).sum();
    let response = serde_json::json!({
        "object": "list", "data": data, "model": request["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}
    });
    MockResponse::json(200, response.to_string())
}

fn model_from_body(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("model")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chaos_fails_the_configured_share_reproducibly_with_a_mix_of_failures() {
        let chaos = Chaos::new(0.3, 42);
        let mut statuses = std::collections::BTreeMap::new();
        let mut resets = 0;
        for n in 0..10_000 {
            match chaos.failure(n).map(|r| (r.status, r.body)) {
                Some((_, MockBody::Reset)) => resets += 1,
                Some((status, _)) => *statuses.entry(status).or_insert(0) += 1,
                None => {}
            }
        }
        let failed: u32 = statuses.values().sum::<u32>() + resets;
        // Binomial(10k, 0.3): sigma ≈ 46; ±5 sigma.
        assert!(failed.abs_diff(3000) < 230, "{failed} failures");
        assert!(resets > 50 && resets < 300, "{resets} resets");
        for status in [500, 503, 429] {
            assert!(statuses.get(&status).copied().unwrap_or(0) > 700, "{statuses:?}");
        }
        let again: Vec<bool> = (0..100).map(|n| Chaos::new(0.3, 42).failure(n).is_some()).collect();
        let first: Vec<bool> = (0..100).map(|n| chaos.failure(n).is_some()).collect();
        assert_eq!(again, first, "same seed, same failures");
        let other: Vec<bool> = (0..100).map(|n| Chaos::new(0.3, 7).failure(n).is_some()).collect();
        assert_ne!(other, first, "another seed, other failures");
    }
}
