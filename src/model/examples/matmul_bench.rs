//! GFLOP/s of the linear-layer kernels on the 0.6B model's shapes: candle's f32 matmul against the AVX512-BF16 kernel.
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p qwen_embed_model --example matmul_bench [ROWS...]

use std::time::Instant;

use candle_core::{Device, Tensor};
use qwen_embed_model::bf16_matmul::{self, PackedWeights};

fn gflops(rows: usize, n: usize, k: usize, secs: f64) -> f64 {
    2.0 * (rows * n * k) as f64 / secs / 1e9
}

fn time(mut f: impl FnMut()) -> f64 {
    f();
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

fn main() -> candle_core::Result<()> {
    let rows: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rows = if rows.is_empty() { vec![26, 672, 4096] } else { rows };
    // qkv, o_proj, gate_up, down of Qwen3-Embedding-0.6B.
    for (name, n, k) in [("qkv", 4096, 1024), ("o_proj", 1024, 2048), ("gate_up", 6144, 1024), ("down", 1024, 3072)] {
        for &m in &rows {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
            let w = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu)?;
            let wt = w.t()?;
            let f32_secs = time(|| {
                x.matmul(&wt).unwrap();
            });
            let line =
                format!("{name:>8} {m:>5}x{k:>4} -> {n:>4}: candle f32 {:>6.1} GFLOP/s", gflops(m, n, k, f32_secs));
            if bf16_matmul::available() {
                let bits: Vec<u16> =
                    w.flatten_all()?.to_vec1::<f32>()?.iter().map(|v| bf16_matmul::f32_to_bf16(*v)).collect();
                let packed = PackedWeights::pack(&bits, n, k);
                let xs = x.flatten_all()?.to_vec1::<f32>()?;
                let mut line = line;
                for kernel in [bf16_matmul::Kernel::Avx512Bf16, bf16_matmul::Kernel::Amx] {
                    if kernel == bf16_matmul::Kernel::Amx && bf16_matmul::kernel() != Some(kernel) {
                        continue;
                    }
                    let secs = time(|| {
                        packed.matmul_with(kernel, &xs, m);
                    });
                    line += &format!(", {kernel:?} {:>6.1} GFLOP/s", gflops(m, n, k, secs));
                }
                println!("{line}");
            } else {
                println!("{line}");
            }
        }
    }
    Ok(())
}
