//! Where each call runs (the cluster's model server, or this backend's own model), and the per-backend state of the
//! latter: the loaded model, the worker pool that runs it, and a small result cache; `call_site` and
//! `statement_memo` reuse results within a query and a statement.
//!
//! PostgreSQL backends are single-threaded processes and nothing in PostgreSQL may be called from another thread.
//! The encoder runs on a private rayon pool whose threads never touch PostgreSQL (they are created with every signal
//! blocked, so PostgreSQL's handlers always run on the backend thread). The backend thread waits for the result while
//! polling for interrupts every 10 ms: a cancel or statement_timeout raises its ERROR there, which sets the job's
//! cancel flag and waits for the pool to stop at the next layer boundary before unwinding further.

pub mod call_site;
pub mod statement_memo;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrx::PgSqlErrorCode;
use qwen_embed_model::device::device_name;
use qwen_embed_model::{DType, Device, Embedder, Error, Limits, Weighting, Work};
use qwen_embed_server::protocol::{Lengths, ModelSpec};

use crate::postgres::errors::{raise, raise_with, OrRaise};
use crate::postgres::{settings, stats};
use crate::server::{self, supervisor};

pub use crate::server::client::Chunks;

struct Loaded {
    key: ModelSpec,
    embedder: Arc<Embedder>,
}

/// Everything a single-text result depends on: the model, the input, and every setting that changes the vector or
/// whether there is one (`max_length` and `truncate`: the same text may be cut, or refused, under other limits).
/// A remembered result is served only for an equal key.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ResultKey {
    model: ModelSpec,
    instruct: Option<String>,
    dim: Option<i64>,
    lengths: Lengths,
    text: String,
}

impl ResultKey {
    /// The key of `text` under the current settings.
    pub fn current(text: &str, instruct: Option<&str>, dim: Option<i64>) -> Self {
        ResultKey {
            model: current_spec(),
            instruct: instruct.map(str::to_string),
            dim,
            lengths: Lengths::of(&settings::limits()),
            text: text.to_string(),
        }
    }
}

#[derive(Default)]
struct Cache {
    map: HashMap<ResultKey, Vec<f32>>,
    order: VecDeque<ResultKey>,
}

/// Texts longer than this are not cached (the cache is for repeated short queries).
const CACHEABLE_BYTES: usize = 4096;

#[derive(Default)]
struct State {
    model: Option<Loaded>,
    cache: Cache,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
    /// Did this session's last call go to the model server?
    static ON_SERVER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The server process whose model the stats view shows for this backend.
    static NOTED_SERVER: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// Did this session's last call go to the model server?
pub fn last_on_server() -> bool {
    ON_SERVER.get()
}

/// Whether this call goes to the model server (noted for `info()`).
fn on_server() -> bool {
    let yes = server::client::serves_this_session();
    ON_SERVER.set(yes);
    yes
}

/// After a call the server answered: the stats view shows the server's model for this backend.
fn note_server_model() {
    if supervisor::published().is_none_or(|(_, pid, ..)| pid == NOTED_SERVER.get()) {
        return;
    }
    if let Some((status, pid, ..)) = server::client::status().filter(|(s, ..)| s.state == "ready") {
        NOTED_SERVER.set(pid);
        stats::set_model(stats::ModelInfo { path: status.model.path, device: status.device, dtype: status.dtype });
    }
}

/// The model loaded in this backend, if any (without loading one).
pub fn loaded() -> Option<Arc<Embedder>> {
    STATE.with_borrow(|s| s.model.as_ref().map(|m| m.embedder.clone()))
}

/// The model this session's settings ask for; an ERROR with the setting's hint where no model is set.
fn current_spec() -> ModelSpec {
    let spec = settings::model_spec();
    if spec.path.is_empty() {
        raise_with(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "qwen_embed: qwen_embed.model_path is not set".into(),
            Some(
                "A superuser sets it to a Qwen3 embedding model directory, e.g. \
                 ALTER SYSTEM SET qwen_embed.model_path = '/models/Qwen3-Embedding-0.6B'; SELECT pg_reload_conf();"
                    .into(),
            ),
        )
    }
    spec
}

/// The model for the current settings, loading it on first use or after a setting changed.
pub fn model() -> (ModelSpec, Arc<Embedder>) {
    let key = current_spec();
    if let Some(m) = STATE.with_borrow(|s| s.model.as_ref().filter(|m| m.key == key).map(|m| m.embedder.clone())) {
        return (key, m);
    }
    let (device, dtype) = placement(&key);
    // Drop the old model first so two never sit in memory together.
    STATE.with_borrow_mut(|s| {
        s.model = None;
        s.cache = Cache::default();
    });
    let path = PathBuf::from(&key.path);
    let embedder = execute(move |_| Embedder::load(&path, &device, dtype).map(Arc::new));
    if key.device.eq_ignore_ascii_case("auto") {
        let place = if embedder.device().is_cpu() { "CPU" } else { "GPU" };
        pgrx::notice!("qwen_embed: model loaded on the {place} ({})", embedder.dtype().as_str());
    }
    STATE.with_borrow_mut(|s| s.model = Some(Loaded { key: key.clone(), embedder: embedder.clone() }));
    stats::set_model(stats::ModelInfo {
        path: key.path.clone(),
        device: device_name(embedder.device()).into(),
        dtype: embedder.dtype().as_str().into(),
    });
    (key, embedder)
}

/// The device and dtype a model spec's `qwen_embed.device` and `qwen_embed.dtype` name (for the embedder and the
/// reranker); an ERROR naming the setting otherwise.
pub(crate) fn placement(spec: &ModelSpec) -> (Device, DType) {
    spec.placement().unwrap_or_else(|m| invalid_setting(format!("invalid qwen_embed.{m}")))
}

fn invalid_setting(message: String) -> ! {
    raise_with(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("qwen_embed: {message}"), None)
}

fn pool() -> Arc<rayon::ThreadPool> {
    thread_local! { static POOL: RefCell<Option<(usize, Arc<rayon::ThreadPool>)>> = const { RefCell::new(None) }; }
    let threads = settings::threads();
    POOL.with_borrow_mut(|p| {
        if let Some((_, pool)) = p.as_ref().filter(|(n, _)| *n == threads) {
            return pool.clone();
        }
        let pool = Arc::new(build_pool(threads));
        *p = Some((threads, pool.clone()));
        pool
    })
}

/// A pool whose threads start with every signal blocked (they inherit the creating thread's mask).
fn build_pool(threads: usize) -> rayon::ThreadPool {
    // SAFETY: sigfillset and pthread_sigmask write through valid pointers to locals; the mask is changed on this
    // thread only for the time the pool's threads are spawned, and restored from the saved copy.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let pool =
            rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("qwen_embed-{i}")).build();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        pool.unwrap_or_else(|e| {
            raise_with(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES,
                format!("qwen_embed: cannot start threads: {e}"),
                None,
            )
        })
    }
}

/// Sets the cancel flag and waits for the job when the backend unwinds (an ERROR from an interrupt) before the job
/// finished, so no encoder work outlives the statement.
struct StopOnUnwind<'a, T> {
    cancel: &'a AtomicBool,
    done: &'a Receiver<T>,
    finished: bool,
}

impl<T> Drop for StopOnUnwind<'_, T> {
    fn drop(&mut self) {
        if !self.finished {
            self.cancel.store(true, Ordering::Relaxed);
            let _ = self.done.recv();
        }
    }
}

/// Runs `job` on the worker pool, polling for interrupts while it runs. The job gets a `canceled` probe to pass to the
/// encoder. Its errors and panics become ERRORs (and count in `errors`).
pub fn execute<T, F>(job: F) -> T
where
    T: Send + 'static,
    F: FnOnce(&dyn Fn() -> bool) -> qwen_embed_model::Result<T> + Send + 'static,
{
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = sync_channel(1);
    let flag = cancel.clone();
    pool().spawn(move || {
        let probe = move || flag.load(Ordering::Relaxed);
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| job(&probe)));
        let _ = tx.send(result);
    });
    let mut guard = StopOnUnwind { cancel: &cancel, done: &rx, finished: false };
    let result = loop {
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(result) => break result,
            Err(RecvTimeoutError::Timeout) => {
                pgrx::check_for_interrupts!();
            }
            Err(RecvTimeoutError::Disconnected) => break Err(Box::new("worker thread exited")),
        }
    };
    guard.finished = true;
    match result {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => {
            stats::record(|s| s.errors += 1);
            raise(e)
        }
        Err(panic) => {
            stats::record(|s| s.errors += 1);
            raise_with(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!(
                    "qwen_embed: internal error in the encoder: {}",
                    qwen_embed_model::error::panic_message(panic.as_ref())
                ),
                Some("The session is still usable. Please report this with the input that caused it.".into()),
            )
        }
    }
}

fn record_work(work: Work, elapsed: Duration) {
    stats::record(|s| {
        s.calls += 1;
        s.texts += work.texts as u64;
        s.tokens += work.tokens as u64;
        s.forward_passes += work.forward_passes as u64;
        s.total += elapsed;
        s.max = s.max.max(elapsed);
    });
}

/// Embeds texts that share an instruction, with the current model and settings: in the model server when it serves
/// this session (`server::client`), else in this backend.
pub fn embed_texts(texts: Vec<String>, instruct: Option<String>, dim: Option<i64>) -> Vec<Vec<f32>> {
    let vectors = counted(|| {
        if on_server() {
            return server::client::embed(texts, instruct, dim);
        }
        in_backend(move |model, limits, canceled| {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            model.embed(&refs, instruct.as_deref(), dim, limits, canceled)
        })
    });
    vectors.iter().for_each(|v| check_finite(v));
    vectors
}

/// A long document's chunks and their vectors.
pub fn embed_chunks(doc: String, chunk_tokens: usize, overlap: usize, dim: Option<i64>) -> Chunks {
    let chunks = counted(|| {
        if on_server() {
            return server::client::chunks(doc, chunk_tokens, overlap, dim);
        }
        in_backend(move |model, limits, canceled| {
            let (chunks, work) = model.embed_chunks(&doc, chunk_tokens, overlap, dim, limits, canceled)?;
            Ok((chunks.into_iter().map(|c| (c.range, c.embedding)).collect(), work))
        })
    });
    chunks.iter().for_each(|(_, v)| check_finite(v));
    chunks
}

/// One vector for a long document.
pub fn embed_document(
    doc: String,
    chunk_tokens: usize,
    overlap: usize,
    weighting: Weighting,
    dim: Option<i64>,
) -> Vec<f32> {
    let vector = counted(|| {
        if on_server() {
            return server::client::document(doc, chunk_tokens, overlap, weighting.to_string(), dim);
        }
        in_backend(move |model, limits, canceled| {
            model.embed_document(&doc, chunk_tokens, overlap, weighting, dim, limits, canceled)
        })
    });
    check_finite(&vector);
    vector
}

/// Runs `compute` and counts its work and time in this backend's counters.
pub(crate) fn counted<T>(compute: impl FnOnce() -> (T, Work)) -> T {
    let started = Instant::now();
    let (value, work) = compute();
    record_work(work, started.elapsed());
    if last_on_server() {
        note_server_model();
    }
    value
}

/// Runs a job on this backend's model with the current limits.
fn in_backend<T, F>(job: F) -> (T, Work)
where
    T: Send + 'static,
    F: FnOnce(&Embedder, &Limits, &dyn Fn() -> bool) -> qwen_embed_model::Result<(T, Work)> + Send + 'static,
{
    let model = model().1;
    let limits = settings::limits();
    execute(move |canceled| job(&model, &limits, canceled))
}

/// A NaN or infinity means broken weights: an ERROR beats storing a vector that poisons every distance.
pub fn check_finite(v: &[f32]) {
    if v.iter().any(|x| !x.is_finite()) {
        raise(Error::compute("the model produced non-finite values"));
    }
}

/// Embeds one text, answering repeated requests from the per-backend cache.
pub fn embed_one(text: &str, instruct: Option<&str>, dim: Option<i64>) -> Vec<f32> {
    embed_key(&ResultKey::current(text, instruct, dim))
}

/// Counts a result served without running the model.
pub fn record_hit() {
    stats::record(|s| {
        s.calls += 1;
        s.cache_hits += 1;
    });
}

/// The vector of a result key (made under the current settings), from the per-backend cache when it is there.
pub fn embed_key(cache_key: &ResultKey) -> Vec<f32> {
    let capacity = settings::CACHE_SIZE.get().max(0) as usize;
    let cacheable = capacity > 0 && cache_key.text.len() <= CACHEABLE_BYTES;
    if cacheable {
        if let Some(v) = STATE.with_borrow(|s| s.cache.map.get(cache_key).cloned()) {
            record_hit();
            return v;
        }
    }
    let v = embed_texts(vec![cache_key.text.clone()], cache_key.instruct.clone(), cache_key.dim).remove(0);
    if cacheable {
        STATE.with_borrow_mut(|s| {
            while s.cache.order.len() >= capacity {
                if let Some(old) = s.cache.order.pop_front() {
                    s.cache.map.remove(&old);
                }
            }
            s.cache.order.push_back(cache_key.clone());
            s.cache.map.insert(cache_key.clone(), v.clone());
        });
    }
    v
}

/// Token count of a text as the model sees it (instruction and closing token included), before any length limit.
pub fn count_tokens(text: &str, instruct: Option<&str>) -> usize {
    if on_server() {
        return server::client::count_tokens(text.to_string(), instruct.map(str::to_string));
    }
    let (_, model) = model();
    let ids = model.tokenizer().encode(&qwen_embed_model::format_input(text, instruct)).or_raise();
    ids.len()
}
