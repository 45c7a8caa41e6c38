//! A Gemini `streamGenerateContent?alt=sse` event stream, then streamed by every front end.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fungible_server::fuzzing::gemini_sse(data));
