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
    /// Instead of the overhead phases: the response cache. One gateway with `[cache]` in
    /// memory over the mock; sequential requests for `--duration` s each: misses (every
    /// request a new question, through to the mock) and hits (one question, answered from
    /// the cache), whole and streamed; reports p50/p99 of each.
    #[arg(long)]
    cache: bool,
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
    /// Instead of the overhead phases: `--requests` requests at `--concurrency` through a
    /// route with two upstreams, one failing `--fail-rate` of its requests at random (500,
    /// 503, 429 and a few connection resets), and the same with both healthy; reports
    /// client-visible failures, added latency and how many attempts requests took.
    #[arg(long)]
    failover: bool,
    /// `--failover`: requests per phase.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// `--failover`: the share of the first upstream's requests that fail.
    #[arg(long, default_value_t = 0.3)]
    fail_rate: f64,
    /// `--failover`: seed of the injected failures.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Instead of the overhead phases: the cost of virtual keys. Two gateways over the mock,
    /// both recording to SQLite: auth off, and auth on with a key whose model allowance,
    /// RPM, TPM and budget are all checked (counters in `--redis`) but never reached; the
    /// same fixed `--rate` through each, reporting the added p50/p99.
    #[arg(long)]
    auth: bool,
    /// Instead of the overhead phases: the cost of recording. Four gateways over the mock:
    /// one with `[store] enabled = false`, one recording every inference to SQLite, a
    /// second without recording as a control (the noise floor: how far two identical
    /// gateways differ in the same run), and one recording with its writer at the request
    /// path's priority (`writer_nice = 0`); the same fixed `--rate` through each, JSON and
    /// streamed, alternating between them for `--rounds` rounds so that drift on the machine
    /// hits all alike; reports p50, p99 and p99.9 of each over all rounds, the added
    /// latency against the first, gateway CPU per request, and what the recorder wrote.
    #[arg(long)]
    recording: bool,
    /// `--recording`: rounds (each runs every phase for `--duration` s).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// `--auth`: the Redis holding the counters.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The provider key the gateway under test is given, and the bearer token sent to it when
/// auth is off (the mock accepts anything).
const BENCH_KEY: &str = "sk-bench";

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
    if args.failover {
        return failover(args).await;
    }
    if args.cache {
        return cache_bench(args).await;
    }
    if args.auth {
        return auth_bench(args).await;
    }
    if args.recording {
        return recording_bench(args).await;
    }
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

/// The in-process mock upstream the bench modes share: the fixed JSON answer and a stream
/// of `chunks` SSE chunks.
async fn fixed_mock(chunks: usize) -> anyhow::Result<MockUpstream> {
    Ok(MockUpstream::start_on(
        "127.0.0.1:0".parse()?,
        Fallback::Fixed { json: completion_body(), sse: stream_body(chunks) },
        false,
    )
    .await?)
}

/// A fresh temporary directory for one bench mode's configs and store.
fn bench_dir(mode: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("fungible-bench-{mode}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// One request with `key` as its bearer token, read to the last byte; the latency in microseconds, or `None` on failure.
async fn one(client: &HttpClient, url: &str, key: &str, body: &Bytes) -> Option<u64> {
    let start = Instant::now();
    let request = hyper::Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(body.clone()))
        .ok()?;
    let response = client.request(request).await.ok()?;
    let ok = response.status().is_success();
    let bytes = response.into_body().collect().await.ok()?.to_bytes();
    (ok && !bytes.is_empty()).then(|| start.elapsed().as_micros() as u64)
}

/// `concurrency` workers, each sending its next request when the last one finished.
async fn closed_loop(client: &HttpClient, url: &str, key: &str, body: &Bytes, concurrency: usize, duration: Duration) -> Measurement {
    let start = Instant::now();
    let deadline = start + duration;
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, key, body, errors) = (client.clone(), url.to_owned(), key.to_owned(), body.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                match one(&client, &url, &key, &body).await {
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
async fn open_loop(client: &HttpClient, url: &str, key: &str, body: &Bytes, rate: u64, duration: Duration) -> Measurement {
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let total = (duration.as_secs_f64() * rate as f64) as u64;
    let mut tasks = Vec::with_capacity(total as usize);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..total {
        ticker.tick().await;
        let (client, url, key, body) = (client.clone(), url.to_owned(), key.to_owned(), body.clone());
        tasks.push(tokio::spawn(async move { one(&client, &url, &key, &body).await }));
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
        GatewayProcess::start_with(mock_url, port, workers, config, &[])
    }

    /// [`GatewayProcess::start`] with more environment variables.
    fn start_with(
        mock_url: &str,
        port: u16,
        workers: Option<usize>,
        config: &std::path::Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<GatewayProcess> {
        let exe = std::env::current_exe().context("where is the fungible binary?")?;
        let mut command = Command::new(exe);
        command.args(["serve", "--port", &port.to_string(), "--config"]).arg(config);
        if let Some(n) = workers {
            command.args(["--workers", &n.to_string()]);
        }
        let child = command
            .env("OPENAI_API_KEY", BENCH_KEY)
            .env("OPENAI_BASE_URL", format!("{mock_url}/v1"))
            .env("FUNGIBLE_LOG", "warn")
            .envs(env.iter().copied())
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

    /// A graceful stop (SIGTERM, as a service manager sends it): the gateway drains its
    /// recorder before it exits.
    fn terminate(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

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
async fn failover(args: BenchArgs) -> anyhow::Result<ExitCode> {
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

/// `--auth`: auth + limits + budget (Redis) on vs off, at a fixed rate.
async fn auth_bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
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

/// `--recording`: recording off vs on at a fixed rate (see [`BenchArgs`]).
async fn recording_bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
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
        let stored = fungible_store::Store::open(&format!("sqlite://{}?mode=rwc", db.display()))
            .await
            .context("opening the bench's store")?;
        count += stored
            .stats(fungible_store::GroupBy::Inbound, None, None)
            .await
            .context("counting what was recorded")?
            .iter()
            .map(|row| row.requests)
            .sum::<u64>();
        stored.close().await;
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

/// `--cache`: hit vs miss latency of the response cache (see [`BenchArgs`]).
async fn cache_bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
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
