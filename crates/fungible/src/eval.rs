//! `fungible eval run|report|compare`: the CLI of `fungible-eval`. `run` builds the same
//! in-process gateway as `serve` (same config, routes, aliases, local models, prices), runs
//! the dataset, then writes the report; `report` regenerates it from a run directory;
//! `compare` puts two runs side by side.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use fungible_eval::backend::GatewayBackend;
use fungible_eval::dataset::{Dataset, DatasetFormat};
use fungible_eval::runner::{self, RunOptions};
use fungible_eval::scorers::{CodeLimits, ScorerSet};
use fungible_datasets::{FeedbackFilter, Selection, Split};
use fungible_gateway::Gateway;
use fungible_store::Store;

use crate::ConfigArgs;

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(subcommand)]
    command: EvalCommand,
}

#[derive(clap::Subcommand)]
enum EvalCommand {
    /// Send every dataset item to every model, score the answers, write the report.
    ///
    /// Results are appended to OUT/results.jsonl as they arrive: after an interrupt, the same
    /// command resumes where it stopped.
    Run(Box<RunArgs>),
    /// (Re)write OUT/report.json and OUT/report.html from a run directory.
    Report {
        /// The run directory.
        dir: PathBuf,
    },
    /// Compare two runs (for example the same dataset before and after a change).
    Compare {
        a: PathBuf,
        b: PathBuf,
        /// Also write compare.json and compare.html here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The dataset: JSONL (or .jsonl.gz) in the chat, gsm8k or humaneval format, or a
    /// dataset kept in the store as NAME or NAME@VERSION (`fungible datasets list`; the
    /// version used becomes immutable).
    #[arg(
        long,
        required_unless_present = "from_traces",
        conflicts_with = "from_traces"
    )]
    dataset: Option<PathBuf>,
    /// The dataset format [default: detected from the first item].
    #[arg(long)]
    format: Option<String>,
    /// A stored dataset: only this split (train or validation) [default: every row].
    #[arg(long)]
    split: Option<String>,
    /// Make the dataset from recorded inferences (the store of `[store]`); filter with
    /// --route, --trace-model, --since, --until, --feedback.
    #[arg(long)]
    from_traces: bool,
    /// --from-traces: only this route (alias).
    #[arg(long, requires = "from_traces")]
    route: Option<String>,
    /// --from-traces: only this model (as requested, or PROVIDER/MODEL that answered).
    #[arg(long, requires = "from_traces")]
    trace_model: Option<String>,
    /// --from-traces: since (30m, 24h, 7d, 2025-01-31, 2025-01-31T12:00:00Z).
    #[arg(long, requires = "from_traces")]
    since: Option<String>,
    /// --from-traces: until (same forms as --since).
    #[arg(long, requires = "from_traces")]
    until: Option<String>,
    /// --from-traces: only inferences with positive, negative, demonstration or any feedback.
    #[arg(long, requires = "from_traces")]
    feedback: Option<String>,
    /// The models to compare, comma-separated (PROVIDER/MODEL or route aliases); the first
    /// is the baseline.
    #[arg(long, required = true, value_delimiter = ',')]
    models: Vec<String>,
    /// Scorers (repeatable or comma-separated): exact, normalized, contains, regex:PATTERN,
    /// numeric, json, json-schema, json-equal, similarity[:THRESHOLD], code[:TIMEOUT_S],
    /// judge:MODEL[:RUBRIC_FILE], pairwise:MODEL [default: by item: code when it has tests,
    /// json-schema when it has a schema, else numeric or normalized on the reference].
    #[arg(long = "scorer")]
    scorers: Vec<String>,
    /// Requests in flight at once (all models together).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Only the first N items (--from-traces: the newest N; default 100 there).
    #[arg(long)]
    limit: Option<usize>,
    /// The run directory [default: eval-runs/<dataset name>]. An existing run there is resumed.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Stop starting requests once this many USD were spent (answers and judges).
    #[arg(long)]
    max_cost: Option<f64>,
    /// max_tokens of every request: a bound on each answer's length and time (a model that
    /// loops stops here). Enough for step-by-step math and a function's code.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens: u32,
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// The embedding model of the similarity scorer.
    #[arg(long, default_value = "local/all-minilm-l6-v2")]
    embedding_model: String,
    /// Memory limit of the code scorer's Python process, in MiB.
    #[arg(long, default_value_t = 1024)]
    code_memory_mb: u64,
    /// No progress bars.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Do not write the report at the end.
    #[arg(long)]
    no_report: bool,
}

pub fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        EvalCommand::Run(args) => run(*args),
        EvalCommand::Report { dir } => {
            let summary = fungible_eval::report::write_report(&dir)
                .with_context(|| format!("report of {}", dir.display()))?;
            print!("{}", summary.terminal());
            Ok(ExitCode::SUCCESS)
        }
        EvalCommand::Compare { a, b, out } => {
            let comparison = fungible_eval::report::compare(&a, &b)?;
            print!("{}", comparison.terminal());
            if let Some(out) = out {
                let (json, html) = comparison.write(&out)?;
                println!("comparison: {} {}", html.display(), json.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let scorers = ScorerSet::parse(&args.scorers)?;
    if args.concurrency == 0 {
        anyhow::bail!("--concurrency must be at least 1");
    }
    if args.max_cost.is_some_and(|c| !(c >= 0.0)) {
        anyhow::bail!("--max-cost must be a number of USD >= 0");
    }
    let models: Vec<String> = args
        .models
        .iter()
        .map(|m| m.trim().to_owned())
        .filter(|m| !m.is_empty())
        .collect();
    if models.is_empty() {
        anyhow::bail!("--models needs at least one model");
    }
    let format = args
        .format
        .as_deref()
        .map(DatasetFormat::parse)
        .transpose()?;
    let crate::config::Config { gateway: config, store: store_config, prices, .. } = crate::config::Config::load(&args.config)?;
    // Priced as `serve` prices it, so a `cheapest` route picks the same target.
    let gateway = Gateway::new(&config)?.with_prices(crate::price_lookup(&prices));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    let store_reference = args
        .dataset
        .as_ref()
        .filter(|p| !p.exists())
        .and_then(|p| p.to_str())
        .and_then(|r| fungible_datasets::versions::parse_reference(r).ok());
    let mut used_version: Option<(String, i64)> = None;
    let mut dataset = match (&args.dataset, store_reference) {
        (Some(_), Some((name, version))) => {
            let split = args
                .split
                .as_deref()
                .map(|s| Split::parse(s).with_context(|| format!("--split {s:?}: expected train or validation")))
                .transpose()?;
            let (dataset, version) = runtime.block_on(async {
                let store = Store::open(&store_config.url)
                    .await
                    .context("could not open the store ([store] url) for a stored dataset")?;
                let read = fungible_eval::traces::dataset_from_store(&store, &name, version, split).await;
                store.close().await;
                anyhow::Ok(read?)
            })?;
            used_version = Some((name, version));
            dataset
        }
        (Some(path), None) => Dataset::read(path, format)?,
        (None, _) => {
            let now = fungible_store::now_ms();
            let time = |s: &Option<String>| -> anyhow::Result<Option<i64>> {
                Ok(s.as_deref().map(|s| fungible_eval::traces::parse_time(s, now)).transpose()?)
            };
            let selection = Selection {
                route: args.route.clone(),
                model: args.trace_model.clone(),
                since_ms: time(&args.since)?,
                until_ms: time(&args.until)?,
                feedback: args
                    .feedback
                    .as_deref()
                    .map(|f| {
                        FeedbackFilter::parse(f)
                            .with_context(|| format!("--feedback {f:?}: expected positive, negative, demonstration or any"))
                    })
                    .transpose()?,
                limit: args.limit.unwrap_or(100),
                ..Selection::default()
            };
            runtime.block_on(async {
                let store = Store::open(&store_config.url)
                    .await
                    .context("could not open the inference store ([store] url)")?;
                let dataset = fungible_eval::traces::dataset_from_traces(&store, &selection).await;
                store.close().await;
                anyhow::Ok(dataset?)
            })?
        }
    };
    if let Some(limit) = args.limit {
        dataset.truncate(limit);
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("eval-runs").join(sanitize(&dataset.name)));
    let mut opts = RunOptions::new(models, out.clone());
    opts.scorers = scorers;
    opts.concurrency = args.concurrency;
    opts.max_cost_usd = args.max_cost;
    opts.max_tokens = Some(args.max_tokens);
    opts.temperature = Some(args.temperature);
    opts.progress = !args.quiet;
    opts.embedding_model = args.embedding_model.clone();
    opts.code_limits = CodeLimits {
        memory_mib: args.code_memory_mb,
        ..CodeLimits::default()
    };
    eprintln!(
        "eval: {} items ({}) x {} models -> {}",
        dataset.items.len(),
        dataset.format.as_str(),
        opts.models.len(),
        out.display()
    );

    if let Some((name, version)) = &used_version {
        // The run refers to this version from now on: it must never change under it.
        runtime.block_on(async {
            let store = Store::open(&store_config.url).await.context("could not open the store ([store] url)")?;
            let marked = fungible_datasets::versions::mark_used(&store, name, *version, &format!("eval:{}", out.display())).await;
            store.close().await;
            anyhow::Ok(marked?)
        })?;
    }
    let mut backend = GatewayBackend::new(gateway, prices);
    // A route with retrieved examples is measured as it serves, examples included.
    let with_examples: std::collections::BTreeMap<_, _> =
        config.routes.iter().filter(|(name, r)| r.examples.is_some() && opts.models.contains(name)).map(|(n, r)| (n.clone(), r.clone())).collect();
    if !with_examples.is_empty() {
        let examples = runtime.block_on(async {
            let store = Store::open(&store_config.url).await.context("could not open the store ([store] url) for retrieved examples")?;
            let loaded = fungible_datasets::Examples::load(&store, backend.gateway(), &with_examples).await;
            store.close().await;
            loaded.map_err(anyhow::Error::msg)
        })?;
        backend = backend.with_examples(examples);
    }
    let backend = Arc::new(backend);
    let started = std::time::Instant::now();
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = runner::run(&dataset, backend, opts) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    let Some(outcome) = outcome else {
        eprintln!(
            "eval: interrupted; the results so far are in {}: run the same command again to resume",
            out.display()
        );
        return Ok(ExitCode::from(130));
    };
    let outcome = outcome?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "eval: {} answered in {secs:.1}s ({:.1} items/s), {} errors, {} resumed, {} pairwise, ${:.4} spent{}",
        outcome.answered,
        outcome.answered as f64 / secs.max(1e-9),
        outcome.errors,
        outcome.resumed,
        outcome.pairwise,
        outcome.cost_usd,
        if outcome.meta.stopped_by_budget {
            " (stopped at the spend cap)"
        } else {
            ""
        }
    );
    if args.no_report {
        return Ok(ExitCode::SUCCESS);
    }
    let summary = fungible_eval::report::write_report(&out)
        .with_context(|| format!("report of {}", out.display()))?;
    print!("{}", summary.terminal());
    Ok(ExitCode::SUCCESS)
}

/// A dataset name as a folder name.
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "run".into() } else { s }
}
