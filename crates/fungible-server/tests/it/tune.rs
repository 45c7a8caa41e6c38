//! `/v1/tune/jobs` against the mock's OpenAI fine-tuning API: a dry run sends nothing, a
//! launch runs to the end as the poller reads it, the tuned model then answers under its
//! alias (the mock sees the tuned model's id) and takes its share of a route when promoted;
//! bad input is refused in OpenAI's error shape, and virtual keys cannot reach any of it.

use axum::body::Body;
use axum::http::Request;
use fungible_gateway::{ConfigFile, Gateway, GatewayConfig};
use fungible_mock::{Fallback, MockResponse, MockUpstream};
use fungible_server::{AppState, app};
use fungible_store::Store;
use serde_json::{Value, json};

use crate::TestResponse;

struct Tuning {
    mock: MockUpstream,
    app: axum::Router,
    state: AppState,
    _evals: tempfile::TempDir,
}

async fn tuning() -> Tuning {
    let mock = MockUpstream::start(Fallback::Fail).await;
    let toml = format!("[providers.openai]\nbase_url = \"{}/v1\"\n[models.support]\ntarget = \"openai/gpt-4.1-mini\"\n", mock.url());
    let file = ConfigFile::parse(&toml, "t.toml").expect("config");
    let env = |k: &str| (k == "OPENAI_API_KEY").then(|| "sk-test-openai-0123456789".to_owned());
    let config = GatewayConfig::resolve(file, &env).expect("config");
    let store = crate::recording::sqlite_store().await;
    let rows: Vec<fungible_datasets::versions::NewRow> = (0..12)
        .map(|i| {
            let e = fungible_datasets::Example::new(
                format!("r{i}"),
                fungible_datasets::Source::Manual,
                vec![fungible_types::Message::text(fungible_types::Role::User, format!("{i} + {i}?"))],
                vec![],
                fungible_datasets::assistant(Some(format!("{}", i + i)), vec![]),
            );
            (e, Some(fungible_datasets::Split::Train))
        })
        .collect();
    fungible_datasets::versions::put_rows(&store, "sums", rows).await.expect("rows");
    // Sums asked in words, with three held out, for the eval's few-shot arm.
    let held_out: Vec<fungible_datasets::versions::NewRow> = (0..15)
        .map(|i| {
            let e = fungible_datasets::Example::new(
                format!("w{i}"),
                fungible_datasets::Source::Manual,
                vec![fungible_types::Message::text(fungible_types::Role::User, format!("Please add these two numbers for me: {i} and {i}"))],
                vec![],
                fungible_datasets::assistant(Some(format!("{}", i + i)), vec![]),
            );
            (e, Some(if i < 12 { fungible_datasets::Split::Train } else { fungible_datasets::Split::Validation }))
        })
        .collect();
    fungible_datasets::versions::put_rows(&store, "sums-held-out", held_out).await.expect("rows");
    let evals = tempfile::tempdir().expect("temp dir");
    let state = AppState::new(Gateway::new(&config).expect("gateway"), config.max_body_bytes)
        .with_tuner(fungible_tune::Tuner::new(&config, Store::clone(&store)).with_eval_dir(evals.path()));
    let app = app(state.clone());
    Tuning { mock, app, state, _evals: evals }
}

impl Tuning {
    /// Launches `launch`, queues `answers` streamed answers for its eval, and polls (as
    /// `serve` does) until `done` says so or ten polls passed; the job's id and last state.
    async fn launch_and_poll(&self, launch: Value, answers: usize, done: impl Fn(&Value) -> bool) -> (String, Value) {
        let created = self.send("POST", "/v1/tune/jobs", Some(launch)).await;
        assert_eq!(created.status, 201, "{}", created.text());
        let id = created.json()["id"].as_str().expect("id").to_owned();
        for _ in 0..answers {
            self.mock.push(MockResponse::fixture(200, crate::fixtures().join("openai/stream.response.sse")));
        }
        let mut job = Value::Null;
        for _ in 0..10 {
            fungible_server::tune::poll_once(&self.state).await;
            job = self.send("GET", &format!("/v1/tune/jobs/{id}"), None).await.json();
            if done(&job) {
                break;
            }
        }
        (id, job)
    }

    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> TestResponse {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .expect("request");
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.expect("body").to_bytes();
        TestResponse { status, headers, body }
    }
}

#[tokio::test]
async fn a_job_launched_over_http_serves_its_model_when_it_finishes() {
    let t = tuning().await;
    let launch = json!({
        "provider": "openai", "model": "gpt-4.1-mini-2025-04-14", "dataset": "sums", "suffix": "sums", "alias": "sums-tuned",
        "hyperparameters": {"n_epochs": 2},
        "eval": {"split": "train", "scorers": ["exact"], "limit": 3}
    });

    let mut dry = launch.clone();
    dry["dry_run"] = json!(true);
    let plan = t.send("POST", "/v1/tune/jobs", Some(dry)).await;
    assert_eq!(plan.status, 200, "{}", plan.text());
    let plan = plan.json();
    assert_eq!((plan["plan"]["train_rows"].as_u64(), plan["plan"]["epochs"].as_u64()), (Some(12), Some(2)));
    assert!(plan["plan"]["estimated_cost"].as_f64().is_some_and(|c| c > 0.0), "{plan}");
    assert_eq!(t.mock.request_count(), 0, "a dry run sends nothing");

    // The eval once it succeeds: 3 items x (base, tuned), streamed.
    let (id, job) = t.launch_and_poll(launch, 6, |job| job["status"] == "succeeded").await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let tuned = job["fine_tuned_model"].as_str().expect("model").to_owned();
    // The eval it asked for ran through the gateway, base model against the tuned one.
    let eval = &job["eval_result"];
    assert_eq!(eval["state"], "done", "{job}");
    let models: Vec<(&str, u64)> = eval["models"]
        .as_array()
        .expect("models")
        .iter()
        .map(|m| (m["model"].as_str().unwrap_or_default(), m["answered"].as_u64().unwrap_or_default()))
        .collect();
    assert_eq!(models, [("openai/gpt-4.1-mini-2025-04-14", 3), ("sums-tuned", 3)]);
    assert!(std::path::Path::new(eval["run_dir"].as_str().expect("dir")).join("report.html").is_file());
    let sent_models: Vec<String> = t
        .mock
        .received()
        .iter()
        .filter(|r| r.uri.ends_with("/chat/completions"))
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok()?["model"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(sent_models.iter().filter(|m| *m == &tuned).count(), 3, "{sent_models:?}");

    // Served at once under its alias: listed, and a request reaches the tuned model.
    let models = t.send("GET", "/v1/models", None).await.json();
    assert!(models["data"].as_array().expect("data").iter().any(|m| m["id"] == "sums-tuned"), "{models}");
    t.mock.push(MockResponse::fixture(200, crate::fixtures().join("openai/plain.response.json")));
    let chat = t.send("POST", "/v1/chat/completions", Some(json!({"model": "sums-tuned", "messages": [{"role": "user", "content": "3 + 3?"}]}))).await;
    assert_eq!(chat.status, 200, "{}", chat.text());
    let sent: Value = serde_json::from_slice(&t.mock.received().last().expect("a request").body).expect("json");
    assert_eq!(sent["model"], json!(tuned));

    // Promoted: 25% of the route's first picks.
    let promoted = t.send("POST", &format!("/v1/tune/jobs/{id}/promote"), Some(json!({"route": "support", "percent": 25}))).await;
    assert_eq!(promoted.status, 200, "{}", promoted.text());
    let routes = t.send("GET", "/v1/routes", None).await.json();
    let support = routes["data"].as_array().expect("routes").iter().find(|r| r["route"] == "support").expect("support").clone();
    let shares: Vec<(String, Value)> = support["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .map(|t| (t["target"].as_str().unwrap_or_default().to_owned(), t["share_percent"].clone()))
        .collect();
    assert_eq!(shares, [("openai/gpt-4.1-mini".to_owned(), Value::Null), (format!("openai/{tuned}"), json!(25))]);

    // The list, and bad input.
    let list = t.send("GET", "/v1/tune/jobs", None).await.json();
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1));
    t.send("POST", &format!("/v1/tune/jobs/{id}/cancel"), None).await.openai_error(400);
    t.send("POST", &format!("/v1/tune/jobs/{id}/promote"), Some(json!({"route": "nope", "percent": 5}))).await.openai_error(400);
    t.send("GET", "/v1/tune/jobs/tune_nope", None).await.openai_error(404);
    let m = t.send("POST", "/v1/tune/jobs", Some(json!({"provider": "groq", "model": "x", "dataset": "sums"}))).await.openai_error(400);
    assert!(m["message"].as_str().unwrap_or_default().contains("not configured"), "{m}");
    t.send("POST", "/v1/tune/jobs", Some(json!({"provider": "openai", "model": "x", "dataset": "missing"}))).await.openai_error(404);
    t.send("POST", "/v1/tune/jobs", Some(json!({"provider": "openai", "model": "x", "dataset": "sums", "colour": "red"}))).await.openai_error(400);
}

/// On validation rows the eval has a third arm, the base model given the nearest train rows
/// as few-shot examples: what tuning has to beat with no training at all.
#[tokio::test]
async fn the_eval_compares_the_tuned_model_with_the_base_given_retrieved_examples() {
    let t = tuning().await;
    t.mock.answer_embeddings();
    let launch = json!({
        "provider": "openai", "model": "gpt-4.1-mini-2025-04-14", "dataset": "sums-held-out", "alias": "sums-tuned",
        "eval": {"scorers": ["exact"], "embedding_model": "openai/text-embedding-3-small"}
    });
    // 3 validation items x (base, base + examples, tuned).
    let (_, job) = t.launch_and_poll(launch, 9, |job| job["eval_result"]["state"] == "done").await;
    let models: Vec<(&str, u64)> = job["eval_result"]["models"]
        .as_array()
        .unwrap_or_else(|| panic!("no eval models: {job}"))
        .iter()
        .map(|m| (m["model"].as_str().unwrap_or_default(), m["answered"].as_u64().unwrap_or_default()))
        .collect();
    assert_eq!(
        models,
        [("openai/gpt-4.1-mini-2025-04-14", 3), ("openai/gpt-4.1-mini-2025-04-14+examples", 3), ("sums-tuned", 3)]
    );
    // The few-shot arm reached the base model with train rows before the question; the
    // held-out rows themselves are never examples.
    let chats: Vec<Value> = t
        .mock
        .received()
        .iter()
        .filter(|r| r.uri.ends_with("/chat/completions"))
        .filter_map(|r| serde_json::from_slice(&r.body).ok())
        .collect();
    let with_examples: Vec<&Value> = chats.iter().filter(|c| c["messages"].as_array().is_some_and(|m| m.len() > 1)).collect();
    assert_eq!(with_examples.len(), 3, "{chats:?}");
    for chat in with_examples {
        assert_eq!(chat["model"], "gpt-4.1-mini-2025-04-14");
        let texts: Vec<&str> = chat["messages"].as_array().expect("messages").iter().filter_map(|m| m["content"].as_str()).collect();
        let (question, examples) = texts.split_last().expect("a question");
        let held_out = (12..15).map(|i| format!("Please add these two numbers for me: {i} and {i}")).collect::<Vec<_>>();
        let held_out: Vec<&str> = held_out.iter().map(String::as_str).collect();
        assert!(held_out.contains(question), "{texts:?}");
        assert!(examples.iter().all(|t| !held_out.contains(t)), "a held-out row was an example: {texts:?}");
    }
}

#[test]
fn tuning_is_for_the_admin_key_only() {
    for path in ["/v1/tune/jobs", "/v1/tune/jobs/x/cancel"] {
        assert!(fungible_server::principal::needs(path).is_empty(), "{path}");
    }
}
