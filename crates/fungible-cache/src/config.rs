//! `[cache]`: whether and where answers are cached, for how long, and which routes may be
//! answered by a similar (not identical) question.

use std::time::Duration;

use serde::Deserialize;

/// `[cache]` as written (the gateway's config file hands it over as a raw table).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheSection {
    enabled: Option<bool>,
    /// `memory` (default) or `redis`.
    backend: Option<String>,
    /// The Redis server of the `redis` backend. Default: the shared `[state] redis` URL,
    /// else `redis://127.0.0.1:6379`.
    redis_url: Option<String>,
    /// Prefix of every Redis key. Default `fungible:cache:`.
    key_prefix: Option<String>,
    /// How long an answer is served, in seconds. Default 3600.
    ttl_secs: Option<u64>,
    /// Memory backend: answers kept at most. Default 10,000.
    max_entries: Option<u64>,
    /// Memory backend: bytes of answers kept at most. Default 256 MiB.
    max_bytes: Option<u64>,
    /// Larger answers are not cached (either backend). Default 1 MiB.
    max_entry_bytes: Option<u64>,
    /// Cache only requests with temperature 0 or a seed (unless a request forces it).
    /// Default true.
    deterministic_only: Option<bool>,
    semantic: Option<SemanticSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SemanticSection {
    /// The models (aliases or `PROVIDER/MODEL`, as clients name them) that may be answered
    /// by a similar earlier question. Required.
    models: Vec<String>,
    /// Cosine similarity at or above which a cached answer is served. Default 0.95.
    threshold: Option<f32>,
    /// The model that embeds questions. Default `local/all-minilm-l6-v2`.
    embedding_model: Option<String>,
    /// Questions remembered per scope (virtual key, model and conversation). Default 256.
    max_entries_per_scope: Option<usize>,
    /// Scopes remembered at most. Default 10,000.
    max_scopes: Option<u64>,
}

/// Where cached answers live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    /// In this process: lost on restart, not shared.
    Memory { max_entries: u64, max_bytes: u64 },
    /// In Redis: shared by every gateway pointed at it; Redis enforces the TTL, and its own
    /// `maxmemory` policy bounds the size.
    Redis { url: String, key_prefix: String },
}

/// The validated `[cache]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub enabled: bool,
    pub backend: BackendConfig,
    pub ttl: Duration,
    pub max_entry_bytes: u64,
    pub deterministic_only: bool,
    pub semantic: Option<SemanticConfig>,
}

/// The validated `[cache.semantic]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SemanticConfig {
    pub models: Vec<String>,
    pub threshold: f32,
    pub embedding_model: String,
    pub max_entries_per_scope: usize,
    pub max_scopes: u64,
}

pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_KEY_PREFIX: &str = "fungible:cache:";
pub const DEFAULT_EMBEDDING_MODEL: &str = "local/all-minilm-l6-v2";

impl Default for CacheConfig {
    /// Enabled, in memory, one hour, deterministic requests only, no semantic matching.
    fn default() -> CacheConfig {
        CacheConfig {
            enabled: true,
            backend: BackendConfig::Memory {
                max_entries: 10_000,
                max_bytes: 256 * 1024 * 1024,
            },
            ttl: Duration::from_secs(3600),
            max_entry_bytes: 1024 * 1024,
            deterministic_only: true,
            semantic: None,
        }
    }
}

impl Default for SemanticConfig {
    fn default() -> SemanticConfig {
        SemanticConfig {
            models: Vec::new(),
            threshold: 0.95,
            embedding_model: DEFAULT_EMBEDDING_MODEL.to_owned(),
            max_entries_per_scope: 256,
            max_scopes: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{at}: {message}")]
pub struct CacheConfigError {
    pub at: String,
    pub message: String,
}

fn err(at: &str, message: impl Into<String>) -> CacheConfigError {
    CacheConfigError {
        at: at.to_owned(),
        message: message.into(),
    }
}

fn positive(value: Option<u64>, default: u64, at: &str) -> Result<u64, CacheConfigError> {
    match value {
        Some(0) => Err(err(at, "must be greater than 0")),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

impl CacheConfig {
    /// Validates `[cache]`. Absent: caching is off. Present: on unless `enabled = false`.
    /// `state_redis` is the shared Redis URL (`[state] redis`), used when the section names
    /// none.
    pub fn from_toml(
        table: Option<toml::Table>,
        state_redis: Option<&str>,
    ) -> Result<CacheConfig, CacheConfigError> {
        let Some(table) = table else {
            return Ok(CacheConfig {
                enabled: false,
                ..CacheConfig::default()
            });
        };
        let section: CacheSection = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| err("cache", e.message()))?;
        let defaults = CacheConfig::default();
        let ttl = Duration::from_secs(positive(
            section.ttl_secs,
            defaults.ttl.as_secs(),
            "cache.ttl_secs",
        )?);
        let max_entry_bytes = positive(
            section.max_entry_bytes,
            defaults.max_entry_bytes,
            "cache.max_entry_bytes",
        )?;
        let backend = match section.backend.as_deref().unwrap_or("memory") {
            "memory" => {
                if section.redis_url.is_some() {
                    return Err(err("cache.redis_url", "only used with backend = \"redis\""));
                }
                BackendConfig::Memory {
                    max_entries: positive(section.max_entries, 10_000, "cache.max_entries")?,
                    max_bytes: positive(section.max_bytes, 256 * 1024 * 1024, "cache.max_bytes")?,
                }
            }
            "redis" => {
                if section.max_entries.is_some() || section.max_bytes.is_some() {
                    return Err(err(
                        "cache.max_entries",
                        "the redis backend is bounded by Redis's own maxmemory policy; max_entries and max_bytes apply to backend = \"memory\"",
                    ));
                }
                let url = section
                    .redis_url
                    .or_else(|| state_redis.map(str::to_owned))
                    .unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned());
                if !(url.starts_with("redis://")
                    || url.starts_with("rediss://")
                    || url.starts_with("unix://"))
                {
                    return Err(err(
                        "cache.redis_url",
                        "expected redis://..., rediss://... or unix://...",
                    ));
                }
                BackendConfig::Redis {
                    url,
                    key_prefix: section
                        .key_prefix
                        .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned()),
                }
            }
            other => {
                return Err(err(
                    "cache.backend",
                    format!("expected \"memory\" or \"redis\", got {other:?}"),
                ));
            }
        };
        let semantic = match section.semantic {
            None => None,
            Some(s) => {
                let d = SemanticConfig::default();
                if s.models.is_empty() {
                    return Err(err(
                        "cache.semantic.models",
                        "name at least one model or alias",
                    ));
                }
                if let Some(m) = s.models.iter().find(|m| m.trim().is_empty()) {
                    return Err(err(
                        "cache.semantic.models",
                        format!("invalid model name {m:?}"),
                    ));
                }
                let threshold = s.threshold.unwrap_or(d.threshold);
                if !(threshold > 0.0 && threshold <= 1.0) {
                    return Err(err("cache.semantic.threshold", "must be in (0, 1]"));
                }
                let max_entries_per_scope = match s.max_entries_per_scope {
                    Some(0) => {
                        return Err(err(
                            "cache.semantic.max_entries_per_scope",
                            "must be greater than 0",
                        ));
                    }
                    Some(n) => n,
                    None => d.max_entries_per_scope,
                };
                Some(SemanticConfig {
                    models: s.models,
                    threshold,
                    embedding_model: s.embedding_model.unwrap_or(d.embedding_model),
                    max_entries_per_scope,
                    max_scopes: positive(s.max_scopes, d.max_scopes, "cache.semantic.max_scopes")?,
                })
            }
        };
        Ok(CacheConfig {
            enabled: section.enabled.unwrap_or(true),
            backend,
            ttl,
            max_entry_bytes,
            deterministic_only: section.deterministic_only.unwrap_or(true),
            semantic,
        })
    }

    /// Whether requests for `model` (as the client named it) use the semantic cache.
    pub fn semantic_for(&self, model: &str) -> Option<&SemanticConfig> {
        self.semantic
            .as_ref()
            .filter(|s| s.models.iter().any(|m| m == model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Option<toml::Table> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn absent_is_off_present_is_on_with_defaults() {
        assert!(!CacheConfig::from_toml(None, None).unwrap().enabled);
        let c = CacheConfig::from_toml(table(""), None).unwrap();
        assert_eq!(c, CacheConfig::default());
        assert!(c.enabled && c.deterministic_only);
    }

    #[test]
    fn redis_url_falls_back_to_state_then_default() {
        let c = CacheConfig::from_toml(table("backend = \"redis\""), Some("redis://10.0.0.1:6379"))
            .unwrap();
        assert_eq!(
            c.backend,
            BackendConfig::Redis {
                url: "redis://10.0.0.1:6379".into(),
                key_prefix: DEFAULT_KEY_PREFIX.into()
            }
        );
        let c = CacheConfig::from_toml(table("backend = \"redis\""), None).unwrap();
        assert!(matches!(c.backend, BackendConfig::Redis { url, .. } if url == DEFAULT_REDIS_URL));
        let c = CacheConfig::from_toml(
            table("backend = \"redis\"\nredis_url = \"redis://h:1\"\nkey_prefix = \"x:\""),
            Some("redis://s"),
        )
        .unwrap();
        assert_eq!(
            c.backend,
            BackendConfig::Redis {
                url: "redis://h:1".into(),
                key_prefix: "x:".into()
            }
        );
    }

    #[test]
    fn errors_name_the_path() {
        let cases = [
            ("ttl_secs = 0", "cache.ttl_secs: must be greater than 0"),
            (
                "backend = \"disk\"",
                "cache.backend: expected \"memory\" or \"redis\", got \"disk\"",
            ),
            (
                "backend = \"redis\"\nredis_url = \"http://x\"",
                "cache.redis_url: expected redis://..., rediss://... or unix://...",
            ),
            (
                "redis_url = \"redis://x\"",
                "cache.redis_url: only used with backend = \"redis\"",
            ),
            (
                "[semantic]\nmodels = []",
                "cache.semantic.models: name at least one model or alias",
            ),
            (
                "[semantic]\nmodels = [\"m\"]\nthreshold = 1.5",
                "cache.semantic.threshold: must be in (0, 1]",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                CacheConfig::from_toml(table(text), None)
                    .unwrap_err()
                    .to_string(),
                expected,
                "{text}"
            );
        }
        let e = CacheConfig::from_toml(table("tll_secs = 5"), None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cache: unknown field `tll_secs`"), "{e}");
    }

    #[test]
    fn semantic_applies_only_to_the_named_models() {
        let c = CacheConfig::from_toml(
            table("[semantic]\nmodels = [\"fast\"]\nthreshold = 0.9"),
            None,
        )
        .unwrap();
        let s = c.semantic_for("fast").unwrap();
        assert_eq!(s.threshold, 0.9);
        assert_eq!(s.embedding_model, DEFAULT_EMBEDDING_MODEL);
        assert!(c.semantic_for("mock/m").is_none());
    }
}
