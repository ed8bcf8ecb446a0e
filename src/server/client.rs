//! The backend side of the model server: whether this session's work goes there, and the calls that send it.
//!
//! A session uses the server when qwen_embed is preloaded, `qwen_embed.server` is on, and the session asks for the
//! model the server runs (the cluster's `model_path`, `device` and `dtype`). A superuser session that sets another
//! model runs that one in its own backend, as every session does without preloading (`route`).
//!
//! Waiting never blocks interrupts: the client checks for them every 10 ms, and a statement_timeout, cancel or
//! terminate raises its ERROR there, which closes the connection; the server then drops the request unless it is
//! already being computed.

use std::path::Path;
use std::time::{Duration, Instant};

use pgrx::PgSqlErrorCode;
use qwen_embed_model::Work;
use qwen_embed_server::client::{call, CallError};
use qwen_embed_server::protocol::{Cost, Job, Lengths, ModelSpec, Reply, Request, Status};

use crate::postgres::errors::{raise_kind, raise_with};
use crate::postgres::{backend, settings, stats};
use crate::server::supervisor;

/// Does the model server serve this session's model?
pub fn serves_this_session() -> bool {
    server_spec().is_some()
}

/// The model this session's requests name to the server, or None when the session runs its model in its own backend.
///
/// The cluster's model (taken from the configuration, not chosen by the session) always goes to the server, even while
/// it differs from what the server runs: after `ALTER SYSTEM` and `pg_reload_conf()` a session may read the new
/// setting before the supervisor has restarted the server with it, and it then waits for that server
/// (`server_wait`) instead of loading a private copy of the model in its backend. A model the session chose itself
/// goes to the server when it is the server's model, however it is spelled (`dtype = 'auto'` or what `auto` means
/// here, a path with a trailing slash or through a symlink).
fn server_spec() -> Option<ModelSpec> {
    if !settings::SERVER.get() {
        return None;
    }
    let (serving, ..) = supervisor::published()?;
    let mine = settings::model_spec();
    if mine == serving || !settings::model_chosen_by_session() {
        return Some(mine);
    }
    same_model(&mine, &serving).then_some(serving)
}

/// Do two model settings name the same model on the same device in the same dtype?
fn same_model(a: &ModelSpec, b: &ModelSpec) -> bool {
    let path = |p: &str| std::fs::canonicalize(p).unwrap_or_else(|_| p.into());
    let (Ok((da, ta)), Ok((db, tb))) = (a.placement(), b.placement()) else { return false };
    path(&a.path) == path(&b.path) && da.same_device(&db) && ta == tb
}

fn lengths() -> Lengths {
    Lengths::of(&settings::limits())
}

fn work(cost: Cost) -> Work {
    Work { texts: cost.texts as usize, tokens: cost.tokens as usize, forward_passes: cost.forward_passes as usize }
}

/// Sends a job to the server and waits for its reply; every failure is an ERROR (never returns one).
fn request(job: Job) -> Reply {
    request_for(server_spec().unwrap_or_else(settings::model_spec), job)
}

/// [`request`] for a job on another of the server's models (the reranker).
fn request_for(model: ModelSpec, job: Job) -> Reply {
    let request =
        Request { client: backend::pid(), priority: settings::PRIORITY.get().into(), model, lengths: lengths(), job };
    let wait = Duration::from_millis(settings::SERVER_WAIT.get().max(0) as u64);
    let mut started = Instant::now();
    let mut resent = false;
    loop {
        let server = server_pid();
        match call(Path::new(supervisor::SOCKET), &request, interrupts) {
            Ok(Reply::Failed { kind, message, hint }) => {
                stats::record(|s| s.errors += 1);
                raise_kind(kind, &message, hint)
            }
            Ok(Reply::Overloaded { queued_texts, limit }) => {
                stats::record(|s| s.errors += 1);
                raise_with(
                    PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                    format!("qwen_embed: the model server is overloaded: {queued_texts} texts wait in its queue, the limit is {limit}"),
                    Some("Retry later, send fewer texts at once, or raise qwen_embed.server_queue_limit.".into()),
                )
            }
            // Starting, restarting, or still running the model from before a settings change: wait for it.
            Ok(Reply::OtherModel { .. }) | Err(CallError::Unavailable(_)) if started.elapsed() < wait => {
                pause(Duration::from_millis(50))
            }
            Ok(Reply::OtherModel { serving }) => raise_with(
                PgSqlErrorCode::ERRCODE_CANNOT_CONNECT_NOW,
                format!("qwen_embed: the model server still runs {} after {} ms", serving.path, wait.as_millis()),
                Some("It restarts with the new settings after pg_reload_conf(); see the server log.".into()),
            ),
            Err(CallError::Unavailable(e)) => raise_with(
                PgSqlErrorCode::ERRCODE_CANNOT_CONNECT_NOW,
                format!("qwen_embed: the model server is not running ({e}) after {} ms", wait.as_millis()),
                Some("It is a background worker of qwen_embed (shared_preload_libraries); see the server log.".into()),
            ),
            // The server died with the request. Embedding is a pure function, so sending it again is harmless: once,
            // to the restarted server, with server_wait counted afresh; a second death may be this request's doing.
            Err(CallError::Lost(_)) if !resent => {
                resent = true;
                started = Instant::now();
                // To the next server, not to the dying one: its listening socket may accept for a moment more.
                while server_pid() == server && started.elapsed() < wait {
                    pause(Duration::from_millis(20));
                }
            }
            Err(CallError::Lost(e)) => {
                stats::record(|s| s.errors += 1);
                raise_with(
                    PgSqlErrorCode::ERRCODE_SYSTEM_ERROR,
                    format!("qwen_embed: the model server stopped twice while computing this request ({e})"),
                    Some(
                        "It is restarted by itself; the server log says why it stopped. The request was sent again \
                         once after the first stop: if it stops the server each time, it is the cause."
                            .into(),
                    ),
                )
            }
            Err(CallError::TooLarge(e)) => raise_with(
                PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
                format!("qwen_embed: the request is too large for the model server ({e})"),
                Some("Send fewer or shorter texts in one call.".into()),
            ),
            Ok(reply) => return reply,
        }
    }
}

/// The pid of the model server the supervisor runs now (0: none).
fn server_pid() -> i32 {
    supervisor::published().map_or(0, |(_, pid, ..)| pid)
}

/// Raises the ERROR of a pending interrupt (cancel, statement_timeout, terminate), if there is one.
fn interrupts() {
    pgrx::check_for_interrupts!();
}

/// Sleeps, staying interruptible.
fn pause(total: Duration) {
    let until = Instant::now() + total;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
        pgrx::check_for_interrupts!();
    }
}

fn unexpected(reply: Reply) -> ! {
    raise_with(
        PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
        format!("qwen_embed: unexpected reply from the model server: {reply:?}"),
        None,
    )
}

/// A document's chunks: byte ranges in the document and their vectors.
pub type Chunks = Vec<(std::ops::Range<usize>, Vec<f32>)>;

/// Texts per request: a larger call is sent in pieces, one after another, so that one session never holds more than
/// this many texts in the server's queue and other sessions' requests interleave with its pieces.
const TEXTS_PER_REQUEST: usize = 512;

pub fn embed(mut texts: Vec<String>, instruct: Option<String>, dim: Option<i64>) -> (Vec<Vec<f32>>, Work) {
    let mut vectors = Vec::with_capacity(texts.len());
    let mut total = Work::default();
    while !texts.is_empty() {
        let rest = texts.split_off(texts.len().min(TEXTS_PER_REQUEST));
        let piece = std::mem::replace(&mut texts, rest);
        match request(Job::Embed { texts: piece, instruct: instruct.clone(), dim }) {
            Reply::Vectors { vectors: v, cost } => {
                vectors.extend(v);
                let w = work(cost);
                total.texts += w.texts;
                total.tokens += w.tokens;
                total.forward_passes += w.forward_passes;
            }
            other => unexpected(other),
        }
    }
    (vectors, total)
}

pub fn chunks(doc: String, chunk_tokens: usize, overlap: usize, dim: Option<i64>) -> (Chunks, Work) {
    match request(Job::Chunks { doc, chunk_tokens, overlap, dim }) {
        Reply::Chunks { chunks, cost } => (chunks.into_iter().map(|(a, b, v)| (a..b, v)).collect(), work(cost)),
        other => unexpected(other),
    }
}

pub fn document(
    doc: String,
    chunk_tokens: usize,
    overlap: usize,
    weighting: String,
    dim: Option<i64>,
) -> (Vec<f32>, Work) {
    match request(Job::Document { doc, chunk_tokens, overlap, weighting, dim }) {
        Reply::Vector { vector, cost } => (vector, work(cost)),
        other => unexpected(other),
    }
}

/// Reranker scores from the server, when it runs the session's reranker (`spec`); None means: rerank in this backend.
pub fn rerank(spec: &ModelSpec, query: &str, documents: &[String], instruct: Option<&str>) -> Option<(Vec<f64>, Work)> {
    let serves = settings::SERVER.get() && supervisor::published_reranker().is_some_and(|r| &r == spec);
    if !serves {
        return None;
    }
    let job = Job::Rerank { query: query.into(), documents: documents.to_vec(), instruct: instruct.map(Into::into) };
    match request_for(spec.clone(), job) {
        Reply::Scores { scores, cost } => Some((scores, work(cost))),
        other => unexpected(other),
    }
}

pub fn count_tokens(text: String, instruct: Option<String>) -> usize {
    match request(Job::CountTokens { text, instruct }) {
        Reply::Count(n) => n,
        other => unexpected(other),
    }
}

/// The server's status, if it is running and answers.
pub fn status() -> Option<(Status, i32, u64, String)> {
    let (_, pid, restarts, last_exit) = supervisor::published()?;
    let request = Request {
        client: backend::pid(),
        priority: settings::PRIORITY.get().into(),
        model: ModelSpec::default(),
        lengths: lengths(),
        job: Job::Status,
    };
    match call(Path::new(supervisor::SOCKET), &request, interrupts) {
        Ok(Reply::Status(s)) => Some((*s, pid, restarts, last_exit)),
        _ => None,
    }
}
