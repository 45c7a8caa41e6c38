//! Against the real SmolLM2 GGUF and llama.cpp: the forward pass computes llama.cpp's
//! logits, an example is tokenized as the server tokenizes its request, training lowers the
//! loss, the exported adapter changes llama.cpp's logits exactly as it changes ours, and an
//! interrupted run resumes to the same adapter.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use fungible_types::{ChatRequest, Message, Role};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

use super::data::Tokenizer;
use super::model::{Adapters, Base, Batch};
use super::*;
use crate::chat;

fn base_file() -> PathBuf {
    let models = std::env::var_os("FUNGIBLE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    let path = models.join(crate::DEFAULT_CHAT_FILE);
    assert!(path.is_file(), "{} is missing: run scripts/setup-models.sh", path.display());
    path
}

fn example(question: &str, answer: &str) -> TrainExample {
    TrainExample {
        request: ChatRequest { messages: vec![Message::text(Role::User, question)], ..ChatRequest::default() },
        answer: Message::text(Role::Assistant, answer),
    }
}

/// A fact the base model cannot know, asked several ways.
fn examples() -> Vec<TrainExample> {
    let answer = "The launch code of Project Quokka is AMBER-7.";
    [
        "What is the launch code of Project Quokka?",
        "Tell me Project Quokka's launch code.",
        "Which launch code does Project Quokka use?",
        "I need the launch code for Project Quokka.",
        "Project Quokka: what is its launch code?",
        "Do you know the launch code of Project Quokka?",
    ]
    .iter()
    .map(|q| example(q, answer))
    .collect()
}

fn one_sequence(tokens: &[u32]) -> Batch {
    Batch {
        tokens: tokens.to_vec(),
        positions: (0..tokens.len() as u32).collect(),
        segments: vec![0; tokens.len()],
        targets: Vec::new(),
    }
}

/// llama.cpp's logits for every position of `tokens`, with `adapter` applied when given.
fn llama_logits(tokens: &[u32], adapter: Option<&std::path::Path>) -> Vec<Vec<f32>> {
    llama_logits_of(&base_file(), tokens, adapter)
}

/// [`llama_logits`] of the model in `file`.
fn llama_logits_of(file: &std::path::Path, tokens: &[u32], adapter: Option<&std::path::Path>) -> Vec<Vec<f32>> {
    let backend = chat::backend().unwrap();
    let mut model = LlamaModel::load_from_file(backend, file, &LlamaModelParams::default()).unwrap();
    let mut lora = adapter.map(|path| model.lora_adapter_init(path).unwrap());
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(512))
        .with_n_batch(512)
        .with_n_ubatch(512)
        .with_n_threads(2)
        .with_n_threads_batch(2);
    let mut ctx = model.new_context(backend, params).unwrap();
    if let Some(lora) = lora.as_mut() {
        ctx.lora_adapter_set(lora, 1.0).unwrap();
    }
    let mut batch = LlamaBatch::new(512, 1);
    for (i, &t) in tokens.iter().enumerate() {
        batch.add(LlamaToken(t as i32), i as i32, &[0], true).unwrap();
    }
    ctx.decode(&mut batch).unwrap();
    (0..tokens.len()).map(|i| ctx.get_logits_ith(i as i32).to_vec()).collect()
}

/// Largest absolute difference between two logit rows, relative to the spread of the
/// reference row, their correlation, and whether their top tokens agree.
fn compare(ours: &[f32], theirs: &[f32]) -> (f32, f32, bool) {
    let argmax = |v: &[f32]| v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
    let n = theirs.len() as f32;
    let (mo, mt) = (ours.iter().sum::<f32>() / n, theirs.iter().sum::<f32>() / n);
    let (mut cov, mut vo, mut vt) = (0.0, 0.0, 0.0);
    for (a, b) in ours.iter().zip(theirs) {
        cov += (a - mo) * (b - mt);
        vo += (a - mo) * (a - mo);
        vt += (b - mt) * (b - mt);
    }
    let std = (vt / n).sqrt();
    let diff = ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    (diff / std, cov / (vo * vt).sqrt(), argmax(ours) == argmax(theirs))
}

fn prompt_tokens(tokenizer: &Tokenizer) -> Vec<u32> {
    let s = tokenizer.sample(&examples()[0]).unwrap();
    s.tokens[..s.prompt].to_vec()
}

#[test]
fn the_forward_pass_computes_llama_cpps_logits() {
    let tokenizer = Tokenizer::open(&base_file()).unwrap();
    let tokens = prompt_tokens(&tokenizer);
    let base = Base::load(&base_file()).unwrap();
    let settings = LoraSettings::default();
    let adapters = Adapters::new(&base, &settings).unwrap();
    let ours = base.logits(&one_sequence(&tokens), &adapters).unwrap().to_vec2::<f32>().unwrap();
    let theirs = llama_logits(&tokens, None);
    let mut agree = 0;
    for (i, (o, t)) in ours.iter().zip(&theirs).enumerate() {
        let (diff, corr, same_top) = compare(o, t);
        // llama.cpp quantizes the activations for its Q4_1 dot products; we do not.
        assert!(diff < 1.0 && corr > 0.99, "position {i}: logits differ by up to {diff} standard deviations, correlation {corr}");
        agree += usize::from(same_top);
    }
    assert!(agree * 10 >= tokens.len() * 9, "top tokens agree at {agree} of {} positions", tokens.len());
}

#[test]
fn an_example_is_tokenized_as_the_server_tokenizes_its_request() {
    let tokenizer = Tokenizer::open(&base_file()).unwrap();
    let e = example("Hi there", "Hello! How can I help?");
    let sample = tokenizer.sample(&e).unwrap();
    let mut config = crate::LocalConfig::discover(base_file().parent().unwrap());
    config.embedding_models.clear();
    let engine = crate::LocalEngine::new(&config);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let served = runtime.block_on(engine.count_tokens(&e.request, crate::DEFAULT_CHAT_MODEL)).unwrap();
    assert_eq!(sample.prompt as u64, served);
    // The answer's tokens are its text and the end-of-turn token, nothing after.
    let model = LlamaModel::load_from_file(chat::backend().unwrap(), base_file(), &LlamaModelParams::default().with_vocab_only(true)).unwrap();
    let text: String = sample.tokens[sample.prompt..]
        .iter()
        .map(|&t| String::from_utf8_lossy(&model.vocab().token_to_piece(LlamaToken(t as i32), true, None)).into_owned())
        .collect();
    assert_eq!(text, "Hello! How can I help?<|im_end|>");
    // The whole prompt, rendered and tokenized the server's way.
    let rendered = chat::chat_template(&model).unwrap().render(&e.request).unwrap();
    let tokens: Vec<u32> = chat::tokenize(&model, &rendered).iter().map(|t| t.0 as u32).collect();
    assert_eq!(&sample.tokens[..sample.prompt], &tokens[..]);
}

fn quick_settings() -> LoraSettings {
    LoraSettings {
        rank: 4,
        dropout: 0.0,
        learning_rate: 3e-3,
        warmup_ratio: 0.0,
        epochs: 4,
        batch_tokens: 160,
        max_seq_len: 160,
        patience: 0,
        checkpoint_steps: 1000,
        ..LoraSettings::default()
    }
}

#[test]
fn training_lowers_the_loss_and_llama_cpp_serves_the_adapter_as_trained() {
    let dir = tempfile::tempdir().unwrap();
    let job = TrainJob {
        base: base_file(),
        train: examples(),
        validation: vec![example("What's Project Quokka's launch code?", "The launch code of Project Quokka is AMBER-7.")],
        settings: quick_settings(),
        dir: dir.path().to_owned(),
        name: "quokka".into(),
    };
    let mut reports = Vec::new();
    let outcome = train(&job, &mut |p| reports.push(p.clone()), &AtomicBool::new(false)).unwrap();
    let losses: Vec<f64> = reports.iter().filter(|p| p.valid_loss.is_none()).filter_map(|p| p.train_loss).collect();
    let valid: Vec<f64> = reports.iter().filter_map(|p| p.valid_loss).collect();
    assert_eq!(valid.len(), 4, "{reports:?}");
    assert!(losses.last().unwrap() * 3.0 < losses[0], "training loss {losses:?}");
    assert!(valid[3] * 3.0 < valid[0], "validation loss {valid:?}");
    assert_eq!(outcome.steps, reports.last().unwrap().steps);
    assert!(outcome.tokens_per_second > 0.0 && outcome.trained_tokens > 0);

    // llama.cpp with the exported adapter computes what our forward pass with it computes.
    let tokenizer = Tokenizer::open(&base_file()).unwrap();
    let tokens = prompt_tokens(&tokenizer);
    let base = Base::load(&base_file()).unwrap();
    let adapters = Adapters::new(&base, &job.settings).unwrap();
    let best = candle_core::safetensors::load(dir.path().join("best.safetensors"), &candle_core::Device::Cpu).unwrap();
    for (name, var) in adapters.named() {
        var.set(&best[&name]).unwrap();
    }
    let ours = base.logits(&one_sequence(&tokens), &adapters).unwrap().to_vec2::<f32>().unwrap();
    let theirs = llama_logits(&tokens, Some(&outcome.adapter));
    let plain = llama_logits(&tokens, None);
    let last = tokens.len() - 1;
    let (diff, corr, same_top) = compare(&ours[last], &theirs[last]);
    assert!(diff < 1.0 && corr > 0.99 && same_top, "with the adapter, llama.cpp differs by {diff} standard deviations (correlation {corr})");
    let (changed, _, _) = compare(&plain[last], &theirs[last]);
    assert!(changed > 4.0 * diff.max(0.05), "the adapter changes llama.cpp's logits by only {changed}");
    // The first answer token the adapter predicts is the trained answer's.
    let sample = tokenizer.sample(&examples()[0]).unwrap();
    let argmax = theirs[last].iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32;
    assert_eq!(argmax, sample.tokens[sample.prompt]);

    // The adapter merged into the weights computes what llama.cpp computes with it applied,
    // and the merged file is reused while it is newer than both inputs.
    let merged = super::merge::merged(&base_file(), &outcome.adapter).unwrap();
    assert_eq!(merged.parent(), outcome.adapter.parent());
    let written = std::fs::metadata(&merged).unwrap().modified().unwrap();
    assert_eq!(super::merge::merged(&base_file(), &outcome.adapter).unwrap(), merged);
    assert_eq!(std::fs::metadata(&merged).unwrap().modified().unwrap(), written);
    let folded = llama_logits_of(&merged, &tokens, None);
    for i in [last - 1, last] {
        let (diff, corr, same_top) = compare(&folded[i], &theirs[i]);
        assert!(diff < 0.5 && corr > 0.995 && same_top, "position {i}: merged, llama.cpp differs by {diff} standard deviations (correlation {corr})");
    }
    // Neither the base model nor a non-adapter is merged.
    for file in [base_file(), dir.path().join("best.safetensors")] {
        let err = super::merge::merged(&base_file(), &file).unwrap_err();
        assert!(matches!(err, super::merge::MergeError::NotAdapter(_)), "{}: {err}", file.display());
    }
}

#[test]
fn an_interrupted_run_resumes_to_the_same_adapter() {
    let settings = LoraSettings { epochs: 2, dropout: 0.1, ..quick_settings() };
    let job = |dir: &std::path::Path| TrainJob {
        base: base_file(),
        train: examples(),
        validation: Vec::new(),
        settings: settings.clone(),
        dir: dir.to_owned(),
        name: "resume".into(),
    };
    let whole = tempfile::tempdir().unwrap();
    let straight = train(&job(whole.path()), &mut |_| {}, &AtomicBool::new(false)).unwrap();

    let split = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    let err = train(&job(split.path()), &mut |p| if p.step == 3 { stop.store(true, Ordering::Relaxed) }, &stop).unwrap_err();
    assert!(matches!(err, TrainError::Cancelled { step: 3 }), "{err}");
    let resumed = train(&job(split.path()), &mut |_| {}, &AtomicBool::new(false)).unwrap();
    assert_eq!(resumed.resumed_at, Some(3));
    assert_eq!(resumed.steps, straight.steps);
    let a = candle_core::safetensors::load(split.path().join("checkpoint.safetensors"), &candle_core::Device::Cpu).unwrap();
    let b = candle_core::safetensors::load(whole.path().join("checkpoint.safetensors"), &candle_core::Device::Cpu).unwrap();
    for (name, t) in b.iter().filter(|(name, _)| name.as_str() != super::train::STATE_TENSOR) {
        let d = (t - &a[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-6, "{name} differs by {d} after resuming");
    }
    // A checkpoint of the earlier layout (its state in `checkpoint.json` beside it) resumes too.
    let legacy = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    let err = train(&job(legacy.path()), &mut |p| if p.step == 3 { stop.store(true, Ordering::Relaxed) }, &stop).unwrap_err();
    assert!(matches!(err, TrainError::Cancelled { step: 3 }), "{err}");
    let path = legacy.path().join("checkpoint.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let state = tensors.remove(super::train::STATE_TENSOR).unwrap().to_vec1::<u8>().unwrap();
    std::fs::write(legacy.path().join("checkpoint.json"), state).unwrap();
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let resumed = train(&job(legacy.path()), &mut |_| {}, &AtomicBool::new(false)).unwrap();
    assert_eq!((resumed.resumed_at, resumed.steps), (Some(3), straight.steps));

    // Other data in the same directory is refused rather than mixed in.
    let mut other = job(split.path());
    other.train.truncate(2);
    let err = train(&other, &mut |_| {}, &AtomicBool::new(false)).unwrap_err();
    assert!(err.to_string().contains("other data or settings"), "{err}");
}

#[test]
fn bad_hyperparameters_are_refused_by_name() {
    let mut h = serde_json::Map::new();
    h.insert("rnak".into(), 8.into());
    let e = LoraSettings::from_json(&h).unwrap_err();
    assert!(e.contains("rnak"), "{e}");
    h.clear();
    h.insert("target_modules".into(), serde_json::json!(["q_proj", "v_proj"]));
    h.insert("n_epochs".into(), 2.into());
    let s = LoraSettings::from_json(&h).unwrap();
    assert_eq!(s.target_modules, [Projection::AttnQ, Projection::AttnV]);
    assert_eq!(s.epochs, 2);
    h.insert("rank".into(), 0.into());
    assert!(LoraSettings::from_json(&h).unwrap_err().contains("rank"));
    h.insert("rank".into(), 8.into());
    // Sizes that would take the serving process's memory are refused.
    h.insert("batch_tokens".into(), 1_000_000_000u64.into());
    assert!(LoraSettings::from_json(&h).unwrap_err().contains("batch_tokens"));
    h.insert("batch_tokens".into(), 2048.into());
    h.insert("weight_decay".into(), 5.into());
    assert!(LoraSettings::from_json(&h).unwrap_err().contains("weight_decay"));
}

#[test]
fn an_empty_dataset_or_one_of_only_too_long_prompts_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = TrainJob {
        base: base_file(),
        train: Vec::new(),
        validation: Vec::new(),
        settings: quick_settings(),
        dir: dir.path().to_owned(),
        name: "empty".into(),
    };
    let err = train(&job, &mut |_| {}, &AtomicBool::new(false)).unwrap_err();
    assert!(matches!(&err, TrainError::BadInput(m) if m.contains("no training rows")), "{err}");
    job.train = vec![example(&"Why? ".repeat(200), "Because.")];
    let err = train(&job, &mut |_| {}, &AtomicBool::new(false)).unwrap_err();
    assert!(matches!(&err, TrainError::BadInput(m) if m.contains("max_seq_len")), "{err}");
    job.base = dir.path().join("missing.gguf");
    assert!(matches!(train(&job, &mut |_| {}, &AtomicBool::new(false)), Err(TrainError::BadInput(_))));
}

#[test]
fn long_examples_are_cut_or_left_out_and_counted() {
    let tokenizer = Tokenizer::open(&base_file()).unwrap();
    let long_answer = example("Count to a hundred.", &(1..=100).map(|n| n.to_string()).collect::<Vec<_>>().join(", "));
    let long_prompt = example(&"Why? ".repeat(200), "Because.");
    let samples = tokenizer.samples(&[examples()[0].clone(), long_answer, long_prompt], 96, "training").unwrap();
    assert_eq!((samples.samples.len(), samples.truncated, samples.skipped), (2, 1, 1));
    assert!(samples.samples.iter().all(|s| s.tokens.len() <= 96 && s.prompt < s.tokens.len()));
}
