//! The attention's masked softmax on a GPU as one kernel (`gpu/kernels/masked_softmax.cu`, compiled to PTX by build.rs
//! with the `cuda` feature). With candle's operations the scores made four passes (a cast to f32, an added mask
//! broadcast over the heads, softmax, a cast back), which took two thirds of a long input's GPU time on an H200
//! (bench/results/2026-11-25-h200-gpu.md); here each row is read once and written once, the mask is a start per
//! (sequence, query) instead of a matrix, and the softmax is still computed in f32.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{bail, CpuStorage, CudaStorage, CustomOp2, DType, Layout, Shape, Tensor};

use crate::error::Result;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/masked_softmax.ptx"));
const THREADS: u32 = 256;

/// Whether scores of `dtype` have the fused kernel.
pub fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::BF16 | DType::F32)
}

/// Probabilities for `scores` (…, rows, keys), contiguous, on a CUDA device: row r is query `r % n` of sequence
/// `r / per_seq`, at position `first + r % n`, and sees the keys from `starts[sequence * n + query]` (u32) to its own
/// position; every other key gets 0.
pub fn masked_softmax(scores: &Tensor, starts: &Tensor, n: usize, per_seq: usize, first: usize) -> Result<Tensor> {
    Ok(scores.apply_op2_no_bwd(starts, &MaskedSoftmax { n, per_seq, first })?)
}

struct MaskedSoftmax {
    n: usize,
    per_seq: usize,
    first: usize,
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "qwen_embed-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        bail!("the fused masked softmax runs on a GPU only")
    }

    fn cuda_fwd(
        &self,
        scores: &CudaStorage,
        scores_layout: &Layout,
        starts: &CudaStorage,
        starts_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (Some((s0, s1)), Some((t0, t1))) = (scores_layout.contiguous_offsets(), starts_layout.contiguous_offsets())
        else {
            bail!("masked softmax: inputs must be contiguous")
        };
        let keys = scores_layout.dims().last().copied().unwrap_or(0);
        let rows = (s1 - s0) / keys.max(1);
        if rows * keys == 0 || (t1 - t0) * self.per_seq < rows * self.n || self.n == 0 {
            bail!("masked softmax: {rows} rows of {keys} keys do not match {} starts", t1 - t0);
        }
        let dev = scores.device().clone();
        let starts = starts.as_cuda_slice::<u32>()?.slice(t0..t1);
        let (keys_arg, n, per_seq, first) = (keys as u32, self.n as u32, self.per_seq as u32, self.first as u32);
        let config = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        macro_rules! launch {
            ($t:ty, $kernel:literal) => {{
                let src = scores.as_cuda_slice::<$t>()?.slice(s0..s1);
                let func = dev.get_or_load_custom_func($kernel, "qwen_embed_masked_softmax", PTX)?;
                // SAFETY: the kernel writes every element of its row before anything reads it.
                let dst = unsafe { dev.alloc::<$t>(rows * keys)? };
                let mut args = func.builder();
                args.arg(&src);
                args.arg(&dst);
                args.arg(&starts);
                args.arg(&keys_arg);
                args.arg(&n);
                args.arg(&per_seq);
                args.arg(&first);
                // SAFETY: the arguments match the kernel's parameters in order and type; the grid has one block per
                // row and each block stays inside its row of `rows * keys` elements; starts holds an entry for every
                // (sequence, query) (checked above).
                unsafe { args.launch(config) }.w()?;
                CudaStorage::wrap_cuda_slice(dst, dev.clone())
            }};
        }
        let out = match scores.dtype() {
            DType::BF16 => launch!(half::bf16, "masked_softmax_bf16"),
            DType::F32 => launch!(f32, "masked_softmax_f32"),
            other => bail!("masked softmax: no kernel for {other:?}"),
        };
        Ok((out, scores_layout.shape().clone()))
    }
}
