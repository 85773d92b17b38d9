//! The error type of Proof of Attribution: every variant names its culprit.

use std::path::PathBuf;

use openledger_core::error::{Classify, ErrorKind};
use openledger_core::{Address, CoreError};
use thiserror::Error;

/// Errors raised by reward splits, influence stores, scoring, RAG attribution and records.
///
/// Failing operations leave whatever was already stored (stores, ledgers, indexes) as it was.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PoaError {
    /// A NaN or infinity in a gradient, embedding, score or weight.
    #[error("{what} holds a non-finite value ({value}) at index {index}")]
    NonFinite {
        /// What holds it (e.g. "gradient of checkpoint 2 of example 0x…").
        what: String,
        /// Flat index of the first offending element.
        index: usize,
        /// The value itself.
        value: f64,
    },
    /// A vector or matrix whose length does not match what the receiver was built for.
    #[error("{what} has dimension {found}, expected {expected}")]
    DimensionMismatch {
        /// What was being checked.
        what: String,
        /// The required dimension.
        expected: usize,
        /// The dimension supplied.
        found: usize,
    },
    /// An operation that needs at least one element got none (empty store, index, datanet, split).
    #[error("{what} is empty")]
    Empty {
        /// What was empty.
        what: String,
    },
    /// A negative weight where the split policy rejects them.
    #[error("negative weight {value} for {account} (the split policy rejects negative weights)")]
    NegativeWeight {
        /// The party whose weight is negative.
        account: Address,
        /// The weight.
        value: f64,
    },
    /// All weights are zero (after clipping) and the policy names no fallback party.
    #[error("total weight of {what} is zero and the policy names no fallback party")]
    ZeroTotalWeight {
        /// What was being split.
        what: String,
    },
    /// The same account appears twice in one split.
    #[error("account {0} appears more than once in one split")]
    DuplicateAccount(Address),
    /// Basis points that do not add up as required.
    #[error("basis points of {what} sum to {found}, expected {expected}")]
    BasisPoints {
        /// What the basis points describe.
        what: String,
        /// The required sum (or upper bound).
        expected: u32,
        /// The sum supplied.
        found: u32,
    },
    /// An integer total that does not fit 256 bits.
    #[error("{what} overflows 256 bits")]
    Overflow {
        /// What overflowed.
        what: String,
    },
    /// An I/O failure on a store file.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A store file that does not start with the feature-store magic or has a bad header.
    #[error("{path} is not a feature store: {reason}")]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong with its header.
        reason: String,
    },
    /// A store file shorter than its header says.
    #[error("{path} is truncated: expected at least {expected} bytes, found {found}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes its header promises.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// A store whose checksums do not match its bytes (edited or corrupted).
    #[error("{path}: the checksum of {what} does not match")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// What does not match.
        what: String,
    },
    /// A store written under another projection (seed, kind, dimensions or learning rates).
    #[error("{path} was written with {found}, expected {expected}")]
    ProjectionMismatch {
        /// The file.
        path: PathBuf,
        /// The projection the caller asked for.
        expected: String,
        /// The projection recorded in the file.
        found: String,
    },
    /// A matrix that should be symmetric positive definite is not (e.g. λ too small).
    #[error("{what} is not positive definite (pivot {pivot} at row {row})")]
    NotPositiveDefinite {
        /// Which matrix.
        what: String,
        /// The row where the factorisation failed.
        row: usize,
        /// The offending pivot.
        pivot: f64,
    },
    /// A configuration value out of range.
    #[error("invalid {what}: {reason}")]
    InvalidConfig {
        /// The parameter.
        what: String,
        /// Why it is rejected.
        reason: String,
    },
    /// Checkpoints given empty or out of order.
    #[error("checkpoints must be non-empty and strictly increasing, found steps {steps:?}")]
    CheckpointOrder {
        /// The steps given.
        steps: Vec<usize>,
    },
    /// A checkpoint step the training log does not cover.
    #[error("the training log has no step {step} (it ends at {last:?})")]
    StepNotLogged {
        /// The missing step.
        step: u64,
        /// The last logged step.
        last: Option<u64>,
    },
    /// An error from the shared vocabulary (ids, dtypes).
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl Classify for PoaError {
    fn kind(&self) -> ErrorKind {
        match self {
            PoaError::NonFinite { .. }
            | PoaError::DimensionMismatch { .. }
            | PoaError::Empty { .. }
            | PoaError::NotPositiveDefinite { .. }
            | PoaError::InvalidConfig { .. }
            | PoaError::CheckpointOrder { .. }
            | PoaError::StepNotLogged { .. } => ErrorKind::InvalidArgument,
            PoaError::NegativeWeight { .. }
            | PoaError::ZeroTotalWeight { .. }
            | PoaError::DuplicateAccount(_)
            | PoaError::BasisPoints { .. }
            | PoaError::Overflow { .. } => ErrorKind::Split,
            PoaError::Io { source, .. } => ErrorKind::of_io(source),
            PoaError::Checksum { .. } => ErrorKind::Integrity,
            PoaError::BadHeader { .. }
            | PoaError::Truncated { .. }
            | PoaError::ProjectionMismatch { .. } => ErrorKind::FeatureStore,
            PoaError::Core(e) => e.kind(),
        }
    }

    fn io_source(&self) -> Option<(&std::path::Path, &std::io::Error)> {
        match self {
            PoaError::Io { path, source } => Some((path, source)),
            _ => None,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = PoaError> = std::result::Result<T, E>;

/// Returns [`PoaError::NonFinite`] for the first NaN or infinity of `values`.
pub(crate) fn check_finite_f32(what: impl FnOnce() -> String, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(PoaError::NonFinite {
            what: what(),
            index,
            value: f64::from(values[index]),
        }),
    }
}

/// Returns [`PoaError::NonFinite`] for the first NaN or infinity of `values`.
pub(crate) fn check_finite_f64(what: impl FnOnce() -> String, values: &[f64]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(PoaError::NonFinite {
            what: what(),
            index,
            value: values[index],
        }),
    }
}

/// Returns [`PoaError::DimensionMismatch`] when `found != expected`.
pub(crate) fn check_dim(
    what: impl FnOnce() -> String,
    expected: usize,
    found: usize,
) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(PoaError::DimensionMismatch {
            what: what(),
            expected,
            found,
        })
    }
}
