//! The typed error of kernel compilation: a missing library or feature is an error value, never
//! a panic.

use openledger_core::error::{Classify, ErrorKind};
use thiserror::Error;

/// Why the kernels could not be compiled.
#[derive(Debug, Error)]
pub enum KernelError {
    /// The crate was built without the `cuda` feature; rebuild with `--features cuda`.
    #[error("openledger-kernels was built without the `cuda` feature")]
    NotCompiledWithCuda,
    /// The NVRTC library could not be loaded.
    #[error("the NVRTC library could not be loaded (looked for {})", searched.join(", "))]
    NoNvrtc {
        /// The library names looked for, in order.
        searched: Vec<String>,
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
    /// An NVRTC call other than compilation failed (program creation, cubin or PTX retrieval),
    /// or the compiled program lacks an entry point.
    #[error("NVRTC call failed for {kernel}: {message}")]
    NvrtcCall {
        /// The kernel source.
        kernel: String,
        /// The error reported.
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
}

impl Classify for KernelError {
    fn kind(&self) -> ErrorKind {
        match self {
            KernelError::NotCompiledWithCuda
            | KernelError::NoNvrtc { .. }
            | KernelError::BadArch { .. } => ErrorKind::Unsupported,
            KernelError::Nvrtc { .. } | KernelError::NvrtcCall { .. } => ErrorKind::Generation,
            KernelError::Panicked { .. } => ErrorKind::Internal,
        }
    }
}
