//! Embed texts from the command line and print them as JSON, one object per text.
//!
//!     cargo run --release -p qwen_embed_model --example embed -- --model tests/fixtures/tiny-qwen3 \
//!         [--instruct TEXT] [--dim N] [--max-length N] [--truncate] TEXT...

use std::path::PathBuf;
use std::process::ExitCode;

use qwen_embed_model::{DType, Device, Embedder, LengthPolicy, Limits};

fn usage() -> ExitCode {
    eprintln!("usage: embed --model DIR [--instruct TEXT] [--dim N] [--max-length N] [--truncate] TEXT...");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut model, mut instruct, mut dim, mut limits, mut texts) = (None, None, None, Limits::default(), Vec::new());
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--model" => model = args.next().map(PathBuf::from),
            "--instruct" => instruct = args.next(),
            "--dim" => dim = args.next().and_then(|d| d.parse::<i64>().ok()),
            "--max-length" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => limits.max_length = n,
                None => return usage(),
            },
            "--truncate" => limits.policy = LengthPolicy::Truncate,
            "--help" | "-h" => return usage(),
            _ => texts.push(arg),
        }
    }
    let Some(model) = model else { return usage() };
    let run = || -> qwen_embed_model::Result<()> {
        let embedder = Embedder::load(&model, &Device::Cpu, DType::F32)?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let (vectors, _) = embedder.embed(&refs, instruct.as_deref(), dim, &limits, &|| false)?;
        for (text, vector) in texts.iter().zip(vectors) {
            let tokens = embedder.tokenize(text, instruct.as_deref(), &limits)?.len();
            println!("{}", serde_json::json!({"text": text, "tokens": tokens, "embedding": vector}));
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(hint) = e.hint() {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}
