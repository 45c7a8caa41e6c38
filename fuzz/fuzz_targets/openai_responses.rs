//! An OpenAI Responses request body (`POST /v1/responses`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fungible_server::fuzzing::openai_responses(data));
