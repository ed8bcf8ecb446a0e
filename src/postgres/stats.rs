//! What the encoder did, per backend: counted in the backend (always) and, when qwen_embed is in
//! `shared_preload_libraries`, published to a slot in shared memory so `qwen_embed.stats` shows every backend.
//!
//! A backend claims a slot (by pid) on its first call and frees it as it exits; it writes only its own slot, under one
//! short LWLock hold per call, which is nothing next to a forward pass. Without preloading there is no shared memory
//! to ask for (PostgreSQL 15 hands it out only at server start), and the view shows the current backend alone.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use pgrx::lwlock::PgLwLock;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_shmem_init, pg_sys};

use crate::postgres::backend;
use crate::postgres::shmem_text::{self, read, Keep};

/// Counters since the backend started.
#[derive(Default, Clone, Copy, Debug)]
pub struct Stats {
    pub calls: u64,
    pub texts: u64,
    pub tokens: u64,
    pub forward_passes: u64,
    pub cache_hits: u64,
    pub errors: u64,
    pub total: Duration,
    pub max: Duration,
    /// PostgreSQL timestamp (µs since 2000-01-01) of the last call; 0 before the first.
    pub last_call: i64,
}

/// The model a backend has loaded, as shown in the view.
#[derive(Clone, Default)]
pub struct ModelInfo {
    pub path: String,
    pub device: String,
    pub dtype: String,
}

thread_local! {
    static LOCAL: Cell<Stats> = Cell::new(Stats::default());
    static MODEL: RefCell<ModelInfo> = RefCell::new(ModelInfo::default());
    static SLOT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Backends tracked in shared memory; more concurrent users of qwen_embed than this are counted locally only.
const SLOTS: usize = 512;
const TEXT_BYTES: usize = 240;

#[derive(Clone, Copy)]
#[repr(C)]
struct Slot {
    pid: i32,
    model: [u8; TEXT_BYTES],
    device: [u8; 8],
    dtype: [u8; 8],
    stats: Stats,
}

impl Slot {
    const FREE: Slot = Slot { pid: 0, model: [0; TEXT_BYTES], device: [0; 8], dtype: [0; 8], stats: ZERO };
}

const ZERO: Stats = Stats {
    calls: 0,
    texts: 0,
    tokens: 0,
    forward_passes: 0,
    cache_hits: 0,
    errors: 0,
    total: Duration::ZERO,
    max: Duration::ZERO,
    last_call: 0,
};

#[derive(Clone, Copy)]
struct Table {
    slots: [Slot; SLOTS],
}

impl Default for Table {
    fn default() -> Self {
        Table { slots: [Slot::FREE; SLOTS] }
    }
}

// SAFETY: plain old data, no pointers and no heap, so it is valid at any address in any process.
unsafe impl PGRXSharedMemory for Table {}

// SAFETY: the name is unique to this extension and the lock is initialised by pg_shmem_init! in `init`.
static TABLE: PgLwLock<Table> = unsafe { PgLwLock::new(c"qwen_embed_stats") };
/// Called from `_PG_init`: asks for the shared table when loaded from `shared_preload_libraries`.
pub fn init() {
    if backend::preloading() {
        pg_shmem_init!(TABLE);
    }
}

pub fn local() -> Stats {
    LOCAL.get()
}

/// Updates this backend's counters and publishes them.
pub fn record(f: impl FnOnce(&mut Stats)) {
    let mut stats = LOCAL.get();
    f(&mut stats);
    stats.last_call = backend::now();
    LOCAL.set(stats);
    publish();
}

/// Notes the model this backend now uses.
pub fn set_model(model: ModelInfo) {
    MODEL.set(model);
    publish();
}

fn publish() {
    if !backend::preloaded() {
        return;
    }
    let pid = backend::pid();
    let mut table = TABLE.exclusive();
    let index = match SLOT.get() {
        Some(i) => i,
        None => {
            let Some(i) = table.slots.iter().position(|s| s.pid == pid || s.pid == 0) else { return };
            table.slots[i] = Slot { pid, ..Slot::FREE };
            SLOT.set(Some(i));
            // before_shmem_exit, not on_proc_exit: freeing the slot takes the LWLock, and a backend may wait for an
            // LWLock only while it still has its PGPROC (on_proc_exit runs after it is gone, and a wait there is a
            // PANIC: "cannot wait without a PGPROC structure", which restarts the cluster when backends exit together).
            // SAFETY: registers a pg_guard'ed callback with a plain integer argument.
            unsafe { pg_sys::before_shmem_exit(Some(free_slot), pg_sys::Datum::from(i)) };
            i
        }
    };
    let slot = &mut table.slots[index];
    slot.stats = LOCAL.get();
    MODEL.with_borrow(|m| {
        shmem_text::write(&mut slot.model, &m.path, Keep::Tail);
        shmem_text::write(&mut slot.device, &m.device, Keep::Tail);
        shmem_text::write(&mut slot.dtype, &m.dtype, Keep::Tail);
    });
}

/// A `before_shmem_exit` callback: frees this backend's slot (the index registered with it).
///
/// # Safety
/// Called by PostgreSQL only, with the Datum `publish` registered.
#[pg_guard]
unsafe extern "C-unwind" fn free_slot(_code: i32, slot: pg_sys::Datum) {
    let mut table = TABLE.exclusive();
    table.slots[slot.value()] = Slot::FREE;
}

#[pg_schema]
mod qwen_embed {
    use super::*;

    /// Rows of the `qwen_embed.stats` view: every backend that used qwen_embed when it is preloaded, else this one.
    #[pg_extern(volatile, parallel_restricted)]
    #[allow(clippy::type_complexity)]
    fn backend_stats() -> TableIterator<
        'static,
        (
            name!(pid, i32),
            name!(model, Option<String>),
            name!(device, Option<String>),
            name!(dtype, Option<String>),
            name!(calls, i64),
            name!(texts, i64),
            name!(tokens, i64),
            name!(forward_passes, i64),
            name!(cache_hits, i64),
            name!(errors, i64),
            name!(total_ms, f64),
            name!(max_ms, f64),
            name!(last_call_us, Option<i64>),
        ),
    > {
        // (pid, model, device, dtype, counters) of each backend, copied out under the lock.
        let backends: Vec<(i32, String, String, String, Stats)> = if backend::preloaded() {
            let table = TABLE.share();
            let live = table.slots.iter().filter(|s| s.pid != 0);
            live.map(|s| (s.pid, read(&s.model), read(&s.device), read(&s.dtype), s.stats)).collect()
        } else {
            let m = MODEL.with_borrow(Clone::clone);
            vec![(backend::pid(), m.path, m.device, m.dtype, LOCAL.get())]
        };
        let some = |t: String| Some(t).filter(|t| !t.is_empty());
        TableIterator::new(backends.into_iter().map(move |(pid, model, device, dtype, s)| {
            (
                pid,
                some(model),
                some(device),
                some(dtype),
                s.calls as i64,
                s.texts as i64,
                s.tokens as i64,
                s.forward_passes as i64,
                s.cache_hits as i64,
                s.errors as i64,
                s.total.as_secs_f64() * 1e3,
                s.max.as_secs_f64() * 1e3,
                Some(s.last_call).filter(|&t| t != 0),
            )
        }))
    }
}

extension_sql!(
    r#"
CREATE VIEW qwen_embed.stats AS
SELECT pid, model, device, dtype, calls, texts, tokens, forward_passes, cache_hits, errors,
       round(total_ms::numeric, 1) AS total_ms, round(max_ms::numeric, 1) AS max_ms,
       CASE WHEN calls > 0 THEN round((total_ms / calls)::numeric, 2) END AS avg_ms,
       'epoch'::timestamptz + interval '946684800 seconds' + last_call_us * interval '1 microsecond' AS last_call,
       'backend'::text AS process
FROM qwen_embed.backend_stats()
UNION ALL
-- The cluster's model server, when it runs: calls are the requests it answered, forward_passes its batches.
SELECT max(value) FILTER (WHERE key = 'pid')::int, max(value) FILTER (WHERE key = 'model_path'),
       max(value) FILTER (WHERE key = 'device'), max(value) FILTER (WHERE key = 'dtype'),
       max(value) FILTER (WHERE key = 'requests')::bigint, max(value) FILTER (WHERE key = 'texts')::bigint,
       max(value) FILTER (WHERE key = 'tokens')::bigint, max(value) FILTER (WHERE key = 'batches')::bigint, 0,
       max(value) FILTER (WHERE key = 'errors')::bigint, NULL, NULL, NULL, NULL, 'model server'
FROM qwen_embed.server_info()
HAVING count(*) > 0;
GRANT SELECT ON qwen_embed.stats TO PUBLIC;
COMMENT ON VIEW qwen_embed.stats IS
    'What each backend''s encoder did (every backend when qwen_embed is in shared_preload_libraries, else this one), and the model server';
"#,
    name = "stats_view",
    // Last in the script: it reads backend_stats() and info.rs's server_info().
    finalize
);
