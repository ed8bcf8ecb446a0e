//! The model server's supervisor: a background worker that PostgreSQL starts (qwen_embed in
//! `shared_preload_libraries`) and restarts, which runs the model server in a child process of its own.
//!
//! Why a child: PostgreSQL treats the abnormal exit of any process it started (a signal, an abort, the OOM killer) as
//! a crash of the whole cluster and restarts every session. The model server is the process most likely to die that
//! way (a model too big, a CUDA fault, a bug in a kernel), so it is not PostgreSQL's child but this worker's: when it
//! dies, only this worker notices (waitpid), logs it, and starts a new one; sessions waiting on it get an ERROR and
//! nothing else is touched. The child never calls into PostgreSQL: it forgets PostgreSQL's exit callbacks, resets the
//! signal handlers, and only serves the socket (`qwen_embed_server`).
//!
//! The socket is `qwen_embed.sock` in the data directory (the working directory of every PostgreSQL process, mode
//! 0700): only the PostgreSQL OS user can reach it; there is no TCP. The worker starts at consistent state, so the
//! server also runs on a hot standby. On SIGHUP it rereads the settings and, if the model or the server settings
//! changed, replaces the child.

use std::ffi::CStr;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, pg_sys, PgLwLock};
use qwen_embed_model::{DType, Device, Embedder, Reranker};
use qwen_embed_server::models::RerankerSource;
use qwen_embed_server::protocol::ModelSpec;
use qwen_embed_server::server::{serve, Pause, Settings};

use crate::postgres::shmem_text::{self, Keep};
use crate::postgres::{backend, settings};

/// The server's socket, relative to the data directory (every PostgreSQL process's working directory).
pub const SOCKET: &str = "qwen_embed.sock";

const SPEC_BYTES: usize = 1024;

/// The supervisor's name as PostgreSQL shows it (`ps`, `pg_stat_activity.backend_type`), and the server child's title.
const SUPERVISOR_TITLE: &str = "qwen_embed supervisor";
const SERVER_TITLE: &CStr = c"qwen_embed model server";

/// A server that ran this long before it died was not dying over and over: its restart does not back off.
const STEADY: Duration = Duration::from_secs(30);

/// What the supervisor publishes for backends: which model the server runs, its pid, how often it was restarted.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Published {
    running: bool,
    spec: [u8; SPEC_BYTES],
    /// The reranker's path (empty: none); it runs on the model's device and dtype.
    reranker: [u8; SPEC_BYTES],
    child_pid: i32,
    restarts: u64,
    last_exit: [u8; 128],
}

impl Default for Published {
    fn default() -> Self {
        Published {
            running: false,
            spec: [0; SPEC_BYTES],
            reranker: [0; SPEC_BYTES],
            child_pid: 0,
            restarts: 0,
            last_exit: [0; 128],
        }
    }
}

// SAFETY: plain old data (no pointers), as PGRXSharedMemory requires.
unsafe impl pgrx::shmem::PGRXSharedMemory for Published {}

// SAFETY: the name is unique to this extension and the lock is initialised by pg_shmem_init! in `init`.
static PUBLISHED: PgLwLock<Published> = unsafe { PgLwLock::new(c"qwen_embed_server") };

/// Called from `_PG_init` under `shared_preload_libraries`: the shared state and the worker.
pub fn init() {
    if !backend::preloading() {
        return;
    }
    pg_shmem_init!(PUBLISHED);
    // Its title (`ps`: "postgres: qwen_embed supervisor") tells it apart from the server it runs ("postgres: qwen_embed
    // model server"): killing the supervisor is a crash of a postmaster child (the cluster restarts), killing the
    // server is harmless (the supervisor starts another).
    BackgroundWorkerBuilder::new(SUPERVISOR_TITLE)
        .set_type(SUPERVISOR_TITLE)
        .set_library("qwen_embed")
        .set_function("qwen_embed_supervisor_main")
        .enable_shmem_access(None)
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// The model and server settings in effect, as the server sees them.
#[derive(Clone, PartialEq, Debug)]
struct Config {
    spec: ModelSpec,
    reranker: Option<String>,
    threads: usize,
    batch_tokens: usize,
    queue_limit: usize,
}

impl Config {
    fn current() -> Self {
        Config {
            spec: settings::model_spec(),
            reranker: settings::string(&settings::RERANKER_PATH),
            threads: settings::server_threads(),
            batch_tokens: settings::SERVER_BATCH_TOKENS.get() as usize,
            queue_limit: settings::SERVER_QUEUE_LIMIT.get() as usize,
        }
    }
}

fn encode_spec(spec: &ModelSpec) -> String {
    format!("{}\n{}\n{}", spec.path, spec.device, spec.dtype)
}

/// The model the server runs, if a server is running (as published by the supervisor), and its restart count.
pub fn published() -> Option<(ModelSpec, i32, u64, String)> {
    if !crate::postgres::backend::preloaded() {
        return None;
    }
    let p = *PUBLISHED.share();
    if !p.running {
        return None;
    }
    let spec = shmem_text::read(&p.spec);
    let mut parts = spec.splitn(3, '\n').map(str::to_string);
    let spec = ModelSpec {
        path: parts.next().unwrap_or_default(),
        device: parts.next().unwrap_or_default(),
        dtype: parts.next().unwrap_or_default(),
    };
    Some((spec, p.child_pid, p.restarts, shmem_text::read(&p.last_exit)))
}

/// The reranker the running server serves (loaded on its first request), if one is configured.
pub fn published_reranker() -> Option<ModelSpec> {
    let (spec, ..) = published()?;
    let p = *PUBLISHED.share();
    let path = shmem_text::read(&p.reranker);
    (!path.is_empty()).then_some(ModelSpec { path, ..spec })
}

fn publish(f: impl FnOnce(&mut Published)) {
    f(&mut PUBLISHED.exclusive());
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn qwen_embed_supervisor_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let mut backoff = Duration::from_millis(100);
    loop {
        if !settings::SERVER.get() {
            // qwen_embed.server = off: no server (sessions run their own models) until a reload turns it on.
            publish(|p| p.running = false);
            if !BackgroundWorker::wait_latch(Some(Duration::from_secs(1))) {
                return;
            }
            reload_on_sighup();
            continue;
        }
        let config = Config::current();
        let _ = std::fs::remove_file(SOCKET);
        let listener = UnixListener::bind(SOCKET).unwrap_or_else(|e| {
            // An ERROR exit (code 1): the postmaster starts the worker again after its restart time.
            error!("qwen_embed: cannot create the model server's socket {SOCKET} in the data directory: {e}")
        });
        let child = spawn(listener, &config);
        let child_started = std::time::Instant::now();
        publish(|p| {
            p.running = true;
            shmem_text::write(&mut p.spec, &encode_spec(&config.spec), Keep::Head);
            shmem_text::write(&mut p.reranker, config.reranker.as_deref().unwrap_or(""), Keep::Head);
            p.child_pid = child;
        });
        log!("qwen_embed: model server started (pid {child}, model {})", config.spec.path);
        let exit = loop {
            if !BackgroundWorker::wait_latch(Some(Duration::from_millis(100))) {
                // SIGTERM or postmaster death: stop the server and go.
                stop(child);
                let _ = std::fs::remove_file(SOCKET);
                publish(|p| p.running = false);
                return;
            }
            if reload_on_sighup() && (!settings::SERVER.get() || Config::current() != config) {
                log!("qwen_embed: settings changed; restarting the model server");
                stop(child);
                backoff = Duration::from_millis(100);
                break None;
            }
            if let Some(status) = exited(child) {
                break Some(status);
            }
        };
        if let Some(status) = exit {
            warning!("qwen_embed: model server (pid {child}) {status}; starting a new one");
            publish(|p| {
                p.restarts += 1;
                shmem_text::write(&mut p.last_exit, &status, Keep::Head);
            });
            // Back off while it keeps dying (a model that cannot load is an error reply, not an exit); a server that
            // ran for a while before it died is restarted at once again.
            if child_started.elapsed() > STEADY {
                backoff = Duration::from_millis(100);
            }
            if !BackgroundWorker::wait_latch(Some(backoff)) {
                publish(|p| p.running = false);
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}

/// Rereads the configuration files if a SIGHUP came since the last call; says whether one did.
fn reload_on_sighup() -> bool {
    let reload = BackgroundWorker::sighup_received();
    if reload {
        // SAFETY: this worker's main thread, in its main loop, as PostgreSQL's own processes do on SIGHUP.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    }
    reload
}

/// How the child ended, if it has.
fn exited(child: i32) -> Option<String> {
    let mut status = 0;
    // SAFETY: waitpid on our own child, not blocking.
    let pid = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
    if pid != child {
        return None;
    }
    Some(if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        // SAFETY: strsignal returns a static string for any signal number.
        let name = unsafe { CStr::from_ptr(libc::strsignal(signal)) }.to_string_lossy().into_owned();
        format!("was terminated by signal {signal}: {name}")
    } else {
        format!("exited with code {}", libc::WEXITSTATUS(status))
    })
}

/// Stops the child: SIGTERM, then SIGKILL if it has not gone within 5 s; reaps it.
fn stop(child: i32) {
    // SAFETY: signals and waitpid on our own child.
    unsafe {
        libc::kill(child, libc::SIGTERM);
        for _ in 0..50 {
            if libc::waitpid(child, std::ptr::null_mut(), libc::WNOHANG) == child {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
}

/// Forks the model server; returns its pid. The listener is the child's alone afterwards.
fn spawn(listener: UnixListener, config: &Config) -> i32 {
    // SAFETY: this worker is single-threaded (it starts no threads), so the child starts with a consistent copy of
    // it; the child never returns into PostgreSQL code (serve_in_child ends with _exit).
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => error!("qwen_embed: cannot start the model server: {}", std::io::Error::last_os_error()),
        0 => serve_in_child(listener, config.clone()),
        child => child,
    }
}

/// The child: no PostgreSQL from here on.
fn serve_in_child(listener: UnixListener, config: Config) -> ! {
    // SAFETY: in the freshly forked, single-threaded child. on_exit_reset only clears PostgreSQL's exit callback lists,
    // so that no path out of this process runs the parent's shared-memory cleanup; the signal calls restore default
    // dispositions (PostgreSQL's handlers would call into PostgreSQL) and keep SIGPIPE from killing the server when a
    // caller leaves; PR_SET_PDEATHSIG ends the child with the supervisor.
    unsafe {
        pg_sys::on_exit_reset();
        for signal in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGALRM,
            libc::SIGCHLD,
        ] {
            libc::signal(signal, libc::SIG_DFL);
        }
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // The one PostgreSQL call after the fork: it only rewrites this process's argv area (the title `ps` shows),
        // which the child owns; it takes no lock and touches no shared memory.
        pg_sys::init_ps_display(SERVER_TITLE.as_ptr());
    }
    // If memory runs out, the kernel should pick this process (which the supervisor restarts) over a backend.
    let _ = std::fs::write("/proc/self/oom_score_adj", "500");
    let spec = config.spec.clone();
    let settings = Settings {
        threads: config.threads,
        batch_tokens: config.batch_tokens,
        queue_limit: config.queue_limit,
        small_tokens: Settings::SMALL_TOKENS,
        pause: Pause::DEFAULT,
    };
    // Both models load in the server: a bad device or dtype setting is the load's error.
    fn placed(spec: &ModelSpec) -> Result<(&Path, Device, DType), qwen_embed_model::Error> {
        let (device, dtype) =
            spec.placement().map_err(|m| qwen_embed_model::Error::Unsupported(format!("qwen_embed.{m}")))?;
        Ok((Path::new(&spec.path), device, dtype))
    }
    let load = move || {
        let (path, device, dtype) = placed(&spec)?;
        Embedder::load(path, &device, dtype)
    };
    let reranker = config.reranker.clone().map(|path| {
        let spec = ModelSpec { path, ..config.spec.clone() };
        let load_spec = spec.clone();
        let load = move || {
            let (path, device, dtype) = placed(&load_spec)?;
            Reranker::load(path, &device, dtype)
        };
        RerankerSource { spec, load: Box::new(load) }
    });
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        serve(listener, config.spec, settings, load, reranker)
    }));
    let code = match result {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("qwen_embed model server: {e}");
            1
        }
        Err(_) => 1,
    };
    // SAFETY: _exit skips atexit handlers, which belong to the PostgreSQL process this was forked from.
    unsafe { libc::_exit(code) }
}
