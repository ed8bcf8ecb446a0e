//! GFLOP/s of the CPU attention kernels alone on the 0.6B model's attention shape (16 query heads, 8 KV heads, head
//! dim 128): every path this CPU (and build) has, side by side, for each given batch of sequences (`LEN` or
//! `BATCHxLEN`, no padding; the causal products: 2 × 2 × len²/2 × 128 flops per head and sequence).
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p qwen_embed_model --features onednn --example attention_bench \
//!         [--path NAME-PART] [32x26 512 2000 ...]

use std::time::Instant;

use qwen_embed_model::attention::{causal_attention, Shape};

type Path = Box<dyn Fn(&[f32], &[f32], &[f32], &[usize], Shape) -> Vec<f32>>;

fn paths() -> Vec<(&'static str, Path)> {
    #[cfg_attr(not(onednn), allow(unused_mut))]
    let mut paths: Vec<(&str, Path)> = vec![("f32 (default CPU path)", Box::new(causal_attention))];
    #[cfg(onednn)]
    {
        use qwen_embed_model::cpu::attention_onednn;
        paths.push((
            "oneDNN f32",
            Box::new(|q, k, v, p, s| attention_onednn::causal_attention::<f32>(q, k, v, p, s).expect("oneDNN")),
        ));
        if let Some(kernel) = qwen_embed_model::onednn::bf16_kernel() {
            let name =
                if kernel.name().contains("amx") { "oneDNN bf16 (amx)" } else { "oneDNN bf16 (avx512_core_bf16)" };
            paths.push((
                name,
                Box::new(|q, k, v, p, s| {
                    attention_onednn::causal_attention::<qwen_embed_model::onednn::Bf16>(q, k, v, p, s).expect("oneDNN")
                }),
            ));
        }
    }
    paths
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let only = args.iter().position(|a| a == "--path").and_then(|i| args.get(i + 1)).cloned();
    let cases: Vec<(usize, usize)> = args
        .iter()
        .filter_map(|a| match a.split_once('x') {
            Some((b, l)) => Some((b.parse().ok()?, l.parse().ok()?)),
            None => Some((1, a.parse().ok()?)),
        })
        .collect();
    let cases = if cases.is_empty() { vec![(32, 26), (1, 512), (1, 2000)] } else { cases };
    println!("CPU: {}, {} threads", qwen_embed_model::cpu::model_name(), rayon::current_num_threads());
    let paths: Vec<_> =
        paths().into_iter().filter(|(name, _)| only.as_ref().is_none_or(|o| name.contains(o))).collect();
    for (batch, len) in cases {
        let s = Shape { batch, heads: 16, kv_heads: 8, len, head_dim: 128, first_query: 0 };
        let fill = |n: usize, seed: f32| (0..n).map(|i| (i as f32 * 0.618 + seed).sin()).collect::<Vec<_>>();
        let q = fill(batch * s.heads * len * s.head_dim, 0.1);
        let k = fill(batch * s.kv_heads * len * s.head_dim, 0.7);
        let v = fill(k.len(), 1.3);
        let pads = vec![0; batch];
        let flops = batch as f64 * 2.0 * 2.0 * (len * (len + 1) / 2) as f64 * s.head_dim as f64 * s.heads as f64;
        for (name, path) in &paths {
            let run = || path(&q, &k, &v, &pads, s);
            run();
            let reps = 5;
            let mut times: Vec<f64> = (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(run());
                    t.elapsed().as_secs_f64()
                })
                .collect();
            times.sort_by(f64::total_cmp);
            let median = times[reps / 2];
            println!(
                "{batch:>3} x {len:>5}: {name:<32} {:>8.2} ms, {:>6.1} GFLOP/s",
                median * 1e3,
                flops / median / 1e9
            );
        }
    }
}
