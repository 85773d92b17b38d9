//! The CPU drivers: the batch is cut into a fixed list of tiles (rows × output columns) that
//! depends only on the shapes, never on the number of threads, and the tiles run on the rayon
//! pool (or on the calling thread for a small call); each output element belongs to exactly one
//! tile, so results are bitwise identical on any thread pool.

use crate::element::LoraElement;
use crate::plan::{AdapterSlots, Group, OutputWindow, SgmvPlan};
pub(crate) mod simd;
use rayon::prelude::*;
use simd::detected_isa;
use std::cell::RefCell;

/// Rows per shrink tile (x rows reuse each A row loaded into cache).
const SHRINK_ROWS: usize = 16;
/// A rows (intermediate columns) per shrink tile of a small group: small so that a single token
/// still spreads over several cores.
const SHRINK_COLS: usize = 8;
/// Groups from which a batch has tiles enough for every core without splitting a group's rank
/// (shrink) or its outputs (expand, for groups that read `B` in place).
const MANY_GROUPS: usize = 8;

/// Intermediate columns per shrink tile: all of them when the call runs on the calling thread,
/// the group has rows enough to keep every core busy, or the batch has [`MANY_GROUPS`]
/// groups or more (each x row is then read by one tile only); else [`SHRINK_COLS`].
fn shrink_cols(g: &Group, groups: usize, sequential: bool) -> usize {
    if sequential || g.end - g.start >= 2 * SHRINK_ROWS || groups >= MANY_GROUPS {
        g.rank
    } else {
        SHRINK_COLS
    }
}

/// Rows per expand tile of a group with many rows: the tile's columns of `B` are put in an f32
/// scratch `[rank, cols]` once (transposed from `OutRank`, copied from `RankOut`) and then serve
/// all these rows.
const EXPAND_ROWS: usize = 64;

/// A group with fewer rows than this expands without the scratch tile: `OutRank`'s `B`
/// transposed in registers, `RankOut`'s `Bᵀ` read in place (see `simd::expand` and
/// `simd::expand_rank_out`).
const EXPAND_SCRATCH_ROWS: usize = 8;

/// Rows per expand tile.
fn expand_rows(g: &Group) -> usize {
    if g.end - g.start >= EXPAND_SCRATCH_ROWS {
        EXPAND_ROWS
    } else {
        EXPAND_SCRATCH_ROWS
    }
}

/// Output columns per expand tile: 16 KiB of transposed f32 `B` for a group with many rows (the
/// scratch tile stays in L1 beside the rows it updates). A small group reads `B` in place: all
/// `out_f` outputs in one tile when there is no need to split it (the call runs on the calling
/// thread, or the batch has [`MANY_GROUPS`] groups or more, enough tiles for every core),
/// so each rank row is read in one long run the prefetchers follow; else 32 KiB of `B`.
fn expand_cols(g: &Group, out_f: usize, whole_rows: bool) -> usize {
    if whole_rows && g.end - g.start < EXPAND_SCRATCH_ROWS {
        return out_f;
    }
    let bytes = if g.end - g.start >= EXPAND_SCRATCH_ROWS {
        4096
    } else {
        8192
    };
    ((bytes / g.rank).clamp(32, 1024) / 32) * 32
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

/// Cuts each group's rows (each `stride` long, of which the `window(group)` = `(offset, len)`
/// elements are written) into tiles of `rows_of(group)` rows × `cols(group)` columns.
fn tiles<'b, E>(
    regions: Vec<(Group, &'b mut [E])>,
    stride_of: impl Fn(&Group) -> usize,
    window: impl Fn(&Group) -> (usize, usize),
    rows_of: impl Fn(&Group) -> usize,
    cols: impl Fn(&Group) -> usize,
) -> Vec<Tile<'b, E>> {
    let mut out = Vec::new();
    for (g, region) in regions {
        let stride = stride_of(&g);
        let (w0, wn) = window(&g);
        let c = cols(&g);
        let rows = rows_of(&g);
        for (chunk_i, chunk) in region.chunks_mut(rows * stride).enumerate() {
            let mut per_col: Vec<Vec<&'b mut [E]>> = Vec::new();
            for row in chunk.chunks_mut(stride) {
                for (ci, piece) in row[w0..w0 + wn].chunks_mut(c).enumerate() {
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

/// Work below which a call runs on the calling thread: waking the pool costs more than it saves
/// (a single token through a d = 4096, r = 16 adapter is 65,536 multiply-adds per step, a few
/// µs on one core, where handing work to the pool and waiting for it costs 10–30 µs).
const SEQUENTIAL_MACS: usize = 1 << 18;

/// Runs `f` (shrink then expand of `plan` through a layer of `in_f` inputs and `out_f` outputs)
/// on a thread of the rayon pool when either step will use the pool: a caller outside the pool
/// then hands its work over and is woken once, instead of once per step. Small calls run where
/// they are.
pub(crate) fn in_pool_if_parallel<R: Send>(
    plan: &SgmvPlan,
    in_f: usize,
    out_f: usize,
    f: impl FnOnce() -> R + Send,
) -> R {
    let macs = plan.intermediate_len() * in_f.max(out_f);
    if macs < SEQUENTIAL_MACS || rayon::current_thread_index().is_some() {
        f()
    } else {
        // `scope` runs its closure on a worker thread of the global pool.
        rayon::scope(|_| f())
    }
}

/// Runs `f` on every tile: in parallel, or on the calling thread when the whole call is below
/// [`SEQUENTIAL_MACS`]. The tiles (and so every result) are the same either way.
fn for_each_tile<'b, E: Send>(
    work: Vec<Tile<'b, E>>,
    macs: usize,
    f: impl Fn(Tile<'b, E>) + Sync + Send,
) {
    if macs < SEQUENTIAL_MACS {
        work.into_iter().for_each(f);
    } else {
        work.into_par_iter().for_each(f);
    }
}

thread_local! {
    /// Per-thread f32 scratch, reused across calls so large batches do not pay fresh page
    /// faults: `.0` and `.1` hold the widened x and A rows of a shrink tile on the portable path;
    /// `.1` holds an expand tile's f32 `Bᵀ` on every path.
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
    let (groups, macs) = (plan.groups().len(), plan.intermediate_len() * d);
    let cols = |g: &Group| shrink_cols(g, groups, macs < SEQUENTIAL_MACS);
    let work = tiles(regions, |g| g.rank, |g| (0, g.rank), |_| SHRINK_ROWS, cols);
    let run = |mut t: Tile<'_, f32>| {
        let a = slots.slots()[t.group.slot].a;
        let jn = t.outs[0].len();
        let n = t.outs.len();
        let a_rows: Vec<&[W]> = a[t.col0 * d..(t.col0 + jn) * d].chunks(d).collect();
        let xs: Vec<&[X]> = x[t.row0 * d..(t.row0 + n) * d].chunks(d).collect();
        if simd::shrink_native(isa, &xs, &a_rows, &mut t.outs, d).is_some() {
            return;
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let (x_buf, a_buf) = &mut *scratch;
            let a_f32 = widened(&a[t.col0 * d..(t.col0 + jn) * d], a_buf);
            let x_f32 = widened(&x[t.row0 * d..(t.row0 + n) * d], x_buf);
            let a_rows: Vec<&[f32]> = a_f32.chunks(d).collect();
            let xs: Vec<&[f32]> = x_f32.chunks(d).collect();
            simd::shrink_portable(&xs, &a_rows, &mut t.outs, d);
        });
    };
    for_each_tile(work, macs, run);
}

/// `y[row] += scale_slot · v[row] · B_slotᵀ` for every row with an adapter, in the columns
/// `window` gives each row of `y`. Lengths and the window are checked by the caller.
pub(crate) fn expand<X: LoraElement, W: LoraElement>(
    plan: &SgmvPlan,
    v: &[f32],
    slots: &AdapterSlots<'_, W>,
    y: &mut [X],
    window: OutputWindow,
) {
    let out_f = slots.out_features();
    let ld = window.row_stride;
    let isa = detected_isa();
    let regions = group_regions(plan.groups(), y, |_| ld, |g| g.start * ld);
    let macs = plan.intermediate_len() * out_f;
    let whole_rows = macs < SEQUENTIAL_MACS || plan.groups().len() >= MANY_GROUPS;
    let cols = |g: &Group| expand_cols(g, out_f, whole_rows);
    let col0 = window.col_offset;
    let work = tiles(regions, |_| ld, |_| (col0, out_f), expand_rows, cols);
    for_each_tile(work, macs, |mut t| {
        let slot = &slots.slots()[t.group.slot];
        let r = t.group.rank;
        let on = t.outs[0].len();
        let vs: Vec<&[f32]> = (0..t.outs.len())
            .map(|i| {
                let off = t.group.v_off + (t.row0 - t.group.start + i) * r;
                &v[off..off + r]
            })
            .collect();
        SCRATCH.with(|scratch| {
            let bt = &mut scratch.borrow_mut().1;
            match slots.b_layout().rank_row_stride(out_f) {
                None => {
                    let b = &slot.b[t.col0 * r..(t.col0 + on) * r];
                    simd::expand(isa, &vs, b, on, slot.scale, &mut t.outs, bt);
                }
                Some(stride) => {
                    let b = &slot.b[t.col0..];
                    simd::expand_rank_out(isa, &vs, b, stride, on, slot.scale, &mut t.outs, bt);
                }
            }
        });
    });
}
