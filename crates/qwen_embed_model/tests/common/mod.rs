//! Shared by the model-core tests: the committed fixtures and ways to rewrite them into other on-disk layouts.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use qwen_embed_model::{DType, Device, Embedder, Limits};
use serde::Deserialize;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn tiny_model() -> PathBuf {
    fixtures().join("tiny-qwen3")
}

#[derive(Deserialize, Clone)]
pub struct Case {
    pub text: String,
    pub instruct: Option<String>,
    pub input: String,
    pub ids: Vec<u32>,
    pub embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

pub fn reference_cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("tiny-qwen3-reference.json")).unwrap();
    serde_json::from_str::<Reference>(&text).unwrap().cases
}

/// The device the encoder tests run on: `QWEN_EMBED_TEST_DEVICE` (e.g. `cuda:0` with `--features cuda`), else the CPU.
pub fn test_device() -> Device {
    let setting = std::env::var("QWEN_EMBED_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    qwen_embed_model::device::select_device(&setting).unwrap_or_else(|e| panic!("QWEN_EMBED_TEST_DEVICE: {e}"))
}

/// The tiny model in f32 on the test device.
pub fn load(dir: &Path) -> Embedder {
    Embedder::load(dir, &test_device(), DType::F32).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

pub fn embed_one(model: &Embedder, text: &str, instruct: Option<&str>) -> Vec<f32> {
    model.embed(&[text], instruct, None, &Limits::default(), &|| false).unwrap().0.remove(0)
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A copy of the tiny model's directory with everything but the weights.
pub fn copy_without_weights(dst: &Path) {
    for entry in std::fs::read_dir(tiny_model()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() && !entry.file_name().to_string_lossy().ends_with(".safetensors") {
            std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
    }
}

/// The tiny model's tensors, as stored (bf16), keyed by name.
pub fn tiny_tensors() -> HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(tiny_model().join("model.safetensors"), &candle_core::Device::Cpu).unwrap()
}

/// Writes the tiny model into `dst` with tensor names renamed by `rename`, converted to `dtype`, split over `shards`
/// files (with an index) when `shards > 1`.
pub fn write_variant(dst: &Path, rename: impl Fn(&str) -> String, dtype: candle_core::DType, shards: usize) {
    copy_without_weights(dst);
    let mut names: Vec<String> = tiny_tensors().keys().cloned().collect();
    names.sort();
    let tensors = tiny_tensors();
    if shards <= 1 {
        let out: HashMap<String, candle_core::Tensor> =
            names.iter().map(|n| (rename(n), tensors[n].to_dtype(dtype).unwrap())).collect();
        candle_core::safetensors::save(&out, dst.join("model.safetensors")).unwrap();
        return;
    }
    let mut weight_map = serde_json::Map::new();
    for (k, chunk) in names.chunks(names.len().div_ceil(shards)).enumerate() {
        let file = format!("model-{:05}-of-{shards:05}.safetensors", k + 1);
        let out: HashMap<String, candle_core::Tensor> =
            chunk.iter().map(|n| (rename(n), tensors[n].to_dtype(dtype).unwrap())).collect();
        candle_core::safetensors::save(&out, dst.join(&file)).unwrap();
        for n in chunk {
            weight_map.insert(rename(n), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dst.join("model.safetensors.index.json"), serde_json::to_string_pretty(&index).unwrap()).unwrap();
}
