//! `fungible check` validates every section of the config file, and `serve` validates all of
//! it before it opens (and migrates) the store: a bad `[telemetry]` used to pass `check` and
//! fail `serve` only after the store was created.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Far beyond what refusing a config takes: only a process that hangs reaches it.
const GENEROUS: Duration = Duration::from_secs(60);

/// Runs `fungible ARGS` in `dir` with no provider key or OTLP variable of the environment.
fn fungible(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fungible"));
    for (k, _) in std::env::vars() {
        if k.ends_with("_API_KEY") || k.ends_with("_BASE_URL") || k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .current_dir(dir)
        .env_remove("FUNGIBLE_CONFIG")
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fungible starts");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().expect("output")));
    rx.recv_timeout(GENEROUS).unwrap_or_else(|_| {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        panic!("fungible {args:?} did not exit within {GENEROUS:?}")
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_bad_telemetry_section_fails_check_and_serve_before_the_store_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("fungible.toml"),
        "[store]\npath = \"recorded.db\"\n\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 2.0\n",
    )
    .unwrap();

    let check = fungible(dir.path(), &["check"], &[]);
    assert!(!check.status.success(), "check accepted it: {}", text(&check.stdout));
    assert!(text(&check.stderr).contains("telemetry.sample_ratio"), "{}", text(&check.stderr));

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let serve = fungible(dir.path(), &["serve", "--port", &port], &[]);
    assert!(!serve.status.success());
    assert!(text(&serve.stderr).contains("telemetry.sample_ratio: must be between 0.0 and 1.0"), "{}", text(&serve.stderr));
    assert!(!dir.path().join("recorded.db").exists(), "serve opened the store before refusing the config");
}

#[test]
fn check_names_the_path_of_a_bad_cache_or_store_setting() {
    for (section, path) in [
        ("[cache]\nttl_secs = 0\n", "cache.ttl_secs"),
        ("[store]\nbatch_size = 0\n", "store.batch_size"),
        ("[telemetry]\notlp_endpoint = \"http://user:secret-token@127.0.0.1:4318\"\n", "telemetry.otlp_endpoint: must not hold credentials"),
        ("[cache]\n[cache.semantic]\nmodels = [\"openai/gpt-4o-mini\"]\nembedding_model = \"nowhere/embedder\"\n", "cache.semantic.embedding_model"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fungible.toml"), section).unwrap();
        let check = fungible(dir.path(), &["check"], &[]);
        assert!(!check.status.success(), "{section}: accepted");
        assert!(text(&check.stderr).contains(path), "{section}: {}", text(&check.stderr));
        assert!(!text(&check.stderr).contains("secret-token"), "{}", text(&check.stderr));
    }
}

#[test]
fn check_prints_every_section_without_secrets_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("fungible.toml"),
        "[store]\nurl = \"postgres://fungible:hunter2@127.0.0.1:1/traces\"\n\n\
         [cache]\nttl_secs = 60\n\n\
         [telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\n",
    )
    .unwrap();
    let check = fungible(dir.path(), &["check"], &[("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20otlp-secret")]);
    let out = text(&check.stdout);
    assert!(check.status.success(), "{}{}", out, text(&check.stderr));
    assert!(out.contains("store:     postgres://fungible@127.0.0.1:1/traces"), "{out}");
    assert!(out.contains("cache:     in memory, ttl 60 s"), "{out}");
    assert!(out.contains("telemetry: OTLP to http://127.0.0.1:4318/v1/traces"), "{out}");
    for secret in ["hunter2", "otlp-secret"] {
        assert!(!out.contains(secret) && !text(&check.stderr).contains(secret), "{secret} shown: {out}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "check wrote a file");
}

#[test]
fn serve_refuses_to_start_when_a_routes_examples_dataset_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("fungible.toml"),
        "[store]\npath = \"recorded.db\"\n\n[models.support]\ntarget = \"openai/gpt-4.1-mini\"\nexamples = { dataset = \"support@2\", k = 3 }\n",
    )
    .unwrap();
    let env = [("OPENAI_API_KEY", "sk-test")];
    let check = fungible(dir.path(), &["check"], &env);
    assert!(check.status.success(), "{}", text(&check.stderr));
    assert!(text(&check.stdout).contains("3 examples from support@2 (train rows)"), "{}", text(&check.stdout));

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let serve = fungible(dir.path(), &["serve", "--port", &port], &env);
    assert!(!serve.status.success());
    assert!(text(&serve.stderr).contains("models.support.examples: dataset \"support\" has no version 2"), "{}", text(&serve.stderr));
}
