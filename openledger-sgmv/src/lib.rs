//! SGMV and BGMV: many LoRA adapters applied to one batch in one pass (the semantics of Punica's
//! operators). The batch's rows either come in segments, each using one adapter slot (SGMV, for
//! prefill), or carry one slot index each (BGMV, for decode); every row `i` with slot `s` gets
//!
//! `y[i] += scale_s · (x[i] · A_sᵀ) · B_sᵀ`
//!
//! in two public steps — *shrink* `v[i] = x[i] · A_sᵀ` into a packed f32 intermediate (each row
//! takes its own slot's rank, nothing is padded to the largest rank) and *expand*
//! `y[i] += scale_s · v[i] · B_sᵀ` — and a fused call on top. Rows with no adapter are left as
//! they are. The activations `x`, `y` and the weights `A`, `B` are each f32, f16 or bf16 (the
//! weights may be narrower than the activations: bf16 adapters serve an f32 model without an f32
//! copy); arithmetic is f32.
//!
//! `B` comes as PEFT stores it (`[out, rank]`) or transposed (`[rank, out]`,
//! [`BLayout::RankOut`], made once with [`transpose_b`]; or in rows padded to a longer stride,
//! [`BLayout::RankOutStrided`], made with [`transpose_b_strided`] and [`padded_b_stride`]): the
//! same bits every way. The transposed layouts spare the expand step a transposition per call,
//! and padded rows keep the rank rows out of each other's L1 sets (what the model does with its
//! attached adapters).
//!
//! The CPU path is rayon-parallel over tiles of rows *and* output columns (so a few tokens still
//! use every core; a call below about 2¹⁸ multiply-adds, e.g. one token through a 4096-wide
//! layer, runs on the calling thread, where waking the pool would cost more than the work),
//! vectorised with AVX2 + FMA (which AVX-512 CPUs run too) with a portable fallback, and its
//! results do not depend on the number of threads.
//!
//! One plan ([`SgmvPlan`]: the segments, slots, ranks and the packing of the intermediate), two
//! backends: the CPU operators above and, behind the `cuda` feature, [`CudaSgmv`], which
//! launches the kernels of `openledger-kernels` (their CUDA C sources and NVRTC compilation) on
//! the plan's tile table, with adapters held in pages of one slab per dtype ([`AdapterSlab`],
//! laid out by [`SlotLayout`], allocated by [`PageAllocator`]). Either backend writes into a row
//! stride and column offset ([`OutputWindow`], [`expand_with_plan_into`]), so one call fills its
//! part of a fused q|k|v or gate|up output. Without the feature the GPU types exist and every GPU entry point answers
//! [`SgmvError::NotCompiledWithCuda`]; with it, a missing driver, NVRTC or device is a typed
//! error naming what was looked for, never a panic.
//!
//! ```
//! use openledger_sgmv::{sgmv, AdapterSlots, LoraSlot, Segments};
//!
//! // a layer with in = 3, out = 2 and two adapters of ranks 1 and 2
//! let a0 = [1.0f32, 0.0, 0.0];
//! let b0 = [1.0f32, 2.0];
//! let a1 = [0.0f32, 1.0, 0.0, 0.0, 0.0, 1.0];
//! let b1 = [1.0f32, 0.0, 0.0, 1.0];
//! let slots = AdapterSlots::new(3, 2, vec![
//!     LoraSlot { a: &a0, b: &b0, rank: 1, scale: 0.5 },
//!     LoraSlot { a: &a1, b: &b1, rank: 2, scale: 2.0 },
//! ]).unwrap();
//! // three rows: row 0 uses slot 1, row 1 no adapter, row 2 slot 0
//! let x = [1.0f32, 2.0, 3.0, 9.0, 9.0, 9.0, 4.0, 5.0, 6.0];
//! let mut y = [0.0f32; 6];
//! let segs = Segments::from_triples(&[(0, 1, 1), (2, 3, 0)]);
//! sgmv(&x, &slots, &segs, &mut y).unwrap();
//! assert_eq!(y, [4.0, 6.0, 0.0, 0.0, 2.0, 4.0]);
//! ```

mod candle;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda/dummy.rs"]
mod cuda;
mod element;
mod error;
mod plan;
mod slab;

pub use candle::{TensorSlot, sgmv_tensors};
pub use cpu::simd::{Isa, detected_isa, shrink_native, shrink_portable};
pub use cuda::{
    AdapterSlab, CudaSgmv, GpuBuffer, GpuElement, GpuSlots, cuda_driver_available, nvrtc_available,
};
#[cfg(feature = "cuda")]
pub use cuda::{context_lost, load_kernels};
pub use element::LoraElement;
pub use error::SgmvError;
pub use plan::{
    AdapterSlots, BLayout, LaunchTiles, LoraSlot, OutputWindow, Segments, SgmvPlan,
    padded_b_stride, transpose_b, transpose_b_strided,
};
pub use slab::{DEFAULT_PAGE_BYTES, PageAllocator, PageRun, SLAB_ALIGN, SlotLayout};

fn check_len(buffer: &'static str, expected: usize, found: usize) -> Result<(), SgmvError> {
    if expected == found {
        Ok(())
    } else {
        Err(SgmvError::Length {
            buffer,
            expected,
            found,
        })
    }
}

/// Rows in a buffer of `len` elements with rows of `width` (exact multiple required).
fn rows_of(buffer: &'static str, len: usize, width: usize) -> Result<usize, SgmvError> {
    if !len.is_multiple_of(width) {
        return Err(SgmvError::Length {
            buffer,
            expected: (len / width + 1) * width,
            found: len,
        });
    }
    Ok(len / width)
}

/// Shrink with a validated plan: `v[row] = x[row] · A_slotᵀ`, `v` packed as the plan says
/// (`plan.intermediate_len()` elements). `x` is `[plan.rows(), in_features]`.
pub fn shrink_with_plan<X: LoraElement, W: LoraElement>(
    plan: &SgmvPlan,
    x: &[X],
    slots: &AdapterSlots<'_, W>,
    v: &mut [f32],
) -> Result<(), SgmvError> {
    plan.check_slots(slots)?;
    check_len("x", plan.rows() * slots.in_features(), x.len())?;
    check_len("v", plan.intermediate_len(), v.len())?;
    cpu::shrink(plan, x, slots, v);
    Ok(())
}

/// Expand with a validated plan: `y[row] += scale_slot · v[row] · B_slotᵀ`. `y` is
/// `[plan.rows(), out_features]`; rows without an adapter are not touched.
pub fn expand_with_plan<X: LoraElement, W: LoraElement>(
    plan: &SgmvPlan,
    v: &[f32],
    slots: &AdapterSlots<'_, W>,
    y: &mut [X],
) -> Result<(), SgmvError> {
    expand_with_plan_into(plan, v, slots, y, OutputWindow::dense(slots.out_features()))
}

/// As [`expand_with_plan`], into the columns `window` gives each row of `y` (`y` is
/// `[plan.rows(), window.row_stride]`; the other columns are not touched): one layer's part of
/// a fused output such as q | k | v.
pub fn expand_with_plan_into<X: LoraElement, W: LoraElement>(
    plan: &SgmvPlan,
    v: &[f32],
    slots: &AdapterSlots<'_, W>,
    y: &mut [X],
    window: OutputWindow,
) -> Result<(), SgmvError> {
    plan.check_slots(slots)?;
    window.check(slots.out_features())?;
    check_len("y", plan.rows() * window.row_stride, y.len())?;
    check_len("v", plan.intermediate_len(), v.len())?;
    cpu::expand(plan, v, slots, y, window);
    Ok(())
}

/// Shrink then expand with a validated plan (allocates the intermediate).
pub fn apply_with_plan<X: LoraElement, W: LoraElement>(
    plan: &SgmvPlan,
    x: &[X],
    slots: &AdapterSlots<'_, W>,
    y: &mut [X],
) -> Result<(), SgmvError> {
    apply_with_plan_into(plan, x, slots, y, OutputWindow::dense(slots.out_features()))
}

/// As [`apply_with_plan`], into the columns `window` gives each row of `y`.
pub fn apply_with_plan_into<X: LoraElement, W: LoraElement>(
    plan: &SgmvPlan,
    x: &[X],
    slots: &AdapterSlots<'_, W>,
    y: &mut [X],
    window: OutputWindow,
) -> Result<(), SgmvError> {
    window.check(slots.out_features())?;
    check_len("y", plan.rows() * window.row_stride, y.len())?;
    let mut v = vec![0f32; plan.intermediate_len()];
    cpu::in_pool_if_parallel(plan, slots.in_features(), slots.out_features(), || {
        shrink_with_plan(plan, x, slots, &mut v)?;
        expand_with_plan_into(plan, &v, slots, y, window)
    })
}

/// SGMV shrink: `v[row] = x[row] · A_slotᵀ` for every row of every segment. `x` is
/// `[rows, in_features]`; returns the plan, whose `intermediate_len()` `v` must have (use
/// [`SgmvPlan::from_segments`] first to size `v`).
pub fn sgmv_shrink<X: LoraElement, W: LoraElement>(
    x: &[X],
    slots: &AdapterSlots<'_, W>,
    segments: &Segments,
    v: &mut [f32],
) -> Result<SgmvPlan, SgmvError> {
    let rows = rows_of("x", x.len(), slots.in_features())?;
    let plan = SgmvPlan::from_segments(segments, &slots.ranks(), rows)?;
    shrink_with_plan(&plan, x, slots, v)?;
    Ok(plan)
}

/// SGMV expand: `y[row] += scale_slot · v[row] · B_slotᵀ` for every row of every segment.
pub fn sgmv_expand<X: LoraElement, W: LoraElement>(
    v: &[f32],
    slots: &AdapterSlots<'_, W>,
    segments: &Segments,
    y: &mut [X],
) -> Result<(), SgmvError> {
    let rows = rows_of("y", y.len(), slots.out_features())?;
    let plan = SgmvPlan::from_segments(segments, &slots.ranks(), rows)?;
    expand_with_plan(&plan, v, slots, y)
}

/// SGMV, fused: `y[seg] += scale · (x[seg] · Aᵀ) · Bᵀ` for every segment.
pub fn sgmv<X: LoraElement, W: LoraElement>(
    x: &[X],
    slots: &AdapterSlots<'_, W>,
    segments: &Segments,
    y: &mut [X],
) -> Result<(), SgmvError> {
    let rows = rows_of("x", x.len(), slots.in_features())?;
    let plan = SgmvPlan::from_segments(segments, &slots.ranks(), rows)?;
    apply_with_plan(&plan, x, slots, y)
}

/// BGMV shrink: one optional slot per row (`indices.len()` rows); returns the plan.
pub fn bgmv_shrink<X: LoraElement, W: LoraElement>(
    x: &[X],
    slots: &AdapterSlots<'_, W>,
    indices: &[Option<usize>],
    v: &mut [f32],
) -> Result<SgmvPlan, SgmvError> {
    let plan = SgmvPlan::from_row_slots(indices, &slots.ranks())?;
    shrink_with_plan(&plan, x, slots, v)?;
    Ok(plan)
}

/// BGMV expand: one optional slot per row.
pub fn bgmv_expand<X: LoraElement, W: LoraElement>(
    v: &[f32],
    slots: &AdapterSlots<'_, W>,
    indices: &[Option<usize>],
    y: &mut [X],
) -> Result<(), SgmvError> {
    let plan = SgmvPlan::from_row_slots(indices, &slots.ranks())?;
    expand_with_plan(&plan, v, slots, y)
}

/// BGMV, fused: `y[i] += scale · (x[i] · Aᵀ) · Bᵀ` with the slot of row `i`.
pub fn bgmv<X: LoraElement, W: LoraElement>(
    x: &[X],
    slots: &AdapterSlots<'_, W>,
    indices: &[Option<usize>],
    y: &mut [X],
) -> Result<(), SgmvError> {
    let plan = SgmvPlan::from_row_slots(indices, &slots.ranks())?;
    apply_with_plan(&plan, x, slots, y)
}
