//! The gateway core: configuration, model resolution and dispatch to providers.
//!
//! [`Gateway`] is what every inbound front end calls with a canonical request; it knows no
//! HTTP status codes and no inbound wire format.

pub mod config;
mod presets;
pub mod routing;
mod target;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fungible_providers::anthropic::AnthropicProvider;
use fungible_providers::gemini::GeminiProvider;
use fungible_providers::local as local_provider;
use fungible_providers::openai::OpenAiProvider;
use fungible_providers::{EventStream, HttpClient, Provider, ProviderKind, ProviderSettings};
use fungible_types::{ChatRequest, ChatResponse, Embeddings, ErrorKind, ProviderError};

pub use config::{ConfigError, ConfigFile, GatewayConfig, Target};
pub use routing::{
    Attempt, AttemptOutcome, Decide, LateAttempts, Leg, PriceLookup, RouteDecision, RouteError, RouteHints, RouteInfo,
    RouteOverlay, Routed, TargetStatus,
};

/// Why the gateway could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// The client named a model that no configured provider or alias serves.
    #[error("{0}")]
    UnknownModel(String),
    #[error("{0}")]
    Provider(#[from] ProviderError),
}

/// A provider the config enabled.
#[derive(Debug)]
struct ProviderEntry {
    provider: Provider,
    models: Vec<String>,
}

/// A model the gateway can serve, for `GET /v1/models`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// What a client puts in `model`.
    pub id: String,
    /// The provider name, or `fungible` for an alias.
    pub owned_by: String,
    /// A local chat model's defaults for the parameters a request leaves out.
    pub defaults: Option<local_provider::Defaults>,
}

#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<GatewayInner>,
}

#[derive(Debug)]
struct GatewayInner {
    providers: HashMap<String, ProviderEntry>,
    routing: routing::Routing,
    request_timeout: Duration,
}

impl Gateway {
    pub fn new(config: &GatewayConfig) -> Result<Gateway, ConfigError> {
        let http = HttpClient::new(config.connect_timeout)
            .map_err(|message| ConfigError::Invalid { at: "server".into(), message })?;
        let mut providers = HashMap::new();
        for p in &config.providers {
            let settings = ProviderSettings {
                name: p.name.clone(),
                base_url: p.base_url.clone(),
                api_key: p.api_key.clone(),
                headers: p.headers.clone(),
            };
            let provider = match p.kind {
                ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => {
                    Provider::OpenAi(OpenAiProvider::new(settings, p.flavor, http.clone()))
                }
                ProviderKind::Anthropic => {
                    Provider::Anthropic(AnthropicProvider::new(settings, http.clone(), p.default_max_tokens))
                }
                ProviderKind::Gemini => Provider::Gemini(GeminiProvider::new(settings, http.clone())),
                ProviderKind::Local => {
                    return Err(ConfigError::Invalid {
                        at: format!("providers.{}", p.name),
                        message: "local models are configured under [local]".into(),
                    });
                }
            };
            if p.api_key.is_none() && p.api_key_env.is_some() {
                tracing::warn!(
                    provider = %p.name,
                    "{} is not set; requests to this provider are sent without credentials",
                    p.api_key_env.as_deref().unwrap_or_default()
                );
            }
            providers.insert(p.name.clone(), ProviderEntry { provider, models: p.models.clone() });
        }
        // Without the `local` feature `config.local` is always `None` (its type is
        // uninhabited) and there is no engine to build.
        #[cfg(feature = "local")]
        if let Some(local) = &config.local {
            let provider = fungible_providers::local::LocalProvider::new(local);
            let models = provider.models();
            tracing::info!(
                "local models (offline, no key): {}",
                models.iter().map(|m| format!("local/{m}")).collect::<Vec<_>>().join(", ")
            );
            providers.insert(local_provider::NAME.to_owned(), ProviderEntry { provider: Provider::Local(provider), models });
        }
        Ok(Gateway {
            inner: Arc::new(GatewayInner {
                providers,
                routing: routing::Routing::new(&config.routes, &config.routing),
                request_timeout: config.request_timeout,
            }),
        })
    }

    /// Which provider and provider model serve `model` (an alias or `PROVIDER/MODEL`).
    pub fn resolve(&self, model: &str) -> Result<(&Provider, Target), GatewayError> {
        let target = match self.route_target(model) {
            Some(target) => target,
            None => Target::parse(model).ok_or_else(|| {
                GatewayError::UnknownModel(format!(
                    "model {model:?} is neither a configured alias nor PROVIDER/MODEL (for example openai/gpt-5); see GET /v1/models"
                ))
            })?,
        };
        match self.inner.providers.get(&target.provider) {
            Some(entry) => Ok((&entry.provider, target)),
            None => Err(GatewayError::UnknownModel(format!(
                "provider {:?} in model {model:?} is not enabled: set its API key (for example {}_API_KEY) or configure [providers.{}]",
                target.provider,
                target.provider.to_ascii_uppercase(),
                target.provider
            ))),
        }
    }

    /// One whole response, routed (see [`routing`]); [`Gateway::chat_routed`] also says
    /// which target answered.
    pub async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse, GatewayError> {
        Ok(self.chat_routed(req, &RouteHints::default()).await?.value)
    }

    /// Opens a stream, routed (see [`routing`]): resolves once a target's stream produced
    /// its first content, or once the last target left to try accepted the request.
    pub async fn chat_stream(&self, req: &ChatRequest) -> Result<EventStream, GatewayError> {
        Ok(self.chat_stream_routed(req, &RouteHints::default()).await?.value)
    }

    /// The input tokens `req` would take with the model it names: the vendor's count where it
    /// has an endpoint for it, a local estimate otherwise (see `Provider::count_tokens`).
    pub async fn count_tokens(&self, req: &ChatRequest) -> Result<u64, GatewayError> {
        let (provider, target) = self.resolve(&req.model)?;
        // Another vendor's fields never go to this one.
        let narrowed;
        let req = if !req.extra_body.is_empty() && req.extra_body_vendor.is_some_and(|v| provider.kind().family() != Some(v)) {
            narrowed = ChatRequest { extra_body: serde_json::Map::new(), ..req.clone() };
            &narrowed
        } else {
            req
        };
        match tokio::time::timeout(self.inner.request_timeout, provider.count_tokens(req, &target.model)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(self.timeout(&target).into()),
        }
    }

    fn timeout(&self, target: &Target) -> ProviderError {
        ProviderError::new(
            ErrorKind::Timeout,
            &target.provider,
            format!("no response within {} s", self.inner.request_timeout.as_secs()),
        )
    }

    /// Loads the local models now (`[local] preload`). A model that fails to load is logged
    /// and keeps failing its requests with the same clear error; the others serve.
    pub async fn preload_local(&self) {
        if let Some(ProviderEntry { provider: Provider::Local(local), .. }) = self.inner.providers.get(local_provider::NAME)
            && let Err(e) = local.preload().await
        {
            tracing::error!("{e}");
        }
    }

    /// Embeddings for `inputs` with `model`: a local embedding model (`local/all-minilm-l6-v2`),
    /// an OpenAI-family model or a Gemini one (or an alias of one);
    /// also returns the target that answered.
    pub async fn embed(&self, model: &str, inputs: Vec<String>) -> Result<(Embeddings, Target), GatewayError> {
        let (provider, target) = self.resolve(model)?;
        let work = async {
            match provider {
                Provider::Local(local) => local.embed(&target.model, inputs).await,
                Provider::OpenAi(p) => p
                    .embed(&target.model, &inputs)
                    .await
                    .map(|(vectors, prompt_tokens)| Embeddings { vectors, prompt_tokens }),
                Provider::Gemini(p) => p
                    .embed(&target.model, &inputs)
                    .await
                    .map(|(vectors, prompt_tokens)| Embeddings { vectors, prompt_tokens }),
                Provider::Anthropic(_) => Err(ProviderError::new(
                    ErrorKind::InvalidRequest,
                    &target.provider,
                    format!(
                        "Anthropic has no embeddings API; use an embedding model such as local/{}, openai/text-embedding-3-small or gemini/gemini-embedding-001",
                        local_provider::DEFAULT_EMBEDDING_MODEL
                    ),
                )),
            }
        };
        match tokio::time::timeout(self.inner.request_timeout, work).await {
            Ok(result) => Ok((result?, target)),
            Err(_) => Err(self.timeout(&target).into()),
        }
    }

    /// The in-process provider, when `[local]` configured one.
    #[cfg(feature = "local")]
    pub fn local(&self) -> Option<&fungible_providers::local::LocalProvider> {
        match self.inner.providers.get(local_provider::NAME).map(|e| &e.provider) {
            Some(Provider::Local(local)) => Some(local),
            _ => None,
        }
    }

    /// Aliases first, then each provider's listed models, sorted within each group.
    pub fn models(&self) -> Vec<ModelInfo> {
        let mut out: Vec<ModelInfo> = self
            .route_names()
            .into_iter()
            .map(|alias| ModelInfo { id: alias, owned_by: "fungible".into(), defaults: None })
            .collect();
        let mut names: Vec<&String> = self.inner.providers.keys().collect();
        names.sort();
        for name in names {
            let entry = &self.inner.providers[name];
            // Local adapters come and go while serving: the engine's list, not the start's.
            let listed = match &entry.provider {
                Provider::Local(local) => local.models(),
                _ => entry.models.clone(),
            };
            for model in &listed {
                let defaults = match &entry.provider {
                    Provider::Local(local) => local.chat_defaults(model),
                    _ => None,
                };
                out.push(ModelInfo { id: format!("{name}/{model}"), owned_by: name.clone(), defaults });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(toml: &str) -> Gateway {
        let file = ConfigFile::parse(toml, "t.toml").unwrap();
        let env = |k: &str| (k == "OPENAI_API_KEY").then(|| "sk-test".to_owned());
        Gateway::new(&GatewayConfig::resolve(file, &env).unwrap()).unwrap()
    }

    #[test]
    fn resolves_aliases_and_provider_prefixes() {
        let gw = gateway("[models.fast]\ntarget = \"openai/gpt-5-mini\"\n");
        assert_eq!(gw.resolve("fast").unwrap().1.model, "gpt-5-mini");
        assert_eq!(gw.resolve("openai/gpt-5").unwrap().1.model, "gpt-5");
    }

    #[test]
    fn overlays_serve_tuned_models_without_a_restart() {
        let gw = gateway("[models.support]\ntarget = \"openai/gpt-5-mini\"\n");
        let tuned = Target::parse("openai/ft:gpt-4.1-mini-2025-04-14:org:support:abc").unwrap();
        assert!(gw.resolve("support@ft-1").is_err());
        gw.set_overlays(vec![
            RouteOverlay { route: "support@ft-1".into(), target: tuned.clone(), percent: 0 },
            RouteOverlay { route: "support".into(), target: tuned.clone(), percent: 10 },
            RouteOverlay { route: "elsewhere".into(), target: Target::parse("groq/llama").unwrap(), percent: 0 },
        ]);
        assert_eq!(gw.resolve("support@ft-1").unwrap().1, tuned);
        assert_eq!(gw.resolve("support").unwrap().1.model, "gpt-5-mini", "the route's own target stays first");
        let ids: Vec<String> = gw.models().into_iter().map(|m| m.id).collect();
        assert!(ids.contains(&"support@ft-1".to_owned()), "{ids:?}");
        assert!(!ids.contains(&"elsewhere".to_owned()), "a provider that is not enabled is not served");
        let support: Vec<(String, Option<u32>)> = gw
            .route_status()
            .into_iter()
            .filter(|s| s.route == "support")
            .map(|s| (s.target.to_string(), s.share))
            .collect();
        assert_eq!(support, [("openai/gpt-5-mini".to_owned(), None), (tuned.to_string(), Some(10))]);
        gw.set_overlays(Vec::new());
        assert!(gw.resolve("support@ft-1").is_err());
        assert_eq!(gw.route_status().iter().filter(|s| s.route == "support").count(), 1);
    }

    #[test]
    fn unknown_provider_says_how_to_enable_it() {
        let gw = gateway("");
        let err = gw.resolve("groq/llama").unwrap_err().to_string();
        assert!(err.contains("GROQ_API_KEY"), "{err}");
        let err = gw.resolve("gpt-5").unwrap_err().to_string();
        assert!(err.contains("PROVIDER/MODEL"), "{err}");
    }

    #[test]
    fn models_lists_aliases_then_provider_models() {
        let gw = gateway("[models.fast]\ntarget = \"openai/gpt-5-mini\"\n[providers.openai]\nmodels = [\"gpt-5\"]\n");
        let ids: Vec<_> = gw.models().into_iter().map(|m| m.id).collect();
        assert_eq!(ids, ["fast", "openai/gpt-5"]);
    }
}
