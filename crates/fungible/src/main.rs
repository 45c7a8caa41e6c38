//! The `fungible` binary: command-line parsing and glue. Everything else lives in the
//! library crates beside this one.

#[cfg(feature = "bench")]
mod bench;
mod config;
mod datasets;
mod eval;
mod keys;
mod route;
mod telemetry;
mod traces;
mod tune;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fungible_gateway::Gateway;

use crate::config::Config;
use fungible_server::AppState;

/// mimalloc frees memory another thread allocated without taking a lock: the recorder's
/// writer frees what the request path allocated, and with glibc's allocator each such free
/// locks the request thread's arena (BENCHMARKS.md, "Gateway overhead against peers").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `fungible --version`: the version and the cargo features this binary was built with.
const VERSION: &str = match (cfg!(feature = "local"), cfg!(feature = "bench")) {
    (true, true) => concat!(env!("CARGO_PKG_VERSION"), " (features: local, bench)"),
    (true, false) => concat!(env!("CARGO_PKG_VERSION"), " (features: local)"),
    (false, true) => concat!(env!("CARGO_PKG_VERSION"), " (features: bench)"),
    (false, false) => concat!(env!("CARGO_PKG_VERSION"), " (features: none)"),
};

/// fungible: one API in front of every model provider.
///
/// Clients speak the OpenAI Chat Completions or Responses API, Anthropic Messages or Gemini;
/// fungible routes `PROVIDER/MODEL`
/// (`openai/gpt-5`, `anthropic/claude-sonnet-4-5`, `gemini/gemini-2.5-flash`,
/// `groq/llama-3.3-70b-versatile`, ...) or a configured alias to that provider's real API,
/// translating requests, streams, tool calls and errors both ways.
#[derive(Parser)]
#[command(name = "fungible", version = VERSION, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the gateway.
    ///
    /// With no config file, every built-in provider whose API key is in the environment is
    /// enabled: OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY (or GOOGLE_API_KEY),
    /// GROQ_API_KEY, TOGETHER_API_KEY, DEEPSEEK_API_KEY, MISTRAL_API_KEY,
    /// OPENROUTER_API_KEY, FIREWORKS_API_KEY, XAI_API_KEY. `<PROVIDER>_BASE_URL`
    /// (OPENAI_BASE_URL, ANTHROPIC_BASE_URL, GEMINI_BASE_URL, ...) points a provider at a
    /// proxy, a self-hosted server or a mock.
    Serve(ServeArgs),
    /// Check a config file and print what it enables (never the keys).
    Check(ConfigArgs),
    /// Measure the overhead fungible adds over calling an upstream directly.
    ///
    /// Starts an in-process mock upstream and `fungible serve` as a child process pointed
    /// at it, then measures direct vs through fungible: requests/s at fixed concurrency,
    /// added p50/p99 latency at a fixed rate, streaming time to last byte, and the gateway's
    /// peak RSS.
    #[cfg(feature = "bench")]
    Bench(bench::BenchArgs),
    /// Recorded inferences: `traces list` (newest first, filters), `traces show ID`.
    Traces(traces::TracesArgs),
    /// Virtual keys: `keys create|list|show|update|revoke`, through a running gateway's
    /// admin API (`--url`; the admin key from FUNGIBLE_ADMIN_KEY).
    ///
    /// A key is printed once, at creation; the gateway keeps only its hash. Each key may
    /// carry allowed models (globs), RPM and TPM limits, a budget with a period
    /// (daily, monthly, total), an expiry and tags. Enforcement needs `[auth] enabled = true`.
    Keys(keys::KeysArgs),
    /// Requests, errors, tokens, cost and p50/p95 latency from the store, grouped
    /// `--by model|provider|route|user|day|inbound`.
    Stats(traces::StatsArgs),
    /// Evaluate models on a dataset: `eval run`, `eval report DIR`, `eval compare A B`.
    Eval(eval::EvalArgs),
    /// Datasets for fine-tuning and evals, kept in the store: `datasets build` (from
    /// recorded traffic and feedback, curated), `list`, `show`, `rows`, `add`, `remove`,
    /// `export` (a provider's fine-tuning JSONL, checked against its limits), `delete`.
    Datasets(datasets::DatasetsArgs),
    /// Fine-tuning jobs on the providers (OpenAI, Together, Mistral) from a stored dataset:
    /// `tune create` (estimate, confirm, launch), `list`, `show`, `watch`, `cancel`,
    /// `promote` (a share of a route). A finished job's model is served at once.
    Tune(tune::TuneArgs),
    /// Learned routers (`strategy = "learned"`): `route train ROUTE` (from eval runs,
    /// shadow scores and feedback; reports each kind on held-out requests), `list`, `show`,
    /// `rollback`.
    Route(route::RouteArgs),
}

#[derive(clap::Args)]
pub(crate) struct ConfigArgs {
    /// Config file (TOML). Default: ./fungible.toml when it exists.
    #[arg(long, short = 'c', env = "FUNGIBLE_CONFIG")]
    pub(crate) config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Address to listen on [default: 127.0.0.1, or server.host in the config].
    #[arg(long)]
    host: Option<IpAddr>,
    /// Port to listen on [default: 4000, or server.port in the config].
    #[arg(long, short = 'p')]
    port: Option<u16>,
    /// Threads serving requests [default: one per core, or server.worker_threads].
    #[arg(long)]
    workers: Option<usize>,
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fungible: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check(args),
        #[cfg(feature = "bench")]
        Command::Bench(args) => bench::run(args),
        Command::Traces(args) => traces::traces(args),
        Command::Stats(args) => traces::stats(args),
        Command::Keys(args) => keys::keys(args),
        Command::Eval(args) => eval::eval(args),
        Command::Datasets(args) => datasets::datasets(args),
        Command::Tune(args) => tune::tune(args),
        Command::Route(args) => route::route(args),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FUNGIBLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,llama-cpp-2=warn,llama_cpp_2=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Every section is validated here, before a store is opened or migrated.
    let Config { gateway: mut config, store: store_config, prices, telemetry: telemetry_config, cache: cache_config } =
        Config::load(&args.config)?;
    if let Some(host) = args.host {
        config.host = host.to_string();
    }
    if let Some(port) = args.port {
        config.port = port;
    }
    if let Some(workers) = args.workers.filter(|&n| n > 0) {
        config.worker_threads = workers;
    }
    let ip: IpAddr = config.host.parse().with_context(|| format!("server.host: {:?} is not an IP address", config.host))?;
    let addr = SocketAddr::new(ip, config.port);
    let gateway = Gateway::new(&config)?;
    config::check_cache_model(&cache_config, &gateway)?;
    if config.providers.is_empty() && config.local.is_none() {
        tracing::warn!("no provider is enabled: set an API key (OPENAI_API_KEY, ANTHROPIC_API_KEY, ...) or add [providers] to the config");
    }
    for p in &config.providers {
        tracing::info!(provider = %p.name, kind = p.kind.as_str(), base_url = %p.base_url, "provider enabled");
    }
    let gateway = gateway.with_prices(price_lookup(&prices));
    let shadows = fungible_server::shadow::Shadows::new(&config.routes, &gateway, &prices).map_err(anyhow::Error::msg)?;
    let mut state = AppState::new(gateway, config.max_body_bytes)
        .with_inflight_budget(config.max_inflight_body_bytes)
        .with_prices(prices)
        .with_allowed_hosts(config.allowed_hosts.clone())
        .with_shadows(shadows);
    if store_config.enabled {
        state.shared_mut().recording.raw_bodies = store_config.raw_bodies;
        state.shared_mut().recording.durable = store_config.durable;
    }
    // Each connection holds a file descriptor, and so may its upstream call: the connection
    // cap, not the default soft limit (often 1024), should be what bounds them.
    let limits = config.connections;
    let open_files = fungible_server::serve::raise_open_file_limit();
    tracing::info!(max_connections = limits.max_connections, open_files, "connection cap");
    if open_files.is_some_and(|n| n < 2 * limits.max_connections as u64 + 256) {
        tracing::warn!(
            "the open file limit ({}) is below twice server.max_connections ({}): raise it (ulimit -n) or lower the cap",
            open_files.unwrap_or_default(),
            limits.max_connections
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(config.worker_threads).enable_all().build()?;
    let recording = runtime.block_on(traces::start(&store_config, config.ui.enabled))?;
    let recorder = recording.as_ref().map(|(_, recorder)| recorder.clone());
    if let Some(cache) = runtime.block_on(open_cache(cache_config))? {
        state = state.with_cache(cache);
    }
    let store = recording.as_ref().map(|(store, _)| store.clone());
    // Routes with retrieved examples: their indexes are built now, so a missing dataset or
    // embedding model fails the start (Config::load refused them with no store).
    if let Some(store) = &store
        && config.routes.values().any(|r| r.examples.is_some())
    {
        let examples = runtime
            .block_on(fungible_datasets::Examples::load(store, &state.gateway, &config.routes))
            .map_err(anyhow::Error::msg)?;
        state = state.with_examples(examples);
    }
    if let Some((store, recorder)) = recording {
        // Fine-tuning jobs live in the store too; their models are served as they finish.
        let tuner = fungible_tune::Tuner::new(&config, store.clone());
        // Local jobs train in this process and are served by its engine.
        #[cfg(feature = "local")]
        let tuner = match state.gateway.local() {
            Some(local) => tuner.with_local(local.engine().clone(), &config.tune_adapters_dir),
            None => tuner,
        };
        state = state.with_recorder(store, recorder).with_tuner(tuner);
    }
    let auth = runtime
        .block_on(fungible_server::auth::Auth::from_config(&config.auth, store))
        .context("could not set up [auth]")?;
    if auth.enabled {
        let counters = if config.auth.redis.is_some() { "redis" } else { "memory" };
        tracing::info!(counters, admin_api = auth.admin_key.is_some(), "virtual keys required");
    } else if auth.admin_key.is_some() {
        tracing::info!("admin API on; keys are not required yet ([auth] enabled = false)");
    }
    if !auth.enabled && !ip.is_loopback() && config.allowed_hosts.is_empty() {
        tracing::warn!(
            "listening on {ip} with [auth] off: only requests for a loopback Host (localhost, 127.0.0.1, [::1]) are served; \
             list the names clients use in [server] allowed_hosts"
        );
    }
    let access = auth.access.clone();
    state = state.with_auth(auth);
    if config.ui.enabled {
        let sessions =
            fungible_server::ui::Sessions::new(config.ui.secret.as_ref().map(|s| s.expose()), config.ui.session, config.ui.secure_cookies);
        state = state.with_ui(fungible_server::ui::Ui::new(sessions).with_eval_runs(config.ui.eval_runs_dir.clone()));
        tracing::info!("web UI at http://{addr}/ui");
    }
    // Stored Responses (`previous_response_id`) follow the other shared state: in Redis when
    // `[state] redis` is set, so every instance continues every conversation.
    if let Some(url) = &config.auth.redis {
        state.shared_mut().responses = runtime
            .block_on(fungible_server::openai_responses::ResponseStore::redis(
                url,
                fungible_server::openai_responses::DEFAULT_RETENTION,
            ))
            .context("state.redis: could not connect for stored responses")?;
        tracing::info!("stored responses (previous_response_id) in redis");
    } else if let Some(store) = state.store.clone().filter(fungible_store::Store::is_postgres) {
        // Several instances on one PostgreSQL share the conversations through it.
        state.shared_mut().responses =
            fungible_server::openai_responses::ResponseStore::in_store(store, fungible_server::openai_responses::DEFAULT_RETENTION);
        tracing::info!("stored responses (previous_response_id) in the store");
    }
    let telemetry = runtime.block_on(async { telemetry::start(telemetry_config.as_ref()) })?;
    if let Some(t) = &telemetry {
        state = state.with_telemetry(t.clone());
    }
    if config.preload_local {
        runtime.block_on(state.gateway.preload_local());
    }
    let poller = state.tuner.is_some().then(|| {
        let _runtime = runtime.enter();
        fungible_server::tune::spawn_poller(state.clone(), config.tune_poll_interval)
    });
    // Learned routes route with their active router version, and pick up new ones; adaptive
    // tests follow their feedback.
    let router_poller = state.store.clone().and_then(|store| {
        let _runtime = runtime.enter();
        fungible_server::learned::spawn_poller(state.gateway.clone(), config.routes.clone(), store)
    });
    let tuner = state.tuner.clone();
    runtime
        .block_on(fungible_server::serve(state, addr, limits, shutdown_signal()))
        .with_context(|| format!("could not serve on {addr}"))?;
    // Local tuning jobs training here stop at their next step and go back to the queue, to
    // resume from their checkpoints on the next start (or on another instance).
    if let Some(poller) = poller {
        poller.abort();
    }
    if let Some(poller) = router_poller {
        poller.abort();
    }
    if let Some(tuner) = tuner {
        runtime.block_on(tuner.hand_back());
    }
    // The server has stopped (in-flight requests finished, or cut at server.shutdown_timeout_ms):
    // write the keys' settled spend and every queued record before exiting.
    if let Some(access) = access {
        runtime.block_on(access.flush());
    }
    if let Some(recorder) = recorder {
        runtime.block_on(recorder.shutdown());
    }
    // And export every queued span (bounded by the export timeout).
    if let Some(t) = telemetry {
        runtime.block_on(t.shutdown());
    }
    Ok(ExitCode::SUCCESS)
}

/// The `cheapest` routing strategy's prices, from the same table as cost tracking: USD per
/// million tokens blended 3 input : 1 output (a typical chat's mix).
fn price_lookup(prices: &fungible_store::PriceTable) -> fungible_gateway::PriceLookup {
    let prices = prices.clone();
    std::sync::Arc::new(move |provider: &str, model: &str| {
        prices.get(provider, model).map(|p| (3.0 * p.input + p.output) / 4.0)
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

/// `[cache]`: the response cache, opened here so that an unreachable Redis fails at start;
/// `None` when the section is absent or off.
async fn open_cache(config: fungible_cache::CacheConfig) -> anyhow::Result<Option<fungible_cache::ResponseCache>> {
    if !config.enabled {
        return Ok(None);
    }
    let backend = match &config.backend {
        fungible_cache::BackendConfig::Memory { .. } => "memory",
        fungible_cache::BackendConfig::Redis { .. } => "redis",
    };
    let cache = fungible_cache::ResponseCache::open(config).await.context("could not open the response cache")?;
    tracing::info!(backend, "response cache on");
    Ok(Some(cache))
}

/// Validates every section and prints what the config enables; nothing is opened or written.
fn check(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    let Config { gateway: config, store, prices: _, telemetry, cache } = Config::load(&args)?;
    config::check_cache_model(&cache, &Gateway::new(&config)?)?;
    println!("listen: {}:{}", config.host, config.port);
    if config.providers.is_empty() {
        println!("providers: none enabled");
    }
    for p in &config.providers {
        let key = match (&p.api_key, &p.api_key_env) {
            (Some(_), Some(var)) => format!("key from {var}"),
            (None, Some(var)) => format!("no key ({var} is not set)"),
            (_, None) => "no key".to_owned(),
        };
        println!("provider {:<12} {:<18} {}  [{key}]", p.name, p.kind.as_str(), p.base_url);
    }
    #[cfg(feature = "local")]
    if let Some(local) = &config.local {
        for (name, path) in &local.chat_models {
            println!("local    {name:<24} chat       {}", path.display());
        }
        for (name, path) in &local.embedding_models {
            println!("local    {name:<24} embeddings {}", path.display());
        }
    }
    for (alias, route) in &config.routes {
        let targets: Vec<String> = route
            .targets
            .iter()
            .map(|t| if route.targets.len() > 1 { format!("{} (weight {})", t.target, t.weight) } else { t.target.to_string() })
            .collect();
        println!("model    {alias:<12} -> {}  [{:?}, {} retries]", targets.join(", "), route.strategy, route.retries.attempts);
        if let Some(e) = &route.examples {
            println!(
                "         {:<12}    {} examples from {} ({} rows) within distance {} ({})",
                "",
                e.k,
                e.dataset,
                e.split.as_deref().unwrap_or("all"),
                e.max_distance,
                e.embedding_model
            );
        }
        for c in &route.shadow {
            println!(
                "         {:<12}    shadow {} on {}% of requests{}, scored by {}, {} in flight, ${}/day",
                "",
                c.target,
                c.sample_rate * 100.0,
                [("keys", &c.keys), ("tags", &c.tags)]
                    .iter()
                    .filter(|(_, list)| !list.is_empty())
                    .map(|(name, list)| format!(" with {name} {}", list.join(", ")))
                    .collect::<String>(),
                c.score,
                c.max_concurrent,
                c.daily_usd
            );
        }
    }
    if store.enabled {
        println!("store:     {} (batches of {}, queue {} bytes)", traces::shown(&store.url), store.batch_size, store.queue_bytes);
    } else {
        println!("store:     off (nothing recorded)");
    }
    match &cache.backend {
        _ if !cache.enabled => println!("cache:     off"),
        fungible_cache::BackendConfig::Memory { .. } => println!("cache:     in memory, ttl {} s", cache.ttl.as_secs()),
        fungible_cache::BackendConfig::Redis { url, .. } => {
            println!("cache:     redis {}, ttl {} s", traces::shown(url), cache.ttl.as_secs())
        }
    }
    if let Some(semantic) = cache.semantic.as_ref().filter(|_| cache.enabled) {
        println!("           semantic matching with {} at {}", semantic.embedding_model, semantic.threshold);
    }
    match &telemetry {
        Some(t) => println!("telemetry: OTLP to {} as {:?} (sampling {})", traces::shown(&t.endpoint), t.service_name, t.sample_ratio),
        None => println!("telemetry: off"),
    }
    let ui = &config.ui;
    if ui.enabled {
        let signing = match &ui.secret {
            Some(_) => format!("sessions signed with {}", ui.secret_env),
            None => format!("sessions signed with a random secret per process (set {} to share them)", ui.secret_env),
        };
        println!("ui:        http://{}:{}/ui ({signing}, {} h)", config.host, config.port, ui.session.as_secs() / 3600);
    } else {
        println!("ui:        off");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn version_names_the_enabled_features() {
        let expected = format!("fungible {}", VERSION);
        assert_eq!(Cli::command().render_version().trim_end(), expected);
        // The default build, which the test suite runs.
        #[cfg(all(feature = "local", feature = "bench"))]
        assert_eq!(expected, format!("fungible {} (features: local, bench)", env!("CARGO_PKG_VERSION")));
    }
}
