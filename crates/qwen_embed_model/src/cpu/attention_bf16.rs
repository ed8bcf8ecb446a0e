//! The CPU attention in bf16 (AVX512-BF16: `vdpbf16ps`), for the CPUs whose linear layers run oneDNN's bf16 kernel,
//! as PyTorch's CPU flash attention computes it there: Q·Kᵀ and P·V with bf16 operands and f32 accumulation, the
//! softmax in f32, a block of keys at a time with an online softmax (the structure of `attention_tiled`, whose f32
//! result it matches to bf16 rounding).
//!
//! K and V are packed once per call into 64-wide panels of bf16 pairs, the layout `vdpbf16ps` multiplies: K as 64 keys
//! × (head-dim pairs), V as 64 head dims × (key pairs); each is shared by the query heads of its KV head and by every
//! query block. A task rounds its queries to bf16 pairs, then for each block of `KEY_BLOCK` keys: scores = Q · Kᵀ on
//! the micro-kernel (panels past a group's last visible key skipped), the running max and sum updated and its output
//! rows rescaled, the block's probabilities rounded to bf16 pairs, and output += P · V (key pairs past a group's last
//! visible key skipped). The output is divided by the sum at the end.

use rayon::prelude::*;

use crate::attention::{online_softmax_step, query_block_tasks, reset, write_rows, QueryBlock, Shape};
use crate::cpu::Avx512Bf16;
use crate::elementwise::f32_to_bf16;
use crate::panels::SharedOut;

/// Columns of a panel and of a micro-kernel call: four 16-lane registers.
const PANEL: usize = 64;
/// Rows per micro-kernel call: 6 × 4 accumulators + 4 panel registers + the broadcast fit the 32 registers.
const MR: usize = 6;
/// Queries per task: 8 row groups.
const QUERY_BLOCK: usize = 8 * MR;
/// Keys per block: 4 panels. The block's scores (48 × 256 floats) and its K and V panels (64 KiB each at head dim
/// 128) stay in L2.
const KEY_BLOCK: usize = 4 * PANEL;

/// Two values rounded to bf16, as one `vdpbf16ps` operand element (the first in the low half).
fn pair(lo: f32, hi: f32) -> u32 {
    f32_to_bf16(lo) as u32 | (f32_to_bf16(hi) as u32) << 16
}

/// K and V of every (sequence, KV head), packed as bf16 pairs.
struct PackedKv {
    /// Key panels per sequence: len / 64, rounded up.
    key_panels: usize,
    /// Head-dim pairs: head_dim / 2, rounded up.
    dim_pairs: usize,
    /// Head-dim panels: head_dim / 64, rounded up.
    dim_panels: usize,
    /// (sequence × KV head, key panel, head-dim pair, 64 keys).
    k: Vec<u32>,
    /// (sequence × KV head, head-dim panel, key pair, 64 head dims), keys padded to whole panels.
    v: Vec<u32>,
}

impl PackedKv {
    fn pack(k: &[f32], v: &[f32], s: Shape) -> Self {
        let (len, hd) = (s.len, s.head_dim);
        let (key_panels, dim_pairs, dim_panels) = (len.div_ceil(PANEL), hd.div_ceil(2), hd.div_ceil(PANEL));
        let key_pairs = key_panels * PANEL / 2;
        let heads = s.batch * s.kv_heads;
        let (k_size, v_size) = (key_panels * dim_pairs * PANEL, dim_panels * key_pairs * PANEL);
        let mut pk = vec![0u32; heads * k_size];
        let mut pv = vec![0u32; heads * v_size];
        pk.par_chunks_mut(k_size).zip(pv.par_chunks_mut(v_size)).enumerate().for_each(|(kvh, (pk, pv))| {
            let (k, v) = (&k[kvh * len * hd..][..len * hd], &v[kvh * len * hd..][..len * hd]);
            let at = |m: &[f32], row: usize, col: usize| if row < len && col < hd { m[row * hd + col] } else { 0.0 };
            for key in 0..len {
                let (panel, lane) = (key / PANEL, key % PANEL);
                for d in 0..dim_pairs {
                    pk[(panel * dim_pairs + d) * PANEL + lane] = pair(at(k, key, 2 * d), at(k, key, 2 * d + 1));
                }
            }
            for j in 0..len.div_ceil(2) {
                for d in 0..hd {
                    let (dp, lane) = (d / PANEL, d % PANEL);
                    pv[(dp * key_pairs + j) * PANEL + lane] = pair(at(v, 2 * j, d), at(v, 2 * j + 1, d));
                }
            }
        });
        PackedKv { key_panels, dim_pairs, dim_panels, k: pk, v: pv }
    }
}

/// Each pool thread's working buffers, reused across tasks and calls.
#[derive(Default)]
struct Scratch {
    /// The task's queries as bf16 pairs, row-major (n × dim_pairs).
    q: Vec<u32>,
    /// One key block's scores, row-major (n × KEY_BLOCK).
    scores: Vec<f32>,
    /// The same block's probabilities as bf16 pairs, row-major (n × KEY_BLOCK / 2).
    p: Vec<u32>,
    /// Output rows (unnormalised), dim_panels × 64 wide.
    out: Vec<f32>,
    /// Running max and sum of each query row.
    max: Vec<f32>,
    sum: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// [`crate::attention::causal_attention`] in bf16; the token proves the CPU has AVX512F and AVX512-BF16.
pub fn causal_attention(kernel: Avx512Bf16, q: &[f32], k: &[f32], v: &[f32], pads: &[usize], s: Shape) -> Vec<f32> {
    let queries = s.len - s.first_query;
    let hd = s.head_dim;
    let kv = PackedKv::pack(k, v, s);
    let (dim_pairs, ldo, key_pairs) = (kv.dim_pairs, kv.dim_panels * PANEL, kv.key_panels * PANEL / 2);
    let mut out = vec![0f32; s.batch * queries * s.heads * hd];
    let out_ptr = SharedOut(out.as_mut_ptr());
    query_block_tasks(s, QUERY_BLOCK).into_par_iter().for_each(|(b, h, start)| {
        let out_ptr = &out_ptr; // the whole Sync wrapper, not its raw pointer field
        let blk = QueryBlock::new((b, h, start), QUERY_BLOCK, MR, pads, s);
        let (n, groups, first_pos, pad, kvh) = (blk.n, blk.groups, blk.first_pos, blk.pad, blk.kv_head);
        let (key_lo, key_end) = (blk.key_lo, blk.key_end);
        let (group_rows, group_end) = (|g| blk.group_rows(g), |g| blk.group_end(g));
        let pk = &kv.k[kvh * kv.key_panels * dim_pairs * PANEL..][..kv.key_panels * dim_pairs * PANEL];
        let pv = &kv.v[kvh * kv.dim_panels * key_pairs * PANEL..][..kv.dim_panels * key_pairs * PANEL];
        SCRATCH.with_borrow_mut(|sc| {
            reset(&mut sc.q, n * dim_pairs, 0);
            let q_rows = &q[((b * s.heads + h) * queries + start) * hd..][..n * hd];
            for (dst, row) in sc.q.chunks_exact_mut(dim_pairs).zip(q_rows.chunks_exact(hd)) {
                for (d, p) in dst.iter_mut().enumerate() {
                    *p = pair(row[2 * d], row.get(2 * d + 1).copied().unwrap_or(0.0));
                }
            }
            reset(&mut sc.out, n * ldo, 0.0);
            reset(&mut sc.max, n, f32::NEG_INFINITY);
            reset(&mut sc.sum, n, 0.0);
            reset(&mut sc.scores, n * KEY_BLOCK, 0.0);
            reset(&mut sc.p, n * KEY_BLOCK / 2, 0);
            for key0 in (key_lo / PANEL * PANEL..key_end).step_by(KEY_BLOCK) {
                let block_end = (key0 + KEY_BLOCK).min(key_end.next_multiple_of(PANEL));
                // scores (n × block) = Q · K_blockᵀ, skipping panels past a group's last visible key.
                for panel in key0 / PANEL..block_end / PANEL {
                    for g in (0..groups).filter(|&g| panel * PANEL < group_end(g)) {
                        // SAFETY: the token says AVX512F and AVX512-BF16 are present; the group's rows hold dim_pairs
                        // pairs each, the panel dim_pairs steps of 64, and the tile (the group's rows, the panel's 64
                        // columns) lies inside this thread's own score buffer.
                        unsafe {
                            tile(
                                kernel,
                                group_rows(g),
                                Tile {
                                    a: sc.q[g * MR * dim_pairs..].as_ptr(),
                                    lda: dim_pairs,
                                    b: pk[panel * dim_pairs * PANEL..].as_ptr(),
                                    pairs: dim_pairs,
                                    c: sc.scores[g * MR * KEY_BLOCK + panel * PANEL - key0..].as_mut_ptr(),
                                    ldc: KEY_BLOCK,
                                    cols: PANEL,
                                    accumulate: false,
                                },
                            )
                        }
                    }
                }
                // Online softmax: each row's visible keys in this block update its max and sum, rescale its output
                // so far, and become probabilities relative to the new max (every other key of the row 0), rounded
                // to bf16 pairs up to the group's last visible key.
                for g in 0..groups {
                    let kc = group_end(g).min(block_end).saturating_sub(key0);
                    for r in 0..group_rows(g) {
                        let i = g * MR + r;
                        let row = &mut sc.scores[i * KEY_BLOCK..][..kc];
                        let out = &mut sc.out[i * ldo..][..ldo];
                        online_softmax_step(row, key0, (first_pos + i, pad), (&mut sc.max[i], &mut sc.sum[i]), out);
                        let p = &mut sc.p[i * KEY_BLOCK / 2..][..kc.div_ceil(2)];
                        for (j, p) in p.iter_mut().enumerate() {
                            *p = pair(row[2 * j], row.get(2 * j + 1).copied().unwrap_or(0.0));
                        }
                    }
                }
                // out (n × ldo) += P (n × keys) · V_block, each group only up to its last visible key.
                for dp in 0..kv.dim_panels {
                    for g in 0..groups {
                        let kc = group_end(g).min(block_end).saturating_sub(key0);
                        if kc == 0 {
                            continue;
                        }
                        // SAFETY: as above; the group's probabilities hold kc / 2 (rounded up) ≤ KEY_BLOCK / 2 pairs
                        // per row, the V panel holds the key pairs from key0 / 2 on (padded to whole panels), and
                        // the tile lies inside this thread's own output rows.
                        unsafe {
                            tile(
                                kernel,
                                group_rows(g),
                                Tile {
                                    a: sc.p[g * MR * KEY_BLOCK / 2..].as_ptr(),
                                    lda: KEY_BLOCK / 2,
                                    b: pv[(dp * key_pairs + key0 / 2) * PANEL..].as_ptr(),
                                    pairs: kc.div_ceil(2),
                                    c: sc.out[g * MR * ldo + dp * PANEL..].as_mut_ptr(),
                                    ldc: ldo,
                                    cols: PANEL,
                                    accumulate: true,
                                },
                            )
                        }
                    }
                }
            }
            write_rows(out_ptr, &sc.out, ldo, &sc.sum, (b, h, start), s);
        });
    });
    out
}

/// One micro-kernel call: C[0..R, 0..cols] (+)= A[0..R] · B over `pairs` steps; A's rows are bf16 pairs at row stride
/// `lda`, B one panel of 64 pairs per step, C floats at row stride `ldc`.
struct Tile {
    a: *const u32,
    lda: usize,
    b: *const u32,
    pairs: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    /// Add to C rather than overwrite it.
    accumulate: bool,
}

/// Dispatches the micro-kernel for the `rows` (1–6) valid rows of a group.
///
/// # Safety
/// `a` must hold `rows` rows of `pairs` values at stride `lda`, `b` `pairs` steps of 64, and `c` `rows` rows of `cols`
/// (≤ 64) floats at stride `ldc`.
unsafe fn tile(_kernel: Avx512Bf16, rows: usize, t: Tile) {
    match rows {
        1 => micro::<1>(t),
        2 => micro::<2>(t),
        3 => micro::<3>(t),
        4 => micro::<4>(t),
        5 => micro::<5>(t),
        _ => micro::<MR>(t),
    }
}

/// # Safety
/// The CPU must have AVX512F and AVX512-BF16 (the token [`tile`] takes); the pointers as [`tile`] says.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn micro<const R: usize>(t: Tile) {
    use std::arch::x86_64::*;
    let masks: [__mmask16; 4] =
        std::array::from_fn(|j| ((1u32 << t.cols.saturating_sub(j * 16).min(16)) - 1) as __mmask16);
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    if t.accumulate {
        for (row, acc_row) in acc.iter_mut().enumerate() {
            for (j, acc) in acc_row.iter_mut().enumerate() {
                *acc = _mm512_maskz_loadu_ps(masks[j], t.c.add(row * t.ldc + j * 16));
            }
        }
    }
    for p in 0..t.pairs {
        let bp = t.b.add(p * PANEL) as *const __m512i;
        let bv: [__m512bh; 4] =
            std::array::from_fn(|j| std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(j))));
        for (row, acc_row) in acc.iter_mut().enumerate() {
            let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*t.a.add(row * t.lda + p) as i32));
            for j in 0..4 {
                acc_row[j] = _mm512_dpbf16_ps(acc_row[j], av, bv[j]);
            }
        }
    }
    for (row, acc_row) in acc.iter().enumerate() {
        for (j, v) in acc_row.iter().enumerate() {
            _mm512_mask_storeu_ps(t.c.add(row * t.ldc + j * 16), masks[j], *v);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn micro<const R: usize>(_: Tile) {
    unreachable!("no Avx512Bf16 token exists off x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the general f32 path on the same inputs: bf16 operands cost about 3 significant digits, so outputs of
    /// order 1 agree to a few 1e-3; padding, partial panels and the last query alone included.
    #[test]
    fn matches_the_f32_attention_to_bf16_rounding() {
        let Some(kernel) = crate::cpu::avx512_bf16() else {
            return println!("SKIPPED attention_bf16::matches_the_f32_attention_to_bf16_rounding: no AVX512-BF16");
        };
        let (b, nh, nkv, hd) = (3, 4, 2, 80);
        for (len, pads) in [(70, [0, 13, 69]), (300, [0, 1, 257]), (5, [4, 0, 2])] {
            for first_query in [0, len - 1] {
                let s = Shape { batch: b, heads: nh, kv_heads: nkv, len, head_dim: hd, first_query };
                let fill = |n: usize, seed: f32| (0..n).map(|i| (i as f32 * 0.618 + seed).sin()).collect::<Vec<f32>>();
                let q = fill(b * nh * (len - first_query) * hd, 0.3);
                let (k, v) = (fill(b * nkv * len * hd, 0.9), fill(b * nkv * len * hd, 1.7));
                let want = crate::attention::causal_attention(&q, &k, &v, &pads, s);
                let got = causal_attention(kernel, &q, &k, &v, &pads, s);
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst < 1e-2, "len {len}, first_query {first_query}: max diff {worst}");
                assert!(got.iter().all(|x| x.is_finite()));
            }
        }
    }
}
