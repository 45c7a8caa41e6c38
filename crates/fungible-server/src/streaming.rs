//! The loop every front end's stream shares: canonical events in, the API's own frames
//! out, one event at a time.
//!
//! Nothing is buffered beyond what an encoder holds back on purpose. A failure after the
//! stream started ends it with the encoder's own error frames — never with the frames of a
//! normal finish. When the client goes away hyper drops the body, which drops the upstream
//! stream and so cancels the upstream request.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use futures::StreamExt;
use fungible_providers::EventStream;
use fungible_types::StreamEvent;

use crate::error::ApiError;

/// One inbound API's stream framing.
pub(crate) trait FrameEncoder: Send + 'static {
    /// The frames for one event (often none, or one). An error ends the stream with
    /// [`FrameEncoder::fail`].
    fn encode(&mut self, event: StreamEvent, out: &mut Vec<Bytes>) -> Result<(), ApiError>;

    /// The closing frames of a stream the upstream ended normally.
    fn finish(&mut self, out: &mut Vec<Bytes>) -> Result<(), ApiError>;

    /// The frames that end a stream that failed after it started.
    fn fail(&mut self, error: &ApiError, out: &mut Vec<Bytes>);

    /// Work that must be done before the closing frames reach the client (storing the
    /// answer so a follow-up sent at once finds it); awaited after [`FrameEncoder::finish`].
    fn before_closing(&mut self) -> Option<futures::future::BoxFuture<'static, ()>> {
        None
    }
}

/// A streaming response: `upstream` rendered by `encoder`, sent as `content_type`.
pub(crate) fn response<E: FrameEncoder>(upstream: EventStream, encoder: E, content_type: &'static str) -> Response {
    let frames = futures::stream::unfold((upstream, encoder, false), |(mut upstream, mut encoder, ended)| async move {
        if ended {
            return None;
        }
        let mut out = Vec::new();
        let mut ended = false;
        while out.is_empty() && !ended {
            let step = match upstream.next().await {
                Some(Ok(event)) => encoder.encode(event, &mut out),
                Some(Err(error)) => Err(ApiError::from_provider(&error)),
                None => {
                    ended = true;
                    let finished = encoder.finish(&mut out);
                    if let Some(work) = encoder.before_closing() {
                        work.await;
                    }
                    finished
                }
            };
            if let Err(error) = step {
                tracing::warn!(status = error.status.as_u16(), "stream failed after it started: {}", error.message);
                encoder.fail(&error, &mut out);
                ended = true;
            }
        }
        let frames = out.into_iter().map(Ok::<Bytes, Infallible>).collect::<Vec<_>>();
        Some((futures::stream::iter(frames), (upstream, encoder, ended)))
    })
    .flatten();

    let mut http = Response::new(Body::from_stream(frames));
    let headers = http.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    http
}
