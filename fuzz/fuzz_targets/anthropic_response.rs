//! An Anthropic Messages response body (2xx or error), then rendered by every front end.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fungible_server::fuzzing::anthropic_response(data));
