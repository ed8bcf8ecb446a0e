//! The glue in f32 on any x86-64 CPU (packing, slices, row blocks, primitive cache, sum post-op, threads), and in bf16
//! where oneDNN has a bf16 brgemm kernel for this CPU.

use super::*;
use crate::elementwise::f32_to_bf16;

fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Deterministic test data in [-1, 1).
fn data(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 37 + seed * 11) % 101) as f32 / 50.5 - 1.0).collect()
}

/// residual + x · Wᵀ in f64, with x and W first rounded as `round` says.
fn reference(x: &[f32], w: &[f32], rows: usize, (n, k): (usize, usize), round: fn(f32) -> f32) -> Vec<f64> {
    let mut out = vec![0f64; rows * n];
    for r in 0..rows {
        for j in 0..n {
            out[r * n + j] = (0..k).map(|i| round(x[r * k + i]) as f64 * round(w[j * k + i]) as f64).sum();
        }
    }
    out
}

/// Shapes that cut slices and row blocks unevenly: one row, a partial slice, several slices and row blocks.
const SHAPES: [(usize, usize, usize); 5] =
    [(1, 64, 32), (7, 70, 33), (65, SLICE + 80, 96), (130, 2 * SLICE, 64), (3, 1, 1)];

fn check<T: Element>(round: fn(f32) -> f32, tolerance: f64) {
    for (rows, n, k) in SHAPES {
        let (w, x, residual) = (data(n * k, 1), data(rows * k, 2), data(rows * n, 3));
        let packed = Matmul::<T>::pack(&w, n, k).unwrap();
        let want = reference(&x, &w, rows, (n, k), round);
        let got = packed.matmul(&x, rows).unwrap();
        let added = packed.matmul_add(&x, rows, &residual).unwrap();
        for i in 0..rows * n {
            let ok = |g: f32, e: f64| (g as f64 - e).abs() <= tolerance * (1.0 + e.abs());
            assert!(ok(got[i], want[i]), "{rows}x{n}x{k} [{i}]: {} vs {}", got[i], want[i]);
            assert!(ok(added[i], want[i] + residual[i] as f64), "{rows}x{n}x{k} [{i}] with the residual");
        }
    }
}

#[test]
fn f32_matches_a_plain_matmul_for_uneven_shapes() {
    check::<f32>(|v| v, 1e-5);
}

/// Every row count is right (the last row block padded to whole ROW_STEPs where it is not), and none adds a primitive
/// to those packing made: a server's memory does not grow with the lengths it meets. A shape of its own (k 37, slices
/// of SLICE and 44 columns), so that tests running beside it add none of its keys.
#[test]
fn every_row_count_is_right_and_uses_the_primitives_made_at_packing() {
    let (n, k) = (SLICE + 44, 37);
    let cached = || {
        let cache = CACHE.get().expect("packing made primitives").lock().unwrap();
        cache.keys().filter(|key| key.k == k && key.dt == f32::DATA_TYPE && key.plain.is_none()).count()
    };
    let w = data(n * k, 6);
    let packed = Matmul::<f32>::pack(&w, n, k).unwrap();
    let made = cached();
    // Two slice widths, each into a dense block and into the output's rows where blocks are written in place.
    let strides = if packed.direct_out { 2 } else { 1 };
    assert_eq!(made, 2 * strides * ROW_BLOCK / ROW_STEP, "primitives made at packing");
    for rows in 0..=2 * ROW_BLOCK + 3 {
        let (x, residual) = (data(rows * k, rows), data(rows * n, rows + 1));
        let want = reference(&x, &w, rows, (n, k), |v| v);
        let (got, added) = (packed.matmul(&x, rows).unwrap(), packed.matmul_add(&x, rows, &residual).unwrap());
        assert_eq!((got.len(), added.len()), (rows * n, rows * n));
        for i in 0..rows * n {
            let ok = |g: f32, e: f64| (g as f64 - e).abs() <= 1e-5 * (1.0 + e.abs());
            assert!(ok(got[i], want[i]), "{rows} rows [{i}]: {} vs {}", got[i], want[i]);
            assert!(ok(added[i], want[i] + residual[i] as f64), "{rows} rows [{i}] with the residual");
        }
    }
    assert_eq!(cached(), made, "a row count made a primitive of its own");
}

/// SwiGLU from gated packing against silu(x · Gᵀ) · (x · Uᵀ) in f64, for intermediate widths that are a whole number
/// of half slices, less than one, and not a whole number.
fn check_gated<T: Element>(round: fn(f32) -> f32, tolerance: f64) {
    for (rows, inter, k) in [(1, 32, 16), (70, SLICE / 2, 64), (130, 300, 40), (5, SLICE, 24)] {
        let (w, x) = (data(2 * inter * k, 4), data(rows * k, 5));
        let product = reference(&x, &w, rows, (2 * inter, k), round);
        let got = Matmul::<T>::pack_gated(&w, 2 * inter, k).unwrap().matmul_silu_gate(&x, rows).unwrap();
        assert_eq!(got.len(), rows * inter);
        for r in 0..rows {
            for j in 0..inter {
                let (g, u) = (product[r * 2 * inter + j], product[r * 2 * inter + inter + j]);
                let want = g / (1.0 + (-g).exp()) * u;
                let got = got[r * inter + j] as f64;
                assert!(
                    (got - want).abs() <= tolerance * (1.0 + want.abs()),
                    "{rows}x{inter}x{k} [{r}, {j}]: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn gated_f32_gives_swiglu_of_the_gate_and_up_products() {
    check_gated::<f32>(|v| v, 1e-5);
}

#[test]
fn gated_bf16_gives_swiglu_of_the_rounded_products() {
    if bf16_kernel().is_none() {
        return println!("SKIPPED onednn::gated_bf16_gives_swiglu_of_the_rounded_products: no oneDNN bf16 kernel");
    }
    check_gated::<Bf16>(|v| bf16_to_f32(f32_to_bf16(v)), 1e-4);
}

#[test]
fn bf16_matches_a_plain_matmul_of_the_rounded_values() {
    let Some(kernel) = bf16_kernel() else {
        return println!("SKIPPED onednn::bf16_matches_a_plain_matmul_of_the_rounded_values: no oneDNN bf16 kernel");
    };
    println!("oneDNN bf16 kernel: {} ({})", kernel.name(), implementation::<Bf16>(32, 64, 64).unwrap());
    check::<Bf16>(|v| bf16_to_f32(f32_to_bf16(v)), 1e-4);
}

/// oneDNN's f32 matmul is found to be its brgemm on every AVX-512 CPU, and only there (the kernel `precision` is to take
/// on AVX-512 CPUs without a bf16 product once the primitive cache is bounded).
#[test]
fn f32_brgemm_is_found_where_the_cpu_has_avx512() {
    assert!(is_brgemm("brg:avx512_core") && is_brgemm("brg_matmul:avx512_core"));
    assert!(!is_brgemm("gemm:jit") && !is_brgemm("ref:any") && !is_brgemm("jit:gemm"));
    let name = implementation::<f32>(32, 64, 64).unwrap();
    println!("f32 matmul at level {}: {name}", crate::cpu::level().name());
    if crate::cpu::level() < crate::cpu::Level::Avx512 {
        // Below AVX-512 (or capped below it) our AVX2 kernel stays, whatever oneDNN would run.
        assert!(!f32_brgemm(), "{name}");
        return;
    }
    assert!(f32_brgemm(), "{name}");
    assert!(name.contains("avx512_core"), "{name}");
}

#[test]
fn bf16_is_accepted_only_as_brgemm() {
    assert!(Bf16::accepts("brg:avx512_core_amx"));
    assert!(Bf16::accepts("brg:avx512_core_bf16"));
    assert!(Bf16::accepts("brg_matmul:avx512_core_amx"), "oneDNN 3.x's name");
    assert!(Bf16::accepts("brg_matmul:avx512_core_bf16"), "oneDNN 3.x's name");
    assert!(!Bf16::accepts("brg_matmul:avx512_core"), "bf16 emulated on AVX-512 without BF16 (3.x)");
    assert!(!Bf16::accepts("gemm:jit"), "an emulated bf16 gemm");
    assert!(!Bf16::accepts("ref:any"));
    // Whatever this CPU has: the kernel's name follows the implementation oneDNN picked.
    match (bf16_kernel(), implementation::<Bf16>(32, 64, 64)) {
        (Some(k), Ok(name)) => assert_eq!(k.name() == "onednn amx", name.contains("amx"), "{name}"),
        (None, Ok(name)) => assert!(!Bf16::accepts(&name) || crate::cpu::level() < crate::cpu::Level::Avx512Bf16),
        (_, Err(e)) => assert_eq!(bf16_kernel(), None, "{e}"),
    }
}

/// The threads of this process whose name starts with `prefix` (threads inherit their creator's name on Linux).
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

/// oneDNN computes on the pool's threads only: no OpenMP team is started beside them (its threads would be named
/// after the pool thread that started them).
#[test]
fn the_pool_is_the_only_thread_count() {
    let pool =
        rayon::ThreadPoolBuilder::new().num_threads(2).thread_name(|i| format!("onednn-only-{i}")).build().unwrap();
    let (rows, n, k) = (200, 3 * SLICE, 512);
    let (w, x) = (data(n * k, 4), data(rows * k, 5));
    pool.install(|| {
        let packed = Matmul::<f32>::pack(&w, n, k).unwrap();
        packed.matmul(&x, rows).unwrap();
        if bf16_kernel().is_some() {
            Matmul::<Bf16>::pack(&w, n, k).unwrap().matmul(&x, rows).unwrap();
        }
    });
    assert_eq!(threads_named("onednn-only"), 2);
}

/// The pool's threads execute one primitive at once, each in its own scratchpad: repeated runs on several threads give
/// the single-threaded result bit for bit (oneDNN's default scratchpad, shared by all primitives, raced here).
#[test]
fn concurrent_tasks_give_the_single_threaded_result() {
    let (rows, n, k) = (300, 4 * SLICE, 1024);
    let (w, x) = (data(n * k, 6), data(rows * k, 7));
    let run = |threads: usize, f: &(dyn Fn() -> Vec<f32> + Sync)| {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
    };
    let f32_packed = Matmul::<f32>::pack(&w, n, k).unwrap();
    let bf16_packed = bf16_kernel().map(|_| Matmul::<Bf16>::pack(&w, n, k).unwrap());
    let both = || {
        let mut out = f32_packed.matmul(&x, rows).unwrap();
        if let Some(bf16) = &bf16_packed {
            out.extend(bf16.matmul(&x, rows).unwrap());
        }
        out
    };
    let alone = run(1, &both);
    for _ in 0..10 {
        assert!(run(4, &both) == alone, "a concurrent run differs from the single-threaded one");
    }
}

/// A slice's block goes straight into the output where oneDNN takes a strided destination (its brgemm from 3.6, Debian
/// 13's 3.7; its f32 `gemm:jit` on AVX2 CPUs, on any version) and, always, when the weights are one slice; 2.x's
/// brgemm copies it (the other tests check both give the product).
#[test]
fn blocks_are_written_in_place_where_onednn_takes_a_strided_output() {
    let numbers: Vec<u32> = version().split('.').map(|n| n.parse().unwrap()).collect();
    let brgemm_strided = (numbers[0], numbers[1]) >= (3, 6);
    let (rows, k) = (70, 64);
    let x = data(rows * k, 8);
    for (n, one_slice) in [(3 * SLICE + 16, false), (SLICE, true), (40, true)] {
        let w = data(n * k, 9);
        let packed = Matmul::<f32>::pack(&w, n, k).unwrap();
        let strided = brgemm_strided || !is_brgemm(packed.implementation());
        assert_eq!(
            packed.direct_out,
            one_slice || strided,
            "oneDNN {} {}, {n} features",
            version(),
            packed.implementation()
        );
        let want = reference(&x, &w, rows, (n, k), |v| v);
        let got = packed.matmul(&x, rows).unwrap();
        assert!(got.iter().zip(&want).all(|(&g, &e)| (g as f64 - e).abs() <= 1e-5 * (1.0 + e.abs())));
        if bf16_kernel().is_some() {
            let direct = one_slice || brgemm_strided; // bf16 is a brgemm
            assert_eq!(Matmul::<Bf16>::pack(&w, n, k).unwrap().direct_out, direct, "bf16, {n} features");
        }
    }
}
