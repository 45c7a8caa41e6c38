//! The OpenAI Chat Completions front end: `POST /v1/chat/completions`.

pub(crate) mod request;
pub(crate) mod response;


use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::ApiError;
use response::ChunkEncoder;

pub use request::parse as parse_request;

pub async fn chat_completions(State(state): State<AppState>, context: crate::dispatch::Context, body: Body) -> Response {
    match handle(state, &context, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn handle(state: AppState, context: &crate::dispatch::RequestContext, body: Body) -> Result<Response, ApiError> {
    // The body is dropped once parsed: only the canonical request lives on.
    let req = request::parse(&crate::read_body(body, state.max_body_bytes).await?)?;
    if !req.stream {
        let response = crate::dispatch::chat(&state, context, &req).await?;
        let mut http = (StatusCode::OK, response::completion_body(&response)).into_response();
        http.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return Ok(http);
    }

    let upstream = crate::dispatch::chat_stream(&state, context, &req).await?;
    let encoder = ChunkEncoder::new(&req.model, req.stream_include_usage);
    Ok(crate::streaming::response(upstream, encoder, "text/event-stream"))
}
