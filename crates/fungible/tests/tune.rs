//! `fungible tune` as a user runs it, against the mock's OpenAI fine-tuning API: a dry run
//! with the estimate, a launch refused without --yes when nobody can answer the prompt, a
//! launch, `watch` to the end (running the eval the job asked for), `promote`, and then `fungible serve` on the same store serving
//! the tuned model under its alias and in its route, with no config edit.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ChildGuard, free_port};
use fungible_mock::{Fallback, MockUpstream};
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fungible(cwd: &Path, mock: &MockUpstream) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fungible"));
    for (k, _) in std::env::vars() {
        if k.ends_with("_API_KEY") || k.ends_with("_BASE_URL") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(cwd)
        .env_remove("FUNGIBLE_CONFIG")
        .env("FUNGIBLE_LOG", "warn")
        .env("FUNGIBLE_MODELS_DIR", "/nonexistent")
        .env("OPENAI_API_KEY", "sk-test-openai-0123456789")
        .env("MOCK", mock.url())
        .stdin(Stdio::null());
    cmd
}

fn ok(output: Output) -> (String, String) {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "failed: {stderr}\n{}", String::from_utf8_lossy(&output.stdout));
    (String::from_utf8_lossy(&output.stdout).into_owned(), stderr)
}

/// One HTTP/1.1 exchange with `Connection: close`; the status line and the body.
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> (String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("write");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

#[test]
fn a_job_from_the_cli_is_served_by_fungible_serve() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt.block_on(MockUpstream::start(Fallback::Fixed {
        json: std::fs::read(root().join("tests/fixtures/openai/plain.response.json")).unwrap().into(),
        sse: std::fs::read(root().join("tests/fixtures/openai/stream.response.sse")).unwrap().into(),
    }));
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(
        cwd.path().join("fungible.toml"),
        format!("[providers.openai]\nbase_url = \"{}/v1\"\n[models.support]\ntarget = \"openai/gpt-4.1-mini\"\n[tune]\npoll_interval_secs = 1\n", mock.url()),
    )
    .unwrap();
    let rows: Vec<String> = (0..12)
        .map(|i| json!({"messages": [{"role": "user", "content": format!("{i} + {i}?")}, {"role": "assistant", "content": format!("{}", i + i)}], "split": "train"}).to_string())
        .collect();
    std::fs::write(cwd.path().join("rows.jsonl"), rows.join("\n")).unwrap();
    ok(fungible(cwd.path(), &mock).args(["datasets", "add", "sums", "--file", "rows.jsonl"]).output().unwrap());

    let create = [
        "tune", "create", "--provider", "openai", "--model", "gpt-4.1-mini-2025-04-14", "--dataset", "sums", "--suffix", "sums", "--epochs", "2",
        "--eval", "--eval-split", "train", "--eval-limit", "2", "--eval-scorer", "exact",
    ];
    let (_, plan) = ok(fungible(cwd.path(), &mock).args(create).arg("--dry-run").output().unwrap());
    assert!(plan.contains("training tokens:") && plan.contains("x 2 epochs"), "{plan}");
    assert!(plan.contains("estimated cost: $"), "{plan}");
    assert!(plan.contains("nothing was uploaded"), "{plan}");
    let refused = fungible(cwd.path(), &mock).args(create).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("add --yes"), "{}", String::from_utf8_lossy(&refused.stderr));
    assert_eq!(mock.request_count(), 0, "nothing left the machine before --yes");

    let (job, _) = ok(fungible(cwd.path(), &mock).args(create).args(["--yes", "--json"]).output().unwrap());
    let job: Value = serde_json::from_str(&job).unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    let alias = job["alias"].as_str().unwrap().to_owned();
    let (shown, _) = ok(fungible(cwd.path(), &mock).args(["tune", "watch", &id, "--every", "1"]).output().unwrap());
    assert!(shown.contains("succeeded"), "{shown}");
    assert!(shown.contains("model: openai/ft:gpt-4.1-mini-2025-04-14:fungible-mock:sums:"), "{shown}");
    assert!(shown.contains("loss by step"), "{shown}");
    // No gateway was running: `watch` ran the eval it asked for, base against tuned.
    assert!(shown.contains("eval (Done"), "{shown}");
    assert!(shown.contains("openai/gpt-4.1-mini-2025-04-14") && shown.contains("answered 2"), "{shown}");
    ok(fungible(cwd.path(), &mock).args(["tune", "promote", &id, "--route", "support", "--percent", "10"]).output().unwrap());
    let bad = fungible(cwd.path(), &mock).args(["tune", "promote", &id, "--route", "nope", "--percent", "10"]).output().unwrap();
    assert!(!bad.status.success());

    // A gateway started afterwards serves it at once: under its alias, and in its route.
    let port = free_port();
    let log = cwd.path().join("serve.log");
    let _serve = ChildGuard(
        fungible(cwd.path(), &mock)
            .args(["serve", "--port", &port.to_string(), "--workers", "2"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    loop {
        let listed = TcpStream::connect(("127.0.0.1", port)).is_ok() && http(port, "GET", "/v1/models", None).1.contains(&alias);
        if listed {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "alias never served: {}", std::fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = http(port, "POST", "/v1/chat/completions", Some(&json!({"model": alias, "messages": [{"role": "user", "content": "3 + 3?"}]})));
    assert!(status.contains("200"), "{status} {body}");
    let sent: Value = serde_json::from_slice(&mock.received().last().unwrap().body).unwrap();
    assert!(sent["model"].as_str().unwrap().starts_with("ft:gpt-4.1-mini-2025-04-14"), "{sent}");
    let (_, routes) = http(port, "GET", "/v1/routes", None);
    let routes: Value = serde_json::from_str(&routes).unwrap();
    let shares: Vec<Value> = routes["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "support")
        .unwrap()["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["share_percent"].clone())
        .collect();
    assert_eq!(shares, [Value::Null, json!(10)]);
}
