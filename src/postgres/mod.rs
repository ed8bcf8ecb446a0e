//! PostgreSQL glue the rest is built on: the `qwen_embed.*` settings, the process globals a backend reads, the
//! counters of `qwen_embed.stats`, ERRORs with SQLSTATE and hint, and pgvector's `vector` in and out.

pub mod backend;
pub mod errors;
pub mod settings;
pub mod shmem_text;
pub mod stats;
pub mod vector;
