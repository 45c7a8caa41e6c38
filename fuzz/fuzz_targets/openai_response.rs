//! An OpenAI-family response body (2xx or error).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fungible_providers::fuzzing::openai_response(data));
