//! GFLOP/s of the CPU attention kernel alone on the 0.6B model's attention shape (16 query heads, 8 KV heads, head
//! dim 128), for one sequence of each given length (the causal products: 2 × 2 × len²/2 × 128 flops per head).
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p qwen_embed_model --example attention_bench [LEN...]

use std::time::Instant;

use qwen_embed_model::attention::{causal_attention, Shape};

fn main() {
    let lens: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let lens = if lens.is_empty() { vec![512, 2000] } else { lens };
    for len in lens {
        let s = Shape { batch: 1, heads: 16, kv_heads: 8, len, head_dim: 128, first_query: 0 };
        let fill = |n: usize, seed: f32| (0..n).map(|i| (i as f32 * 0.618 + seed).sin()).collect::<Vec<_>>();
        let q = fill(s.heads * len * s.head_dim, 0.1);
        let k = fill(s.kv_heads * len * s.head_dim, 0.7);
        let v = fill(k.len(), 1.3);
        let run = || causal_attention(&q, &k, &v, &[0], s);
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
        let flops = 2.0 * 2.0 * (len * (len + 1) / 2) as f64 * s.head_dim as f64 * s.heads as f64;
        let median = times[reps / 2];
        println!("len {len:>5}: {:>7.1} ms, {:>6.1} GFLOP/s", median * 1e3, flops / median / 1e9);
    }
}
