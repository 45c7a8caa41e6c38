//! Configuration, loaded in two phases: the TOML file as written ([`ConfigFile`], serde with
//! `deny_unknown_fields`) is merged with the built-in provider presets and the environment
//! into a validated [`GatewayConfig`]. Every error names the config path it is about, and a
//! bad config fails at start, never mid-request. Secrets are read from the environment here
//! and nowhere else.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use fungible_providers::openai::{MaxTokensField, OpenAiFlavor};
use fungible_providers::{ProviderKind, Secret};
use serde::Deserialize;

use crate::presets::{PRESETS, Preset};

pub use crate::auth_config::{AuthConfig, AuthSection, DEFAULT_ADMIN_KEY_ENV, StateSection};
pub use fungible_providers::local::LocalConfig;
use fungible_providers::local::Overrides as LocalOverrides;
#[cfg(feature = "local")]
use fungible_providers::local::WeightType;

/// The config file as written. Every field is optional: an empty file (or none) is valid.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderSection>,
    #[serde(default)]
    pub models: BTreeMap<String, ModelSection>,
    #[serde(default)]
    pub routing: RoutingSection,
    #[serde(default)]
    pub local: LocalSection,
    /// `[store]`, validated by `fungible-store` (the gateway does not record).
    pub store: Option<toml::Table>,
    /// `[prices."PROVIDER/MODEL"]`, validated by `fungible-store`.
    pub prices: Option<toml::Table>,
    /// `[telemetry]`: OpenTelemetry export, validated by `fungible-telemetry`.
    pub telemetry: Option<toml::Table>,
    /// `[cache]`: the response cache, validated by `fungible-cache`.
    pub cache: Option<toml::Table>,
    /// `[auth]`: virtual keys, enforced by `fungible-server`.
    #[serde(default)]
    pub auth: AuthSection,
    /// `[state]`: where state shared by several instances lives (Redis).
    #[serde(default)]
    pub state: StateSection,
    /// `[tune]`: fine-tuning jobs.
    #[serde(default)]
    pub tune: TuneSection,
}

/// `[tune]`: how `serve` follows fine-tuning jobs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuneSection {
    /// Seconds between polls of the unfinished jobs (default 30, at least 1).
    pub poll_interval_secs: Option<u64>,
    /// The Fireworks account jobs run under [default: FIREWORKS_ACCOUNT_ID].
    pub fireworks_account: Option<String>,
}

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
    /// Cap on generated tokens when a request sets no `max_tokens`. Default: 512.
    pub max_tokens: Option<u32>,
    /// `[local.defaults.MODEL]`: what a request that leaves a parameter out gets, instead of
    /// the model family's recommended value.
    #[serde(default)]
    pub defaults: BTreeMap<String, LocalOverrides>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub host: Option<String>,
    pub port: Option<u16>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: Option<usize>,
    /// The memory all request bodies in flight may take together, in bytes: their bytes plus
    /// an estimate of what parsing their JSON takes. A request over what is free is refused
    /// with 503 (`Retry-After: 1`); one over the whole of it with 413.
    pub max_inflight_body_bytes: Option<usize>,
    /// Deadline for a whole non-streamed request, and for a stream's first response.
    pub request_timeout_secs: Option<u64>,
    pub connect_timeout_secs: Option<u64>,
    /// Threads serving requests. Default: one per CPU core.
    pub worker_threads: Option<usize>,
    /// With `[auth] enabled = false`, the `Host` (and `Origin`) names served besides the
    /// loopback ones (`localhost`, `127.0.0.1`, `[::1]`), any port: exact names or `*` globs.
    pub allowed_hosts: Option<Vec<String>>,
    /// A request's head (request line and headers) must arrive within this, counted from the
    /// connection's opening or, on a kept-alive connection, from its first byte.
    pub header_read_timeout_ms: Option<u64>,
    /// A request's body must arrive within this, counted from the end of its head.
    pub body_read_timeout_ms: Option<u64>,
    /// A kept-alive connection with no request for this long is closed, and so is one whose
    /// client reads nothing of its response for this long.
    pub idle_timeout_ms: Option<u64>,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: Option<usize>,
    /// After SIGTERM or Ctrl-C: how long in-flight requests may take to finish before the
    /// remaining connections are closed.
    pub shutdown_timeout_ms: Option<u64>,
}

/// How the server treats client connections (`[server]`), validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_millis(DEFAULT_HEADER_READ_TIMEOUT_MS),
            body_read_timeout: Duration::from_millis(DEFAULT_BODY_READ_TIMEOUT_MS),
            idle_timeout: Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shutdown_timeout: Duration::from_millis(DEFAULT_SHUTDOWN_TIMEOUT_MS),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSection {
    /// `openai`, `openai_compatible`, `anthropic` or `gemini`. Defaults to the preset's kind
    /// for a built-in name, else `openai_compatible`.
    pub kind: Option<String>,
    pub base_url: Option<String>,
    /// Name of the environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// Extra headers sent on every request (values never print: they may be credentials).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Models listed by `GET /v1/models` for this provider.
    pub models: Option<Vec<String>>,
    /// OpenAI-compatible only: does the server accept the `developer` role?
    pub developer_role: Option<bool>,
    /// OpenAI-compatible only: `max_tokens` or `max_completion_tokens`.
    pub max_tokens_field: Option<String>,
    /// OpenAI-compatible only: does the server accept `stream_options.include_usage`?
    pub stream_usage: Option<bool>,
    /// OpenAI-compatible only: how the server continues a trailing assistant message:
    /// `"prefix"` (DeepSeek, Mistral), `"continue_final_message"` (vLLM, SGLang) or `"none"`.
    pub prefill: Option<String>,
    /// Anthropic only: `max_tokens` sent when the client gives none.
    pub default_max_tokens: Option<u32>,
    /// Set to false to switch off a built-in provider even when its key is set.
    pub enabled: Option<bool>,
}

pub use crate::routing::config::{ModelSection, RouteConfig, RoutingConfig, RoutingSection};

/// A validated configuration, ready to build a gateway from.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub host: String,
    pub port: u16,
    pub max_body_bytes: usize,
    /// `[server] max_inflight_body_bytes`, validated.
    pub max_inflight_body_bytes: usize,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub worker_threads: usize,
    /// Timeouts, the connection cap and the shutdown deadline.
    pub connections: ConnectionLimits,
    /// `[server] allowed_hosts`, lowercased.
    pub allowed_hosts: Vec<String>,
    pub providers: Vec<ProviderConfig>,
    /// Alias -> its route: targets, strategy, retries, breaker.
    pub routes: BTreeMap<String, RouteConfig>,
    /// `[routing]`: limits over all routes.
    pub routing: RoutingConfig,
    /// The in-process models; `None` when there are none (no models directory).
    pub local: Option<LocalConfig>,
    /// `[local] preload`.
    pub preload_local: bool,
    /// `[auth]` and `[state]`.
    pub auth: AuthConfig,
    /// `[tune] poll_interval_secs`.
    pub tune_poll_interval: Duration,
    /// `[tune] fireworks_account`, else FIREWORKS_ACCOUNT_ID.
    pub tune_fireworks_account: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub api_key: Option<Secret>,
    /// The variable the key was expected in, for messages.
    pub api_key_env: Option<String>,
    pub headers: Vec<(String, Secret)>,
    pub models: Vec<String>,
    pub flavor: OpenAiFlavor,
    pub default_max_tokens: u32,
}

/// A provider and the provider's own model name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub provider: String,
    pub model: String,
}

impl Target {
    /// Splits `PROVIDER/MODEL` at the first `/` (the model part may contain more).
    pub fn parse(text: &str) -> Option<Target> {
        let (provider, model) = text.split_once('/')?;
        if provider.is_empty() || model.is_empty() {
            return None;
        }
        Some(Target { provider: provider.to_owned(), model: model.to_owned() })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{at}: {message}")]
    Invalid { at: String, message: String },
}

pub(crate) fn invalid(at: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { at: at.into(), message: message.into() }
}

pub const DEFAULT_HOST: &str = "127.0.0.1";
pub const DEFAULT_PORT: u16 = 4000;
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Eight bodies of the largest default size, as text (each costs about twice its size to
/// parse); at least twice `max_body_bytes` when that is raised.
pub const DEFAULT_MAX_INFLIGHT_BODY_BYTES: usize = 256 * 1024 * 1024;
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 600;
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
/// Ample for any client that means to send a request; a slowloris connection holds its slot
/// no longer than this.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// A whole `max_body_bytes` (32 MiB) body over a ~5 Mbit/s link.
pub const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 60_000;
/// Longer than SDKs keep idle pooled connections (httpx 5 s, undici 4 s), as nginx's 75 s.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Each connection may also hold an upstream connection: 4,096 of each fit in the usual hard
/// limit on open files (raised to at start), and far exceed what one instance serves.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Leaves 10 s of Kubernetes' default 30 s grace period to write the recorder's queue.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 20_000;

impl ConfigFile {
    pub fn parse(text: &str, path: &str) -> Result<ConfigFile, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })
    }

    pub fn read(path: &Path) -> Result<ConfigFile, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        ConfigFile::parse(&text, &shown)
    }
}

impl GatewayConfig {
    /// Each alias with its route's first target (derived from `routes`).
    pub fn aliases(&self) -> impl Iterator<Item = (&String, &Target)> {
        self.routes.iter().filter_map(|(alias, route)| Some((alias, &route.targets.first()?.target)))
    }

    /// Validates `file` against the presets and the environment (`env` looks a variable up;
    /// pass `|k| std::env::var(k).ok()` in production, a map in tests).
    pub fn resolve(file: ConfigFile, env: &dyn Fn(&str) -> Option<String>) -> Result<GatewayConfig, ConfigError> {
        let server = file.server;
        let max_body_bytes = server.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes", "must be greater than 0"));
        }
        // A body of the largest size, as text, takes about twice its size once parsed.
        let least_inflight = max_body_bytes.saturating_mul(2);
        let max_inflight_body_bytes = match server.max_inflight_body_bytes {
            None => DEFAULT_MAX_INFLIGHT_BODY_BYTES.max(least_inflight),
            Some(n) if n < least_inflight => {
                return Err(invalid(
                    "server.max_inflight_body_bytes",
                    format!("must be at least twice server.max_body_bytes ({least_inflight}): a body of the largest size takes about twice its size to parse"),
                ));
            }
            Some(n) => n,
        };
        let request_timeout = nonzero_secs(server.request_timeout_secs, DEFAULT_REQUEST_TIMEOUT_SECS, "server.request_timeout_secs")?;
        let connect_timeout = nonzero_secs(server.connect_timeout_secs, DEFAULT_CONNECT_TIMEOUT_SECS, "server.connect_timeout_secs")?;
        let worker_threads = match server.worker_threads {
            Some(0) => return Err(invalid("server.worker_threads", "must be greater than 0")),
            Some(n) => n,
            None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        };
        let connections = ConnectionLimits {
            header_read_timeout: nonzero_ms(server.header_read_timeout_ms, DEFAULT_HEADER_READ_TIMEOUT_MS, "server.header_read_timeout_ms")?,
            body_read_timeout: nonzero_ms(server.body_read_timeout_ms, DEFAULT_BODY_READ_TIMEOUT_MS, "server.body_read_timeout_ms")?,
            idle_timeout: nonzero_ms(server.idle_timeout_ms, DEFAULT_IDLE_TIMEOUT_MS, "server.idle_timeout_ms")?,
            max_connections: match server.max_connections {
                Some(0) => return Err(invalid("server.max_connections", "must be greater than 0")),
                Some(n) => n,
                None => DEFAULT_MAX_CONNECTIONS,
            },
            shutdown_timeout: nonzero_ms(server.shutdown_timeout_ms, DEFAULT_SHUTDOWN_TIMEOUT_MS, "server.shutdown_timeout_ms")?,
        };
        let allowed_hosts = allowed_hosts(server.allowed_hosts.unwrap_or_default())?;

        let mut providers = Vec::new();
        // A `[providers.local]` section (an OpenAI-compatible server named "local") wins over
        // the in-process models.
        let local_taken = file.providers.contains_key(fungible_providers::local::NAME);
        let preload_local = file.local.preload.unwrap_or(false);
        let tune_poll_interval = match file.tune.poll_interval_secs {
            Some(0) => return Err(invalid("tune.poll_interval_secs", "must be at least 1")),
            Some(secs) => Duration::from_secs(secs),
            None => Duration::from_secs(30),
        };
        let tune_fireworks_account =
            file.tune.fireworks_account.clone().or_else(|| env("FIREWORKS_ACCOUNT_ID")).filter(|a| !a.trim().is_empty());
        let local = if local_taken { None } else { local_config(file.local, env)? };
        let mut sections = file.providers;
        // Built-in presets: enabled by their key (or base URL) in the environment, or by a
        // section of the same name.
        for preset in PRESETS {
            let section = sections.remove(preset.name);
            let configured = section.is_some();
            let section = section.unwrap_or_default();
            if section.enabled == Some(false) {
                continue;
            }
            let key = preset.key_envs.iter().find_map(|k| env(k).filter(|v| !v.is_empty()));
            let base_env = env(&preset.base_url_env()).filter(|v| !v.is_empty());
            let enabled = configured || key.is_some() || (preset.key_envs.is_empty() && base_env.is_some());
            if enabled {
                providers.push(provider_config(preset.name, Some(preset), section, env)?);
            }
        }
        for (name, section) in sections {
            if section.enabled == Some(false) {
                continue;
            }
            providers.push(provider_config(&name, None, section, env)?);
        }

        let enabled = |name: &str| {
            providers.iter().any(|p| p.name == name) || (local.is_some() && name == fungible_providers::local::NAME)
        };
        let (routing, routes) = crate::routing::config::resolve(file.models, file.routing, &enabled)?;
        let auth = crate::auth_config::resolve(file.auth, file.state, env)?;

        Ok(GatewayConfig {
            host: server.host.unwrap_or_else(|| DEFAULT_HOST.to_owned()),
            port: server.port.unwrap_or(DEFAULT_PORT),
            max_body_bytes,
            max_inflight_body_bytes,
            request_timeout,
            connect_timeout,
            worker_threads,
            connections,
            allowed_hosts,
            providers,
            routes,
            routing,
            local,
            preload_local,
            auth,
            tune_poll_interval,
            tune_fireworks_account,
        })
    }
}

/// `[local]` -> the models to serve: the built-in ones found in the models directory plus
/// the configured ones (which must exist: a bad path fails at start).
#[cfg(feature = "local")]
fn local_config(section: LocalSection, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<LocalConfig>, ConfigError> {
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

fn nonzero_ms(value: Option<u64>, default: u64, at: &str) -> Result<Duration, ConfigError> {
    match value.unwrap_or(default) {
        0 => Err(invalid(at, "must be greater than 0")),
        ms => Ok(Duration::from_millis(ms)),
    }
}

/// `[server] allowed_hosts`: host names as a browser sends them, without scheme or port.
fn allowed_hosts(patterns: Vec<String>) -> Result<Vec<String>, ConfigError> {
    patterns
        .into_iter()
        .enumerate()
        .map(|(i, pattern)| {
            // A port or a scheme would never match: names are compared without them.
            let bad = pattern.is_empty()
                || pattern.contains(['/', ' ', '\t'])
                || (pattern.contains(':') && !pattern.starts_with('['));
            if bad {
                return Err(invalid(
                    format!("server.allowed_hosts[{i}]"),
                    format!("{pattern:?} is not a host name (write it without scheme, path or port: \"gateway.internal\", \"*.example.com\")"),
                ));
            }
            Ok(pattern.to_ascii_lowercase())
        })
        .collect()
}

/// `[local]` in a build without the `local` feature: nothing is served. A section that asks
/// for models (names them, sets their defaults, preloads them or sets `enabled = true`) is an
/// error rather than silently ignored; the tuning settings are accepted, so one config file
/// serves both builds.
#[cfg(not(feature = "local"))]
fn local_config(section: LocalSection, _env: &dyn Fn(&str) -> Option<String>) -> Result<Option<LocalConfig>, ConfigError> {
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

fn nonzero_secs(value: Option<u64>, default: u64, at: &str) -> Result<Duration, ConfigError> {
    match value.unwrap_or(default) {
        0 => Err(invalid(at, "must be greater than 0")),
        secs => Ok(Duration::from_secs(secs)),
    }
}

fn provider_config(
    name: &str,
    preset: Option<&Preset>,
    section: ProviderSection,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ProviderConfig, ConfigError> {
    let at = |field: &str| format!("providers.{name}.{field}");
    if name.is_empty() || name.contains('/') || name.chars().any(char::is_whitespace) {
        return Err(invalid(format!("providers.{name:?}"), "a provider name must be non-empty, without '/' or spaces"));
    }
    let kind = match (&section.kind, preset) {
        (Some(kind), _) => parse_kind(kind).ok_or_else(|| {
            invalid(at("kind"), format!("unknown kind {kind:?} (expected openai, openai_compatible, anthropic or gemini)"))
        })?,
        (None, Some(p)) => p.kind,
        (None, None) => ProviderKind::OpenAiCompatible,
    };
    let base_url = section
        .base_url
        .clone()
        .or_else(|| preset.and_then(|p| env(&p.base_url_env()).filter(|v| !v.is_empty())))
        .or_else(|| preset.map(|p| p.base_url.to_owned()))
        .ok_or_else(|| invalid(at("base_url"), "required for a provider that is not built in"))?;
    let base_url = base_url.trim_end_matches('/').to_owned();
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        return Err(invalid(at("base_url"), format!("must start with http:// or https://, got {base_url:?}")));
    }
    let key_envs: Vec<String> = match &section.api_key_env {
        Some(var) => vec![var.clone()],
        None => preset.map(|p| p.key_envs.iter().map(|s| (*s).to_owned()).collect()).unwrap_or_default(),
    };
    let api_key = key_envs.iter().find_map(|k| env(k).filter(|v| !v.is_empty())).map(Secret::new);
    let api_key_env = key_envs.first().cloned();

    let mut flavor = match kind {
        ProviderKind::OpenAi => OpenAiFlavor::OPENAI,
        _ => OpenAiFlavor::COMPATIBLE,
    };
    if let Some(v) = section.developer_role {
        flavor.developer_role = v;
    }
    if let Some(v) = section.stream_usage {
        flavor.stream_usage = v;
    }
    flavor.prefill = match (&section.prefill, preset.map(|p| p.name)) {
        (Some(text), _) => fungible_providers::openai::Prefill::parse(text).ok_or_else(|| {
            invalid(at("prefill"), format!("expected \"prefix\", \"continue_final_message\" or \"none\", got {text:?}"))
        })?,
        (None, Some("deepseek" | "mistral")) => fungible_providers::openai::Prefill::Prefix,
        (None, Some("vllm")) => fungible_providers::openai::Prefill::ContinueFinalMessage,
        (None, _) => fungible_providers::openai::Prefill::None,
    };
    if let Some(field) = &section.max_tokens_field {
        flavor.max_tokens_field = match field.as_str() {
            "max_tokens" => MaxTokensField::MaxTokens,
            "max_completion_tokens" => MaxTokensField::MaxCompletionTokens,
            other => {
                return Err(invalid(
                    at("max_tokens_field"),
                    format!("expected \"max_tokens\" or \"max_completion_tokens\", got {other:?}"),
                ));
            }
        };
    }
    let default_max_tokens = section.default_max_tokens.unwrap_or(fungible_providers::anthropic::DEFAULT_MAX_TOKENS);
    if default_max_tokens == 0 {
        return Err(invalid(at("default_max_tokens"), "must be greater than 0"));
    }
    let mut headers = Vec::new();
    for (header, value) in section.headers {
        if http_header_name_ok(&header) && !value.expose().contains(['\r', '\n']) {
            headers.push((header, value));
        } else {
            return Err(invalid(at("headers"), format!("invalid header {header:?}")));
        }
    }
    let models = section
        .models
        .unwrap_or_else(|| preset.map(|p| p.models.iter().map(|s| (*s).to_owned()).collect()).unwrap_or_default());
    Ok(ProviderConfig {
        name: name.to_owned(),
        kind,
        base_url,
        api_key,
        api_key_env,
        headers,
        models,
        flavor: OpenAiFlavor { kind, ..flavor },
        default_max_tokens,
    })
}

fn parse_kind(kind: &str) -> Option<ProviderKind> {
    Some(match kind {
        "openai" => ProviderKind::OpenAi,
        "openai_compatible" | "openai-compatible" => ProviderKind::OpenAiCompatible,
        "anthropic" => ProviderKind::Anthropic,
        "gemini" | "google" => ProviderKind::Gemini,
        _ => return None,
    })
}

fn http_header_name_ok(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        move |k| map.get(k).cloned()
    }

    fn resolve(toml: &str, env: &[(&str, &str)]) -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::resolve(ConfigFile::parse(toml, "test.toml")?, &env_of(env))
    }

    #[test]
    fn configured_header_values_never_print() {
        let toml = "[providers.corp]\nbase_url = \"http://127.0.0.1:9/v1\"\nheaders = { x-corp-auth = \"sekrit-header-123\" }\n";
        let file = ConfigFile::parse(toml, "test.toml").unwrap();
        assert!(!format!("{file:?}").contains("sekrit"), "{file:?}");
        let cfg = GatewayConfig::resolve(file, &env_of(&[])).unwrap();
        let corp = cfg.providers.iter().find(|p| p.name == "corp").expect("provider");
        assert_eq!(corp.headers[0].0, "x-corp-auth");
        assert_eq!(corp.headers[0].1.expose(), "sekrit-header-123");
        assert!(!format!("{cfg:?}").contains("sekrit"), "{cfg:?}");
    }

    #[test]
    fn zero_config_enables_providers_whose_key_is_set() {
        let cfg = resolve("", &[("ANTHROPIC_API_KEY", "sk-ant"), ("GOOGLE_API_KEY", "g")]).unwrap();
        let names: Vec<_> = cfg.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["anthropic", "gemini"]);
        assert_eq!(cfg.port, 4000);
        assert_eq!(cfg.host, "127.0.0.1");
    }

    #[test]
    fn base_url_comes_from_the_environment() {
        let cfg = resolve("", &[("OPENAI_API_KEY", "k"), ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")]).unwrap();
        assert_eq!(cfg.providers[0].base_url, "http://127.0.0.1:9/v1");
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_path() {
        let err = resolve("[providers.openai]\nbase_urll = \"x\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("base_urll"), "{err}");
        assert!(err.contains("test.toml"), "{err}");
    }

    #[test]
    fn auth_and_state_sections_are_validated() {
        let cfg = resolve("", &[]).unwrap();
        assert!(!cfg.auth.enabled);
        assert!(cfg.auth.admin_key.is_none());
        assert_eq!(cfg.auth.open_routes, ["/health", "/openapi.json"]);

        let toml = "[auth]\nenabled = true\nkey_cache_ms = 250\n[state]\nredis = \"redis://127.0.0.1:6379\"\n";
        let cfg = resolve(toml, &[("FUNGIBLE_ADMIN_KEY", "0123456789abcdef0")]).unwrap();
        assert!(cfg.auth.enabled);
        assert_eq!(cfg.auth.admin_key.as_ref().map(|k| k.expose()), Some("0123456789abcdef0"));
        assert_eq!(cfg.auth.key_cache, Duration::from_millis(250));
        assert_eq!(cfg.auth.redis.as_deref(), Some("redis://127.0.0.1:6379"));

        // A short admin key is refused without echoing it.
        let err = resolve("", &[("FUNGIBLE_ADMIN_KEY", "short-secret")]).unwrap_err().to_string();
        assert!(err.contains("FUNGIBLE_ADMIN_KEY is shorter than 16"), "{err}");
        assert!(!err.contains("short-secret"), "{err}");
        let err = resolve("[auth]\nopen_routes = [\"/admin/keys\"]\n", &[]).unwrap_err().to_string();
        assert!(err.starts_with("auth.open_routes"), "{err}");
        let err = resolve("[state]\nredis = \"localhost\"\n", &[]).unwrap_err().to_string();
        assert!(err.starts_with("state.redis"), "{err}");
        let err = resolve("[auth]\nenable = true\n", &[]).unwrap_err().to_string();
        assert!(err.contains("enable"), "{err}");
    }

    #[test]
    fn server_connection_settings_have_defaults_and_are_validated() {
        let cfg = resolve("", &[]).unwrap();
        assert_eq!(cfg.connections, ConnectionLimits::default());
        assert_eq!(cfg.connections.header_read_timeout, Duration::from_secs(10));
        assert_eq!(cfg.connections.max_connections, 4096);
        assert!(cfg.allowed_hosts.is_empty());

        let toml = "[server]\nheader_read_timeout_ms = 500\nbody_read_timeout_ms = 700\nidle_timeout_ms = 900\nmax_connections = 8\nshutdown_timeout_ms = 1100\nallowed_hosts = [\"Gateway.Internal\", \"*.example.com\"]\n";
        let cfg = resolve(toml, &[]).unwrap();
        assert_eq!(
            cfg.connections,
            ConnectionLimits {
                header_read_timeout: Duration::from_millis(500),
                body_read_timeout: Duration::from_millis(700),
                idle_timeout: Duration::from_millis(900),
                max_connections: 8,
                shutdown_timeout: Duration::from_millis(1100),
            }
        );
        assert_eq!(cfg.allowed_hosts, ["gateway.internal", "*.example.com"]);

        let err = resolve("[server]\nmax_connections = 0\n", &[]).unwrap_err().to_string();
        assert_eq!(err, "server.max_connections: must be greater than 0");
        let err = resolve("[server]\nheader_read_timeout_ms = 0\n", &[]).unwrap_err().to_string();
        assert_eq!(err, "server.header_read_timeout_ms: must be greater than 0");
        let err = resolve("[server]\nallowed_hosts = [\"localhost\", \"http://gw.example\"]\n", &[]).unwrap_err().to_string();
        assert!(err.starts_with("server.allowed_hosts[1]: \"http://gw.example\" is not a host name"), "{err}");
    }

    #[test]
    fn the_inflight_budget_defaults_to_256_mib_and_fits_two_of_the_largest_bodies() {
        assert_eq!(resolve("", &[]).unwrap().max_inflight_body_bytes, 256 << 20);
        // Raising the body limit raises the default budget with it.
        let cfg = resolve("[server]\nmax_body_bytes = 268435456\n", &[]).unwrap();
        assert_eq!(cfg.max_inflight_body_bytes, 512 << 20);
        let cfg = resolve("[server]\nmax_body_bytes = 1024\nmax_inflight_body_bytes = 4096\n", &[]).unwrap();
        assert_eq!(cfg.max_inflight_body_bytes, 4096);
        let err = resolve("[server]\nmax_inflight_body_bytes = 1048576\n", &[]).unwrap_err().to_string();
        assert!(err.starts_with("server.max_inflight_body_bytes: must be at least twice server.max_body_bytes (67108864)"), "{err}");
    }

    #[test]
    fn custom_provider_needs_a_base_url() {
        let err = resolve("[providers.myvllm]\n", &[]).unwrap_err().to_string();
        assert_eq!(err, "providers.myvllm.base_url: required for a provider that is not built in");
    }

    #[test]
    fn alias_to_a_disabled_provider_fails_at_start() {
        let err = resolve("[models.fast]\ntarget = \"groq/llama\"\n", &[]).unwrap_err().to_string();
        assert!(err.starts_with("models.fast.target: provider \"groq\" is not enabled"), "{err}");
    }

    #[test]
    fn alias_resolves_to_configured_compatible_provider() {
        let toml = r#"
            [providers.local]
            base_url = "http://localhost:8000/v1"
            models = ["qwen"]
            [models.fast]
            target = "local/qwen"
        "#;
        let cfg = resolve(toml, &[]).unwrap();
        let fast = cfg.aliases().find(|(alias, _)| *alias == "fast").map(|(_, t)| t.clone());
        assert_eq!(fast, Some(Target { provider: "local".into(), model: "qwen".into() }));
        assert_eq!(cfg.providers[0].kind, ProviderKind::OpenAiCompatible);
        assert!(cfg.providers[0].api_key.is_none());
    }

    #[test]
    fn target_keeps_slashes_in_the_model() {
        let t = Target::parse("openrouter/anthropic/claude-sonnet-4.5").unwrap();
        assert_eq!(t.provider, "openrouter");
        assert_eq!(t.model, "anthropic/claude-sonnet-4.5");
        assert!(Target::parse("gpt-5").is_none());
        assert!(Target::parse("/x").is_none());
    }

    #[test]
    fn bad_kind_is_named() {
        let err = resolve("[providers.x]\nkind = \"azure\"\nbase_url = \"http://h\"\n", &[]).unwrap_err().to_string();
        assert!(err.starts_with("providers.x.kind: unknown kind \"azure\""), "{err}");
    }

    #[cfg(feature = "local")]
    #[test]
    fn local_models_come_from_the_models_dir() {
        let dir = std::env::temp_dir().join(format!("fungible-cfg-local-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(fungible_providers::local::DEFAULT_CHAT_FILE), b"x").unwrap();
        std::fs::write(dir.join("other.gguf"), b"x").unwrap();
        let toml = format!("[local]\nmodels_dir = {:?}\nchat_models = {{ other = \"other.gguf\" }}\n", dir.display().to_string());
        let cfg = resolve(&toml, &[]).unwrap();
        let local = cfg.local.unwrap();
        let names: Vec<_> = local.chat_models.keys().cloned().collect();
        assert_eq!(names, ["other", "smollm2-135m-instruct"]);
        assert!(local.embedding_models.is_empty());

        let toml = format!("[local]\nmodels_dir = {:?}\nchat_models = {{ gone = \"gone.gguf\" }}\n", dir.display().to_string());
        let err = resolve(&toml, &[]).unwrap_err().to_string();
        assert!(err.starts_with("local.chat_models.gone: "), "{err}");

        // Weights: converted to Q8_0 unless told otherwise; a type llama.cpp is not asked to
        // convert to is refused at start, naming the ones it can.
        let with = |weights: &str| {
            let toml = format!("[local]\nmodels_dir = {:?}\n{weights}", dir.display().to_string());
            resolve(&toml, &[]).map(|cfg| cfg.local.unwrap().weights)
        };
        assert_eq!(with("").unwrap(), Some(WeightType::Q8_0));
        assert_eq!(with("weights = \"keep\"\n").unwrap(), None);
        assert_eq!(with("weights = \"F16\"\n").unwrap(), Some(WeightType::F16));
        let err = with("weights = \"q4_k_m\"\n").unwrap_err().to_string();
        assert!(err.starts_with("local.weights: \"q4_k_m\" is not a weight type"), "{err}");
        assert!(err.contains("q8_0, q4_0, f16, or \"keep\""), "{err}");

        // Defaults for what a request leaves out: per model, checked at start.
        let defaults = |extra: &str| {
            let toml = format!("[local]\nmodels_dir = {:?}\n{extra}", dir.display().to_string());
            resolve(&toml, &[]).map(|cfg| cfg.local.unwrap())
        };
        let local = defaults("max_tokens = 256\n[local.defaults.smollm2-135m-instruct]\ntemperature = 0.4\n").unwrap();
        assert_eq!(local.max_tokens, Some(256));
        assert_eq!(local.defaults["smollm2-135m-instruct"].temperature, Some(0.4));
        let err = defaults("[local.defaults.smollm2-135m-instruct]\ntop_p = 2.0\n").unwrap_err().to_string();
        assert_eq!(err, "local.defaults.smollm2-135m-instruct: top_p must be between 0 and 1, got 2");
        let err = defaults("[local.defaults.nope]\ntemperature = 0.1\n").unwrap_err().to_string();
        assert!(err.starts_with("local.defaults.nope: no local chat model is named \"nope\""), "{err}");
        let err = defaults("max_tokens = 0\n").unwrap_err().to_string();
        assert!(err.starts_with("local.max_tokens: "), "{err}");
        let err = defaults("[local.defaults.smollm2-135m-instruct]\ntempreature = 0.1\n").unwrap_err().to_string();
        assert!(err.contains("tempreature"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_models_dir_serves_no_local_model() {
        let cfg = resolve("", &[("FUNGIBLE_MODELS_DIR", "/nonexistent/fungible-models")]).unwrap();
        assert!(cfg.local.is_none());
        #[cfg(feature = "local")]
        {
            let err = resolve("[local]\nslots = 0\n", &[]).unwrap_err().to_string();
            assert_eq!(err, "local.slots: must be greater than 0");
        }
    }

    #[cfg(not(feature = "local"))]
    #[test]
    fn without_the_local_feature_a_local_section_that_asks_for_models_is_refused() {
        for (toml, at) in [
            ("[local]\nchat_models = { qwen = \"q.gguf\" }\n", "local.chat_models"),
            ("[local]\nembedding_models = { bge = \"bge\" }\n", "local.embedding_models"),
            ("[local.defaults.smollm2-135m-instruct]\ntemperature = 0.1\n", "local.defaults"),
            ("[local]\npreload = true\n", "local.preload"),
            ("[local]\nenabled = true\n", "local.enabled"),
        ] {
            let err = resolve(toml, &[]).unwrap_err().to_string();
            assert_eq!(err, format!("{at}: this build has no local inference: rebuild with --features local"));
        }
        // Tuning alone, or a section switched off, serves nothing and is no error.
        for toml in ["[local]\nslots = 2\npreload = false\n", "[local]\nenabled = false\nchat_models = { q = \"q.gguf\" }\n"] {
            assert!(resolve(toml, &[]).unwrap().local.is_none(), "{toml}");
        }
    }

    #[test]
    fn example_config_loads() {
        let text = include_str!("../../../fungible.example.toml");
        let file = ConfigFile::parse(text, "fungible.example.toml").unwrap();
        let cfg = GatewayConfig::resolve(file, &env_of(&[])).unwrap();
        assert!(cfg.aliases().any(|(alias, _)| alias == "fast"));
        assert_eq!(cfg.routes["smart"].targets.len(), 2);
        assert_eq!(cfg.routes["ab"].sticky, Some(crate::routing::config::Sticky::User));
    }
}
