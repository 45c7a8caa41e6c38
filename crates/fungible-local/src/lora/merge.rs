//! An adapter merged into its base's weights, for serving: `W + (alpha / rank) · B · A` for
//! every adapted projection, written as a whole GGUF model of the base's weight types.
//!
//! llama.cpp applies an unmerged adapter at every step as two more small matrix products per
//! adapted projection (hundreds of extra graph nodes per token on a 30-layer model), which
//! costs about a fifth of the decode speed on two cores; the merged model decodes exactly as
//! fast as its base. Its price is a copy of the weights on disk and in memory per adapter
//! (the unmerged one shares its base's pages), which is why `[local] merge_adapters` can turn
//! it off.
//!
//! The merged file is kept beside the adapter (or in the temporary directory when that folder
//! is read-only) and reused while it is newer than both the adapter and the base.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use sha2::Digest;

use super::TrainError;

/// Why a merge failed: the file is not an adapter for this base (`NotAdapter`), it is one
/// this merge does not handle (`Unsupported`: llama.cpp can still apply it at each step), or
/// a file could not be read or the merged model written (`Io`).
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("{0}")]
    NotAdapter(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Io(String),
}

/// The base model at `base` with the adapter at `adapter` merged in: the path of a fresh
/// merged GGUF, written now unless one newer than both inputs exists.
pub fn merged(base: &Path, adapter: &Path) -> Result<PathBuf, MergeError> {
    let stem = |p: &Path| p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    // Named by what the adapter holds: every tuned adapter is an `adapter.gguf`, and two of
    // them must never share a merged file (in the temporary directory they would).
    let bytes = std::fs::read(adapter).map_err(|e| MergeError::Io(format!("cannot read {}: {e}", adapter.display())))?;
    let digest = sha2::Sha256::digest(&bytes);
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let name = format!("{}.merged-{}-{hash}.gguf", stem(adapter), stem(base));
    let beside = adapter.with_file_name(&name);
    let in_temp = std::env::temp_dir().join("fungible-adapters").join(&name);
    for target in [&beside, &in_temp] {
        if crate::convert::is_fresh(target, &[base, adapter]) {
            return Ok(target.clone());
        }
    }
    let (metadata, tensors) = merge(base, adapter)?;
    let mut failures = Vec::new();
    for target in [beside, in_temp] {
        match write(&target, &metadata, &tensors) {
            Ok(()) => return Ok(target),
            Err(e) => failures.push(format!("{}: {e}", target.display())),
        }
    }
    Err(MergeError::Io(format!("the merged model could not be written: {}", failures.join("; "))))
}

type Merged = (Vec<(String, Value)>, Vec<(String, QTensor)>);

/// Reads both files and computes the merged tensors (in the base's order).
fn merge(base: &Path, adapter: &Path) -> Result<Merged, MergeError> {
    let not_adapter = |why: String| MergeError::NotAdapter(why);
    let (mut afile, acontent) = read(adapter).map_err(|e| match e {
        ReadError::Open(e) => MergeError::Io(e),
        ReadError::Format(e) => MergeError::NotAdapter(e),
    })?;
    let meta_str = |key: &str| match acontent.metadata.get(key) {
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    };
    if meta_str("general.type") != Some("adapter") || meta_str("adapter.type") != Some("lora") {
        return Err(not_adapter("its metadata does not say general.type = adapter, adapter.type = lora".into()));
    }
    let alpha = match acontent.metadata.get("adapter.lora.alpha") {
        Some(v) => v.to_f32().map_err(|e| not_adapter(format!("adapter.lora.alpha: {e}")))?,
        None => 0.0,
    };
    let (mut bfile, bcontent) = read(base).map_err(|(ReadError::Open(e) | ReadError::Format(e))| MergeError::Io(e))?;
    if let (Some(a), Some(Value::String(b))) = (meta_str("general.architecture"), bcontent.metadata.get("general.architecture"))
        && a != b
    {
        return Err(not_adapter(format!("it is for {a:?} models, the base is {b:?}")));
    }

    // Pair each `NAME.lora_a` with its `NAME.lora_b`.
    let mut pairs: HashMap<&str, (Option<&str>, Option<&str>)> = HashMap::new();
    for name in acontent.tensor_infos.keys() {
        if let Some(target) = name.strip_suffix(".lora_a") {
            pairs.entry(target).or_default().0 = Some(name);
        } else if let Some(target) = name.strip_suffix(".lora_b") {
            pairs.entry(target).or_default().1 = Some(name);
        } else {
            return Err(not_adapter(format!("tensor {name:?} is neither a lora_a nor a lora_b")));
        }
    }
    if pairs.is_empty() {
        return Err(not_adapter("it holds no tensors".into()));
    }
    let cpu = Device::Cpu;
    let mut deltas: HashMap<&str, Tensor> = HashMap::new();
    for (&target, &(a, b)) in &pairs {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(not_adapter(format!("{target} has only one of lora_a and lora_b")));
        };
        let Some(info) = bcontent.tensor_infos.get(target) else {
            return Err(not_adapter(format!("the base has no tensor {target}")));
        };
        if target == "token_embd.weight" {
            // llama.cpp lays this one's pair out the other way round.
            return Err(MergeError::Unsupported("it adapts the token embeddings".into()));
        }
        let mut tensor = |name: &str| -> Result<Tensor, MergeError> {
            let q = acontent.tensor(&mut afile, name, &cpu).map_err(|e| not_adapter(format!("{name}: {e}")))?;
            q.dequantize(&cpu).map_err(|e| not_adapter(format!("{name}: {e}")))
        };
        let (a, b) = (tensor(a)?, tensor(b)?);
        let (Ok((rank, inp)), Ok((out, rank_b))) = (a.dims2(), b.dims2()) else {
            return Err(not_adapter(format!("{target}: lora_a and lora_b must be matrices")));
        };
        if rank != rank_b || rank == 0 || info.shape.dims() != [out, inp] {
            return Err(not_adapter(format!(
                "{target}: lora_b {:?} · lora_a {:?} does not make the base's {:?}",
                b.dims(),
                a.dims(),
                info.shape.dims()
            )));
        }
        // llama.cpp scales by alpha / rank, and by 1 when alpha is 0.
        let scale = if alpha == 0.0 { 1.0 } else { f64::from(alpha) / rank as f64 };
        let delta = b.matmul(&a).and_then(|d| d * scale).map_err(engine)?;
        deltas.insert(target, delta);
    }

    let mut names: Vec<(&String, u64)> = bcontent.tensor_infos.iter().map(|(n, i)| (n, i.offset)).collect();
    names.sort_by_key(|&(_, offset)| offset);
    let mut tensors = Vec::with_capacity(names.len());
    for (name, _) in names {
        let q = bcontent.tensor(&mut bfile, name, &cpu).map_err(|e| MergeError::Io(format!("the base's {name}: {e}")))?;
        let q = match deltas.get(name.as_str()) {
            None => q,
            Some(delta) => {
                let w = q.dequantize(&cpu).map_err(engine)?;
                let merged = (w + delta).and_then(|m| m.to_dtype(DType::F32)).map_err(engine)?;
                // 8 bits at least: a 4-bit grid is coarser than most of what an adapter adds.
                let to = match q.dtype() {
                    t @ (GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 | GgmlDType::Q8_0) => t,
                    _ => GgmlDType::Q8_0,
                };
                QTensor::quantize(&merged, to).or_else(|_| QTensor::quantize(&merged, GgmlDType::F16)).map_err(engine)?
            }
        };
        tensors.push((name.clone(), q));
    }
    let mut metadata: Vec<(String, Value)> = bcontent
        .metadata
        .into_iter()
        // The writer aligns to 32 bytes and says nothing: another alignment would lie.
        .filter(|(k, _)| k != "general.alignment")
        .collect();
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((metadata, tensors))
}

fn engine(e: candle_core::Error) -> MergeError {
    MergeError::Io(format!("merging: {e}"))
}

/// A file that could not be opened, or is not a GGUF file.
enum ReadError {
    Open(String),
    Format(String),
}

fn read(path: &Path) -> Result<(File, Content), ReadError> {
    let mut file = File::open(path).map_err(|e| ReadError::Open(format!("cannot open {}: {e}", path.display())))?;
    let content = Content::read(&mut file).map_err(|e| ReadError::Format(format!("{} is not a GGUF file: {e}", path.display())))?;
    Ok((file, content))
}

/// Writes through a temporary name in the same folder renamed at the end, so a crash or two
/// loads at once never leave half a model under the final name.
fn write(target: &Path, metadata: &[(String, Value)], tensors: &[(String, QTensor)]) -> Result<(), TrainError> {
    if let Some(folder) = target.parent() {
        std::fs::create_dir_all(folder)?;
    }
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let partial = target.with_extension(format!("gguf.partial-{}-{call}", std::process::id()));
    let written = (|| -> Result<(), TrainError> {
        let mut file = BufWriter::new(File::create(&partial)?);
        let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        gguf_file::write(&mut file, &meta, &refs)?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&partial, target)?;
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}
