//! The Qwen3 transformer run as an encoder: one causal forward pass over a left-padded batch, no KV cache, no decoding.
//!
//! embeddings → N × (RMSNorm → attention (q/k per-head RMSNorm, RoPE, grouped-query heads, causal + padding mask)
//! → residual → RMSNorm → SwiGLU MLP → residual) → final RMSNorm, and only the last position is kept (last-token
//! pooling), so the last layer computes attention and MLP for that position alone.
//!
//! Only attention sees the batch padded: the embeddings, norms, linear layers and MLP run on the real tokens alone,
//! packed sequence after sequence, so a short text batched with a long one costs its own tokens there, not the long
//! one's length. The query, key and value rows are spread into the left-padded layout for attention (padding rows
//! zero) and its output gathered back. Padding never changes a real token's result: each sequence's positions start at
//! 0 after its padding, and its tokens never attend to padding. Attention is computed in blocks of queries, each
//! against the keys causality allows, so a long input never materialises the whole score matrix.

use std::cell::OnceCell;

use candle_core::{DType, Device, Tensor};

use crate::attention;
use crate::attention_layout::{self, HeadNorms};
use crate::config::Qwen3Config;
use crate::error::{Error, Result};
use crate::linear::{with_cpu_f32s, GateUp, Linear};
use crate::precision::{CpuAttention, Precision};
use crate::profile::{timed, Part};
use crate::weights::Weights;

/// Upper bound on the attention scores held at once (elements), which sets the query block size.
const SCORE_BLOCK_ELEMENTS: usize = 16 << 20;

pub struct Encoder {
    config: Qwen3Config,
    precision: Precision,
    device: Device,
    /// In the dtype [`Precision::embed_tokens`] says.
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    rope: Rope,
}

struct Layer {
    input_norm: Tensor,
    /// q, k and v projections fused into one matrix: one larger matmul instead of three.
    qkv: Linear,
    /// Times 1/√head_dim.
    q_norm: Tensor,
    k_norm: Tensor,
    o_proj: Linear,
    post_norm: Tensor,
    /// gate and up projections fused likewise, with SwiGLU.
    gate_up: GateUp,
    down: Linear,
}

/// cos/sin tables for every position, computed like transformers does (fp32 inverse frequencies and angles).
#[derive(Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

/// A batch: its packed rows (every real token, sequence after sequence) and the left-padded layout attention works in.
struct Batch {
    size: usize,
    /// The longest sequence's length: the padded layout is size × len.
    len: usize,
    pads: Vec<usize>,
    /// Each sequence's last token among the packed rows: what the last layer computes and the pooling keeps.
    last_rows: Tensor,
    /// The model's RoPE tables (every position).
    rope: Rope,
    /// What multiplies the CPU attention ([`Precision::cpu_attention`]).
    cpu_attention: CpuAttention,
    /// What only the device path reads, made by the first layer that runs it (the CPU path never does).
    device_path: OnceCell<DevicePath>,
    /// The device-side attention's masks for all queries, one per block (additive masks, or for the fused GPU kernel
    /// the visible keys' starts): made by the first layer that needs them and shared by the others (every layer but
    /// the last attends with the same blocks).
    masks: OnceCell<Vec<Tensor>>,
}

/// The device path's view of a batch: where its packed rows go in the padded layout, and RoPE's rows for each padded
/// position.
struct DevicePath {
    /// `None` when no sequence is padded (the layouts coincide).
    padding: Option<Padding>,
    /// (b, len, head_dim / 2).
    cos: Tensor,
    sin: Tensor,
}

/// Row indices between the packed and the padded layouts of a batch with padding (made as lists, used as tensors).
#[derive(Debug, PartialEq)]
struct Padding<I = Tensor> {
    /// For each padded row, its packed row, or the row past the last (a zero row appended) for padding.
    to_padded: I,
    /// For each packed row, its padded row.
    to_packed: I,
}

impl Encoder {
    /// Loads the layers as [`Precision`] says (kernel, weights' and activations' dtypes).
    pub fn load(config: &Qwen3Config, weights: &Weights, precision: Precision, device: &Device) -> Result<Self> {
        let c = config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (q_out, kv_out) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let dtype = precision.activations;
        let get = |name: &str, shape: &[usize]| weights.get(name, shape, dtype, device);
        let get_weight = |name: &str, shape: &[usize]| weights.get(name, shape, precision.weights_read_as(), device);
        // The weights of projections that share an input, stacked (out_1 + out_2 + …) × input.
        let stacked = |names: &[&str], outs: &[usize], input: usize| -> Result<Tensor> {
            let ws = names
                .iter()
                .zip(outs)
                .map(|(n, &o)| get_weight(&format!("{n}.weight"), &[o, input]))
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::cat(&ws, 0)?)
        };
        let linear = |names: &[&str], outs: &[usize], input: usize, bias: bool| -> Result<Linear> {
            let b = if bias {
                let bs = names
                    .iter()
                    .zip(outs)
                    .map(|(n, &o)| get(&format!("{n}.bias"), &[o]))
                    .collect::<Result<Vec<_>>>()?;
                Some(Tensor::cat(&bs, 0)?)
            } else {
                None
            };
            Linear::new(stacked(names, outs, input)?, b, precision.linear)
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("layers.{i}");
            let attn = format!("{p}.self_attn");
            let mlp = format!("{p}.mlp");
            layers.push(Layer {
                input_norm: get(&format!("{p}.input_layernorm.weight"), &[h])?,
                qkv: linear(
                    &[&format!("{attn}.q_proj"), &format!("{attn}.k_proj"), &format!("{attn}.v_proj")],
                    &[q_out, kv_out, kv_out],
                    h,
                    c.attention_bias,
                )?,
                // Scaled by 1/√head_dim at load: RoPE is linear, so the scores come out scaled without an extra
                // pass over the queries in every layer.
                q_norm: (weights.get(&format!("{attn}.q_norm.weight"), &[hd], DType::F32, device)?
                    * (1.0 / (hd as f64).sqrt()))?
                .to_dtype(dtype)?,
                k_norm: get(&format!("{attn}.k_norm.weight"), &[hd])?,
                o_proj: linear(&[&format!("{attn}.o_proj")], &[h], q_out, c.attention_bias)?,
                post_norm: get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate_up: GateUp::new(
                    stacked(
                        &[&format!("{mlp}.gate_proj"), &format!("{mlp}.up_proj")],
                        &[c.intermediate_size, c.intermediate_size],
                        h,
                    )?,
                    precision.linear,
                )?,
                down: linear(&[&format!("{mlp}.down_proj")], &[h], c.intermediate_size, false)?,
            });
        }
        let embed_dtype = precision.embed_tokens(weights.dtype("embed_tokens.weight")?);
        Ok(Encoder {
            config: c.clone(),
            precision,
            device: device.clone(),
            embed_tokens: weights.get("embed_tokens.weight", &[c.vocab_size, h], embed_dtype, device)?,
            layers,
            norm: get("norm.weight", &[h])?,
            rope: Rope::new(c, dtype, device)?,
        })
    }

    /// The dtype of the linear layers' weights (what the model computes in).
    pub fn dtype(&self) -> DType {
        self.precision.weights()
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Final hidden state of the last token of each sequence, (batch, hidden) in f32, not normalised.
    /// `canceled` is polled before each layer and between its attention and its MLP (the model server pauses bulk
    /// batches there while a query computes: the finer, the shorter a query's wait); when it returns true the pass
    /// stops with [`Error::Canceled`].
    pub fn forward(&self, seqs: &[Vec<u32>], canceled: &dyn Fn() -> bool) -> Result<Tensor> {
        let len = seqs.iter().map(Vec::len).max().unwrap_or(0);
        self.forward_pass(seqs, canceled)
            .map_err(|e| crate::memory::explain_pass_error(e, &self.device, seqs.len(), len))
    }

    fn forward_pass(&self, seqs: &[Vec<u32>], canceled: &dyn Fn() -> bool) -> Result<Tensor> {
        let c = &self.config;
        let batch = self.batch(seqs)?;
        let ids = Tensor::new(seqs.concat(), &self.device)?;
        // (tokens, hidden), packed; (batch, hidden) after the last layer.
        let mut x = self.embed_tokens.index_select(&ids, 0)?.to_dtype(self.precision.activations)?;
        for (i, layer) in self.layers.iter().enumerate() {
            if canceled() {
                return Err(Error::Canceled);
            }
            let last_only = i + 1 == self.layers.len();
            x = layer.forward(&x, &batch, c, last_only, canceled)?;
        }
        let pooled = candle_nn::ops::rms_norm(&x.contiguous()?, &self.norm, c.rms_norm_eps as f32)?;
        Ok(pooled.to_dtype(DType::F32)?)
    }

    fn batch(&self, seqs: &[Vec<u32>]) -> Result<Batch> {
        let len = seqs.iter().map(Vec::len).max().unwrap_or(0);
        if len == 0 || seqs.iter().any(Vec::is_empty) {
            return Err(Error::compute("empty token sequence"));
        }
        if len > self.config.max_position_embeddings {
            return Err(Error::TooLong { tokens: len, limit: self.config.max_position_embeddings });
        }
        if let Some(&bad) = seqs.iter().flatten().find(|&&id| id as usize >= self.config.vocab_size) {
            return Err(Error::compute(format!(
                "token id {bad} is outside the vocabulary ({})",
                self.config.vocab_size
            )));
        }
        let pads: Vec<usize> = seqs.iter().map(|s| len - s.len()).collect();
        let last_rows = Tensor::new(last_rows(&pads, len), &self.device)?;
        let (rope, device_path, masks) = (self.rope.clone(), OnceCell::new(), OnceCell::new());
        let cpu_attention = self.precision.cpu_attention();
        Ok(Batch { size: seqs.len(), len, pads, last_rows, rope, cpu_attention, device_path, masks })
    }
}

impl Batch {
    /// The device path's view, made on first use.
    fn device_path(&self) -> Result<&DevicePath> {
        if let Some(made) = self.device_path.get() {
            return Ok(made);
        }
        let (pads, len, device) = (&self.pads, self.len, self.rope.cos.device());
        let index = |rows: Vec<u32>| Tensor::new(rows, device);
        let padding = match padding_indices(pads, len) {
            Some(Padding { to_padded, to_packed }) => {
                Some(Padding { to_padded: index(to_padded)?, to_packed: index(to_packed)? })
            }
            None => None,
        };
        let positions: Vec<u32> =
            pads.iter().flat_map(|&pad| std::iter::repeat_n(0, pad).chain(0..(len - pad) as u32)).collect();
        let positions = index(positions)?;
        let half = self.rope.cos.dim(1)?;
        let cos = self.rope.cos.index_select(&positions, 0)?.reshape((self.size, len, half))?;
        let sin = self.rope.sin.index_select(&positions, 0)?.reshape((self.size, len, half))?;
        let _ = self.device_path.set(DevicePath { padding, cos, sin });
        Ok(self.device_path.get().expect("set above"))
    }

    /// Packed rows (tokens, width) in the padded layout (size, len, width), padding rows zero.
    fn padded(&self, rows: &Tensor) -> Result<Tensor> {
        let width = rows.dim(1)?;
        let rows = match &self.device_path()?.padding {
            None => rows.clone(),
            Some(p) => {
                let zero = Tensor::zeros((1, width), rows.dtype(), rows.device())?;
                Tensor::cat(&[rows, &zero], 0)?.index_select(&p.to_padded, 0)?
            }
        };
        Ok(rows.reshape((self.size, self.len, width))?)
    }

    /// The padded layout (size, len, width) back to packed rows (tokens, width).
    fn packed(&self, t: &Tensor) -> Result<Tensor> {
        let t = t.reshape((self.size * self.len, t.dim(2)?))?;
        Ok(match &self.device_path()?.padding {
            None => t,
            Some(p) => t.index_select(&p.to_packed, 0)?,
        })
    }
}

/// Each sequence's last row among the packed rows of a batch padded to `len` with `pads` on the left of each sequence.
fn last_rows(pads: &[usize], len: usize) -> Vec<u32> {
    attention_layout::packed_starts(pads, len)[1..].iter().map(|&end| end as u32 - 1).collect()
}

/// For the same batch: the packed row of each padded row (`tokens`, past the last packed row, for padding) and the
/// padded row of each packed one, or `None` when nothing is padded.
fn padding_indices(pads: &[usize], len: usize) -> Option<Padding<Vec<u32>>> {
    if pads.iter().all(|&p| p == 0) {
        return None;
    }
    let starts = attention_layout::packed_starts(pads, len);
    let tokens = starts[pads.len()] as u32;
    let (mut to_padded, mut to_packed) = (Vec::with_capacity(pads.len() * len), Vec::with_capacity(tokens as usize));
    for (i, (&pad, &start)) in pads.iter().zip(&starts).enumerate() {
        to_padded.extend(std::iter::repeat_n(tokens, pad));
        to_padded.extend(start as u32..(start + len - pad) as u32);
        to_packed.extend((i * len + pad) as u32..((i + 1) * len) as u32);
    }
    Some(Padding { to_padded, to_packed })
}

impl Layer {
    /// Packed rows (tokens, hidden) → (tokens, hidden), or (b, hidden) for each sequence's last token alone when
    /// `last_only`; `canceled` is polled between the attention and the MLP.
    fn forward(
        &self,
        x: &Tensor,
        batch: &Batch,
        c: &Qwen3Config,
        last_only: bool,
        canceled: &dyn Fn() -> bool,
    ) -> Result<Tensor> {
        let eps = c.rms_norm_eps as f32;
        let normed = timed(Part::NormsRope, || candle_nn::ops::rms_norm(x, &self.input_norm, eps))?;
        let first_query = if last_only { batch.len - 1 } else { 0 };
        let residual = if last_only { x.index_select(&batch.last_rows, 0)? } else { x.clone() };
        let x = self.attention(&normed, &residual, batch, c, first_query)?.contiguous()?;
        if canceled() {
            return Err(Error::Canceled);
        }
        let normed = timed(Part::NormsRope, || candle_nn::ops::rms_norm(&x, &self.post_norm, eps))?;
        let hidden = self.gate_up.forward(&normed)?;
        self.down.forward_add(&hidden, &x)
    }

    /// `residual` plus the attention output of packed rows `x`: (tokens, hidden) for every query, or (b, hidden) for
    /// each sequence's last (`first_query` = len - 1, its position in the padded layout).
    fn attention(
        &self,
        x: &Tensor,
        residual: &Tensor,
        batch: &Batch,
        c: &Qwen3Config,
        first_query: usize,
    ) -> Result<Tensor> {
        let (heads, kv_heads, head_dim) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let shape = attention::Shape { batch: batch.size, heads, kv_heads, len: batch.len, head_dim, first_query };
        let eps = c.rms_norm_eps as f32;
        let qkv = self.qkv.forward(x)?;
        let out = if qkv.device().is_cpu() && qkv.dtype() == DType::F32 {
            self.cpu_attention(&qkv.contiguous()?, batch, shape, eps)?
        } else {
            // Norms, RoPE and attention as candle operations (a GPU's are asynchronous: there the profile's parts are
            // when they were queued, not computed).
            timed(Part::Attention, || self.padded_attention(&qkv, batch, shape, eps))?
        };
        self.o_proj.forward_add(&out, residual)
    }

    /// On a CPU in f32: the heads split, normed and rotated in one pass into our kernel's layout, its output packed
    /// again (`attention_layout`). q_norm's weights carry the 1/√head_dim score scale (see `load`).
    fn cpu_attention(&self, qkv: &Tensor, batch: &Batch, s: attention::Shape, eps: f32) -> Result<Tensor> {
        let width = s.heads * s.head_dim;
        let (rope, pads) = (&batch.rope, &batch.pads);
        let out = with_cpu_f32s([qkv, &self.q_norm, &self.k_norm, &rope.cos, &rope.sin], |[qkv, q, k, cos, sin]| {
            let norms = HeadNorms { q, k, eps, cos, sin };
            let (q, k, v) = timed(Part::NormsRope, || attention_layout::split_heads(qkv, pads, s, &norms));
            timed(Part::Attention, || {
                let out = match batch.cpu_attention {
                    CpuAttention::F32 => attention::causal_attention(&q, &k, &v, pads, s),
                    #[cfg(onednn)]
                    CpuAttention::Onednn(kernel) => {
                        crate::attention_onednn::causal_attention_in(kernel, &q, &k, &v, pads, s)?
                    }
                };
                Ok::<_, Error>(attention_layout::packed_rows(out, pads, s))
            })
        })??;
        let rows = out.len() / width;
        Ok(Tensor::from_vec(out, (rows, width), qkv.device())?)
    }

    /// Elsewhere (a GPU; f16 on a CPU without our kernels): candle's operations on the padded layout.
    fn padded_attention(&self, qkv: &Tensor, batch: &Batch, s: attention::Shape, eps: f32) -> Result<Tensor> {
        let (b, l, hd, first_query) = (s.batch, s.len, s.head_dim, s.first_query);
        let (nh, nkv) = (s.heads, s.kv_heads);
        let (qkv, path) = (batch.padded(qkv)?, batch.device_path()?);
        // (b, l, heads*hd) → per-head RMSNorm → (b, heads, l, hd) → RoPE.
        let heads = |start: usize, n: usize, from: usize, norm: Option<&Tensor>| -> Result<Tensor> {
            let t = qkv.narrow(1, from, l - from)?.narrow(2, start * hd, n * hd)?.contiguous()?.reshape((
                b,
                l - from,
                n,
                hd,
            ))?;
            let t = match norm {
                Some(w) => candle_nn::ops::rms_norm(&t, w, eps)?,
                None => t,
            };
            Ok(t.transpose(1, 2)?.contiguous()?)
        };
        let rope = |t: Tensor, from: usize| -> Result<Tensor> {
            let cos = path.cos.narrow(1, from, l - from)?.contiguous()?;
            let sin = path.sin.narrow(1, from, l - from)?.contiguous()?;
            Ok(candle_nn::rotary_emb::rope(&t, &cos, &sin)?)
        };
        let q = rope(heads(0, nh, first_query, Some(&self.q_norm))?, first_query)?;
        let k = rope(heads(nh, nkv, 0, Some(&self.k_norm))?, 0)?;
        let v = heads(nh + nkv, nkv, 0, None)?;
        let out = candle_attention(&q, &k, &v, &batch.pads, first_query, &batch.masks)?;
        // Every sequence's last position is a real token: with one query each, the rows are already packed.
        Ok(if first_query == 0 { batch.packed(&out)? } else { out.reshape((b, nh * hd))? })
    }
}

/// Attention with candle operations, for the GPU (and f16 on a CPU): blocks of queries against the keys causality
/// allows, masked by the fused softmax kernel on a GPU in bf16/f32 ([`fused_softmax`]), else by an additive mask, all
/// on the device. q is (b, heads, queries, hd) for positions `first_query..`;
/// k and v (b, kv heads, len, hd). Returns (b, queries, heads × hd). With all queries (`first_query` 0) the blocks'
/// masks are taken from `shared` (made there by the first call of a pass), since every such layer needs the same.
fn candle_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    pads: &[usize],
    first_query: usize,
    shared: &OnceCell<Vec<Tensor>>,
) -> Result<Tensor> {
    let (b, nh, queries, hd) = q.dims4()?;
    let (nkv, l) = (k.dim(1)?, k.dim(2)?);
    let groups = nh / nkv;
    let block = (SCORE_BLOCK_ELEMENTS / (b * nh * l).max(1)).clamp(1, queries);
    let blocks: Vec<(usize, usize)> = (0..queries).step_by(block).map(|s| (s, block.min(queries - s))).collect();
    let fused = fused_softmax(q);
    // Per block: the visible keys' starts for the fused kernel, or an additive mask for candle's operations.
    let make_masks = || -> Result<Vec<Tensor>> {
        blocks
            .iter()
            .map(|&(s, n)| {
                let (first, device) = (first_query + s, q.device());
                if fused {
                    Ok(Tensor::from_vec(block_starts(pads, first, n), pads.len() * n, device)?)
                } else {
                    block_mask(pads, first, n, first + n, device)
                }
            })
            .collect()
    };
    let own;
    let masks = if first_query == 0 {
        if shared.get().is_none() {
            let _ = shared.set(make_masks()?);
        }
        shared.get().expect("set above")
    } else {
        own = make_masks()?;
        &own
    };
    let mut outputs = Vec::with_capacity(blocks.len());
    for (&(start, n), mask) in blocks.iter().zip(masks) {
        let keys = first_query + start + n; // causal: no query in the block sees past its own position
                                            // Query head h uses key/value head h / groups, so (b, nh, n, hd) regroups as (b, nkv, groups * n, hd).
        let q_blk = q.narrow(2, start, n)?.contiguous()?.reshape((b, nkv, groups * n, hd))?;
        let k_blk = k.narrow(2, 0, keys)?.t()?.contiguous()?;
        let v_blk = v.narrow(2, 0, keys)?.contiguous()?;
        let scores = q_blk.matmul(&k_blk)?; // (b, nkv, groups × n, keys): rows of one sequence, query fastest
        let probs = if fused {
            masked_softmax(&scores, mask, n, nh * n, first_query + start)?
        } else {
            let scores = scores.to_dtype(DType::F32)?.reshape((b, nkv, groups, n, keys))?.broadcast_add(mask)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
            probs.reshape((b, nkv, groups * n, keys))?
        };
        let out = probs.matmul(&v_blk)?;
        outputs.push(out.reshape((b, nh, n, hd))?);
    }
    Ok(Tensor::cat(&outputs, 2)?.transpose(1, 2)?.contiguous()?.reshape((b, queries, nh * hd))?)
}

/// Additive mask (b, 1, 1, n, keys) for the queries at positions `first..first + n`: 0 on the keys each query may
/// see ([`attention::visible_keys`]: from a start to the query itself), -inf elsewhere. Made on the device from the
/// b × n starts, so that a long input does not send megabytes of mask from the host.
fn block_mask(pads: &[usize], first: usize, n: usize, keys: usize, device: &Device) -> Result<Tensor> {
    let starts = block_starts(pads, first, n);
    let shape = (pads.len(), 1, 1, n, keys);
    let starts = Tensor::from_vec(starts, (pads.len(), 1, 1, n, 1), device)?;
    let ends = Tensor::arange(first as u32, (first + n) as u32, device)?.reshape((1, 1, 1, n, 1))?;
    let key = Tensor::arange(0u32, keys as u32, device)?.reshape((1, 1, 1, 1, keys))?;
    let visible = key.broadcast_ge(&starts)?.broadcast_mul(&key.broadcast_le(&ends)?)?;
    let zero = Tensor::zeros((), DType::F32, device)?.broadcast_as(shape)?;
    let hidden = Tensor::new(f32::NEG_INFINITY, device)?.broadcast_as(shape)?;
    Ok(visible.where_cond(&zero, &hidden)?)
}

/// The first key each query at positions `first..first + n` of each sequence may see ([`attention::visible_keys`]; the
/// last is the query itself), sequence by sequence.
fn block_starts(pads: &[usize], first: usize, n: usize) -> Vec<u32> {
    pads.iter()
        .flat_map(|&pad| (first..first + n).map(move |p| *attention::visible_keys(p, pad).start() as u32))
        .collect()
}

/// Whether attention on `q`'s device and dtype uses the fused masked-softmax kernel (a GPU, bf16 or f32).
#[cfg(feature = "cuda")]
fn fused_softmax(q: &Tensor) -> bool {
    !q.device().is_cpu() && crate::gpu_softmax::supports(q.dtype())
}

#[cfg(not(feature = "cuda"))]
fn fused_softmax(_q: &Tensor) -> bool {
    false
}

#[cfg(feature = "cuda")]
fn masked_softmax(scores: &Tensor, starts: &Tensor, n: usize, per_seq: usize, first: usize) -> Result<Tensor> {
    crate::gpu_softmax::masked_softmax(scores, starts, n, per_seq, first)
}

#[cfg(not(feature = "cuda"))]
fn masked_softmax(_: &Tensor, _: &Tensor, _: usize, _: usize, _: usize) -> Result<Tensor> {
    unreachable!("fused_softmax is false without the cuda feature")
}

impl Rope {
    fn new(c: &Qwen3Config, dtype: DType, device: &Device) -> Result<Self> {
        let half = c.head_dim / 2;
        let theta = c.rope_theta as f32;
        let inv_freq: Vec<f32> = (0..half).map(|i| 1.0 / theta.powf((2 * i) as f32 / c.head_dim as f32)).collect();
        let n = c.max_position_embeddings;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in 0..n {
            for &f in &inv_freq {
                let angle = (p as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(Rope {
            cos: Tensor::from_vec(cos, (n, half), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (n, half), device)?.to_dtype(dtype)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_rows_map_to_the_padded_layout_and_back() {
        // Lengths 1, 3 and 2, padded to 3: packed rows 0 | 1 2 3 | 4 5; the zero row is 6.
        let last = last_rows(&[2, 0, 1], 3);
        let Padding { to_padded, to_packed } = padding_indices(&[2, 0, 1], 3).unwrap();
        assert_eq!(to_padded, [6, 6, 0, 1, 2, 3, 6, 4, 5]);
        assert_eq!(to_packed, [2, 3, 4, 5, 7, 8]);
        assert_eq!(last, [0, 3, 5]);
        for (packed, &padded) in to_packed.iter().enumerate() {
            assert_eq!(to_padded[padded as usize], packed as u32);
        }
        // Equal lengths: the layouts coincide and no index is made.
        assert_eq!((last_rows(&[0, 0], 2), padding_indices(&[0, 0], 2)), (vec![1, 3], None));
    }

    /// The device-side attention (GPU path) agrees with the CPU kernel, padding and partial queries included.
    #[test]
    fn candle_attention_matches_the_cpu_kernel() {
        attention_matches_the_cpu_kernel(&Device::Cpu);
    }

    /// The same on a GPU, where it runs the fused masked softmax.
    #[cfg(feature = "cuda")]
    #[test]
    fn the_fused_gpu_attention_matches_the_cpu_kernel() {
        match Device::new_cuda(0) {
            Ok(gpu) => attention_matches_the_cpu_kernel(&gpu),
            Err(e) => println!("SKIPPED the_fused_gpu_attention_matches_the_cpu_kernel: no GPU ({e})"),
        }
    }

    fn attention_matches_the_cpu_kernel(device: &Device) {
        let (b, nh, nkv, l, hd) = (3, 4, 2, 50, 8);
        let pads = [0, 13, 49];
        let fill = |n: usize, seed: f32| (0..n).map(|i| (i as f32 * 0.618 + seed).sin()).collect::<Vec<f32>>();
        for first_query in [0, 49] {
            let queries = l - first_query;
            let q = fill(b * nh * queries * hd, 0.3);
            let (k, v) = (fill(b * nkv * l * hd, 0.9), fill(b * nkv * l * hd, 1.7));
            let shape = attention::Shape { batch: b, heads: nh, kv_heads: nkv, len: l, head_dim: hd, first_query };
            let want = attention::causal_attention(&q, &k, &v, &pads, shape);
            let t = |data: &[f32], heads: usize, len: usize| {
                Tensor::from_vec(data.to_vec(), (b, heads, len, hd), device).unwrap()
            };
            let masks = OnceCell::new();
            let got = candle_attention(&t(&q, nh, queries), &t(&k, nkv, l), &t(&v, nkv, l), &pads, first_query, &masks)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "{device:?}, first_query {first_query}: max diff {worst}");
        }
    }
}
