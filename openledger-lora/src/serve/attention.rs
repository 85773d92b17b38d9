//! Paged attention on the CPU: queries of several sequences attend over each sequence's cached
//! K/V, read through its block table, with causal masking, grouped-query attention (query head
//! `h` reads KV head `h / (n_heads / n_kv_heads)`), an optional sliding window (Mistral: query
//! position `p` sees positions `j` with `p − j < window`) and a softmax scale. Work is split over
//! (query, head) rows with rayon; each row's arithmetic is sequential, so results do not depend
//! on the thread count or on how positions fall into blocks.
//!
//! ```
//! use openledger_lora::serve::{paged_attention, AttentionParams, AttnSeq, KvLayout, PagedKvCache, SeqId};
//!
//! let layout = KvLayout { n_layers: 1, n_kv_heads: 1, head_dim: 1, block_size: 1 };
//! let mut kv = PagedKvCache::new(layout, 2).unwrap();
//! let s = SeqId(0);
//! kv.add_sequence(s).unwrap();
//! kv.append_slots(s, 2).unwrap();
//! kv.write(s, 0, 0, &[0.0], &[1.0]).unwrap();
//! kv.write(s, 0, 1, &[0.0], &[3.0]).unwrap();
//! let params = AttentionParams { n_heads: 1, scale: 1.0, sliding_window: None };
//! let mut out = [0.0f32];
//! // equal keys: the query at position 1 averages the two values
//! paged_attention(&kv, 0, &params, &[AttnSeq { seq: s, start_pos: 1, n_queries: 1 }], &[5.0], &mut out).unwrap();
//! assert!((out[0] - 2.0).abs() < 1e-6);
//! ```

use std::ops::Range;

use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::kv::{HeadRows, KvElem, KvError, PagedKvCache, SeqId};

/// How queries attend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionParams {
    /// Query heads; a positive multiple of the cache's `n_kv_heads`.
    pub n_heads: usize,
    /// Multiplies `q · k` before the softmax (usually `1 / sqrt(head_dim)`).
    pub scale: f32,
    /// When set, a query at position `p` sees only positions `j` with `p − j < window`.
    pub sliding_window: Option<usize>,
}

/// One sequence's share of a [`paged_attention`] call: `n_queries` consecutive queries at
/// positions `start_pos..start_pos + n_queries`, all already stored in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnSeq {
    /// The sequence.
    pub seq: SeqId,
    /// Position of its first query.
    pub start_pos: usize,
    /// Number of queries (1 for decode, a chunk for prefill).
    pub n_queries: usize,
}

/// Attention of `q` (`[Σ n_queries, n_heads, head_dim]`, the sequences' queries one after the
/// other) over `layer` of the cache, written to `out` (same shape). Each query at position `p`
/// sees its sequence's positions `≤ p` (causal), within the sliding window if one is set.
pub fn paged_attention(
    cache: &PagedKvCache,
    layer: usize,
    params: &AttentionParams,
    seqs: &[AttnSeq],
    q: &[f32],
    out: &mut [f32],
) -> Result<(), KvError> {
    let layout = cache.layout();
    let (hd, n_kv) = (layout.head_dim, layout.n_kv_heads);
    if params.n_heads == 0 || !params.n_heads.is_multiple_of(n_kv) {
        return Err(KvError::InvalidAttention {
            reason: format!(
                "n_heads {} is not a positive multiple of n_kv_heads {n_kv}",
                params.n_heads
            ),
        });
    }
    if params.sliding_window == Some(0) {
        return Err(KvError::InvalidAttention {
            reason: "a sliding window must be at least 1".into(),
        });
    }
    if !params.scale.is_finite() {
        return Err(KvError::InvalidAttention {
            reason: format!("scale {} is not finite", params.scale),
        });
    }
    if layer >= layout.n_layers {
        return Err(KvError::LayerOutOfRange {
            layer,
            n_layers: layout.n_layers,
        });
    }
    // Every query row: (its sequence's block table, its position).
    let mut rows: Vec<(&[u32], usize)> = Vec::new();
    for s in seqs {
        let len = cache.seq_len(s.seq)?;
        let end = s.start_pos.saturating_add(s.n_queries);
        if end > len {
            return Err(KvError::PositionOutOfRange {
                seq: s.seq,
                pos: end.saturating_sub(1),
                len,
            });
        }
        let table = cache.block_table(s.seq)?;
        rows.extend((s.start_pos..end).map(|p| (table, p)));
    }
    let row_floats = params.n_heads * hd;
    let expected = rows.len() * row_floats;
    for (what, len) in [("query", q.len()), ("output", out.len())] {
        if len != expected {
            return Err(KvError::WrongLength {
                what,
                expected,
                found: len,
            });
        }
    }
    let group = params.n_heads / n_kv;
    let bs = layout.block_size;
    out.par_chunks_mut(hd)
        .zip(q.par_chunks(hd))
        .enumerate()
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(scores, tmp), (i, (o, qh))| {
                let (table, pos) = rows[i / params.n_heads];
                let kvh = (i % params.n_heads) / group;
                let lo = match params.sliding_window {
                    Some(w) => (pos + 1).saturating_sub(w),
                    None => 0,
                };
                scores.clear();
                let mut max = f32::NEG_INFINITY;
                for (block, slots) in block_spans(table, bs, lo, pos) {
                    let start = scores.len();
                    match cache.head_rows(block, layer, false, kvh) {
                        HeadRows::F32(k) => score_block(qh, k, slots, hd, scores),
                        HeadRows::F16(k) => {
                            score_block(qh, widen(k, slots.end * hd, tmp), slots, hd, scores)
                        }
                        HeadRows::Bf16(k) => {
                            score_block(qh, widen(k, slots.end * hd, tmp), slots, hd, scores)
                        }
                    }
                    for s in &mut scores[start..] {
                        *s *= params.scale;
                        max = max.max(*s);
                    }
                }
                let mut total = 0.0f32;
                for s in scores.iter_mut() {
                    *s = (*s - max).exp();
                    total += *s;
                }
                o.fill(0.0);
                let mut w = scores.iter().map(|s| s / total);
                for (block, slots) in block_spans(table, bs, lo, pos) {
                    match cache.head_rows(block, layer, true, kvh) {
                        HeadRows::F32(v) => mix_block(o, v, slots, hd, &mut w),
                        HeadRows::F16(v) => {
                            mix_block(o, widen(v, slots.end * hd, tmp), slots, hd, &mut w)
                        }
                        HeadRows::Bf16(v) => {
                            mix_block(o, widen(v, slots.end * hd, tmp), slots, hd, &mut w)
                        }
                    }
                }
            },
        );
    Ok(())
}

/// The blocks holding positions `lo..=hi`, in order, each with the range of its slots used.
#[inline]
fn block_spans(
    table: &[u32],
    bs: usize,
    lo: usize,
    hi: usize,
) -> impl Iterator<Item = (u32, Range<usize>)> + '_ {
    (lo / bs..=hi / bs).map(move |b| {
        let first = if b == lo / bs { lo % bs } else { 0 };
        let last = if b == hi / bs { hi % bs } else { bs - 1 };
        (table[b], first..last + 1)
    })
}

/// The first `n` values of half-precision rows as f32, in `tmp` (one SIMD conversion per
/// block rather than one per value).
#[inline]
fn widen<'t, T>(rows: &[T], n: usize, tmp: &'t mut Vec<f32>) -> &'t [f32]
where
    [T]: HalfFloatSliceExt,
{
    tmp.resize(n, 0.0);
    rows[..n].convert_to_f32_slice(tmp);
    tmp
}

/// Appends `q · k` for each slot's key row of one block (no scale yet).
#[inline]
fn score_block<T: KvElem>(
    q: &[f32],
    keys: &[T],
    slots: Range<usize>,
    hd: usize,
    out: &mut Vec<f32>,
) {
    for slot in slots {
        out.push(dot(q, &keys[slot * hd..(slot + 1) * hd]));
    }
}

/// Adds `p · v` for each slot's value row of one block, taking the weights `p` from `w`.
#[inline]
fn mix_block<T: KvElem>(
    o: &mut [f32],
    vals: &[T],
    slots: Range<usize>,
    hd: usize,
    w: &mut impl Iterator<Item = f32>,
) {
    for slot in slots {
        let p = w.next().unwrap_or(0.0);
        for (acc, v) in o.iter_mut().zip(&vals[slot * hd..(slot + 1) * hd]) {
            *acc += p * v.to_f32();
        }
    }
}

/// Dot product with eight independent partial sums (so it vectorises); a fixed order, so the
/// result depends only on the inputs.
#[inline]
fn dot<T: KvElem>(a: &[f32], b: &[T]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k].to_f32();
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y.to_f32();
    }
    s
}
