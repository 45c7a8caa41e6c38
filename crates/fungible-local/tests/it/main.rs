//! The real models (`scripts/setup-models.sh` puts them in `models/`): answers, streaming,
//! seeds, constrained JSON, embeddings, and bad input.

use std::path::PathBuf;
use std::sync::OnceLock;

use futures::StreamExt;
use fungible_local::{LocalConfig, LocalEngine};
use fungible_types::{
    ChatRequest, ErrorKind, FinishReason, JsonSchemaFormat, Message, ResponseFormat, Role, StreamEvent,
};

const CHAT: &str = "smollm2-135m-instruct";
const EMBED: &str = "all-minilm-l6-v2";

/// The models directory; a missing one fails the test with what to run (never a skip).
fn models_dir() -> PathBuf {
    let dir = std::env::var_os("FUNGIBLE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"));
    assert!(
        dir.join(fungible_local::DEFAULT_CHAT_FILE).is_file()
            && dir.join(fungible_local::DEFAULT_EMBEDDING_DIR).join("model.safetensors").is_file(),
        "the local models are not in {}: run scripts/setup-models.sh first",
        dir.display()
    );
    dir
}

fn engine() -> &'static LocalEngine {
    static ENGINE: OnceLock<LocalEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = LocalConfig::discover(&models_dir());
        config.slots = 2;
        config.context_size = 1024;
        LocalEngine::new(&config)
    })
}

fn capital_question() -> ChatRequest {
    let mut req = ChatRequest {
        model: format!("local/{CHAT}"),
        messages: vec![
            Message::text(Role::System, "You are a helpful assistant."),
            Message::text(Role::User, "What is the capital of France?"),
        ],
        ..ChatRequest::default()
    };
    req.params.temperature = Some(0.0);
    req.params.max_tokens = Some(48);
    req
}

async fn stream_text(req: &ChatRequest) -> (String, Vec<StreamEvent>) {
    let mut stream = engine().chat_stream(req, CHAT).await.unwrap();
    let mut text = String::new();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        let event = event.unwrap();
        if let StreamEvent::TextDelta { text: t } = &event {
            text.push_str(t);
        }
        events.push(event);
    }
    (text, events)
}

#[tokio::test]
async fn greedy_answer_names_paris() {
    let res = engine().chat(&capital_question(), CHAT).await.unwrap();
    let text = res.message.content.unwrap();
    assert!(text.contains("Paris"), "{text}");
    assert!(res.usage.input_tokens > 10, "{:?}", res.usage);
    assert!(res.usage.output_tokens > 0, "{:?}", res.usage);
}

#[tokio::test]
async fn streaming_yields_the_same_text_as_non_streaming() {
    let req = capital_question();
    let whole = engine().chat(&req, CHAT).await.unwrap();
    let (text, events) = stream_text(&req).await;
    assert_eq!(Some(text), whole.message.content);
    assert!(matches!(events.first(), Some(StreamEvent::Start { .. })), "{events:?}");
    assert!(events.iter().filter(|e| matches!(e, StreamEvent::TextDelta { .. })).count() > 1);
    assert!(events.iter().any(|e| matches!(e, StreamEvent::Finish { .. })));
    let usage = events.iter().rev().find_map(|e| match e {
        StreamEvent::Usage(u) => Some(*u),
        _ => None,
    });
    assert_eq!(usage, Some(whole.usage));
}

#[tokio::test]
async fn same_seed_reproduces_and_another_seed_differs() {
    let mut req = capital_question();
    req.messages[1] = Message::text(Role::User, "Write a short poem about the sea.");
    req.params.temperature = Some(1.2);
    req.params.top_k = Some(100);
    req.params.top_p = Some(0.95);
    req.params.max_tokens = Some(40);
    req.params.seed = Some(42);
    let a = engine().chat(&req, CHAT).await.unwrap().message.content;
    let b = engine().chat(&req, CHAT).await.unwrap().message.content;
    assert_eq!(a, b);
    let mut outputs = std::collections::BTreeSet::new();
    for seed in 1..=3 {
        req.params.seed = Some(seed);
        outputs.insert(engine().chat(&req, CHAT).await.unwrap().message.content);
    }
    assert!(outputs.len() > 1, "three seeds gave one output: {outputs:?}");
}

#[tokio::test]
async fn max_tokens_and_stop_sequences_end_the_answer() {
    let mut req = capital_question();
    req.params.max_tokens = Some(3);
    let res = engine().chat(&req, CHAT).await.unwrap();
    assert_eq!(res.finish_reason, FinishReason::Length);
    assert_eq!(res.usage.output_tokens, 3);

    let mut req = capital_question();
    let full = engine().chat(&req, CHAT).await.unwrap().message.content.unwrap();
    req.params.stop = vec!["Paris".into()];
    let res = engine().chat(&req, CHAT).await.unwrap();
    let cut = res.message.content.unwrap();
    assert_eq!(res.finish_reason, FinishReason::Stop);
    assert_eq!(cut, full[..full.find("Paris").unwrap()]);
}

#[tokio::test]
async fn json_schema_output_parses_and_validates() {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "population": {"type": "integer"},
            "is_capital": {"type": "boolean"}
        },
        "required": ["city", "population", "is_capital"],
        "additionalProperties": false
    });
    let mut req = capital_question();
    req.messages[1] = Message::text(Role::User, "Give me facts about Paris as JSON.");
    req.params.max_tokens = Some(200);
    req.response_format = Some(ResponseFormat::JsonSchema(JsonSchemaFormat {
        name: "city".into(),
        description: None,
        schema,
        strict: Some(true),
    }));
    let text = engine().chat(&req, CHAT).await.unwrap().message.content.unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let object = value.as_object().unwrap();
    assert!(object["city"].is_string(), "{text}");
    assert!(object["population"].is_i64() || object["population"].is_u64(), "{text}");
    assert!(object["is_capital"].is_boolean(), "{text}");
    assert_eq!(object.len(), 3, "{text}");
}

#[tokio::test]
async fn concurrent_requests_all_finish() {
    let mut req = capital_question();
    req.params.max_tokens = Some(16);
    let (a, b, c) = tokio::join!(engine().chat(&req, CHAT), engine().chat(&req, CHAT), engine().chat(&req, CHAT));
    assert_eq!(a.unwrap().message.content, b.unwrap().message.content);
    assert!(c.is_ok());
}

#[tokio::test]
async fn dropping_the_stream_frees_the_slot() {
    let mut req = capital_question();
    req.params.max_tokens = Some(400);
    req.params.temperature = Some(0.8);
    req.messages[1] = Message::text(Role::User, "Tell me a very long story.");
    // Both slots busy with streams the client abandons after one event.
    for _ in 0..2 {
        let mut stream = engine().chat_stream(&req, CHAT).await.unwrap();
        let _ = stream.next().await;
    }
    // A request still gets served, long before 2 x 400 tokens could have been generated.
    let started = std::time::Instant::now();
    let mut short = capital_question();
    short.params.max_tokens = Some(4);
    engine().chat(&short, CHAT).await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_is_an_invalid_request() {
    let mut req = capital_question();
    req.messages[1] = Message::text(Role::User, "word ".repeat(3000));
    let err = engine().chat(&req, CHAT).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
    assert!(err.message.contains("longer than the model's context of 1024 tokens"), "{}", err.message);
}

#[tokio::test]
async fn empty_prompt_and_unknown_model_are_clear_errors() {
    let mut req = capital_question();
    req.messages = vec![Message::text(Role::User, "  ")];
    let err = engine().chat(&req, CHAT).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
    assert!(err.message.contains("prompt is empty"), "{}", err.message);

    let err = engine().chat(&capital_question(), "nope").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(err.message.contains("unknown local chat model \"nope\""), "{}", err.message);
    assert!(err.message.contains("local/smollm2-135m-instruct"), "{}", err.message);
}

#[tokio::test]
async fn a_truncated_gguf_fails_to_load_with_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("fungible-truncated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = std::fs::read(models_dir().join(fungible_local::DEFAULT_CHAT_FILE)).unwrap();
    let broken = dir.join("broken.gguf");
    std::fs::write(&broken, &bytes[..bytes.len() / 3]).unwrap();
    let mut config = LocalConfig::empty();
    config.chat_models.insert("broken".into(), broken);
    config.chat_models.insert("missing".into(), dir.join("missing.gguf"));
    config.slots = 1;
    let engine = LocalEngine::new(&config);
    let err = engine.chat(&capital_question(), "broken").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(err.message.contains("is not a loadable GGUF file"), "{}", err.message);
    let err = engine.chat(&capital_question(), "missing").await.unwrap_err();
    assert!(err.message.contains("does not exist (run scripts/setup-models.sh"), "{}", err.message);
    assert!(engine.preload().await.is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_models_dir_enables_nothing() {
    let config = LocalConfig::discover(std::path::Path::new("/nonexistent/fungible-models"));
    assert!(config.is_empty());
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test]
async fn embeddings_are_normalised_and_semantic() {
    let inputs = vec!["cat".to_owned(), "kitten".to_owned(), "stock market".to_owned()];
    let out = engine().embed(EMBED, inputs).await.unwrap();
    assert_eq!(out.vectors.len(), 3);
    assert!(out.vectors.iter().all(|v| v.len() == 384));
    for v in &out.vectors {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
    let (cat, kitten, stocks) = (&out.vectors[0], &out.vectors[1], &out.vectors[2]);
    assert!(cosine(cat, kitten) > cosine(cat, stocks), "{} vs {}", cosine(cat, kitten), cosine(cat, stocks));
    // [CLS] cat [SEP] + [CLS] kitten [SEP] + [CLS] stock market [SEP]
    assert_eq!(out.prompt_tokens, 10);
}

#[tokio::test]
async fn a_batch_gives_the_same_vectors_as_one_by_one() {
    let inputs: Vec<String> = ["a", "The quick brown fox jumps over the lazy dog.", "embeddings in rust"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let batch = engine().embed(EMBED, inputs.clone()).await.unwrap();
    for (i, input) in inputs.into_iter().enumerate() {
        let one = engine().embed(EMBED, vec![input]).await.unwrap();
        let diff = one.vectors[0].iter().zip(&batch.vectors[i]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-4, "input {i} differs by {diff}");
    }
}

#[tokio::test]
async fn embedding_bad_input_is_an_invalid_request() {
    let err = engine().embed(EMBED, vec![]).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
    let err = engine().embed(EMBED, vec!["ok".into(), String::new()]).await.unwrap_err();
    assert!(err.message.contains("input[1]"), "{}", err.message);
    let err = engine().embed("nope", vec!["x".into()]).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
}
