//! The one error that crosses into Kotlin and Swift: a variant per kind of failure
//! ([`ErrorKind`], the classification every binding shares), each carrying the Rust error's
//! message (`OpenLedgerException.Split`, `OpenLedgerException.Merkle`, ... in Kotlin;
//! `OpenLedgerError.Split` in Swift). Bad input is always one of these, never a panic.

use openledger_chain::ChainError;
use openledger_core::datanet::DatanetError;
use openledger_core::error::{Classify, CoreError, ErrorKind};
use openledger_core::merkle::MerkleError;
use openledger_core::trainlog::TrainLogError;
use openledger_lora::error::LoraError;
use openledger_lora::model::ModelError;
use openledger_poa::PoaError;

/// Why a call was refused.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum OpenLedgerError {
    /// An argument has the wrong type, shape or value (bad hex, an amount that is not a decimal
    /// integer, a NaN score, an empty prompt, a token outside the vocabulary).
    #[error("{0}")]
    InvalidArgument(String),
    /// A string is not a valid id.
    #[error("{0}")]
    InvalidId(String),
    /// No item is registered under this id (an adapter name, a training-log step).
    #[error("{0}")]
    UnknownId(String),
    /// An adapter's config or safetensors bytes are malformed, truncated or inconsistent.
    #[error("{0}")]
    AdapterFormat(String),
    /// An adapter does not fit the base model (a missing target module, a wrong shape).
    #[error("{0}")]
    BaseMismatch(String),
    /// A model folder's config, weights or tokenizer are malformed, missing or unsupported.
    #[error("{0}")]
    ModelFormat(String),
    /// Something does not fit a byte budget.
    #[error("{0}")]
    Budget(String),
    /// The object refuses the call in its current state (a duplicate adapter name, ...).
    #[error("{0}")]
    State(String),
    /// The object is in use by another call; retry later.
    #[error("{0}")]
    Busy(String),
    /// A reward split is impossible (a refused negative score, zero total weight, a duplicate
    /// account, basis points that do not add up, nothing to split between).
    #[error("{0}")]
    Split(String),
    /// A feature-store file is not one.
    #[error("{0}")]
    FeatureStore(String),
    /// A Merkle tree, value, proof, multiproof or dump is invalid.
    #[error("{0}")]
    Merkle(String),
    /// A secret key or a signature that is not valid on secp256k1.
    #[error("{0}")]
    Signature(String),
    /// A contract, function or argument does not match the shipped ABIs.
    #[error("{0}")]
    Abi(String),
    /// The chain refused a transaction.
    #[error("{0}")]
    Transaction(String),
    /// A generation failed while it ran.
    #[error("{0}")]
    Generation(String),
    /// Fine-tuning cannot go on.
    #[error("{0}")]
    Training(String),
    /// The caller holds no right to do this.
    #[error("{0}")]
    AccessDenied(String),
    /// Data is malformed or does not match what it commits to (a tampered training log, a
    /// record whose hash differs from its id).
    #[error("{0}")]
    Integrity(String),
    /// The object was closed.
    #[error("{0}")]
    Closed(String),
    /// A stage was called before the stage it needs.
    #[error("{0}")]
    OutOfOrder(String),
    /// The Payable-AI loop's own bookkeeping refused.
    #[error("{0}")]
    Loop(String),
    /// A feature this build does not offer.
    #[error("{0}")]
    Unsupported(String),
    /// A file does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A file cannot be accessed.
    #[error("{0}")]
    PermissionDenied(String),
    /// Another input/output failure.
    #[error("{0}")]
    Io(String),
    /// A bug in the native code, caught before it could cross (please report it).
    #[error("{0}")]
    Internal(String),
}

impl OpenLedgerError {
    /// The variant of `kind` with message `m`: the one place kinds become variants.
    pub(crate) fn of_kind(kind: ErrorKind, m: String) -> Self {
        match kind {
            ErrorKind::InvalidArgument => Self::InvalidArgument(m),
            ErrorKind::InvalidId => Self::InvalidId(m),
            ErrorKind::UnknownId => Self::UnknownId(m),
            ErrorKind::AdapterFormat => Self::AdapterFormat(m),
            ErrorKind::BaseMismatch => Self::BaseMismatch(m),
            ErrorKind::ModelFormat => Self::ModelFormat(m),
            ErrorKind::Budget => Self::Budget(m),
            ErrorKind::State => Self::State(m),
            ErrorKind::Busy => Self::Busy(m),
            ErrorKind::Split => Self::Split(m),
            ErrorKind::FeatureStore => Self::FeatureStore(m),
            ErrorKind::Merkle => Self::Merkle(m),
            ErrorKind::Signature => Self::Signature(m),
            ErrorKind::Abi => Self::Abi(m),
            ErrorKind::Transaction => Self::Transaction(m),
            ErrorKind::Generation => Self::Generation(m),
            ErrorKind::Training => Self::Training(m),
            ErrorKind::AccessDenied => Self::AccessDenied(m),
            ErrorKind::Integrity => Self::Integrity(m),
            ErrorKind::Closed => Self::Closed(m),
            ErrorKind::OutOfOrder => Self::OutOfOrder(m),
            ErrorKind::Loop => Self::Loop(m),
            ErrorKind::Unsupported => Self::Unsupported(m),
            ErrorKind::NotFound => Self::NotFound(m),
            ErrorKind::PermissionDenied => Self::PermissionDenied(m),
            ErrorKind::Io => Self::Io(m),
            ErrorKind::Internal => Self::Internal(m),
        }
    }
}

/// `From` for every error type of the crates the library calls.
macro_rules! classified {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for OpenLedgerError {
            fn from(e: $t) -> Self {
                Self::of_kind(e.kind(), e.to_string())
            }
        }
    )*};
}

classified!(
    CoreError,
    DatanetError,
    MerkleError,
    TrainLogError,
    LoraError,
    ModelError,
    PoaError,
    ChainError,
);
