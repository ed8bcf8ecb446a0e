//! `y = x · Wᵀ` with bf16 weights and f32 accumulation, on x86-64 CPUs with AMX (Sapphire Rapids and later: `tdpbf16ps`
//! multiplies 16×32 by 32×16 bf16 tiles) or else AVX512-BF16 (`vdpbf16ps`). candle's CPU matmul has no bf16 kernel (it
//! converts to f32 on every call); these instructions do twice (AVX512-BF16) to several times (AMX) the work of f32 FMA
//! per cycle and halve the bytes of weights streamed per pass. `precision` decides when they are used.
//!
//! The weights are packed once, at load, into the layout both instructions consume: 64-column panels, and within a
//! panel, for each pair of input features k, k+1, the 64 columns' (W[n][k], W[n][k+1]) bf16 pairs — which is also the
//! "VNNI" layout an AMX B tile loads with a 256-byte stride. Pairs are padded to a multiple of 16 (one AMX tile's
//! depth) with zeros. Activations are rounded to bf16 (round to nearest even) per call. Panels are spread over the
//! rayon pool the caller runs in; each AMX worker thread configures its own tiles.

// Off x86-64 no bf16 kernel exists (`cpu` never hands one out): the packing is still built, and tested.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use rayon::prelude::*;

use crate::cpu::{Bf16Instructions, Bf16Kernel};
use crate::panels::by_panel_runs;

/// Output columns per panel (four 16-lane registers).
const PANEL: usize = 64;
/// Output rows per micro-kernel call.
const MR: usize = 6;

/// Pairs of input features per AMX tile row (32 bf16 = 64 bytes).
const TILE_PAIRS: usize = 16;

/// Linux hands out AMX state only to processes that ask (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); `cpu`
/// asks once, during detection.
pub(crate) fn request_amx_permission() -> bool {
    amx::request_permission()
}

/// Round-to-nearest-even f32 → bf16 (the same rounding as `vcvtne2ps2bf16`).
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// A weight matrix (out_features × in_features) packed for the kernel.
pub struct PackedWeights {
    out_features: usize,
    in_features: usize,
    /// in_features / 2, rounded up.
    pairs: usize,
    data: Vec<u32>,
}

impl PackedWeights {
    /// `weights` holds the matrix as bf16 bit patterns, row-major (out_features rows of in_features).
    pub fn pack(weights: &[u16], out_features: usize, in_features: usize) -> Self {
        assert_eq!(weights.len(), out_features * in_features);
        let pairs = in_features.div_ceil(2).next_multiple_of(TILE_PAIRS);
        let panels = out_features.div_ceil(PANEL);
        let mut data = vec![0u32; panels * pairs * PANEL];
        data.par_chunks_mut(pairs * PANEL).enumerate().for_each(|(panel, out)| {
            for lane in 0..PANEL {
                let n = panel * PANEL + lane;
                if n >= out_features {
                    break;
                }
                let row = &weights[n * in_features..(n + 1) * in_features];
                for p in 0..in_features.div_ceil(2) {
                    let lo = row[2 * p] as u32;
                    let hi = row.get(2 * p + 1).copied().unwrap_or(0) as u32;
                    out[p * PANEL + lane] = lo | (hi << 16);
                }
            }
        });
        PackedWeights { out_features, in_features, pairs, data }
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// `x` is rows × in_features (row-major); returns rows × out_features. The kernel token proves the CPU has its
    /// instructions (see `cpu`).
    pub fn matmul(&self, kernel: Bf16Kernel, x: &[f32], rows: usize) -> Vec<f32> {
        assert_eq!(x.len(), rows * self.in_features);
        let kernel = kernel.instructions();
        let panels = self.out_features.div_ceil(PANEL);
        // AMX works on whole 16-row tiles (two at a time) and 64-column panels: pad, compute, then cut.
        let (padded_rows, ldc) = match kernel {
            Bf16Instructions::Amx => (rows.next_multiple_of(2 * amx::TILE_ROWS), panels * PANEL),
            Bf16Instructions::Avx512Bf16 => (rows, self.out_features),
        };
        let a = self.activations(x, rows, padded_rows);
        by_panel_runs(panels, 2, (padded_rows, ldc), (rows, self.out_features), |run, out| {
            // SAFETY: a Bf16Kernel exists only where detection found its instructions (and AMX permission); each run
            // writes its own panels' columns of `out`, which holds padded_rows × ldc floats.
            unsafe {
                match kernel {
                    Bf16Instructions::Amx => amx::panels(self, &a, padded_rows, run, out, ldc),
                    Bf16Instructions::Avx512Bf16 => run.for_each(|panel| self.panel(&a, rows, panel, out)),
                }
            }
        })
    }

    /// Activations as bf16 pairs, padded_rows × pairs (padding rows and pairs are zero).
    fn activations(&self, x: &[f32], rows: usize, padded_rows: usize) -> Vec<u32> {
        let (k, pairs) = (self.in_features, self.pairs);
        let mut a = vec![0u32; padded_rows * pairs];
        a[..rows * pairs].par_chunks_mut(pairs).zip(x.par_chunks(k)).for_each(|(dst, src)| {
            for (p, d) in dst[..k.div_ceil(2)].iter_mut().enumerate() {
                let lo = f32_to_bf16(src[2 * p]) as u32;
                let hi = src.get(2 * p + 1).map_or(0, |v| f32_to_bf16(*v) as u32);
                *d = lo | (hi << 16);
            }
        });
        a
    }

    /// # Safety
    /// The CPU must have AVX512F and AVX512-BF16; `out` must hold rows × out_features floats.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn panel(&self, a: &[u32], rows: usize, panel: usize, out: *mut f32) {
        let b = self.data.as_ptr().add(panel * self.pairs * PANEL);
        let col = panel * PANEL;
        let cols = (self.out_features - col).min(PANEL);
        let mut r = 0;
        while r < rows {
            let a_rows = a.as_ptr().add(r * self.pairs);
            let c = out.add(r * self.out_features + col);
            match rows - r {
                1 => avx512_kernel::<1>(a_rows, self.pairs, b, c, self.out_features, cols),
                2 => avx512_kernel::<2>(a_rows, self.pairs, b, c, self.out_features, cols),
                3 => avx512_kernel::<3>(a_rows, self.pairs, b, c, self.out_features, cols),
                4 => avx512_kernel::<4>(a_rows, self.pairs, b, c, self.out_features, cols),
                5 => avx512_kernel::<5>(a_rows, self.pairs, b, c, self.out_features, cols),
                _ => avx512_kernel::<MR>(a_rows, self.pairs, b, c, self.out_features, cols),
            }
            r += MR;
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn panel(&self, _a: &[u32], _rows: usize, _panel: usize, _out: *mut f32) {
        unreachable!("AVX512-BF16 is x86-64 only")
    }
}

/// The AMX kernel: 2×2 output tiles (32 rows × 32 columns) accumulated over 16-pair steps, written straight into the
/// output with `tilestored`.
#[cfg(target_arch = "x86_64")]
mod amx {
    use std::arch::asm;

    use super::{PackedWeights, PANEL, TILE_PAIRS};

    pub const TILE_ROWS: usize = 16;

    /// Linux hands out AMX state only to processes that ask (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA).
    pub fn request_permission() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain syscall with integer arguments.
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    }

    /// Palette 1 with eight 16-row × 64-byte tiles: 0–3 accumulators, 4–5 activations, 6–7 weights.
    fn config() -> [u8; 64] {
        let mut cfg = [0u8; 64];
        cfg[0] = 1;
        for tile in 0..8 {
            cfg[16 + 2 * tile] = 64;
            cfg[48 + tile] = TILE_ROWS as u8;
        }
        cfg
    }

    /// Computes the given panels for all `rows` (a multiple of 32) into `out` (row stride `ldc` floats).
    ///
    /// # Safety
    /// AMX must be available and permitted; `a` holds rows × w.pairs values; `out` has rows × ldc floats.
    pub unsafe fn panels(
        w: &PackedWeights,
        a: &[u32],
        rows: usize,
        panels: std::ops::Range<usize>,
        out: *mut f32,
        ldc: usize,
    ) {
        let cfg = config();
        asm!("ldtilecfg [{}]", in(reg) cfg.as_ptr(), options(nostack));
        let a_stride = w.pairs * 4;
        let b_stride = PANEL * 4;
        let c_stride = ldc * 4;
        for panel in panels {
            let b_panel = w.data.as_ptr().add(panel * w.pairs * PANEL);
            for r in (0..rows).step_by(2 * TILE_ROWS) {
                let a0 = a.as_ptr().add(r * w.pairs);
                let a1 = a0.add(TILE_ROWS * w.pairs);
                for half in 0..2 {
                    let col = half * 32;
                    asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack));
                    for kb in (0..w.pairs).step_by(TILE_PAIRS) {
                        let b0 = b_panel.add(kb * PANEL + col);
                        asm!(
                            "tileloadd tmm4, [{a0} + {sa}*1]",
                            "tileloadd tmm5, [{a1} + {sa}*1]",
                            "tileloadd tmm6, [{b0} + {sb}*1]",
                            "tileloadd tmm7, [{b1} + {sb}*1]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            a0 = in(reg) a0.add(kb),
                            a1 = in(reg) a1.add(kb),
                            b0 = in(reg) b0,
                            b1 = in(reg) b0.add(16),
                            sa = in(reg) a_stride,
                            sb = in(reg) b_stride,
                            options(nostack),
                        );
                    }
                    let c0 = out.add(r * ldc + panel * PANEL + col);
                    let c1 = c0.add(TILE_ROWS * ldc);
                    asm!(
                        "tilestored [{c0} + {sc}*1], tmm0",
                        "tilestored [{c1} + {sc}*1], tmm1",
                        "tilestored [{c2} + {sc}*1], tmm2",
                        "tilestored [{c3} + {sc}*1], tmm3",
                        c0 = in(reg) c0,
                        c1 = in(reg) c0.add(16),
                        c2 = in(reg) c1,
                        c3 = in(reg) c1.add(16),
                        sc = in(reg) c_stride,
                        options(nostack),
                    );
                }
            }
        }
        asm!("tilerelease", options(nostack));
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod amx {
    pub const TILE_ROWS: usize = 16;
    pub fn request_permission() -> bool {
        false
    }
    pub unsafe fn panels(
        _: &super::PackedWeights,
        _: &[u32],
        _: usize,
        _: std::ops::Range<usize>,
        _: *mut f32,
        _: usize,
    ) {
        unreachable!("AMX is x86-64 only")
    }
}

/// C[0..R, 0..cols] = A[0..R] · B-panel, A as bf16 pairs (stride `pairs`), C with row stride `ldc`.
///
/// # Safety
/// The CPU must have AVX512F and AVX512-BF16; `a` holds R rows of `pairs`, `b` a panel of `pairs` × 64, `c` R rows of
/// `cols` floats at stride `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn avx512_kernel<const R: usize>(
    a: *const u32,
    pairs: usize,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    for p in 0..pairs {
        let bp = b.add(p * PANEL) as *const __m512i;
        let bv: [__m512bh; 4] = [
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp)),
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(1))),
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(2))),
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(3))),
        ];
        for (row, acc_row) in acc.iter_mut().enumerate() {
            let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*a.add(row * pairs + p) as i32));
            for j in 0..4 {
                acc_row[j] = _mm512_dpbf16_ps(acc_row[j], av, bv[j]);
            }
        }
    }
    for (row, acc_row) in acc.iter().enumerate() {
        let dst = c.add(row * ldc);
        for (j, v) in acc_row.iter().enumerate() {
            let start = j * 16;
            if start + 16 <= cols {
                _mm512_storeu_ps(dst.add(start), *v);
            } else if start < cols {
                let mask: __mmask16 = (1u32 << (cols - start)) as u16 - 1;
                _mm512_mask_storeu_ps(dst.add(start), mask, *v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16_to_f32(b: u16) -> f32 {
        f32::from_bits((b as u32) << 16)
    }

    #[test]
    fn rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_to_f32(f32_to_bf16(-2.5)), -2.5);
    }

    #[test]
    fn matches_a_plain_matmul_for_odd_shapes() {
        let kernels = crate::cpu::bf16_kernels();
        if kernels.is_empty() {
            return println!("SKIPPED bf16_matmul::matches_a_plain_matmul_for_odd_shapes: no bf16 kernel on this CPU");
        }
        println!("kernels tested: {kernels:?} (bf16_matmul::matches_a_plain_matmul_for_odd_shapes)");
        for (rows, out_f, in_f) in [(1, 1, 1), (7, 70, 33), (13, 128, 64), (6, 192, 97), (25, 64, 1024), (40, 130, 70)]
        {
            let w: Vec<u16> = (0..out_f * in_f).map(|i| f32_to_bf16(((i * 37 % 101) as f32 - 50.0) / 64.0)).collect();
            let x: Vec<f32> = (0..rows * in_f).map(|i| ((i * 13 % 29) as f32 - 14.0) / 8.0).collect();
            let packed = PackedWeights::pack(&w, out_f, in_f);
            for &kernel in &kernels {
                let got = packed.matmul(kernel, &x, rows);
                for r in 0..rows {
                    for n in 0..out_f {
                        let expected: f64 = (0..in_f)
                            .map(|k| {
                                bf16_to_f32(f32_to_bf16(x[r * in_f + k])) as f64 * bf16_to_f32(w[n * in_f + k]) as f64
                            })
                            .sum();
                        let g = got[r * out_f + n] as f64;
                        let ok = (g - expected).abs() <= 1e-4 * (1.0 + expected.abs());
                        assert!(ok, "{kernel:?} {rows}x{out_f}x{in_f} [{r},{n}]: {g} vs {expected}");
                    }
                }
            }
        }
    }
}
