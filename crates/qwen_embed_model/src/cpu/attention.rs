//! Causal attention with padding on the CPU, over raw f32 buffers.
//!
//! Work is split into (sequence, query head, block of queries) tasks spread over the rayon pool. Each task
//! multiplies its queries by only the keys it may see (from the sequence's first real token, or the block's first
//! query if that is padding, to the block's last query), so neither the causal upper triangle nor the padding is
//! computed; applies the mask inside the softmax; and writes `P · V` straight into its place in the (batch, query,
//! heads × head_dim) output that the output projection reads, with no transposes, concatenations or copies.
//!
//! Two paths compute the tasks. On CPUs with AVX2, FMA and F16C, `attention_tiled`: the products on the linear
//! layers' micro-kernel, a block of keys at a time with an online softmax. Elsewhere, the general path here: the
//! products on `gemm` (the kernel under candle's CPU matmul) single-threaded inside each task, the scores of a
//! 128-query block held whole (at most 128 × length floats, never the whole matrix). Both take `exp` from a
//! vectorised polynomial (`elementwise::exp_shifted`), 10× faster than calling libm per score.

use rayon::prelude::*;

use crate::panels::SharedOut;

/// Queries per task of the general path: 128 × 2,048 keys × 4 bytes = 1 MiB of scores, and at most 1/16 of a long
/// block computed above the causal diagonal.
const QUERY_BLOCK: usize = 128;

/// Shapes of one attention call. `q` is (batch, heads, queries, head_dim) for the positions `first_query..len`;
/// `k` and `v` are (batch, kv_heads, len, head_dim); query head h uses kv head h / (heads / kv_heads).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub len: usize,
    pub head_dim: usize,
    pub first_query: usize,
}

/// softmax(q · kᵀ + mask) · v for already scaled `q`; returns (batch, queries, heads × head_dim). `pads[b]` is the
/// number of left-padding positions of sequence b: a real query sees the real keys up to itself; a padding query
/// (whose output is never used) sees only itself.
pub fn causal_attention(q: &[f32], k: &[f32], v: &[f32], pads: &[usize], s: Shape) -> Vec<f32> {
    assert_eq!(q.len(), s.batch * s.heads * (s.len - s.first_query) * s.head_dim);
    assert_eq!(k.len(), s.batch * s.kv_heads * s.len * s.head_dim);
    assert_eq!(v.len(), k.len());
    assert_eq!(pads.len(), s.batch);
    match crate::cpu::f32_kernel() {
        Some(kernel) => crate::attention_tiled::causal_attention(kernel, q, k, v, pads, s),
        None => causal_attention_gemm(q, k, v, pads, s),
    }
}

/// The (sequence, query head, first query of the block) of every task, later query blocks first: they see more keys,
/// so handing them out first lets the pool end evenly.
pub(crate) fn query_block_tasks(s: Shape, block: usize) -> Vec<(usize, usize, usize)> {
    let blocks = (s.len - s.first_query).div_ceil(block);
    (0..blocks)
        .rev()
        .flat_map(|blk| (0..s.batch).flat_map(move |b| (0..s.heads).map(move |h| (b, h, blk * block))))
        .collect()
}

/// The general path (any CPU): each task's two products on `gemm`, its scores held whole.
fn causal_attention_gemm(q: &[f32], k: &[f32], v: &[f32], pads: &[usize], s: Shape) -> Vec<f32> {
    let queries = s.len - s.first_query;
    let hd = s.head_dim;
    let mut out = vec![0f32; s.batch * queries * s.heads * hd];
    let out_ptr = SharedOut(out.as_mut_ptr());
    query_block_tasks(s, QUERY_BLOCK).into_par_iter().for_each(|(b, h, start)| {
        let out_ptr = &out_ptr; // the whole Sync wrapper, not its raw pointer field
        let n = QUERY_BLOCK.min(queries - start);
        let first_pos = s.first_query + start; // absolute position of the block's first query
        let pad = pads[b];
        let key_lo = pad.min(first_pos);
        let keys = first_pos + n - key_lo;
        let kv = b * s.kv_heads + h / (s.heads / s.kv_heads);
        let q_blk = &q[((b * s.heads + h) * queries + start) * hd..][..n * hd];
        let k_blk = &k[(kv * s.len + key_lo) * hd..][..keys * hd];
        let v_blk = &v[(kv * s.len + key_lo) * hd..][..keys * hd];
        // SAFETY: these rows of the output (sequence b, head h, this block) are written by this task alone.
        let out_rows = unsafe { out_ptr.0.add((b * queries + start) * s.heads * hd + h * hd) };
        SCORES.with_borrow_mut(|scores| {
            if scores.len() < n * keys {
                scores.resize(n * keys, 0.0); // grows a few times per thread, then is reused without zeroing
            }
            let scores = &mut scores[..n * keys];
            // scores (n × keys) = q_blk (n × hd) · k_blkᵀ (hd × keys)
            matmul(n, keys, hd, scores.as_mut_ptr(), keys, q_blk, (hd, 1), k_blk, (1, hd));
            for (i, row) in scores.chunks_exact_mut(keys).enumerate() {
                let visible = visible_keys(first_pos + i, pad);
                softmax_visible(row, visible.start() - key_lo, visible.end() - key_lo);
            }
            // output rows (n × hd, row stride heads × hd) = scores (n × keys) · v_blk (keys × hd)
            matmul(n, hd, keys, out_rows, s.heads * hd, scores, (keys, 1), v_blk, (hd, 1));
        });
    });
    out
}

/// The keys a query at position `pos` may see in a sequence with `pad` left-padding positions: a real token sees the
/// real tokens up to itself; a padding query (whose output is never used) sees only itself, so no row is empty.
pub fn visible_keys(pos: usize, pad: usize) -> std::ops::RangeInclusive<usize> {
    if pos < pad {
        pos..=pos
    } else {
        pad..=pos
    }
}

/// One task of the blocked paths (`attention_tiled`, `attention_onednn`): `n` queries of sequence `b` and query head `h`
/// from query `start`, in groups of `mr` rows (one micro-kernel call each), and the keys they may see.
pub(crate) struct QueryBlock {
    pub n: usize,
    pub groups: usize,
    mr: usize,
    /// The absolute position of the block's first query.
    pub first_pos: usize,
    /// The sequence's left padding.
    pub pad: usize,
    /// The keys the block may see: from the first visible one to the last query's own position (exclusive end).
    pub key_lo: usize,
    pub key_end: usize,
    /// The KV head (over all sequences) that query head `h` of sequence `b` reads.
    pub kv_head: usize,
}

impl QueryBlock {
    pub fn new((b, h, start): (usize, usize, usize), block: usize, mr: usize, pads: &[usize], s: Shape) -> Self {
        let n = block.min(s.len - s.first_query - start);
        let first_pos = s.first_query + start;
        let pad = pads[b];
        let kv_head = b * s.kv_heads + h / (s.heads / s.kv_heads);
        QueryBlock {
            n,
            groups: n.div_ceil(mr),
            mr,
            first_pos,
            pad,
            key_lo: pad.min(first_pos),
            key_end: first_pos + n,
            kv_head,
        }
    }

    /// Rows in group `g` (`mr`, or fewer in the last group).
    pub fn group_rows(&self, g: usize) -> usize {
        self.mr.min(self.n - g * self.mr)
    }

    /// One past group `g`'s last visible key: its last query's position + 1.
    pub fn group_end(&self, g: usize) -> usize {
        self.first_pos + g * self.mr + self.group_rows(g)
    }
}

/// One step of the online softmax (the blocked paths): folds the scores of one key block into a query row's running
/// `max` and `sum`, rescales its output so far (`out`), and leaves in `row` the probabilities of its visible keys
/// relative to the new max, 0 for every other key. `row` holds the block's keys from `key0`; `pos` and `pad` say which
/// keys the query at that position may see ([`visible_keys`]).
pub(crate) fn online_softmax_step(
    row: &mut [f32],
    key0: usize,
    (pos, pad): (usize, usize),
    (max, sum): (&mut f32, &mut f32),
    out: &mut [f32],
) {
    let end = key0 + row.len();
    let visible = visible_keys(pos, pad);
    let lo = (*visible.start()).clamp(key0, end) - key0;
    let hi = (*visible.end() + 1).clamp(key0, end) - key0;
    if lo < hi {
        let new_max = crate::elementwise::max_of(&row[lo..hi], *max);
        let block_sum = crate::elementwise::exp_shifted(&mut row[lo..hi], new_max);
        let scale = (*max - new_max).exp(); // 0 for the row's first visible block
        if scale != 1.0 {
            out.iter_mut().for_each(|o| *o *= scale);
        }
        *sum = *sum * scale + block_sum;
        *max = new_max;
    }
    row[..lo].fill(0.0);
    row[hi.max(lo)..].fill(0.0);
}

/// The blocked paths' last step: a task's `n` output rows (`acc`, row stride `ldo`, unnormalised) divided by their
/// softmax sums, written to the (batch, query, heads × head_dim) output at the task's sequence `b`, head `h` and first
/// query `start`.
pub(crate) fn write_rows(
    out: &SharedOut,
    acc: &[f32],
    ldo: usize,
    sums: &[f32],
    (b, h, start): (usize, usize, usize),
    s: Shape,
) {
    let (queries, hd) = (s.len - s.first_query, s.head_dim);
    for (i, &sum) in sums.iter().enumerate() {
        let inv = 1.0 / sum;
        // SAFETY: these rows of the output (sequence b, head h, this block) are written by this task alone.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(out.0.add((b * queries + start + i) * s.heads * hd + h * hd), hd) };
        dst.iter_mut().zip(&acc[i * ldo..][..hd]).for_each(|(d, &o)| *d = o * inv);
    }
}

/// Fills `buf` with `len` copies of `value`, reusing its allocation.
pub(crate) fn reset<T: Copy>(buf: &mut Vec<T>, len: usize, value: T) {
    buf.clear();
    buf.resize(len, value);
}

thread_local! {
    /// Each pool thread's score buffer, reused across tasks and calls.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// dst (m × n, row stride `dst_rs`) = lhs (m × k) · rhs (k × n), single-threaded; lhs and rhs given with their
/// (row, column) strides, which must keep every element inside the slices.
#[allow(clippy::too_many_arguments)]
fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    debug_assert!((m - 1) * lhs_rs + (k - 1) * lhs_cs < lhs.len());
    debug_assert!((k - 1) * rhs_rs + (n - 1) * rhs_cs < rhs.len());
    // SAFETY: the strides stay inside lhs and rhs (checked above in debug builds, by construction in the caller);
    // dst is the caller's m × n block.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Softmax over `row[lo..=hi]`; every other entry becomes 0.
fn softmax_visible(row: &mut [f32], lo: usize, hi: usize) {
    let visible = &mut row[lo..=hi];
    let max = visible.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let sum = crate::elementwise::exp_shifted(visible, max);
    let inv = 1.0 / sum;
    visible.iter_mut().for_each(|x| *x *= inv);
    row[..lo].fill(0.0);
    row[hi + 1..].fill(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_over_the_visible_keys_only() {
        let mut row: Vec<f32> = (0..40).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let want: Vec<f32> = {
            let vis = &row[3..=30];
            let max = vis.iter().cloned().fold(f32::MIN, f32::max);
            let sum: f64 = vis.iter().map(|x| ((x - max) as f64).exp()).sum();
            vis.iter().map(|x| (((x - max) as f64).exp() / sum) as f32).collect()
        };
        softmax_visible(&mut row, 3, 30);
        assert!(row[..3].iter().chain(&row[31..]).all(|&x| x == 0.0));
        for (g, w) in row[3..=30].iter().zip(&want) {
            assert!((g - w).abs() < 1e-7, "{g} vs {w}");
        }
    }

    /// The plain definition, in f64.
    fn reference(q: &[f32], k: &[f32], v: &[f32], pads: &[usize], s: Shape) -> Vec<f32> {
        let (queries, hd) = (s.len - s.first_query, s.head_dim);
        let mut out = vec![0f32; s.batch * queries * s.heads * hd];
        for b in 0..s.batch {
            for h in 0..s.heads {
                let kv = b * s.kv_heads + h / (s.heads / s.kv_heads);
                for qi in 0..queries {
                    let pos = s.first_query + qi;
                    let visible: Vec<usize> = if pos < pads[b] { vec![pos] } else { (pads[b]..=pos).collect() };
                    let qv = &q[((b * s.heads + h) * queries + qi) * hd..][..hd];
                    let scores: Vec<f64> = visible
                        .iter()
                        .map(|&j| (0..hd).map(|d| qv[d] as f64 * k[(kv * s.len + j) * hd + d] as f64).sum())
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let sum: f64 = scores.iter().map(|x| (x - max).exp()).sum();
                    for d in 0..hd {
                        let o: f64 = visible
                            .iter()
                            .zip(&scores)
                            .map(|(&j, x)| (x - max).exp() / sum * v[(kv * s.len + j) * hd + d] as f64)
                            .sum();
                        out[((b * queries + qi) * s.heads + h) * hd + d] = o as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_definition_with_padding_gqa_and_partial_queries() {
        type Attention = Box<dyn Fn(&[f32], &[f32], &[f32], &[usize], Shape) -> Vec<f32>>;
        let mut paths: Vec<(&str, Attention)> = vec![("gemm", Box::new(causal_attention_gemm))];
        match crate::cpu::f32_kernel() {
            Some(kernel) => paths.push((
                "tiled",
                Box::new(move |q, k, v, pads, s| crate::attention_tiled::causal_attention(kernel, q, k, v, pads, s)),
            )),
            None => println!("SKIPPED the tiled attention: no AVX2/FMA/F16C on this CPU"),
        }
        let fill = |n: usize, seed: f32| (0..n).map(|i| (i as f32 * 0.618 + seed).sin() * 1.5).collect::<Vec<_>>();
        // Over 256 keys (the tiled path's key block) and not a multiple of its 16-wide panels or 6-row groups; head
        // dims below, at and between multiples of 16; a padding query, a real one after long padding.
        for (len, first_query, pads, head_dim) in [
            (300, 0, vec![0, 17, 299], 8),
            (300, 299, vec![5, 0, 200], 8),
            (7, 0, vec![6, 0, 3], 8),
            (530, 0, vec![0, 260, 529], 24),
            (70, 3, vec![0, 1, 40], 32),
        ] {
            let s = Shape { batch: 3, heads: 4, kv_heads: 2, len, head_dim, first_query };
            let queries = len - first_query;
            let q = fill(s.batch * s.heads * queries * head_dim, 0.1);
            let k = fill(s.batch * s.kv_heads * len * head_dim, 0.7);
            let v = fill(k.len(), 1.3);
            let want = reference(&q, &k, &v, &pads, s);
            for (name, attention) in &paths {
                let got = attention(&q, &k, &v, &pads, s);
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst < 1e-5, "{name} {s:?}: max diff {worst}");
            }
        }
    }
}
