//! An OpenAI-family Chat Completions event stream, then streamed by every front end.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fungible_server::fuzzing::openai_sse(data));
