//! `[local]`: the in-process models, validated into the providers crate's `LocalConfig`.

use std::collections::BTreeMap;

use fungible_providers::local::LocalConfig;
use fungible_providers::local::Overrides as LocalOverrides;
#[cfg(feature = "local")]
use fungible_providers::local::WeightType;
use serde::Deserialize;

use super::error::{ConfigError, invalid};

/// `[local]`: the in-process models (`local/MODEL`), served offline with no key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSection {
    /// Set to false to serve no local model even when the models directory has some.
    pub enabled: Option<bool>,
    /// Where `scripts/setup-models.sh` put the models. Default: `$FUNGIBLE_MODELS_DIR`, else
    /// `models` (relative to the working directory).
    pub models_dir: Option<String>,
    /// More chat models: name -> GGUF file (relative paths are inside `models_dir`).
    #[serde(default)]
    pub chat_models: BTreeMap<String, String>,
    /// More embedding models: name -> folder with `config.json`, `tokenizer.json` and
    /// `model.safetensors` (a BERT-style sentence-transformers model).
    #[serde(default)]
    pub embedding_models: BTreeMap<String, String>,
    /// Load every local model at start instead of on first use. Default: false.
    pub preload: Option<bool>,
    /// Requests each chat model generates for at once (one llama.cpp context each). Default: 4.
    pub slots: Option<usize>,
    /// Context length of each slot in tokens (prompt + output). Default: 4096, capped by the
    /// model's own.
    pub context_size: Option<u32>,
    /// CPU threads per generation. Default: one per core.
    pub threads: Option<usize>,
    /// Reuse each slot's KV cache for the prompt prefix a new request shares with the slot's
    /// last one (llama.cpp server's `cache_prompt`). Default: true; only the part that is bit
    /// for bit what decoding the prompt would compute is reused, so no answer changes.
    pub cache_prompt: Option<bool>,
    /// Convert chat models' weights to this type when they load (once, kept beside the file):
    /// "q8_0" (default), "q4_0", "f16", or "keep" to serve the file's own. llama.cpp has fast
    /// CPU kernels for prompts and batches on the first three, not on Q4_1 or the K-quants.
    pub weights: Option<String>,
    /// Serve a LoRA adapter merged into a copy of its base's weights: as fast as the base, for
    /// a copy of the weights per adapter on disk and in memory. Default: true; false applies
    /// the adapter at every step on the shared base weights (about a fifth slower).
    pub merge_adapters: Option<bool>,
    /// Most LoRA adapters loaded at once; the others are served too, loaded on their next
    /// request in place of the least recently used one. Default: 4.
    pub max_loaded_adapters: Option<usize>,
    /// Cap on generated tokens when a request sets no `max_tokens`. Default: 512.
    pub max_tokens: Option<u32>,
    /// `[local.defaults.MODEL]`: what a request that leaves a parameter out gets, instead of
    /// the model family's recommended value.
    #[serde(default)]
    pub defaults: BTreeMap<String, LocalOverrides>,
}

#[cfg(feature = "local")]
pub(super) fn local_config(section: LocalSection, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<LocalConfig>, ConfigError> {
    if section.enabled == Some(false) {
        return Ok(None);
    }
    let dir = section
        .models_dir
        .or_else(|| env("FUNGIBLE_MODELS_DIR").filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "models".to_owned());
    let dir = std::path::PathBuf::from(dir);
    let mut config = LocalConfig::discover(&dir);
    let check_name = |at: &str, name: &str| {
        if name.is_empty() || name.contains('/') || name.chars().any(char::is_whitespace) {
            Err(invalid(format!("local.{at}.{name:?}"), "a model name must be non-empty, without '/' or spaces"))
        } else {
            Ok(())
        }
    };
    for (name, path) in section.chat_models {
        check_name("chat_models", &name)?;
        let path = dir.join(path);
        if !path.is_file() {
            return Err(invalid(format!("local.chat_models.{name}"), format!("{} is not a file", path.display())));
        }
        config.chat_models.insert(name, path);
    }
    for (name, path) in section.embedding_models {
        check_name("embedding_models", &name)?;
        let path = dir.join(path);
        if !path.join("model.safetensors").is_file() {
            return Err(invalid(
                format!("local.embedding_models.{name}"),
                format!("{} has no model.safetensors", path.display()),
            ));
        }
        config.embedding_models.insert(name, path);
    }
    if let Some(slots) = section.slots {
        if slots == 0 {
            return Err(invalid("local.slots", "must be greater than 0"));
        }
        config.slots = slots;
    }
    if let Some(size) = section.context_size {
        if size < 64 {
            return Err(invalid("local.context_size", "must be at least 64"));
        }
        config.context_size = size;
    }
    if section.threads == Some(0) {
        return Err(invalid("local.threads", "must be greater than 0"));
    }
    config.threads = section.threads;
    if let Some(cache_prompt) = section.cache_prompt {
        config.cache_prompt = cache_prompt;
    }
    if let Some(setting) = section.weights {
        config.weights = WeightType::from_setting(&setting).map_err(|e| invalid("local.weights", e))?;
    }
    if let Some(merge) = section.merge_adapters {
        config.merge_adapters = merge;
    }
    match section.max_loaded_adapters {
        Some(0) => return Err(invalid("local.max_loaded_adapters", "must be at least 1")),
        Some(n) => config.max_loaded_adapters = n,
        None => {}
    }
    if section.max_tokens == Some(0) {
        return Err(invalid("local.max_tokens", "must be at least 1"));
    }
    config.max_tokens = section.max_tokens;
    for (name, overrides) in section.defaults {
        let at = format!("local.defaults.{name}");
        if !config.chat_models.contains_key(&name) {
            let known: Vec<&String> = config.chat_models.keys().collect();
            return Err(invalid(at, format!("no local chat model is named {name:?} (chat models: {known:?})")));
        }
        overrides.validate().map_err(|e| invalid(&at, e))?;
        config.defaults.insert(name, overrides);
    }
    if config.is_empty() {
        tracing::info!(
            "no local models in {}: run scripts/setup-models.sh to serve local/{} offline",
            dir.display(),
            fungible_providers::local::DEFAULT_CHAT_MODEL
        );
        return Ok(None);
    }
    Ok(Some(config))
}

#[cfg(not(feature = "local"))]
pub(super) fn local_config(section: LocalSection, _env: &dyn Fn(&str) -> Option<String>) -> Result<Option<LocalConfig>, ConfigError> {
    let asks = [
        ("local.enabled", section.enabled == Some(true)),
        ("local.chat_models", !section.chat_models.is_empty()),
        ("local.embedding_models", !section.embedding_models.is_empty()),
        ("local.defaults", !section.defaults.is_empty()),
        ("local.preload", section.preload == Some(true)),
    ];
    match asks.into_iter().find(|(_, asked)| *asked) {
        Some((at, _)) if section.enabled != Some(false) => Err(invalid(at, NO_LOCAL_INFERENCE)),
        _ => Ok(None),
    }
}

/// Why a `[local]` section that asks for models fails in a build without the `local` feature.
#[cfg(not(feature = "local"))]
pub const NO_LOCAL_INFERENCE: &str = "this build has no local inference: rebuild with --features local";

