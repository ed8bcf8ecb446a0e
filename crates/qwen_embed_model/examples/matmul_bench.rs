//! GFLOP/s of the linear-layer kernels on the 0.6B model's shapes: candle's f32 matmul against ours (packed f32 on
//! AVX2/FMA with f32 or f16 weights) and oneDNN's through our glue (with the `onednn` feature: f32, and bf16 where
//! oneDNN has a bf16 brgemm for this CPU), whichever this CPU has.
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p qwen_embed_model --features onednn --example matmul_bench [ROWS...]

use std::time::Instant;

use candle_core::{Device, Tensor};
use qwen_embed_model::cpu;
use qwen_embed_model::f32_matmul::{PackedF32, WeightFormat};

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
    let rows = if rows.is_empty() { vec![1, 26, 128, 704] } else { rows };
    println!("CPU kernel level: {}", cpu::level().name());
    println!("CPU: {}, {} threads", cpu::model_name(), rayon::current_num_threads());
    #[cfg(onednn)]
    {
        use qwen_embed_model::onednn::{bf16_kernel, implementation, Bf16};
        println!("oneDNN f32: {}", implementation::<f32>(26, 1024, 256).unwrap_or_else(|e| e.to_string()));
        match bf16_kernel() {
            Some(k) => println!("oneDNN bf16: {} ({})", k.name(), implementation::<Bf16>(26, 1024, 256).unwrap()),
            None => println!("oneDNN bf16: none on this CPU"),
        }
    }
    // qkv, o_proj, gate_up, down of Qwen3-Embedding-0.6B.
    for (name, n, k) in [("qkv", 4096, 1024), ("o_proj", 1024, 2048), ("gate_up", 6144, 1024), ("down", 1024, 3072)] {
        let w = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu)?;
        let ws = w.flatten_all()?.to_vec1::<f32>()?;
        let wt = w.t()?;
        let packed_f32 = PackedF32::pack(&ws, n, k, WeightFormat::F32);
        let packed_f16 = PackedF32::pack(&ws, n, k, WeightFormat::F16);
        #[cfg(onednn)]
        let onednn = {
            use qwen_embed_model::onednn::{bf16_kernel, Bf16, Matmul};
            let bf16 = bf16_kernel().map(|_| Matmul::<Bf16>::pack(&ws, n, k).unwrap());
            (Matmul::<f32>::pack(&ws, n, k).unwrap(), bf16)
        };
        for &m in &rows {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            let secs = time(|| {
                x.matmul(&wt).unwrap();
            });
            let mut line = format!("{name:>8} {m:>5}x{k:>4} -> {n:>4}: candle f32 {:>6.1}", gflops(m, n, k, secs));
            if let Some(kernel) = cpu::f32_kernel() {
                for (packed, name) in [(&packed_f32, "f32"), (&packed_f16, "f16")] {
                    let secs = time(|| {
                        packed.matmul(kernel, &xs, m);
                    });
                    line += &format!(", packed {name} weights {:>6.1}", gflops(m, n, k, secs));
                }
            }
            #[cfg(onednn)]
            {
                let secs = time(|| {
                    onednn.0.matmul(&xs, m).unwrap();
                });
                line += &format!(", oneDNN f32 {:>6.1}", gflops(m, n, k, secs));
                if let Some(bf16) = &onednn.1 {
                    let secs = time(|| {
                        bf16.matmul(&xs, m).unwrap();
                    });
                    line += &format!(", oneDNN bf16 {:>6.1}", gflops(m, n, k, secs));
                }
            }
            println!("{line} GFLOP/s");
        }
    }
    #[cfg(onednn)]
    swiglu_fused_against_separate(&rows)?;
    Ok(())
}

/// The MLP's gate/up product and SwiGLU on oneDNN (bf16 where it has it, else f32): the product written whole then
/// SwiGLU in a pass of its own, against SwiGLU on each block as it is copied out (`Matmul::pack_gated`).
#[cfg(onednn)]
fn swiglu_fused_against_separate(rows: &[usize]) -> candle_core::Result<()> {
    use qwen_embed_model::elementwise::silu_mul;
    use qwen_embed_model::onednn::{bf16_kernel, Bf16, Element, Matmul};
    fn run<T: Element>(rows: &[usize], w: &[f32], (inter, k): (usize, usize), kind: &str) {
        let (plain, gated) =
            (Matmul::<T>::pack(w, 2 * inter, k).unwrap(), Matmul::<T>::pack_gated(w, 2 * inter, k).unwrap());
        for &m in rows {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
            let separate = time(|| {
                let gate_up = plain.matmul(&x, m).unwrap();
                let mut out = vec![0f32; m * inter];
                silu_mul(&gate_up, &mut out, inter);
            });
            let fused = time(|| {
                gated.matmul_silu_gate(&x, m).unwrap();
            });
            println!(
                "gate_up + SwiGLU {m:>5} rows, oneDNN {kind}: separate {:.2} ms, fused {:.2} ms ({:.2}x)",
                separate * 1e3,
                fused * 1e3,
                separate / fused
            );
        }
    }
    let (inter, k) = (3072, 1024);
    let w = Tensor::randn(0f32, 0.02, (2 * inter, k), &Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    match bf16_kernel() {
        Some(_) => run::<Bf16>(rows, &w, (inter, k), "bf16"),
        None => run::<f32>(rows, &w, (inter, k), "f32"),
    }
    Ok(())
}
