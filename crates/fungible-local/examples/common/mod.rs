//! What the examples share: llama.cpp on its own, through the same `llama-cpp-2` build
//! fungible links, with one sequence on every core.

use std::num::NonZeroU32;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;

pub type Error = Box<dyn std::error::Error>;

/// llama.cpp, quiet, and the GGUF named by the first argument (else `default`).
pub fn load(default: &str) -> Result<(LlamaBackend, LlamaModel), Error> {
    let path = std::env::args().nth(1).unwrap_or_else(|| default.into());
    let mut backend = LlamaBackend::init()?;
    backend.void_logs();
    let model = LlamaModel::load_from_file(&backend, &path, &LlamaModelParams::default())?;
    Ok((backend, model))
}

/// A 4096-token context, batches of 512, one thread per core.
pub fn context_params() -> LlamaContextParams {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as i32;
    LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(4096))
        .with_n_batch(512)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
}
