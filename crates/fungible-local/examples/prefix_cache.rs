//! When is a cached prompt prefix exact? Decodes one prompt whole, then again in two parts
//! (a prefix, then the rest, as a prompt cache would), and compares the last token's logits
//! bit for bit, for every split point; then reuses a prefix left by earlier prompts of every
//! length; then times prompts decoded in chunks of several sizes (what `chat.rs`'s fixed
//! prompt chunks cost).
//!
//!     cargo run --release --example prefix_cache -- models/SmolLM2-135M-Instruct.Q4_1.q8_0.gguf

mod common;

use std::time::Instant;

use common::Error;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

/// Decodes `tokens[from..]` at their positions in `chunk`-sized batches; returns the last
/// token's logits.
fn decode(ctx: &mut LlamaContext<'_>, tokens: &[LlamaToken], from: usize, chunk: usize) -> Result<Vec<f32>, Error> {
    let mut batch = LlamaBatch::new(512, 1);
    let mut at = from;
    while at < tokens.len() {
        let end = (at + chunk).min(tokens.len());
        batch.clear();
        for (i, t) in tokens.iter().enumerate().take(end).skip(at) {
            batch.add(*t, i as i32, &[0], i + 1 == tokens.len())?;
        }
        ctx.decode(&mut batch)?;
        at = end;
    }
    Ok(ctx.get_logits_ith(batch.n_tokens() - 1).to_vec())
}

fn main() -> Result<(), Error> {
    let (backend, model) = common::load("models/SmolLM2-135M-Instruct.Q4_1.q8_0.gguf")?;
    let mut ctx = model.new_context(&backend, common::context_params())?;
    let vocab = model.vocab();
    let prompt = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is the capital of France? Answer in one short sentence, please.<|im_end|>\n<|im_start|>assistant\n";
    let tokens = vocab.tokenize(prompt.as_bytes(), false, true);
    let n = tokens.len();

    // Cold TTFT: a fresh cache, the whole prompt.
    for _ in 0..3 {
        ctx.clear_kv_cache();
        decode(&mut ctx, &tokens, 0, 512)?;
    }
    let mut times = Vec::new();
    for _ in 0..10 {
        ctx.clear_kv_cache();
        let start = Instant::now();
        decode(&mut ctx, &tokens, 0, 512)?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    println!("{n}-token prompt, cold: median {:.1} ms, min {:.1} ms", times[times.len() / 2], times[0]);

    ctx.clear_kv_cache();
    let whole = decode(&mut ctx, &tokens, 0, 512)?;
    let mut exact = Vec::new();
    let mut differ = Vec::new();
    for split in 1..n {
        // The prefix as an earlier request left it: decoded, followed by other tokens that
        // are then dropped (another prompt's tail and a generated answer).
        ctx.clear_kv_cache();
        let mut other = tokens[..split].to_vec();
        other.extend(vocab.tokenize(b"something else entirely, and an answer after it", false, false));
        decode(&mut ctx, &other, 0, 512)?;
        ctx.clear_kv_cache_seq(Some(0), Some(split as u32), None)?;
        let parts = decode(&mut ctx, &tokens, split, 512)?;
        let max = whole.iter().zip(&parts).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        if whole.iter().zip(&parts).all(|(a, b)| a.to_bits() == b.to_bits()) {
            exact.push(split);
        } else {
            differ.push((split, max));
        }
    }
    println!("splits with bit-identical logits: {exact:?}");
    println!("splits that differ (split, max |diff|): {differ:?}");

    // An earlier prompt of each length that shares the first `reuse` tokens (a multiple of
    // 16), decoded whole, then cut back to `reuse`: is the rest then decoded exactly?
    let filler = vocab.tokenize("and then a great many other words follow here to make it longer. ".repeat(20).as_bytes(), false, false);
    let reuse = (n - 1) / 16 * 16;
    let mut bad = Vec::new();
    for total in reuse + 1..n + 120 {
        ctx.clear_kv_cache();
        let mut other = tokens[..reuse].to_vec();
        other.extend(filler.iter().take(total - reuse));
        decode(&mut ctx, &other, 0, 512)?;
        ctx.clear_kv_cache_seq(Some(0), Some(reuse as u32), None)?;
        let parts = decode(&mut ctx, &tokens, reuse, 512)?;
        let max = whole.iter().zip(&parts).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        if max != 0.0 || !whole.iter().zip(&parts).all(|(a, b)| a.to_bits() == b.to_bits()) {
            bad.push((total, max));
        }
    }
    let lengths: Vec<usize> = bad.iter().map(|(total, _)| *total).collect();
    let worst = bad.iter().map(|(_, max)| *max).fold(0.0f32, f32::max);
    println!(
        "{n}-token prompt reusing {reuse}: the earlier prompt's length changes the logits for {} of {} lengths \
         (from {:?} to {:?}; max |diff| {worst})",
        lengths.len(),
        n + 120 - reuse - 1,
        lengths.first(),
        lengths.last()
    );

    // Chunked whole prompts: does decoding in fixed chunks equal itself with a cached prefix?
    for chunk in [4usize, 8, 16, 32] {
        ctx.clear_kv_cache();
        let base = decode(&mut ctx, &tokens, 0, chunk)?;
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for split in (chunk..n).step_by(chunk) {
            ctx.clear_kv_cache();
            decode(&mut ctx, &tokens[..split], 0, chunk)?;
            let parts = decode(&mut ctx, &tokens, split, chunk)?;
            if base.iter().zip(&parts).all(|(a, b)| a.to_bits() == b.to_bits()) {
                ok.push(split);
            } else {
                bad.push(split);
            }
        }
        let mut times = Vec::new();
        for _ in 0..5 {
            ctx.clear_kv_cache();
            let start = Instant::now();
            decode(&mut ctx, &tokens, 0, chunk)?;
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        println!("chunks of {chunk}: exact at {ok:?}, differ at {bad:?}; cold {:.1} ms", times[2]);
    }
    // What chunking costs on a long prompt.
    let long = vocab.tokenize(format!("<|im_start|>user\nSummarise this. {}<|im_end|>\n<|im_start|>assistant\n", "The quick brown fox jumps over the lazy dog. ".repeat(40)).as_bytes(), false, true);
    for chunk in [16usize, 32, 48, 63, 64, 96, 128, 512] {
        let mut times = Vec::new();
        for _ in 0..5 {
            ctx.clear_kv_cache();
            let start = Instant::now();
            decode(&mut ctx, &long, 0, chunk)?;
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        println!("{} tokens in chunks of {chunk}: {:.0} tok/s", long.len(), long.len() as f64 / times[2]);
    }
    Ok(())
}
