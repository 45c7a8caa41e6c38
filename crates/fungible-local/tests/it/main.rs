//! The real models (`scripts/setup-models.sh` puts them in `models/`): answers, streaming,
//! seeds, constrained JSON, embeddings, and bad input.

mod lora;

use std::path::PathBuf;
use std::sync::OnceLock;

use futures::StreamExt;
use fungible_local::{LocalConfig, LocalEngine};
use fungible_types::{
    ChatRequest, ErrorKind, FinishReason, JsonSchemaFormat, Message, ResponseFormat, Role, StreamEvent, Tool, ToolCall,
    ToolChoice,
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

/// The engine for tests that compare the outputs of separate requests: with one slot a
/// request never shares a batch with another, and only then is its output bit for bit the
/// same (batching several sequences changes llama.cpp's floating-point sums, and a greedy
/// choice between near-equal tokens can flip). The prompt cache is on, as by default: it
/// must change nothing.
fn alone() -> &'static LocalEngine {
    one_slot_engine(true)
}

/// The chat model alone, one slot, with or without prompt caching.
fn one_slot_config(cache_prompt: bool) -> LocalConfig {
    let mut config = LocalConfig::discover(&models_dir());
    config.embedding_models.clear();
    config.slots = 1;
    config.context_size = 1024;
    config.cache_prompt = cache_prompt;
    config
}

/// A one-slot engine of the test's own, with the prompt cache: what its cache holds depends
/// only on the test's own requests.
fn own_cached_engine() -> LocalEngine {
    LocalEngine::new(&one_slot_config(true))
}

/// A one-slot engine with or without prompt caching (see [`alone`]).
fn one_slot_engine(cache_prompt: bool) -> &'static LocalEngine {
    static CACHED: OnceLock<LocalEngine> = OnceLock::new();
    static UNCACHED: OnceLock<LocalEngine> = OnceLock::new();
    let cell = if cache_prompt { &CACHED } else { &UNCACHED };
    cell.get_or_init(|| LocalEngine::new(&one_slot_config(cache_prompt)))
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
    let mut stream = alone().chat_stream(req, CHAT).await.unwrap();
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
    let whole = alone().chat(&req, CHAT).await.unwrap();
    let (text, events) = stream_text(&req).await;
    assert_eq!(Some(text), whole.message.content);
    assert!(matches!(events.first(), Some(StreamEvent::Start { .. })), "{events:?}");
    assert!(events.iter().filter(|e| matches!(e, StreamEvent::TextDelta { .. })).count() > 1);
    assert!(events.iter().any(|e| matches!(e, StreamEvent::Finish { .. })));
    let usage = events.iter().rev().find_map(|e| match e {
        StreamEvent::Usage(u) => Some(*u),
        _ => None,
    });
    // The same counts; how much of the prompt came from the slot's cache depends on what the
    // shared slot served before each (other tests use it too).
    let counts = |u: fungible_types::Usage| (u.input_tokens, u.output_tokens);
    assert_eq!(usage.map(counts), Some(counts(whole.usage)));
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
    let a = alone().chat(&req, CHAT).await.unwrap().message.content;
    let b = alone().chat(&req, CHAT).await.unwrap().message.content;
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
    for res in [a, b, c] {
        let text = res.unwrap().message.content.unwrap_or_default();
        assert!(text.contains("Paris"), "{text}");
    }
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

/// The README's first request, as a newcomer sends it: no sampling parameters, no max_tokens.
fn first_request() -> ChatRequest {
    ChatRequest {
        model: format!("local/{CHAT}"),
        messages: vec![Message::text(Role::User, "What is the capital of France?")],
        ..ChatRequest::default()
    }
}

#[tokio::test]
async fn a_request_with_no_parameters_gets_the_model_card_defaults_and_a_bounded_answer() {
    let defaults = engine().chat_defaults(CHAT).expect("a chat model");
    assert_eq!((defaults.temperature, defaults.top_p), (0.2, 0.9));
    assert_eq!(defaults.max_tokens, fungible_local::DEFAULT_MAX_TOKENS);
    let res = engine().chat(&first_request(), CHAT).await.unwrap();
    assert!(res.usage.output_tokens <= u64::from(defaults.max_tokens), "{:?}", res.usage);
    assert!(!res.message.content.unwrap_or_default().trim().is_empty());
    // Seeded on one slot, reproducible: the model card's temperature answers the question.
    let mut seeded = first_request();
    seeded.params.seed = Some(1);
    let text = own_cached_engine().chat(&seeded, CHAT).await.unwrap().message.content.unwrap_or_default();
    assert!(text.contains("Paris"), "{text}");
}

#[tokio::test]
async fn a_generation_that_loops_stops_early_with_length() {
    // Greedy, with the repetition penalty turned off: this prompt makes the model repeat one
    // phrase until the context is full, unless the loop is stopped.
    let mut req = first_request();
    req.messages = vec![Message::text(Role::User, LOOPING_PROMPT)];
    req.params.temperature = Some(0.0);
    req.params.max_tokens = Some(900);
    req.extra_body.insert("repetition_penalty".into(), 1.0.into());
    let res = alone().chat(&req, CHAT).await.unwrap();
    assert_eq!(res.finish_reason, FinishReason::Length);
    assert!(res.usage.output_tokens < 400, "stopped late: {:?}\n{:?}", res.usage, res.message.content);

    // Without the loop stop (`[local.defaults.MODEL] stop_loops = false`) it runs to max_tokens.
    let mut config = one_slot_config(true);
    config.defaults.insert(CHAT.into(), fungible_local::Overrides { stop_loops: Some(false), ..Default::default() });
    let unstopped = LocalEngine::new(&config).chat(&req, CHAT).await.unwrap();
    assert_eq!(unstopped.usage.output_tokens, 900, "the prompt no longer loops: {:?}", unstopped.message.content);
}

const LOOPING_PROMPT: &str = "What is the capital of France?";

#[tokio::test]
async fn a_client_that_gives_up_on_a_whole_answer_frees_its_slot() {
    // One slot, and a request that would run to its 4,000-token cap (a loop, not stopped).
    let mut config = one_slot_config(true);
    config.context_size = 4096;
    config.defaults.insert(CHAT.into(), fungible_local::Overrides { stop_loops: Some(false), ..Default::default() });
    let engine = LocalEngine::new(&config);
    engine.preload().await.unwrap();
    let mut long = first_request();
    long.messages = vec![Message::text(Role::User, LOOPING_PROMPT)];
    long.params.temperature = Some(0.0);
    long.params.max_tokens = Some(4000);
    long.extra_body.insert("repetition_penalty".into(), 1.0.into());
    // The client's timeout: the non-streamed request is dropped while it generates.
    let gave_up = tokio::time::timeout(std::time::Duration::from_millis(500), engine.chat(&long, CHAT)).await;
    assert!(gave_up.is_err(), "the long answer came back within 500 ms");
    // The slot is free again at once: a short request is served long before 4,000 tokens
    // (about a minute at 70 tokens/s) could have been generated.
    let started = std::time::Instant::now();
    let mut short = capital_question();
    short.params.max_tokens = Some(4);
    engine.chat(&short, CHAT).await.unwrap();
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
    // The failed conversion left nothing behind, not even a partial file.
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [std::ffi::OsString::from("broken.gguf")]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `[local] weights`: the GGUF is converted once, beside the source, and the conversion is
/// reused; a file that already has the type is loaded as it is.
#[tokio::test]
async fn weights_are_converted_once_and_reused() {
    let dir = std::env::temp_dir().join(format!("fungible-convert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("small.gguf");
    std::fs::copy(models_dir().join(fungible_local::DEFAULT_CHAT_FILE), &source).unwrap();
    let engine_for = |path: &std::path::Path| {
        let mut config = LocalConfig::empty();
        config.chat_models.insert("small".into(), path.to_owned());
        config.slots = 1;
        config.context_size = 512;
        config.weights = Some(fungible_local::WeightType::Q8_0);
        LocalEngine::new(&config)
    };
    let answer = engine_for(&source).chat(&capital_question(), "small").await.unwrap();
    let text = answer.message.content.unwrap();
    assert!(text.contains("Paris"), "{text}");
    let converted = dir.join("small.q8_0.gguf");
    let gguf = llama_cpp_2::gguf::GgufContext::from_file(&converted).expect("the conversion is a GGUF file");
    assert_eq!(gguf.val_u32(gguf.find_key("general.file_type")), 7, "LLAMA_FTYPE_MOSTLY_Q8_0");
    let written = std::fs::metadata(&converted).unwrap().modified().unwrap();

    // A second engine reuses the conversion; one given the Q8_0 file converts nothing.
    engine_for(&source).preload().await.unwrap();
    engine_for(&converted).preload().await.unwrap();
    assert_eq!(std::fs::metadata(&converted).unwrap().modified().unwrap(), written);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    files.sort();
    assert_eq!(files, ["small.gguf", "small.q8_0.gguf"]);
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
async fn the_static_embedding_is_unit_length_lexical_and_the_same_every_time() {
    let embedding = engine().static_embedding(EMBED).await.unwrap();
    assert_eq!((embedding.name().as_str(), embedding.dims()), ("static:all-minilm-l6-v2", 384));
    let vector = |text: &str| embedding.embed(text).unwrap();
    let (refund, refund_again, weather) =
        (vector("I want a refund for my card payment"), vector("please refund this card payment"), vector("sunny weather in Lyon tomorrow"));
    for v in [&refund, &refund_again, &weather] {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
    assert!(cosine(&refund, &refund_again) > cosine(&refund, &weather), "{} vs {}", cosine(&refund, &refund_again), cosine(&refund, &weather));
    assert_eq!(vector("I want a refund for my card payment"), refund);
    // No token at all: the zero vector, not an error.
    assert!(vector("").iter().all(|x| *x == 0.0));
    assert_eq!(engine().static_embedding("nope").await.unwrap_err().kind, ErrorKind::NotFound);
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

const SYSTEM: &str = "You are a friendly assistant for a small bakery in Lyon. Answer in one or two sentences, \
                      politely, and never invent prices.";

fn bakery(question: &str, temperature: f64) -> ChatRequest {
    bakery_with(SYSTEM, question, temperature)
}

fn bakery_with(system: &str, question: &str, temperature: f64) -> ChatRequest {
    let mut req = ChatRequest {
        model: format!("local/{CHAT}"),
        messages: vec![Message::text(Role::System, system), Message::text(Role::User, question)],
        ..ChatRequest::default()
    };
    req.params.temperature = Some(temperature);
    req.params.seed = Some(7);
    req.params.max_tokens = Some(24);
    req
}

#[tokio::test]
async fn a_cached_prompt_prefix_is_reused_and_changes_no_output() {
    for temperature in [0.0, 1.0] {
        let question = bakery("Do you sell croissants on Sunday?", temperature);
        // Reference: no cache at all.
        let cold = one_slot_engine(false).chat(&question, CHAT).await.unwrap();
        assert_eq!(cold.usage.cache_read_tokens, 0);

        // Another question with the same system prompt warms the slot; this one then reuses
        // the shared prefix (the system turn at least) and decodes only the rest.
        let cached = own_cached_engine();
        cached.chat(&bakery("What time do you open?", temperature), CHAT).await.unwrap();
        let warm = cached.chat(&question, CHAT).await.unwrap();
        assert!(warm.usage.cache_read_tokens > 20, "{:?}", warm.usage);
        assert!(warm.usage.cache_read_tokens < warm.usage.input_tokens, "{:?}", warm.usage);
        assert_eq!(warm.usage.input_tokens, cold.usage.input_tokens);
        assert_eq!(warm.message.content, cold.message.content, "temperature {temperature}");

        // The same request again: the prompt (under 64 tokens, where prompt chunks are 16)
        // comes from the cache up to the last multiple of 16 before its last token (see
        // `reusable` in chat.rs).
        let again = cached.chat(&question, CHAT).await.unwrap();
        assert_eq!(again.usage.cache_read_tokens, (again.usage.input_tokens - 1) / 16 * 16, "{:?}", again.usage);
        assert_eq!(again.message.content, cold.message.content, "temperature {temperature}");

        // Streaming reports the cached part too.
        let mut stream = cached.chat_stream(&question, CHAT).await.unwrap();
        let mut usage = None;
        while let Some(event) = stream.next().await {
            if let StreamEvent::Usage(u) = event.unwrap() {
                usage = Some(u);
            }
        }
        assert_eq!(usage, Some(again.usage));
    }
}

/// A system prompt of ~190 tokens: past 64 tokens llama.cpp decodes a batch differently
/// (tiled flash attention), and reusing a prefix decoded in one long batch changed answers
/// before prompts were decoded in fixed chunks.
#[tokio::test]
async fn a_long_cached_system_prompt_changes_no_output() {
    let menu = format!(
        "{SYSTEM} Today's menu: {}",
        "croissant, pain au chocolat, baguette, pain de campagne, brioche, eclair, canele, macaron; ".repeat(6)
    );
    for temperature in [0.0, 1.0] {
        let question = bakery_with(&menu, "Which of these has chocolate?", temperature);
        let cold = one_slot_engine(false).chat(&question, CHAT).await.unwrap();
        let cached = own_cached_engine();
        cached.chat(&bakery_with(&menu, "Is the brioche sweet?", temperature), CHAT).await.unwrap();
        let warm = cached.chat(&question, CHAT).await.unwrap();
        assert!(warm.usage.cache_read_tokens >= 128, "{:?}", warm.usage);
        assert_eq!(warm.message.content, cold.message.content, "temperature {temperature}");
    }
}

fn weather_tool() -> Tool {
    Tool::new(
        "get_weather",
        Some("Get the current weather in a city.".into()),
        serde_json::json!({
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
            },
            "required": ["city", "unit"],
            "additionalProperties": false
        }),
    )
}

fn weather_question(choice: ToolChoice) -> ChatRequest {
    let mut req = ChatRequest {
        model: format!("local/{CHAT}"),
        messages: vec![Message::text(Role::User, "What is the weather like in Paris today?")],
        tools: vec![
            Tool::new("get_time", Some("Get the current time in a time zone.".into()), serde_json::json!({
                "type": "object",
                "properties": {"zone": {"type": "string"}},
                "required": ["zone"]
            })),
            weather_tool(),
        ],
        tool_choice: Some(choice),
        ..ChatRequest::default()
    };
    req.params.temperature = Some(0.0);
    req.params.max_tokens = Some(120);
    req
}

fn assert_valid_call(call: &ToolCall, tools: &[Tool]) {
    let tool = tools.iter().find(|t| t.name == call.name).unwrap_or_else(|| panic!("unknown tool {call:?}"));
    let arguments: serde_json::Value =
        serde_json::from_str(&call.arguments).unwrap_or_else(|e| panic!("{e}: {}", call.arguments));
    let validator = jsonschema::validator_for(&tool.parameters).unwrap();
    assert!(validator.is_valid(&arguments), "{} does not match the schema of {}", call.arguments, tool.name);
}

/// The calls of a stream, rebuilt from its events, and its finish reason.
async fn streamed_calls(req: &ChatRequest) -> (Vec<(String, String)>, Option<FinishReason>, String) {
    let mut stream = alone().chat_stream(req, CHAT).await.unwrap();
    let mut calls: Vec<(String, String)> = Vec::new();
    let mut finish = None;
    let mut text = String::new();
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            StreamEvent::ToolCallStart { index, id, name } => {
                assert_eq!(index as usize, calls.len());
                assert!(id.starts_with("call_"), "{id}");
                calls.push((name, String::new()));
            }
            StreamEvent::ToolCallArgs { index, arguments } => calls[index as usize].1.push_str(&arguments),
            StreamEvent::TextDelta { text: t } => text.push_str(&t),
            StreamEvent::Finish { reason } => finish = Some(reason),
            _ => {}
        }
    }
    (calls, finish, text)
}

#[tokio::test]
async fn required_tool_choice_gives_a_call_that_matches_the_schema() {
    let req = weather_question(ToolChoice::Required);
    let res = alone().chat(&req, CHAT).await.unwrap();
    assert_eq!(res.finish_reason, FinishReason::ToolCalls, "{res:?}");
    assert_eq!(res.message.tool_calls.len(), 1, "{res:?}");
    assert_eq!(res.message.content, None);
    let call = &res.message.tool_calls[0];
    assert!(call.id.starts_with("call_"), "{call:?}");
    assert_valid_call(call, &req.tools);

    let (calls, finish, text) = streamed_calls(&req).await;
    assert_eq!(finish, Some(FinishReason::ToolCalls));
    assert_eq!(text, "");
    assert_eq!(calls, vec![(call.name.clone(), call.arguments.clone())]);
}

#[tokio::test]
async fn a_named_tool_choice_calls_that_tool() {
    let req = weather_question(ToolChoice::Tool("get_time".into()));
    let res = engine().chat(&req, CHAT).await.unwrap();
    assert_eq!(res.message.tool_calls.len(), 1, "{res:?}");
    assert_eq!(res.message.tool_calls[0].name, "get_time");
    assert_valid_call(&res.message.tool_calls[0], &req.tools);

    let err = engine().chat(&weather_question(ToolChoice::Tool("nope".into())), CHAT).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
    assert!(err.message.contains("\"nope\", which is not in tools"), "{}", err.message);

    let mut both = weather_question(ToolChoice::Required);
    both.response_format = Some(ResponseFormat::JsonObject);
    let err = engine().chat(&both, CHAT).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
}

#[tokio::test]
async fn auto_tool_choice_answers_with_text_or_a_valid_call() {
    for question in ["What is the weather like in Paris today, in celsius?", "Say hello."] {
        let mut req = weather_question(ToolChoice::Auto);
        req.messages = vec![Message::text(Role::User, question)];
        let res = engine().chat(&req, CHAT).await.unwrap();
        if res.message.tool_calls.is_empty() {
            assert!(res.message.content.as_deref().is_some_and(|t| !t.trim().is_empty()), "{res:?}");
            assert_ne!(res.finish_reason, FinishReason::ToolCalls);
        } else {
            assert_eq!(res.finish_reason, FinishReason::ToolCalls);
            for call in &res.message.tool_calls {
                assert_valid_call(call, &req.tools);
            }
        }
        // Streamed, the answer must be as well-formed. (Not necessarily the same text: the
        // two requests go to different engines, see `alone`; `required` and the parser's
        // unit tests pin stream == whole.)
        let (calls, finish, text) = streamed_calls(&req).await;
        if calls.is_empty() {
            assert!(!text.trim().is_empty());
            assert_ne!(finish, Some(FinishReason::ToolCalls));
        } else {
            assert_eq!(finish, Some(FinishReason::ToolCalls));
            for (name, arguments) in &calls {
                let tool = req.tools.iter().find(|t| &t.name == name).unwrap_or_else(|| panic!("unknown tool {name}"));
                let arguments: serde_json::Value = serde_json::from_str(arguments).unwrap();
                assert!(jsonschema::validator_for(&tool.parameters).unwrap().is_valid(&arguments), "{arguments} against {}", tool.parameters);
            }
        }
    }
}

#[tokio::test]
async fn a_tool_result_turn_gets_a_text_answer() {
    let mut req = weather_question(ToolChoice::Required);
    let first = engine().chat(&req, CHAT).await.unwrap();
    let call = first.message.tool_calls[0].clone();
    let mut assistant = Message::text(Role::Assistant, "");
    assistant.content.clear();
    assistant.tool_calls = vec![call.clone()];
    let mut result = Message::text(Role::Tool, "{\"temperature\": 22, \"unit\": \"celsius\", \"sky\": \"sunny\"}");
    result.tool_call_id = Some(call.id.clone());
    req.messages.push(assistant);
    req.messages.push(result);
    req.tool_choice = Some(ToolChoice::None);
    let res = engine().chat(&req, CHAT).await.unwrap();
    assert!(res.message.tool_calls.is_empty(), "{res:?}");
    assert_eq!(res.finish_reason, FinishReason::Stop, "{res:?}");
    let text = res.message.content.unwrap();
    assert!(text.contains("22") || text.to_lowercase().contains("sunny"), "{text}");
    // The earlier call and its result are in the prompt.
    let counted = engine().count_tokens(&req, CHAT).await.unwrap();
    assert_eq!(counted, res.usage.input_tokens);
    let mut question_only = req.clone();
    question_only.messages.truncate(1);
    let bare = engine().count_tokens(&question_only, CHAT).await.unwrap();
    assert!(counted > bare + 10, "{counted} tokens with the call and its result, {bare} without");
}
