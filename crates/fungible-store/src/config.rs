//! `[store]` and `[prices]`: where records go and what tokens cost.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::prices::{Price, PriceTable};
use crate::recorder::WriterPriority;

/// `[store]` as written (the gateway's config file hands it over as a raw table).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreSection {
    enabled: Option<bool>,
    /// SQLite file. Default `./fungible.db`.
    path: Option<PathBuf>,
    /// `postgres://...` (or `sqlite://...`); wins over `path`.
    url: Option<String>,
    /// Records buffered while the store is slow or down; more are dropped (and counted).
    queue_capacity: Option<usize>,
    /// Bytes those records may hold at most (their JSON, and about 512 bytes each for the
    /// rest); more are dropped (and counted). Default 8 MiB.
    queue_bytes: Option<usize>,
    /// Records written per transaction at most.
    batch_size: Option<usize>,
    /// Longest a record waits for its batch to fill, in milliseconds.
    flush_interval_ms: Option<u64>,
    /// How the recorder's writer is scheduled (Linux): `"idle"` (default: only on CPU time
    /// nothing else wants), or a nice value 0-19 (0: the priority of request handling).
    writer_priority: Option<WriterPrioritySetting>,
    /// The earlier name of `writer_priority = N` (a nice value); still read.
    writer_nice: Option<i32>,
    /// Keep each upstream call's raw request and response bodies (off by default).
    raw_bodies: Option<bool>,
    /// Bytes kept of each raw body at most (default 65536).
    raw_bodies_max_bytes: Option<usize>,
    /// Write each answer's record to the store before the answer's last byte (off: batched,
    /// at most `flush_interval` behind).
    durable: Option<bool>,
    /// Bytes (estimated) one record's request and response may hold; larger ones are
    /// stored cut and marked `truncated` (default 262144).
    max_record_bytes: Option<usize>,
}

/// `writer_priority` as written: `"idle"` or a nice value.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum WriterPrioritySetting {
    Nice(i32),
    Named(String),
}

/// The validated `[store]`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    pub enabled: bool,
    /// A sqlx URL: `sqlite://PATH?mode=rwc` or `postgres://...`.
    pub url: String,
    pub queue_capacity: usize,
    pub queue_bytes: usize,
    pub batch_size: usize,
    pub flush_interval: Duration,
    /// How the writer thread is scheduled.
    pub writer_priority: WriterPriority,
    /// `raw_bodies`: the cap on each raw body kept; `None`: raw bodies are not kept.
    pub raw_bodies: Option<usize>,
    /// Every answer's record is committed before the answer ends (see the README's Security
    /// section for each mode's loss bound).
    pub durable: bool,
    /// What one record's request and response may hold (see `Bodies::capped`).
    pub max_record_bytes: usize,
}

/// Default cap on each raw provider body kept with `[store] raw_bodies = true`.
pub const DEFAULT_RAW_BODIES_MAX_BYTES: usize = 64 << 10;

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            enabled: true,
            url: sqlite_url(&PathBuf::from("fungible.db")),
            queue_capacity: 10_000,
            queue_bytes: crate::recorder::DEFAULT_QUEUE_BYTES,
            batch_size: 256,
            flush_interval: Duration::from_millis(200),
            writer_priority: WriterPriority::Idle,
            raw_bodies: None,
            durable: false,
            max_record_bytes: crate::cap::DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{at}: {message}")]
pub struct StoreConfigError {
    pub at: String,
    pub message: String,
}

fn err(at: &str, message: impl Into<String>) -> StoreConfigError {
    StoreConfigError {
        at: at.to_owned(),
        message: message.into(),
    }
}

/// The sqlx URL of a SQLite file, created when missing.
pub fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

impl StoreConfig {
    /// Validates `[store]` (absent: the defaults).
    pub fn from_toml(table: Option<toml::Table>) -> Result<StoreConfig, StoreConfigError> {
        let section: StoreSection = match table {
            Some(t) => toml::Value::Table(t)
                .try_into()
                .map_err(|e: toml::de::Error| err("store", e.message()))?,
            None => StoreSection::default(),
        };
        let mut config = StoreConfig {
            enabled: section.enabled.unwrap_or(true),
            durable: section.durable.unwrap_or(false),
            ..StoreConfig::default()
        };
        if let Some(path) = section.path {
            config.url = sqlite_url(&path);
        }
        if let Some(url) = section.url {
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
            {
                return Err(err("store.url", "expected postgres://... or sqlite://..."));
            }
            config.url = url;
        }
        if let Some(n) = section.queue_capacity {
            if n == 0 {
                return Err(err("store.queue_capacity", "must be at least 1"));
            }
            config.queue_capacity = n;
        }
        if let Some(n) = section.queue_bytes {
            if n < 1 << 16 {
                return Err(err("store.queue_bytes", "must be at least 65536"));
            }
            config.queue_bytes = n;
        }
        if let Some(n) = section.batch_size {
            if n == 0 {
                return Err(err("store.batch_size", "must be at least 1"));
            }
            config.batch_size = n;
        }
        if let Some(ms) = section.flush_interval_ms {
            config.flush_interval = Duration::from_millis(ms);
        }
        let priority = match (section.writer_priority, section.writer_nice) {
            (Some(_), Some(_)) => {
                return Err(err("store.writer_nice", "is the earlier name of store.writer_priority: set only writer_priority"));
            }
            (None, Some(nice)) => {
                tracing::warn!("[store] writer_nice is now writer_priority (a nice value or \"idle\")");
                Some(WriterPrioritySetting::Nice(nice))
            }
            (priority, None) => priority,
        };
        match priority {
            // Durable answers wait for the writer: it must not wait for spare CPU.
            None if config.durable => config.writer_priority = WriterPriority::Nice(0),
            None => {}
            Some(WriterPrioritySetting::Nice(nice)) if (0..=19).contains(&nice) => {
                config.writer_priority = WriterPriority::Nice(nice);
            }
            Some(WriterPrioritySetting::Named(name)) if name == "idle" => config.writer_priority = WriterPriority::Idle,
            Some(_) => return Err(err("store.writer_priority", "must be \"idle\" or a nice value between 0 and 19")),
        }
        if let Some(n) = section.max_record_bytes {
            if n < 4096 {
                return Err(err("store.max_record_bytes", "must be at least 4096"));
            }
            if n > config.queue_bytes {
                return Err(err("store.max_record_bytes", "must be at most store.queue_bytes"));
            }
            config.max_record_bytes = n;
        } else {
            // A small queue caps its records at its own size.
            config.max_record_bytes = config.max_record_bytes.min(config.queue_bytes);
        }
        if section.raw_bodies_max_bytes == Some(0) {
            return Err(err("store.raw_bodies_max_bytes", "must be at least 1"));
        }
        if section.raw_bodies.unwrap_or(false) {
            config.raw_bodies = Some(
                section
                    .raw_bodies_max_bytes
                    .unwrap_or(DEFAULT_RAW_BODIES_MAX_BYTES),
            );
        } else if section.raw_bodies_max_bytes.is_some() {
            return Err(err(
                "store.raw_bodies_max_bytes",
                "only used with raw_bodies = true",
            ));
        }
        Ok(config)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceSection {
    input: f64,
    output: f64,
    cached_read: Option<f64>,
    cache_write: Option<f64>,
}

impl PriceTable {
    /// The built-in table with `[prices."PROVIDER/MODEL"]` entries laid over it.
    pub fn from_toml(table: Option<toml::Table>) -> Result<PriceTable, StoreConfigError> {
        let mut prices = PriceTable::builtin();
        for (key, value) in table.unwrap_or_default() {
            let at = format!("prices.{key:?}");
            if !key.contains('/') {
                return Err(err(
                    &at,
                    "expected a PROVIDER/MODEL key, for example \"openai/gpt-5\"",
                ));
            }
            let s: PriceSection = value
                .try_into()
                .map_err(|e: toml::de::Error| err(&at, e.message()))?;
            for (name, v) in [
                ("input", Some(s.input)),
                ("output", Some(s.output)),
                ("cached_read", s.cached_read),
                ("cache_write", s.cache_write),
            ] {
                if v.is_some_and(|v| !(v >= 0.0 && v.is_finite())) {
                    return Err(err(
                        &format!("{at}.{name}"),
                        "must be a non-negative number (USD per million tokens)",
                    ));
                }
            }
            prices.insert(
                &key,
                Price {
                    input: s.input,
                    output: s.output,
                    cached_read: s.cached_read,
                    cache_write: s.cache_write,
                },
            );
        }
        Ok(prices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Option<toml::Table> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn defaults_to_sqlite_in_the_working_directory() {
        let c = StoreConfig::from_toml(None).unwrap();
        assert!(c.enabled);
        assert_eq!(c.url, "sqlite://fungible.db?mode=rwc");
    }

    #[test]
    fn url_wins_and_unknown_fields_are_named() {
        let c =
            StoreConfig::from_toml(table("url = \"postgres://u@h/db\"\npath = \"x.db\"")).unwrap();
        assert_eq!(c.url, "postgres://u@h/db");
        let e = StoreConfig::from_toml(table("pth = \"x\""))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("store: unknown field `pth`"), "{e}");
        let e = StoreConfig::from_toml(table("queue_bytes = 10"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("store.queue_bytes:"), "{e}");
        let c = StoreConfig::from_toml(table("queue_bytes = 1048576")).unwrap();
        assert_eq!(c.queue_bytes, 1 << 20);
        assert_eq!(c.raw_bodies, None);
        let c = StoreConfig::from_toml(table("raw_bodies = true")).unwrap();
        assert_eq!(c.raw_bodies, Some(DEFAULT_RAW_BODIES_MAX_BYTES));
        let c = StoreConfig::from_toml(table("raw_bodies = true\nraw_bodies_max_bytes = 100")).unwrap();
        assert_eq!(c.raw_bodies, Some(100));
        let e = StoreConfig::from_toml(table("raw_bodies_max_bytes = 100"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("store.raw_bodies_max_bytes:"), "{e}");
        let e = StoreConfig::from_toml(table("url = \"mysql://x\""))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("store.url:"), "{e}");
        assert_eq!(StoreConfig::from_toml(None).unwrap().writer_priority, WriterPriority::Idle);
        assert_eq!(StoreConfig::from_toml(table("writer_priority = \"idle\"")).unwrap().writer_priority, WriterPriority::Idle);
        assert_eq!(StoreConfig::from_toml(table("writer_priority = 0")).unwrap().writer_priority, WriterPriority::Nice(0));
        assert_eq!(StoreConfig::from_toml(table("writer_nice = 10")).unwrap().writer_priority, WriterPriority::Nice(10));
        assert!(StoreConfig::from_toml(table("writer_nice = 10\nwriter_priority = 5")).is_err());
        assert_eq!(StoreConfig::from_toml(table("durable = true")).unwrap().writer_priority, WriterPriority::Nice(0));
        assert_eq!(
            StoreConfig::from_toml(table("durable = true\nwriter_priority = \"idle\"")).unwrap().writer_priority,
            WriterPriority::Idle
        );
        assert_eq!(StoreConfig::from_toml(table("queue_bytes = 65536")).unwrap().max_record_bytes, 65536);
        for bad in ["writer_priority = 20", "writer_priority = -1", "writer_priority = \"low\"", "writer_nice = 20"] {
            let e = StoreConfig::from_toml(table(bad)).unwrap_err().to_string();
            assert_eq!(e, "store.writer_priority: must be \"idle\" or a nice value between 0 and 19", "{bad}");
        }
        assert_eq!(StoreConfig::from_toml(None).unwrap().max_record_bytes, 256 << 10);
        assert_eq!(StoreConfig::from_toml(table("max_record_bytes = 8192")).unwrap().max_record_bytes, 8192);
        let e = StoreConfig::from_toml(table("max_record_bytes = 100")).unwrap_err().to_string();
        assert_eq!(e, "store.max_record_bytes: must be at least 4096");
        let e = StoreConfig::from_toml(table("queue_bytes = 65536\nmax_record_bytes = 131072")).unwrap_err().to_string();
        assert_eq!(e, "store.max_record_bytes: must be at most store.queue_bytes");
    }

    #[test]
    fn price_overrides_replace_and_extend() {
        let p = PriceTable::from_toml(table(
            "[\"openai/gpt-5\"]\ninput = 2.0\noutput = 20.0\n[\"acme/m1\"]\ninput = 1\noutput = 1",
        ))
        .unwrap();
        assert_eq!(p.get("openai", "gpt-5").unwrap().input, 2.0);
        assert!(p.get("acme", "m1").is_some());
        let e = PriceTable::from_toml(table("[\"gpt-5\"]\ninput = 1\noutput = 1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("PROVIDER/MODEL"), "{e}");
        let e = PriceTable::from_toml(table("[\"a/b\"]\ninput = -1\noutput = 1"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("prices.\"a/b\".input:"), "{e}");
    }
}

#[cfg(test)]
mod example {
    use super::*;

    #[test]
    fn example_config_store_and_prices_are_valid() {
        let mut file: toml::Table = include_str!("../../../fungible.example.toml")
            .parse()
            .unwrap();
        let store =
            StoreConfig::from_toml(file.remove("store").and_then(|v| v.as_table().cloned()))
                .unwrap();
        assert_eq!(store.url, "sqlite://fungible.db?mode=rwc");
        let prices =
            PriceTable::from_toml(file.remove("prices").and_then(|v| v.as_table().cloned()))
                .unwrap();
        assert_eq!(
            prices.get("local-vllm", "Qwen/Qwen3-8B").unwrap().output,
            0.0
        );
    }
}
