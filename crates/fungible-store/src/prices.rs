//! The price table: USD per million tokens, by `PROVIDER/MODEL`.
//!
//! The built-in entries are list prices as of [`PRICES_AS_OF`] (standard tier, short
//! context); `[prices."PROVIDER/MODEL"]` in the config replaces or adds entries. A dated
//! snapshot (`gpt-5-2025-08-07`, `claude-sonnet-4-5-20250929`) is priced as its base model.
//! A model with no entry has an unknown cost (`None`), never zero.

use std::collections::HashMap;

use fungible_types::Usage;

/// When the built-in prices were last checked.
pub const PRICES_AS_OF: &str = "2025-09-01";

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Prompt tokens that were neither read from nor written to a cache.
    pub input: f64,
    pub output: f64,
    /// Prompt tokens read from a cache; `None`: priced as `input`.
    pub cached_read: Option<f64>,
    /// Prompt tokens written to a cache; `None`: priced as `input`.
    pub cache_write: Option<f64>,
}

impl Price {
    /// What the in-process models cost: they run here.
    pub const FREE: Price = Price { input: 0.0, output: 0.0, cached_read: None, cache_write: None };

    /// The cost of `usage` in USD (see the `Usage` conventions: `input_tokens` includes the
    /// cached parts, `output_tokens` includes reasoning).
    pub fn cost(&self, usage: &Usage) -> f64 {
        let cached = usage.cache_read_tokens.saturating_add(usage.cache_write_tokens);
        let plain = usage.input_tokens.saturating_sub(cached) as f64;
        let read = usage.cache_read_tokens as f64 * self.cached_read.unwrap_or(self.input);
        let write = usage.cache_write_tokens as f64 * self.cache_write.unwrap_or(self.input);
        (plain * self.input + read + write + usage.output_tokens as f64 * self.output) / 1e6
    }
}

#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    /// `provider/model` -> price.
    entries: HashMap<String, Price>,
}

const fn p(input: f64, output: f64, cached_read: Option<f64>, cache_write: Option<f64>) -> Price {
    Price {
        input,
        output,
        cached_read,
        cache_write,
    }
}

/// `(PROVIDER/MODEL, price)`, list prices as of [`PRICES_AS_OF`].
const BUILTIN: &[(&str, Price)] = &[
    // OpenAI
    ("openai/gpt-5", p(1.25, 10.0, Some(0.125), None)),
    ("openai/gpt-5-mini", p(0.25, 2.0, Some(0.025), None)),
    ("openai/gpt-5-nano", p(0.05, 0.40, Some(0.005), None)),
    ("openai/gpt-5-chat-latest", p(1.25, 10.0, Some(0.125), None)),
    ("openai/gpt-4.1", p(2.0, 8.0, Some(0.50), None)),
    ("openai/gpt-4.1-mini", p(0.40, 1.60, Some(0.10), None)),
    ("openai/gpt-4.1-nano", p(0.10, 0.40, Some(0.025), None)),
    ("openai/gpt-4o", p(2.50, 10.0, Some(1.25), None)),
    ("openai/gpt-4o-mini", p(0.15, 0.60, Some(0.075), None)),
    ("openai/o3", p(2.0, 8.0, Some(0.50), None)),
    ("openai/o3-mini", p(1.10, 4.40, Some(0.55), None)),
    ("openai/o4-mini", p(1.10, 4.40, Some(0.275), None)),
    // Anthropic (cache writes: the 5-minute price)
    (
        "anthropic/claude-opus-4-1",
        p(15.0, 75.0, Some(1.50), Some(18.75)),
    ),
    (
        "anthropic/claude-opus-4",
        p(15.0, 75.0, Some(1.50), Some(18.75)),
    ),
    (
        "anthropic/claude-sonnet-4-5",
        p(3.0, 15.0, Some(0.30), Some(3.75)),
    ),
    (
        "anthropic/claude-sonnet-4",
        p(3.0, 15.0, Some(0.30), Some(3.75)),
    ),
    (
        "anthropic/claude-3-7-sonnet",
        p(3.0, 15.0, Some(0.30), Some(3.75)),
    ),
    (
        "anthropic/claude-haiku-4-5",
        p(1.0, 5.0, Some(0.10), Some(1.25)),
    ),
    (
        "anthropic/claude-3-5-haiku",
        p(0.80, 4.0, Some(0.08), Some(1.0)),
    ),
    // Gemini (prompts up to 200k tokens)
    ("gemini/gemini-2.5-pro", p(1.25, 10.0, Some(0.31), None)),
    ("gemini/gemini-2.5-flash", p(0.30, 2.50, Some(0.075), None)),
    (
        "gemini/gemini-2.5-flash-lite",
        p(0.10, 0.40, Some(0.025), None),
    ),
    ("gemini/gemini-2.0-flash", p(0.10, 0.40, Some(0.025), None)),
    ("gemini/gemini-2.0-flash-lite", p(0.075, 0.30, None, None)),
    // Open-model hosts
    ("groq/llama-3.3-70b-versatile", p(0.59, 0.79, None, None)),
    ("groq/llama-3.1-8b-instant", p(0.05, 0.08, None, None)),
    ("groq/openai/gpt-oss-120b", p(0.15, 0.75, None, None)),
    ("groq/openai/gpt-oss-20b", p(0.10, 0.50, None, None)),
    (
        "together/meta-llama/Llama-3.3-70B-Instruct-Turbo",
        p(0.88, 0.88, None, None),
    ),
    (
        "together/deepseek-ai/DeepSeek-V3",
        p(1.25, 1.25, None, None),
    ),
    (
        "fireworks/accounts/fireworks/models/llama-v3p3-70b-instruct",
        p(0.90, 0.90, None, None),
    ),
    ("deepseek/deepseek-chat", p(0.27, 1.10, Some(0.07), None)),
    (
        "deepseek/deepseek-reasoner",
        p(0.55, 2.19, Some(0.14), None),
    ),
    ("mistral/mistral-large-latest", p(2.0, 6.0, None, None)),
    ("mistral/mistral-small-latest", p(0.10, 0.30, None, None)),
    ("xai/grok-4", p(3.0, 15.0, Some(0.75), None)),
    ("xai/grok-3-mini", p(0.30, 0.50, Some(0.075), None)),
];

impl PriceTable {
    /// The built-in prices.
    pub fn builtin() -> PriceTable {
        PriceTable {
            entries: BUILTIN.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        }
    }

    /// An empty table (every cost unknown).
    pub fn empty() -> PriceTable {
        PriceTable::default()
    }

    pub fn insert(&mut self, key: &str, price: Price) {
        self.entries.insert(key.to_owned(), price);
    }

    /// The price of `provider/model`, or of the model it is a dated snapshot of; `local/*`
    /// (the in-process models) is free. The one answer to what a model costs: budgets, the
    /// records, the `cheapest` strategy and evals all ask here.
    pub fn get(&self, provider: &str, model: &str) -> Option<Price> {
        if provider == LOCAL_PROVIDER {
            return Some(Price::FREE);
        }
        let key = format!("{provider}/{model}");
        if let Some(price) = self.entries.get(&key) {
            return Some(*price);
        }
        // `gpt-5-2025-08-07` -> `gpt-5`, `claude-sonnet-4-5-20250929` -> `claude-sonnet-4-5`:
        // the longest entry that the key extends with `-` and a date.
        self.entries
            .iter()
            .filter(|(k, _)| {
                key.strip_prefix(k.as_str())
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(is_date_suffix)
            })
            .max_by_key(|(k, _)| k.len())
            .map(|(_, v)| *v)
    }

    /// The cost of `usage` on `provider/model`; `None` when the price is unknown.
    pub fn cost(&self, provider: &str, model: &str, usage: &Usage) -> Option<f64> {
        self.get(provider, model).map(|p| p.cost(usage))
    }
}

/// The provider name of the in-process models (`local/MODEL`; `fungible_providers::local::NAME`).
pub const LOCAL_PROVIDER: &str = "local";

/// `2025-08-07`, `20250929`, `latest`.
fn is_date_suffix(s: &str) -> bool {
    let digits: String = s.chars().filter(|c| *c != '-').collect();
    s == "latest" || (digits.len() == 8 && digits.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_models_cost_nothing_whatever_the_table_says() {
        let usage = Usage { input_tokens: 1_000, output_tokens: 500, ..Usage::default() };
        for table in [PriceTable::empty(), PriceTable::builtin()] {
            assert_eq!(table.get("local", "smollm2-135m-instruct"), Some(Price::FREE));
            assert_eq!(table.cost("local", "any-model", &usage), Some(0.0));
        }
        assert_eq!(PriceTable::empty().cost("openai", "gpt-5", &usage), None, "unknown stays unknown");
    }

    #[test]
    fn cost_of_cache_counts_near_u64_max_does_not_overflow() {
        let price = Price { input: 1.0, output: 1.0, cached_read: None, cache_write: None };
        let usage = Usage { cache_read_tokens: u64::MAX, cache_write_tokens: 1, ..Usage::default() };
        assert!(price.cost(&usage).is_finite());
    }

    #[test]
    fn cost_splits_cached_input_and_counts_output() {
        let t = PriceTable::builtin();
        let usage = Usage {
            input_tokens: 1_000_000,
            output_tokens: 100_000,
            cache_read_tokens: 400_000,
            cache_write_tokens: 100_000,
            reasoning_tokens: 50_000,
        };
        // 500k plain * 3 + 400k * 0.3 + 100k * 3.75 + 100k * 15, per million.
        let c = t.cost("anthropic", "claude-sonnet-4-5", &usage).unwrap();
        assert!((c - (1.5 + 0.12 + 0.375 + 1.5)).abs() < 1e-9, "{c}");
    }

    #[test]
    fn dated_snapshots_take_their_base_price_and_unknown_is_none() {
        let t = PriceTable::builtin();
        assert_eq!(
            t.get("openai", "gpt-5-2025-08-07"),
            t.get("openai", "gpt-5")
        );
        assert_eq!(
            t.get("openai", "gpt-5-mini-2025-08-07"),
            t.get("openai", "gpt-5-mini")
        );
        assert_eq!(
            t.get("anthropic", "claude-sonnet-4-5-20250929"),
            t.get("anthropic", "claude-sonnet-4-5")
        );
        assert_eq!(t.get("openai", "gpt-5-turbo"), None);
        assert_eq!(t.cost("acme", "m1", &Usage::default()), None);
    }
}
