//! The rayon-parallel CPU drivers: the batch is cut into a fixed list of tiles (rows × output
//! columns) that depends only on the shapes, never on the number of threads; each output element
//! belongs to exactly one tile, so results are bitwise identical on any thread pool.

use super::element::LoraElement;
use super::layout::{AdapterSlots, Group, SgmvPlan};
use super::simd::{self, detected_isa};
use rayon::prelude::*;
use std::cell::RefCell;

/// Rows per shrink tile (x rows reuse each A row loaded into cache).
const SHRINK_ROWS: usize = 16;
/// A rows (intermediate columns) per shrink tile of a small group: small so that a single token
/// still spreads over several cores.
const SHRINK_COLS: usize = 4;
/// Intermediate columns per shrink tile: all of them when the group has rows enough to keep
/// every core busy (each x row is then widened once), else [`SHRINK_COLS`].
fn shrink_cols(g: &Group) -> usize {
    if g.end - g.start >= 2 * SHRINK_ROWS {
        g.rank
    } else {
        SHRINK_COLS
    }
}

/// Rows per expand tile.
const EXPAND_ROWS: usize = 16;

/// Output columns per expand tile (about 32 KiB of f32 `B` per tile).
fn expand_cols(rank: usize) -> usize {
    ((8192 / rank).clamp(32, 1024) / 32) * 32
}

/// Splits the rows of each group out of `buf` (row `i` of the batch at `i * stride`) into
/// row-chunk regions; rows outside every group are skipped.
fn group_regions<'b, E>(
    groups: &[Group],
    buf: &'b mut [E],
    stride_of: impl Fn(&Group) -> usize,
    offset_of: impl Fn(&Group) -> usize,
) -> Vec<(Group, &'b mut [E])> {
    let mut out = Vec::with_capacity(groups.len());
    let mut rest = buf;
    let mut cursor = 0;
    for g in groups {
        let off = offset_of(g);
        let (_, tail) = rest.split_at_mut(off - cursor);
        let len = (g.end - g.start) * stride_of(g);
        let (mine, tail) = tail.split_at_mut(len);
        out.push((*g, mine));
        rest = tail;
        cursor = off + len;
    }
    out
}

/// One tile: a group, its first row, first column, and one output piece per row.
struct Tile<'b, E> {
    group: Group,
    row0: usize,
    col0: usize,
    outs: Vec<&'b mut [E]>,
}

/// Cuts each group's rows (each `stride` long) into tiles of `rows` rows × `cols(group)` columns.
fn tiles<'b, E>(
    regions: Vec<(Group, &'b mut [E])>,
    stride_of: impl Fn(&Group) -> usize,
    rows: usize,
    cols: impl Fn(&Group) -> usize,
) -> Vec<Tile<'b, E>> {
    let mut out = Vec::new();
    for (g, region) in regions {
        let stride = stride_of(&g);
        let c = cols(&g);
        for (chunk_i, chunk) in region.chunks_mut(rows * stride).enumerate() {
            let mut per_col: Vec<Vec<&'b mut [E]>> = Vec::new();
            for row in chunk.chunks_mut(stride) {
                for (ci, piece) in row.chunks_mut(c).enumerate() {
                    if per_col.len() <= ci {
                        per_col.push(Vec::with_capacity(rows));
                    }
                    per_col[ci].push(piece);
                }
            }
            for (ci, outs) in per_col.into_iter().enumerate() {
                out.push(Tile {
                    group: g,
                    row0: g.start + chunk_i * rows,
                    col0: ci * c,
                    outs,
                });
            }
        }
    }
    out
}

thread_local! {
    /// Per-thread f32 scratch for widened f16 / bf16 rows (x rows, A rows) of a shrink tile,
    /// reused across calls so large batches do not pay fresh page faults.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `src` as f32: borrowed when it already is, else widened into `buf`.
fn widened<'s, T: LoraElement>(src: &'s [T], buf: &'s mut Vec<f32>) -> &'s [f32] {
    match T::as_f32_slice(src) {
        Some(s) => s,
        None => {
            buf.clear();
            buf.resize(src.len(), 0.0);
            T::widen_slice(src, buf);
            buf
        }
    }
}

/// `v[row] = x[row] · A_slotᵀ` for every row with an adapter. Lengths are checked by the caller.
pub(crate) fn shrink<X: LoraElement, W: LoraElement>(
    plan: &SgmvPlan,
    x: &[X],
    slots: &AdapterSlots<'_, W>,
    v: &mut [f32],
) {
    let d = slots.in_features();
    let isa = detected_isa();
    let regions = group_regions(plan.groups(), v, |g| g.rank, |g| g.v_off);
    let work = tiles(regions, |g| g.rank, SHRINK_ROWS, shrink_cols);
    work.into_par_iter().for_each(|mut t| {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let (x_buf, a_buf) = &mut *scratch;
            let a = slots.slots()[t.group.slot].a;
            let jn = t.outs[0].len();
            let a_f32 = widened(&a[t.col0 * d..(t.col0 + jn) * d], a_buf);
            let n = t.outs.len();
            let x_f32 = widened(&x[t.row0 * d..(t.row0 + n) * d], x_buf);
            let a_rows: Vec<&[f32]> = a_f32.chunks(d).collect();
            let xs: Vec<&[f32]> = x_f32.chunks(d).collect();
            simd::shrink(isa, &xs, &a_rows, &mut t.outs, d);
        });
    });
}

/// `y[row] += scale_slot · v[row] · B_slotᵀ` for every row with an adapter. Lengths are checked
/// by the caller.
pub(crate) fn expand<X: LoraElement, W: LoraElement>(
    plan: &SgmvPlan,
    v: &[f32],
    slots: &AdapterSlots<'_, W>,
    y: &mut [X],
) {
    let out_f = slots.out_features();
    let isa = detected_isa();
    let regions = group_regions(plan.groups(), y, |_| out_f, |g| g.start * out_f);
    let work = tiles(regions, |_| out_f, EXPAND_ROWS, |g| expand_cols(g.rank));
    work.into_par_iter().for_each(|mut t| {
        let slot = &slots.slots()[t.group.slot];
        let r = t.group.rank;
        let on = t.outs[0].len();
        let vs: Vec<&[f32]> = (0..t.outs.len())
            .map(|i| {
                let off = t.group.v_off + (t.row0 - t.group.start + i) * r;
                &v[off..off + r]
            })
            .collect();
        let b = &slot.b[t.col0 * r..(t.col0 + on) * r];
        simd::expand(isa, &vs, b, on, slot.scale, &mut t.outs);
    });
}
