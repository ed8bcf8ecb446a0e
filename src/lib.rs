//! qwen_embed: Qwen3-Embedding inside PostgreSQL. By layer, each a folder:
//!
//! - `api/`: the SQL surface: `embed`, `cosine_sim`, `semantic_similarity` (embed.rs), `embed_chunks` and
//!   `embed_document` (documents.rs), the embedding triggers (trigger.rs), `CALL qwen_embed.backfill` (backfill.rs,
//!   sql/backfill.sql), `rerank` and `rerank_score` (rerank.rs), `qwen_embed.info()` and `server_info()` (info.rs)
//! - `route/`: where each embedding runs (the model server or this backend's own model, its worker pool,
//!   interrupts, result cache), and results reused within a query (`call_site`) and a statement (`statement_memo`)
//! - `server/`: the cluster's model server (`crates/qwen_embed_server`) seen from PostgreSQL: the background worker
//!   that runs it in a child process (`supervisor`) and a backend's calls to it (`client`)
//! - `async_embed/`: async mode of the triggers: the queue's launcher and background workers (sql/async/)
//! - `postgres/`: glue: the `qwen_embed.*` settings, the process globals a backend reads (`backend`), the
//!   `qwen_embed.stats` counters, ERRORs with SQLSTATE and hint, pgvector's `vector`
//!
//! The encoder is its own crate with no PostgreSQL in it (`crates/qwen_embed_model`), as is the model server's
//! queue and batching (`crates/qwen_embed_server`).

use pgrx::prelude::*;

mod api;
mod async_embed;
mod postgres;
mod route;
mod server;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

::pgrx::pg_module_magic!(name, version);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    postgres::settings::register();
    postgres::stats::init();
    server::supervisor::init();
    async_embed::init();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        let conf = format!("qwen_embed.model_path = '{}'", crate::tests::readable_test_model().display());
        let reranker = format!("qwen_embed.reranker_path = '{}'", crate::tests::readable_test_reranker().display());
        // f32, so results compare with transformers' fp32 reference to 1e-4 whatever the CPU.
        vec![Box::leak(conf.into_boxed_str()), Box::leak(reranker.into_boxed_str()), "qwen_embed.dtype = 'f32'"]
    }
}
