//! The server end to end on the bundled tiny model: a real Unix socket, real threads, no PostgreSQL.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use qwen_embed_model::{DType, Device, Embedder, Limits, Reranker};
use qwen_embed_server::client::{call, CallError};
use qwen_embed_server::models::RerankerSource;
use qwen_embed_server::protocol::{write_frame, Job, JobCounts, Lengths, ModelSpec, Priority, Reply, Request, Status};
use qwen_embed_server::server::{serve, Pause, Settings};

fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-qwen3")
}

fn spec() -> ModelSpec {
    ModelSpec { path: tiny_model().display().to_string(), device: "cpu".into(), dtype: "f32".into() }
}

const LENGTHS: Lengths = Lengths { max_length: 8192, truncate: false };

fn tiny_reranker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-qwen3-reranker")
}

fn reranker_spec() -> ModelSpec {
    ModelSpec { path: tiny_reranker().display().to_string(), ..spec() }
}

/// A server on a socket in a fresh directory, running for the rest of the test process, with the tiny reranker.
fn start(settings: Settings) -> (tempfile::TempDir, PathBuf) {
    start_with(settings, tiny_model(), Box::new(|| Reranker::load(&tiny_reranker(), &Device::Cpu, DType::F32)))
}

fn start_with(
    settings: Settings,
    model: PathBuf,
    load_reranker: Box<dyn FnOnce() -> qwen_embed_model::Result<Reranker> + Send>,
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let reranker = RerankerSource { spec: reranker_spec(), load: load_reranker };
    let spec = spec_of(&model);
    std::thread::spawn(move || {
        serve(listener, spec, settings, move || Embedder::load(&model, &Device::Cpu, DType::F32), Some(reranker))
    });
    (dir, socket)
}

fn spec_of(model: &Path) -> ModelSpec {
    ModelSpec { path: model.display().to_string(), ..spec() }
}

/// A server whose only compute thread is held: a rerank request loads the reranker on the pool (`threads: 1`) and
/// the load waits for [`Held::release`]. A batch taken meanwhile waits for the pool, and the requests that come
/// meanwhile wait in the queue, so a test knows which requests share the next batch.
fn start_held(settings: Settings, model: PathBuf) -> (tempfile::TempDir, PathBuf, Held) {
    let (entered, loading) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let load = Box::new(move || {
        entered.send(()).unwrap();
        let _ = released.recv();
        Reranker::load(&tiny_reranker(), &Device::Cpu, DType::F32)
    });
    let (dir, socket) = start_with(Settings { threads: 1, ..settings }, model.clone(), load);
    let warm = Request {
        model: spec_of(&model),
        ..request(Job::Embed { texts: vec!["warm".into()], instruct: None, dim: None })
    };
    assert!(matches!(call(&socket, &warm, || {}).unwrap(), Reply::Vectors { .. }), "the model did not load");
    let rerank = Request {
        model: reranker_spec(),
        job: Job::Rerank { query: "q".into(), documents: vec!["a".into()], instruct: None },
        ..request(Job::Status)
    };
    let at = socket.clone();
    let rerank = std::thread::spawn(move || call(&at, &rerank, || {}).unwrap());
    loading.recv_timeout(Duration::from_secs(20)).expect("the reranker's load did not start");
    (dir, socket, Held { release, rerank })
}

struct Held {
    release: mpsc::Sender<()>,
    rerank: std::thread::JoinHandle<Reply>,
}

impl Held {
    /// Lets the reranker load and the pool compute again; the held rerank request gets its score.
    fn release(self) {
        self.release.send(()).unwrap();
        assert!(matches!(self.rerank.join().unwrap(), Reply::Scores { .. }));
    }
}

/// Waits for the server's counters to say `what` (a counter to wait for, not a time: the deadline only ends a test
/// that would otherwise hang).
fn wait_for(socket: &Path, what: &str, until: impl Fn(&Status) -> bool) -> Status {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(socket);
        if until(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what} never happened: {s:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Embedder batches (the reranker's apart) since the server started.
fn embedder_batches(s: &Status) -> u64 {
    s.batches - s.reranker_batches
}

const SETTINGS: Settings = Settings {
    threads: 2,
    batch_tokens: 4096,
    queue_limit: 10_000,
    small_tokens: Settings::SMALL_TOKENS,
    pause: Pause::DEFAULT,
};

fn request(job: Job) -> Request {
    Request { client: std::process::id() as i32, priority: Priority::Interactive, model: spec(), lengths: LENGTHS, job }
}

fn embed(socket: &Path, texts: &[&str], instruct: Option<&str>) -> Reply {
    embed_at(socket, Priority::Interactive, texts, instruct)
}

fn embed_at(socket: &Path, priority: Priority, texts: &[&str], instruct: Option<&str>) -> Reply {
    let job = Job::Embed {
        texts: texts.iter().map(|t| t.to_string()).collect(),
        instruct: instruct.map(Into::into),
        dim: None,
    };
    call(socket, &Request { priority, ..request(job) }, || {}).unwrap()
}

fn status(socket: &Path) -> Status {
    match call(socket, &request(Job::Status), || {}).unwrap() {
        Reply::Status(s) => *s,
        other => panic!("{other:?}"),
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn concurrent_sessions_get_the_direct_vectors_and_are_counted_per_client_and_priority() {
    let (_dir, socket) = start(SETTINGS);
    let direct = Embedder::load(&tiny_model(), &Device::Cpu, DType::F32).unwrap();
    let texts: Vec<String> = (0..16).map(|i| format!("question number {i} about databases and vectors")).collect();
    // Warm up: the model is loaded before the concurrent part.
    assert!(matches!(embed(&socket, &["warm"], None), Reply::Vectors { .. }));
    let socket = Arc::new(socket);
    let handles: Vec<_> = texts
        .iter()
        .cloned()
        .map(|t| {
            let socket = socket.clone();
            std::thread::spawn(move || (t.clone(), embed(&socket, &[&t], Some("Find answers"))))
        })
        .collect();
    for h in handles {
        let (text, reply) = h.join().unwrap();
        let Reply::Vectors { vectors, cost } = reply else { panic!("{reply:?}") };
        let (want, _) = direct.embed(&[&text], Some("Find answers"), None, &Limits::default(), &|| false).unwrap();
        assert!(max_diff(&vectors[0], &want[0]) < 1e-5, "{text}");
        assert_eq!(cost.texts, 1);
    }
    let s = status(&socket);
    assert_eq!((s.state.as_str(), s.canceled, s.errors), ("ready", 0, 0));
    // The warm-up, 16 queries and this status request.
    assert_eq!(s.per_client, vec![(std::process::id() as i32, 18)]);
    // A client that has exited is no longer listed (a server meets thousands of backends over its life).
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id() as i32;
    gone.wait().unwrap();
    let from_gone = Request { client: gone_pid, ..request(Job::Status) };
    let Reply::Status(seen) = call(&socket, &from_gone, || {}).unwrap() else { panic!("no status") };
    assert!(seen.per_client.iter().all(|&(pid, _)| pid != gone_pid), "{:?}", seen.per_client);
    assert_eq!(status(&socket).per_client, vec![(std::process::id() as i32, 19)]);
    // Each request is counted at the priority its caller gave (status requests are not work).
    assert_eq!(s.priorities, [17, 0, 0], "the warm-up and 16 queries");
    embed_at(&socket, Priority::Backfill, &["a backfill"], None);
    embed_at(&socket, Priority::Async, &["an async item"], None);
    embed_at(&socket, Priority::Backfill, &["another"], None);
    assert_eq!(status(&socket).priorities, [17, 1, 2]);
}

#[test]
fn queries_that_wait_together_share_one_forward_pass_and_get_their_vectors_alone() {
    let (_dir, socket, held) = start_held(SETTINGS, tiny_model());
    let direct = Embedder::load(&tiny_model(), &Device::Cpu, DType::F32).unwrap();
    let before = status(&socket);
    let ask = |text: String| {
        let socket = socket.clone();
        std::thread::spawn(move || (text.clone(), embed(&socket, &[&text], Some("Find answers"))))
    };
    // A first query's batch waits for the pool; sixteen more arrive meanwhile and wait in the queue.
    let first = ask("the first question".into());
    wait_for(&socket, "the first query's batch", |s| s.computing_texts == 1);
    let sixteen: Vec<_> = (0..16).map(|i| ask(format!("question number {i} about databases and vectors"))).collect();
    wait_for(&socket, "sixteen queued queries", |s| (s.queued_requests, s.queued_texts) == (16, 16));
    held.release();
    for h in std::iter::once(first).chain(sixteen) {
        let (text, reply) = h.join().unwrap();
        let Reply::Vectors { vectors, .. } = reply else { panic!("{reply:?}") };
        let (want, _) = direct.embed(&[&text], Some("Find answers"), None, &Limits::default(), &|| false).unwrap();
        assert!(max_diff(&vectors[0], &want[0]) < 1e-5, "{text}");
    }
    // The first query's pass, then one for all sixteen.
    let s = status(&socket);
    assert_eq!(embedder_batches(&s) - embedder_batches(&before), 2, "{s:?}");
    assert_eq!(s.max_batch_texts, 16);
}

/// A copy of the tiny model whose embedding table ends at token `vocab`: a checkpoint whose tokenizer knows tokens
/// its weights lack, so a text naming one (`<|im_start|>` is 151644) fails in the encoder, not in the tokenizer.
fn cut_vocabulary(to: &Path, vocab: usize) {
    use qwen_embed_model::candle::safetensors;
    for entry in std::fs::read_dir(tiny_model()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
    let config = std::fs::read_to_string(tiny_model().join("config.json")).unwrap();
    let cut = config.replace("\"vocab_size\": 151669", &format!("\"vocab_size\": {vocab}"));
    assert_ne!(cut, config, "the fixture's vocab_size is not 151669");
    std::fs::write(to.join("config.json"), cut).unwrap();
    let weights: std::collections::HashMap<String, qwen_embed_model::candle::Tensor> =
        safetensors::load(tiny_model().join("model.safetensors"), &Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(name, t)| match t.dims()[0] {
                151669 => (name, t.narrow(0, 0, vocab).unwrap()),
                _ => (name, t),
            })
            .collect();
    safetensors::save(&weights, to.join("model.safetensors")).unwrap();
}

#[test]
fn a_request_that_fails_its_batch_fails_alone_and_the_others_in_it_get_their_vectors() {
    let model = tempfile::tempdir().unwrap();
    cut_vocabulary(model.path(), 151644);
    let (_dir, socket, held) = start_held(SETTINGS, model.path().to_path_buf());
    let before = status(&socket);
    let ask = |texts: &[&str]| {
        let job = Job::Embed { texts: texts.iter().map(|t| t.to_string()).collect(), instruct: None, dim: None };
        let (socket, request) = (socket.clone(), Request { model: spec_of(model.path()), ..request(job) });
        std::thread::spawn(move || call(&socket, &request, || {}).unwrap())
    };
    let first = ask(&["the first question"]);
    wait_for(&socket, "the first query's batch", |s| s.computing_texts == 1);
    let good = ask(&["a good text", "another good one"]);
    let bad = ask(&["a text with <|im_start|> in it"]);
    wait_for(&socket, "both requests queued", |s| (s.queued_requests, s.queued_texts) == (2, 3));
    held.release();
    assert!(matches!(first.join().unwrap(), Reply::Vectors { .. }));
    // The batch of both failed; computed again one request at a time, only the bad one fails.
    match bad.join().unwrap() {
        Reply::Failed { message, .. } => {
            assert!(message.contains("token id 151644 is outside the vocabulary"), "{message}")
        }
        other => panic!("the request naming a token the weights lack got {other:?}"),
    }
    let Reply::Vectors { vectors, .. } = good.join().unwrap() else { panic!("the good request failed") };
    let direct = Embedder::load(&tiny_model(), &Device::Cpu, DType::F32).unwrap();
    let (want, _) =
        direct.embed(&["a good text", "another good one"], None, None, &Limits::default(), &|| false).unwrap();
    assert!(vectors.iter().zip(&want).all(|(v, w)| max_diff(v, w) < 1e-5), "its vectors are the full model's");
    let s = status(&socket);
    assert_eq!((s.batches_split - before.batches_split, s.errors - before.errors), (1, 1), "{s:?}");
    // The first query's pass, the failed one, and one for each request alone.
    assert_eq!(embedder_batches(&s) - embedder_batches(&before), 4, "{s:?}");
}

#[test]
fn the_reranker_is_loaded_on_first_use_and_scores_as_the_direct_one() {
    let (_dir, socket) = start(SETTINGS);
    assert_eq!(status(&socket).reranker_state, "not loaded");
    let docs: Vec<String> = vec!["Beijing is the capital of China.".into(), "Gravity pulls.".into(), "".into()];
    let job = |model: ModelSpec| Request {
        model,
        job: Job::Rerank { query: "capital of China?".into(), documents: docs.clone(), instruct: None },
        ..request(Job::Status)
    };
    let Reply::Scores { scores, cost } = call(&socket, &job(reranker_spec()), || {}).unwrap() else { panic!() };
    let direct = Reranker::load(&tiny_reranker(), &Device::Cpu, DType::F32).unwrap();
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let (want, _) = direct.rerank("capital of China?", &refs, None, &Limits::default(), &|| false).unwrap();
    assert!(scores.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6), "{scores:?} vs {want:?}");
    assert_eq!(cost.texts, 3);
    assert!(status(&socket).reranker_state.starts_with("ready"), "{}", status(&socket).reranker_state);
    // Another reranker than the server's: the caller is told which one it runs.
    let other = ModelSpec { path: "/elsewhere".into(), ..reranker_spec() };
    match call(&socket, &job(other), || {}).unwrap() {
        Reply::OtherModel { serving } => assert_eq!(serving, reranker_spec()),
        reply => panic!("{reply:?}"),
    }
}

fn counts<'a>(s: &'a Status, kind: &str) -> &'a JobCounts {
    s.jobs.iter().find(|c| c.kind == kind).unwrap()
}

#[test]
fn documents_chunks_and_reranks_are_queued_work_counted_per_kind() {
    let (_dir, socket) = start(SETTINGS);
    let direct = Embedder::load(&tiny_model(), &Device::Cpu, DType::F32).unwrap();
    let doc = "Paragraph one is about databases.\n\nParagraph two is about vectors. ".repeat(20);
    let limits = Limits { batch_tokens: SETTINGS.batch_tokens, ..Limits::default() };
    let Reply::Chunks { chunks, cost } =
        call(&socket, &request(Job::Chunks { doc: doc.clone(), chunk_tokens: 32, overlap: 4, dim: Some(48) }), || {})
            .unwrap()
    else {
        panic!()
    };
    let (want, _) = direct.embed_chunks(&doc, 32, 4, Some(48), &limits, &|| false).unwrap();
    assert_eq!(chunks.len(), want.len());
    assert!(want.len() >= 10, "{} chunks", want.len());
    for ((start, end, v), w) in chunks.iter().zip(&want) {
        assert_eq!((*start, *end), (w.range.start, w.range.end));
        assert!(v.len() == 48 && max_diff(v, &w.embedding) < 1e-5);
    }
    let chunk_tokens: u64 = want.iter().map(|c| c.ids.len() as u64).sum();
    assert_eq!((cost.texts, cost.tokens), (want.len() as u64, chunk_tokens));
    let weighting = "tokens".to_string();
    let job = Job::Document { doc: doc.clone(), chunk_tokens: 32, overlap: 4, weighting, dim: None };
    let Reply::Vector { vector, .. } = call(&socket, &request(job), || {}).unwrap() else { panic!() };
    let w = "tokens".parse().unwrap();
    let (want_vector, _) = direct.embed_document(&doc, 32, 4, w, None, &limits, &|| false).unwrap();
    assert!(max_diff(&vector, &want_vector) < 1e-5);
    let rerank = Request {
        model: reranker_spec(),
        job: Job::Rerank { query: "q".into(), documents: vec!["a".into(), "b".into()], instruct: None },
        ..request(Job::Status)
    };
    assert!(matches!(call(&socket, &rerank, || {}).unwrap(), Reply::Scores { scores, .. } if scores.len() == 2));
    // A document whose caller leaves: its chunks leave the queue, and it counts as canceled.
    let mut conn = UnixStream::connect(&socket).unwrap();
    let long = Job::Chunks { doc: "word ".repeat(80_000), chunk_tokens: 16, overlap: 0, dim: None };
    write_frame(&mut conn, &request(long)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&socket).queued_texts < 1_000 {
        assert!(Instant::now() < deadline, "the long document was never queued");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(conn);
    while counts(&status(&socket), "chunks").canceled == 0 {
        assert!(Instant::now() < deadline + Duration::from_secs(10), "the abandoned document was not dropped");
        std::thread::sleep(Duration::from_millis(5));
    }
    let s = status(&socket);
    assert_eq!(s.queued_texts, 0);
    let chunks =
        JobCounts { kind: "chunks".into(), requests: 2, canceled: 1, texts: want.len() as u64, tokens: chunk_tokens };
    assert_eq!(counts(&s, "chunks"), &chunks);
    let document = JobCounts { kind: "document".into(), requests: 1, canceled: 0, ..chunks.clone() };
    assert_eq!(counts(&s, "document"), &document);
    assert_eq!((counts(&s, "rerank").requests, counts(&s, "rerank").texts), (1, 2));
    assert_eq!(counts(&s, "embed").requests, 0);
    assert!(s.reranker_batches >= 1 && s.batches > s.reranker_batches, "{s:?}");
}

#[test]
fn errors_carry_the_model_errors_kind_and_hint() {
    let (_dir, socket) = start(SETTINGS);
    let job = Job::Embed { texts: vec!["x".into()], instruct: None, dim: Some(8) };
    match call(&socket, &request(job), || {}).unwrap() {
        Reply::Failed { kind, message, hint } => {
            assert_eq!(kind, qwen_embed_model::ErrorKind::BadArgument);
            assert!(message.contains("dim must be between 32 and 64, got 8"), "{message}");
            assert!(hint.is_some());
        }
        other => panic!("{other:?}"),
    }
    let long = Request {
        lengths: Lengths { max_length: 4, truncate: false },
        ..request(Job::Embed { texts: vec!["The capital of China is Beijing.".into()], instruct: None, dim: None })
    };
    assert!(matches!(
        call(&socket, &long, || {}).unwrap(),
        Reply::Failed { kind: qwen_embed_model::ErrorKind::TooLong, .. }
    ));
    let other = Request { model: ModelSpec { path: "/elsewhere".into(), ..spec() }, ..request(Job::Status) };
    assert!(matches!(call(&socket, &other, || {}).unwrap(), Reply::Status(_)), "status answers whatever the model");
    let other = Request {
        model: ModelSpec { path: "/elsewhere".into(), ..spec() },
        ..request(Job::CountTokens { text: "x".into(), instruct: None })
    };
    assert!(matches!(call(&socket, &other, || {}).unwrap(), Reply::OtherModel { .. }));
    assert!(matches!(
        call(
            &socket,
            &request(Job::CountTokens { text: "The capital of China is Beijing.".into(), instruct: None }),
            || {}
        )
        .unwrap(),
        Reply::Count(8)
    ));
}

#[test]
fn a_caller_that_leaves_has_its_request_dropped_and_a_full_queue_refuses_at_once() {
    let (_dir, socket) =
        start(Settings { threads: 1, batch_tokens: 512, queue_limit: 25_000, small_tokens: 64, ..SETTINGS });
    assert!(matches!(embed(&socket, &["warm"], None), Reply::Vectors { .. }));
    // A bulk request (20,000 texts, seconds of work even for the tiny model) that a client abandons after sending it.
    let bulk: Vec<String> = (0..20_000).map(|i| format!("document {i} ") + &"with many words ".repeat(15)).collect();
    let mut conn = UnixStream::connect(&socket).unwrap();
    write_frame(&mut conn, &request(Job::Embed { texts: bulk.clone(), instruct: None, dim: None })).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&socket).queued_texts < 19_000 {
        assert!(Instant::now() < deadline, "the bulk request was never queued");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Meanwhile every kind of work larger than the room left is refused at once: texts, a rerank's pairs, a
    // document's chunks (estimated before tokenising: ~31,000 for 400,000 words in chunks of 16 tokens), in chunks or
    // as one vector. Each is larger than the limit itself, so each is refused whatever the bulk request has computed
    // meanwhile, as long as a text of it is still queued: it is abandoned below with most of its texts not computed,
    // seconds of work at this model's speed against the milliseconds these refusals take.
    let more: Vec<&str> = bulk.iter().cycle().take(25_001).map(String::as_str).collect();
    let started = Instant::now();
    match embed(&socket, &more, None) {
        Reply::Overloaded { limit, .. } => assert_eq!(limit, 25_000),
        Reply::Vectors { .. } => panic!("a request over the queue limit was accepted"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    let documents: Vec<String> = bulk.iter().cycle().take(25_001).cloned().collect();
    let long_doc = "word ".repeat(400_000);
    let jobs = [
        Request {
            model: reranker_spec(),
            job: Job::Rerank { query: "q".into(), documents, instruct: None },
            ..request(Job::Status)
        },
        request(Job::Chunks { doc: long_doc.clone(), chunk_tokens: 16, overlap: 0, dim: None }),
        request(Job::Document { doc: long_doc, chunk_tokens: 16, overlap: 0, weighting: "uniform".into(), dim: None }),
    ];
    for job in &jobs {
        match call(&socket, job, || {}).unwrap() {
            Reply::Overloaded { limit, .. } => assert_eq!(limit, 25_000),
            other => panic!("{:?} was not refused: {other:?}", std::mem::discriminant(&job.job)),
        }
    }
    // A single query still gets through quickly (the interactive lane).
    let started = Instant::now();
    assert!(matches!(embed(&socket, &["a quick question"], None), Reply::Vectors { .. }));
    let quick = started.elapsed();
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&socket).canceled == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = status(&socket);
    assert_eq!((s.canceled, s.rejected), (1, 4), "{s:?}");
    assert_eq!(s.queued_texts, 0, "the abandoned request's texts left the queue");
    assert!(s.texts < 20_000, "the abandoned request was computed in full: {} texts", s.texts);
    assert!(quick < Duration::from_secs(2), "a single query waited {quick:?} behind the bulk request");
    // No server: Unavailable, not a hang.
    assert!(matches!(
        call(Path::new("/nonexistent/s.sock"), &request(Job::Status), || {}),
        Err(CallError::Unavailable(_))
    ));
}

#[test]
fn a_request_too_large_for_one_frame_is_refused_before_it_is_sent() {
    let (_dir, socket) = start(SETTINGS);
    let huge = "x".repeat(qwen_embed_server::protocol::MAX_FRAME + 1);
    let job = Job::Embed { texts: vec![huge], instruct: None, dim: None };
    match call(&socket, &request(job), || {}) {
        Err(CallError::TooLarge(e)) => assert!(e.to_string().contains("too large"), "{e}"),
        other => panic!("a request over the frame limit got {other:?}"),
    }
    // The server never saw it and still answers.
    assert!(matches!(embed(&socket, &["still serving"], None), Reply::Vectors { .. }));
}
