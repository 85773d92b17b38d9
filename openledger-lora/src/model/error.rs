//! Errors of the model half of the engine: loading an HF model folder, attaching adapters and
//! running a batch.

use openledger_core::error::{Classify, ErrorKind};
use std::path::PathBuf;

use thiserror::Error;

use crate::error::LoraError;
use crate::sgmv::SgmvError;

/// Everything that can go wrong loading or running a [`crate::model::Model`].
#[derive(Debug, Error)]
pub enum ModelError {
    /// A file of the model folder could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file of a model folder being written could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `config.json` is not valid JSON or a field has the wrong type or value.
    #[error("invalid {file}: {reason}")]
    InvalidConfig {
        /// The file (`config.json` or the shard index).
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The `model_type` / architecture is not one this engine implements.
    #[error(
        "unsupported architecture: model_type {model_type:?} (architectures {architectures:?}); supported: llama, mistral, qwen2, gemma"
    )]
    UnsupportedArchitecture {
        /// `model_type` from `config.json`.
        model_type: String,
        /// `architectures` from `config.json`.
        architectures: Vec<String>,
    },
    /// A config feature the engine does not implement (a rope type, an activation, ...).
    #[error("unsupported model feature: {what}")]
    Unsupported {
        /// The feature.
        what: String,
    },
    /// A weight the architecture needs is not in the checkpoint.
    #[error("missing weight {key:?}")]
    MissingWeight {
        /// The parameter name.
        key: String,
    },
    /// A weight has a shape other than the config implies.
    #[error("weight {key:?} has shape {found:?}, expected {expected:?}")]
    WeightShape {
        /// The parameter name.
        key: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the checkpoint.
        found: Vec<usize>,
    },
    /// Decoding the safetensors files failed (truncated file, bad header, dtype, NaN ...).
    #[error("cannot load weights: {0}")]
    Weights(#[from] LoraError),
    /// A batch sequence holds a token id outside the vocabulary.
    #[error(
        "sequence {seq}, position {position}: token id {token} is outside the vocabulary of {vocab}"
    )]
    TokenOutOfVocab {
        /// Index of the sequence in the batch.
        seq: usize,
        /// Position of the token in the sequence.
        position: usize,
        /// The token id.
        token: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// An argument of a call has a value the model cannot use.
    #[error("invalid argument `{name}`: {reason}")]
    InvalidArgument {
        /// The argument.
        name: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// A batch sequence has no tokens.
    #[error("sequence {seq} of the batch is empty")]
    EmptySequence {
        /// Index of the sequence in the batch.
        seq: usize,
    },
    /// A sequence names an adapter id this model does not hold.
    #[error("sequence {seq} names adapter id {id}, but the model holds {held} adapters")]
    UnknownAdapter {
        /// Index of the sequence in the batch.
        seq: usize,
        /// The id.
        id: usize,
        /// Number of adapters attached.
        held: usize,
    },
    /// An adapter does not fit this base model (made for another base, or using a feature the
    /// engine does not run).
    #[error("adapter {name:?} does not fit this model: {source}")]
    IncompatibleAdapter {
        /// The name the adapter was attached under.
        name: String,
        /// What does not fit.
        source: LoraError,
    },
    /// The multi-LoRA operator rejected its inputs (an internal inconsistency).
    #[error("sgmv: {0}")]
    Sgmv(#[from] SgmvError),
    /// The tokenizer could not be parsed or could not encode / decode.
    #[error("tokenizer ({what}): {reason}")]
    Tokenizer {
        /// The file or the operation.
        what: String,
        /// What went wrong.
        reason: String,
    },
    /// The dense-matmul backend failed.
    #[error("tensor backend: {0}")]
    Backend(String),
}

impl Classify for ModelError {
    fn kind(&self) -> ErrorKind {
        match self {
            ModelError::Io { source, .. } | ModelError::Write { source, .. } => {
                ErrorKind::of_io(source)
            }
            ModelError::Weights(LoraError::Io { source, .. }) => ErrorKind::of_io(source),
            ModelError::IncompatibleAdapter { .. } => ErrorKind::BaseMismatch,
            ModelError::TokenOutOfVocab { .. }
            | ModelError::InvalidArgument { .. }
            | ModelError::EmptySequence { .. }
            | ModelError::UnknownAdapter { .. } => ErrorKind::InvalidArgument,
            ModelError::Sgmv(_) | ModelError::Backend(_) => ErrorKind::Generation,
            ModelError::InvalidConfig { .. }
            | ModelError::UnsupportedArchitecture { .. }
            | ModelError::Unsupported { .. }
            | ModelError::MissingWeight { .. }
            | ModelError::WeightShape { .. }
            | ModelError::Weights(_)
            | ModelError::Tokenizer { .. } => ErrorKind::ModelFormat,
        }
    }

    fn io_source(&self) -> Option<(&std::path::Path, &std::io::Error)> {
        match self {
            ModelError::Io { path, source } | ModelError::Write { path, source } => {
                Some((path, source))
            }
            ModelError::Weights(e) => e.io_source(),
            _ => None,
        }
    }
}

impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        ModelError::Backend(e.to_string())
    }
}
