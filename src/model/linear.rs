//! A linear layer `y = x · Wᵀ + b` in one of two forms: candle's matmul in the compute dtype, or, on CPUs with
//! AVX512-BF16, bf16 weights packed for `vdpbf16ps` with f32 activations and accumulation (see `bf16_matmul`).

use candle_core::{DType, Device, Module, Storage, Tensor};

use crate::bf16_matmul::PackedWeights;
use crate::error::Result;

pub enum Linear {
    Dense(candle_nn::Linear),
    PackedBf16 { weights: PackedWeights, bias: Option<Tensor> },
}

/// Runs `f` on the f32 elements of a contiguous CPU tensor, without copying them.
pub(crate) fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(candle_core::Error::Msg("expected a CPU tensor".into()).into());
    };
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("not contiguous".into()))?;
    Ok(f(&cpu.as_slice::<f32>()?[start..end]))
}

impl Linear {
    /// `weight` is (out_features, in_features). `packed` selects the bf16 kernel (the caller checks availability).
    pub fn new(weight: Tensor, bias: Option<Tensor>, packed: bool) -> Result<Self> {
        if !packed {
            return Ok(Linear::Dense(candle_nn::Linear::new(weight, bias)));
        }
        let (out_features, in_features) = weight.dims2()?;
        let bits: Vec<u16> = weight
            .to_dtype(DType::BF16)?
            .flatten_all()?
            .to_vec1::<half::bf16>()?
            .into_iter()
            .map(|v| v.to_bits())
            .collect();
        let bias = bias.map(|b| b.to_dtype(DType::F32)).transpose()?;
        Ok(Linear::PackedBf16 { weights: PackedWeights::pack(&bits, out_features, in_features), bias })
    }

    /// x: (..., in_features) → (..., out_features).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (weights, bias) = match self {
            Linear::Dense(linear) => return Ok(linear.forward(x)?),
            Linear::PackedBf16 { weights, bias } => (weights, bias),
        };
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let mut dims = x.dims().to_vec();
        let rows = x.elem_count() / weights.in_features();
        let out = with_cpu_f32(&x, |x| weights.matmul(x, rows))?;
        if let Some(last) = dims.last_mut() {
            *last = weights.out_features();
        }
        let y = Tensor::from_vec(out, dims, &Device::Cpu)?;
        Ok(match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}
