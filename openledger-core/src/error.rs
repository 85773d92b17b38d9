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

/// What kind of failure an error is: the one classification of every error of the SDK. Each
/// crate's error answers [`Classify::kind`]; each binding maps a kind to its own error class in
/// one place (Python exception classes, Node `code`s, Kotlin/Swift variants). The enum is
/// exhaustive on purpose: a new kind is a compile error in every binding until it is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// An argument has the wrong type, dtype, shape or value (NaN included), or a request or
    /// configuration cannot run as given.
    InvalidArgument,
    /// A string is not a valid id (adapter ids refuse path traversal, absolute paths, ...).
    InvalidId,
    /// No item is registered under this id.
    UnknownId,
    /// An adapter's config or safetensors bytes are malformed, truncated or inconsistent.
    AdapterFormat,
    /// An adapter does not fit the base model it is validated against or attached to.
    BaseMismatch,
    /// A model folder's config, weights or tokenizer are malformed, missing or unsupported.
    ModelFormat,
    /// Something does not fit a byte budget (an adapter in the pool).
    Budget,
    /// The object refuses the call in its current state (a duplicate id, an item pinned or not
    /// pinned, a transition its state machine does not allow).
    State,
    /// The object is in use by another call; retry later.
    Busy,
    /// A reward split is impossible (a refused negative score, zero total weight, a duplicate
    /// account, basis points that do not add up, an amount past 256 bits).
    Split,
    /// A feature-store file is not one, is truncated, or was written with another configuration.
    FeatureStore,
    /// A Merkle tree, value, proof or dump is invalid.
    Merkle,
    /// A key or signature is invalid, or recovery failed.
    Signature,
    /// A contract, function, argument or return data does not match the contract's ABI.
    Abi,
    /// The chain refused a transaction, or a call reverted.
    Transaction,
    /// A generation failed while it ran (the forward pass failed, logits were not finite).
    Generation,
    /// Fine-tuning cannot go on (a non-finite loss, a failed tensor operation).
    Training,
    /// The caller holds no right to do this (no approved grant, not the owner).
    AccessDenied,
    /// Data is malformed or does not match what it commits to (a tampered or truncated training
    /// log, a record whose hash differs from its id).
    Integrity,
    /// The object was closed (or its worker stopped); it takes no more calls.
    Closed,
    /// A stage of a multi-stage run was called before the stage it needs, or again.
    OutOfOrder,
    /// The Payable-AI loop's own bookkeeping refused (an amount that does not add up, a
    /// settlement that differs from the contract's).
    Loop,
    /// A feature this build, backend or network does not offer.
    Unsupported,
    /// A file does not exist.
    NotFound,
    /// A file cannot be accessed.
    PermissionDenied,
    /// Another input/output failure.
    Io,
    /// A bug caught before it could cross into the caller (a panic).
    Internal,
}

impl ErrorKind {
    /// The kind of an I/O failure.
    pub fn of_io(e: &std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::NotFound => Self::NotFound,
            std::io::ErrorKind::PermissionDenied => Self::PermissionDenied,
            _ => Self::Io,
        }
    }

    /// Whether this is one of the I/O kinds ([`NotFound`](Self::NotFound),
    /// [`PermissionDenied`](Self::PermissionDenied), [`Io`](Self::Io)).
    pub fn is_io(self) -> bool {
        matches!(self, Self::NotFound | Self::PermissionDenied | Self::Io)
    }

    /// The kind's name, as the bindings spell it (`"InvalidArgument"`, `"NotFound"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::InvalidArgument => "InvalidArgument",
            Self::InvalidId => "InvalidId",
            Self::UnknownId => "UnknownId",
            Self::AdapterFormat => "AdapterFormat",
            Self::BaseMismatch => "BaseMismatch",
            Self::ModelFormat => "ModelFormat",
            Self::Budget => "Budget",
            Self::State => "State",
            Self::Busy => "Busy",
            Self::Split => "Split",
            Self::FeatureStore => "FeatureStore",
            Self::Merkle => "Merkle",
            Self::Signature => "Signature",
            Self::Abi => "Abi",
            Self::Transaction => "Transaction",
            Self::Generation => "Generation",
            Self::Training => "Training",
            Self::AccessDenied => "AccessDenied",
            Self::Integrity => "Integrity",
            Self::Closed => "Closed",
            Self::OutOfOrder => "OutOfOrder",
            Self::Loop => "Loop",
            Self::Unsupported => "Unsupported",
            Self::NotFound => "NotFound",
            Self::PermissionDenied => "PermissionDenied",
            Self::Io => "Io",
            Self::Internal => "Internal",
        }
    }
}

/// An error that says what kind of failure it is (see [`ErrorKind`]).
///
/// ```
/// use openledger_core::error::{Classify, CoreError, ErrorKind};
///
/// let e = CoreError::UnsupportedDType("F64".into());
/// assert_eq!(e.kind(), ErrorKind::InvalidArgument);
/// ```
pub trait Classify: std::error::Error {
    /// The kind of failure.
    fn kind(&self) -> ErrorKind;

    /// For the I/O kinds: the file and the operating-system error behind the failure (bindings
    /// give both to their own I/O error classes: Python's `errno` and `filename`).
    fn io_source(&self) -> Option<(&std::path::Path, &std::io::Error)> {
        None
    }
}

impl Classify for CoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            CoreError::InvalidId { .. } => ErrorKind::InvalidId,
            CoreError::UnsupportedDType(_)
            | CoreError::Truncated { .. }
            | CoreError::NonFinite { .. } => ErrorKind::InvalidArgument,
        }
    }
}
