//! An OpenAI Chat Completions request body (`POST /v1/chat/completions`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fungible_server::fuzzing::openai_chat(data));
