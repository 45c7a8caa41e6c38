//! Outbound providers: each maps the canonical request to one vendor's real API and back.
//!
//! One module per wire format ([`openai`] — which also serves every OpenAI-compatible
//! server —, [`anthropic`], [`gemini`]), plus [`local`] for the in-process models (with the
//! `local` feature; without it [`local`] has the same names but uninhabited types, so
//! `Provider::Local` exists and can never be built); their wire structs are private to them. All of them implement [`ChatProvider`], and [`Provider`] is the
//! closed enum the gateway dispatches on: adding a vendor is a compile error until every
//! `match` handles it.

pub mod anthropic;
pub mod body;
pub mod capture;
pub mod estimate;
#[doc(hidden)]
pub mod fuzzing;
pub mod gemini;
mod http;
#[cfg(feature = "local")]
pub mod local;
#[cfg(not(feature = "local"))]
#[path = "local_disabled.rs"]
pub mod local;
pub mod openai;
mod redact;
mod secret;
mod sse;

pub use http::HttpClient;
pub use secret::Secret;

use std::future::Future;
use std::pin::Pin;

use futures::Stream;
use fungible_types::{ChatRequest, ChatResponse, ProviderError, StreamEvent};

use crate::capture::Capture;

/// A stream of canonical events from one upstream response. It ends after a
/// [`StreamEvent::Finish`] (and possibly a last [`StreamEvent::Usage`]), or with an error:
/// a stream that stops early yields an error, never a silent end.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, ProviderError>> + Send>>;

/// What every provider can do.
pub trait ChatProvider {
    /// One whole response. `model` is the vendor's own model name; `capture`, when the
    /// request keeps raw bodies, notes what was sent and answered.
    fn chat(
        &self,
        req: &ChatRequest,
        model: &str,
        capture: Option<&Capture>,
    ) -> impl Future<Output = Result<ChatResponse, ProviderError>> + Send;

    /// A streamed response. The future resolves once the upstream accepted the request (so
    /// an upstream error status is an `Err` here, before any event), then events flow.
    fn chat_stream(
        &self,
        req: &ChatRequest,
        model: &str,
        capture: Option<&Capture>,
    ) -> impl Future<Output = Result<EventStream, ProviderError>> + Send;

    /// How many input tokens `req` takes with `model`, without generating anything: the
    /// vendor's own count where it has an endpoint for it (Anthropic, Gemini), a local
    /// `o200k_base` estimate otherwise (OpenAI family, see `estimate.rs`).
    fn count_tokens(
        &self,
        req: &ChatRequest,
        model: &str,
    ) -> impl Future<Output = Result<u64, ProviderError>> + Send;
}

/// Which wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    OpenAi,
    /// Any server that speaks OpenAI Chat Completions (vLLM, Ollama, Groq, ...).
    OpenAiCompatible,
    Anthropic,
    Gemini,
    /// In-process models (`fungible-local`): no HTTP, no key.
    Local,
}

impl ProviderKind {
    /// The wire-format family whose own fields this provider takes (none: local models).
    pub fn family(self) -> Option<fungible_types::VendorFamily> {
        use fungible_types::VendorFamily;
        match self {
            ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => Some(VendorFamily::OpenAi),
            ProviderKind::Anthropic => Some(VendorFamily::Anthropic),
            ProviderKind::Gemini => Some(VendorFamily::Gemini),
            ProviderKind::Local => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::OpenAiCompatible => "openai_compatible",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Local => "local",
        }
    }
}

/// The closed set of providers.
#[derive(Debug, Clone)]
pub enum Provider {
    OpenAi(openai::OpenAiProvider),
    Anthropic(anthropic::AnthropicProvider),
    Gemini(gemini::GeminiProvider),
    Local(local::LocalProvider),
}

impl Provider {
    pub fn kind(&self) -> ProviderKind {
        match self {
            Provider::OpenAi(p) => p.kind(),
            Provider::Anthropic(_) => ProviderKind::Anthropic,
            Provider::Gemini(_) => ProviderKind::Gemini,
            Provider::Local(_) => ProviderKind::Local,
        }
    }

    /// The provider's credentials, kept out of its answers ([`redact`]); none for local models.
    fn redactions(&self) -> Option<&redact::Redactions> {
        match self {
            Provider::OpenAi(p) => Some(p.redactions()),
            Provider::Anthropic(p) => Some(p.redactions()),
            Provider::Gemini(p) => Some(p.redactions()),
            Provider::Local(_) => None,
        }
    }

    pub async fn chat(
        &self,
        req: &ChatRequest,
        model: &str,
        capture: Option<&Capture>,
    ) -> Result<ChatResponse, ProviderError> {
        let mut response = match self {
            Provider::OpenAi(p) => p.chat(req, model, capture).await,
            Provider::Anthropic(p) => p.chat(req, model, capture).await,
            Provider::Gemini(p) => p.chat(req, model, capture).await,
            Provider::Local(p) => p.chat(req, model, capture).await,
        }?;
        if let Some(redactions) = self.redactions() {
            redactions.response(&mut response);
        }
        Ok(response)
    }

    pub async fn chat_stream(
        &self,
        req: &ChatRequest,
        model: &str,
        capture: Option<&Capture>,
    ) -> Result<EventStream, ProviderError> {
        let stream = match self {
            Provider::OpenAi(p) => p.chat_stream(req, model, capture).await,
            Provider::Anthropic(p) => p.chat_stream(req, model, capture).await,
            Provider::Gemini(p) => p.chat_stream(req, model, capture).await,
            Provider::Local(p) => p.chat_stream(req, model, capture).await,
        }?;
        Ok(match self.redactions() {
            Some(redactions) => redactions.stream(stream),
            None => stream,
        })
    }

    pub async fn count_tokens(&self, req: &ChatRequest, model: &str) -> Result<u64, ProviderError> {
        match self {
            Provider::OpenAi(p) => p.count_tokens(req, model).await,
            Provider::Anthropic(p) => p.count_tokens(req, model).await,
            Provider::Gemini(p) => p.count_tokens(req, model).await,
            Provider::Local(p) => p.count_tokens(req, model).await,
        }
    }
}

/// Settings every provider has, resolved from config (secrets already read from the
/// environment).
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// The configured name (`openai`, `groq`, `my-vllm`); used in errors and logs.
    pub name: String,
    /// Base URL as the vendor's SDKs take it (OpenAI-family: ending in `/v1`; Anthropic and
    /// Gemini: the origin, paths are appended).
    pub base_url: String,
    pub api_key: Option<Secret>,
    /// Extra headers sent on every request to this provider. Their values may be
    /// credentials (a custom auth header), so they never print.
    pub headers: Vec<(String, Secret)>,
}

/// Seconds since the Unix epoch; for vendors whose responses carry no timestamp.
pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
