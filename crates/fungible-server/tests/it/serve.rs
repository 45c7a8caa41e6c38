//! Attacks on the server's connections (`fungible_server::serve`), over real loopback
//! sockets: half-open connections (slowloris), a body that trickles in, more connections than
//! the cap, and shutdown with requests still open. Time bounds are lower bounds that a
//! correct server cannot miss, or generous upper ones.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fungible_gateway::config::ConnectionLimits;
use fungible_gateway::{ConfigFile, Gateway, GatewayConfig};
use fungible_server::{AppState, serve_on};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::timeout;

/// Far beyond any deadline these tests configure: only a hung server reaches it.
const GENEROUS: Duration = Duration::from_secs(60);

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    /// `serve_on` with `limits` on a loopback port, over a gateway with no provider.
    async fn start(limits: ConnectionLimits) -> Server {
        let file = ConfigFile::parse("[local]\nenabled = false\n", "test.toml").expect("config");
        let config = GatewayConfig::resolve(file, &|_| None).expect("config");
        let state = AppState::new(Gateway::new(&config).expect("gateway"), config.max_body_bytes).with_inflight_budget(config.max_inflight_body_bytes);
        // The server's own bind: its listen backlog holds the connections waiting on the cap.
        let listener = fungible_server::serve::bind(([127, 0, 0, 1], 0).into()).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(serve_on(state, listener, limits, async move {
            let _ = stopped.await;
        }));
        Server { addr, stop: Some(stop), served }
    }

    /// Signals shutdown; the returned time is when it was signalled.
    fn shut_down(&mut self) -> Instant {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        Instant::now()
    }
}

/// Reads one response: the head, then `Content-Length` bytes of body.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text;
            }
        }
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed mid-response: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Waits until the server closes `stream` (EOF or reset), discarding what it sends.
async fn closed(stream: &mut TcpStream) {
    let mut chunk = [0u8; 4096];
    while let Ok(n) = stream.read(&mut chunk).await {
        if n == 0 {
            return;
        }
    }
}

async fn health(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.expect("write");
    read_response(&mut stream).await
}

const HALF_HEAD: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: appl";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_half_open_connections_are_closed_and_health_still_answers() {
    // 2,000 attackers and the server's side of up to 200 of them, in this one process.
    let open_files = fungible_server::serve::raise_open_file_limit();
    let attackers = match open_files {
        Some(limit) if limit < 3000 => (limit as usize).saturating_sub(800).min(2000),
        _ => 2000,
    };
    let limits = ConnectionLimits {
        header_read_timeout: Duration::from_millis(250),
        max_connections: 200,
        ..ConnectionLimits::default()
    };
    let server = Server::start(limits).await;
    let addr = server.addr;

    // Each attacker connects and sends part of a request head, then nothing.
    let mut connecting = JoinSet::new();
    for _ in 0..attackers {
        connecting.spawn(async move {
            let started = Instant::now();
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.write_all(HALF_HEAD).await.expect("write");
            (stream, started)
        });
    }
    let mut half_open = Vec::with_capacity(attackers);
    timeout(GENEROUS, async {
        while let Some(attacker) = connecting.join_next().await {
            half_open.push(attacker.expect("attacker"));
        }
    })
    .await
    .expect("the attackers connect");

    // A fresh client is still answered.
    let answer = timeout(GENEROUS, health(addr)).await.expect("/health answers under the attack");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The server closed every half-open connection, and none before the header timeout
    // (counted from before the attacker connected; 250 ms, less a timer tick).
    let mut waiting = JoinSet::new();
    for (mut stream, started) in half_open {
        waiting.spawn(async move {
            closed(&mut stream).await;
            started.elapsed()
        });
    }
    let all_closed = timeout(GENEROUS, async {
        let mut open_for = Vec::new();
        while let Some(elapsed) = waiting.join_next().await {
            open_for.push(elapsed.expect("attacker"));
        }
        open_for
    })
    .await
    .expect("the server closes every half-open connection");
    assert_eq!(all_closed.len(), attackers);
    let shortest = all_closed.iter().min().copied().unwrap_or_default();
    assert!(shortest >= Duration::from_millis(240), "a half-open connection was closed after {shortest:?}");
}

#[tokio::test]
async fn at_the_connection_cap_new_connections_wait_for_a_slot() {
    let limits = ConnectionLimits { max_connections: 2, header_read_timeout: GENEROUS, ..ConnectionLimits::default() };
    let server = Server::start(limits).await;
    let mut first = TcpStream::connect(server.addr).await.expect("connect");
    first.write_all(HALF_HEAD).await.expect("write");
    let mut second = TcpStream::connect(server.addr).await.expect("connect");
    second.write_all(HALF_HEAD).await.expect("write");

    // Both slots are held: a third client is not served (its connection waits in the backlog)...
    let mut third = tokio::spawn(health(server.addr));
    assert!(
        timeout(Duration::from_millis(500), &mut third).await.is_err(),
        "a connection was served beyond max_connections"
    );
    // ...until one of the others goes away.
    drop(first);
    let answer = timeout(GENEROUS, third).await.expect("served once a slot frees").expect("task");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(second);
}

#[tokio::test]
async fn a_kept_alive_connection_closes_after_idle_timeout_not_header_timeout() {
    let limits = ConnectionLimits {
        header_read_timeout: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(1000),
        ..ConnectionLimits::default()
    };
    let server = Server::start(limits).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    // Idle from the response's end, which is after this.
    let sent = Instant::now();
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
    let answer = read_response(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    timeout(GENEROUS, closed(&mut stream)).await.expect("an idle connection is closed");
    let open_for = sent.elapsed();
    assert!(open_for >= Duration::from_millis(1000), "closed {open_for:?} after its request, before idle_timeout");

    // Once a next request has begun, its head has the header timeout.
    let limits = ConnectionLimits { header_read_timeout: Duration::from_millis(100), idle_timeout: GENEROUS, ..ConnectionLimits::default() };
    let server = Server::start(limits).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
    read_response(&mut stream).await;
    stream.write_all(b"GET /hea").await.expect("write");
    timeout(Duration::from_secs(20), closed(&mut stream)).await.expect("a slow second head is closed at the header timeout");
}

#[tokio::test]
async fn a_body_trickling_in_past_the_body_timeout_gets_408() {
    let limits = ConnectionLimits { body_read_timeout: Duration::from_millis(300), ..ConnectionLimits::default() };
    let server = Server::start(limits).await;
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    write
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
        .await
        .expect("write");
    // The attack: a byte every 50 ms, so no single read waits long.
    let trickle = tokio::spawn(async move {
        while write.write_all(b" ").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut answer = Vec::new();
    timeout(GENEROUS, read.read_to_end(&mut answer)).await.expect("answered and closed").expect("read");
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
    assert!(answer.contains("the request body did not arrive within 300 ms"), "{answer}");
}

/// Sends a request head with `Expect: 100-continue` and waits for the `100 Continue` that
/// hyper sends once the handler reads the body: from then on the request is in flight.
async fn in_flight(addr: SocketAddr, body: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let go_on = timeout(GENEROUS, read_response(&mut stream)).await.expect("100 Continue");
    assert!(go_on.starts_with("HTTP/1.1 100"), "{go_on}");
    stream
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_then_cuts_at_the_deadline() {
    let body = r#"{"model":"nope/x","messages":[{"role":"user","content":"hi"}]}"#;

    // A request in flight when shutdown begins, whose body then arrives, is answered.
    let mut server = Server::start(ConnectionLimits { shutdown_timeout: GENEROUS, ..ConnectionLimits::default() }).await;
    let mut stream = in_flight(server.addr, body).await;
    server.shut_down();
    stream.write_all(body.as_bytes()).await.expect("write");
    let answer = timeout(GENEROUS, read_response(&mut stream)).await.expect("answered while draining");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    timeout(GENEROUS, server.served).await.expect("drained").expect("task").expect("served");

    // One whose body never comes is cut at the deadline, and serve_on returns.
    let deadline = Duration::from_millis(300);
    let mut server = Server::start(ConnectionLimits { shutdown_timeout: deadline, ..ConnectionLimits::default() }).await;
    let mut stream = in_flight(server.addr, body).await;
    let signalled = server.shut_down();
    timeout(GENEROUS, server.served).await.expect("serve_on returns at the deadline").expect("task").expect("served");
    let took = signalled.elapsed();
    assert!(took >= deadline, "the slow request was cut after {took:?}, before the deadline");
    timeout(GENEROUS, closed(&mut stream)).await.expect("the slow connection is closed");
}
