//! The model's structure: configuration, weights, the one precision rule, linear layers, the encoder and what is built
//! on it (pooling, the embedder, the reranker). Kernels live in `cpu` and `gpu`.

pub(crate) mod attention_layout;
pub mod config;
pub mod embedder;
pub mod encoder;
pub mod linear;
pub mod pooling;
pub mod precision;
pub mod reranker;
pub mod weights;
