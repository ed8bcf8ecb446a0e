//! Times the encoder on benchmark cases (written by bench/run.py) and prints one JSON line per case.
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p qwen_embed_model --example bench -- \
//!         --model DIR --cases cases.json [--reps 5] [--dtype f32|bf16]

use std::path::PathBuf;
use std::time::Instant;

use qwen_embed_model::{DType, Device, Embedder, Limits};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    texts: Vec<String>,
    instruct: Option<String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut model, mut cases, mut reps, mut dtype) = (None, None, 5usize, DType::F32);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--model" => model = args.next().map(PathBuf::from),
            "--cases" => cases = args.next().map(PathBuf::from),
            "--reps" => reps = args.next().ok_or("--reps N")?.parse()?,
            "--dtype" => {
                dtype = match args.next().as_deref() {
                    Some("bf16") => DType::BF16,
                    Some("f32") => DType::F32,
                    _ => return Err("--dtype f32|bf16".into()),
                }
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let (model, cases) = (model.ok_or("--model DIR")?, cases.ok_or("--cases FILE")?);
    let started = Instant::now();
    let embedder = Embedder::load(&model, &Device::Cpu, dtype)?;
    println!("{}", serde_json::json!({"load_ms": started.elapsed().as_secs_f64() * 1e3}));
    let cases: Vec<Case> = serde_json::from_str(&std::fs::read_to_string(cases)?)?;
    let limits = Limits::default();
    for case in cases {
        let texts: Vec<&str> = case.texts.iter().map(String::as_str).collect();
        let run = || embedder.embed(&texts, case.instruct.as_deref(), None, &limits, &|| false);
        embedder.embed(&texts[..1], case.instruct.as_deref(), None, &limits, &|| false)?; // warm-up
        let mut work = Default::default();
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t = Instant::now();
            work = run()?.1;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{}",
            serde_json::json!({"case": case.name, "median_ms": times[times.len() / 2], "times_ms": times,
                               "tokens": work.tokens, "forward_passes": work.forward_passes})
        );
    }
    Ok(())
}
