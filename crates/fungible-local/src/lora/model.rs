//! The llama forward pass over a GGUF's weights, for training adapters.
//!
//! The base weights are read from the GGUF and dequantized to f32 once; they are frozen:
//! each projection runs through [`Frozen`], whose backward gives the input's gradient only,
//! so no weight gradient is ever computed for them (candle's matmul would compute both).
//! Attention and RoPE are custom ops too, with their backward written here: attention runs
//! head by head and keeps no `tokens × tokens` matrix for the backward pass (it recomputes
//! each head's probabilities there, as flash attention does), which is what makes a
//! micro-batch of a thousand tokens fit in memory and time; RoPE runs candle's fast kernel
//! both ways (its backward is the rotation by the opposite angle). Every other op is one whose
//! backward candle implements (its fused softmax and RMS norm kernels have none and would
//! silently cut the gradient).
//!
//! Layout: weights are `[out, in]` as the GGUF holds them (ggml `ne` reversed). llama.cpp's
//! converter permutes the query and key rows for its "normal" RoPE, which rotates adjacent
//! pairs; so does [`rope`] here, and an adapter trained on these weights is in the GGUF's
//! row order already.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, D, DType, Device, Layout, Shape, Tensor, Var};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::{LoraSettings, Projection, TrainError};

/// The shape of a llama model, from the GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Hparams {
    pub arch: String,
    pub layers: usize,
    pub dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope_base: f32,
    pub eps: f64,
}

/// One block's frozen weights.
struct Block {
    attn_norm: Tensor,
    ffn_norm: Tensor,
    proj: BTreeMap<Projection, Tensor>,
}

/// The frozen base model.
pub(crate) struct Base {
    pub hp: Hparams,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
}

/// The trainable adapters: `A` (`[rank, in]`) and `B` (`[out, rank]`) per block and
/// projection, named as the GGUF adapter names them.
pub(crate) struct Adapters {
    pub scale: f64,
    /// `(name of A, A, name of B, B)` per block and projection, in a fixed order.
    pub pairs: BTreeMap<(usize, Projection), (Var, Var)>,
}

impl Adapters {
    pub fn name(block: usize, p: Projection, half: char) -> String {
        format!("blk.{block}.{}.weight.lora_{half}", p.gguf())
    }

    /// Fresh adapters: `A` uniform in ±1/√in (as PEFT initialises it), `B` zero, so the
    /// adapted model starts as the base model.
    pub fn new(base: &Base, settings: &LoraSettings) -> Result<Adapters, TrainError> {
        let mut rng = StdRng::seed_from_u64(settings.seed);
        let mut pairs = BTreeMap::new();
        for (i, block) in base.blocks.iter().enumerate() {
            for &p in &settings.target_modules {
                let w = &block.proj[&p];
                let (out, inp) = w.dims2()?;
                let bound = 1.0 / (inp as f32).sqrt();
                let a: Vec<f32> = (0..settings.rank * inp).map(|_| rng.random_range(-bound..bound)).collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (settings.rank, inp), &Device::Cpu)?)?;
                let b = Var::zeros((out, settings.rank), DType::F32, &Device::Cpu)?;
                pairs.insert((i, p), (a, b));
            }
        }
        Ok(Adapters { scale: f64::from(settings.alpha) / settings.rank as f64, pairs })
    }

    /// Every trainable tensor with its GGUF name.
    pub fn named(&self) -> Vec<(String, &Var)> {
        let mut out = Vec::with_capacity(self.pairs.len() * 2);
        for (&(i, p), (a, b)) in &self.pairs {
            out.push((Adapters::name(i, p, 'a'), a));
            out.push((Adapters::name(i, p, 'b'), b));
        }
        out
    }

    pub fn parameters(&self) -> usize {
        self.pairs.values().map(|(a, b)| a.elem_count() + b.elem_count()).sum()
    }
}

/// A packed micro-batch: several examples one after the other, each attending only to
/// itself, with positions from 0 in each.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Batch {
    pub tokens: Vec<u32>,
    pub positions: Vec<u32>,
    /// Which example each token belongs to.
    pub segments: Vec<u32>,
    /// `(index, next token)`: the positions whose prediction is trained on.
    pub targets: Vec<(u32, u32)>,
}

fn meta_usize(content: &Content, key: &str) -> Result<usize, TrainError> {
    let v = content
        .metadata
        .get(key)
        .ok_or_else(|| TrainError::BadInput(format!("the base GGUF has no {key}")))?;
    Ok(v.to_u32().map(|n| n as usize).or_else(|_| v.to_u64().map(|n| n as usize))?)
}

impl Base {
    /// Reads and dequantizes `path`, a llama-architecture GGUF.
    pub fn load(path: &Path) -> Result<Base, TrainError> {
        let mut file = File::open(path)
            .map_err(|e| TrainError::BadInput(format!("cannot open the base model {}: {e}", path.display())))?;
        let content = Content::read(&mut file)
            .map_err(|e| TrainError::BadInput(format!("{} is not a GGUF file: {e}", path.display())))?;
        let arch = match content.metadata.get("general.architecture") {
            Some(Value::String(a)) => a.clone(),
            _ => return Err(TrainError::BadInput("the base GGUF names no general.architecture".into())),
        };
        if arch != "llama" {
            return Err(TrainError::BadInput(format!(
                "local LoRA training supports llama-architecture models; {} is {arch:?}",
                path.display()
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        // Llama 3.1+ scales RoPE's low frequencies (`rope_freqs`): trained without it, the
        // adapter would fit another model than the one llama.cpp serves.
        if content.tensor_infos.contains_key("rope_freqs.weight") || content.metadata.contains_key(&key("rope.scaling.type")) {
            return Err(TrainError::BadInput(format!(
                "{} scales its RoPE frequencies (Llama 3.1 and later), which local training does not support yet",
                path.display()
            )));
        }
        let dim = meta_usize(&content, &key("embedding_length"))?;
        let heads = meta_usize(&content, &key("attention.head_count"))?;
        let kv_heads = meta_usize(&content, &key("attention.head_count_kv")).unwrap_or(heads);
        let rope_base = match content.metadata.get(&key("rope.freq_base")) {
            Some(v) => v.to_f32()?,
            None => 10_000.0,
        };
        let eps = match content.metadata.get(&key("attention.layer_norm_rms_epsilon")) {
            Some(v) => f64::from(v.to_f32()?),
            None => 1e-5,
        };
        let hp = Hparams {
            layers: meta_usize(&content, &key("block_count"))?,
            dim,
            heads,
            kv_heads,
            head_dim: dim / heads,
            rope_base,
            eps,
            arch,
        };
        if heads == 0 || dim % heads != 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(TrainError::BadInput(format!("unsupported head layout: {heads} heads, {kv_heads} key/value heads")));
        }
        let mut tensor = |name: &str| -> Result<Tensor, TrainError> {
            let q = content
                .tensor(&mut file, name, &Device::Cpu)
                .map_err(|e| TrainError::BadInput(format!("the base GGUF: {name}: {e}")))?;
            Ok(q.dequantize(&Device::Cpu)?)
        };
        let embed = tensor("token_embd.weight")?;
        let norm = tensor("output_norm.weight")?;
        if content.tensor_infos.contains_key("output.weight") {
            // An untied output layer is not trained through here; the loss would be wrong.
            return Err(TrainError::BadInput(
                "models with an output layer separate from the token embeddings are not supported yet".into(),
            ));
        }
        let mut blocks = Vec::with_capacity(hp.layers);
        for i in 0..hp.layers {
            let mut proj = BTreeMap::new();
            for p in Projection::ALL {
                proj.insert(p, tensor(&format!("blk.{i}.{}.weight", p.gguf()))?);
            }
            blocks.push(Block {
                attn_norm: tensor(&format!("blk.{i}.attn_norm.weight"))?,
                ffn_norm: tensor(&format!("blk.{i}.ffn_norm.weight"))?,
                proj,
            });
        }
        Ok(Base { hp, embed, blocks, norm })
    }

    /// Mean cross-entropy of `batch`'s targets, times `weight` (the share of the optimizer
    /// step's target tokens this batch holds, so accumulated micro-batches average right).
    /// `dropout`: the adapters' input dropout, with the generator of its masks.
    pub fn loss(
        &self,
        batch: &Batch,
        adapters: &Adapters,
        dropout: Option<(f32, &mut StdRng)>,
        weight: f64,
    ) -> Result<Tensor, TrainError> {
        let hidden = self.hidden(batch, adapters, dropout)?;
        let (index, next): (Vec<u32>, Vec<u32>) = batch.targets.iter().copied().unzip();
        let n = index.len();
        let index = Tensor::from_vec(index, n, &Device::Cpu)?;
        let next = Tensor::from_vec(next, n, &Device::Cpu)?;
        // Only the trained positions go through the output layer (49k columns wide).
        let selected = hidden.index_select(&index, 0)?;
        let logits = frozen(&selected, &self.embed)?;
        Ok((candle_nn::loss::cross_entropy(&logits, &next)? * weight)?)
    }

    /// Logits of every position, for checking the forward pass against llama.cpp.
    #[cfg(test)]
    pub fn logits(&self, batch: &Batch, adapters: &Adapters) -> Result<Tensor, TrainError> {
        let hidden = self.hidden(batch, adapters, None)?;
        frozen(&hidden, &self.embed)
    }

    /// The final hidden states (after the output norm), `[tokens, dim]`.
    fn hidden(&self, batch: &Batch, adapters: &Adapters, mut dropout: Option<(f32, &mut StdRng)>) -> Result<Tensor, TrainError> {
        let hp = &self.hp;
        let t = batch.tokens.len();
        let tokens = Tensor::from_slice(&batch.tokens, t, &Device::Cpu)?;
        let mut x = self.embed.index_select(&tokens, 0)?;
        let mask = block_causal_mask(&batch.segments)?;
        let (cos, sin) = rope_tables(&batch.positions, hp.head_dim, hp.rope_base)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let mut project = |input: &Tensor, p: Projection| -> Result<Tensor, TrainError> {
                let w = &block.proj[&p];
                let Some((a, b)) = adapters.pairs.get(&(i, p)) else { return frozen(input, w) };
                let (dropout, seed) = match dropout.as_mut() {
                    Some((rate, rng)) if *rate > 0.0 => (*rate, rng.random::<u64>()),
                    _ => (0.0, 0),
                };
                let op = Adapted { w: w.clone(), scale: adapters.scale, dropout, seed };
                Ok(input.apply_op3(a.as_tensor(), b.as_tensor(), op)?)
            };
            let h = rms_norm(&x, &block.attn_norm, hp.eps)?;
            let q = project(&h, Projection::AttnQ)?;
            let k = project(&h, Projection::AttnK)?;
            let v = project(&h, Projection::AttnV)?;
            let heads = |x: Tensor, n: usize| -> candle_core::Result<Tensor> {
                x.reshape((t, n, hp.head_dim))?.transpose(0, 1)?.contiguous()?.unsqueeze(0)
            };
            let q = rope(&heads(q, hp.heads)?, &cos, &sin)?.squeeze(0)?;
            let k = rope(&heads(k, hp.kv_heads)?, &cos, &sin)?.squeeze(0)?;
            let v = heads(v, hp.kv_heads)?.squeeze(0)?;
            let op = Attention { mask: mask.clone(), scale: 1.0 / (hp.head_dim as f64).sqrt(), group: hp.heads / hp.kv_heads };
            let attn = q.apply_op3(&k, &v, op)?;
            let attn = attn.transpose(0, 1)?.reshape((t, hp.dim))?;
            x = (x + project(&attn, Projection::AttnOutput)?)?;
            let h = rms_norm(&x, &block.ffn_norm, hp.eps)?;
            let gate = project(&h, Projection::FfnGate)?.silu()?;
            let up = project(&h, Projection::FfnUp)?;
            x = (x + project(&(gate * up)?, Projection::FfnDown)?)?;
        }
        Ok(rms_norm(&x, &self.norm, hp.eps)?)
    }
}

/// `x · wᵀ` for a frozen `w` (`[out, in]`): the backward gives `x`'s gradient only.
fn frozen(x: &Tensor, w: &Tensor) -> Result<Tensor, TrainError> {
    Ok(x.apply_op1(Frozen { w: w.clone() })?)
}

/// `x · Wᵀ + scale · (dropout(x) · Aᵀ) · Bᵀ` for a frozen `W` (`[out, in]`) and an adapter's
/// `A` (`[rank, in]`) and `B` (`[out, rank]`), as one op: its backward gives the gradients of
/// `x`, `A` and `B` from what it recomputes (the dropout mask from its seed, `x · Aᵀ`), so
/// none of the adapter's intermediate tensors is kept between the passes.
struct Adapted {
    w: Tensor,
    scale: f64,
    dropout: f32,
    seed: u64,
}

impl Adapted {
    /// `x` with the dropout applied (the same mask in both passes).
    fn dropped(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.dropout <= 0.0 {
            return Ok(x.clone());
        }
        let kept = dropout_mask(x.elem_count(), self.dropout, self.seed);
        let mut data = x.flatten_all()?.to_vec1::<f32>()?;
        for (v, m) in data.iter_mut().zip(kept) {
            *v *= m;
        }
        Tensor::from_vec(data, x.shape(), &Device::Cpu)
    }
}

impl CustomOp3 for Adapted {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, a, b) = (tensor_of(s1, l1)?, tensor_of(s2, l2)?, tensor_of(s3, l3)?);
        let delta = self.dropped(&x)?.matmul(&a.t()?)?.matmul(&b.t()?)?;
        output(&(x.matmul(&self.w.t()?)? + (delta * self.scale)?)?)
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, a, b, dy) = (x.detach(), a.detach(), b.detach(), grad.detach());
        let xd = self.dropped(&x)?;
        let u = xd.matmul(&a.t()?)?; // [tokens, rank]
        let db = (dy.t()?.matmul(&u)? * self.scale)?;
        let du = (dy.matmul(&b)? * self.scale)?;
        let da = du.t()?.matmul(&xd)?;
        let through_adapter = self.dropped(&du.matmul(&a)?)?;
        let dx = (dy.matmul(&self.w)? + through_adapter)?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}

/// A custom op's f32 input as a tensor of its own (a copy of the part its layout covers).
fn tensor_of(storage: &CpuStorage, layout: &Layout) -> candle_core::Result<Tensor> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Tensor::from_slice(&data[start..end], layout.shape(), &Device::Cpu),
        None => Err(candle_core::Error::Msg("a training op got a non-contiguous input".into())),
    }
}

/// A tensor as a custom op's output.
fn output(t: &Tensor) -> candle_core::Result<(CpuStorage, Shape)> {
    Ok((CpuStorage::F32(t.flatten_all()?.to_vec1::<f32>()?), t.shape().clone()))
}

/// Attention of `q` (`[heads, tokens, head_dim]`) over `k` and `v` (`[kv_heads, tokens,
/// head_dim]`, each shared by `group` query heads), under `mask` (`[tokens, tokens]`, 0 or
/// -∞), head by head. The backward recomputes each head's probabilities instead of keeping
/// them.
struct Attention {
    mask: Tensor,
    scale: f64,
    group: usize,
}

impl Attention {
    /// Head `h`'s attention probabilities, `[tokens, tokens]`.
    fn probabilities(&self, q: &Tensor, k: &Tensor) -> candle_core::Result<Tensor> {
        let scores = (q.matmul(&k.t()?)? * self.scale)?.broadcast_add(&self.mask)?;
        candle_nn::ops::softmax_last_dim(&scores)
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "packed-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (tensor_of(s1, l1)?, tensor_of(s2, l2)?, tensor_of(s3, l3)?);
        let heads = q.dim(0)?;
        let mut out = Vec::with_capacity(heads);
        for h in 0..heads {
            let kv = h / self.group;
            out.push(self.probabilities(&q.get(h)?, &k.get(kv)?)?.matmul(&v.get(kv)?)?);
        }
        output(&Tensor::stack(&out, 0)?)
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v, grad) = (q.detach(), k.detach(), v.detach(), grad.detach());
        let (heads, kv_heads) = (q.dim(0)?, k.dim(0)?);
        let mut dq = Vec::with_capacity(heads);
        let mut dk: Vec<Option<Tensor>> = vec![None; kv_heads];
        let mut dv: Vec<Option<Tensor>> = vec![None; kv_heads];
        let add = |slot: &mut Option<Tensor>, t: Tensor| -> candle_core::Result<()> {
            *slot = Some(match slot.take() {
                Some(sum) => (sum + t)?,
                None => t,
            });
            Ok(())
        };
        for h in 0..heads {
            let kv = h / self.group;
            let (qh, kh, vh, doh) = (q.get(h)?, k.get(kv)?, v.get(kv)?, grad.get(h)?);
            let p = self.probabilities(&qh, &kh)?;
            add(&mut dv[kv], p.t()?.matmul(&doh)?)?;
            let dp = doh.matmul(&vh.t()?)?;
            // Softmax's backward: p ⊙ (dp − Σ_j dp ⊙ p).
            let ds = (&p * dp.broadcast_sub(&(&dp * &p)?.sum_keepdim(D::Minus1)?)?)?;
            dq.push((ds.matmul(&kh)? * self.scale)?);
            add(&mut dk[kv], (ds.t()?.matmul(&qh)? * self.scale)?)?;
        }
        let collect = |parts: Vec<Option<Tensor>>| -> candle_core::Result<Tensor> {
            let parts: Vec<Tensor> = parts.into_iter().map(|p| p.ok_or_else(|| candle_core::Error::Msg("a key/value head no query head uses".into()))).collect::<Result<_, _>>()?;
            Tensor::stack(&parts, 0)
        };
        Ok((Some(Tensor::stack(&dq, 0)?), Some(collect(dk)?), Some(collect(dv)?)))
    }
}

/// RoPE through candle's kernel both ways: the backward rotates the gradient by the
/// opposite angles.
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        output(&candle_nn::rotary_emb::rope_i(&tensor_of(storage, layout)?, &self.cos, &self.sin)?)
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(candle_nn::rotary_emb::rope_i(&grad.detach().contiguous()?, &self.cos, &self.sin.neg()?)?))
    }
}

struct Frozen {
    w: Tensor,
}

impl CustomOp1 for Frozen {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        output(&tensor_of(storage, layout)?.matmul(&self.w.t()?)?)
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.w)?))
    }
}

/// Root-mean-square norm from ops that have a backward.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let mean = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(mean + eps)?.sqrt()?)?.broadcast_mul(weight)
}

/// RoPE on adjacent pairs (llama.cpp's "normal" mode): `x` is `[1, heads, tokens, head_dim]`,
/// `cos` and `sin` `[tokens, head_dim / 2]`.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    x.apply_op1(Rope { cos: cos.clone(), sin: sin.clone() })
}

/// `cos` and `sin` of each token's position times each pair's frequency
/// (`base^(-2i/head_dim)`).
fn rope_tables(positions: &[u32], head_dim: usize, base: f32) -> candle_core::Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(positions.len() * half);
    let mut sin = Vec::with_capacity(positions.len() * half);
    for &p in positions {
        for i in 0..half {
            let freq = 1.0 / f64::from(base).powf(2.0 * i as f64 / head_dim as f64);
            let angle = f64::from(p) * freq;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    let shape = (positions.len(), half);
    Ok((Tensor::from_vec(cos, shape, &Device::Cpu)?, Tensor::from_vec(sin, shape, &Device::Cpu)?))
}

/// 0 where token `i` may attend to token `j` (same example, `j ≤ i`), -∞ elsewhere.
fn block_causal_mask(segments: &[u32]) -> candle_core::Result<Tensor> {
    let t = segments.len();
    let mut mask = vec![f32::NEG_INFINITY; t * t];
    for i in 0..t {
        for j in 0..=i {
            if segments[i] == segments[j] {
                mask[i * t + j] = 0.0;
            }
        }
    }
    Tensor::from_vec(mask, (t, t), &Device::Cpu)
}

/// An inverted-dropout mask drawn from `seed` (seeded per step and projection, so a resumed
/// run and the backward pass draw the same one).
///
/// Xoshiro256++ (named, so the masks stay the same across `rand` versions), each 64-bit draw
/// giving two elements 32 bits each: a fifth of the time ChaCha took here, for masks of
/// millions of elements per step.
fn dropout_mask(n: usize, rate: f32, seed: u64) -> impl Iterator<Item = f32> {
    use rand::Rng;
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
    let keep = 1.0 / (1.0 - rate);
    // Dropped when the 32-bit draw is below rate · 2³².
    let threshold = (f64::from(rate) * 4_294_967_296.0) as u64;
    let mut pair = 0u64;
    (0..n).map(move |i| {
        let bits = if i % 2 == 0 {
            pair = rng.next_u64();
            pair >> 32
        } else {
            pair & 0xFFFF_FFFF
        };
        if bits < threshold { 0.0 } else { keep }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_keeps_examples_apart() {
        let m = block_causal_mask(&[0, 0, 1]).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(m[0], [0.0, f32::NEG_INFINITY, f32::NEG_INFINITY]);
        assert_eq!(m[1], [0.0, 0.0, f32::NEG_INFINITY]);
        assert_eq!(m[2], [f32::NEG_INFINITY, f32::NEG_INFINITY, 0.0]);
    }

    fn random(shape: &[usize], seed: u64) -> Var {
        let mut rng = StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Var::from_tensor(&Tensor::from_vec(data, shape, &Device::Cpu).unwrap()).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn the_fused_attention_and_rope_match_candles_ops_forward_and_backward() {
        // Two examples packed (4 and 3 tokens), 6 query heads over 2 key/value heads.
        let segments = [0, 0, 0, 0, 1, 1, 1];
        let positions = [0, 1, 2, 3, 0, 1, 2];
        let t = segments.len();
        let mask = block_causal_mask(&segments).unwrap();
        let (cos, sin) = rope_tables(&positions, 8, 10_000.0).unwrap();
        let (q, k, v) = (random(&[1, 6, t, 8], 1), random(&[1, 2, t, 8], 2), random(&[2, t, 8], 3));
        let weights = random(&[6, t, 8], 4); // the loss: a weighted sum of the output

        let fused = {
            let q = rope(q.as_tensor(), &cos, &sin).unwrap().squeeze(0).unwrap();
            let k = rope(k.as_tensor(), &cos, &sin).unwrap().squeeze(0).unwrap();
            let op = Attention { mask: mask.clone(), scale: 0.3, group: 3 };
            q.apply_op3(&k, v.as_tensor(), op).unwrap()
        };
        let reference = {
            let q = candle_nn::rotary_emb::rope_i_slow(q.as_tensor(), &cos, &sin).unwrap();
            let k = candle_nn::rotary_emb::rope_i_slow(k.as_tensor(), &cos, &sin).unwrap();
            let k = candle_transformers::utils::repeat_kv(k, 3).unwrap();
            let v = candle_transformers::utils::repeat_kv(v.as_tensor().unsqueeze(0).unwrap(), 3).unwrap();
            let scores = (q.matmul(&k.t().unwrap()).unwrap() * 0.3).unwrap().broadcast_add(&mask).unwrap();
            candle_nn::ops::softmax(&scores, D::Minus1).unwrap().matmul(&v).unwrap().squeeze(0).unwrap()
        };
        assert!(max_diff(&fused, &reference) < 1e-5);
        let loss = |out: &Tensor| (out * weights.as_tensor()).unwrap().sum_all().unwrap();
        let (g1, g2) = (loss(&fused).backward().unwrap(), loss(&reference).backward().unwrap());
        for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
            let d = max_diff(g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap());
            assert!(d < 1e-4, "the gradient of {name} differs by {d}");
        }
    }

    #[test]
    fn the_fused_adapter_matches_candles_ops_forward_and_backward() {
        let (x, a, b) = (random(&[5, 12], 5), random(&[3, 12], 6), random(&[7, 3], 7));
        let w = random(&[7, 12], 8).as_tensor().detach();
        let weights = random(&[5, 7], 9);
        for dropout in [0.0, 0.3] {
            let op = Adapted { w: w.clone(), scale: 2.0, dropout, seed: 11 };
            let fused = x.as_tensor().apply_op3(a.as_tensor(), b.as_tensor(), op).unwrap();
            let xd = if dropout > 0.0 {
                let mask: Vec<f32> = dropout_mask(x.elem_count(), dropout, 11).collect();
                (x.as_tensor() * Tensor::from_vec(mask, x.shape(), &Device::Cpu).unwrap()).unwrap()
            } else {
                x.as_tensor().clone()
            };
            let delta = xd.matmul(&a.as_tensor().t().unwrap()).unwrap().matmul(&b.as_tensor().t().unwrap()).unwrap();
            let reference = (x.as_tensor().matmul(&w.t().unwrap()).unwrap() + (delta * 2.0).unwrap()).unwrap();
            assert!(max_diff(&fused, &reference) < 1e-5);
            let loss = |out: &Tensor| (out * weights.as_tensor()).unwrap().sum_all().unwrap();
            let (g1, g2) = (loss(&fused).backward().unwrap(), loss(&reference).backward().unwrap());
            for (name, v) in [("x", &x), ("A", &a), ("B", &b)] {
                let d = max_diff(g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
                assert!(d < 1e-4, "dropout {dropout}: the gradient of {name} differs by {d}");
            }
        }
    }

    #[test]
    fn the_dropout_mask_drops_its_rate_and_keeps_the_mean() {
        let mask: Vec<f32> = dropout_mask(100_001, 0.1, 7).collect();
        let dropped = mask.iter().filter(|&&m| m == 0.0).count() as f64 / mask.len() as f64;
        let mean = mask.iter().map(|&m| f64::from(m)).sum::<f64>() / mask.len() as f64;
        assert!((dropped - 0.1).abs() < 0.005 && (mean - 1.0).abs() < 0.01, "dropped {dropped}, mean {mean}");
        assert!(mask.iter().all(|&m| m == 0.0 || (m - 1.0 / 0.9).abs() < 1e-6));
        assert_eq!(mask, dropout_mask(100_001, 0.1, 7).collect::<Vec<_>>(), "a seed draws one mask");
    }

    #[test]
    fn frozen_gives_the_input_gradient_only() {
        let w = Tensor::new(&[[1f32, 2.0], [3.0, 4.0], [5.0, 6.0]], &Device::Cpu).unwrap();
        let x = Var::new(&[[1f32, -1.0]], &Device::Cpu).unwrap();
        let y = frozen(x.as_tensor(), &w).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), [[-1.0, -1.0, -1.0]]);
        let grads = y.sum_all().unwrap().backward().unwrap();
        // d(sum(x·wᵀ))/dx = column sums of w.
        assert_eq!(grads.get(&x).unwrap().to_vec2::<f32>().unwrap(), [[9.0, 12.0]]);
        // The same through candle's matmul, which the op replaces.
        let reference = x.as_tensor().matmul(&w.t().unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(reference.get(&x).unwrap().to_vec2::<f32>().unwrap(), [[9.0, 12.0]]);
    }
}
