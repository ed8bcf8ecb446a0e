//! The CPU attention on oneDNN's matmuls, for the CPUs whose linear layers run oneDNN's bf16 kernel: Q·Kᵀ and P·V on
//! its brgemm (AMX tiles where the CPU has them, `vdpbf16ps` otherwise) with bf16 operands and f32 accumulation, the
//! softmax in f32 with an online softmax over blocks of keys — the structure of PyTorch's CPU flash attention
//! (`FlashAttentionKernel.cpp`), on the same library.
//!
//! Generic over oneDNN's element type, like the linear layers' glue: the f32 instantiation runs the same blocking,
//! masking and primitive cache on any x86-64 CPU (and is held to the f32 attention there), the bf16 one where oneDNN
//! has a bf16 brgemm.
//!
//! K and V are converted once per call to `T`, each KV head's rows padded with zeros to whole [`KEY_STEP`]s. A task is
//! one (sequence, KV head, block of queries): the queries of every query head reading that KV head are stacked into
//! one left operand (grouped-query attention shares K and V, so one product serves them all). For each block of up to
//! [`KEY_BLOCK`] keys up to the block's last query: scores = Q · Kᵀ, the online softmax step per row (masking the
//! keys the row may not see), P rounded to `T`, and out += P · V. The output is divided by the sum at the end.

use rayon::prelude::*;

use crate::attention::{online_softmax_step, query_block_tasks, reset, write_rows, QueryBlock, Shape};
use crate::onednn::{self, Element, Rhs};
use crate::panels::SharedOut;

/// Queries per task and query head. With 2 query heads per KV head a product has 128 rows: the brgemm's copy of the
/// right operand, made in every call, is spread over that many rows.
const QUERY_BLOCK: usize = 64;
/// Query rows are padded to a multiple of this (fewer distinct primitives for short sequences).
const QUERY_STEP: usize = 16;
/// Keys per block at most. A task's scores (128 × 512 floats), its P, and the block's K and V (128 KiB each in bf16 at
/// head dim 128) stay in L2.
const KEY_BLOCK: usize = 512;
/// Key blocks are a multiple of this long, so a shape has at most `KEY_BLOCK / KEY_STEP` primitives per product.
const KEY_STEP: usize = 64;

/// Each pool thread's working buffers, reused across tasks and calls.
struct Scratch<T> {
    /// The task's queries, row-major ((query heads × padded queries) × head_dim).
    q: Vec<T>,
    /// One key block's scores, row-major (rows × block).
    scores: Vec<f32>,
    /// The same block's probabilities.
    p: Vec<T>,
    /// The block's P · V.
    pv: Vec<f32>,
    /// Output rows (unnormalised).
    out: Vec<f32>,
    /// Running max and sum of each row.
    max: Vec<f32>,
    sum: Vec<f32>,
}

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Scratch { q: vec![], scores: vec![], p: vec![], pv: vec![], out: vec![], max: vec![], sum: vec![] }
    }
}

/// Each thread's scratch for element type `T` (one per type: the f32 tests and the bf16 path may share a process).
fn with_scratch<T: Element, R>(f: impl FnOnce(&mut Scratch<T>) -> R) -> R {
    use std::any::{Any, TypeId};
    use std::collections::HashMap;
    thread_local! {
        static SCRATCH: std::cell::RefCell<HashMap<TypeId, Box<dyn Any>>> = Default::default();
    }
    SCRATCH.with_borrow_mut(|all| {
        let entry = all.entry(TypeId::of::<T>()).or_insert_with(|| Box::new(Scratch::<T>::default()));
        f(entry.downcast_mut().expect("keyed by its type"))
    })
}

/// Makes `buf` at least `len` long, keeping what it holds.
fn grow<T: Default + Clone>(buf: &mut Vec<T>, len: usize) {
    if buf.len() < len {
        buf.resize(len, T::default());
    }
}

/// [`crate::attention::causal_attention`] on oneDNN in the element type of the linear layers' `kernel`.
pub fn causal_attention_in(
    kernel: onednn::Kernel,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pads: &[usize],
    s: Shape,
) -> onednn::Result<Vec<f32>> {
    match kernel {
        onednn::Kernel::F32 => causal_attention::<f32>(q, k, v, pads, s),
        onednn::Kernel::Bf16(_) => causal_attention::<onednn::Bf16>(q, k, v, pads, s),
    }
}

/// [`crate::attention::causal_attention`] on oneDNN in `T`.
pub fn causal_attention<T: Element>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pads: &[usize],
    s: Shape,
) -> onednn::Result<Vec<f32>> {
    let (queries, hd, group) = (s.len - s.first_query, s.head_dim, s.heads / s.kv_heads);
    let len_pad = s.len.next_multiple_of(KEY_STEP);
    // K and V of every (sequence, KV head) in T, zero rows up to len_pad.
    let convert = |x: &[f32]| {
        let mut out = vec![T::default(); s.batch * s.kv_heads * len_pad * hd];
        out.par_chunks_mut(len_pad * hd).zip(x.par_chunks(s.len * hd)).for_each(|(dst, src)| {
            T::convert(src, &mut dst[..src.len()]);
        });
        out
    };
    let (kt, vt) = (convert(k), convert(v));
    let mut out = vec![0f32; s.batch * queries * s.heads * hd];
    let out_ptr = SharedOut(out.as_mut_ptr());
    // One task per (sequence, KV head, query block): the tasks of its first query head, mapped to the KV head.
    let kv_shape = Shape { heads: s.kv_heads, ..s };
    query_block_tasks(kv_shape, QUERY_BLOCK).into_par_iter().try_for_each(|(b, kvh, start)| {
        let out_ptr = &out_ptr; // the whole Sync wrapper, not its raw pointer field
        let blk = QueryBlock::new((b, kvh * group, start), QUERY_BLOCK, 1, pads, s);
        let (n, first_pos, pad) = (blk.n, blk.first_pos, blk.pad);
        let n_pad = n.next_multiple_of(QUERY_STEP);
        let rows = group * n_pad;
        let kv = &kt[blk.kv_head * len_pad * hd..][..len_pad * hd];
        let vv = &vt[blk.kv_head * len_pad * hd..][..len_pad * hd];
        with_scratch::<T, _>(|sc| {
            // Row j × n_pad + i: query head kvh × group + j, query start + i; rows past n stay zero.
            reset(&mut sc.q, rows * hd, T::default());
            for j in 0..group {
                let h = kvh * group + j;
                let src = &q[((b * s.heads + h) * queries + start) * hd..][..n * hd];
                let dst = &mut sc.q[j * n_pad * hd..][..n * hd];
                T::convert(src, dst);
            }
            reset(&mut sc.out, rows * hd, 0.0);
            reset(&mut sc.max, rows, f32::NEG_INFINITY);
            reset(&mut sc.sum, rows, 0.0);
            let key_end = blk.key_end.next_multiple_of(KEY_STEP);
            for key0 in (blk.key_lo / KEY_STEP * KEY_STEP..key_end).step_by(KEY_BLOCK) {
                let width = KEY_BLOCK.min(key_end - key0);
                // Every element the products write is overwritten (scores, pv) or read only for rows that are
                // written first (p: the padding rows' values are never used), so none is cleared.
                grow(&mut sc.scores, rows * width);
                grow(&mut sc.p, rows * width);
                grow(&mut sc.pv, rows * hd);
                let (keys, values) = (&kv[key0 * hd..][..width * hd], &vv[key0 * hd..][..width * hd]);
                onednn::product(rows, hd, width, &sc.q, keys, Rhs::Transposed, &mut sc.scores)?;
                for j in 0..group {
                    for i in 0..n {
                        let r = j * n_pad + i;
                        let row = &mut sc.scores[r * width..][..width];
                        let acc = &mut sc.out[r * hd..][..hd];
                        online_softmax_step(row, key0, (first_pos + i, pad), (&mut sc.max[r], &mut sc.sum[r]), acc);
                        T::convert(row, &mut sc.p[r * width..][..width]);
                    }
                }
                onednn::product(rows, width, hd, &sc.p, values, Rhs::RowMajor, &mut sc.pv)?;
                sc.out.iter_mut().zip(&sc.pv).for_each(|(o, &x)| *o += x);
            }
            for j in 0..group {
                let rows = j * n_pad..j * n_pad + n;
                let acc = &sc.out[rows.start * hd..rows.end * hd];
                write_rows(out_ptr, acc, hd, &sc.sum[rows], (b, kvh * group + j, start), s);
            }
            Ok(())
        })
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.618 + seed).sin() * 1.5).collect()
    }

    /// The shapes the blocked paths are checked on, and a long one with several key blocks and query blocks.
    fn cases() -> Vec<Shape> {
        let mut cases = vec![];
        for (len, first_query) in [(300, 0), (300, 299), (7, 0), (70, 3), (1100, 0), (1100, 1099)] {
            cases.push(Shape { batch: 3, heads: 4, kv_heads: 2, len, head_dim: 24, first_query });
        }
        cases.push(Shape { batch: 1, heads: 2, kv_heads: 2, len: 65, head_dim: 128, first_query: 0 });
        cases
    }

    fn pads(s: Shape) -> Vec<usize> {
        (0..s.batch).map(|b| [0, 17, s.len - 1][b % 3].min(s.len - 1)).collect()
    }

    fn worst_diff<Ty: Element>(s: Shape) -> f32 {
        let pads = pads(s);
        let queries = s.len - s.first_query;
        let q = fill(s.batch * s.heads * queries * s.head_dim, 0.1);
        let k = fill(s.batch * s.kv_heads * s.len * s.head_dim, 0.7);
        let v = fill(k.len(), 1.3);
        let want = crate::attention::causal_attention(&q, &k, &v, &pads, s);
        let got = causal_attention::<Ty>(&q, &k, &v, &pads, s).expect("oneDNN runs");
        assert!(got.iter().all(|x| x.is_finite()));
        got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max)
    }

    /// In f32 (any x86-64 CPU) the blocking, masking, padding and head grouping give the f32 attention's result.
    #[test]
    fn in_f32_matches_the_f32_attention() {
        for s in cases() {
            let worst = worst_diff::<f32>(s);
            assert!(worst < 1e-5, "{s:?}: max diff {worst}");
        }
    }

    /// In bf16 (where oneDNN has a bf16 brgemm): within bf16 rounding of the f32 attention.
    #[test]
    fn in_bf16_matches_the_f32_attention_to_bf16_rounding() {
        if onednn::bf16_kernel().is_none() {
            return println!(
                "SKIPPED attention_onednn::in_bf16_matches_the_f32_attention_to_bf16_rounding: no bf16 brgemm"
            );
        }
        for s in cases() {
            let worst = worst_diff::<onednn::Bf16>(s);
            assert!(worst < 2e-2, "{s:?}: max diff {worst}");
        }
    }
}
