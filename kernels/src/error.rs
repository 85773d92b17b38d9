//! The typed error of the GPU kernels: a missing library, device or feature is an error value,
//! never a panic.

use openledger_core::error::{Classify, ErrorKind};
use thiserror::Error;

/// Why a kernel could not be compiled or run.
#[derive(Debug, Error)]
pub enum KernelError {
    /// The crate was built without the `cuda` feature; rebuild with `--features cuda`.
    #[error("openledger-kernels was built without the `cuda` feature")]
    NotCompiledWithCuda,
    /// The CUDA driver library (`libcuda`) could not be loaded.
    #[error("the CUDA driver library (libcuda) is not installed or not on the library path")]
    NoCudaDriver,
    /// The NVRTC library (`libnvrtc`) could not be loaded.
    #[error("the NVRTC library (libnvrtc) is not installed or not on the library path")]
    NoNvrtc,
    /// The driver loaded but the device could not be opened (no GPU, bad ordinal, driver error).
    #[error("CUDA device {ordinal} is not available: {message}")]
    NoDevice {
        /// The device ordinal asked for.
        ordinal: usize,
        /// What the driver said.
        message: String,
    },
    /// The architecture string is not `compute_XY` or `sm_XY`.
    #[error("unknown GPU architecture {arch:?}: expected compute_XY or sm_XY")]
    BadArch {
        /// The string given.
        arch: String,
    },
    /// NVRTC refused a kernel source; `log` is its compile log.
    #[error("NVRTC failed to compile {kernel}: {log}")]
    Nvrtc {
        /// The kernel source (`"shrink.cu"`, `"expand.cu"`).
        kernel: String,
        /// NVRTC's program log.
        log: String,
    },
    /// An NVRTC call other than compilation failed (program creation, PTX retrieval).
    #[error("NVRTC call failed for {kernel}: {message}")]
    NvrtcCall {
        /// The kernel source.
        kernel: String,
        /// The error reported.
        message: String,
    },
    /// A CUDA driver call failed (allocation, copy, module load, launch).
    #[error("CUDA driver call {op} failed: {message}")]
    Driver {
        /// The operation.
        op: &'static str,
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
    /// A segment ends before it starts or past the last row.
    #[error("segment {segment} covers rows {start}..{end}, outside the batch of {rows} rows")]
    SegmentOutOfRange {
        /// Index of the segment.
        segment: usize,
        /// First row.
        start: usize,
        /// One past the last row.
        end: usize,
        /// Rows in the batch.
        rows: usize,
    },
    /// Two segments share rows.
    #[error("segments {first} and {second} overlap")]
    SegmentsOverlap {
        /// Index of the segment that starts first.
        first: usize,
        /// Index of the segment starting inside it.
        second: usize,
    },
    /// A segment or row names a slot that does not exist.
    #[error("{place} names adapter slot {slot}, but only {slots} slots exist")]
    SlotOutOfRange {
        /// `"segment 3"` or `"row 17"`.
        place: String,
        /// The slot given.
        slot: usize,
        /// Number of slots.
        slots: usize,
    },
    /// A buffer or matrix has the wrong number of elements.
    #[error("{buffer} has {found} elements, expected {expected}")]
    Length {
        /// Which buffer (`"x"`, `"y"`, `"v"`, `"A[3]"` ...).
        buffer: String,
        /// Elements expected.
        expected: usize,
        /// Elements found.
        found: usize,
    },
    /// A dimension, rank or offset does not fit the kernels' 32-bit / 64-bit index types.
    #[error("{what} = {value} is too large for the kernels")]
    TooLarge {
        /// Which quantity.
        what: &'static str,
        /// Its value.
        value: usize,
    },
}

impl Classify for KernelError {
    fn kind(&self) -> ErrorKind {
        match self {
            KernelError::NotCompiledWithCuda
            | KernelError::NoCudaDriver
            | KernelError::NoNvrtc
            | KernelError::NoDevice { .. }
            | KernelError::BadArch { .. } => ErrorKind::Unsupported,
            KernelError::Nvrtc { .. }
            | KernelError::NvrtcCall { .. }
            | KernelError::Driver { .. } => ErrorKind::Generation,
            KernelError::Panicked { .. } => ErrorKind::Internal,
            KernelError::SegmentOutOfRange { .. }
            | KernelError::SegmentsOverlap { .. }
            | KernelError::SlotOutOfRange { .. }
            | KernelError::Length { .. }
            | KernelError::TooLarge { .. } => ErrorKind::InvalidArgument,
        }
    }
}
