//! `--cache`: hit vs miss latency of the response cache.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::gateway::GatewayProcess;
use super::load::{Measurement, finish};
use super::{BenchArgs, HttpClient, bench_dir, fixed_mock};

/// `--cache`: hit vs miss latency of the response cache (see [`BenchArgs`]).
pub(super) async fn cache_bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let mock = fixed_mock(args.chunks).await?;
    let dir = bench_dir("cache")?;
    let config = dir.join("fungible.toml");
    std::fs::write(&config, "[store]\nenabled = false\n[cache]\nbackend = \"memory\"\n")?;
    let mut gateway = GatewayProcess::start(&mock.url(), args.port, args.workers, &config)?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build_http();
    gateway.wait_ready(&client).await?;
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", args.port);
    let body = |question: &str, stream: bool| {
        Bytes::from(format!(
            r#"{{"model":"openai/gpt-4o-mini","temperature":0,"stream":{stream},"messages":[{{"role":"user","content":"{question}"}}]}}"#
        ))
    };
    let duration = Duration::from_secs(args.duration);
    eprintln!("fungible bench --cache: {} s per phase, sequential requests, {} SSE chunks", args.duration, args.chunks);
    let mut rows = Vec::new();
    let mut failed = false;
    for stream in [false, true] {
        let kind = if stream { "stream" } else { "json" };
        // Misses: a new question each time.
        let mut n = 0u64;
        let miss = cache_phase(&client, &url, duration, "miss", || {
            n += 1;
            body(&format!("miss {kind} question {n}"), stream)
        })
        .await;
        // Hits: the same question, stored by its first request.
        let hit_body = body(&format!("the cached {kind} question"), stream);
        let hit = cache_phase(&client, &url, duration, "hit", || hit_body.clone()).await;
        for (outcome, m) in [("miss", miss), ("hit", hit)] {
            eprintln!(
                "  {kind:<6} {outcome:<4} {:>8.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {}",
                m.rps(),
                m.percentile(0.5),
                m.percentile(0.99),
                m.errors
            );
            failed |= m.errors > 0;
            rows.push((kind, outcome, m));
        }
    }
    gateway.stop();
    let _ = std::fs::remove_dir_all(&dir);
    println!();
    println!("| request | cache | req/s | p50 ms | p99 ms | errors |");
    println!("|---|---|---:|---:|---:|---:|");
    for (kind, outcome, m) in &rows {
        println!("| {kind} | {outcome} | {:.0} | {:.3} | {:.3} | {} |", m.rps(), m.percentile(0.5), m.percentile(0.99), m.errors);
    }
    if failed {
        eprintln!("fungible bench: some requests failed, or were not the expected hit or miss");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Sequential requests for `duration`; a request whose `x-fungible-cache` is not `expected`
/// (after the first, which may store the answer) counts as an error.
async fn cache_phase(
    client: &HttpClient,
    url: &str,
    duration: Duration,
    expected: &str,
    mut next_body: impl FnMut() -> Bytes,
) -> Measurement {
    let start = Instant::now();
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first = true;
    while start.elapsed() < duration {
        let body = next_body();
        let sent = Instant::now();
        let Ok(request) = hyper::Request::post(url).header("content-type", "application/json").body(Full::new(body)) else {
            errors += 1;
            continue;
        };
        let Ok(response) = client.request(request).await else {
            errors += 1;
            continue;
        };
        let outcome = response.headers().get("x-fungible-cache").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let ok = response.status().is_success();
        let read = response.into_body().collect().await.is_ok();
        let us = sent.elapsed().as_micros() as u64;
        if std::mem::take(&mut first) && expected == "hit" {
            continue; // the request that stores the answer
        }
        if ok && read && outcome == expected {
            latencies.push(us);
        } else {
            errors += 1;
        }
    }
    finish(latencies, errors, start.elapsed())
}
