//! Converting a GGUF chat model's weights to another type once, when it loads
//! (`[local] weights`).
//!
//! On x86 CPUs llama.cpp has fast matrix-matrix kernels (its repacked GEMM and llamafile's
//! tinyBLAS) for Q8_0, Q4_0 and F16 weights but not for Q4_1 or the K-quants, so a prompt, or
//! a step that decodes several requests at once, runs several times slower on those. The
//! conversion is llama.cpp's own quantizer (`llama_model_quantize`, what `llama-quantize`
//! runs); its result is kept beside the source file (or in the temporary directory when that
//! folder is read-only) and reused while it is newer than the source.

use std::ffi::CString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use llama_cpp_2::gguf::GgufContext;

/// A weight type to convert chat models to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightType {
    /// 8-bit: near-lossless from any 4- or 5-bit source (perplexity +0.3% from the built-in
    /// Q4_1 model); the default.
    Q8_0,
    /// 4-bit: the smallest and fastest, but a Q4_1 or K-quant source loses precision again
    /// (perplexity +16% from the built-in model).
    Q4_0,
    /// 16-bit float: exact for a quantized source, twice Q8_0's memory.
    F16,
}

impl WeightType {
    pub const ALL: [WeightType; 3] = [WeightType::Q8_0, WeightType::Q4_0, WeightType::F16];

    pub fn as_str(self) -> &'static str {
        match self {
            WeightType::Q8_0 => "q8_0",
            WeightType::Q4_0 => "q4_0",
            WeightType::F16 => "f16",
        }
    }

    /// For the token embeddings and the output projection, which llama.cpp would otherwise
    /// give a K-quant that most models' widths do not fit (it then warns and falls back).
    fn edge_type(self) -> llama_cpp_sys_2::ggml_type {
        match self {
            WeightType::Q8_0 | WeightType::Q4_0 => llama_cpp_sys_2::GGML_TYPE_Q8_0,
            WeightType::F16 => llama_cpp_sys_2::GGML_TYPE_F16,
        }
    }

    fn ftype(self) -> llama_cpp_sys_2::llama_ftype {
        match self {
            WeightType::Q8_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0,
            WeightType::Q4_0 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q4_0,
            WeightType::F16 => llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_F16,
        }
    }
}

impl WeightType {
    /// The `[local] weights` setting: a type, or `"keep"` (`None`) for the file's own.
    pub fn from_setting(s: &str) -> Result<Option<WeightType>, String> {
        if s.eq_ignore_ascii_case("keep") { Ok(None) } else { s.parse().map(Some) }
    }
}

impl fmt::Display for WeightType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WeightType {
    type Err = String;

    fn from_str(s: &str) -> Result<WeightType, String> {
        WeightType::ALL.into_iter().find(|t| t.as_str().eq_ignore_ascii_case(s)).ok_or_else(|| {
            let names: Vec<_> = WeightType::ALL.iter().map(|t| t.as_str()).collect();
            format!("{s:?} is not a weight type fungible converts to (one of {}, or \"keep\")", names.join(", "))
        })
    }
}

/// The file to load for `source` with weights of type `to`: `source` itself when it already
/// has that type, else a converted copy, made now unless an up-to-date one exists.
pub(crate) fn converted(source: &Path, to: WeightType, threads: usize) -> Result<PathBuf, String> {
    let gguf = GgufContext::from_file(source).ok_or_else(|| format!("{} is not a GGUF file", source.display()))?;
    let key = gguf.find_key("general.file_type");
    if key >= 0 && gguf.val_u32(key) == to.ftype() as u32 {
        return Ok(source.to_owned());
    }
    drop(gguf);

    let stem = source.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = format!("{stem}.{to}.gguf");
    let beside = source.with_file_name(&name);
    let in_temp = std::env::temp_dir().join("fungible-models").join(&name);
    for target in [&beside, &in_temp] {
        if is_fresh(target, &[source]) {
            return Ok(target.clone());
        }
    }
    let mut failures = Vec::new();
    for target in [beside, in_temp] {
        match quantize(source, &target, to, threads) {
            Ok(()) => return Ok(target),
            Err(e) => failures.push(e),
        }
    }
    Err(failures.join("; "))
}

/// Whether `target` exists and was written after each of `sources` last changed.
pub(crate) fn is_fresh(target: &Path, sources: &[&Path]) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(t) = modified(target) else { return false };
    sources.iter().all(|s| modified(s).is_some_and(|s| t >= s))
}

/// Writes `source` converted to `to` at `target`, through a temporary name in the same folder
/// renamed at the end, so a crash or two gateways converting at once never leave half a file
/// under the final name.
fn quantize(source: &Path, target: &Path, to: WeightType, threads: usize) -> Result<(), String> {
    let folder = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder).map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
    // Unique per process and call: two engines in one process may convert the same file.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let partial = target.with_extension(format!("gguf.partial-{}-{call}", std::process::id()));
    let c_path = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| format!("{} has a NUL byte", p.display()))
    };
    let (input, output) = (c_path(source)?, c_path(&partial)?);
    let started = Instant::now();
    // The one `unsafe` block of the workspace (see this crate's Cargo.toml): llama-cpp-2
    // does not wrap llama.cpp's quantizer.
    // SAFETY: the default parameters are plain values; every pointer in them is null, which
    // llama.cpp reads as "none". Both paths are NUL-terminated and outlive the call.
    #[allow(unsafe_code)]
    let status = unsafe {
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.nthread = i32::try_from(threads).unwrap_or(1);
        params.ftype = to.ftype();
        params.allow_requantize = true;
        params.output_tensor_type = to.edge_type();
        params.token_embedding_type = to.edge_type();
        llama_cpp_sys_2::llama_model_quantize(input.as_ptr(), output.as_ptr(), &params)
    };
    if status != 0 {
        let _ = std::fs::remove_file(&partial);
        return Err(format!("llama.cpp could not convert {} to {to} at {}", source.display(), partial.display()));
    }
    std::fs::rename(&partial, target).map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        format!("cannot move the converted model to {}: {e}", target.display())
    })?;
    tracing::info!(
        from = %source.display(),
        to = %target.display(),
        "converted a local chat model's weights to {to} in {} ms (once; reused while newer than its source)",
        started.elapsed().as_millis()
    );
    Ok(())
}
