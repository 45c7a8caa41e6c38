//! `[auth]` and `[state]`: virtual keys and where shared counters live. Validated here with
//! the rest of the config so a bad section fails at start; enforced by `fungible-server`
//! (`auth.rs`) over `fungible-access`.

use std::time::Duration;

use fungible_providers::Secret;
use serde::Deserialize;

use super::error::{ConfigError, invalid};

/// Where the admin key is read from unless `[auth] admin_key_env` says otherwise.
pub const DEFAULT_ADMIN_KEY_ENV: &str = "FUNGIBLE_ADMIN_KEY";
/// Shortest admin key accepted: a guessable admin key would open every budget.
pub const MIN_ADMIN_KEY_LEN: usize = 16;

/// `[auth]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Every route but `open_routes` needs a key.
    pub enabled: Option<bool>,
    /// The environment variable holding the admin key (never the key itself in a file).
    pub admin_key_env: Option<String>,
    /// Paths served without a key (`*` globs).
    pub open_routes: Option<Vec<String>>,
    /// How long a key lookup is trusted: the bound on how long a key revoked through one
    /// instance still works on another.
    pub key_cache_ms: Option<u64>,
    /// Output tokens assumed for a budget estimate when a request sets no `max_tokens`.
    pub default_output_tokens: Option<u32>,
}

/// `[state]` as written: state shared by several gateway instances.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// Rate-limit and budget counters (and the response cache's default Redis).
    pub redis: Option<String>,
}

/// Validated `[auth]` + `[state]`.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub enabled: bool,
    /// `None`: the admin API is off.
    pub admin_key: Option<Secret>,
    pub admin_key_env: String,
    pub open_routes: Vec<String>,
    pub key_cache: Duration,
    pub default_output_tokens: u32,
    /// `[state] redis`; `None`: counters in this process's memory.
    pub redis: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            enabled: false,
            admin_key: None,
            admin_key_env: DEFAULT_ADMIN_KEY_ENV.to_owned(),
            open_routes: default_open_routes(),
            key_cache: Duration::from_millis(500),
            default_output_tokens: 1024,
            redis: None,
        }
    }
}

fn default_open_routes() -> Vec<String> {
    vec!["/health".to_owned(), "/openapi.json".to_owned()]
}

pub(crate) fn resolve(
    auth: AuthSection,
    state: StateSection,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AuthConfig, ConfigError> {
    let defaults = AuthConfig::default();
    let admin_key_env = auth.admin_key_env.unwrap_or(defaults.admin_key_env);
    if admin_key_env.trim().is_empty() {
        return Err(invalid("auth.admin_key_env", "must name an environment variable"));
    }
    let admin_key = match env(&admin_key_env).filter(|v| !v.is_empty()) {
        Some(key) if key.len() < MIN_ADMIN_KEY_LEN => {
            // The message names the variable, never its value.
            return Err(invalid(
                "auth.admin_key_env",
                format!("{admin_key_env} is shorter than {MIN_ADMIN_KEY_LEN} characters"),
            ));
        }
        Some(key) => Some(Secret::new(key)),
        None => None,
    };
    let enabled = auth.enabled.unwrap_or(false);
    let open_routes = auth.open_routes.unwrap_or(defaults.open_routes);
    if let Some(bad) = open_routes.iter().find(|r| !r.starts_with('/') && !r.starts_with('*')) {
        return Err(invalid("auth.open_routes", format!("{bad:?} is not a path (start it with /)")));
    }
    if open_routes.iter().any(|r| r.starts_with("/admin")) {
        return Err(invalid("auth.open_routes", "the admin API always needs the admin key"));
    }
    let key_cache = match auth.key_cache_ms {
        Some(0) => return Err(invalid("auth.key_cache_ms", "must be greater than 0")),
        Some(ms) => Duration::from_millis(ms),
        None => defaults.key_cache,
    };
    let default_output_tokens = match auth.default_output_tokens {
        Some(0) => return Err(invalid("auth.default_output_tokens", "must be greater than 0")),
        Some(n) => n,
        None => defaults.default_output_tokens,
    };
    let redis = state.redis.filter(|r| !r.trim().is_empty());
    if let Some(url) = &redis
        && !(url.starts_with("redis://") || url.starts_with("rediss://"))
    {
        return Err(invalid("state.redis", "must be a redis:// or rediss:// URL"));
    }
    Ok(AuthConfig { enabled, admin_key, admin_key_env, open_routes, key_cache, default_output_tokens, redis })
}
