//! Recording through the HTTP API: every inbound request becomes a record in the store
//! (SQLite here, and PostgreSQL when `FUNGIBLE_TEST_POSTGRES_URL` is set), read back with
//! `/v1/inferences`, `/v1/feedback`, `/v1/stats` and `/metrics`.

use axum::body::Body;
use axum::http::Request;
use fungible_mock::MockResponse;
use fungible_server::{AppState, app};
use fungible_store::{Recorder, RecorderOptions, Store};
use serde_json::{Value, json};

use crate::{Harness, OPENAI};

pub(crate) struct Recorded {
    pub(crate) h: Harness,
    pub(crate) recorder: Recorder,
}

pub(crate) async fn sqlite_store() -> Store {
    let dir = std::env::temp_dir().join("fungible-server-recording-tests");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{}.db", fungible_store::new_id()));
    Store::open(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .expect("store opens")
}

/// A store in a fresh PostgreSQL schema, dropped with the guard (also when the test panics).
pub(crate) async fn postgres_store() -> Option<(Store, fungible_store::testing::PgSchema)> {
    let schema = fungible_store::testing::PgSchema::from_env()
        .await
        .expect("postgres")?;
    let store = Store::open(schema.url()).await.expect("store opens");
    Some((store, schema))
}

impl Recorded {
    pub(crate) async fn new(store: Store) -> Recorded {
        Recorded::with_raw_bodies(store, None).await
    }

    /// With `[store] raw_bodies` kept up to `raw` bytes each (`None`: off).
    async fn with_raw_bodies(store: Store, raw: Option<usize>) -> Recorded {
        let mut h = Harness::new(OPENAI).await;
        let recorder = Recorder::start(store.clone(), RecorderOptions::default());
        // The harness's app, rebuilt with a recorder.
        let toml = format!("[providers.openai]\nbase_url = \"{}/v1\"\n", h.mock.url());
        let file = fungible_gateway::ConfigFile::parse(&toml, "t.toml").expect("config");
        let env = |k: &str| (k == "OPENAI_API_KEY").then(|| OPENAI.key.to_owned());
        let config = fungible_gateway::GatewayConfig::resolve(file, &env).expect("config");
        let gateway = fungible_gateway::Gateway::new(&config).expect("gateway");
        let mut state = AppState::new(gateway, config.max_body_bytes).with_inflight_budget(config.max_inflight_body_bytes).with_recorder(store, recorder.clone());
        state.shared_mut().recording.raw_bodies = raw;
        h.app = app(state.clone());
        h.state = state;
        Recorded { h, recorder }
    }

    pub(crate) async fn get(&self, path: &str) -> crate::TestResponse {
        self.h
            .send(Request::get(path).body(Body::empty()).expect("request"))
            .await
    }

    /// The newest records, after the queue is written.
    pub(crate) async fn records(&self) -> Vec<Value> {
        self.recorder.flush().await;
        let list = self.get("/v1/inferences").await;
        assert_eq!(list.status, 200, "{}", list.text());
        list.json()["data"].as_array().cloned().unwrap_or_default()
    }
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Recorded::new(super::sqlite_store().await).await).await;
            }
            #[tokio::test]
            async fn postgres() {
                if let Some((store, _schema)) = super::postgres_store().await {
                    super::$name(super::Recorded::new(store).await).await;
                }
            }
        }
    };
}

async fn json_answer_is_recorded_with_cost(r: Recorded) {
    r.h.mock.push(MockResponse::fixture(
        200,
        crate::fixtures().join("openai/plain.response.json"),
    ));
    let body = Harness::inbound(OPENAI, "plain");
    let request = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("x-fungible-episode-id", "ep-7")
        .header("x-fungible-tags", "team=search, env=test")
        .body(Body::from(body))
        .expect("request");
    let response = r.h.send(request).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let records = r.records().await;
    assert_eq!(records.len(), 1);
    let id = records[0]["id"].as_str().expect("id").to_owned();
    let full = r.get(&format!("/v1/inferences/{id}")).await.json();
    assert_eq!(full["inbound"], "openai_chat");
    assert_eq!(full["requested_model"], "openai/gpt-5");
    assert_eq!(
        (full["provider"].as_str(), full["model"].as_str()),
        (Some("openai"), Some("gpt-5"))
    );
    assert_eq!(full["error"], Value::Null);
    assert_eq!(full["stream"], false);
    assert_eq!(full["user"], "user-42");
    assert_eq!(full["episode_id"], "ep-7");
    assert_eq!(full["tags"], json!({"team": "search", "env": "test"}));
    assert_eq!(
        full["request"]["messages"][1]["content"],
        response_text_of_request()
    );
    assert!(
        full["response"]["message"]["content"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{full}"
    );
    assert!(
        full["usage"]["input_tokens"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{full}"
    );
    // gpt-5 has a built-in price, so the cost is known and positive.
    assert!(full["cost"].as_f64().is_some_and(|c| c > 0.0), "{full}");
    assert_eq!(full["attempts"][0]["status"], "ok");
    assert_eq!(full["attempts"][0]["cost"], full["cost"]);
    assert_eq!(full["feedback"], json!([]));
}
both!(json_answer_is_recorded_with_cost);

fn response_text_of_request() -> Value {
    // The canonical form of `{"role":"user","content":"Say hello."}`.
    let req: Value = serde_json::from_str(&Harness::inbound(OPENAI, "plain")).expect("json");
    let canonical =
        fungible_server::openai_chat::parse_request(req.to_string().as_bytes()).expect("parses");
    serde_json::to_value(&canonical.messages[1].content).expect("json")
}

async fn stream_is_recorded_at_its_end_with_ttft(r: Recorded) {
    r.h.mock.push(MockResponse::fixture(
        200,
        crate::fixtures().join("openai/stream.response.sse"),
    ));
    let response =
        r.h.post("/v1/chat/completions", Harness::inbound(OPENAI, "stream"))
            .await;
    assert_eq!(response.status, 200);
    let records = r.records().await;
    assert_eq!(records.len(), 1);
    let rec = &records[0];
    assert_eq!(rec["stream"], true);
    assert_eq!(rec["error"], Value::Null);
    assert!(rec["ttft_ms"].as_f64().is_some(), "{rec}");
    assert!(
        rec["ttft_ms"].as_f64() <= rec["latency_ms"].as_f64(),
        "{rec}"
    );
    let text = rec["response"]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    let streamed: String = response
        .sse_data()
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, streamed);
}
both!(stream_is_recorded_at_its_end_with_ttft);

async fn failures_are_recorded_with_their_class(r: Recorded) {
    r.h.mock.push(MockResponse::json(
        429,
        r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#,
    ));
    let response =
        r.h.post("/v1/chat/completions", Harness::inbound(OPENAI, "plain"))
            .await;
    assert_eq!(response.status, 429);
    let unknown =
        r.h.post(
            "/v1/chat/completions",
            r#"{"model":"nope/x","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await;
    assert_eq!(unknown.status, 404);
    let records = r.records().await;
    let classes: Vec<_> = records
        .iter()
        .map(|r| r["error"].as_str().unwrap_or("ok").to_owned())
        .collect();
    assert_eq!(classes, ["unknown_model", "rate_limited"]);
    // Neither billed a token: their cost is known, and zero.
    for rec in &records {
        assert_eq!(rec["cost"], 0.0, "{rec}");
    }
    let id = records[1]["id"].as_str().expect("id");
    let full = r.get(&format!("/v1/inferences/{id}")).await.json();
    assert_eq!(full["attempts"][0]["status"], "failed", "{full}");
    assert_eq!(full["attempts"][0]["cost"], 0.0, "{full}");
    let metrics = r.get("/metrics").await.text();
    assert!(metrics.contains(r#"fungible_errors_total{class="rate_limited",model="gpt-5",provider="openai",route=""} 1"#), "{metrics}");
    assert!(
        metrics.contains("fungible_store_written_total 2"),
        "{metrics}"
    );
}
both!(failures_are_recorded_with_their_class);

async fn feedback_on_known_and_unknown_ids(r: Recorded) {
    r.h.mock.push(MockResponse::fixture(
        200,
        crate::fixtures().join("openai/plain.response.json"),
    ));
    let request = Request::post("/v1/chat/completions")
        .header("x-fungible-episode-id", "ep-9")
        .body(Body::from(Harness::inbound(OPENAI, "plain")))
        .expect("request");
    assert_eq!(r.h.send(request).await.status, 200);
    // No flush first: feedback finds a record still in the queue.
    let unknown =
        r.h.post("/v1/feedback", r#"{"inference_id":"nope","boolean":true}"#)
            .await;
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    let id = r.records().await[0]["id"].as_str().expect("id").to_owned();
    let ok = r
        .h
        .post("/v1/feedback", json!({"inference_id": id, "score": 0.5, "comment": "fine", "demonstration": {"content": "Hello!"}}).to_string())
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let episode =
        r.h.post("/v1/feedback", r#"{"episode_id":"ep-9","boolean":false}"#)
            .await;
    assert_eq!(episode.status, 200, "{}", episode.text());
    assert_eq!(
        r.h.post("/v1/feedback", r#"{"episode_id":"ep-0","boolean":false}"#)
            .await
            .status,
        404
    );
    assert_eq!(
        r.h.post("/v1/feedback", json!({"inference_id": id}).to_string())
            .await
            .status,
        400
    );
    let full = r.get(&format!("/v1/inferences/{id}")).await.json();
    assert_eq!(full["feedback"][0]["score"], 0.5);
    assert_eq!(
        full["feedback"][0]["demonstration"],
        json!({"content": "Hello!"})
    );
    assert_eq!(r.get("/v1/inferences/nope").await.status, 404);
}
both!(feedback_on_known_and_unknown_ids);

async fn stats_and_metrics_count_requests(r: Recorded) {
    for _ in 0..3 {
        r.h.mock.push(MockResponse::fixture(
            200,
            crate::fixtures().join("openai/plain.response.json"),
        ));
        assert_eq!(
            r.h.post("/v1/chat/completions", Harness::inbound(OPENAI, "plain"))
                .await
                .status,
            200
        );
    }
    r.recorder.flush().await;
    let stats = r.get("/v1/stats?by=model").await.json();
    assert_eq!(stats["data"][0]["key"], "openai/gpt-5");
    assert_eq!(stats["data"][0]["requests"], 3);
    assert_eq!(stats["data"][0]["errors"], 0);
    assert_eq!(r.get("/v1/stats?by=colour").await.status, 400);
    // A series per day and model; a split needs a time grouping.
    let split = r.get("/v1/stats?by=day&split=model").await.json();
    assert_eq!(split["data"][0]["split"], "openai/gpt-5");
    assert_eq!(split["data"][0]["requests"], 3);
    assert!(split["data"][0]["key"].as_str().is_some_and(|k| k.len() == 10));
    // Not streamed: no time to first token.
    assert!(split["data"][0]["p50_ttft_ms"].is_null());
    for bad in ["/v1/stats?by=model&split=route", "/v1/stats?by=day&split=hour", "/v1/stats?by=day&split=colour"] {
        let response = r.get(bad).await;
        assert_eq!(response.status, 400, "{bad}");
        assert_eq!(response.json()["error"]["param"], "split", "{bad}");
    }
    let metrics = r.get("/metrics").await;
    assert!(
        metrics.headers["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/plain")
    );
    let text = metrics.text();
    assert!(
        text.contains(r#"fungible_requests_total{model="gpt-5",provider="openai",route=""} 3"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"fungible_request_duration_seconds_count{model="gpt-5",provider="openai",route=""} 3"#
        ),
        "{text}"
    );
    assert!(text.contains("fungible_cost_usd_total{"), "{text}");
    assert!(
        text.contains(r#"fungible_tokens_total{kind="input""#),
        "{text}"
    );
}
both!(stats_and_metrics_count_requests);

#[tokio::test]
async fn without_a_store_the_read_back_routes_say_so() {
    let h = Harness::new(OPENAI).await;
    let response = h
        .send(
            Request::get("/v1/inferences")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(response.status, 503);
    let metrics = h
        .send(
            Request::get("/metrics")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(metrics.status, 200);
}

#[tokio::test]
async fn bad_inference_queries_are_answered_in_openai_error_shape() {
    let r = Recorded::new(sqlite_store().await).await;
    let cases = [
        ("/v1/inferences?limit=ten", "limit"),
        ("/v1/inferences?colour=red", "colour"),
        ("/v1/inferences?errors=maybe", "errors"),
        ("/v1/stats?since_ms=yesterday", "since_ms"),
    ];
    for (path, named) in cases {
        let response = r.get(path).await;
        let error = response.openai_error(400);
        assert_eq!(error["type"], "invalid_request_error", "{path}");
        assert_eq!(response.headers["content-type"], "application/json", "{path}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains("query string") && message.contains(named), "{path}: {message}");
    }
}

/// The attack: 100,000 `metadata` keys in one request and 8,000 `x-fungible-tags` in
/// another once made 108,000 tag rows. Each is now a 400 that names the limit, and neither
/// reaches the upstream or the store.
async fn tag_amplification_is_refused_and_not_recorded(r: Recorded) {
    let metadata: serde_json::Map<String, Value> = (0..100_000).map(|i| (format!("k{i}"), json!("v"))).collect();
    let body = json!({
        "model": "openai/gpt-5",
        "messages": [{"role": "user", "content": "hi"}],
        "metadata": metadata,
    });
    let response = r.h.post("/v1/chat/completions", body.to_string()).await;
    let error = response.openai_error(400);
    assert_eq!(error["param"], "metadata");
    assert_eq!(error["message"], "metadata: at most 16 pairs are allowed, got 100000");
    let mut body = json!({"model": "openai/gpt-5", "input": "hi", "metadata": {}});
    body["metadata"] = Value::Object(metadata.into_iter().take(17).collect());
    let response = r.h.post("/v1/responses", body.to_string()).await;
    assert_eq!(response.openai_error(400)["param"], "metadata");

    let tags = (0..8000).map(|i| format!("t{i}=v")).collect::<Vec<_>>().join(",");
    for path in ["/v1/chat/completions", "/v1/messages"] {
        let request = Request::post(path)
            .header("content-type", "application/json")
            .header("x-fungible-tags", &tags)
            .body(Body::from(Harness::inbound(OPENAI, "plain")))
            .expect("request");
        let response = r.h.send(request).await;
        assert_eq!(response.status, 400, "{path}: {}", response.text());
        assert!(response.text().contains("x-fungible-tags: at most 64 tags are allowed, got 8000"), "{path}: {}", response.text());
    }
    assert_eq!(r.h.mock.request_count(), 0, "a refused request reached the upstream");
    assert_eq!(r.records().await, Vec::<Value>::new(), "a refused request was recorded");

    // Within the limits, the tags are recorded.
    r.h.mock.push(MockResponse::fixture(200, crate::fixtures().join("openai/plain.response.json")));
    let request = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("x-fungible-tags", (0..64).map(|i| format!("t{i}=v")).collect::<Vec<_>>().join(","))
        .body(Body::from(Harness::inbound(OPENAI, "plain")))
        .expect("request");
    let response = r.h.send(request).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let records = r.records().await;
    assert_eq!(records.len(), 1);
    let id = records[0]["id"].as_str().expect("id");
    let full = r.get(&format!("/v1/inferences/{id}")).await.json();
    assert_eq!(full["tags"].as_object().map(|t| t.len()), Some(64), "{full}");
}
both!(tag_amplification_is_refused_and_not_recorded);

async fn every_inbound_api_is_recorded(r: Recorded) {
    let cases = [
        ("/v1/messages", json!({"model": "openai/gpt-5", "max_tokens": 50, "messages": [{"role": "user", "content": "Say hello."}]})),
        ("/v1beta/models/openai/gpt-5:generateContent", json!({"contents": [{"role": "user", "parts": [{"text": "Say hello."}]}]})),
        ("/v1/responses", json!({"model": "openai/gpt-5", "input": "Say hello.", "store": false})),
    ];
    for (path, body) in &cases {
        r.h.mock.push(MockResponse::fixture(200, crate::fixtures().join("openai/plain.response.json")));
        let response = r.h.post(path, body.to_string()).await;
        assert_eq!(response.status, 200, "{path}: {}", response.text());
    }
    let records = r.records().await;
    let inbound: Vec<_> = records.iter().map(|r| r["inbound"].as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(inbound, ["openai_responses", "gemini", "anthropic_messages"]);
    for rec in &records {
        assert_eq!((rec["provider"].as_str(), rec["error"].as_str()), (Some("openai"), None), "{rec}");
        assert!(rec["response"]["message"]["content"].as_str().is_some_and(|s| !s.is_empty()), "{rec}");
    }
}
both!(every_inbound_api_is_recorded);

async fn key_and_tags_come_from_the_principal(mut r: Recorded) {
    use axum::middleware::{Next, from_fn};
    // What the auth middleware does: a principal on the request, before recording sees it.
    r.h.app = r.h.app.clone().layer(from_fn(
        |mut request: Request<Body>, next: Next| async move {
            request
                .extensions_mut()
                .insert(fungible_server::principal::Principal {
                    key_id: "key_abc".into(),
                    key_name: Some("search team".into()),
                    tags: vec!["team=billing".into(), "prod".into()],
                    scopes: fungible_store::Scope::DEFAULT.to_vec(),
                });
            next.run(request).await
        },
    ));
    r.h.mock.push(MockResponse::fixture(
        200,
        crate::fixtures().join("openai/plain.response.json"),
    ));
    let request = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("x-fungible-tags", "team=search, env=test")
        .body(Body::from(Harness::inbound(OPENAI, "plain")))
        .expect("request");
    assert_eq!(r.h.send(request).await.status, 200);
    let records = r.records().await;
    assert_eq!(records[0]["key_id"], "key_abc");
    assert_eq!(records[0]["cache_hit"], false);
    // The key's tags win over the client's.
    assert_eq!(
        records[0]["tags"],
        json!({"team": "billing", "env": "test", "prod": true})
    );
    let by_key = r.get("/v1/stats?by=key").await.json();
    assert_eq!(by_key["data"][0]["key"], "key_abc");
    let by_tag = r.get("/v1/stats?by=tag").await.json();
    let tags: Vec<_> = by_tag["data"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| row["key"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(tags, ["env=test", "prod", "team=billing"]);
}
both!(key_and_tags_come_from_the_principal);

/// `[store] raw_bodies`: each upstream call's bodies byte for byte (a stream's raw SSE),
/// capped, never holding the provider key; off by default.
async fn raw_bodies_are_kept_only_when_asked(store: Store) {
    let plain = std::fs::read(crate::fixtures().join("openai/plain.response.json")).expect("fixture");
    let sse = std::fs::read(crate::fixtures().join("openai/stream.response.sse")).expect("fixture");
    let r = Recorded::with_raw_bodies(store.clone(), Some(1 << 20)).await;
    r.h.mock.push(MockResponse::fixture(200, crate::fixtures().join("openai/plain.response.json")));
    r.h.mock.push(MockResponse::fixture(200, crate::fixtures().join("openai/stream.response.sse")));
    assert_eq!(r.h.post("/v1/chat/completions", Harness::inbound(OPENAI, "plain")).await.status, 200);
    assert_eq!(r.h.post("/v1/chat/completions", Harness::inbound(OPENAI, "stream")).await.status, 200);
    let sent = r.h.mock.received();
    let records = r.records().await;
    assert_eq!(records.len(), 2);
    for rec in &records {
        let full = r.get(&format!("/v1/inferences/{}", rec["id"].as_str().expect("id"))).await;
        assert!(!full.text().contains(OPENAI.key), "the provider key is never recorded");
        let full = full.json();
        let raw = &full["raw"][0];
        assert_eq!(raw["provider"], "openai");
        assert_eq!(raw["truncated"], false);
        let (request, expected) = if full["stream"] == true {
            (&sent[1], &sse)
        } else {
            (&sent[0], &plain)
        };
        assert_eq!(raw["request"].as_str().expect("text").as_bytes(), &request.body[..]);
        assert_eq!(raw["response"].as_str().expect("text").as_bytes(), &expected[..]);
    }

    // Capped: cut at the cap and marked.
    let r = Recorded::with_raw_bodies(store.clone(), Some(40)).await;
    r.h.mock.push(MockResponse::fixture(200, crate::fixtures().join("openai/stream.response.sse")));
    assert_eq!(r.h.post("/v1/chat/completions", Harness::inbound(OPENAI, "stream")).await.status, 200);
    let id = r.records().await[0]["id"].as_str().expect("id").to_owned();
    let full = r.get(&format!("/v1/inferences/{id}")).await.json();
    assert_eq!(full["raw"][0]["truncated"], true);
    assert_eq!(full["raw"][0]["response"].as_str().expect("text").as_bytes(), &sse[..40]);
    assert!(full["raw"][0]["request"].as_str().expect("text").len() <= 40);

    // Off (the default): nothing kept.
    let r = Recorded::new(store).await;
    r.h.mock.push(MockResponse::fixture(200, crate::fixtures().join("openai/plain.response.json")));
    assert_eq!(r.h.post("/v1/chat/completions", Harness::inbound(OPENAI, "plain")).await.status, 200);
    let id = r.records().await[0]["id"].as_str().expect("id").to_owned();
    let full = r.get(&format!("/v1/inferences/{id}")).await.json();
    assert_eq!(full.get("raw"), None, "{full}");
}

mod raw_bodies {
    #[tokio::test]
    async fn sqlite() {
        super::raw_bodies_are_kept_only_when_asked(super::sqlite_store().await).await;
    }
    #[tokio::test]
    async fn postgres() {
        if let Some((store, _schema)) = super::postgres_store().await {
            super::raw_bodies_are_kept_only_when_asked(store).await;
        }
    }
}
