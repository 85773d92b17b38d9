//! Errors of the trainer: bad configs and datasets are refused before any step runs; a
//! non-finite loss stops training at the step that produced it, with the parameters of the last
//! good step kept.

use openledger_core::error::{Classify, ErrorKind};
use std::path::PathBuf;

use thiserror::Error;

use openledger_lora::error::LoraError;
use openledger_lora::model::ModelError;

/// Everything that can go wrong configuring, running or saving a training run.
#[derive(Debug, Error)]
pub enum TrainError {
    /// A split that must hold examples holds none.
    #[error("the {split} dataset is empty")]
    EmptyDataset {
        /// `"train"` or `"eval"`.
        split: &'static str,
    },
    /// An example is longer than the context the run allows.
    #[error(
        "example {index} of the {split} dataset has {len} tokens, more than the context of {max}"
    )]
    ExampleTooLong {
        /// `"train"` or `"eval"`.
        split: &'static str,
        /// Index of the example in its dataset.
        index: usize,
        /// Its length in tokens.
        len: usize,
        /// The longest sequence allowed ([`crate::TrainConfig::max_seq_len`]).
        max: usize,
    },
    /// An example has no token the loss is taken on (fewer than two tokens, or a loss mask
    /// that selects none after the first position).
    #[error("example {index} of the {split} dataset has no target token")]
    NoTargets {
        /// `"train"` or `"eval"`.
        split: &'static str,
        /// Index of the example in its dataset.
        index: usize,
    },
    /// An example's loss mask does not have one entry per token.
    #[error("example {index} has {tokens} tokens but a loss mask of {mask} entries")]
    MaskLength {
        /// Index of the example in its dataset.
        index: usize,
        /// Tokens.
        tokens: usize,
        /// Mask entries.
        mask: usize,
    },
    /// A token id is not in the model's vocabulary.
    #[error(
        "example {index}, position {position}: token {token} is outside the vocabulary of {vocab}"
    )]
    TokenOutOfVocab {
        /// Index of the example in its dataset.
        index: usize,
        /// Position of the token.
        position: usize,
        /// The token id.
        token: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// A target module name is not a projection of the model.
    #[error("unknown target module {name:?}; known: {known:?} or \"all-linear\"")]
    UnknownTargetModule {
        /// The name given.
        name: String,
        /// The projection names the model has.
        known: Vec<&'static str>,
    },
    /// The LoRA rank is zero.
    #[error("LoRA rank must be at least 1")]
    ZeroRank,
    /// A config field has a value the trainer cannot use.
    #[error("invalid training config: {field}: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// The loss (or the gradient norm) of an optimizer step was NaN or infinite; training
    /// stopped before applying that step's update.
    #[error("non-finite {what} {value} at optimizer step {step}")]
    NonFinite {
        /// `"loss"` or `"gradient norm"`.
        what: &'static str,
        /// The 1-based optimizer step.
        step: usize,
        /// The value found.
        value: f64,
    },
    /// Training diverged (a learning rate far too high, say): a step's loss passed
    /// [`crate::DIVERGENCE_FACTOR`] times the loss of uniform guessing, or an update pushed a
    /// parameter past [`crate::MAX_PARAMETER`]; training stopped before applying that step.
    #[error("training diverged at optimizer step {step}: {what} (lower the learning rate)")]
    Diverged {
        /// The 1-based optimizer step.
        step: usize,
        /// What passed its bound.
        what: String,
    },
    /// A record belongs to a datanet the requester holds no approved training grant for
    /// (checked with [`openledger_core::grant::Grants::check`] before the first step).
    #[error("example {index} (record {record}) of datanet {datanet}: {source}")]
    AccessDenied {
        /// Index of the example in the training set.
        index: usize,
        /// The datanet id.
        datanet: openledger_core::U256,
        /// The account that asked to train.
        requester: openledger_core::Address,
        /// The record.
        record: openledger_core::ContentId,
        /// Why the grant check refused.
        source: Box<openledger_core::grant::GrantError>,
    },
    /// The training log refused an entry.
    #[error("training log: {0}")]
    Log(#[from] openledger_core::trainlog::TrainLogError),
    /// The base model could not be loaded or tokenisation failed.
    #[error(transparent)]
    Model(Box<ModelError>),
    /// The adapter could not be built, serialised or merged.
    #[error(transparent)]
    Lora(Box<LoraError>),
    /// A tensor operation of the forward or backward pass failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// A checkpoint whose adapter does not match the trainer's parameter layout.
    #[error("checkpoint of step {step}: {reason}")]
    BadCheckpoint {
        /// The checkpoint's step.
        step: usize,
        /// What does not match.
        reason: String,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Classify for TrainError {
    fn kind(&self) -> ErrorKind {
        match self {
            TrainError::EmptyDataset { .. }
            | TrainError::ExampleTooLong { .. }
            | TrainError::NoTargets { .. }
            | TrainError::MaskLength { .. }
            | TrainError::TokenOutOfVocab { .. }
            | TrainError::UnknownTargetModule { .. }
            | TrainError::ZeroRank
            | TrainError::InvalidConfig { .. }
            | TrainError::BadCheckpoint { .. } => ErrorKind::InvalidArgument,
            TrainError::NonFinite { .. } | TrainError::Diverged { .. } | TrainError::Tensor(_) => {
                ErrorKind::Training
            }
            TrainError::AccessDenied { .. } => ErrorKind::AccessDenied,
            TrainError::Log(e) => e.kind(),
            TrainError::Model(e) => e.kind(),
            TrainError::Lora(e) => e.kind(),
            TrainError::Io { source, .. } => ErrorKind::of_io(source),
        }
    }

    fn io_source(&self) -> Option<(&std::path::Path, &std::io::Error)> {
        match self {
            TrainError::Io { path, source } => Some((path, source)),
            TrainError::Log(e) => e.io_source(),
            TrainError::Model(e) => e.io_source(),
            TrainError::Lora(e) => e.io_source(),
            _ => None,
        }
    }
}

impl From<ModelError> for TrainError {
    fn from(e: ModelError) -> Self {
        TrainError::Model(Box::new(e))
    }
}

impl From<LoraError> for TrainError {
    fn from(e: LoraError) -> Self {
        TrainError::Lora(Box::new(e))
    }
}
