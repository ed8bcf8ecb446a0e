//! What this backend reads from PostgreSQL's process globals, in one place: each read is sound for the same reason,
//! said once here. PostgreSQL backends are single-threaded; these functions run on the backend's own thread (never on
//! the encoder's pool threads), where PostgreSQL writes these globals too.

use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::pg_sys;

/// This process's pid as PostgreSQL knows it (`pg_backend_pid()`).
pub fn pid() -> i32 {
    // SAFETY: set once when the process starts, before any extension code runs; read on the backend's thread.
    unsafe { pg_sys::MyProcPid }
}

/// Whether `_PG_init` is running because of `shared_preload_libraries` (in the postmaster). It also remembers the
/// answer for [`preloaded`].
pub fn preloading() -> bool {
    // SAFETY: a flag PostgreSQL sets around loading the preload libraries; read on the loading thread.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    if preloading {
        PRELOADED.store(true, Ordering::Relaxed);
    }
    preloading
}

/// Set in the postmaster while it preloads qwen_embed; the processes it forks inherit it.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Whether the cluster preloaded qwen_embed (`shared_preload_libraries`): its shared memory, model server and async
/// worker exist only then.
pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

/// The time now, as PostgreSQL's timestamps count it.
pub fn now() -> pg_sys::TimestampTz {
    // SAFETY: a plain clock read with no preconditions.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// When the current statement started (`statement_timestamp()`): the same for planning and execution of one
/// statement, different for the next.
pub fn statement_start() -> pg_sys::TimestampTz {
    // SAFETY: reads a timestamp PostgreSQL sets at the start of each statement; read on the backend's thread.
    unsafe { pg_sys::GetCurrentStatementStartTimestamp() }
}
