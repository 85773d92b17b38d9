//! The errors that cross into Kotlin and Swift: one enum per area, each variant carrying the
//! Rust error's message (`SplitException.DuplicateAccount`, `MerkleException.InvalidValue`, ...
//! in Kotlin; `SplitError.DuplicateAccount` in Swift). Bad input is always one of these, never a
//! panic.

use openledger_chain::ChainError as RustChainError;
use openledger_core::merkle::MerkleError as CoreMerkleError;
use openledger_lora::error::LoraError;
use openledger_lora::model::ModelError as RustModelError;
use openledger_poa::PoaError;

/// Why a reward split was refused.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum SplitError {
    /// An argument could not be read (bad address hex, an amount that is not a decimal integer).
    #[error("{0}")]
    InvalidArgument(String),
    /// A score is NaN or infinite.
    #[error("{0}")]
    NonFiniteScore(String),
    /// A score is negative and the policy rejects negative scores.
    #[error("{0}")]
    NegativeScore(String),
    /// Every weight is zero and no fallback account was given.
    #[error("{0}")]
    ZeroTotalWeight(String),
    /// The same account appears twice.
    #[error("{0}")]
    DuplicateAccount(String),
    /// Basis points that do not add up (to 10,000 for a split, to at most 10,000 for a fee).
    #[error("{0}")]
    BasisPoints(String),
    /// Nothing to split between.
    #[error("{0}")]
    Empty(String),
    /// Any other refusal of the split rules.
    #[error("{0}")]
    Other(String),
}

impl From<PoaError> for SplitError {
    fn from(e: PoaError) -> Self {
        let m = e.to_string();
        match e {
            PoaError::NonFinite { .. } => Self::NonFiniteScore(m),
            PoaError::NegativeWeight { .. } => Self::NegativeScore(m),
            PoaError::ZeroTotalWeight { .. } => Self::ZeroTotalWeight(m),
            PoaError::DuplicateAccount(_) => Self::DuplicateAccount(m),
            PoaError::BasisPoints { .. } => Self::BasisPoints(m),
            PoaError::Empty { .. } => Self::Empty(m),
            _ => Self::Other(m),
        }
    }
}

/// Why a Merkle tree, proof or multiproof was refused.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum MerkleError {
    /// An argument could not be read (a hash that is not 32 bytes of hex, an index too large).
    #[error("{0}")]
    InvalidArgument(String),
    /// A leaf encoding entry is not a Solidity type.
    #[error("{0}")]
    InvalidLeafType(String),
    /// A value does not match the leaf encoding (wrong number of fields, unreadable field).
    #[error("{0}")]
    InvalidValue(String),
    /// A value or leaf index past the end of the tree.
    #[error("{0}")]
    IndexOutOfBounds(String),
    /// A tree needs at least one leaf.
    #[error("{0}")]
    EmptyTree(String),
    /// A multiproof whose parts do not fit together, or a duplicated index.
    #[error("{0}")]
    InvalidMultiProof(String),
    /// A `standard-v1` dump that cannot be read or does not describe a valid tree.
    #[error("{0}")]
    InvalidDump(String),
}

impl From<CoreMerkleError> for MerkleError {
    fn from(e: CoreMerkleError) -> Self {
        let m = e.to_string();
        match e {
            CoreMerkleError::EmptyTree => Self::EmptyTree(m),
            CoreMerkleError::NotALeaf { .. } | CoreMerkleError::LeafOutOfRange { .. } => {
                Self::IndexOutOfBounds(m)
            }
            _ => Self::InvalidMultiProof(m),
        }
    }
}

impl From<RustChainError> for MerkleError {
    fn from(e: RustChainError) -> Self {
        let m = e.to_string();
        match e {
            RustChainError::Merkle(inner) => inner.into(),
            RustChainError::InvalidLeafType { .. } => Self::InvalidLeafType(m),
            RustChainError::ValueArity { .. } | RustChainError::InvalidValue { .. } => {
                Self::InvalidValue(m)
            }
            RustChainError::IndexOutOfBounds { .. } => Self::IndexOutOfBounds(m),
            RustChainError::UnknownFormat(_)
            | RustChainError::MalformedDump(_)
            | RustChainError::InconsistentDump(_) => Self::InvalidDump(m),
            _ => Self::InvalidValue(m),
        }
    }
}

/// Why a receipt, signature or contract call was refused.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum ChainError {
    /// An argument could not be read (bad hex, wrong length, an amount that is not a decimal
    /// integer).
    #[error("{0}")]
    InvalidArgument(String),
    /// A secret key or a signature that is not valid on secp256k1.
    #[error("{0}")]
    Signature(String),
}

impl From<RustChainError> for ChainError {
    fn from(e: RustChainError) -> Self {
        match e {
            RustChainError::Signature(m) => Self::Signature(m),
            other => Self::InvalidArgument(other.to_string()),
        }
    }
}

/// Why a PEFT adapter could not be loaded or does not fit a base model.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum AdapterError {
    /// A file is missing or unreadable.
    #[error("{0}")]
    Io(String),
    /// `adapter_config.json` or the safetensors file is not a valid PEFT LoRA adapter.
    #[error("{0}")]
    Format(String),
    /// The adapter does not fit the base model (missing target module, wrong shape).
    #[error("{0}")]
    BaseMismatch(String),
}

impl From<LoraError> for AdapterError {
    fn from(e: LoraError) -> Self {
        let m = e.to_string();
        match e {
            LoraError::Io { .. } => Self::Io(m),
            LoraError::UntargetedModule { .. }
            | LoraError::TargetModuleAbsent { .. }
            | LoraError::UnsupportedTarget { .. }
            | LoraError::ShapeMismatch { .. } => Self::BaseMismatch(m),
            _ => Self::Format(m),
        }
    }
}

/// Why an on-device model could not be loaded or run.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum ModelError {
    /// A file is missing or unreadable.
    #[error("{0}")]
    Io(String),
    /// The model folder is not a supported model (config, weights, architecture).
    #[error("{0}")]
    InvalidModel(String),
    /// The input cannot run: an empty prompt, a token id outside the vocabulary.
    #[error("{0}")]
    InvalidInput(String),
    /// No adapter is attached under this name.
    #[error("{0}")]
    UnknownAdapter(String),
    /// An adapter with this name is already attached.
    #[error("{0}")]
    DuplicateAdapter(String),
    /// The adapter does not fit this model.
    #[error("{0}")]
    IncompatibleAdapter(String),
    /// The model has no tokenizer, or the tokenizer failed.
    #[error("{0}")]
    Tokenizer(String),
    /// The tensor backend failed.
    #[error("{0}")]
    Backend(String),
}

impl From<RustModelError> for ModelError {
    fn from(e: RustModelError) -> Self {
        let m = e.to_string();
        match e {
            RustModelError::Io { .. } | RustModelError::Weights(LoraError::Io { .. }) => {
                Self::Io(m)
            }
            RustModelError::TokenOutOfVocab { .. } | RustModelError::EmptySequence { .. } => {
                Self::InvalidInput(m)
            }
            RustModelError::UnknownAdapter { .. } => Self::UnknownAdapter(m),
            RustModelError::IncompatibleAdapter { .. } => Self::IncompatibleAdapter(m),
            RustModelError::Tokenizer { .. } => Self::Tokenizer(m),
            RustModelError::Backend(_) | RustModelError::Sgmv(_) => Self::Backend(m),
            _ => Self::InvalidModel(m),
        }
    }
}
