//! `fungible bench`: what the gateway costs over calling the upstream directly.
//!
//! One process plays client and upstream: an in-process mock answers in microseconds, and
//! `fungible serve` runs as a child process pointed at it (so its memory and CPU are its
//! own). Every phase runs against the mock directly and through fungible, one after the
//! other, and the table shows both side by side.

use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use fungible_mock::{Fallback, MockUpstream};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Connections in the fixed-concurrency phases.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Requests per second in the fixed-rate phases.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// SSE chunks in the streamed response.
    #[arg(long, default_value_t = 20)]
    chunks: usize,
    /// Port for the gateway under test.
    #[arg(long, default_value_t = 14999)]
    port: u16,
    /// Worker threads of the gateway under test [default: one per core].
    #[arg(long)]
    workers: Option<usize>,
    /// Record every inference in an SQLite store in a temporary directory, as `serve` does by
    /// default; without it the gateway runs with `[store] enabled = false`, so the numbers
    /// are the routing path alone.
    #[arg(long)]
    record: bool,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const REQUEST: &str = r#"{"model":"MODEL","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":32STREAM}"#;

fn completion_body() -> Bytes {
    Bytes::from_static(
        br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1764460800,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":24,"completion_tokens":9,"total_tokens":33,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_bench"}"#,
    )
}

fn stream_body(chunks: usize) -> Bytes {
    let mut out = String::new();
    let head = r#"{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1764460800,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_bench","choices":[{"index":0,"delta":"#;
    out.push_str(&format!("data: {head}{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"));
    for i in 0..chunks {
        out.push_str(&format!("data: {head}{{\"content\":\"tok{i} \"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"));
    }
    out.push_str(&format!("data: {head}{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}]}}\n\n"));
    out.push_str(r#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1764460800,"model":"gpt-4o-mini-2024-07-18","choices":[],"usage":{"prompt_tokens":24,"completion_tokens":20,"total_tokens":44}}"#);
    out.push_str("\n\ndata: [DONE]\n\n");
    Bytes::from(out)
}

struct Target {
    name: &'static str,
    url: String,
    body: Bytes,
    stream_body: Bytes,
}

#[derive(Default)]
struct Measurement {
    ok: u64,
    errors: u64,
    elapsed: Duration,
    /// Microseconds, sorted.
    latencies: Vec<u64>,
}

impl Measurement {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let idx = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[idx] as f64 / 1000.0
    }

    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(bench(args))
}

async fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let mock = MockUpstream::start_on(
        "127.0.0.1:0".parse()?,
        Fallback::Fixed { json: completion_body(), sse: stream_body(args.chunks) },
        false,
    )
    .await?;
    let dir = std::env::temp_dir().join(format!("fungible-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
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
            let _ = closed_loop(&client, &target.url, body, args.concurrency, Duration::from_millis(500)).await;
            let cpu_before = gateway.cpu_ms();
            let m = if fixed_rate {
                open_loop(&client, &target.url, body, args.rate, duration).await
            } else {
                closed_loop(&client, &target.url, body, args.concurrency, duration).await
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

/// One request, read to the last byte; the latency in microseconds, or `None` on failure.
async fn one(client: &HttpClient, url: &str, body: &Bytes) -> Option<u64> {
    let start = Instant::now();
    let request = hyper::Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-bench")
        .body(Full::new(body.clone()))
        .ok()?;
    let response = client.request(request).await.ok()?;
    let ok = response.status().is_success();
    let bytes = response.into_body().collect().await.ok()?.to_bytes();
    (ok && !bytes.is_empty()).then(|| start.elapsed().as_micros() as u64)
}

/// `concurrency` workers, each sending its next request when the last one finished.
async fn closed_loop(client: &HttpClient, url: &str, body: &Bytes, concurrency: usize, duration: Duration) -> Measurement {
    let start = Instant::now();
    let deadline = start + duration;
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, body, errors) = (client.clone(), url.to_owned(), body.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                match one(&client, &url, &body).await {
                    Some(us) => latencies.push(us),
                    None => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.unwrap_or_default());
    }
    finish(latencies, errors.load(Ordering::Relaxed), start.elapsed())
}

/// Requests started on a fixed schedule whatever the responses do (an open loop: a slow
/// response cannot slow the offered load down). Latency counts from the moment each request
/// was sent: tokio's timer has millisecond granularity, so counting from the scheduled
/// instant would add up to 1 ms of timer slack to every sample. Queueing, if the target
/// cannot keep up, shows as a lower achieved rate.
async fn open_loop(client: &HttpClient, url: &str, body: &Bytes, rate: u64, duration: Duration) -> Measurement {
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let total = (duration.as_secs_f64() * rate as f64) as u64;
    let mut tasks = Vec::with_capacity(total as usize);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..total {
        ticker.tick().await;
        let (client, url, body) = (client.clone(), url.to_owned(), body.clone());
        tasks.push(tokio::spawn(async move { one(&client, &url, &body).await }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        match t.await.ok().flatten() {
            Some(us) => latencies.push(us),
            None => errors += 1,
        }
    }
    finish(latencies, errors, start.elapsed())
}

fn finish(mut latencies: Vec<u64>, errors: u64, elapsed: Duration) -> Measurement {
    latencies.sort_unstable();
    Measurement { ok: latencies.len() as u64, errors, elapsed, latencies }
}

/// `fungible serve` as a child process, pointed at the mock.
struct GatewayProcess {
    child: Child,
    port: u16,
}

impl GatewayProcess {
    fn start(mock_url: &str, port: u16, workers: Option<usize>, config: &std::path::Path) -> anyhow::Result<GatewayProcess> {
        let exe = std::env::current_exe().context("where is the fungible binary?")?;
        let mut command = Command::new(exe);
        command.args(["serve", "--port", &port.to_string(), "--config"]).arg(config);
        if let Some(n) = workers {
            command.args(["--workers", &n.to_string()]);
        }
        let child = command
            .env("OPENAI_API_KEY", "sk-bench")
            .env("OPENAI_BASE_URL", format!("{mock_url}/v1"))
            .env("FUNGIBLE_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .context("could not start fungible serve")?;
        Ok(GatewayProcess { child, port })
    }

    async fn wait_ready(&mut self, client: &HttpClient) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/health", self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("fungible serve exited with {status} (is port {} free?)", self.port);
            }
            let uri: hyper::Uri = url.parse()?;
            if let Ok(Ok(res)) = tokio::time::timeout(Duration::from_secs(1), client.get(uri)).await {
                if res.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("fungible serve did not answer /health within 30 s")
    }

    /// utime + stime of the child, in milliseconds.
    fn cpu_ms(&self) -> f64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())) else { return 0.0 };
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        // CLK_TCK is 100 on Linux.
        (ticks(11) + ticks(12)) * 10.0
    }

    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
