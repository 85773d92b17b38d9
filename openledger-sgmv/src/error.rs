//! The typed error of the SGMV / BGMV operators, on either backend: every variant names the
//! culprit (slot, segment, row, buffer, library, kernel) and the expected and found values.

use openledger_core::error::{Classify, ErrorKind};
use thiserror::Error;

/// Why an SGMV / BGMV call was refused. Nothing is written to the outputs when an error is
/// returned: every check runs before the first write.
#[derive(Debug, Error)]
pub enum SgmvError {
    /// A slot's `A` (`[rank, in]`) or `B` (`[out, rank]`, or `Bᵀ`: `[rank, out]` under
    /// `BLayout::RankOut`, `[rank, stride]` under `BLayout::RankOutStrided`) slice does not hold
    /// the number of elements its rank and the layer's dimensions imply.
    #[error(
        "adapter slot {slot}: matrix {matrix} has {found} elements, expected {expected} ({shape})"
    )]
    SlotShape {
        /// Index of the slot.
        slot: usize,
        /// `"A"` or `"B"`.
        matrix: &'static str,
        /// Number of elements implied by the rank and the layer's dimensions.
        expected: usize,
        /// Number of elements in the slice.
        found: usize,
        /// The expected shape, written out (`"[16, 4096]"`).
        shape: String,
    },
    /// A [`BLayout::RankOutStrided`](super::BLayout::RankOutStrided) stride is shorter than the
    /// layer's output dimension (each rank row of `Bᵀ` must hold every output).
    #[error("B row stride {stride} is shorter than the layer's {out_features} outputs")]
    BadStride {
        /// The stride given.
        stride: usize,
        /// Output features of the layer.
        out_features: usize,
    },
    /// An [`OutputWindow`](crate::OutputWindow) whose rows cannot hold the layer's outputs
    /// from its column offset on.
    #[error(
        "output window: {out_features} outputs from column {col_offset} do not fit rows of {row_stride}"
    )]
    BadWindow {
        /// Elements per row of `y`.
        row_stride: usize,
        /// The first output's column.
        col_offset: usize,
        /// Output features of the layer.
        out_features: usize,
    },
    /// The adapter slab has no run of free pages long enough for a slot.
    #[error(
        "adapter slab full: a slot needs {needed_pages} consecutive pages; {free_pages} are free, the longest run is {largest_run}"
    )]
    SlabFull {
        /// Pages the slot needs.
        needed_pages: usize,
        /// Pages free in all.
        free_pages: usize,
        /// The longest run of free pages.
        largest_run: usize,
    },
    /// A slot declares rank 0.
    #[error("adapter slot {slot}: rank must be at least 1")]
    ZeroRank {
        /// Index of the slot.
        slot: usize,
    },
    /// A slot's scale is NaN or infinite.
    #[error("adapter slot {slot}: scale {scale} is not finite")]
    BadScale {
        /// Index of the slot.
        slot: usize,
        /// The offending scale.
        scale: f32,
    },
    /// The layer's input or output dimension is zero.
    #[error("layer dimensions must be non-zero, found in = {in_features}, out = {out_features}")]
    ZeroDims {
        /// Input features of the layer.
        in_features: usize,
        /// Output features of the layer.
        out_features: usize,
    },
    /// The `starts`, `ends` and `slots` arrays of a segment description differ in length.
    #[error(
        "segments: starts has {starts} entries, ends {ends}, slots {slots}; they must be equal"
    )]
    SegmentArrays {
        /// Length of `starts`.
        starts: usize,
        /// Length of `ends`.
        ends: usize,
        /// Length of `slots`.
        slots: usize,
    },
    /// A segment ends before it starts, or reaches past the last row of the batch.
    #[error("segment {segment} covers rows {start}..{end}, outside the batch of {rows} rows")]
    SegmentOutOfRange {
        /// Index of the segment.
        segment: usize,
        /// First row of the segment.
        start: usize,
        /// One past the last row of the segment.
        end: usize,
        /// Number of rows in the batch.
        rows: usize,
    },
    /// Two segments share at least one row.
    #[error(
        "segments {first} ({first_start}..{first_end}) and {second} ({second_start}..{second_end}) overlap"
    )]
    SegmentsOverlap {
        /// Index of the segment that starts first.
        first: usize,
        /// Its first row.
        first_start: usize,
        /// One past its last row.
        first_end: usize,
        /// Index of the segment that starts inside it.
        second: usize,
        /// Its first row.
        second_start: usize,
        /// One past its last row.
        second_end: usize,
    },
    /// A segment (SGMV) or a row (BGMV) names an adapter slot that does not exist.
    #[error("{place} names adapter slot {slot}, but only {slots} slots exist")]
    SlotOutOfRange {
        /// `"segment 3"` or `"row 17"`.
        place: String,
        /// The slot index given.
        slot: usize,
        /// Number of slots.
        slots: usize,
    },
    /// A buffer (`x`, `y`, `v`, `indices`) has the wrong number of elements.
    #[error("buffer {buffer} has {found} elements, expected {expected}")]
    Length {
        /// Which buffer.
        buffer: &'static str,
        /// Elements expected from the batch and layer dimensions.
        expected: usize,
        /// Elements found.
        found: usize,
    },
    /// A plan was built for different slots than the ones given to the operation (a slot's rank
    /// differs, or there are fewer slots).
    #[error("plan was built for slot {slot} with rank {planned}, but the slots give rank {found}")]
    PlanMismatch {
        /// The slot that differs.
        slot: usize,
        /// Rank recorded in the plan.
        planned: usize,
        /// Rank in the slots given now (0 when the slot is missing).
        found: usize,
    },
    /// A tensor has the wrong shape.
    #[error("tensor {tensor} has shape {found:?}, expected {expected}")]
    TensorShape {
        /// Which tensor (`"x"`, `"y"`, `"A[2]"` ...).
        tensor: String,
        /// The expected shape, written out.
        expected: String,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A tensor's dtype differs from `x`'s, or is not one of f32, f16, bf16.
    #[error("tensor {tensor} has dtype {found}, expected {expected}")]
    TensorDtype {
        /// Which tensor.
        tensor: String,
        /// The dtype expected.
        expected: String,
        /// The dtype found.
        found: String,
    },
    /// A tensor does not live on the CPU (the tensor wrappers run the CPU operators).
    #[error("tensor {tensor} is on {device}; the SGMV tensor wrappers take CPU tensors")]
    NotCpu {
        /// Which tensor.
        tensor: String,
        /// Where it lives.
        device: String,
    },
    /// An error raised by candle while reading or building a tensor.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// A GPU entry point was called in a build without the `cuda` feature; rebuild with
    /// `--features cuda`.
    #[error("openledger-sgmv was built without the `cuda` feature")]
    NotCompiledWithCuda,
    /// The CUDA driver library could not be loaded.
    #[error("the CUDA driver library could not be loaded (looked for {})", searched.join(", "))]
    NoCudaDriver {
        /// The library names looked for, in order.
        searched: Vec<String>,
    },
    /// The driver loaded but the device could not be opened (no GPU, bad ordinal, driver error).
    #[error("CUDA device {ordinal} is not available: {message}")]
    NoDevice {
        /// The device ordinal asked for.
        ordinal: usize,
        /// What the driver said.
        message: String,
    },
    /// The kernels could not be compiled or NVRTC could not be loaded.
    #[error(transparent)]
    Kernel(#[from] openledger_kernels::KernelError),
    /// A compiled program lacks a kernel the backend launches.
    #[error("kernel {kernel} is not loaded")]
    KernelMissing {
        /// The kernel's entry point (`sgmv_shrink_bf16` …).
        kernel: String,
    },
    /// A CUDA driver call failed (allocation, copy, module load, launch).
    #[error("CUDA driver call {op} failed: {message}")]
    Driver {
        /// The call, and the kernel for a launch.
        op: String,
        /// The driver's error.
        message: String,
    },
    /// A kernel faulted (illegal address, assertion, timeout …): the context is unusable and
    /// every later call on it fails. Under `OPENLEDGER_CUDA_SYNC=1` `during` names the kernel;
    /// otherwise the call that found the fault, which may be later than the kernel.
    #[error("the CUDA context was lost during {during}: {message}")]
    ContextLost {
        /// The call or kernel during which the fault was seen.
        during: String,
        /// The driver's error.
        message: String,
    },
    /// A library call panicked; the panic was caught and turned into this error.
    #[error("{what} panicked: {message}")]
    Panicked {
        /// The operation that panicked.
        what: &'static str,
        /// The panic message.
        message: String,
    },
    /// A dimension, row, slot or offset does not fit the kernels' 32-bit / 64-bit indices.
    #[error("{what} = {value} is too large for the GPU kernels")]
    TooLarge {
        /// Which quantity.
        what: &'static str,
        /// Its value.
        value: usize,
    },
}

impl Classify for SgmvError {
    /// A shape, slot, segment or tensor the caller passed is an invalid argument; a missing
    /// GPU, driver or feature is unsupported here; a failed driver call or compilation is a
    /// failure of generation; a caught panic is internal.
    fn kind(&self) -> ErrorKind {
        match self {
            SgmvError::NotCompiledWithCuda
            | SgmvError::NoCudaDriver { .. }
            | SgmvError::NoDevice { .. } => ErrorKind::Unsupported,
            SgmvError::SlabFull { .. } => ErrorKind::Budget,
            SgmvError::Kernel(e) => e.kind(),
            SgmvError::KernelMissing { .. }
            | SgmvError::Driver { .. }
            | SgmvError::ContextLost { .. } => ErrorKind::Generation,
            SgmvError::Panicked { .. } => ErrorKind::Internal,
            _ => ErrorKind::InvalidArgument,
        }
    }
}
