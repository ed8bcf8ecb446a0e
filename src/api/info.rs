//! `qwen_embed.info()`: what this backend has loaded and what it has done, as key/value rows.

use pgrx::prelude::*;

// The schema for the management functions; created first so hand-written SQL can use it too.
extension_sql!("CREATE SCHEMA IF NOT EXISTS qwen_embed;", name = "qwen_embed_schema", bootstrap);

#[pg_schema]
pub(crate) mod qwen_embed {
    use pgrx::prelude::*;

    use qwen_embed_model::device::device_name;
    use qwen_embed_server::protocol::Priority;

    use crate::postgres::{settings, stats};
    use crate::{route, server};

    /// The model that served this session's last call (nothing is loaded by calling this): the cluster's model
    /// server, or the model loaded in this backend; the settings in effect, and this backend's counters.
    #[pg_extern(volatile, parallel_restricted)]
    fn info() -> TableIterator<'static, (name!(key, String), name!(value, String))> {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut add = |k: &str, v: String| rows.push((k.to_string(), v));
        if route::last_on_server() {
            add("route", "server".into());
            if let Some((s, pid, restarts, last_exit)) = server::client::status() {
                add("model_path", s.model.path);
                add("device", s.device);
                add("dtype", s.dtype);
                add("kernel", s.kernel);
                add("load_ms", format!("{:.1}", s.load_ms));
                add("server_pid", pid.to_string());
                add("server_state", s.state);
                add("server_restarts", restarts.to_string());
                if !last_exit.is_empty() {
                    add("server_last_exit", last_exit);
                }
            }
            // A model of its own that this backend loaded earlier (another model_path set in this session) stays
            // in memory until the backend exits.
            let own = route::loaded().map(|m| m.model_dir().display().to_string());
            add("backend_model_path", own.unwrap_or_else(|| "(none)".into()));
        } else {
            add("route", "backend".into());
            match route::loaded() {
                Some(m) => {
                    let c = m.config();
                    add("model_path", m.model_dir().display().to_string());
                    add("architecture", "qwen3".into());
                    add("dims", c.hidden_size.to_string());
                    add("layers", c.num_hidden_layers.to_string());
                    add("attention_heads", c.num_attention_heads.to_string());
                    add("kv_heads", c.num_key_value_heads.to_string());
                    add("head_dim", c.head_dim.to_string());
                    add("intermediate_size", c.intermediate_size.to_string());
                    add("vocab_size", c.vocab_size.to_string());
                    add("max_position_embeddings", c.max_position_embeddings.to_string());
                    add("device", device_name(m.device()).into());
                    add("dtype", m.dtype().as_str().into());
                    add("kernel", m.precision().kernel_name().into());
                    add("onednn", qwen_embed_model::onednn_version().unwrap_or_else(|| "(not built in)".into()));
                    add("load_ms", format!("{:.1}", m.load_time().as_secs_f64() * 1e3));
                    add("weights_mb", (m.weights_bytes() >> 20).to_string());
                    if let Some((free, total)) = qwen_embed_model::memory::gpu_memory(m.device()) {
                        add("gpu_memory_used_mb", ((total - free) >> 20).to_string());
                        add("gpu_memory_total_mb", (total >> 20).to_string());
                    }
                }
                None => add("model_path", "(not loaded in this backend)".into()),
            }
            if let Some(r) = crate::api::rerank::loaded() {
                add("reranker_path", r.model_dir().display().to_string());
                add("reranker_kernel", r.precision().kernel_name().into());
                add("reranker_load_ms", format!("{:.1}", r.load_time().as_secs_f64() * 1e3));
            }
        }
        add("threads", settings::threads().to_string());
        let s = stats::local();
        add("calls", s.calls.to_string());
        add("texts", s.texts.to_string());
        add("tokens", s.tokens.to_string());
        add("forward_passes", s.forward_passes.to_string());
        add("cache_hits", s.cache_hits.to_string());
        add("errors", s.errors.to_string());
        add("total_ms", format!("{:.1}", s.total.as_secs_f64() * 1e3));
        add("max_ms", format!("{:.1}", s.max.as_secs_f64() * 1e3));
        TableIterator::new(rows)
    }

    /// The cluster's model server: its model, state, queue and counters (no rows when it is not running: qwen_embed
    /// is not preloaded, or qwen_embed.server is off), and the requests of each session it has served.
    #[pg_extern(volatile, parallel_restricted)]
    pub(crate) fn server_info() -> TableIterator<'static, (name!(key, String), name!(value, String))> {
        let mut rows: Vec<(String, String)> = Vec::new();
        if let Some((s, pid, restarts, last_exit)) = server::client::status() {
            let mut add = |k: &str, v: String| rows.push((k.to_string(), v));
            add("pid", pid.to_string());
            add("model_path", s.model.path);
            add("state", s.state);
            add("device", s.device);
            add("dtype", s.dtype);
            add("kernel", s.kernel);
            add("load_ms", format!("{:.1}", s.load_ms));
            if !s.reranker.path.is_empty() {
                add("reranker_path", s.reranker.path.clone());
                add("reranker_state", s.reranker_state.clone());
            }
            add("threads", s.threads.to_string());
            add("batch_tokens", s.batch_tokens.to_string());
            add("queue_limit", s.queue_limit.to_string());
            add("queued_requests", s.queued_requests.to_string());
            add("queued_texts", s.queued_texts.to_string());
            add("computing_texts", s.computing_texts.to_string());
            add("requests", s.requests.to_string());
            add("canceled", s.canceled.to_string());
            add("rejected", s.rejected.to_string());
            add("errors", s.errors.to_string());
            add("texts", s.texts.to_string());
            add("tokens", s.tokens.to_string());
            add("batches", s.batches.to_string());
            add("batches_split", s.batches_split.to_string());
            add("reranker_batches", s.reranker_batches.to_string());
            add("pauses", s.pauses.to_string());
            let per_batch =
                |n: u64| if s.batches > 0 { format!("{:.1}", n as f64 / s.batches as f64) } else { "0".into() };
            add("mean_batch_texts", per_batch(s.texts));
            add("mean_batch_tokens", per_batch(s.tokens));
            add("max_batch_texts", s.max_batch_texts.to_string());
            add("max_batch_tokens", s.max_batch_tokens.to_string());
            add("max_text_tokens", s.max_text_tokens.to_string());
            if let Some(bytes) = s.heap_bytes_in_use {
                add("heap_bytes_in_use", bytes.to_string());
            }
            add("idle_trims", s.idle_trims.to_string());
            add("restarts", restarts.to_string());
            add("last_exit", last_exit);
            for c in &s.jobs {
                add(&format!("{}_requests", c.kind), c.requests.to_string());
                add(&format!("{}_canceled", c.kind), c.canceled.to_string());
                add(&format!("{}_texts", c.kind), c.texts.to_string());
                add(&format!("{}_tokens", c.kind), c.tokens.to_string());
            }
            for (priority, n) in Priority::ALL.iter().zip(s.priorities) {
                add(&format!("{}_priority_requests", priority.name()), n.to_string());
            }
            for (client, n) in s.per_client {
                add(&format!("requests_from_pid_{client}"), n.to_string());
            }
        }
        TableIterator::new(rows)
    }
}
