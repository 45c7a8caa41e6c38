//! What training costs: USD per million training tokens, by provider and base model, as the
//! providers' pricing pages showed them on [`TRAINING_PRICES_AS_OF`]. A model not listed has
//! an unknown price, shown as such (never as zero).

/// When the table was read off the providers' pricing pages.
pub const TRAINING_PRICES_AS_OF: &str = "2026-12-07";

/// `(provider, base model prefix, USD per 1M training tokens)`, longest prefixes first.
const TRAINING_PRICES: &[(&str, &str, f64)] = &[
    ("openai", "gpt-4.1-nano", 1.50),
    ("openai", "gpt-4.1-mini", 5.00),
    ("openai", "gpt-4.1", 25.00),
    ("openai", "gpt-4o-mini", 3.00),
    ("openai", "gpt-4o", 25.00),
    ("openai", "gpt-3.5-turbo", 8.00),
];

/// USD per million training tokens of `model` on `provider`.
pub fn training_price(provider: &str, model: &str) -> Option<f64> {
    TRAINING_PRICES.iter().find(|(p, prefix, _)| *p == provider && model.starts_with(prefix)).map(|(_, _, price)| *price)
}

/// Epochs a job will run when its hyperparameters do not say: OpenAI's `auto` picks from
/// the dataset's size (3 for most small sets); Together, Mistral and Fireworks take 1.
pub fn default_epochs(api: crate::client::Api) -> u64 {
    match api {
        crate::client::Api::OpenAi => 3,
        crate::client::Api::Together | crate::client::Api::Mistral | crate::client::Api::Fireworks => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_unknown_is_none() {
        assert_eq!(training_price("openai", "gpt-4.1-mini-2025-04-14"), Some(5.0));
        assert_eq!(training_price("openai", "gpt-4.1-2025-04-14"), Some(25.0));
        assert_eq!(training_price("openai", "gpt-4o-mini-2024-07-18"), Some(3.0));
        assert_eq!(training_price("together", "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference"), None);
    }
}
