//! `POST {base}/embeddings` for OpenAI and every OpenAI-compatible server.

use fungible_types::ProviderError;
use serde::{Deserialize, Serialize};

use super::OpenAiProvider;
use crate::http;

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    input: &'a [String],
    encoding_format: &'static str,
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Item>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Item {
    #[serde(default)]
    index: usize,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
}

impl OpenAiProvider {
    /// One vector per input, in input order, and the prompt tokens the vendor counted.
    pub async fn embed(&self, model: &str, inputs: &[String]) -> Result<(Vec<Vec<f32>>, u64), ProviderError> {
        let url = format!("{}/embeddings", self.settings.base_url.trim_end_matches('/'));
        let mut rb = self.http.post(&url);
        if let Some(key) = &self.settings.api_key {
            rb = rb.bearer_auth(key.expose());
        }
        let body = serde_json::to_vec(&Request { model, input: inputs, encoding_format: "float" }).map_err(|e| {
            ProviderError::invalid_request(&self.settings.name, format!("could not encode the request: {e}"))
        })?;
        let response = http::send_json(&self.settings, rb, body, http::error_message_field, None).await?;
        let mut wire: Response = http::read_json(&self.settings, response).await?;
        if wire.data.len() != inputs.len() {
            return Err(ProviderError::malformed(
                &self.settings.name,
                format!("asked for {} embeddings, got {}", inputs.len(), wire.data.len()),
            ));
        }
        wire.data.sort_by_key(|item| item.index);
        let tokens = wire.usage.map_or(0, |u| u.prompt_tokens);
        Ok((wire.data.into_iter().map(|item| item.embedding).collect(), tokens))
    }
}
