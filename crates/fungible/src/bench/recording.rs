//! `--recording`: the cost of recording every inference to SQLite, against a control.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::gateway::GatewayProcess;
use super::load::{Measurement, closed_loop, open_loop};
use super::{BENCH_KEY, BenchArgs, HttpClient, REQUEST, bench_dir, fixed_mock, recorded};

/// `--recording`: recording off vs on at a fixed rate (see [`BenchArgs`]).
pub(super) async fn recording_bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let mock = fixed_mock(args.chunks).await?;
    let dir = bench_dir("recording")?;
    let off = dir.join("off.toml");
    std::fs::write(&off, "[store]\nenabled = false\n")?;
    let on = dir.join("on.toml");
    let db = dir.join("fungible.db");
    std::fs::write(&on, format!("[store]\npath = \"{}\"\n", db.display()))?;
    // The same, with the writer at the request path's own priority (`writer_nice = 0`): what
    // the background priority buys.
    let on_nice0 = dir.join("on-nice0.toml");
    let db_nice0 = dir.join("fungible-nice0.db");
    std::fs::write(&on_nice0, format!("[store]\npath = \"{}\"\nwriter_nice = 0\n", db_nice0.display()))?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build_http();
    let mut plain = GatewayProcess::start(&mock.url(), args.port, args.workers, &off)?;
    plain.wait_ready(&client).await?;
    let mut recording = GatewayProcess::start(&mock.url(), args.port + 1, args.workers, &on)?;
    recording.wait_ready(&client).await?;
    // A second gateway without recording, measured like the others: how far two identical
    // gateways differ in the same run is the noise floor the recording cost is read against.
    let mut control = GatewayProcess::start(&mock.url(), args.port + 2, args.workers, &off)?;
    control.wait_ready(&client).await?;
    let mut nice0 = GatewayProcess::start(&mock.url(), args.port + 3, args.workers, &on_nice0)?;
    nice0.wait_ready(&client).await?;
    let request = |stream: bool| {
        Bytes::from(REQUEST.replace("MODEL", "openai/gpt-4o-mini").replace("STREAM", if stream { ",\"stream\":true" } else { "" }))
    };
    let duration = Duration::from_secs(args.duration);
    eprintln!(
        "fungible bench --recording: {} rounds of {} s per phase at {}/s, {} SSE chunks (gateway pids {} off, {} on, {} control, {} on with writer_nice = 0)",
        args.rounds,
        args.duration,
        args.rate,
        args.chunks,
        plain.child.id(),
        recording.child.id(),
        control.child.id(),
        nice0.child.id()
    );
    // (name, process, port, whether it records): the first, recording off, is the base.
    let gateways = [
        ("recording off", &plain, args.port, false),
        ("recording on", &recording, args.port + 1, true),
        ("off (control)", &control, args.port + 2, false),
        ("on, nice 0", &nice0, args.port + 3, true),
    ];
    // (kind, gateway) -> latencies of every round, and CPU ms per request.
    let mut pooled: Vec<((&str, &str), Measurement, f64)> = Vec::new();
    for kind in ["json", "stream"] {
        for (name, ..) in gateways {
            pooled.push(((kind, name), Measurement::default(), 0.0));
        }
    }
    let mut warm_ups = 0;
    for round in 1..=args.rounds {
        for (kind, stream) in [("json", false), ("stream", true)] {
            let body = request(stream);
            for (name, gateway, port, records) in gateways {
                let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
                let warm = closed_loop(&client, &url, BENCH_KEY, &body, 4, Duration::from_millis(300)).await;
                if records {
                    warm_ups += warm.ok;
                }
                let cpu_before = gateway.cpu_ms();
                let m = open_loop(&client, &url, BENCH_KEY, &body, args.rate, duration).await;
                let cpu = gateway.cpu_ms() - cpu_before;
                eprintln!(
                    "  round {round} {kind:<6} {name:<14} {:>7.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  errors {}",
                    m.rps(),
                    m.percentile(0.5),
                    m.percentile(0.99),
                    m.errors
                );
                let slot = pooled.iter_mut().find(|(k, _, _)| *k == (kind, name)).expect("every phase has a slot");
                slot.1.ok += m.ok;
                slot.1.errors += m.errors;
                slot.1.elapsed += m.elapsed;
                slot.1.latencies.extend(m.latencies);
                slot.2 += cpu;
            }
        }
    }
    let recorders: Vec<&str> = gateways.iter().filter(|g| g.3).map(|g| g.0).collect();
    let per_phase = gateways.len();
    plain.stop();
    recording.terminate();
    control.stop();
    nice0.terminate();
    let mut count = 0;
    for db in [&db, &db_nice0] {
        count += recorded(db).await?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!();
    println!("| phase | gateway | req/s | p50 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | added p99.9 ms | gateway CPU ms/req | errors |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut failed = false;
    // One group per phase, its gateways in order: the first (recording off) is the base.
    for group in pooled.chunks_mut(per_phase) {
        for (_, m, _) in group.iter_mut() {
            m.latencies.sort_unstable();
        }
        let base = [0.5, 0.99, 0.999].map(|p| group[0].1.percentile(p));
        for ((kind, name), m, cpu) in group.iter() {
            let added = |i: usize, p: f64| if *name == "recording off" { "–".to_owned() } else { format!("{:+.3}", m.percentile(p) - base[i]) };
            println!(
                "| {kind} | {name} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {:.3} | {} |",
                m.rps(),
                m.percentile(0.5),
                m.percentile(0.99),
                m.percentile(0.999),
                added(0, 0.5),
                added(1, 0.99),
                added(2, 0.999),
                cpu / m.ok.max(1) as f64,
                m.errors
            );
            failed |= m.errors > 0;
        }
    }
    let sent: u64 = pooled
        .iter()
        .filter(|((_, name), _, _)| recorders.contains(name))
        .map(|(_, m, _)| m.ok)
        .sum();
    let answered = sent + warm_ups;
    println!();
    println!(
        "recorded: {count} inferences in the stores of {answered} answered by the two recording gateways ({sent} measured, {warm_ups} warm-up; SIGTERM drained the queues)"
    );
    if count < answered {
        // The recorder drops records only when its queue is full: at this rate it must not.
        eprintln!("error: {} answers were not recorded", answered - count);
        failed = true;
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
