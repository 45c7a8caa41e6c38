//! The Anthropic Messages front end: `POST /v1/messages` (whole and streamed) and
//! `POST /v1/messages/count_tokens`, so the official Anthropic SDKs and Claude Code run on any
//! provider.
//!
//! Both auth styles are accepted and not checked yet: `x-api-key` (SDKs with
//! `anthropic-version: 2023-06-01`) and `Authorization: Bearer`; any `anthropic-version`.
//! Errors are in Anthropic's shape (`{"type":"error","error":{...}}`), before a stream as the
//! status and body, after it started as an `error` event.

pub(crate) mod request;
pub(crate) mod response;


use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fungible_types::ChatRequest;

use crate::AppState;
use crate::error::{ApiError, ApiFormat};
use request::Endpoint;
use response::EventEncoder;

pub use request::parse as parse_request;

pub async fn messages(State(state): State<AppState>, body: Body) -> Response {
    match handle(state, body).await {
        Ok(response) => response,
        Err(error) => error.into_response_for(ApiFormat::Anthropic),
    }
}

pub async fn count_tokens(State(state): State<AppState>, body: Body) -> Response {
    match handle_count(state, body).await {
        Ok(response) => response,
        Err(error) => error.into_response_for(ApiFormat::Anthropic),
    }
}

/// Reads and parses the body, and keeps the fields fungible has no name for only when the
/// model is served by Anthropic: a vendor field must not reach another vendor.
async fn read_request(state: &AppState, body: Body, endpoint: Endpoint) -> Result<ChatRequest, ApiError> {
    let bytes = crate::read_body(body, state.max_body_bytes).await?;
    let mut req = request::parse(&bytes, endpoint)?;
    // A name that resolves to no single provider (an unknown model, which the gateway then
    // reports, or a route over several) keeps no vendor fields.
    let anthropic = matches!(state.gateway.resolve(&req.model), Ok((provider, _)) if provider.kind().as_str() == "anthropic");
    if !req.extra_body.is_empty() && !anthropic {
        let dropped: Vec<&String> = req.extra_body.keys().collect();
        tracing::debug!(?dropped, model = %req.model, "dropping Anthropic fields the provider does not take");
        req.extra_body.clear();
    }
    Ok(req)
}

async fn handle_count(state: AppState, body: Body) -> Result<Response, ApiError> {
    let req = read_request(&state, body, Endpoint::CountTokens).await?;
    crate::auth::admit_unpriced(&state, &req.model).await?;
    let tokens = state.gateway.count_tokens(&req).await?;
    Ok(json_response(format!("{{\"input_tokens\":{tokens}}}").into_bytes()))
}

async fn handle(state: AppState, body: Body) -> Result<Response, ApiError> {
    let req = read_request(&state, body, Endpoint::Messages).await?;
    if !req.stream {
        let response = crate::dispatch::chat(&state, &req).await?;
        return Ok(json_response(response::message_body(&response, &req.model)));
    }

    let upstream = crate::dispatch::chat_stream(&state, &req).await?;
    let encoder = EventEncoder::new(&req.model);
    Ok(crate::streaming::response(upstream, encoder, "text/event-stream"))
}

fn json_response(body: Vec<u8>) -> Response {
    let mut http = (StatusCode::OK, body).into_response();
    http.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    http
}
