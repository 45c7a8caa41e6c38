//! A Gemini API request body (`:generateContent`, `:streamGenerateContent`, `:countTokens`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fungible_server::fuzzing::gemini(data));
