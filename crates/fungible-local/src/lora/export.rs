//! The adapter as a GGUF LoRA file, the way llama.cpp's `llama_adapter_lora_init` reads it:
//! `general.type = "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha` (f32), and per
//! adapted weight `NAME.lora_a` (ggml `[in, rank]`) and `NAME.lora_b` (`[rank, out]`), in f32.
//! llama.cpp scales the adapter by `alpha / rank`, as training did.

use std::io::BufWriter;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};

use super::TrainError;
use super::model::Adapters;

/// Writes `adapters` to `path` (through a temporary file, so a reader never sees half of
/// one).
pub(crate) fn write(path: &Path, adapters: &Adapters, arch: &str, alpha: f32, name: &str) -> Result<(), TrainError> {
    let mut tensors = Vec::new();
    for (tensor_name, var) in adapters.named() {
        // `quantize` reads the whole buffer: a copy, never a view.
        let t = var.as_tensor().copy()?;
        tensors.push((tensor_name, QTensor::quantize(&t, GgmlDType::F32)?));
    }
    let arch = Value::String(arch.to_owned());
    let kind = Value::String("adapter".into());
    let lora = Value::String("lora".into());
    let alpha = Value::F32(alpha);
    let name = Value::String(name.to_owned());
    let metadata: [(&str, &Value); 5] = [
        ("general.architecture", &arch),
        ("general.type", &kind),
        ("general.name", &name),
        ("adapter.type", &lora),
        ("adapter.lora.alpha", &alpha),
    ];
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let tmp = path.with_extension("gguf.part");
    {
        let mut file = BufWriter::new(std::fs::File::create(&tmp)?);
        gguf_file::write(&mut file, &metadata, &refs)?;
        std::io::Write::flush(&mut file)?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}
