//! `--shadow`: what shadow traffic costs the client. Two gateways over the mock, both
//! recording to SQLite, one whose route shadows every request to a second model; the same
//! fixed rate through each, alternating for `--rounds` rounds.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::gateway::GatewayProcess;
use super::load::{closed_loop, open_loop};
use super::{BENCH_KEY, BenchArgs, HttpClient, REQUEST, bench_dir, fixed_mock};

/// `--shadow`: a route with a shadow candidate at 100% vs the same route without.
pub(super) async fn shadow_bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let mock = fixed_mock(args.chunks).await?;
    let dir = bench_dir("shadow")?;
    let route = "[models.smart]\ntarget = \"openai/gpt-4o-mini\"\n";
    let config = |name: &str, shadow: &str| -> anyhow::Result<std::path::PathBuf> {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, format!("[store]\npath = \"{}\"\n{route}{shadow}", dir.join(format!("{name}.db")).display()))?;
        Ok(path)
    };
    let plain_config = config("plain", "")?;
    let shadowed_config = config(
        "shadowed",
        "shadow = [{ target = \"openai/gpt-4o\", sample_rate = 1.0, score = \"exact\", max_concurrent = 256, daily_usd = 1000000.0 }]\n",
    )?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build_http();
    let mut plain = GatewayProcess::start(&mock.url(), args.port, args.workers, &plain_config)?;
    plain.wait_ready(&client).await?;
    let mut shadowed = GatewayProcess::start(&mock.url(), args.port + 1, args.workers, &shadowed_config)?;
    shadowed.wait_ready(&client).await?;
    let duration = Duration::from_secs(args.duration);
    eprintln!("fungible bench --shadow: {} rounds of {} s per gateway at {}/s", args.rounds, args.duration, args.rate);
    let mut rows = Vec::new();
    for round in 1..=args.rounds {
        for (name, port) in [("no shadow", args.port), ("shadow 100%", args.port + 1)] {
            for stream in [false, true] {
                let body = Bytes::from(REQUEST.replace("MODEL", "smart").replace("STREAM", if stream { ",\"stream\":true" } else { "" }));
                let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
                let _ = closed_loop(&client, &url, BENCH_KEY, &body, args.concurrency, Duration::from_millis(300)).await;
                let m = open_loop(&client, &url, BENCH_KEY, &body, args.rate, duration).await;
                let kind = if stream { "stream" } else { "JSON" };
                eprintln!("  round {round} {name:<11} {kind:<6} {:>7.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {}", m.rps(), m.percentile(0.5), m.percentile(0.99), m.errors);
                rows.push((round, name, kind, m));
            }
        }
    }
    // What the candidate did meanwhile.
    let uri: hyper::Uri = format!("http://127.0.0.1:{}/v1/routes", args.port + 1).parse()?;
    let routes: serde_json::Value = serde_json::from_slice(&client.get(uri).await?.into_body().collect().await?.to_bytes()).unwrap_or_default();
    let tally = &routes["data"][0]["shadows"][0];
    plain.stop();
    shadowed.stop();
    let _ = std::fs::remove_dir_all(&dir);
    println!();
    println!("| round | gateway | request | req/s | p50 ms | p99 ms | errors |");
    println!("|---:|---|---|---:|---:|---:|---:|");
    let mut failed = false;
    for (round, name, kind, m) in &rows {
        println!("| {round} | {name} | {kind} | {:.0} | {:.3} | {:.3} | {} |", m.rps(), m.percentile(0.5), m.percentile(0.99), m.errors);
        failed |= m.errors > 0;
    }
    println!();
    println!(
        "shadow candidate: sampled {}, answered {}, failed {}, skipped (busy) {}, agreed {} of {}",
        tally["sampled"], tally["answered"], tally["failed"], tally["skipped_busy"], tally["agreed"], tally["scored"]
    );
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
