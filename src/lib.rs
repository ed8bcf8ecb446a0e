//! qwen_embed: Qwen3-Embedding inside PostgreSQL.
//!
//! - `model/` (its own crate): the encoder, with no PostgreSQL in it
//! - `settings`: the `qwen_embed.*` GUCs
//! - `backend`: the process globals this backend reads (pid, statement start, preloading), each read in one place
//! - `runtime`: where each embedding runs (model server or this backend), the per-backend model, worker pool,
//!   interrupts, counters, result cache
//! - `supervisor`: the background worker that runs the cluster's model server (`crates/qwen_embed_server`) in a child process
//! - `server_client`: the backend side of the model server
//! - `vector`: pgvector's `vector` in and out
//! - `api`: `embed`, `cosine_sim`, `semantic_similarity`
//! - `call_site`: one remembered result per call site, so a per-row `embed('constant')` runs once per query
//! - `statement_memo`: `embed(text[])` computed once per statement (the planner evaluates it too, for estimates)
//! - `documents`: `embed_chunks`, `embed_document` for long texts
//! - `backfill`: `CALL qwen_embed.backfill(...)` for existing rows (sql/backfill.sql)
//! - `trigger`: statement-level triggers that embed inserted and updated rows in batches
//! - `async_embed`: async mode of those triggers: the queue's background workers (sql/async.sql)
//! - `rerank`: `rerank`, `rerank_score` (Qwen3-Reranker, in the model server or this backend)
//! - `stats`: per-backend counters, in shared memory when preloaded: the `qwen_embed.stats` view
//! - `info`: `qwen_embed.info()`

use pgrx::prelude::*;

mod api;
mod async_embed;
mod backend;
mod backfill;
mod call_site;
mod documents;
mod errors;
mod info;
mod rerank;
mod runtime;
mod server_client;
mod settings;
mod statement_memo;
mod stats;
mod supervisor;
mod trigger;
mod vector;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

::pgrx::pg_module_magic!(name, version);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::register();
    stats::init();
    supervisor::init();
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
