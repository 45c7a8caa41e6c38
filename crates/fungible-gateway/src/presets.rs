//! Built-in providers: what `PROVIDER/MODEL` means with no config at all.
//!
//! A preset is enabled when one of its key variables is set (keyless local servers: when
//! `<NAME>_BASE_URL` is set), or when the config file has a section of the same name, which
//! may override any of these defaults.

use fungible_providers::ProviderKind;

pub struct Preset {
    pub name: &'static str,
    pub kind: ProviderKind,
    pub base_url: &'static str,
    /// Variables tried in order for the API key; empty for keyless local servers.
    pub key_envs: &'static [&'static str],
    /// Models listed by `GET /v1/models` unless the config lists its own.
    pub models: &'static [&'static str],
}

impl Preset {
    /// `OPENAI_BASE_URL`, `GROQ_BASE_URL`, ...
    pub fn base_url_env(&self) -> String {
        format!("{}_BASE_URL", self.name.to_ascii_uppercase())
    }
}

use ProviderKind::{Anthropic, Gemini, OpenAi, OpenAiCompatible as Compat};

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "openai",
        kind: OpenAi,
        base_url: "https://api.openai.com/v1",
        key_envs: &["OPENAI_API_KEY"],
        models: &["gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-4.1", "gpt-4o-mini"],
    },
    Preset {
        name: "anthropic",
        kind: Anthropic,
        base_url: "https://api.anthropic.com",
        key_envs: &["ANTHROPIC_API_KEY"],
        models: &["claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5"],
    },
    Preset {
        name: "gemini",
        kind: Gemini,
        base_url: "https://generativelanguage.googleapis.com",
        key_envs: &["GEMINI_API_KEY", "GOOGLE_API_KEY"],
        models: &["gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"],
    },
    Preset { name: "groq", kind: Compat, base_url: "https://api.groq.com/openai/v1", key_envs: &["GROQ_API_KEY"], models: &[] },
    Preset { name: "together", kind: Compat, base_url: "https://api.together.xyz/v1", key_envs: &["TOGETHER_API_KEY"], models: &[] },
    Preset { name: "deepseek", kind: Compat, base_url: "https://api.deepseek.com/v1", key_envs: &["DEEPSEEK_API_KEY"], models: &["deepseek-chat", "deepseek-reasoner"] },
    Preset { name: "mistral", kind: Compat, base_url: "https://api.mistral.ai/v1", key_envs: &["MISTRAL_API_KEY"], models: &[] },
    Preset { name: "openrouter", kind: Compat, base_url: "https://openrouter.ai/api/v1", key_envs: &["OPENROUTER_API_KEY"], models: &[] },
    Preset { name: "fireworks", kind: Compat, base_url: "https://api.fireworks.ai/inference/v1", key_envs: &["FIREWORKS_API_KEY"], models: &[] },
    Preset { name: "xai", kind: Compat, base_url: "https://api.x.ai/v1", key_envs: &["XAI_API_KEY"], models: &[] },
    Preset { name: "ollama", kind: Compat, base_url: "http://localhost:11434/v1", key_envs: &[], models: &[] },
    Preset { name: "vllm", kind: Compat, base_url: "http://localhost:8000/v1", key_envs: &[], models: &[] },
    Preset { name: "llamacpp", kind: Compat, base_url: "http://localhost:8080/v1", key_envs: &[], models: &[] },
];
