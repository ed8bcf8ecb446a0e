//! Times the encoder on benchmark cases (written by bench/run.py) and prints one JSON line per case.
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p qwen_embed_model --example bench -- \
//!         --model DIR --cases cases.json [--reps 5] [--dtype auto|f32|bf16|f16] [--device cpu|cuda:N] [--vectors]
//!
//! `--vectors` adds each case's vectors (from the last repetition) to its line, for accuracy checks. `--profile` adds
//! where the time of one repetition went (the mean over the repetitions, ms): linear layers, attention, norms and RoPE,
//! elementwise passes, and the rest of the call (`qwen_embed_model::profile`; timing costs well under 1 %).

use std::path::PathBuf;
use std::time::Instant;

use qwen_embed_model::device::{select_device, select_dtype};
use qwen_embed_model::{Device, Embedder, Limits};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    texts: Vec<String>,
    instruct: Option<String>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut model, mut cases, mut reps, mut dtype, mut device) = (None, None, 5usize, None, Device::Cpu);
    let (mut with_vectors, mut with_profile) = (false, false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--model" => model = args.next().map(PathBuf::from),
            "--cases" => cases = args.next().map(PathBuf::from),
            "--reps" => reps = args.next().ok_or("--reps N")?.parse()?,
            "--dtype" => dtype = Some(args.next().ok_or("--dtype auto|f32|bf16|f16")?),
            "--vectors" => with_vectors = true,
            "--profile" => with_profile = true,
            "--device" => device = select_device(&args.next().ok_or("--device cpu|cuda:N")?)?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let (model, cases) = (model.ok_or("--model DIR")?, cases.ok_or("--cases FILE")?);
    let started = Instant::now();
    let dtype = select_dtype(dtype.as_deref().unwrap_or("auto"), &device)?;
    let embedder = Embedder::load(&model, &device, dtype)?;
    println!(
        "{}",
        serde_json::json!({"load_ms": started.elapsed().as_secs_f64() * 1e3,
                           "kernel": embedder.precision().kernel_name(),
                           "onednn": qwen_embed_model::onednn_version(), "dtype": embedder.dtype().as_str()})
    );
    let cases: Vec<Case> = serde_json::from_str(&std::fs::read_to_string(cases)?)?;
    let limits = Limits::default();
    for case in cases {
        let texts: Vec<&str> = case.texts.iter().map(String::as_str).collect();
        let run = || embedder.embed(&texts, case.instruct.as_deref(), None, &limits, &|| false);
        embedder.embed(&texts[..1], case.instruct.as_deref(), None, &limits, &|| false)?; // warm-up
        let (mut work, mut vectors) = (Default::default(), Vec::new());
        let mut times = Vec::with_capacity(reps);
        qwen_embed_model::profile::take(); // the warm-up's
        qwen_embed_model::profile::enable(with_profile);
        for _ in 0..reps {
            let t = Instant::now();
            (vectors, work) = run()?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        qwen_embed_model::profile::enable(false);
        let parts = qwen_embed_model::profile::take();
        let total: f64 = times.iter().sum::<f64>() / reps as f64;
        times.sort_by(f64::total_cmp);
        let mut line = serde_json::json!({"case": case.name, "median_ms": times[times.len() / 2], "times_ms": times,
                                           "tokens": work.tokens, "forward_passes": work.forward_passes});
        if with_profile {
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3 / reps as f64;
            let mut profile = serde_json::Map::new();
            for (part, d) in parts {
                profile.insert(part.name().into(), ms(d).into());
            }
            let other = total - parts.iter().map(|&(_, d)| ms(d)).sum::<f64>();
            profile.insert("other".into(), other.into());
            line["profile"] = profile.into();
        }
        if with_vectors {
            line["vectors"] = serde_json::json!(vectors);
        }
        println!("{line}");
    }
    Ok(())
}
