//! `qwen_embed.info()`: what this backend has loaded and what it has done, as key/value rows.

use pgrx::prelude::*;

// The schema for the management functions; created first so hand-written SQL can use it too.
extension_sql!("CREATE SCHEMA IF NOT EXISTS qwen_embed;", name = "qwen_embed_schema", bootstrap);

#[pg_schema]
mod qwen_embed {
    use pgrx::prelude::*;

    use qwen_embed_model::device::device_name;

    use crate::{runtime, settings, stats};

    /// The model this backend has loaded (nothing is loaded by calling this), the settings in effect, and counters.
    #[pg_extern(volatile, parallel_restricted)]
    fn info() -> TableIterator<'static, (name!(key, String), name!(value, String))> {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut add = |k: &str, v: String| rows.push((k.to_string(), v));
        match runtime::loaded() {
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
                add("load_ms", format!("{:.1}", m.load_time().as_secs_f64() * 1e3));
                add("weights_mb", (m.weights_bytes() >> 20).to_string());
                if let Some((free, total)) = qwen_embed_model::memory::gpu_memory(m.device()) {
                    add("gpu_memory_used_mb", ((total - free) >> 20).to_string());
                    add("gpu_memory_total_mb", (total >> 20).to_string());
                }
            }
            None => add("model_path", "(not loaded in this backend)".into()),
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
}
