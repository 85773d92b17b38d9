//! Errors raised while loading, validating, merging and combining PEFT LoRA adapters.
//!
//! Every variant names its culprit (file, tensor key, module, shape) so that a caller can tell
//! which part of which adapter is wrong without re-reading the files.
//!
//! ```
//! use openledger_lora::adapter::{LoadOptions, LoraAdapter};
//! use openledger_lora::error::LoraError;
//!
//! let err = LoraAdapter::from_bytes(b"{ not json", b"", &LoadOptions::default()).unwrap_err();
//! assert!(matches!(err, LoraError::InvalidConfig { .. }));
//! ```

use openledger_core::error::{Classify, ErrorKind};
use std::path::PathBuf;

use openledger_core::CoreError;
use thiserror::Error;

/// Everything that can go wrong with a LoRA adapter.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoraError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// `adapter_config.json` (or a base `config.json`) is not valid JSON of the expected shape.
    #[error("invalid config {file}: {reason}")]
    InvalidConfig {
        /// Which config file (`adapter_config.json`, `config.json`).
        file: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The config asks for a PEFT method other than LoRA.
    #[error("{file}: unsupported peft_type {found:?} (only \"LORA\" is supported)")]
    UnsupportedPeftType {
        /// Which config file.
        file: String,
        /// The `peft_type` it holds.
        found: String,
    },

    /// A config field holds a value PEFT itself rejects (r = 0, an unknown `bias` mode, ...).
    #[error("{file}: field `{field}` is invalid: {reason}")]
    InvalidField {
        /// Which config file.
        file: String,
        /// The field name (`r`, `rank_pattern.<key>`, `bias`, ...).
        field: String,
        /// Why it is rejected.
        reason: String,
    },

    /// A regular expression in the config (`target_modules`, `exclude_modules`, a pattern key)
    /// does not compile.
    #[error("{file}: `{field}` holds an invalid regular expression {pattern:?}: {reason}")]
    InvalidRegex {
        /// Which config file.
        file: String,
        /// The field holding it.
        field: String,
        /// The pattern itself.
        pattern: String,
        /// The regex engine's message.
        reason: String,
    },

    /// The safetensors file is shorter than its own header says.
    #[error("{file} is truncated: {what} needs {expected} bytes, the file has {found}")]
    Truncated {
        /// The safetensors file.
        file: String,
        /// What was being read (`header length`, `header`, `tensor data`).
        what: String,
        /// Bytes needed.
        expected: usize,
        /// Bytes present.
        found: usize,
    },

    /// The safetensors header is not valid (bad JSON, overlapping or out-of-range offsets, a
    /// shape whose size does not match its byte range, ...).
    #[error("{file}: bad safetensors header{}: {reason}", key.as_ref().map(|k| format!(" at tensor {k:?}")).unwrap_or_default())]
    BadHeader {
        /// The safetensors file.
        file: String,
        /// The tensor the problem is attached to, when there is one.
        key: Option<String>,
        /// What is wrong.
        reason: String,
    },

    /// A tensor is stored in a dtype other than F32, F16 or BF16.
    #[error("{file}: tensor {key:?} has unsupported dtype {dtype} (expected F32, F16 or BF16)")]
    UnsupportedDType {
        /// The safetensors file.
        file: String,
        /// The tensor key.
        key: String,
        /// The dtype named in the header.
        dtype: String,
    },

    /// A tensor holds NaN or infinity and [`LoadOptions::allow_non_finite`] is off.
    ///
    /// [`LoadOptions::allow_non_finite`]: crate::adapter::LoadOptions::allow_non_finite
    #[error("tensor {key:?} holds a non-finite value ({value}) at flat index {index}")]
    NonFinite {
        /// The tensor key.
        key: String,
        /// Flat index of the first offending element.
        index: usize,
        /// The value itself.
        value: f32,
    },

    /// A tensor key does not start with PEFT's `base_model.model.` prefix.
    #[error("tensor {key:?} is outside the `base_model.model.` prefix PEFT saves adapters under")]
    KeyOutsidePrefix {
        /// The tensor key.
        key: String,
    },

    /// A tensor key is neither a LoRA factor, a DoRA magnitude, a bias the config allows to be
    /// saved, nor a parameter of a `modules_to_save` module.
    #[error("tensor {key:?} is not part of a LoRA adapter with this config: {reason}")]
    UnexpectedTensor {
        /// The tensor key.
        key: String,
        /// Why it does not fit.
        reason: String,
    },

    /// A module has one LoRA factor but not the other (e.g. `lora_A` without `lora_B`).
    #[error("module {module:?} has {present} but no {missing}")]
    MissingFactor {
        /// The module name (without the `base_model.model.` prefix).
        module: String,
        /// The factor found.
        present: String,
        /// The factor missing.
        missing: String,
    },

    /// A tensor has the wrong number of dimensions or the wrong shape.
    #[error("tensor {key:?} has shape {found:?}, expected {expected}")]
    BadShape {
        /// The tensor key.
        key: String,
        /// What was expected, in words (`2-D [r, in]`, `[out] = [64]`, ...).
        expected: String,
        /// The shape found.
        found: Vec<usize>,
    },

    /// The rank stored in the tensors differs from the rank the config gives the module
    /// (`r`, or its `rank_pattern` entry).
    #[error(
        "module {module:?}: config gives rank {config_rank} but tensor {key:?} has rank {tensor_rank}"
    )]
    RankMismatch {
        /// The module name.
        module: String,
        /// The tensor whose shape disagrees.
        key: String,
        /// Rank from the config.
        config_rank: usize,
        /// Rank found in the tensor.
        tensor_rank: usize,
    },

    /// An adapter module is not selected by the config's `target_modules` /
    /// `exclude_modules` / `layers_to_transform`.
    #[error("module {module:?} has LoRA weights but the config does not target it")]
    UntargetedModule {
        /// The module name.
        module: String,
    },

    /// A module the adapter targets does not exist in the base model.
    #[error("target module {module:?} does not exist in the base model")]
    TargetModuleAbsent {
        /// The module name (or the `target_modules` entry that matched nothing).
        module: String,
    },

    /// A module the adapter targets exists in the base model but is not a linear layer or an
    /// embedding.
    #[error(
        "module {module:?} is a {kind} in the base model; LoRA applies to linear layers and embeddings"
    )]
    UnsupportedTarget {
        /// The module name.
        module: String,
        /// What it is in the base (`norm`, `bias-only`, ...).
        kind: String,
    },

    /// An adapter module's in/out dimensions differ from the base model's weight.
    #[error(
        "module {module:?}: adapter needs a [{adapter_out}, {adapter_in}] weight ([out, in]), base has {base_shape:?}"
    )]
    ShapeMismatch {
        /// The module name.
        module: String,
        /// Output features the adapter implies.
        adapter_out: usize,
        /// Input features the adapter implies.
        adapter_in: usize,
        /// The base weight's stored shape.
        base_shape: Vec<usize>,
    },

    /// The adapter has nothing in it: no LoRA module and no saved module.
    #[error("{file} holds no LoRA tensors")]
    EmptyAdapter {
        /// The safetensors file.
        file: String,
    },

    /// A feature combination this implementation does not support (named in `what`).
    #[error("unsupported: {what}")]
    Unsupported {
        /// What is not supported, and for which module or adapter.
        what: String,
    },

    /// A base model's `config.json` has sizes that are not positive integers of a sane size,
    /// or that disagree with its weights.
    #[error("config.json of the base model: {reason}")]
    BaseConfig {
        /// What is wrong.
        reason: String,
    },

    /// Arguments to merge or combine are inconsistent (weights count, density range, ...).
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// The argument.
        name: String,
        /// Why it is rejected.
        reason: String,
    },

    /// A dtype decoding problem surfaced by the shared core vocabulary.
    #[error(transparent)]
    Core(#[from] CoreError),
}

impl Classify for LoraError {
    fn kind(&self) -> ErrorKind {
        match self {
            LoraError::Io { source, .. } => ErrorKind::of_io(source),
            LoraError::UntargetedModule { .. }
            | LoraError::TargetModuleAbsent { .. }
            | LoraError::UnsupportedTarget { .. }
            | LoraError::ShapeMismatch { .. } => ErrorKind::BaseMismatch,
            LoraError::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            LoraError::BaseConfig { .. } => ErrorKind::ModelFormat,
            LoraError::InvalidConfig { .. }
            | LoraError::UnsupportedPeftType { .. }
            | LoraError::InvalidField { .. }
            | LoraError::InvalidRegex { .. }
            | LoraError::Truncated { .. }
            | LoraError::BadHeader { .. }
            | LoraError::UnsupportedDType { .. }
            | LoraError::NonFinite { .. }
            | LoraError::KeyOutsidePrefix { .. }
            | LoraError::UnexpectedTensor { .. }
            | LoraError::MissingFactor { .. }
            | LoraError::BadShape { .. }
            | LoraError::RankMismatch { .. }
            | LoraError::EmptyAdapter { .. }
            | LoraError::Unsupported { .. }
            | LoraError::Core(_) => ErrorKind::AdapterFormat,
        }
    }

    fn io_source(&self) -> Option<(&std::path::Path, &std::io::Error)> {
        match self {
            LoraError::Io { path, source } => Some((path, source)),
            _ => None,
        }
    }
}

impl LoraError {
    /// Shorthand for [`LoraError::InvalidConfig`] on `adapter_config.json`.
    pub(crate) fn config(reason: impl Into<String>) -> Self {
        LoraError::InvalidConfig {
            file: crate::adapter::config::CONFIG_FILE.to_string(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`LoraError::InvalidField`] on `adapter_config.json`.
    pub(crate) fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        LoraError::InvalidField {
            file: crate::adapter::config::CONFIG_FILE.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`LoraError::InvalidArgument`].
    pub(crate) fn arg(name: impl Into<String>, reason: impl Into<String>) -> Self {
        LoraError::InvalidArgument {
            name: name.into(),
            reason: reason.into(),
        }
    }
}
