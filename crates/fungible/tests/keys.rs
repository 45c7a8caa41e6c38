//! Two `fungible serve` processes sharing Redis (limits, budgets) and PostgreSQL (keys,
//! spend), in front of the mock upstream: one RPM limit holds across both, 500 concurrent
//! requests against a small budget overspend by at most one request's cost, a key revoked
//! through one is refused by both within a second, and no key (virtual, admin or provider)
//! shows up in either process's log or `/metrics`. Needs `FUNGIBLE_TEST_REDIS_URL` and
//! `FUNGIBLE_TEST_POSTGRES_URL` (scripts/test.sh sets both when the servers answer).

mod common;

use common::{ChildGuard, free_port};

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fungible_mock::{Fallback, MockUpstream};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const ADMIN: &str = "admin-key-two-instances-0123456789";
const PROVIDER_KEY: &str = "sk-test-openai-two-instances-0123456789";
/// One answer (25 tokens) at $1,000 per million tokens.
const COST: f64 = 0.025;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Instance {
    /// Held only to kill the process when the instance drops.
    _process: ChildGuard,
    url: String,
}


fn spawn(config: &Path, log: &Path) -> Instance {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fungible"));
    for (k, _) in std::env::vars() {
        if k.ends_with("_API_KEY") || k.ends_with("_BASE_URL") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .args(["serve", "--config"])
        .arg(config)
        .args(["--port", &port.to_string(), "--workers", "2"])
        .env("OPENAI_API_KEY", PROVIDER_KEY)
        .env("FUNGIBLE_ADMIN_KEY", ADMIN)
        .env("FUNGIBLE_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("fungible starts");
    Instance {
        _process: ChildGuard(child),
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn call(
    client: &HttpClient,
    method: &str,
    url: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value, Option<String>) {
    let request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            body.map(|b| b.to_string()).unwrap_or_default(),
        )))
        .expect("request");
    match client.request(request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let bytes = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (
                status,
                serde_json::from_slice(&bytes)
                    .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned())),
                retry,
            )
        }
        Err(_) => (0, Value::Null, None),
    }
}

async fn chat(client: &HttpClient, base: &str, key: &str) -> (u16, Value, Option<String>) {
    let body = json!({"model": "openai/gpt-5", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]});
    call(
        client,
        "POST",
        &format!("{base}/v1/chat/completions"),
        key,
        Some(body),
    )
    .await
}

/// Two gateways over the same config, logging to `a.log` and `b.log` in `dir`, both healthy;
/// started one after the other, so the second finds the migrations applied.
async fn two_instances(client: &HttpClient, config: &Path, dir: &Path) -> (Instance, Instance) {
    let a = spawn(config, &dir.join("a.log"));
    wait_healthy(client, &a).await;
    let b = spawn(config, &dir.join("b.log"));
    wait_healthy(client, &b).await;
    (a, b)
}

async fn wait_healthy(client: &HttpClient, instance: &Instance) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while call(client, "GET", &format!("{}/health", instance.url), "", None)
        .await
        .0
        != 200
    {
        assert!(Instant::now() < deadline, "{} did not start", instance.url);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_key(client: &HttpClient, base: &str, settings: Value) -> (String, String) {
    let (status, body, _) = call(
        client,
        "POST",
        &format!("{base}/admin/keys"),
        ADMIN,
        Some(settings),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    (
        body["id"].as_str().expect("id").to_owned(),
        body["key"].as_str().expect("key").to_owned(),
    )
}

/// Runs `fungible keys ARGS` against the gateway at `url`; its stdout.
fn keys_cli(url: &str, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_fungible"))
        .arg("keys")
        .args(args)
        .args(["--url", url])
        .env("FUNGIBLE_ADMIN_KEY", ADMIN)
        .output()
        .expect("fungible keys runs");
    assert!(
        output.status.success(),
        "fungible keys {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_limits_budgets_and_revocations() {
    let (Ok(redis), Ok(postgres)) = (
        std::env::var("FUNGIBLE_TEST_REDIS_URL"),
        std::env::var("FUNGIBLE_TEST_POSTGRES_URL"),
    ) else {
        eprintln!(
            "FUNGIBLE_TEST_REDIS_URL and FUNGIBLE_TEST_POSTGRES_URL are not both set: two-instance test not run"
        );
        return;
    };
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/openai");
    let json = Bytes::from(std::fs::read(fixtures.join("plain.response.json")).expect("fixture"));
    let sse = Bytes::from(std::fs::read(fixtures.join("stream.response.sse")).expect("fixture"));
    let mock = MockUpstream::start(Fallback::Fixed { json, sse }).await;

    // A schema of its own in the shared database, dropped at the end.
    let schema = fungible_store::testing::PgSchema::create(&postgres)
        .await
        .expect("a test schema");
    let store_url = schema.url().to_owned();

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("fungible.toml");
    std::fs::write(
        &config,
        format!(
            "[providers.openai]\nbase_url = \"{}/v1\"\n[store]\nurl = \"{store_url}\"\nflush_interval_ms = 10\n[auth]\nenabled = true\n[state]\nredis = \"{redis}\"\n[prices.\"openai/gpt-5\"]\ninput = 1000.0\noutput = 1000.0\n",
            mock.url()
        ),
    )
    .expect("config");
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http();
    let (a, b) = two_instances(&client, &config, dir.path()).await;
    let instances = [a.url.clone(), b.url.clone()];

    // One RPM limit across both instances.
    let (_, limited) = create_key(&client, &a.url, json!({"rpm": 5})).await;
    let mut statuses = Vec::new();
    for i in 0..10 {
        let (status, body, retry) = chat(&client, &instances[i % 2], &limited).await;
        if status == 429 {
            assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
            assert!(retry.is_some(), "429 has Retry-After");
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        5,
        "{statuses:?}"
    );

    // 500 concurrent requests, split over both, against a budget of 10 answers.
    let budget = 10.0 * COST;
    let (id, budgeted) = create_key(
        &client,
        &a.url,
        json!({"budget": {"usd": budget, "period": "total"}}),
    )
    .await;
    let client = Arc::new(client);
    let mut tasks = Vec::new();
    for i in 0..500 {
        let (client, base, key) = (
            Arc::clone(&client),
            instances[i % 2].clone(),
            budgeted.clone(),
        );
        tasks.push(tokio::spawn(
            async move { chat(&client, &base, &key).await },
        ));
    }
    let mut ok = 0u32;
    for task in tasks {
        let (status, body, _) = task.await.expect("task");
        match status {
            200 => ok += 1,
            429 => assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("budget"),
                "{body}"
            ),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(ok >= 1, "the budget admits requests");
    let deadline = Instant::now() + Duration::from_secs(30);
    let spent = loop {
        let (_, key, _) = call(
            &client,
            "GET",
            &format!("{}/admin/keys/{id}", b.url),
            ADMIN,
            None,
        )
        .await;
        let spent = key["spend"]["spent"].as_f64().unwrap_or(-1.0);
        if (spent - f64::from(ok) * COST).abs() < 1e-9 || Instant::now() > deadline {
            break spent;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        (spent - f64::from(ok) * COST).abs() < 1e-9,
        "spent {spent} for {ok} answers"
    );
    assert!(
        spent <= budget + COST + 1e-9,
        "overspent: {spent} > {budget} + one request ({ok} answers)"
    );

    // A key created and revoked with `fungible keys` through A is refused by both within a
    // second.
    let created = keys_cli(&a.url, &["create", "--name", "short-lived", "--model", "openai/*"]);
    let revoked = created.lines().next().unwrap_or_default().trim().to_owned();
    assert!(revoked.starts_with("fk-"), "keys create prints the key: {created}");
    let listed = keys_cli(&b.url, &["list", "--json"]);
    let listed: Value = serde_json::from_str(&listed).expect("keys list --json");
    let revoked_id = listed["data"]
        .as_array()
        .expect("a list")
        .iter()
        .find(|k| k["name"] == "short-lived")
        .and_then(|k| k["id"].as_str())
        .expect("the new key is listed by the other instance")
        .to_owned();
    assert!(!listed.to_string().contains(&revoked[3..]), "a listed key shows no key text");
    for base in &instances {
        assert_eq!(chat(&client, base, &revoked).await.0, 200);
    }
    keys_cli(&a.url, &["revoke", &revoked_id]);
    let revoked_at = Instant::now();
    for base in &instances {
        loop {
            let (status, body, _) = chat(&client, base, &revoked).await;
            if status == 401 {
                assert!(
                    body["error"]["message"]
                        .as_str()
                        .unwrap_or("")
                        .contains("revoked"),
                    "{body}"
                );
                break;
            }
            assert_eq!(status, 200, "{body}");
            assert!(
                revoked_at.elapsed() < Duration::from_secs(5),
                "{base} still accepts a revoked key"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let took = revoked_at.elapsed();
    assert!(took < Duration::from_secs(1), "revocation took {took:?}");

    // No key in either log or /metrics.
    let mut texts = Vec::new();
    for base in &instances {
        let (status, metrics, _) =
            call(&client, "GET", &format!("{base}/metrics"), ADMIN, None).await;
        assert_eq!(status, 200);
        texts.push(metrics.to_string());
    }
    drop((a, b));
    for log in ["a.log", "b.log"] {
        texts.push(std::fs::read_to_string(dir.path().join(log)).expect("log"));
    }
    assert!(
        texts[2].contains("listening"),
        "the log is captured: {}",
        texts[2]
    );
    for text in &texts {
        for secret in [
            &limited[3..],
            &budgeted[3..],
            &revoked[3..],
            PROVIDER_KEY,
            ADMIN,
        ] {
            assert!(
                !text.contains(secret),
                "a key leaked into a log or /metrics"
            );
        }
    }
}

/// A Responses conversation behind a load balancer: each turn lands on the other instance and
/// continues the previous turn's response (kept in the shared Redis), a response deleted on
/// one is gone on both, and another key finds none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_continue_each_others_stored_responses() {
    let (Ok(redis), Ok(postgres)) = (
        std::env::var("FUNGIBLE_TEST_REDIS_URL"),
        std::env::var("FUNGIBLE_TEST_POSTGRES_URL"),
    ) else {
        eprintln!("FUNGIBLE_TEST_REDIS_URL and FUNGIBLE_TEST_POSTGRES_URL are not both set: two-instance test not run");
        return;
    };
    stored_responses_across_instances(Some(&redis), &postgres).await;
}

/// The same with PostgreSQL alone (no Redis): the responses live in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_postgresql_alone_continue_each_others_stored_responses() {
    let Ok(postgres) = std::env::var("FUNGIBLE_TEST_POSTGRES_URL") else {
        eprintln!("FUNGIBLE_TEST_POSTGRES_URL is not set: two-instance test not run");
        return;
    };
    stored_responses_across_instances(None, &postgres).await;
}

async fn stored_responses_across_instances(redis: Option<&str>, postgres: &str) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/openai");
    let json = Bytes::from(std::fs::read(fixtures.join("plain.response.json")).expect("fixture"));
    let sse = Bytes::from(std::fs::read(fixtures.join("stream.response.sse")).expect("fixture"));
    let mock = MockUpstream::start(Fallback::Fixed { json, sse }).await;
    let schema = fungible_store::testing::PgSchema::create(postgres).await.expect("a test schema");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("fungible.toml");
    let state = redis.map(|url| format!("[state]\nredis = \"{url}\"\n")).unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            "[providers.openai]\nbase_url = \"{}/v1\"\n[store]\nurl = \"{}\"\n[auth]\nenabled = true\n{state}",
            mock.url(),
            schema.url()
        ),
    )
    .expect("config");
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let (a, b) = two_instances(&client, &config, dir.path()).await;
    let instances = [a.url.clone(), b.url.clone()];
    let (_, key) = create_key(&client, &a.url, json!({})).await;
    let (_, other) = create_key(&client, &b.url, json!({})).await;

    let mut previous: Option<String> = None;
    for turn in 0..5 {
        let base = &instances[turn % 2];
        let mut body = json!({"model": "openai/gpt-5", "input": format!("turn {turn}")});
        if let Some(id) = &previous {
            body["previous_response_id"] = json!(id);
        }
        let (status, answer, _) = call(&client, "POST", &format!("{base}/v1/responses"), &key, Some(body)).await;
        assert_eq!(status, 200, "turn {turn} on {base}: {answer}");
        previous = Some(answer["id"].as_str().expect("id").to_owned());
    }
    // The upstream got the whole conversation on the last turn: five user turns.
    let last = mock.received().last().expect("a request").json();
    let users = last["messages"].as_array().expect("messages").iter().filter(|m| m["role"] == "user").count();
    assert_eq!(users, 5, "{last}");

    let id = previous.expect("a response");
    for base in &instances {
        let (status, _, _) = call(&client, "GET", &format!("{base}/v1/responses/{id}"), &other, None).await;
        assert_eq!(status, 404, "another key finds nothing on {base}");
        let (status, _, _) = call(&client, "GET", &format!("{base}/v1/responses/{id}"), &key, None).await;
        assert_eq!(status, 200, "{base}");
    }
    let (status, body, _) = call(&client, "DELETE", &format!("{}/v1/responses/{id}", b.url), &key, None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = call(&client, "GET", &format!("{}/v1/responses/{id}", a.url), &key, None).await;
    assert_eq!(status, 404, "deleted on one instance, gone on the other");
}

/// The semantic cache's index is shared through Redis: a question answered through one
/// instance is a semantic hit on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_semantic_cache_entry_stored_through_one_instance_is_a_hit_on_the_other() {
    let Ok(redis) = std::env::var("FUNGIBLE_TEST_REDIS_URL") else {
        eprintln!("FUNGIBLE_TEST_REDIS_URL is not set: shared semantic cache test not run");
        return;
    };
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    assert!(models.join("all-MiniLM-L6-v2").is_dir(), "run scripts/setup-models.sh first");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/openai");
    let json = Bytes::from(std::fs::read(fixtures.join("plain.response.json")).expect("fixture"));
    let sse = Bytes::from(std::fs::read(fixtures.join("stream.response.sse")).expect("fixture"));
    let mock = MockUpstream::start(Fallback::Fixed { json, sse }).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("fungible.toml");
    // A prefix of this test's own, so runs never see each other's entries.
    let prefix = format!("fungible-test-{}:", std::process::id());
    std::fs::write(
        &config,
        format!(
            "[providers.openai]\nbase_url = \"{}/v1\"\n[store]\npath = {:?}\n[local]\nmodels_dir = {:?}\n\
             [cache]\nbackend = \"redis\"\nredis_url = \"{redis}\"\nkey_prefix = \"{prefix}\"\ndeterministic_only = false\n\
             [cache.semantic]\nmodels = [\"openai/gpt-5\"]\nthreshold = 0.9\n",
            mock.url(),
            dir.path().join("fungible.db").display().to_string(),
            models.display().to_string()
        ),
    )
    .expect("config");
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let (a, b) = two_instances(&client, &config, dir.path()).await;
    let ask = |base: String, question: &'static str| {
        let client = client.clone();
        async move {
            let request = hyper::Request::post(format!("{base}/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(
                    json!({"model": "openai/gpt-5", "messages": [{"role": "user", "content": question}]}).to_string(),
                )))
                .expect("request");
            let response = client.request(request).await.expect("answer");
            assert_eq!(response.status(), 200);
            let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            (header("x-fungible-cache"), header("x-fungible-cache-match"))
        }
    };
    assert_eq!(ask(a.url.clone(), "What is the capital of France?").await.0, "miss");
    let calls = mock.request_count();
    // Another instance, another wording: served from the shared index.
    let (outcome, matched) = ask(b.url.clone(), "What's the capital city of France?").await;
    assert_eq!((outcome.as_str(), matched.as_str()), ("hit", "semantic"));
    assert_eq!(mock.request_count(), calls, "no upstream call for the hit");
    // An unrelated question is not.
    assert_eq!(ask(b.url.clone(), "How do I bake sourdough bread?").await.0, "miss");
}
