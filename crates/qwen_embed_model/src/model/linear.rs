//! A linear layer `y = x · Wᵀ + b` with the kernel `precision` chose: candle's matmul in the compute dtype, or
//! weights packed once at load for a CPU kernel (`f32_matmul`, `onednn`) with f32 activations; and the MLP's gate and
//! up projections with SwiGLU ([`GateUp`]).

use candle_core::{DType, Device, Module, Storage, Tensor, D};

use crate::cpu::F32Kernel;
use crate::error::Result;
use crate::f32_matmul::PackedF32;
#[cfg(onednn)]
use crate::onednn;
use crate::precision::LinearKernel;
use crate::profile::{timed, Part};

pub enum Linear {
    Dense(candle_nn::Linear),
    PackedF32 {
        kernel: F32Kernel,
        weights: PackedF32,
        bias: Option<Tensor>,
    },
    #[cfg(onednn)]
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

/// A weight matrix's values in f32, row-major, for packing.
fn values_f32(weight: &Tensor) -> Result<Vec<f32>> {
    Ok(weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// x: (..., in_features) → (..., out_features) by `f`, which gets x's rows in f32 and their count, on the CPU.
fn rows_product(
    x: &Tensor,
    in_features: usize,
    out_features: usize,
    f: impl FnOnce(&[f32], usize) -> Result<Vec<f32>>,
) -> Result<Tensor> {
    let x = timed(Part::Elementwise, || x.to_dtype(DType::F32)?.contiguous())?;
    let rows = x.elem_count() / in_features;
    let out = with_cpu_f32(&x, |x| f(x, rows))??;
    let mut dims = x.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = out_features;
    }
    Ok(Tensor::from_vec(out, dims, &Device::Cpu)?)
}

impl Linear {
    /// `weight` is (out_features, in_features), in the dtype `precision` chose for `kernel`'s weights.
    pub fn new(weight: Tensor, bias: Option<Tensor>, kernel: LinearKernel) -> Result<Self> {
        let (out_features, in_features) = weight.dims2()?;
        let bias_f32 = || bias.as_ref().map(|b| b.to_dtype(DType::F32)).transpose();
        Ok(match kernel {
            LinearKernel::Candle => Linear::Dense(candle_nn::Linear::new(weight, bias.clone())),
            LinearKernel::PackedF32(kernel, format) => {
                let w = values_f32(&weight)?;
                let weights = PackedF32::pack(&w, out_features, in_features, format);
                Linear::PackedF32 { kernel, weights, bias: bias_f32()? }
            }
            #[cfg(onednn)]
            LinearKernel::Onednn(kernel) => {
                let w = values_f32(&weight)?;
                let weights = onednn::Packed::pack(kernel, &w, out_features, in_features)?;
                Linear::Onednn { weights, bias: bias_f32()? }
            }
        })
    }

    /// `residual + x · Wᵀ (+ b)`: on oneDNN (without a bias) the add is made as each block of the product is copied
    /// into place, not in a pass of its own.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        #[cfg(onednn)]
        if let Linear::Onednn { weights, bias: None } = self {
            let (x, residual) = timed(Part::Elementwise, || {
                Ok::<_, candle_core::Error>((
                    x.to_dtype(DType::F32)?.contiguous()?,
                    residual.to_dtype(DType::F32)?.contiguous()?,
                ))
            })?;
            let rows = x.elem_count() / weights.features().0;
            let out = with_cpu_f32s([&x, &residual], |[x, r]| weights.matmul_add(x, rows, r))??;
            return Ok(Tensor::from_vec(out, residual.dims(), &Device::Cpu)?);
        }
        let y = self.forward(x)?;
        Ok(timed(Part::Elementwise, || residual + y)?)
    }

    /// x: (..., in_features) → (..., out_features).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (in_features, out_features, bias) = match self {
            Linear::Dense(linear) => return Ok(timed(Part::Linear, || linear.forward(x))?),
            Linear::PackedF32 { weights, bias, .. } => (weights.in_features(), weights.out_features(), bias),
            #[cfg(onednn)]
            Linear::Onednn { weights, bias } => (weights.features().0, weights.features().1, bias),
        };
        let y = rows_product(x, in_features, out_features, |x, rows| {
            Ok(match self {
                Linear::PackedF32 { kernel, weights, .. } => timed(Part::Linear, || weights.matmul(*kernel, x, rows)),
                #[cfg(onednn)]
                Linear::Onednn { weights, .. } => weights.matmul(x, rows)?,
                Linear::Dense(_) => unreachable!("handled above"),
            })
        })?;
        Ok(match bias {
            Some(b) => timed(Part::Elementwise, || y.broadcast_add(b))?,
            None => y,
        })
    }
}

/// The MLP's gate and up projections and SwiGLU: `silu(x · Gᵀ) · (x · Uᵀ)`. On oneDNN each slice of the packed weights
/// holds a block of gate features beside the same block of up features, so SwiGLU is applied as each block of the
/// product is copied out: the product of both projections (rows × 2 × intermediate floats) is never written whole nor
/// read back by a pass of its own. Elsewhere one fused linear layer, then [`swiglu`].
pub enum GateUp {
    /// Both projections as one linear layer, then SwiGLU in a pass of its own.
    Product(Linear),
    /// Packed by `pack_gated`: SwiGLU on each block of the product.
    #[cfg(onednn)]
    Onednn(onednn::Packed),
}

impl GateUp {
    /// `weight` is the gate projection's (inter × in) rows, then the up projection's, without a bias (Qwen3 has none).
    pub fn new(weight: Tensor, kernel: LinearKernel) -> Result<Self> {
        #[cfg(onednn)]
        if let LinearKernel::Onednn(kernel) = kernel {
            let (out_features, in_features) = weight.dims2()?;
            let w = values_f32(&weight)?;
            return Ok(GateUp::Onednn(onednn::Packed::pack_gated(kernel, &w, out_features, in_features)?));
        }
        Ok(GateUp::Product(Linear::new(weight, None, kernel)?))
    }

    /// x: (..., in_features) → (..., inter).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            GateUp::Product(linear) => {
                let gate_up = linear.forward(x)?;
                let inter = gate_up.dim(D::Minus1)? / 2;
                timed(Part::Elementwise, || swiglu(&gate_up, inter))
            }
            #[cfg(onednn)]
            GateUp::Onednn(weights) => {
                let (in_features, out_features) = weights.features();
                rows_product(x, in_features, out_features / 2, |x, rows| Ok(weights.matmul_silu_gate(x, rows)?))
            }
        }
    }
}

/// silu(gate) · up from the fused gate/up output (..., 2 × inter): one vectorised pass on a CPU in f32, candle's
/// operations elsewhere.
fn swiglu(gate_up: &Tensor, inter: usize) -> Result<Tensor> {
    if gate_up.device().is_cpu() && gate_up.dtype() == DType::F32 {
        let gate_up = gate_up.contiguous()?;
        let mut dims = gate_up.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = inter;
        }
        let mut out = vec![0f32; gate_up.elem_count() / 2];
        with_cpu_f32(&gate_up, |gu| crate::elementwise::silu_mul(gu, &mut out, inter))?;
        return Ok(Tensor::from_vec(out, dims, gate_up.device())?);
    }
    Ok((candle_nn::ops::silu(&gate_up.narrow(D::Minus1, 0, inter)?)? * gate_up.narrow(D::Minus1, inter, inter)?)?)
}
