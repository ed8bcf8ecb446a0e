//! Memory-mapped safetensors in Hugging Face layout: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`. Tensor names may carry the `model.` prefix (saved from `Qwen3ForCausalLM`) or not
//! (saved from `Qwen3Model`, as Qwen3-Embedding is). bf16, f16 and f32 files load into any compute dtype.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::precision::Precision;

pub const SINGLE_FILE: &str = "model.safetensors";
pub const SHARD_INDEX: &str = "model.safetensors.index.json";

pub struct Weights {
    files: MmapedSafetensors,
    prefix: &'static str,
    /// Where the tensors came from, for error messages.
    source: PathBuf,
}

impl Weights {
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join(SHARD_INDEX);
        let single = dir.join(SINGLE_FILE);
        let (paths, source) = if index.is_file() {
            (shard_paths(&index)?, index)
        } else if single.is_file() {
            (vec![single.clone()], single)
        } else {
            return Err(Error::ModelDir {
                path: dir.to_path_buf(),
                problem: format!("has neither {SINGLE_FILE} nor {SHARD_INDEX}"),
            });
        };
        for p in &paths {
            // Opened here first so a permission or missing-file problem is reported as such, with the path.
            std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
        }
        // SAFETY: the files are mapped read-only; like every mmap-based loader we rely on nobody truncating them while
        // the model is loaded (the tensors are copied out during `Encoder::load`, so the window is short).
        let files = unsafe { MmapedSafetensors::multi(&paths) }.map_err(|e| Error::Weights {
            path: source.clone(),
            problem: format!("not a valid safetensors file: {e}"),
        })?;
        let names: BTreeSet<String> = files.tensors().into_iter().map(|(name, _)| name).collect();
        let prefix = if names.contains("model.embed_tokens.weight") {
            "model."
        } else if names.contains("embed_tokens.weight") {
            ""
        } else {
            return Err(Error::Weights {
                path: source,
                problem: "no \"embed_tokens.weight\" tensor (with or without the \"model.\" prefix)".into(),
            });
        };
        Ok(Weights { files, prefix, source })
    }

    /// The dtype `name` is stored in.
    pub fn dtype(&self, name: &str) -> Result<DType> {
        self.stored(&format!("{}{name}", self.prefix)).map(|(_, dtype)| dtype)
    }

    /// The tensor named `full` (prefix included) and its dtype, which must be one the loader reads.
    fn stored(&self, full: &str) -> Result<(safetensors::tensor::TensorView<'_>, DType)> {
        let view = self
            .files
            .get(full)
            .map_err(|_| Error::Weights { path: self.source.clone(), problem: format!("missing tensor \"{full}\"") })?;
        use safetensors::Dtype as St;
        let dtype = match view.dtype() {
            St::BF16 => DType::BF16,
            St::F16 => DType::F16,
            St::F32 => DType::F32,
            other => {
                return Err(Error::Unsupported(format!(
                    "tensor \"{full}\" is stored as {other:?}; only bf16, f16 and f32 weights are supported"
                )))
            }
        };
        Ok((view, dtype))
    }

    /// Bytes the weights take once loaded with `precision` (`embed_tokens` and the rest may differ in dtype).
    pub fn loaded_bytes(&self, precision: &Precision) -> u64 {
        let embed = format!("{}embed_tokens.weight", self.prefix);
        let embed_dtype = self.dtype("embed_tokens.weight").map_or(DType::F32, |d| precision.embed_tokens(d));
        self.files
            .tensors()
            .iter()
            .map(|(name, view)| {
                let n = view.shape().iter().product::<usize>() as u64;
                let dtype = if *name == embed { embed_dtype } else { precision.weights() };
                n * dtype.size_in_bytes() as u64
            })
            .sum()
    }

    /// Whether the checkpoint has the tensor `full_name` (exactly so, no prefix added).
    pub fn has_exact(&self, full_name: &str) -> bool {
        self.files.get(full_name).is_ok()
    }

    /// Some rows of a 2-D tensor as f32, read straight from the mapped file: the reranker needs two rows of an LM head
    /// that holds 155M parameters in the 0.6B model. `name` is without prefix unless `exact`.
    pub fn rows(&self, name: &str, exact: bool, rows: &[usize]) -> Result<Vec<Vec<f32>>> {
        let full = if exact { name.to_string() } else { format!("{}{name}", self.prefix) };
        let bad = |problem: String| Error::Weights { path: self.source.clone(), problem };
        let (view, dtype) = self.stored(&full)?;
        let &[n_rows, cols] = view.shape() else {
            return Err(bad(format!("tensor \"{full}\" is not a matrix: {:?}", view.shape())));
        };
        let width = dtype.size_in_bytes();
        let data = view.data();
        rows.iter()
            .map(|&r| {
                if r >= n_rows {
                    return Err(bad(format!("tensor \"{full}\" has {n_rows} rows; row {r} was asked for")));
                }
                let bytes = &data[r * cols * width..][..cols * width];
                Ok(match dtype {
                    DType::BF16 => {
                        bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
                    }
                    DType::F16 => {
                        bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
                    }
                    _ => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                })
            })
            .collect()
    }

    /// Loads `name` (without prefix), checking its shape, converted to `dtype` on `device`.
    pub fn get(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        self.dtype(name)?;
        let full = format!("{}{name}", self.prefix);
        let view = self.files.get(&full)?;
        if view.shape() != shape {
            return Err(Error::Shape { name: full, expected: shape.to_vec(), found: view.shape().to_vec() });
        }
        let tensor = candle_core::safetensors::Load::load(&view, &Device::Cpu)?;
        Ok(tensor.to_dtype(dtype)?.to_device(device)?)
    }
}

/// The distinct shard files named by a `model.safetensors.index.json`, in a stable order.
fn shard_paths(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let bad = |problem: String| Error::Weights { path: index.to_path_buf(), problem };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map =
        json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("no \"weight_map\" object".into()))?;
    let mut files = BTreeSet::new();
    for file in map.values() {
        let file = file.as_str().ok_or_else(|| bad("weight_map values must be file names".into()))?;
        if file.contains('/') || file.contains("..") {
            return Err(bad(format!("shard \"{file}\" is not a plain file name")));
        }
        files.insert(file.to_string());
    }
    if files.is_empty() {
        return Err(bad("weight_map is empty".into()));
    }
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}
