//! The training loop: AdamW over the adapters, warmup then a cosine or linear decay,
//! gradient accumulation and clipping, a validation loss after each epoch, early stopping
//! on it, and checkpoints (adapters, optimizer moments and position) that a new run over
//! the same directory resumes from. The data order and the dropout masks are functions of
//! the seed, the epoch and the step, so a resumed run trains exactly as an uninterrupted
//! one would.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor, Var};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::data::{Sample, Tokenizer, epoch_order, pack};
use super::model::{Adapters, Base, Batch};
use super::{LoraSettings, Progress, Schedule, TrainError, TrainJob, TrainOutcome, export};

/// The adapters, the optimizer's moments and the run's [`State`] (as JSON bytes under
/// [`STATE_TENSOR`]), in one file written at once.
const CHECKPOINT: &str = "checkpoint.safetensors";
pub(super) const STATE_TENSOR: &str = "state.json";
/// Where checkpoints before the state moved inside kept it.
const LEGACY_STATE: &str = "checkpoint.json";
const BEST: &str = "best.safetensors";
/// The adapter a finished run exports, in the job's directory.
pub const ADAPTER_FILE: &str = "adapter.gguf";
/// The finished run's [`TrainOutcome`], next to the adapter.
pub const OUTCOME_FILE: &str = "adapter.json";

/// Where a run is, as a checkpoint keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    /// What the checkpoint was trained on and how: a resume over other data or settings is
    /// refused.
    fingerprint: String,
    /// Optimizer steps done.
    step: usize,
    /// The epoch under way (0-based) and the steps done in it.
    epoch: usize,
    epoch_step: usize,
    best_valid: Option<f64>,
    best_epoch: usize,
    bad_epochs: usize,
    last_train_loss: Option<f64>,
    trained_tokens: u64,
}

/// AdamW's moments, one pair per trainable tensor, in [`Adapters::named`] order.
struct AdamW {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPSILON: f64 = 1e-8;

impl AdamW {
    fn new(vars: &[(String, &Var)]) -> Result<AdamW, TrainError> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        Ok(AdamW {
            m: vars.iter().map(|(_, v)| zeros(v)).collect::<Result<_, _>>()?,
            v: vars.iter().map(|(_, v)| zeros(v)).collect::<Result<_, _>>()?,
        })
    }

    /// One update at step `t` (1-based) with learning rate `lr`.
    fn step(&mut self, vars: &[(String, &Var)], grads: &[Tensor], t: usize, lr: f64, weight_decay: f64) -> Result<(), TrainError> {
        let c1 = 1.0 - BETA1.powi(t as i32);
        let c2 = 1.0 - BETA2.powi(t as i32);
        for (i, ((_, var), g)) in vars.iter().zip(grads).enumerate() {
            self.m[i] = ((&self.m[i] * BETA1)? + (g * (1.0 - BETA1))?)?;
            self.v[i] = ((&self.v[i] * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
            let update = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + EPSILON)?)?;
            let update = if weight_decay > 0.0 { (update + (var.as_tensor() * weight_decay)?)? } else { update };
            var.set(&(var.as_tensor() - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// The learning rate at optimizer step `step` (0-based) of `total`.
fn learning_rate(settings: &LoraSettings, step: usize, total: usize) -> f64 {
    let warmup = ((total as f64 * settings.warmup_ratio).ceil() as usize).min(total.saturating_sub(1));
    let peak = settings.learning_rate;
    if step < warmup {
        return peak * (step + 1) as f64 / (warmup + 1) as f64;
    }
    let done = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    match settings.schedule {
        Schedule::Constant => peak,
        Schedule::Linear => peak * (1.0 - done),
        Schedule::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * done).cos()),
    }
}

fn fingerprint(job: &TrainJob, train: &[Sample], validation: &[Sample]) -> Result<String, TrainError> {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(&job.settings).map_err(|e| TrainError::Engine(e.to_string()))?);
    let meta = std::fs::metadata(&job.base)?;
    h.update(meta.len().to_le_bytes());
    for (split, samples) in [(0u8, train), (1, validation)] {
        for s in samples {
            h.update([split]);
            h.update((s.prompt as u64).to_le_bytes());
            h.update((s.tokens.len() as u64).to_le_bytes());
            for t in &s.tokens {
                h.update(t.to_le_bytes());
            }
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Writes `tensors` to `path` through a temporary file of this process, synced before it
/// takes the name: a crash, or another process writing the same checkpoint, leaves one
/// whole file.
fn save(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<(), TrainError> {
    let tmp = path.with_extension(format!("part-{}", std::process::id()));
    candle_core::safetensors::save(tensors, &tmp)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn adapter_tensors(adapters: &Adapters) -> Result<HashMap<String, Tensor>, TrainError> {
    adapters.named().into_iter().map(|(n, v)| Ok((n, v.as_tensor().copy()?))).collect()
}

fn restore(adapters: &Adapters, tensors: &HashMap<String, Tensor>, prefix: &str) -> Result<(), TrainError> {
    for (name, var) in adapters.named() {
        let t = tensors
            .get(&format!("{prefix}{name}"))
            .ok_or_else(|| TrainError::BadInput(format!("the checkpoint has no {prefix}{name}")))?;
        var.set(t)?;
    }
    Ok(())
}

fn checkpoint(dir: &Path, adapters: &Adapters, adam: &AdamW, state: &State) -> Result<(), TrainError> {
    let mut tensors = HashMap::new();
    for (i, (name, var)) in adapters.named().into_iter().enumerate() {
        tensors.insert(format!("lora.{name}"), var.as_tensor().copy()?);
        tensors.insert(format!("adam_m.{name}"), adam.m[i].clone());
        tensors.insert(format!("adam_v.{name}"), adam.v[i].clone());
    }
    let json = serde_json::to_vec(state).map_err(|e| TrainError::Engine(e.to_string()))?;
    let n = json.len();
    tensors.insert(STATE_TENSOR.to_owned(), Tensor::from_vec(json, n, &Device::Cpu)?);
    save(&dir.join(CHECKPOINT), &tensors)
}

/// The checkpoint in `dir`, if there is one: its tensors and the run's state.
fn read_checkpoint(dir: &Path) -> Result<Option<(HashMap<String, Tensor>, State)>, TrainError> {
    let path = dir.join(CHECKPOINT);
    if !path.is_file() {
        return Ok(None);
    }
    let not_checkpoint = |why: String| TrainError::BadInput(format!("{}: not a checkpoint: {why}", path.display()));
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| not_checkpoint(e.to_string()))?;
    let json = match tensors.get(STATE_TENSOR) {
        Some(t) => t.to_vec1::<u8>().map_err(|e| not_checkpoint(e.to_string()))?,
        // Written before the state moved into the checkpoint (2026-12-07): beside it.
        None => std::fs::read(dir.join(LEGACY_STATE)).map_err(|e| not_checkpoint(format!("no {STATE_TENSOR}, no {LEGACY_STATE}: {e}")))?,
    };
    let state = serde_json::from_slice(&json).map_err(|e| not_checkpoint(e.to_string()))?;
    Ok(Some((tensors, state)))
}

/// Mean loss per answer token over `batches`, without dropout or gradients.
fn evaluate(base: &Base, adapters: &Adapters, batches: &[Batch]) -> Result<f64, TrainError> {
    let total: usize = batches.iter().map(|b| b.targets.len()).sum();
    let mut sum = 0.0;
    for b in batches {
        let weight = b.targets.len() as f64 / total.max(1) as f64;
        sum += f64::from(base.loss(b, adapters, None, weight)?.to_scalar::<f32>()?);
    }
    Ok(sum)
}

/// Trains the adapters `job` asks for, resuming from a checkpoint in `job.dir` when there is
/// one, and exports the adapter there ([`ADAPTER_FILE`]). `progress` hears after every
/// optimizer step and validation; `stop`, once set, ends the run at the next step with a
/// checkpoint ([`TrainError::Cancelled`]).
pub fn train(job: &TrainJob, progress: &mut (dyn FnMut(&Progress) + Send), stop: &AtomicBool) -> Result<TrainOutcome, TrainError> {
    // The training thread joins a pool of one thread per core and works as one of them, so
    // that candle's parallel ops do not have a waiting extra thread beside their workers.
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("lora-{i}"))
        .build()
        .map_err(|e| TrainError::Engine(format!("could not start the training threads: {e}")))?;
    pool.install(|| run(job, progress, stop))
}

fn run(job: &TrainJob, progress: &mut (dyn FnMut(&Progress) + Send), stop: &AtomicBool) -> Result<TrainOutcome, TrainError> {
    let settings = &job.settings;
    settings.check().map_err(TrainError::BadInput)?;
    if job.train.is_empty() {
        return Err(TrainError::BadInput("the dataset has no training rows".into()));
    }
    std::fs::create_dir_all(&job.dir)?;
    let tokenizer = Tokenizer::open(&job.base)?;
    let train = tokenizer.samples(&job.train, settings.max_seq_len, "training")?;
    let validation = tokenizer.samples(&job.validation, settings.max_seq_len, "validation")?;
    drop(tokenizer);
    if train.samples.is_empty() {
        return Err(TrainError::BadInput(format!(
            "every training example's prompt is {} tokens or longer (max_seq_len); raise max_seq_len",
            settings.max_seq_len
        )));
    }
    let fingerprint = fingerprint(job, &train.samples, &validation.samples)?;
    let base = Base::load(&job.base)?;
    let adapters = Adapters::new(&base, settings)?;
    let vars = adapters.named();
    let mut adam = AdamW::new(&vars)?;

    // Every epoch's micro-batches, and so the number of steps, up front.
    let epochs: Vec<Vec<Batch>> = (0..settings.epochs)
        .map(|e| pack(&train.samples, &epoch_order(train.samples.len(), settings.seed, e), settings.batch_tokens))
        .collect();
    let acc = settings.gradient_accumulation;
    let steps_in = |e: usize| epochs[e].len().div_ceil(acc);
    let total_steps: usize = (0..settings.epochs).map(steps_in).sum();
    let valid_order: Vec<usize> = (0..validation.samples.len()).collect();
    let valid_batches = pack(&validation.samples, &valid_order, settings.batch_tokens);

    let mut state = State {
        fingerprint: fingerprint.clone(),
        step: 0,
        epoch: 0,
        epoch_step: 0,
        best_valid: None,
        best_epoch: 0,
        bad_epochs: 0,
        last_train_loss: None,
        trained_tokens: 0,
    };
    let mut resumed_at = None;
    if let Some((tensors, saved)) = read_checkpoint(&job.dir)? {
        if saved.fingerprint != fingerprint {
            return Err(TrainError::BadInput(format!(
                "{} holds a checkpoint of other data or settings; use a new directory",
                job.dir.display()
            )));
        }
        restore(&adapters, &tensors, "lora.")?;
        for (i, (name, _)) in vars.iter().enumerate() {
            let get = |k: String| tensors.get(&k).cloned().ok_or_else(|| TrainError::BadInput(format!("the checkpoint has no {k}")));
            adam.m[i] = get(format!("adam_m.{name}"))?;
            adam.v[i] = get(format!("adam_v.{name}"))?;
        }
        resumed_at = Some(saved.step);
        state = saved;
    }

    let started = Instant::now();
    let mut run_tokens = 0u64;
    // A run that had stopped early stays stopped.
    let mut stopped_early = settings.patience > 0 && state.bad_epochs >= settings.patience;
    let rate = |tokens: u64| tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
    while state.epoch < settings.epochs && !stopped_early {
        let batches = &epochs[state.epoch];
        while state.epoch_step < steps_in(state.epoch) {
            if stop.load(Ordering::Relaxed) {
                checkpoint(&job.dir, &adapters, &adam, &state)?;
                return Err(TrainError::Cancelled { step: state.step });
            }
            let micro = &batches[state.epoch_step * acc..((state.epoch_step + 1) * acc).min(batches.len())];
            let targets: usize = micro.iter().map(|b| b.targets.len()).sum();
            let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
            let mut loss = 0.0;
            for (k, b) in micro.iter().enumerate() {
                let mut rng = StdRng::seed_from_u64(settings.seed ^ ((state.step as u64) << 8 | k as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
                let l = base.loss(b, &adapters, Some((settings.dropout, &mut rng)), b.targets.len() as f64 / targets as f64)?;
                loss += f64::from(l.to_scalar::<f32>()?);
                let store = l.backward()?;
                for (i, (_, var)) in vars.iter().enumerate() {
                    if let Some(g) = store.get(var.as_tensor()) {
                        let g = g.detach();
                        grads[i] = Some(match grads[i].take() {
                            Some(sum) => (sum + g)?,
                            None => g,
                        });
                    }
                }
                let tokens = b.tokens.len() as u64;
                run_tokens += tokens;
                state.trained_tokens += tokens;
            }
            let grads: Vec<Tensor> = grads
                .into_iter()
                .zip(&vars)
                .map(|(g, (_, v))| g.map_or_else(|| v.as_tensor().zeros_like(), Ok))
                .collect::<Result<_, _>>()?;
            // Clip to the global norm.
            let mut norm = 0.0;
            for g in &grads {
                norm += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
            }
            let norm = norm.sqrt();
            if !loss.is_finite() || !norm.is_finite() {
                return Err(TrainError::Engine(format!(
                    "the loss diverged at step {} (loss {loss}, gradient norm {norm}): lower the learning rate",
                    state.step + 1
                )));
            }
            let grads = if norm > settings.max_grad_norm {
                let f = settings.max_grad_norm / norm;
                grads.iter().map(|g| g * f).collect::<Result<Vec<_>, _>>()?
            } else {
                grads
            };
            let lr = learning_rate(settings, state.step, total_steps);
            adam.step(&vars, &grads, state.step + 1, lr, settings.weight_decay)?;
            state.step += 1;
            state.epoch_step += 1;
            state.last_train_loss = Some(loss);
            let per_step = started.elapsed().as_secs_f64() / (state.step - resumed_at.unwrap_or(0)) as f64;
            progress(&Progress {
                epoch: state.epoch + 1,
                epochs: settings.epochs,
                step: state.step,
                steps: total_steps,
                train_loss: Some(loss),
                valid_loss: None,
                tokens_per_second: rate(run_tokens),
                elapsed: started.elapsed(),
                eta: Some(Duration::from_secs_f64(per_step * (total_steps - state.step) as f64)),
            });
            if state.step % settings.checkpoint_steps == 0 {
                checkpoint(&job.dir, &adapters, &adam, &state)?;
            }
        }
        // The end of an epoch: validation, the best adapter, early stopping.
        let epoch = state.epoch + 1;
        let valid = if valid_batches.is_empty() { None } else { Some(evaluate(&base, &adapters, &valid_batches)?) };
        if let Some(v) = valid {
            if state.best_valid.is_none_or(|best| v < best) {
                state.best_valid = Some(v);
                state.best_epoch = epoch;
                state.bad_epochs = 0;
                save(&job.dir.join(BEST), &adapter_tensors(&adapters)?)?;
            } else {
                state.bad_epochs += 1;
                stopped_early = settings.patience > 0 && state.bad_epochs >= settings.patience;
            }
        } else {
            state.best_epoch = epoch;
        }
        state.epoch += 1;
        state.epoch_step = 0;
        checkpoint(&job.dir, &adapters, &adam, &state)?;
        progress(&Progress {
            epoch,
            epochs: settings.epochs,
            step: state.step,
            steps: total_steps,
            train_loss: state.last_train_loss,
            valid_loss: valid,
            tokens_per_second: rate(run_tokens),
            elapsed: started.elapsed(),
            eta: None,
        });
    }
    if state.best_valid.is_some() && state.best_epoch != state.epoch {
        let best = candle_core::safetensors::load(job.dir.join(BEST), &Device::Cpu)?;
        restore(&adapters, &best, "")?;
    }
    let adapter: PathBuf = job.dir.join(ADAPTER_FILE);
    export::write(&adapter, &adapters, &base.hp.arch, settings.alpha, &job.name)?;
    let outcome = TrainOutcome {
        adapter,
        parameters: adapters.parameters(),
        steps: state.step,
        epochs_run: state.epoch,
        stopped_early,
        best_epoch: state.best_epoch,
        best_valid_loss: state.best_valid,
        last_train_loss: state.last_train_loss,
        trained_tokens: state.trained_tokens,
        tokens_per_second: rate(run_tokens),
        skipped_examples: train.skipped + validation.skipped,
        truncated_examples: train.truncated + validation.truncated,
        resumed_at,
    };
    std::fs::write(
        job.dir.join(OUTCOME_FILE),
        serde_json::to_vec_pretty(&outcome).map_err(|e| TrainError::Engine(e.to_string()))?,
    )?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_down_to_zero() {
        let s = LoraSettings { learning_rate: 1.0, warmup_ratio: 0.1, ..LoraSettings::default() };
        let lrs: Vec<f64> = (0..100).map(|i| learning_rate(&s, i, 100)).collect();
        assert!(lrs[0] < lrs[5] && lrs[5] < lrs[9]);
        assert!((lrs[10] - 1.0).abs() < 1e-9);
        assert!(lrs.windows(2).skip(10).all(|w| w[1] <= w[0]));
        assert!(lrs[99] < 0.01);
        let linear = LoraSettings { schedule: Schedule::Linear, ..s.clone() };
        assert!((learning_rate(&linear, 55, 100) - 0.5).abs() < 1e-9);
    }
}
