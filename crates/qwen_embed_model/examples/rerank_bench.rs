//! Times the reranker on (query, document) pairs written by bench/rerank.py; prints one JSON line.
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p qwen_embed_model --example rerank_bench -- \
//!         --model DIR --pairs pairs.json [--reps 3] [--dtype auto|f32|bf16]

use std::path::PathBuf;
use std::time::Instant;

use qwen_embed_model::device::select_dtype;
use qwen_embed_model::{Device, Limits, Reranker};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut model, mut pairs, mut reps, mut dtype) = (None, None, 3usize, "auto".to_string());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--model" => model = args.next().map(PathBuf::from),
            "--pairs" => pairs = args.next().map(PathBuf::from),
            "--reps" => reps = args.next().ok_or("--reps N")?.parse()?,
            "--dtype" => dtype = args.next().ok_or("--dtype auto|f32|bf16")?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let (model, pairs) = (model.ok_or("--model DIR")?, pairs.ok_or("--pairs FILE")?);
    let device = Device::Cpu;
    let started = Instant::now();
    let reranker = Reranker::load(&model, &device, select_dtype(&dtype, &device)?)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let pairs: Vec<(String, String)> = serde_json::from_str(&std::fs::read_to_string(pairs)?)?;
    let query = &pairs[0].0;
    assert!(pairs.iter().all(|(q, _)| q == query), "one query for all pairs, as rerank() takes");
    let docs: Vec<&str> = pairs.iter().map(|(_, d)| d.as_str()).collect();
    let limits = Limits::default();
    reranker.rerank(query, &docs[..1], None, &limits, &|| false)?; // warm-up
    let mut times = Vec::with_capacity(reps);
    let mut scores = Vec::new();
    let mut tokens = 0;
    for _ in 0..reps {
        let t = Instant::now();
        let (s, work) = reranker.rerank(query, &docs, None, &limits, &|| false)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        (scores, tokens) = (s, work.tokens);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({"load_ms": load_ms, "kernel": reranker.precision().kernel_name(), "median_ms": times[times.len() / 2],
                           "times_ms": times, "tokens": tokens, "scores": scores})
    );
    Ok(())
}
