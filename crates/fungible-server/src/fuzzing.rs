//! Entry points for the fuzz targets in `fuzz/` (not an API, hidden from the docs): each
//! feeds an untrusted request body to one front end's parser, as its handler does, and a
//! request that parses on to every provider's encoder. A panic in any of them is a bug in
//! that code. The inputs that found one are kept under `fuzz/regressions/<target>/` and
//! replayed by this module's test.

use fungible_providers::fuzzing::encode_for_every_provider;

use crate::anthropic_messages::request::Endpoint;

/// `POST /v1/chat/completions`.
pub fn openai_chat(body: &[u8]) {
    if let Ok(req) = crate::openai_chat::parse_request(body) {
        encode_for_every_provider(&req);
    }
}

/// `POST /v1/responses`.
pub fn openai_responses(body: &[u8]) {
    if let Ok(req) = crate::openai_responses::parse_request(body) {
        encode_for_every_provider(&req.chat);
    }
}

/// `POST /v1/messages` and `POST /v1/messages/count_tokens`.
pub fn anthropic_messages(body: &[u8]) {
    for endpoint in [Endpoint::Messages, Endpoint::CountTokens] {
        if let Ok(req) = crate::anthropic_messages::request::parse(body, endpoint) {
            encode_for_every_provider(&req);
        }
    }
}

/// `:generateContent`, `:streamGenerateContent` and `:countTokens`, for a Gemini model and
/// for another vendor's (which decides what happens to Gemini-only fields).
pub fn gemini(body: &[u8]) {
    const MODEL: &str = "fuzz/fuzz-model";
    for gemini_upstream in [true, false] {
        for stream in [false, true] {
            if let Ok(parsed) = crate::gemini_api::request::parse(body, MODEL, stream, gemini_upstream) {
                encode_for_every_provider(&parsed.request);
            }
        }
        if let Ok(parsed) = crate::gemini_api::request::parse_count_tokens(body, MODEL, gemini_upstream) {
            encode_for_every_provider(&parsed.request);
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
        let targets: [(&str, fn(&[u8])); 4] = [
            ("openai_chat", super::openai_chat),
            ("openai_responses", super::openai_responses),
            ("anthropic_messages", super::anthropic_messages),
            ("gemini", super::gemini),
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
