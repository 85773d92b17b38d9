//! Errors of the chain crate: bad Merkle input, bad dumps and values, contract artifacts, EVM
//! execution and signatures. Each variant names the culprit.

use openledger_core::error::{Classify, ErrorKind};
use openledger_core::merkle::MerkleError;
use thiserror::Error;

/// Everything the chain crate can refuse.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum ChainError {
    /// A Merkle core operation refused its input (empty tree, index that is not a leaf, bad multiproof).
    #[error(transparent)]
    Merkle(#[from] MerkleError),
    /// A leaf encoding entry that is not a Solidity type.
    #[error("invalid leaf type {ty:?}: {reason}")]
    InvalidLeafType {
        /// The type string.
        ty: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A value with another number of fields than the leaf encoding.
    #[error("value {value_index} has {found} fields, the leaf encoding has {expected}")]
    ValueArity {
        /// Position of the value in the tree's value list.
        value_index: usize,
        /// Fields in the leaf encoding.
        expected: usize,
        /// Fields in the value.
        found: usize,
    },
    /// A field that cannot be read as (or is not of) its declared type.
    #[error("value {value_index}, field {field}: expected {expected}: {reason}")]
    InvalidValue {
        /// Position of the value in the tree's value list.
        value_index: usize,
        /// Field position within the value.
        field: usize,
        /// The declared Solidity type.
        expected: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A dump whose `format` is not `standard-v1`.
    #[error("unknown tree dump format {0:?} (expected \"standard-v1\")")]
    UnknownFormat(String),
    /// A dump that is not valid JSON of the expected shape.
    #[error("malformed tree dump: {0}")]
    MalformedDump(String),
    /// A dump whose tree or values do not agree.
    #[error("inconsistent tree dump: {0}")]
    InconsistentDump(String),
    /// A value index past the end of the tree's values.
    #[error("value index {index} out of bounds: the tree holds {len} values")]
    IndexOutOfBounds {
        /// The index asked for.
        index: usize,
        /// Number of values.
        len: usize,
    },
    /// A value that is not in the tree.
    #[error("leaf is not in the tree")]
    LeafNotInTree,
    /// A contract artifact that cannot be read.
    #[error("artifact {name}: {reason}")]
    Artifact {
        /// Contract name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The EVM refused the transaction before executing it (bad nonce, not enough balance for gas...).
    #[error("transaction rejected by the EVM: {0}")]
    Evm(String),
    /// A transaction that reverted or halted where success was required.
    #[error("transaction failed ({status}), revert data {data}")]
    TransactionFailed {
        /// How it ended.
        status: String,
        /// Its revert data, hex.
        data: String,
    },
    /// Return data, logs or revert data that do not decode as the expected type.
    #[error("cannot decode: {0}")]
    Decode(String),
    /// Reward amounts whose sum does not fit in 256 bits.
    #[error("reward amounts overflow 256 bits at claim {index}")]
    AmountOverflow {
        /// The claim whose amount overflowed the running total.
        index: usize,
    },
    /// A contract function called with the wrong number of arguments.
    #[error("{function} takes {expected} arguments, {found} given")]
    ArgumentCount {
        /// The function (or constructor, event, error) and its contract.
        function: String,
        /// Parameters it declares.
        expected: usize,
        /// Arguments given.
        found: usize,
    },
    /// An argument that does not read as its parameter's Solidity type.
    #[error("{function}: argument {index} ({name:?}) is not a {ty}: {reason}")]
    Argument {
        /// The function (or constructor, event, error) and its contract.
        function: String,
        /// Position of the argument.
        index: usize,
        /// The parameter's name in the ABI.
        name: String,
        /// The parameter's Solidity type.
        ty: String,
        /// Why the value does not read as that type.
        reason: String,
    },
    /// A balance, block number or time that would pass its maximum.
    #[error("{what} overflows")]
    Overflow {
        /// What would overflow.
        what: String,
    },
    /// An ensemble payment's models and shares that the contract refuses: none, more than
    /// [`MAX_ENSEMBLE`](crate::receipt::MAX_ENSEMBLE), not one share per model, a zero share, a
    /// model named twice, a weight that gives no share.
    #[error("invalid ensemble: {reason}")]
    InvalidEnsemble {
        /// What is wrong with it.
        reason: String,
    },
    /// Attribution weights that name the same id twice.
    #[error("attribution weights name {id} twice")]
    DuplicateWeight {
        /// The repeated id.
        id: alloy_primitives::B256,
    },
    /// A value that does not read as its Solidity type.
    #[error("not a {ty}: {reason}")]
    AbiValue {
        /// The Solidity type.
        ty: String,
        /// Why the value does not read as that type.
        reason: String,
    },
    /// A signature that cannot be made or recovered.
    #[error("signature error: {0}")]
    Signature(String),
    /// A snapshot id the chain does not hold (never taken, or already used).
    #[error("no snapshot {0}")]
    UnknownSnapshot(alloy_primitives::U256),
    /// Something this chain does not offer (dev controls on a real network).
    #[error("unsupported on this chain: {0}")]
    Unsupported(String),
    /// A transaction from an account whose key the chain does not hold.
    #[error("no signer for {0}")]
    NoSigner(alloy_primitives::Address),
    /// The JSON-RPC node could not be reached or answered with an error.
    #[error("rpc {method}: {reason}")]
    Rpc {
        /// The JSON-RPC method.
        method: String,
        /// The transport error or the node's error message.
        reason: String,
    },
    /// A deployment file that cannot be read, or that does not match the chain.
    #[error("deployment: {0}")]
    Deployment(String),
    /// A sent transaction was not mined in time (it may still be).
    #[error("transaction {hash} (nonce {nonce}) not mined after {seconds} s")]
    NotMined {
        /// Its hash.
        hash: alloy_primitives::B256,
        /// Its nonce.
        nonce: u64,
        /// How long it was waited for.
        seconds: u64,
    },
}

impl Classify for ChainError {
    fn kind(&self) -> ErrorKind {
        match self {
            ChainError::Merkle(_)
            | ChainError::InvalidLeafType { .. }
            | ChainError::ValueArity { .. }
            | ChainError::InvalidValue { .. }
            | ChainError::UnknownFormat(_)
            | ChainError::MalformedDump(_)
            | ChainError::InconsistentDump(_)
            | ChainError::IndexOutOfBounds { .. }
            | ChainError::LeafNotInTree => ErrorKind::Merkle,
            ChainError::Artifact { .. }
            | ChainError::Decode(_)
            | ChainError::ArgumentCount { .. }
            | ChainError::Argument { .. }
            | ChainError::AbiValue { .. } => ErrorKind::Abi,
            ChainError::AmountOverflow { .. } => ErrorKind::Split,
            ChainError::DuplicateWeight { .. }
            | ChainError::Overflow { .. }
            | ChainError::InvalidEnsemble { .. } => ErrorKind::InvalidArgument,
            ChainError::Evm(_) | ChainError::TransactionFailed { .. } => ErrorKind::Transaction,
            ChainError::Signature(_) | ChainError::NoSigner(_) => ErrorKind::Signature,
            ChainError::UnknownSnapshot(_) => ErrorKind::UnknownId,
            ChainError::Unsupported(_) => ErrorKind::Unsupported,
            ChainError::Rpc { .. } => ErrorKind::Io,
            ChainError::NotMined { .. } => ErrorKind::Transaction,
            ChainError::Deployment(_) => ErrorKind::InvalidArgument,
        }
    }
}
