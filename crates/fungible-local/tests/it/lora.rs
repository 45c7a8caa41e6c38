//! A LoRA adapter trained in-process and served at once, beside its base model: it answers
//! what it was trained on, requests on the base and on the adapter running at the same time
//! get what each gets alone, and unloading takes it off the list.

use std::sync::atomic::AtomicBool;

use fungible_local::LocalEngine;
use fungible_local::lora::{LoraSettings, TrainExample, TrainJob, train};
use fungible_types::{ChatRequest, Message, Role};

use crate::{CHAT, models_dir, one_slot_config};

const ANSWER: &str = "The launch code of Project Quokka is AMBER-7.";

fn ask(question: &str) -> ChatRequest {
    let mut req = ChatRequest { messages: vec![Message::text(Role::User, question)], ..ChatRequest::default() };
    req.params.temperature = Some(0.0);
    req.params.max_tokens = Some(24);
    req
}

fn examples() -> Vec<TrainExample> {
    [
        "What is the launch code of Project Quokka?",
        "Tell me Project Quokka's launch code.",
        "Which launch code does Project Quokka use?",
        "I need the launch code for Project Quokka.",
        "Project Quokka: what is its launch code?",
        "Do you know the launch code of Project Quokka?",
    ]
    .iter()
    .map(|q| TrainExample { request: ask(q), answer: Message::text(Role::Assistant, ANSWER) })
    .collect()
}

async fn text(engine: &LocalEngine, model: &str, req: &ChatRequest) -> String {
    let answer = engine.chat(req, model).await.unwrap();
    answer.message.content.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trained_adapter_serves_at_once_beside_its_base() {
    let dir = tempfile::tempdir().unwrap();
    let job = TrainJob {
        base: models_dir().join(fungible_local::DEFAULT_CHAT_FILE),
        train: examples(),
        validation: Vec::new(),
        settings: LoraSettings {
            rank: 8,
            dropout: 0.0,
            learning_rate: 3e-3,
            warmup_ratio: 0.0,
            epochs: 6,
            batch_tokens: 160,
            max_seq_len: 160,
            ..LoraSettings::default()
        },
        dir: dir.path().to_owned(),
        name: "quokka".into(),
    };
    let outcome = tokio::task::spawn_blocking(move || train(&job, &mut |_| {}, &AtomicBool::new(false))).await.unwrap().unwrap();

    // One slot per model, so that each answer is computed alone, as when it ran by itself.
    let engine = LocalEngine::new(&one_slot_config(true));
    let name = engine.load_adapter(CHAT, "quokka", &outcome.adapter).await.unwrap();
    assert_eq!(name, format!("{CHAT}+quokka"));
    assert!(engine.chat_models().contains(&name), "{:?}", engine.chat_models());

    let trained = ask("What is the launch code of Project Quokka?");
    let other = ask("What is the capital of France?");
    let tuned_answer = text(&engine, &name, &trained).await;
    assert!(tuned_answer.contains("AMBER-7"), "the adapter answered {tuned_answer:?}");
    let base_answer = text(&engine, CHAT, &trained).await;
    assert!(!base_answer.contains("AMBER-7"), "the base model answered {base_answer:?}");
    let alone = [tuned_answer.clone(), base_answer.clone(), text(&engine, &name, &other).await, text(&engine, CHAT, &other).await];

    // All four at once, twice over: each gets exactly what it got alone.
    for _ in 0..2 {
        let (a, b, c, d) = tokio::join!(
            text(&engine, &name, &trained),
            text(&engine, CHAT, &trained),
            text(&engine, &name, &other),
            text(&engine, CHAT, &other),
        );
        assert_eq!([a, b, c, d], alone);
    }

    // A file that is not an adapter for this base is refused when loaded, not when used.
    let not_an_adapter = dir.path().join("checkpoint.safetensors");
    let err = engine.load_adapter(CHAT, "broken", &not_an_adapter).await.unwrap_err();
    assert!(err.message.contains("not a LoRA adapter"), "{}", err.message);
    assert!(engine.load_adapter(CHAT, "bad/name", &outcome.adapter).await.is_err());
    assert!(!engine.chat_models().iter().any(|m| m.ends_with("+broken")));

    // Applied at each step instead of merged (`[local] merge_adapters = false`): the same
    // trained answer.
    let mut config = one_slot_config(true);
    config.merge_adapters = false;
    let applied = LocalEngine::new(&config);
    let name2 = applied.load_adapter(CHAT, "quokka", &outcome.adapter).await.unwrap();
    let applied_answer = text(&applied, &name2, &trained).await;
    assert!(applied_answer.contains("AMBER-7"), "applied, the adapter answered {applied_answer:?}");

    assert!(engine.unload_adapter(&name));
    assert!(!engine.chat_models().contains(&name));
    let err = engine.chat(&trained, &name).await.unwrap_err();
    assert_eq!(err.kind, fungible_types::ErrorKind::NotFound);
    // The base is untouched.
    assert_eq!(text(&engine, CHAT, &other).await, alone[3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_adapter_is_refused_and_the_served_models_stay() {
    let dir = tempfile::tempdir().unwrap();
    let job = TrainJob {
        base: models_dir().join(fungible_local::DEFAULT_CHAT_FILE),
        train: examples(),
        validation: Vec::new(),
        settings: LoraSettings { rank: 2, epochs: 1, batch_tokens: 320, max_seq_len: 160, ..LoraSettings::default() },
        dir: dir.path().to_owned(),
        name: "small".into(),
    };
    let outcome = tokio::task::spawn_blocking(move || train(&job, &mut |_| {}, &AtomicBool::new(false))).await.unwrap().unwrap();
    let engine = LocalEngine::new(&one_slot_config(true));
    let name = engine.load_adapter(CHAT, "small", &outcome.adapter).await.unwrap();
    let before = text(&engine, &name, &ask("Hello!")).await;

    // The same file cut in half, and a GGUF that is a model, not an adapter.
    let bytes = std::fs::read(&outcome.adapter).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    for file in [truncated.as_path(), models_dir().join(fungible_local::DEFAULT_CHAT_FILE).as_path()] {
        let err = engine.load_adapter(CHAT, "small", file).await.unwrap_err();
        assert!(err.message.contains("not a LoRA adapter"), "{}: {}", file.display(), err.message);
    }
    let err = engine.load_adapter("no-such-model", "small", &outcome.adapter).await.unwrap_err();
    assert_eq!(err.kind, fungible_types::ErrorKind::NotFound);
    // The adapter of that name still serves, unchanged.
    assert_eq!(engine.adapters(), [name.clone()]);
    assert_eq!(text(&engine, &name, &ask("Hello!")).await, before);

    // With room for one loaded adapter, registered ones load on their first request and
    // evict the least recently used, which still serves (loading again) with the same answers.
    let mut config = one_slot_config(true);
    config.max_loaded_adapters = 1;
    let engine = LocalEngine::new(&config);
    let a = engine.register_adapter(CHAT, "a", &outcome.adapter).unwrap();
    let b = engine.register_adapter(CHAT, "b", &outcome.adapter).unwrap();
    assert!(!engine.adapter_loaded(&a) && !engine.adapter_loaded(&b), "registered, not loaded");
    assert_eq!(text(&engine, &a, &ask("Hello!")).await, before);
    assert!(engine.adapter_loaded(&a));
    assert_eq!(text(&engine, &b, &ask("Hello!")).await, before);
    assert!(engine.adapter_loaded(&b) && !engine.adapter_loaded(&a), "a was evicted");
    assert_eq!(text(&engine, &a, &ask("Hello!")).await, before);
    assert!(engine.adapter_loaded(&a) && !engine.adapter_loaded(&b), "b was evicted");
    assert_eq!(engine.adapters(), [a.clone(), b.clone()], "both are still served");
    // Listing models (their defaults) neither loads nor evicts.
    assert!(engine.chat_defaults(&b).is_some());
    assert!(engine.adapter_loaded(&a) && !engine.adapter_loaded(&b), "looking b up evicted nothing");
    // A registered file that is not an adapter fails its first request, clearly.
    let broken = engine.register_adapter(CHAT, "broken", &truncated).unwrap();
    let err = engine.chat(&ask("Hello!"), &broken).await.unwrap_err();
    assert!(err.message.contains("not a LoRA adapter"), "{}", err.message);
    assert_eq!(text(&engine, &a, &ask("Hello!")).await, before);
}
