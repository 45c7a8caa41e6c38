//! `fungible tune ...`: fine-tuning jobs on the providers of the config, kept in the store of
//! `[store]` (the same jobs `/v1/tune/jobs` serves and `fungible serve` polls).

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use fungible_store::Store;
use fungible_tune::{Job, LaunchRequest, Method, Plan, Tuner};
use serde_json::{Map, Value};

use crate::ConfigArgs;

#[derive(clap::Args)]
pub struct TuneArgs {
    #[command(subcommand)]
    command: TuneCommand,
}

#[derive(clap::Subcommand)]
enum TuneCommand {
    /// Launch a fine-tuning job on a stored dataset version.
    ///
    /// Checks the dataset against the provider's limits, shows the files and the estimated
    /// cost (training tokens x epochs x the provider's training price), asks before
    /// launching unless --yes, and sends nothing with --dry-run. The dataset version becomes
    /// immutable. When the job succeeds its model is served under --alias (default
    /// DATASET@ft-YYYYMMDD) by every `fungible serve` on the same store, with no restart.
    Create(Box<CreateArgs>),
    /// Jobs, newest first.
    List(ListArgs),
    /// A job: status, events, the loss by step, the model it made.
    Show(IdArgs),
    /// Follow a job until it ends, polling the provider. A local job trains in this process
    /// while it is followed, unless a `fungible serve` on the same store already trains it.
    Watch(WatchArgs),
    /// Cancel an unfinished job.
    Cancel(IdArgs),
    /// Give a succeeded job's model a share of a configured route's requests (its first
    /// picks; the route's own targets keep the rest and stay its fallbacks). 0 takes it back.
    Promote(PromoteArgs),
}

#[derive(clap::Args)]
struct CreateArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// openai, together, mistral or fireworks (a configured provider), or local: a LoRA
    /// adapter trained in process on a `[local]` chat model, served as local/MODEL+JOB_ID.
    #[arg(long)]
    provider: String,
    /// The base model as the provider names it (gpt-4.1-mini-2025-04-14, ...; for local, a
    /// local chat model: smollm2-135m-instruct).
    #[arg(long)]
    model: String,
    /// NAME or NAME@VERSION of a stored dataset (`fungible datasets list`).
    #[arg(long)]
    dataset: String,
    /// sft, or dpo (preference pairs: OpenAI, Together).
    #[arg(long, default_value = "sft")]
    method: String,
    /// Epochs (the provider's name for it: n_epochs, or epochs on Mistral and Fireworks).
    #[arg(long)]
    epochs: Option<u32>,
    /// A hyperparameter with the provider's name, KEY=VALUE (VALUE as JSON when it parses:
    /// learning_rate_multiplier=0.5, batch_size=auto); repeatable. Local: rank, alpha,
    /// dropout, target_modules, learning_rate, warmup_ratio, schedule, weight_decay,
    /// max_grad_norm, batch_tokens, gradient_accumulation, max_seq_len, patience,
    /// checkpoint_steps, seed (see the README).
    #[arg(long = "param")]
    params: Vec<String>,
    /// Added to the model's name by the provider.
    #[arg(long)]
    suffix: Option<String>,
    /// The name the model is served under [default: DATASET@ft-YYYYMMDD].
    #[arg(long)]
    alias: Option<String>,
    /// Launch without asking.
    #[arg(long, short = 'y')]
    yes: bool,
    /// Check and estimate only: nothing is uploaded.
    #[arg(long)]
    dry_run: bool,
    /// Once the job succeeds, evaluate the tuned model against its base model on the
    /// dataset's validation rows (or --eval-dataset / --eval-split); the report is kept with
    /// the job. `fungible serve` runs it, or `tune watch` when no gateway is running.
    #[arg(long)]
    eval: bool,
    /// The eval's dataset, NAME or NAME@VERSION [default: the job's].
    #[arg(long, requires = "eval")]
    eval_dataset: Option<String>,
    /// The eval's split: train or validation [default: validation].
    #[arg(long, requires = "eval")]
    eval_split: Option<String>,
    /// The eval's scorers (as `fungible eval run --scorer`); repeatable.
    #[arg(long = "eval-scorer", requires = "eval")]
    eval_scorers: Vec<String>,
    /// At most this many eval items.
    #[arg(long, requires = "eval")]
    eval_limit: Option<usize>,
    /// max_tokens of every eval request (a short label needs few; a model that rambles stops
    /// here) [default: the eval's].
    #[arg(long, requires = "eval")]
    eval_max_tokens: Option<u32>,
    /// The embedding model of the eval's third arm, the base model given the nearest train
    /// rows as few-shot examples [default: local/all-minilm-l6-v2].
    #[arg(long, requires = "eval")]
    eval_embedding_model: Option<String>,
    /// Follow the job after launching it.
    #[arg(long)]
    watch: bool,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ListArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct IdArgs {
    #[command(flatten)]
    config: ConfigArgs,
    id: String,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct WatchArgs {
    #[command(flatten)]
    config: ConfigArgs,
    id: String,
    /// Seconds between polls.
    #[arg(long, default_value_t = 10)]
    every: u64,
}

#[derive(clap::Args)]
struct PromoteArgs {
    #[command(flatten)]
    config: ConfigArgs,
    id: String,
    /// A route of [models].
    #[arg(long)]
    route: String,
    /// Its share of the route's first picks, 1 to 99 (0: take it back).
    #[arg(long)]
    percent: u32,
}

pub fn tune(args: TuneArgs) -> anyhow::Result<ExitCode> {
    let config_args = match &args.command {
        TuneCommand::Create(a) => &a.config,
        TuneCommand::List(a) => &a.config,
        TuneCommand::Show(a) | TuneCommand::Cancel(a) => &a.config,
        TuneCommand::Watch(a) => &a.config,
        TuneCommand::Promote(a) => &a.config,
    };
    let crate::config::Config { gateway: config, store: store_config, prices, .. } = crate::config::Config::load(config_args)?;
    if !store_config.enabled {
        anyhow::bail!("tuning jobs live in the store, and [store] enabled = false");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let store = runtime.block_on(Store::open(&store_config.url)).context("could not open the store ([store] url)")?;
    let serving = Serving { gateway: fungible_gateway::Gateway::new(&config)?.with_prices(crate::price_lookup(&prices)), prices };
    let tuner = Tuner::new(&config, store.clone());
    // Local jobs train in this process while `watch` follows them (unless a server on the
    // same store took them first).
    #[cfg(feature = "local")]
    let tuner = match serving.gateway.local() {
        Some(local) => tuner.with_local(local.engine().clone(), &config.tune_adapters_dir),
        None => tuner,
    };
    let result = runtime.block_on(run(args.command, &tuner, &serving));
    runtime.block_on(store.close());
    result
}

/// What an eval of a finished job runs through: the config's gateway and prices.
struct Serving {
    gateway: fungible_gateway::Gateway,
    prices: fungible_store::PriceTable,
}

async fn run(command: TuneCommand, tuner: &Tuner, serving: &Serving) -> anyhow::Result<ExitCode> {
    match command {
        TuneCommand::Create(a) => create(*a, tuner, serving).await,
        TuneCommand::List(a) => {
            let jobs = tuner.jobs(1000).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else if jobs.is_empty() {
                eprintln!("no tuning jobs yet: `fungible tune create --provider openai --model ... --dataset NAME`");
            } else {
                for job in &jobs {
                    println!(
                        "{}  {:<10} {}/{} on {}@{}  -> {}  {}",
                        job.id,
                        job.status.as_str(),
                        job.provider,
                        job.base_model,
                        job.dataset,
                        job.dataset_version,
                        job.alias,
                        crate::traces::utc_time(job.created_ms)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TuneCommand::Show(a) => {
            let job = tuner.job(&a.id).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                print_job(&job);
            }
            Ok(ExitCode::SUCCESS)
        }
        TuneCommand::Watch(a) => watch(tuner, serving, &a.id, Duration::from_secs(a.every.max(1))).await,
        TuneCommand::Cancel(a) => {
            let job = tuner.cancel(&a.id).await?;
            eprintln!("{} {}", job.id, job.status.as_str());
            Ok(ExitCode::SUCCESS)
        }
        TuneCommand::Promote(a) => {
            let job = tuner.promote(&a.id, &a.route, a.percent).await?;
            match &job.promotion {
                Some(p) => eprintln!(
                    "{} serves {}% of route {} (every `fungible serve` on this store applies it within [tune] poll_interval_secs)",
                    job.alias, p.percent, p.route
                ),
                None => eprintln!("{} no longer serves a share of {}", job.alias, a.route),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn create(a: CreateArgs, tuner: &Tuner, serving: &Serving) -> anyhow::Result<ExitCode> {
    let method = Method::parse(&a.method).with_context(|| format!("--method {:?}: expected sft or dpo", a.method))?;
    let mut hyperparameters = Map::new();
    if let Some(epochs) = a.epochs {
        let key = if matches!(a.provider.as_str(), "mistral" | "fireworks") { "epochs" } else { "n_epochs" };
        hyperparameters.insert(key.into(), Value::from(epochs));
    }
    for p in &a.params {
        let (key, value) = p.split_once('=').with_context(|| format!("--param {p:?}: expected KEY=VALUE"))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        hyperparameters.insert(key.trim().to_owned(), value);
    }
    let eval = match a.eval {
        true => Some(fungible_tune::EvalSpec {
            dataset: a.eval_dataset,
            split: a
                .eval_split
                .as_deref()
                .map(|s| fungible_datasets::Split::parse(s).with_context(|| format!("--eval-split {s:?}: expected train or validation")))
                .transpose()?,
            scorers: a.eval_scorers,
            limit: a.eval_limit,
            max_tokens: a.eval_max_tokens,
            embedding_model: a.eval_embedding_model,
        }),
        false => None,
    };
    let request = LaunchRequest {
        provider: a.provider,
        model: a.model,
        dataset: a.dataset,
        method,
        hyperparameters,
        suffix: a.suffix,
        alias: a.alias,
        eval,
    };
    let plan = tuner.plan(request).await?;
    if a.json && a.dry_run {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_plan(&plan);
    if a.dry_run {
        eprintln!("dry run: nothing was uploaded");
        return Ok(ExitCode::SUCCESS);
    }
    if !a.yes {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!("not launched: add --yes to launch without a prompt (or --dry-run to only check)");
        }
        eprint!("Launch this job? [y/N] ");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("not launched");
            return Ok(ExitCode::FAILURE);
        }
    }
    let job = tuner.launch(plan).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    } else {
        eprintln!("launched {} ({} job {}); follow it with `fungible tune watch {}`", job.id, job.provider, job.provider_job_id, job.id);
    }
    if a.watch {
        let every = if job.provider == fungible_tune::LOCAL { 1 } else { 10 };
        return watch(tuner, serving, &job.id, Duration::from_secs(every)).await;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_plan(plan: &Plan) {
    let r = &plan.request;
    eprintln!("{} on {}/{} from {}@{}", format!("{:?}", r.method).to_uppercase(), r.provider, r.model, plan.dataset, plan.dataset_version);
    eprintln!(
        "  files: {} training rows, {} validation rows ({} format)",
        plan.train_rows, plan.validation_rows, plan.format
    );
    eprintln!("  training tokens: {} x {} epochs", plan.dataset_tokens, plan.epochs);
    match (plan.estimated_cost, plan.price_per_million) {
        _ if r.provider == fungible_tune::LOCAL => eprintln!("  cost: none, it trains on this machine"),
        (Some(cost), Some(price)) => {
            eprintln!("  estimated cost: ${cost:.2} (${price:.2} per million training tokens, prices of {})", plan.prices_as_of)
        }
        _ => eprintln!("  estimated cost: unknown (no training price for this model in the table of {})", plan.prices_as_of),
    }
    if !r.hyperparameters.is_empty() {
        eprintln!("  hyperparameters: {}", Value::Object(r.hyperparameters.clone()));
    }
    eprintln!("  served as: {}", plan.alias);
}

fn print_job(job: &Job) {
    println!("{}  {} ({})", job.id, job.status.as_str(), job.provider_status);
    println!("  {}/{} {:?} on {}@{}, provider job {}", job.provider, job.base_model, job.method, job.dataset, job.dataset_version, job.provider_job_id);
    match &job.fine_tuned_model {
        Some(m) => println!("  model: {}/{m}, served as {}", job.provider, job.alias),
        None => println!("  will be served as {}", job.alias),
    }
    if let Some(p) = &job.promotion {
        println!("  promoted: {}% of route {}", p.percent, p.route);
    }
    if let Some(e) = &job.error {
        println!("  error: {e}");
    }
    let money = |c: Option<f64>| c.map_or("unknown".to_owned(), |c| format!("${c:.2}"));
    println!("  cost: {} (estimated {}), trained tokens {}", money(job.cost), money(job.estimated_cost), job.trained_tokens.map_or("-".into(), |t| t.to_string()));
    if let Some(r) = &job.eval_result {
        println!("  eval ({:?}, {}):", r.state, r.run_dir);
        for m in &r.models {
            println!(
                "    {:<40} accuracy {}  answered {}  errors {}",
                m.model,
                m.accuracy.map_or("-".to_owned(), |a| format!("{:.1}%", a * 100.0)),
                m.answered,
                m.errors
            );
        }
        for line in &r.recommendation {
            println!("    {line}");
        }
        if let Some(e) = &r.error {
            println!("    error: {e}");
        }
    }
    let losses = job.losses();
    if !losses.is_empty() {
        println!("  loss by step (train / validation):");
        for (step, train, valid) in losses {
            let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.4}"));
            println!("    {step:>6}  {}  {}", f(train), f(valid));
        }
    }
    for e in job.events.iter().rev().take(10).rev() {
        println!("  {} {:<5} {}", crate::traces::utc_time(e.time_ms), e.level, e.message);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls the job until it ends, with a spinner showing its status and latest loss; then runs
/// the eval it asked for, if no gateway ran it yet.
async fn watch(tuner: &Tuner, serving: &Serving, id: &str, every: Duration) -> anyhow::Result<ExitCode> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}").unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()));
    bar.enable_steady_tick(Duration::from_millis(200));
    // Listening from the start, so a Ctrl-C during a poll is not the default handler's.
    let (interrupt_tx, mut interrupted) = tokio::sync::watch::channel(false);
    let listener = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = interrupt_tx.send(true);
        }
    });
    let _stop_listening = AbortOnDrop(listener);
    let mut seen = 0;
    loop {
        let job = tuner.job(id).await?;
        let job = if job.provider == fungible_tune::LOCAL && !job.status.is_terminal() {
            // Trains it here unless another instance holds it (then follows its progress).
            tuner.poll_job(id).await?
        } else {
            tuner.refresh(job).await?
        };
        for e in job.events.iter().skip(seen) {
            bar.println(format!("{} {}", crate::traces::utc_time(e.time_ms), e.message));
        }
        seen = job.events.len();
        let loss = job.losses().last().and_then(|(step, train, _)| train.map(|t| format!(", step {step} loss {t:.4}"))).unwrap_or_default();
        bar.set_message(format!("{} {}{loss}", job.id, job.status.as_str()));
        if job.status.is_terminal() {
            let job = if job.eval.is_some() && job.eval_result.is_none() && job.status == fungible_tune::Status::Succeeded {
                bar.set_message(format!("{} succeeded; evaluating {} against {}/{}", job.id, job.alias, job.provider, job.base_model));
                serving.gateway.set_overlays(tuner.overlays().await?);
                tuner.evaluate_finished(&serving.gateway, &serving.prices).await?;
                tuner.job(id).await?
            } else {
                job
            };
            bar.finish_and_clear();
            print_job(&job);
            return Ok(if job.status == fungible_tune::Status::Succeeded { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        if !*interrupted.borrow() {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = interrupted.changed() => {}
            }
        }
        if *interrupted.borrow() {
            {
                // A local job training here stops at its next step and goes back to the
                // queue, to resume from its checkpoint (here, or on a server).
                bar.set_message(format!("{id}: stopping at the next step, keeping a checkpoint"));
                tuner.hand_back().await;
                bar.finish_and_clear();
                let job = tuner.job(id).await?;
                eprintln!("stopped following {id} ({}: {}); `fungible tune watch {id}` resumes it", job.status.as_str(), job.provider_status);
                return Ok(ExitCode::from(130));
            }
        }
    }
}
