//! Entry points for the fuzz targets in `fuzz/` (not an API, hidden from the docs): each
//! feeds untrusted bytes to the code that reads them in production and returns what it made
//! of them (`fungible-server`'s `fuzzing` module renders that in every front end's format). A
//! panic in any of them is a bug in that code.

use std::convert::Infallible;
use std::task::{Context, Poll};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use fungible_types::{ChatRequest, ChatResponse, ErrorKind, ProviderError, StreamEvent};

use crate::openai::{OpenAiFlavor, Prefill};
use crate::sse::SseDecoder;
use crate::{Secret, anthropic, gemini, http, openai};

const PROVIDER: &str = "fuzz";
const MODEL: &str = "fuzz-model";

/// What a decoded event stream yielded, as `sse::event_stream` would: events, then possibly
/// one error.
pub type Decoded = Vec<Result<StreamEvent, ProviderError>>;

/// A body from an OpenAI-family server: a 2xx Chat Completions response, or an error body.
pub fn openai_response(bytes: &[u8]) -> Option<ChatResponse> {
    error_body(bytes, http::error_message_field);
    openai::decode_response(PROVIDER, bytes, MODEL).ok()
}

/// An OpenAI-family Chat Completions event stream.
pub fn openai_sse(bytes: &[u8]) -> Decoded {
    decode_sse(bytes, openai::stream_decoder(PROVIDER))
}

/// A body from Anthropic: a 2xx Messages response, or an error body.
pub fn anthropic_response(bytes: &[u8]) -> Option<ChatResponse> {
    error_body(bytes, http::error_message_field);
    anthropic::decode_response(PROVIDER, bytes, MODEL).ok()
}

/// An Anthropic Messages event stream.
pub fn anthropic_sse(bytes: &[u8]) -> Decoded {
    decode_sse(bytes, anthropic::stream_decoder(PROVIDER, MODEL))
}

/// A body from Gemini: a 2xx `generateContent` response, or an error body.
pub fn gemini_response(bytes: &[u8]) -> Option<ChatResponse> {
    error_body(bytes, gemini::error_message);
    gemini::decode_response(PROVIDER, bytes, MODEL).ok()
}

/// A Gemini `streamGenerateContent?alt=sse` event stream.
pub fn gemini_sse(bytes: &[u8]) -> Decoded {
    decode_sse(bytes, gemini::stream_decoder(PROVIDER, MODEL))
}

/// Encodes a canonical request (one a front end parsed from fuzzed bytes) for every vendor,
/// whole and streamed, as `chat` and `chat_stream` would send it.
pub fn encode_for_every_provider(req: &ChatRequest) {
    let deepseek = OpenAiFlavor { prefill: Prefill::Prefix, ..OpenAiFlavor::COMPATIBLE };
    let vllm = OpenAiFlavor { prefill: Prefill::ContinueFinalMessage, ..OpenAiFlavor::COMPATIBLE };
    for stream in [false, true] {
        for flavor in [OpenAiFlavor::OPENAI, OpenAiFlavor::COMPATIBLE, deepseek, vllm] {
            let _ = openai::encode_request(PROVIDER, req, MODEL, stream, flavor);
        }
        let _ = anthropic::encode_request(PROVIDER, req, MODEL, stream);
    }
    let _ = gemini::encode_request(PROVIDER, req);
}

/// What `http::send_json` does with a non-2xx body.
fn error_body(bytes: &[u8], vendor_message: fn(&[u8]) -> Option<String>) {
    let message = http::error_body_message(bytes, vendor_message);
    let _ = Secret::new("sk-fuzz").scrub(&message);
    let _ = http::is_context_length_error(bytes, &message);
}

/// Runs `bytes` through the SSE parser and `decoder` as `sse::event_stream` does: cut into
/// chunks (of a size taken from the input's length, so events straddle reads), until the
/// decoder is done; an event the decoder refuses, an unreadable stream or one that ends
/// before the decoder is done ends with an error.
fn decode_sse(bytes: &[u8], mut decoder: impl SseDecoder) -> Decoded {
    let size = 1 + bytes.len() % 61;
    let chunks = bytes.chunks(size).map(|c| Ok::<_, Infallible>(c.to_vec()));
    let mut events = futures::stream::iter(chunks).eventsource();
    // An in-memory stream is never pending, so a no-op waker drives it to its end.
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut decoded = Vec::new();
    let mut out = Vec::new();
    while !decoder.is_done() {
        let error = match events.poll_next_unpin(&mut cx) {
            Poll::Ready(Some(Ok(event))) => {
                out.clear();
                match decoder.on_event(&event, &mut out) {
                    Ok(()) => {
                        decoded.extend(out.drain(..).map(Ok));
                        continue;
                    }
                    Err(e) => e,
                }
            }
            Poll::Ready(Some(Err(e))) => ProviderError::malformed(PROVIDER, format!("malformed event stream: {e}")),
            Poll::Ready(None) | Poll::Pending => ProviderError::new(
                ErrorKind::Connection,
                PROVIDER,
                "the stream ended before the provider finished its response",
            ),
        };
        decoded.push(Err(error));
        break;
    }
    decoded
}
