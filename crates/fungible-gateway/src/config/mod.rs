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

mod auth;
pub(crate) mod error;
mod local;
mod ui;

pub use self::auth::{AuthConfig, AuthSection, DEFAULT_ADMIN_KEY_ENV, StateSection};
pub use self::error::ConfigError;
pub(crate) use self::error::invalid;
#[cfg(not(feature = "local"))]
pub use self::local::NO_LOCAL_INFERENCE;
pub use self::local::LocalSection;
pub use self::ui::{DEFAULT_UI_SECRET_ENV, UiConfig, UiSection};
pub use crate::target::Target;
pub use fungible_providers::local::LocalConfig;

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
    /// `[ui]`: the web UI.
    #[serde(default)]
    pub ui: UiSection,
}

/// `[tune]`: how `serve` follows fine-tuning jobs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuneSection {
    /// Seconds between polls of the unfinished jobs (default 30, at least 1).
    pub poll_interval_secs: Option<u64>,
    /// The Fireworks account jobs run under [default: FIREWORKS_ACCOUNT_ID].
    pub fireworks_account: Option<String>,
    /// Where local jobs keep their checkpoints and adapters, one directory per job
    /// [default: `adapters`].
    pub adapters_dir: Option<std::path::PathBuf>,
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
    /// `[tune] adapters_dir`: local jobs' checkpoints and adapters.
    pub tune_adapters_dir: std::path::PathBuf,
    /// `[ui]`.
    pub ui: UiConfig,
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
        let local = if local_taken { None } else { local::local_config(file.local, env)? };
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
        let auth = auth::resolve(file.auth, file.state, env)?;
        let ui = ui::resolve(file.ui, env)?;

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
            tune_adapters_dir: file.tune.adapters_dir.clone().unwrap_or_else(|| "adapters".into()),
            ui,
        })
    }
}

/// `[local]` -> the models to serve: the built-in ones found in the models directory plus
/// the configured ones (which must exist: a bad path fails at start).
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
mod tests;
