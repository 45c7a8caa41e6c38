//! `--failover`: client-visible failures and attempts through a route whose first upstream
//! fails at random.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::bail;
use bytes::Bytes;
use fungible_mock::{Fallback, MockUpstream};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::gateway::GatewayProcess;
use super::load::{Measurement, finish};
use super::{BenchArgs, HttpClient, REQUEST, bench_dir, completion_body, stream_body};

/// One request of the failover bench: its latency in microseconds when it succeeded, and
/// the attempts the gateway reported (`x-fungible-attempts`).
async fn one_routed(client: &HttpClient, url: &str, body: &Bytes) -> (Option<u64>, Option<u32>) {
    let start = Instant::now();
    let Ok(request) = hyper::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
    else {
        return (None, None);
    };
    let Ok(response) = client.request(request).await else { return (None, None) };
    let ok = response.status().is_success();
    let attempts = response
        .headers()
        .get("x-fungible-attempts")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let Ok(bytes) = response.into_body().collect().await.map(|b| b.to_bytes()) else { return (None, attempts) };
    ((ok && !bytes.is_empty()).then(|| start.elapsed().as_micros() as u64), attempts)
}

struct RoutedRun {
    m: Measurement,
    /// Requests by attempts taken (index 0: unknown).
    attempts: Vec<u64>,
}

/// `total` requests over `concurrency` workers.
async fn routed_run(client: &HttpClient, url: &str, body: &Bytes, concurrency: usize, total: u64) -> RoutedRun {
    let start = Instant::now();
    let left = Arc::new(AtomicU64::new(total));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, body, left) = (client.clone(), url.to_owned(), body.clone(), left.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
                out.push(one_routed(&client, &url, &body).await);
            }
            out
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut attempts = vec![0u64; 8];
    for w in workers {
        for (latency, n) in w.await.unwrap_or_default() {
            match latency {
                Some(us) => latencies.push(us),
                None => errors += 1,
            }
            let n = n.unwrap_or(0) as usize;
            if attempts.len() <= n {
                attempts.resize(n + 1, 0);
            }
            attempts[n] += 1;
        }
    }
    RoutedRun { m: finish(latencies, errors, start.elapsed()), attempts }
}

/// `fungible bench --failover`: see [`BenchArgs::failover`].
pub(super) async fn failover(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&args.fail_rate) {
        bail!("--fail-rate: expected 0 to 1, got {}", args.fail_rate);
    }
    let fixed = || Fallback::Fixed { json: completion_body(), sse: stream_body(args.chunks) };
    let flaky = MockUpstream::start_on("127.0.0.1:0".parse()?, fixed(), false).await?;
    let healthy = MockUpstream::start_on("127.0.0.1:0".parse()?, fixed(), false).await?;
    let dir = bench_dir("failover")?;
    let config = dir.join("fungible.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nenabled = false\n\
             [providers.flaky]\nkind = \"openai_compatible\"\nbase_url = \"{}/v1\"\n\
             [providers.healthy]\nkind = \"openai_compatible\"\nbase_url = \"{}/v1\"\n\
             [models.failover]\ntargets = [{{ target = \"flaky/gpt-4o-mini\" }}, {{ target = \"healthy/gpt-4o-mini\" }}]\n",
            flaky.url(),
            healthy.url()
        ),
    )?;
    let mut gateway = GatewayProcess::start(&flaky.url(), args.port, args.workers, &config)?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build_http();
    gateway.wait_ready(&client).await?;
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", args.port);
    let body = Bytes::from(REQUEST.replace("MODEL", "failover").replace("STREAM", ""));
    eprintln!(
        "fungible bench --failover: {} requests per phase, c={}, route failover = [flaky, healthy] (default retries, breaker, retry budget), flaky fails {:.0}% (seed {})",
        args.requests,
        args.concurrency,
        args.fail_rate * 100.0,
        args.seed
    );

    // Warm up, then both healthy, then the first upstream failing at random.
    let _ = routed_run(&client, &url, &body, args.concurrency, 500).await;
    let base_counts = (flaky.request_count(), healthy.request_count());
    let baseline = routed_run(&client, &url, &body, args.concurrency, args.requests).await;
    let healthy_counts = (flaky.request_count() - base_counts.0, healthy.request_count() - base_counts.1);
    flaky.set_chaos(Some(fungible_mock::Chaos::new(args.fail_rate, args.seed)));
    let before = (flaky.request_count(), healthy.request_count());
    let chaos = routed_run(&client, &url, &body, args.concurrency, args.requests).await;
    let chaos_counts = (flaky.request_count() - before.0, healthy.request_count() - before.1);
    let injected = flaky.injected_failures();
    gateway.stop();
    let _ = std::fs::remove_dir_all(&dir);

    println!();
    println!("| phase | requests | client-visible failures | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | upstream calls flaky / healthy |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, run, counts) in [("all healthy", &baseline, healthy_counts), ("flaky fails at random", &chaos, chaos_counts)] {
        let added = |p: f64| {
            if std::ptr::eq(run, &baseline) { "–".to_owned() } else { format!("{:+.3}", run.m.percentile(p) - baseline.m.percentile(p)) }
        };
        println!(
            "| {name} | {} | {} | {:.0} | {:.3} | {:.3} | {} | {} | {} / {} |",
            run.m.ok + run.m.errors,
            run.m.errors,
            run.m.rps(),
            run.m.percentile(0.5),
            run.m.percentile(0.99),
            added(0.5),
            added(0.99),
            counts.0,
            counts.1
        );
    }
    println!();
    println!("failures injected into flaky: {injected}");
    for (name, run) in [("all healthy", &baseline), ("flaky fails at random", &chaos)] {
        let dist: Vec<String> = run
            .attempts
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(i, n)| if i == 0 { format!("unknown: {n}") } else { format!("{i}: {n}") })
            .collect();
        println!("attempts per request, {name}: {}", dist.join(", "));
    }
    if baseline.m.errors + chaos.m.errors > 0 {
        eprintln!("fungible bench --failover: some requests failed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
