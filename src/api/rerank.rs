//! `rerank_score` and `rerank`: Qwen3-Reranker as a cross-encoder in SQL, for two-stage retrieval (top-k by vector
//! distance, then re-ordered by a far more precise score). The reranker (`qwen_embed.reranker_path`) runs in the model
//! server when the server runs the session's reranker, else it is loaded once per backend, on first use, on the
//! embedder's device and dtype settings.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use qwen_embed_model::Reranker;
use qwen_embed_server::protocol::ModelSpec;

use crate::postgres::errors::raise_with;
use crate::postgres::settings;
use crate::route;
use crate::server;

thread_local! {
    static LOADED: RefCell<Option<(ModelSpec, Arc<Reranker>)>> = const { RefCell::new(None) };
}

/// The reranker this session's settings ask for (on the embedder's device and dtype).
pub fn current_spec() -> ModelSpec {
    let path = settings::string(&settings::RERANKER_PATH).unwrap_or_else(|| {
        raise_with(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "qwen_embed: qwen_embed.reranker_path is not set".into(),
            Some(
                "A superuser sets it to a Qwen3-Reranker directory (Hugging Face layout), e.g. \
                 ALTER SYSTEM SET qwen_embed.reranker_path = '/models/Qwen3-Reranker-0.6B'; SELECT pg_reload_conf();"
                    .into(),
            ),
        )
    });
    ModelSpec { path, ..settings::model_spec() }
}

/// The reranker loaded in this backend, if any (without loading one).
pub fn loaded() -> Option<Arc<Reranker>> {
    LOADED.with_borrow(|l| l.as_ref().map(|(_, r)| r.clone()))
}

/// The backend's reranker for the current settings, loaded on first use or after a setting changed.
fn reranker(spec: &ModelSpec) -> Arc<Reranker> {
    if let Some(r) = LOADED.with_borrow(|l| l.as_ref().filter(|(s, _)| s == spec).map(|(_, r)| r.clone())) {
        return r;
    }
    let (device, dtype) = route::placement(spec);
    LOADED.set(None); // never two in memory together
    let path = PathBuf::from(&spec.path);
    let reranker = route::execute(move |_| Reranker::load(&path, &device, dtype).map(Arc::new));
    LOADED.set(Some((spec.clone(), reranker.clone())));
    reranker
}

/// Scores of `documents` for `query`, in order.
fn scores(query: &str, documents: Vec<String>, instruct: Option<&str>) -> Vec<f64> {
    let spec = current_spec();
    let (query, instruct) = (query.to_string(), instruct.map(str::to_string));
    route::counted(|| {
        if let Some(answer) = server::client::rerank(&spec, &query, &documents, instruct.as_deref()) {
            return answer;
        }
        let model = reranker(&spec);
        let limits = settings::limits();
        route::execute(move |canceled| {
            let docs: Vec<&str> = documents.iter().map(String::as_str).collect();
            model.rerank(&query, &docs, instruct.as_deref(), &limits, canceled)
        })
    })
}

/// `rerank_score(query, document, instruct)`: how well `document` answers `query`, in [0, 1] (the reranker's
/// probability of "yes"); NULL query or document gives NULL. `instruct` defaults to the web-search instruction.
#[pg_extern(stable, parallel_restricted, cost = 20000)]
fn rerank_score(query: Option<&str>, document: Option<&str>, instruct: default!(Option<&str>, "NULL")) -> Option<f64> {
    Some(scores(query?, vec![document?.to_string()], instruct)[0])
}

/// `rerank(query, documents, instruct)`: one row per non-NULL document, `idx` its 1-based position in `documents`,
/// best first (ties in input order). All pairs are scored in batched forward passes under qwen_embed.batch_tokens.
#[pg_extern(stable, parallel_restricted, cost = 100000)]
fn rerank(
    query: Option<&str>,
    documents: Option<Array<&str>>,
    instruct: default!(Option<&str>, "NULL"),
) -> TableIterator<'static, (name!(idx, i32), name!(score, f64))> {
    let (Some(query), Some(documents)) = (query, documents) else { return TableIterator::new(Vec::new()) };
    let present: Vec<(i32, String)> =
        documents.iter().enumerate().filter_map(|(i, d)| Some((i as i32 + 1, d?.to_string()))).collect();
    if present.is_empty() {
        return TableIterator::new(Vec::new());
    }
    let (idx, docs): (Vec<i32>, Vec<String>) = present.into_iter().unzip();
    let mut rows: Vec<(i32, f64)> = idx.into_iter().zip(scores(query, docs, instruct)).collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    TableIterator::new(rows)
}
