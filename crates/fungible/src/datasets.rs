//! `fungible datasets ...`: datasets in the store of `[store]` (the same ones `/v1/datasets`
//! serves), built from recorded traffic, edited by hand, and exported to a provider's
//! fine-tuning format.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use fungible_datasets::versions::{self, VersionInfo};
use fungible_datasets::{Curation, FeedbackFilter, Format, Selection, Source, Split};
use fungible_gateway::{Gateway, GatewayConfig};
use fungible_store::Store;
use fungible_types::{Message, Role};

use crate::ConfigArgs;

#[derive(clap::Args)]
pub struct DatasetsArgs {
    #[command(subcommand)]
    command: DatasetsCommand,
}

#[derive(clap::Subcommand)]
enum DatasetsCommand {
    /// Build a new version of a dataset from recorded traffic.
    ///
    /// Each successful inference that passes the filters becomes a row whose answer is the
    /// demonstration given as feedback when there is one, else the recorded answer. Then:
    /// PII scrub (--scrub-pii), length limits, exact and near-duplicate removal (local
    /// MiniLM embeddings), preference pairs (a demonstration or a thumbs-up answer against a
    /// thumbs-down one to the same input), and a train/validation split by seed.
    Build(Box<BuildArgs>),
    /// Every dataset with its latest version.
    List(ListArgs),
    /// A dataset's versions: how each was made, what curation did, its statistics.
    Show(ShowArgs),
    /// A version's rows as JSONL (the `fungible` format: OpenAI messages and the row's fields).
    Rows(RowsArgs),
    /// Add rows by hand: one conversation from flags, or a JSONL file (OpenAI SFT or
    /// preference rows, prompt/completion rows, or `fungible` rows). A row with the id of an
    /// existing row replaces it. A version already used by a job or an eval is copied to a
    /// new version first.
    Add(AddArgs),
    /// Remove a row (from a copy when the version was used).
    Remove(RemoveArgs),
    /// Write a version in a provider's fine-tuning format, checked against its limits.
    Export(ExportArgs),
    /// Delete the versions of a dataset that no job or eval used.
    Delete(DeleteArgs),
}

#[derive(clap::Args)]
struct BuildArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The dataset's name (letters, digits, '-', '_', '.').
    name: String,
    #[arg(long)]
    description: Option<String>,
    /// Only this route (alias) as the client named it.
    #[arg(long)]
    route: Option<String>,
    /// Only this model (as requested, or PROVIDER/MODEL that answered).
    #[arg(long)]
    model: Option<String>,
    /// Since (30m, 24h, 7d, 2025-01-31, 2025-01-31T12:00:00Z).
    #[arg(long)]
    since: Option<String>,
    /// Until (same forms as --since).
    #[arg(long)]
    until: Option<String>,
    /// Only inferences with this tag (key=value, or key); repeat for several.
    #[arg(long = "tag")]
    tags: Vec<String>,
    #[arg(long)]
    user: Option<String>,
    /// Only inferences made with this virtual key id.
    #[arg(long)]
    key: Option<String>,
    /// positive, negative, demonstration or any.
    #[arg(long)]
    feedback: Option<String>,
    /// Only answers scored at least this (thumbs up = 1, down = 0).
    #[arg(long)]
    min_score: Option<f64>,
    /// Read at most this many inferences, newest first (0: all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Keep exact duplicates.
    #[arg(long)]
    keep_duplicates: bool,
    /// Cosine similarity at which two inputs are near duplicates.
    #[arg(long, default_value_t = fungible_datasets::curate::NEAR_DUPLICATE_SIMILARITY)]
    near_duplicates: f32,
    /// Do not look for near duplicates (no embeddings).
    #[arg(long)]
    no_near_duplicates: bool,
    /// The embedding model near duplicates are found with.
    #[arg(long, default_value = fungible_datasets::curate::DEFAULT_EMBEDDING_MODEL)]
    embedding_model: String,
    /// Drop rows under this many tokens.
    #[arg(long)]
    min_tokens: Option<u64>,
    /// Drop rows over this many tokens.
    #[arg(long)]
    max_tokens: Option<u64>,
    /// Replace e-mail addresses, phone numbers, card numbers, IBANs and keys by placeholders.
    #[arg(long)]
    scrub_pii: bool,
    /// The share of rows in the validation split.
    #[arg(long, default_value_t = 0.1)]
    validation: f64,
    /// The seed of the split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
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
struct ShowArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// NAME or NAME@VERSION (default: every version).
    dataset: String,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct RowsArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// NAME or NAME@VERSION (default: the latest).
    dataset: String,
    /// train or validation.
    #[arg(long)]
    split: Option<String>,
    /// At most this many rows.
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(clap::Args)]
struct AddArgs {
    #[command(flatten)]
    config: ConfigArgs,
    name: String,
    /// A JSONL file of rows ('-': standard input).
    #[arg(long, conflicts_with_all = ["system", "user", "assistant"])]
    file: Option<PathBuf>,
    /// The system message of a row given by flags.
    #[arg(long)]
    system: Option<String>,
    /// The user message of a row given by flags.
    #[arg(long, requires = "assistant")]
    user: Option<String>,
    /// The answer to learn, for a row given by flags.
    #[arg(long, requires = "user")]
    assistant: Option<String>,
}

#[derive(clap::Args)]
struct RemoveArgs {
    #[command(flatten)]
    config: ConfigArgs,
    name: String,
    row_id: String,
}

#[derive(clap::Args)]
struct ExportArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// NAME or NAME@VERSION (default: the latest).
    dataset: String,
    /// fungible, openai, openai-dpo, together, together-dpo, fireworks, fireworks-dpo,
    /// mistral or vertex.
    #[arg(long)]
    format: String,
    /// train or validation [default: every row].
    #[arg(long)]
    split: Option<String>,
    /// Leave out the rows the format cannot take (listed on stderr) instead of failing.
    #[arg(long)]
    skip_invalid: bool,
    /// Output file [default: standard output].
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
}

#[derive(clap::Args)]
struct DeleteArgs {
    #[command(flatten)]
    config: ConfigArgs,
    name: String,
}

pub fn datasets(args: DatasetsArgs) -> anyhow::Result<ExitCode> {
    let config = match &args.command {
        DatasetsCommand::Build(a) => &a.config,
        DatasetsCommand::List(a) => &a.config,
        DatasetsCommand::Show(a) => &a.config,
        DatasetsCommand::Rows(a) => &a.config,
        DatasetsCommand::Add(a) => &a.config,
        DatasetsCommand::Remove(a) => &a.config,
        DatasetsCommand::Export(a) => &a.config,
        DatasetsCommand::Delete(a) => &a.config,
    };
    let config = crate::config::Config::load(config)?;
    let store_config = &config.store;
    if !store_config.enabled {
        anyhow::bail!("datasets live in the store, and [store] enabled = false");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let store = runtime
        .block_on(Store::open(&store_config.url))
        .context("could not open the store ([store] url)")?;
    let result = runtime.block_on(run(args.command, &store, &config.gateway));
    runtime.block_on(store.close());
    result
}

async fn run(command: DatasetsCommand, store: &Store, gateway: &GatewayConfig) -> anyhow::Result<ExitCode> {
    match command {
        DatasetsCommand::Build(a) => build(*a, store, gateway).await,
        DatasetsCommand::List(a) => {
            let all = versions::list(store).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                eprintln!("no datasets yet: `fungible datasets build NAME` makes one from recorded traffic");
            } else {
                let mut rows = vec![cells(["name", "version", "rows", "train", "validation", "tokens", "created", "used by"])];
                for v in &all {
                    let s = &v.report.stats;
                    rows.push(cells([
                        v.name.clone(),
                        v.version.to_string(),
                        v.rows.to_string(),
                        s.train_rows.to_string(),
                        s.validation_rows.to_string(),
                        (s.train_tokens + s.validation_tokens).to_string(),
                        crate::traces::utc_time(v.created_ms),
                        v.used_by.join(", "),
                    ]));
                }
                crate::traces::print_table(&rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        DatasetsCommand::Show(a) => {
            let (name, version) = versions::parse_reference(&a.dataset)?;
            let all = match version {
                Some(v) => vec![versions::info(store, &name, Some(v)).await?],
                None => versions::versions(store, &name).await?,
            };
            if a.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for v in &all {
                    print_version(v);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DatasetsCommand::Rows(a) => {
            let (name, version) = versions::parse_reference(&a.dataset)?;
            let info = versions::info(store, &name, version).await?;
            let split = parse_split(a.split.as_deref())?;
            let mut printed = 0usize;
            for row in versions::rows(store, &name, info.version).await? {
                if split.is_some_and(|s| row.split != s) {
                    continue;
                }
                if a.limit.is_some_and(|l| printed >= l) {
                    break;
                }
                println!("{}", fungible_datasets::row_json(&row).map_err(anyhow::Error::msg)?);
                printed += 1;
            }
            Ok(ExitCode::SUCCESS)
        }
        DatasetsCommand::Add(a) => {
            let rows = match (&a.file, &a.user, &a.assistant) {
                (Some(path), _, _) => read_rows(path)?,
                (None, Some(user), Some(assistant)) => {
                    let mut messages = Vec::new();
                    if let Some(system) = &a.system {
                        messages.push(Message::text(Role::System, system.clone()));
                    }
                    messages.push(Message::text(Role::User, user.clone()));
                    let seed = format!("{:?}\0{user}\0{assistant}", a.system);
                    vec![(
                        fungible_datasets::Example::new(
                            fungible_datasets::stable_id(seed.as_bytes()),
                            Source::Manual,
                            messages,
                            Vec::new(),
                            fungible_datasets::assistant(Some(assistant.clone()), Vec::new()),
                        ),
                        None,
                    )]
                }
                _ => anyhow::bail!("give a row with --user and --assistant, or a JSONL file with --file"),
            };
            let count = rows.len();
            let info = versions::put_rows(store, &a.name, rows).await?;
            eprintln!("{count} rows written to {}@{} ({} rows)", info.name, info.version, info.rows);
            Ok(ExitCode::SUCCESS)
        }
        DatasetsCommand::Remove(a) => {
            let info = versions::remove_row(store, &a.name, &a.row_id).await?;
            eprintln!("row {} removed from {}@{} ({} rows)", a.row_id, info.name, info.version, info.rows);
            Ok(ExitCode::SUCCESS)
        }
        DatasetsCommand::Export(a) => {
            let format = Format::parse(&a.format).with_context(|| {
                let known: Vec<&str> = Format::ALL.iter().map(|f| f.as_str()).collect();
                format!("unknown format {:?} (expected one of {})", a.format, known.join(", "))
            })?;
            let (name, version) = versions::parse_reference(&a.dataset)?;
            let info = versions::info(store, &name, version).await?;
            let rows = versions::rows(store, &name, info.version).await?;
            let split = parse_split(a.split.as_deref())?;
            let exported = match fungible_datasets::export::export(&rows, split, format, a.skip_invalid) {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("{name}@{} cannot be exported as {}:\n{e}", info.version, format.as_str());
                    if !e.problems.is_empty() {
                        eprintln!("(--skip-invalid leaves those rows out)");
                    }
                    return Ok(ExitCode::FAILURE);
                }
            };
            for skipped in &exported.skipped {
                eprintln!("skipped row {}: {}", skipped.row_id, skipped.problem);
            }
            match &a.out {
                Some(path) => {
                    std::fs::write(path, &exported.jsonl).with_context(|| format!("writing {}", path.display()))?;
                    eprintln!("{} rows of {name}@{} written to {} ({})", exported.rows, info.version, path.display(), format.as_str());
                }
                None => print!("{}", exported.jsonl),
            }
            Ok(ExitCode::SUCCESS)
        }
        DatasetsCommand::Delete(a) => {
            versions::versions(store, &a.name).await?;
            let deleted = store.delete_unused_dataset_versions(&a.name).await?;
            let kept = store.dataset_versions(&a.name).await?;
            eprintln!("deleted versions {:?} of {}", deleted, a.name);
            for v in kept {
                eprintln!("kept version {} (used by {})", v.version, v.used_by.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn build(a: BuildArgs, store: &Store, gateway: &GatewayConfig) -> anyhow::Result<ExitCode> {
    let now = fungible_store::now_ms();
    let time = |s: &Option<String>| -> anyhow::Result<Option<i64>> {
        Ok(s.as_deref().map(|s| fungible_eval::traces::parse_time(s, now)).transpose()?)
    };
    let selection = Selection {
        route: a.route,
        model: a.model,
        since_ms: time(&a.since)?,
        until_ms: time(&a.until)?,
        tags: a.tags,
        user: a.user,
        key_id: a.key,
        feedback: a
            .feedback
            .as_deref()
            .map(|f| {
                FeedbackFilter::parse(f).with_context(|| format!("--feedback {f:?}: expected positive, negative, demonstration or any"))
            })
            .transpose()?,
        min_score: a.min_score,
        limit: a.limit,
    };
    if !(0.0..=0.5).contains(&a.validation) {
        anyhow::bail!("--validation {}: give a share between 0 and 0.5", a.validation);
    }
    let curation = Curation {
        dedup: !a.keep_duplicates,
        near_duplicates: (!a.no_near_duplicates).then_some(a.near_duplicates),
        embedding_model: a.embedding_model,
        min_tokens: a.min_tokens,
        max_tokens: a.max_tokens,
        scrub_pii: a.scrub_pii,
        validation_fraction: a.validation,
        seed: a.seed,
    };
    let gateway = match curation.near_duplicates {
        Some(_) => Some(Gateway::new(gateway)?),
        None => None,
    };
    let info = versions::build(store, &a.name, a.description.as_deref(), selection, curation, gateway.as_ref()).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print_version(&info);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_version(v: &VersionInfo) {
    let s = &v.report.stats;
    let c = &v.report.curation;
    println!("{}@{}  {} rows  created {}", v.name, v.version, v.rows, crate::traces::utc_time(v.created_ms));
    if let Some(d) = &v.description {
        println!("  {d}");
    }
    if !v.used_by.is_empty() {
        println!("  used by {} (immutable)", v.used_by.join(", "));
    }
    println!(
        "  train {} rows / {} tokens, validation {} rows / {} tokens, longest row {} tokens",
        s.train_rows, s.train_tokens, s.validation_rows, s.validation_tokens, s.max_tokens
    );
    let pairs = |m: &std::collections::BTreeMap<String, usize>| m.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
    println!("  sources: {}", pairs(&s.sources));
    println!("  labels: {}", pairs(&s.labels));
    if s.preference_pairs > 0 || s.tool_call_rows > 0 {
        println!("  preference pairs {}, rows with tool calls {}", s.preference_pairs, s.tool_call_rows);
    }
    if !s.tags.is_empty() {
        println!("  tags: {}", pairs(&s.tags));
    }
    if v.spec.selection.is_some() {
        let k = &v.report.skipped;
        println!(
            "  curation: {} candidates; removed {} exact and {} near duplicates, {} too short, {} too long; {} rows paired with a rejected answer",
            c.candidates, c.exact_duplicates, c.near_duplicates, c.too_short, c.too_long, c.paired
        );
        println!(
            "  not selected: {} cut at max_record_bytes, {} without a usable answer, {} by the feedback filter",
            k.truncated, k.unusable, k.feedback
        );
    }
    if c.pii_rows > 0 {
        println!("  PII replaced in {} rows: {}", c.pii_rows, pairs(&c.pii));
    }
}

fn parse_split(split: Option<&str>) -> anyhow::Result<Option<Split>> {
    split
        .map(|s| Split::parse(s).with_context(|| format!("--split {s:?}: expected train or validation")))
        .transpose()
}

/// Rows from a JSONL file ('-': standard input); every bad line is reported, nothing is added.
fn read_rows(path: &PathBuf) -> anyhow::Result<Vec<versions::NewRow>> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?))
    };
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = serde_json::from_str(&line)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(|v| fungible_server::datasets::parse_row(v, Source::Imported));
        match parsed {
            Ok(row) => rows.push(row),
            Err(e) => errors.push(format!("{}:{}: {e}", path.display(), i + 1)),
        }
    }
    if !errors.is_empty() {
        let shown: Vec<&str> = errors.iter().take(20).map(String::as_str).collect();
        anyhow::bail!("{} bad rows, nothing added:\n{}", errors.len(), shown.join("\n"));
    }
    if rows.is_empty() {
        anyhow::bail!("{} holds no rows", path.display());
    }
    Ok(rows)
}

fn cells<const N: usize, S: Into<String>>(cells: [S; N]) -> Vec<String> {
    cells.into_iter().map(Into::into).collect()
}
