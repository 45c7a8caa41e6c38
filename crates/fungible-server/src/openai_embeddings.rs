//! The OpenAI Embeddings front end: `POST /v1/embeddings`. `input` is a string or an array
//! of strings; `encoding_format` is `float` (default) or `base64` (little-endian f32, as
//! OpenAI sends it). Served by the local embedding models (`local/all-minilm-l6-v2`);
//! embeddings through remote providers come later.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

/// Most inputs in one request (OpenAI's own limit).
const MAX_INPUTS: usize = 2048;

pub async fn embeddings(State(state): State<AppState>, context: crate::dispatch::Context, body: Body) -> Response {
    match handle(state, &context, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn handle(state: AppState, context: &crate::dispatch::RequestContext, body: Body) -> Result<Response, ApiError> {
    let bytes = crate::read_body(body, state.max_body_bytes).await?;
    let request = parse(&bytes)?;
    crate::auth::admit_unpriced(&state, context.key(), &request.model).await?;
    let (embeddings, _target) = state.gateway.embed(&request.model, request.inputs).await?;
    let data: Vec<Value> = embeddings
        .vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if request.base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": embeddings.prompt_tokens, "total_tokens": embeddings.prompt_tokens},
    });
    Ok(crate::json_response(StatusCode::OK, serde_json::to_vec(&body).unwrap_or_default()).into_response())
}

struct EmbeddingRequest {
    model: String,
    inputs: Vec<String>,
    base64: bool,
}

fn param(name: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_request(Some(name.to_owned()), message)
}

fn parse(bytes: &[u8]) -> Result<EmbeddingRequest, ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid_request(None, format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(body) = value else {
        return Err(ApiError::invalid_request(None, "the request body must be a JSON object"));
    };
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => return Err(param("model", "model must be a non-empty string")),
        None => return Err(param("model", "model is required")),
    };
    let inputs = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                _ => Err(param(
                    "input",
                    format!("input[{i}] must be a string (token arrays are not supported by local models)"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(param("input", "input must be a string or an array of strings")),
        None => return Err(param("input", "input is required")),
    };
    if inputs.is_empty() {
        return Err(param("input", "input must not be empty"));
    }
    if inputs.len() > MAX_INPUTS {
        return Err(param("input", format!("at most {MAX_INPUTS} inputs per request, got {}", inputs.len())));
    }
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(other) => {
            return Err(param("encoding_format", format!("encoding_format must be \"float\" or \"base64\", got {other}")));
        }
    };
    if let Some(d) = body.get("dimensions").filter(|d| !d.is_null()) {
        return Err(param("dimensions", format!("dimensions ({d}) is not supported by local models")));
    }
    Ok(EmbeddingRequest { model, inputs, base64 })
}
