//! `y = x · Wᵀ` with bf16 weights and f32 accumulation on CPUs with AVX512-BF16 (`vdpbf16ps`, twice the FLOP rate of
//! f32 FMA). candle's CPU matmul has no bf16 kernel (it converts to f32 on every call), and at f32 the encoder is
//! already near the FMA peak, so this is where the speed comes from.
//!
//! The weights are packed once, at load, into the layout the instruction consumes: 64-column panels, and within a
//! panel, for each pair of input features k, k+1, the 64 columns' (W[n][k], W[n][k+1]) bf16 pairs. Activations are
//! rounded to bf16 (round to nearest even) per call. The micro-kernel keeps an MR × 64 block of the output in 24
//! registers; panels are spread over the rayon pool the caller runs in.

use rayon::prelude::*;

/// Output columns per panel (four 16-lane registers).
const PANEL: usize = 64;
/// Output rows per micro-kernel call.
const MR: usize = 6;

/// True when this CPU can run the kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
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
        let pairs = in_features.div_ceil(2);
        let panels = out_features.div_ceil(PANEL);
        let mut data = vec![0u32; panels * pairs * PANEL];
        data.par_chunks_mut(pairs * PANEL).enumerate().for_each(|(panel, out)| {
            for lane in 0..PANEL {
                let n = panel * PANEL + lane;
                if n >= out_features {
                    break;
                }
                let row = &weights[n * in_features..(n + 1) * in_features];
                for p in 0..pairs {
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

    /// `x` is rows × in_features (row-major); returns rows × out_features.
    pub fn matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        assert_eq!(x.len(), rows * self.in_features);
        assert!(available(), "AVX512-BF16 is not available on this CPU");
        let a = self.activations(x, rows);
        let mut out = vec![0f32; rows * self.out_features];
        let panels = self.out_features.div_ceil(PANEL);
        let out_ptr = SendPtr(out.as_mut_ptr());
        let threads = rayon::current_num_threads().max(1);
        // Contiguous runs of panels per task: each task reuses its panels across all rows.
        let per_task = panels.div_ceil(threads * 2).max(1);
        (0..panels.div_ceil(per_task)).into_par_iter().for_each(|task| {
            let out_ptr = &out_ptr;
            for panel in task * per_task..((task + 1) * per_task).min(panels) {
                // SAFETY: the kernel is only reached when `available()`; each panel writes its own columns.
                unsafe { self.panel(&a, rows, panel, out_ptr.0) };
            }
        });
        out
    }

    /// Activations as bf16 pairs, rows × pairs.
    fn activations(&self, x: &[f32], rows: usize) -> Vec<u32> {
        let (k, pairs) = (self.in_features, self.pairs);
        let mut a = vec![0u32; rows * pairs];
        a.par_chunks_mut(pairs).zip(x.par_chunks(k)).for_each(|(dst, src)| {
            for (p, d) in dst.iter_mut().enumerate() {
                let lo = f32_to_bf16(src[2 * p]) as u32;
                let hi = src.get(2 * p + 1).map_or(0, |v| f32_to_bf16(*v) as u32);
                *d = lo | (hi << 16);
            }
        });
        a
    }

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
                1 => kernel::<1>(a_rows, self.pairs, b, c, self.out_features, cols),
                2 => kernel::<2>(a_rows, self.pairs, b, c, self.out_features, cols),
                3 => kernel::<3>(a_rows, self.pairs, b, c, self.out_features, cols),
                4 => kernel::<4>(a_rows, self.pairs, b, c, self.out_features, cols),
                5 => kernel::<5>(a_rows, self.pairs, b, c, self.out_features, cols),
                _ => kernel::<MR>(a_rows, self.pairs, b, c, self.out_features, cols),
            }
            r += MR;
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn panel(&self, _a: &[u32], _rows: usize, _panel: usize, _out: *mut f32) {
        unreachable!("AVX512-BF16 is x86-64 only")
    }
}

struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint column ranges of the output.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// C[0..R, 0..cols] = A[0..R] · B-panel, A as bf16 pairs (stride `pairs`), C with row stride `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel<const R: usize>(a: *const u32, pairs: usize, b: *const u32, c: *mut f32, ldc: usize, cols: usize) {
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
        if !available() {
            eprintln!("skipped: no AVX512-BF16 on this CPU");
            return;
        }
        for (rows, out_f, in_f) in [(1, 1, 1), (7, 70, 33), (13, 128, 64), (6, 192, 97), (25, 64, 1024)] {
            let w: Vec<u16> = (0..out_f * in_f).map(|i| f32_to_bf16(((i * 37 % 101) as f32 - 50.0) / 64.0)).collect();
            let x: Vec<f32> = (0..rows * in_f).map(|i| ((i * 13 % 29) as f32 - 14.0) / 8.0).collect();
            let got = PackedWeights::pack(&w, out_f, in_f).matmul(&x, rows);
            for r in 0..rows {
                for n in 0..out_f {
                    let expected: f64 = (0..in_f)
                        .map(|k| bf16_to_f32(f32_to_bf16(x[r * in_f + k])) as f64 * bf16_to_f32(w[n * in_f + k]) as f64)
                        .sum();
                    let g = got[r * out_f + n] as f64;
                    assert!(
                        (g - expected).abs() <= 1e-4 * (1.0 + expected.abs()),
                        "{rows}x{out_f}x{in_f} [{r},{n}]: {g} vs {expected}"
                    );
                }
            }
        }
    }
}
