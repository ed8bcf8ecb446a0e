//! `y = x · Wᵀ` in f32 on x86-64 CPUs with AVX2 and FMA, for CPUs without bf16 instructions.
//!
//! candle's CPU matmul (the `gemm` crate) packs the weights again on every call and reaches about half of the FMA
//! peak for the row counts a query has (measured on an AMD EPYC Zen 3: 34–43 GFLOP/s at 35 rows, 78–90 at 704, where
//! PyTorch's sgemm reaches 58 and 134). Here the weights are packed once, at load, into 16-column panels (each
//! input feature's 16 weights contiguous), so a call only packs the activations, and the work follows the classic
//! BLIS blocking: a block of `KC` input features of one panel (16 KiB) stays in L1 while a block of up to `MC_GROUPS`
//! × 6 activation rows (L2-sized) streams past it through a 6 × 16 micro-kernel that keeps its 12 accumulators in
//! registers. Columns are split over the rayon pool; each task reuses its activation block across its panels.

use rayon::prelude::*;

use crate::cpu::F32Kernel;
use crate::panels::by_panel_runs;

/// Output columns per panel: two 8-lane registers.
const NR: usize = 16;
/// Activation rows per micro-kernel call: 6 × 2 accumulators + 2 weight vectors + 1 broadcast = 15 of 16 registers.
const MR: usize = 6;
/// Input features per block: one panel's block is KC × 16 × 4 bytes = 16 KiB (half of L1).
const KC: usize = 256;
/// Row groups per activation block: 32 × 6 rows × KC × 4 bytes = 192 KiB (under half of a 512 KiB L2).
const MC_GROUPS: usize = 32;

/// One input feature's 16 weights of a panel: a whole cache line, so no load of the micro-kernel splits one.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Step([f32; NR]);

/// A weight matrix (out_features × in_features) packed for the kernel.
pub struct PackedF32 {
    out_features: usize,
    in_features: usize,
    /// panels × in_features steps; columns past out_features are zero.
    data: Vec<Step>,
}

impl PackedF32 {
    /// `weights` is the matrix row-major (out_features rows of in_features).
    pub fn pack(weights: &[f32], out_features: usize, in_features: usize) -> Self {
        assert_eq!(weights.len(), out_features * in_features);
        let panels = out_features.div_ceil(NR);
        let mut data = vec![Step([0.0; NR]); panels * in_features];
        data.par_chunks_mut(in_features).enumerate().for_each(|(panel, out)| {
            for lane in 0..NR.min(out_features - panel * NR) {
                let row = &weights[(panel * NR + lane) * in_features..][..in_features];
                for (step, &w) in out.iter_mut().zip(row) {
                    step.0[lane] = w;
                }
            }
        });
        PackedF32 { out_features, in_features, data }
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// `x` is rows × in_features (row-major); returns rows × out_features. The kernel token proves the CPU has the
    /// instructions.
    pub fn matmul(&self, kernel: F32Kernel, x: &[f32], rows: usize) -> Vec<f32> {
        let _ = kernel;
        let k = self.in_features;
        assert_eq!(x.len(), rows * k);
        let panels = self.out_features.div_ceil(NR);
        let ldc = panels * NR;
        let groups = rows.div_ceil(MR);
        // Activations as groups of 6 rows interleaved by feature (a[g][k][r]), zero rows past the end, so the
        // micro-kernel reads one contiguous stream of broadcasts.
        let mut a = vec![0f32; groups * k * MR];
        a.par_chunks_mut(k * MR).enumerate().for_each(|(g, dst)| {
            for r in 0..MR.min(rows - g * MR) {
                let src = &x[(g * MR + r) * k..][..k];
                for (kk, &v) in src.iter().enumerate() {
                    dst[kk * MR + r] = v;
                }
            }
        });
        by_panel_runs(panels, 4, (rows, ldc), (rows, self.out_features), |run, out| {
            for k0 in (0..k).step_by(KC) {
                let kc = KC.min(k - k0);
                for g0 in (0..groups).step_by(MC_GROUPS) {
                    for panel in run.clone() {
                        let b = &self.data[panel * k + k0..][..kc];
                        for g in g0..(g0 + MC_GROUPS).min(groups) {
                            let a = &a[(g * k + k0) * MR..][..kc * MR];
                            let r = MR.min(rows - g * MR);
                            // SAFETY: the token says AVX2 and FMA are present; `a` and `b` hold kc steps; the
                            // output tile (rows g*6.., columns panel*16..) lies inside `out` and is written by this
                            // task alone (tasks own disjoint panels).
                            unsafe {
                                let c = out.add(g * MR * ldc + panel * NR);
                                tile(r, kc, a, b, c, ldc, k0 > 0);
                            }
                        }
                    }
                }
            }
        })
    }
}

/// Dispatches the micro-kernel for the `rows` (1–6) valid rows of a group.
///
/// # Safety
/// AVX2 and FMA must be available; `c` must have `rows` rows of 16 floats at stride `ldc`.
#[cfg(target_arch = "x86_64")]
unsafe fn tile(rows: usize, kc: usize, a: &[f32], b: &[Step], c: *mut f32, ldc: usize, accumulate: bool) {
    let b = b.as_ptr() as *const f32;
    match rows {
        1 => micro::<1>(kc, a.as_ptr(), b, c, ldc, accumulate),
        2 => micro::<2>(kc, a.as_ptr(), b, c, ldc, accumulate),
        3 => micro::<3>(kc, a.as_ptr(), b, c, ldc, accumulate),
        4 => micro::<4>(kc, a.as_ptr(), b, c, ldc, accumulate),
        5 => micro::<5>(kc, a.as_ptr(), b, c, ldc, accumulate),
        _ => micro::<MR>(kc, a.as_ptr(), b, c, ldc, accumulate),
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile(_: usize, _: usize, _: &[f32], _: &[Step], _: *mut f32, _: usize, _: bool) {
    unreachable!("no F32Kernel exists off x86-64")
}

/// C[0..R, 0..16] (+)= A-group · B-panel over kc steps; A interleaved 6 per step, B 16 per step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro<const R: usize>(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, accumulate: bool) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    if accumulate {
        for (r, row) in acc.iter_mut().enumerate() {
            row[0] = _mm256_loadu_ps(c.add(r * ldc));
            row[1] = _mm256_loadu_ps(c.add(r * ldc + 8));
        }
    }
    for k in 0..kc {
        let b0 = _mm256_load_ps(b.add(k * NR));
        let b1 = _mm256_load_ps(b.add(k * NR + 8));
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*a.add(k * MR + r));
            row[0] = _mm256_fmadd_ps(av, b0, row[0]);
            row[1] = _mm256_fmadd_ps(av, b1, row[1]);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        _mm256_storeu_ps(c.add(r * ldc), row[0]);
        _mm256_storeu_ps(c.add(r * ldc + 8), row[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_plain_matmul_for_odd_shapes() {
        let Some(kernel) = crate::cpu::f32_kernel() else {
            return println!("SKIPPED f32_matmul::matches_a_plain_matmul_for_odd_shapes: no AVX2/FMA on this CPU");
        };
        for (rows, out_f, in_f) in
            [(1, 1, 1), (7, 70, 33), (13, 128, 64), (6, 192, 97), (25, 64, 1024), (40, 130, 700), (200, 48, 300)]
        {
            let w: Vec<f32> = (0..out_f * in_f).map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0).collect();
            let x: Vec<f32> = (0..rows * in_f).map(|i| ((i * 13 % 29) as f32 - 14.0) / 8.0).collect();
            let got = PackedF32::pack(&w, out_f, in_f).matmul(kernel, &x, rows);
            assert_eq!(got.len(), rows * out_f);
            for r in 0..rows {
                for n in 0..out_f {
                    let want: f64 = (0..in_f).map(|k| x[r * in_f + k] as f64 * w[n * in_f + k] as f64).sum();
                    let g = got[r * out_f + n] as f64;
                    assert!(
                        (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{rows}x{out_f}x{in_f} [{r},{n}]: {g} vs {want}"
                    );
                }
            }
        }
    }
}
