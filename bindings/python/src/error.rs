//! Every Rust error crosses into Python here, and only here.
//!
//! `OpenLedgerError` is the base class; each error kind a caller can act on has one subclass.
//! File-system failures become Python's own `FileNotFoundError`, `PermissionError` or `OSError`
//! so that `except FileNotFoundError` works as it does for any Python library.

use std::io::ErrorKind;
use std::path::Path;

use openledger_chain::ChainError;
use openledger_lora::error::LoraError;
use openledger_lora::model::{ModelError, ServedError};
use openledger_lora::pool::PoolError;
use openledger_lora::serve::{RequestError, SampleError};
use openledger_lora::sgmv::SgmvError;
use openledger_poa::error::PoaError;
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyPermissionError};
use pyo3::prelude::*;
use pyo3::{PyErr, create_exception};

create_exception!(
    openledger,
    OpenLedgerError,
    pyo3::exceptions::PyException,
    "Base class of every error raised by openledger."
);
create_exception!(
    openledger,
    InvalidArgumentError,
    OpenLedgerError,
    "An argument has the wrong type, dtype, shape or value."
);
create_exception!(
    openledger,
    InvalidIdError,
    OpenLedgerError,
    "A string is not a valid id (adapter ids refuse path traversal, absolute paths, ...)."
);
create_exception!(
    openledger,
    UnknownIdError,
    OpenLedgerError,
    "No item is registered under this id."
);
create_exception!(
    openledger,
    AdapterFormatError,
    OpenLedgerError,
    "An adapter's config or safetensors bytes are malformed, truncated or inconsistent."
);
create_exception!(
    openledger,
    BaseMismatchError,
    OpenLedgerError,
    "An adapter does not fit the base model it is validated against."
);
create_exception!(
    openledger,
    BudgetError,
    OpenLedgerError,
    "An adapter does not fit the pool's byte budget."
);
create_exception!(
    openledger,
    PoolStateError,
    OpenLedgerError,
    "The pool refuses the call in its current state (duplicate id, not pinned, pinned, ...)."
);
create_exception!(
    openledger,
    BusyError,
    OpenLedgerError,
    "The object is in use by another call (a writer extending its store, ...); retry later."
);
create_exception!(
    openledger,
    SplitError,
    OpenLedgerError,
    "A reward split is impossible (refused negative score, zero total weight, duplicate account,\nbasis points that do not add up, overflow)."
);
create_exception!(
    openledger,
    FeatureStoreError,
    OpenLedgerError,
    "A feature-store file is not one, is truncated, or was written with another projection."
);
create_exception!(
    openledger,
    MerkleTreeError,
    OpenLedgerError,
    "A Merkle tree, value, proof or dump is invalid."
);
create_exception!(
    openledger,
    ModelFormatError,
    OpenLedgerError,
    "A model folder's config or weights are malformed, missing or of an unsupported architecture."
);
create_exception!(
    openledger,
    EngineClosedError,
    OpenLedgerError,
    "The engine was closed: it takes no more requests and its running requests ended."
);
create_exception!(
    openledger,
    GenerationError,
    OpenLedgerError,
    "A request failed while it ran (the model's forward pass failed, its logits were not finite)."
);
create_exception!(
    openledger,
    SignatureError,
    OpenLedgerError,
    "A key or signature is invalid, or recovery failed."
);

create_exception!(
    openledger,
    AbiError,
    OpenLedgerError,
    "A contract, function, argument or return data does not match the contract's ABI."
);
create_exception!(
    openledger,
    TransactionError,
    OpenLedgerError,
    "The EVM refused a transaction, or a call reverted (its `revert` attribute holds the reason)."
);
create_exception!(
    openledger,
    PayableAiError,
    OpenLedgerError,
    "The Payable-AI loop stopped: attribution, provenance, the training log, serving or the\naccounting refused (the message names the stage and the culprit)."
);
create_exception!(
    openledger,
    StageOrderError,
    PayableAiError,
    "A Payable-AI stage was called before the stage it needs."
);

/// Registers the exception classes on the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("OpenLedgerError", py.get_type::<OpenLedgerError>())?;
    m.add(
        "InvalidArgumentError",
        py.get_type::<InvalidArgumentError>(),
    )?;
    m.add("InvalidIdError", py.get_type::<InvalidIdError>())?;
    m.add("UnknownIdError", py.get_type::<UnknownIdError>())?;
    m.add("AdapterFormatError", py.get_type::<AdapterFormatError>())?;
    m.add("BaseMismatchError", py.get_type::<BaseMismatchError>())?;
    m.add("BudgetError", py.get_type::<BudgetError>())?;
    m.add("PoolStateError", py.get_type::<PoolStateError>())?;
    m.add("BusyError", py.get_type::<BusyError>())?;
    m.add("SplitError", py.get_type::<SplitError>())?;
    m.add("FeatureStoreError", py.get_type::<FeatureStoreError>())?;
    m.add("MerkleTreeError", py.get_type::<MerkleTreeError>())?;
    m.add("SignatureError", py.get_type::<SignatureError>())?;
    m.add("ModelFormatError", py.get_type::<ModelFormatError>())?;
    m.add("EngineClosedError", py.get_type::<EngineClosedError>())?;
    m.add("GenerationError", py.get_type::<GenerationError>())?;
    m.add("AbiError", py.get_type::<AbiError>())?;
    m.add("TransactionError", py.get_type::<TransactionError>())?;
    m.add("PayableAiError", py.get_type::<PayableAiError>())?;
    m.add("StageOrderError", py.get_type::<StageOrderError>())?;
    Ok(())
}

/// A Rust error that knows its Python exception.
pub(crate) struct Error(PyErr);

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        e.0
    }
}

/// Result of binding code.
pub(crate) type Result<T> = std::result::Result<T, Error>;

/// A `BusyError` naming what is busy.
pub(crate) fn busy(what: &str) -> Error {
    Error(BusyError::new_err(format!(
        "{what} is busy with another call"
    )))
}

/// An `EngineClosedError`.
pub(crate) fn engine_closed() -> Error {
    Error(EngineClosedError::new_err(
        "the engine is closed (close() was called or the engine was dropped)",
    ))
}

/// An `InvalidArgumentError` naming the argument.
pub(crate) fn invalid_arg(name: &str, reason: impl std::fmt::Display) -> Error {
    Error(InvalidArgumentError::new_err(format!("{name}: {reason}")))
}

/// Python's own exception for an I/O failure of `kind` at `path`.
pub(crate) fn io_err(path: &Path, kind: ErrorKind, message: String) -> PyErr {
    let args = (0i32, message, path.display().to_string());
    match kind {
        ErrorKind::NotFound => PyFileNotFoundError::new_err(args),
        ErrorKind::PermissionDenied => PyPermissionError::new_err(args),
        _ => PyOSError::new_err(args),
    }
}

fn lora(e: &LoraError) -> PyErr {
    lora_with(e, e.to_string())
}

/// The exception of `e`'s kind, carrying `msg`.
fn lora_with(e: &LoraError, msg: String) -> PyErr {
    match e {
        LoraError::Io { path, source } => io_err(path, source.kind(), msg),
        LoraError::UntargetedModule { .. }
        | LoraError::TargetModuleAbsent { .. }
        | LoraError::UnsupportedTarget { .. }
        | LoraError::ShapeMismatch { .. } => BaseMismatchError::new_err(msg),
        LoraError::InvalidArgument { .. } => InvalidArgumentError::new_err(msg),
        _ => AdapterFormatError::new_err(msg),
    }
}

impl From<LoraError> for Error {
    fn from(e: LoraError) -> Self {
        Error(lora(&e))
    }
}

impl From<PoolError> for Error {
    fn from(e: PoolError) -> Self {
        let msg = e.to_string();
        Error(match &e {
            PoolError::InvalidId(_) | PoolError::PathEscapesRoot { .. } => {
                InvalidIdError::new_err(msg)
            }
            PoolError::UnknownId { .. } => UnknownIdError::new_err(msg),
            PoolError::HubRoot { path, .. } => {
                let kind = match std::fs::metadata(path) {
                    Err(io) => io.kind(),
                    Ok(_) => ErrorKind::Other,
                };
                io_err(path, kind, msg)
            }
            PoolError::Load { source, .. } => match source.as_ref() {
                // Keep the adapter id in the message; the class follows the cause.
                LoraError::Io { path, source: io } => io_err(path, io.kind(), msg),
                other => lora_with(other, msg),
            },
            PoolError::AdapterLargerThanBudget { .. }
            | PoolError::BudgetExhaustedByPinned { .. } => BudgetError::new_err(msg),
            PoolError::Source { .. } => AdapterFormatError::new_err(msg),
            _ => PoolStateError::new_err(msg),
        })
    }
}

impl From<SgmvError> for Error {
    fn from(e: SgmvError) -> Self {
        // Every SGMV error is a shape, slot or segment the caller passed.
        Error(InvalidArgumentError::new_err(e.to_string()))
    }
}

impl From<PoaError> for Error {
    fn from(e: PoaError) -> Self {
        let msg = e.to_string();
        Error(match &e {
            PoaError::Io { path, source, .. } => io_err(path, source.kind(), msg),
            PoaError::NegativeWeight { .. }
            | PoaError::ZeroTotalWeight { .. }
            | PoaError::DuplicateAccount(_)
            | PoaError::BasisPoints { .. }
            | PoaError::Overflow { .. } => SplitError::new_err(msg),
            PoaError::BadHeader { .. }
            | PoaError::Truncated { .. }
            | PoaError::ProjectionMismatch { .. } => FeatureStoreError::new_err(msg),
            _ => InvalidArgumentError::new_err(msg),
        })
    }
}

impl From<ChainError> for Error {
    fn from(e: ChainError) -> Self {
        let msg = e.to_string();
        Error(match &e {
            ChainError::Signature(_) => SignatureError::new_err(msg),
            _ => MerkleTreeError::new_err(msg),
        })
    }
}

impl From<ModelError> for Error {
    fn from(e: ModelError) -> Self {
        let msg = e.to_string();
        Error(match &e {
            ModelError::Io { path, source } => io_err(path, source.kind(), msg),
            ModelError::IncompatibleAdapter { .. } => BaseMismatchError::new_err(msg),
            ModelError::Weights(inner) => lora_with(inner, msg),
            ModelError::TokenOutOfVocab { .. }
            | ModelError::EmptySequence { .. }
            | ModelError::UnknownAdapter { .. } => InvalidArgumentError::new_err(msg),
            ModelError::Sgmv(_) | ModelError::Backend(_) => GenerationError::new_err(msg),
            _ => ModelFormatError::new_err(msg),
        })
    }
}

impl From<RequestError> for Error {
    fn from(e: RequestError) -> Self {
        let msg = e.to_string();
        Error(match &e {
            RequestError::EmptyPrompt
            | RequestError::PromptTooLong { .. }
            | RequestError::TokenOutOfVocab { .. }
            | RequestError::NeedsDetokenizer
            | RequestError::Sampling(SampleError::InvalidParams { .. }) => {
                InvalidArgumentError::new_err(msg)
            }
            RequestError::UnknownAdapter { .. } => UnknownIdError::new_err(msg),
            RequestError::AdapterFailed { .. } => AdapterFormatError::new_err(msg),
            RequestError::AdapterRejected { .. } => BaseMismatchError::new_err(msg),
            _ => GenerationError::new_err(msg),
        })
    }
}

impl From<ServedError> for Error {
    fn from(e: ServedError) -> Self {
        match e {
            ServedError::Model(e) => (*e).into(),
            ServedError::Request(e) => e.into(),
            ServedError::Engine(e) => invalid_arg("engine", e),
            ServedError::Thread(e) => {
                invalid_arg("engine", format!("cannot start its thread: {e}"))
            }
            ServedError::Closed => engine_closed(),
            // The engine takes no more requests; the message says why.
            e @ ServedError::Panicked { .. } => Error(EngineClosedError::new_err(e.to_string())),
        }
    }
}

impl From<PyErr> for Error {
    fn from(e: PyErr) -> Self {
        Error(e)
    }
}
