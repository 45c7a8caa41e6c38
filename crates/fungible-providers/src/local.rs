//! The in-process provider: `local/MODEL` served by `fungible-local` (llama.cpp for chat,
//! candle for embeddings), offline and without a key. This module only adapts the engine to
//! [`ChatProvider`]; the inference code lives in the `fungible-local` crate. Compiled with the
//! `local` feature only; without it `local_disabled.rs` stands in.

use fungible_local::LocalEngine;
use fungible_types::{ChatRequest, ChatResponse, Embeddings, ProviderError};

use crate::capture::Capture;
use crate::{ChatProvider, EventStream};

pub use fungible_local::{
    DEFAULT_CHAT_FILE, DEFAULT_CHAT_MODEL, DEFAULT_EMBEDDING_MODEL, DEFAULT_MAX_TOKENS, Defaults, LocalConfig, Overrides,
    PROVIDER as NAME, StaticEmbedding, WeightType,
};

#[derive(Debug, Clone)]
pub struct LocalProvider {
    engine: LocalEngine,
}

impl LocalProvider {
    pub fn new(config: &LocalConfig) -> LocalProvider {
        LocalProvider { engine: LocalEngine::new(config) }
    }

    /// Chat models first, then embedding models, for `GET /v1/models`.
    pub fn models(&self) -> Vec<String> {
        let mut models = self.engine.chat_models();
        models.extend(self.engine.embedding_models());
        models
    }

    /// What chat model `model` uses for the parameters a request leaves out.
    pub fn chat_defaults(&self, model: &str) -> Option<Defaults> {
        self.engine.chat_defaults(model)
    }

    /// Loads every model now (the `[local] preload` setting).
    pub async fn preload(&self) -> Result<(), ProviderError> {
        self.engine.preload().await
    }

    /// The engine itself: LoRA adapters are loaded and unloaded through it while serving.
    pub fn engine(&self) -> &LocalEngine {
        &self.engine
    }

    pub async fn embed(&self, model: &str, inputs: Vec<String>) -> Result<Embeddings, ProviderError> {
        self.engine.embed(model, inputs).await
    }
}

impl ChatProvider for LocalProvider {
    /// In process: no upstream body to capture.
    async fn chat(&self, req: &ChatRequest, model: &str, _: Option<&Capture>) -> Result<ChatResponse, ProviderError> {
        self.engine.chat(req, model).await
    }

    async fn chat_stream(&self, req: &ChatRequest, model: &str, _: Option<&Capture>) -> Result<EventStream, ProviderError> {
        self.engine.chat_stream(req, model).await
    }

    async fn count_tokens(&self, req: &ChatRequest, model: &str) -> Result<u64, ProviderError> {
        self.engine.count_tokens(req, model).await
    }
}
