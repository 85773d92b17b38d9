//! Views of the LoRA weights held in adapter slots, the segment description of a batch, and the
//! validated plan that maps each row to its slot and to its place in the packed intermediate.

use crate::element::LoraElement;
use crate::error::SgmvError;

/// One adapter slot of one layer: `A` is `[rank, in]` and `B` is `[out, rank]` (or `Bᵀ`,
/// `[rank, out]` or `[rank, stride]`, in slots made with [`BLayout::RankOut`] or
/// [`BLayout::RankOutStrided`]), both row-major, and the update is `y += scale · (x · Aᵀ) · Bᵀ`.
#[derive(Debug, Clone, Copy)]
pub struct LoraSlot<'a, T> {
    /// `A`, `[rank, in_features]` row-major.
    pub a: &'a [T],
    /// `B`, `[out_features, rank]` row-major (`Bᵀ`, `[rank, out_features]`, under
    /// [`BLayout::RankOut`]; `[rank, stride]` under [`BLayout::RankOutStrided`]).
    pub b: &'a [T],
    /// The rank of this adapter (each slot has its own; nothing is padded).
    pub rank: usize,
    /// The adapter's scale (`alpha / r`, or `alpha / sqrt(r)` with rsLoRA).
    pub scale: f32,
}

/// How `B` is laid out in the slots of an [`AdapterSlots`].
///
/// Every layout gives bitwise the same results. The `Bᵀ` layouts are the faster ones on the CPU:
/// the expand step reads each rank row of `Bᵀ` contiguously, where `OutRank` makes it transpose
/// `B` on the fly (in registers, or through a scratch tile) on every call. A server holding its
/// adapters for many calls stores `Bᵀ` once, best with padded rows ([`transpose_b_strided`] with
/// [`padded_b_stride`], as the model does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BLayout {
    /// `B` as `[out_features, rank]` row-major: PEFT's `lora_B.weight` as stored.
    #[default]
    OutRank,
    /// `Bᵀ` as `[rank, out_features]` row-major ([`transpose_b`]).
    RankOut,
    /// `Bᵀ` as `[rank, stride]` row-major with `stride ≥ out_features`: each rank row holds the
    /// layer's outputs in its first `out_features` elements; the rest of the row is never read
    /// ([`transpose_b_strided`]). When `out_features` is a power of two, unpadded rank rows lie
    /// a multiple of 4 KiB apart and fall in the same L1 cache sets, so the `r` rows a tile reads
    /// together evict each other; [`padded_b_stride`] adds one cache line to each row.
    RankOutStrided {
        /// Elements from the start of one rank row to the start of the next.
        stride: usize,
    },
}

impl BLayout {
    /// Elements from one rank row of `Bᵀ` to the next (`out_features` under
    /// [`BLayout::RankOut`]), or `None` under [`BLayout::OutRank`].
    pub fn rank_row_stride(self, out_features: usize) -> Option<usize> {
        match self {
            BLayout::OutRank => None,
            BLayout::RankOut => Some(out_features),
            BLayout::RankOutStrided { stride } => Some(stride),
        }
    }
}

/// The row stride to use with [`BLayout::RankOutStrided`]: `out_features` plus one 64-byte cache
/// line of `T`, so that consecutive rank rows of `Bᵀ` start in different L1 sets.
///
/// ```
/// use half::bf16;
/// use openledger_sgmv::padded_b_stride;
///
/// assert_eq!(padded_b_stride::<f32>(4096), 4112);
/// assert_eq!(padded_b_stride::<bf16>(4096), 4128);
/// ```
pub fn padded_b_stride<T>(out_features: usize) -> usize {
    out_features + 64 / std::mem::size_of::<T>().max(1)
}

/// `B` (`[out_features, rank]` row-major) transposed to `[rank, out_features]`, the layout of
/// [`BLayout::RankOut`]. Panics if `b.len() != out_features · rank`.
///
/// ```
/// use openledger_sgmv::transpose_b;
///
/// // B = [[1, 2], [3, 4], [5, 6]] (3 outputs, rank 2)
/// assert_eq!(transpose_b(&[1, 2, 3, 4, 5, 6], 3, 2), vec![1, 3, 5, 2, 4, 6]);
/// ```
pub fn transpose_b<T: Copy>(b: &[T], out_features: usize, rank: usize) -> Vec<T> {
    let mut bt = b.to_vec();
    transpose_b_into(b, out_features, rank, out_features, &mut bt);
    bt
}

/// `B` (`[out_features, rank]` row-major) transposed to `[rank, stride]`, the layout of
/// [`BLayout::RankOutStrided`]; the `stride - out_features` elements after each rank row are
/// `pad`. Panics if `b.len() != out_features · rank` or `stride < out_features`.
///
/// ```
/// use openledger_sgmv::transpose_b_strided;
///
/// // B = [[1, 2], [3, 4], [5, 6]] (3 outputs, rank 2), rows of Bᵀ 4 apart
/// assert_eq!(
///     transpose_b_strided(&[1, 2, 3, 4, 5, 6], 3, 2, 4, 0),
///     vec![1, 3, 5, 0, 2, 4, 6, 0]
/// );
/// ```
pub fn transpose_b_strided<T: Copy>(
    b: &[T],
    out_features: usize,
    rank: usize,
    stride: usize,
    pad: T,
) -> Vec<T> {
    assert!(stride >= out_features, "stride shorter than out_features");
    let mut bt = vec![pad; rank * stride];
    transpose_b_into(b, out_features, rank, stride, &mut bt);
    bt
}

/// Writes `Bᵀ` into the first `out_features` elements of each `stride`-long row of `bt`.
fn transpose_b_into<T: Copy>(
    b: &[T],
    out_features: usize,
    rank: usize,
    stride: usize,
    bt: &mut [T],
) {
    assert_eq!(
        b.len(),
        out_features * rank,
        "B is not [out_features, rank]"
    );
    if rank == 0 || out_features == 0 {
        return;
    }
    // Read `B` row by row; each of the `rank` output rows is written in order.
    let mut rows: Vec<&mut [T]> = bt
        .chunks_exact_mut(stride)
        .map(|row| &mut row[..out_features])
        .collect();
    for (o, brow) in b.chunks_exact(rank).enumerate() {
        for (row, &v) in rows.iter_mut().zip(brow) {
            row[o] = v;
        }
    }
}

/// The adapter slots of one layer, validated against the layer's dimensions.
#[derive(Debug, Clone)]
pub struct AdapterSlots<'a, T> {
    in_features: usize,
    out_features: usize,
    slots: Vec<LoraSlot<'a, T>>,
    b_layout: BLayout,
}

impl<'a, T: LoraElement> AdapterSlots<'a, T> {
    /// Checks every slot (rank ≥ 1, finite scale, `A` and `B` lengths) and wraps them; `B` is
    /// `[out_features, rank]` ([`BLayout::OutRank`]).
    pub fn new(
        in_features: usize,
        out_features: usize,
        slots: Vec<LoraSlot<'a, T>>,
    ) -> Result<Self, SgmvError> {
        Self::with_b_layout(in_features, out_features, slots, BLayout::OutRank)
    }

    /// As [`AdapterSlots::new`], with every slot's `B` in the given layout (each slot's `b`
    /// field then holds `Bᵀ` under [`BLayout::RankOut`] and [`BLayout::RankOutStrided`]; the
    /// latter's stride must be at least `out_features`).
    pub fn with_b_layout(
        in_features: usize,
        out_features: usize,
        slots: Vec<LoraSlot<'a, T>>,
        b_layout: BLayout,
    ) -> Result<Self, SgmvError> {
        if in_features == 0 || out_features == 0 {
            return Err(SgmvError::ZeroDims {
                in_features,
                out_features,
            });
        }
        if let BLayout::RankOutStrided { stride } = b_layout
            && stride < out_features
        {
            return Err(SgmvError::BadStride {
                stride,
                out_features,
            });
        }
        for (i, s) in slots.iter().enumerate() {
            if s.rank == 0 {
                return Err(SgmvError::ZeroRank { slot: i });
            }
            if !s.scale.is_finite() {
                return Err(SgmvError::BadScale {
                    slot: i,
                    scale: s.scale,
                });
            }
            let check = |matrix, found: usize, rows: usize, cols: usize| {
                let expected = rows.saturating_mul(cols);
                if found == expected {
                    Ok(())
                } else {
                    Err(SgmvError::SlotShape {
                        slot: i,
                        matrix,
                        expected,
                        found,
                        shape: format!("[{rows}, {cols}]"),
                    })
                }
            };
            check("A", s.a.len(), s.rank, in_features)?;
            match b_layout.rank_row_stride(out_features) {
                None => check("B", s.b.len(), out_features, s.rank)?,
                Some(stride) => check("B", s.b.len(), s.rank, stride)?,
            }
        }
        Ok(Self {
            in_features,
            out_features,
            slots,
            b_layout,
        })
    }

    /// The layout of every slot's `B`.
    pub fn b_layout(&self) -> BLayout {
        self.b_layout
    }

    /// Input dimension of the layer (length of an `x` row).
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Output dimension of the layer (length of a `y` row).
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// The slots, in index order.
    pub fn slots(&self) -> &[LoraSlot<'a, T>] {
        &self.slots
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The rank of each slot.
    pub fn ranks(&self) -> Vec<usize> {
        self.slots.iter().map(|s| s.rank).collect()
    }
}

/// How the rows of a batch are grouped (Punica's SGMV layout): segment `i` covers rows
/// `starts[i]..ends[i]` and uses adapter slot `slots[i]`. Rows outside every segment use no
/// adapter. Segments may come in any order, may be empty, and must not overlap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Segments {
    /// First row of each segment.
    pub starts: Vec<usize>,
    /// One past the last row of each segment.
    pub ends: Vec<usize>,
    /// Adapter slot of each segment.
    pub slots: Vec<usize>,
}

impl Segments {
    /// Segments from parallel arrays (checked when a plan is built).
    pub fn new(starts: Vec<usize>, ends: Vec<usize>, slots: Vec<usize>) -> Self {
        Self {
            starts,
            ends,
            slots,
        }
    }

    /// Segments from `(start, end, slot)` triples.
    pub fn from_triples(triples: &[(usize, usize, usize)]) -> Self {
        Self {
            starts: triples.iter().map(|t| t.0).collect(),
            ends: triples.iter().map(|t| t.1).collect(),
            slots: triples.iter().map(|t| t.2).collect(),
        }
    }

    /// Run-length segments from one optional slot per row (consecutive rows with the same slot
    /// share a segment; `None` rows are left out).
    pub fn from_row_slots(rows: &[Option<usize>]) -> Self {
        let mut out = Self::default();
        let mut i = 0;
        while i < rows.len() {
            let mut j = i + 1;
            while j < rows.len() && rows[j] == rows[i] {
                j += 1;
            }
            if let Some(slot) = rows[i] {
                out.starts.push(i);
                out.ends.push(j);
                out.slots.push(slot);
            }
            i = j;
        }
        out
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Whether there are no segments.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }
}

/// A run of consecutive rows sharing one slot, with its place in the packed intermediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Group {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) slot: usize,
    pub(crate) rank: usize,
    /// Offset of row `start`'s intermediate in `v`; row `start + i` is at `v_off + i * rank`.
    pub(crate) v_off: usize,
}

/// A validated batch layout: which slot each row uses and where each row's intermediate
/// `v = x · Aᵀ` (length = that slot's rank) lives in the packed `v` buffer. Rows are packed in row
/// order; rows without an adapter take no space.
///
/// ```
/// use openledger_sgmv::{SgmvPlan, Segments};
///
/// // rows 0..2 use slot 1 (rank 4), row 2 has no adapter, rows 3..4 use slot 0 (rank 2)
/// let segs = Segments::from_triples(&[(3, 4, 0), (0, 2, 1)]);
/// let plan = SgmvPlan::from_segments(&segs, &[2, 4], 4).unwrap();
/// assert_eq!(plan.intermediate_len(), 4 + 4 + 2);
/// assert_eq!(plan.row_intermediate(1), Some((4, 4)));
/// assert_eq!(plan.row_intermediate(2), None);
/// assert_eq!(plan.row_intermediate(3), Some((8, 2)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SgmvPlan {
    rows: usize,
    ranks: Vec<usize>,
    groups: Vec<Group>,
    v_len: usize,
}

impl SgmvPlan {
    /// Validates SGMV segments over a batch of `rows` rows whose slots have ranks `ranks`.
    pub fn from_segments(
        segments: &Segments,
        ranks: &[usize],
        rows: usize,
    ) -> Result<Self, SgmvError> {
        let n = segments.starts.len();
        if segments.ends.len() != n || segments.slots.len() != n {
            return Err(SgmvError::SegmentArrays {
                starts: n,
                ends: segments.ends.len(),
                slots: segments.slots.len(),
            });
        }
        for i in 0..n {
            let (start, end, slot) = (segments.starts[i], segments.ends[i], segments.slots[i]);
            if start > end || end > rows {
                return Err(SgmvError::SegmentOutOfRange {
                    segment: i,
                    start,
                    end,
                    rows,
                });
            }
            if slot >= ranks.len() {
                return Err(SgmvError::SlotOutOfRange {
                    place: format!("segment {i}"),
                    slot,
                    slots: ranks.len(),
                });
            }
        }
        let mut order: Vec<usize> = (0..n)
            .filter(|&i| segments.starts[i] < segments.ends[i])
            .collect();
        order.sort_by_key(|&i| segments.starts[i]);
        for w in order.windows(2) {
            let (p, q) = (w[0], w[1]);
            if segments.starts[q] < segments.ends[p] {
                return Err(SgmvError::SegmentsOverlap {
                    first: p,
                    first_start: segments.starts[p],
                    first_end: segments.ends[p],
                    second: q,
                    second_start: segments.starts[q],
                    second_end: segments.ends[q],
                });
            }
        }
        let mut v_len = 0;
        let groups = order
            .iter()
            .map(|&i| {
                let rank = ranks[segments.slots[i]];
                let g = Group {
                    start: segments.starts[i],
                    end: segments.ends[i],
                    slot: segments.slots[i],
                    rank,
                    v_off: v_len,
                };
                v_len += (g.end - g.start) * rank;
                g
            })
            .collect();
        Ok(Self {
            rows,
            ranks: ranks.to_vec(),
            groups,
            v_len,
        })
    }

    /// Validates a BGMV layout: one optional slot per row (`None`: no adapter).
    pub fn from_row_slots(indices: &[Option<usize>], ranks: &[usize]) -> Result<Self, SgmvError> {
        if let Some((row, &Some(slot))) = indices
            .iter()
            .enumerate()
            .find(|(_, s)| matches!(s, Some(s) if *s >= ranks.len()))
        {
            return Err(SgmvError::SlotOutOfRange {
                place: format!("row {row}"),
                slot,
                slots: ranks.len(),
            });
        }
        Self::from_segments(&Segments::from_row_slots(indices), ranks, indices.len())
    }

    /// Number of rows in the batch.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Length of the packed intermediate `v` (sum over rows with an adapter of that adapter's rank).
    pub fn intermediate_len(&self) -> usize {
        self.v_len
    }

    /// `(offset, rank)` of `row`'s intermediate in `v`, or `None` when the row has no adapter.
    pub fn row_intermediate(&self, row: usize) -> Option<(usize, usize)> {
        let g = self.groups.iter().find(|g| g.start <= row && row < g.end)?;
        Some((g.v_off + (row - g.start) * g.rank, g.rank))
    }

    /// The slot each row uses (`None`: no adapter).
    pub fn row_slots(&self) -> Vec<Option<usize>> {
        let mut out = vec![None; self.rows];
        for g in &self.groups {
            out[g.start..g.end].fill(Some(g.slot));
        }
        out
    }

    pub(crate) fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// Checks that `slots` are the ones the plan was built for (same count at least, same ranks).
    pub(crate) fn check_slots<T: LoraElement>(
        &self,
        slots: &AdapterSlots<'_, T>,
    ) -> Result<(), SgmvError> {
        self.check_ranks_by(|i| slots.slots().get(i).map(|s| s.rank))
    }

    /// Checks that slots of ranks `ranks` are the ones the plan was built for.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn check_ranks(&self, ranks: &[usize]) -> Result<(), SgmvError> {
        self.check_ranks_by(|i| ranks.get(i).copied())
    }

    /// Checks each planned rank against `rank_of(slot)` (`None`: the slot is missing).
    fn check_ranks_by(&self, rank_of: impl Fn(usize) -> Option<usize>) -> Result<(), SgmvError> {
        for (i, &planned) in self.ranks.iter().enumerate() {
            let found = rank_of(i).unwrap_or(0);
            if found != planned {
                return Err(SgmvError::PlanMismatch {
                    slot: i,
                    planned,
                    found,
                });
            }
        }
        Ok(())
    }

    /// The plan cut into launch tiles of at most `rows_per_tile` consecutive rows of one group,
    /// in row order: the grid of the GPU kernels (one block row per tile), so rows without an
    /// adapter cost no block at all. [`SgmvError::TooLarge`] where a row, slot or offset does
    /// not fit the kernels' indices (32-bit rows and slots, 64-bit offsets).
    pub fn launch_tiles(&self, rows_per_tile: usize) -> Result<LaunchTiles, SgmvError> {
        let rows_per_tile = rows_per_tile.max(1);
        let i32_of = |what: &'static str, value: usize| {
            i32::try_from(value)
                .map(i64::from)
                .map_err(|_| SgmvError::TooLarge { what, value })
        };
        i32_of("rows", self.rows)?;
        let mut t = LaunchTiles::default();
        for g in &self.groups {
            t.max_rank = t.max_rank.max(g.rank);
            let mut row0 = g.start;
            while row0 < g.end {
                let n = rows_per_tile.min(g.end - row0);
                let v_off = g.v_off + (row0 - g.start) * g.rank;
                let v_off = i64::try_from(v_off).map_err(|_| SgmvError::TooLarge {
                    what: "intermediate offset",
                    value: v_off,
                })?;
                t.words.extend_from_slice(&[
                    i32_of("tile row", row0)?,
                    n as i64,
                    i32_of("slot", g.slot)?,
                    v_off,
                ]);
                row0 += n;
            }
        }
        Ok(t)
    }
}

/// A plan as the GPU kernels read it: one record of [`LaunchTiles::WORDS`] 64-bit words per
/// tile (first row, rows, slot, offset of the first row's intermediate), all in one buffer so
/// a launch copies its metadata to the device once; and the largest rank (the grid's extent
/// over rank rows). Built from the one plan, so the CPU and GPU backends cannot disagree on
/// the packing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchTiles {
    /// The tile records, one after another.
    pub words: Vec<i64>,
    /// The largest rank of any tile's slot.
    pub max_rank: usize,
}

impl LaunchTiles {
    /// Words per tile record: `row0, rows, slot, v_off`.
    pub const WORDS: usize = 4;

    /// Number of tiles.
    pub fn len(&self) -> usize {
        self.words.len() / Self::WORDS
    }

    /// Whether there is no tile (no row has an adapter).
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
}

/// Where a layer's outputs sit in the rows of `y`: each row is `row_stride` elements long and
/// the layer writes its `out_features` outputs from column `col_offset` on, so one call can
/// write its part of a fused output (q | k | v, gate | up) in place. The dense layout is
/// [`OutputWindow::dense`].
///
/// ```
/// use openledger_sgmv::OutputWindow;
///
/// // k's outputs in a fused q|k|v row of 4096 + 1024 + 1024
/// let k = OutputWindow { row_stride: 6144, col_offset: 4096 };
/// assert!(k.check(1024).is_ok());
/// assert!(k.check(4096).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputWindow {
    /// Elements from the start of one row of `y` to the start of the next.
    pub row_stride: usize,
    /// The column of `y` where the layer's first output goes.
    pub col_offset: usize,
}

impl OutputWindow {
    /// Rows of exactly the layer's `out_features` outputs.
    pub fn dense(out_features: usize) -> Self {
        Self {
            row_stride: out_features,
            col_offset: 0,
        }
    }

    /// Checks that `out_features` outputs from `col_offset` on fit in a row.
    pub fn check(&self, out_features: usize) -> Result<(), SgmvError> {
        if self
            .col_offset
            .checked_add(out_features)
            .is_some_and(|end| end <= self.row_stride)
        {
            Ok(())
        } else {
            Err(SgmvError::BadWindow {
                row_stride: self.row_stride,
                col_offset: self.col_offset,
                out_features,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_tiles_cover_every_row_with_an_adapter_once_in_row_order() {
        // rows 0..11 slot 1 (rank 4), row 11 none, rows 12..14 slot 0 (rank 2), rest none
        let segs = Segments::from_triples(&[(12, 14, 0), (0, 11, 1), (16, 16, 0)]);
        let plan = SgmvPlan::from_segments(&segs, &[2, 4], 20).unwrap();
        let t = plan.launch_tiles(8).unwrap();
        assert_eq!(t.max_rank, 4);
        assert_eq!(
            t.words,
            vec![0, 8, 1, 0, 8, 3, 1, 32, 12, 2, 0, 44],
            "row0, rows, slot, v_off per tile"
        );
        assert_eq!(t.len(), 3);
        // One row per tile (the BGMV kernels): every row with an adapter, at its own offset.
        let t = plan.launch_tiles(1).unwrap();
        assert_eq!(t.len(), 13);
        for tile in t.words.chunks(LaunchTiles::WORDS) {
            let row = tile[0] as usize;
            assert_eq!(tile[1], 1);
            let (off, rank) = plan.row_intermediate(row).unwrap();
            assert_eq!(
                (tile[3] as usize, rank),
                (off, plan.ranks[tile[2] as usize])
            );
        }
        // An empty plan launches nothing.
        let none = SgmvPlan::from_row_slots(&[None, None], &[3]).unwrap();
        assert_eq!(none.launch_tiles(8).unwrap().len(), 0);
    }

    #[test]
    fn a_row_past_the_kernels_indices_is_refused() {
        let rows = i32::MAX as usize + 1;
        let segs = Segments::from_triples(&[(0, 1, 0)]);
        let plan = SgmvPlan::from_segments(&segs, &[1], rows).unwrap();
        assert!(matches!(
            plan.launch_tiles(8),
            Err(SgmvError::TooLarge { what: "rows", .. })
        ));
    }

    #[test]
    fn windows_must_hold_the_outputs() {
        assert!(OutputWindow::dense(7).check(7).is_ok());
        let w = OutputWindow {
            row_stride: 10,
            col_offset: 4,
        };
        assert!(w.check(6).is_ok());
        assert!(matches!(
            w.check(7),
            Err(SgmvError::BadWindow {
                row_stride: 10,
                col_offset: 4,
                out_features: 7
            })
        ));
        let huge = OutputWindow {
            row_stride: usize::MAX,
            col_offset: usize::MAX,
        };
        assert!(huge.check(2).is_err());
    }
}
