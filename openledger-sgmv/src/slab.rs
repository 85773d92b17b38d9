//! Adapter memory as pages of one slab per dtype (S-LoRA's unified paging): the GPU backend
//! allocates one device buffer per element type and hands each adapter slot a run of whole
//! pages in it, instead of one allocation per matrix. This module is the host-side part, the
//! same with or without the `cuda` feature (so the CPU tests cover it): the page allocator and
//! the layout of a slot inside its run, which is what the kernels read.
//!
//! A slot's run holds `A` as `[rank, lda]` and `Bᵀ` as `[rank, ldb]`, each row zero-padded to a
//! multiple of the 16-byte vector the kernels load (`lda`, `ldb`), `Bᵀ` starting on the first
//! 256-byte boundary after `A`. Runs start on page boundaries and pages are multiples of 256
//! bytes, so every row of both matrices is 16-byte aligned.

use crate::element::LoraElement;
use crate::error::SgmvError;
use crate::plan::{BLayout, LoraSlot};
use std::collections::BTreeMap;

/// Alignment of `Bᵀ` inside a run, and the unit pages are made of.
pub const SLAB_ALIGN: usize = 256;

/// The default page size: 16 KiB (a rank-16, 4096-wide bf16 `A` is 8 pages).
pub const DEFAULT_PAGE_BYTES: usize = 16 << 10;

/// A run of consecutive pages: `start..start + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    /// First page.
    pub start: usize,
    /// Pages in the run (at least 1).
    pub len: usize,
}

/// First-fit allocation of page runs out of a fixed number of pages; a freed run merges with
/// its free neighbours, so a slab whose slots are all freed is one free run again.
///
/// ```
/// use openledger_sgmv::PageAllocator;
///
/// let mut pages = PageAllocator::new(8);
/// let a = pages.alloc(3).unwrap();
/// let b = pages.alloc(5).unwrap();
/// assert!(pages.alloc(1).is_err());
/// pages.free(a);
/// pages.free(b);
/// assert_eq!(pages.largest_free_run(), 8);
/// ```
#[derive(Debug, Clone)]
pub struct PageAllocator {
    pages: usize,
    /// Free runs by first page.
    free: BTreeMap<usize, usize>,
    free_pages: usize,
}

impl PageAllocator {
    /// `pages` pages, all free.
    pub fn new(pages: usize) -> Self {
        let mut free = BTreeMap::new();
        if pages > 0 {
            free.insert(0, pages);
        }
        Self {
            pages,
            free,
            free_pages: pages,
        }
    }

    /// Pages in all.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Pages not allocated.
    pub fn free_pages(&self) -> usize {
        self.free_pages
    }

    /// The longest run that can be allocated now.
    pub fn largest_free_run(&self) -> usize {
        self.free.values().copied().max().unwrap_or(0)
    }

    /// The first free run of `len` pages (`len ≥ 1`); [`SgmvError::SlabFull`] naming the free
    /// pages and the longest run when there is none.
    pub fn alloc(&mut self, len: usize) -> Result<PageRun, SgmvError> {
        let len = len.max(1);
        let Some((&start, &have)) = self.free.iter().find(|&(_, &have)| have >= len) else {
            return Err(SgmvError::SlabFull {
                needed_pages: len,
                free_pages: self.free_pages,
                largest_run: self.largest_free_run(),
            });
        };
        self.free.remove(&start);
        if have > len {
            self.free.insert(start + len, have - len);
        }
        self.free_pages -= len;
        Ok(PageRun { start, len })
    }

    /// Returns `run` (one this allocator gave and not yet freed) to the free runs.
    pub fn free(&mut self, run: PageRun) {
        debug_assert!(run.start + run.len <= self.pages, "run past the slab");
        if let Some((&prev, &plen)) = self.free.range(..=run.start).next_back() {
            debug_assert!(prev + plen <= run.start, "run freed twice");
        }
        if let Some((&next, _)) = self.free.range(run.start..).next() {
            debug_assert!(next >= run.start + run.len, "run freed twice");
        }
        let (mut start, mut len) = (run.start, run.len);
        if let Some((&prev, &plen)) = self.free.range(..start).next_back()
            && prev + plen == start
        {
            self.free.remove(&prev);
            start = prev;
            len += plen;
        }
        if let Some(nlen) = self.free.remove(&(run.start + run.len)) {
            len += nlen;
        }
        self.free.insert(start, len);
        self.free_pages += run.len;
    }
}

/// Where a slot's matrices lie in its run, in elements from the run's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotLayout {
    /// Elements per row of `A` (`in_features` rounded up to the vector width).
    pub lda: usize,
    /// Elements per row of `Bᵀ` (`out_features` rounded up to the vector width).
    pub ldb: usize,
    /// The rank.
    pub rank: usize,
    /// Offset of `Bᵀ` (`A` is at 0).
    pub b_offset: usize,
    /// Elements the slot takes (`Bᵀ`'s end).
    pub len: usize,
}

impl SlotLayout {
    /// The layout of a rank-`rank` slot of a layer `in_features → out_features` with elements
    /// of `elem_bytes` bytes (2 or 4).
    pub fn new(in_features: usize, out_features: usize, rank: usize, elem_bytes: usize) -> Self {
        let vec = 16 / elem_bytes;
        let lda = in_features.next_multiple_of(vec);
        let ldb = out_features.next_multiple_of(vec);
        let b_offset = (rank * lda * elem_bytes).next_multiple_of(SLAB_ALIGN) / elem_bytes;
        Self {
            lda,
            ldb,
            rank,
            b_offset,
            len: b_offset + rank * ldb,
        }
    }

    /// Pages of `page_bytes` the slot takes.
    pub fn pages(&self, elem_bytes: usize, page_bytes: usize) -> usize {
        (self.len * elem_bytes).div_ceil(page_bytes).max(1)
    }

    /// The slot's contents as its run holds them: `A` in padded rows, then (after zeros up to
    /// `b_offset`) `Bᵀ` in padded rows, made from `B` in the layout `b_layout`. The slot is one
    /// an [`AdapterSlots`](crate::AdapterSlots) validated, so its lengths are right.
    pub fn pack<T: LoraElement>(
        &self,
        slot: &LoraSlot<'_, T>,
        in_features: usize,
        out_features: usize,
        b_layout: BLayout,
    ) -> Vec<T> {
        let zero = T::from_f32(0.0);
        let mut out = vec![zero; self.len];
        for (j, row) in slot.a.chunks_exact(in_features).enumerate() {
            out[j * self.lda..j * self.lda + in_features].copy_from_slice(row);
        }
        let bt = &mut out[self.b_offset..];
        match b_layout.rank_row_stride(out_features) {
            None => {
                // B is [out, rank]: element (o, j) goes to row j, column o.
                for (o, brow) in slot.b.chunks_exact(self.rank).enumerate() {
                    for (j, &b) in brow.iter().enumerate() {
                        bt[j * self.ldb + o] = b;
                    }
                }
            }
            Some(stride) => {
                for j in 0..self.rank {
                    bt[j * self.ldb..j * self.ldb + out_features]
                        .copy_from_slice(&slot.b[j * stride..j * stride + out_features]);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn runs_never_overlap_and_freeing_everything_leaves_one_run() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut pages = PageAllocator::new(200);
        let mut held: Vec<PageRun> = Vec::new();
        for _ in 0..2000 {
            if rng.random_bool(0.55) {
                let want = rng.random_range(1..12);
                match pages.alloc(want) {
                    Ok(run) => {
                        assert_eq!(run.len, want);
                        assert!(run.start + run.len <= 200);
                        for h in &held {
                            let apart =
                                run.start + run.len <= h.start || h.start + h.len <= run.start;
                            assert!(apart, "{run:?} overlaps {h:?}");
                        }
                        held.push(run);
                    }
                    Err(SgmvError::SlabFull {
                        needed_pages,
                        largest_run,
                        ..
                    }) => {
                        assert_eq!(needed_pages, want);
                        assert!(largest_run < want);
                    }
                    Err(e) => panic!("{e}"),
                }
            } else if !held.is_empty() {
                let i = rng.random_range(0..held.len());
                pages.free(held.swap_remove(i));
            }
            let used: usize = held.iter().map(|r| r.len).sum();
            assert_eq!(pages.free_pages(), 200 - used);
        }
        for run in held.drain(..) {
            pages.free(run);
        }
        assert_eq!(pages.largest_free_run(), 200);
        assert_eq!(pages.free.len(), 1);
    }

    #[test]
    fn a_full_slab_names_what_was_asked_and_what_is_left() {
        let mut pages = PageAllocator::new(4);
        let a = pages.alloc(1).unwrap();
        let _b = pages.alloc(1).unwrap();
        pages.free(a);
        // Three pages free, but the longest run is two.
        let e = pages.alloc(3).unwrap_err();
        assert!(matches!(
            e,
            SgmvError::SlabFull {
                needed_pages: 3,
                free_pages: 3,
                largest_run: 2
            }
        ));
        assert!(PageAllocator::new(0).alloc(1).is_err());
    }

    #[test]
    fn a_slot_is_packed_in_aligned_padded_rows() {
        // in 5, out 3, rank 2, bf16-sized elements (vectors of 8)
        let l = SlotLayout::new(5, 3, 2, 2);
        assert_eq!((l.lda, l.ldb), (8, 8));
        assert_eq!(l.b_offset, 128, "B starts 256 bytes in");
        assert_eq!(l.len, 128 + 16);
        assert_eq!(l.pages(2, 256), 2);
        let a: Vec<f32> = (1..=10).map(|i| i as f32).collect();
        // B [out 3, rank 2] = [[100, 101], [110, 111], [120, 121]]
        let b = [100.0, 101.0, 110.0, 111.0, 120.0, 121.0];
        let slot = LoraSlot {
            a: &a,
            b: &b,
            rank: 2,
            scale: 1.0,
        };
        let l4 = SlotLayout::new(5, 3, 2, 4);
        assert_eq!((l4.lda, l4.ldb, l4.b_offset), (8, 4, 64));
        let p = l4.pack(&slot, 5, 3, BLayout::OutRank);
        assert_eq!(&p[0..8], &[1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0, 0.0]);
        assert_eq!(&p[8..16], &[6.0, 7.0, 8.0, 9.0, 10.0, 0.0, 0.0, 0.0]);
        assert!(p[16..64].iter().all(|&v| v == 0.0));
        assert_eq!(
            &p[64..72],
            &[100.0, 110.0, 120.0, 0.0, 101.0, 111.0, 121.0, 0.0]
        );
        // The same Bᵀ from the transposed and strided layouts.
        let bt = crate::transpose_b_strided(&b, 3, 2, 5, -1.0);
        let strided = LoraSlot { b: &bt, ..slot };
        assert_eq!(
            l4.pack(&strided, 5, 3, BLayout::RankOutStrided { stride: 5 }),
            p
        );
    }
}
