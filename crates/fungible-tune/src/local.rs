//! Local jobs (`provider = "local"`): a LoRA adapter trained in this process on a local chat
//! model (`fungible_local::lora`), then served by the same engine at once as
//! `local/BASE+JOB_ID` and under the job's alias.
//!
//! A local job is a job like any other in the store: the instance that holds its lease
//! trains it on a thread of its own ([`Tuner::poll_due`] starts it; `fungible tune watch`
//! does too when no server holds it), writes its progress into the job's events, and marks
//! it succeeded, failed or cancelled. Its directory under `[tune] adapters_dir` keeps the
//! checkpoints, so an instance that takes over an interrupted job resumes it, and the
//! adapter, which every instance that can read the directory serves (loading it on its first
//! request). One job trains at a time per process; a process that stops hands its job back
//! to the queue ([`Tuner::hand_back`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fungible_datasets::versions;
use fungible_local::LocalEngine;
use fungible_local::lora::{self, LoraSettings, Progress, TrainError, TrainExample, TrainJob};
use fungible_types::ChatRequest;

use crate::LOCAL;
use crate::job::{Event, Job, Method, Status};
use crate::tuner::{LaunchRequest, Plan, TuneError, Tuner};

/// How often a running job's progress is written to the store (and a cancel noticed).
const FLUSH_EVERY: Duration = Duration::from_secs(2);

/// How often a training job's lease is renewed (leases last minutes).
const RENEW_EVERY: Duration = Duration::from_secs(20);

/// What local jobs need: the engine that serves the adapters and where they are kept.
#[derive(Debug, Clone)]
pub(crate) struct Local {
    engine: LocalEngine,
    dir: PathBuf,
    /// Jobs training in this process.
    running: Arc<Mutex<HashMap<String, Run>>>,
    /// Set once the process hands its jobs back: it starts no more.
    closing: Arc<AtomicBool>,
}

/// A job training in this process.
#[derive(Debug, Clone)]
struct Run {
    /// Stops the training at its next step (a checkpoint of where it stopped is kept).
    stop: Arc<AtomicBool>,
    /// Set with `stop` when the process hands the job back (it is stopping) rather than the
    /// job being cancelled: the job returns to the queue, to resume from its checkpoint.
    hand_back: Arc<AtomicBool>,
    /// Ends (its sender dropped) once how the run ended is written.
    done: tokio::sync::watch::Receiver<()>,
}

impl Local {
    pub fn new(engine: LocalEngine, dir: PathBuf) -> Local {
        Local { engine, dir, running: Arc::default(), closing: Arc::default() }
    }

    fn job_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn stop_flag(&self, id: &str) -> Option<Arc<AtomicBool>> {
        Some(self.running.lock().ok()?.get(id)?.stop.clone())
    }

    /// A job other than `id` training in this process: one at a time, since one takes
    /// every core.
    fn training_other_than(&self, id: &str) -> Option<String> {
        self.running.lock().ok()?.keys().find(|k| *k != id).cloned()
    }
}

impl Tuner {
    /// Trains `provider = "local"` jobs in this process on `engine`'s chat models, keeping
    /// checkpoints and adapters under `dir` (`[tune] adapters_dir`).
    pub fn with_local(mut self, engine: LocalEngine, dir: impl Into<PathBuf>) -> Tuner {
        self.local = Some(Local::new(engine, dir.into()));
        self
    }

    fn local(&self) -> Result<&Local, TuneError> {
        self.local.as_ref().ok_or_else(|| {
            TuneError::BadInput("local tuning needs local chat models ([local] in the config) in this instance".into())
        })
    }

    /// [`Tuner::plan`] for a local job: the base is a configured local chat model, the
    /// hyperparameters are [`LoraSettings`], and the cost is nothing but this machine's time.
    pub(crate) async fn plan_local(&self, request: LaunchRequest) -> Result<Plan, TuneError> {
        let local = self.local()?;
        if local.engine.chat_file(&request.model).is_none() {
            let known = local.engine.chat_models().into_iter().filter(|m| !m.contains('+')).collect::<Vec<_>>();
            return Err(TuneError::BadInput(format!(
                "{:?} is not a local chat model; local models: {}",
                request.model,
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            )));
        }
        if request.method != Method::Sft {
            return Err(TuneError::BadInput("local tuning trains SFT adapters; preference (DPO) tuning is not offered locally yet".into()));
        }
        let settings = LoraSettings::from_json(&request.hyperparameters).map_err(TuneError::BadInput)?;
        let (name, version) = versions::parse_reference(&request.dataset)?;
        let info = versions::info(&self.store, &name, version).await?;
        let rows = versions::rows(&self.store, &name, info.version).await?;
        let train_rows = rows.iter().filter(|r| r.split == fungible_datasets::Split::Train).count();
        if train_rows == 0 {
            return Err(TuneError::BadInput(format!("dataset {name}@{} has no training rows", info.version)));
        }
        let dataset_tokens = rows.iter().filter(|r| r.split == fungible_datasets::Split::Train).map(|r| r.tokens).sum();
        let alias = self.alias_for(&request, &name).await?;
        Ok(Plan::local(request, name, info.version, train_rows, rows.len() - train_rows, dataset_tokens, settings.epochs as u64, alias))
    }

    /// [`Tuner::launch`] for a local job: kept queued; the instance that leases it trains it.
    pub(crate) async fn launch_local(&self, plan: Plan) -> Result<Job, TuneError> {
        self.local()?;
        let id = format!("tune_{}", fungible_store::new_id());
        versions::mark_used(&self.store, &plan.dataset, plan.dataset_version, &id).await?;
        let job = plan.into_job(id.clone(), id, Status::Queued, "queued".into());
        if let Err(e) = self.insert_job(&job).await {
            if let Err(undo) = self.store.unuse_dataset_version(&job.dataset, job.dataset_version, &job.id).await {
                tracing::warn!(job = %job.id, "the dataset version stays marked used: {undo}");
            }
            return Err(e);
        }
        tracing::info!(job = %job.id, model = %job.base_model, "local tuning job queued");
        Ok(job)
    }

    /// A leased local job: starts training it here unless it already trains here, or waits
    /// (its lease given back, for an idle instance to take) while another job trains here.
    pub(crate) async fn poll_local(&self, job: Job) -> Result<Job, TuneError> {
        let local = self.local()?;
        if local.stop_flag(&job.id).is_none()
            && let Some(other) = local.training_other_than(&job.id)
        {
            self.store.release_tune_job(&job.id, &self.owner).await?;
            let waiting = format!("queued behind {other}");
            if job.provider_status != waiting {
                return self.modify(&job.id, |j| {
                    if j.status == Status::Queued {
                        j.provider_status = waiting.clone();
                    }
                })
                .await;
            }
            return Ok(job);
        }
        if local.stop_flag(&job.id).is_none()
            && let Err(e) = self.start_local(job.clone()).await
        {
            // What no retry can fix (its settings, its dataset gone) ends the job.
            if matches!(e, TuneError::BadInput(_) | TuneError::Dataset(_)) {
                let message = e.to_string();
                self.modify(&job.id, |j| {
                    if !j.status.is_terminal() {
                        j.status = Status::Failed;
                        j.provider_status = "failed".into();
                        j.error = Some(message.clone());
                        j.finished_ms = Some(fungible_store::now_ms());
                    }
                })
                .await?;
            }
            return Err(e);
        }
        self.job(&job.id).await
    }

    /// Stops a local job: at its next step where it trains here, at its next progress report
    /// where another instance trains it.
    pub(crate) async fn cancel_local(&self, id: &str) -> Result<Job, TuneError> {
        if let Some(stop) = self.local.as_ref().and_then(|l| l.stop_flag(id)) {
            stop.store(true, Ordering::Relaxed);
        }
        self.modify(id, |job| {
            if !job.status.is_terminal() {
                job.status = Status::Cancelled;
                job.provider_status = "cancelled".into();
                job.finished_ms = Some(fungible_store::now_ms());
            }
        })
        .await
    }

    /// Serves the adapter of every succeeded local job this instance can read and does not
    /// serve yet (each loads on its first request); returns the models served now.
    pub(crate) async fn load_local_adapters(&self, jobs: &[Job]) -> Vec<String> {
        let Some(local) = &self.local else { return Vec::new() };
        let loaded = local.engine.adapters();
        for job in jobs.iter().filter(|j| j.provider == LOCAL && j.status == Status::Succeeded) {
            let Some(model) = &job.fine_tuned_model else { continue };
            let file = local.job_dir(&job.id).join(lora::ADAPTER_FILE);
            if loaded.contains(model) || !file.is_file() {
                continue;
            }
            // Loaded on its first request: a gateway with many tuned jobs starts light.
            if let Err(e) = local.engine.register_adapter(&job.base_model, &job.id, &file) {
                tracing::warn!(job = %job.id, "the tuned adapter is not served: {}", e.message);
            }
        }
        local.engine.adapters()
    }

    /// Trains `job` on a thread of its own; a task writes its progress and its end into the
    /// store.
    async fn start_local(&self, job: Job) -> Result<(), TuneError> {
        let local = self.local()?.clone();
        let base = local
            .engine
            .chat_file(&job.base_model)
            .ok_or_else(|| TuneError::BadInput(format!("{:?} is not a local chat model here", job.base_model)))?;
        let settings = LoraSettings::from_json(&job.hyperparameters).map_err(TuneError::BadInput)?;
        let rows = versions::rows(&self.store, &job.dataset, job.dataset_version).await?;
        let (mut train, mut validation) = (Vec::new(), Vec::new());
        for row in rows {
            let example = TrainExample {
                request: ChatRequest { messages: row.messages, tools: row.tools, ..ChatRequest::default() },
                answer: row.output,
            };
            match row.split {
                fungible_datasets::Split::Train => train.push(example),
                fungible_datasets::Split::Validation => validation.push(example),
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let hand_back = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = tokio::sync::watch::channel(());
        {
            let mut running = local.running.lock().map_err(|_| TuneError::BadInput("the local job table is poisoned".into()))?;
            // One at a time (checked again here, under the lock), none once handing back.
            if !running.is_empty() || local.closing.load(Ordering::Relaxed) {
                return Ok(());
            }
            running.insert(job.id.clone(), Run { stop: stop.clone(), hand_back: hand_back.clone(), done });
        }
        let forget = || drop(local.running.lock().map(|mut r| r.remove(&job.id)));
        let started = self
            .modify(&job.id, |j| {
                if !j.status.is_terminal() {
                    j.status = Status::Running;
                    j.provider_status = "running".into();
                    j.events.push(event(format!("training started in process on local/{}", j.base_model)));
                }
            })
            .await;
        match started {
            Ok(j) if !j.status.is_terminal() => {}
            other => {
                forget();
                return other.map(drop);
            }
        }
        let spec = TrainJob { base, train, validation, settings, dir: local.job_dir(&job.id), name: job.alias.clone() };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let thread_stop = stop.clone();
        let spawned = std::thread::Builder::new().name(format!("tune-{}", job.id)).spawn(move || {
            let progress_tx = tx.clone();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                lora::train(&spec, &mut |p: &Progress| drop(progress_tx.send(Ok(p.clone()))), &thread_stop)
            }))
            .unwrap_or_else(|_| Err(TrainError::Engine("the training thread panicked; see the gateway log".into())));
            let _ = tx.send(Err(result));
        });
        if let Err(e) = spawned {
            forget();
            let message = format!("could not start the training thread: {e}");
            self.finish_local(&job.id, Err(TrainError::Engine(message.clone()))).await;
            return Err(TuneError::BadInput(message));
        }
        let tuner = self.clone();
        let id = job.id.clone();
        tokio::spawn(async move {
            let mut pending: Vec<Event> = Vec::new();
            let mut flushed = Instant::now();
            let mut renewed = Instant::now();
            // Set when another instance took the job over (this one stalled past its lease):
            // this run stops and leaves the job to it.
            let mut lost = false;
            while let Some(message) = rx.recv().await {
                match message {
                    Ok(p) => {
                        let epoch_end = p.valid_loss.is_some() || p.eta.is_none();
                        pending.push(progress_event(&p));
                        if epoch_end || flushed.elapsed() >= FLUSH_EVERY {
                            // Keep every epoch's report, and of the steps only the latest.
                            let events = std::mem::take(&mut pending);
                            let kept: Vec<Event> = events
                                .iter()
                                .enumerate()
                                .filter(|(i, e)| e.valid_loss.is_some() || e.message.starts_with("epoch") || *i + 1 == events.len())
                                .map(|(_, e)| e.clone())
                                .collect();
                            match tuner.modify(&id, |j| keep_events(&mut j.events, &kept)).await {
                                Ok(j) if j.status == Status::Cancelled => stop.store(true, Ordering::Relaxed),
                                Ok(_) => {}
                                Err(e) => tracing::warn!(job = %id, "progress not kept: {e}"),
                            }
                            flushed = Instant::now();
                        }
                        // The lease is this instance's while it trains, whatever the pollers do.
                        if !lost && renewed.elapsed() >= RENEW_EVERY {
                            renewed = Instant::now();
                            match tuner.store.lease_tune_job(&id, &tuner.owner, fungible_store::now_ms(), tuner.lease_ms).await {
                                Ok(Some(_)) => {}
                                Ok(None) => match tuner.job(&id).await {
                                    Ok(j) if !j.status.is_terminal() => {
                                        tracing::warn!(job = %id, "another instance took this job over; stopping here");
                                        lost = true;
                                        stop.store(true, Ordering::Relaxed);
                                    }
                                    Ok(_) => stop.store(true, Ordering::Relaxed),
                                    Err(e) => tracing::warn!(job = %id, "lease not renewed: {e}"),
                                },
                                Err(e) => tracing::warn!(job = %id, "lease not renewed: {e}"),
                            }
                        }
                    }
                    Err(result) => {
                        match result {
                            _ if lost => {}
                            Err(TrainError::Cancelled { step }) if hand_back.load(Ordering::Relaxed) => {
                                tuner.requeue_local(&id, step).await;
                            }
                            result => tuner.finish_local(&id, result).await,
                        }
                        break;
                    }
                }
            }
            if let Some(local) = &tuner.local {
                local.running.lock().map(|mut r| r.remove(&id)).ok();
            }
            drop(done_tx);
        });
        Ok(())
    }

    /// Stops every local job training in this process at its next step, each keeping a
    /// checkpoint, and puts them back in the queue with their leases given back, so that the
    /// next instance to poll (this one restarted, or another) resumes them; returns once
    /// each has stopped. No job starts here after it. What `fungible serve` does when it shuts down and `fungible tune
    /// watch` on Ctrl-C.
    pub(crate) async fn hand_back_local(&self) {
        let Some(local) = &self.local else { return };
        local.closing.store(true, Ordering::Relaxed);
        let runs: Vec<Run> = local.running.lock().map(|r| r.values().cloned().collect()).unwrap_or_default();
        for run in &runs {
            run.hand_back.store(true, Ordering::Relaxed);
            run.stop.store(true, Ordering::Relaxed);
        }
        for mut run in runs {
            while run.done.changed().await.is_ok() {}
        }
    }

    /// Puts a job this process stopped back in the queue (unless it ended meanwhile) and
    /// gives its lease back.
    async fn requeue_local(&self, id: &str, step: usize) {
        let change = |j: &mut Job| {
            if !j.status.is_terminal() {
                j.status = Status::Queued;
                j.provider_status = format!("interrupted at step {step}; resumes from its checkpoint");
                j.events.push(event(format!("handed back at step {step} (the instance training it stopped)")));
            }
        };
        if let Err(e) = self.modify(id, change).await {
            tracing::error!(job = %id, "the interrupted job was not put back in the queue: {e}");
        }
        if let Err(e) = self.store.release_tune_job(id, &self.owner).await {
            tracing::warn!(job = %id, "the interrupted job's lease was not given back (another instance takes it when it runs out): {e}");
        }
        tracing::info!(job = %id, step, "local tuning job handed back");
    }

    /// Keeps how a local job ended, and serves its adapter when it succeeded (a job
    /// cancelled meanwhile stays cancelled, and its adapter is not served).
    async fn finish_local(&self, id: &str, result: Result<lora::TrainOutcome, TrainError>) {
        let mut served = None;
        if let (Ok(outcome), Some(local)) = (&result, &self.local)
            && let Ok(job) = self.job(id).await
            && !job.status.is_terminal()
        {
            match local.engine.load_adapter(&job.base_model, id, &outcome.adapter).await {
                Ok(model) => served = Some(model),
                Err(e) => tracing::warn!(job = %id, "the trained adapter does not load: {}", e.message),
            }
        }
        let change = |j: &mut Job| {
            if j.status.is_terminal() {
                return; // cancelled while it trained
            }
            let now = fungible_store::now_ms();
            match &result {
                Ok(outcome) => {
                    j.status = if served.is_some() { Status::Succeeded } else { Status::Failed };
                    j.provider_status = j.status.as_str().into();
                    j.fine_tuned_model = served.clone();
                    j.trained_tokens = Some(outcome.trained_tokens);
                    j.cost = Some(0.0);
                    let best = outcome.best_valid_loss.map(|l| format!(", best validation loss {l:.4} at epoch {}", outcome.best_epoch)).unwrap_or_default();
                    j.events.push(event(format!(
                        "trained {} steps in {} epochs{}{best}, {:.0} tokens/s",
                        outcome.steps,
                        outcome.epochs_run,
                        if outcome.stopped_early { " (stopped early)" } else { "" },
                        outcome.tokens_per_second
                    )));
                    if served.is_none() {
                        j.error = Some("the trained adapter could not be loaded; see the gateway log".into());
                    }
                }
                Err(TrainError::Cancelled { step }) => {
                    j.status = Status::Cancelled;
                    j.provider_status = "cancelled".into();
                    j.events.push(event(format!("stopped at step {step}")));
                }
                Err(e) => {
                    j.status = Status::Failed;
                    j.provider_status = "failed".into();
                    j.error = Some(e.to_string());
                }
            }
            if j.finished_ms.is_none() {
                j.finished_ms = Some(now);
            }
        };
        match self.modify(id, change).await {
            Ok(job) => {
                if let (Some(model), Some(local)) = (&served, &self.local)
                    && job.status != Status::Succeeded
                {
                    local.engine.unload_adapter(model);
                }
                tracing::info!(job = %id, status = job.status.as_str(), model = ?job.fine_tuned_model, "local tuning job ended");
            }
            Err(e) => tracing::error!(job = %id, "how the local job ended was not kept: {e}"),
        }
    }
}

/// Most step reports a job keeps: beyond them every other older one is dropped, so a long run
/// keeps its whole loss curve at a coarser grain and its record stays small.
const STEP_EVENTS: usize = 400;

/// Adds `fresh` to a job's events, thinning the step reports past [`STEP_EVENTS`].
fn keep_events(events: &mut Vec<Event>, fresh: &[Event]) {
    events.extend(fresh.iter().cloned());
    let is_step = |e: &Event| e.step.is_some() && e.valid_loss.is_none();
    if events.iter().filter(|e| is_step(e)).count() > STEP_EVENTS {
        let mut nth = 0;
        events.retain(|e| {
            if !is_step(e) {
                return true;
            }
            nth += 1;
            nth == 1 || nth % 2 == 0 || nth > STEP_EVENTS / 2
        });
    }
}

fn event(message: String) -> Event {
    Event { id: None, time_ms: fungible_store::now_ms(), level: "info".into(), message, step: None, train_loss: None, valid_loss: None }
}

fn progress_event(p: &Progress) -> Event {
    let message = match p.valid_loss {
        Some(v) => format!("epoch {}/{}: validation loss {v:.4}", p.epoch, p.epochs),
        None if p.eta.is_none() => format!("epoch {}/{} done", p.epoch, p.epochs),
        None => format!(
            "step {}/{} (epoch {}/{}): loss {:.4}, {:.0} tokens/s, {}s left",
            p.step,
            p.steps,
            p.epoch,
            p.epochs,
            p.train_loss.unwrap_or(f64::NAN),
            p.tokens_per_second,
            p.eta.map_or(0, |d| d.as_secs())
        ),
    };
    Event {
        id: None,
        time_ms: fungible_store::now_ms(),
        level: "info".into(),
        message,
        step: Some(p.step as u64),
        train_loss: if p.valid_loss.is_some() { None } else { p.train_loss },
        valid_loss: p.valid_loss,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(n: u64) -> Event {
        Event { step: Some(n), train_loss: Some(1.0), ..event(format!("step {n}")) }
    }

    #[test]
    fn a_long_run_keeps_a_thinned_loss_curve_and_every_epoch() {
        let mut events = vec![event("training started".into())];
        for n in 1..=2000 {
            let mut fresh = vec![step(n)];
            if n % 500 == 0 {
                fresh.push(Event { valid_loss: Some(0.5), ..step(n) });
            }
            keep_events(&mut events, &fresh);
        }
        let steps: Vec<u64> = events.iter().filter(|e| e.valid_loss.is_none()).filter_map(|e| e.step).collect();
        assert!(steps.len() <= STEP_EVENTS + 1, "{}", steps.len());
        assert!(steps.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(steps.last(), Some(&2000));
        assert_eq!(steps[0], 1, "the start of the curve is kept");
        assert_eq!(events.iter().filter(|e| e.valid_loss.is_some()).count(), 4);
        assert_eq!(events[0].message, "training started");
    }
}
