//! The launcher: a static background worker that runs once recovery is over (so never on a hot standby, and from the
//! moment of a promotion). It starts a worker for every database that accepts connections; a worker whose database
//! has no async work exits at once, so after a restart, a crash or a promotion every queue drains without anyone
//! writing first. Then it re-registers workers that never started (max_worker_processes was full), every 10 s.

use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::slots;

pub fn register() {
    BackgroundWorkerBuilder::new("qwen_embed async launcher")
        .set_type("qwen_embed async launcher")
        .set_library("qwen_embed")
        .set_function("qwen_embed_async_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(10)))
        .load();
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn qwen_embed_async_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // No database: the shared catalog pg_database is all it reads.
    BackgroundWorker::connect_worker_to_spi(None, None);
    for database in databases() {
        slots::wake(database);
    }
    while BackgroundWorker::wait_latch(Some(Duration::from_secs(10))) {
        for database in slots::stalled() {
            slots::start_worker(database);
        }
    }
}

/// The databases that accept connections (templates left out), read from pg_database as the autovacuum launcher does:
/// a process connected to no database cannot run SQL.
fn databases() -> Vec<pg_sys::Oid> {
    let mut found = Vec::new();
    // SAFETY: a catalog heap scan inside a transaction of this process, the relation opened and closed with the same
    // lock; each tuple's struct is read only while the scan holds it (GETSTRUCT of a pg_database tuple).
    unsafe {
        pg_sys::StartTransactionCommand();
        pg_sys::GetTransactionSnapshot();
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let db = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
            if db.datallowconn && !db.datistemplate {
                found.push(db.oid);
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        pg_sys::CommitTransactionCommand();
    }
    found
}
