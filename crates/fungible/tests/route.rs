//! `fungible route` as a user runs it: a router trained from an eval run's per-item results
//! with the local MiniLM's static embedding (`scripts/setup-models.sh`; missing models fail
//! the test), kept as versions in the store, listed, shown and rolled back; too few labels
//! are refused with a message that says what to do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fungible_eval::results::{ItemResult, RunMeta};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fungible(cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fungible"));
    cmd.current_dir(cwd).env_remove("FUNGIBLE_CONFIG").env("FUNGIBLE_LOG", "warn").args(args);
    for (k, _) in std::env::vars() {
        if k.ends_with("_API_KEY") || k.ends_with("_BASE_URL") {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("fungible runs")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// An eval run where `a/m` (cheap) answers small talk right and arithmetic wrong, and
/// `b/m` (dear) answers both right.
fn eval_run(dir: &Path, items: usize) {
    std::fs::create_dir_all(dir).expect("run dir");
    let topics = ["weather", "a good book", "your weekend", "music", "coffee", "the city"];
    let mut lines = String::new();
    for i in 0..items {
        let hard = i % 3 == 0;
        let input = if hard {
            format!("Compute {} times {} plus {}, then divide by {}.", 17 + i, 23 + i % 7, i, 3 + i % 5)
        } else {
            format!("Hi there! What do you think about {}? ({i})", topics[i % topics.len()])
        };
        for (model, right, cost) in [("a/m", !hard, 0.0001), ("b/m", true, 0.002)] {
            let result = ItemResult {
                item_id: format!("item-{i}"),
                model: model.to_owned(),
                target: Some(model.to_owned()),
                input: input.clone(),
                reference: None,
                output: Some("answer".into()),
                error: None,
                scores: BTreeMap::from([("exact".to_owned(), if right { 1.0 } else { 0.0 })]),
                passed: Some(right),
                details: BTreeMap::new(),
                latency_ms: 100,
                ttft_ms: None,
                input_tokens: Some(10),
                output_tokens: Some(5),
                cost_usd: Some(cost),
            };
            lines.push_str(&serde_json::to_string(&result).expect("json"));
            lines.push('\n');
        }
    }
    std::fs::write(dir.join("results.jsonl"), lines).expect("results");
    let meta = RunMeta {
        version: 1,
        run_id: "run-1".into(),
        started_at: "2026-12-08T00:00:00Z".into(),
        finished_at: Some("2026-12-08T00:01:00Z".into()),
        dataset: dir.join("gone.jsonl").display().to_string(),
        dataset_name: "mixed".into(),
        dataset_sha256: Some("0".repeat(64)),
        items: items as u64,
        models: vec!["a/m".into(), "b/m".into()],
        scorers: vec!["exact".into()],
        concurrency: 4,
        max_cost_usd: None,
        stopped_by_budget: false,
    };
    std::fs::write(dir.join("run.json"), serde_json::to_string(&meta).expect("json")).expect("run.json");
}

#[test]
fn a_router_is_trained_from_an_eval_run_kept_listed_shown_and_rolled_back() {
    let work = tempfile::tempdir().expect("temp dir");
    let dir = work.path();
    let models = root().join("models");
    assert!(models.join("all-MiniLM-L6-v2").is_dir(), "run scripts/setup-models.sh: the router embeds with the local MiniLM");
    std::fs::write(
        dir.join("fungible.toml"),
        format!(
            "[store]\nurl = \"sqlite://{}/store.db?mode=rwc\"\n[local]\nmodels_dir = \"{}\"\n\
             [providers.a]\nbase_url = \"http://127.0.0.1:9/v1\"\n[providers.b]\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             [models.smart]\nstrategy = \"learned\"\ntargets = [{{ target = \"a/m\" }}, {{ target = \"b/m\" }}]\n",
            dir.display(),
            models.display()
        ),
    )
    .expect("config");
    eval_run(&dir.join("run"), 300);

    let out = fungible(dir, &["route", "train", "smart", "--eval-run", "run"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("300 labelled requests (600 eval results from run"), "{said}");
    assert!(said.contains("logistic") && said.contains("knn") && said.contains("random"), "{said}");
    assert!(said.contains("kept as smart router v1"), "{said}");
    // The learned pattern shows in the report: the cheap target serves most requests at 95%.
    let out = fungible(dir, &["route", "show", "smart", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    let chosen = report["kinds"].as_array().expect("kinds").iter().find(|k| k["kind"] == report["chosen"]).expect("the kept kind");
    assert!(chosen["test_apgr"].as_f64().is_some_and(|a| a > 0.7), "{report}");
    assert!(chosen["cheapest_share_at_95"].as_f64() > report["random_cheapest_share_at_95"].as_f64(), "{report}");
    assert_eq!(report["cost_unit"], "usd");

    assert!(fungible(dir, &["route", "train", "smart", "--eval-run", "run", "--kind", "knn"]).status.success());
    let said = text(&fungible(dir, &["route", "list", "smart"]));
    let lines: Vec<&str> = said.lines().collect();
    assert!(lines[1].starts_with("v2 ") && lines[1].contains("knn") && lines[1].ends_with("active"), "{said}");
    assert!(lines[2].starts_with("v1 ") && lines[2].ends_with("superseded"), "{said}");
    let out = fungible(dir, &["route", "rollback", "smart"]);
    assert!(text(&out).contains("router v1 is active"), "{}", text(&out));
    let said = text(&fungible(dir, &["route", "list", "smart"]));
    assert!(said.lines().nth(1).is_some_and(|l| l.starts_with("v2 ") && l.contains("retired")), "{said}");

    // Refused: too few labels, an unknown route, a bad goal.
    let out = fungible(dir, &["route", "train", "smart", "--eval-run", "run", "--min-labels", "1000"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("smart: too few labels for a/m: "), "{}", text(&out));
    let out = fungible(dir, &["route", "train", "nope", "--eval-run", "run"]);
    assert!(text(&out).contains("no route \"nope\" in the config"), "{}", text(&out));
    let out = fungible(dir, &["route", "train", "smart", "--quality", "1.5"]);
    assert!(text(&out).contains("--quality 1.5: expected a fraction above 0, at most 1"), "{}", text(&out));
    let out = fungible(dir, &["route", "train", "smart", "--eval-run", "missing"]);
    assert!(text(&out).contains("missing: not an eval run (no run.json)"), "{}", text(&out));
}

/// A record of route `smart` answered by `target` (`a/m` or `b/m`), asking `text`.
fn record(text: &str, target: &str, tags: serde_json::Value) -> fungible_store::InferenceRecord {
    let (provider, model) = target.split_once('/').expect("PROVIDER/MODEL");
    fungible_store::InferenceRecord {
        id: fungible_store::new_id(),
        time_ms: fungible_store::now_ms(),
        inbound: "openai_chat".into(),
        requested_model: "smart".into(),
        route: Some("smart".into()),
        variant: Some(target.into()),
        provider: Some(provider.into()),
        model: Some(model.into()),
        stream: false,
        error: None,
        // The canonical request, as the recorder stores it.
        request: serde_json::to_value(fungible_types::ChatRequest {
            model: "smart".into(),
            messages: vec![fungible_types::Message::text(fungible_types::Role::User, text)],
            ..fungible_types::ChatRequest::default()
        })
        .expect("json"),
        response: None,
        usage: fungible_types::Usage::default(),
        cost: Some(if provider == "a" { 0.0001 } else { 0.002 }),
        ttft_ms: None,
        latency_ms: 100.0,
        user: None,
        tags,
        episode_id: None,
        attempts: Vec::new(),
        key_id: None,
        cache_hit: false,
        truncated: false,
        raw: Vec::new(),
    }
}

#[test]
fn a_router_trains_from_the_feedback_and_shadow_scores_in_the_store() {
    let work = tempfile::tempdir().expect("temp dir");
    let dir = work.path();
    let models = root().join("models");
    let url = format!("sqlite://{}/store.db?mode=rwc", dir.display());
    std::fs::write(
        dir.join("fungible.toml"),
        format!(
            "[store]\nurl = \"{url}\"\n[local]\nmodels_dir = \"{}\"\n\
             [providers.a]\nbase_url = \"http://127.0.0.1:9/v1\"\n[providers.b]\nbase_url = \"http://127.0.0.1:9/v1\"\n\
             [models.smart]\nstrategy = \"learned\"\ntargets = [{{ target = \"a/m\" }}, {{ target = \"b/m\" }}]\n",
            models.display()
        ),
    )
    .expect("config");
    // Live traffic on b/m, each request also shadowed to a/m: a/m agrees on small talk and
    // not on arithmetic. Feedback rates some of b/m's answers.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let store = fungible_store::Store::open(&url).await.expect("store");
        let mut records = Vec::new();
        let mut feedback = Vec::new();
        for i in 0..300 {
            let hard = i % 3 == 0;
            let text = if hard { format!("Compute {} times {} plus {i}.", 17 + i, 23 + i % 7) } else { format!("Hi! How is the weather today? ({i})") };
            let primary = record(&text, "b/m", serde_json::json!({}));
            let shadow = record(&text, "a/m", serde_json::json!({"fungible.shadow_of": primary.id, "fungible.shadow_route": "smart"}));
            let shadow = fungible_store::InferenceRecord { inbound: "shadow".into(), route: None, ..shadow };
            let rate = |id: &str, good: bool| fungible_store::Feedback {
                id: fungible_store::new_id(),
                time_ms: 1,
                target: fungible_store::FeedbackTarget::Inference,
                target_id: id.to_owned(),
                boolean: Some(good),
                score: None,
                comment: None,
                demonstration: None,
            };
            feedback.push(rate(&shadow.id, !hard));
            if i % 10 == 0 {
                feedback.push(rate(&primary.id, true));
            }
            records.push(primary);
            records.push(shadow);
        }
        store.insert(&records).await.expect("insert");
        for f in &feedback {
            store.insert_feedback(f).await.expect("feedback");
        }
    });

    let out = fungible(dir, &["route", "train", "smart"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("300 labelled requests (300 shadow scores, 30 feedback labels)"), "{said}");
    assert!(said.contains("kept as smart router v1"), "{said}");
    let report: serde_json::Value = serde_json::from_slice(&fungible(dir, &["route", "show", "smart", "--json"]).stdout).expect("report");
    let chosen = report["kinds"].as_array().expect("kinds").iter().find(|k| k["kind"] == report["chosen"]).expect("kept");
    assert!(chosen["test_apgr"].as_f64().is_some_and(|a| a > 0.7), "{report}");
    // Without the shadow scores, a/m has no labels: refused, saying where labels come from.
    let out = fungible(dir, &["route", "train", "smart", "--no-shadow"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no labels for a/m, a target of smart: run an eval that includes it"), "{}", text(&out));
}
