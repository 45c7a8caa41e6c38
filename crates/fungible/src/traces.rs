//! The recording side of the binary: opening the store from `[store]` for `serve`, and the
//! `fungible traces list|show` and `fungible stats` commands, which read the store directly.

use std::process::ExitCode;

use anyhow::Context;
use fungible_store::{
    GroupBy, InferenceFilter, Recorder, RecorderOptions, Store, StoreConfig,
};

use crate::ConfigArgs;

/// Opens the store (applying migrations), starts the recorder and the minutely roll-up
/// (with `warm_ui`, which also warms the UI overview's stats); `None` when `[store]` is
/// disabled.
pub async fn start(config: &StoreConfig, warm_ui: bool) -> anyhow::Result<Option<(Store, Recorder)>> {
    if !config.enabled {
        tracing::info!("inference store disabled");
        return Ok(None);
    }
    let store = Store::open(&config.url)
        .await
        .with_context(|| format!("could not open the inference store {}", shown(&config.url)))?;
    // The writer gets a thread, a runtime and connections of its own, at a lower priority,
    // so recording uses CPU the request path leaves over.
    let url = config.url.clone();
    let recorder = Recorder::start_in_background(
        move || async move { Store::open(&url).await },
        RecorderOptions {
            queue_capacity: config.queue_capacity,
            queue_bytes: config.queue_bytes,
            batch_size: config.batch_size,
            flush_interval: config.flush_interval,
            writer_priority: config.writer_priority,
            max_record_bytes: config.max_record_bytes,
            ..RecorderOptions::default()
        },
    )
    .await
    .with_context(|| format!("could not start recording to {}", shown(&config.url)))?;
    tracing::info!(store = %shown(&config.url), "recording inferences");
    tokio::spawn(roll_up_every_minute(store.clone(), warm_ui));
    Ok(Some((store, recorder)))
}

/// Keeps the stats roll-ups current (whole UTC days and hours, some minutes after they end),
/// so that `fungible stats` and `GET /v1/stats` read thousands of rows, not millions; with
/// `warm_ui`, then reads what the UI's overview will (`fungible_server::ui::warm`), at start
/// and after each roll-up that moved.
async fn roll_up_every_minute(store: Store, warm_ui: bool) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tick.tick().await;
        match store.roll_up(fungible_store_now_ms()).await {
            Ok(done) => {
                if done.days > 0 || done.hours > 0 {
                    tracing::debug!(days = done.days, hours = done.hours, "store: stats rolled up");
                }
                if warm_ui && (first || done.days > 0 || done.hours > 0) {
                    fungible_server::ui::warm(&store).await;
                }
                first = false;
            }
            Err(e) => tracing::warn!("store: could not roll up stats (will retry): {e}"),
        }
    }
}

/// The URL without a password.
pub(crate) fn shown(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user = &url[scheme + 3..at];
            let user = user.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[derive(clap::Args)]
pub struct TracesArgs {
    #[command(subcommand)]
    command: TracesCommand,
}

#[derive(clap::Subcommand)]
enum TracesCommand {
    /// Recorded inferences, newest first.
    List(ListArgs),
    /// One recorded inference: request, response, attempts, feedback.
    Show(ShowArgs),
}

#[derive(clap::Args)]
struct ListArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[arg(long)]
    provider: Option<String>,
    #[arg(long)]
    model: Option<String>,
    #[arg(long)]
    route: Option<String>,
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    episode: Option<String>,
    /// A virtual key's id.
    #[arg(long)]
    key: Option<String>,
    /// Only failures.
    #[arg(long)]
    errors: bool,
    /// Ids older than this one (the next page).
    #[arg(long)]
    before: Option<String>,
    #[arg(long, default_value_t = 20)]
    limit: u32,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ShowArgs {
    #[command(flatten)]
    config: ConfigArgs,
    id: String,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// model, provider, route, key, user, tag, day, hour or inbound.
    #[arg(long, default_value = "model")]
    by: String,
    /// Only the last N hours.
    #[arg(long)]
    hours: Option<u64>,
    #[arg(long)]
    json: bool,
}

fn open_for_reading(config: &ConfigArgs) -> anyhow::Result<(tokio::runtime::Runtime, Store)> {
    let store = crate::config::Config::load(config)?.store;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let opened = runtime
        .block_on(Store::open(&store.url))
        .with_context(|| format!("could not open the inference store {}", shown(&store.url)))?;
    Ok((runtime, opened))
}

pub fn traces(args: TracesArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TracesCommand::List(a) => {
            let (rt, store) = open_for_reading(&a.config)?;
            let filter = InferenceFilter {
                provider: a.provider,
                model: a.model,
                route: a.route,
                user: a.user,
                episode_id: a.episode,
                key_id: a.key,
                errors: a.errors.then_some(true),
                before: a.before,
                limit: Some(a.limit),
                ..Default::default()
            };
            let records = rt.block_on(store.list(&filter))?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&records)?);
                return Ok(ExitCode::SUCCESS);
            }
            let mut rows = vec![row([
                "ID",
                "TIME (UTC)",
                "INBOUND",
                "MODEL",
                "TARGET",
                "STATUS",
                "TOKENS IN/OUT",
                "COST $",
                "LATENCY ms",
            ])];
            for r in &records {
                rows.push(row([
                    r.id.clone(),
                    utc_time(r.time_ms),
                    r.inbound.clone(),
                    r.requested_model.clone(),
                    match (&r.provider, &r.model) {
                        (Some(p), Some(m)) => format!("{p}/{m}"),
                        _ => "-".into(),
                    },
                    r.error.clone().unwrap_or_else(|| "ok".into()),
                    format!("{}/{}", r.usage.input_tokens, r.usage.output_tokens),
                    r.cost.map_or_else(|| "?".into(), |c| format!("{c:.6}")),
                    format!("{:.0}", r.latency_ms),
                ]));
            }
            print_table(&rows);
            Ok(ExitCode::SUCCESS)
        }
        TracesCommand::Show(a) => {
            let (rt, store) = open_for_reading(&a.config)?;
            let Some(record) = rt.block_on(store.get(&a.id))? else {
                anyhow::bail!("no recorded inference with id {:?}", a.id);
            };
            let feedback = rt.block_on(store.feedback(&a.id))?;
            let mut value = serde_json::to_value(&record)?;
            value["feedback"] = serde_json::to_value(feedback)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&value)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("id        {}", record.id);
            println!("time      {} UTC", utc_time(record.time_ms));
            println!(
                "inbound   {}   model {}   stream {}",
                record.inbound, record.requested_model, record.stream
            );
            if let (Some(p), Some(m)) = (&record.provider, &record.model) {
                println!("target    {p}/{m}");
            }
            println!("status    {}", record.error.as_deref().unwrap_or("ok"));
            let u = &record.usage;
            println!(
                "usage     input {} (cache read {}, write {})  output {} (reasoning {})",
                u.input_tokens,
                u.cache_read_tokens,
                u.cache_write_tokens,
                u.output_tokens,
                u.reasoning_tokens
            );
            println!(
                "cost      {}",
                record
                    .cost
                    .map_or_else(|| "unknown".into(), |c| format!("${c:.6}"))
            );
            println!(
                "latency   {:.1} ms{}",
                record.latency_ms,
                record
                    .ttft_ms
                    .map(|t| format!("  (first token {t:.1} ms)"))
                    .unwrap_or_default()
            );
            let mut rows = vec![row(["#", "TARGET", "STATUS", "LATENCY ms"])];
            for (i, at) in record.attempts.iter().enumerate() {
                let status = at
                    .error
                    .clone()
                    .map_or(at.status.to_string(), |e| format!("{} ({e})", at.status));
                rows.push(row([
                    i.to_string(),
                    format!("{}/{}", at.provider, at.model),
                    status,
                    format!("{:.1}", at.latency_ms),
                ]));
            }
            print_table(&rows);
            println!(
                "request   {}",
                serde_json::to_string_pretty(&record.request)?
            );
            println!(
                "response  {}",
                serde_json::to_string_pretty(&record.response)?
            );
            println!(
                "feedback  {}",
                serde_json::to_string_pretty(&value["feedback"])?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let by: GroupBy = args
        .by
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--by: {e}"))?;
    let (rt, store) = open_for_reading(&args.config)?;
    let since = args
        .hours
        .map(|h| fungible_store_now_ms() - (h as i64) * 3_600_000);
    // Whatever the gateway's minutely roll-up has not reached yet (or all of it, with no
    // gateway running) is rolled up first; cheap when there is nothing to do.
    rt.block_on(store.roll_up(fungible_store_now_ms()))?;
    let rows = rt.block_on(store.stats(by, since, None))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = vec![row([
        args.by.to_uppercase().as_str(),
        "REQUESTS",
        "ERRORS",
        "TOKENS IN",
        "TOKENS OUT",
        "COST $",
        "P50 ms",
        "P95 ms",
        "TTFT P95 ms",
    ]
    .map(str::to_owned))];
    for r in &rows {
        let cost = if r.unpriced > 0 {
            format!("{:.6} (+{} unpriced)", r.cost, r.unpriced)
        } else {
            format!("{:.6}", r.cost)
        };
        table.push(row([
            r.key.clone(),
            r.requests.to_string(),
            r.errors.to_string(),
            r.input_tokens.to_string(),
            r.output_tokens.to_string(),
            cost,
            format!("{:.0}", r.p50_latency_ms),
            format!("{:.0}", r.p95_latency_ms),
            r.p95_ttft_ms.map_or_else(|| "-".to_owned(), |t| format!("{t:.0}")),
        ]));
    }
    print_table(&table);
    Ok(ExitCode::SUCCESS)
}

fn fungible_store_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn row<const N: usize, S: Into<String>>(cells: [S; N]) -> Vec<String> {
    cells.into_iter().map(Into::into).collect()
}

/// Left-aligned columns, two spaces apart.
pub(crate) fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, s)| format!("{s:<w$}", w = widths[c]))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// `YYYY-MM-DD HH:MM:SS` of Unix milliseconds.
pub(crate) fn utc_time(ms: i64) -> String {
    fungible_types::date::utc_datetime(ms, ' ')
}
