//! `fungible eval run` as a user runs it: the binary, offline, the local SmolLM2 on a slice of
//! GSM8K's real test set (`scripts/setup-datasets.sh`, `scripts/setup-models.sh`), and the
//! example datasets against the mock upstream. Missing models or datasets fail the test.

use std::path::{Path, PathBuf};
use std::process::Command;

use fungible_eval::results::{ItemResult, RunMeta};
use fungible_mock::{Fallback, MockUpstream};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The binary in an empty directory (no `fungible.toml` is picked up), with no provider keys.
fn fungible(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fungible"));
    cmd.current_dir(cwd)
        .env_remove("FUNGIBLE_CONFIG")
        .env("FUNGIBLE_LOG", "warn");
    for (k, _) in std::env::vars() {
        if k.ends_with("_API_KEY") || k.ends_with("_BASE_URL") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn results(dir: &Path) -> Vec<ItemResult> {
    std::fs::read_to_string(dir.join("results.jsonl"))
        .expect("results.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a result line"))
        .collect()
}

#[test]
fn eval_runs_the_local_model_on_real_gsm8k_items_and_writes_the_report() {
    let datasets = std::env::var_os("FUNGIBLE_DATASETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/datasets"));
    let gsm8k = datasets.join("gsm8k/test.jsonl");
    assert!(
        gsm8k.is_file(),
        "{} is missing: run scripts/setup-datasets.sh",
        gsm8k.display()
    );
    let models = std::env::var_os("FUNGIBLE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models"));
    assert!(
        models.join("SmolLM2-135M-Instruct.Q4_1.gguf").is_file(),
        "models are missing: run scripts/setup-models.sh"
    );

    let cwd = tempfile::tempdir().unwrap();
    let out = cwd.path().join("run");
    let output = fungible(cwd.path())
        .env("FUNGIBLE_MODELS_DIR", &models)
        .args(["eval", "run", "--quiet", "--dataset"])
        .arg(&gsm8k)
        .args([
            "--limit",
            "5",
            "--models",
            "local/smollm2-135m-instruct",
            "--max-tokens",
            "48",
            "--concurrency",
            "4",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "eval run failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let meta: RunMeta =
        serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(meta.items, 5);
    assert_eq!(meta.dataset_name, "test");
    assert_eq!(
        meta.scorers,
        ["numeric"],
        "GSM8K is scored on its final number"
    );
    assert!(meta.finished_at.is_some());
    let results = results(&out);
    assert_eq!(results.len(), 5, "every item has a result");
    for r in &results {
        assert_eq!(r.model, "local/smollm2-135m-instruct");
        assert!(
            r.reference
                .as_deref()
                .is_some_and(|n| n.parse::<f64>().is_ok()),
            "{r:?}"
        );
        match (&r.output, &r.error) {
            (Some(text), None) => {
                assert!(!text.is_empty());
                assert!(
                    r.passed.is_some() && r.scores.contains_key("numeric"),
                    "{r:?}"
                );
                assert_eq!(r.cost_usd, Some(0.0), "local models cost nothing");
                assert!(r.output_tokens.is_some_and(|n| n > 0 && n <= 48), "{r:?}");
            }
            (None, Some(_)) => assert!(r.passed.is_none() && r.scores.is_empty()),
            _ => panic!("a result has an output or an error: {r:?}"),
        }
    }
    assert!(out.join("report.html").is_file(), "report.html: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("report.json"))
            .unwrap();
    assert_eq!(report["run"]["items"], 5);
    assert_eq!(report["baseline"], "local/smollm2-135m-instruct");
    let stats = &report["models"][0];
    let errors = results.iter().filter(|r| r.error.is_some()).count() as u64;
    let passed = results.iter().filter(|r| r.passed == Some(true)).count() as u64;
    assert_eq!(stats["results"], 5, "{stats}");
    assert_eq!(stats["missing"], 0, "{stats}");
    assert_eq!(stats["errors"], errors, "{stats}");
    assert_eq!(stats["answered"], 5 - errors, "{stats}");
    assert_eq!(stats["passed"], passed, "{stats}");
    assert_eq!(stats["error_rate"], errors as f64 / 5.0, "{stats}");
    assert_eq!(stats["cost_usd"], 0.0, "{stats}");
    if errors < 5 {
        let accuracy = stats["accuracy"].as_f64().expect("an accuracy");
        assert!(
            (accuracy - passed as f64 / (5 - errors) as f64).abs() < 1e-9,
            "{stats}"
        );
        assert!(stats["accuracy_ci"].is_object(), "{stats}");
    }
    assert!(
        stats["output_tokens"].as_u64().is_some_and(|n| n > 0),
        "{stats}"
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("local/smollm2-135m-instruct"));
    // The report is regenerated from the directory alone.
    let report = fungible(cwd.path())
        .args(["eval", "report"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
}

#[test]
fn eval_runs_the_example_datasets_through_the_gateway_and_resumes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fixtures = root().join("tests/fixtures/openai");
    let mock = rt.block_on(MockUpstream::start(Fallback::Fixed {
        json: std::fs::read(fixtures.join("plain.response.json"))
            .unwrap()
            .into(),
        sse: std::fs::read(fixtures.join("stream.response.sse"))
            .unwrap()
            .into(),
    }));
    let cwd = tempfile::tempdir().unwrap();
    let out = cwd.path().join("run");
    let run = || {
        fungible(cwd.path())
            .env("OPENAI_API_KEY", "sk-test")
            .env("OPENAI_BASE_URL", format!("{}/v1", mock.url()))
            .env("FUNGIBLE_MODELS_DIR", "/nonexistent")
            .args(["eval", "run", "--quiet", "--no-report", "--dataset"])
            .arg(root().join("examples/eval/arithmetic.jsonl"))
            .args([
                "--models",
                "openai/gpt-5,openai/gpt-5-mini",
                "--scorer",
                "numeric,contains",
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let results = results(&out);
    assert_eq!(results.len(), 40, "20 items x 2 models");
    // The mock says "Hello!" to everything: answered, scored, wrong.
    assert!(
        results
            .iter()
            .all(|r| r.output.as_deref() == Some("Hello!") && r.passed == Some(false))
    );
    let again = run();
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("0 answered"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        mock.received().len(),
        40,
        "a finished run asks nothing again"
    );

    let bad = fungible(cwd.path())
        .args([
            "eval",
            "run",
            "--dataset",
            "x.jsonl",
            "--models",
            "a/b",
            "--scorer",
            "bleu",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown scorer \"bleu\""));
}

/// The attack that once put every provider key into `results.jsonl` and `report.html`: a
/// model answers code that reads every environment it can reach (`/proc/*/environ`, its
/// parent's included) and fails with it, so the score's detail carries it out.
#[test]
fn a_hostile_code_answer_carries_no_secret_into_the_results_or_the_report() {
    let secret = format!("sk-secret-xyz-{}", std::process::id());
    let admin = format!("admin-secret-{}", std::process::id());
    let attack = r#"```python
import os
found = [repr(dict(os.environ)).encode()]
for pid in [p for p in os.listdir("/proc") if p.isdigit()] + [str(os.getppid())]:
    try:
        found.append(open(f"/proc/{pid}/environ", "rb").read())
    except OSError as e:
        found.append(repr(e).encode())
try:
    found.append(open("/etc/passwd", "rb").read())
except OSError as e:
    found.append(repr(e).encode())
raise SystemExit(repr(b"|".join(found)))
```"#;
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        serde_json::json!({"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-5", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let sse = format!(
        "data: {}\n\ndata: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
        chunk(
            serde_json::json!({"role": "assistant", "content": attack}),
            None
        ),
        chunk(serde_json::json!({}), Some("stop")),
        serde_json::json!({"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-5", "choices": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": 50, "total_tokens": 60}}),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt.block_on(MockUpstream::start(Fallback::Fixed {
        json: std::fs::read(root().join("tests/fixtures/openai/plain.response.json"))
            .unwrap()
            .into(),
        sse: sse.into(),
    }));
    let cwd = tempfile::tempdir().unwrap();
    let dataset = cwd.path().join("code.jsonl");
    std::fs::write(
        &dataset,
        "{\"id\": \"add\", \"prompt\": \"Write add(a, b).\", \"tests\": \"def check(f):\\n    assert f(2, 3) == 5\\n\", \"entry_point\": \"add\"}\n",
    )
    .unwrap();
    let out = cwd.path().join("run");
    let output = fungible(cwd.path())
        .env("OPENAI_API_KEY", &secret)
        .env("OPENAI_BASE_URL", format!("{}/v1", mock.url()))
        .env("FUNGIBLE_ADMIN_KEY", &admin)
        .env("FUNGIBLE_TEST_SECRET", &secret)
        .env("FUNGIBLE_MODELS_DIR", "/nonexistent")
        .args(["eval", "run", "--quiet", "--dataset"])
        .arg(&dataset)
        .args(["--models", "openai/gpt-5", "--scorer", "code", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "eval run failed: {stderr}");
    let results = results(&out);
    assert_eq!(results.len(), 1);
    let detail = &results[0].details["code"];
    // The attack ran and reported what it found: the sandbox's own environment only.
    assert!(detail.starts_with("tests failed (exit 1): "), "{detail}");
    assert!(detail.contains("'HOME': '/scratch'"), "{detail}");
    assert!(detail.contains("FileNotFoundError"), "{detail}");
    for file in ["results.jsonl", "report.html", "report.json"] {
        let text = std::fs::read_to_string(out.join(file)).unwrap();
        assert!(!text.contains(&secret), "{file} holds the provider key");
        assert!(!text.contains(&admin), "{file} holds the admin key");
        assert!(!text.contains("root:x:0:0"), "{file} holds /etc/passwd");
    }
}
