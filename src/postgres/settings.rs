//! The `qwen_embed.*` settings (GUCs). Which model a backend runs and where are superuser-only; limits and batching
//! are per session.

use std::ffi::{CStr, CString};

use pgrx::{pg_sys, GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use qwen_embed_model::{LengthPolicy, Limits};

pub static MODEL_PATH: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static RERANKER_PATH: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static DEVICE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"auto"));
pub static DTYPE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"auto"));
pub static MAX_LENGTH: GucSetting<i32> = GucSetting::<i32>::new(8192);
pub static TRUNCATE: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static BATCH_TOKENS: GucSetting<i32> = GucSetting::<i32>::new(8192);
pub static THREADS: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static CACHE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(256);
pub static SERVER: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static SERVER_THREADS: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static SERVER_BATCH_TOKENS: GucSetting<i32> = GucSetting::<i32>::new(2048);
pub static SERVER_QUEUE_LIMIT: GucSetting<i32> = GucSetting::<i32>::new(100_000);
pub static SERVER_WAIT: GucSetting<i32> = GucSetting::<i32>::new(60_000);
pub static PRIORITY: GucSetting<Priority> = GucSetting::<Priority>::new(Priority::Interactive);
pub static ASYNC_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(128);
pub static ASYNC_MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(5);

/// `qwen_embed.priority`: the class of this session's work in the model server's queue.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Priority {
    #[name = c"interactive"]
    Interactive,
    #[name = c"async"]
    Async,
    #[name = c"backfill"]
    Backfill,
}

impl From<Priority> for qwen_embed_server::protocol::Priority {
    fn from(p: Priority) -> Self {
        match p {
            Priority::Interactive => Self::Interactive,
            Priority::Async => Self::Async,
            Priority::Backfill => Self::Backfill,
        }
    }
}

pub fn register() {
    GucRegistry::define_enum_guc(
        c"qwen_embed.priority",
        c"Class of this session's work in the model server: interactive, async or backfill.",
        c"The server serves interactive work first, then async, then backfill. CALL qwen_embed.backfill sets backfill \
          for its own requests, the async worker async.",
        &PRIORITY,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"qwen_embed.async_batch_size",
        c"Rows the async embedding worker claims, embeds and writes back at a time.",
        c"",
        &ASYNC_BATCH_SIZE,
        1,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"qwen_embed.async_max_attempts",
        c"Attempts of an async item that fails by itself before it is parked as failed.",
        c"",
        &ASYNC_MAX_ATTEMPTS,
        1,
        1000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"qwen_embed.model_path",
        c"Directory of the Qwen3 embedding model (Hugging Face layout).",
        c"config.json, tokenizer.json and model.safetensors (or a sharded index). Loaded once per backend, on first use.",
        &MODEL_PATH,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"qwen_embed.reranker_path",
        c"Directory of the Qwen3-Reranker model (Hugging Face layout) for rerank() and rerank_score().",
        c"A causal-LM checkpoint: config.json, tokenizer.json, safetensors. It runs on qwen_embed.device and dtype, \
          in the model server when there is one (loaded on the first rerank), else once per backend.",
        &RERANKER_PATH,
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
        c"auto: bf16 weights (f32 activations) on CPUs with AMX or AVX512-BF16, f32 on other AVX-512 CPUs, f16 weights \
          (f32 arithmetic) on AVX2 CPUs, f32 elsewhere, bf16 on a GPU.",
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
        c"Repeated texts across queries are then answered without running the model.",
        &CACHE_SIZE,
        0,
        1 << 20,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"qwen_embed.server",
        c"Run the model in the cluster's model server (needs qwen_embed in shared_preload_libraries).",
        c"off, or without preloading: each backend that embeds loads its own copy of the model.",
        &SERVER,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"qwen_embed.server_threads",
        c"CPU threads of the model server (0 = one per core).",
        c"",
        &SERVER_THREADS,
        0,
        1024,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"qwen_embed.server_batch_tokens",
        c"Tokens per batch the model server takes from its queue, across sessions.",
        c"Smaller batches let interactive queries in sooner under bulk load; larger ones use the CPU or GPU better.",
        &SERVER_BATCH_TOKENS,
        16,
        1 << 20,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"qwen_embed.server_queue_limit",
        c"Texts that may wait in the model server's queue; beyond it, requests fail at once.",
        c"",
        &SERVER_QUEUE_LIMIT,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"qwen_embed.server_wait",
        c"How long a session waits for the model server to come up (while it starts or restarts).",
        c"",
        &SERVER_WAIT,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
}

/// The model this session's settings ask for.
pub fn model_spec() -> qwen_embed_server::protocol::ModelSpec {
    qwen_embed_server::protocol::ModelSpec {
        path: string(&MODEL_PATH).unwrap_or_default(),
        device: string(&DEVICE).unwrap_or_else(|| "auto".into()),
        dtype: string(&DTYPE).unwrap_or_else(|| "auto".into()),
    }
}

pub fn server_threads() -> usize {
    threads_or_cores(SERVER_THREADS.get())
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
    threads_or_cores(THREADS.get())
}

/// A thread-count setting: 0 (or less) means one thread per core.
fn threads_or_cores(setting: i32) -> usize {
    match setting {
        n if n > 0 => n as usize,
        _ => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    }
}

/// Did this session choose its model itself (`SET`, `ALTER ROLE`/`ALTER DATABASE ... SET`, a client option), rather
/// than take the cluster's configuration? Read from PostgreSQL's record of where each setting's value came from,
/// which needs no transaction (the async worker asks between transactions).
pub fn model_chosen_by_session() -> bool {
    [c"qwen_embed.model_path", c"qwen_embed.device", c"qwen_embed.dtype"]
        .into_iter()
        .any(|name| source(name).is_some_and(|s| s > pg_sys::GucSource::PGC_S_ARGV))
}

/// Where the value of the setting `name` came from.
fn source(name: &CStr) -> Option<pg_sys::GucSource::Type> {
    #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
    // SAFETY: get_guc_variables returns PostgreSQL's array of GetNumConfigOptions() valid entries, each with a valid
    // NUL-terminated name; it is read on the backend's own thread, where nothing changes it meanwhile.
    unsafe {
        let vars = pg_sys::get_guc_variables();
        let count = pg_sys::GetNumConfigOptions() as usize;
        (0..count).map(|i| *vars.add(i)).find(|&g| CStr::from_ptr((*g).name) == name).map(|g| (*g).source)
    }
    #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
    // SAFETY: find_option with create_placeholders false returns NULL or a pointer to the setting's entry, valid for
    // the life of the backend; skip_errors true makes it return NULL for an unknown name instead of raising.
    unsafe {
        let g = pg_sys::find_option(name.as_ptr(), false, true, pgrx::PgLogLevel::ERROR as i32);
        (!g.is_null()).then(|| (*g).source)
    }
}
