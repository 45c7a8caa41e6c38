//! `fungible datasets` as a user runs it: recorded traffic in the default store
//! (`./fungible.db`) → `build` with the real local MiniLM finding near duplicates → `show` →
//! `export` refused below a provider's minimum → `add` from a file → `export` → `eval run
//! --dataset NAME@1` (which makes version 1 immutable) → an edit going to version 2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fungible_mock::{Fallback, MockUpstream};
use fungible_store::{InferenceRecord, Store};
use fungible_types::{Message, Role};
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn models() -> PathBuf {
    let models = std::env::var_os("FUNGIBLE_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("models"));
    assert!(models.join("all-MiniLM-L6-v2/model.safetensors").is_file(), "models are missing: run scripts/setup-models.sh");
    models
}

fn fungible(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fungible"));
    cmd.current_dir(cwd).env_remove("FUNGIBLE_CONFIG").env("FUNGIBLE_LOG", "warn").env("FUNGIBLE_MODELS_DIR", models());
    for (k, _) in std::env::vars() {
        if k.ends_with("_API_KEY") || k.ends_with("_BASE_URL") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn ok(output: Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "failed: {stderr}\n{}", String::from_utf8_lossy(&output.stdout));
    assert!(!stderr.contains("panicked"), "{stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn record(id: &str, question: &str, answer: &str) -> InferenceRecord {
    let record = fungible_store::testing::chat_record(id, "support", vec![Message::text(Role::User, question)], Some(answer));
    InferenceRecord { time_ms: fungible_store::now_ms(), ..record }
}

#[test]
fn from_traffic_to_an_exported_file_and_an_eval() {
    let cwd = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(&fungible_store::sqlite_url(&cwd.path().join("fungible.db"))).await.unwrap();
        store
            .insert(&[
                record("01", "How do I reset my password?", "Settings > Security > Reset."),
                // The same question with other punctuation: MiniLM puts it next to the first.
                record("02", "How do I reset my password??", "Go to settings."),
                record("03", "Where can I download last month's invoice?", "Billing > Invoices."),
                record("04", "Write to me at jane@example.com about my refund", "We will."),
            ])
            .await
            .unwrap();
        store.close().await;
    });

    let built = ok(fungible(cwd.path()).args(["datasets", "build", "support", "--route", "support", "--scrub-pii", "--validation", "0"]).output().unwrap());
    assert!(built.contains("support@1  3 rows"), "{built}");
    let shown: Value = serde_json::from_str(&ok(fungible(cwd.path()).args(["datasets", "show", "support@1", "--json"]).output().unwrap())).unwrap();
    assert_eq!(shown[0]["report"]["curation"]["near_duplicates"], 1, "{shown}");
    assert_eq!(shown[0]["report"]["curation"]["pii"], json!({"email": 1}));
    let rows = ok(fungible(cwd.path()).args(["datasets", "rows", "support"]).output().unwrap());
    assert!(rows.contains("Write to me at [EMAIL] about my refund"), "{rows}");
    assert!(!rows.contains("jane@example.com"));

    // OpenAI takes at least 10 rows: nothing is written.
    let out = cwd.path().join("train.jsonl");
    let refused = fungible(cwd.path()).args(["datasets", "export", "support", "--format", "openai", "-o"]).arg(&out).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("at least 10 rows"), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(!out.exists());

    // Rows from a file in OpenAI's format; a bad line adds nothing.
    let file = cwd.path().join("more.jsonl");
    let mut lines: Vec<String> = (0..7)
        .map(|i| json!({"messages": [{"role": "user", "content": format!("Question {i}?")}, {"role": "assistant", "content": format!("Answer {i}.")}]}).to_string())
        .collect();
    lines.push("{\"messages\": [{\"role\": \"user\", \"content\": \"unanswered\"}]}".into());
    std::fs::write(&file, lines.join("\n")).unwrap();
    let bad = fungible(cwd.path()).args(["datasets", "add", "support", "--file"]).arg(&file).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("more.jsonl:8"), "{}", String::from_utf8_lossy(&bad.stderr));
    lines.pop();
    std::fs::write(&file, lines.join("\n")).unwrap();
    ok(fungible(cwd.path()).args(["datasets", "add", "support", "--file"]).arg(&file).output().unwrap());
    ok(fungible(cwd.path()).args(["datasets", "export", "support", "--format", "openai", "-o"]).arg(&out).output().unwrap());
    let exported: Vec<Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(exported.len(), 10);
    assert!(exported.iter().all(|l| l["messages"].as_array().unwrap().last().unwrap()["role"] == "assistant"));

    // An eval on the stored dataset; the version it used is immutable from then on.
    let mock = rt.block_on(MockUpstream::start(Fallback::Fixed {
        json: std::fs::read(root().join("tests/fixtures/openai/plain.response.json")).unwrap().into(),
        sse: std::fs::read(root().join("tests/fixtures/openai/stream.response.sse")).unwrap().into(),
    }));
    ok(fungible(cwd.path())
        .env("OPENAI_API_KEY", "sk-test")
        .env("OPENAI_BASE_URL", format!("{}/v1", mock.url()))
        .args(["eval", "run", "--quiet", "--no-report", "--dataset", "support@1", "--models", "openai/gpt-5", "--scorer", "exact", "--out"])
        .arg(cwd.path().join("run"))
        .output()
        .unwrap());
    let results = std::fs::read_to_string(cwd.path().join("run/results.jsonl")).unwrap();
    assert_eq!(results.lines().count(), 10);
    let shown: Value = serde_json::from_str(&ok(fungible(cwd.path()).args(["datasets", "show", "support@1", "--json"]).output().unwrap())).unwrap();
    assert!(shown[0]["used_by"][0].as_str().unwrap().starts_with("eval:"), "{shown}");
    ok(fungible(cwd.path()).args(["datasets", "add", "support", "--user", "Hi?", "--assistant", "Hello."]).output().unwrap());
    let list = ok(fungible(cwd.path()).args(["datasets", "list", "--json"]).output().unwrap());
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!((list[0]["version"].as_i64(), list[0]["rows"].as_i64()), (Some(2), Some(11)));
}
