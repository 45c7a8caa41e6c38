//! The report from hand-built run directories: numbers, determinism, error handling,
//! escaping, tolerance of a killed run, and `compare`.

use std::collections::BTreeMap;
use std::path::Path;

use fungible_eval::report::{self, ReportError};
use fungible_eval::results::{ItemResult, PairwiseResult, RunMeta};
use serde_json::Value;

fn meta(models: &[&str], items: u64) -> RunMeta {
    RunMeta {
        version: 1,
        run_id: "run-1".into(),
        started_at: "2026-01-02T03:04:05Z".into(),
        finished_at: Some("2026-01-02T03:14:05Z".into()),
        dataset: "data/qa.jsonl".into(),
        dataset_name: "qa".into(),
        dataset_sha256: Some("ab".repeat(32)),
        items,
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        scorers: vec!["exact".into()],
        concurrency: 4,
        max_cost_usd: None,
        stopped_by_budget: false,
    }
}

/// A result: `Some(pass)` answered and scored, `None` a failed request.
fn result(item: usize, model: &str, verdict: Option<bool>, cost: Option<f64>) -> ItemResult {
    let answered = verdict.is_some();
    ItemResult {
        item_id: format!("q{item}"),
        model: model.to_owned(),
        target: Some(model.to_owned()),
        input: format!("question {item}"),
        reference: Some(format!("answer {item}")),
        output: answered.then(|| format!("{model} says {item}")),
        error: (!answered).then(|| "timeout: no answer in 30s".to_owned()),
        scores: match verdict {
            Some(p) => BTreeMap::from([("exact".to_owned(), if p { 1.0 } else { 0.0 })]),
            None => BTreeMap::new(),
        },
        passed: verdict,
        details: BTreeMap::new(),
        latency_ms: 100 + item as u64,
        ttft_ms: Some(50),
        input_tokens: Some(10),
        output_tokens: answered.then_some(5),
        cost_usd: cost,
    }
}

fn write_run(dir: &Path, meta: &RunMeta, results: &[ItemResult]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(
        dir.join("run.json"),
        serde_json::to_vec_pretty(meta).expect("json"),
    )
    .expect("write run.json");
    let mut lines = String::new();
    for r in results {
        lines.push_str(&serde_json::to_string(r).expect("json"));
        lines.push('\n');
    }
    std::fs::write(dir.join("results.jsonl"), lines).expect("write results");
}

fn report_json(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("report.json")).expect("report.json");
    serde_json::from_str(&text).expect("valid json")
}

fn close(v: &Value, expected: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - expected).abs() < 1e-4)
}

/// Two models on 100 items: the baseline passes 50 (costs $0.01 an item); the cheap model
/// fails on 10 requests and passes 45 of the 90 it answered (costs $0.0018).
fn two_model_run() -> Vec<ItemResult> {
    let mut rs = Vec::new();
    for i in 0..100 {
        rs.push(result(i, "openai/big", Some(i % 2 == 0), Some(0.01)));
        let v = if i >= 90 { None } else { Some(i % 2 == 0) };
        rs.push(result(i, "groq/small", v, Some(0.0018)));
    }
    rs
}

#[test]
fn numbers_match_known_values() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    write_run(
        dir,
        &meta(&["openai/big", "groq/small"], 100),
        &two_model_run(),
    );
    let summary = report::write_report(dir).expect("report");
    let j = report_json(dir);

    let big = &j["models"][0];
    assert_eq!(big["model"], "openai/big");
    assert_eq!(big["answered"], 100);
    assert_eq!(big["passed"], 50);
    assert!(close(&big["accuracy"], 0.5));
    // Wilson 95% interval of 50/100: [0.4038, 0.5962].
    assert!(
        close(&big["accuracy_ci"]["low"], 0.403_83),
        "{}",
        big["accuracy_ci"]
    );
    assert!(
        close(&big["accuracy_ci"]["high"], 0.596_17),
        "{}",
        big["accuracy_ci"]
    );
    assert!(close(&big["cost_usd"], 1.0));
    assert_eq!(big["errors"], 0);
    assert_eq!(big["latency_p50_ms"], 149);
    assert_eq!(big["latency_p95_ms"], 194);
    assert_eq!(big["input_tokens"], 1000);

    // Errors are counted apart and left out of accuracy: 45/90, not 45/100.
    let small = &j["models"][1];
    assert_eq!(small["answered"], 90);
    assert_eq!(small["errors"], 10);
    assert!(close(&small["error_rate"], 0.1));
    assert!(close(&small["accuracy"], 0.5));
    assert_eq!(small["error_kinds"][0][0], "timeout");
    assert_eq!(small["error_kinds"][0][1], 10);

    // Paired over the 90 items both answered: identical verdicts. The bootstrap interval is
    // [0, 0], but 0 losses in 90 items bound the loss rate only to 4.0 points (exact 97.5%),
    // more than the 2-point margin: not enough items to call it non-inferior.
    let cmp = &j["comparisons"][0];
    assert_eq!(cmp["paired"]["n"], 90);
    assert!(close(&cmp["paired"]["diff"], 0.0));
    assert!(close(&cmp["paired"]["loss_bound"], 0.040_16), "{}", cmp["paired"]);
    assert_eq!(cmp["paired"]["non_inferior"], false);
    assert!(close(&cmp["cost_ratio"], 0.18));
    assert_eq!(cmp["verdict"], "inconclusive");

    assert_eq!(j["agreement"][0]["n"], 90);
    assert!(close(&j["agreement"][0]["rate"], 1.0));
    // Same accuracy, cheaper: only the small model is on the frontier.
    assert_eq!(j["pareto_frontier"], serde_json::json!(["groq/small"]));

    let rec = j["recommendation"].as_array().expect("array");
    let text: Vec<&str> = rec.iter().filter_map(Value::as_str).collect();
    let all = text.join("\n");
    assert!(
        all.contains(
            "Inconclusive: groq/small vs openai/big (0.0 points, 95% CI 0.0 to 0.0, over 90 items both answered) at 18% of the cost. Only 0 of the items differ: 0 lost items out of 90 could hide a loss rate of up to 4.0 points"
        ),
        "{all}"
    );
    assert!(
        all.contains("groq/small failed 10 of 100 requests (10.0%)"),
        "{all}"
    );
    assert!(
        all.contains("Recommendation: keep openai/big; no cheaper model is shown to be within 2 points of it."),
        "{all}"
    );

    let term = summary.terminal();
    assert!(
        term.contains("openai/big") && term.contains("inconclusive"),
        "{term}"
    );
    assert!(term.contains("10 (10.0%)"), "{term}");
}

/// Local models are priced at zero: a much better free model is recommended over a free
/// baseline, not reported as "without prices".
#[test]
fn a_better_model_at_no_cost_is_recommended_when_both_are_free() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let mut rs = Vec::new();
    for i in 0..100 {
        rs.push(result(i, "local/base", Some(i % 10 == 0), Some(0.0)));
        rs.push(result(i, "local/base+tuned", Some(i % 10 != 9), Some(0.0)));
    }
    write_run(dir, &meta(&["local/base", "local/base+tuned"], 100), &rs);
    report::write_report(dir).expect("report");
    let j = report_json(dir);
    assert_eq!(j["comparisons"][0]["verdict"], "better");
    let rec = j["recommendation"].as_array().expect("array");
    let all = rec.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n");
    assert!(all.contains("(both cost nothing)"), "{all}");
    assert!(
        all.contains("Recommendation: replace local/base with local/base+tuned, 80.0 points more accurate at no cost either"),
        "{all}"
    );
    assert!(!all.contains("without prices"), "{all}");
    assert!(!all.contains("unknown"), "{all}");

    // A free baseline against a paid model that matches it: priced, and not cheaper.
    let mut rs = Vec::new();
    for i in 0..1000 {
        rs.push(result(i, "local/base", Some(i % 2 == 0), Some(0.0)));
        rs.push(result(i, "openai/paid", Some(i % 2 == 0), Some(0.01)));
    }
    write_run(dir, &meta(&["local/base", "openai/paid"], 1000), &rs);
    report::write_report(dir).expect("report");
    let j = report_json(dir);
    assert_eq!(j["comparisons"][0]["verdict"], "non-inferior", "{}", j["comparisons"][0]);
    let all = j["recommendation"].as_array().expect("array").iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n");
    assert!(all.contains("It costs $0.01000 per item where local/base costs nothing."), "{all}");
    assert!(all.contains("Recommendation: keep local/base"), "{all}");
    assert!(!all.contains("without prices"), "{all}");
}

#[test]
fn report_is_a_pure_function_of_the_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let rs = two_model_run();
    write_run(&a, &meta(&["openai/big", "groq/small"], 100), &rs);
    // The same results in another order (a resumed run appends in completion order).
    let mut shuffled = rs.clone();
    shuffled.reverse();
    shuffled.swap(3, 150);
    write_run(&b, &meta(&["openai/big", "groq/small"], 100), &shuffled);

    report::write_report(&a).expect("report");
    let json1 = std::fs::read(a.join("report.json")).expect("json");
    let html1 = std::fs::read(a.join("report.html")).expect("html");
    report::write_report(&a).expect("report again");
    assert_eq!(json1, std::fs::read(a.join("report.json")).expect("json"));
    assert_eq!(html1, std::fs::read(a.join("report.html")).expect("html"));

    report::write_report(&b).expect("report");
    assert_eq!(json1, std::fs::read(b.join("report.json")).expect("json"));
    assert_eq!(html1, std::fs::read(b.join("report.html")).expect("html"));
}

#[test]
fn a_line_cut_off_by_a_kill_is_skipped_with_a_warning() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let rs = two_model_run();
    write_run(dir, &meta(&["openai/big", "groq/small"], 100), &rs);
    let clean = report::build_report(dir, &Default::default()).expect("report");
    let mut text = std::fs::read_to_string(dir.join("results.jsonl")).expect("read");
    text.push_str("{\"item_id\":\"q7\",\"model\":\"openai/bi");
    std::fs::write(dir.join("results.jsonl"), text).expect("write");
    let cut = report::build_report(dir, &Default::default()).expect("report");
    assert_eq!(cut.models[0].answered, clean.models[0].answered);
    assert_eq!(cut.warnings.len(), 1, "{:?}", cut.warnings);
    assert!(
        cut.warnings[0].contains("1 unreadable line(s) skipped (line 201"),
        "{:?}",
        cut.warnings
    );
}

#[test]
fn a_model_that_always_fails_is_reported_by_its_error_rate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let mut rs = Vec::new();
    for i in 0..20 {
        rs.push(result(i, "a/base", Some(i < 15), None));
        rs.push(result(i, "b/broken", None, None));
    }
    write_run(dir, &meta(&["a/base", "b/broken"], 20), &rs);
    report::write_report(dir).expect("report");
    let j = report_json(dir);
    let broken = &j["models"][1];
    assert_eq!(broken["answered"], 0);
    assert_eq!(broken["passed"], 0);
    assert!(broken["accuracy"].is_null(), "not scored as 0%: {broken}");
    assert!(close(&broken["error_rate"], 1.0));
    assert!(broken["cost_usd"].is_null());
    assert_eq!(j["comparisons"][0]["verdict"], "no-data");
    let all: Vec<&str> = j["recommendation"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let all = all.join("\n");
    assert!(
        all.contains("b/broken answered no item (20 of 20 requests failed)"),
        "{all}"
    );
    assert!(all.contains("keep a/base"), "{all}");
    // No price anywhere: no cost plot, and the report says why.
    let html = std::fs::read_to_string(dir.join("report.html")).expect("html");
    assert!(html.contains("No cost-vs-accuracy plot"));
    assert!(html.contains("plot-accuracy-latency"));
}

#[test]
fn unknown_prices_and_a_single_model_are_explained() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let one = tmp.path().join("one");
    let rs: Vec<ItemResult> = (0..10)
        .map(|i| result(i, "local/llama", Some(i < 7), None))
        .collect();
    write_run(&one, &meta(&["local/llama"], 10), &rs);
    let r = report::build_report(&one, &Default::default()).expect("report");
    assert!(
        r.recommendation[0].starts_with("Only one model (local/llama) was run"),
        "{:?}",
        r.recommendation
    );
    assert!(r.agreement.is_empty() && r.comparisons.is_empty());

    let two = tmp.path().join("two");
    let mut rs = Vec::new();
    for i in 0..200 {
        rs.push(result(i, "x/priced", Some(i % 5 != 0), Some(0.002)));
        rs.push(result(i, "y/unpriced", Some(i % 5 != 0), None));
    }
    write_run(&two, &meta(&["x/priced", "y/unpriced"], 200), &rs);
    let r = report::build_report(&two, &Default::default()).expect("report");
    assert_eq!(r.comparisons[0].cost_ratio, None);
    assert_eq!(r.models[1].cost_usd, None);
    assert_eq!(r.models[1].cost_unknown, 200);
    let all = r.recommendation.join("\n");
    assert!(
        all.contains("y/unpriced is statistically non-inferior to x/priced within 2 points"),
        "{all}"
    );
    assert!(
        all.contains("The cost of y/unpriced is unknown (no price)."),
        "{all}"
    );
}

#[test]
fn a_clearly_worse_model_is_not_recommended() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let mut rs = Vec::new();
    for i in 0..300 {
        rs.push(result(i, "a/good", Some(i % 10 != 0), Some(0.01)));
        rs.push(result(i, "b/cheap", Some(i % 10 > 2), Some(0.001)));
    }
    write_run(dir, &meta(&["a/good", "b/cheap"], 300), &rs);
    let r = report::build_report(dir, &Default::default()).expect("report");
    let p = r.comparisons[0].paired.expect("paired");
    assert!((p.diff + 0.2).abs() < 1e-9, "{p:?}");
    assert!(p.significantly_worse && !p.non_inferior);
    assert_eq!(r.comparisons[0].verdict, "worse");
    // Discordant pairs: 60 items only the baseline passed, none the other way.
    assert_eq!((p.mcnemar.b, p.mcnemar.c), (60, 0));
    assert!(p.mcnemar.exact_p < 1e-15);
    let all = r.recommendation.join("\n");
    assert!(
        all.contains("b/cheap is less accurate than a/good (-20.0 points"),
        "{all}"
    );
    assert!(all.contains("keep a/good"), "{all}");
    // Both are on the frontier: one is cheaper, the other better.
    assert_eq!(r.pareto_frontier, vec!["b/cheap", "a/good"]);
}

#[test]
fn untrusted_output_is_escaped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let mut rs = two_model_run();
    let evil = "</script><script>alert(1)</script><img src=x onerror=\"alert(2)\">";
    rs[0].output = Some(evil.to_owned());
    rs[0].input = format!("<b>bold</b> {evil}");
    rs[1]
        .details
        .insert("exact".into(), "<svg onload=alert(3)>".into());
    rs[3].error = Some("http: <iframe src=javascript:alert(4)>".into());
    rs[3].output = None;
    rs[3].passed = None;
    let mut m = meta(&["openai/big", "groq/small<i>"], 100);
    m.dataset_name = "<h1>qa</h1>".into();
    for r in rs.iter_mut().filter(|r| r.model == "groq/small") {
        r.model = "groq/small<i>".into();
    }
    write_run(dir, &m, &rs);
    report::write_report(dir).expect("report");
    let html = std::fs::read_to_string(dir.join("report.html")).expect("html");
    for raw in [
        "<script",
        "<img",
        "<svg onload",
        "<iframe",
        "<b>bold",
        "<h1>qa",
        "small<i>",
    ] {
        assert!(!html.contains(raw), "raw {raw:?} in the report");
    }
    assert!(html.contains("&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=&quot;alert(2)&quot;&gt;"));
    assert!(html.contains("&lt;iframe src=javascript:alert(4)&gt;"));
    assert!(html.contains("groq/small&lt;i&gt;"));
    // The page loads nothing: no script, stylesheet link or remote source.
    assert!(!html.contains("<link") && !html.contains("src=\"http") && !html.contains("https://"));
}

#[test]
fn pairwise_judgements_are_tallied() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    write_run(
        dir,
        &meta(&["openai/big", "groq/small"], 100),
        &two_model_run(),
    );
    let mut lines = String::new();
    for (i, w) in ["a", "a", "b", "tie", "a"].iter().enumerate() {
        let p = PairwiseResult {
            item_id: format!("q{i}"),
            model_a: "openai/big".into(),
            model_b: "groq/small".into(),
            judge: "openai/judge".into(),
            winner: (*w).into(),
            reason: None,
        };
        lines.push_str(&serde_json::to_string(&p).expect("json"));
        lines.push('\n');
    }
    std::fs::write(dir.join("pairwise.jsonl"), lines).expect("write");
    let r = report::build_report(dir, &Default::default()).expect("report");
    assert_eq!(r.judge.len(), 1);
    assert_eq!(
        (r.judge[0].wins_a, r.judge[0].wins_b, r.judge[0].ties),
        (3, 1, 1)
    );
}

#[test]
fn missing_or_broken_run_json_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = report::write_report(tmp.path()).expect_err("no run.json");
    assert!(matches!(err, ReportError::Read { .. }), "{err}");
    assert!(err.to_string().contains("run.json"), "{err}");
    std::fs::write(tmp.path().join("run.json"), "{\"version\": 1}").expect("write");
    let err = report::write_report(tmp.path()).expect_err("bad run.json");
    assert!(err.to_string().contains("not a run.json"), "{err}");
}

#[test]
fn compare_pairs_models_on_shared_items() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b, out) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("out"),
    );
    let mut ra = Vec::new();
    let mut rb = Vec::new();
    for i in 0..200 {
        ra.push(result(i, "m/one", Some(i % 2 == 0), Some(0.01)));
        ra.push(result(i, "m/old", Some(true), Some(0.01)));
        // In run B, m/one also passes the items i % 4 == 1: +25 points.
        rb.push(result(
            i,
            "m/one",
            Some(i % 2 == 0 || i % 4 == 1),
            Some(0.005),
        ));
        rb.push(result(i, "m/new", Some(true), Some(0.01)));
    }
    // Run B has 10 more items; they are not compared.
    for i in 200..210 {
        rb.push(result(i, "m/one", Some(false), Some(0.005)));
    }
    write_run(&a, &meta(&["m/one", "m/old"], 200), &ra);
    let mut mb = meta(&["m/one", "m/new"], 210);
    mb.run_id = "run-2".into();
    write_run(&b, &mb, &rb);

    let c = report::compare(&a, &b).expect("compare");
    assert_eq!(c.shared_items, 200);
    assert_eq!(c.same_dataset, Some(true));
    assert_eq!(c.models.len(), 1);
    let d = &c.models[0];
    assert_eq!(d.model_a, "m/one");
    let p = d.paired.expect("paired");
    assert_eq!(p.n, 200);
    assert!((p.diff - 0.25).abs() < 1e-9);
    assert!(p.significantly_better);
    assert_eq!((p.mcnemar.b, p.mcnemar.c), (0, 50));
    assert_eq!(d.verdict, "better");
    assert!((d.cost_ratio.expect("ratio") - 0.5).abs() < 1e-9);
    assert_eq!(c.only_in_a, vec!["m/old"]);
    assert_eq!(c.only_in_b, vec!["m/new"]);
    assert_eq!(c.changed_items.len(), 50);
    assert!(
        c.summary[0].contains("m/one: B is significantly more accurate (+25.0 points"),
        "{:?}",
        c.summary
    );
    assert!(
        c.summary[0].contains("B costs 50% of the cost"),
        "{:?}",
        c.summary
    );
    let term = c.terminal();
    assert!(term.contains("only in A: m/old"), "{term}");

    let (json, html) = c.write(&out).expect("write");
    let j: Value = serde_json::from_slice(&std::fs::read(json).expect("json")).expect("valid");
    assert_eq!(j["models"][0]["paired"]["mcnemar"]["c"], 50);
    let html = std::fs::read_to_string(html).expect("html");
    assert!(html.contains("Changed items") && html.contains("m/one"));
    // Deterministic too.
    let again = report::compare(&a, &b).expect("compare");
    assert_eq!(again.to_json(), c.to_json());
    assert_eq!(again.to_html(), c.to_html());
}
