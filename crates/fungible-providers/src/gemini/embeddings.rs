//! `POST {base}/v1beta/models/{model}:batchEmbedContents`.

use fungible_types::ProviderError;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{GeminiProvider, error_message, url_model};
use crate::http;

#[derive(Serialize)]
struct Request {
    requests: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    embeddings: Vec<Values>,
}

#[derive(Deserialize)]
struct Values {
    values: Vec<f32>,
}

impl GeminiProvider {
    /// One vector per input, in input order. Gemini reports no token count for embeddings,
    /// so the count is 0.
    pub async fn embed(&self, model: &str, inputs: &[String]) -> Result<(Vec<Vec<f32>>, u64), ProviderError> {
        let model = url_model(&self.settings.name, model)?;
        let url = format!("{}/v1beta/models/{model}:batchEmbedContents", self.base);
        let requests = inputs
            .iter()
            .map(|text| json!({"model": format!("models/{model}"), "content": {"parts": [{"text": text}]}}))
            .collect();
        let body = serde_json::to_vec(&Request { requests }).map_err(|e| {
            ProviderError::invalid_request(&self.settings.name, format!("could not encode the request: {e}"))
        })?;
        let response = http::send_json(&self.settings, self.request(&url)?, body, error_message, None).await?;
        let wire: Response = http::read_json(&self.settings, response).await?;
        if wire.embeddings.len() != inputs.len() {
            return Err(ProviderError::malformed(
                &self.settings.name,
                format!("asked for {} embeddings, got {}", inputs.len(), wire.embeddings.len()),
            ));
        }
        Ok((wire.embeddings.into_iter().map(|e| e.values).collect(), 0))
    }
}
