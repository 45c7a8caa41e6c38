//! GGUF chat models through llama.cpp: a configured model (or a LoRA adapter on one) loads
//! once, on first use, into a llama.cpp model and a scheduler thread (`scheduler.rs`) that
//! runs every request; `chat` and `chat_stream` render the prompt with the model's template,
//! turn the request's parameters into a sampler (`params.rs`), queue the job and turn the
//! text the scheduler sends back into an answer or a stream of events (tool calls parsed).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use fungible_types::{
    AssistantMessage, ChatRequest, ChatResponse, ErrorKind, FinishReason, ProviderError, StreamEvent, ToolCall, Usage,
};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::OnceCell;

use crate::convert;
use crate::convert::WeightType;
use crate::defaults::Defaults;
use crate::params::{GenParams, gen_params};
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
    /// Serve an adapter merged into a copy of the weights rather than applied at each step.
    pub merge_adapters: bool,
    /// What a request leaves out (sampling, the output cap, loop stopping).
    pub defaults: Defaults,
}

/// A configured chat model, or a LoRA adapter on one (`BASE+ADAPTER`); loaded on first use.
#[derive(Debug)]
pub struct ChatModel {
    name: String,
    path: PathBuf,
    /// The GGUF LoRA adapter applied to every request of this model: it gets a llama.cpp
    /// model instance of its own, and its own scheduler and context. Merged (the default), the
    /// instance is of a merged copy of the weights; otherwise it shares the base's pages
    /// through the file mapping and llama.cpp applies the adapter per context.
    adapter: Option<PathBuf>,
    settings: ChatSettings,
    loaded: OnceCell<Arc<Loaded>>,
    /// Set when a request is about to load it (an adapter counts as loaded from then on, so
    /// loads under way count against the cap); cleared when its load fails.
    wanted: std::sync::atomic::AtomicBool,
    /// When a request last asked for it (a tick of the engine's clock), for evicting the
    /// least recently used adapter.
    used: std::sync::atomic::AtomicU64,
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
pub(crate) struct Job {
    pub(crate) prompt: String,
    pub(crate) params: GenParams,
    pub(crate) out: tokio::sync::mpsc::UnboundedSender<Result<Output, ProviderError>>,
}

/// What the scheduler sends back, in order: `Accepted`, then `Text`s, then `Done`.
#[derive(Debug)]
pub(crate) enum Output {
    /// `cached_tokens` of the prompt came from the slot's KV cache, not decoded again.
    Accepted { prompt_tokens: u64, cached_tokens: u64 },
    Text(String),
    Done { reason: FinishReason, completion_tokens: u64 },
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
        ChatModel { name: name.to_owned(), path, adapter: None, settings, loaded: OnceCell::new(), wanted: Default::default(), used: Default::default() }
    }

    /// `base` with the adapter in `adapter` applied, served as `name`.
    pub fn with_adapter(base: &ChatModel, name: &str, adapter: PathBuf) -> ChatModel {
        ChatModel {
            name: name.to_owned(),
            path: base.path.clone(),
            adapter: Some(adapter),
            settings: base.settings,
            loaded: OnceCell::new(),
            wanted: Default::default(),
            used: Default::default(),
        }
    }

    /// The same model, not loaded (what an evicted adapter is replaced with).
    pub fn unloaded(&self) -> ChatModel {
        ChatModel {
            name: self.name.clone(),
            path: self.path.clone(),
            adapter: self.adapter.clone(),
            settings: self.settings,
            loaded: OnceCell::new(),
            wanted: Default::default(),
            used: std::sync::atomic::AtomicU64::new(self.used()),
        }
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.initialized()
    }

    /// Loaded, or being loaded for a request.
    pub fn is_resident(&self) -> bool {
        self.is_loaded() || self.wanted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A request is about to use it.
    pub fn want(&self) {
        self.wanted.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn used(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn touch(&self, tick: u64) {
        self.used.fetch_max(tick, std::sync::atomic::Ordering::Relaxed);
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
                let loaded = tokio::task::spawn_blocking(move || load(&name, path, adapter, settings))
                    .await
                    .map_err(|e| error(ErrorKind::Unavailable, format!("loading local model {:?} failed: {e}", self.name)))
                    .and_then(|r| r.map(Arc::new));
                if loaded.is_err() {
                    self.wanted.store(false, std::sync::atomic::Ordering::Relaxed);
                }
                loaded
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
    let not_adapter = |file: &std::path::Path, why: String| {
        invalid(format!("local model {name:?}: {} is not a LoRA adapter for this base model ({why})", file.display()))
    };
    // A merged adapter is a model of its own, applied to nothing. One that cannot be merged
    // here (a layout the merge does not handle, no room to write it) is applied per step.
    let (path, adapter) = match adapter {
        Some(file) if settings.merge_adapters => match crate::lora::merge::merged(&path, &file) {
            Ok(merged) => (merged, None),
            Err(crate::lora::merge::MergeError::NotAdapter(why)) => return Err(not_adapter(&file, why)),
            Err(e) => {
                tracing::warn!(model = %format!("local/{name}"), "the adapter is applied at each step, not merged: {e}");
                (path, Some(file))
            }
        },
        other => (path, other),
    };
    let mut model = LlamaModel::load_from_file(backend, &path, &LlamaModelParams::default()).map_err(|e| {
        unavailable(format!("local model {name:?}: {} is not a loadable GGUF file: {e}", path.display()))
    })?;
    let lora = match &adapter {
        Some(file) => Some(
            model.lora_adapter_init(file).map_err(|e| not_adapter(file, format!("{e}; llama.cpp's log says why")))?,
        ),
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
            .spawn(move || crate::scheduler::scheduler(backend, &model, lora, settings, n_ctx, &rx, &ready_tx))
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

