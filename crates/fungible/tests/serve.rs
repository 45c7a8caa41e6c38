//! `fungible serve` as a process, attacked: SIGTERM while a request whose body never comes
//! and a half-open connection are held open. The process must still exit, with success,
//! once `[server] shutdown_timeout_ms` has passed (after flushing the store), not wait on
//! them for ever.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Far beyond the deadline: only a process that hangs reaches it.
const GENEROUS: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

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
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fungible"));
    for (k, _) in std::env::vars() {
        if k.ends_with("_API_KEY") || k.ends_with("_BASE_URL") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .current_dir(dir.path())
        .env_remove("FUNGIBLE_CONFIG")
        .env("FUNGIBLE_LOG", "info")
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
