//! `fungible bench --lora`: local LoRA fine-tuning speed, and what serving an adapter costs
//! against its base model in the same run.
//!
//! Training: rank-8 adapters on every projection of the built-in model, over synthetic
//! support conversations, for `--requests` optimizer steps (20 unless given) at two
//! micro-batch sizes: 128 tokens (one short example, the size the first measurement here
//! used) and 1,024 tokens (several packed). Serving: greedy answers of up to 128 tokens from
//! the base, from the adapter merged into its weights and from the adapter applied at each
//! step, alternating, one slot each; reports output tokens per second of each and their
//! ratio to the base's.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context;
use fungible_local::lora::{LoraSettings, TrainExample, TrainJob, train};
use fungible_local::{DEFAULT_CHAT_FILE, DEFAULT_CHAT_MODEL, LocalConfig, LocalEngine};
use fungible_types::{ChatRequest, Message, Role};

use super::BenchArgs;

/// A synthetic support conversation, about 60 to 120 tokens.
fn example(i: usize) -> TrainExample {
    let products = ["router", "thermostat", "e-reader", "camera", "speaker", "watch", "scooter", "kettle"];
    let issues = ["does not turn on", "keeps disconnecting", "shows error E{}", "drains its battery overnight", "will not update"];
    let product = products[i % products.len()];
    let issue = issues[(i / products.len()) % issues.len()].replace("{}", &(i % 97).to_string());
    let mut req = ChatRequest {
        messages: vec![
            Message::text(Role::System, "You are the support assistant of Acme devices. Be brief and precise."),
            Message::text(Role::User, format!("My Acme {product} {issue}. What should I do? Order {}.", 10_000 + i)),
        ],
        ..ChatRequest::default()
    };
    req.params.temperature = Some(0.0);
    let answer = format!(
        "Sorry about your {product}. Hold the power button for ten seconds, then unplug it for a minute. \
         If it still {issue}, open a ticket with order {} at acme.example/support and we will replace it.",
        10_000 + i
    );
    TrainExample { request: req, answer: Message::text(Role::Assistant, answer) }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub async fn lora(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let models = std::env::var_os("FUNGIBLE_MODELS_DIR").map_or_else(|| "models".into(), std::path::PathBuf::from);
    let base = models.join(DEFAULT_CHAT_FILE);
    anyhow::ensure!(base.is_file(), "{} is missing: run scripts/setup-models.sh", base.display());
    let steps = if args.requests == 10_000 { 20 } else { args.requests.max(2) as usize };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("LoRA on local/{DEFAULT_CHAT_MODEL} ({}), rank 8 on all 7 projections, {threads} threads", base.display());
    println!();
    println!("| micro-batch | steps | s/step (median) | tokens/s (prompts and answers) |");
    println!("|---:|---:|---:|---:|");
    let mut adapter = None;
    let mut dirs = Vec::new();
    for batch_tokens in [128, 1024] {
        // Enough examples for `steps` micro-batches of this size.
        let per_batch = (batch_tokens / 110).max(1);
        let train_rows: Vec<TrainExample> = (0..steps * per_batch).map(example).collect();
        let dir = super::bench_dir(&format!("lora-{batch_tokens}"))?;
        let job = TrainJob {
            base: base.clone(),
            train: train_rows,
            validation: Vec::new(),
            settings: LoraSettings { epochs: 1, batch_tokens, max_seq_len: batch_tokens, patience: 0, checkpoint_steps: 1_000_000, ..LoraSettings::default() },
            dir: dir.clone(),
            name: "bench".into(),
        };
        let mut times = Vec::new();
        let mut last = Instant::now();
        let outcome = tokio::task::spawn_blocking(move || {
            train(
                &job,
                &mut |p| {
                    if p.eta.is_some() {
                        times.push(last.elapsed().as_secs_f64());
                    }
                    last = Instant::now();
                },
                &AtomicBool::new(false),
            )
            .map(|o| (o, times))
        })
        .await?
        .context("training")?;
        let (outcome, times) = outcome;
        // The first step also loads and dequantizes the model: left out of the median.
        let step_time = median(times.iter().skip(1).copied().collect());
        println!("| {batch_tokens} tokens | {} | {step_time:.2} | {:.0} |", outcome.steps, outcome.tokens_per_second);
        dirs.push(dir);
        adapter = Some(outcome.adapter.clone());
    }
    let adapter = adapter.context("no adapter trained")?;

    // Serving: the base, the adapter merged into its weights (the default) and the adapter
    // applied at each step (`merge_adapters = false`), one slot each, alternating.
    let mut config = LocalConfig::discover(&models);
    config.embedding_models.clear();
    config.slots = 1;
    let engine = LocalEngine::new(&config);
    let tuned = engine.load_adapter(DEFAULT_CHAT_MODEL, "bench", &adapter).await?;
    config.merge_adapters = false;
    let applied_engine = LocalEngine::new(&config);
    let applied = applied_engine.load_adapter(DEFAULT_CHAT_MODEL, "bench", &adapter).await?;
    let served = [
        (format!("local/{DEFAULT_CHAT_MODEL}"), &engine, DEFAULT_CHAT_MODEL),
        (format!("local/{tuned} (merged, the default)"), &engine, tuned.as_str()),
        (format!("local/{applied} (applied per step, `merge_adapters = false`)"), &applied_engine, applied.as_str()),
    ];
    // Decoding speed: tokens after the first over the time from the first text to the end
    // (the answers differ in length; the prompts are the same).
    let rounds = 6;
    let mut speed = vec![Vec::new(); served.len()];
    for round in 0..rounds {
        for (k, (_, engine, model)) in served.iter().enumerate() {
            let mut req = example(1000 + round).request;
            req.params.max_tokens = Some(128);
            let mut stream = engine.chat_stream(&req, model).await?;
            let (mut first, mut tokens) = (None, 0);
            while let Some(event) = futures::StreamExt::next(&mut stream).await {
                match event? {
                    fungible_types::StreamEvent::TextDelta { .. } => {
                        first.get_or_insert_with(Instant::now);
                    }
                    fungible_types::StreamEvent::Usage(u) => tokens = u.output_tokens,
                    _ => {}
                }
            }
            if let Some(first) = first.filter(|_| tokens > 8) {
                speed[k].push((tokens - 1) as f64 / first.elapsed().as_secs_f64().max(1e-9));
            }
        }
    }
    let speeds: Vec<f64> = speed.into_iter().map(median).collect();
    println!();
    println!("| served (greedy, ≤128 tokens, {rounds} each, alternating) | decode tokens/s (median) |");
    println!("|---|---:|");
    for (k, (label, _, _)) in served.iter().enumerate() {
        let share = if k == 0 { String::new() } else { format!(" ({:.0}% of the base)", 100.0 * speeds[k] / speeds[0].max(1e-9)) };
        println!("| {label} | {:.1}{share} |", speeds[k]);
    }
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(ExitCode::SUCCESS)
}
