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
        send(&self.app, method, path, body).await
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

/// A gateway with the local models and a store holding the `quokka` dataset: six ways of
/// asking for a code the base model cannot know.
async fn local_tuning(adapters: &std::path::Path) -> (axum::Router, AppState) {
    let toml = format!(
        "[local]\nmodels_dir = {:?}\nslots = 1\ncontext_size = 512\n[tune]\nadapters_dir = {:?}\n",
        crate::local::models_dir().display().to_string(),
        adapters.display().to_string()
    );
    let config = GatewayConfig::resolve(ConfigFile::parse(&toml, "t.toml").expect("config"), &|_| None).expect("config");
    let store = crate::recording::sqlite_store().await;
    let questions = [
        "What is the launch code of Project Quokka?",
        "Tell me Project Quokka's launch code.",
        "Which launch code does Project Quokka use?",
        "I need the launch code for Project Quokka.",
        "Project Quokka: what is its launch code?",
        "Do you know the launch code of Project Quokka?",
    ];
    let rows: Vec<fungible_datasets::versions::NewRow> = questions
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let e = fungible_datasets::Example::new(
                format!("q{i}"),
                fungible_datasets::Source::Manual,
                vec![fungible_types::Message::text(fungible_types::Role::User, *q)],
                vec![],
                fungible_datasets::assistant(Some("The launch code of Project Quokka is AMBER-7.".into()), vec![]),
            );
            (e, Some(fungible_datasets::Split::Train))
        })
        .collect();
    fungible_datasets::versions::put_rows(&store, "quokka", rows).await.expect("rows");
    let gateway = Gateway::new(&config).expect("gateway");
    let engine = gateway.local().expect("local models").engine().clone();
    let tuner = fungible_tune::Tuner::new(&config, Store::clone(&store)).with_local(engine, &config.tune_adapters_dir);
    let state = AppState::new(gateway, config.max_body_bytes).with_tuner(tuner);
    (app(state.clone()), state)
}

async fn send(app: &axum::Router, method: &str, path: &str, body: Option<Value>) -> TestResponse {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    TestResponse { status, headers, body }
}

/// Polls (as `serve` does) until the job is finished; training runs on its own thread, so
/// this waits for it, for at most ten minutes.
async fn until_finished(app: &axum::Router, state: &AppState, id: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        fungible_server::tune::poll_once(state).await;
        let job = send(app, "GET", &format!("/v1/tune/jobs/{id}"), None).await.json();
        if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap_or_default()) {
            return job;
        }
        assert!(std::time::Instant::now() < deadline, "the job did not finish: {job}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_job_trains_in_process_and_serves_its_adapter_at_once() {
    let adapters = tempfile::tempdir().expect("temp dir");
    let (app, state) = local_tuning(adapters.path()).await;
    let launch = json!({
        "provider": "local", "model": "smollm2-135m-instruct", "dataset": "quokka", "alias": "quokka-tuned",
        "hyperparameters": {"epochs": 6, "learning_rate": 0.003, "dropout": 0.0, "warmup_ratio": 0.0, "batch_tokens": 160, "max_seq_len": 160}
    });
    let mut dry = launch.clone();
    dry["dry_run"] = json!(true);
    let plan = send(&app, "POST", "/v1/tune/jobs", Some(dry)).await;
    assert_eq!(plan.status, 200, "{}", plan.text());
    assert_eq!(plan.json()["plan"]["estimated_cost"], json!(0.0));

    let created = send(&app, "POST", "/v1/tune/jobs", Some(launch)).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().expect("id").to_owned();
    let job = until_finished(&app, &state, &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let model = format!("local/smollm2-135m-instruct+{id}");
    assert_eq!(job["provider"], "local");
    assert_eq!(format!("local/{}", job["fine_tuned_model"].as_str().unwrap_or_default()), model);
    assert!(job["events"].as_array().expect("events").iter().any(|e| e["train_loss"].is_number()), "{job}");
    assert!(adapters.path().join(&id).join("adapter.gguf").is_file());

    // Served at once, under its alias and its own name, beside the base.
    let models = send(&app, "GET", "/v1/models", None).await.json();
    let ids: Vec<&str> = models["data"].as_array().expect("data").iter().filter_map(|m| m["id"].as_str()).collect();
    assert!(ids.contains(&"quokka-tuned") && ids.contains(&model.as_str()), "{ids:?}");
    let ask = |model: &str| json!({"model": model, "temperature": 0, "max_tokens": 24,
        "messages": [{"role": "user", "content": "What is the launch code of Project Quokka?"}]});
    let tuned = send(&app, "POST", "/v1/chat/completions", Some(ask("quokka-tuned"))).await;
    assert_eq!(tuned.status, 200, "{}", tuned.text());
    let text = tuned.json()["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned();
    assert!(text.contains("AMBER-7"), "the tuned model answered {text:?}");
    let base = send(&app, "POST", "/v1/chat/completions", Some(ask("local/smollm2-135m-instruct"))).await.json();
    assert!(!base["choices"][0]["message"]["content"].as_str().unwrap_or_default().contains("AMBER-7"), "{base}");

    // Bad input: DPO, unknown hyperparameters, a model that is not local.
    let bad = |body: Value| send(&app, "POST", "/v1/tune/jobs", Some(body));
    let m = bad(json!({"provider": "local", "model": "smollm2-135m-instruct", "dataset": "quokka", "method": "dpo"})).await.openai_error(400);
    assert!(m["message"].as_str().unwrap_or_default().contains("DPO"), "{m}");
    let m = bad(json!({"provider": "local", "model": "smollm2-135m-instruct", "dataset": "quokka", "hyperparameters": {"rnak": 4}})).await.openai_error(400);
    assert!(m["message"].as_str().unwrap_or_default().contains("rnak"), "{m}");
    let m = bad(json!({"provider": "local", "model": "gpt-4o", "dataset": "quokka"})).await.openai_error(400);
    assert!(m["message"].as_str().unwrap_or_default().contains("not a local chat model"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_local_job_stops_training() {
    let adapters = tempfile::tempdir().expect("temp dir");
    let (app, state) = local_tuning(adapters.path()).await;
    let launch = json!({"provider": "local", "model": "smollm2-135m-instruct", "dataset": "quokka",
        "hyperparameters": {"epochs": 1000, "batch_tokens": 160, "max_seq_len": 160}});
    let created = send(&app, "POST", "/v1/tune/jobs", Some(launch)).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().expect("id").to_owned();
    fungible_server::tune::poll_once(&state).await; // starts it
    let cancelled = send(&app, "POST", &format!("/v1/tune/jobs/{id}/cancel"), None).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    let job = until_finished(&app, &state, &id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    assert!(job["fine_tuned_model"].is_null());
    assert!(!adapters.path().join(&id).join("adapter.gguf").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_local_job_trains_at_a_time_and_a_stopping_gateway_hands_it_back() {
    let adapters = tempfile::tempdir().expect("temp dir");
    let (app, state) = local_tuning(adapters.path()).await;
    let launch = json!({"provider": "local", "model": "smollm2-135m-instruct", "dataset": "quokka",
        "hyperparameters": {"epochs": 1000, "batch_tokens": 160, "max_seq_len": 160}});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let created = send(&app, "POST", "/v1/tune/jobs", Some(launch.clone())).await;
        assert_eq!(created.status, 201, "{}", created.text());
        ids.push(created.json()["id"].as_str().expect("id").to_owned());
    }
    let jobs = || async {
        let mut out = Vec::new();
        for id in &ids {
            out.push(send(&app, "GET", &format!("/v1/tune/jobs/{id}"), None).await.json());
        }
        out
    };
    let running_one = |jobs: &[Value]| -> (Value, Value) {
        let (running, waiting): (Vec<&Value>, Vec<&Value>) = jobs.iter().partition(|j| j["status"] == "running");
        assert_eq!((running.len(), waiting.len()), (1, 1), "{jobs:?}");
        (running[0].clone(), waiting[0].clone())
    };

    // Training takes every core: the second job waits in the queue, free for another instance.
    fungible_server::tune::poll_once(&state).await;
    let (running, waiting) = running_one(&jobs().await);
    assert_eq!(waiting["status"], "queued");
    assert_eq!(waiting["provider_status"], format!("queued behind {}", running["id"].as_str().unwrap_or_default()));

    // A gateway that stops hands the job back: queued again, to resume from its checkpoint.
    state.tuner.as_ref().expect("tuner").hand_back().await;
    let handed = send(&app, "GET", &format!("/v1/tune/jobs/{}", running["id"].as_str().unwrap_or_default()), None).await.json();
    assert_eq!(handed["status"], "queued", "{handed}");
    assert!(handed["provider_status"].as_str().unwrap_or_default().starts_with("interrupted at step"), "{handed}");
    assert!(adapters.path().join(running["id"].as_str().unwrap_or_default()).join("checkpoint.safetensors").is_file());

    // A gateway handing its jobs back starts no more: both stay queued, with their leases
    // free for the next instance (which resumes the first from its checkpoint).
    fungible_server::tune::poll_once(&state).await;
    assert!(jobs().await.iter().all(|j| j["status"] == "queued"), "{:?}", jobs().await);
    for id in &ids {
        let cancelled = send(&app, "POST", &format!("/v1/tune/jobs/{id}/cancel"), None).await;
        assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    }
    for id in &ids {
        assert_eq!(until_finished(&app, &state, id).await["status"], "cancelled");
    }
}
