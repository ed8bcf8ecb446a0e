//! The f32 FMA micro-kernel under the AVX2 linear layers (`f32_matmul`) and the CPU attention (`attention`): a 6 × 16
//! tile of C in 12 registers, `C (+)= A · B` over `kc` steps, where A is 6 rows interleaved per step (6 floats) and B
//! is one panel of 16 columns per step, f32 or f16 bits (F16C converts those as they are loaded).
//!
//! Its callers do the blocking (which block of B stays in L1, which rows of A stream past it) and the packing.

/// The prefetch works in cache lines.
pub(crate) const LINE: usize = 64;
/// Columns of a B panel (of C per call): two 8-lane registers.
pub(crate) const NR: usize = 16;
/// Rows of A (and C) per call: 6 × 2 accumulators + 2 B vectors + the broadcasts of A (1 in intrinsics, 2 in the
/// assembly, alternating) fill the 16 registers.
pub(crate) const MR: usize = 6;

/// One step of a B panel in f32 (for a linear layer, one input feature's 16 weights): a whole cache line, so no load
/// of the micro-kernel splits one.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Step32(pub [f32; NR]);

/// The same in f16 bits: half a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct Step16(pub [u16; NR]);

/// A panel step type, and whether the kernel reads it as f16.
pub(crate) trait Step: Copy + Sync {
    const F16: bool;
}

impl Step for Step32 {
    const F16: bool = false;
}

impl Step for Step16 {
    const F16: bool = true;
}

/// Lays out up to 6 rows of A (row-major, `k` floats each) as the kernel reads them, interleaved 6 per step, into
/// `dst` (k × 6 floats); the slots of rows not given are left as they are (the kernel for fewer rows never reads them).
pub(crate) fn interleave_rows(dst: &mut [f32], rows: &[f32], k: usize) {
    for (r, row) in rows.chunks_exact(k).enumerate() {
        for (kk, &v) in row.iter().enumerate() {
            dst[kk * MR + r] = v;
        }
    }
}

/// One micro-kernel call: C[0..R, 0..16] (+)= A-group · B-panel over `kc` steps, A interleaved 6 per step, B 16 per
/// step (f16 or f32); `pf.1` cache lines from `pf.0` prefetched, one per step.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86-64 kernel only
pub(crate) struct Tile {
    pub kc: usize,
    pub a: *const f32,
    pub b: *const u8,
    pub pf: (*const u8, usize),
    pub c: *mut f32,
    pub ldc: usize,
    /// Add to C (a later block of input features) rather than overwrite it.
    pub accumulate: bool,
}

/// Dispatches the micro-kernel for the `rows` (1–6) valid rows of a group.
///
/// # Safety
/// AVX2, FMA and F16C must be available; `a` must hold kc steps and `b` point at kc steps (f16 if `F16`); `c` must
/// have `rows` rows of 16 floats at stride `ldc`.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn tile<const F16: bool>(rows: usize, t: Tile) {
    match rows {
        1 => micro::<1, F16>(t),
        2 => micro::<2, F16>(t),
        3 => micro::<3, F16>(t),
        4 => micro::<4, F16>(t),
        5 => micro::<5, F16>(t),
        _ => micro6::<F16>(t),
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn tile<const F16: bool>(_: usize, _: Tile) {
    unreachable!("no F32Kernel exists off x86-64")
}

/// The micro-kernel for `R` rows, in intrinsics: the partial row groups, and the last 1–3 steps of a full one.
///
/// # Safety
/// As [`tile`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn micro<const R: usize, const F16: bool>(t: Tile) {
    let Tile { kc, a, b, pf: (pf, pf_lines), c, ldc, accumulate } = t;
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    if accumulate {
        for (r, row) in acc.iter_mut().enumerate() {
            row[0] = _mm256_loadu_ps(c.add(r * ldc));
            row[1] = _mm256_loadu_ps(c.add(r * ldc + 8));
        }
    }
    // One loop with the prefetch under a branch: splitting or unrolling it made LLVM spill the accumulators
    // (measured 2× slower); `micro6` unrolls in assembly instead.
    for k in 0..kc {
        if k < pf_lines {
            // A hint only: the last line may lie past the panels' end (wrapping_add, and a prefetch does not fault).
            _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(k * LINE) as *const i8);
        }
        let (b0, b1) = if F16 {
            let b = (b as *const u16).add(k * NR);
            (
                _mm256_cvtph_ps(_mm_load_si128(b as *const __m128i)),
                _mm256_cvtph_ps(_mm_load_si128(b.add(8) as *const __m128i)),
            )
        } else {
            let b = (b as *const f32).add(k * NR);
            (_mm256_load_ps(b), _mm256_load_ps(b.add(8)))
        };
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

/// The micro-kernel for a full group of 6 rows: its steps in multiples of 4 in assembly, the last 1–3 by [`micro`].
///
/// In intrinsics LLVM keeps the k-loop rolled (unrolled, it spills accumulators), and one step then carries a counter,
/// two pointer increments, a compare for the prefetch and the loop branch beside its 20 vector instructions: on
/// Zen 3 that loop reaches 61–84 GFLOP/s of a core's 91 with its operands in L1, this one 79–88 (paired, 4 rounds).
///
/// # Safety
/// As [`tile`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn micro6<const F16: bool>(t: Tile) {
    use std::arch::x86_64::*;
    let Tile { kc, a, b, pf: (pf, pf_lines), c, ldc, accumulate } = t;
    let mut acc = [_mm256_setzero_ps(); 2 * MR];
    if accumulate {
        for r in 0..MR {
            acc[2 * r] = _mm256_loadu_ps(c.add(r * ldc));
            acc[2 * r + 1] = _mm256_loadu_ps(c.add(r * ldc + 8));
        }
    }
    let main = kc & !3;
    // The prefetching steps first (a line per step, in fours: up to 3 lines more than asked, hints only).
    let prefetching = pf_lines.next_multiple_of(4).min(main);
    let (mut a_at, mut b_at, mut pf_at) = (a, b, pf);
    // SAFETY (these calls and the tail's): the caller's contract ([`tile`]) gives kc steps of A and B from `a` and
    // `b`; the two loops take the first `main` ≤ kc of them in order, the tail the remaining kc - main.
    steps6::<F16, true>(&mut acc, (&mut a_at, &mut b_at, &mut pf_at), prefetching / 4);
    steps6::<F16, false>(&mut acc, (&mut a_at, &mut b_at, &mut pf_at), (main - prefetching) / 4);
    for r in 0..MR {
        _mm256_storeu_ps(c.add(r * ldc), acc[2 * r]);
        _mm256_storeu_ps(c.add(r * ldc + 8), acc[2 * r + 1]);
    }
    if main < kc {
        let step_bytes = if F16 { 2 * NR } else { 4 * NR };
        let tail = Tile {
            kc: kc - main,
            a: a.add(main * MR),
            b: b.add(main * step_bytes),
            pf: (pf, 0),
            c,
            ldc,
            accumulate: true,
        };
        micro::<MR, F16>(tail);
    }
}

/// One k-step of the 6-row kernel in assembly, at step `$u` from the `{a}` and `{b}` pointers: B's 16 values (f32, or
/// f16 bits converted) into ymm12–13, each of A's 6 values broadcast in turn into ymm14 or ymm15, 12 FMAs into ymm0–11.
#[cfg(target_arch = "x86_64")]
macro_rules! step6 {
    ($u:literal, f32) => {
        concat!(
            "vmovaps ymm12, ymmword ptr [{b} + 64*", $u, "]\n",
            "vmovaps ymm13, ymmword ptr [{b} + 64*", $u, " + 32]\n",
            step6!(@fma $u)
        )
    };
    ($u:literal, f16) => {
        concat!(
            "vcvtph2ps ymm12, xmmword ptr [{b} + 32*", $u, "]\n",
            "vcvtph2ps ymm13, xmmword ptr [{b} + 32*", $u, " + 16]\n",
            step6!(@fma $u)
        )
    };
    (@fma $u:literal) => {
        concat!(
            step6!(@row $u, 0, "ymm14", "ymm0", "ymm1"),
            step6!(@row $u, 4, "ymm15", "ymm2", "ymm3"),
            step6!(@row $u, 8, "ymm14", "ymm4", "ymm5"),
            step6!(@row $u, 12, "ymm15", "ymm6", "ymm7"),
            step6!(@row $u, 16, "ymm14", "ymm8", "ymm9"),
            step6!(@row $u, 20, "ymm15", "ymm10", "ymm11"),
        )
    };
    (@row $u:literal, $off:literal, $bc:literal, $c0:literal, $c1:literal) => {
        concat!(
            "vbroadcastss ", $bc, ", dword ptr [{a} + 24*", $u, " + ", $off, "]\n",
            "vfmadd231ps ", $c0, ", ", $bc, ", ymm12\n",
            "vfmadd231ps ", $c1, ", ", $bc, ", ymm13\n",
        )
    };
}

/// `quads` × 4 steps of the 6-row kernel on the accumulators `acc` (row r in acc[2r], acc[2r + 1]), prefetching a
/// cache line per step from the prefetch pointer if `PREFETCH`; moves the (A, B, prefetch) pointers past them.
///
/// # Safety
/// AVX2, FMA and F16C must be available; A must hold 6 × 4 × `quads` floats and B 4 × `quads` steps (f16 if `F16`,
/// 32-byte aligned) from the pointers. The prefetch pointer is only a hint (never dereferenced; a prefetch does not
/// fault).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn steps6<const F16: bool, const PREFETCH: bool>(
    acc: &mut [std::arch::x86_64::__m256; 2 * MR],
    (a, b, pf): (&mut *const f32, &mut *const u8, &mut *const u8),
    quads: usize,
) {
    if quads == 0 {
        return;
    }
    macro_rules! quad_loop {
        ($format:tt, $b_bytes:literal, $prefetch:expr) => {
            std::arch::asm!(
                "2:",
                $prefetch,
                step6!(0, $format),
                step6!(1, $format),
                step6!(2, $format),
                step6!(3, $format),
                "add {a}, 96",
                concat!("add {b}, ", $b_bytes),
                "dec {n}",
                "jnz 2b",
                a = inout(reg) *a,
                b = inout(reg) *b,
                pf = inout(reg) *pf,
                n = inout(reg) quads => _,
                inout("ymm0") acc[0], inout("ymm1") acc[1], inout("ymm2") acc[2], inout("ymm3") acc[3],
                inout("ymm4") acc[4], inout("ymm5") acc[5], inout("ymm6") acc[6], inout("ymm7") acc[7],
                inout("ymm8") acc[8], inout("ymm9") acc[9], inout("ymm10") acc[10], inout("ymm11") acc[11],
                out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
                options(nostack, readonly),
            )
        };
    }
    macro_rules! prefetch4 {
        () => {
            "prefetcht0 [{pf}]\nprefetcht0 [{pf} + 64]\nprefetcht0 [{pf} + 128]\nprefetcht0 [{pf} + 192]\nadd {pf}, 256"
        };
    }
    // Without the prefetch the pointer is still an operand (asm! wants every operand used): a comment names it.
    // SAFETY: the loops read 4 × quads steps of A (24 bytes each) and B (aligned, 64 or 32 bytes each) from the
    // pointers, which this function's contract provides; they write only the named registers and the flags.
    match (F16, PREFETCH) {
        (false, false) => quad_loop!(f32, "256", "/* {pf} */"),
        (true, false) => quad_loop!(f16, "128", "/* {pf} */"),
        (false, true) => quad_loop!(f32, "256", prefetch4!()),
        (true, true) => quad_loop!(f16, "128", prefetch4!()),
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The assembly kernel does the intrinsics kernel's FMAs in the same order, so their results are bit-identical:
    /// checked for step counts around the unrolling (0–3 quads, tails of 0–3 steps), with and without accumulating
    /// and prefetching, on f32 and f16 panels, and columns past the tile's 16 left alone.
    #[test]
    fn the_assembly_kernel_matches_the_intrinsics_one_bit_for_bit() {
        if crate::cpu::f32_kernel().is_none() {
            return println!("SKIPPED micro_kernel::the_assembly_kernel_matches_…: no AVX2/FMA/F16C on this CPU");
        }
        let steps = 13;
        let a: Vec<f32> = (0..MR * steps).map(|i| ((i * 7 % 23) as f32 - 11.0) / 7.0).collect();
        let b32: Vec<Step32> =
            (0..steps).map(|k| Step32(std::array::from_fn(|j| ((k * NR + j) * 5 % 31) as f32 / 9.0 - 1.5))).collect();
        let b16: Vec<Step16> = b32.iter().map(|s| Step16(s.0.map(|x| half::f16::from_f32(x).to_bits()))).collect();
        let ldc = NR + 4;
        for kc in 0..=steps {
            for (accumulate, pf_lines, f16) in (0..8).map(|i| (i & 1 == 1, [0, 3][i >> 1 & 1], i & 4 == 4)) {
                let b = if f16 { b16.as_ptr() as *const u8 } else { b32.as_ptr() as *const u8 };
                let before: Vec<f32> = (0..MR * ldc).map(|i| i as f32 * 0.25).collect();
                let run = |assembly: bool| {
                    let mut c = before.clone();
                    let t = Tile { kc, a: a.as_ptr(), b, pf: (b, pf_lines), c: c.as_mut_ptr(), ldc, accumulate };
                    // SAFETY: the CPU has the instructions (checked above); `a` and `b` hold `steps` ≥ kc steps and
                    // `c` 6 rows of `ldc` ≥ 16 floats; the prefetch lines lie inside `b` or are only hints.
                    unsafe {
                        match (assembly, f16) {
                            (true, false) => micro6::<false>(t),
                            (true, true) => micro6::<true>(t),
                            (false, false) => micro::<MR, false>(t),
                            (false, true) => micro::<MR, true>(t),
                        }
                    }
                    c
                };
                let (got, want) = (run(true), run(false));
                assert_eq!(got, want, "kc {kc}, accumulate {accumulate}, prefetch {pf_lines}, f16 {f16}");
                assert!(got.chunks(ldc).zip(before.chunks(ldc)).all(|(g, b)| g[NR..] == b[NR..]), "past column 16");
            }
        }
    }
}
