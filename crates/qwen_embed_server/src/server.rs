//! The model server: one model, every session's requests.
//!
//! Threads: the caller's thread accepts connections; each connection gets a thread that reads its one request,
//! tokenises it (off the compute path, as TEI does) and queues it, then waits for its vectors while watching the
//! socket, so a caller that goes away (cancel, timeout, a dead backend) has its request dropped before it is computed.
//! Two batch threads take work from the queue ([`crate::queue`]): one from small requests, one from large ones, so an
//! interactive query is computed next to a running bulk batch instead of behind it, and concurrent queries share
//! batches. Both run the encoder on one thread pool sized by the settings. A batch of async or backfill work pauses at
//! its next layer while a batch with interactive work computes, so a query gets the whole pool. A batch of several
//! requests that fails is computed again one request at a time, so a failure fails only the request it belongs to.

use std::collections::HashMap;
use std::io;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use qwen_embed_model::{format_input, Embedder, Error, LengthPolicy, Limits, Reranker, Weighting};

use crate::heap::{self, IdleTrim, IDLE};
use crate::protocol::{read_frame, write_frame, Cost, Job, Lengths, ModelSpec, Priority, Reply, Request, Status};
use crate::queue::{Full, Item, Lane, Queue};

/// How the server runs.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Encoder threads.
    pub threads: usize,
    /// Tokens per batch taken from the queue (the encoder packs each batch by length).
    pub batch_tokens: usize,
    /// Texts that may wait in the queue; more is refused at once.
    pub queue_limit: usize,
    /// Requests of at most this many tokens may use the interactive lane.
    pub small_tokens: usize,
}

/// How often waiting threads look at their caller's socket and at canceled requests.
const POLL: Duration = Duration::from_millis(20);
/// The longest a lower-priority batch waits at one layer boundary for interactive batches.
const MAX_PAUSE: Duration = Duration::from_millis(250);
/// Per-client request counts kept for the status.
const CLIENTS_KEPT: usize = 1024;

enum ModelState {
    Loading,
    Ready(Arc<Embedder>),
    Failed(Box<Reply>),
}

/// The reranker the server runs, loaded by the first request that needs it (most clusters never rerank).
pub struct RerankerSource {
    pub spec: ModelSpec,
    pub load: Box<dyn FnOnce() -> Result<Reranker, Error> + Send>,
}

enum RerankerState {
    NotLoaded(Option<Box<dyn FnOnce() -> Result<Reranker, Error> + Send>>),
    Ready(Arc<Reranker>),
    Failed(Box<Reply>),
}

/// A request being computed: its vectors as they arrive, and where to send them when all are there.
struct Collecting {
    /// Set when the request is given up (its caller left, or a batch with its sequences failed): the queue then drops
    /// the rest of its sequences.
    canceled: Arc<AtomicBool>,
    vectors: Vec<Option<Vec<f32>>>,
    missing: usize,
    dim: Option<i64>,
    cost: Cost,
    done: Sender<Reply>,
}

struct Shared {
    spec: ModelSpec,
    settings: Settings,
    model: Mutex<ModelState>,
    model_ready: Condvar,
    reranker_spec: Option<ModelSpec>,
    reranker: Mutex<RerankerState>,
    queue: Mutex<Queue>,
    work_waiting: Condvar,
    collecting: Mutex<HashMap<u64, Collecting>>,
    status: Mutex<Status>,
    clients: Mutex<HashMap<i32, u64>>,
    next_id: AtomicU64,
    /// Batches with interactive work computing now: lower-priority batches wait for none.
    interactive_computing: AtomicUsize,
    pool: rayon::ThreadPool,
    /// Batches and reranks running, and the trim of free memory once none has run for a while.
    idle: IdleTrim,
}

impl Shared {
    fn new(spec: ModelSpec, settings: Settings, reranker: Option<RerankerSource>) -> io::Result<Shared> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(settings.threads)
            .thread_name(|i| format!("qwen_embed-server-{i}"))
            .build()
            .map_err(io::Error::other)?;
        let status = Status {
            pid: std::process::id() as i32,
            model: spec.clone(),
            state: "loading".into(),
            threads: settings.threads,
            batch_tokens: settings.batch_tokens,
            queue_limit: settings.queue_limit,
            reranker: reranker.as_ref().map(|r| r.spec.clone()).unwrap_or_default(),
            reranker_state: if reranker.is_some() { "not loaded" } else { "" }.into(),
            ..Status::default()
        };
        let (reranker_spec, reranker) = match reranker {
            Some(r) => (Some(r.spec), RerankerState::NotLoaded(Some(r.load))),
            None => (None, RerankerState::NotLoaded(None)),
        };
        Ok(Shared {
            spec,
            settings,
            model: Mutex::new(ModelState::Loading),
            model_ready: Condvar::new(),
            reranker_spec,
            reranker: Mutex::new(reranker),
            queue: Mutex::new(Queue::new(settings.queue_limit)),
            work_waiting: Condvar::new(),
            collecting: Mutex::new(HashMap::new()),
            status: Mutex::new(status),
            clients: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            interactive_computing: AtomicUsize::new(0),
            pool,
            idle: IdleTrim::new(IDLE),
        })
    }
}

/// Serves requests on `listener` until the process ends. `load` loads the model (on a thread of its own: the server
/// answers status requests while it loads, and a failed load is every later request's error); the reranker, if
/// any, is loaded by the first rerank request.
pub fn serve(
    listener: UnixListener,
    spec: ModelSpec,
    settings: Settings,
    load: impl FnOnce() -> Result<Embedder, Error> + Send + 'static,
    reranker: Option<RerankerSource>,
) -> io::Result<()> {
    let shared = Arc::new(Shared::new(spec, settings, reranker)?);

    let loader = shared.clone();
    std::thread::Builder::new().name("qwen_embed-load".into()).spawn(move || {
        let started = Instant::now();
        let state = match loader.pool.install(load) {
            Ok(model) => {
                let mut s = lock(&loader.status);
                s.state = "ready".into();
                s.device = qwen_embed_model::device::device_name(model.device()).into();
                s.dtype = model.dtype().as_str().into();
                s.kernel = model.precision().kernel_name().into();
                s.load_ms = started.elapsed().as_secs_f64() * 1e3;
                ModelState::Ready(Arc::new(model))
            }
            Err(e) => {
                lock(&loader.status).state = format!("failed: {e}");
                ModelState::Failed(Box::new(failed(&e)))
            }
        };
        *lock(&loader.model) = state;
        loader.model_ready.notify_all();
    })?;

    let small_tokens = settings.small_tokens;
    for lane in [Lane::Interactive { small_tokens }, Lane::Bulk { small_tokens }] {
        let batcher = shared.clone();
        std::thread::Builder::new().name("qwen_embed-batch".into()).spawn(move || run_batches(&batcher, lane))?;
    }

    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let shared = shared.clone();
        std::thread::Builder::new().name("qwen_embed-conn".into()).spawn(move || {
            // An error here means the caller went away mid-message; there is nobody to tell.
            let _ = handle(&shared, conn);
        })?;
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks would be a bug in this file; keep serving rather than cascade.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn failed(e: &Error) -> Reply {
    Reply::Failed { kind: e.kind(), message: e.to_string(), hint: e.hint() }
}

/// True once the caller has closed its end (it sends nothing after its request, so readable means closed).
fn caller_gone(conn: &UnixStream) -> bool {
    let mut fd = libc::pollfd { fd: conn.as_raw_fd(), events: libc::POLLIN | libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd, a zero timeout.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready != 0
}

fn handle(shared: &Shared, mut conn: UnixStream) -> io::Result<()> {
    let request: Request = read_frame(&mut conn)?;
    {
        let mut clients = lock(&shared.clients);
        if clients.len() >= CLIENTS_KEPT && !clients.contains_key(&request.client) {
            clients.clear();
        }
        *clients.entry(request.client).or_default() += 1;
    }
    let reply = match request.job {
        Job::Status => Reply::Status(Box::new(status(shared))),
        Job::Rerank { .. } if shared.reranker_spec.as_ref() != Some(&request.model) => {
            Reply::OtherModel { serving: shared.reranker_spec.clone().unwrap_or_default() }
        }
        Job::Rerank { query, documents, instruct } => {
            lock(&shared.status).requests += 1;
            match rerank(shared, query, documents, instruct, request.lengths, &conn) {
                Some(reply) => reply,
                None => {
                    lock(&shared.status).canceled += 1;
                    return Ok(());
                }
            }
        }
        _ if request.model != shared.spec => Reply::OtherModel { serving: shared.spec.clone() },
        job => match wait_for_model(shared, &conn) {
            None => return Ok(()),
            Some(Err(reply)) => reply,
            Some(Ok(model)) => {
                lock(&shared.status).requests += 1;
                let reply = run_job(shared, &model, job, request.lengths, request.priority, &conn);
                match reply {
                    None => {
                        lock(&shared.status).canceled += 1;
                        return Ok(());
                    }
                    Some(reply) => reply,
                }
            }
        },
    };
    if matches!(reply, Reply::Failed { .. }) {
        lock(&shared.status).errors += 1;
    }
    match write_frame(&mut conn, &reply) {
        // A reply over the frame limit (the vectors of a huge document's chunks) is the caller's error to see, not a
        // connection that breaks as if the server had died.
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
            lock(&shared.status).errors += 1;
            let too_large = Reply::Failed {
                kind: qwen_embed_model::ErrorKind::TooLong,
                message: format!("qwen_embed: the reply is too large for the model server to send ({e})"),
                hint: Some("Send fewer or shorter texts in one call, or split the document.".into()),
            };
            write_frame(&mut conn, &too_large)
        }
        written => written,
    }
}

/// The reranker, loading it on first use (other rerank requests wait for the load); its load error otherwise.
fn reranker(shared: &Shared) -> Result<Arc<Reranker>, Reply> {
    let mut state = lock(&shared.reranker);
    if let RerankerState::NotLoaded(load) = &mut *state {
        let Some(load) = load.take() else {
            return Err(failed(&Error::Unsupported("this model server runs no reranker".into())));
        };
        let started = Instant::now();
        *state = match shared.pool.install(load) {
            Ok(r) => {
                lock(&shared.status).reranker_state =
                    format!("ready ({:.0} ms, {})", started.elapsed().as_secs_f64() * 1e3, r.precision().kernel_name());
                RerankerState::Ready(Arc::new(r))
            }
            Err(e) => {
                lock(&shared.status).reranker_state = format!("failed: {e}");
                RerankerState::Failed(Box::new(failed(&e)))
            }
        };
    }
    match &*state {
        RerankerState::Ready(r) => Ok(r.clone()),
        RerankerState::Failed(reply) => Err((**reply).clone()),
        RerankerState::NotLoaded(_) => unreachable!("loaded above"),
    }
}

/// Scores a rerank request on the server's pool (pairs of one request are batched together); None if the caller
/// left first.
fn rerank(
    shared: &Shared,
    query: String,
    documents: Vec<String>,
    instruct: Option<String>,
    lengths: Lengths,
    conn: &UnixStream,
) -> Option<Reply> {
    let reranker = match reranker(shared) {
        Ok(r) => r,
        Err(reply) => return Some(reply),
    };
    let _admitted = match Admitted::new(shared, documents.len()) {
        Ok(a) => a,
        Err(reply) => return Some(reply),
    };
    let limits = limits(shared, lengths);
    let docs: Vec<&str> = documents.iter().map(String::as_str).collect();
    let gone = || caller_gone(conn);
    let _working = shared.idle.working();
    match shared.pool.install(|| reranker.rerank(&query, &docs, instruct.as_deref(), &limits, &gone)) {
        Ok((scores, work)) => Some(Reply::Scores { scores, cost: cost(work) }),
        Err(Error::Canceled) => None,
        Err(e) => Some(failed(&e)),
    }
}

fn cost(w: qwen_embed_model::Work) -> Cost {
    Cost { texts: w.texts as u64, tokens: w.tokens as u64, forward_passes: w.forward_passes as u64 }
}

/// The loaded model, or the load's error; None if the caller left while it loaded.
fn wait_for_model(shared: &Shared, conn: &UnixStream) -> Option<Result<Arc<Embedder>, Reply>> {
    let mut state = lock(&shared.model);
    loop {
        match &*state {
            ModelState::Ready(m) => return Some(Ok(m.clone())),
            ModelState::Failed(reply) => return Some(Err((**reply).clone())),
            ModelState::Loading => {
                if caller_gone(conn) {
                    return None;
                }
                state = shared.model_ready.wait_timeout(state, POLL).unwrap_or_else(|p| p.into_inner()).0;
            }
        }
    }
}

fn limits(shared: &Shared, lengths: Lengths) -> Limits {
    Limits {
        max_length: lengths.max_length,
        policy: if lengths.truncate { LengthPolicy::Truncate } else { LengthPolicy::Error },
        batch_tokens: shared.settings.batch_tokens,
    }
}

/// Runs one job; None if the caller left first.
fn run_job(
    shared: &Shared,
    model: &Arc<Embedder>,
    job: Job,
    lengths: Lengths,
    priority: Priority,
    conn: &UnixStream,
) -> Option<Reply> {
    let limits = limits(shared, lengths);
    let gone = || caller_gone(conn);
    // Chunks and documents run outside the queue, admitted against its limit while they run.
    let _admitted = match &job {
        Job::Chunks { doc, chunk_tokens, overlap, .. } | Job::Document { doc, chunk_tokens, overlap, .. } => {
            match Admitted::new(shared, estimated_chunks(doc, *chunk_tokens, *overlap)) {
                Ok(admitted) => Some(admitted),
                Err(reply) => return Some(reply),
            }
        }
        _ => None,
    };
    let result = match job {
        Job::Status | Job::Rerank { .. } => unreachable!("answered before"),
        Job::Embed { texts, instruct, dim } => {
            return embed(shared, model, (texts, instruct, dim), priority, &limits, conn)
        }
        Job::CountTokens { text, instruct } => {
            model.tokenizer().encode(&format_input(&text, instruct.as_deref())).map(|ids| Reply::Count(ids.len()))
        }
        Job::Chunks { doc, chunk_tokens, overlap, dim } => shared
            .pool
            .install(|| model.embed_chunks(&doc, chunk_tokens, overlap, dim, &limits, &gone))
            .map(|(chunks, work)| Reply::Chunks {
                chunks: chunks.into_iter().map(|c| (c.range.start, c.range.end, c.embedding)).collect(),
                cost: cost(work),
            }),
        Job::Document { doc, chunk_tokens, overlap, weighting, dim } => weighting.parse::<Weighting>().and_then(|w| {
            shared
                .pool
                .install(|| model.embed_document(&doc, chunk_tokens, overlap, w, dim, &limits, &gone))
                .map(|(vector, work)| Reply::Vector { vector, cost: cost(work) })
        }),
    };
    match result {
        Err(Error::Canceled) => None,
        Err(e) => Some(failed(&e)),
        Ok(reply) => Some(reply),
    }
}

/// Tokenises, queues and waits for an embedding request; None if the caller left first.
fn embed(
    shared: &Shared,
    model: &Embedder,
    (texts, instruct, dim): (Vec<String>, Option<String>, Option<i64>),
    priority: Priority,
    limits: &Limits,
    conn: &UnixStream,
) -> Option<Reply> {
    if let Err(e) = model.truncate_to(Vec::new(), dim) {
        return Some(failed(&e));
    }
    // Refuse at once, before tokenising, what the queue cannot take now (checked again when queued).
    {
        let full = lock(&shared.queue).full_for(texts.len());
        if let Some(full) = full {
            return Some(overloaded(shared, full));
        }
    }
    let mut seqs = Vec::with_capacity(texts.len());
    for text in &texts {
        match model.tokenize(text, instruct.as_deref(), limits) {
            Ok(ids) => seqs.push(ids),
            Err(e) => return Some(failed(&e)),
        }
        if seqs.len() % 256 == 0 && caller_gone(conn) {
            return None;
        }
    }
    if seqs.is_empty() {
        return Some(Reply::Vectors { vectors: Vec::new(), cost: Cost::default() });
    }
    let (id, canceled, results) = match submit(shared, seqs, dim, priority) {
        Ok(submitted) => submitted,
        Err(reply) => return Some(reply),
    };
    loop {
        match results.recv_timeout(POLL) {
            Ok(reply) => return Some(reply),
            Err(RecvTimeoutError::Timeout) if caller_gone(conn) => {
                canceled.store(true, Ordering::Relaxed);
                lock(&shared.collecting).remove(&id);
                shared.work_waiting.notify_all();
                return None;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Some(failed(&Error::Compute(qwen_embed_model::candle::Error::Msg(
                    "the request was dropped by the server".into(),
                ))))
            }
        }
    }
}

/// Queues a request's token sequences for the batch threads: its id, its cancel flag and where its reply will come.
fn submit(
    shared: &Shared,
    seqs: Vec<Vec<u32>>,
    dim: Option<i64>,
    priority: Priority,
) -> Result<(u64, Arc<AtomicBool>, Receiver<Reply>), Reply> {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let canceled = Arc::new(AtomicBool::new(false));
    let (done, results) = channel();
    let cost = Cost { texts: seqs.len() as u64, tokens: seqs.iter().map(|s| s.len() as u64).sum(), forward_passes: 0 };
    lock(&shared.collecting).insert(
        id,
        Collecting {
            canceled: canceled.clone(),
            vectors: vec![None; seqs.len()],
            missing: seqs.len(),
            dim,
            cost,
            done,
        },
    );
    let pushed = lock(&shared.queue).push(id, priority, seqs, canceled.clone());
    if let Err(full) = pushed {
        lock(&shared.collecting).remove(&id);
        return Err(overloaded(shared, full));
    }
    shared.work_waiting.notify_all();
    Ok((id, canceled, results))
}

/// A batch thread: takes batches for its lane from the queue and computes them, until the process ends.
fn run_batches(shared: &Shared, lane: Lane) {
    let model = loop {
        let state = lock(&shared.model);
        match &*state {
            ModelState::Ready(m) => break m.clone(),
            ModelState::Failed(_) => return, // every request is answered with the error before it is queued
            ModelState::Loading => drop(shared.model_ready.wait(state)),
        }
    };
    loop {
        let batch = {
            let mut queue = lock(&shared.queue);
            loop {
                let dropped = queue.drop_canceled();
                if !dropped.is_empty() {
                    let mut collecting = lock(&shared.collecting);
                    dropped.iter().for_each(|id| drop(collecting.remove(id)));
                }
                let batch = queue.next_batch(shared.settings.batch_tokens, lane);
                if !batch.is_empty() {
                    break batch;
                }
                let timeout;
                (queue, timeout) = shared.work_waiting.wait_timeout(queue, POLL).unwrap_or_else(|p| p.into_inner());
                if timeout.timed_out() && queue.queued_texts() == 0 {
                    drop(queue); // the trim takes milliseconds: enqueuing goes on meanwhile
                    shared.idle.poll();
                    queue = lock(&shared.queue);
                }
            }
        };
        compute(shared, &model, batch);
    }
}

fn compute(shared: &Shared, model: &Embedder, batch: Vec<Item>) {
    let seqs: Vec<Vec<u32>> = batch.iter().map(|i| i.ids.clone()).collect();
    let requests: Vec<u64> = batch.iter().map(|i| i.request).collect();
    let interactive = batch.iter().any(|i| i.priority == Priority::Interactive);
    let _working = shared.idle.working();
    let _computing = interactive.then(|| Computing::start(&shared.interactive_computing));
    // Stop early only if every request in the batch is gone.
    let gone = || {
        let collecting = lock(&shared.collecting);
        requests.iter().all(|id| !collecting.contains_key(id))
    };
    // Called between layers and between each layer's attention and MLP: a batch without interactive work waits there
    // while one with it computes, at most MAX_PAUSE at a time, so that back-to-back queries slow lower-priority work
    // down but never stop it. It waits on a thread of the pool: that thread meanwhile runs the interactive batch's
    // tasks, so the query has the whole pool.
    let canceled = || {
        let paused = Instant::now();
        while !interactive
            && shared.interactive_computing.load(Ordering::Relaxed) > 0
            && paused.elapsed() < MAX_PAUSE
            && !gone()
        {
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        gone()
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        #[cfg(test)]
        tests::inject_fault(&seqs)?;
        shared.pool.install(|| model.embed_tokens(&seqs, shared.settings.batch_tokens, &canceled))
    }))
    .unwrap_or_else(|panic| {
        let what =
            panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
        Err(Error::Compute(qwen_embed_model::candle::Error::Msg(format!(
            "internal error in the encoder: {}",
            what.unwrap_or_else(|| "panic".into())
        ))))
    });
    {
        let mut s = lock(&shared.status);
        s.batches += 1;
        s.texts += seqs.len() as u64;
        let tokens: u64 = seqs.iter().map(|s| s.len() as u64).sum();
        s.tokens += tokens;
        s.max_batch_texts = s.max_batch_texts.max(seqs.len() as u64);
        s.max_batch_tokens = s.max_batch_tokens.max(tokens);
        s.max_text_tokens = s.max_text_tokens.max(seqs.iter().map(|s| s.len() as u64).max().unwrap_or(0));
    }
    // A batch of several requests that failed is computed again one request at a time: the failure (an input the
    // encoder rejects, memory for a pass too large) belongs to one of them, and the others must not pay for it.
    if matches!(result, Err(ref e) if !matches!(e, Error::Canceled)) {
        let mut alone: Vec<u64> = requests.clone();
        alone.sort_unstable();
        alone.dedup();
        if alone.len() > 1 {
            lock(&shared.status).batches_split += 1;
            drop(_computing);
            let mut batch = batch;
            for request in alone {
                let (own, rest) = batch.into_iter().partition(|i| i.request == request);
                batch = rest;
                compute(shared, model, own);
            }
            return;
        }
    }
    let mut collecting = lock(&shared.collecting);
    match result {
        Ok((vectors, work)) => {
            let mut counted: Vec<u64> = Vec::new();
            for (item, vector) in batch.into_iter().zip(vectors) {
                let Some(c) = collecting.get_mut(&item.request) else { continue };
                if !counted.contains(&item.request) {
                    c.cost.forward_passes += work.forward_passes as u64;
                    counted.push(item.request);
                }
                c.vectors[item.index] = Some(vector);
                c.missing -= 1;
                if c.missing == 0 {
                    let c = collecting.remove(&item.request).expect("present");
                    let vectors: Vec<Vec<f32>> = c.vectors.into_iter().map(|v| v.expect("complete")).collect();
                    let reply = match model.truncate_to(vectors, c.dim) {
                        Ok(vectors) => Reply::Vectors { vectors, cost: c.cost },
                        Err(e) => failed(&e),
                    };
                    let _ = c.done.send(reply);
                }
            }
        }
        Err(e) => {
            // Every request with a sequence in this batch fails, and the rest of its sequences leave the queue.
            let reply = failed(&e);
            for id in requests {
                if let Some(c) = collecting.remove(&id) {
                    c.canceled.store(true, Ordering::Relaxed);
                    let _ = c.done.send(reply.clone());
                }
            }
        }
    }
}

fn overloaded(shared: &Shared, full: Full) -> Reply {
    lock(&shared.status).rejected += 1;
    Reply::Overloaded { queued_texts: full.queued, limit: full.limit }
}

/// A job that runs outside the queue (rerank, chunks, a document), admitted against the queue's limit for as long
/// as it runs: `texts` count as queued texts do.
struct Admitted<'a> {
    shared: &'a Shared,
    texts: usize,
}

impl<'a> Admitted<'a> {
    fn new(shared: &'a Shared, texts: usize) -> Result<Self, Reply> {
        let reserved = lock(&shared.queue).reserve(texts);
        reserved.map(|()| Admitted { shared, texts }).map_err(|full| overloaded(shared, full))
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        lock(&self.shared.queue).release(self.texts);
    }
}

/// The chunks a document will make, estimated before tokenising (about 4 bytes a token), for admission.
fn estimated_chunks(doc: &str, chunk_tokens: usize, overlap: usize) -> usize {
    (doc.len() / 4).div_ceil(chunk_tokens.saturating_sub(overlap).max(1)).max(1)
}

/// Counts a batch with interactive work while it computes (to the end, even if it panics).
struct Computing<'a>(&'a AtomicUsize);

impl<'a> Computing<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Computing(count)
    }
}

impl Drop for Computing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn status(shared: &Shared) -> Status {
    let mut s = lock(&shared.status).clone();
    {
        let queue = lock(&shared.queue);
        s.queued_requests = queue.queued_requests();
        s.queued_texts = queue.queued_texts();
    }
    let mut clients: Vec<(i32, u64)> = lock(&shared.clients).iter().map(|(k, v)| (*k, *v)).collect();
    clients.sort();
    s.per_client = clients;
    s.heap_bytes_in_use = heap::in_use();
    s.idle_trims = shared.idle.trims();
    s
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use qwen_embed_model::{DType, Device};

    use super::*;

    /// A token id no model has: a batch holding it fails as an encoder failure would.
    const POISON: u32 = u32::MAX;

    /// The fault the tests inject into [`compute`] (compiled into the tests only).
    pub fn inject_fault(seqs: &[Vec<u32>]) -> Result<(), Error> {
        match seqs.iter().any(|s| s.contains(&POISON)) {
            true => Err(Error::Compute(qwen_embed_model::candle::Error::Msg("injected fault".into()))),
            false => Ok(()),
        }
    }

    fn tiny_model() -> Embedder {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-qwen3");
        Embedder::load(&dir, &Device::Cpu, DType::F32).unwrap()
    }

    #[test]
    fn a_failing_request_fails_alone_and_the_others_in_its_batch_get_their_vectors() {
        let settings = Settings { threads: 1, batch_tokens: 1024, queue_limit: 100, small_tokens: 512 };
        let shared = Shared::new(ModelSpec::default(), settings, None).unwrap();
        let model = tiny_model();
        let good_seqs = vec![vec![10, 11, 12], vec![13, 14]];
        let (good, _, good_reply) = submit(&shared, good_seqs.clone(), None, Priority::Interactive).unwrap();
        let (bad, _, bad_reply) = submit(&shared, vec![vec![15, POISON]], None, Priority::Interactive).unwrap();
        let (later, _, later_reply) = submit(&shared, vec![vec![16]], None, Priority::Interactive).unwrap();

        let batch = lock(&shared.queue).next_batch(1024, Lane::Any);
        for id in [good, bad, later] {
            assert!(batch.iter().any(|i| i.request == id), "the three requests share one batch");
        }
        compute(&shared, &model, batch);

        let alone = model.embed_tokens(&good_seqs, 1024, &|| false).unwrap().0;
        match good_reply.try_recv() {
            Ok(Reply::Vectors { vectors, .. }) => assert_eq!(vectors, alone),
            other => panic!("the good request got {other:?}"),
        }
        assert!(matches!(later_reply.try_recv(), Ok(Reply::Vectors { vectors, .. }) if vectors.len() == 1));
        match bad_reply.try_recv() {
            Ok(Reply::Failed { message, .. }) => assert!(message.contains("injected fault"), "{message}"),
            other => panic!("the bad request got {other:?}"),
        }
        assert_eq!(lock(&shared.status).batches_split, 1);
        assert!(lock(&shared.collecting).is_empty(), "every request was answered");
    }

    #[test]
    fn a_batch_thread_returns_the_free_memory_once_the_server_is_idle() {
        let settings = Settings { threads: 1, batch_tokens: 1024, queue_limit: 100, small_tokens: 512 };
        let shared: &'static Shared = Box::leak(Box::new(Shared::new(ModelSpec::default(), settings, None).unwrap()));
        *lock(&shared.model) = ModelState::Ready(Arc::new(tiny_model()));
        std::thread::spawn(|| run_batches(shared, Lane::Any));
        let (_, _, reply) = submit(shared, vec![vec![10, 11, 12]], None, Priority::Interactive).unwrap();
        assert!(matches!(reply.recv_timeout(Duration::from_secs(30)), Ok(Reply::Vectors { .. })));
        assert_eq!(status(shared).max_text_tokens, 3);
        let (answered, trims) = (Instant::now(), status(shared).idle_trims);
        while status(shared).idle_trims == trims {
            assert!(answered.elapsed() < IDLE * 5, "no trim {:?} after the last batch", answered.elapsed());
            std::thread::sleep(POLL);
        }
        // The batch's end starts the idle time (its reply goes out just before).
        assert!(answered.elapsed() >= IDLE - POLL, "trimmed {:?} after the last batch", answered.elapsed());
    }
}
