//! A Gemini `streamGenerateContent?alt=sse` event stream.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fungible_providers::fuzzing::gemini_sse(data));
