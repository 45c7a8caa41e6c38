//! The OpenAI Chat Completions front end: `POST /v1/chat/completions`.

mod request;
mod response;

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::AppState;
use crate::error::ApiError;
use response::ChunkEncoder;

pub use request::parse as parse_request;

pub async fn chat_completions(State(state): State<AppState>, body: Body) -> Response {
    match handle(state, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn handle(state: AppState, body: Body) -> Result<Response, ApiError> {
    let bytes = crate::read_body(body, state.max_body_bytes).await?;
    let req = request::parse(&bytes)?;
    if !req.stream {
        let response = crate::dispatch::chat(&state, &req).await?;
        let mut http = (StatusCode::OK, response::completion_body(&response)).into_response();
        http.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return Ok(http);
    }

    let upstream = crate::dispatch::chat_stream(&state, &req).await?;
    let encoder = ChunkEncoder::new(&req.model, req.stream_include_usage);
    // Each upstream event becomes its frames as it arrives; nothing is buffered. When the
    // client goes away hyper drops this stream, which drops the upstream response and so
    // cancels the upstream request.
    let frames = futures::stream::unfold((upstream, encoder, false), |(mut upstream, mut encoder, ended)| async move {
        if ended {
            return None;
        }
        let mut out = Vec::new();
        while out.is_empty() {
            match upstream.next().await {
                Some(Ok(event)) => encoder.encode(event, &mut out),
                Some(Err(error)) => {
                    let api = ApiError::from_provider(&error);
                    tracing::warn!(status = api.status.as_u16(), "stream failed after it started: {}", api.message);
                    let frame = encoder.error(&api);
                    return Some((futures::stream::iter(vec![Ok::<Bytes, Infallible>(frame)]), (upstream, encoder, true)));
                }
                None => {
                    encoder.finish(&mut out);
                    let frames = out.into_iter().map(Ok).collect::<Vec<_>>();
                    return Some((futures::stream::iter(frames), (upstream, encoder, true)));
                }
            }
        }
        let frames = out.into_iter().map(Ok).collect::<Vec<_>>();
        Some((futures::stream::iter(frames), (upstream, encoder, false)))
    })
    .flatten();

    let mut http = Response::new(Body::from_stream(frames));
    let headers = http.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(http)
}
