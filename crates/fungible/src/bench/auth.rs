//! `--auth`: the added latency of virtual keys, limits and budgets checked in Redis.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::gateway::GatewayProcess;
use super::load::{closed_loop, open_loop};
use super::{BENCH_KEY, BenchArgs, HttpClient, REQUEST, bench_dir, fixed_mock};

/// `--auth`: auth + limits + budget (Redis) on vs off, at a fixed rate.
pub(super) async fn auth_bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    const ADMIN: &str = "bench-admin-key-0123456789abcdef";
    let mock = fixed_mock(args.chunks).await?;
    let dir = bench_dir("auth")?;
    let store = format!("[store]\npath = \"{}\"\n", dir.join("fungible.db").display());
    let off = dir.join("off.toml");
    std::fs::write(&off, &store)?;
    let on = dir.join("on.toml");
    std::fs::write(&on, format!("{store}[auth]\nenabled = true\n[state]\nredis = \"{}\"\n", args.redis))?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build_http();
    let mut plain = GatewayProcess::start(&mock.url(), args.port, args.workers, &off)?;
    plain.wait_ready(&client).await?;
    let mut keyed = GatewayProcess::start_with(&mock.url(), args.port + 1, args.workers, &on, &[("FUNGIBLE_ADMIN_KEY", ADMIN)])?;
    keyed.wait_ready(&client).await?;
    // A key whose limits are all checked but never reached.
    let create = hyper::Request::post(format!("http://127.0.0.1:{}/admin/keys", args.port + 1))
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"name":"bench","models":["openai/*"],"rpm":1000000000,"tpm":1000000000000,"budget":{"usd":1000000000,"period":"total"}}"#)))?;
    let response = client.request(create).await.context("creating the bench key")?;
    let status = response.status();
    let created: serde_json::Value = serde_json::from_slice(&response.into_body().collect().await?.to_bytes()).unwrap_or_default();
    let Some(key) = created["key"].as_str().map(str::to_owned) else {
        bail!("could not create a key ({status}): {created}");
    };
    let body = Bytes::from(REQUEST.replace("MODEL", "openai/gpt-4o-mini").replace("STREAM", ""));
    let duration = Duration::from_secs(args.duration);
    eprintln!("fungible bench --auth: {} s per phase at {}/s, limits in {}", args.duration, args.rate, args.redis);
    let mut results = Vec::new();
    for (name, port, key) in [("auth off", args.port, BENCH_KEY), ("auth on", args.port + 1, key.as_str())] {
        let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
        let _ = closed_loop(&client, &url, key, &body, args.concurrency, Duration::from_millis(500)).await;
        let m = open_loop(&client, &url, key, &body, args.rate, duration).await;
        eprintln!("  {name:<9} {:>7.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {}", m.rps(), m.percentile(0.5), m.percentile(0.99), m.errors);
        results.push((name, m));
    }
    plain.stop();
    keyed.stop();
    let _ = std::fs::remove_dir_all(&dir);
    println!();
    println!("| gateway | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let base = (results[0].1.percentile(0.5), results[0].1.percentile(0.99));
    let mut failed = false;
    for (name, m) in &results {
        println!(
            "| {name} | {:.0} | {:.3} | {:.3} | {:+.3} | {:+.3} | {} |",
            m.rps(),
            m.percentile(0.5),
            m.percentile(0.99),
            m.percentile(0.5) - base.0,
            m.percentile(0.99) - base.1,
            m.errors
        );
        failed |= m.errors > 0;
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
