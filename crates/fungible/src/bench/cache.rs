//! `--cache`: hit vs miss latency of the response cache; `--cache --shared`: the same cache
//! shared by two instances over Redis, exact and semantic hits on the instance that stored
//! the answer and on the other one.

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
    if args.shared {
        let shared = shared_phases(&args, &mock.url(), &dir, &client).await?;
        failed |= shared.iter().any(|(_, _, m)| m.errors > 0);
        rows.extend(shared);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!();
    println!("| request | cache | req/s | p50 ms | p99 ms | errors |");
    println!("|---|---|---:|---:|---:|---:|");
    for (kind, outcome, m) in &rows {
        // The shared phases are sequential pairs of requests: their rate says nothing.
        let rps = if kind.starts_with("shared") { "–".to_owned() } else { format!("{:.0}", m.rps()) };
        println!("| {kind} | {outcome} | {rps} | {:.3} | {:.3} | {} |", m.percentile(0.5), m.percentile(0.99), m.errors);
    }
    if failed {
        eprintln!("fungible bench: some requests failed, or were not the expected hit or miss");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `--shared`: two gateways over one Redis (`--redis`), the cache in Redis and semantic
/// matching on. For each of `--requests` questions (capped at 200), in turn: instance A
/// answers it (a miss, stored), then the phases ask it again, each as a new question so no
/// local copy can answer for the other instance. The paraphrase is the question in lower
/// case: the embedding model is uncased, so it embeds identically (similarity 1) while the
/// exact key differs, and a threshold of 0.999 keeps every other question out.
async fn shared_phases(
    args: &BenchArgs,
    mock_url: &str,
    dir: &std::path::Path,
    client: &HttpClient,
) -> anyhow::Result<Vec<(&'static str, &'static str, Measurement)>> {
    use anyhow::Context;
    let prefix = format!("fungible:bench:{}:", std::process::id());
    let config = dir.join("shared.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nenabled = false\n[cache]\nbackend = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"{prefix}\"\n\
             [cache.semantic]\nmodels = [\"openai/gpt-4o-mini\"]\nthreshold = 0.999\n",
            args.redis
        ),
    )?;
    let mut a = GatewayProcess::start(mock_url, args.port + 1, args.workers, &config)?;
    let mut b = GatewayProcess::start(mock_url, args.port + 2, args.workers, &config)?;
    a.wait_ready(client).await.context("instance A")?;
    b.wait_ready(client).await.context("instance B")?;
    let url = |port: u16| format!("http://127.0.0.1:{port}/v1/chat/completions");
    let (url_a, url_b) = (url(args.port + 1), url(args.port + 2));
    let body = |question: &str| {
        Bytes::from(format!(
            r#"{{"model":"openai/gpt-4o-mini","temperature":0,"messages":[{{"role":"user","content":"{question}"}}]}}"#
        ))
    };
    let n = args.requests.min(200);
    eprintln!("fungible bench --cache --shared: {n} questions per phase, instances on ports {} and {}, Redis {}", args.port + 1, args.port + 2, args.redis);
    // (phase, who asks, the question as asked, the outcome expected).
    let phases: [(&str, &str, bool, &str); 5] = [
        ("miss (embedded, stored)", "A", false, "miss"),
        ("exact, same instance", "A", false, "hit exact"),
        ("semantic, same instance", "A", true, "hit semantic"),
        ("exact, other instance", "B", false, "hit exact"),
        ("semantic, other instance", "B", true, "hit semantic"),
    ];
    let mut latencies: Vec<Vec<u64>> = vec![Vec::new(); phases.len()];
    let mut errors = vec![0u64; phases.len()];
    let started = Instant::now();
    for i in 0..n {
        // Each phase but the first needs its own stored question, so a hit is never served
        // from what an earlier phase left in an instance's local copy.
        for (p, (_, who, paraphrase, expected)) in phases.iter().enumerate() {
            let question = format!("Phase {p} question {i}: which {} is the {} of {}?", WORDS[i as usize % WORDS.len()], WORDS[(i as usize * 7 + p) % WORDS.len()], WORDS[(i as usize * 13 + 3 * p) % WORDS.len()]);
            if p > 0 {
                // Stored by A (a miss), not measured.
                let _ = ask(client, &url_a, body(&question)).await;
            }
            let asked = if *paraphrase { question.to_lowercase() } else { question };
            let target = if *who == "A" { &url_a } else { &url_b };
            match ask(client, target, body(&asked)).await {
                Some((us, outcome)) if outcome == *expected => latencies[p].push(us),
                Some((_, outcome)) => {
                    errors[p] += 1;
                    if errors[p] == 1 {
                        eprintln!("  {}: expected {expected:?}, got {outcome:?}", phases[p].0);
                    }
                }
                None => errors[p] += 1,
            }
        }
    }
    let elapsed = started.elapsed();
    a.stop();
    b.stop();
    let mut rows = Vec::new();
    for (p, (name, ..)) in phases.iter().enumerate() {
        let m = finish(std::mem::take(&mut latencies[p]), errors[p], elapsed);
        eprintln!("  {name:<26} p50 {:>7.3} ms  p99 {:>7.3} ms  errors {}", m.percentile(0.5), m.percentile(0.99), m.errors);
        rows.push(("shared json", *name, m));
    }
    Ok(rows)
}

/// Words the shared phases' questions are made of, so that no two questions embed alike.
const WORDS: [&str; 24] = [
    "river", "mountain", "violin", "harbor", "comet", "library", "glacier", "orchard", "tractor", "volcano", "lantern",
    "falcon", "desert", "compass", "quartz", "meadow", "pyramid", "saddle", "tundra", "beacon", "canyon", "walnut",
    "trumpet", "lagoon",
];

/// One request; its latency in µs and `x-fungible-cache` (with `x-fungible-cache-match`).
async fn ask(client: &HttpClient, url: &str, body: Bytes) -> Option<(u64, String)> {
    let sent = Instant::now();
    let request = hyper::Request::post(url).header("content-type", "application/json").body(Full::new(body)).ok()?;
    let response = client.request(request).await.ok()?;
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let outcome = format!("{} {}", header("x-fungible-cache"), header("x-fungible-cache-match"));
    let ok = response.status().is_success();
    response.into_body().collect().await.ok()?;
    let us = sent.elapsed().as_micros() as u64;
    ok.then(|| (us, outcome.trim().to_owned()))
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
