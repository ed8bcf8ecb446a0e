//! Asynchronous embedding: the writing statement only queues its rows (sql/async/); a background worker per
//! database embeds them after the commit, through the model server, holding no transaction while the model runs.
//!
//! - `slots`: the shared-memory registry of the per-database workers (which runs where, its latch, wakes)
//! - `launcher`: a static background worker that, once recovery is over (never on a hot standby; after a promotion,
//!   yes), starts a worker for every database; workers with nothing to do exit
//! - `worker`: the per-database worker: claim, embed, write back, record failures
//!
//! Waking: a statement that queues work asks for a wake at commit (`_async_wake(true)`); the commit callback sets the
//! database's worker's latch, or starts a worker if the database has none. So the lag is the model's time, not a
//! poll interval; the worker still looks at the queue every 10 s as a backstop (retries that came due, commits of
//! prepared transactions). A rolled-back transaction wakes nobody (and queued nothing).

mod launcher;
mod slots;
mod worker;

use std::cell::Cell;

use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use crate::postgres::backend;
use crate::postgres::errors::raise_with;

/// Called from `_PG_init` under `shared_preload_libraries`.
pub fn init() {
    if !backend::preloading() {
        return;
    }
    slots::init();
    launcher::register();
}

thread_local! {
    /// This backend's transaction queued async work: wake the worker when it commits.
    static WAKE_AT_COMMIT: Cell<bool> = const { Cell::new(false) };
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// `qwen_embed._async_wake(at_commit)`: wakes (or starts) this database's async worker, now or when the current
/// transaction commits. Without preloading there is no worker: at commit that is silent (the capture triggers still
/// queue; a preloaded restart drains the queue), now it is an ERROR saying so.
#[pg_extern(volatile, parallel_unsafe, schema = "qwen_embed", name = "_async_wake")]
fn async_wake(at_commit: bool) {
    if !crate::postgres::backend::preloaded() {
        if at_commit {
            return;
        }
        raise_with(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "qwen_embed: asynchronous embedding needs qwen_embed in shared_preload_libraries".into(),
            Some(
                "Add qwen_embed to shared_preload_libraries and restart the server: the worker that embeds queued \
                  rows is a background worker."
                    .into(),
            ),
        );
    }
    if !at_commit {
        slots::wake(database());
        return;
    }
    if !CALLBACK_REGISTERED.get() {
        // SAFETY: registers a function with the lifetime of the process, on the backend's thread; the callback only
        // touches this thread's flag and the slots' shared memory.
        unsafe { pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut()) };
        CALLBACK_REGISTERED.set(true);
    }
    WAKE_AT_COMMIT.set(true);
}

/// `qwen_embed._async_worker_pid()`: the pid of this database's async worker, NULL when none runs.
#[pg_extern(stable, parallel_safe, schema = "qwen_embed", name = "_async_worker_pid")]
fn async_worker_pid() -> Option<i32> {
    crate::postgres::backend::preloaded().then(|| slots::worker_pid(database())).flatten()
}

#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT if WAKE_AT_COMMIT.replace(false) => slots::wake(database()),
        // Prepared: its rows become visible at a COMMIT PREPARED that wakes nobody. A worker is started now; it stays
        // while the database has a prepared transaction and finds the rows at its next look at the queue (worker.rs).
        pg_sys::XactEvent::XACT_EVENT_PREPARE if WAKE_AT_COMMIT.replace(false) => slots::wake(database()),
        // Rolled back: it queued nothing.
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PREPARE => WAKE_AT_COMMIT.set(false),
        _ => {}
    }
}

fn database() -> pg_sys::Oid {
    // SAFETY: set when the backend connects to its database, before any SQL runs; read on the backend's thread.
    unsafe { pg_sys::MyDatabaseId }
}

// sql/async/ in four parts, in this order. The last is named "async": what needs async mode whole requires it.
extension_sql_file!("../../sql/async/queue.sql", name = "async_queue", requires = ["qwen_embed_schema"]);
extension_sql_file!("../../sql/async/capture.sql", name = "async_capture", requires = ["async_queue", async_wake]);
extension_sql_file!("../../sql/async/worker.sql", name = "async_worker", requires = ["async_queue"]);
extension_sql_file!(
    "../../sql/async/admin.sql",
    name = "async",
    requires = ["async_capture", "async_worker", async_wake, async_worker_pid]
);
