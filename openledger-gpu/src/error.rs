//! The typed error of the GPU model and its runtimes: every variant names the culprit (library,
//! device, kernel, tensor, sequence) and what was expected.

use openledger_core::error::{Classify, ErrorKind};
use openledger_lora::model::ModelError;
use openledger_lora::serve::KvError;
use thiserror::Error;

/// Why a GPU runtime or the GPU model refused or failed a call.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GpuError {
    /// The build has no CUDA runtime (it was built without the `cuda` feature).
    #[error("this build has no CUDA runtime: rebuild with the `cuda` feature")]
    NotCompiledWithCuda,
    /// A CUDA library (the driver, NVRTC, cuBLAS) cannot be loaded.
    #[error("the CUDA library {library} cannot be loaded (looked for {searched:?})")]
    MissingLibrary {
        /// Which library (`"cuda"`, `"nvrtc"`, `"cublas"`).
        library: &'static str,
        /// The file names looked for.
        searched: Vec<String>,
    },
    /// No device of that ordinal, or it cannot be opened.
    #[error("CUDA device {ordinal} cannot be opened: {message}")]
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// The driver's message.
        message: String,
    },
    /// A driver or cuBLAS call failed (the context is still usable).
    #[error("{op} failed: {message}")]
    Driver {
        /// The call.
        op: String,
        /// The library's message.
        message: String,
    },
    /// A kernel faulted: the context is lost and every later call fails. Run with
    /// `OPENLEDGER_CUDA_SYNC=1` to have the failing kernel named.
    #[error("the CUDA context is lost (found during {during}): {message}")]
    ContextLost {
        /// The call that found it.
        during: String,
        /// The driver's message.
        message: String,
    },
    /// The kernels could not be compiled or found.
    #[error(transparent)]
    Kernel(#[from] openledger_kernels::KernelError),
    /// The host emulation could not be built or loaded.
    #[error("the host emulation of the device is not available: {0}")]
    Emulation(String),
    /// A launch was refused before it ran (unknown kernel, a grid or block out of range).
    #[error("kernel {kernel}: {reason}")]
    Launch {
        /// The kernel's name.
        kernel: String,
        /// Why.
        reason: String,
    },
    /// Device memory is exhausted (or a budget of it).
    #[error("out of device memory: {what} needs {bytes} bytes")]
    OutOfMemory {
        /// What was being allocated.
        what: String,
        /// Bytes asked for.
        bytes: usize,
    },
    /// A buffer is too small for what a call writes or reads.
    #[error("buffer {what}: {needed} bytes needed, it holds {len}")]
    BufferTooSmall {
        /// Which buffer.
        what: &'static str,
        /// Bytes the call needs.
        needed: usize,
        /// Bytes the buffer holds.
        len: usize,
    },
    /// The model or checkpoint uses something the GPU model does not do yet.
    #[error("not supported on the GPU yet: {what}")]
    Unsupported {
        /// What.
        what: String,
    },
    /// A checkpoint's tensor is missing, of the wrong shape or type, or not finite.
    #[error("weight {key}: {reason}")]
    Weight {
        /// The tensor's name.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The model rejected its configuration or a batch (bad token, empty sequence).
    #[error(transparent)]
    Model(Box<ModelError>),
    /// The KV cache refused a call (unknown sequence, positions not appended).
    #[error(transparent)]
    Kv(Box<KvError>),
    /// A batch does not fit the model or the cache (named argument, reason).
    #[error("{name}: {reason}")]
    InvalidArgument {
        /// The argument.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// A row of logits could not be sampled (a NaN or +∞ logit, nothing left to sample,
    /// invalid parameters).
    #[error("sampling row {row}: {reason}")]
    Sample {
        /// The row (in the order of the sequences that need logits).
        row: usize,
        /// Why.
        reason: String,
    },
    /// A panic inside a library call, caught.
    #[error("{what} panicked: {message}")]
    Panicked {
        /// The call.
        what: &'static str,
        /// The panic's message.
        message: String,
    },
}

impl Classify for GpuError {
    fn kind(&self) -> ErrorKind {
        match self {
            GpuError::NotCompiledWithCuda
            | GpuError::MissingLibrary { .. }
            | GpuError::NoDevice { .. }
            | GpuError::Emulation(_)
            | GpuError::Unsupported { .. } => ErrorKind::Unsupported,
            GpuError::Driver { .. } | GpuError::ContextLost { .. } | GpuError::Launch { .. } => {
                ErrorKind::Generation
            }
            GpuError::Kernel(_) | GpuError::Panicked { .. } => ErrorKind::Internal,
            GpuError::Sample { .. } => ErrorKind::Generation,
            GpuError::OutOfMemory { .. } => ErrorKind::Budget,
            GpuError::Weight { .. } => ErrorKind::ModelFormat,
            GpuError::Io { .. } => ErrorKind::Io,
            GpuError::Model(e) => e.kind(),
            GpuError::Kv(e) => e.kind(),
            GpuError::BufferTooSmall { .. } | GpuError::InvalidArgument { .. } => {
                ErrorKind::InvalidArgument
            }
        }
    }

    fn io_source(&self) -> Option<(&std::path::Path, &std::io::Error)> {
        match self {
            GpuError::Io { path, source } => Some((path, source)),
            GpuError::Model(e) => e.io_source(),
            _ => None,
        }
    }
}

impl From<ModelError> for GpuError {
    fn from(e: ModelError) -> Self {
        GpuError::Model(Box::new(e))
    }
}

impl From<KvError> for GpuError {
    fn from(e: KvError) -> Self {
        GpuError::Kv(Box::new(e))
    }
}
