//! `--soak`: a long steady load on one gateway that records every inference, watching its
//! memory, errors and latency over time, then checking that every answer was recorded.
//!
//! The load is an open loop (requests start on schedule whatever the answers do), so a
//! gateway that slows down shows as latency, not as a gentler load. The run passes when no
//! request failed, the RSS at the end is within [`RSS_TOLERANCE`] of the RSS after the
//! warm-up, and the store holds as many inferences as the gateway gave answers.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;

use super::gateway::GatewayProcess;
use super::load::{Failure, finish, send};
use super::{BENCH_KEY, BenchArgs, HttpClient, REQUEST, bench_dir, fixed_mock, recorded};

/// How far the RSS at the end may be from the RSS after the warm-up, as a share of it.
const RSS_TOLERANCE: f64 = 0.10;
/// A request unanswered after this counts as failed, so a hung gateway cannot hang the bench.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the gateway's RSS is read.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Why a request of the soak failed.
#[derive(Clone, Copy)]
enum SoakError {
    Status,
    Transport,
    Timeout,
    /// A 2xx answer that was not whole: a stream that did not end with `[DONE]`, or a JSON
    /// answer without choices.
    Incomplete,
}

impl SoakError {
    const ALL: [SoakError; 4] = [SoakError::Status, SoakError::Transport, SoakError::Timeout, SoakError::Incomplete];

    fn label(self) -> &'static str {
        match self {
            SoakError::Status => "non-2xx",
            SoakError::Transport => "transport",
            SoakError::Timeout => "timed out",
            SoakError::Incomplete => "incomplete",
        }
    }
}

/// What the requests scheduled in one window (or in the warm-up) came back with.
#[derive(Default)]
struct Window {
    /// Latencies of the answered JSON requests, microseconds.
    json: Vec<u64>,
    /// Latencies of the answered streamed requests, send to `[DONE]`, microseconds.
    stream: Vec<u64>,
    /// Failed requests by [`SoakError`], in the order of [`SoakError::ALL`].
    errors: [u64; 4],
    /// The largest RSS sampled while its requests were being sent, KiB.
    rss_max: u64,
    /// The most records (and their bytes) the recorder had waiting at once.
    queue_max: (u64, u64),
}

impl Window {
    fn answered(&self) -> u64 {
        (self.json.len() + self.stream.len()) as u64
    }

    fn failed(&self) -> u64 {
        self.errors.iter().sum()
    }
}

/// What every request came back with, by when it was sent.
#[derive(Default)]
struct Tally {
    warm_up: Window,
    windows: Vec<Window>,
}

/// One RSS reading: seconds since the warm-up ended, KiB.
type Sample = (f64, u64);

/// One reading of the recorder's backlog: when, records and bytes waiting to be written.
type QueueSample = (Instant, u64, u64);

/// `--soak`: see [`BenchArgs::soak`].
pub(super) async fn soak(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.rate == 0 || args.duration == 0 {
        bail!("--soak needs a --rate and a --duration of at least 1");
    }
    let mock = fixed_mock(args.chunks).await?;
    let dir = bench_dir("soak")?;
    let config = dir.join("fungible.toml");
    let db = dir.join("fungible.db");
    std::fs::write(&config, format!("[store]\npath = \"{}\"\n", db.display()))?;
    let mut gateway = GatewayProcess::start(&mock.url(), args.port, args.workers, &config)?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build_http();
    gateway.wait_ready(&client).await?;
    if gateway.rss_kib().is_none() {
        bail!("--soak reads the gateway's memory from /proc/<pid>/status, which this system does not have");
    }
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", args.port);
    let request = |stream: bool| {
        Bytes::from(REQUEST.replace("MODEL", "openai/gpt-4o-mini").replace("STREAM", if stream { ",\"stream\":true" } else { "" }))
    };
    let bodies = [request(false), request(true)];

    let warm_up_secs = (args.duration / 10).clamp(1, 30);
    let warm_up_n = warm_up_secs * args.rate;
    let measured_n = args.duration * args.rate;
    // Per minute, or in thirds when the run is too short for three minutes.
    let window_secs = if args.duration >= 180 { 60.0 } else { args.duration as f64 / 3.0 };
    let per_window = ((window_secs * args.rate as f64).round() as u64).max(1);
    let window_count = measured_n.div_ceil(per_window) as usize;
    let window_name = if args.duration >= 180 { "minute" } else { "third" };
    eprintln!(
        "fungible bench --soak: {} s at {}/s after a {warm_up_secs} s warm-up, JSON and {}-chunk streams alternating, recording to SQLite (gateway pid {})",
        args.duration,
        args.rate,
        args.chunks,
        gateway.child.id()
    );

    let tally = Arc::new(Mutex::new(Tally { warm_up: Window::default(), windows: (0..window_count).map(|_| Window::default()).collect() }));
    let queue_samples = Arc::new(Mutex::new(Vec::new()));
    let watcher = tokio::spawn(watch_queue(client.clone(), format!("http://127.0.0.1:{}/metrics", args.port), queue_samples.clone()));
    let mut in_flight = JoinSet::new();
    let mut samples: Vec<Sample> = Vec::new();
    let (mut rss_start, mut rss_middle) = (0, 0);
    // RssAnon beside each: VmRSS also counts the binary's code, which does not grow.
    let (mut anon_start, mut anon_middle) = (0, 0);
    let mut measure_start = Instant::now();
    let mut next_sample = measure_start;
    let mut cpu_before = 0.0;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..warm_up_n + measured_n {
        ticker.tick().await;
        // The window this request belongs to; `None` during the warm-up.
        let window = i.checked_sub(warm_up_n).map(|n| (n / per_window) as usize);
        if i == warm_up_n {
            measure_start = Instant::now();
            next_sample = measure_start;
            cpu_before = gateway.cpu_ms();
        }
        if let Some(w) = window {
            let now = Instant::now();
            if now >= next_sample {
                let kib = gateway.rss_kib().unwrap_or(0);
                samples.push((now.duration_since(measure_start).as_secs_f64(), kib));
                let mut tally = tally.lock().expect("no task panics holding the tally");
                tally.windows[w].rss_max = tally.windows[w].rss_max.max(kib);
                next_sample += SAMPLE_EVERY;
                if i == warm_up_n {
                    rss_start = kib;
                    anon_start = gateway.anon_rss_kib().unwrap_or(0);
                }
            }
            if i == warm_up_n + measured_n / 2 {
                rss_middle = gateway.rss_kib().unwrap_or(0);
                anon_middle = gateway.anon_rss_kib().unwrap_or(0);
            }
            if i > warm_up_n && (i - warm_up_n) % per_window == 0 {
                eprintln!("  {window_name} {} begins: RSS {:.1} MiB", w + 1, gateway.rss_kib().unwrap_or(0) as f64 / 1024.0);
            }
        }
        let stream = i % 2 == 1;
        let (client, url, body, tally) = (client.clone(), url.clone(), bodies[stream as usize].clone(), tally.clone());
        in_flight.spawn(async move {
            let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, send(&client, &url, BENCH_KEY, &body)).await {
                Err(_) => Err(SoakError::Timeout),
                Ok(Err(Failure::Status)) => Err(SoakError::Status),
                Ok(Err(Failure::Transport)) => Err(SoakError::Transport),
                Ok(Ok((us, answer))) if whole(&answer, stream) => Ok(us),
                Ok(Ok(_)) => Err(SoakError::Incomplete),
            };
            let mut tally = tally.lock().expect("no task panics holding the tally");
            let slot = match window {
                Some(w) => &mut tally.windows[w],
                None => &mut tally.warm_up,
            };
            match outcome {
                Ok(us) if stream => slot.stream.push(us),
                Ok(us) => slot.json.push(us),
                Err(e) => slot.errors[e as usize] += 1,
            }
        });
        while in_flight.try_join_next().is_some() {}
    }
    let rss_end = gateway.rss_kib().unwrap_or(0);
    let anon_end = gateway.anon_rss_kib().unwrap_or(0);
    samples.push((measure_start.elapsed().as_secs_f64(), rss_end));
    let elapsed = measure_start.elapsed();
    while in_flight.join_next().await.is_some() {}
    watcher.abort();
    let cpu_ms = gateway.cpu_ms() - cpu_before;
    let rss_peak = gateway.peak_rss_kib().unwrap_or(0);
    let exit = gateway.terminate();
    let count = recorded(&db).await?;
    let _ = std::fs::remove_dir_all(&dir);

    let Tally { warm_up, mut windows } = std::mem::take(&mut *tally.lock().expect("every task has finished"));
    let mut queue_max = (0, 0);
    for &(at, records, bytes) in queue_samples.lock().expect("the watcher has stopped").iter() {
        queue_max = (queue_max.0.max(records), queue_max.1.max(bytes));
        let Some(since) = at.checked_duration_since(measure_start) else { continue };
        if let Some(w) = windows.get_mut(((since.as_secs_f64() / window_secs) as usize).min(window_count - 1)) {
            w.queue_max = (w.queue_max.0.max(records), w.queue_max.1.max(bytes));
        }
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!();
    println!("| {window_name} | answered | failed | JSON p50 ms | JSON p99 ms | stream p50 ms | stream p99 ms | RSS max MiB | recorder queue max |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (mut json_all, mut stream_all) = (Vec::new(), Vec::new());
    for (n, w) in windows.iter().enumerate() {
        let json = finish(w.json.clone(), 0, elapsed);
        let stream = finish(w.stream.clone(), 0, elapsed);
        println!(
            "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} | {} ({:.1} MiB) |",
            n + 1,
            w.answered(),
            w.failed(),
            json.percentile(0.5),
            json.percentile(0.99),
            stream.percentile(0.5),
            stream.percentile(0.99),
            mib(w.rss_max),
            w.queue_max.0,
            mib(w.queue_max.1 / 1024)
        );
        json_all.extend_from_slice(&w.json);
        stream_all.extend_from_slice(&w.stream);
    }
    let json_all = finish(json_all, 0, elapsed);
    let stream_all = finish(stream_all, 0, elapsed);
    let measured_answers = json_all.ok + stream_all.ok;
    let mut errors = warm_up.errors;
    for w in &windows {
        for (total, n) in errors.iter_mut().zip(w.errors) {
            *total += n;
        }
    }
    let failed_requests: u64 = errors.iter().sum();
    let answered = measured_answers + warm_up.answered();
    let drift = (rss_end as f64 - rss_start as f64) / rss_start.max(1) as f64;
    let flat = drift.abs() <= RSS_TOLERANCE;
    let gateway_ok = exit.is_some_and(|s| s.success());

    println!();
    println!("rss start: {:.1} MiB (anonymous {:.1} MiB; after the {warm_up_secs} s warm-up)", mib(rss_start), mib(anon_start));
    println!("rss middle: {:.1} MiB (anonymous {:.1} MiB)", mib(rss_middle), mib(anon_middle));
    println!("rss end: {:.1} MiB (anonymous {:.1} MiB)", mib(rss_end), mib(anon_end));
    println!("rss peak: {:.1} MiB (VmHWM, the whole run)", mib(rss_peak));
    println!("rss trend: {:+.1} KiB/min (least squares over {} samples, one a second)", slope_per_min(&samples), samples.len());
    println!(
        "rss flat: {} (end {:+.1}% of start; the limit is ±{:.0}%)",
        if flat { "yes" } else { "no" },
        drift * 100.0,
        RSS_TOLERANCE * 100.0
    );
    println!(
        "latency: JSON p50 {:.3} ms p99 {:.3} ms, stream p50 {:.3} ms p99 {:.3} ms ({} answers in {:.1} s, {:.0}/s)",
        json_all.percentile(0.5),
        json_all.percentile(0.99),
        stream_all.percentile(0.5),
        stream_all.percentile(0.99),
        measured_answers,
        elapsed.as_secs_f64(),
        measured_answers as f64 / elapsed.as_secs_f64()
    );
    let by_kind: Vec<String> = SoakError::ALL.iter().map(|&e| format!("{} {}", e.label(), errors[e as usize])).collect();
    println!("errors: {failed_requests} ({}; warm-up included)", by_kind.join(", "));
    println!(
        "recorder queue: at most {} records ({:.1} MiB) waiting to be written (/metrics, read every second)",
        queue_max.0,
        mib(queue_max.1 / 1024)
    );
    println!("gateway CPU: {:.3} ms per request", cpu_ms / measured_answers.max(1) as f64);
    println!(
        "gateway exit after SIGTERM: {}",
        exit.map_or("unknown (could not wait for it)".to_owned(), |s| s.to_string())
    );
    println!("recorded: {count} inferences in the store of {answered} answered ({} in the warm-up)", warm_up.answered());

    let mut verdict = Vec::new();
    if failed_requests > 0 {
        verdict.push(format!("{failed_requests} requests failed"));
    }
    if !flat {
        verdict.push(format!("RSS is not flat ({:+.1}% from start to end)", drift * 100.0));
    }
    if count < answered {
        verdict.push(format!("{} answers were not recorded", answered - count));
    }
    if !gateway_ok {
        verdict.push("the gateway did not exit cleanly on SIGTERM".to_owned());
    }
    if verdict.is_empty() {
        eprintln!("fungible bench --soak: passed");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("fungible bench --soak: failed: {}", verdict.join("; "));
        Ok(ExitCode::FAILURE)
    }
}

/// Reads the recorder's backlog from the gateway's `/metrics` every second until aborted:
/// when the writer falls behind, the records waiting are memory the gateway holds.
async fn watch_queue(client: HttpClient, url: String, samples: Arc<Mutex<Vec<QueueSample>>>) {
    let Ok(uri) = url.parse::<hyper::Uri>() else { return };
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    loop {
        every.tick().await;
        let Ok(Ok(response)) = tokio::time::timeout(SAMPLE_EVERY, client.get(uri.clone())).await else { continue };
        let Ok(body) = response.into_body().collect().await else { continue };
        let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
        if let (Some(records), Some(bytes)) = (gauge(&text, "fungible_store_queued"), gauge(&text, "fungible_store_queued_bytes")) {
            samples.lock().expect("no task panics holding the samples").push((Instant::now(), records, bytes));
        }
    }
}

/// The value of the unlabelled metric `name` in a Prometheus text exposition.
fn gauge(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Whether a 2xx answer is whole: a stream ends with `[DONE]`, a JSON answer has choices.
fn whole(answer: &[u8], stream: bool) -> bool {
    if stream {
        return answer.ends_with(b"data: [DONE]\n\n");
    }
    serde_json::from_slice::<serde_json::Value>(answer)
        .ok()
        .and_then(|v| v["choices"].as_array().map(|c| !c.is_empty()))
        .unwrap_or(false)
}

/// The least-squares slope of the RSS samples, in KiB per minute (0 with fewer than two).
fn slope_per_min(samples: &[Sample]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return 0.0;
    }
    let mean_t = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let mean_k = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let cov: f64 = samples.iter().map(|s| (s.0 - mean_t) * (s.1 as f64 - mean_k)).sum();
    let var: f64 = samples.iter().map(|s| (s.0 - mean_t).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var * 60.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_whole_only_when_it_ends_with_done() {
        assert!(whole(b"data: {}\n\ndata: [DONE]\n\n", true));
        assert!(!whole(b"data: {}\n\n", true));
        assert!(!whole(b"data: [DONE]\n\ndata: {}\n\n", true));
    }

    #[test]
    fn a_json_answer_is_whole_only_with_choices() {
        assert!(whole(br#"{"choices":[{"index":0}]}"#, false));
        assert!(!whole(br#"{"choices":[]}"#, false));
        assert!(!whole(br#"{"error":{"message":"x"}}"#, false));
        assert!(!whole(b"{\"choices\":[", false));
    }

    #[test]
    fn a_gauge_is_read_by_its_exact_name() {
        let text = "# HELP fungible_store_queued Records.\n# TYPE fungible_store_queued gauge\nfungible_store_queued 12\nfungible_store_queued_bytes 34567\n";
        assert_eq!(gauge(text, "fungible_store_queued"), Some(12));
        assert_eq!(gauge(text, "fungible_store_queued_bytes"), Some(34567));
        assert_eq!(gauge(text, "fungible_store_written_total"), None);
    }

    #[test]
    fn the_trend_is_the_slope_per_minute() {
        // 1 KiB a second is 60 KiB a minute, whatever the offset.
        let rising: Vec<Sample> = (0..10).map(|s| (s as f64, 20_000 + s)).collect();
        assert!((slope_per_min(&rising) - 60.0).abs() < 1e-9);
        let flat: Vec<Sample> = (0..10).map(|s| (s as f64, 20_000)).collect();
        assert_eq!(slope_per_min(&flat), 0.0);
        assert_eq!(slope_per_min(&rising[..1]), 0.0);
    }
}
