//! The Gemini API front end: `POST /v1beta/models/{model}:{method}` (and `/v1/...`), so
//! Google's own SDKs can call any provider.
//!
//! The model is fungible's `PROVIDER/MODEL` (or an alias) and may contain `/` or arrive
//! percent-encoded; the method is what follows the last `:` (`generateContent`,
//! `streamGenerateContent`, `countTokens`). Errors, before or during a stream, are Google's
//! `{"error":{"code","message","status"}}`. Keys (`x-goog-api-key`, `?key=`) are checked by
//! `auth.rs` like every other API's.

mod embed;
pub(crate) mod request;
pub(crate) mod response;


use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;

use crate::AppState;
use crate::error::{ApiError, ApiFormat};
use response::{Framing, StreamEncoder};

pub use request::parse as parse_request;

/// `POST /v1beta/models/{*rest}` and `POST /v1/models/{*rest}`.
pub async fn models_post(
    State(state): State<AppState>,
    context: crate::dispatch::Context,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Response {
    match handle(state, &context, path, query, body).await {
        Ok(response) => response,
        Err(error) => error.into_response_for(ApiFormat::Gemini),
    }
}

/// The method a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Method {
    Generate,
    Stream(Framing),
    CountTokens,
    /// `embedContent` (one content) or `batchEmbedContents` (several).
    Embed { batch: bool },
}

/// Splits `PROVIDER/MODEL:method` (already percent-decoded) at the last `:`, since model
/// names may contain `:` themselves (`ollama/llama3:8b`).
fn split_target<'a>(rest: &'a str, query: Option<&str>) -> Result<(&'a str, Method), ApiError> {
    let Some((model, method)) = rest.rsplit_once(':') else {
        return Err(ApiError::not_found(format!(
            "no method in models/{rest}: expected models/MODEL:generateContent, :streamGenerateContent or :countTokens"
        )));
    };
    let model = model.strip_prefix("models/").unwrap_or(model);
    if model.is_empty() {
        return Err(ApiError::invalid_request(None, "the model name in the URL is empty"));
    }
    let method = match method {
        "generateContent" => Method::Generate,
        "streamGenerateContent" => {
            let sse = query.into_iter().flat_map(|q| q.split('&')).any(|pair| pair == "alt=sse");
            Method::Stream(if sse { Framing::Sse } else { Framing::JsonArray })
        }
        "countTokens" => Method::CountTokens,
        "embedContent" => Method::Embed { batch: false },
        "batchEmbedContents" => Method::Embed { batch: true },
        other => {
            return Err(ApiError::not_found(format!(
                "method {other:?} is not supported (expected generateContent, streamGenerateContent or countTokens)"
            )));
        }
    };
    Ok((model, method))
}

async fn handle(
    state: AppState,
    context: &crate::dispatch::RequestContext,
    path: Result<Path<String>, PathRejection>,
    query: Option<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let Path(rest) = path.map_err(|e| ApiError::invalid_request(None, format!("bad request path: {}", e.body_text())))?;
    let (model, method) = split_target(&rest, query.as_deref())?;
    let bytes = crate::read_body(body, state.max_body_bytes).await?;
    let (_, target) = state.gateway.resolve(model)?;
    // Gemini-only fields are kept, marked as Gemini's: the gateway drops them for any target
    // of another vendor, at the call (a route may mix vendors).
    let gemini_upstream = true;
    let provider_name = target.provider;

    let framing = match method {
        Method::Embed { batch } => {
            let texts = embed::parse(&bytes, batch)?;
            crate::auth::admit_unpriced(&state, context.key(), model).await?;
            let (embeddings, _) = state.gateway.embed(model, texts).await?;
            return Ok(crate::json_response(StatusCode::OK, embed::body(embeddings.vectors, batch)));
        }
        Method::CountTokens => {
            let parsed = request::parse_count_tokens(&bytes, model, gemini_upstream)?;
            crate::auth::admit_unpriced(&state, context.key(), model).await?;
            let total = state.gateway.count_tokens(&parsed.request).await?;
            return Ok(crate::json_response(StatusCode::OK, response::count_tokens_body(total)));
        }
        Method::Generate => {
            let parsed = request::parse(&bytes, model, false, gemini_upstream)?;
            drop(bytes);
            let answer = crate::dispatch::chat(&state, context, &parsed.request).await?;
            return Ok(crate::json_response(StatusCode::OK, response::response_body(&answer, parsed.include_thoughts, &provider_name)?));
        }
        Method::Stream(framing) => framing,
    };

    let parsed = request::parse(&bytes, model, true, gemini_upstream)?;
    drop(bytes);
    let upstream = crate::dispatch::chat_stream(&state, context, &parsed.request).await?;
    let encoder = StreamEncoder::new(framing, model, &provider_name, parsed.include_thoughts);
    Ok(crate::streaming::response(upstream, encoder, framing.content_type()))
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_and_method_split_at_the_last_colon() {
        let (model, method) = split_target("anthropic/claude-sonnet-4-5:generateContent", None).unwrap();
        assert_eq!((model, method), ("anthropic/claude-sonnet-4-5", Method::Generate));
        let (model, method) = split_target("ollama/llama3:8b:streamGenerateContent", Some("alt=sse&key=k")).unwrap();
        assert_eq!((model, method), ("ollama/llama3:8b", Method::Stream(Framing::Sse)));
        let (_, method) = split_target("a/b:streamGenerateContent", Some("key=k")).unwrap();
        assert_eq!(method, Method::Stream(Framing::JsonArray));
        assert_eq!(split_target("models/a/b:countTokens", None).unwrap(), ("a/b", Method::CountTokens));
        assert_eq!(split_target("a/b:embedContent", None).unwrap(), ("a/b", Method::Embed { batch: false }));
        assert_eq!(split_target("a/b:batchEmbedContents", None).unwrap(), ("a/b", Method::Embed { batch: true }));
        assert_eq!(split_target("a/b:predict", None).unwrap_err().status, StatusCode::NOT_FOUND);
        assert_eq!(split_target("a/b", None).unwrap_err().status, StatusCode::NOT_FOUND);
    }
}
