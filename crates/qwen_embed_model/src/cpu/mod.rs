//! The CPU backends, and what this CPU can run, detected once per process.
//!
//! Backends: [`onednn`] (with the `onednn` feature: the linear layers on oneDNN's brgemm, in bf16 on AMX or
//! AVX512-BF16 and in f32 on other AVX-512 CPUs, and [`attention_onednn`], the attention on its matmuls beside them), [`f32_matmul`] on `micro_kernel`
//! (AVX2/FMA/F16C linear layers, weights packed at load), [`attention`] (the f32 CPU attention: `attention_tiled` on
//! the micro-kernel, a portable path on `gemm`; `panels` holds what the packed kernels share) and [`elementwise`]
//! (vectorised exp, SwiGLU and bf16 rounding).
//!
//! Detection: the kernel types have private fields, so a value exists only after detection found its instructions: a
//! function handed one may execute them without checking again. That is what makes the `unsafe` calls into the
//! kernels sound. The AVX-512 levels (AMX, AVX512-BF16, AVX-512) are oneDNN's to use for the linear layers and the
//! attention (it asks Linux for AMX itself) and [`elementwise`]'s bf16 rounding (`vcvtneps2bf16`); they are detected
//! here so that one setting caps every kernel: `QWEN_EMBED_CPU_KERNEL=amx|avx512bf16|avx512|avx2|generic` caps the
//! detected level, oneDNN's included (to measure or test what an older CPU would run); `QWEN_EMBED_NO_AMX=1` is the
//! same as `avx512bf16`.

pub mod attention;
#[cfg(onednn)]
pub mod attention_onednn;
pub(crate) mod attention_tiled;
pub mod elementwise;
pub mod f32_matmul;
pub(crate) mod micro_kernel;
#[cfg(onednn)]
pub mod onednn;
pub(crate) mod panels;

use std::sync::OnceLock;

/// Proof that the CPU has AVX2, FMA and F16C (the packed f32 matmul, whose weights may be held in f16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct F32Kernel(());

/// Levels, lowest first; detection finds the highest the CPU has, then applies the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// candle's portable matmul (aarch64, x86-64 without AVX2).
    Generic,
    Avx2,
    /// AVX-512 F, BW, VL and DQ (oneDNN's `avx512_core`: Skylake-SP to Ice Lake) without a bf16 product.
    Avx512,
    Avx512Bf16,
    Amx,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Generic => "generic",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
            Level::Avx512Bf16 => "avx512bf16",
            Level::Amx => "amx",
        }
    }

    fn parse(s: &str) -> Option<Level> {
        [Level::Generic, Level::Avx2, Level::Avx512, Level::Avx512Bf16, Level::Amx].into_iter().find(|l| l.name() == s)
    }
}

/// The highest level this process may use.
pub fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let mut cap = std::env::var("QWEN_EMBED_CPU_KERNEL").ok().and_then(|s| Level::parse(&s.to_ascii_lowercase()));
        if std::env::var_os("QWEN_EMBED_NO_AMX").is_some() {
            cap = Some(cap.unwrap_or(Level::Avx512Bf16).min(Level::Avx512Bf16));
        }
        detect(cap.unwrap_or(Level::Amx))
    })
}

/// Proof that the CPU has AVX512F and AVX512-BF16 (`vdpbf16ps`: the bf16 attention's products).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Avx512Bf16(());

/// See [`Avx512Bf16`]; `None` below that level (or capped below it).
pub fn avx512_bf16() -> Option<Avx512Bf16> {
    (level() >= Level::Avx512Bf16).then_some(Avx512Bf16(()))
}

/// The CPU's model name (`/proc/cpuinfo`), for the benchmarks' reports.
pub fn model_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| info.lines().find(|l| l.starts_with("model name")).map(|l| l.to_string()))
        .and_then(|line| line.split_once(':').map(|(_, name)| name.trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// The packed f32 kernel, where the CPU has AVX2, FMA and F16C (every CPU with a bf16 kernel has them).
pub fn f32_kernel() -> Option<F32Kernel> {
    (level() >= Level::Avx2).then_some(F32Kernel(()))
}

#[cfg(target_arch = "x86_64")]
fn detect(cap: Level) -> Level {
    // F16C came before AVX2 (Ivy Bridge, Piledriver): every AVX2 CPU has it; checked all the same, it is used.
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
    if cap < Level::Avx2 || !avx2 {
        return Level::Generic;
    }
    let avx512 = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512dq");
    if cap < Level::Avx512 || !avx512 {
        return Level::Avx2;
    }
    if cap < Level::Avx512Bf16 || !is_x86_feature_detected!("avx512bf16") {
        return Level::Avx512;
    }
    // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE (std's detection of these is not stable yet).
    let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
    let amx_cpu = edx & (1 << 22) != 0 && edx & (1 << 24) != 0;
    if cap == Level::Amx && amx_cpu {
        return Level::Amx;
    }
    Level::Avx512Bf16
}

#[cfg(not(target_arch = "x86_64"))]
fn detect(_cap: Level) -> Level {
    Level::Generic
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `QWEN_EMBED_CPU_KERNEL` and `QWEN_EMBED_NO_AMX` cap the detected level (`scripts/test.sh` runs the model core's
    /// unit tests once under each cap, so that this machine also runs what an older CPU would).
    #[test]
    fn the_environment_caps_the_level() {
        let cap = std::env::var("QWEN_EMBED_CPU_KERNEL").ok().map(|s| Level::parse(&s).expect("a known level"));
        let no_amx = std::env::var_os("QWEN_EMBED_NO_AMX").is_some().then_some(Level::Avx512Bf16);
        println!("cpu level {} (cap {cap:?}, QWEN_EMBED_NO_AMX {no_amx:?})", level().name());
        if let Some(cap) = cap.into_iter().chain(no_amx).min() {
            assert!(level() <= cap, "level {:?} above the cap {cap:?}", level());
        }
        assert_eq!(f32_kernel().is_some(), level() >= Level::Avx2);
        assert_eq!(avx512_bf16().is_some(), level() >= Level::Avx512Bf16);
        assert_eq!(Level::parse("avx512"), Some(Level::Avx512));
    }
}
