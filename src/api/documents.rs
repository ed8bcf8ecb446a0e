//! Long documents: `embed_chunks` (one row per chunk) and `embed_document` (one vector for the whole text).

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use qwen_embed_model::Weighting;

use crate::postgres::errors::{raise_with, OrRaise};
use crate::postgres::vector::Vector;
use crate::route;

fn count(name: &str, value: i32) -> usize {
    usize::try_from(value).unwrap_or_else(|_| {
        raise_with(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("qwen_embed: {name} must not be negative, got {value}"),
            None,
        )
    })
}

/// Splits a document into chunks of at most `chunk_tokens` tokens (closing token included), consecutive chunks
/// sharing at most `overlap` tokens (NULL gives no rows), cut at paragraph and sentence boundaries where possible, and embeds all chunks
/// in as few forward passes as qwen_embed.batch_tokens allows. With `overlap = 0` the chunks concatenate to `doc`.
#[pg_extern(stable, parallel_restricted, cost = 100000)]
fn embed_chunks(
    doc: Option<&str>,
    chunk_tokens: default!(i32, 512),
    overlap: default!(i32, 64),
    dim: default!(Option<i32>, "NULL"),
) -> TableIterator<'static, (name!(chunk_no, i32), name!(chunk, String), name!(embedding, Vector))> {
    let Some(doc) = doc else { return TableIterator::new(Vec::new()) };
    let (chunk_tokens, overlap) = (count("chunk_tokens", chunk_tokens), count("overlap", overlap));
    let chunks = route::embed_chunks(doc.to_string(), chunk_tokens, overlap, dim.map(i64::from));
    let rows: Vec<_> = chunks
        .into_iter()
        .enumerate()
        .map(|(i, (range, v))| (i as i32 + 1, doc[range].to_string(), Vector(v)))
        .collect();
    TableIterator::new(rows)
}

/// One vector for a document of any length: the weighted mean of its chunk vectors (see `embed_chunks`),
/// renormalised. `weighting`: 'uniform', 'position' (first and last chunks count twice as much as the middle) or
/// 'tokens' (by chunk length). A document that fits one chunk gives exactly `embed(doc)`; NULL gives NULL.
#[pg_extern(stable, parallel_restricted, cost = 100000)]
fn embed_document(
    doc: Option<&str>,
    chunk_tokens: default!(i32, 512),
    overlap: default!(i32, 64),
    weighting: default!(&str, "'uniform'"),
    dim: default!(Option<i32>, "NULL"),
) -> Option<Vector> {
    let doc = doc?.to_string();
    let (chunk_tokens, overlap) = (count("chunk_tokens", chunk_tokens), count("overlap", overlap));
    let weighting: Weighting = weighting.parse().or_raise();
    Some(Vector(route::embed_document(doc, chunk_tokens, overlap, weighting, dim.map(i64::from))))
}
