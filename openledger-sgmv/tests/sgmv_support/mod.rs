//! Shared by the SGMV tests: the adapter slots of one layer from per-slot factor buffers.

use openledger_sgmv::{AdapterSlots, BLayout, LoraElement, LoraSlot};

/// Slot `i` takes `a[i]`, `b[i]` (laid out as `layout` says), `ranks[i]` and `scales[i]`.
pub fn slots<'s, W: LoraElement>(
    (in_f, out_f): (usize, usize),
    a: &'s [Vec<W>],
    b: &'s [Vec<W>],
    ranks: &[usize],
    scales: &[f32],
    layout: BLayout,
) -> AdapterSlots<'s, W> {
    let slots = (0..ranks.len())
        .map(|i| LoraSlot {
            a: &a[i][..],
            b: &b[i][..],
            rank: ranks[i],
            scale: scales[i],
        })
        .collect();
    AdapterSlots::with_b_layout(in_f, out_f, slots, layout).unwrap()
}
