//! The errors of the adapter pool. Every variant names the adapter (or path) at fault; a failed
//! call leaves the pool as it was.
//!
//! ```
//! use openledger_lora::pool::{AdapterId, AdapterPool, PoolError};
//!
//! let pool: AdapterPool = AdapterPool::new(1 << 20);
//! let id = AdapterId::new("missing").unwrap();
//! let err = pool.get(&id).unwrap_err();
//! assert!(matches!(&err, PoolError::UnknownId { id } if id.as_str() == "missing"));
//! assert_eq!(err.to_string(), "no adapter registered under id \"missing\"");
//! ```

use openledger_core::error::{Classify, ErrorKind};
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

use super::id::{AdapterId, InvalidAdapterId};
use crate::error::LoraError;

/// Everything the adapter pool can refuse or fail at.
///
/// Cloneable so that one failed load can be handed to every caller that waited on it; the
/// adapter's own error is shared behind an `Arc`.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A string is not a valid adapter id (path traversal, absolute path, forbidden character …).
    #[error(transparent)]
    InvalidId(#[from] InvalidAdapterId),

    /// No adapter is registered under this id.
    #[error("no adapter registered under id \"{id}\"")]
    UnknownId {
        /// The id asked for.
        id: AdapterId,
    },

    /// An adapter is already registered under this id.
    #[error("an adapter is already registered under id \"{id}\"")]
    DuplicateId {
        /// The id registered twice.
        id: AdapterId,
    },

    /// The hub folder of this id resolves (through a symlink) to a path outside the hub root.
    #[error("adapter \"{id}\" resolves to {path}, outside the hub root {root}")]
    PathEscapesRoot {
        /// The adapter id.
        id: AdapterId,
        /// Where its folder really is.
        path: PathBuf,
        /// The hub root it must stay in.
        root: PathBuf,
    },

    /// The hub root cannot be opened or listed.
    #[error("cannot use hub root {path}: {source}")]
    HubRoot {
        /// The root folder (or the sub-folder being listed).
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<std::io::Error>,
    },

    /// The adapter's source could not provide its bytes (custom source error, missing hub folder).
    #[error("source of adapter \"{id}\" failed: {message}")]
    Source {
        /// The adapter id.
        id: AdapterId,
        /// The source's error message.
        message: String,
    },

    /// The adapter's bytes were fetched but do not decode into a valid adapter.
    #[error("adapter \"{id}\" failed to load: {source}")]
    Load {
        /// The adapter id.
        id: AdapterId,
        /// The adapter decoder's error.
        #[source]
        source: Arc<LoraError>,
    },

    /// The adapter alone is larger than the pool's whole byte budget.
    #[error(
        "adapter \"{id}\" needs {size} bytes, more than the whole pool budget of {budget} bytes"
    )]
    AdapterLargerThanBudget {
        /// The adapter id.
        id: AdapterId,
        /// Its resident size in bytes.
        size: usize,
        /// The pool's budget in bytes.
        budget: usize,
    },

    /// The adapter would fit the budget, but pinned adapters hold too much of it; nothing was
    /// evicted.
    #[error(
        "adapter \"{id}\" needs {size} bytes but pinned adapters hold {pinned_bytes} of the \
         {budget}-byte budget"
    )]
    BudgetExhaustedByPinned {
        /// The adapter that could not be made resident.
        id: AdapterId,
        /// Its resident size in bytes.
        size: usize,
        /// Bytes held by pinned adapters.
        pinned_bytes: usize,
        /// The pool's budget in bytes.
        budget: usize,
    },

    /// `unpin` on an adapter that is not pinned (or not resident).
    #[error("adapter \"{id}\" is not pinned")]
    NotPinned {
        /// The adapter id.
        id: AdapterId,
    },

    /// `unregister` on an adapter that is pinned; unpin it first.
    #[error("adapter \"{id}\" is pinned and cannot be unregistered")]
    Pinned {
        /// The adapter id.
        id: AdapterId,
    },

    /// The adapter was unregistered (or replaced) while it was being loaded; the load was dropped.
    #[error("adapter \"{id}\" was unregistered while it was loading")]
    UnregisteredWhileLoading {
        /// The adapter id.
        id: AdapterId,
    },

    /// The source or the decoder panicked while loading this adapter.
    #[error("loading adapter \"{id}\" panicked")]
    LoadPanicked {
        /// The adapter id.
        id: AdapterId,
    },
}

impl Classify for PoolError {
    fn kind(&self) -> ErrorKind {
        match self {
            PoolError::InvalidId(_) | PoolError::PathEscapesRoot { .. } => ErrorKind::InvalidId,
            PoolError::UnknownId { .. } => ErrorKind::UnknownId,
            PoolError::HubRoot { source, .. } => ErrorKind::of_io(source),
            // The adapter id stays in the message; the kind follows the cause.
            PoolError::Load { source, .. } => source.kind(),
            PoolError::AdapterLargerThanBudget { .. }
            | PoolError::BudgetExhaustedByPinned { .. } => ErrorKind::Budget,
            PoolError::Source { .. } => ErrorKind::AdapterFormat,
            PoolError::LoadPanicked { .. } => ErrorKind::Internal,
            PoolError::DuplicateId { .. }
            | PoolError::NotPinned { .. }
            | PoolError::Pinned { .. }
            | PoolError::UnregisteredWhileLoading { .. } => ErrorKind::State,
        }
    }

    fn io_source(&self) -> Option<(&std::path::Path, &std::io::Error)> {
        match self {
            PoolError::HubRoot { path, source } => Some((path, source)),
            PoolError::Load { source, .. } => source.io_source(),
            _ => None,
        }
    }
}
