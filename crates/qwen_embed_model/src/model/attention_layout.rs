//! Between the packed rows the linear layers work on (every real token, sequence after sequence) and the per-head,
//! left-padded layout the CPU attention kernels read, in one parallel pass each way.
//!
//! Into attention: the fused q/k/v projection's rows are split into heads, q and k RMS-normed per head and rotated
//! (RoPE), each written once into its place in (sequence, head, position, head_dim); padding positions stay zero.
//! candle's operations for the same (narrow, contiguous, rms_norm, transpose, contiguous, rope) made five copies of
//! every row, two of them single-threaded. Out of it: the output's padded rows back to packed ones.

use rayon::prelude::*;

use crate::attention::Shape;

/// What the per-head pass needs besides the rows: q_norm's and k_norm's weights (head_dim each; q's carry the score
/// scale), their epsilon, and RoPE's cos and sin tables (position × head_dim / 2).
pub struct HeadNorms<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub eps: f32,
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

/// Attention's inputs from the packed rows `qkv` (tokens × (heads + 2 × kv_heads) × head_dim, q's heads first, then
/// k's, then v's): q (batch, heads, len − first_query, head_dim) for the padded positions `first_query..len`, k and v
/// (batch, kv_heads, len, head_dim); `pads[b]` positions of padding lead sequence b. A real token at position p of its
/// sequence is rotated by the angles of p.
pub fn split_heads(qkv: &[f32], pads: &[usize], s: Shape, norms: &HeadNorms) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (hd, len) = (s.head_dim, s.len);
    let width = (s.heads + 2 * s.kv_heads) * hd;
    let starts = packed_starts(pads, len);
    assert_eq!(qkv.len(), starts[s.batch] * width);
    // One head of one sequence: padded positions `from..len` into `dst`, from the rows' columns `column..`.
    let fill = |dst: &mut [f32], b: usize, column: usize, from: usize, norm: Option<&[f32]>| {
        let pad = pads[b];
        for (row, p) in dst.chunks_exact_mut(hd).zip(from..len).filter(|(_, p)| *p >= pad) {
            let pos = p - pad;
            let src = &qkv[(starts[b] + pos) * width + column..][..hd];
            match norm {
                Some(w) => rms_norm_rope(src, w, norms.eps, pos, norms, row),
                None => row.copy_from_slice(src),
            }
        }
    };
    let queries = len - s.first_query;
    let mut q = vec![0f32; s.batch * s.heads * queries * hd];
    let mut k = vec![0f32; s.batch * s.kv_heads * len * hd];
    let mut v = vec![0f32; k.len()];
    q.par_chunks_mut(queries * hd).enumerate().for_each(|(i, dst)| {
        let (b, h) = (i / s.heads, i % s.heads);
        fill(dst, b, h * hd, s.first_query, Some(norms.q));
    });
    k.par_chunks_mut(len * hd).zip(v.par_chunks_mut(len * hd)).enumerate().for_each(|(i, (k, v))| {
        let (b, g) = (i / s.kv_heads, i % s.kv_heads);
        fill(k, b, (s.heads + g) * hd, 0, Some(norms.k));
        fill(v, b, (s.heads + s.kv_heads + g) * hd, 0, None);
    });
    (q, k, v)
}

/// The attention's output (batch, len − first_query, heads × head_dim) as packed rows: the real tokens' rows, sequence
/// after sequence. With one query per sequence (its last position, always real) or no padding, the rows already are.
pub fn packed_rows(out: Vec<f32>, pads: &[usize], s: Shape) -> Vec<f32> {
    let width = s.heads * s.head_dim;
    if s.first_query + 1 == s.len || pads.iter().all(|&p| p == 0) {
        return out;
    }
    let starts = packed_starts(pads, s.len);
    let mut packed = vec![0f32; starts[s.batch] * width];
    let mut rest = &mut packed[..];
    let mut parts = Vec::with_capacity(s.batch);
    for (b, &pad) in pads.iter().enumerate() {
        let (part, tail) = rest.split_at_mut((s.len - pad) * width);
        parts.push((part, &out[(b * s.len + pad) * width..(b + 1) * s.len * width]));
        rest = tail;
    }
    parts.into_par_iter().for_each(|(dst, src)| dst.copy_from_slice(src));
    packed
}

/// Each sequence's first packed row, and the total after the last.
pub(crate) fn packed_starts(pads: &[usize], len: usize) -> Vec<usize> {
    std::iter::once(0).chain(pads.iter().scan(0, |end, p| Some(*end + len - p).inspect(|e| *end = *e))).collect()
}

/// `dst` = RoPE(RMSNorm(`src`) × `w`) at position `pos`, in the arithmetic of candle's `rms_norm` and `rope`.
fn rms_norm_rope(src: &[f32], w: &[f32], eps: f32, pos: usize, norms: &HeadNorms, dst: &mut [f32]) {
    let hd = src.len();
    let half = hd / 2;
    let sum2: f32 = src.iter().map(|x| x * x).sum();
    let m = (sum2 / hd as f32 + eps).sqrt();
    for (d, (x, w)) in dst.iter_mut().zip(src.iter().zip(w)) {
        *d = x / m * w;
    }
    let (cos, sin) = (&norms.cos[pos * half..][..half], &norms.sin[pos * half..][..half]);
    let (lo, hi) = dst.split_at_mut(half);
    for (((a, b), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(cos).zip(sin) {
        (*a, *b) = (*a * c - *b * s, *a * s + *b * c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use candle_core::{Device, Tensor};

    fn fill(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.618 + seed).sin() * 2.0).collect()
    }

    #[test]
    fn packed_starts_follow_the_real_lengths() {
        assert_eq!(packed_starts(&[2, 0, 1], 3), [0, 1, 4, 6]);
        assert_eq!(packed_starts(&[], 3), [0]);
    }

    /// The one pass gives what candle's operations gave on the padded rows (the encoder's device path), padding zero.
    #[test]
    fn heads_match_candles_norm_and_rope_on_the_padded_rows() {
        let (nh, nkv, hd, len) = (4, 2, 8, 7);
        let pads = [0, 3, 6];
        let (b, half, width) = (pads.len(), hd / 2, (nh + 2 * nkv) * hd);
        let tokens: usize = pads.iter().map(|p| len - p).sum();
        let qkv = fill(tokens * width, 0.2);
        let (qw, kw) = (fill(hd, 0.5), fill(hd, 0.9));
        let angles: Vec<f32> = (0..len * half).map(|i| (i / half) as f32 * 0.3f32.powi((i % half) as i32)).collect();
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let norms = HeadNorms { q: &qw, k: &kw, eps: 1e-6, cos: &cos, sin: &sin };

        let dev = &Device::Cpu;
        let mut padded = vec![0f32; b * len * width];
        let mut positions = vec![0u32; b * len];
        let mut next = 0;
        for (i, &pad) in pads.iter().enumerate() {
            for p in pad..len {
                padded[(i * len + p) * width..][..width].copy_from_slice(&qkv[next * width..][..width]);
                positions[i * len + p] = (p - pad) as u32;
                next += 1;
            }
        }
        let padded = Tensor::from_vec(padded, (b, len, width), dev).unwrap();
        let positions = Tensor::from_vec(positions, b * len, dev).unwrap();
        let table = |t: &[f32]| {
            let t = Tensor::from_vec(t.to_vec(), (len, half), dev).unwrap();
            t.index_select(&positions, 0).unwrap().reshape((b, len, half)).unwrap()
        };
        let (cos_t, sin_t) = (table(&cos), table(&sin));
        let candle = |column: usize, n: usize, from: usize, w: Option<&[f32]>| -> Vec<f32> {
            let t = padded.narrow(1, from, len - from).unwrap().narrow(2, column, n * hd).unwrap();
            let t = t.contiguous().unwrap().reshape((b, len - from, n, hd)).unwrap();
            let t = match w {
                Some(w) => {
                    let w = Tensor::from_vec(w.to_vec(), hd, dev).unwrap();
                    let t = candle_nn::ops::rms_norm(&t, &w, 1e-6).unwrap().transpose(1, 2).unwrap();
                    let (c, s) =
                        (cos_t.narrow(1, from, len - from).unwrap(), sin_t.narrow(1, from, len - from).unwrap());
                    candle_nn::rotary_emb::rope(
                        &t.contiguous().unwrap(),
                        &c.contiguous().unwrap(),
                        &s.contiguous().unwrap(),
                    )
                    .unwrap()
                }
                None => t.transpose(1, 2).unwrap(),
            };
            t.flatten_all().unwrap().to_vec1().unwrap()
        };
        for first_query in [0, len - 1] {
            let s = Shape { batch: b, heads: nh, kv_heads: nkv, len, head_dim: hd, first_query };
            let (q, k, v) = split_heads(&qkv, &pads, s, &norms);
            for (name, got, want) in [
                ("q", q, candle(0, nh, first_query, Some(&qw))),
                ("k", k, candle(nh * hd, nkv, 0, Some(&kw))),
                ("v", v, candle((nh + nkv) * hd, nkv, 0, None)),
            ] {
                assert_eq!(got.len(), want.len(), "{name}");
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst < 1e-5, "{name}, first_query {first_query}: max diff {worst}");
            }
        }
    }

    #[test]
    fn the_output_keeps_the_real_rows_in_packed_order() {
        let (len, width) = (3, 2);
        let s = Shape { batch: 3, heads: 1, kv_heads: 1, len, head_dim: width, first_query: 0 };
        let out: Vec<f32> = (0..3 * len * width).map(|i| i as f32).collect();
        // Rows 0–2, 3–5, 6–8 padded; real: 2 | 3 4 5 | 7 8.
        let want: Vec<f32> = [2, 3, 4, 5, 7, 8].iter().flat_map(|r| [2.0 * *r as f32, 2.0 * *r as f32 + 1.0]).collect();
        assert_eq!(packed_rows(out.clone(), &[2, 0, 1], s), want);
        assert_eq!(packed_rows(out.clone(), &[0, 0, 0], s), out);
        let last = Shape { first_query: len - 1, ..s };
        assert_eq!(packed_rows(out[..6].to_vec(), &[2, 0, 1], last), out[..6]);
    }
}
