//! `fungible stats` at scale: `cargo run -p fungible-store --example stats_bench -- [N]`
//! writes N synthetic records (default 1,000,000) through the recorder into a fresh SQLite
//! file, and into a fresh PostgreSQL schema when `FUNGIBLE_TEST_POSTGRES_URL` is set (the
//! schema is dropped at the end), prints the ingest rate, then times `Store::stats` for
//! every grouping, over everything and over the last day: once from the rows alone
//! (`--by model`), then after rolling the hours up as the gateway does every minute.
//!
//! `STATS_BENCH_SQLITE_PATH=FILE` keeps the SQLite file, and reuses it when it exists
//! (no fill), to time stats again without writing a million records first.

use std::time::Instant;

use fungible_store::testing::PgSchema;
use fungible_store::{GroupBy, Store, new_id};

const DAY_MS: i64 = 86_400_000;
/// The newest synthetic record's time.
const END_MS: i64 = 1_764_460_800_000;

/// Writes `n` synthetic records through the recorder and prints the rate.
async fn fill(name: &str, store: &Store, n: u64) {
    let started = Instant::now();
    let (written, dropped) = fungible_store::testing::fill_synthetic(store, n, END_MS).await;
    let total = started.elapsed().as_secs_f64();
    println!("{name:<8} ingest: {written} records in {total:.1} s: {:.0} records/s ({dropped} dropped)", written as f64 / total);
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
