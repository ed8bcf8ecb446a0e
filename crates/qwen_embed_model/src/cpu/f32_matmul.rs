//! `y = x · Wᵀ` with f32 arithmetic on x86-64 CPUs with AVX2, FMA and F16C, for CPUs without bf16 instructions.
//!
//! candle's CPU matmul (the `gemm` crate) packs the weights again on every call and reaches about half of the FMA
//! peak for the row counts a query has (measured on an AMD EPYC Zen 3: 34–43 GFLOP/s at 35 rows, 78–90 at 704, where
//! PyTorch's sgemm reaches 58 and 134). Here the weights are packed once, at load, into 16-column panels (each
//! input feature's 16 weights contiguous), so a call only packs the activations, and the work follows the classic
//! BLIS blocking: a 32 KiB block of one panel's input features stays in L1 while a block of up to `MC_GROUPS` × 6
//! activation rows (L2-sized) streams past it through a 6 × 16 micro-kernel that keeps its 12 accumulators in
//! registers. Columns are split over the rayon pool; each task reuses its activation block across its panels.
//!
//! Two things keep the arithmetic fed from memory, which is what limits a short input (a 26-token query reads each
//! weight once per 26 × 2 flops: 1.8 GB of f32 weights a pass for the 0.6B model, against ~16 GB/s for two cores):
//! - the micro-kernel prefetches the weight block the next pass will read, spread over the passes of this one, so the
//!   first row group of a panel no longer waits for its weights (+16–31 % at 26 rows on Zen 3);
//! - the weights may be held in f16 ([`WeightFormat::F16`]), which halves the bytes to stream and the memory held; F16C
//!   converts them to f32 as the kernel loads them (`vcvtph2ps` runs beside the FMAs), so the arithmetic is still
//!   f32. f16 keeps 11 significant bits (bf16: 8); the accuracy it costs is measured by the reference tests.

use rayon::prelude::*;

use crate::cpu::F32Kernel;
use crate::micro_kernel::{interleave_rows, tile, Step, Step16, Step32, Tile, LINE, MR, NR};
use crate::panels::by_panel_runs;

/// Bytes of one panel's weight block: the L1 data cache of current x86 cores (32 KiB or more). The activations the
/// micro-kernel broadcasts come from L2 beside it; on Zen 3 a 32 KiB block measured up to 18 % faster than 16 KiB at
/// 704 rows (fewer passes over the accumulators), and the same at 26.
const BLOCK_BYTES: usize = 32 * 1024;
/// Row groups per activation block (192 rows). Its block is past L2 for long inputs (768 KiB at the f16 block's 1,024
/// features), yet 16 groups measured no faster on Zen 3: the micro-kernel's broadcasts are few and sequential.
const MC_GROUPS: usize = 32;

/// How the packed weights are held; the arithmetic is f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    F32,
    /// Half the memory and memory traffic. Weights beyond f16's range (±65,504) would become infinities: a matrix
    /// with one is held in f32 instead.
    F16,
}

enum Panels {
    F32(Vec<Step32>),
    F16(Vec<Step16>),
}

/// A weight matrix (out_features × in_features) packed for the kernel.
pub struct PackedF32 {
    out_features: usize,
    in_features: usize,
    /// panels × in_features steps; columns past out_features are zero.
    panels: Panels,
}

/// Packs row-major `weights` into panels: `step` makes one input feature's step from its 16 columns.
fn pack_panels<T: Copy + Default + Send + Sync, S: Copy + Send>(
    weights: &[T],
    (out_features, in_features): (usize, usize),
    step: fn([T; NR]) -> S,
) -> Vec<S> {
    let mut data = vec![step([T::default(); NR]); out_features.div_ceil(NR) * in_features];
    data.par_chunks_mut(in_features).enumerate().for_each(|(panel, out)| {
        let lanes = NR.min(out_features - panel * NR);
        for (kk, s) in out.iter_mut().enumerate() {
            let mut column = [T::default(); NR];
            for (lane, v) in column.iter_mut().enumerate().take(lanes) {
                *v = weights[(panel * NR + lane) * in_features + kk];
            }
            *s = step(column);
        }
    });
    data
}

impl PackedF32 {
    /// `weights` is the matrix row-major (out_features rows of in_features).
    pub fn pack(weights: &[f32], out_features: usize, in_features: usize, format: WeightFormat) -> Self {
        use half::slice::HalfFloatSliceExt;
        assert_eq!(weights.len(), out_features * in_features);
        let shape = (out_features, in_features);
        let f16_max = half::f16::MAX.to_f32_const();
        let fits_f16 = || weights.par_iter().all(|w| !w.is_finite() || w.abs() <= f16_max);
        let panels = if format == WeightFormat::F16 && fits_f16() {
            let mut bits = vec![half::f16::ZERO; weights.len()];
            // Converted as one slice first: F16C, 8 at a time.
            bits.par_chunks_mut(1 << 16)
                .zip(weights.par_chunks(1 << 16))
                .for_each(|(h, w)| h.convert_from_f32_slice(w));
            Panels::F16(pack_panels(&bits, shape, |c| Step16(c.map(half::f16::to_bits))))
        } else {
            Panels::F32(pack_panels(weights, shape, Step32))
        };
        PackedF32 { out_features, in_features, panels }
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// How the weights are held (f16 asked for may be f32: see [`WeightFormat::F16`]).
    pub fn format(&self) -> WeightFormat {
        match self.panels {
            Panels::F32(_) => WeightFormat::F32,
            Panels::F16(_) => WeightFormat::F16,
        }
    }

    /// `x` is rows × in_features (row-major); returns rows × out_features. The kernel token proves the CPU has the
    /// instructions.
    pub fn matmul(&self, kernel: F32Kernel, x: &[f32], rows: usize) -> Vec<f32> {
        let _ = kernel;
        match &self.panels {
            Panels::F32(data) => self.run(data, x, rows),
            Panels::F16(data) => self.run(data, x, rows),
        }
    }

    /// The matmul on the panels `data` (panels × in_features steps).
    fn run<S: Step>(&self, data: &[S], x: &[f32], rows: usize) -> Vec<f32> {
        let k = self.in_features;
        assert_eq!(x.len(), rows * k);
        let panels = self.out_features.div_ceil(NR);
        let ldc = panels * NR;
        let groups = rows.div_ceil(MR);
        let kc_max = BLOCK_BYTES / size_of::<S>();
        // Activations as groups of 6 rows interleaved by feature (a[g][k][r]), zero rows past the end, so the
        // micro-kernel reads one contiguous stream of broadcasts.
        let mut a = vec![0f32; groups * k * MR];
        a.par_chunks_mut(k * MR).zip(x.par_chunks(k * MR)).for_each(|(dst, group)| interleave_rows(dst, group, k));
        by_panel_runs(panels, 4, (rows, ldc), (rows, self.out_features), |run, out| {
            // The block of `panel` starting at feature `k0`.
            let block = |panel: usize, k0: usize| &data[panel * k + k0..][..kc_max.min(k - k0)];
            for k0 in (0..k).step_by(kc_max) {
                let kc = kc_max.min(k - k0);
                for g0 in (0..groups).step_by(MC_GROUPS) {
                    let g1 = (g0 + MC_GROUPS).min(groups);
                    for panel in run.clone() {
                        let b = block(panel, k0);
                        // The block the next pass reads (this run's next panel, or its first panel for the next row
                        // block or feature block), prefetched a line per step by this panel's row groups in turn.
                        let next = if panel + 1 < run.end {
                            block(panel + 1, k0)
                        } else if g1 < groups {
                            block(run.start, k0)
                        } else if k0 + kc < k {
                            block(run.start, k0 + kc)
                        } else {
                            &[]
                        };
                        let lines = size_of_val(next).div_ceil(LINE);
                        let share = lines.div_ceil(g1 - g0);
                        for g in g0..g1 {
                            let a = &a[(g * k + k0) * MR..][..kc * MR];
                            let r = MR.min(rows - g * MR);
                            let first = ((g - g0) * share).min(lines);
                            let pf =
                                ((next.as_ptr() as *const u8).wrapping_add(first * LINE), share.min(lines - first));
                            // SAFETY: the token says AVX2, FMA and F16C are present; `a` and `b` hold kc steps (`b`
                            // f16 if `S::F16`); the prefetch addresses are only hints (computed with
                            // wrapping_add, never dereferenced: a prefetch does not fault), and the output
                            // tile (rows g*6.., columns panel*16..) lies inside `out` and is written by this task
                            // alone (tasks own disjoint panels).
                            unsafe {
                                let c = out.add(g * MR * ldc + panel * NR);
                                let t = Tile {
                                    kc,
                                    a: a.as_ptr(),
                                    b: b.as_ptr() as *const u8,
                                    pf,
                                    c,
                                    ldc,
                                    accumulate: k0 > 0,
                                };
                                // S::F16 is a constant: the branch compiles away.
                                if S::F16 {
                                    tile::<true>(r, t)
                                } else {
                                    tile::<false>(r, t)
                                }
                            }
                        }
                    }
                }
            }
        })
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
        for format in [WeightFormat::F32, WeightFormat::F16] {
            // Multiples of 1/300 are not exact in f16: the reference rounds them as packing must.
            let held = |w: f32| if format == WeightFormat::F16 { half::f16::from_f32(w).to_f32() } else { w };
            for (rows, out_f, in_f) in [
                (1, 1, 1),
                (7, 70, 33),
                (13, 128, 64),
                (6, 192, 97),
                (25, 64, 1024),
                (40, 130, 700),
                (200, 48, 300),
                (9, 40, 2500),
            ] {
                let w: Vec<f32> = (0..out_f * in_f).map(|i| ((i * 37 % 101) as f32 - 50.0) / 300.0).collect();
                let x: Vec<f32> = (0..rows * in_f).map(|i| ((i * 13 % 29) as f32 - 14.0) / 8.0).collect();
                let packed = PackedF32::pack(&w, out_f, in_f, format);
                assert_eq!(packed.format(), format);
                let got = packed.matmul(kernel, &x, rows);
                assert_eq!(got.len(), rows * out_f);
                for r in 0..rows {
                    for n in 0..out_f {
                        let want: f64 = (0..in_f).map(|k| x[r * in_f + k] as f64 * held(w[n * in_f + k]) as f64).sum();
                        let g = got[r * out_f + n] as f64;
                        assert!(
                            (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{format:?} {rows}x{out_f}x{in_f} [{r},{n}]: {g} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn weights_beyond_the_f16_range_are_held_in_f32() {
        let Some(kernel) = crate::cpu::f32_kernel() else {
            return println!("SKIPPED f32_matmul::weights_beyond_the_f16_range_are_held_in_f32: no AVX2/FMA");
        };
        let w = [1.0, 70_000.0, 0.5, -2.0];
        let packed = PackedF32::pack(&w, 2, 2, WeightFormat::F16);
        assert_eq!(packed.format(), WeightFormat::F32);
        assert_eq!(packed.matmul(kernel, &[1.0, 1.0], 1), vec![70_001.0, -1.5]);
        assert_eq!(PackedF32::pack(&[1.0, 60_000.0], 1, 2, WeightFormat::F16).format(), WeightFormat::F16);
    }
}
