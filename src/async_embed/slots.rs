//! Which database has an async worker, in shared memory: one slot per database, so that each database has at most one
//! worker (its leases are then its own: a worker that starts may release every lease it finds), and so that a
//! committing backend finds the latch to set.
//!
//! A slot is taken by whoever first needs a worker for the database (a commit, the launcher) and holds `pid` 0 until
//! the worker attaches; `wakes` counts wake-ups, so a worker leaves only if none came since it last looked at the
//! queue (a wake that races its exit keeps it). Crash-restarts reinitialise shared memory and every worker with it.

use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, pg_sys, PgLwLock};

use crate::postgres::backend;

/// Databases with an async worker at the same time; more wait for a free slot (the launcher retries).
const SLOTS: usize = 64;
/// A worker registered but not attached after this long is registered again (max_worker_processes was full).
const START_RETRY: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Slot {
    /// 0: free.
    database: u32,
    /// 0: registered, not attached yet.
    pid: i32,
    /// The worker's process latch (`MyProc->procLatch`, in shared memory), as an address.
    latch: usize,
    wakes: u64,
    /// When the worker was (last) registered, in PostgreSQL's microseconds.
    registered_at: i64,
}

#[derive(Clone, Copy)]
#[repr(C)]
pub struct Slots([Slot; SLOTS]);

impl Default for Slots {
    fn default() -> Self {
        Slots([Slot::default(); SLOTS])
    }
}

// SAFETY: plain old data (integers only; the latch address is only dereferenced under the lock, while its worker is
// attached), as PGRXSharedMemory requires.
unsafe impl pgrx::shmem::PGRXSharedMemory for Slots {}

// SAFETY: the name is unique to this extension and the lock is initialised by pg_shmem_init! in `init`.
static SLOTS_LOCK: PgLwLock<Slots> = unsafe { PgLwLock::new(c"qwen_embed_async_workers") };

pub fn init() {
    pg_shmem_init!(SLOTS_LOCK);
}

fn oid(database: pg_sys::Oid) -> u32 {
    database.to_u32()
}

/// Wakes the database's worker, or starts one if it has none.
pub fn wake(database: pg_sys::Oid) {
    let start = {
        let mut slots = SLOTS_LOCK.exclusive();
        if let Some(slot) = slots.0.iter_mut().find(|s| s.database == oid(database)) {
            slot.wakes += 1;
            if slot.pid != 0 {
                // SAFETY: the address of an attached worker's process latch, which lives in shared memory for as long
                // as the worker is attached; the worker detaches under this lock before it exits.
                unsafe { pg_sys::SetLatch(slot.latch as *mut pg_sys::Latch) };
            }
            false
        } else if let Some(slot) = slots.0.iter_mut().find(|s| s.database == 0) {
            *slot = Slot { database: oid(database), wakes: 1, registered_at: backend::now(), ..Slot::default() };
            true
        } else {
            false // every slot taken: the database is served when one frees (its rows wait in the queue)
        }
    };
    if start {
        start_worker(database);
    }
}

/// Registers a worker for `database` with the postmaster; false if max_worker_processes is full (the launcher tries
/// again after START_RETRY).
pub fn start_worker(database: pg_sys::Oid) -> bool {
    BackgroundWorkerBuilder::new(&format!("qwen_embed async worker for database {}", oid(database)))
        .set_type("qwen_embed async worker")
        .set_library("qwen_embed")
        .set_function("qwen_embed_async_worker_main")
        .set_argument(Some(pg_sys::Datum::from(oid(database))))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        // An ERROR exit restarts it; a clean exit (nothing to do) does not.
        .set_restart_time(Some(Duration::from_secs(5)))
        .load_dynamic()
        .is_ok()
}

/// Databases whose worker was registered long ago and never attached: registered again now (by the launcher).
pub fn stalled() -> Vec<pg_sys::Oid> {
    let now = backend::now();
    let mut slots = SLOTS_LOCK.exclusive();
    slots
        .0
        .iter_mut()
        .filter(|s| s.database != 0 && s.pid == 0 && now - s.registered_at > START_RETRY.as_micros() as i64)
        .map(|s| {
            s.registered_at = now;
            pg_sys::Oid::from(s.database)
        })
        .collect()
}

/// The calling worker takes the database's slot; false if another live worker holds it (or no slot is free).
pub fn attach(database: pg_sys::Oid) -> bool {
    let me = backend::pid();
    let mut slots = SLOTS_LOCK.exclusive();
    let index = match slots.0.iter().position(|s| s.database == oid(database)) {
        // SAFETY: kill with signal 0 only checks that the process exists.
        Some(i) if slots.0[i].pid != 0 && slots.0[i].pid != me && unsafe { libc::kill(slots.0[i].pid, 0) } == 0 => {
            return false
        }
        Some(i) => i,
        None => {
            let Some(i) = slots.0.iter().position(|s| s.database == 0) else { return false };
            slots.0[i] = Slot { database: oid(database), ..Slot::default() };
            i
        }
    };
    let slot = &mut slots.0[index];
    slot.pid = me;
    // SAFETY: MyProc is this process's entry in shared memory, set before any extension code runs.
    slot.latch = unsafe { std::ptr::addr_of_mut!((*pg_sys::MyProc).procLatch) } as usize;
    true
}

/// The wake count of the calling worker's slot (read before each look at the queue, for `detach_if_idle`).
pub fn wakes(database: pg_sys::Oid) -> u64 {
    SLOTS_LOCK.share().0.iter().find(|s| s.database == oid(database)).map_or(0, |s| s.wakes)
}

/// Frees the calling worker's slot if no wake came since `seen` wakes; says whether it did.
pub fn detach_if_idle(database: pg_sys::Oid, seen: u64) -> bool {
    let mut slots = SLOTS_LOCK.exclusive();
    match slots.0.iter_mut().find(|s| s.database == oid(database) && s.pid == backend::pid()) {
        Some(slot) if slot.wakes == seen => {
            *slot = Slot::default();
            true
        }
        Some(_) => false,
        None => true,
    }
}

/// Frees the calling worker's slot, whatever came (its exit, by ERROR too).
pub fn detach(database: pg_sys::Oid) {
    let mut slots = SLOTS_LOCK.exclusive();
    if let Some(slot) = slots.0.iter_mut().find(|s| s.database == oid(database) && s.pid == backend::pid()) {
        *slot = Slot::default();
    }
}

pub fn worker_pid(database: pg_sys::Oid) -> Option<i32> {
    SLOTS_LOCK.share().0.iter().find(|s| s.database == oid(database) && s.pid != 0).map(|s| s.pid)
}
