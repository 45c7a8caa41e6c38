//! The runner end to end: scoring, error accounting, resume after a kill, the spend cap, the
//! pairwise judge (with a scripted backend), and the real gateway against the mock upstream.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fungible_eval::backend::{Answer, BoxFuture, CallError, ChatBackend, GatewayBackend};
use fungible_eval::dataset::Dataset;
use fungible_eval::results::{ItemResult, PairwiseResult, RunMeta};
use fungible_eval::runner::{self, RunOptions, read_jsonl};
use fungible_eval::scorers::ScorerSet;
use fungible_gateway::{ConfigFile, Gateway, GatewayConfig};
use fungible_mock::{Fallback, MockResponse, MockUpstream};
use fungible_types::{ChatRequest, Usage};

/// Answers by rule: `good` answers "The answer is N" with N from the prompt's `=N` marker,
/// `bad` answers N+1, `flaky` fails on prompts containing `fail`; every answer costs $0.01.
/// A model named `judge` answers pairwise prompts by `judge_rule`.
struct Scripted {
    calls: AtomicUsize,
    seen: Mutex<Vec<String>>,
    judge_rule: fn(&str) -> String,
}

impl Scripted {
    fn new() -> Arc<Scripted> {
        Arc::new(Scripted {
            calls: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            judge_rule: |_| "WINNER: 1".into(),
        })
    }
}

fn marker(prompt: &str) -> i64 {
    prompt
        .split("=")
        .nth(1)
        .and_then(|s| s.trim().split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl ChatBackend for Scripted {
    fn chat(&self, req: ChatRequest) -> BoxFuture<'_, Result<Answer, CallError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let prompt = req
                .messages
                .last()
                .map(|m| m.joined_text())
                .unwrap_or_default();
            self.seen
                .lock()
                .unwrap()
                .push(format!("{} {}", req.model, prompt));
            let text = match req.model.as_str() {
                "good" => format!("Let me think. The answer is {}.", marker(&prompt)),
                "bad" => format!("The answer is {}.", marker(&prompt) + 1),
                "flaky" if prompt.contains("fail") => {
                    return Err(CallError::new("rate_limited", "slow down"));
                }
                "flaky" => format!("The answer is {}.", marker(&prompt)),
                "judge" => (self.judge_rule)(&prompt),
                other => return Err(CallError::new("unknown_model", format!("no model {other}"))),
            };
            Ok(Answer {
                text,
                target: Some(format!("scripted/{}", req.model)),
                latency_ms: 3,
                ttft_ms: Some(1),
                usage: Some(Usage {
                    input_tokens: 10,
                    output_tokens: 5,
                    ..Usage::default()
                }),
                cost_usd: Some(0.01),
            })
        })
    }

    fn embed(
        &self,
        _model: &str,
        inputs: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Vec<f32>>, CallError>> {
        Box::pin(async move { Ok(inputs.iter().map(|s| vec![s.len() as f32, 1.0]).collect()) })
    }
}

/// `n` items "What is ...? =K" with reference K; items whose index is in `failing` say "fail".
fn dataset(n: usize, failing: &[usize]) -> Dataset {
    let text: String = (0..n)
        .map(|i| {
            let word = if failing.contains(&i) { "fail" } else { "ok" };
            format!("{{\"id\": \"q{i}\", \"prompt\": \"{word}: what is {i} + {i}? ={}\", \"reference\": \"{}\"}}\n", 2 * i, 2 * i)
        })
        .collect();
    Dataset::parse(&text, "inline.jsonl", None).unwrap()
}

fn options(dir: &Path, models: &[&str]) -> RunOptions {
    let mut o = RunOptions::new(
        models.iter().map(|m| m.to_string()).collect(),
        dir.to_owned(),
    );
    o.concurrency = 4;
    o
}

/// Results keyed by (item, model), without the timings (which differ run to run).
fn by_pair(dir: &Path) -> BTreeMap<(String, String), ItemResult> {
    read_jsonl::<ItemResult>(&dir.join("results.jsonl"))
        .unwrap()
        .into_iter()
        .map(|mut r| {
            r.latency_ms = 0;
            r.ttft_ms = None;
            ((r.item_id.clone(), r.model.clone()), r)
        })
        .collect()
}

#[tokio::test]
async fn every_item_of_every_model_is_scored_and_errors_are_not_counted_as_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Scripted::new();
    let outcome = runner::run(
        &dataset(10, &[2, 5]),
        backend.clone(),
        options(dir.path(), &["good", "bad", "flaky"]),
    )
    .await
    .unwrap();
    assert_eq!(outcome.answered, 30);
    assert_eq!(outcome.errors, 2);
    assert!(
        (outcome.cost_usd - 0.28).abs() < 1e-9,
        "{}",
        outcome.cost_usd
    );

    let results = by_pair(dir.path());
    assert_eq!(results.len(), 30, "one line per (item, model)");
    let good = &results[&("q3".to_owned(), "good".to_owned())];
    assert_eq!(good.passed, Some(true));
    assert_eq!(
        good.scores["numeric"], 1.0,
        "numeric is the default for numeric references"
    );
    assert_eq!(good.details["numeric"], "got 6, expected 6");
    assert_eq!(good.target.as_deref(), Some("scripted/good"));
    assert_eq!(
        (good.input_tokens, good.output_tokens, good.cost_usd),
        (Some(10), Some(5), Some(0.01))
    );
    let bad = &results[&("q3".to_owned(), "bad".to_owned())];
    assert_eq!(bad.passed, Some(false));
    assert_eq!(bad.scores["numeric"], 0.0);
    let failed = &results[&("q5".to_owned(), "flaky".to_owned())];
    assert_eq!(failed.error.as_deref(), Some("rate_limited: slow down"));
    assert_eq!(failed.passed, None, "a failed request is not scored");
    assert!(failed.scores.is_empty() && failed.output.is_none());
    let flaky_ok = results
        .values()
        .filter(|r| r.model == "flaky" && r.passed == Some(true))
        .count();
    assert_eq!(flaky_ok, 8);

    let meta: RunMeta =
        serde_json::from_slice(&std::fs::read(dir.path().join("run.json")).unwrap()).unwrap();
    assert_eq!(meta.models, ["good", "bad", "flaky"]);
    assert_eq!(meta.scorers, ["numeric"]);
    assert_eq!(meta.items, 10);
    assert!(meta.finished_at.is_some());
    assert!(!meta.stopped_by_budget);

    // The report counts the failures in the error rate, not against the accuracy.
    let report = fungible_eval::report::write_report(dir.path())
        .unwrap()
        .report;
    let stats: HashMap<&str, _> = report
        .models
        .iter()
        .map(|m| (m.model.as_str(), m))
        .collect();
    let flaky = stats["flaky"];
    assert_eq!((flaky.results, flaky.answered, flaky.errors), (10, 8, 2));
    assert_eq!(flaky.error_rate, Some(0.2));
    assert_eq!(flaky.accuracy, Some(1.0));
    assert_eq!(flaky.error_kinds, [("rate_limited".to_owned(), 2)]);
    assert_eq!(stats["good"].accuracy, Some(1.0));
    assert_eq!(stats["bad"].accuracy, Some(0.0));
    assert_eq!(stats["bad"].error_rate, Some(0.0));
}

#[tokio::test]
async fn a_killed_run_resumes_to_the_same_results() {
    let full = tempfile::tempdir().unwrap();
    let data = dataset(12, &[4]);
    runner::run(
        &data,
        Scripted::new(),
        options(full.path(), &["good", "flaky"]),
    )
    .await
    .unwrap();
    let want = by_pair(full.path());

    // The same run, killed after 7 results, the 8th cut mid-line.
    let killed = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(full.path().join("results.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut partial: String = lines[..7].iter().map(|l| format!("{l}\n")).collect();
    partial.push_str(&lines[7][..lines[7].len() / 2]);
    std::fs::write(killed.path().join("results.jsonl"), partial).unwrap();
    std::fs::copy(full.path().join("run.json"), killed.path().join("run.json")).unwrap();

    let backend = Scripted::new();
    let outcome = runner::run(
        &data,
        backend.clone(),
        options(killed.path(), &["good", "flaky"]),
    )
    .await
    .unwrap();
    assert_eq!(outcome.resumed, 7);
    assert_eq!(outcome.answered, 24 - 7);
    assert_eq!(
        backend.calls.load(Ordering::SeqCst),
        17,
        "only the missing pairs are asked again"
    );
    assert_eq!(by_pair(killed.path()), want);
    let meta: RunMeta =
        serde_json::from_slice(&std::fs::read(killed.path().join("run.json")).unwrap()).unwrap();
    let original: RunMeta =
        serde_json::from_slice(&std::fs::read(full.path().join("run.json")).unwrap()).unwrap();
    assert_eq!(meta.run_id, original.run_id, "a resumed run keeps its id");

    // Nothing left: a third invocation asks nothing.
    let again = Scripted::new();
    let outcome = runner::run(
        &data,
        again.clone(),
        options(killed.path(), &["good", "flaky"]),
    )
    .await
    .unwrap();
    assert_eq!(
        (outcome.answered, again.calls.load(Ordering::SeqCst)),
        (0, 0)
    );
}

#[tokio::test]
async fn a_run_directory_of_another_dataset_is_not_resumed() {
    let dir = tempfile::tempdir().unwrap();
    runner::run(
        &dataset(2, &[]),
        Scripted::new(),
        options(dir.path(), &["good"]),
    )
    .await
    .unwrap();
    let mut other = dataset(3, &[]);
    other.sha256 = Some("0".repeat(64));
    let e = runner::run(&other, Scripted::new(), options(dir.path(), &["good"]))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("holds a run of another dataset"),
        "{e}"
    );
}

#[tokio::test]
async fn the_spend_cap_stops_new_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), &["good", "bad"]);
    o.concurrency = 1;
    o.max_cost_usd = Some(0.05);
    let outcome = runner::run(&dataset(10, &[]), Scripted::new(), o)
        .await
        .unwrap();
    assert_eq!(outcome.answered, 5, "$0.01 each, stopped at $0.05");
    assert!(outcome.meta.stopped_by_budget);
    let results = by_pair(dir.path());
    assert_eq!(results.len(), 5);
    // Item by item: both models answered the first items.
    assert!(results.contains_key(&("q0".to_owned(), "bad".to_owned())));
    assert!(results.contains_key(&("q1".to_owned(), "bad".to_owned())));
}

#[tokio::test]
async fn the_pairwise_judge_is_asked_both_orders_and_position_bias_is_a_tie() {
    // A judge that always picks the first answer shown: every verdict is a tie.
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), &["good", "bad"]);
    o.scorers = ScorerSet::parse(&["numeric".into(), "pairwise:judge".into()]).unwrap();
    let backend = Scripted::new();
    let outcome = runner::run(&dataset(4, &[]), backend.clone(), o.clone())
        .await
        .unwrap();
    assert_eq!(outcome.pairwise, 4);
    let verdicts = read_jsonl::<PairwiseResult>(&dir.path().join("pairwise.jsonl")).unwrap();
    assert_eq!(verdicts.len(), 4);
    assert!(verdicts.iter().all(|v| v.winner == "tie"
        && v.model_a == "good"
        && v.model_b == "bad"
        && v.judge == "judge"));
    let judge_calls = backend
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.starts_with("judge "))
        .count();
    assert_eq!(judge_calls, 8, "two orders per item");

    // A judge that picks the right answer wherever it is shown: the baseline wins.
    let dir = tempfile::tempdir().unwrap();
    o.out = dir.path().to_owned();
    let backend = Arc::new(Scripted {
        calls: AtomicUsize::new(0),
        seen: Mutex::new(Vec::new()),
        judge_rule: |prompt| {
            let n = marker(prompt);
            let first = prompt
                .split("[Answer 1]")
                .nth(1)
                .and_then(|rest| rest.split("[Answer 2]").next())
                .unwrap_or("");
            if first.contains(&format!("The answer is {n}.")) {
                "WINNER: 1".into()
            } else {
                "Answer 2 is right.\nWINNER: 2".into()
            }
        },
    });
    runner::run(&dataset(3, &[]), backend, o).await.unwrap();
    let verdicts = read_jsonl::<PairwiseResult>(&dir.path().join("pairwise.jsonl")).unwrap();
    assert_eq!(verdicts.len(), 3);
    assert!(verdicts.iter().all(|v| v.winner == "a"), "{verdicts:?}");
}

#[tokio::test]
async fn judge_and_similarity_scorers_run_through_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), &["good"]);
    o.scorers = ScorerSet::parse(&["judge:judge,similarity:0.5".into()]).unwrap();
    let backend = Arc::new(Scripted {
        calls: AtomicUsize::new(0),
        seen: Mutex::new(Vec::new()),
        judge_rule: |_| "Correct.\nSCORE: 9".into(),
    });
    let outcome = runner::run(&dataset(2, &[]), backend, o).await.unwrap();
    assert!(
        (outcome.cost_usd - 0.04).abs() < 1e-9,
        "answers and judge calls are both counted: {}",
        outcome.cost_usd
    );
    let r = &by_pair(dir.path())[&("q1".to_owned(), "good".to_owned())];
    assert!((r.scores["judge"] - 8.0 / 9.0).abs() < 1e-9);
    assert!(
        r.details["judge"].starts_with("9/10: Correct."),
        "{}",
        r.details["judge"]
    );
    assert!(r.scores.contains_key("similarity"));
    assert_eq!(r.passed, Some(true));
}

#[tokio::test]
async fn a_judge_that_fails_leaves_the_answer_unscored_not_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), &["good"]);
    o.scorers = ScorerSet::parse(&["numeric,judge:missing-judge".into()]).unwrap();
    runner::run(&dataset(1, &[]), Scripted::new(), o)
        .await
        .unwrap();
    let r = &by_pair(dir.path())[&("q0".to_owned(), "good".to_owned())];
    assert_eq!(r.passed, Some(true));
    assert!(!r.scores.contains_key("judge"));
    assert!(
        r.details["judge"].starts_with("not scored: judge missing-judge: unknown_model"),
        "{}",
        r.details["judge"]
    );
}

/// The real gateway against the mock upstream: the answer, usage, price and target come back
/// through routing and streaming as for live traffic, and an upstream error is recorded.
#[tokio::test]
async fn the_gateway_backend_answers_through_routing() {
    let sse = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/openai/stream.response.sse"),
    )
    .unwrap();
    let json = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/openai/plain.response.json"),
    )
    .unwrap();
    let mock = MockUpstream::start(Fallback::Fixed {
        json: json.into(),
        sse: sse.into(),
    })
    .await;
    mock.push(MockResponse::json(
        400,
        r#"{"error": {"message": "bad thing", "type": "invalid_request_error"}}"#,
    ));
    let toml = format!(
        "[providers.openai]\nbase_url = \"{}/v1\"\n[models.hello]\ntarget = \"openai/gpt-5\"\n",
        mock.url()
    );
    let file = ConfigFile::parse(&toml, "t.toml").unwrap();
    let config = GatewayConfig::resolve(file, &|k: &str| {
        (k == "OPENAI_API_KEY").then(|| "sk-test-secret".to_owned())
    })
    .unwrap();
    let gateway = Gateway::new(&config).unwrap();
    let backend = Arc::new(GatewayBackend::new(
        gateway,
        fungible_store::PriceTable::builtin(),
    ));

    let data = Dataset::parse("{\"id\": \"a\", \"prompt\": \"Say hello\", \"reference\": \"Hello!\"}\n{\"id\": \"b\", \"prompt\": \"Say hello\", \"reference\": \"Hello!\"}\n", "t", None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(dir.path(), &["hello"]);
    o.concurrency = 1;
    o.scorers = ScorerSet::parse(&["exact".into()]).unwrap();
    let outcome = runner::run(&data, backend, o).await.unwrap();
    assert_eq!((outcome.answered, outcome.errors), (2, 1));
    // As written, timings included.
    let results: HashMap<String, ItemResult> =
        read_jsonl::<ItemResult>(&dir.path().join("results.jsonl"))
            .unwrap()
            .into_iter()
            .map(|r| (r.item_id.clone(), r))
            .collect();
    let failed = &results["a"];
    assert!(
        failed
            .error
            .as_deref()
            .unwrap()
            .starts_with("invalid_request: "),
        "{:?}",
        failed.error
    );
    assert!(!failed.error.as_deref().unwrap().contains("sk-test-secret"));
    let ok = &results["b"];
    assert_eq!(ok.output.as_deref(), Some("Hello!"));
    assert_eq!(ok.passed, Some(true));
    assert_eq!(ok.target.as_deref(), Some("openai/gpt-5"));
    assert_eq!((ok.input_tokens, ok.output_tokens), (Some(20), Some(5)));
    assert!(
        ok.cost_usd.is_some_and(|c| c > 0.0),
        "gpt-5 has a price: {:?}",
        ok.cost_usd
    );
    assert!(ok.ttft_ms.is_some());
    let sent = mock.received();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1].json()["stream"], true);
    assert_eq!(sent[1].json()["temperature"], 0.0);
}

/// A route with `examples` is evaluated as it serves: the backend inserts the nearest dataset
/// row before the item's prompt (so an eval measures base + retrieval against a tuned model).
#[tokio::test]
async fn the_gateway_backend_gives_a_route_its_retrieved_examples() {
    use fungible_datasets::{Example, Source, Split};
    use fungible_types::{Message, Role};

    let dir = tempfile::tempdir().unwrap();
    let store = fungible_store::Store::open(&format!("sqlite://{}?mode=rwc", dir.path().join("s.db").display()))
        .await
        .unwrap();
    let row = |id: &str, q: &str, a: &str| {
        let messages = vec![Message::text(Role::User, q)];
        (Example::new(id.into(), Source::Manual, messages, Vec::new(), Message::text(Role::Assistant, a)), Some(Split::Train))
    };
    fungible_datasets::versions::put_rows(&store, "support", vec![row("near", "Say hi", "Hi!"), row("far", "Add 2 and 2", "4")])
        .await
        .unwrap();
    let json = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/openai/plain.response.json")).unwrap();
    let sse = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/openai/stream.response.sse")).unwrap();
    let mock = MockUpstream::start(Fallback::Fixed { json: json.into(), sse: sse.into() }).await;
    let embeddings = |vectors: &[[f32; 2]]| {
        let data: Vec<serde_json::Value> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| serde_json::json!({"object": "embedding", "index": i, "embedding": v}))
            .collect();
        MockResponse::json(200, serde_json::json!({"object": "list", "data": data, "model": "e", "usage": {"prompt_tokens": 1, "total_tokens": 1}}).to_string())
    };
    // The two rows' questions, then the item's: nearest to "near".
    mock.push(embeddings(&[[1.0, 0.0], [0.0, 1.0]]));
    mock.push(embeddings(&[[0.9, 0.1]]));
    let toml = format!(
        "[providers.openai]\nbase_url = \"{}/v1\"\n[models.hello]\ntarget = \"openai/gpt-5\"\n\
         examples = {{ dataset = \"support\", k = 1, split = \"all\", embedding_model = \"openai/text-embedding-3-small\" }}\n",
        mock.url()
    );
    let config = GatewayConfig::resolve(ConfigFile::parse(&toml, "t.toml").unwrap(), &|k: &str| {
        (k == "OPENAI_API_KEY").then(|| "sk-test".to_owned())
    })
    .unwrap();
    let gateway = Gateway::new(&config).unwrap();
    let examples = fungible_datasets::Examples::load(&store, &gateway, &config.routes).await.unwrap();
    let backend = Arc::new(GatewayBackend::new(gateway, fungible_store::PriceTable::builtin()).with_examples(examples));

    let data = Dataset::parse("{\"id\": \"a\", \"prompt\": \"Say hello\", \"reference\": \"Hello!\"}\n", "t", None).unwrap();
    let out = tempfile::tempdir().unwrap();
    let outcome = runner::run(&data, backend, options(out.path(), &["hello"])).await.unwrap();
    assert_eq!((outcome.answered, outcome.errors), (1, 0));
    let chat = mock.received().into_iter().find(|r| r.uri.ends_with("/chat/completions")).expect("a chat request");
    let turns: Vec<(String, String)> = chat.json()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap().to_owned(), m["content"].as_str().unwrap_or_default().to_owned()))
        .collect();
    let expected: Vec<(String, String)> =
        [("user", "Say hi"), ("assistant", "Hi!"), ("user", "Say hello")].iter().map(|(r, t)| (r.to_string(), t.to_string())).collect();
    assert_eq!(turns, expected);
}
