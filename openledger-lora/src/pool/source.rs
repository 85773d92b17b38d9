//! Where a registered adapter's bytes come from.
//!
//! - [`Source::Dir`]: a PEFT folder (`adapter_config.json` + `adapter_model.safetensors`);
//! - [`Source::Bytes`]: the same two files already in memory;
//! - [`Source::Hub`]: a [`HubDir`], a local hub laid out as `<root>/<adapter id>/…`, which resolves
//!   the id to a folder and refuses any that would leave the root;
//! - [`Source::Custom`]: anything implementing [`AdapterSource`] (an object store, a remote hub).
//!
//! ```
//! use std::sync::Arc;
//! use openledger_lora::pool::{AdapterBytes, AdapterId, AdapterSource, Source, SourceError};
//!
//! /// A source serving one fixed adapter for every id.
//! struct Fixed(AdapterBytes);
//!
//! impl AdapterSource for Fixed {
//!     fn fetch(&self, _id: &AdapterId) -> Result<AdapterBytes, SourceError> {
//!         Ok(self.0.clone())
//!     }
//! }
//!
//! let src = Source::Custom(Arc::new(Fixed(AdapterBytes {
//!     config_json: b"{}".to_vec(),
//!     safetensors: Vec::new(),
//! })));
//! assert!(format!("{src:?}").starts_with("Custom"));
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::PoolError;
use super::id::AdapterId;
use crate::adapter::config::CONFIG_FILE;

/// The error a custom source returns; the pool reports its message in
/// [`PoolError::Source`].
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// The two files of a PEFT adapter, as bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct AdapterBytes {
    /// Contents of `adapter_config.json`.
    pub config_json: Vec<u8>,
    /// Contents of `adapter_model.safetensors`.
    pub safetensors: Vec<u8>,
}

impl fmt::Debug for AdapterBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdapterBytes")
            .field(
                "config_json",
                &format_args!("{} bytes", self.config_json.len()),
            )
            .field(
                "safetensors",
                &format_args!("{} bytes", self.safetensors.len()),
            )
            .finish()
    }
}

/// A user-supplied store of adapters (object store, remote hub, database …).
///
/// `fetch` is called outside the pool's locks, at most once at a time per id (single-flight),
/// possibly from several threads for different ids.
pub trait AdapterSource: Send + Sync {
    /// The config and weights of adapter `id`, or why they cannot be had.
    fn fetch(&self, id: &AdapterId) -> Result<AdapterBytes, SourceError>;
}

/// Where one registered adapter is loaded from.
#[derive(Clone)]
pub enum Source {
    /// A PEFT adapter folder.
    Dir(PathBuf),
    /// A PEFT adapter held in memory (shared, never copied by the pool).
    Bytes {
        /// Contents of `adapter_config.json`.
        config_json: Arc<[u8]>,
        /// Contents of `adapter_model.safetensors`.
        safetensors: Arc<[u8]>,
    },
    /// The folder `<root>/<id>` of a local hub (resolved again at each load).
    Hub(HubDir),
    /// A user-implemented source.
    Custom(Arc<dyn AdapterSource>),
}

impl Source {
    /// An in-memory source from the two files' bytes.
    pub fn bytes(config_json: impl Into<Arc<[u8]>>, safetensors: impl Into<Arc<[u8]>>) -> Self {
        Self::Bytes {
            config_json: config_json.into(),
            safetensors: safetensors.into(),
        }
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dir(p) => f.debug_tuple("Dir").field(p).finish(),
            Self::Bytes {
                config_json,
                safetensors,
            } => write!(
                f,
                "Bytes {{ config_json: {} bytes, safetensors: {} bytes }}",
                config_json.len(),
                safetensors.len()
            ),
            Self::Hub(h) => f.debug_tuple("Hub").field(&h.root()).finish(),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// A local hub: adapter `id` lives in the folder `<root>/<id>` (ids with `/` nest folders).
///
/// The root is canonicalised when the hub is opened; every resolved folder is canonicalised too
/// and must lie inside the root, so a symlink pointing outside is refused
/// ([`PoolError::PathEscapesRoot`]) on top of the id validation that rejects `..`, absolute
/// paths and the like.
#[derive(Clone, Debug)]
pub struct HubDir {
    root: Arc<Path>,
}

impl HubDir {
    /// Opens the hub rooted at `root` (which must be an existing folder).
    pub fn open(root: impl AsRef<Path>) -> Result<Self, PoolError> {
        let given = root.as_ref();
        let canon = given.canonicalize().map_err(|e| PoolError::HubRoot {
            path: given.to_path_buf(),
            source: Arc::new(e),
        })?;
        if !canon.is_dir() {
            return Err(PoolError::HubRoot {
                path: given.to_path_buf(),
                source: Arc::new(std::io::Error::new(
                    std::io::ErrorKind::NotADirectory,
                    "not a directory",
                )),
            });
        }
        Ok(Self { root: canon.into() })
    }

    /// The canonical root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The canonical folder of adapter `id`, checked to exist and to lie inside the root.
    pub fn resolve(&self, id: &AdapterId) -> Result<PathBuf, PoolError> {
        let mut joined = self.root.to_path_buf();
        for comp in id.components() {
            joined.push(comp);
        }
        let canon = joined.canonicalize().map_err(|e| PoolError::Source {
            id: id.clone(),
            message: format!("cannot open adapter folder {}: {e}", joined.display()),
        })?;
        if !canon.starts_with(&self.root) {
            return Err(PoolError::PathEscapesRoot {
                id: id.clone(),
                path: canon,
                root: self.root.to_path_buf(),
            });
        }
        if !canon.is_dir() {
            return Err(PoolError::Source {
                id: id.clone(),
                message: format!("{} is not a folder", canon.display()),
            });
        }
        Ok(canon)
    }

    /// The ids of every adapter folder under the root (a folder holding [`CONFIG_FILE`]), at
    /// depth one (`name`) or two (`org/name`), sorted. Entries whose names are not valid ids,
    /// and symlinks, are skipped.
    pub fn ids(&self) -> Result<Vec<AdapterId>, PoolError> {
        let mut out = Vec::new();
        self.scan(&self.root, "", 0, &mut out)?;
        out.sort();
        Ok(out)
    }

    fn scan(
        &self,
        dir: &Path,
        prefix: &str,
        depth: usize,
        out: &mut Vec<AdapterId>,
    ) -> Result<(), PoolError> {
        let io = |e: std::io::Error| PoolError::HubRoot {
            path: dir.to_path_buf(),
            source: Arc::new(e),
        };
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            if !entry.file_type().map_err(io)?.is_dir() {
                continue; // plain files and symlinks are not adapter folders
            }
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let full = format!("{prefix}{name}");
            let Ok(id) = AdapterId::new(&full) else {
                continue;
            };
            if entry.path().join(CONFIG_FILE).is_file() {
                out.push(id);
            } else if depth == 0 {
                self.scan(&entry.path(), &format!("{full}/"), 1, out)?;
            }
        }
        Ok(())
    }
}
