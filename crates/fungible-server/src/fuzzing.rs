//! Entry points for the fuzz targets in `fuzz/` (not an API, hidden from the docs), one per
//! target, each taking the fuzzer's bytes through the code that reads such bytes in
//! production. Inbound: a request body through its front end's parser, and a request that
//! parses on to every provider's encoder. Outbound: a vendor's response body or event stream
//! through that provider's decoder (`fungible_providers::fuzzing`), and what it decoded
//! rendered by every front end, whole or streamed. A panic in any of them is a bug in that
//! code. The inputs that found one are kept under `fuzz/regressions/<target>/` and replayed
//! by this module's test.

use axum::body::Bytes;
use fungible_providers::fuzzing::{self as providers, Decoded, encode_for_every_provider};
use fungible_types::ChatResponse;

use crate::anthropic_messages::request::Endpoint;
use crate::error::ApiError;
use crate::streaming::FrameEncoder;
use crate::{anthropic_messages, gemini_api, openai_chat, openai_responses};

const MODEL: &str = "fuzz/fuzz-model";

/// `POST /v1/chat/completions`.
pub fn openai_chat(body: &[u8]) {
    if let Ok(req) = openai_chat::parse_request(body) {
        encode_for_every_provider(&req);
    }
}

/// `POST /v1/responses`.
pub fn openai_responses(body: &[u8]) {
    if let Ok(req) = openai_responses::parse_request(body) {
        encode_for_every_provider(&req.chat);
    }
}

/// `POST /v1/messages` and `POST /v1/messages/count_tokens`.
pub fn anthropic_messages(body: &[u8]) {
    for endpoint in [Endpoint::Messages, Endpoint::CountTokens] {
        if let Ok(req) = anthropic_messages::request::parse(body, endpoint) {
            encode_for_every_provider(&req);
        }
    }
}

/// `:generateContent`, `:streamGenerateContent` and `:countTokens`, for a Gemini model and
/// for another vendor's (which decides what happens to Gemini-only fields).
pub fn gemini(body: &[u8]) {
    for gemini_upstream in [true, false] {
        for stream in [false, true] {
            if let Ok(parsed) = gemini_api::request::parse(body, MODEL, stream, gemini_upstream) {
                encode_for_every_provider(&parsed.request);
            }
        }
        if let Ok(parsed) = gemini_api::request::parse_count_tokens(body, MODEL, gemini_upstream) {
            encode_for_every_provider(&parsed.request);
        }
    }
}

/// An OpenAI-family response body, then the answer in every front end's format.
pub fn openai_response(bytes: &[u8]) {
    if let Some(answer) = providers::openai_response(bytes) {
        render(&answer);
    }
}

/// An OpenAI-family event stream, then streamed by every front end.
pub fn openai_sse(bytes: &[u8]) {
    render_stream(&providers::openai_sse(bytes));
}

/// An Anthropic response body, then the answer in every front end's format.
pub fn anthropic_response(bytes: &[u8]) {
    if let Some(answer) = providers::anthropic_response(bytes) {
        render(&answer);
    }
}

/// An Anthropic event stream, then streamed by every front end.
pub fn anthropic_sse(bytes: &[u8]) {
    render_stream(&providers::anthropic_sse(bytes));
}

/// A Gemini response body, then the answer in every front end's format.
pub fn gemini_response(bytes: &[u8]) {
    if let Some(answer) = providers::gemini_response(bytes) {
        render(&answer);
    }
}

/// A Gemini event stream, then streamed by every front end.
pub fn gemini_sse(bytes: &[u8]) {
    render_stream(&providers::gemini_sse(bytes));
}

/// A whole answer as each front end's handler renders it.
fn render(answer: &ChatResponse) {
    let _ = openai_chat::response::completion_body(answer);
    let _ = openai_responses::response::response_body(&responses_head(), answer);
    let _ = anthropic_messages::response::message_body(answer, MODEL);
    for include_thoughts in [false, true] {
        let _ = gemini_api::response::response_body(answer, include_thoughts, "fuzz");
    }
}

/// A stream as each front end's handler renders it (`streaming::response`'s loop).
fn render_stream(decoded: &Decoded) {
    for include_usage in [false, true] {
        run(openai_chat::response::ChunkEncoder::new(MODEL, include_usage), decoded);
    }
    run(Responses(openai_responses::events::EventEncoder::new(responses_head())), decoded);
    run(anthropic_messages::response::EventEncoder::new(MODEL), decoded);
    for framing in [gemini_api::response::Framing::Sse, gemini_api::response::Framing::JsonArray] {
        for include_thoughts in [false, true] {
            run(gemini_api::response::StreamEncoder::new(framing, MODEL, "fuzz", include_thoughts), decoded);
        }
    }
}

fn run(mut encoder: impl FrameEncoder, decoded: &Decoded) {
    let mut out: Vec<Bytes> = Vec::new();
    for item in decoded {
        let step = match item {
            Ok(event) => encoder.encode(event.clone(), &mut out),
            Err(error) => Err(ApiError::from_provider(error)),
        };
        if let Err(error) = step {
            encoder.fail(&error, &mut out);
            return;
        }
    }
    if let Err(error) = encoder.finish(&mut out) {
        encoder.fail(&error, &mut out);
    }
}

/// The Responses encoder as its handler drives it (`openai_responses::Saving`), storing
/// nothing.
struct Responses(openai_responses::events::EventEncoder);

impl FrameEncoder for Responses {
    fn encode(&mut self, event: fungible_types::StreamEvent, out: &mut Vec<Bytes>) -> Result<(), ApiError> {
        self.0.encode(event, out);
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Bytes>) -> Result<(), ApiError> {
        let _ = self.0.finish(out);
        Ok(())
    }

    fn fail(&mut self, error: &ApiError, out: &mut Vec<Bytes>) {
        self.0.fail(error, out);
    }
}

/// What the Responses handler makes for a request that set nothing but its input.
fn responses_head() -> openai_responses::response::ResponseHead {
    let echo = match openai_responses::parse_request(br#"{"model":"fuzz/fuzz-model","input":"hi"}"#) {
        Ok(req) => req.echo,
        Err(e) => unreachable!("a minimal Responses request parses: {}", e.message),
    };
    openai_responses::response::ResponseHead { id: "resp_fuzz".into(), created_at: 0, model: MODEL.into(), echo }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// Every input the fuzzers found a panic with (`fuzz/regressions/<target>/`), replayed:
    /// none may panic again.
    #[test]
    fn fuzz_regressions_do_not_panic() {
        let targets: [(&str, fn(&[u8])); 10] = [
            ("openai_chat", super::openai_chat),
            ("openai_responses", super::openai_responses),
            ("anthropic_messages", super::anthropic_messages),
            ("gemini", super::gemini),
            ("openai_response", super::openai_response),
            ("openai_sse", super::openai_sse),
            ("anthropic_response", super::anthropic_response),
            ("anthropic_sse", super::anthropic_sse),
            ("gemini_response", super::gemini_response),
            ("gemini_sse", super::gemini_sse),
        ];
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions");
        let mut replayed = 0;
        for (target, run) in targets {
            for input in regressions(&root.join(target)) {
                run(&std::fs::read(&input).expect("readable"));
                replayed += 1;
            }
        }
        eprintln!("replayed {replayed} fuzz regressions");
    }

    /// The files in `dir`, none when it does not exist.
    fn regressions(dir: &std::path::Path) -> Vec<PathBuf> {
        match std::fs::read_dir(dir) {
            Ok(entries) => entries.map(|e| e.expect("readable dir").path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}
