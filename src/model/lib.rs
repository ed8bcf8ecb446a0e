//! qwen_embed_model: the Qwen3-Embedding text encoder in plain Rust (candle). No PostgreSQL in here, so it is tested with
//! plain `cargo test` and reused by the extension.
//!
//! - [`config`]: `config.json` → [`Qwen3Config`]
//! - [`device`]: `auto`/`cpu`/`cuda:N` and `auto`/`f32`/`bf16`/`f16` → candle's device and dtype
//! - [`weights`]: memory-mapped safetensors, single or sharded, with or without the `model.` prefix
//! - [`tokenizer`]: `tokenizer.json`, the instruction format and the length policy
//! - [`cpu`]: which kernels this CPU runs (detected once; kernel values exist only after detection)
//! - [`precision`]: the one rule from requested dtype and device to kernel and dtypes (`auto` included)
//! - [`f32_matmul`]: linear layers on weights packed at load (AVX2/FMA/F16C)
//! - [`onednn`] (with the `onednn` feature): linear layers on oneDNN's bf16 brgemm (AMX, AVX512-BF16), weights
//!   reordered at load, work on the rayon pool
//! - `micro_kernel`: the 6 × 16 f32 FMA micro-kernel (its k-loop in assembly) under `f32_matmul` and the CPU attention
//! - [`encoder`]: the transformer forward pass (causal + padding mask, last-token output)
//! - [`attention`]: the CPU attention kernel (blocked, mask fused into a vectorised softmax); `attention_tiled`, its
//!   path on the micro-kernel (key blocks with an online softmax) where the CPU has AVX2/FMA/F16C; `attention_layout`,
//!   its inputs split into heads, normed and rotated from the packed rows in one pass, and its output packed again;
//!   `attention_bf16`, the same blocks with bf16 products on AVX512-BF16 (with oneDNN's bf16 linear layers)
//! - `gpu_softmax` (with `cuda`): the GPU attention's masked softmax as one CUDA kernel (`kernels/`)
//! - [`elementwise`]: vectorised exp (softmax) and SwiGLU, compiled for the CPU's vector width
//! - [`pooling`]: L2 normalisation, Matryoshka truncation, weighted means of chunk vectors
//! - [`chunking`]: long documents into token-budget chunks cut at paragraph/sentence boundaries
//! - [`embedder`]: all of the above behind one call, with token-budget batching
//! - [`reranker`]: Qwen3-Reranker, the same backbone scoring (query, document) pairs through two rows of its LM head

pub mod attention;
mod attention_bf16;
mod attention_layout;
mod attention_tiled;
pub mod chunking;
pub mod config;
pub mod cpu;
pub mod device;
pub mod elementwise;
pub mod embedder;
pub mod encoder;
pub mod error;
pub mod f32_matmul;
#[cfg(feature = "cuda")]
pub mod gpu_softmax;
pub mod linear;
pub mod memory;
mod micro_kernel;
#[cfg(feature = "onednn")]
pub mod onednn;
mod panels;
pub mod pooling;
pub mod precision;
pub mod reranker;
pub mod tokenizer;
pub mod weights;

pub use candle_core::{self as candle, DType, Device};
pub use config::Qwen3Config;
pub use embedder::{Chunk, Embedder, Limits, Work};
pub use error::{Error, ErrorKind, Result};
pub use pooling::Weighting;
pub use precision::Precision;
pub use reranker::Reranker;
pub use tokenizer::{format_input, LengthPolicy};
