//! Sustained ingest rate through the recorder: `cargo run --release -p fungible-store
//! --example ingest -- [N] [postgres://...]` writes N typical records (default 100,000) into
//! a fresh SQLite file, and into PostgreSQL when a URL is given, and prints records/s.
//! With `INGEST_SQLITE_PATH=FILE` the SQLite file is kept.

use std::time::Instant;

use fungible_store::{AttemptRecord, AttemptStatus, InferenceRecord, Recorder, RecorderOptions, Store, new_id};
use fungible_types::Usage;
use serde_json::json;

fn record(i: u64) -> InferenceRecord {
    InferenceRecord {
        id: new_id(),
        time_ms: 1_764_460_800_000 + i as i64,
        inbound: "openai_chat".into(),
        requested_model: "openai/gpt-5-mini".into(),
        route: None,
        variant: None,
        provider: Some("openai".into()),
        model: Some("gpt-5-mini".into()),
        stream: false,
        error: None,
        request: json!({"model": "openai/gpt-5-mini", "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": format!("Question number {i}: what is the capital of France?")}]}),
        response: Some(
            json!({"id": "chatcmpl-1", "model": "gpt-5-mini", "message": {"content": "Paris."}, "finish_reason": "Stop", "usage": {"input_tokens": 30, "output_tokens": 3}}),
        ),
        usage: Usage {
            input_tokens: 30,
            output_tokens: 3,
            ..Usage::default()
        },
        cost: Some(0.000_013_5),
        ttft_ms: None,
        latency_ms: 250.0,
        user: Some("user-42".into()),
        tags: json!({}),
        episode_id: None,
        key_id: None,
        cache_hit: false,
        truncated: false,
        raw: Vec::new(),
        attempts: vec![AttemptRecord {
            provider: "openai".into(),
            model: "gpt-5-mini".into(),
            status: AttemptStatus::Ok,
            error: None,
            latency_ms: 249.0,
            cost: Some(0.000_013_5),
        }],
    }
}

async fn run(name: &str, store: Store, n: u64) {
    let recorder = Recorder::start(
        store,
        RecorderOptions {
            queue_capacity: n as usize + 1,
            queue_bytes: usize::MAX,
            ..RecorderOptions::default()
        },
    );
    let started = Instant::now();
    for i in 0..n {
        recorder.record(record(i));
    }
    let enqueued = started.elapsed();
    recorder.shutdown().await;
    let total = started.elapsed();
    let written = recorder
        .counters()
        .written
        .load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{name:<10} {written} records in {:.2} s: {:.0} records/s (enqueue {:.2} µs/record)",
        total.as_secs_f64(),
        written as f64 / total.as_secs_f64(),
        enqueued.as_secs_f64() * 1e6 / n as f64
    );
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    // INGEST_SQLITE_PATH keeps the file (to time `fungible stats` over it).
    let keep = std::env::var_os("INGEST_SQLITE_PATH").map(std::path::PathBuf::from);
    let path = keep.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("fungible-ingest-{}.db", new_id())));
    let sqlite = Store::open(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .expect("sqlite");
    run("sqlite", sqlite, n).await;
    if keep.is_none() {
        let _ = std::fs::remove_file(&path);
    }
    if let Some(url) = args.next() {
        let pg = Store::open(&url).await.expect("postgres");
        run("postgres", pg, n).await;
    }
}
