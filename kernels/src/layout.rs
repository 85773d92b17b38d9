//! Host-side batch layouts for the kernels, validated before anything touches the device: the
//! SGMV segment arrays (sorted, non-empty, non-overlapping) and the BGMV per-row slots, each with
//! the offsets of the packed f32 intermediate `v` (rows packed in row order, each row taking its
//! own slot's rank; the same packing as the CPU operators of `openledger-lora`).

use crate::error::KernelError;

fn to_i32(what: &'static str, value: usize) -> Result<i32, KernelError> {
    i32::try_from(value).map_err(|_| KernelError::TooLarge { what, value })
}

fn to_i64(what: &'static str, value: usize) -> Result<i64, KernelError> {
    i64::try_from(value).map_err(|_| KernelError::TooLarge { what, value })
}

/// SGMV segments as the kernels read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentLayout {
    /// First row of each (non-empty) segment, sorted.
    pub(crate) starts: Vec<i32>,
    /// One past the last row of each segment.
    pub(crate) ends: Vec<i32>,
    /// Slot of each segment.
    pub(crate) slots: Vec<i32>,
    /// Offset in `v` of each segment's first row.
    pub(crate) v_off: Vec<i64>,
    /// Rows in the batch.
    pub(crate) rows: usize,
    /// Length of the longest segment.
    pub(crate) max_len: usize,
    /// Largest rank used.
    pub(crate) max_rank: usize,
    /// Length of the packed intermediate.
    pub(crate) v_len: usize,
}

impl SegmentLayout {
    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of non-empty segments.
    pub fn segment_count(&self) -> usize {
        self.starts.len()
    }

    /// Length of the packed intermediate `v`.
    pub fn intermediate_len(&self) -> usize {
        self.v_len
    }

    /// Validates `(start, end, slot)` segments (any order; empty ones are dropped) over `rows`
    /// rows whose slots have ranks `ranks`.
    ///
    /// ```
    /// use openledger_kernels::SegmentLayout;
    /// let l = SegmentLayout::new(&[(2, 5, 1), (0, 2, 0)], &[4, 8], 6).unwrap();
    /// assert_eq!(l.segment_count(), 2);
    /// assert_eq!(l.intermediate_len(), 2 * 4 + 3 * 8);
    /// ```
    pub fn new(
        segments: &[(usize, usize, usize)],
        ranks: &[usize],
        rows: usize,
    ) -> Result<Self, KernelError> {
        for (i, &(start, end, slot)) in segments.iter().enumerate() {
            if start > end || end > rows {
                return Err(KernelError::SegmentOutOfRange {
                    segment: i,
                    start,
                    end,
                    rows,
                });
            }
            if slot >= ranks.len() {
                return Err(KernelError::SlotOutOfRange {
                    place: format!("segment {i}"),
                    slot,
                    slots: ranks.len(),
                });
            }
        }
        let mut order: Vec<usize> = (0..segments.len())
            .filter(|&i| segments[i].0 < segments[i].1)
            .collect();
        order.sort_by_key(|&i| segments[i].0);
        for w in order.windows(2) {
            if segments[w[1]].0 < segments[w[0]].1 {
                return Err(KernelError::SegmentsOverlap {
                    first: w[0],
                    second: w[1],
                });
            }
        }
        let mut out = Self {
            starts: Vec::new(),
            ends: Vec::new(),
            slots: Vec::new(),
            v_off: Vec::new(),
            rows,
            max_len: 0,
            max_rank: 0,
            v_len: 0,
        };
        to_i32("rows", rows)?;
        for &i in &order {
            let (start, end, slot) = segments[i];
            out.starts.push(to_i32("segment start", start)?);
            out.ends.push(to_i32("segment end", end)?);
            out.slots.push(to_i32("slot", slot)?);
            out.v_off.push(to_i64("intermediate offset", out.v_len)?);
            out.max_len = out.max_len.max(end - start);
            out.max_rank = out.max_rank.max(ranks[slot]);
            out.v_len += (end - start) * ranks[slot];
        }
        Ok(out)
    }
}

/// BGMV rows as the kernels read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowLayout {
    /// Slot of each row, `-1` for none.
    pub(crate) slots: Vec<i32>,
    /// Offset in `v` of each row (unused for rows without an adapter).
    pub(crate) v_off: Vec<i64>,
    /// Largest rank used.
    pub(crate) max_rank: usize,
    /// Length of the packed intermediate.
    pub(crate) v_len: usize,
}

impl RowLayout {
    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.slots.len()
    }

    /// Length of the packed intermediate `v`.
    pub fn intermediate_len(&self) -> usize {
        self.v_len
    }

    /// Validates one optional slot per row.
    pub fn new(indices: &[Option<usize>], ranks: &[usize]) -> Result<Self, KernelError> {
        let mut out = Self {
            slots: Vec::new(),
            v_off: Vec::new(),
            max_rank: 0,
            v_len: 0,
        };
        for (row, idx) in indices.iter().enumerate() {
            out.v_off.push(to_i64("intermediate offset", out.v_len)?);
            match *idx {
                None => out.slots.push(-1),
                Some(slot) if slot >= ranks.len() => {
                    return Err(KernelError::SlotOutOfRange {
                        place: format!("row {row}"),
                        slot,
                        slots: ranks.len(),
                    });
                }
                Some(slot) => {
                    out.slots.push(to_i32("slot", slot)?);
                    out.max_rank = out.max_rank.max(ranks[slot]);
                    out.v_len += ranks[slot];
                }
            }
        }
        Ok(out)
    }
}
