//! Element-wise passes of the CPU forward pass, written so the compiler vectorises them (no libm call, no serial
//! dependency) and compiled for the vector width the CPU has (AVX-512 or AVX2 + FMA, as `cpu` detected; SSE2
//! otherwise): softmax's exponentials and the MLP's SwiGLU.

use rayon::prelude::*;

/// Runs `generic` compiled for the widest vectors this CPU has. Every caller passes an `#[inline(always)]` body, so
/// each `target_feature` wrapper gets its own copy of it.
macro_rules! widest {
    ($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $generic:ident) => {
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) -> $ret {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    $generic($($arg),*)
                }
                use crate::cpu::Level;
                match crate::cpu::level() {
                    // SAFETY: these levels are detected only where the CPU has AVX-512F, AVX2 and FMA.
                    Level::Avx512 | Level::Avx512Bf16 | Level::Amx => return unsafe { avx512($($arg),*) },
                    // SAFETY: this level is detected only where the CPU has AVX2 and FMA.
                    Level::Avx2 => return unsafe { avx2($($arg),*) },
                    Level::Generic => {}
                }
            }
            $generic($($arg),*)
        }
    };
}

widest!(exp_shifted(xs: &mut [f32], max: f32) -> f32 = exp_shifted_generic);
widest!(silu_mul_rows(gate_up: &[f32], out: &mut [f32], n: usize) -> () = silu_mul_generic);
widest!(max_of(xs: &[f32], init: f32) -> f32 = max_of_generic);

/// out[i] = [`f32_to_bf16`]`(xs[i])`: `vcvtneps2bf16` where the CPU has AVX512-BF16, else the integer rounding.
pub fn to_bf16(xs: &[f32], out: &mut [u16]) {
    assert_eq!(xs.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if let Some(token) = crate::cpu::avx512_bf16() {
        // SAFETY: the token says the CPU has AVX512F and AVX512-BF16; the slices are equally long (asserted).
        return unsafe { to_bf16_avx512bf16(token, xs, out) };
    }
    to_bf16_generic(xs, out)
}

/// # Safety
/// The CPU must have AVX512F and AVX512-BF16 (the token says so); `xs` and `out` equally long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn to_bf16_avx512bf16(_: crate::cpu::Avx512Bf16, xs: &[f32], out: &mut [u16]) {
    use std::arch::x86_64::*;
    let (whole, tail) = (xs.chunks_exact(16), xs.len() / 16 * 16);
    for (i, chunk) in whole.enumerate() {
        let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(chunk.as_ptr())));
        _mm256_storeu_si256(out.as_mut_ptr().add(i * 16).cast(), h);
    }
    // The last few values without a masked 16-bit store, which would need AVX512BW beyond what the token proves.
    out[tail..].iter_mut().zip(&xs[tail..]).for_each(|(o, &x)| *o = f32_to_bf16(x));
}

/// The largest of `init` and `xs` (NaNs ignored, as `f32::max` does). Sixteen running maxima, so it vectorises.
#[inline(always)]
fn max_of_generic(xs: &[f32], init: f32) -> f32 {
    let mut lanes = [init; 16];
    let mut chunks = xs.chunks_exact(16);
    for chunk in &mut chunks {
        lanes.iter_mut().zip(chunk).for_each(|(l, &x)| *l = if x > *l { x } else { *l });
    }
    lanes.iter().chain(chunks.remainder()).fold(init, |m, &x| m.max(x))
}

/// out[i] = [`f32_to_bf16`]`(xs[i])`, written without a branch so it vectorises.
fn to_bf16_generic(xs: &[f32], out: &mut [u16]) {
    assert_eq!(xs.len(), out.len());
    out.iter_mut().zip(xs).for_each(|(o, &x)| {
        let bits = x.to_bits();
        let rounded = ((bits.wrapping_add(0x7fff + ((bits >> 16) & 1))) >> 16) as u16;
        let quiet = ((bits >> 16) | 0x40) as u16;
        *o = if x.is_nan() { quiet } else { rounded };
    });
}

/// xs[i] = exp(xs[i] - max) for all i; returns their sum (softmax after subtracting the maximum).
#[inline(always)]
fn exp_shifted_generic(xs: &mut [f32], max: f32) -> f32 {
    xs.iter_mut().for_each(|x| *x = exp_approx(*x - max));
    let mut lanes = [0f32; 16];
    let mut chunks = xs.chunks_exact(16);
    for chunk in &mut chunks {
        lanes.iter_mut().zip(chunk).for_each(|(l, x)| *l += x);
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// SwiGLU over rows of the fused gate/up projection: row r of `gate_up` is [gate (n) | up (n)]; row r of `out` gets
/// silu(gate) · up. Blocks of rows are spread over the rayon pool.
pub fn silu_mul(gate_up: &[f32], out: &mut [f32], n: usize) {
    assert_eq!(gate_up.len(), 2 * out.len());
    assert_eq!(out.len() % n.max(1), 0);
    const ROWS: usize = 16;
    out.par_chunks_mut(n * ROWS).zip(gate_up.par_chunks(2 * n * ROWS)).for_each(|(o, gu)| silu_mul_rows(gu, o, n));
}

#[inline(always)]
fn silu_mul_generic(gate_up: &[f32], out: &mut [f32], n: usize) {
    for (o, gu) in out.chunks_exact_mut(n).zip(gate_up.chunks_exact(2 * n)) {
        let (g, u) = gu.split_at(n);
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = silu_times(g, u);
        }
    }
}

/// silu(g) · u with sigmoid from [`exp_approx`] on −|g| (so its argument is never positive).
#[inline(always)]
fn silu_times(g: f32, u: f32) -> f32 {
    let e = exp_approx(-g.abs());
    let sigmoid = if g >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) };
    g * sigmoid * u
}

/// e^x for x ≤ 0, Cephes' expf: x = k·ln2 + r, |r| ≤ ln2/2, e^r by a degree-7 polynomial, 2^k from the exponent bits.
/// Below -87 the result is flushed to about 1e-38.
#[inline(always)]
pub(crate) fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 × 2^23: adding and subtracting it rounds to the nearest integer
    let x = x.clamp(-87.0, 0.0);
    // After adding ROUND the low mantissa bits hold k itself (two's complement), so 2^k is built from the bits with
    // integer operations only: an `as i32` cast would be a saturating scalar conversion that blocks vectorisation.
    let t = x * LOG2E + ROUND;
    let k = t - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits() - 127) << 23)
}

/// Round-to-nearest-even f32 → bf16 bits (what `vcvtneps2bf16` and oneDNN's reorders do).
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vector_passes_match_their_scalar_definitions() {
        let xs: Vec<f32> = (0..103).map(|i| (i as f32 * 0.731).sin() * 1e3 + i as f32 * 1e-5).collect();
        // The special values both in a whole 16-value chunk and in the tail.
        let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1.0 + f32::EPSILON, f32::MAX];
        let specials: Vec<f32> = special.iter().chain(&xs).chain(&special).copied().collect();
        let want: Vec<u16> = specials.iter().map(|&x| f32_to_bf16(x)).collect();
        let mut got = vec![0u16; specials.len()];
        to_bf16_generic(&specials, &mut got);
        assert_eq!(got, want);
        match crate::cpu::avx512_bf16() {
            Some(_) => {
                let mut got = vec![0u16; specials.len()];
                to_bf16(&specials, &mut got);
                assert_eq!(got, want, "vcvtneps2bf16");
            }
            None => println!("SKIPPED vcvtneps2bf16 against f32_to_bf16: no AVX512-BF16"),
        }
        for n in [0, 1, 15, 16, 17, 103] {
            let want = xs[..n].iter().fold(-5.0f32, |m, &x| m.max(x));
            assert_eq!(max_of(&xs[..n], -5.0), want, "{n} values");
        }
        assert_eq!(max_of(&[f32::NAN, 2.0], f32::NEG_INFINITY), 2.0);
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        let bf16_to_f32 = |b: u16| f32::from_bits((b as u32) << 16);
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_to_f32(f32_to_bf16(-2.5)), -2.5);
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0f32;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let (got, want) = (exp_approx(x), x.exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
    }

    #[test]
    fn silu_mul_matches_the_definition() {
        let n = 37;
        let gate_up: Vec<f32> = (0..5 * 2 * n).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 40.0).collect();
        let mut out = vec![0f32; 5 * n];
        silu_mul(&gate_up, &mut out, n);
        for (r, row) in out.chunks(n).enumerate() {
            for (i, &got) in row.iter().enumerate() {
                let (g, u) = (gate_up[r * 2 * n + i] as f64, gate_up[r * 2 * n + n + i] as f64);
                let want = g / (1.0 + (-g).exp()) * u;
                assert!((got as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "[{r},{i}] {got} vs {want}");
            }
        }
    }
}
