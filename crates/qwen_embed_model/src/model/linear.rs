//! A linear layer `y = x · Wᵀ + b` with the kernel `precision` chose: candle's matmul in the compute dtype, or
//! weights packed once at load for a CPU kernel (`f32_matmul`, `onednn`) with f32 activations.

use candle_core::{DType, Device, Module, Storage, Tensor};

use crate::cpu::F32Kernel;
use crate::error::Result;
use crate::f32_matmul::PackedF32;
#[cfg(feature = "onednn")]
use crate::onednn;
use crate::precision::LinearKernel;

pub enum Linear {
    Dense(candle_nn::Linear),
    PackedF32 {
        kernel: F32Kernel,
        weights: PackedF32,
        bias: Option<Tensor>,
    },
    #[cfg(feature = "onednn")]
    Onednn {
        weights: onednn::Packed,
        bias: Option<Tensor>,
    },
}

/// Runs `f` on the f32 elements of a contiguous CPU tensor, without copying them.
pub(crate) fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    with_cpu_f32s([t], |[t]| f(t))
}

/// [`with_cpu_f32`] for several tensors at once.
pub(crate) fn with_cpu_f32s<R, const N: usize>(ts: [&Tensor; N], f: impl FnOnce([&[f32]; N]) -> R) -> Result<R> {
    let held: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(N);
    for (storage, layout) in &held {
        let Storage::Cpu(cpu) = &**storage else {
            return Err(candle_core::Error::Msg("expected a CPU tensor".into()).into());
        };
        let (start, end) =
            layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("not contiguous".into()))?;
        slices.push(&cpu.as_slice::<f32>()?[start..end]);
    }
    Ok(f(slices.try_into().unwrap_or_else(|_| unreachable!("one slice per tensor"))))
}

impl Linear {
    /// `weight` is (out_features, in_features), in the dtype `precision` chose for `kernel`'s weights.
    pub fn new(weight: Tensor, bias: Option<Tensor>, kernel: LinearKernel) -> Result<Self> {
        let (out_features, in_features) = weight.dims2()?;
        let bias_f32 = || bias.as_ref().map(|b| b.to_dtype(DType::F32)).transpose();
        Ok(match kernel {
            LinearKernel::Candle => Linear::Dense(candle_nn::Linear::new(weight, bias.clone())),
            LinearKernel::PackedF32(kernel, format) => {
                let w = weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let weights = PackedF32::pack(&w, out_features, in_features, format);
                Linear::PackedF32 { kernel, weights, bias: bias_f32()? }
            }
            #[cfg(feature = "onednn")]
            LinearKernel::Onednn(kernel) => {
                let w = weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let weights = onednn::Packed::pack(kernel, &w, out_features, in_features)?;
                Linear::Onednn { weights, bias: bias_f32()? }
            }
        })
    }

    /// `residual + x · Wᵀ (+ b)`: on oneDNN (without a bias) the add is made as each block of the product is copied
    /// into place, not in a pass of its own.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "onednn")]
        if let Linear::Onednn { weights, bias: None } = self {
            let x = x.to_dtype(DType::F32)?.contiguous()?;
            let residual = residual.to_dtype(DType::F32)?.contiguous()?;
            let rows = x.elem_count() / weights.features().0;
            let out = with_cpu_f32s([&x, &residual], |[x, r]| weights.matmul_add(x, rows, r))??;
            return Ok(Tensor::from_vec(out, residual.dims(), &Device::Cpu)?);
        }
        Ok((residual + self.forward(x)?)?)
    }

    /// x: (..., in_features) → (..., out_features).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (in_features, out_features, bias) = match self {
            Linear::Dense(linear) => return Ok(linear.forward(x)?),
            Linear::PackedF32 { weights, bias, .. } => (weights.in_features(), weights.out_features(), bias),
            #[cfg(feature = "onednn")]
            Linear::Onednn { weights, bias } => (weights.features().0, weights.features().1, bias),
        };
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let rows = x.elem_count() / in_features;
        let out = with_cpu_f32(&x, |x| -> Result<Vec<f32>> {
            Ok(match self {
                Linear::PackedF32 { kernel, weights, .. } => weights.matmul(*kernel, x, rows),
                #[cfg(feature = "onednn")]
                Linear::Onednn { weights, .. } => weights.matmul(x, rows)?,
                Linear::Dense(_) => unreachable!("handled above"),
            })
        })??;
        let mut dims = x.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = out_features;
        }
        let y = Tensor::from_vec(out, dims, &Device::Cpu)?;
        Ok(match bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}
