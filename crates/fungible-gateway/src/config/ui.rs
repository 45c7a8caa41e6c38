//! `[ui]`: the web UI at `/ui`, served by `fungible-server` (`ui/`). Validated here with the
//! rest of the config; the session secret is read from the environment here and nowhere else.

use std::time::Duration;

use fungible_providers::Secret;
use serde::Deserialize;

use super::error::{ConfigError, invalid};

/// Where the session-signing secret is read from unless `[ui] secret_env` says otherwise.
pub const DEFAULT_UI_SECRET_ENV: &str = "FUNGIBLE_UI_SECRET";
/// Shortest session secret accepted: whoever guesses it can sign in as anyone.
pub const MIN_UI_SECRET_LEN: usize = 32;

/// `[ui]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UiSection {
    /// Serve the UI at `/ui` (default true).
    pub enabled: Option<bool>,
    /// How long a sign-in lasts, in hours (default 12, at most 720).
    pub session_hours: Option<u64>,
    /// The environment variable holding the secret that signs session cookies (default
    /// `FUNGIBLE_UI_SECRET`). Unset: a random secret per process (sessions end when it
    /// stops, and other instances do not accept them).
    pub secret_env: Option<String>,
    /// Mark the session cookie `Secure` on every response, for a gateway behind a TLS proxy
    /// that does not send `X-Forwarded-Proto: https` (default false; that header sets it).
    pub secure_cookies: Option<bool>,
    /// Where `fungible eval run` writes its runs, for the evals page (default `eval-runs`,
    /// the CLI's default, relative to the working directory).
    pub eval_runs_dir: Option<std::path::PathBuf>,
}

/// Validated `[ui]`.
#[derive(Debug, Clone)]
pub struct UiConfig {
    pub enabled: bool,
    pub session: Duration,
    /// The session secret from `secret_env`; `None`: not set.
    pub secret: Option<Secret>,
    pub secret_env: String,
    pub secure_cookies: bool,
    pub eval_runs_dir: std::path::PathBuf,
}

impl Default for UiConfig {
    fn default() -> UiConfig {
        UiConfig {
            enabled: true,
            session: Duration::from_secs(12 * 3600),
            secret: None,
            secret_env: DEFAULT_UI_SECRET_ENV.to_owned(),
            secure_cookies: false,
            eval_runs_dir: "eval-runs".into(),
        }
    }
}

pub(crate) fn resolve(ui: UiSection, env: &dyn Fn(&str) -> Option<String>) -> Result<UiConfig, ConfigError> {
    let defaults = UiConfig::default();
    let session = match ui.session_hours {
        Some(0) => return Err(invalid("ui.session_hours", "must be greater than 0")),
        Some(h) if h > 720 => return Err(invalid("ui.session_hours", "must be at most 720 (30 days)")),
        Some(h) => Duration::from_secs(h * 3600),
        None => defaults.session,
    };
    let secret_env = ui.secret_env.unwrap_or(defaults.secret_env);
    if secret_env.trim().is_empty() {
        return Err(invalid("ui.secret_env", "must name an environment variable"));
    }
    let secret = match env(&secret_env).filter(|v| !v.is_empty()) {
        // The message names the variable, never its value.
        Some(s) if s.len() < MIN_UI_SECRET_LEN => {
            return Err(invalid("ui.secret_env", format!("{secret_env} is shorter than {MIN_UI_SECRET_LEN} characters")));
        }
        Some(s) => Some(Secret::new(s)),
        None => None,
    };
    Ok(UiConfig {
        enabled: ui.enabled.unwrap_or(true),
        session,
        secret,
        secret_env,
        secure_cookies: ui.secure_cookies.unwrap_or(false),
        eval_runs_dir: ui.eval_runs_dir.unwrap_or(defaults.eval_runs_dir),
    })
}
