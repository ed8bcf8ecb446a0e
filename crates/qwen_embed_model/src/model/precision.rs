//! The one place that decides how the model computes: the dtype users ask for (`qwen_embed.dtype`, the benchmark's
//! `--dtype`) and the device become the linear layers' kernel and the dtypes of weights, activations and
//! `embed_tokens`. `encoder`, `weights` (memory estimate) and `device` (`auto`) ask here.
//!
//! `auto` on a CPU picks the fastest path that meets the accuracy target (min cosine ≥ 0.9999 against fp32
//! transformers, held by `tests/reference.rs` for every kernel the test machine has):
//!
//! | CPU (detected by `cpu`)       | `auto`                                   | why                                          |
//! |-------------------------------|------------------------------------------|----------------------------------------------|
//! | AMX (Sapphire Rapids+)        | bf16 weights, oneDNN brgemm (AMX tiles), | 3–6× the f32 FMA rate                        |
//! |                               | f32 accumulation (`onednn`)              |                                              |
//! | AVX512-BF16 (Zen 4, Cooper L.)| bf16 weights, oneDNN brgemm (`vdpbf16ps`)| ~2× the f32 FMA rate                         |
//! | AVX-512 without BF16          | f32 weights, oneDNN brgemm               | twice the AVX2 kernel's FMA width; exact,    |
//! | (Skylake-SP … Ice Lake)       | (`avx512_core`)                          | at twice f16's weight memory (`f16` keeps it)|
//! | AVX2 + FMA (+ F16C)           | f16 weights, f32 arithmetic (`f32_matmul`)| half the weight bytes to stream: faster than |
//! |                               |                                          | f32 weights; exact for bf16 checkpoints      |
//! | other (aarch64, old x86-64)   | f32, candle's matmul                     | portable                                     |
//!
//! f16 holds every bf16 value exactly but those below 2^-14 (Qwen3-Embedding ships bf16; a matrix with a weight beyond
//! ±65,504 stays f32), and from an f32 checkpoint it keeps min cosine 0.99999 against the f32 weights
//! (`tests/reference.rs`).
//!
//! The oneDNN rows need a build with the `onednn` feature (the extension's default); without it those CPUs take the
//! AVX2 row. An explicit `f32` (or `bf16` where no bf16 kernel exists) takes oneDNN's f32 brgemm where the AVX-512 row
//! does, our AVX2 kernel elsewhere; an explicit `f16` takes the AVX2 row's f16 weights on any CPU with AVX2. On a GPU
//! `auto` is bf16 throughout.

use candle_core::{DType, Device};

use crate::cpu::{self, F32Kernel};
use crate::f32_matmul::WeightFormat;
#[cfg(onednn)]
use crate::onednn;

/// What multiplies the linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinearKernel {
    /// candle's matmul in the activations' dtype (GPU, f16 on a CPU, CPUs without AVX2).
    Candle,
    /// Weights packed at load, held in f32 or f16, f32 arithmetic (AVX2/FMA micro-kernel).
    PackedF32(F32Kernel, WeightFormat),
    /// oneDNN's matmul, weights reordered at load into its layout: bf16 on its brgemm (AMX or AVX512-BF16),
    /// activations rounded to bf16 per product, f32 accumulation; or f32 (its brgemm on other AVX-512 CPUs, and a
    /// check of the glue on any x86-64 CPU).
    #[cfg(onednn)]
    Onednn(onednn::Kernel),
}

/// What multiplies the CPU attention ([`Precision::cpu_attention`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuAttention {
    /// `attention::causal_attention`: the AVX2/FMA micro-kernel, or `gemm`.
    F32,
    /// `attention_onednn` in the kernel's element type.
    #[cfg(onednn)]
    Onednn(onednn::Kernel),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    pub linear: LinearKernel,
    /// Activations, norms and RoPE tables.
    pub activations: DType,
}

impl Precision {
    /// What `auto` means on `device`.
    pub fn auto(device: &Device) -> Precision {
        let dtype = if !device.is_cpu() || bf16_kernel().is_some() {
            DType::BF16
        } else if f32_brgemm().is_some() {
            DType::F32
        } else if cpu::f32_kernel().is_some() {
            DType::F16
        } else {
            DType::F32
        };
        Precision::new(dtype, device)
    }

    /// How a requested dtype computes on `device`. On a CPU with one of our kernels activations are f32 whatever the
    /// weights: bf16 means packed bf16 weights where the CPU has a bf16 kernel, and f32 where it has none (candle's
    /// CPU bf16 matmul converts to f32 on every call: slower, and no more accurate); f32 runs on oneDNN's f32 brgemm
    /// where it has one, else on the AVX2/FMA kernel; f16 means f16 weights for the AVX2/FMA kernel (on a CPU without
    /// it, candle computing in f16).
    pub fn new(requested: DType, device: &Device) -> Precision {
        let candle = Precision { linear: LinearKernel::Candle, activations: requested };
        if !device.is_cpu() {
            return candle;
        }
        let linear = match (requested, bf16_kernel(), f32_brgemm(), cpu::f32_kernel()) {
            (DType::BF16, Some(k), _, _) => k,
            (DType::F16, _, _, Some(k)) => LinearKernel::PackedF32(k, WeightFormat::F16),
            (DType::F16, _, _, None) => return candle,
            (_, _, Some(k), _) => k,
            (_, _, _, Some(k)) => LinearKernel::PackedF32(k, WeightFormat::F32),
            _ => LinearKernel::Candle,
        };
        Precision { linear, activations: DType::F32 }
    }

    /// Every f32 path `device` can run, the one [`Precision::new`] picks first: the tests hold each to the reference.
    pub fn f32_variants(device: &Device) -> Vec<Precision> {
        let chosen = Precision::new(DType::F32, device);
        let f32 = |linear| Precision { linear, activations: DType::F32 };
        let mut variants = vec![chosen, f32(LinearKernel::Candle)];
        if device.is_cpu() {
            variants.extend(cpu::f32_kernel().map(|k| f32(LinearKernel::PackedF32(k, WeightFormat::F32))));
            #[cfg(onednn)]
            variants.push(f32(LinearKernel::Onednn(onednn::Kernel::F32)));
        }
        let mut distinct = Vec::new();
        for v in variants {
            if !distinct.contains(&v) {
                distinct.push(v);
            }
        }
        distinct
    }

    /// What multiplies the CPU attention's products: with oneDNN's linear layers, oneDNN's matmuls in the same element
    /// type (bf16 operands as PyTorch's CPU flash attention takes them there; f32 for the glue's check); every other
    /// CPU path attends in f32 on our kernels.
    pub fn cpu_attention(&self) -> CpuAttention {
        match self.linear {
            #[cfg(onednn)]
            LinearKernel::Onednn(kernel) => CpuAttention::Onednn(kernel),
            _ => CpuAttention::F32,
        }
    }

    /// The dtype the linear layers' weights are held in.
    pub fn weights(&self) -> DType {
        match self.linear {
            #[cfg(onednn)]
            LinearKernel::Onednn(onednn::Kernel::Bf16(_)) => DType::BF16,
            LinearKernel::PackedF32(_, WeightFormat::F16) => DType::F16,
            _ => self.activations,
        }
    }

    /// The dtype the linear layers' weights are read in before [`crate::linear::Linear::new`] packs them: f16
    /// packing reads f32, so that it can see a weight beyond f16's range and keep that matrix in f32; oneDNN's
    /// reorder reads f32 and rounds to bf16 itself.
    pub fn weights_read_as(&self) -> DType {
        match self.linear {
            LinearKernel::PackedF32(..) => DType::F32,
            #[cfg(onednn)]
            LinearKernel::Onednn(_) => DType::F32,
            _ => self.weights(),
        }
    }

    /// `embed_tokens` in memory: with f32 activations it keeps the checkpoint's dtype and only the batch's rows are
    /// converted, which saves a full-size f32 copy of the largest tensor (155M parameters in the 0.6B model).
    pub fn embed_tokens(&self, stored: DType) -> DType {
        if self.activations == DType::F32 {
            stored
        } else {
            self.activations
        }
    }

    /// The kernel's name, as `qwen_embed.info()` and the benchmarks print it.
    pub fn kernel_name(&self) -> &'static str {
        match self.linear {
            LinearKernel::Candle => "candle",
            LinearKernel::PackedF32(_, WeightFormat::F32) => "avx2-fma f32",
            LinearKernel::PackedF32(_, WeightFormat::F16) => "avx2-fma f16-weights",
            #[cfg(onednn)]
            LinearKernel::Onednn(k) => k.name(),
        }
    }
}

/// oneDNN's f32 kernel where it runs on its AVX-512 brgemm (within the `cpu` level's cap); `None` elsewhere.
#[cfg(onednn)]
pub fn f32_brgemm() -> Option<LinearKernel> {
    onednn::f32_brgemm().then_some(LinearKernel::Onednn(onednn::Kernel::F32))
}

#[cfg(not(onednn))]
pub fn f32_brgemm() -> Option<LinearKernel> {
    None
}

/// The CPU's bf16 kernel: oneDNN's, where the build has oneDNN and oneDNN has a brgemm for this CPU (within the
/// `cpu` level's cap). `None` elsewhere: bf16 then computes in f32.
#[cfg(onednn)]
pub fn bf16_kernel() -> Option<LinearKernel> {
    onednn::bf16_kernel().map(|k| LinearKernel::Onednn(onednn::Kernel::Bf16(k)))
}

#[cfg(not(onednn))]
pub fn bf16_kernel() -> Option<LinearKernel> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::Level;

    /// `auto` and an explicit `f32` on this CPU are the module table's row for the level detected here (each level
    /// is a row: a rule that skipped a kernel, or took one the CPU lacks, names another kernel).
    #[test]
    fn auto_is_the_table_row_of_this_cpu() {
        let cpu = Device::Cpu;
        let (auto, f32) = (Precision::auto(&cpu), Precision::new(DType::F32, &cpu));
        let onednn = cfg!(onednn);
        let (auto_kernel, f32_kernel) = match cpu::level() {
            Level::Amx if onednn => ("onednn amx", "onednn f32"),
            Level::Avx512Bf16 if onednn => ("onednn avx512_core_bf16", "onednn f32"),
            Level::Avx512 if onednn => ("onednn f32", "onednn f32"),
            Level::Generic => ("candle", "candle"),
            _ => ("avx2-fma f16-weights", "avx2-fma f32"),
        };
        println!("level {}: auto {}, f32 {}", cpu::level().name(), auto.kernel_name(), f32.kernel_name());
        assert_eq!((auto.kernel_name(), f32.kernel_name()), (auto_kernel, f32_kernel));
        assert_eq!(f32.weights(), DType::F32);
        // What a user who asks for f16 gets wherever the AVX2 kernel exists: half the weight memory.
        if cpu::f32_kernel().is_some() {
            assert_eq!(Precision::new(DType::F16, &cpu).kernel_name(), "avx2-fma f16-weights");
        }
    }
}
