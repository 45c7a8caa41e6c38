//! An Anthropic Messages event stream, then streamed by every front end.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fungible_server::fuzzing::anthropic_sse(data));
