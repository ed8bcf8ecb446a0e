//! The `qwen_embed.*` settings (GUCs). Which model a backend runs and where are superuser-only; limits and batching
//! are per session.

use std::ffi::CString;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use qwen_embed_model::{LengthPolicy, Limits};

pub static MODEL_PATH: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static DEVICE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"auto"));
pub static DTYPE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"auto"));
pub static MAX_LENGTH: GucSetting<i32> = GucSetting::<i32>::new(8192);
pub static TRUNCATE: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static BATCH_TOKENS: GucSetting<i32> = GucSetting::<i32>::new(8192);
pub static THREADS: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static CACHE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(256);

pub fn register() {
    GucRegistry::define_string_guc(
        c"qwen_embed.model_path",
        c"Directory of the Qwen3 embedding model (Hugging Face layout).",
        c"config.json, tokenizer.json and model.safetensors (or a sharded index). Loaded once per backend, on first use.",
        &MODEL_PATH,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"qwen_embed.device",
        c"Where the model runs: auto, cpu, cuda or cuda:N.",
        c"auto uses the first CUDA GPU when qwen_embed was built with CUDA and one is visible, else the CPU.",
        &DEVICE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"qwen_embed.dtype",
        c"Compute dtype: auto, f32, bf16 or f16.",
        c"auto is bf16 on CPUs with AMX (f32 activations, bf16 weights), f32 on other CPUs, bf16 on a GPU.",
        &DTYPE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"qwen_embed.max_length",
        c"Longest input in tokens (never above the model's max_position_embeddings).",
        c"",
        &MAX_LENGTH,
        1,
        1 << 20,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"qwen_embed.truncate",
        c"Embed only the first max_length tokens of longer inputs instead of raising an error.",
        c"",
        &TRUNCATE,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"qwen_embed.batch_tokens",
        c"Padded tokens per forward pass when embedding several texts.",
        c"",
        &BATCH_TOKENS,
        16,
        1 << 20,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"qwen_embed.threads",
        c"CPU threads a backend uses for the encoder (0 = one per core).",
        c"",
        &THREADS,
        0,
        1024,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"qwen_embed.cache_size",
        c"Single-text embeddings each backend remembers (0 disables the cache).",
        c"A constant argument such as embed('question') in ORDER BY is then computed once per query, not per row.",
        &CACHE_SIZE,
        0,
        1 << 20,
        GucContext::Userset,
        GucFlags::default(),
    );
}

pub fn string(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting.get().map(|s| s.to_string_lossy().trim().to_string()).filter(|s| !s.is_empty())
}

pub fn limits() -> Limits {
    Limits {
        max_length: MAX_LENGTH.get() as usize,
        policy: if TRUNCATE.get() { LengthPolicy::Truncate } else { LengthPolicy::Error },
        batch_tokens: BATCH_TOKENS.get() as usize,
    }
}

pub fn threads() -> usize {
    match THREADS.get() {
        n if n > 0 => n as usize,
        _ => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    }
}
