//! `fungible serve` as a process, attacked: SIGTERM while a request whose body never comes
//! and a half-open connection are held open. The process must still exit, with success,
//! once `[server] shutdown_timeout_ms` has passed (after flushing the store), not wait on
//! them for ever.

mod common;

use common::free_port;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Far beyond the deadline: only a process that hangs reaches it.
const GENEROUS: Duration = Duration::from_secs(30);

/// Reads from `stream` until `done` says the text so far is complete.
fn read_until(stream: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut text = Vec::new();
    let mut chunk = [0u8; 1024];
    while !done(&String::from_utf8_lossy(&text)) {
        let n = stream.read(&mut chunk).expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&text));
        text.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&text).into_owned()
}

fn health(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// Starts `fungible serve` in `dir` (its `fungible.toml`, written by the caller) with `env`, no
/// provider key of the environment, logging to `fungible.log`; waits until `/health` answers.
fn spawn_serve(dir: &std::path::Path, env: &[(&str, &str)]) -> (std::process::Child, u16) {
    let log = dir.join("fungible.log");
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fungible"));
    for (k, _) in std::env::vars() {
        if k.ends_with("_API_KEY") || k.ends_with("_BASE_URL") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .current_dir(dir)
        .env_remove("FUNGIBLE_CONFIG")
        .env("FUNGIBLE_LOG", "info")
        .envs(env.iter().copied())
        .args(["serve", "--port", &port.to_string(), "--workers", "2"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("fungible starts");
    let started = Instant::now();
    while !health(port) {
        assert!(started.elapsed() < Duration::from_secs(60), "fungible did not start");
        assert!(child.try_wait().expect("wait").is_none(), "fungible exited: {}", std::fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, port)
}

#[test]
fn sigterm_with_slow_connections_open_exits_at_the_shutdown_deadline() {
    let dir = tempfile::tempdir().expect("temp dir");
    let deadline = Duration::from_millis(1000);
    std::fs::write(
        dir.path().join("fungible.toml"),
        format!("[server]\nshutdown_timeout_ms = {}\n[local]\nenabled = false\n", deadline.as_millis()),
    )
    .expect("config");
    let log = dir.path().join("fungible.log");
    let (mut child, port) = spawn_serve(dir.path(), &[]);

    // A request in flight whose body never comes: `100 Continue` says the handler reads it.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    slow.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n",
    )
    .expect("write");
    let go_on = read_until(&mut slow, |text| text.contains("\r\n\r\n"));
    assert!(go_on.starts_with("HTTP/1.1 100"), "{go_on}");
    // And a half-open one.
    let mut half_open = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    half_open.write_all(b"GET /health HTTP/1.1\r\nHost: loc").expect("write");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
    assert!(status.success(), "kill -TERM failed");
    let signalled = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        if signalled.elapsed() > deadline + GENEROUS {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fungible still running {:?} after SIGTERM: {}", signalled.elapsed(), std::fs::read_to_string(&log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = signalled.elapsed();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(exit.success(), "{exit}: {log}");
    // It waited for the in-flight request until the deadline, not less.
    assert!(took >= deadline, "exited {took:?} after SIGTERM, before the deadline: {log}");
    assert!(log.contains("shutdown deadline reached"), "{log}");
    drop((slow, half_open));
}

/// `[store] durable = true`: every answer a client received is in the store, even when the
/// process is killed with SIGKILL right after the last one (no drain, no flush on exit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_durable_recording_a_kill_9_loses_no_answered_request() {
    use fungible_mock::{Fallback, MockUpstream};
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/openai");
    let json = bytes::Bytes::from(std::fs::read(fixtures.join("plain.response.json")).expect("fixture"));
    let sse = bytes::Bytes::from(std::fs::read(fixtures.join("stream.response.sse")).expect("fixture"));
    let mock = MockUpstream::start(Fallback::Fixed { json, sse }).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("fungible.db");
    std::fs::write(
        dir.path().join("fungible.toml"),
        // A long flush interval: without `durable`, a kill loses the last second's records.
        format!(
            "[providers.openai]\nbase_url = \"{}/v1\"\n[store]\npath = {:?}\ndurable = true\nflush_interval_ms = 1000\n[local]\nenabled = false\n",
            mock.url(),
            db.display().to_string()
        ),
    )
    .expect("config");
    let (mut child, port) = spawn_serve(dir.path(), &[("OPENAI_API_KEY", "sk-test-durable-0123456789")]);
    let answered = 30;
    for i in 0..answered {
        let stream = i % 3 == 0;
        let body = format!(
            r#"{{"model":"openai/gpt-5","stream":{stream},"messages":[{{"role":"user","content":"question {i}"}}]}}"#
        );
        let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        conn.set_read_timeout(Some(GENEROUS)).expect("timeout");
        write!(
            conn,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("send");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).expect("read the whole answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // Every answer was received whole: kill at once, no chance to drain.
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let store = fungible_store::Store::open(&fungible_store::sqlite_url(&db)).await.expect("store");
    let filter = fungible_store::InferenceFilter { limit: Some(1000), ..fungible_store::InferenceFilter::default() };
    let stored = store.list(&filter).await.expect("list");
    assert_eq!(stored.len(), answered, "every answered request is on disk");
}
