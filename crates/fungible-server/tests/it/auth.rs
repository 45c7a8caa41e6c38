//! Virtual keys through the whole app: the admin API, 401/403/429 in each inbound API's
//! error shape, RPM/TPM windows, budgets under 500 concurrent requests (memory counters,
//! and Redis when `FUNGIBLE_TEST_REDIS_URL` is set), and keys never showing up in errors,
//! metrics or stored traces.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use bytes::Bytes;
use fungible_access::{Access, Limits};
use fungible_gateway::{ConfigFile, Gateway, GatewayConfig};
use fungible_mock::{Fallback, MockUpstream};
use fungible_server::auth::Auth;
use fungible_server::{AppState, app};
use fungible_store::{Price, PriceTable, Recorder, RecorderOptions, Store};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{OPENAI, TestResponse, fixtures};

pub(crate) const ADMIN: &str = "admin-key-0123456789abcdef";
/// `[ui] secret_env`'s value in these tests.
pub(crate) const UI_SECRET: &str = "ui-secret-for-the-tests-0123456789abcdef";
/// What one answered request costs with [`prices`]: 25 tokens at $1,000 per million.
const COST: f64 = 0.025;

pub(crate) struct Gw {
    pub(crate) app: Router,
    pub(crate) store: Store,
    pub(crate) recorder: Recorder,
    pub(crate) mock: MockUpstream,
    /// Where the UI's evals page looks for runs (empty until a test writes one).
    pub(crate) eval_runs: std::path::PathBuf,
}

fn prices() -> PriceTable {
    let mut prices = PriceTable::empty();
    prices.insert(
        "openai/gpt-5",
        Price {
            input: 1000.0,
            output: 1000.0,
            cached_read: None,
            cache_write: None,
        },
    );
    prices
}

async fn sqlite_store() -> Store {
    let dir = std::env::temp_dir().join("fungible-server-auth-tests");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{}.db", fungible_store::new_id()));
    Store::open(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .expect("store opens")
}

/// A gateway with auth on (`[auth]` extra lines in `auth_toml`) over a mock that answers every
/// request with the OpenAI fixtures (25 tokens), and `limits` as the counters.
pub(crate) async fn gateway(auth_toml: &str, limits: Limits) -> Gw {
    let json =
        Bytes::from(std::fs::read(fixtures().join("openai/plain.response.json")).expect("fixture"));
    let sse =
        Bytes::from(std::fs::read(fixtures().join("openai/stream.response.sse")).expect("fixture"));
    let mock = MockUpstream::start(Fallback::Fixed { json, sse }).await;
    let toml = format!(
        "[providers.openai]\nbase_url = \"{}/v1\"\n[models.cheap]\ntarget = \"openai/gpt-5\"\n[auth]\nenabled = true\n{auth_toml}\n",
        mock.url()
    );
    let file = ConfigFile::parse(&toml, "test.toml").expect("test config parses");
    let env = |k: &str| match k {
        "OPENAI_API_KEY" => Some(OPENAI.key.to_owned()),
        "FUNGIBLE_ADMIN_KEY" => Some(ADMIN.to_owned()),
        _ => None,
    };
    let config = GatewayConfig::resolve(file, &env).expect("test config is valid");
    let gateway = Gateway::new(&config).expect("gateway builds");
    let store = sqlite_store().await;
    let recorder = Recorder::start(store.clone(), RecorderOptions::default());
    let mut auth = Auth::from_config(&config.auth, Some(store.clone()))
        .await
        .expect("auth");
    auth.access = Some(Arc::new(Access::new(
        store.clone(),
        limits,
        config.auth.key_cache,
    )));
    let eval_runs = std::env::temp_dir().join("fungible-server-ui-evals").join(fungible_store::new_id());
    let state = AppState::new(gateway, config.max_body_bytes).with_inflight_budget(config.max_inflight_body_bytes)
        .with_prices(prices())
        .with_recorder(store.clone(), recorder.clone())
        .with_auth(auth)
        // The web UI is on by default; its sessions are signed with `[ui] secret_env`'s secret,
        // shared by every gateway these tests build.
        .with_ui(
            fungible_server::ui::Ui::new(fungible_server::ui::Sessions::new(Some(UI_SECRET), Duration::from_secs(3600), false))
                .with_eval_runs(eval_runs.clone()),
        );
    Gw {
        app: app(state),
        store,
        recorder,
        mock,
        eval_runs,
    }
}

impl Gw {
    pub(crate) async fn send(&self, request: Request<Body>) -> TestResponse {
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        TestResponse {
            status,
            headers,
            body,
        }
    }

    pub(crate) async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> TestResponse {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {ADMIN}"))
            .header("content-type", "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .expect("request");
        self.send(request).await
    }

    /// Creates a key with `settings`; returns (id, key text).
    pub(crate) async fn key(&self, settings: Value) -> (String, String) {
        let r = self.admin("POST", "/admin/keys", Some(settings)).await;
        assert_eq!(r.status.as_u16(), 201, "{}", r.text());
        let body = r.json();
        (
            body["id"].as_str().expect("id").to_owned(),
            body["key"].as_str().expect("key").to_owned(),
        )
    }

    pub(crate) async fn chat(&self, key: &str, model: &str) -> TestResponse {
        let body = json!({"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]});
        let request = Request::post("/v1/chat/completions")
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        self.send(request).await
    }

    /// Waits until the key's recorded spend is `expected` (settling runs after the answer).
    async fn spend_reaches(&self, id: &str, expected: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spent = self
                .admin("GET", &format!("/admin/keys/{id}"), None)
                .await
                .json()["spend"]["spent"]
                .as_f64()
                .unwrap_or(-1.0);
            if (spent - expected).abs() < 1e-9 || Instant::now() > deadline {
                return spent;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn admin_api_needs_the_admin_key_and_shows_a_key_once() {
    let gw = gateway("", Limits::memory()).await;
    let wrong = Request::get("/admin/keys")
        .header("authorization", "Bearer nope")
        .body(Body::empty())
        .unwrap();
    gw.send(wrong).await.openai_error(401);
    let anonymous = Request::get("/admin/keys").body(Body::empty()).unwrap();
    gw.send(anonymous).await.openai_error(401);

    let (id, key) = gw.key(json!({"name": "ci", "models": ["openai/*"], "rpm": 10, "tags": ["team=a"], "budget": {"usd": 5, "period": "monthly"}})).await;
    assert!(key.starts_with("fk-") && key.len() > 40, "{key}");
    let list = gw.admin("GET", "/admin/keys", None).await;
    assert_eq!(list.status.as_u16(), 200);
    assert!(
        !list.text().contains(&key[3..]),
        "the key text is shown once: {}",
        list.text()
    );
    let listed = &list.json()["data"][0];
    assert_eq!(listed["id"], id.as_str());
    assert_eq!(listed["prefix"], &key[..9]);
    assert!(
        listed.get("hash").is_none() && listed.get("key").is_none(),
        "{listed}"
    );
    assert_eq!(listed["budget"], json!({"usd": 5.0, "period": "monthly"}));

    let patched = gw
        .admin(
            "PATCH",
            &format!("/admin/keys/{id}"),
            Some(json!({"rpm": null, "name": "renamed"})),
        )
        .await;
    assert_eq!(patched.status.as_u16(), 200, "{}", patched.text());
    assert_eq!(patched.json()["rpm"], Value::Null);
    assert_eq!(patched.json()["name"], "renamed");
    let bad = gw
        .admin(
            "PATCH",
            &format!("/admin/keys/{id}"),
            Some(json!({"rpm": 0})),
        )
        .await;
    assert_eq!(bad.openai_error(400)["param"], "rpm");
    let unknown = gw
        .admin("POST", "/admin/keys", Some(json!({"rmp": 3})))
        .await;
    assert!(
        unknown.openai_error(400)["message"]
            .as_str()
            .unwrap()
            .contains("rmp")
    );
    gw.admin("DELETE", "/admin/keys/key_missing", None)
        .await
        .openai_error(404);
    let stored = gw.store.key(&id).await.unwrap().unwrap();
    assert_eq!(stored.hash, fungible_access::key::hash(&key));
}

#[tokio::test]
async fn a_missing_unknown_revoked_or_expired_key_is_a_401_in_each_apis_shape() {
    let gw = gateway("", Limits::memory()).await;
    // Open routes need no key.
    let health = gw
        .send(Request::get("/health").body(Body::empty()).unwrap())
        .await;
    assert_eq!(health.status.as_u16(), 200);

    let chat = |headers: &[(&str, &str)], path: &str| {
        let mut builder = Request::post(path).header("content-type", "application/json");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(Body::from(json!({"model": "openai/gpt-5", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}).to_string())).unwrap()
    };
    let e = gw
        .send(chat(&[], "/v1/chat/completions"))
        .await
        .openai_error(401);
    assert_eq!(e["type"], "authentication_error");
    let r = gw
        .send(chat(&[("x-api-key", "fk-unknown")], "/v1/messages"))
        .await;
    assert_eq!(r.status.as_u16(), 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    assert_eq!(r.json()["type"], "error");
    let gemini = Request::post("/v1beta/models/openai/gpt-5:generateContent?key=fk-unknown")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}).to_string(),
        ))
        .unwrap();
    let r = gw.send(gemini).await;
    assert_eq!(r.status.as_u16(), 401);
    assert_eq!(r.json()["error"]["status"], "UNAUTHENTICATED");
    // Embeddings and the read-back API need a key too.
    let r = gw
        .send(
            Request::post("/v1/embeddings")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status.as_u16(), 401);
    let r = gw
        .send(Request::get("/v1/inferences").body(Body::empty()).unwrap())
        .await;
    assert_eq!(r.status.as_u16(), 401);

    let (id, key) = gw.key(json!({})).await;
    // Every inbound API's own header works.
    assert_eq!(gw.chat(&key, "openai/gpt-5").await.status.as_u16(), 200);
    let r = gw.send(chat(&[("x-api-key", &key)], "/v1/messages")).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let gemini = Request::post("/v1beta/models/openai/gpt-5:generateContent")
        .header("x-goog-api-key", key.as_str())
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}).to_string(),
        ))
        .unwrap();
    assert_eq!(gw.send(gemini).await.status.as_u16(), 200);

    assert_eq!(
        gw.admin("DELETE", &format!("/admin/keys/{id}"), None)
            .await
            .status
            .as_u16(),
        200
    );
    let e = gw.chat(&key, "openai/gpt-5").await.openai_error(401);
    assert!(e["message"].as_str().unwrap().contains("revoked"), "{e}");

    let (_, expired) = gw.key(json!({"expires_ms": 1})).await;
    let e = gw.chat(&expired, "openai/gpt-5").await.openai_error(401);
    assert!(e["message"].as_str().unwrap().contains("expired"), "{e}");
    // The key text is in no error.
    assert!(!e.to_string().contains(&expired));
}

#[tokio::test]
async fn a_model_the_key_may_not_use_is_a_403() {
    let gw = gateway("", Limits::memory()).await;
    let (_, key) = gw.key(json!({"models": ["cheap"]})).await;
    assert_eq!(gw.chat(&key, "cheap").await.status.as_u16(), 200);
    let e = gw.chat(&key, "openai/gpt-5").await.openai_error(403);
    assert_eq!(e["type"], "permission_error");
    // The key lists only what it may use.
    let listed = gw
        .send(
            Request::get("/v1/models")
                .header("authorization", format!("Bearer {key}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .json();
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["cheap"], "{listed}");
    let (_, key) = gw.key(json!({"models": ["openai/*"]})).await;
    assert_eq!(gw.chat(&key, "openai/gpt-5").await.status.as_u16(), 200);
    // An alias is allowed through the target it resolves to.
    assert_eq!(gw.chat(&key, "cheap").await.status.as_u16(), 200);
    let e = gw
        .chat(&key, "anthropic/claude-sonnet-4-5")
        .await
        .openai_error(403);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("anthropic/claude-sonnet-4-5"),
        "{e}"
    );
}

async fn rpm_holds(limits: Limits) {
    let gw = gateway("", limits).await;
    let (_, key) = gw.key(json!({"rpm": 2})).await;
    let (_, other) = gw.key(json!({"rpm": 2})).await;
    assert_eq!(gw.chat(&key, "openai/gpt-5").await.status.as_u16(), 200);
    assert_eq!(gw.chat(&key, "openai/gpt-5").await.status.as_u16(), 200);
    let r = gw.chat(&key, "openai/gpt-5").await;
    let e = r.openai_error(429);
    assert_eq!(e["type"], "rate_limit_error");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Each key has its own window.
    assert_eq!(gw.chat(&other, "openai/gpt-5").await.status.as_u16(), 200);
}

#[tokio::test]
async fn rpm_limit_is_a_429_with_retry_after() {
    rpm_holds(Limits::memory()).await;
}

#[tokio::test]
async fn rpm_limit_holds_in_redis() {
    if let Some(limits) = redis().await {
        rpm_holds(limits).await;
    }
}

async fn redis() -> Option<Limits> {
    let Ok(url) = std::env::var("FUNGIBLE_TEST_REDIS_URL") else {
        eprintln!("FUNGIBLE_TEST_REDIS_URL is not set: Redis case not run");
        return None;
    };
    Some(Limits::redis(&url).await.expect("redis"))
}

#[tokio::test]
async fn tpm_counts_the_real_usage() {
    let gw = gateway("", Limits::memory()).await;
    // 25 tokens a request: the second still starts under 30, the third does not.
    let (id, key) = gw.key(json!({"tpm": 30})).await;
    assert_eq!(gw.chat(&key, "openai/gpt-5").await.status.as_u16(), 200);
    assert_eq!(gw.spend_reaches(&id, COST).await, COST);
    assert_eq!(gw.chat(&key, "openai/gpt-5").await.status.as_u16(), 200);
    assert_eq!(gw.spend_reaches(&id, 2.0 * COST).await, 2.0 * COST);
    let r = gw.chat(&key, "openai/gpt-5").await;
    assert!(
        r.openai_error(429)["message"]
            .as_str()
            .unwrap()
            .contains("tokens per minute")
    );
    assert!(r.headers.contains_key("retry-after"));
}

async fn budget_holds_under_concurrency(limits: Limits) {
    let gw = Arc::new(gateway("", limits).await);
    let budget = 0.25;
    let (id, key) = gw
        .key(json!({"budget": {"usd": budget, "period": "daily"}}))
        .await;
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let gw = Arc::clone(&gw);
        let key = key.clone();
        tasks.push(tokio::spawn(
            async move { gw.chat(&key, "openai/gpt-5").await },
        ));
    }
    let mut ok = 0;
    for task in tasks {
        let r = task.await.expect("task");
        match r.status.as_u16() {
            200 => ok += 1,
            429 => {
                let e = r.openai_error(429);
                assert!(e["message"].as_str().unwrap().contains("budget"), "{e}");
                assert!(
                    r.headers.contains_key("retry-after"),
                    "a daily budget resets"
                );
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    let spent = gw.spend_reaches(&id, ok as f64 * COST).await;
    assert!(
        (spent - ok as f64 * COST).abs() < 1e-9,
        "spent {spent} for {ok} answers"
    );
    assert!(ok >= 1, "the budget admits some requests");
    assert!(
        spent <= budget + COST + 1e-9,
        "overspent: {spent} > {budget} + one request"
    );
    // Spent is persisted per key and period in the store.
    let period = fungible_access::period::window(
        fungible_access::BudgetPeriod::Daily,
        fungible_access::now_ms(),
    )
    .0;
    assert!((gw.store.key_spend(&id, &period).await.unwrap() - spent).abs() < 1e-9);
}

#[tokio::test]
async fn budget_overspends_by_at_most_one_request_under_500_concurrent() {
    budget_holds_under_concurrency(Limits::memory()).await;
}

#[tokio::test]
async fn budget_holds_in_redis_under_500_concurrent() {
    if let Some(limits) = redis().await {
        budget_holds_under_concurrency(limits).await;
    }
}

#[tokio::test]
async fn streams_settle_their_cost_and_unpriced_models_are_refused_with_a_budget() {
    let gw = gateway("", Limits::memory()).await;
    let (id, key) = gw
        .key(json!({"budget": {"usd": 10, "period": "total"}}))
        .await;
    let body = json!({"model": "openai/gpt-5", "stream": true, "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]});
    let request = Request::post("/v1/chat/completions")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let r = gw.send(request).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(gw.spend_reaches(&id, COST).await, COST);
    // No price for gpt-5-mini in this table: a budgeted key may not use it.
    let e = gw.chat(&key, "openai/gpt-5-mini").await.openai_error(403);
    assert!(
        e["message"].as_str().unwrap().contains("no known price"),
        "{e}"
    );
}

#[tokio::test]
async fn keys_never_appear_in_metrics_traces_or_errors() {
    let gw = gateway("", Limits::memory()).await;
    let (id, key) = gw.key(json!({"rpm": 1})).await;
    assert_eq!(gw.chat(&key, "openai/gpt-5").await.status.as_u16(), 200);
    let limited = gw.chat(&key, "openai/gpt-5").await;
    assert_eq!(limited.status.as_u16(), 429);
    assert!(!limited.text().contains(&key));
    let unknown = gw.chat(&format!("{key}x"), "openai/gpt-5").await;
    assert!(!unknown.text().contains(&key));
    gw.recorder.flush().await;
    // Metrics are for the operator (the admin key, or a key with read:all).
    let metrics = gw
        .send(
            Request::get("/metrics")
                .header("authorization", format!("Bearer {ADMIN}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(metrics.status.as_u16(), 200);
    let traces = gw
        .send(
            Request::get("/v1/inferences")
                .header("authorization", format!("Bearer {ADMIN}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(traces.status.as_u16(), 200, "{}", traces.text());
    assert!(
        traces.text().contains("gpt-5"),
        "the answered request was recorded: {}",
        traces.text()
    );
    for text in [metrics.text(), traces.text()] {
        assert!(!text.contains(&key[3..]), "key leaked: {text}");
        assert!(!text.contains(OPENAI.key), "provider key leaked: {text}");
        assert!(!text.contains(ADMIN), "admin key leaked");
    }
    let _ = id;
}
