//! Every Rust error crosses into Python here, and only here: each crate's error says its kind
//! ([`Classify::kind`], one classification for every binding) and [`to_py`] maps each kind to
//! its exception class in one `match`.
//!
//! `OpenLedgerError` is the base class; each error kind a caller can act on has one subclass.
//! File-system failures become Python's own `FileNotFoundError`, `PermissionError` or `OSError`
//! (with `errno` and `filename`) so that `except FileNotFoundError` works as it does for any
//! Python library.

use openledger::grounded::GroundedError;
use openledger::payable::LoopError;
use openledger_chain::ChainError;
use openledger_core::datanet::DatanetError;
use openledger_core::error::{Classify, CoreError, ErrorKind};
use openledger_core::grant::GrantError;
use openledger_core::merkle::MerkleError;
use openledger_core::trainlog::TrainLogError;
use openledger_lora::error::LoraError;
use openledger_lora::model::{ModelError, PagedError, ServedError};
use openledger_lora::pool::PoolError;
use openledger_lora::serve::{EngineError, RequestError};
use openledger_lora::sgmv::SgmvError;
use openledger_poa::error::PoaError;
use openledger_train::TrainError;
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
    StateError,
    OpenLedgerError,
    "The object refuses the call in its current state (a duplicate id, an adapter pinned or not\npinned, a transition its state machine does not allow)."
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
    TrainingError,
    OpenLedgerError,
    "Fine-tuning cannot go on (a non-finite loss or gradient, a failed tensor operation)."
);
create_exception!(
    openledger,
    AccessDeniedError,
    OpenLedgerError,
    "The caller holds no right to do this (no approved training grant, not the owner)."
);
create_exception!(
    openledger,
    IntegrityError,
    OpenLedgerError,
    "Data is malformed or does not match what it commits to (a tampered or truncated training log,\na record whose hash differs from its id)."
);
create_exception!(
    openledger,
    UnsupportedError,
    OpenLedgerError,
    "A feature this build, backend or network does not offer."
);
create_exception!(
    openledger,
    InternalError,
    OpenLedgerError,
    "A bug in the native code, caught before it could reach Python (please report it)."
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
    "The chain refused a transaction, or a call reverted (its `revert` attribute holds the reason)."
);
create_exception!(
    openledger,
    PayableAiError,
    OpenLedgerError,
    "The Payable-AI loop's own bookkeeping refused (an amount that does not add up, a settlement\nthat differs from the contract's); other failures of the loop raise the class of their kind."
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
    m.add("StateError", py.get_type::<StateError>())?;
    m.add("BusyError", py.get_type::<BusyError>())?;
    m.add("SplitError", py.get_type::<SplitError>())?;
    m.add("FeatureStoreError", py.get_type::<FeatureStoreError>())?;
    m.add("MerkleTreeError", py.get_type::<MerkleTreeError>())?;
    m.add("SignatureError", py.get_type::<SignatureError>())?;
    m.add("ModelFormatError", py.get_type::<ModelFormatError>())?;
    m.add("EngineClosedError", py.get_type::<EngineClosedError>())?;
    m.add("GenerationError", py.get_type::<GenerationError>())?;
    m.add("TrainingError", py.get_type::<TrainingError>())?;
    m.add("AccessDeniedError", py.get_type::<AccessDeniedError>())?;
    m.add("IntegrityError", py.get_type::<IntegrityError>())?;
    m.add("UnsupportedError", py.get_type::<UnsupportedError>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
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

/// The Python exception of `e`'s kind, carrying its message: the one place kinds become
/// exception classes.
pub(crate) fn to_py(e: &dyn Classify) -> PyErr {
    let msg = e.to_string();
    match e.kind() {
        ErrorKind::InvalidArgument => InvalidArgumentError::new_err(msg),
        ErrorKind::InvalidId => InvalidIdError::new_err(msg),
        ErrorKind::UnknownId => UnknownIdError::new_err(msg),
        ErrorKind::AdapterFormat => AdapterFormatError::new_err(msg),
        ErrorKind::BaseMismatch => BaseMismatchError::new_err(msg),
        ErrorKind::ModelFormat => ModelFormatError::new_err(msg),
        ErrorKind::Budget => BudgetError::new_err(msg),
        ErrorKind::State => StateError::new_err(msg),
        ErrorKind::Busy => BusyError::new_err(msg),
        ErrorKind::Split => SplitError::new_err(msg),
        ErrorKind::FeatureStore => FeatureStoreError::new_err(msg),
        ErrorKind::Merkle => MerkleTreeError::new_err(msg),
        ErrorKind::Signature => SignatureError::new_err(msg),
        ErrorKind::Abi => AbiError::new_err(msg),
        ErrorKind::Transaction => TransactionError::new_err(msg),
        ErrorKind::Generation => GenerationError::new_err(msg),
        ErrorKind::Training => TrainingError::new_err(msg),
        ErrorKind::AccessDenied => AccessDeniedError::new_err(msg),
        ErrorKind::Integrity => IntegrityError::new_err(msg),
        ErrorKind::Closed => EngineClosedError::new_err(msg),
        ErrorKind::OutOfOrder => StageOrderError::new_err(msg),
        ErrorKind::Loop => PayableAiError::new_err(msg),
        ErrorKind::Unsupported => UnsupportedError::new_err(msg),
        ErrorKind::Internal => InternalError::new_err(msg),
        kind @ (ErrorKind::NotFound | ErrorKind::PermissionDenied | ErrorKind::Io) => {
            os_error(kind, e.io_source(), msg)
        }
    }
}

/// Python's own exception for an I/O failure: `errno` from the operating system (or the
/// conventional one of the kind when the failure came from a check of ours), the message and
/// the file.
fn os_error(
    kind: ErrorKind,
    source: Option<(&std::path::Path, &std::io::Error)>,
    msg: String,
) -> PyErr {
    const ENOENT: i32 = 2;
    const EIO: i32 = 5;
    const EACCES: i32 = 13;
    let errno = source
        .and_then(|(_, io)| io.raw_os_error())
        .unwrap_or(match kind {
            ErrorKind::NotFound => ENOENT,
            ErrorKind::PermissionDenied => EACCES,
            _ => EIO,
        });
    let filename = source.map(|(p, _)| p.display().to_string());
    let args = (errno, msg, filename);
    match kind {
        ErrorKind::NotFound => PyFileNotFoundError::new_err(args),
        ErrorKind::PermissionDenied => PyPermissionError::new_err(args),
        _ => PyOSError::new_err(args),
    }
}

/// Python's own exception for an I/O failure on `path` outside the crates (opening a file the
/// binding reads itself).
pub(crate) fn io(path: &std::path::Path, e: &std::io::Error) -> Error {
    let msg = format!("{}: {e}", path.display());
    Error(os_error(ErrorKind::of_io(e), Some((path, e)), msg))
}

/// `From` for every error type of the crates: each becomes the exception of its kind.
macro_rules! classified {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error(to_py(&e))
            }
        }
    )*};
}

classified!(
    CoreError,
    DatanetError,
    GrantError,
    MerkleError,
    TrainLogError,
    LoraError,
    PoolError,
    SgmvError,
    ModelError,
    PagedError,
    ServedError,
    EngineError,
    RequestError,
    TrainError,
    PoaError,
    ChainError,
    LoopError,
    GroundedError,
);

/// A `BusyError` naming what is busy.
pub(crate) fn busy(what: &str) -> Error {
    Error(BusyError::new_err(format!(
        "{what} is busy with another call"
    )))
}

/// An `InvalidArgumentError` naming the argument.
pub(crate) fn invalid_arg(name: &str, reason: impl std::fmt::Display) -> Error {
    Error(InvalidArgumentError::new_err(format!("{name}: {reason}")))
}

impl From<PyErr> for Error {
    fn from(e: PyErr) -> Self {
        Error(e)
    }
}
