//! An Anthropic Messages request body (`POST /v1/messages`, `/count_tokens`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fungible_server::fuzzing::anthropic_messages(data));
