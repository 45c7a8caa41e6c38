//! llama.cpp on its own, through the same `llama-cpp-2` build fungible links: the baseline
//! `scripts/bench-local.py` compares `fungible serve` against (greedy, one sequence).
//!
//!     cargo run --release -p fungible-local --example llama_baseline -- models/SmolLM2-135M-Instruct.Q4_1.gguf

mod common;

use std::time::Instant;

use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (backend, model) = common::load("models/SmolLM2-135M-Instruct.Q4_1.gguf")?;
    let mut ctx = model.new_context(&backend, common::context_params())?;
    let vocab = model.vocab();
    let run = |ctx: &mut llama_cpp_2::context::LlamaContext<'_>, text: &str, max: usize| -> Result<(usize, f64, usize, f64), Box<dyn std::error::Error>> {
        ctx.clear_kv_cache();
        let prompt = format!("<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n");
        let tokens = vocab.tokenize(prompt.as_bytes(), false, true);
        let mut batch = LlamaBatch::new(512, 1);
        let start = Instant::now();
        for (i, t) in tokens.iter().enumerate() {
            batch.add(*t, i as i32, &[0], i + 1 == tokens.len())?;
        }
        ctx.decode(&mut batch)?;
        let mut sampler = LlamaSampler::greedy();
        let mut token = sampler.sample(ctx, batch.n_tokens() - 1);
        let prompt_secs = start.elapsed().as_secs_f64();
        let gen_start = Instant::now();
        let mut n = 1;
        let mut pos = tokens.len() as i32;
        while n < max && !vocab.is_eog(token) {
            batch.clear();
            batch.add(token, pos, &[0], true)?;
            pos += 1;
            ctx.decode(&mut batch)?;
            token = sampler.sample(ctx, 0);
            n += 1;
        }
        Ok((tokens.len(), prompt_secs, n, gen_start.elapsed().as_secs_f64()))
    };
    run(&mut ctx, "Hello", 8)?;
    let (p, secs, _, _) = run(&mut ctx, &format!("Summarise this. {}", "The quick brown fox jumps over the lazy dog. ".repeat(40)), 1)?;
    println!("llama.cpp prompt processing: {p} tokens, {:.0} tok/s", p as f64 / secs);
    let (p, secs, _, _) = run(&mut ctx, "Name three colours of the rainbow, please, in one short sentence.", 1)?;
    println!("llama.cpp time to first token, {p}-token prompt: {:.1} ms", secs * 1000.0);
    let (_, _, n, secs) = run(&mut ctx, "Write a long story about a dragon who learns to cook.", 256)?;
    println!("llama.cpp generation: {n} tokens, {:.1} tok/s", (n - 1) as f64 / secs);
    Ok(())
}
