//! qwen_embed_model: the Qwen3-Embedding text encoder in plain Rust (candle). No PostgreSQL in here, so it is tested with
//! plain `cargo test` and reused by the extension.
//!
//! Four groups, as candle keeps its backends apart from its models:
//! - [`model`]: the model's structure — [`config`] (`config.json` → [`Qwen3Config`]), [`weights`] (memory-mapped
//!   safetensors), [`precision`] (the one rule from requested dtype and device to kernels and dtypes), [`linear`]
//!   (a linear layer on the kernel `precision` chose), [`encoder`] (the forward pass; `attention_layout`, attention's
//!   inputs split into heads, normed and rotated in one pass), [`pooling`], [`embedder`] (all of it behind one call,
//!   with token-budget batching) and [`reranker`] (Qwen3-Reranker on the same backbone)
//! - [`text`]: [`tokenizer`] (`tokenizer.json`, the instruction format, the length policy) and [`chunking`] (long
//!   documents into token-budget chunks)
//! - [`cpu`]: the CPU backends — detection (which kernels this CPU runs, found once), [`onednn`] (with the `onednn`
//!   feature: the linear layers on oneDNN's bf16 brgemm for AMX and AVX512-BF16, work on the rayon pool, and
//!   [`attention_onednn`], the attention on its matmuls beside them), [`f32_matmul`] and `micro_kernel` (AVX2/FMA/F16C
//!   linear layers on weights packed at load), [`attention`] (the f32 CPU attention: `attention_tiled` on the
//!   micro-kernel, a portable path on `gemm`) and [`elementwise`] (vectorised exp, SwiGLU, bf16 rounding)
//! - `gpu` (with `cuda`): the GPU attention's masked softmax as one CUDA kernel (`gpu/kernels/`)
//!
//! Beside them: [`device`] (`auto`/`cpu`/`cuda:N` and the dtype names), [`memory`] (will the model fit?),
//! [`profile`] (where a pass's time goes, for the benchmark) and [`error`]. Every module is also re-exported at the crate root (`qwen_embed_model::encoder`, …), the paths callers
//! have always used.

pub mod cpu;
pub mod device;
pub mod error;
#[cfg(feature = "cuda")]
mod gpu;
pub mod memory;
pub mod model;
pub mod profile;
pub mod text;

pub use cpu::{attention, elementwise, f32_matmul};
#[cfg(onednn)]
pub use cpu::{attention_onednn, onednn};
pub(crate) use cpu::{attention_tiled, micro_kernel, panels};
#[cfg(feature = "cuda")]
pub(crate) use gpu::softmax as gpu_softmax;
pub(crate) use model::attention_layout;
pub use model::{config, embedder, encoder, linear, pooling, precision, reranker, weights};
pub use text::{chunking, tokenizer};

pub use candle_core::{self as candle, DType, Device};
pub use config::Qwen3Config;
pub use embedder::{document_vector, Chunk, Embedder, Limits, Work};
pub use error::{Error, ErrorKind, Result};
pub use pooling::Weighting;
pub use precision::Precision;
pub use reranker::Reranker;
pub use tokenizer::{format_input, LengthPolicy};

/// The oneDNN library's version ("2.6.3", "3.7.2"); `None` in a build without oneDNN.
pub fn onednn_version() -> Option<String> {
    #[cfg(onednn)]
    return Some(onednn::version());
    #[cfg(not(onednn))]
    None
}
