//! An Anthropic Messages event stream.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fungible_providers::fuzzing::anthropic_sse(data));
