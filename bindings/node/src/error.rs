//! Every Rust error crosses into JavaScript here, and only here.
//!
//! A thrown (or rejected) error is a plain `Error` whose `code` names its kind (one of
//! [`ErrorCode`]; file-system failures use Node's own `ENOENT` / `EACCES` / `EIO`), whose
//! `message` is the Rust error's, and whose `cause` is the next error of the Rust `source()`
//! chain (each `cause` carrying its own `cause`, down to the root).

use std::any::Any;
use std::io::ErrorKind;

use napi::bindgen_prelude::{Env, ToNapiValue, Unknown};
use napi::{JsError, Status};
use napi_derive::napi;
use openledger_chain::ChainError;
use openledger_lora::error::LoraError;
use openledger_lora::model::{ModelError, PagedError, ServedError};
use openledger_lora::pool::PoolError;
use openledger_lora::serve::{EngineError, RequestError};
use openledger_lora::sgmv::SgmvError;
use openledger_poa::error::PoaError;

/// The kind of an error, in its `code` property.
#[napi(string_enum)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// An argument has the wrong type, dtype, shape or value (napi's own argument checks use
    /// the same code).
    InvalidArg,
    /// A string is not a valid id (adapter ids refuse path traversal, absolute paths, ...).
    InvalidId,
    /// No item is registered under this id.
    UnknownId,
    /// An adapter's config or safetensors bytes are malformed, truncated or inconsistent.
    AdapterFormat,
    /// An adapter does not fit the base model it is validated against or attached to.
    BaseMismatch,
    /// An adapter does not fit the pool's byte budget.
    Budget,
    /// The pool refuses the call in its current state (duplicate id, not pinned, pinned, ...).
    PoolState,
    /// The object is in use by another call; retry later.
    Busy,
    /// A reward split is impossible (negative score refused, zero total weight, duplicate
    /// account, basis points that do not add up, overflow).
    Split,
    /// A feature-store file is not one, is truncated, or was written with another projection.
    FeatureStore,
    /// A Merkle tree, value, proof or dump is invalid.
    MerkleTree,
    /// A key or signature is invalid, or recovery failed.
    Signature,
    /// A contract, function or argument does not match the shipped ABIs, or data does not
    /// decode.
    Abi,
    /// A transaction could not run on the chain, or a call reverted.
    Transaction,
    /// A model folder cannot be loaded, or the model refused its input.
    Model,
    /// A generation request failed (empty prompt, token outside the vocabulary, unknown adapter,
    /// invalid sampling parameters, ...).
    Request,
    /// The engine cannot go on (its configuration, a failed step).
    Engine,
    /// Fine-tuning cannot go on: a non-finite loss or gradient, a tensor operation that
    /// failed, or its training log.
    Training,
    /// The object was closed; it accepts no more calls.
    Closed,
    /// A stage of the Payable-AI loop was called before the stage it needs, or again.
    OutOfOrder,
    /// A stage of the Payable-AI loop failed in training, the training log, influence scoring
    /// or its accounting (the message names the stage and the cause).
    Loop,
    /// A bug in the native code was caught before it could reach JavaScript.
    Panic,
    /// A file does not exist.
    ENOENT,
    /// A file cannot be accessed.
    EACCES,
    /// Another input/output failure.
    EIO,
}

impl AsRef<str> for ErrorCode {
    fn as_ref(&self) -> &str {
        match self {
            Self::InvalidArg => "InvalidArg",
            Self::InvalidId => "InvalidId",
            Self::UnknownId => "UnknownId",
            Self::AdapterFormat => "AdapterFormat",
            Self::BaseMismatch => "BaseMismatch",
            Self::Budget => "Budget",
            Self::PoolState => "PoolState",
            Self::Busy => "Busy",
            Self::Split => "Split",
            Self::FeatureStore => "FeatureStore",
            Self::MerkleTree => "MerkleTree",
            Self::Signature => "Signature",
            Self::Abi => "Abi",
            Self::Transaction => "Transaction",
            Self::Model => "Model",
            Self::Request => "Request",
            Self::Engine => "Engine",
            Self::Training => "Training",
            Self::Closed => "Closed",
            Self::OutOfOrder => "OutOfOrder",
            Self::Loop => "Loop",
            Self::Panic => "Panic",
            Self::ENOENT => "ENOENT",
            Self::EACCES => "EACCES",
            Self::EIO => "EIO",
        }
    }
}

/// An error as JavaScript receives it.
pub type Error = napi::Error<ErrorCode>;

/// Result of binding code.
pub type Result<T> = std::result::Result<T, Error>;

/// An error of kind `code` with `message`, whose `cause` chain is `source`'s `source()` chain.
pub fn error(
    code: ErrorCode,
    message: impl Into<String>,
    source: Option<&(dyn std::error::Error + 'static)>,
) -> Error {
    let mut e = Error::new(code, message.into());
    if let Some(s) = source {
        e.cause = Some(Box::new(chain(s)));
    }
    e
}

/// `e` and its sources as nested napi errors.
fn chain(e: &(dyn std::error::Error + 'static)) -> napi::Error {
    let mut out = napi::Error::new(Status::GenericFailure, e.to_string());
    if let Some(s) = e.source() {
        out.cause = Some(Box::new(chain(s)));
    }
    out
}

/// An `InvalidArg` error naming the argument.
pub fn invalid_arg(name: &str, reason: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::InvalidArg, format!("{name}: {reason}"))
}

/// A `Closed` error naming what is closed.
pub fn closed(what: &str) -> Error {
    Error::new(ErrorCode::Closed, format!("{what} is closed"))
}

/// A `Busy` error naming what is busy.
pub fn busy(what: &str) -> Error {
    Error::new(ErrorCode::Busy, format!("{what} is busy with another call"))
}

/// A `Panic` error from the payload of a caught panic.
pub fn panic_error(payload: Box<dyn Any + Send>) -> Error {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    Error::new(
        ErrorCode::Panic,
        format!("internal error (a bug, please report it): {what}"),
    )
}

/// Runs `f`, turning a panic into a `Panic` error.
pub fn guard<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(panic_error(p)))
}

/// `e` as the JavaScript error object it becomes, carried in a plain napi error so that a
/// promise rejected with it (from a task's `resolve`) keeps the `code` and the `cause` chain.
pub fn into_rejection(env: &Env, e: Error) -> napi::Error {
    let value: Unknown<'_> = JsError::from(e).into_unknown(*env);
    napi::Error::from(value)
}

/// Converts a Rust error of the crates into the JavaScript error of its kind.
pub trait ToJs {
    /// The error JavaScript receives.
    fn to_js(&self) -> Error;
}

/// `.js()` on results of the crates.
pub trait JsResult<T> {
    /// The result with its error converted by [`ToJs`].
    fn js(self) -> Result<T>;
}

impl<T, E: ToJs> JsResult<T> for std::result::Result<T, E> {
    fn js(self) -> Result<T> {
        self.map_err(|e| e.to_js())
    }
}

/// The code of an I/O failure of `kind`.
pub(crate) fn io_code(kind: ErrorKind) -> ErrorCode {
    match kind {
        ErrorKind::NotFound => ErrorCode::ENOENT,
        ErrorKind::PermissionDenied => ErrorCode::EACCES,
        _ => ErrorCode::EIO,
    }
}

/// `code` with the message and source chain of `e`.
fn with(code: ErrorCode, e: &(dyn std::error::Error + 'static)) -> Error {
    error(code, e.to_string(), e.source())
}

fn lora_code(e: &LoraError) -> ErrorCode {
    match e {
        LoraError::Io { source, .. } => io_code(source.kind()),
        LoraError::UntargetedModule { .. }
        | LoraError::TargetModuleAbsent { .. }
        | LoraError::UnsupportedTarget { .. }
        | LoraError::ShapeMismatch { .. } => ErrorCode::BaseMismatch,
        LoraError::InvalidArgument { .. } => ErrorCode::InvalidArg,
        _ => ErrorCode::AdapterFormat,
    }
}

impl ToJs for LoraError {
    fn to_js(&self) -> Error {
        with(lora_code(self), self)
    }
}

impl ToJs for PoolError {
    fn to_js(&self) -> Error {
        let code = match self {
            PoolError::InvalidId(_) | PoolError::PathEscapesRoot { .. } => ErrorCode::InvalidId,
            PoolError::UnknownId { .. } => ErrorCode::UnknownId,
            PoolError::HubRoot { path, .. } => match std::fs::metadata(path) {
                Err(io) => io_code(io.kind()),
                Ok(_) => ErrorCode::EIO,
            },
            // The adapter id stays in the message; the kind follows the cause.
            PoolError::Load { source, .. } => lora_code(source),
            PoolError::AdapterLargerThanBudget { .. }
            | PoolError::BudgetExhaustedByPinned { .. } => ErrorCode::Budget,
            PoolError::Source { .. } => ErrorCode::AdapterFormat,
            PoolError::LoadPanicked { .. } => ErrorCode::Panic,
            _ => ErrorCode::PoolState,
        };
        with(code, self)
    }
}

impl ToJs for SgmvError {
    fn to_js(&self) -> Error {
        // Every SGMV error is a shape, slot or segment the caller passed.
        with(ErrorCode::InvalidArg, self)
    }
}

impl ToJs for PoaError {
    fn to_js(&self) -> Error {
        let code = match self {
            PoaError::Io { source, .. } => io_code(source.kind()),
            PoaError::NegativeWeight { .. }
            | PoaError::ZeroTotalWeight { .. }
            | PoaError::DuplicateAccount(_)
            | PoaError::BasisPoints { .. }
            | PoaError::Overflow { .. } => ErrorCode::Split,
            PoaError::BadHeader { .. }
            | PoaError::Truncated { .. }
            | PoaError::ProjectionMismatch { .. } => ErrorCode::FeatureStore,
            _ => ErrorCode::InvalidArg,
        };
        with(code, self)
    }
}

impl ToJs for ChainError {
    fn to_js(&self) -> Error {
        let code = match self {
            ChainError::Signature(_) => ErrorCode::Signature,
            ChainError::Evm(_) | ChainError::TransactionFailed { .. } => ErrorCode::Transaction,
            ChainError::Artifact { .. }
            | ChainError::Decode(_)
            | ChainError::AmountOverflow { .. } => ErrorCode::Abi,
            _ => ErrorCode::MerkleTree,
        };
        with(code, self)
    }
}

impl ToJs for ModelError {
    fn to_js(&self) -> Error {
        let code = match self {
            ModelError::Io { source, .. } => io_code(source.kind()),
            ModelError::Weights(LoraError::Io { source, .. }) => io_code(source.kind()),
            ModelError::IncompatibleAdapter { .. } => ErrorCode::BaseMismatch,
            _ => ErrorCode::Model,
        };
        with(code, self)
    }
}

impl ToJs for PagedError {
    fn to_js(&self) -> Error {
        match self {
            PagedError::Model(e) => e.to_js(),
            PagedError::Pool { source, .. } => source.to_js(),
            _ => with(ErrorCode::Model, self),
        }
    }
}

impl ToJs for ServedError {
    fn to_js(&self) -> Error {
        match self {
            ServedError::Model(e) => e.to_js(),
            ServedError::Request(e) => e.to_js(),
            ServedError::Engine(e) => e.to_js(),
            ServedError::Thread(e) => error(ErrorCode::Engine, "cannot start its thread", Some(e)),
            ServedError::Closed => closed("the engine"),
            ServedError::Panicked { message } => Error::new(
                ErrorCode::Panic,
                format!("internal error (a bug, please report it): {message}"),
            ),
        }
    }
}

impl ToJs for EngineError {
    fn to_js(&self) -> Error {
        with(ErrorCode::Engine, self)
    }
}

impl ToJs for RequestError {
    fn to_js(&self) -> Error {
        let code = match self {
            RequestError::UnknownAdapter { .. } => ErrorCode::UnknownId,
            RequestError::Model { .. } => ErrorCode::Model,
            _ => ErrorCode::Request,
        };
        with(code, self)
    }
}

/// Lets a task's output carry a JavaScript value or the error it rejects with.
pub fn settle<T: ToNapiValue>(env: &Env, out: Result<T>) -> napi::Result<T> {
    out.map_err(|e| into_rejection(env, e))
}
