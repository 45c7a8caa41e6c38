//! GGUF chat models through llama.cpp.
//!
//! A loaded model owns one scheduler thread with one llama.cpp context holding a KV-cache
//! sequence per slot (`[local] slots`): every step decodes the next token of all running
//! requests in one batch (continuous batching), then one chunk of a new request's prompt,
//! alone, so one long generation does not hold up the others, and generation never runs on
//! the async workers. Requests beyond the slots wait in a queue. With `cache_prompt` (the
//! default) a slot keeps its KV cache, and a request reuses the part of it that is bit for
//! bit what it would compute itself (see `reusable`). The scheduler sends each piece of text
//! through a channel as it is produced; when the client goes away the receiver is dropped,
//! and the scheduler drops that sequence at its next step.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use fungible_types::{
    AssistantMessage, ChatRequest, ChatResponse, ErrorKind, FinishReason, ProviderError, ResponseFormat, StreamEvent,
    ToolCall, Usage,
};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaLoraAdapter, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::OnceCell;

use crate::convert::{self, WeightType};
use crate::defaults::{Defaults, LoopDetector, PENALTY_WINDOW};
use crate::gate::Gate;
use crate::stop::StopMatcher;
use crate::template::ChatTemplate;
use crate::tools::{self, Piece, ToolCallParser};
use crate::{LocalEventStream, error, invalid, mib, resident_bytes};

#[derive(Debug, Clone, Copy)]
pub struct ChatSettings {
    pub slots: usize,
    pub context_size: u32,
    pub threads: usize,
    /// Keep each slot's KV cache after a request and reuse its longest common prefix.
    pub cache_prompt: bool,
    /// Convert the weights to this type at load (once, kept on disk).
    pub weights: Option<WeightType>,
    /// What a request leaves out (sampling, the output cap, loop stopping).
    pub defaults: Defaults,
}

/// A configured chat model, or a LoRA adapter on one (`BASE+ADAPTER`); loaded on first use.
#[derive(Debug)]
pub struct ChatModel {
    name: String,
    path: PathBuf,
    /// The GGUF LoRA adapter applied to every request of this model: it gets a llama.cpp
    /// model instance of its own (the weights' pages are shared through the file mapping)
    /// and its own scheduler and context, since llama.cpp applies adapters per context.
    adapter: Option<PathBuf>,
    settings: ChatSettings,
    loaded: OnceCell<Arc<Loaded>>,
}

/// A loaded model: its template and the queue its scheduler takes jobs from.
pub(crate) struct Loaded {
    model: Arc<LlamaModel>,
    template: ChatTemplate,
    n_ctx: u32,
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded").field("n_ctx", &self.n_ctx).finish_non_exhaustive()
    }
}

/// One generation request for the scheduler.
struct Job {
    prompt: String,
    params: GenParams,
    out: tokio::sync::mpsc::UnboundedSender<Result<Output, ProviderError>>,
}

/// What the scheduler sends back, in order: `Accepted`, then `Text`s, then `Done`.
#[derive(Debug)]
enum Output {
    /// `cached_tokens` of the prompt came from the slot's KV cache, not decoded again.
    Accepted { prompt_tokens: u64, cached_tokens: u64 },
    Text(String),
    Done { reason: FinishReason, completion_tokens: u64 },
}

#[derive(Debug, Clone)]
struct GenParams {
    temperature: f32,
    top_p: f32,
    top_k: i32,
    min_p: f32,
    seed: u32,
    max_tokens: u32,
    stop: Vec<String>,
    stop_loops: bool,
    repeat_penalty: f32,
    frequency_penalty: f32,
    presence_penalty: f32,
    grammar: Option<Grammar>,
}

#[derive(Debug, Clone)]
struct Grammar {
    gbnf: String,
    root: &'static str,
    /// Lazy: the grammar applies only from this text on (`tool_choice: auto`).
    trigger: Option<&'static str>,
    /// For error messages: the request field the grammar came from.
    field: &'static str,
}

pub(crate) fn backend() -> Result<&'static LlamaBackend, ProviderError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| error(ErrorKind::Unavailable, format!("could not start llama.cpp: {e}")))
}

impl ChatModel {
    pub fn new(name: &str, path: PathBuf, settings: ChatSettings) -> ChatModel {
        ChatModel { name: name.to_owned(), path, adapter: None, settings, loaded: OnceCell::new() }
    }

    /// `base` with the adapter in `adapter` applied, served as `name`.
    pub fn with_adapter(base: &ChatModel, name: &str, adapter: PathBuf) -> ChatModel {
        ChatModel {
            name: name.to_owned(),
            path: base.path.clone(),
            adapter: Some(adapter),
            settings: base.settings,
            loaded: OnceCell::new(),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub fn adapter(&self) -> Option<&PathBuf> {
        self.adapter.as_ref()
    }

    pub(crate) async fn loaded(&self) -> Result<Arc<Loaded>, ProviderError> {
        self.loaded
            .get_or_try_init(|| async {
                let name = self.name.clone();
                let path = self.path.clone();
                let adapter = self.adapter.clone();
                let settings = self.settings;
                tokio::task::spawn_blocking(move || load(&name, path, adapter, settings))
                    .await
                    .map_err(|e| error(ErrorKind::Unavailable, format!("loading local model {:?} failed: {e}", self.name)))?
                    .map(Arc::new)
            })
            .await
            .cloned()
    }

    pub async fn count_tokens(&self, req: &ChatRequest) -> Result<u64, ProviderError> {
        let loaded = self.loaded().await?;
        let prompt = render(&loaded, req)?;
        let model = loaded.model.clone();
        let tokens = tokio::task::spawn_blocking(move || tokenize(&model, &prompt))
            .await
            .map_err(|e| error(ErrorKind::Unavailable, e.to_string()))?;
        Ok(tokens.len() as u64)
    }

    /// Starts a generation; resolves once the scheduler took it and the prompt fits.
    /// What a request that sets nothing gets.
    pub fn defaults(&self) -> Defaults {
        self.settings.defaults
    }

    async fn start(&self, req: &ChatRequest) -> Result<(Usage, OutputReceiver), ProviderError> {
        let params = gen_params(req, &self.settings.defaults)?;
        let loaded = self.loaded().await?;
        let prompt = render(&loaded, req)?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let job = Job { prompt, params, out: tx };
        loaded
            .jobs
            .lock()
            .map_err(|_| error(ErrorKind::Unavailable, "the local model scheduler is gone"))?
            .send(job)
            .map_err(|_| error(ErrorKind::Unavailable, "the local model scheduler is gone"))?;
        match rx.recv().await {
            Some(Ok(Output::Accepted { prompt_tokens, cached_tokens })) => Ok((
                Usage { input_tokens: prompt_tokens, cache_read_tokens: cached_tokens, ..Usage::default() },
                rx,
            )),
            Some(Err(e)) => Err(e),
            Some(Ok(other)) => Err(error(ErrorKind::UpstreamServer, format!("local scheduler answered {other:?} first"))),
            None => Err(error(ErrorKind::UpstreamServer, "the local scheduler stopped before accepting the request")),
        }
    }

    pub async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, ProviderError> {
        let (mut usage, mut rx) = self.start(req).await?;
        let mut parser = (tools::mode(req) != tools::Mode::Off).then(ToolCallParser::new);
        let mut text = String::new();
        let mut tool_calls = Vec::new();
        let mut take = |pieces: Vec<Piece>, text: &mut String| {
            for piece in pieces {
                match piece {
                    Piece::Text(t) => text.push_str(&t),
                    Piece::Call { name, arguments } => {
                        tool_calls.push(ToolCall { id: call_id(tool_calls.len()), name, arguments });
                    }
                }
            }
        };
        while let Some(item) = rx.recv().await {
            match item? {
                Output::Text(t) => match parser.as_mut() {
                    Some(parser) => take(parser.push(&t), &mut text),
                    None => text.push_str(&t),
                },
                Output::Done { reason, completion_tokens } => {
                    if let Some(parser) = parser.as_mut() {
                        take(parser.finish(), &mut text);
                    }
                    usage.output_tokens = completion_tokens;
                    let calls = parser.as_ref().is_some_and(ToolCallParser::has_calls);
                    return Ok(ChatResponse {
                        id: response_id(),
                        model: self.name.clone(),
                        created: now(),
                        message: AssistantMessage {
                            content: (!calls || !text.is_empty()).then_some(text),
                            tool_calls,
                            ..AssistantMessage::default()
                        },
                        finish_reason: if calls { FinishReason::ToolCalls } else { reason },
                        usage,
                    });
                }
                Output::Accepted { .. } => {}
            }
        }
        Err(error(ErrorKind::UpstreamServer, "local generation ended without finishing"))
    }

    pub async fn chat_stream(&self, req: &ChatRequest) -> Result<LocalEventStream, ProviderError> {
        let (mut usage, mut rx) = self.start(req).await?;
        let mut parser = (tools::mode(req) != tools::Mode::Off).then(ToolCallParser::new);
        let model = self.name.clone();
        let stream = async_stream::stream! {
            yield Ok(StreamEvent::Start { id: response_id(), model, created: now() });
            let mut calls: u32 = 0;
            loop {
                let (pieces, done) = match rx.recv().await {
                    Some(Ok(Output::Text(text))) => match parser.as_mut() {
                        Some(parser) => (parser.push(&text), None),
                        None => (vec![Piece::Text(text)], None),
                    },
                    Some(Ok(Output::Done { reason, completion_tokens })) => {
                        (parser.as_mut().map(ToolCallParser::finish).unwrap_or_default(), Some((reason, completion_tokens)))
                    }
                    Some(Ok(Output::Accepted { .. })) => continue,
                    Some(Err(e)) => { yield Err(e); break; }
                    None => {
                        yield Err(error(ErrorKind::UpstreamServer, "local generation ended without finishing"));
                        break;
                    }
                };
                for piece in pieces {
                    match piece {
                        Piece::Text(text) => yield Ok(StreamEvent::TextDelta { text }),
                        Piece::Call { name, arguments } => {
                            yield Ok(StreamEvent::ToolCallStart { index: calls, id: call_id(calls as usize), name });
                            yield Ok(StreamEvent::ToolCallArgs { index: calls, arguments });
                            calls += 1;
                        }
                    }
                }
                if let Some((reason, completion_tokens)) = done {
                    let reason = if calls > 0 { FinishReason::ToolCalls } else { reason };
                    yield Ok(StreamEvent::Finish { reason });
                    usage.output_tokens = completion_tokens;
                    yield Ok(StreamEvent::Usage(usage));
                    break;
                }
            }
        };
        Ok(Box::pin(stream))
    }
}

type OutputReceiver = tokio::sync::mpsc::UnboundedReceiver<Result<Output, ProviderError>>;

fn render(loaded: &Loaded, req: &ChatRequest) -> Result<String, ProviderError> {
    if req.messages.is_empty() {
        return Err(invalid("messages must not be empty"));
    }
    if req.messages.iter().all(|m| m.joined_text().trim().is_empty()) {
        return Err(invalid("the prompt is empty: send at least one message with text"));
    }
    loaded.template.render(req).map_err(invalid)
}

/// The request's parameters, each one it leaves out taken from `defaults`.
fn gen_params(req: &ChatRequest, defaults: &Defaults) -> Result<GenParams, ProviderError> {
    let p = &req.params;
    let temperature = p.temperature.unwrap_or(defaults.temperature);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(invalid(format!("temperature must be between 0 and 2, got {temperature}")));
    }
    let top_p = p.top_p.unwrap_or(defaults.top_p);
    if !(0.0..=1.0).contains(&top_p) {
        return Err(invalid(format!("top_p must be between 0 and 1, got {top_p}")));
    }
    let number = |name: &str| req.extra_body.get(name).and_then(serde_json::Value::as_f64);
    // Structured output (a JSON schema, tool calls) repeats its syntax by nature: the default
    // penalty is for free text, and only a client's own applies under a grammar.
    let structured = !matches!(req.response_format, None | Some(ResponseFormat::Text)) || tools::mode(req) != tools::Mode::Off;
    let default_penalty = if structured { 1.0 } else { defaults.repetition_penalty };
    let repeat_penalty = number("repetition_penalty").or_else(|| number("repeat_penalty")).unwrap_or(default_penalty);
    if repeat_penalty <= 0.0 {
        return Err(invalid(format!("repetition_penalty must be greater than 0, got {repeat_penalty}")));
    }
    let min_p = number("min_p").unwrap_or(defaults.min_p);
    if !(0.0..=1.0).contains(&min_p) {
        return Err(invalid(format!("min_p must be between 0 and 1, got {min_p}")));
    }
    let seed = match p.seed {
        // Any i64 maps onto llama.cpp's u32 seed; equal seeds stay equal.
        Some(seed) => (seed as u64 ^ ((seed as u64) >> 32)) as u32,
        None => SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0) | 1,
    };
    let json_grammar = match &req.response_format {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonObject) => Some(schema_grammar(&serde_json::json!({"type": "object"}))?),
        Some(ResponseFormat::JsonSchema(format)) => Some(schema_grammar(&format.schema)?),
    };
    let tool_grammar = tools::grammar(req).map_err(invalid)?.map(|gbnf| Grammar {
        gbnf,
        root: tools::ROOT,
        trigger: (tools::mode(req) == tools::Mode::Auto).then_some(tools::OPEN),
        field: "tools",
    });
    let grammar = match (json_grammar, tool_grammar) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "response_format json_object/json_schema together with tools is not supported by local models; \
                 send one of them (or tool_choice \"none\")",
            ));
        }
        (Some(gbnf), None) => Some(Grammar { gbnf, root: "root", trigger: None, field: "response_format" }),
        (None, tools) => tools,
    };
    if p.max_tokens == Some(0) {
        return Err(invalid("max_tokens must be at least 1"));
    }
    Ok(GenParams {
        temperature: temperature as f32,
        top_p: top_p as f32,
        top_k: p.top_k.unwrap_or(defaults.top_k).min(i32::MAX as u32) as i32,
        min_p: min_p as f32,
        seed,
        max_tokens: p.max_tokens.unwrap_or(defaults.max_tokens),
        stop: p.stop.clone(),
        stop_loops: defaults.stop_loops,
        repeat_penalty: repeat_penalty as f32,
        frequency_penalty: p.frequency_penalty.unwrap_or(0.0) as f32,
        presence_penalty: p.presence_penalty.unwrap_or(0.0) as f32,
        grammar,
    })
}

/// llama.cpp's own JSON-Schema-to-GBNF converter (the one its server uses).
fn schema_grammar(schema: &serde_json::Value) -> Result<String, ProviderError> {
    llama_cpp_2::json_schema_to_grammar(&schema.to_string())
        .map_err(|e| invalid(format!("response_format: the JSON schema cannot be turned into a grammar: {e}")))
}

pub(crate) fn tokenize(model: &LlamaModel, prompt: &str) -> Vec<LlamaToken> {
    // The template already has the BOS text where the model wants it; special tokens in the
    // rendered text (`<|im_start|>`) are parsed as such.
    model.vocab().tokenize(prompt.as_bytes(), false, true)
}

/// The chat template of `model`'s GGUF, with its BOS and EOS texts.
pub(crate) fn chat_template(model: &LlamaModel) -> Result<ChatTemplate, String> {
    let vocab = model.vocab();
    let token_text =
        |t: LlamaToken| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
    let bos = token_text(vocab.bos());
    let eos = token_text(vocab.eos());
    let source = model.meta_val_str("tokenizer.chat_template").ok();
    ChatTemplate::new(source, bos, eos)
}

fn load(name: &str, path: PathBuf, adapter: Option<PathBuf>, settings: ChatSettings) -> Result<Loaded, ProviderError> {
    let unavailable = |message: String| error(ErrorKind::Unavailable, message);
    if !path.is_file() {
        return Err(unavailable(format!(
            "local model {name:?}: {} does not exist (run scripts/setup-models.sh or fix [local] chat_models)",
            path.display()
        )));
    }
    let backend = backend()?;
    let before = resident_bytes();
    let started = Instant::now();
    // Converting is only a speed-up: a model it fails on is served with its own weights.
    let path = match settings.weights {
        Some(to) => convert::converted(&path, to, settings.threads).unwrap_or_else(|e| {
            tracing::warn!(model = %format!("local/{name}"), "serving the weights as they are: {e}");
            path
        }),
        None => path,
    };
    let mut model = LlamaModel::load_from_file(backend, &path, &LlamaModelParams::default()).map_err(|e| {
        unavailable(format!("local model {name:?}: {} is not a loadable GGUF file: {e}", path.display()))
    })?;
    let lora = match &adapter {
        Some(file) => Some(model.lora_adapter_init(file).map_err(|e| {
            invalid(format!(
                "local model {name:?}: {} is not a LoRA adapter for this base model ({e}; llama.cpp's log says why)",
                file.display()
            ))
        })?),
        None => None,
    };
    let model = Arc::new(model);
    let template = chat_template(&model).map_err(unavailable)?;
    let n_ctx = settings.context_size.min(model.n_ctx_train().max(64));

    let (tx, rx) = mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    {
        let model = model.clone();
        std::thread::Builder::new()
            .name(format!("local-{name}"))
            .spawn(move || scheduler(backend, &model, lora, settings, n_ctx, &rx, &ready_tx))
            .map_err(|e| unavailable(format!("could not start the scheduler thread: {e}")))?;
    }
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(unavailable(format!("local model {name:?}: could not create a context: {e}"))),
        Err(_) => return Err(unavailable(format!("local model {name:?}: the scheduler thread died"))),
    }
    let taken = match (before, resident_bytes()) {
        (Some(b), Some(a)) => mib(a.saturating_sub(b)),
        _ => "unknown".to_owned(),
    };
    tracing::info!(
        model = %format!("local/{name}"),
        file = %path.display(),
        weights = %mib(model.size()),
        memory = %taken,
        context = n_ctx,
        slots = settings.slots,
        "loaded local chat model in {} ms",
        started.elapsed().as_millis()
    );
    Ok(Loaded { model, template, n_ctx, jobs: Mutex::new(tx) })
}

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
fn scheduler(
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

fn sampler(model: &LlamaModel, p: &GenParams) -> Result<LlamaSampler, ProviderError> {
    let mut chain = Vec::new();
    if let Some(grammar) = &p.grammar {
        let sampler = match grammar.trigger {
            None => LlamaSampler::grammar(model, &grammar.gbnf, grammar.root),
            Some(trigger) => LlamaSampler::grammar_lazy(model, &grammar.gbnf, grammar.root, [trigger], &[]),
        };
        chain.push(sampler.map_err(|e| invalid(format!("{}: llama.cpp rejected the grammar: {e}", grammar.field)))?);
    }
    if p.repeat_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
        chain.push(LlamaSampler::penalties(
            model.n_vocab(),
            PENALTY_WINDOW,
            p.repeat_penalty,
            p.frequency_penalty,
            p.presence_penalty,
        ));
    }
    if p.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if p.top_k > 0 {
            chain.push(LlamaSampler::top_k(p.top_k));
        }
        if p.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(p.top_p, 1));
        }
        if p.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(p.min_p, 1));
        }
        chain.push(LlamaSampler::temp(p.temperature));
        chain.push(LlamaSampler::dist(p.seed));
    }
    Ok(LlamaSampler::chain_simple(chain))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn call_id(index: usize) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("call_{nanos:x}_{index}")
}

fn response_id() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("chatcmpl-local-{nanos:x}")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use fungible_types::{Message, Role};

    use super::*;

    fn question() -> ChatRequest {
        ChatRequest { messages: vec![Message::text(Role::User, "What is the capital of France?")], ..ChatRequest::default() }
    }

    #[test]
    fn parameters_left_out_take_the_models_defaults_and_the_clients_win() {
        let defaults = Defaults::recommended("smollm2-135m-instruct");
        let p = gen_params(&question(), &defaults).unwrap();
        assert_eq!((p.temperature, p.top_p, p.top_k, p.max_tokens), (0.2, 0.9, 0, 512));
        assert!((p.repeat_penalty - 1.1).abs() < 1e-6 && p.stop_loops);

        let mut req = question();
        req.params.temperature = Some(0.0);
        req.params.top_p = Some(0.5);
        req.params.top_k = Some(7);
        req.params.max_tokens = Some(2000);
        req.extra_body.insert("repetition_penalty".into(), 1.0.into());
        let p = gen_params(&req, &defaults).unwrap();
        assert_eq!((p.temperature, p.top_p, p.top_k, p.max_tokens, p.repeat_penalty), (0.0, 0.5, 7, 2000, 1.0));
    }

    #[test]
    fn structured_output_gets_no_default_repetition_penalty() {
        let defaults = Defaults::recommended("smollm2-135m-instruct");
        let mut req = question();
        req.response_format = Some(ResponseFormat::JsonObject);
        assert_eq!(gen_params(&req, &defaults).unwrap().repeat_penalty, 1.0);
        req.extra_body.insert("repetition_penalty".into(), 1.3.into());
        assert!((gen_params(&req, &defaults).unwrap().repeat_penalty - 1.3).abs() < 1e-6);
    }

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
