//! The runner: every item to every model, `concurrency` requests in flight, each answer
//! scored and appended to `results.jsonl` the moment it is done, so a killed run loses at
//! most the requests in flight and the same command resumes it.
//!
//! Jobs go item by item (all models of item 1, then item 2, ...), so a run stopped by the
//! spend cap or an interrupt still compares the models on the same items. Results are
//! written by the one loop that collects them (no lock); requests and scoring run on spawned
//! tasks. After the answers, a `pairwise:MODEL` judge compares every model with the first
//! (the baseline) on each item both answered, writing `pairwise.jsonl` the same way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fungible_types::{ChatRequest, JsonSchemaFormat, ResponseFormat};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;

use crate::backend::ChatBackend;
use crate::dataset::{Dataset, Item};
use crate::results::{
    ItemResult, PAIRWISE_FILE, PairwiseResult, RESULTS_FILE, RUN_META_FILE, RunMeta,
};
use crate::scorers::{self, CodeLimits, SandboxError, ScoreContext, Scorer, ScorerSet};

/// The run directory format written here.
pub const RUN_FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Resume(String),
    #[error("no models given")]
    NoModels,
    /// The code scorer would be used and its sandbox is unavailable: nothing was asked.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `PROVIDER/MODEL` or route aliases; the first is the baseline.
    pub models: Vec<String>,
    /// Empty `scorers`: each item gets the defaults its fields allow.
    pub scorers: ScorerSet,
    pub concurrency: usize,
    /// Stop starting requests once this much was spent (answers and judges, in USD).
    pub max_cost_usd: Option<f64>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub out: PathBuf,
    /// Draw progress bars on stderr (hidden anyway when stderr is not a terminal).
    pub progress: bool,
    pub embedding_model: String,
    pub code_limits: CodeLimits,
    pub judge_max_tokens: u32,
}

impl RunOptions {
    pub fn new(models: Vec<String>, out: PathBuf) -> RunOptions {
        RunOptions {
            models,
            scorers: ScorerSet::default(),
            concurrency: 8,
            max_cost_usd: None,
            max_tokens: None,
            temperature: Some(0.0),
            out,
            progress: false,
            embedding_model: "local/all-minilm-l6-v2".into(),
            code_limits: CodeLimits::default(),
            judge_max_tokens: 512,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub meta: RunMeta,
    /// (item, model) pairs answered by this invocation.
    pub answered: usize,
    /// Pairs already in `results.jsonl` (a resumed run).
    pub resumed: usize,
    /// Of `answered`, how many failed.
    pub errors: usize,
    pub pairwise: usize,
    /// Spent in USD by this invocation (answers and judges, known prices only).
    pub cost_usd: f64,
}

/// Runs (or resumes) `dataset` on `opts.models` into `opts.out`.
pub async fn run(
    dataset: &Dataset,
    backend: Arc<dyn ChatBackend>,
    opts: RunOptions,
) -> Result<RunOutcome, RunError> {
    if opts.models.is_empty() {
        return Err(RunError::NoModels);
    }
    let out = opts.out.clone();
    std::fs::create_dir_all(&out).map_err(io(&out))?;
    let items: Vec<Arc<Item>> = dataset.items.iter().cloned().map(Arc::new).collect();

    // Scorers per item, and their names in order of first use.
    let explicit = Arc::new(opts.scorers.scorers.clone());
    let per_item: Vec<Arc<Vec<Scorer>>> = items
        .iter()
        .map(|item| {
            if explicit.is_empty() {
                Arc::new(ScorerSet::defaults_for(item, dataset.format))
            } else {
                explicit.clone()
            }
        })
        .collect();
    let mut scorer_names: Vec<String> = Vec::new();
    for s in per_item.iter().flat_map(|s| s.iter()) {
        if !scorer_names.iter().any(|n| n == s.name()) {
            scorer_names.push(s.name().to_owned());
        }
    }

    // Model-written code runs only in the sandbox: refuse before spending anything.
    if per_item
        .iter()
        .flat_map(|s| s.iter())
        .any(|s| matches!(s, Scorer::Code { .. }))
    {
        scorers::check_sandbox(&opts.code_limits).await?;
    }

    // Resume: the previous meta must be of the same dataset.
    let meta_path = out.join(RUN_META_FILE);
    let previous: Option<RunMeta> = match std::fs::read(&meta_path) {
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes)
                .map_err(|e| RunError::Resume(format!("{}: {e}", meta_path.display())))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(&meta_path)(e)),
    };
    if let Some(prev) = &previous
        && (prev.dataset_sha256 != dataset.sha256 || prev.dataset != dataset.source)
    {
        return Err(RunError::Resume(format!(
            "{} holds a run of another dataset ({}); give another --out",
            out.display(),
            prev.dataset
        )));
    }
    let results_path = out.join(RESULTS_FILE);
    let existing: Vec<ItemResult> = read_jsonl(&results_path)?;
    let mut outputs: HashMap<(String, String), String> = HashMap::new();
    let mut done: HashSet<(String, String)> = HashSet::new();
    let mut spent_before = 0.0;
    for r in &existing {
        done.insert((r.item_id.clone(), r.model.clone()));
        spent_before += r.cost_usd.unwrap_or(0.0);
        if let Some(o) = &r.output {
            outputs.insert((r.item_id.clone(), r.model.clone()), o.clone());
        }
    }

    let mut meta = RunMeta {
        version: RUN_FORMAT_VERSION,
        run_id: previous
            .as_ref()
            .map_or_else(fungible_store::new_id, |p| p.run_id.clone()),
        started_at: previous
            .as_ref()
            .map_or_else(now_rfc3339, |p| p.started_at.clone()),
        finished_at: None,
        dataset: dataset.source.clone(),
        dataset_name: dataset.name.clone(),
        dataset_sha256: dataset.sha256.clone(),
        items: items.len() as u64,
        models: opts.models.clone(),
        scorers: scorer_names,
        concurrency: opts.concurrency as u32,
        max_cost_usd: opts.max_cost_usd,
        stopped_by_budget: false,
    };
    write_json(&meta_path, &meta)?;

    // Progress, one bar per model.
    let multi = MultiProgress::with_draw_target(if opts.progress {
        ProgressDrawTarget::stderr_with_hz(10)
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template(
        "{prefix:>28} [{bar:28}] {pos}/{len} {per_sec:>10} ETA {eta:>4} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let mut bars: HashMap<String, (ProgressBar, u64)> = HashMap::new();
    for model in &opts.models {
        let bar = multi.add(ProgressBar::new(items.len() as u64));
        bar.set_style(style.clone());
        bar.set_prefix(model.clone());
        let already = items
            .iter()
            .filter(|i| done.contains(&(i.id.clone(), model.clone())))
            .count() as u64;
        bar.set_position(already);
        bar.reset_eta();
        bar.set_message("0 errors");
        bars.insert(model.clone(), (bar, 0));
    }

    let mut writer = JsonlWriter::open(&results_path)?;
    let backend_ctx = Arc::new(Shared {
        backend,
        embedding_model: opts.embedding_model.clone(),
        code_limits: opts.code_limits.clone(),
        judge_max_tokens: opts.judge_max_tokens,
        max_tokens: opts.max_tokens,
        temperature: opts.temperature,
    });
    let mut jobs = Vec::new();
    for (item, scorers) in items.iter().zip(&per_item) {
        for model in &opts.models {
            if !done.contains(&(item.id.clone(), model.clone())) {
                jobs.push((item.clone(), model.clone(), scorers.clone()));
            }
        }
    }
    let concurrency = opts.concurrency.max(1);
    let mut spent = spent_before;
    let mut outcome_cost = 0.0;
    let (mut answered, mut errors) = (0usize, 0usize);
    let mut in_flight = JoinSet::new();
    let mut jobs = jobs.into_iter().peekable();
    loop {
        while in_flight.len() < concurrency && jobs.peek().is_some() {
            if opts.max_cost_usd.is_some_and(|cap| spent >= cap) {
                meta.stopped_by_budget = true;
                break;
            }
            let Some((item, model, scorers)) = jobs.next() else {
                break;
            };
            let shared = backend_ctx.clone();
            in_flight
                .spawn(async move { answer_and_score(&shared, &item, &model, &scorers).await });
        }
        let Some(joined) = in_flight.join_next().await else {
            break;
        };
        let (result, judge_cost) =
            joined.map_err(|e| RunError::Resume(format!("a request task failed: {e}")))?;
        let cost = result.cost_usd.unwrap_or(0.0) + judge_cost;
        spent += cost;
        outcome_cost += cost;
        answered += 1;
        if let Some((bar, errs)) = bars.get_mut(&result.model) {
            if result.error.is_some() {
                *errs += 1;
                bar.set_message(format!("{errs} errors"));
            }
            bar.inc(1);
        }
        if result.error.is_some() {
            errors += 1;
        }
        if let Some(o) = &result.output {
            outputs.insert((result.item_id.clone(), result.model.clone()), o.clone());
        }
        writer.append(&result)?;
        if meta.stopped_by_budget && in_flight.is_empty() {
            break;
        }
    }
    for (bar, _) in bars.values() {
        bar.finish();
    }

    // Pairwise: each model against the baseline.
    let mut pairwise = 0;
    if let Some(judge) = opts.scorers.pairwise.clone()
        && opts.models.len() > 1
        && !meta.stopped_by_budget
    {
        let pairwise_path = out.join(PAIRWISE_FILE);
        let judged: HashSet<(String, String, String)> =
            read_jsonl::<PairwiseResult>(&pairwise_path)?
                .into_iter()
                .map(|p| (p.item_id, p.model_a, p.model_b))
                .collect();
        let mut writer = JsonlWriter::open(&pairwise_path)?;
        let baseline = &opts.models[0];
        let mut todo = Vec::new();
        for item in &items {
            let Some(a) = outputs.get(&(item.id.clone(), baseline.clone())) else {
                continue;
            };
            for other in &opts.models[1..] {
                if judged.contains(&(item.id.clone(), baseline.clone(), other.clone())) {
                    continue;
                }
                if let Some(b) = outputs.get(&(item.id.clone(), other.clone())) {
                    todo.push((item.clone(), other.clone(), a.clone(), b.clone()));
                }
            }
        }
        let bar = multi.add(ProgressBar::new(todo.len() as u64));
        bar.set_style(style.clone());
        bar.set_prefix(format!("pairwise {judge}"));
        let mut todo = todo.into_iter();
        let mut failed = 0usize;
        let mut set = JoinSet::new();
        loop {
            while set.len() < concurrency {
                if opts.max_cost_usd.is_some_and(|cap| spent >= cap) {
                    meta.stopped_by_budget = true;
                    break;
                }
                let Some((item, other, a, b)) = todo.next() else {
                    break;
                };
                let shared = backend_ctx.clone();
                let judge = judge.clone();
                set.spawn(async move {
                    let r = scorers::judge_pairwise(
                        &*shared.backend,
                        &judge,
                        &item,
                        &a,
                        &b,
                        shared.judge_max_tokens,
                    )
                    .await;
                    (item, other, r)
                });
            }
            let Some(joined) = set.join_next().await else {
                break;
            };
            let (item, other, r) =
                joined.map_err(|e| RunError::Resume(format!("a judge task failed: {e}")))?;
            bar.inc(1);
            match r {
                Ok((winner, reason, cost)) => {
                    spent += cost;
                    outcome_cost += cost;
                    pairwise += 1;
                    writer.append(&PairwiseResult {
                        item_id: item.id.clone(),
                        model_a: baseline.clone(),
                        model_b: other,
                        judge: judge.clone(),
                        winner,
                        reason: Some(reason),
                    })?;
                }
                Err(e) => {
                    failed += 1;
                    bar.set_message(format!("{failed} judge errors"));
                    tracing::warn!(item = %item.id, "pairwise judgement failed: {e}");
                }
            }
        }
        bar.finish();
    }

    meta.finished_at = Some(now_rfc3339());
    write_json(&meta_path, &meta)?;
    Ok(RunOutcome {
        meta,
        answered,
        resumed: existing.len(),
        errors,
        pairwise,
        cost_usd: outcome_cost,
    })
}

/// What every request task shares.
struct Shared {
    backend: Arc<dyn ChatBackend>,
    embedding_model: String,
    code_limits: CodeLimits,
    judge_max_tokens: u32,
    max_tokens: Option<u32>,
    temperature: Option<f64>,
}

/// The request for one item: its messages, the run's sampling settings, and, when the item
/// has a schema, structured output with it (as a live request would ask).
pub fn request_for(
    item: &Item,
    model: &str,
    max_tokens: Option<u32>,
    temperature: Option<f64>,
) -> ChatRequest {
    let mut req = ChatRequest {
        model: model.to_owned(),
        messages: item.messages.clone(),
        ..ChatRequest::default()
    };
    req.params.max_tokens = max_tokens;
    req.params.temperature = temperature;
    if let Some(schema) = &item.schema {
        req.response_format = Some(ResponseFormat::JsonSchema(JsonSchemaFormat {
            name: "answer".into(),
            description: None,
            schema: schema.clone(),
            strict: None,
        }));
    }
    req
}

/// One (item, model): the answer, then every scorer. Returns the result and what the judges
/// cost.
async fn answer_and_score(
    shared: &Shared,
    item: &Item,
    model: &str,
    scorers: &[Scorer],
) -> (ItemResult, f64) {
    let req = request_for(item, model, shared.max_tokens, shared.temperature);
    let mut result = ItemResult {
        item_id: item.id.clone(),
        model: model.to_owned(),
        target: None,
        input: crate::truncate_chars(&item.input_text(), 500),
        reference: item.reference.clone(),
        output: None,
        error: None,
        scores: BTreeMap::new(),
        passed: None,
        details: BTreeMap::new(),
        latency_ms: 0,
        ttft_ms: None,
        input_tokens: None,
        output_tokens: None,
        cost_usd: None,
    };
    let answer = match shared.backend.chat(req).await {
        Ok(a) => a,
        Err(e) => {
            result.error = Some(e.to_string());
            return (result, 0.0);
        }
    };
    result.target = answer.target;
    result.latency_ms = answer.latency_ms;
    result.ttft_ms = answer.ttft_ms;
    result.input_tokens = answer.usage.map(|u| u.input_tokens);
    result.output_tokens = answer.usage.map(|u| u.output_tokens);
    result.cost_usd = answer.cost_usd;
    let ctx = ScoreContext {
        backend: &*shared.backend,
        embedding_model: &shared.embedding_model,
        code_limits: shared.code_limits.clone(),
        judge_max_tokens: shared.judge_max_tokens,
    };
    let mut all_passed = true;
    let mut judge_cost = 0.0;
    for scorer in scorers {
        match scorer.score(item, &answer.text, &ctx).await {
            Ok(Some(score)) => {
                all_passed &= score.passed;
                judge_cost += score.cost_usd;
                result.scores.insert(scorer.name().to_owned(), score.value);
                result
                    .details
                    .insert(scorer.name().to_owned(), score.detail);
            }
            Ok(None) => {}
            Err(e) => {
                result
                    .details
                    .insert(scorer.name().to_owned(), format!("not scored: {e}"));
            }
        }
    }
    if !result.scores.is_empty() {
        result.passed = Some(all_passed);
    }
    result.output = Some(answer.text);
    (result, judge_cost)
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RunError> {
    let mut bytes =
        serde_json::to_vec_pretty(value).map_err(|e| io(path)(std::io::Error::other(e)))?;
    bytes.push(b'\n');
    // Written whole to a temporary file, then renamed: a kill never leaves half a file.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The complete lines of a JSONL file that parse; a line cut off by a kill (the last one,
/// without its newline) is cut from the file so appends start on a fresh line.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, RunError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(path)(e)),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path))?;
        file.set_len(complete as u64).map_err(io(path))?;
    }
    let mut out = Vec::new();
    for line in bytes[..complete].lines() {
        let line = line.map_err(io(path))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(v) => out.push(v),
            Err(e) => tracing::warn!(file = %path.display(), "skipping an unreadable line: {e}"),
        }
    }
    Ok(out)
}

/// Appends one JSON value per line, each written with one `write` call (no buffering), so
/// what was appended is on disk for a resume even if the process is killed.
struct JsonlWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl JsonlWriter {
    fn open(path: &Path) -> Result<JsonlWriter, RunError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io(path))?;
        Ok(JsonlWriter {
            file,
            path: path.to_owned(),
        })
    }

    fn append<T: Serialize>(&mut self, value: &T) -> Result<(), RunError> {
        let mut line =
            serde_json::to_vec(value).map_err(|e| io(&self.path)(std::io::Error::other(e)))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(io(&self.path))
    }
}

/// Now as RFC 3339 in UTC, to the second.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64;
    rfc3339(secs)
}

fn rfc3339(secs: i64) -> String {
    format!("{}Z", fungible_types::date::utc_datetime(secs * 1000, 'T'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_210_096), "2024-02-29T12:34:56Z");
    }
}
