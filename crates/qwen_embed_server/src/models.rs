//! The server's two models and their loads: the embedder, loaded once at start on a thread of its own while the
//! server already answers (requests wait for it), and the reranker, loaded by the first rerank request (most clusters
//! never rerank; other rerank requests wait for that load). A failed load is every later request's error. Both load
//! on the compute pool, so their load uses the threads the encoder will.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use qwen_embed_model::{Embedder, Error, Reranker};

use crate::protocol::{ModelSpec, Reply, Status};
use crate::queue::Model;
use crate::sync::lock;

/// The reranker the server runs, loaded by the first request that needs it.
pub struct RerankerSource {
    pub spec: ModelSpec,
    pub load: Box<dyn FnOnce() -> Result<Reranker, Error> + Send>,
}

enum EmbedderState {
    Loading,
    Ready(Arc<Embedder>),
    Failed(Box<Reply>),
}

enum RerankerState {
    NotLoaded(Option<Box<dyn FnOnce() -> Result<Reranker, Error> + Send>>),
    Ready(Arc<Reranker>),
    Failed(Box<Reply>),
}

/// The model a batch is for, loaded.
pub(crate) enum Loaded {
    Embedder(Arc<Embedder>),
    Reranker(Arc<Reranker>),
}

/// What the status shows of the models.
#[derive(Clone, Default)]
struct Shown {
    state: String,
    device: String,
    dtype: String,
    kernel: String,
    load_ms: f64,
    reranker_state: String,
}

pub(crate) struct Models {
    /// The embedder a request must name to be served.
    pub spec: ModelSpec,
    /// The reranker a rerank request must name, where the server runs one.
    pub reranker_spec: Option<ModelSpec>,
    embedder: Mutex<EmbedderState>,
    embedder_ready: Condvar,
    reranker: Mutex<RerankerState>,
    shown: Mutex<Shown>,
}

impl Models {
    pub fn new(spec: ModelSpec, reranker: Option<RerankerSource>) -> Models {
        let shown = Shown {
            state: "loading".into(),
            reranker_state: if reranker.is_some() { "not loaded" } else { "" }.into(),
            ..Shown::default()
        };
        let (reranker_spec, reranker) = match reranker {
            Some(r) => (Some(r.spec), RerankerState::NotLoaded(Some(r.load))),
            None => (None, RerankerState::NotLoaded(None)),
        };
        Models {
            spec,
            reranker_spec,
            embedder: Mutex::new(EmbedderState::Loading),
            embedder_ready: Condvar::new(),
            reranker: Mutex::new(reranker),
            shown: Mutex::new(shown),
        }
    }

    /// Loads the embedder on `pool` and wakes the requests that wait for it.
    pub fn load_embedder(&self, pool: &rayon::ThreadPool, load: impl FnOnce() -> Result<Embedder, Error> + Send) {
        let started = Instant::now();
        let state = match pool.install(load) {
            Ok(model) => {
                let mut s = lock(&self.shown);
                s.state = "ready".into();
                s.device = qwen_embed_model::device::device_name(model.device()).into();
                s.dtype = model.dtype().as_str().into();
                s.kernel = model.precision().kernel_name().into();
                s.load_ms = started.elapsed().as_secs_f64() * 1e3;
                EmbedderState::Ready(Arc::new(model))
            }
            Err(e) => {
                lock(&self.shown).state = format!("failed: {e}");
                EmbedderState::Failed(Box::new(Reply::failed(&e)))
            }
        };
        *lock(&self.embedder) = state;
        self.embedder_ready.notify_all();
    }

    /// The embedder once loaded, or its load's error; None if the caller left while it loaded (asked every `poll`).
    pub fn wait_for_embedder(
        &self,
        poll: Duration,
        caller_gone: impl Fn() -> bool,
    ) -> Option<Result<Arc<Embedder>, Reply>> {
        let mut state = lock(&self.embedder);
        loop {
            match &*state {
                EmbedderState::Ready(m) => return Some(Ok(m.clone())),
                EmbedderState::Failed(reply) => return Some(Err((**reply).clone())),
                EmbedderState::Loading if caller_gone() => return None,
                EmbedderState::Loading => {
                    state = self.embedder_ready.wait_timeout(state, poll).unwrap_or_else(|p| p.into_inner()).0;
                }
            }
        }
    }

    /// The reranker, loading it on `pool` on first use (other rerank requests wait for the load); its load error
    /// otherwise.
    pub fn reranker(&self, pool: &rayon::ThreadPool) -> Result<Arc<Reranker>, Reply> {
        let mut state = lock(&self.reranker);
        if let RerankerState::NotLoaded(load) = &mut *state {
            let Some(load) = load.take() else {
                return Err(Reply::failed(&Error::Unsupported("this model server runs no reranker".into())));
            };
            let started = Instant::now();
            *state = match pool.install(load) {
                Ok(r) => {
                    let ms = started.elapsed().as_secs_f64() * 1e3;
                    lock(&self.shown).reranker_state = format!("ready ({ms:.0} ms, {})", r.precision().kernel_name());
                    RerankerState::Ready(Arc::new(r))
                }
                Err(e) => {
                    lock(&self.shown).reranker_state = format!("failed: {e}");
                    RerankerState::Failed(Box::new(Reply::failed(&e)))
                }
            };
        }
        match &*state {
            RerankerState::Ready(r) => Ok(r.clone()),
            RerankerState::Failed(reply) => Err((**reply).clone()),
            RerankerState::NotLoaded(_) => unreachable!("loaded above"),
        }
    }

    /// The model a batch is for: loaded, as a request is queued only once its model is.
    pub fn loaded(&self, model: Model) -> Loaded {
        match model {
            Model::Embedder => match &*lock(&self.embedder) {
                EmbedderState::Ready(m) => Loaded::Embedder(m.clone()),
                _ => unreachable!("embedder requests are queued once it is loaded"),
            },
            Model::Reranker => match &*lock(&self.reranker) {
                RerankerState::Ready(r) => Loaded::Reranker(r.clone()),
                _ => unreachable!("rerank requests are queued once it is loaded"),
            },
        }
    }

    /// Fills the status's model fields: the specs served, state, device, dtype, kernel, load time, the reranker's
    /// state.
    pub fn show(&self, s: &mut Status) {
        (s.model, s.reranker) = (self.spec.clone(), self.reranker_spec.clone().unwrap_or_default());
        let shown = lock(&self.shown).clone();
        (s.state, s.device, s.dtype, s.kernel, s.load_ms) =
            (shown.state, shown.device, shown.dtype, shown.kernel, shown.load_ms);
        s.reranker_state = shown.reranker_state;
    }

    /// Models already loaded, for the scheduler's tests (no load thread).
    #[cfg(test)]
    pub fn ready(spec: ModelSpec, embedder: Embedder, reranker: Reranker) -> Models {
        let models = Models::new(spec, None);
        *lock(&models.embedder) = EmbedderState::Ready(Arc::new(embedder));
        *lock(&models.reranker) = RerankerState::Ready(Arc::new(reranker));
        models
    }
}
