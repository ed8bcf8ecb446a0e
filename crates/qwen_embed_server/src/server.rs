//! The model server: one model (and its reranker), every session's requests.
//!
//! Threads: the caller's thread accepts connections; each connection gets a thread that reads its one request,
//! tokenises it (off the compute path, as TEI does: texts, a document's chunks, a rerank's query-document pairs) and
//! queues it, then waits for its outputs while watching the socket, so a caller that goes away (cancel, timeout, a dead
//! backend) has its request dropped before it is computed, and shapes the reply (Matryoshka cut, chunk ranges, a
//! document's mean, scores). Two batch threads take work from the queue ([`crate::queue`]): one from small requests,
//! one from large ones, so an interactive query is computed next to a running bulk batch instead of behind it, and
//! concurrent queries share batches. Both run the embedder or the reranker ([`crate::models`]) on one thread pool
//! sized by the settings.
//! A batch of large requests pauses at its next layer while a more urgent one computes ([`Urgency`]), so a query gets
//! the whole pool. A batch of several requests that fails is computed again one request at a time, so a failure fails
//! only the request it belongs to.

use std::collections::HashMap;
use std::io;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use qwen_embed_model::{document_vector, format_input, Chunk, Embedder, Error, Limits, Weighting};

use crate::heap::{self, IdleTrim, IDLE};
use crate::models::{Loaded, Models, RerankerSource};
use crate::protocol::{
    chunks_reply_size, read_frame, write_frame, Cost, Job, JobCounts, ModelSpec, Priority, Reply, Request, Status,
    MAX_FRAME,
};
use crate::queue::{Batch, Full, Lane, Model, Queue, Urgency};
use crate::sync::lock;

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
    pub pause: Pause,
}

impl Settings {
    /// The interactive lane's bound the extension runs with: a query or a small insert fits; a 50-candidate rerank
    /// does not (it is large interactive work, which bulk batches pause for).
    pub const SMALL_TOKENS: usize = 512;
}

/// How long a batch waits at one pause point (between layers, and between a layer's attention and MLP) while more
/// urgent batches compute ([`Urgency`]).
#[derive(Clone, Copy, Debug)]
pub struct Pause {
    /// At most this long at one point: under a continuous stream of queries, other work still advances a layer at a
    /// time.
    pub max: Duration,
    /// Once no more urgent batch computes, this long for the next one to start before going on: a session sending
    /// queries back to back has its next one computing within milliseconds, and a layer of bulk work started in
    /// between would share the cores with it.
    pub grace: Duration,
}

impl Pause {
    pub const DEFAULT: Pause = Pause { max: Duration::from_secs(1), grace: Duration::from_millis(20) };
}

/// How often waiting threads look at their caller's socket and at canceled requests.
const POLL: Duration = Duration::from_millis(20);
/// Per-client request counts kept for the status (pruned of exited clients when it is read).
const CLIENTS_KEPT: usize = 1024;

/// What the model computes for one sequence: an embedding's unit vector, or a rerank pair's score.
#[derive(Clone, Debug)]
enum Output {
    Vector(Vec<f32>),
    Score(f64),
}

impl Output {
    fn vector(self) -> Vec<f32> {
        match self {
            Output::Vector(v) => v,
            Output::Score(_) => unreachable!("an embedder request gets vectors"),
        }
    }

    fn score(self) -> f64 {
        match self {
            Output::Score(s) => s,
            Output::Vector(_) => unreachable!("a rerank request gets scores"),
        }
    }
}

/// A request's outputs in its order and what it cost, or the reply that says why there are none.
type Computed = Result<(Vec<Output>, Cost), Reply>;

/// A request being computed: its outputs as they arrive, and where to send them when all are there.
struct Collecting {
    /// Set when the request is given up (its caller left, or a batch with its sequences failed): the queue then drops
    /// the rest of its sequences.
    canceled: Arc<AtomicBool>,
    outputs: Vec<Option<Output>>,
    missing: usize,
    cost: Cost,
    done: Sender<Computed>,
}

struct Shared {
    settings: Settings,
    models: Models,
    queue: Mutex<Queue>,
    work_waiting: Condvar,
    collecting: Mutex<HashMap<u64, Collecting>>,
    status: Mutex<Status>,
    clients: Mutex<HashMap<i32, u64>>,
    next_id: AtomicU64,
    /// Batches computing now, per [`Urgency`]: a batch pauses while one of higher urgency computes.
    computing: [AtomicUsize; 3],
    /// Texts in the batches computing now.
    computing_texts: AtomicUsize,
    /// Batches waiting at a pause point now.
    pausing: AtomicUsize,
    pool: rayon::ThreadPool,
    /// Batches running, and the trim of free memory once none has run for a while.
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
            threads: settings.threads,
            batch_tokens: settings.batch_tokens,
            queue_limit: settings.queue_limit,
            jobs: Job::KINDS.iter().map(|&kind| JobCounts { kind: kind.into(), ..JobCounts::default() }).collect(),
            ..Status::default()
        };
        Ok(Shared {
            settings,
            models: Models::new(spec, reranker),
            queue: Mutex::new(Queue::new(settings.queue_limit)),
            work_waiting: Condvar::new(),
            collecting: Mutex::new(HashMap::new()),
            status: Mutex::new(status),
            clients: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            computing: Default::default(),
            computing_texts: AtomicUsize::new(0),
            pausing: AtomicUsize::new(0),
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
    std::thread::Builder::new()
        .name("qwen_embed-load".into())
        .spawn(move || loader.models.load_embedder(&loader.pool, load))?;

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

/// A reply over the frame limit (only a document's chunks, with their vectors, come near it): the caller's ERROR
/// 54000, not a connection that breaks as if the server had died.
fn too_large(what: String) -> Reply {
    Reply::Failed {
        kind: qwen_embed_model::ErrorKind::TooLong,
        message: format!("{what}: too large a reply for the model server (at most {MAX_FRAME} bytes)"),
        hint: Some("Use longer chunks (chunk_tokens), fewer dimensions (dim), or embed the document in parts.".into()),
    }
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
    let Some(kind) = request.job.kind() else {
        return write_frame(&mut conn, &Reply::Status(Box::new(status(shared))));
    };
    {
        let mut s = lock(&shared.status);
        s.requests += 1;
        s.priorities[request.priority as usize] += 1;
    }
    count(shared, kind, |c| c.requests += 1);
    let reply = match answer(shared, request, &conn) {
        Ok(reply) => reply,
        Err(Ended::Reply(reply)) => reply,
        Err(Ended::CallerLeft) => {
            lock(&shared.status).canceled += 1;
            count(shared, kind, |c| c.canceled += 1);
            return Ok(());
        }
    };
    match &reply {
        Reply::Failed { .. } => lock(&shared.status).errors += 1,
        Reply::Vectors { cost, .. }
        | Reply::Chunks { cost, .. }
        | Reply::Vector { cost, .. }
        | Reply::Scores { cost, .. } => {
            count(shared, kind, |c| (c.texts, c.tokens) = (c.texts + cost.texts, c.tokens + cost.tokens))
        }
        _ => {}
    }
    match write_frame(&mut conn, &reply) {
        // A reply over the frame limit (the vectors of a huge document's chunks) is the caller's error to see, not a
        // connection that breaks as if the server had died.
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
            lock(&shared.status).errors += 1;
            write_frame(&mut conn, &too_large(format!("the reply ({e})")))
        }
        written => written,
    }
}

/// Adds to the counters of one kind of job.
fn count(shared: &Shared, kind: &str, add: impl FnOnce(&mut JobCounts)) {
    let mut s = lock(&shared.status);
    if let Some(c) = s.jobs.iter_mut().find(|c| c.kind == kind) {
        add(c);
    }
}

/// How a request ends without its result.
enum Ended {
    /// Its caller left: there is nobody to answer.
    CallerLeft,
    /// Another answer: an error, another model, a full queue.
    Reply(Reply),
}

impl From<Error> for Ended {
    fn from(e: Error) -> Self {
        match e {
            Error::Canceled => Ended::CallerLeft,
            e => Ended::Reply(Reply::failed(&e)),
        }
    }
}

/// Answers one request: tokenised here, computed through the queue (every kind of job but counting tokens), and
/// shaped into its reply when its sequences are all back.
fn answer(shared: &Shared, request: Request, conn: &UnixStream) -> Result<Reply, Ended> {
    let Request { priority, model: spec, lengths, job, .. } = request;
    let limits = lengths.limits(shared.settings.batch_tokens);
    if let Job::Rerank { query, documents, instruct } = job {
        let serving = &shared.models.reranker_spec;
        if serving.as_ref() != Some(&spec) {
            return Err(Ended::Reply(Reply::OtherModel { serving: serving.clone().unwrap_or_default() }));
        }
        let reranker = shared.models.reranker(&shared.pool).map_err(Ended::Reply)?;
        refuse_if_full(shared, documents.len())?;
        let seqs = tokenize_all(&documents, conn, |doc| reranker.tokenize(&query, doc, instruct.as_deref(), &limits))?;
        let (outputs, cost) = queued(shared, (priority, Model::Reranker), seqs, conn)?;
        return Ok(Reply::Scores { scores: outputs.into_iter().map(Output::score).collect(), cost });
    }
    if spec != shared.models.spec {
        return Err(Ended::Reply(Reply::OtherModel { serving: shared.models.spec.clone() }));
    }
    let model = match shared.models.wait_for_embedder(POLL, || caller_gone(conn)) {
        Some(loaded) => loaded.map_err(Ended::Reply)?,
        None => return Err(Ended::CallerLeft),
    };
    match job {
        Job::Status | Job::Rerank { .. } => unreachable!("answered before"),
        Job::CountTokens { text, instruct } => {
            Ok(Reply::Count(model.tokenizer().encode(&format_input(&text, instruct.as_deref()))?.len()))
        }
        Job::Embed { texts, instruct, dim } => {
            model.dims(dim)?; // a bad dim fails before anything is computed
            refuse_if_full(shared, texts.len())?;
            let seqs = tokenize_all(&texts, conn, |text| model.tokenize(text, instruct.as_deref(), &limits))?;
            let (outputs, cost) = queued(shared, (priority, Model::Embedder), seqs, conn)?;
            let vectors = model.truncate_to(outputs.into_iter().map(Output::vector).collect(), dim)?;
            Ok(Reply::Vectors { vectors, cost })
        }
        Job::Chunks { doc, chunk_tokens, overlap, dim } => {
            let args = (doc.as_str(), chunk_tokens, overlap, dim);
            let (chunks, cost) = chunked(shared, &model, args, priority, &limits, conn, Answer::EachChunk)?;
            let chunks = chunks.into_iter().map(|c| (c.range.start, c.range.end, c.embedding)).collect();
            Ok(Reply::Chunks { chunks, cost })
        }
        Job::Document { doc, chunk_tokens, overlap, weighting, dim } => {
            let weighting = weighting.parse::<Weighting>()?;
            let args = (doc.as_str(), chunk_tokens, overlap, dim);
            let (chunks, cost) = chunked(shared, &model, args, priority, &limits, conn, Answer::Pooled)?;
            Ok(Reply::Vector { vector: document_vector(&chunks, weighting), cost })
        }
    }
}

/// What a document's reply holds: every chunk's vector (`embed_chunks`), or one vector for the whole
/// (`embed_document`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    EachChunk,
    Pooled,
}

/// A document's chunks, their vectors computed through the queue. They are bulk work: a session waiting for a
/// document larger than the interactive lane takes has it computed in the async class, where it yields to queries
/// (a small one keeps the caller's priority).
fn chunked(
    shared: &Shared,
    model: &Embedder,
    (doc, chunk_tokens, overlap, dim): (&str, usize, usize, Option<i64>),
    priority: Priority,
    limits: &Limits,
    conn: &UnixStream,
    answer: Answer,
) -> Result<(Vec<Chunk>, Cost), Ended> {
    let dims = model.dims(dim)?.unwrap_or(model.config().hidden_size);
    refuse_if_full(shared, estimated_chunks(doc, chunk_tokens, overlap))?;
    let plan = model.chunk_document(doc, chunk_tokens, overlap, limits)?;
    if answer == Answer::EachChunk {
        let reply_size = chunks_reply_size(plan.len(), dims);
        if reply_size > MAX_FRAME as u64 {
            let what = format!("the vectors of {} chunks of {dims} dimensions, {reply_size} bytes", plan.len());
            return Err(Ended::Reply(too_large(what)));
        }
    }
    let seqs: Vec<Vec<u32>> = plan.iter().map(|(_, ids)| ids.clone()).collect();
    let tokens: usize = seqs.iter().map(Vec::len).sum();
    let priority = if priority == Priority::Interactive && tokens > shared.settings.small_tokens {
        Priority::Async
    } else {
        priority
    };
    let (outputs, cost) = queued(shared, (priority, Model::Embedder), seqs, conn)?;
    Ok((model.chunks(plan, outputs.into_iter().map(Output::vector).collect(), dim)?, cost))
}

/// Token ids of each input, checking every 256 inputs that the caller is still there (tokenising thousands of long
/// texts takes seconds).
fn tokenize_all(
    inputs: &[String],
    conn: &UnixStream,
    tokenize: impl Fn(&str) -> Result<Vec<u32>, Error>,
) -> Result<Vec<Vec<u32>>, Ended> {
    let mut seqs = Vec::with_capacity(inputs.len());
    for input in inputs {
        seqs.push(tokenize(input)?);
        if seqs.len() % 256 == 0 && caller_gone(conn) {
            return Err(Ended::CallerLeft);
        }
    }
    Ok(seqs)
}

/// Refuses at once, before tokenising, what the queue cannot take now (checked again when queued).
fn refuse_if_full(shared: &Shared, texts: usize) -> Result<(), Ended> {
    let full = lock(&shared.queue).full_for(texts);
    full.map_or(Ok(()), |full| Err(Ended::Reply(overloaded(shared, full))))
}

/// Computes a request's sequences through the queue and waits for them, watching the caller: one that leaves has
/// its sequences dropped from the queue and from the batches that hold them.
fn queued(
    shared: &Shared,
    class: (Priority, Model),
    seqs: Vec<Vec<u32>>,
    conn: &UnixStream,
) -> Result<(Vec<Output>, Cost), Ended> {
    if seqs.is_empty() {
        return Ok((Vec::new(), Cost::default()));
    }
    let (id, canceled, results) = submit(shared, seqs, class).map_err(Ended::Reply)?;
    loop {
        match results.recv_timeout(POLL) {
            Ok(result) => return result.map_err(Ended::Reply),
            Err(RecvTimeoutError::Timeout) if caller_gone(conn) => {
                canceled.store(true, Ordering::Relaxed);
                lock(&shared.collecting).remove(&id);
                shared.work_waiting.notify_all();
                return Err(Ended::CallerLeft);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Error::compute("the request was dropped by the server").into())
            }
        }
    }
}

/// Queues a request's token sequences for the batch threads: its id, its cancel flag and where its result will come.
fn submit(
    shared: &Shared,
    seqs: Vec<Vec<u32>>,
    class: (Priority, Model),
) -> Result<(u64, Arc<AtomicBool>, Receiver<Computed>), Reply> {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let canceled = Arc::new(AtomicBool::new(false));
    let (done, results) = channel();
    let cost = Cost { texts: seqs.len() as u64, tokens: seqs.iter().map(|s| s.len() as u64).sum(), forward_passes: 0 };
    lock(&shared.collecting).insert(
        id,
        Collecting { canceled: canceled.clone(), outputs: vec![None; seqs.len()], missing: seqs.len(), cost, done },
    );
    let pushed = lock(&shared.queue).push(id, class, seqs, canceled.clone());
    if let Err(full) = pushed {
        lock(&shared.collecting).remove(&id);
        return Err(overloaded(shared, full));
    }
    shared.work_waiting.notify_all();
    Ok((id, canceled, results))
}

/// A batch thread: takes batches for its lane from the queue and computes them, until the process ends.
fn run_batches(shared: &Shared, lane: Lane) {
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
        compute(shared, batch);
    }
}

fn compute(shared: &Shared, batch: Batch) {
    let seqs: Vec<Vec<u32>> = batch.items.iter().map(|i| i.ids.clone()).collect();
    let requests: Vec<u64> = batch.items.iter().map(|i| i.request).collect();
    let urgency = batch.urgency();
    let _working = shared.idle.working();
    let computing =
        (Gauge::add(&shared.computing[urgency as usize], 1), Gauge::add(&shared.computing_texts, seqs.len()));
    // Stop early only if every request in the batch is gone.
    let gone = || {
        let collecting = lock(&shared.collecting);
        requests.iter().all(|id| !collecting.contains_key(id))
    };
    // Called between layers and between each layer's attention and MLP: a batch of large requests waits there while
    // one of higher urgency computes (see `Pause`), so that queries slow other work down but never stop it. It waits
    // on a thread of the pool: that thread meanwhile runs the other batch's tasks, so the query has the whole pool.
    let may_pause = batch.may_pause();
    let outranked = || {
        may_pause
            && Urgency::ALL.iter().any(|&u| u > urgency && shared.computing[u as usize].load(Ordering::Relaxed) > 0)
    };
    let pauses = AtomicU64::new(0);
    let Pause { max, grace } = shared.settings.pause;
    let canceled = || {
        if !outranked() {
            return gone();
        }
        pauses.fetch_add(1, Ordering::Relaxed);
        let _pausing = Gauge::add(&shared.pausing, 1);
        let paused = Instant::now();
        let mut clear_since: Option<Instant> = None;
        while paused.elapsed() < max && !gone() {
            if outranked() {
                clear_since = None;
            } else if clear_since.get_or_insert_with(Instant::now).elapsed() >= grace {
                break;
            }
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        gone()
    };
    let batch_tokens = shared.settings.batch_tokens;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        #[cfg(test)]
        tests::inject_fault(&seqs)?;
        shared.pool.install(|| match shared.models.loaded(batch.model) {
            Loaded::Embedder(m) => m
                .embed_tokens(&seqs, batch_tokens, &canceled)
                .map(|(vectors, work)| (vectors.into_iter().map(Output::Vector).collect::<Vec<_>>(), work)),
            Loaded::Reranker(r) => r
                .score_tokens(&seqs, batch_tokens, &canceled)
                .map(|(scores, work)| (scores.into_iter().map(Output::Score).collect(), work)),
        })
    }))
    .unwrap_or_else(|panic| Err(Error::from_panic(panic.as_ref())));
    {
        let mut s = lock(&shared.status);
        s.batches += 1;
        s.reranker_batches += u64::from(batch.model == Model::Reranker);
        s.pauses += pauses.load(Ordering::Relaxed);
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
            drop(computing);
            let Batch { model, lane, mut items } = batch;
            for request in alone {
                let (own, rest) = items.into_iter().partition(|i| i.request == request);
                items = rest;
                compute(shared, Batch { model, lane, items: own });
            }
            return;
        }
    }
    let mut collecting = lock(&shared.collecting);
    match result {
        Ok((outputs, work)) => {
            let mut counted: Vec<u64> = Vec::new();
            for (item, output) in batch.items.into_iter().zip(outputs) {
                let Some(c) = collecting.get_mut(&item.request) else { continue };
                if !counted.contains(&item.request) {
                    c.cost.forward_passes += work.forward_passes as u64;
                    counted.push(item.request);
                }
                c.outputs[item.index] = Some(output);
                c.missing -= 1;
                if c.missing == 0 {
                    let c = collecting.remove(&item.request).expect("present");
                    let outputs = c.outputs.into_iter().map(|o| o.expect("complete")).collect();
                    let _ = c.done.send(Ok((outputs, c.cost)));
                }
            }
        }
        Err(e) => {
            // Every request with a sequence in this batch fails, and the rest of its sequences leave the queue.
            let reply = Reply::failed(&e);
            for id in requests {
                if let Some(c) = collecting.remove(&id) {
                    c.canceled.store(true, Ordering::Relaxed);
                    let _ = c.done.send(Err(reply.clone()));
                }
            }
        }
    }
}

fn overloaded(shared: &Shared, full: Full) -> Reply {
    lock(&shared.status).rejected += 1;
    Reply::Overloaded { queued_texts: full.queued, limit: full.limit }
}

/// The chunks a document will make, estimated before tokenising (about 4 bytes a token), for refusing at once when
/// the queue is full.
fn estimated_chunks(doc: &str, chunk_tokens: usize, overlap: usize) -> usize {
    (doc.len() / 4).div_ceil(chunk_tokens.saturating_sub(overlap).max(1)).max(1)
}

/// Adds to a gauge while a batch computes or pauses, and takes it back at the end, even if the batch panics.
struct Gauge<'a>(&'a AtomicUsize, usize);

impl<'a> Gauge<'a> {
    fn add(gauge: &'a AtomicUsize, n: usize) -> Self {
        gauge.fetch_add(n, Ordering::Relaxed);
        Gauge(gauge, n)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

fn status(shared: &Shared) -> Status {
    let mut s = lock(&shared.status).clone();
    shared.models.show(&mut s);
    {
        let queue = lock(&shared.queue);
        s.queued_requests = queue.queued_requests();
        s.queued_texts = queue.queued_texts();
    }
    s.computing_texts = shared.computing_texts.load(Ordering::Relaxed);
    let mut clients: Vec<(i32, u64)> = {
        let mut kept = lock(&shared.clients);
        // Backends come and go (one per connection): the status shows those still running, not every pid seen.
        kept.retain(|&pid, _| process_exists(pid));
        kept.iter().map(|(k, v)| (*k, *v)).collect()
    };
    clients.sort();
    s.per_client = clients;
    s.heap_bytes_in_use = heap::in_use();
    s.idle_trims = shared.idle.trims();
    s
}

/// Whether a process with this pid exists (possibly another user's: EPERM).
fn process_exists(pid: i32) -> bool {
    // SAFETY: signal 0 sends nothing; kill only checks that the pid names a process we could signal.
    pid > 0 && (unsafe { libc::kill(pid, 0) } == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use qwen_embed_model::{DType, Device, Reranker};

    use super::*;

    /// A token id no model has: a batch holding it fails as an encoder failure would.
    const POISON: u32 = u32::MAX;

    /// The fault the tests inject into [`compute`] (compiled into the tests only).
    pub fn inject_fault(seqs: &[Vec<u32>]) -> Result<(), Error> {
        match seqs.iter().any(|s| s.contains(&POISON)) {
            true => Err(Error::compute("injected fault")),
            false => Ok(()),
        }
    }

    fn tiny_model() -> Embedder {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-qwen3");
        Embedder::load(&dir, &Device::Cpu, DType::F32).unwrap()
    }

    /// A server's shared state with the tiny embedder (and reranker) loaded, and no thread running.
    fn loaded_shared() -> Shared {
        let pause = Pause { max: Duration::from_millis(100), grace: Duration::from_millis(20) };
        let settings =
            Settings { threads: 1, batch_tokens: 1024, queue_limit: 100, small_tokens: Settings::SMALL_TOKENS, pause };
        let mut shared = Shared::new(ModelSpec::default(), settings, None).unwrap();
        shared.models = Models::ready(ModelSpec::default(), tiny_model(), tiny_reranker());
        shared
    }

    fn tiny_reranker() -> Reranker {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-qwen3-reranker");
        Reranker::load(&dir, &Device::Cpu, DType::F32).unwrap()
    }

    /// A lane that takes every request.
    const ANY: Lane = Lane::Interactive { small_tokens: usize::MAX };

    const QUERY: (Priority, Model) = (Priority::Interactive, Model::Embedder);

    fn vectors(result: Result<Computed, std::sync::mpsc::TryRecvError>) -> Vec<Vec<f32>> {
        match result {
            Ok(Ok((outputs, _))) => outputs.into_iter().map(Output::vector).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failing_request_fails_alone_and_the_others_in_its_batch_get_their_vectors() {
        let shared = loaded_shared();
        let model = tiny_model();
        let good_seqs = vec![vec![10, 11, 12], vec![13, 14]];
        let (good, _, good_reply) = submit(&shared, good_seqs.clone(), QUERY).unwrap();
        let (bad, _, bad_reply) = submit(&shared, vec![vec![15, POISON]], QUERY).unwrap();
        let (later, _, later_reply) = submit(&shared, vec![vec![16]], QUERY).unwrap();

        let batch = lock(&shared.queue).next_batch(1024, ANY);
        for id in [good, bad, later] {
            assert!(batch.items.iter().any(|i| i.request == id), "the three requests share one batch");
        }
        compute(&shared, batch);

        let alone = model.embed_tokens(&good_seqs, 1024, &|| false).unwrap().0;
        assert_eq!(vectors(good_reply.try_recv()), alone);
        assert_eq!(vectors(later_reply.try_recv()).len(), 1);
        match bad_reply.try_recv() {
            Ok(Err(Reply::Failed { message, .. })) => assert!(message.contains("injected fault"), "{message}"),
            other => panic!("the bad request got {other:?}"),
        }
        assert_eq!(lock(&shared.status).batches_split, 1);
        assert!(lock(&shared.collecting).is_empty(), "every request was answered");
    }

    #[test]
    fn rerank_pairs_of_several_requests_share_a_reranker_batch_and_score_as_alone() {
        let shared = loaded_shared();
        let reranker = tiny_reranker();
        let limits = Limits::default();
        let pairs = |query: &str, docs: &[&str]| -> Vec<Vec<u32>> {
            docs.iter().map(|d| reranker.tokenize(query, d, None, &limits).unwrap()).collect()
        };
        let first = pairs("capital of China?", &["Beijing is the capital of China.", "Gravity pulls."]);
        let second = pairs("what pulls?", &["Gravity pulls.", "", "Paris"]);
        let (_, _, first_reply) = submit(&shared, first.clone(), (Priority::Interactive, Model::Reranker)).unwrap();
        let (_, _, second_reply) = submit(&shared, second.clone(), (Priority::Async, Model::Reranker)).unwrap();
        let (_, _, query_reply) = submit(&shared, vec![vec![10, 11]], QUERY).unwrap();
        // The embedder's query first (the reranker's turn comes next), then both rerank requests in one batch.
        let batch = lock(&shared.queue).next_batch(1024, ANY);
        assert_eq!((batch.model, batch.items.len()), (Model::Embedder, 1));
        compute(&shared, batch);
        let batch = lock(&shared.queue).next_batch(1024, ANY);
        assert_eq!((batch.model, batch.items.len()), (Model::Reranker, 5));
        compute(&shared, batch);
        assert_eq!(vectors(query_reply.try_recv()).len(), 1);
        for (reply, seqs) in [(first_reply, first), (second_reply, second)] {
            let Ok(Ok((outputs, cost))) = reply.try_recv() else { panic!("no scores") };
            let scores: Vec<f64> = outputs.into_iter().map(Output::score).collect();
            assert_eq!(scores, reranker.score_tokens(&seqs, 1024, &|| false).unwrap().0);
            assert_eq!((cost.texts, cost.forward_passes), (seqs.len() as u64, 1));
        }
        let s = lock(&shared.status).clone();
        assert_eq!((s.batches, s.reranker_batches), (2, 1));
    }

    #[test]
    fn a_batch_pauses_at_its_layers_only_while_a_more_urgent_one_computes() {
        let shared = &loaded_shared();
        let Pause { max, grace } = shared.settings.pause;
        let large = Lane::Bulk { small_tokens: 1 };
        // Computes one request of `class` in `lane` while a batch of `busy` urgency computes, from the request's
        // first pause on for `hold` or until it finishes: the pauses it made and how long it took.
        let run = |class: (Priority, Model), lane: Lane, busy: Option<Urgency>, hold: Duration| {
            let (_, _, reply) = submit(shared, vec![vec![10, 11, 12]], class).unwrap();
            let before = lock(&shared.status).pauses;
            let started = Instant::now();
            let (finished, done) = channel::<()>();
            std::thread::scope(|scope| {
                let busy = busy.map(|u| Gauge::add(&shared.computing[u as usize], 1));
                scope.spawn(move || {
                    while shared.pausing.load(Ordering::Relaxed) == 0
                        && done.try_recv() != Err(std::sync::mpsc::TryRecvError::Disconnected)
                    {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    let _ = done.recv_timeout(hold);
                    drop(busy);
                });
                compute(shared, lock(&shared.queue).next_batch(1024, lane));
                drop(finished);
            });
            assert!(reply.try_recv().unwrap().is_ok());
            (lock(&shared.status).pauses - before, started.elapsed())
        };
        // A large interactive request (a 50-candidate rerank) while a query computes for longer than the longest
        // pause: it waits at every point (before the pass, before each of the 3 layers, between each one's attention
        // and MLP), at most `max` at each, and still finishes.
        let (pauses, took) = run(QUERY, large, Some(Urgency::Query), max * 20);
        assert_eq!(pauses, 7);
        assert!(took >= max * 7, "{took:?}");
        // While a query computes for a while: one pause, until it ends and the grace after it has passed.
        let (pauses, took) = run(QUERY, large, Some(Urgency::Query), max / 2);
        assert_eq!(pauses, 1);
        assert!(took >= max / 2 + grace, "{took:?}");
        assert_eq!(shared.pausing.load(Ordering::Relaxed), 0);
        // Async work waits for a large interactive batch; a query waits for nothing; nothing waits for less urgent
        // work; and nothing in the small requests' lane waits (queries may be queued behind it there).
        let background = (Priority::Async, Model::Embedder);
        assert_eq!(run(background, large, Some(Urgency::LargeInteractive), max * 20).0, 7);
        for (class, lane, busy) in [
            (background, ANY, Some(Urgency::LargeInteractive)),
            (background, ANY, Some(Urgency::Query)),
            (QUERY, ANY, Some(Urgency::LargeInteractive)),
            (QUERY, ANY, Some(Urgency::Query)),
            (QUERY, large, Some(Urgency::Background)),
            (QUERY, large, None),
        ] {
            assert_eq!(run(class, lane, busy, max * 20).0, 0, "{class:?} {lane:?} {busy:?}");
        }
    }

    #[test]
    fn a_batch_thread_returns_the_free_memory_once_the_server_is_idle() {
        let shared: &'static Shared = Box::leak(Box::new(loaded_shared()));
        // Queued before the batch thread starts, so that it finds work at once and cannot trim before it.
        let submitted = Instant::now();
        let (_, _, reply) = submit(shared, vec![vec![10, 11, 12]], QUERY).unwrap();
        std::thread::spawn(|| run_batches(shared, ANY));
        assert!(matches!(reply.recv_timeout(Duration::from_secs(30)), Ok(Ok(_))));
        assert_eq!(status(shared).max_text_tokens, 3);
        while status(shared).idle_trims == 0 {
            assert!(submitted.elapsed() < Duration::from_secs(30), "no trim after the batch");
            std::thread::sleep(POLL);
        }
        // The batch's end (after its submission) starts the idle time.
        assert!(submitted.elapsed() >= IDLE, "trimmed {:?} after the submission", submitted.elapsed());
        assert_eq!(status(shared).idle_trims, 1, "one trim per idle period");
    }
}
