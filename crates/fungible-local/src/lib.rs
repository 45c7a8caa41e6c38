//! In-process inference, offline and keyless: GGUF chat models through llama.cpp (the
//! `llama-cpp-2` crate, built from vendored source) and BERT-style embedding models through
//! candle. This is the only crate that links an inference engine, so the rest of the
//! workspace builds without it being rebuilt.
//!
//! [`LocalEngine`] owns every configured model. Models load once, lazily on first use or at
//! start ([`LocalEngine::preload`]); heavy work (loading, prompt processing, generation,
//! embedding) runs on dedicated threads or tokio's blocking pool, never on the async workers.
//! Errors are [`ProviderError`]s with provider `local`, so the gateway and front ends treat
//! them like any other provider's.

mod chat;
mod convert;
mod defaults;
mod embed;
mod gate;
pub mod lora;
mod params;
mod scheduler;
mod stop;
mod template;
mod tools;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use fungible_types::{ChatRequest, ChatResponse, Embeddings, ErrorKind, ProviderError, StreamEvent};

pub use convert::WeightType;
pub use embed::StaticEmbedding;
pub use defaults::{DEFAULT_MAX_TOKENS, Defaults, Overrides};

/// The provider name in errors and in `local/MODEL`.
pub const PROVIDER: &str = "local";
/// The built-in chat model and the file `scripts/setup-models.sh` puts in the models dir.
pub const DEFAULT_CHAT_MODEL: &str = "smollm2-135m-instruct";
pub const DEFAULT_CHAT_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The built-in embedding model and its folder in the models dir.
pub const DEFAULT_EMBEDDING_MODEL: &str = "all-minilm-l6-v2";
pub const DEFAULT_EMBEDDING_DIR: &str = "all-MiniLM-L6-v2";

/// Same shape as `fungible_providers::EventStream`.
pub type LocalEventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, ProviderError>> + Send>>;

/// What the engine serves.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Model name -> GGUF file.
    pub chat_models: BTreeMap<String, PathBuf>,
    /// Model name -> folder with `config.json`, `tokenizer.json`, `model.safetensors`.
    pub embedding_models: BTreeMap<String, PathBuf>,
    /// Contexts per chat model: this many requests generate at once, others queue.
    pub slots: usize,
    /// Context length (prompt + output) of each slot, in tokens; capped by the model's own.
    pub context_size: u32,
    /// CPU threads each generation uses. Default: all cores.
    pub threads: Option<usize>,
    /// Keep each slot's KV cache after a request and decode only the part of the next
    /// prompt after the prefix they share (llama.cpp server's `cache_prompt`). Default: on.
    /// Only a prefix whose keys and values are bit for bit what decoding the new prompt would
    /// compute is reused (up to a prompt chunk boundary: every 16 tokens at the start,
    /// coarser further on; never tokens generated one by one), so the cache changes no answer.
    pub cache_prompt: bool,
    /// Convert chat models' weights to this type when they load, once, keeping the result on
    /// disk (see the `convert` module); `None` serves the file's own weights.
    pub weights: Option<WeightType>,
    /// Serve a LoRA adapter merged into a copy of its base's weights (`lora::merge`): as fast
    /// as the base, for a copy of the weights per adapter. Off: llama.cpp applies it at every
    /// step, sharing the base's weights, about a fifth slower. Default: on.
    pub merge_adapters: bool,
    /// Most LoRA adapters loaded at once (each holds its own contexts, and merged, its own
    /// weights); more are served, loaded on demand in place of the least recently used.
    /// Default: 4.
    pub max_loaded_adapters: usize,
    /// Cap on generated tokens of every chat model when the client sets none (`[local]
    /// max_tokens`); `None`: [`DEFAULT_MAX_TOKENS`].
    pub max_tokens: Option<u32>,
    /// Per chat model: what replaces its recommended sampling defaults
    /// (`[local.defaults.MODEL]`, see [`Defaults`]).
    pub defaults: BTreeMap<String, Overrides>,
}

impl LocalConfig {
    /// The built-in models found in `models_dir` (what `scripts/setup-models.sh` puts
    /// there), plus nothing else.
    pub fn discover(models_dir: &Path) -> LocalConfig {
        let mut config = LocalConfig::empty();
        let chat = models_dir.join(DEFAULT_CHAT_FILE);
        if chat.is_file() {
            config.chat_models.insert(DEFAULT_CHAT_MODEL.to_owned(), chat);
        }
        let embed = models_dir.join(DEFAULT_EMBEDDING_DIR);
        if embed.join("model.safetensors").is_file() {
            config.embedding_models.insert(DEFAULT_EMBEDDING_MODEL.to_owned(), embed);
        }
        config
    }

    pub fn empty() -> LocalConfig {
        LocalConfig {
            chat_models: BTreeMap::new(),
            embedding_models: BTreeMap::new(),
            slots: 4,
            context_size: 4096,
            threads: None,
            cache_prompt: true,
            weights: Some(WeightType::Q8_0),
            merge_adapters: true,
            max_loaded_adapters: 4,
            max_tokens: None,
            defaults: BTreeMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.chat_models.is_empty() && self.embedding_models.is_empty()
    }

    /// The defaults of chat model `name` served from `file`: its family's recommended ones
    /// (recognised by its name, else its file name), then `max_tokens`, then its own section.
    fn chat_defaults(&self, name: &str, file: &Path) -> Defaults {
        let family = match Defaults::recommended(name) {
            generic if generic == Defaults::recommended("") => {
                Defaults::recommended(&file.file_name().map(|f| f.to_string_lossy()).unwrap_or_default())
            }
            known => known,
        };
        let cap = Overrides { max_tokens: self.max_tokens, ..Overrides::default() };
        family.with(&cap).with(self.defaults.get(name).unwrap_or(&Overrides::default()))
    }
}

/// Every local model, loaded on first use (or by [`LocalEngine::preload`]).
#[derive(Debug, Clone)]
pub struct LocalEngine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    chat: BTreeMap<String, Arc<chat::ChatModel>>,
    /// `BASE+ADAPTER` -> the base with a LoRA adapter, loaded and unloaded while serving.
    adapters: std::sync::RwLock<BTreeMap<String, Arc<chat::ChatModel>>>,
    /// Most adapters loaded at once (`[local] max_loaded_adapters`): loading one more evicts
    /// the least recently used, which stays served and loads again on its next request.
    max_loaded_adapters: usize,
    /// Ticks for the adapters' last use.
    clock: std::sync::atomic::AtomicU64,
    embed: BTreeMap<String, embed::EmbeddingModel>,
}

fn check_adapter_name(adapter: &str) -> Result<(), ProviderError> {
    if adapter.is_empty()
        || adapter.len() > 128
        || !adapter.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
    {
        return Err(invalid(format!("adapter name {adapter:?}: up to 128 letters, digits, '-', '_', '.' or '@'")));
    }
    Ok(())
}

/// Unloads the least recently used adapters other than `keep` until at most `max` are
/// loaded or loading (`keep` among them): each is replaced by an unloaded copy (still served;
/// requests running on it finish, since they hold the loaded one).
fn evict(adapters: &mut BTreeMap<String, Arc<chat::ChatModel>>, keep: &str, max: usize) {
    loop {
        let loaded: Vec<(&String, u64)> =
            adapters.iter().filter(|(n, m)| m.is_resident() && n.as_str() != keep).map(|(n, m)| (n, m.used())).collect();
        let keep_loaded = adapters.get(keep).is_some_and(|m| m.is_resident());
        if loaded.len() + usize::from(keep_loaded) <= max {
            return;
        }
        let Some(oldest) = loaded.iter().min_by_key(|(_, used)| *used).map(|(n, _)| (*n).clone()) else { return };
        let fresh = Arc::new(adapters[&oldest].unloaded());
        adapters.insert(oldest.clone(), fresh);
        tracing::info!(model = %format!("local/{oldest}"), "LoRA adapter unloaded to make room (it loads again on its next request)");
    }
}

/// The name a LoRA adapter on `base` is served under: `BASE+ADAPTER`.
pub fn adapter_model(base: &str, adapter: &str) -> String {
    format!("{base}+{adapter}")
}

pub(crate) fn error(kind: ErrorKind, message: impl Into<String>) -> ProviderError {
    ProviderError::new(kind, PROVIDER, message)
}

pub(crate) fn invalid(message: impl Into<String>) -> ProviderError {
    error(ErrorKind::InvalidRequest, message)
}

impl LocalEngine {
    pub fn new(config: &LocalConfig) -> LocalEngine {
        let threads = config
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
            .max(1);
        let chat = config
            .chat_models
            .iter()
            .map(|(name, path)| {
                let settings = chat::ChatSettings {
                    slots: config.slots.max(1),
                    context_size: config.context_size.max(64),
                    threads,
                    cache_prompt: config.cache_prompt,
                    weights: config.weights,
                    merge_adapters: config.merge_adapters,
                    defaults: config.chat_defaults(name, path),
                };
                (name.clone(), Arc::new(chat::ChatModel::new(name, path.clone(), settings)))
            })
            .collect();
        let embed = config
            .embedding_models
            .iter()
            .map(|(name, path)| (name.clone(), embed::EmbeddingModel::new(name, path.clone())))
            .collect();
        LocalEngine {
            inner: Arc::new(Inner {
                chat,
                adapters: Default::default(),
                max_loaded_adapters: config.max_loaded_adapters.max(1),
                clock: Default::default(),
                embed,
            }),
        }
    }

    /// The configured chat models, then the adapters served (`BASE+ADAPTER`, loaded or not).
    pub fn chat_models(&self) -> Vec<String> {
        let mut models: Vec<String> = self.inner.chat.keys().cloned().collect();
        models.extend(self.adapters());
        models
    }

    /// The GGUF file configured chat model `model` is served from (not an adapter).
    pub fn chat_file(&self, model: &str) -> Option<PathBuf> {
        self.inner.chat.get(model).map(|m| m.path().to_owned())
    }

    /// The adapters being served, as `BASE+ADAPTER`.
    pub fn adapters(&self) -> Vec<String> {
        self.inner.adapters.read().map(|a| a.keys().cloned().collect()).unwrap_or_default()
    }

    /// Serves the GGUF LoRA adapter in `file` on chat model `base` as `BASE+ADAPTER`, from
    /// now on, with no restart; loads it before returning, so a file that is not an adapter
    /// for `base` is an error here, not on the first request. An adapter of the same name is
    /// replaced (its running requests finish on it).
    pub async fn load_adapter(&self, base: &str, adapter: &str, file: &Path) -> Result<String, ProviderError> {
        check_adapter_name(adapter)?;
        if !file.is_file() {
            return Err(invalid(format!("adapter file {} does not exist", file.display())));
        }
        let base_model = self.chat_model(base)?;
        if base_model.adapter().is_some() {
            return Err(invalid(format!("{base} is an adapter itself: load adapters on a base model")));
        }
        let name = adapter_model(base, adapter);
        let model = Arc::new(chat::ChatModel::with_adapter(&base_model, &name, file.to_owned()));
        model.touch(self.tick());
        model.want();
        model.loaded().await?;
        self.insert_adapter(&name, model)?;
        tracing::info!(model = %format!("local/{name}"), file = %file.display(), "LoRA adapter loaded");
        Ok(name)
    }

    /// Serves the adapter in `file` on `base` as `BASE+ADAPTER` like
    /// [`LocalEngine::load_adapter`], but loads it on its first request: what a gateway does
    /// at start for every tuned adapter, which would otherwise all take memory at once. A
    /// file that is not an adapter for `base` is then that request's error.
    pub fn register_adapter(&self, base: &str, adapter: &str, file: &Path) -> Result<String, ProviderError> {
        check_adapter_name(adapter)?;
        let base_model = self.chat_model(base)?;
        if base_model.adapter().is_some() {
            return Err(invalid(format!("{base} is an adapter itself: load adapters on a base model")));
        }
        let name = adapter_model(base, adapter);
        if !file.is_file() {
            return Err(invalid(format!("adapter file {} does not exist", file.display())));
        }
        self.insert_adapter(&name, Arc::new(chat::ChatModel::with_adapter(&base_model, &name, file.to_owned())))?;
        Ok(name)
    }

    /// Whether adapter `name` is loaded now (not only served).
    pub fn adapter_loaded(&self, name: &str) -> bool {
        self.inner.adapters.read().is_ok_and(|a| a.get(name).is_some_and(|m| m.is_loaded()))
    }

    fn tick(&self) -> u64 {
        self.inner.clock.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    fn insert_adapter(&self, name: &str, model: Arc<chat::ChatModel>) -> Result<(), ProviderError> {
        let mut adapters =
            self.inner.adapters.write().map_err(|_| error(ErrorKind::Unavailable, "the adapter table is poisoned"))?;
        adapters.insert(name.to_owned(), model);
        evict(&mut adapters, name, self.inner.max_loaded_adapters);
        Ok(())
    }

    /// Stops serving `BASE+ADAPTER`; requests already running finish. Whether it was served.
    pub fn unload_adapter(&self, name: &str) -> bool {
        let removed = self.inner.adapters.write().map(|mut a| a.remove(name).is_some()).unwrap_or(false);
        if removed {
            tracing::info!(model = %format!("local/{name}"), "LoRA adapter unloaded");
        }
        removed
    }

    /// What chat model `model` uses for the parameters a request leaves out.
    pub fn chat_defaults(&self, model: &str) -> Option<Defaults> {
        self.chat_model(model).ok().map(|m| m.defaults())
    }

    pub fn embedding_models(&self) -> Vec<String> {
        self.inner.embed.keys().cloned().collect()
    }

    /// Loads every model now, logging what each takes; returns the first failure.
    pub async fn preload(&self) -> Result<(), ProviderError> {
        for model in self.inner.chat.values() {
            model.loaded().await?;
        }
        for model in self.inner.embed.values() {
            model.loaded().await?;
        }
        Ok(())
    }

    /// [`LocalEngine::chat_model`] for a request that runs on it: an adapter is marked used
    /// (for the least-recently-used eviction) and, not loaded yet, makes room for itself.
    fn chat_model_to_use(&self, model: &str) -> Result<Arc<chat::ChatModel>, ProviderError> {
        let m = self.chat_model(model)?;
        if m.adapter().is_some() {
            m.touch(self.tick());
            if !m.is_resident()
                && let Ok(mut adapters) = self.inner.adapters.write()
            {
                m.want();
                evict(&mut adapters, model, self.inner.max_loaded_adapters);
            }
        }
        Ok(m)
    }

    fn chat_model(&self, model: &str) -> Result<Arc<chat::ChatModel>, ProviderError> {
        if let Some(m) = self.inner.chat.get(model) {
            return Ok(m.clone());
        }
        if let Some(m) = self.inner.adapters.read().ok().and_then(|a| a.get(model).cloned()) {
            return Ok(m);
        }
        Err({
            let known: Vec<String> = self.chat_models().iter().map(|m| format!("local/{m}")).collect();
            error(
                ErrorKind::NotFound,
                format!(
                    "unknown local chat model {model:?}; available: {} (configure more under [local] chat_models)",
                    if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                ),
            )
        })
    }

    pub async fn chat(&self, req: &ChatRequest, model: &str) -> Result<ChatResponse, ProviderError> {
        self.chat_model_to_use(model)?.chat(req).await
    }

    pub async fn chat_stream(&self, req: &ChatRequest, model: &str) -> Result<LocalEventStream, ProviderError> {
        self.chat_model_to_use(model)?.chat_stream(req).await
    }

    /// Exact prompt tokens of `req` with the model's own template and tokenizer.
    pub async fn count_tokens(&self, req: &ChatRequest, model: &str) -> Result<u64, ProviderError> {
        self.chat_model_to_use(model)?.count_tokens(req).await
    }

    /// One vector per input, in order: mean-pooled, L2-normalised.
    pub async fn embed(&self, model: &str, inputs: Vec<String>) -> Result<Embeddings, ProviderError> {
        let entry = self.inner.embed.get(model).ok_or_else(|| {
            let known: Vec<String> = self.inner.embed.keys().map(|m| format!("local/{m}")).collect();
            error(
                ErrorKind::NotFound,
                format!(
                    "unknown local embedding model {model:?}; available: {}",
                    if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                ),
            )
        })?;
        entry.embed(inputs).await
    }

    /// The static embedding ([`StaticEmbedding`]) of embedding model `model`.
    pub async fn static_embedding(&self, model: &str) -> Result<Arc<StaticEmbedding>, ProviderError> {
        let entry = self.inner.embed.get(model).ok_or_else(|| {
            error(ErrorKind::NotFound, format!("no local embedding model {model:?} (the learned router embeds requests with it)"))
        })?;
        entry.static_embedding().await
    }
}

/// Resident memory of this process in bytes (Linux), for the load-time report.
pub(crate) fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
