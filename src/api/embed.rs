//! The SQL functions. Thin: argument handling and NULL conventions here, the work in `route` and the model core.

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::postgres::errors::raise_with;
use crate::postgres::vector::{Vector, VectorArray};
use crate::route::{self, call_site, statement_memo};

/// `embed(input, instruct, dim)`: the embedding of one text as a pgvector `vector`; NULL input gives NULL.
/// STABLE (the result depends on qwen_embed.model_path). Each call site remembers its last result, so a constant
/// argument in a per-row expression is computed once per query (`call_site`), and a per-backend cache answers
/// repeated texts across queries. The high COST tells the planner a forward pass is expensive.
#[pg_extern(stable, parallel_restricted, cost = 10000, name = "embed")]
fn embed(
    input: Option<&str>,
    instruct: default!(Option<&str>, "NULL"),
    dim: default!(Option<i32>, "NULL"),
    fcinfo: pg_sys::FunctionCallInfo,
) -> Option<Vector> {
    let key = route::ResultKey::current(input?, instruct, dim.map(i64::from));
    Some(Vector(call_site::embed(fcinfo, key)))
}

/// `embed(inputs text[], instruct, dim)`: one vector per element, in order, computed in batched forward passes;
/// NULL elements give NULL elements.
#[pg_extern(stable, parallel_restricted, cost = 10000, name = "embed")]
fn embed_array(
    inputs: Option<Array<&str>>,
    instruct: default!(Option<&str>, "NULL"),
    dim: default!(Option<i32>, "NULL"),
) -> Option<VectorArray> {
    let inputs = inputs?;
    let items: Vec<Option<String>> = inputs.iter().map(|t| t.map(str::to_string)).collect();
    let texts: Vec<String> = items.iter().flatten().cloned().collect();
    let mut vectors = if texts.is_empty() {
        Vec::new()
    } else {
        statement_memo::embed_array(texts, instruct.map(str::to_string), dim.map(i64::from))
    }
    .into_iter();
    Some(VectorArray(items.iter().map(|t| t.as_ref().and_then(|_| vectors.next()).map(Vector)).collect()))
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        raise_with(
            PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
            format!("different vector dimensions {} and {}", a.len(), b.len()),
            Some("Compare embeddings made with the same model and dim.".into()),
        );
    }
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x as f64, *y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        // Undefined for a zero vector; 0 ("unrelated") keeps thresholds and ORDER BY ... DESC meaningful.
        return 0.0;
    }
    (dot / (na.sqrt() * nb.sqrt())).clamp(-1.0, 1.0)
}

/// Cosine similarity of two vectors (1 = same direction). A zero vector gives 0.
#[pg_extern(immutable, parallel_safe, strict, name = "cosine_sim")]
fn cosine_sim(a: Vector, b: Vector) -> f64 {
    cosine(&a.0, &b.0)
}

/// Cosine similarity of two `real[]` (NULL elements are an error).
#[pg_extern(immutable, parallel_safe, strict, name = "cosine_sim")]
fn cosine_sim_real(a: Array<f32>, b: Array<f32>) -> f64 {
    let collect = |arr: Array<f32>| -> Vec<f32> {
        arr.iter()
            .map(|x| {
                x.unwrap_or_else(|| {
                    raise_with(
                        PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                        "array must not contain NULLs".into(),
                        None,
                    )
                })
            })
            .collect()
    };
    cosine(&collect(a), &collect(b))
}

/// Similarity of two texts. With an instruction, `a` is treated as the query (instruction-prefixed) and `b` as the
/// document, as Qwen3-Embedding is trained.
#[pg_extern(stable, parallel_restricted, cost = 20000)]
fn semantic_similarity(a: Option<&str>, b: Option<&str>, instruct: default!(Option<&str>, "NULL")) -> Option<f64> {
    let (a, b) = (a?, b?);
    Some(cosine(&route::embed_one(a, instruct, None), &route::embed_one(b, None, None)))
}

/// Tokens the model sees for a text (with its instruction and the closing token), to check inputs against
/// qwen_embed.max_length before embedding them.
#[pg_extern(stable, parallel_restricted)]
fn token_count(input: Option<&str>, instruct: default!(Option<&str>, "NULL")) -> Option<i32> {
    Some(route::count_tokens(input?, instruct) as i32)
}
