//! Every Rust error crosses into JavaScript here, and only here.
//!
//! A thrown (or rejected) error is a plain `Error` whose `code` names its kind (one of
//! [`ErrorCode`]; file-system failures use Node's own `ENOENT` / `EACCES` / `EIO`), whose
//! `message` is the Rust error's, and whose `cause` is the next error of the Rust `source()`
//! chain (each `cause` carrying its own `cause`, down to the root).

use std::any::Any;

use napi::bindgen_prelude::{Env, ToNapiValue, Unknown};
use napi::{JsError, Status};
use napi_derive::napi;
use openledger_core::error::{Classify, ErrorKind};

/// The kind of an error, in its `code` property: one per kind of failure the SDK classifies
/// its errors by (file-system failures use Node's own `ENOENT` / `EACCES` / `EIO`).
#[napi(string_enum)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// An argument has the wrong type, dtype, shape or value, or a request or configuration
    /// cannot run as given (napi's own argument checks use the same code).
    InvalidArg,
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
    /// An adapter does not fit the pool's byte budget.
    Budget,
    /// The object refuses the call in its current state (a duplicate id, an adapter pinned or
    /// not pinned, a transition its state machine does not allow).
    State,
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
    /// A generation failed while it ran (the forward pass failed, logits were not finite).
    Generation,
    /// Fine-tuning cannot go on: a non-finite loss or gradient, a failed tensor operation.
    Training,
    /// The caller holds no right to do this (no approved training grant, not the owner).
    AccessDenied,
    /// Data is malformed or does not match what it commits to (a tampered training log, a
    /// record whose hash differs from its id).
    Integrity,
    /// The object was closed; it accepts no more calls.
    Closed,
    /// A stage of the Payable-AI loop was called before the stage it needs, or again.
    OutOfOrder,
    /// The Payable-AI loop's own bookkeeping refused (an amount that does not add up).
    Loop,
    /// A feature this build, backend or network does not offer.
    Unsupported,
    /// A bug in the native code was caught before it could reach JavaScript.
    Internal,
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
            Self::ModelFormat => "ModelFormat",
            Self::Budget => "Budget",
            Self::State => "State",
            Self::Busy => "Busy",
            Self::Split => "Split",
            Self::FeatureStore => "FeatureStore",
            Self::MerkleTree => "MerkleTree",
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
            Self::Internal => "Internal",
            Self::ENOENT => "ENOENT",
            Self::EACCES => "EACCES",
            Self::EIO => "EIO",
        }
    }
}

/// The code of an error kind: the one place kinds become codes.
pub fn code(kind: ErrorKind) -> ErrorCode {
    match kind {
        ErrorKind::InvalidArgument => ErrorCode::InvalidArg,
        ErrorKind::InvalidId => ErrorCode::InvalidId,
        ErrorKind::UnknownId => ErrorCode::UnknownId,
        ErrorKind::AdapterFormat => ErrorCode::AdapterFormat,
        ErrorKind::BaseMismatch => ErrorCode::BaseMismatch,
        ErrorKind::ModelFormat => ErrorCode::ModelFormat,
        ErrorKind::Budget => ErrorCode::Budget,
        ErrorKind::State => ErrorCode::State,
        ErrorKind::Busy => ErrorCode::Busy,
        ErrorKind::Split => ErrorCode::Split,
        ErrorKind::FeatureStore => ErrorCode::FeatureStore,
        ErrorKind::Merkle => ErrorCode::MerkleTree,
        ErrorKind::Signature => ErrorCode::Signature,
        ErrorKind::Abi => ErrorCode::Abi,
        ErrorKind::Transaction => ErrorCode::Transaction,
        ErrorKind::Generation => ErrorCode::Generation,
        ErrorKind::Training => ErrorCode::Training,
        ErrorKind::AccessDenied => ErrorCode::AccessDenied,
        ErrorKind::Integrity => ErrorCode::Integrity,
        ErrorKind::Closed => ErrorCode::Closed,
        ErrorKind::OutOfOrder => ErrorCode::OutOfOrder,
        ErrorKind::Loop => ErrorCode::Loop,
        ErrorKind::Unsupported => ErrorCode::Unsupported,
        ErrorKind::Internal => ErrorCode::Internal,
        ErrorKind::NotFound => ErrorCode::ENOENT,
        ErrorKind::PermissionDenied => ErrorCode::EACCES,
        ErrorKind::Io => ErrorCode::EIO,
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

/// The error of an I/O failure on `path` outside the crates (a file the binding reads itself).
pub fn io(path: &str, e: &std::io::Error) -> Error {
    error(code(ErrorKind::of_io(e)), format!("{path}: {e}"), Some(e))
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

/// An `Internal` error from the payload of a caught panic.
pub fn panic_error(payload: Box<dyn Any + Send>) -> Error {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    Error::new(
        ErrorCode::Internal,
        format!("internal error (a bug, please report it): {what}"),
    )
}

/// Runs `f`, turning a panic into an `Internal` error.
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

/// Every error of the crates becomes the error of its kind, with its message and `cause` chain.
impl<E: Classify + 'static> ToJs for E {
    fn to_js(&self) -> Error {
        error(code(self.kind()), self.to_string(), self.source())
    }
}

/// Lets a task's output carry a JavaScript value or the error it rejects with.
pub fn settle<T: ToNapiValue>(env: &Env, out: Result<T>) -> napi::Result<T> {
    out.map_err(|e| into_rejection(env, e))
}
