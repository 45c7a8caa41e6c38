//! `fungible route`: train a learned route's router from the labels already gathered (eval
//! runs, feedback on the route's answers, shadow scores), list its versions, show a
//! version's report, roll back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use fungible_eval::results::{ItemResult, RunMeta};
use fungible_gateway::Gateway;
use fungible_gateway::routing::balance::Strategy;
use fungible_router::{Goal, Kind, Report, Sample, TrainOptions};
use fungible_server::learned::features;
use fungible_store::Store;
use fungible_types::{ChatRequest, Message, Role};

use crate::ConfigArgs;
use crate::traces::shown;

#[derive(Args)]
pub(crate) struct RouteArgs {
    #[command(subcommand)]
    command: RouteCommand,
}

#[derive(Subcommand)]
enum RouteCommand {
    /// Train a router for ROUTE from the labels at hand, report each kind of router on
    /// requests it never saw, and keep the better one as the route's next version (active at
    /// once: serving instances pick it up within 10 s).
    ///
    /// Labels: per-item scores of the route's targets in eval runs (--eval-run, the most
    /// useful: every target on the same items), shadow candidates' scores against the
    /// primary (the primary counts as 1), and feedback on the route's answers (a score, or
    /// true/false as 1/0).
    Train(TrainArgs),
    /// ROUTE's router versions, newest first.
    List {
        #[command(flatten)]
        config: ConfigArgs,
        route: String,
    },
    /// A version's training report (the active one by default).
    Show {
        #[command(flatten)]
        config: ConfigArgs,
        route: String,
        /// The version [default: the active one].
        #[arg(value_name = "VERSION")]
        number: Option<i64>,
        /// The report as JSON, cost–quality curves included.
        #[arg(long)]
        json: bool,
    },
    /// Make an earlier version of ROUTE's router active again: by default the one before the
    /// active one. The later versions are retired (kept, and listed).
    Rollback {
        #[command(flatten)]
        config: ConfigArgs,
        route: String,
        #[arg(long)]
        to: Option<i64>,
    },
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The route (`[models.NAME]`) to train for.
    route: String,
    /// An eval run directory (`fungible eval run`) whose items the route's targets answered;
    /// repeatable.
    #[arg(long = "eval-run")]
    eval_runs: Vec<PathBuf>,
    /// The eval scorer whose score is the label [default: the run's only scorer; with
    /// several, whether every scorer passed].
    #[arg(long)]
    scorer: Option<String>,
    /// Leave out feedback on the route's answers.
    #[arg(long)]
    no_feedback: bool,
    /// Leave out shadow candidates' scores.
    #[arg(long)]
    no_shadow: bool,
    /// Only labels recorded in the last N days [default: all].
    #[arg(long)]
    days: Option<u64>,
    /// The kinds of router to fit, comma-separated: logistic, knn [default: both; the better
    /// on the validation split is kept].
    #[arg(long, value_delimiter = ',')]
    kind: Vec<String>,
    /// Calibrate the threshold to keep at least this fraction of the best target's quality,
    /// as cheaply as possible.
    #[arg(long, default_value_t = 0.95)]
    quality: f64,
    /// Instead: the best quality at most this cost per 1,000 requests (in the cost unit).
    #[arg(long)]
    max_cost_per_1k: Option<f64>,
    /// What a request costs: `usd` (recorded cost) or `ms` (latency: compute time, for local
    /// models) [default: usd when every target has a recorded cost, else ms].
    #[arg(long)]
    cost: Option<String>,
    /// Labels each target needs in the training split.
    #[arg(long, default_value_t = 50)]
    min_labels: usize,
    /// Report only; keep no version.
    #[arg(long)]
    dry_run: bool,
}

pub(crate) fn route(args: RouteArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        RouteCommand::Train(args) => train(args),
        RouteCommand::List { config, route } => {
            let (runtime, store) = open(&config)?;
            let versions = runtime.block_on(store.router_versions(&route))?;
            if versions.is_empty() {
                println!("{route}: no router trained yet (fungible route train {route})");
                return Ok(ExitCode::SUCCESS);
            }
            let active = versions.iter().find(|v| v.retired_ms.is_none()).map(|v| v.version);
            println!("{:<8} {:<20} {:<9} {:>9} {:>10} {:>14}  state", "version", "created (UTC)", "kind", "threshold", "test APGR", "cheapest@95%");
            for v in &versions {
                let report: Option<Report> = serde_json::from_str(&v.report).ok();
                let chosen = report.as_ref().and_then(Report::chosen);
                println!(
                    "{:<8} {:<20} {:<9} {:>9} {:>10} {:>14}  {}",
                    format!("v{}", v.version),
                    time(v.created_ms),
                    v.kind,
                    report.as_ref().map_or("-".into(), |r| format!("{:.3}", r.threshold)),
                    chosen.and_then(|c| c.test_apgr).map_or("-".into(), |a| format!("{a:.3}")),
                    chosen.and_then(|c| c.cheapest_share_at_95).map_or("-".into(), percent),
                    match (Some(v.version) == active, v.retired_ms) {
                        (true, _) => "active".to_owned(),
                        (false, Some(ms)) => format!("retired {}", time(ms)),
                        (false, None) => "superseded".to_owned(),
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        RouteCommand::Show { config, route, number: version, json } => {
            let (runtime, store) = open(&config)?;
            let row = runtime
                .block_on(store.router(&route, version))?
                .with_context(|| match version {
                    Some(v) => format!("{route} has no router version {v}"),
                    None => format!("{route} has no active router (fungible route list {route})"),
                })?;
            let report: Report = serde_json::from_str(&row.report).context("the stored report does not read")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{route}: router v{} ({}), trained {}", row.version, row.kind, time(row.created_ms));
                print_report(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        RouteCommand::Rollback { config, route, to } => {
            let (runtime, store) = open(&config)?;
            let version = runtime.block_on(store.roll_back_router(&route, to))?;
            println!("{route}: router v{version} is active; serving instances switch within 10 s");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn open(config: &ConfigArgs) -> anyhow::Result<(tokio::runtime::Runtime, Store)> {
    let store = crate::config::Config::load(config)?.store;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let opened = runtime
        .block_on(Store::open(&store.url))
        .with_context(|| format!("could not open the store {}", shown(&store.url)))?;
    Ok((runtime, opened))
}

/// A labelled request before it is embedded.
pub(crate) struct Labelled {
    pub(crate) key: String,
    pub(crate) messages: Vec<Message>,
    pub(crate) tools: bool,
    /// Target → quality.
    pub(crate) labels: BTreeMap<String, f64>,
}

/// What one target's answers cost, summed over the labels.
#[derive(Default)]
pub(crate) struct Spend {
    pub(crate) usd: f64,
    pub(crate) priced: usize,
    pub(crate) ms: f64,
    pub(crate) answers: usize,
}

impl Spend {
    fn add(&mut self, usd: Option<f64>, ms: f64) {
        if let Some(usd) = usd.filter(|c| *c > 0.0) {
            self.usd += usd;
            self.priced += 1;
        }
        self.ms += ms;
        self.answers += 1;
    }
}

fn train(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let config = crate::config::Config::load(&args.config)?;
    let route = config
        .gateway
        .routes
        .get(&args.route)
        .with_context(|| format!("no route {:?} in the config ([models.{}] with targets)", args.route, args.route))?;
    let targets: Vec<String> = route.targets.iter().filter(|t| t.share.is_none()).map(|t| t.target.to_string()).collect();
    if route.strategy != Strategy::Learned {
        eprintln!("note: models.{} has strategy \"{}\"; it routes with this router once it is \"learned\"", args.route, route.strategy.as_str());
    }
    let kinds = args
        .kind
        .iter()
        .map(|k| Kind::parse(k.trim()).with_context(|| format!("--kind {k:?}: expected logistic or knn")))
        .collect::<anyhow::Result<Vec<Kind>>>()?;
    let goal = match args.max_cost_per_1k {
        Some(c) if c.is_finite() && c >= 0.0 => Goal::MaxCost(c / 1000.0),
        Some(c) => anyhow::bail!("--max-cost-per-1k {c}: expected a cost of 0 or more"),
        None if args.quality > 0.0 && args.quality <= 1.0 => Goal::Quality(args.quality),
        None => anyhow::bail!("--quality {}: expected a fraction above 0, at most 1", args.quality),
    };
    let gateway = Gateway::new(&config.gateway)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let store = runtime
        .block_on(Store::open(&config.store.url))
        .with_context(|| format!("could not open the store {}", shown(&config.store.url)))?;
    let embed = runtime.block_on(fungible_server::learned::embedder(&gateway)).map_err(anyhow::Error::msg)?;
    let since_ms = args.days.map(|d| fungible_store::now_ms() - i64::try_from(d).unwrap_or(i64::MAX / 86_400_000).saturating_mul(86_400_000));

    let mut labelled: BTreeMap<String, Labelled> = BTreeMap::new();
    let mut spend: BTreeMap<String, Spend> = targets.iter().map(|t| (t.clone(), Spend::default())).collect();
    let mut sources: Vec<String> = Vec::new();
    for dir in &args.eval_runs {
        let n = runtime.block_on(eval_labels(dir, &targets, args.scorer.as_deref(), Some(&store), false, &mut labelled, &mut spend))?;
        sources.push(format!("{n} eval results from {}", dir.display()));
    }
    const LIMIT: i64 = 50_000;
    if !args.no_shadow {
        let rows = runtime.block_on(store.shadow_labels(&args.route, since_ms, LIMIT))?;
        let mut used = 0;
        for row in rows {
            let Some(quality) = row.score.or(row.boolean.map(|b| if b { 1.0 } else { 0.0 })) else { continue };
            if !targets.contains(&row.primary) || !targets.contains(&row.candidate) {
                continue;
            }
            let Some((messages, tools)) = request_of(&row.request) else { continue };
            let entry = labelled
                .entry(format!("inference:{}", row.primary_id))
                .or_insert_with(|| Labelled { key: format!("inference:{}", row.primary_id), messages, tools, labels: BTreeMap::new() });
            entry.labels.entry(row.primary.clone()).or_insert(1.0);
            entry.labels.insert(row.candidate.clone(), quality);
            if let Some(s) = spend.get_mut(&row.candidate) {
                s.add(row.candidate_cost, row.candidate_latency_ms);
            }
            if let Some(s) = spend.get_mut(&row.primary) {
                s.add(row.primary_cost, row.primary_latency_ms);
            }
            used += 1;
        }
        sources.push(format!("{used} shadow scores"));
    }
    if !args.no_feedback {
        let rows = runtime.block_on(store.feedback_labels(&args.route, since_ms, LIMIT))?;
        let mut used = 0;
        for row in rows {
            let Some(quality) = row.score.or(row.boolean.map(|b| if b { 1.0 } else { 0.0 })) else { continue };
            if !targets.contains(&row.target) {
                continue;
            }
            let Some((messages, tools)) = request_of(&row.request) else { continue };
            let key = format!("inference:{}", row.inference_id);
            let entry = labelled.entry(key.clone()).or_insert_with(|| Labelled { key, messages, tools, labels: BTreeMap::new() });
            // Feedback on the answer itself outweighs a shadow's assumption that it was right.
            entry.labels.insert(row.target.clone(), quality.clamp(0.0, 1.0));
            if let Some(s) = spend.get_mut(&row.target) {
                s.add(row.cost, row.latency_ms);
            }
            used += 1;
        }
        sources.push(format!("{used} feedback labels"));
    }

    let unit = match args.cost.as_deref() {
        Some("usd") => "usd",
        Some("ms") => "ms",
        Some(other) => anyhow::bail!("--cost {other:?}: expected usd or ms"),
        None if spend.values().all(|s| s.priced > 0) => "usd",
        None => "ms",
    };
    let costs: Vec<f64> = targets
        .iter()
        .map(|t| {
            let s = &spend[t];
            match unit {
                "usd" => s.usd / s.priced.max(1) as f64,
                _ => s.ms / s.answers.max(1) as f64,
            }
        })
        .collect();
    if let Some(t) = targets.iter().find(|t| spend[*t].answers == 0) {
        anyhow::bail!(
            "no labels for {t}, a target of {}: run an eval that includes it (--eval-run), shadow it, or send feedback on its answers ({})",
            args.route,
            sources.join(", ")
        );
    }
    let mut samples = Vec::with_capacity(labelled.len());
    for l in labelled.into_values() {
        let (embedding, shape) = features(&l.messages, l.tools, embed.as_ref()).map_err(anyhow::Error::msg)?;
        samples.push(Sample { key: l.key, embedding, shape, labels: l.labels });
    }
    eprintln!("{}: {} labelled requests ({})", args.route, samples.len(), sources.join(", "));
    let options = TrainOptions {
        kinds,
        goal,
        min_labels: args.min_labels,
        embedding: embed.name(),
        cost_unit: unit.to_owned(),
        ..TrainOptions::default()
    };
    let (router, report) = fungible_router::train(&targets, &costs, &samples, &options).map_err(|e| anyhow::anyhow!("{}: {e}", args.route))?;
    print_report(&report);
    if args.dry_run {
        println!("--dry-run: no version kept");
        return Ok(ExitCode::SUCCESS);
    }
    let version = runtime.block_on(store.create_router(
        &args.route,
        router.kind().as_str(),
        &serde_json::to_string(&report)?,
        &router.to_json(),
    ))?;
    println!("kept as {} router v{version} (active; serving instances pick it up within 10 s)", args.route);
    Ok(ExitCode::SUCCESS)
}

/// The messages and whether tools were offered, of a recorded canonical request.
fn request_of(text: &str) -> Option<(Vec<Message>, bool)> {
    let req: ChatRequest = serde_json::from_str(text).ok()?;
    Some((req.messages, !req.tools.is_empty()))
}

/// Adds an eval run's results for `targets` (each result's answering target, or with
/// `by_model` the model it names: an eval's arms, such as `MODEL+examples`, are no target);
/// returns how many it used.
pub(crate) async fn eval_labels(
    dir: &Path,
    targets: &[String],
    scorer: Option<&str>,
    store: Option<&Store>,
    by_model: bool,
    labelled: &mut BTreeMap<String, Labelled>,
    spend: &mut BTreeMap<String, Spend>,
) -> anyhow::Result<usize> {
    let meta: RunMeta = serde_json::from_str(
        &std::fs::read_to_string(dir.join("run.json")).with_context(|| format!("{}: not an eval run (no run.json)", dir.display()))?,
    )
    .with_context(|| format!("{}: run.json does not read", dir.display()))?;
    let scorer = match scorer {
        Some(s) if meta.scorers.iter().any(|m| m == s) => Some(s.to_owned()),
        Some(s) => anyhow::bail!("{}: no scorer {s:?} in this run (it has {})", dir.display(), meta.scorers.join(", ")),
        None if meta.scorers.len() == 1 => meta.scorers.first().cloned(),
        None => None,
    };
    // The items' full messages, where the dataset can still be read; else the input the run
    // kept (the last user message, cut at 500 characters: what the router reads anyway).
    let items: BTreeMap<String, Vec<Message>> = dataset_items(&meta, store).await.unwrap_or_default();
    let text = std::fs::read_to_string(dir.join("results.jsonl")).with_context(|| format!("{}: no results.jsonl", dir.display()))?;
    let mut used = 0;
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let result: ItemResult =
            serde_json::from_str(line).with_context(|| format!("{}/results.jsonl line {}", dir.display(), i + 1))?;
        // The target that answered: a route's result names it; a direct call is its model.
        let target = if by_model { result.model.clone() } else { result.target.clone().unwrap_or_else(|| result.model.clone()) };
        if !targets.contains(&target) || result.error.is_some() {
            continue;
        }
        let quality = match &scorer {
            Some(s) => result.scores.get(s).copied(),
            None => result.passed.map(|p| if p { 1.0 } else { 0.0 }),
        };
        let Some(quality) = quality else { continue };
        let key = format!("eval:{}:{}", meta.dataset_sha256.as_deref().unwrap_or(&meta.run_id), result.item_id);
        let messages = items.get(&result.item_id).cloned().unwrap_or_else(|| {
            let input = result.input.strip_suffix('…').unwrap_or(&result.input);
            vec![Message::text(Role::User, input)]
        });
        labelled
            .entry(key.clone())
            .or_insert_with(|| Labelled { key, messages, tools: false, labels: BTreeMap::new() })
            .labels
            .insert(target.clone(), quality.clamp(0.0, 1.0));
        if let Some(s) = spend.get_mut(&target) {
            s.add(result.cost_usd, result.latency_ms as f64);
        }
        used += 1;
    }
    Ok(used)
}

/// The run's dataset items by id, if the dataset is still where the run read it.
async fn dataset_items(meta: &RunMeta, store: Option<&Store>) -> Option<BTreeMap<String, Vec<Message>>> {
    let dataset = if let Some(reference) = meta.dataset.strip_prefix("dataset:") {
        let (name, version) = fungible_datasets::versions::parse_reference(reference).ok()?;
        fungible_eval::traces::dataset_from_store(store?, &name, version, None).await.ok()?.0
    } else {
        let dataset = fungible_eval::dataset::Dataset::read(Path::new(&meta.dataset), None).ok()?;
        // Only the very file the run read.
        if meta.dataset_sha256.is_some() && dataset.sha256 != meta.dataset_sha256 {
            return None;
        }
        dataset
    };
    Some(dataset.items.into_iter().map(|i| (i.id, i.messages)).collect())
}

fn print_report(report: &Report) {
    println!(
        "requests: {} labelled; split {} train / {} validation / {} test (the last two labelled for every target)",
        report.samples, report.train, report.validation, report.test
    );
    println!("{:<36} {:>8} {:>12}", "target, alone on the test split", "quality", format!("cost ({})", report.cost_unit));
    for (target, quality) in &report.test_quality {
        println!("{:<36} {:>8.3} {:>12}", target, quality, cost(report.costs.get(target).copied().unwrap_or(0.0), &report.cost_unit));
    }
    let goal = match report.goal {
        Goal::Quality(f) => format!("at least {:.0}% of the best target's quality", f * 100.0),
        Goal::MaxCost(c) => format!("at most {} per request", cost(c, &report.cost_unit)),
    };
    println!("\nthreshold calibrated on the validation split to {goal}; on the test split:");
    println!("{:<10} {:>6} {:>14} {:>8} {:>12} {:>12} {:>14}", "router", "k", "APGR val/test", "quality", "cost", "to cheapest", "cheapest@95%");
    for k in &report.kinds {
        println!(
            "{:<10} {:>6} {:>14} {:>8.3} {:>12} {:>12} {:>14}",
            k.kind.as_str(),
            k.k.map_or("-".into(), |k| k.to_string()),
            format!("{} / {}", k.validation_apgr.map_or("-".into(), |a| format!("{a:.2}")), k.test_apgr.map_or("-".into(), |a| format!("{a:.2}"))),
            k.test.quality,
            cost(k.test.cost, &report.cost_unit),
            percent(k.test.cheapest_share),
            k.cheapest_share_at_95.map_or("-".into(), percent),
        );
    }
    println!(
        "{:<10} {:>6} {:>14} {:>8} {:>12} {:>12} {:>14}",
        "random",
        "-",
        "0.50 / 0.50",
        "-",
        "-",
        "-",
        report.random_cheapest_share_at_95.map_or("-".into(), percent)
    );
    println!("kept: {} (the better APGR on the validation split), threshold {:.3}", report.chosen.as_str(), report.threshold);
}

fn cost(value: f64, unit: &str) -> String {
    match unit {
        "usd" => format!("${value:.6}"),
        _ => format!("{value:.1} ms"),
    }
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

fn time(ms: i64) -> String {
    crate::traces::utc_time(ms)
}
