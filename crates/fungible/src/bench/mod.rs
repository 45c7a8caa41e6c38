//! `fungible bench`: what the gateway costs over calling the upstream directly.
//!
//! One process plays client and upstream: an in-process mock answers in microseconds, and
//! `fungible serve` runs as a child process pointed at it (so its memory and CPU are its
//! own). Every phase runs against the mock directly and through fungible, one after the
//! other, and the table shows both side by side.
//!
//! This module holds the arguments, the dispatch and what the modes share (the request and
//! the mock's answers); `load` drives requests, `gateway` runs the child process, and each
//! mode has its own file.

mod auth;
mod cache;
mod failover;
mod gateway;
mod load;
#[cfg(feature = "local")]
mod lora;
mod overhead;

mod recording;
#[cfg(feature = "local")]
mod router;
mod shadow;
mod soak;

use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use fungible_mock::{Fallback, MockUpstream};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Instead of the overhead phases: the response cache. One gateway with `[cache]` in
    /// memory over the mock; sequential requests for `--duration` s each: misses (every
    /// request a new question, through to the mock) and hits (one question, answered from
    /// the cache), whole and streamed; reports p50/p99 of each.
    #[arg(long)]
    cache: bool,
    /// `--cache`: then two gateways sharing the cache in `--redis`, with semantic matching
    /// (the embedded MiniLM model): `--requests` questions (at most 200), each answered by
    /// one instance and asked again, exactly and as a paraphrase, of the same instance and of
    /// the other; reports p50/p99 of each kind of hit.
    #[arg(long, requires = "cache")]
    shared: bool,
    /// Seconds per measurement (`--soak`: of the whole run, 600 by default).
    #[arg(long, default_value_t = 10, default_value_if("soak", "true", Some("600")))]
    duration: u64,
    /// Connections in the fixed-concurrency phases.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Requests per second in the fixed-rate phases (`--soak`: 200 by default).
    #[arg(long, default_value_t = 1000, default_value_if("soak", "true", Some("200")))]
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
    /// Instead of the overhead phases: the cost of shadow traffic. Two gateways over the
    /// mock, both recording to SQLite, one whose route also sends every request to a shadow
    /// candidate (scored `exact` against the answer); the same fixed `--rate` through each,
    /// JSON and streamed, alternating for `--rounds` rounds, reporting p50 and p99 and what
    /// the candidate did.
    #[arg(long)]
    shadow: bool,
    /// Instead of the overhead phases: the cost of recording. Four gateways over the mock:
    /// one with `[store] enabled = false`, one recording every inference to SQLite as `serve`
    /// does by default (its writer `SCHED_IDLE`), one recording with its writer at nice 10,
    /// and a second without recording as a control (the noise floor: how far two identical
    /// gateways differ in the same run). The same fixed `--rate` through each, JSON and
    /// streamed, alternating between them for `--rounds` rounds so that drift on the machine
    /// hits all alike; then `--duration` s each at `--concurrency` connections (saturation).
    /// Reports p50, p99 and p99.9, the added latency against the first, gateway CPU per
    /// request, req/s, each gateway's peak RSS, and what each recorder wrote and dropped (a
    /// drop at the fixed rate fails the run; at saturation the queue's bound allows them).
    #[arg(long)]
    recording: bool,
    /// Instead of the overhead phases: a soak test, the gate for a release. One gateway
    /// recording every inference to SQLite (in a temporary directory) over the mock, at a
    /// steady `--rate` (200/s unless given) for `--duration` s (600 unless given) after a
    /// warm-up of a tenth of that (1 to 30 s), alternating JSON and streamed requests.
    /// Samples the gateway's RSS every second and reports it at the start (after the
    /// warm-up), the middle and the end, its peak (VmHWM), latency p50/p99 per minute (per
    /// third in runs under 3 minutes) and the errors (non-2xx, broken connections and
    /// timeouts, streams without `[DONE]`); then stops the gateway with SIGTERM and counts
    /// what it recorded. Exits non-zero when a request failed, the RSS at the end is not
    /// within 10% of the start, or an answer was not recorded.
    #[arg(long)]
    soak: bool,
    /// Instead of the overhead phases: local LoRA fine-tuning. Trains rank-8 adapters on the
    /// built-in model for `--requests` steps (20 unless given) at micro-batches of 128 and
    /// 1,024 tokens, reporting seconds per step and tokens per second; then serves the
    /// adapter beside its base and reports the generation speed of each (greedy, alternating).
    #[cfg(feature = "local")]
    #[arg(long)]
    lora: bool,
    /// Instead of the overhead phases: the learned router on a real task. From an eval run
    /// (`--eval-run DIR`) where two models answered the same items (`--models CHEAP,STRONG`,
    /// as the run names them), trains each kind of router on 60% of the items with the
    /// static embedding the server routes with (and with the MiniLM sentence embedding beside
    /// it), calibrates it on 20% and reports on the 20% it never saw: APGR, quality and cost
    /// (each model's mean ms per answer in the run), the share the cheaper model serves at
    /// 95% of the stronger's quality against random mixing; and the router's own µs per
    /// request. Writes the curves to DIR/router-curves.svg.
    #[cfg(feature = "local")]
    #[arg(long, requires = "eval_run")]
    router: bool,
    /// `--router`: the eval run directory.
    #[arg(long)]
    eval_run: Option<std::path::PathBuf>,
    /// `--router`: the cheaper and the stronger model, comma-separated.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// `--recording`, `--shadow`: rounds (each runs every phase for `--duration` s).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// `--auth`: the Redis holding the counters; `--cache --shared`: the shared cache.
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

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(bench(args))
}

async fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.failover {
        return failover::failover(args).await;
    }
    if args.cache {
        return cache::cache_bench(args).await;
    }
    if args.auth {
        return auth::auth_bench(args).await;
    }
    if args.recording {
        return recording::recording_bench(args).await;
    }
    if args.shadow {
        return shadow::shadow_bench(args).await;
    }
    if args.soak {
        return soak::soak(args).await;
    }
    #[cfg(feature = "local")]
    if args.lora {
        return lora::lora(args).await;
    }
    #[cfg(feature = "local")]
    if args.router {
        return router::router(args).await;
    }
    overhead::overhead(args).await
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

/// How many inferences the SQLite store at `db` holds (a gateway that recorded to it has
/// exited, its queue drained).
async fn recorded(db: &std::path::Path) -> anyhow::Result<u64> {
    let stored = fungible_store::Store::open(&format!("sqlite://{}?mode=rwc", db.display()))
        .await
        .context("opening the bench's store")?;
    let count = stored
        .stats(fungible_store::GroupBy::Inbound, None, None)
        .await
        .context("counting what was recorded")?
        .iter()
        .map(|row| row.requests)
        .sum::<u64>();
    stored.close().await;
    Ok(count)
}
