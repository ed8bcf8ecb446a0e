//! The async worker of one database: claims a batch of queued rows in a short transaction, embeds it with no
//! transaction open (through the model server when it serves the cluster's model, at priority `async`), writes the
//! vectors back in a second short transaction (sql/async/worker.sql, `_async_apply`: only where the text is still the
//! one embedded), and records failures.
//!
//! Failures: an error that is not about any text (the model server down, restarting or overloaded, the model not
//! loadable) is the batch's: its items go back uncharged and the worker backs off (1 s, doubling to 60 s). Any other
//! error is some text's: the batch is split in halves until the texts that fail are alone, and only they are charged
//! (`_async_fail`); the rest is written. A table's own errors (its rows cannot be read or written: a constraint, a
//! trigger of the user's, a dropped key column) are charged to that table's rows alone, found by halves the same way
//! at write-back; every other table goes on. A write-back that waits too long for a row lock gives its rows back
//! uncharged, due again a second later.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::{pg_sys, PgSqlErrorCode};

use super::slots;
use crate::postgres::settings;
use crate::route;

/// With no due work for this long (and no wake meanwhile, and no prepared transaction in the database), the worker
/// exits; the next commit that queues starts one.
const IDLE_EXIT: Duration = Duration::from_secs(10);
/// The longest sleep between looks at the queue (retries coming due, prepared transactions committed elsewhere).
const BACKSTOP: Duration = Duration::from_secs(10);
/// How long a write-back waits for a row a writer holds before it gives the batch back (uncharged).
const LOCK_WAIT: &str = "200ms";
/// When rows given back that way are due again: the writer's lock is likely gone by then, and the batch is not
/// embedded again at once while it is held.
const LOCKED_RETRY: &str = "1s";
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A claimed item: the row's key, the fingerprint it was queued with, and the row's text now with its fingerprint.
struct Item {
    table: i32,
    key: String,
    claimed: String,
    embedded: String,
    body: String,
    instruct: Option<String>,
}

/// An error not about any text: the whole batch waits.
struct BatchFailure(String);

/// One text's vector, or the error it failed with alone.
type Outcome = Result<Vec<f32>, String>;

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn qwen_embed_async_worker_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    if !slots::attach(database) {
        return; // another worker serves this database
    }
    // SAFETY: a callback with the process's lifetime; it runs at every exit (a return from here, an ERROR) and only
    // frees the slot.
    unsafe { pg_sys::before_shmem_exit(Some(detach_at_exit), arg) };
    let installed = BackgroundWorker::transaction(|| {
        Spi::get_one::<bool>(
            "SELECT pg_catalog.to_regprocedure('qwen_embed._async_claim(integer, integer)') IS NOT NULL",
        )
    });
    if installed != Ok(Some(true)) {
        return;
    }
    // Every request of this process waits behind interactive ones in the model server.
    // SAFETY: sets a GUC of this process by name, with a valid value, outside any parallel operation.
    unsafe {
        pg_sys::SetConfigOption(
            c"qwen_embed.priority".as_ptr(),
            c"async".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        )
    };
    // Leases found now are a dead worker's (one worker per database): give them back.
    run("SELECT qwen_embed._async_release(NULL, NULL)");
    let mut idle_since = Instant::now();
    let mut backoff = Duration::from_secs(1);
    loop {
        if BackgroundWorker::sighup_received() {
            // SAFETY: the worker's main loop, as PostgreSQL's own processes reload on SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let seen = slots::wakes(database);
        let items = claim(settings::ASYNC_BATCH_SIZE.get());
        if items.is_empty() {
            // A prepared transaction may hold queued rows no commit will wake anyone for (COMMIT PREPARED runs in
            // any session, and not where the rows were queued): while one exists, the worker stays and finds them at
            // its backstop.
            let (due, prepared) = BackgroundWorker::transaction(|| {
                Spi::get_two::<f64, bool>(
                    "SELECT extract(epoch FROM qwen_embed._async_next_due() - now())::float8,
                            EXISTS (SELECT FROM pg_catalog.pg_prepared_xacts WHERE database = current_database())",
                )
            })
            .unwrap_or((None, None));
            let staying = due.is_some() || prepared != Some(false);
            if !staying && idle_since.elapsed() >= IDLE_EXIT && slots::detach_if_idle(database, seen) {
                return;
            }
            let wait = due.map_or(BACKSTOP, |s| Duration::from_secs_f64(s.clamp(0.01, BACKSTOP.as_secs_f64())));
            if !BackgroundWorker::wait_latch(Some(wait)) {
                break;
            }
            continue;
        }
        idle_since = Instant::now();
        match process(items) {
            Ok(()) => backoff = Duration::from_secs(1),
            Err((tables, BatchFailure(error))) => {
                warning!("qwen_embed async worker: {error}; retrying in {} s", backoff.as_secs());
                let tables: Vec<i32> = tables.into_iter().collect();
                run_with("SELECT qwen_embed._async_release($1, $2)", move || vec![tables.into(), error.into()]);
                if !sleep(backoff) {
                    break;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        if BackgroundWorker::sigterm_received() {
            break;
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn detach_at_exit(_code: i32, arg: pg_sys::Datum) {
    slots::detach(pg_sys::Oid::from(arg.value() as u32));
}

/// Sleeps, waking only for SIGTERM (not for wakes: a batch failure is waited out); false if the worker must stop.
fn sleep(total: Duration) -> bool {
    let until = Instant::now() + total;
    while let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
        if !BackgroundWorker::wait_latch(Some(left)) {
            return false;
        }
    }
    true
}

fn run(query: &str) {
    run_with(query, Vec::new);
}

/// Runs `query` in a transaction of its own. The arguments are made inside it: a datum (an array's above all, which
/// looks its element type up in the catalog) can only be made in a transaction.
fn run_with<'a>(
    query: &str,
    args: impl FnOnce() -> Vec<pgrx::datum::DatumWithOid<'a>> + std::panic::UnwindSafe + std::panic::RefUnwindSafe,
) {
    BackgroundWorker::transaction(move || Spi::connect_mut(|client| client.update(query, None, &args()).map(|_| ())))
        .unwrap_or_else(|e| error!("qwen_embed async worker: {query}: {e}"));
}

fn claim(batch: i32) -> Vec<Item> {
    BackgroundWorker::transaction(move || {
        Spi::connect_mut(|client| {
            let rows = client.update(
                "SELECT table_id, key, fingerprint::text, body_fingerprint::text, body, instruct
                   FROM qwen_embed._async_claim($1, $2)",
                None,
                &[batch.into(), settings::ASYNC_MAX_ATTEMPTS.get().into()],
            )?;
            let mut items = Vec::new();
            for row in rows {
                let text = |i: usize| row.get::<String>(i).ok().flatten().unwrap_or_default();
                items.push(Item {
                    table: row.get::<i32>(1)?.unwrap_or_default(),
                    key: text(2),
                    claimed: text(3),
                    embedded: text(4),
                    body: text(5),
                    instruct: row.get::<String>(6)?,
                });
            }
            Ok::<_, pgrx::spi::Error>(items)
        })
    })
    .unwrap_or_else(|e| error!("qwen_embed async worker: claiming a batch: {e}"))
}

/// Embeds the batch and writes it back. A batch failure gives back the tables it concerned.
fn process(items: Vec<Item>) -> Result<(), (std::collections::BTreeSet<i32>, BatchFailure)> {
    let started = Instant::now();
    // Texts sharing an instruction go in one request (each table has one instruction).
    let mut groups: BTreeMap<Option<String>, Vec<usize>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        groups.entry(item.instruct.clone()).or_default().push(i);
    }
    let mut results: Vec<Option<Outcome>> = (0..items.len()).map(|_| None).collect();
    for (instruct, members) in groups {
        let texts: Vec<String> = members.iter().map(|&i| items[i].body.clone()).collect();
        let outcome = embed_isolating(&texts, &instruct)
            .map_err(|failure| (items.iter().map(|item| item.table).collect(), failure))?;
        for (i, result) in members.into_iter().zip(outcome) {
            results[i] = Some(result);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut tables: BTreeMap<i32, Vec<(&Item, Outcome)>> = BTreeMap::new();
    for (item, result) in items.iter().zip(results) {
        tables.entry(item.table).or_default().push((item, result.expect("every group ran")));
    }
    for (table, done) in tables {
        let (ok, failed): (Vec<_>, Vec<_>) = done.into_iter().partition(|(_, r)| r.is_ok());
        let ok: Vec<(&Item, String)> =
            ok.into_iter().map(|(item, r)| (item, vector_text(r.as_ref().expect("ok")))).collect();
        let mut failed: Vec<(&Item, String)> =
            failed.into_iter().map(|(item, r)| (item, r.expect_err("failed"))).collect();
        failed.extend(write_back(table, &ok, seconds));
        // Each failing text alone: its own error, in one call per distinct error.
        let mut errors: BTreeMap<String, Vec<&Item>> = BTreeMap::new();
        for (item, error) in failed {
            errors.entry(error).or_default().push(item);
        }
        for (error, failing) in errors {
            let (keys, claimed) = key_columns(&failing);
            let attempts = settings::ASYNC_MAX_ATTEMPTS.get();
            run_with("SELECT qwen_embed._async_fail($1, $2, $3::bigint[], $4, $5)", move || {
                vec![table.into(), keys.into(), claimed.into(), error.into(), attempts.into()]
            });
        }
    }
    Ok(())
}

/// The keys and claimed fingerprints of items, as `_async_*` take them.
fn key_columns(items: &[&Item]) -> (Vec<String>, Vec<String>) {
    (items.iter().map(|i| i.key.clone()).collect(), items.iter().map(|i| i.claimed.clone()).collect())
}

/// Writes one table's vectors (`_async_apply`). Rows a writer holds past the lock wait go back uncharged, due again
/// shortly. A write-back the table refuses (a constraint, a trigger of the user's that raised, a key column dropped)
/// is tried again by halves until the rows at fault are alone; they are returned with their errors, to be charged,
/// and the rest is written.
fn write_back<'a>(table: i32, items: &[(&'a Item, String)], seconds: f64) -> Vec<(&'a Item, String)> {
    if items.is_empty() {
        return Vec::new();
    }
    let only_items: Vec<&Item> = items.iter().map(|(item, _)| *item).collect();
    let (keys, claimed) = key_columns(&only_items);
    let embedded: Vec<String> = items.iter().map(|(i, _)| i.embedded.clone()).collect();
    let vectors: Vec<String> = items.iter().map(|(_, v)| v.clone()).collect();
    let (requeue_keys, requeue_claimed) = (keys.clone(), claimed.clone());
    let (written, error) = BackgroundWorker::transaction(move || {
        Spi::get_two_with_args::<i32, String>(
            "SELECT written, error FROM qwen_embed._async_apply($1, $2, $3::bigint[], $4::bigint[], $5, $6::interval, $7)",
            &[
                table.into(),
                keys.into(),
                claimed.into(),
                embedded.into(),
                vectors.into(),
                LOCK_WAIT.into(),
                seconds.into(),
            ],
        )
    })
    .unwrap_or_else(|e| error!("qwen_embed async worker: writing back: {e}"));
    match (written, error) {
        (_, Some(error)) if items.len() == 1 => vec![(items[0].0, error)],
        (_, Some(_)) => {
            let (a, b) = items.split_at(items.len() / 2);
            let mut failed = write_back(table, a, seconds);
            failed.extend(write_back(table, b, seconds));
            failed
        }
        (Some(-1), None) => {
            run_with("SELECT qwen_embed._async_requeue($1, $2, $3::bigint[], $4::interval)", move || {
                vec![table.into(), requeue_keys.into(), requeue_claimed.into(), LOCKED_RETRY.into()]
            });
            Vec::new()
        }
        _ => Vec::new(),
    }
}

/// pgvector's text form; `{}` of an f32 is the shortest text that reads back as the same f32.
fn vector_text(v: &[f32]) -> String {
    let parts: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", parts.join(","))
}

/// Each text's vector or its own error; halves the batch until failing texts are alone. A batch-level error stops it.
fn embed_isolating(texts: &[String], instruct: &Option<String>) -> Result<Vec<Outcome>, BatchFailure> {
    match embed(texts.to_vec(), instruct.clone()) {
        Ok(vectors) => Ok(vectors.into_iter().map(Ok).collect()),
        Err((code, message)) if batch_level(code) => Err(BatchFailure(message)),
        Err((_, message)) if texts.len() == 1 => Ok(vec![Err(message)]),
        Err(_) => {
            let (a, b) = texts.split_at(texts.len() / 2);
            let mut results = embed_isolating(a, instruct)?;
            results.extend(embed_isolating(b, instruct)?);
            Ok(results)
        }
    }
}

/// Errors about the service, not about a text: the model server not running, restarting, lost or overloaded, the
/// model missing or unreadable.
fn batch_level(code: PgSqlErrorCode) -> bool {
    use PgSqlErrorCode::*;
    matches!(
        code,
        ERRCODE_CANNOT_CONNECT_NOW
            | ERRCODE_SYSTEM_ERROR
            | ERRCODE_CONFIGURATION_LIMIT_EXCEEDED
            | ERRCODE_PROTOCOL_VIOLATION
            | ERRCODE_QUERY_CANCELED
            | ERRCODE_ADMIN_SHUTDOWN
            | ERRCODE_UNDEFINED_FILE
            | ERRCODE_IO_ERROR
            | ERRCODE_CONFIG_FILE_ERROR
            | ERRCODE_FEATURE_NOT_SUPPORTED
    )
}

/// `route::embed_texts` (the model server, or this process's model), its ERROR caught as (SQLSTATE, message).
fn embed(texts: Vec<String>, instruct: Option<String>) -> Result<Vec<Vec<f32>>, (PgSqlErrorCode, String)> {
    PgTryBuilder::new(move || Ok(route::embed_texts(texts, instruct, None)))
        .catch_others(|e| {
            let report = match &e {
                CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
                CaughtError::RustPanic { ereport, .. } => ereport,
            };
            Err((report.sql_error_code(), report.message().to_string()))
        })
        .execute()
}
