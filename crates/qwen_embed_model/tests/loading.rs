//! Every on-disk layout loads to the same model, and every broken model directory is a clear error, not a panic.

mod common;

use std::path::Path;

use candle_core::DType;
use common::*;
use qwen_embed_model::{Device, Embedder, Error, LengthPolicy, Limits};

fn first_case_matches(dir: &Path, tolerance: f32) {
    let case = &reference_cases()[1];
    let got = embed_one(&load(dir), &case.text, case.instruct.as_deref());
    let diff = max_abs_diff(&got, &case.embedding);
    assert!(diff <= tolerance, "{}: max diff {diff}", dir.display());
}

#[test]
fn loads_prefixed_unprefixed_sharded_and_every_float_dtype() {
    let variants: [(&str, bool, DType, usize, f32); 5] = [
        ("prefixed bf16", true, DType::BF16, 1, 1e-4),
        ("unprefixed f32", false, DType::F32, 1, 1e-4),
        ("prefixed f32 in 3 shards", true, DType::F32, 3, 1e-4),
        ("unprefixed bf16 in 2 shards", false, DType::BF16, 2, 1e-4),
        // f16 cannot hold every bf16 value exactly (range, subnormals): close, not equal.
        ("unprefixed f16", false, DType::F16, 1, 2e-3),
    ];
    for (what, prefixed, dtype, shards, tolerance) in variants {
        let dir = tempfile::tempdir().unwrap();
        let rename = |n: &str| if prefixed { format!("model.{n}") } else { n.to_string() };
        write_variant(dir.path(), rename, dtype, shards);
        assert_eq!(dir.path().join("model.safetensors.index.json").exists(), shards > 1, "{what}");
        first_case_matches(dir.path(), tolerance);
    }
}

#[test]
fn appends_end_of_text_when_the_tokenizer_does_not() {
    let dir = tempfile::tempdir().unwrap();
    write_variant(dir.path(), str::to_string, DType::BF16, 1);
    let path = dir.path().join("tokenizer.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["post_processor"] = serde_json::Value::Null;
    std::fs::write(&path, json.to_string()).unwrap();
    let plain = load(dir.path());
    let limits = Limits::default();
    assert_eq!(
        plain.tokenize("The capital of China is Beijing.", None, &limits).unwrap(),
        [785, 6722, 315, 5616, 374, 26549, 13, 151643]
    );
    first_case_matches(dir.path(), 1e-4);
}

fn load_err(dir: &Path) -> Error {
    match Embedder::load(dir, &Device::Cpu, DType::F32) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

fn assert_mentions(err: &Error, words: &[&str]) {
    let msg = err.to_string();
    for w in words {
        assert!(msg.contains(w), "{msg:?} does not mention {w:?}");
    }
}

#[test]
fn missing_or_wrong_model_directories_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert_mentions(&load_err(&dir.path().join("nope")), &["does not exist"]);
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    assert_mentions(&load_err(&file), &["is not a directory"]);
    assert_mentions(&load_err(dir.path()), &["has no config.json"]);
    assert!(load_err(dir.path()).hint().unwrap().contains("qwen_embed.model_path"));

    copy_without_weights(dir.path());
    assert_mentions(&load_err(dir.path()), &["neither model.safetensors nor model.safetensors.index.json"]);
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    assert_mentions(&load_err(dir.path()), &["has no tokenizer.json"]);
}

#[test]
fn broken_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_variant(dir.path(), str::to_string, DType::BF16, 1);
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();

    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(dir.path());
    assert_mentions(&err, &["model.safetensors", "not a valid safetensors file"]);
    assert!(err.hint().unwrap().contains("truncated"));

    std::fs::write(&weights, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    assert_mentions(&load_err(dir.path()), &["not a valid safetensors file"]);

    std::fs::write(&weights, &bytes).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), "{ not json").unwrap();
    assert_mentions(&load_err(dir.path()), &["could not load tokenizer"]);
}

#[test]
fn config_and_weights_that_disagree_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_variant(dir.path(), str::to_string, DType::BF16, 1);
    let config_path = dir.path().join("config.json");
    let original = std::fs::read_to_string(&config_path).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut json: serde_json::Value = serde_json::from_str(&original).unwrap();
        f(&mut json);
        std::fs::write(&config_path, json.to_string()).unwrap();
    };

    edit(&|j| j["intermediate_size"] = 128.into());
    assert_mentions(&load_err(dir.path()), &["layers.0.mlp.gate_proj.weight", "[96, 64]", "[128, 64]"]);

    edit(&|j| j["num_hidden_layers"] = 4.into());
    assert_mentions(&load_err(dir.path()), &["missing tensor \"layers.3."]);

    edit(&|j| j["model_type"] = "llama".into());
    let err = load_err(dir.path());
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    assert_mentions(&err, &["\"llama\"", "qwen3"]);
}

#[test]
fn non_float_weights_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    copy_without_weights(dir.path());
    let mut tensors = tiny_tensors();
    let norm = tensors["norm.weight"].to_dtype(DType::U8).unwrap();
    tensors.insert("norm.weight".into(), norm);
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    assert_mentions(&load_err(dir.path()), &["norm.weight", "U8", "bf16, f16 and f32"]);
}

#[test]
fn long_inputs_are_refused_or_truncated_as_asked() {
    let model = load(&tiny_model());
    let case = reference_cases().into_iter().max_by_key(|c| c.ids.len()).unwrap();
    let n = case.ids.len();
    let strict = Limits { max_length: 100, ..Limits::default() };
    let err = model.embed(&[&case.text], None, None, &strict, &|| false).unwrap_err();
    assert_mentions(&err, &[&format!("{n} tokens"), "max_length 100"]);
    assert!(err.hint().unwrap().contains("qwen_embed.truncate"));

    let lenient = Limits { policy: LengthPolicy::Truncate, ..strict };
    let ids = model.tokenize(&case.text, None, &lenient).unwrap();
    assert_eq!(ids.len(), 100);
    assert_eq!(ids[..99], case.ids[..99]);
    assert_eq!(ids[99], 151643, "keeps the closing <|endoftext|>");
    let truncated = model.embed(&[&case.text], None, None, &lenient, &|| false).unwrap().0.remove(0);
    let direct = model.embed_tokens(&[ids], 8192, &|| false).unwrap().0.remove(0);
    assert_eq!(truncated, direct);

    // The model's position range caps any requested limit.
    assert_eq!(model.max_length(&Limits { max_length: 1 << 20, ..Limits::default() }), 4096);
}

#[test]
fn cancellation_stops_a_pass() {
    let model = load(&tiny_model());
    let err = model.embed(&["hello"], None, None, &Limits::default(), &|| true).unwrap_err();
    assert!(matches!(err, Error::Canceled), "{err}");
}

/// The pass polls before each layer and between its attention and its MLP (the model server pauses bulk batches
/// there), after the embedder's one poll before the pass, and stops at the first poll that says canceled, mid-layer
/// too.
#[test]
fn a_pass_polls_twice_a_layer_and_stops_mid_layer() {
    let model = load(&tiny_model());
    let layers = model.config().num_hidden_layers;
    let polls = std::cell::Cell::new(0);
    model
        .embed_tokens(&[vec![10, 11, 12]], 8192, &|| {
            polls.set(polls.get() + 1);
            false
        })
        .unwrap();
    assert_eq!(polls.get(), 1 + 2 * layers);
    polls.set(0);
    let err = model
        .embed_tokens(&[vec![10, 11, 12]], 8192, &|| {
            polls.set(polls.get() + 1);
            polls.get() == 3 // the first layer's attention is done, its MLP not started
        })
        .unwrap_err();
    assert!(matches!(err, Error::Canceled), "{err}");
    assert_eq!(polls.get(), 3);
}
