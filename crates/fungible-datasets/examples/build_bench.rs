//! How long `fungible datasets build` takes on recorded traffic:
//! `cargo run --release -p fungible-datasets --features local --example build_bench -- [N]`
//! records N
//! inferences (default 10,000; a fifth with feedback, a tenth exact repeats) in a fresh
//! SQLite store, then builds a dataset from them three ways, and prints rows/s for each:
//! no duplicate search, exact duplicates only, and exact plus near duplicates with the local
//! all-MiniLM-L6-v2 (`models/`, or FUNGIBLE_MODELS_DIR), PII scrub on.

use std::time::Instant;

use fungible_datasets::versions;
use fungible_datasets::{Curation, Selection};
use fungible_gateway::{ConfigFile, Gateway, GatewayConfig};
use fungible_store::{Feedback, FeedbackTarget, InferenceRecord, Store, new_id};
use fungible_types::{ChatRequest, Message, Role, Usage};
use serde_json::json;

const TOPICS: [&str; 8] = ["password reset", "invoice", "refund", "shipping delay", "API key", "plan upgrade", "login error", "data export"];

fn record(i: u64) -> InferenceRecord {
    // A tenth repeat an earlier question word for word.
    let n = if i % 10 == 9 { i - 9 } else { i };
    let topic = TOPICS[(n % 8) as usize];
    let question = format!("Hi, I have a question about my {topic} (ticket {n}). Customer jane{n}@example.com says it has not worked since Tuesday.");
    let request = ChatRequest {
        model: "support".into(),
        messages: vec![Message::text(Role::System, "You are the support assistant. Be brief."), Message::text(Role::User, question)],
        ..ChatRequest::default()
    };
    InferenceRecord {
        id: new_id(),
        time_ms: 1_764_460_800_000 + i as i64,
        inbound: "openai_chat".into(),
        requested_model: "support".into(),
        route: Some("support".into()),
        variant: None,
        provider: Some("openai".into()),
        model: Some("gpt-4.1-mini".into()),
        stream: false,
        error: None,
        request: serde_json::to_value(&request).expect("request"),
        response: Some(json!({"id": "x", "model": "gpt-4.1-mini", "created": 0, "message": {"content": format!("Sorry about the {topic}: here is what to do, step by step."), "tool_calls": [], "reasoning": [], "refusal": null}, "finish_reason": "Stop", "usage": {"input_tokens": 40, "output_tokens": 12, "cache_read_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0}})),
        usage: Usage { input_tokens: 40, output_tokens: 12, ..Usage::default() },
        cost: None,
        ttft_ms: None,
        latency_ms: 300.0,
        user: None,
        tags: json!({"team": if i % 2 == 0 { "web" } else { "billing" }}),
        episode_id: None,
        attempts: vec![],
        key_id: None,
        cache_hit: false,
        truncated: false,
        raw: Vec::new(),
    }
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let dir = std::env::temp_dir().join(format!("fungible-build-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let store = Store::open(&fungible_store::sqlite_url(&dir.join("s.db"))).await.expect("store");
    let records: Vec<InferenceRecord> = (0..n).map(record).collect();
    for chunk in records.chunks(1000) {
        store.insert(chunk).await.expect("insert");
    }
    for (i, r) in records.iter().enumerate().filter(|(i, _)| i % 5 == 0) {
        let f = Feedback { id: new_id(), time_ms: r.time_ms + 1, target: FeedbackTarget::Inference, target_id: r.id.clone(), boolean: Some(i % 10 != 0), score: None, comment: None, demonstration: None };
        store.insert_feedback(&f).await.expect("feedback");
    }
    let models = std::env::var("FUNGIBLE_MODELS_DIR").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../models").to_owned());
    let file = ConfigFile::parse(&format!("[local]\nmodels_dir = {models:?}\n"), "bench.toml").expect("config");
    let gateway = Gateway::new(&GatewayConfig::resolve(file, &|_| None).expect("config")).expect("gateway");

    println!("{n} recorded inferences, {} with feedback", n / 5);
    println!("{:<44} {:>8} {:>10} {:>10}", "curation", "rows", "seconds", "inputs/s");
    let runs = [
        ("no duplicate search", Curation { dedup: false, near_duplicates: None, ..Curation::default() }),
        ("exact duplicates", Curation { near_duplicates: None, ..Curation::default() }),
        ("exact + near duplicates (MiniLM), PII scrub", Curation { scrub_pii: true, ..Curation::default() }),
    ];
    for (i, (label, curation)) in runs.into_iter().enumerate() {
        let started = Instant::now();
        let info = versions::build(&store, &format!("bench{i}"), None, Selection::default(), curation, Some(&gateway)).await.expect("build");
        let secs = started.elapsed().as_secs_f64();
        println!("{label:<44} {:>8} {secs:>10.2} {:>10.0}", info.rows, n as f64 / secs);
    }
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
