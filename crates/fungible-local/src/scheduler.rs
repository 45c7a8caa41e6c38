//! The scheduler thread of a loaded chat model, and the KV-cache slots it hands out.
//!
//! One llama.cpp context holds a KV-cache sequence per slot (`[local] slots`): every step
//! decodes the next token of all running requests in one batch (continuous batching), then
//! one chunk of a new request's prompt, alone, so one long generation does not hold up the
//! others. Requests beyond the slots wait in the job queue. With `cache_prompt` (the
//! default) a slot keeps its KV cache, and a request reuses the part of it that is bit for
//! bit what it would compute itself (see `reusable`). Each piece of text goes through the
//! request's channel as it is produced; when the client goes away the receiver is dropped,
//! and its sequence is dropped at the next step.

use std::num::NonZeroU32;
use std::sync::mpsc;
use std::time::Instant;

use fungible_types::{ErrorKind, FinishReason};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::{LlamaLoraAdapter, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use crate::chat::{ChatSettings, Job, Output, tokenize};
use crate::defaults::LoopDetector;
use crate::gate::Gate;
use crate::params::sampler;
use crate::stop::StopMatcher;
use crate::{error, invalid};

/// Most tokens one batch holds (and so one prompt chunk).
const CHUNK: usize = 512;

/// The granularity of prompt chunks at position `pos`: prompts are decoded in chunks that
/// start and end on these boundaries, fine at the start (where system prompts end) and
/// coarser further on (where larger chunks decode faster). See [`reusable`].
fn granularity(pos: usize) -> usize {
    match pos {
        0..64 => 16,
        64..256 => 64,
        256..1024 => 128,
        _ => 256,
    }
}

/// Where the prompt chunk that starts at `fed` (a boundary) ends.
fn chunk_end(fed: usize, len: usize) -> usize {
    let size = granularity(fed);
    ((fed / size + 1) * size).min(len)
}

/// One KV-cache sequence of the context and the tokens it holds.
struct Slot {
    id: i32,
    /// The tokens whose keys and values are in this sequence, at positions `0..len`: the
    /// last request's prompt and output, kept for the next request to reuse
    /// (`cache_prompt`).
    cached: Vec<LlamaToken>,
    /// How many of `cached` were decoded as prompt (not generated one by one), and so can
    /// be reused exactly.
    prompted: usize,
    /// When it was last handed out (a counter): with no shared prefix, the coldest slot is
    /// reused first, so the caches of recent conversations survive longest. Also the order
    /// in which admitted prompts are decoded.
    used: u64,
}

/// A sequence being generated: one client's request in the shared batch.
struct Sequence {
    job: Job,
    slot: Slot,
    prompt: Vec<LlamaToken>,
    /// Prompt tokens already in the KV cache.
    fed: usize,
    /// The token sampled last, to feed next.
    last: Option<LlamaToken>,
    /// Index of this sequence's logits in the batch just decoded.
    logits_at: Option<i32>,
    sampler: LlamaSampler,
    stops: StopMatcher,
    /// Set when loops stop the generation (`stop_loops`).
    loops: Option<LoopDetector>,
    generated: u64,
    max_tokens: u64,
    /// When the scheduler took the request, for the time-to-first-token log.
    started: Instant,
    reused: usize,
}

impl Sequence {
    /// Position of the next token.
    fn pos(&self) -> i32 {
        i32::try_from(self.slot.cached.len()).unwrap_or(i32::MAX)
    }
}

/// The scheduler thread of one model: a single llama.cpp context with one KV-cache sequence
/// per slot. Each step decodes one batch holding the next token of every generating
/// sequence (continuous batching, as llama.cpp's server does), so concurrent requests share
/// each pass over the weights instead of queueing behind each other, and then one chunk of
/// the oldest admitted prompt, decoded alone (see [`reusable`] for why alone). A new
/// request takes the free slot whose cache shares the longest reusable prefix with its
/// prompt and decodes only the rest (llama.cpp server's `cache_prompt`). The thread blocks on
/// the job queue when idle, so a request wakes it at once.
pub(crate) fn scheduler(
    backend: &LlamaBackend,
    model: &LlamaModel,
    lora: Option<LlamaLoraAdapter>,
    settings: ChatSettings,
    n_ctx: u32,
    jobs: &mpsc::Receiver<Job>,
    ready: &mpsc::Sender<Result<(), String>>,
) {
    let slots = settings.slots.max(1);
    let n_batch = CHUNK.max(slots);
    let mut ctx = match model.new_context(backend, context_params(slots, n_ctx, settings.threads)) {
        Ok(ctx) => ctx,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    // The adapter (if any) applies to every sequence of this context, for its whole life.
    if let Some(mut lora) = lora
        && let Err(e) = ctx.lora_adapter_set(&mut lora, 1.0)
    {
        let _ = ready.send(Err(format!("could not apply the LoRA adapter: {e}")));
        return;
    }
    let _ = ready.send(Ok(()));
    let vocab = model.vocab();
    let mut batch = LlamaBatch::new(n_batch, slots as i32);
    let mut active: Vec<Sequence> = Vec::new();
    let mut free: Vec<Slot> =
        (0..slots as i32).map(|id| Slot { id, cached: Vec::new(), prompted: 0, used: 0 }).collect();
    let mut clock: u64 = 0;
    // Set once the model is dropped (an adapter unloaded): the running sequences finish,
    // then the thread ends.
    let mut closed = false;
    loop {
        if closed && active.is_empty() {
            return;
        }
        // Admit new requests while a slot is free; block only when there is nothing to do.
        while !free.is_empty() && !closed {
            let job = if active.is_empty() {
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            } else {
                match jobs.try_recv() {
                    Ok(job) => job,
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            };
            let started = Instant::now();
            let Some(prompt) = prepare(model, n_ctx, &job) else { continue };
            let at = pick_slot(&free, &prompt, settings.cache_prompt);
            let mut slot = free.swap_remove(at);
            clock += 1;
            slot.used = clock;
            match admit(&mut ctx, model, n_ctx, job, prompt, slot, settings.cache_prompt, started) {
                Ok(seq) => active.push(seq),
                Err(slot) => free.push(slot),
            }
        }

        // Sequences whose client went away are dropped before anything is decoded for them.
        let mut i = 0;
        while i < active.len() {
            if active[i].job.out.is_closed() {
                retire(&mut ctx, active.swap_remove(i), &mut free, settings.cache_prompt);
            } else {
                i += 1;
            }
        }

        // The next token of every generating sequence, in slot order: with one KV stream per
        // slot, llama.cpp puts sequences into one micro-batch (one pass over the weights)
        // only while their ids follow each other (`split_equal`), so an unordered batch
        // would cost a pass per sequence.
        batch.clear();
        active.sort_unstable_by_key(|seq| seq.slot.id);
        let mut failed: Option<String> = None;
        for seq in &mut active {
            seq.logits_at = None;
            let Some(token) = seq.last else { continue };
            if batch.n_tokens() as usize >= n_batch {
                continue; // more slots than the batch holds: this one waits a step
            }
            if let Err(e) = batch.add(token, seq.pos(), &[seq.slot.id], true) {
                failed = Some(e.to_string());
                break;
            }
            seq.slot.cached.push(token);
            seq.logits_at = Some(batch.n_tokens() - 1);
        }
        if failed.is_none() && batch.n_tokens() > 0 {
            failed = decode(&mut ctx, &mut batch, settings.threads).err();
            if failed.is_none() {
                sample(&mut ctx, &vocab, &mut active, &mut free, settings.cache_prompt);
            }
        }

        // One chunk of the oldest admitted prompt, alone in its batch.
        if failed.is_none() {
            if let Some(seq) = active.iter_mut().filter(|seq| seq.last.is_none()).min_by_key(|seq| seq.slot.used) {
                batch.clear();
                let end = chunk_end(seq.fed, seq.prompt.len());
                for k in seq.fed..end {
                    let is_last = k + 1 == seq.prompt.len();
                    if let Err(e) = batch.add(seq.prompt[k], seq.pos(), &[seq.slot.id], is_last) {
                        failed = Some(e.to_string());
                        break;
                    }
                    seq.slot.cached.push(seq.prompt[k]);
                    if is_last {
                        seq.logits_at = Some(batch.n_tokens() - 1);
                    }
                }
                seq.fed = end;
                if failed.is_none() {
                    failed = decode(&mut ctx, &mut batch, settings.threads).err();
                }
                if failed.is_none() {
                    seq.slot.prompted = end;
                    sample(&mut ctx, &vocab, &mut active, &mut free, settings.cache_prompt);
                }
            }
        }
        if let Some(e) = failed {
            // A decode failed: end every running sequence with the error, and forget what
            // their caches held.
            for mut seq in active.drain(..) {
                let _ = seq.job.out.send(Err(error(ErrorKind::UpstreamServer, format!("llama.cpp: {e}"))));
                let _ = ctx.clear_kv_cache_seq(u32::try_from(seq.slot.id).ok(), None, None);
                seq.slot.cached.clear();
                seq.slot.prompted = 0;
                free.push(seq.slot);
            }
        }
    }
}

/// The scheduler's context: `n_ctx` tokens and one KV stream per slot, batches of up to
/// [`CHUNK`] tokens (or one per slot, if more) decoded as one micro-batch.
fn context_params(slots: usize, n_ctx: u32, threads: usize) -> LlamaContextParams {
    let n_batch = CHUNK.max(slots) as u32;
    let threads = i32::try_from(threads).unwrap_or(1);
    LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx.saturating_mul(slots as u32)))
        .with_n_batch(n_batch)
        .with_n_ubatch(n_batch)
        .with_n_seq_max(slots as u32)
        .with_kv_unified(false)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
}

/// Decodes `batch`, taking the cores from the process-wide gate first.
fn decode(ctx: &mut LlamaContext<'_>, batch: &mut LlamaBatch<'_>, threads: usize) -> Result<(), String> {
    let _turn = Gate::global().enter(threads);
    ctx.decode(batch).map_err(|e| e.to_string())
}

/// Samples the next token of each sequence the last decode gave logits; retires the ones
/// that are done (their slots go back, with their caches kept when `cache_prompt`).
fn sample(
    ctx: &mut LlamaContext<'_>,
    vocab: &llama_cpp_2::vocab::LlamaVocab<'_>,
    active: &mut Vec<Sequence>,
    free: &mut Vec<Slot>,
    cache_prompt: bool,
) {
    let mut i = 0;
    while i < active.len() {
        if step(ctx, vocab, &mut active[i]) {
            retire(ctx, active.swap_remove(i), free, cache_prompt);
        } else {
            i += 1;
        }
    }
}

/// Gives a finished sequence's slot back, keeping its cache when `cache_prompt`.
fn retire(ctx: &mut LlamaContext<'_>, mut seq: Sequence, free: &mut Vec<Slot>, cache_prompt: bool) {
    if !cache_prompt {
        let _ = ctx.clear_kv_cache_seq(u32::try_from(seq.slot.id).ok(), None, None);
        seq.slot.cached.clear();
        seq.slot.prompted = 0;
    }
    free.push(seq.slot);
}

/// Length of the common prefix of two token lists.
fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// How much of `slot`'s cache `prompt` can reuse: the common prefix, only as far as it was
/// decoded as prompt, leaving at least the last prompt token to decode (for its logits), and
/// rounded down to a chunk boundary ([`granularity`]).
///
/// Why so: llama.cpp computes a token's keys and values differently depending on the batch
/// it was decoded in (flash attention takes a tiled path from 64 tokens on, for one; on some
/// CPUs the matrix kernels give a batch's last rows, and a token generated alone, other
/// rounding). Every prompt is decoded in the same chunks, fixed by position, so the chunks of
/// a reused prefix are exactly the ones decoding the new prompt from scratch would run, and
/// reusing them changes no logit: the answer is the same, bit for bit, with or without the
/// cache. Tested by `prefix_caching_changes_no_logit` and, through the engine,
/// `a_cached_prompt_prefix_is_reused_and_changes_no_output`.
fn reusable(slot: &Slot, prompt: &[LlamaToken]) -> usize {
    let shared = common_prefix(&slot.cached[..slot.prompted.min(slot.cached.len())], prompt);
    let at = shared.min(prompt.len().saturating_sub(1));
    at / granularity(at) * granularity(at)
}

/// The free slot for `prompt`. With `cache_prompt`: the longest reusable prefix, then the
/// least recently used (so the caches of recent conversations survive longest). Without:
/// the lowest id, which keeps the running sequences' ids contiguous, as one micro-batch
/// needs (see the scheduler).
fn pick_slot(free: &[Slot], prompt: &[LlamaToken], cache_prompt: bool) -> usize {
    let best = if cache_prompt {
        free.iter().enumerate().max_by_key(|(_, slot)| (reusable(slot, prompt), std::cmp::Reverse(slot.used)))
    } else {
        free.iter().enumerate().min_by_key(|(_, slot)| slot.id)
    };
    best.map_or(0, |(i, _)| i)
}

/// Tokenizes and checks a job's prompt. `None`: the job was answered (with an error) or its
/// client is gone.
fn prepare(model: &LlamaModel, n_ctx: u32, job: &Job) -> Option<Vec<LlamaToken>> {
    if job.out.is_closed() {
        return None;
    }
    let prompt = tokenize(model, &job.prompt);
    if prompt.is_empty() {
        let _ = job.out.send(Err(invalid("the prompt is empty")));
        return None;
    }
    let n_ctx = n_ctx as usize;
    if prompt.len() >= n_ctx {
        let _ = job.out.send(Err(invalid(format!(
            "the prompt is {} tokens, longer than the model's context of {n_ctx} tokens; shorten the messages",
            prompt.len()
        ))));
        return None;
    }
    Some(prompt)
}

/// Puts a checked job into `slot`: keeps the [`reusable`] part of its cache, drops the rest,
/// and tells the client it was accepted. `Err`: the job was answered or its client is gone;
/// the slot goes back.
#[allow(clippy::too_many_arguments)]
fn admit(
    ctx: &mut LlamaContext<'_>,
    model: &LlamaModel,
    n_ctx: u32,
    job: Job,
    prompt: Vec<LlamaToken>,
    mut slot: Slot,
    cache_prompt: bool,
    started: Instant,
) -> Result<Sequence, Slot> {
    let sampler = match sampler(model, &job.params) {
        Ok(s) => s,
        Err(e) => {
            let _ = job.out.send(Err(e));
            return Err(slot);
        }
    };
    let mut reuse = if cache_prompt { reusable(&slot, &prompt) } else { 0 };
    if reuse < slot.cached.len() {
        let seq_id = u32::try_from(slot.id).ok();
        let kept = ctx.clear_kv_cache_seq(seq_id, u32::try_from(reuse).ok(), None).unwrap_or(false);
        if !kept {
            // A cache that cannot drop a tail (recurrent models) starts over.
            let _ = ctx.clear_kv_cache_seq(seq_id, None, None);
            reuse = 0;
        }
        slot.cached.truncate(reuse);
    }
    slot.prompted = reuse;
    let room = (n_ctx as usize - prompt.len()) as u64;
    let max_tokens = u64::from(job.params.max_tokens).min(room);
    let accepted = Output::Accepted { prompt_tokens: prompt.len() as u64, cached_tokens: reuse as u64 };
    if job.out.send(Ok(accepted)).is_err() {
        return Err(slot);
    }
    let stops = StopMatcher::new(&job.params.stop);
    let loops = job.params.stop_loops.then(LoopDetector::default);
    Ok(Sequence {
        job,
        slot,
        prompt,
        fed: reuse,
        last: None,
        logits_at: None,
        sampler,
        stops,
        loops,
        generated: 0,
        max_tokens,
        started,
        reused: reuse,
    })
}

/// Samples the next token of `seq` if the last batch gave it logits; sends its text.
/// Returns true when the sequence is finished (or its client went away).
fn step(ctx: &LlamaContext<'_>, vocab: &llama_cpp_2::vocab::LlamaVocab<'_>, seq: &mut Sequence) -> bool {
    if seq.job.out.is_closed() {
        return true;
    }
    let Some(at) = seq.logits_at.take() else { return false };
    let finish = |seq: &mut Sequence, reason: FinishReason| {
        let rest = seq.stops.finish();
        if !rest.is_empty() {
            let _ = seq.job.out.send(Ok(Output::Text(rest)));
        }
        let _ = seq.job.out.send(Ok(Output::Done { reason, completion_tokens: seq.generated }));
        true
    };
    if seq.generated >= seq.max_tokens {
        return finish(seq, FinishReason::Length);
    }
    let token = seq.sampler.sample(ctx, at);
    if seq.generated == 0 {
        tracing::debug!(
            slot = seq.slot.id,
            prompt_tokens = seq.prompt.len(),
            cached_tokens = seq.reused,
            "first token {:.1} ms after the scheduler took the request",
            seq.started.elapsed().as_secs_f64() * 1000.0
        );
    }
    if vocab.is_eog(token) {
        return finish(seq, FinishReason::Stop);
    }
    seq.generated += 1;
    let piece = vocab.token_to_piece(token, false, None);
    let out = seq.stops.push(&piece);
    if !out.text.is_empty() && seq.job.out.send(Ok(Output::Text(out.text))).is_err() {
        return true;
    }
    if out.stopped {
        let _ = seq.job.out.send(Ok(Output::Done { reason: FinishReason::Stop, completion_tokens: seq.generated }));
        return true;
    }
    // A generation repeating itself would only fill the context: it ends as if cut by
    // max_tokens.
    let looping = seq.loops.as_mut().is_some_and(|loops| loops.push(token.0));
    if looping {
        tracing::debug!(slot = seq.slot.id, generated = seq.generated, "stopped a generation that repeats itself");
    }
    if seq.generated >= seq.max_tokens || looping {
        return finish(seq, FinishReason::Length);
    }
    seq.last = Some(token);
    false
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use llama_cpp_2::model::params::LlamaModelParams;

    use super::*;
    use crate::chat::backend;
    use crate::convert::{self, WeightType};

    /// Decodes `tokens[from..]` into sequence `seq` the way the scheduler decodes a prompt:
    /// chunk by chunk from `from` ([`chunk_end`]), alone in their batch. Returns the last token's logits.
    fn prompt(ctx: &mut LlamaContext<'_>, seq: i32, tokens: &[LlamaToken], from: usize) -> Vec<f32> {
        let mut batch = LlamaBatch::new(CHUNK, 1);
        let mut at = from;
        while at < tokens.len() {
            let end = chunk_end(at, tokens.len());
            batch.clear();
            for (k, t) in tokens.iter().enumerate().take(end).skip(at) {
                batch.add(*t, k as i32, &[seq], k + 1 == tokens.len()).unwrap();
            }
            decode(ctx, &mut batch, 2).unwrap();
            at = end;
        }
        ctx.get_logits_ith(batch.n_tokens() - 1).to_vec()
    }

    /// Generates `n` greedy tokens one at a time after `tokens`, as the scheduler does.
    fn generate(ctx: &mut LlamaContext<'_>, seq: i32, tokens: &mut Vec<LlamaToken>, n: usize) {
        let mut batch = LlamaBatch::new(1, 1);
        for _ in 0..n {
            let logits = ctx.get_logits_ith(-1);
            let next = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap();
            let token = LlamaToken(next as i32);
            batch.clear();
            batch.add(token, tokens.len() as i32, &[seq], true).unwrap();
            decode(ctx, &mut batch, 2).unwrap();
            tokens.push(token);
        }
    }

    /// The claim [`reusable`] rests on, checked on this machine's llama.cpp kernels: a prompt
    /// decoded after a reused prefix gives the same logits, bit for bit, as the same prompt
    /// decoded from nothing, whatever the earlier request that left the prefix looked like
    /// (a shorter or longer prompt, generated tokens after it, the identical prompt).
    #[test]
    fn prefix_caching_changes_no_logit() {
        let models = std::env::var_os("FUNGIBLE_MODELS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
        let source = models.join(crate::DEFAULT_CHAT_FILE);
        assert!(source.is_file(), "{} is missing: run scripts/setup-models.sh", source.display());
        // The weights the gateway serves by default.
        let path = convert::converted(&source, WeightType::Q8_0, 2).unwrap();
        let backend = backend().unwrap();
        let model = LlamaModel::load_from_file(backend, &path, &LlamaModelParams::default()).unwrap();
        let mut ctx = model.new_context(backend, context_params(2, 1024, 2)).unwrap();
        let text = |s: &str| tokenize(&model, s);
        let system = "<|im_start|>system\nYou are a friendly assistant for a small bakery in Lyon. Answer in \
                      one or two sentences, politely, and never invent prices.<|im_end|>\n";
        let menu = "Croissant, pain au chocolat, baguette, pain de campagne, brioche, chausson aux pommes, \
                    eclair, tarte aux fraises, macaron, canele, madeleine, financier. ".repeat(5);
        let question = text(&format!(
            "{system}<|im_start|>user\nHere is our menu: {menu}\nDo you sell croissants on Sunday?<|im_end|>\n\
             <|im_start|>assistant\n"
        ));
        let n = question.len();
        assert!(n > 300, "{n} tokens");
        // Sequence 1 holds a long unrelated prompt all along: another stream in the context.
        prompt(&mut ctx, 1, &text(&"The quick brown fox jumps over the lazy dog. ".repeat(30)), 0);

        let cold = prompt(&mut ctx, 0, &question, 0);
        let filler = text(&"Something else entirely, then an answer. ".repeat(12));
        let mut earlier: Vec<(String, Vec<LlamaToken>, usize)> = Vec::new();
        for shared in [15, 16, 17, 63, 64, 100, 257, n - 1] {
            let mut tokens = question[..shared].to_vec();
            tokens.extend(&filler);
            earlier.push((format!("a prompt sharing {shared} tokens"), tokens, 0));
        }
        earlier.push(("the same prompt".into(), question.clone(), 5));
        let mut longer = question.clone();
        longer.extend(text("Yes, every morning.<|im_end|>\n<|im_start|>user\nAnd bread?"));
        earlier.push(("a longer prompt".into(), longer, 0));
        let mut reused = Vec::new();
        for (what, tokens, generated) in earlier {
            ctx.clear_kv_cache_seq(Some(0), None, None).unwrap();
            prompt(&mut ctx, 0, &tokens, 0);
            let mut cached = tokens.clone();
            generate(&mut ctx, 0, &mut cached, generated);
            let slot = Slot { id: 0, prompted: tokens.len(), cached, used: 0 };
            let reuse = reusable(&slot, &question);
            assert!(reuse < n && reuse % 16 == 0, "{reuse}");
            assert!(ctx.clear_kv_cache_seq(Some(0), Some(reuse as u32), None).unwrap());
            let warm = prompt(&mut ctx, 0, &question, reuse);
            let differ = cold.iter().zip(&warm).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(differ, 0, "after {what} and {generated} generated tokens, reusing {reuse}");
            reused.push(reuse);
        }
        // The cache was used, up to a boundary: 16, 64, 256 and, for the same prompt, the last
        // boundary before its last token.
        let last = (n - 1) / granularity(n - 1) * granularity(n - 1);
        assert_eq!(reused, [0, 16, 16, 48, 64, 64, 256, last, last, last]);
    }
}
