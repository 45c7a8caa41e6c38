//! `fungible stats` at scale: `cargo run -p fungible-store --example stats_bench -- [N]`
//! writes N synthetic records (default 1,000,000) through the recorder into a fresh SQLite
//! file, and into a fresh PostgreSQL schema when `FUNGIBLE_TEST_POSTGRES_URL` is set (the
//! schema is dropped at the end), prints the ingest rate, then times `Store::stats` for
//! every grouping, over everything and over the last day: once from the rows alone
//! (`--by model`), then after rolling the hours up as the gateway does every minute.
//!
//! `STATS_BENCH_SQLITE_PATH=FILE` keeps the SQLite file, and reuses it when it exists
//! (no fill), to time stats again without writing a million records first.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fungible_store::testing::PgSchema;
use fungible_store::{
    AttemptStatus,
    AttemptRecord, GroupBy, InferenceRecord, Recorder, RecorderOptions, Store, new_id,
};
use fungible_types::Usage;
use serde_json::json;

const DAY_MS: i64 = 86_400_000;
/// The newest synthetic record's time.
const END_MS: i64 = 1_764_460_800_000;

/// A well-mixed 64-bit hash of `i` (splitmix64), for deterministic variety.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn record(i: u64, n: u64) -> InferenceRecord {
    const TARGETS: [(&str, &str); 9] = [
        ("openai", "gpt-5"),
        ("openai", "gpt-5-mini"),
        ("openai", "gpt-4.1"),
        ("anthropic", "claude-sonnet-4-5"),
        ("anthropic", "claude-haiku-4-5"),
        ("anthropic", "claude-opus-4-1"),
        ("gemini", "gemini-2.5-pro"),
        ("gemini", "gemini-2.5-flash"),
        ("local-vllm", "Qwen/Qwen3-8B"),
    ];
    const INBOUND: [&str; 4] = [
        "openai_chat",
        "anthropic_messages",
        "gemini",
        "openai_responses",
    ];
    let h = mix(i);
    let (provider, model) = TARGETS[(h % 9) as usize];
    let failed = (h >> 8) % 50 == 0;
    // Mostly 50..550 ms, a 5% tail up to 30 s.
    let latency_ms = if (h >> 16) % 20 == 0 {
        500.0 + ((h >> 24) % 29_500_000) as f64 / 1000.0
    } else {
        50.0 + ((h >> 24) % 500_000) as f64 / 1000.0
    };
    let input = 20 + (h >> 40) % 2000;
    let output = if failed { 0 } else { 1 + (h >> 20) % 500 };
    let usage = Usage {
        input_tokens: if failed { 0 } else { input },
        output_tokens: output,
        cache_read_tokens: if (h >> 12) % 4 == 0 { input / 2 } else { 0 },
        ..Usage::default()
    };
    let priced = provider != "local-vllm" && (h >> 32) % 20 != 0;
    let cost = if failed {
        Some(0.0)
    } else {
        priced.then_some((usage.input_tokens as f64 * 1.25 + output as f64 * 10.0) / 1e6)
    };
    let route = match i % 3 {
        0 => Some("smart"),
        1 => Some("fast"),
        _ => None,
    };
    InferenceRecord {
        id: new_id(),
        // Spread evenly over the 30 days up to END_MS.
        time_ms: END_MS - 30 * DAY_MS + (i as i64) * (30 * DAY_MS) / (n.max(1) as i64),
        inbound: INBOUND[(h >> 4) as usize % 4].into(),
        requested_model: route.map_or_else(|| format!("{provider}/{model}"), str::to_owned),
        route: route.map(str::to_owned),
        variant: route.map(|_| "a".to_owned()),
        provider: Some(provider.into()),
        model: Some(model.into()),
        stream: h % 2 == 0,
        error: failed.then(|| "rate_limited".to_owned()),
        request: json!({"model": route.unwrap_or(model), "messages": [{"role": "system", "content": "You are a terse assistant. Answer in one sentence."}, {"role": "user", "content": format!("Question number {i}: what is the capital of France, and why is it that city?")}], "params": {"temperature": 0.2, "max_tokens": 512}}),
        response: (!failed).then(|| json!({"id": format!("chatcmpl-{i}"), "model": model, "created": 1_764_460_800, "message": {"content": "Paris, because it has been the seat of the French state for centuries."}, "finish_reason": "stop", "usage": {"input_tokens": usage.input_tokens, "output_tokens": output}})),
        usage,
        cost,
        ttft_ms: (h % 2 == 0).then_some(latency_ms / 4.0),
        latency_ms,
        user: Some(format!("user-{}", (h >> 28) % 1000)),
        tags: json!({"team": format!("team-{}", (h >> 36) % 5), "env": if (h >> 44) % 4 == 0 { "dev" } else { "prod" }}),
        episode_id: None,
        key_id: Some(format!("key_{:02}", (h >> 48) % 50)),
        cache_hit: false,
        truncated: false,
        raw: Vec::new(),
        attempts: vec![AttemptRecord {
            provider: provider.into(),
            model: model.into(),
            status: if failed { AttemptStatus::Failed } else { AttemptStatus::Ok },
            error: failed.then(|| "rate_limited".to_owned()),
            latency_ms,
            cost,
        }],
    }
}

/// Writes `n` records through the recorder (the gateway's write path), keeping the queue
/// below its bound rather than dropping, and prints the rate.
async fn fill(name: &str, store: &Store, n: u64) {
    let options = RecorderOptions::default();
    let recorder = Recorder::start(store.clone(), options);
    let started = Instant::now();
    for i in 0..n {
        while recorder.queued() + 1 >= options.queue_capacity
            || recorder.counters().queued_bytes.load(Ordering::Relaxed) + (64 << 10)
                > options.queue_bytes
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        recorder.record(record(i, n));
    }
    recorder.shutdown().await;
    let total = started.elapsed().as_secs_f64();
    let c = recorder.counters();
    println!(
        "{name:<8} ingest: {} records in {total:.1} s: {:.0} records/s ({} dropped)",
        c.written.load(Ordering::Relaxed),
        c.written.load(Ordering::Relaxed) as f64 / total,
        c.dropped.load(Ordering::Relaxed),
    );
}

/// `stats --by model` from the rows alone, then the roll-up (what the gateway does each
/// minute in the background), timed; [`time_stats`] then reads the roll-ups.
async fn roll_up(name: &str, store: &Store) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    if store.rollup_watermark().await.expect("watermark") == 0 {
        let started = Instant::now();
        let rows = store.stats(GroupBy::Model, None, None).await.expect("stats");
        println!(
            "{name:<8} stats --by model   (all, no roll-ups): {:>7.1} ms  {:>5} groups",
            started.elapsed().as_secs_f64() * 1000.0,
            rows.len()
        );
    }
    let started = Instant::now();
    let done = store.roll_up(now).await.expect("roll-up");
    println!(
        "{name:<8} roll-up: {} days in {:.1} s",
        done.days,
        started.elapsed().as_secs_f64()
    );
}

async fn time_stats(name: &str, store: &Store) {
    let groups = [
        ("model", GroupBy::Model),
        ("provider", GroupBy::Provider),
        ("route", GroupBy::Route),
        ("key", GroupBy::Key),
        ("user", GroupBy::User),
        ("tag", GroupBy::Tag),
        ("day", GroupBy::Day),
        ("inbound", GroupBy::Inbound),
    ];
    for (label, since) in [("all", None), ("last day", Some(END_MS - DAY_MS))] {
        for (group, by) in groups {
            // Best of three (the first run warms the page cache).
            let mut best = f64::MAX;
            let mut rows = Vec::new();
            for _ in 0..3 {
                let started = Instant::now();
                rows = store.stats(by, since, None).await.expect("stats");
                best = best.min(started.elapsed().as_secs_f64());
            }
            let requests: u64 = rows.iter().map(|r| r.requests).sum();
            let top = rows.first().map_or(String::new(), |r| {
                format!(
                    "top {} p50 {:.1} p95 {:.1} ms",
                    r.key, r.p50_latency_ms, r.p95_latency_ms
                )
            });
            println!(
                "{name:<8} stats --by {group:<8} ({label:<8}): {:>7.1} ms  {:>5} groups, {requests} requests; {top}",
                best * 1000.0,
                rows.len()
            );
        }
    }
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.replace('_', "").parse().ok())
        .unwrap_or(1_000_000);
    let keep = std::env::var_os("STATS_BENCH_SQLITE_PATH").map(std::path::PathBuf::from);
    let path = keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("fungible-stats-bench-{}.db", new_id()))
    });
    let existed = path.exists();
    let sqlite = Store::open(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .expect("sqlite");
    if existed {
        println!("sqlite   reusing {}", path.display());
    } else {
        fill("sqlite", &sqlite, n).await;
    }
    roll_up("sqlite", &sqlite).await;
    time_stats("sqlite", &sqlite).await;
    sqlite.close().await;
    if keep.is_none() {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    if let Some(schema) = PgSchema::from_env().await.expect("postgres") {
        let pg = Store::open(schema.url()).await.expect("postgres");
        fill("postgres", &pg, n).await;
        roll_up("postgres", &pg).await;
        time_stats("postgres", &pg).await;
        pg.close().await;
    }
}
