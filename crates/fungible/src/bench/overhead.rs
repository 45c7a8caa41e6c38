//! The default mode: JSON and streamed, at fixed concurrency and at a fixed rate, each
//! against the mock directly and through one gateway, side by side.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::gateway::GatewayProcess;
use super::load::{closed_loop, open_loop};
use super::{BENCH_KEY, BenchArgs, HttpClient, REQUEST, bench_dir, fixed_mock};

struct Target {
    name: &'static str,
    url: String,
    body: Bytes,
    stream_body: Bytes,
}

/// The default mode: every phase direct and through the gateway (see the module docs).
pub(super) async fn overhead(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let mock = fixed_mock(args.chunks).await?;
    let dir = bench_dir("overhead")?;
    let config = dir.join("fungible.toml");
    let store = if args.record {
        format!("[store]\npath = \"{}\"\n", dir.join("fungible.db").display())
    } else {
        "[store]\nenabled = false\n".to_owned()
    };
    std::fs::write(&config, store)?;
    let mut gateway = GatewayProcess::start(&mock.url(), args.port, args.workers, &config)?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build_http();
    gateway.wait_ready(&client).await?;

    let request = |model: &str, stream: bool| {
        Bytes::from(REQUEST.replace("MODEL", model).replace("STREAM", if stream { ",\"stream\":true" } else { "" }))
    };
    let targets = [
        Target {
            name: "direct",
            url: format!("{}/v1/chat/completions", mock.url()),
            body: request("gpt-4o-mini", false),
            stream_body: request("gpt-4o-mini", true),
        },
        Target {
            name: "fungible",
            url: format!("http://127.0.0.1:{}/v1/chat/completions", args.port),
            body: request("openai/gpt-4o-mini", false),
            stream_body: request("openai/gpt-4o-mini", true),
        },
    ];
    let duration = Duration::from_secs(args.duration);
    eprintln!(
        "fungible bench: {} s per phase, c={}, rate={}/s, {} SSE chunks, recording {} (mock upstream in-process; gateway pid {})",
        args.duration,
        args.concurrency,
        args.rate,
        args.chunks,
        if args.record { "on" } else { "off" },
        gateway.child.id()
    );

    let mut rows = Vec::new();
    for (phase, stream, fixed_rate) in
        [("json c", false, false), ("json rate", false, true), ("stream c", true, false), ("stream rate", true, true)]
    {
        let mut results = Vec::new();
        for target in &targets {
            let body = if stream { &target.stream_body } else { &target.body };
            // Warm the connection pools and the gateway.
            let _ = closed_loop(&client, &target.url, BENCH_KEY, body, args.concurrency, Duration::from_millis(500)).await;
            let cpu_before = gateway.cpu_ms();
            let m = if fixed_rate {
                open_loop(&client, &target.url, BENCH_KEY, body, args.rate, duration).await
            } else {
                closed_loop(&client, &target.url, BENCH_KEY, body, args.concurrency, duration).await
            };
            let cpu = (target.name == "fungible").then(|| (gateway.cpu_ms() - cpu_before) / m.ok.max(1) as f64);
            eprintln!(
                "  {phase:<11} {:<9} {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {}",
                target.name,
                m.rps(),
                m.percentile(0.50),
                m.percentile(0.99),
                m.errors
            );
            results.push((target.name, m, cpu));
        }
        rows.push((phase, results));
    }
    let rss = gateway.peak_rss_kib();
    gateway.stop();
    let _ = std::fs::remove_dir_all(&dir);

    println!();
    println!("| phase | target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | gateway CPU ms/req | errors |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut failed = false;
    for (phase, results) in &rows {
        let direct = &results[0].1;
        for (name, m, cpu) in results {
            let added = |p: f64| if *name == "direct" { "–".to_owned() } else { format!("{:+.3}", m.percentile(p) - direct.percentile(p)) };
            println!(
                "| {phase} | {name} | {:.0} | {:.3} | {:.3} | {} | {} | {} | {} |",
                m.rps(),
                m.percentile(0.5),
                m.percentile(0.99),
                added(0.5),
                added(0.99),
                cpu.map_or("–".to_owned(), |c| format!("{c:.3}")),
                m.errors
            );
            failed |= m.errors > 0;
        }
    }
    println!();
    match rss {
        Some(kib) => println!("gateway peak RSS: {:.1} MiB", kib as f64 / 1024.0),
        None => println!("gateway peak RSS: unknown (no /proc)"),
    }
    if failed {
        eprintln!("fungible bench: some requests failed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
