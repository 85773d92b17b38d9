//! Paged attention on the CPU: queries of several sequences attend over each sequence's cached
//! K/V, read through its block table, with causal masking, grouped-query attention (query head
//! `h` reads KV head `h / (n_heads / n_kv_heads)`), an optional sliding window (Mistral: query
//! position `p` sees positions `j` with `p − j < window`) and a softmax scale. Work is split over
//! (query, head) rows with rayon; each row's arithmetic is sequential, so results do not depend
//! on the thread count or on how positions fall into blocks. With AVX2 and FMA the dot
//! products and the weighted sums of values run in FMA kernels (the weighted sum holds 32
//! outputs in registers over a block's rows); otherwise in portable loops.
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
#[cfg(target_arch = "x86_64")]
use crate::sgmv::{Isa, detected_isa};

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
    let shape = Shape {
        cache,
        layer,
        params,
        rows: &rows,
        group,
        bs,
        hd,
    };
    #[cfg(target_arch = "x86_64")]
    let avx2 = detected_isa() == Isa::Avx2Fma;
    out.par_chunks_mut(hd)
        .zip(q.par_chunks(hd))
        .enumerate()
        .for_each_init(Scratch::default, |scratch, (i, (o, qh))| {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: `detected_isa` found AVX2 and FMA on this CPU.
                unsafe { attend_avx2(&shape, i, (qh, o), scratch) };
                return;
            }
            attend::<false>(&shape, i, (qh, o), scratch);
        });
    Ok(())
}

/// What every (query, head) row of one [`paged_attention`] call shares.
struct Shape<'a> {
    cache: &'a PagedKvCache,
    layer: usize,
    params: &'a AttentionParams,
    rows: &'a [(&'a [u32], usize)],
    group: usize,
    bs: usize,
    hd: usize,
}

/// [`attend`] compiled for AVX2 and FMA, its dot products and weighted sums of values in
/// explicit FMA kernels (each still one fixed order of operations over its inputs).
///
/// # Safety
/// AVX2 and FMA available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(shape: &Shape<'_>, i: usize, io: (&[f32], &mut [f32]), s: &mut Scratch) {
    attend::<true>(shape, i, io, s);
}

/// A thread's buffers: the row's scores, and half-precision rows widened.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    tmp: Vec<f32>,
}

/// Row `i` (query `i / n_heads`, head `i % n_heads`) of [`paged_attention`]: the query `qh`
/// over its sequence's keys and values, into `o` (`io = (qh, o)`); `AVX`: with the AVX2 + FMA
/// kernels (only from [`attend_avx2`]).
#[inline(always)]
fn attend<const AVX: bool>(
    shape: &Shape<'_>,
    i: usize,
    (qh, o): (&[f32], &mut [f32]),
    scratch: &mut Scratch,
) {
    let Scratch { scores, tmp } = scratch;
    let &Shape {
        cache,
        layer,
        params,
        rows,
        group,
        bs,
        hd,
    } = shape;
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
            HeadRows::F32(k) => score_block::<AVX>(qh, k, slots, hd, scores),
            HeadRows::F16(k) => {
                score_block::<AVX>(qh, widen(k, slots.end * hd, tmp), slots, hd, scores)
            }
            HeadRows::Bf16(k) => {
                score_block::<AVX>(qh, widen(k, slots.end * hd, tmp), slots, hd, scores)
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
    for s in scores.iter_mut() {
        *s /= total;
    }
    o.fill(0.0);
    let mut at = 0;
    for (block, slots) in block_spans(table, bs, lo, pos) {
        let p = &scores[at..at + slots.len()];
        at += slots.len();
        match cache.head_rows(block, layer, true, kvh) {
            HeadRows::F32(v) => mix_block::<AVX>(o, v, slots, hd, p),
            HeadRows::F16(v) => mix_block::<AVX>(o, widen(v, slots.end * hd, tmp), slots, hd, p),
            HeadRows::Bf16(v) => mix_block::<AVX>(o, widen(v, slots.end * hd, tmp), slots, hd, p),
        }
    }
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
#[inline(always)]
fn widen<'t, T>(rows: &[T], n: usize, tmp: &'t mut Vec<f32>) -> &'t [f32]
where
    [T]: HalfFloatSliceExt,
{
    tmp.resize(n, 0.0);
    rows[..n].convert_to_f32_slice(tmp);
    tmp
}

/// Appends `q · k` for each slot's key row of one block (no scale yet); `AVX`: through the
/// AVX2 + FMA kernel (the caller has checked the CPU).
#[inline(always)]
fn score_block<const AVX: bool>(
    q: &[f32],
    keys: &[f32],
    slots: Range<usize>,
    hd: usize,
    out: &mut Vec<f32>,
) {
    for slot in slots {
        let k = &keys[slot * hd..(slot + 1) * hd];
        #[cfg(target_arch = "x86_64")]
        if AVX {
            // SAFETY: `AVX` is set only under `attend_avx2`, on a CPU with AVX2 and FMA.
            out.push(unsafe { x86::dot(q, k) });
            continue;
        }
        out.push(dot(q, k));
    }
}

/// Adds `p · v` for each slot's value row of one block, `p` holding the slots' weights in
/// order; `AVX` as in [`score_block`].
#[inline(always)]
fn mix_block<const AVX: bool>(
    o: &mut [f32],
    vals: &[f32],
    slots: Range<usize>,
    hd: usize,
    p: &[f32],
) {
    let rows = &vals[slots.start * hd..slots.end * hd];
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: as in `score_block`; `rows` holds `p.len()` rows of `hd = o.len()` values.
        unsafe { x86::mix(o, rows, p) };
        return;
    }
    for (v, &p) in rows.chunks_exact(hd).zip(p) {
        for (acc, v) in o.iter_mut().zip(v) {
            *acc += p * v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `Σ a[i]·b[i]`: two 8-lane FMA chains over the pairs of vectors, one over a last vector,
    /// the lanes folded, then the tail in order.
    ///
    /// # Safety
    /// AVX2 and FMA available.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        // SAFETY: every load ends at or before `n`.
        unsafe {
            let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut k = 0;
            while k + 16 <= n {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(k)), _mm256_loadu_ps(pb.add(k)), s0);
                s1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(k + 8)),
                    _mm256_loadu_ps(pb.add(k + 8)),
                    s1,
                );
                k += 16;
            }
            if k + 8 <= n {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(k)), _mm256_loadu_ps(pb.add(k)), s0);
                k += 8;
            }
            let s = _mm256_add_ps(s0, s1);
            let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            let h = _mm_add_ss(h, _mm_movehdup_ps(h));
            let mut total = _mm_cvtss_f32(h);
            while k < n {
                total += a[k] * b[k];
                k += 1;
            }
            total
        }
    }

    /// `o += Σ_j p[j] · rows[j]` (`rows`: `p.len()` rows of `o.len()` values), 32 outputs at a
    /// time held in registers over all the rows, then 8, then one.
    ///
    /// # Safety
    /// AVX2 and FMA available; `rows` holds `p.len() · o.len()` values.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn mix(o: &mut [f32], rows: &[f32], p: &[f32]) {
        let hd = o.len();
        assert!(rows.len() >= p.len() * hd);
        let (po, pr) = (o.as_mut_ptr(), rows.as_ptr());
        // SAFETY: loads and stores stay inside `o` and `rows` (asserted).
        unsafe {
            let mut c = 0;
            while c + 32 <= hd {
                let mut acc: [__m256; 4] =
                    std::array::from_fn(|i| _mm256_loadu_ps(po.add(c + 8 * i)));
                for (j, &w) in p.iter().enumerate() {
                    let w = _mm256_set1_ps(w);
                    let r = pr.add(j * hd + c);
                    for (i, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(r.add(8 * i)), *a);
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(po.add(c + 8 * i), *a);
                }
                c += 32;
            }
            while c + 8 <= hd {
                let mut acc = _mm256_loadu_ps(po.add(c));
                for (j, &w) in p.iter().enumerate() {
                    acc = _mm256_fmadd_ps(
                        _mm256_set1_ps(w),
                        _mm256_loadu_ps(pr.add(j * hd + c)),
                        acc,
                    );
                }
                _mm256_storeu_ps(po.add(c), acc);
                c += 8;
            }
            while c < hd {
                for (j, &w) in p.iter().enumerate() {
                    *po.add(c) += w * *pr.add(j * hd + c);
                }
                c += 1;
            }
        }
    }
}

/// Dot product with eight independent partial sums (so it vectorises); a fixed order, so the
/// result depends only on the inputs.
#[inline(always)]
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
