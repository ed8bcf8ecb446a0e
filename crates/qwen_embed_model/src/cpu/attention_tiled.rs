//! The CPU attention on the packed f32 micro-kernel (x86-64 with AVX2, FMA and F16C): the result of `attention`'s
//! general path (to rounding), computed a block of keys at a time with an online softmax, so that a task's scores never
//! leave L2 whatever the sequence length, and both products run on the kernel the linear layers use.
//!
//! K and V are packed once per call into 16-wide panels (K: 16 keys per head-dim step; V: 16 head dims per key step),
//! shared by the query heads of their KV head and by every query block. A task packs its queries into groups of 6,
//! then for each block of `KEY_PANELS` × 16 keys: scores = Q · Kᵀ on the micro-kernel (panels past a group's last
//! visible key skipped), the running max and sum updated and its output rows rescaled (online softmax), the block's
//! probabilities written as the next product's interleaved operand, and output += P · V on the micro-kernel (steps past
//! a group's last visible key skipped). The output is divided by the sum at the end.

use rayon::prelude::*;

use crate::attention::{online_softmax_step, query_block_tasks, reset, write_rows, QueryBlock, Shape};
use crate::cpu::F32Kernel;
use crate::micro_kernel::{interleave_rows, tile, Step32, Tile, MR, NR};
use crate::panels::SharedOut;

/// Queries per task: 8 row groups.
const QUERY_BLOCK: usize = 8 * MR;
/// Key panels per block: 256 keys. A block's scores and probabilities (48 × 256 floats each) and its K and V panels
/// (128 KiB each at head dim 128) stay in L2.
const KEY_PANELS: usize = 16;

/// K and V of every (sequence, KV head), packed for the micro-kernel.
struct PackedKv {
    /// Key panels per sequence: len / 16, rounded up.
    panels: usize,
    /// Head-dim panels: head_dim / 16, rounded up.
    dim_panels: usize,
    /// (sequence × KV head, key panel, head dim) steps of 16 keys.
    k: Vec<Step32>,
    /// (sequence × KV head, head-dim panel, key) steps of 16 head dims, keys padded to `panels` × 16.
    v: Vec<Step32>,
}

impl PackedKv {
    fn pack(k: &[f32], v: &[f32], s: Shape) -> Self {
        let (len, hd) = (s.len, s.head_dim);
        let (panels, dim_panels) = (len.div_ceil(NR), hd.div_ceil(NR));
        let heads = s.batch * s.kv_heads;
        let zero = Step32([0.0; NR]);
        let mut pk = vec![zero; heads * panels * hd];
        let mut pv = vec![zero; heads * dim_panels * panels * NR];
        pk.par_chunks_mut(panels * hd).zip(pv.par_chunks_mut(dim_panels * panels * NR)).enumerate().for_each(
            |(kvh, (pk, pv))| {
                let (k, v) = (&k[kvh * len * hd..][..len * hd], &v[kvh * len * hd..][..len * hd]);
                for (t, (k_row, v_row)) in k.chunks_exact(hd).zip(v.chunks_exact(hd)).enumerate() {
                    let (p, lane) = (t / NR, t % NR);
                    for (d, &x) in k_row.iter().enumerate() {
                        pk[p * hd + d].0[lane] = x;
                    }
                    for (d, &x) in v_row.iter().enumerate() {
                        pv[(d / NR) * panels * NR + t].0[d % NR] = x;
                    }
                }
            },
        );
        PackedKv { panels, dim_panels, k: pk, v: pv }
    }
}

/// Each pool thread's working buffers, reused across tasks and calls.
#[derive(Default)]
struct Scratch {
    /// The task's queries, interleaved 6 per head-dim step per group.
    q: Vec<f32>,
    /// One key block's scores, row-major (QUERY_BLOCK × KEY_PANELS × 16).
    scores: Vec<f32>,
    /// The same block's probabilities, interleaved 6 per key per group.
    p: Vec<f32>,
    /// Output rows (unnormalised), dim_panels × 16 wide.
    out: Vec<f32>,
    /// Running max and sum of each query row.
    max: Vec<f32>,
    sum: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// [`crate::attention::causal_attention`] on the micro-kernel; the kernel token proves the CPU has its instructions.
pub fn causal_attention(_kernel: F32Kernel, q: &[f32], k: &[f32], v: &[f32], pads: &[usize], s: Shape) -> Vec<f32> {
    let queries = s.len - s.first_query;
    let hd = s.head_dim;
    let kv = PackedKv::pack(k, v, s);
    let ldo = kv.dim_panels * NR;
    let mut out = vec![0f32; s.batch * queries * s.heads * hd];
    let out_ptr = SharedOut(out.as_mut_ptr());
    query_block_tasks(s, QUERY_BLOCK).into_par_iter().for_each(|(b, h, start)| {
        let out_ptr = &out_ptr; // the whole Sync wrapper, not its raw pointer field
        let blk = QueryBlock::new((b, h, start), QUERY_BLOCK, MR, pads, s);
        let (n, groups, first_pos, pad, kvh) = (blk.n, blk.groups, blk.first_pos, blk.pad, blk.kv_head);
        let (key_lo, key_end) = (blk.key_lo, blk.key_end);
        let (group_rows, group_end) = (|g| blk.group_rows(g), |g| blk.group_end(g));
        let pk = &kv.k[kvh * kv.panels * hd..][..kv.panels * hd];
        let pv = &kv.v[kvh * kv.dim_panels * kv.panels * NR..][..kv.dim_panels * kv.panels * NR];
        let width = KEY_PANELS * NR;
        SCRATCH.with_borrow_mut(|sc| {
            reset(&mut sc.q, groups * hd * MR, 0.0);
            let q_rows = &q[((b * s.heads + h) * queries + start) * hd..][..n * hd];
            sc.q.chunks_mut(hd * MR)
                .zip(q_rows.chunks(hd * MR))
                .for_each(|(dst, group)| interleave_rows(dst, group, hd));
            reset(&mut sc.out, groups * MR * ldo, 0.0);
            reset(&mut sc.max, n, f32::NEG_INFINITY);
            reset(&mut sc.sum, n, 0.0);
            reset(&mut sc.scores, n * width, 0.0);
            reset(&mut sc.p, groups * width * MR, 0.0);
            for panel0 in (key_lo / NR..key_end.div_ceil(NR)).step_by(KEY_PANELS) {
                let panel1 = (panel0 + KEY_PANELS).min(key_end.div_ceil(NR));
                let key0 = panel0 * NR;
                // scores (n × width) = Q · K_blockᵀ, skipping panels past a group's last visible key.
                for panel in panel0..panel1 {
                    for g in (0..groups).filter(|&g| panel * NR < group_end(g)) {
                        // SAFETY: the token says AVX2, FMA and F16C are present; the group's queries hold hd steps
                        // of 6, the panel hd steps of 16, and the tile (the group's rows, the panel's 16 columns)
                        // lies inside this thread's own score buffer.
                        unsafe {
                            tile::<false>(
                                group_rows(g),
                                Tile {
                                    kc: hd,
                                    a: sc.q[g * hd * MR..].as_ptr(),
                                    b: pk[panel * hd..].as_ptr() as *const u8,
                                    pf: (std::ptr::null(), 0),
                                    c: sc.scores[g * MR * width + (panel - panel0) * NR..].as_mut_ptr(),
                                    ldc: width,
                                    accumulate: false,
                                },
                            )
                        }
                    }
                }
                // Online softmax: each row's visible keys in this block update its max and sum, rescale its output
                // so far, and become probabilities relative to the new max (every other key of the row 0); then a
                // group's rows are interleaved as the next product reads them, up to the group's last visible key.
                let block = key0..key0 + (panel1 - panel0) * NR;
                for g in 0..groups {
                    let kc = group_end(g).min(block.end).saturating_sub(key0);
                    for r in 0..group_rows(g) {
                        let i = g * MR + r;
                        let row = &mut sc.scores[i * width..][..kc];
                        let out = &mut sc.out[i * ldo..][..ldo];
                        online_softmax_step(row, key0, (first_pos + i, pad), (&mut sc.max[i], &mut sc.sum[i]), out);
                    }
                    let p = &mut sc.p[g * width * MR..][..kc * MR];
                    for r in 0..group_rows(g) {
                        let row = &sc.scores[(g * MR + r) * width..][..kc];
                        p.iter_mut().skip(r).step_by(MR).zip(row).for_each(|(p, &x)| *p = x);
                    }
                }
                // out (n × ldo) += P (n × keys) · V_block, each group only up to its last visible key.
                for dp in 0..kv.dim_panels {
                    for g in 0..groups {
                        let kc = group_end(g).min(block.end).saturating_sub(key0);
                        if kc == 0 {
                            continue;
                        }
                        // SAFETY: as above; the group's probabilities hold `width` ≥ kc steps of 6, the V panel
                        // holds keys key0..key0 + kc (padded to whole panels), and the tile lies inside this
                        // thread's own output rows.
                        unsafe {
                            tile::<false>(
                                group_rows(g),
                                Tile {
                                    kc,
                                    a: sc.p[g * width * MR..].as_ptr(),
                                    b: pv[dp * kv.panels * NR + key0..].as_ptr() as *const u8,
                                    pf: (std::ptr::null(), 0),
                                    c: sc.out[g * MR * ldo + dp * NR..].as_mut_ptr(),
                                    ldc: ldo,
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
