//! The error vocabulary shared by every crate of the SDK.
//!
//! Each crate has its own rich error enum; the kinds here are the ones several crates raise
//! (a bad id, an unsupported dtype, truncated bytes, a non-finite number) so that bindings can
//! map them to one exception class each.

use thiserror::Error;

/// Errors every layer of the SDK can raise.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum CoreError {
    /// A string that should be a 32-byte hex id is not one.
    #[error("invalid id {input:?}: {reason}")]
    InvalidId {
        /// The offending input (first 80 characters).
        input: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A dtype outside f32 / f16 / bf16.
    #[error("unsupported dtype {0} (expected F32, F16 or BF16)")]
    UnsupportedDType(String),
    /// Fewer bytes than the format promises.
    #[error("{what} is truncated: expected {expected} bytes, found {found}")]
    Truncated {
        /// What was being read.
        what: String,
        /// Bytes required.
        expected: usize,
        /// Bytes present.
        found: usize,
    },
    /// A NaN or infinity where only finite numbers are allowed.
    #[error("{what} holds a non-finite value ({value}) at index {index}")]
    NonFinite {
        /// What holds it (tensor or vector name).
        what: String,
        /// Flat index of the first offending element.
        index: usize,
        /// The value itself.
        value: f32,
    },
}
