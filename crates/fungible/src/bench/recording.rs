//! `--recording`: the cost of recording every inference to SQLite, against a control.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::gateway::GatewayProcess;
use super::load::{Measurement, closed_loop, open_loop};
use super::{BENCH_KEY, BenchArgs, HttpClient, REQUEST, bench_dir, fixed_mock, recorded};

/// One gateway of the comparison: its name, its `[store]` section, whether it records.
struct Variant {
    name: &'static str,
    store: &'static str,
    records: bool,
}

/// The gateways compared, the first (recording off) the base; a second "off" is the noise
/// floor: how far two identical gateways differ in the same run.
const VARIANTS: [Variant; 4] = [
    Variant { name: "recording off", store: "enabled = false\n", records: false },
    Variant { name: "on (idle writer)", store: "", records: true },
    Variant { name: "on (nice 10)", store: "writer_priority = 10\n", records: true },
    Variant { name: "off (control)", store: "enabled = false\n", records: false },
];

/// `--recording`: recording off vs on at a fixed rate, then at saturation (see [`BenchArgs`]).
pub(super) async fn recording_bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let mock = fixed_mock(args.chunks).await?;
    let dir = bench_dir("recording")?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build_http();
    let mut gateways = Vec::new();
    for (i, v) in VARIANTS.iter().enumerate() {
        let db = dir.join(format!("fungible-{i}.db"));
        let config = dir.join(format!("gateway-{i}.toml"));
        std::fs::write(&config, format!("[store]\npath = \"{}\"\n{}", db.display(), v.store))?;
        let port = args.port + i as u16;
        let mut process = GatewayProcess::start(&mock.url(), port, args.workers, &config)?;
        process.wait_ready(&client).await?;
        gateways.push((v, process, port, db));
    }
    let request = |stream: bool| {
        Bytes::from(REQUEST.replace("MODEL", "openai/gpt-4o-mini").replace("STREAM", if stream { ",\"stream\":true" } else { "" }))
    };
    let duration = Duration::from_secs(args.duration);
    eprintln!(
        "fungible bench --recording: {} rounds of {} s per phase at {}/s, then {} s at {} connections; {} SSE chunks (gateway pids: {})",
        args.rounds,
        args.duration,
        args.rate,
        args.duration,
        args.concurrency,
        args.chunks,
        gateways.iter().map(|(v, p, ..)| format!("{} {}", p.child.id(), v.name)).collect::<Vec<_>>().join(", ")
    );
    // (phase, gateway) -> latencies of every round, and CPU ms per request.
    let mut pooled: Vec<((String, &str), Measurement, f64)> = Vec::new();
    // Answers each gateway gave, warm-ups included.
    let mut answered = vec![0u64; gateways.len()];
    let phases = [("json", false, false), ("stream", true, false), ("json c", false, true), ("stream c", true, true)];
    let mut dropped_at_rate: Option<Vec<u64>> = None;
    for (phase, stream, saturate) in phases {
        if saturate && dropped_at_rate.is_none() {
            // Every record of the fixed-rate phases must have made it into the queue.
            let mut counts = Vec::new();
            for (.., port, _) in &gateways {
                counts.push(dropped(&client, *port).await?);
            }
            dropped_at_rate = Some(counts);
        }
        let rounds = if saturate { 1 } else { args.rounds };
        let body = request(stream);
        for round in 1..=rounds {
            for (i, (v, process, port, _)) in gateways.iter().enumerate() {
                let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
                answered[i] += closed_loop(&client, &url, BENCH_KEY, &body, 4, Duration::from_millis(300)).await.ok;
                let cpu_before = process.cpu_ms();
                let m = if saturate {
                    closed_loop(&client, &url, BENCH_KEY, &body, args.concurrency, duration).await
                } else {
                    open_loop(&client, &url, BENCH_KEY, &body, args.rate, duration).await
                };
                let cpu = process.cpu_ms() - cpu_before;
                answered[i] += m.ok;
                eprintln!(
                    "  round {round} {phase:<8} {:<16} {:>7.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {}",
                    v.name,
                    m.rps(),
                    m.percentile(0.5),
                    m.percentile(0.99),
                    m.errors
                );
                let key = (phase.to_owned(), v.name);
                let slot = match pooled.iter_mut().position(|(k, ..)| *k == key) {
                    Some(i) => &mut pooled[i],
                    None => {
                        pooled.push((key, Measurement::default(), 0.0));
                        pooled.last_mut().expect("just pushed")
                    }
                };
                slot.1.ok += m.ok;
                slot.1.errors += m.errors;
                slot.1.elapsed += m.elapsed;
                slot.1.latencies.extend(m.latencies);
                slot.2 += cpu;
            }
        }
    }
    // Drops at saturation, and peak memory, before SIGTERM drains the queues.
    let mut rows = Vec::new();
    for (i, (v, process, port, db)) in gateways.iter_mut().enumerate() {
        let dropped_total = dropped(&client, *port).await?;
        let peak = process.peak_rss_kib().unwrap_or(0);
        if v.records {
            process.terminate();
        } else {
            process.stop();
        }
        let stored = if v.records { recorded(db).await? } else { 0 };
        let at_rate = dropped_at_rate.as_ref().map_or(dropped_total, |d| d[i]);
        rows.push((v.name, v.records, answered[i], stored, at_rate, dropped_total, peak));
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!();
    println!("| phase | gateway | req/s | p50 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | gateway CPU ms/req | errors |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut failed = false;
    // One group per phase, its gateways in order: the first (recording off) is the base.
    for group in pooled.chunks_mut(VARIANTS.len()) {
        for (_, m, _) in group.iter_mut() {
            m.latencies.sort_unstable();
        }
        let base = [0.5, 0.99].map(|p| group[0].1.percentile(p));
        for ((phase, name), m, cpu) in group.iter() {
            let added = |i: usize, p: f64| if *name == VARIANTS[0].name { "–".to_owned() } else { format!("{:+.3}", m.percentile(p) - base[i]) };
            println!(
                "| {phase} | {name} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {} | {:.3} | {} |",
                m.rps(),
                m.percentile(0.5),
                m.percentile(0.99),
                m.percentile(0.999),
                added(0, 0.5),
                added(1, 0.99),
                cpu / m.ok.max(1) as f64,
                m.errors
            );
            failed |= m.errors > 0;
        }
    }
    println!();
    println!("(\"c\": {} connections, as fast as the gateway answers)", args.concurrency);
    println!();
    println!("| gateway | answered | recorded | dropped at the fixed rates | dropped in all | peak RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, records, answered, stored, at_rate, total, peak) in rows {
        if !records {
            println!("| {name} | {answered} | – | – | – | {:.1} |", peak as f64 / 1024.0);
            continue;
        }
        println!("| {name} | {answered} | {stored} | {at_rate} | {total} | {:.1} |", peak as f64 / 1024.0);
        // The recorder drops records only when its queue is full: at the fixed rates it must
        // not, and every record it kept must be in the store.
        if at_rate > 0 {
            eprintln!("error: {name} dropped {at_rate} records at {}/s", args.rate);
            failed = true;
        }
        if stored + total < answered {
            eprintln!("error: {name}: {} answers neither recorded nor counted as dropped", answered - stored - total);
            failed = true;
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// `fungible_store_dropped_total` of the gateway on `port` (0 when it has no recorder);
/// an error when `/metrics` cannot be read, so that a check on it cannot pass by default.
async fn dropped(client: &HttpClient, port: u16) -> anyhow::Result<u64> {
    use anyhow::Context;
    let uri: hyper::Uri = format!("http://127.0.0.1:{port}/metrics").parse()?;
    let response = client.get(uri).await.context("reading /metrics")?;
    let body = response.into_body().collect().await.context("reading /metrics")?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    match text.lines().find_map(|l| l.strip_prefix("fungible_store_dropped_total ")) {
        Some(n) => n.trim().parse().context("fungible_store_dropped_total"),
        None if text.contains("fungible_requests_total") => Ok(0),
        None => anyhow::bail!("gateway on port {port}: /metrics is not the Prometheus text"),
    }
}
