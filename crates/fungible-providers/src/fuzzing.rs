//! Entry points for the fuzz targets in `fuzz/` (not an API, hidden from the docs): each
//! feeds untrusted bytes to the code that reads them in production and drops the result. A
//! panic in any of them is a bug in that code. The inputs that found one are kept under
//! `fuzz/regressions/<target>/` and replayed by this module's test.

use std::convert::Infallible;
use std::task::{Context, Poll};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use fungible_types::{ChatRequest, ProviderError};

use crate::openai::{OpenAiFlavor, Prefill};
use crate::sse::SseDecoder;
use crate::{Secret, anthropic, gemini, http, openai};

const PROVIDER: &str = "fuzz";
const MODEL: &str = "fuzz-model";

/// A body from an OpenAI-family server: a 2xx Chat Completions response, or an error body.
pub fn openai_response(bytes: &[u8]) {
    let _ = openai::decode_response(PROVIDER, bytes, MODEL);
    error_body(bytes, http::error_message_field);
}

/// An OpenAI-family Chat Completions event stream.
pub fn openai_sse(bytes: &[u8]) {
    decode_sse(bytes, openai::stream_decoder(PROVIDER));
}

/// A body from Anthropic: a 2xx Messages response, or an error body.
pub fn anthropic_response(bytes: &[u8]) {
    let _ = anthropic::decode_response(PROVIDER, bytes, MODEL);
    error_body(bytes, http::error_message_field);
}

/// An Anthropic Messages event stream.
pub fn anthropic_sse(bytes: &[u8]) {
    decode_sse(bytes, anthropic::stream_decoder(PROVIDER, MODEL));
}

/// A body from Gemini: a 2xx `generateContent` response, or an error body.
pub fn gemini_response(bytes: &[u8]) {
    let _ = gemini::decode_response(PROVIDER, bytes, MODEL);
    error_body(bytes, gemini::error_message);
}

/// A Gemini `streamGenerateContent?alt=sse` event stream.
pub fn gemini_sse(bytes: &[u8]) {
    decode_sse(bytes, gemini::stream_decoder(PROVIDER, MODEL));
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
/// decoder is done, reports an error, or the events run out.
fn decode_sse(bytes: &[u8], mut decoder: impl SseDecoder) {
    let size = 1 + bytes.len() % 61;
    let chunks = bytes.chunks(size).map(|c| Ok::<_, Infallible>(c.to_vec()));
    let mut events = futures::stream::iter(chunks).eventsource();
    // An in-memory stream is never pending, so a no-op waker drives it to its end.
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut out = Vec::new();
    while let Poll::Ready(Some(Ok(event))) = events.poll_next_unpin(&mut cx) {
        out.clear();
        let result: Result<(), ProviderError> = decoder.on_event(&event, &mut out);
        if result.is_err() || decoder.is_done() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// Every input the fuzzers found a panic with (`fuzz/regressions/<target>/`), replayed:
    /// none may panic again.
    #[test]
    fn fuzz_regressions_do_not_panic() {
        let targets: [(&str, fn(&[u8])); 6] = [
            ("openai_response", super::openai_response),
            ("openai_sse", super::openai_sse),
            ("anthropic_response", super::anthropic_response),
            ("anthropic_sse", super::anthropic_sse),
            ("gemini_response", super::gemini_response),
            ("gemini_sse", super::gemini_sse),
        ];
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions");
        for (target, run) in targets {
            for input in regressions(&root.join(target)) {
                run(&std::fs::read(&input).expect("readable"));
            }
        }
    }

    /// The files in `dir`, none when it does not exist.
    fn regressions(dir: &std::path::Path) -> Vec<PathBuf> {
        match std::fs::read_dir(dir) {
            Ok(entries) => entries.map(|e| e.expect("readable dir").path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}
