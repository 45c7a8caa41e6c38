//! `local` in a build without the `local` feature (no llama.cpp, no candle): the names of
//! `local.rs` that code outside this crate uses, with the provider, its config and its
//! defaults as uninhabited types. No value of them can exist, so `Provider::Local` stays in
//! the closed enum (every `match` is the same in both builds) but is never built, and the
//! gateway's config refuses a `[local]` section that asks for models.

use fungible_types::{ChatRequest, ChatResponse, Embeddings, ProviderError};
use serde::Serialize;

use crate::capture::Capture;
use crate::{ChatProvider, EventStream};

/// The provider name in `local/MODEL` (as `fungible_local::PROVIDER`).
pub const NAME: &str = "local";
/// The built-in embedding model's name (as `fungible_local::DEFAULT_EMBEDDING_MODEL`).
pub const DEFAULT_EMBEDDING_MODEL: &str = "all-minilm-l6-v2";

/// What the engine would serve; none in this build.
#[derive(Debug, Clone)]
pub enum LocalConfig {}

/// `[local.defaults.MODEL]` as written: read (so the config's own error can name it), never used.
pub type Overrides = serde::de::IgnoredAny;

/// A local chat model's sampling defaults; none in this build.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Defaults {}

#[derive(Debug, Clone)]
pub enum LocalProvider {}

impl LocalProvider {
    pub fn models(&self) -> Vec<String> {
        match *self {}
    }

    pub fn chat_defaults(&self, _model: &str) -> Option<Defaults> {
        match *self {}
    }

    pub async fn preload(&self) -> Result<(), ProviderError> {
        match *self {}
    }

    pub async fn embed(&self, _model: &str, _inputs: Vec<String>) -> Result<Embeddings, ProviderError> {
        match *self {}
    }
}

impl ChatProvider for LocalProvider {
    async fn chat(&self, _req: &ChatRequest, _model: &str, _: Option<&Capture>) -> Result<ChatResponse, ProviderError> {
        match *self {}
    }

    async fn chat_stream(&self, _req: &ChatRequest, _model: &str, _: Option<&Capture>) -> Result<EventStream, ProviderError> {
        match *self {}
    }

    async fn count_tokens(&self, _req: &ChatRequest, _model: &str) -> Result<u64, ProviderError> {
        match *self {}
    }
}
