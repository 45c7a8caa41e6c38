//! An OpenAI-family Chat Completions event stream.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fungible_providers::fuzzing::openai_sse(data));
