//! The Anthropic Messages front end: `POST /v1/messages` (whole and streamed) and
//! `POST /v1/messages/count_tokens`, so the official Anthropic SDKs and Claude Code run on any
//! provider.
//!
//! Both auth styles are accepted (`auth.rs` checks the key): `x-api-key` (SDKs with
//! `anthropic-version: 2023-06-01`) and `Authorization: Bearer`; any `anthropic-version`.
//! Errors are in Anthropic's shape (`{"type":"error","error":{...}}`), before a stream as the
//! status and body, after it started as an `error` event.

pub(crate) mod request;
pub(crate) mod response;


use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use fungible_types::ChatRequest;

use crate::AppState;
use crate::error::{ApiError, ApiFormat};
use request::Endpoint;
use response::EventEncoder;

pub use request::parse as parse_request;

pub async fn messages(State(state): State<AppState>, context: crate::dispatch::Context, body: Body) -> Response {
    match handle(state, &context, body).await {
        Ok(response) => response,
        Err(error) => error.into_response_for(ApiFormat::Anthropic),
    }
}

pub async fn count_tokens(State(state): State<AppState>, context: crate::dispatch::Context, body: Body) -> Response {
    match handle_count(state, &context, body).await {
        Ok(response) => response,
        Err(error) => error.into_response_for(ApiFormat::Anthropic),
    }
}

/// Reads and parses the body; the fields fungible has no name for are marked Anthropic's.
async fn read_request(state: &AppState, body: Body, endpoint: Endpoint) -> Result<ChatRequest, ApiError> {
    // The body is dropped once parsed: only the canonical request lives on.
    let mut req = request::parse(&crate::read_body(body, state.max_body_bytes).await?, endpoint)?;
    // Fields fungible has no name for are Anthropic's: only an Anthropic target receives them
    // (the gateway drops them for another vendor's, per target, at the call).
    if !req.extra_body.is_empty() {
        req.extra_body_vendor = Some(fungible_types::VendorFamily::Anthropic);
    }
    Ok(req)
}

async fn handle_count(state: AppState, context: &crate::dispatch::RequestContext, body: Body) -> Result<Response, ApiError> {
    let req = read_request(&state, body, Endpoint::CountTokens).await?;
    crate::auth::admit_unpriced(&state, context.key(), &req.model).await?;
    let tokens = state.gateway.count_tokens(&req).await?;
    Ok(crate::json_response(StatusCode::OK, format!("{{\"input_tokens\":{tokens}}}").into_bytes()))
}

async fn handle(state: AppState, context: &crate::dispatch::RequestContext, body: Body) -> Result<Response, ApiError> {
    let req = read_request(&state, body, Endpoint::Messages).await?;
    if !req.stream {
        let response = crate::dispatch::chat(&state, context, &req).await?;
        return Ok(crate::json_response(StatusCode::OK, response::message_body(&response, &req.model)));
    }

    let upstream = crate::dispatch::chat_stream(&state, context, &req).await?;
    let encoder = EventEncoder::new(&req.model);
    Ok(crate::streaming::response(upstream, encoder, "text/event-stream"))
}

