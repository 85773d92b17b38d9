//! The influence feature store: per training example, its record id, contributor and the
//! randomly projected gradient features of each checkpoint, in a memory-mapped file.
//!
//! # File layout (little-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `OLPOAFS\0` |
//! | 8 | 4 | format version (1) |
//! | 12 | 1 | element type: 0 = f16, 1 = f32 |
//! | 13 | 1 | projection kind (see [`ProjectionKind::code`]) |
//! | 14 | 2 | reserved (0) |
//! | 16 | 4 | `k`, sketch dimension |
//! | 20 | 4 | `C`, number of checkpoints |
//! | 24 | 8 | `p`, gradient dimension |
//! | 32 | 8 | projection seed |
//! | 40 | 8 | `count`, committed examples |
//! | 48 | 8 | header length `H` (a multiple of 64) |
//! | 56 | 4 | CRC-32 of the header (`H` bytes, this field zero) |
//! | 60 | 4 | reserved (0) |
//! | 64 | 8·C | learning rate of each checkpoint (f64) |
//!
//! Then `count` rows of `64 + C·k·size` bytes: record id (32), contributor (20), the row's CRC-32
//! (4, computed with this field zero), 8 zero bytes, then the `k` features of checkpoint 0, 1, …
//! C−1. Rows are written before `count` (and the header's CRC with it, in one write) is raised,
//! so a reader never sees a half-written row and a failed append leaves the old count valid;
//! bytes past the last committed row are ignored (and dropped by the next writer). Opening checks
//! the header's CRC and every committed row's: an edited count, learning rate or feature is
//! refused ([`PoaError::Checksum`]). The CRCs catch corruption and edits made without them;
//! they are not a signature (whoever rewrites the file can rewrite them too).
//!
//! ```
//! use openledger_poa::projection::{Projection, ProjectionKind};
//! use openledger_poa::store::{FeatureStore, FeatureStoreWriter, StoreConfig, TrainingExample};
//! use openledger_core::{Address, ContentId};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("features.olfs");
//! let config = StoreConfig::f16(Projection::new(ProjectionKind::Rademacher, 9, 100, 32).unwrap(), vec![0.1]).unwrap();
//! let mut writer = FeatureStoreWriter::create(&path, config.clone()).unwrap();
//! writer.append(&TrainingExample {
//!     record: ContentId::of(b"record"),
//!     contributor: Address::repeat_byte(1),
//!     gradients: vec![vec![0.5; 100]],
//! }).unwrap();
//! let store = FeatureStore::open_expecting(&path, &config).unwrap();
//! assert_eq!(store.len(), 1);
//! assert_eq!(store.record(0), ContentId::of(b"record"));
//! ```

use std::fs::{File, OpenOptions};

use openledger_core::fsx::open_regular;
use rayon::prelude::*;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use half::f16;
use memmap2::Mmap;
use openledger_core::{Address, ContentId};
use serde::{Deserialize, Serialize};

use crate::error::{PoaError, Result, check_dim};
use crate::projection::{Projection, ProjectionKind};

const MAGIC: &[u8; 8] = b"OLPOAFS\0";
const VERSION: u32 = 2;
const FIXED_HEADER: usize = 64;
const ROW_META: usize = 64;
const COUNT_OFFSET: u64 = 40;
/// Where the header's CRC-32 sits.
const HEADER_CRC: usize = 56;
/// Where a row's CRC-32 sits.
const ROW_CRC: usize = 52;

/// CRC-32 of `bytes` with the four bytes at `at` taken as zero.
fn crc_without(bytes: &[u8], at: usize) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..at]);
    h.update(&[0u8; 4]);
    h.update(&bytes[at + 4..]);
    h.finalize()
}
/// Largest feature row accepted (1 GiB per example): guards size arithmetic on hostile headers.
const MAX_ROW_FEATURE_BYTES: usize = 1 << 30;

/// How features are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FeatureDType {
    /// IEEE binary16: half the bytes, ~3 significant digits (the default).
    F16,
    /// IEEE binary32: for exact checks on small models.
    F32,
}

impl FeatureDType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            FeatureDType::F16 => 2,
            FeatureDType::F32 => 4,
        }
    }
}

/// What a store holds: its projection, checkpoint learning rates and element type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreConfig {
    /// The projection applied to every gradient.
    pub projection: Projection,
    /// Learning rate `η_c` of each checkpoint (`C = learning_rates.len()`).
    pub learning_rates: Vec<f64>,
    /// Element type of the stored features.
    pub dtype: FeatureDType,
}

impl StoreConfig {
    /// A config storing f16 features; at least one checkpoint, finite learning rates.
    pub fn f16(projection: Projection, learning_rates: Vec<f64>) -> Result<Self> {
        Self::new(projection, learning_rates, FeatureDType::F16)
    }

    /// A config with an explicit element type.
    pub fn new(
        projection: Projection,
        learning_rates: Vec<f64>,
        dtype: FeatureDType,
    ) -> Result<Self> {
        if learning_rates.is_empty() || learning_rates.len() > u32::MAX as usize {
            return Err(PoaError::InvalidConfig {
                what: "learning rates".into(),
                reason: format!("need 1..2^32 checkpoints, found {}", learning_rates.len()),
            });
        }
        crate::error::check_finite_f64(|| "learning rates".into(), &learning_rates)?;
        let features = learning_rates
            .len()
            .checked_mul(projection.k)
            .and_then(|f| f.checked_mul(dtype.size()))
            .filter(|&b| b <= MAX_ROW_FEATURE_BYTES);
        if features.is_none() {
            return Err(PoaError::InvalidConfig {
                what: "feature row".into(),
                reason: format!(
                    "{} checkpoints × k {} exceed {MAX_ROW_FEATURE_BYTES} bytes per example",
                    learning_rates.len(),
                    projection.k
                ),
            });
        }
        Ok(Self {
            projection,
            learning_rates,
            dtype,
        })
    }

    /// Number of checkpoints `C`.
    pub fn checkpoints(&self) -> usize {
        self.learning_rates.len()
    }

    /// Sketch dimension `k`.
    pub fn k(&self) -> usize {
        self.projection.k
    }

    fn header_len(&self) -> usize {
        (FIXED_HEADER + 8 * self.checkpoints()).div_ceil(64) * 64
    }

    fn row_size(&self) -> usize {
        ROW_META + self.checkpoints() * self.k() * self.dtype.size()
    }

    fn header(&self, count: u64) -> Vec<u8> {
        let mut h = vec![0u8; self.header_len()];
        h[..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12] = match self.dtype {
            FeatureDType::F16 => 0,
            FeatureDType::F32 => 1,
        };
        h[13] = self.projection.kind.code();
        h[16..20].copy_from_slice(&(self.k() as u32).to_le_bytes());
        h[20..24].copy_from_slice(&(self.checkpoints() as u32).to_le_bytes());
        h[24..32].copy_from_slice(&(self.projection.input_dim as u64).to_le_bytes());
        h[32..40].copy_from_slice(&self.projection.seed.to_le_bytes());
        h[40..48].copy_from_slice(&count.to_le_bytes());
        h[48..56].copy_from_slice(&(self.header_len() as u64).to_le_bytes());
        for (c, lr) in self.learning_rates.iter().enumerate() {
            h[64 + 8 * c..72 + 8 * c].copy_from_slice(&lr.to_le_bytes());
        }
        let crc = crc_without(&h, HEADER_CRC);
        h[HEADER_CRC..HEADER_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        h
    }

    fn describe(&self) -> String {
        format!(
            "{:?} projection seed {} ({} → {}), {} checkpoints with learning rates {:?}, {:?} features",
            self.projection.kind,
            self.projection.seed,
            self.projection.input_dim,
            self.projection.k,
            self.checkpoints(),
            self.learning_rates,
            self.dtype
        )
    }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Parses a header; returns the config and committed count.
fn parse_header(path: &Path, bytes: &[u8]) -> Result<(StoreConfig, u64)> {
    let bad = |reason: String| PoaError::BadHeader {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < FIXED_HEADER {
        return Err(PoaError::Truncated {
            path: path.to_path_buf(),
            expected: FIXED_HEADER as u64,
            found: bytes.len() as u64,
        });
    }
    if &bytes[..8] != MAGIC {
        return Err(bad(format!("magic {:02x?}", &bytes[..8])));
    }
    let version = u32_at(bytes, 8);
    if version != VERSION {
        return Err(bad(format!(
            "format version {version}, this build reads {VERSION}"
        )));
    }
    let dtype = match bytes[12] {
        0 => FeatureDType::F16,
        1 => FeatureDType::F32,
        d => return Err(bad(format!("element type code {d}"))),
    };
    let kind = ProjectionKind::from_code(bytes[13])
        .ok_or_else(|| bad(format!("projection kind code {}", bytes[13])))?;
    let k = u32_at(bytes, 16) as usize;
    let c = u32_at(bytes, 20) as usize;
    let p =
        usize::try_from(u64_at(bytes, 24)).map_err(|_| bad("input dimension too large".into()))?;
    let seed = u64_at(bytes, 32);
    let count = u64_at(bytes, 40);
    let header_len = u64_at(bytes, 48);
    let expected_len = (FIXED_HEADER + 8 * c).div_ceil(64) * 64;
    if header_len != expected_len as u64 {
        return Err(bad(format!(
            "header length {header_len}, expected {expected_len} for {c} checkpoints"
        )));
    }
    if bytes.len() < expected_len {
        return Err(PoaError::Truncated {
            path: path.to_path_buf(),
            expected: expected_len as u64,
            found: bytes.len() as u64,
        });
    }
    let stored = u32::from_le_bytes(
        bytes[HEADER_CRC..HEADER_CRC + 4]
            .try_into()
            .expect("4 bytes"),
    );
    if crc_without(&bytes[..expected_len], HEADER_CRC) != stored {
        return Err(PoaError::Checksum {
            path: path.to_path_buf(),
            what: "the header (count, dimensions, seed or learning rates edited)".into(),
        });
    }
    let lrs: Vec<f64> = (0..c)
        .map(|i| f64::from_le_bytes(bytes[64 + 8 * i..72 + 8 * i].try_into().expect("8 bytes")))
        .collect();
    let projection = Projection::new(kind, seed, p, k).map_err(|e| bad(e.to_string()))?;
    let config = StoreConfig::new(projection, lrs, dtype).map_err(|e| bad(e.to_string()))?;
    Ok((config, count))
}

fn check_same(path: &Path, expected: &StoreConfig, found: &StoreConfig) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(PoaError::ProjectionMismatch {
            path: path.to_path_buf(),
            expected: expected.describe(),
            found: found.describe(),
        })
    }
}

/// One training example: its record, contributor, and raw gradient at each checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingExample {
    /// The datanet record it came from.
    pub record: ContentId,
    /// The record's contributor.
    pub contributor: Address,
    /// One gradient of dimension `p` per checkpoint.
    pub gradients: Vec<Vec<f32>>,
}

/// Progress of a long build: examples appended so far, and the total when known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildProgress {
    /// Examples committed so far in this build.
    pub done: usize,
    /// Examples expected, when the caller said.
    pub total: Option<usize>,
    /// Examples committed since the previous report.
    pub advanced: usize,
}

/// Appends examples to a store file.
#[derive(Debug)]
pub struct FeatureStoreWriter {
    path: PathBuf,
    file: File,
    config: StoreConfig,
    count: u64,
}

/// Bytes per `write` call when rows are committed.
const WRITE_PIECE: usize = 1 << 20;

/// Examples encoded per write when building from an iterator.
const BUILD_BATCH: usize = 256;

impl FeatureStoreWriter {
    /// Creates `path` as an empty store; a file already there is refused (an `AlreadyExists`
    /// I/O error), so an existing store is never emptied by mistake — see [`Self::replace`].
    pub fn create(path: impl AsRef<Path>, config: StoreConfig) -> Result<Self> {
        Self::make(path.as_ref(), config, false)
    }

    /// Creates `path` as an empty store, truncating whatever file is there. Do not replace a
    /// store that is open for reading: a memory map whose file shrinks under it faults. One
    /// writer per file.
    pub fn replace(path: impl AsRef<Path>, config: StoreConfig) -> Result<Self> {
        Self::make(path.as_ref(), config, true)
    }

    fn make(path: &Path, config: StoreConfig, replace: bool) -> Result<Self> {
        let path = path.to_path_buf();
        let io = |source| PoaError::Io {
            path: path.clone(),
            source,
        };
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if replace {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        let mut file = options.open(&path).map_err(io)?;
        file.write_all(&config.header(0)).map_err(io)?;
        Ok(Self {
            path,
            file,
            config,
            count: 0,
        })
    }

    /// Opens an existing store to append to; its header must match `expected`.
    pub fn open(path: impl AsRef<Path>, expected: &StoreConfig) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io = |source| PoaError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut head = vec![0u8; (len as usize).min(FIXED_HEADER + 8 * 65_536)];
        file.read_exact_at(&mut head, 0).map_err(io)?;
        let (config, count) = parse_header(&path, &head)?;
        check_same(&path, expected, &config)?;
        let end = (config.row_size() as u64)
            .checked_mul(count)
            .and_then(|rows| rows.checked_add(config.header_len() as u64))
            .unwrap_or(u64::MAX);
        if len < end {
            return Err(PoaError::Truncated {
                path,
                expected: end,
                found: len,
            });
        }
        file.set_len(end).map_err(io)?; // drop any half-written rows
        Ok(Self {
            path,
            file,
            config,
            count,
        })
    }

    /// The store's config.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Committed examples.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no example is committed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Projects and encodes one example as a row; every check happens here.
    fn encode(&self, ex: &TrainingExample, out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        out.resize(start + self.config.row_size(), 0);
        let grads: Vec<&[f32]> = ex.gradients.iter().map(Vec::as_slice).collect();
        self.encode_into(ex.record, ex.contributor, &grads, &mut out[start..])
    }

    /// Projects and encodes one row (`record`, `contributor`, one gradient per checkpoint)
    /// into `row` (`row_size` zeroed bytes); every check happens here.
    fn encode_into(
        &self,
        record: ContentId,
        contributor: Address,
        gradients: &[&[f32]],
        row: &mut [u8],
    ) -> Result<()> {
        check_dim(
            || format!("checkpoints of example {record}"),
            self.config.checkpoints(),
            gradients.len(),
        )?;
        row[..32].copy_from_slice(record.as_bytes());
        row[32..52].copy_from_slice(contributor.as_slice());
        let width = self.config.k() * self.config.dtype.size();
        let features = row[ROW_META..].chunks_exact_mut(width);
        for ((c, g), dst) in gradients.iter().enumerate().zip(features) {
            let name = || format!("gradient of checkpoint {c} of example {record}");
            let phi = self.config.projection.project_cow(g).map_err(|e| match e {
                PoaError::NonFinite { index, value, .. } => PoaError::NonFinite {
                    what: name(),
                    index,
                    value,
                },
                PoaError::DimensionMismatch {
                    expected, found, ..
                } => PoaError::DimensionMismatch {
                    what: name(),
                    expected,
                    found,
                },
                other => other,
            })?;
            match self.config.dtype {
                FeatureDType::F32 => {
                    for (d, v) in dst.chunks_exact_mut(4).zip(phi.iter()) {
                        d.copy_from_slice(&v.to_le_bytes());
                    }
                }
                FeatureDType::F16 => {
                    for (j, (d, v)) in dst.chunks_exact_mut(2).zip(phi.iter()).enumerate() {
                        let h = f16::from_f32(*v);
                        if h.is_infinite() {
                            return Err(PoaError::NonFinite {
                                what: format!("projected {} (beyond the f16 range)", name()),
                                index: j,
                                value: f64::from(*v),
                            });
                        }
                        d.copy_from_slice(&h.to_le_bytes());
                    }
                }
            }
        }
        let crc = crc_without(row, ROW_CRC);
        row[ROW_CRC..ROW_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }

    /// Writes encoded rows and then raises the count; on failure the count is unchanged.
    fn commit(&mut self, rows: &[u8], n: u64) -> Result<()> {
        let io = |source| PoaError::Io {
            path: self.path.clone(),
            source,
        };
        let end = self.config.header_len() as u64 + self.count * self.config.row_size() as u64;
        // In pieces: one write of tens of megabytes runs several times slower than the same
        // bytes in 1 MiB writes.
        let mut at = end;
        for piece in rows.chunks(WRITE_PIECE) {
            if let Err(e) = self.file.write_all_at(piece, at) {
                let _ = self.file.set_len(end);
                return Err(io(e));
            }
            at += piece.len() as u64;
        }
        let new_count = self.count + n;
        // The count and the header's CRC change together, in one write.
        let header = self.config.header(new_count);
        self.file
            .write_all_at(&header[COUNT_OFFSET as usize..FIXED_HEADER], COUNT_OFFSET)
            .map_err(io)?;
        self.count = new_count;
        Ok(())
    }

    /// Appends rows `rows` of `store` as they are (their bytes, CRCs included). The store
    /// must have this writer's configuration ([`PoaError::ProjectionMismatch`] otherwise); on
    /// failure the count is unchanged.
    pub fn append_from(
        &mut self,
        store: &FeatureStore,
        rows: std::ops::Range<usize>,
    ) -> Result<()> {
        check_same(store.path(), &self.config, store.config())?;
        if rows.start > rows.end || rows.end > store.len() {
            return Err(PoaError::InvalidConfig {
                what: format!("rows of {}", store.path().display()),
                reason: format!("{rows:?} is not within its {} rows", store.len()),
            });
        }
        let size = store.row_size();
        let bytes = &store.rows_bytes()[rows.start * size..rows.end * size];
        self.commit(bytes, rows.len() as u64)
    }

    /// Appends one example. A bad gradient is a typed error and the store is unchanged.
    pub fn append(&mut self, example: &TrainingExample) -> Result<()> {
        self.append_batch(std::slice::from_ref(example))
    }

    /// Appends examples all-or-nothing: one bad example and none is stored.
    pub fn append_batch(&mut self, examples: &[TrainingExample]) -> Result<()> {
        let mut rows = Vec::with_capacity(examples.len() * self.config.row_size());
        for ex in examples {
            self.encode(ex, &mut rows)?;
        }
        self.commit(&rows, examples.len() as u64)
    }

    /// Appends `rows.len()` examples all-or-nothing from borrowed gradients: row `i` is
    /// `rows[i]` (record, contributor) with `gradient(c, i)` at checkpoint `c`. Rows are
    /// projected and encoded in parallel; one bad gradient and none is stored.
    pub fn append_rows<'g>(
        &mut self,
        rows: &[(ContentId, Address)],
        gradient: impl Fn(usize, usize) -> &'g [f32] + Sync,
    ) -> Result<()> {
        let size = self.config.row_size();
        let checkpoints = self.config.checkpoints();
        let mut bytes = vec![0u8; rows.len() * size];
        bytes
            .par_chunks_mut(size)
            .zip(rows.par_iter())
            .enumerate()
            .try_for_each(|(i, (row, &(record, contributor)))| {
                let grads: Vec<&[f32]> = (0..checkpoints).map(|c| gradient(c, i)).collect();
                self.encode_into(record, contributor, &grads, row)
            })?;
        self.commit(&bytes, rows.len() as u64)
    }

    /// Appends examples yielded by `examples` (e.g. a closure computing gradients lazily),
    /// reporting progress after every committed batch. On the first error, examples committed
    /// before it are kept and the error is returned.
    pub fn build<I>(
        &mut self,
        examples: I,
        total: Option<usize>,
        mut progress: impl FnMut(BuildProgress),
    ) -> Result<usize>
    where
        I: IntoIterator<Item = Result<TrainingExample>>,
    {
        let mut done = 0;
        let mut rows = Vec::new();
        let mut pending = 0u64;
        for ex in examples {
            let ex = ex?;
            let before = rows.len();
            if let Err(e) = self.encode(&ex, &mut rows) {
                rows.truncate(before);
                self.commit(&rows, pending)?;
                return Err(e);
            }
            pending += 1;
            if pending as usize == BUILD_BATCH {
                self.commit(&rows, pending)?;
                done += pending as usize;
                rows.clear();
                progress(BuildProgress {
                    done,
                    total,
                    advanced: pending as usize,
                });
                pending = 0;
            }
        }
        if pending > 0 {
            self.commit(&rows, pending)?;
            done += pending as usize;
            progress(BuildProgress {
                done,
                total,
                advanced: pending as usize,
            });
        }
        Ok(done)
    }

    /// Flushes written rows and the count to stable storage.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|source| PoaError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// A read-only, memory-mapped view of a store (a snapshot of its committed rows).
#[derive(Debug)]
pub struct FeatureStore {
    path: PathBuf,
    map: Mmap,
    config: StoreConfig,
    count: usize,
    header_len: usize,
    row_size: usize,
}

impl FeatureStore {
    /// Opens `path`, checking its header and that every committed row is present.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io = |source| PoaError::Io {
            path: path.clone(),
            source,
        };
        let (file, _) = open_regular(&path).map_err(io)?;
        // SAFETY: the map is read-only; writers only append past the committed rows and raise
        // the count, so the bytes this view reads are never modified while it is alive.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (config, count) = parse_header(&path, &map)?;
        let header_len = config.header_len();
        let row_size = config.row_size();
        let end = (row_size as u64)
            .checked_mul(count)
            .and_then(|rows| rows.checked_add(header_len as u64))
            .unwrap_or(u64::MAX);
        if (map.len() as u64) < end {
            return Err(PoaError::Truncated {
                path,
                expected: end,
                found: map.len() as u64,
            });
        }
        let store = Self {
            path,
            map,
            config,
            count: count as usize,
            header_len,
            row_size,
        };
        store.check_rows(0..store.count)?;
        Ok(store)
    }

    /// Checks the CRC of every row in `rows` (in parallel), naming the first that fails.
    fn check_rows(&self, rows: std::ops::Range<usize>) -> Result<()> {
        let bad = rows.into_par_iter().find_first(|&i| {
            let row = self.row_bytes(i);
            let stored = u32::from_le_bytes(row[ROW_CRC..ROW_CRC + 4].try_into().expect("4 bytes"));
            crc_without(row, ROW_CRC) != stored
        });
        match bad {
            None => Ok(()),
            Some(i) => Err(PoaError::Checksum {
                path: self.path.clone(),
                what: format!("row {i} (its record, contributor or features edited)"),
            }),
        }
    }

    fn row_bytes(&self, i: usize) -> &[u8] {
        let at = self.header_len + i * self.row_size;
        &self.map[at..at + self.row_size]
    }

    /// Opens `path` and checks it was written with `expected` (projection seed and kind,
    /// dimensions, learning rates, element type); otherwise [`PoaError::ProjectionMismatch`].
    pub fn open_expecting(path: impl AsRef<Path>, expected: &StoreConfig) -> Result<Self> {
        let store = Self::open(path)?;
        check_same(&store.path, expected, &store.config)?;
        Ok(store)
    }

    /// Re-opens the file to see rows appended since this view was opened.
    pub fn refresh(&mut self) -> Result<()> {
        let fresh = Self::open_expecting(&self.path, &self.config)?;
        *self = fresh;
        Ok(())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The store's config.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Committed examples in this view.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the view holds no example.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn row(&self, i: usize) -> &[u8] {
        let start = self.header_len + i * self.row_size;
        &self.map[start..start + self.row_size]
    }

    /// The record id of example `i` (panics when `i >= len()`).
    pub fn record(&self, i: usize) -> ContentId {
        ContentId::from_digest(self.row(i)[..32].try_into().expect("32 bytes"))
    }

    /// The contributor of example `i` (panics when `i >= len()`).
    pub fn contributor(&self, i: usize) -> Address {
        Address::from_slice(&self.row(i)[32..52])
    }

    /// The raw feature bytes of example `i` (all checkpoints).
    pub fn feature_bytes(&self, i: usize) -> &[u8] {
        &self.row(i)[ROW_META..]
    }

    /// The features of example `i`, all checkpoints concatenated (`C·k` values), into `out`.
    pub fn features_into(&self, i: usize, out: &mut [f32]) {
        let bytes = self.feature_bytes(i);
        match self.config.dtype {
            FeatureDType::F16 => {
                let halves: &[f16] = bytemuck::cast_slice(bytes);
                crate::influence::kernel::f16_to_f32(halves, out);
            }
            FeatureDType::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
    }

    /// The features of example `i`, all checkpoints concatenated.
    pub fn features(&self, i: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.config.checkpoints() * self.config.k()];
        self.features_into(i, &mut out);
        out
    }

    /// The bytes of all committed rows (for scans and baselines).
    pub fn rows_bytes(&self) -> &[u8] {
        &self.map[self.header_len..self.header_len + self.count * self.row_size]
    }

    /// Bytes per row (64 bytes of ids, then features).
    pub fn row_size(&self) -> usize {
        self.row_size
    }

    /// Splits the store into `shards` files in `dir` with its configuration, its rows in order:
    /// shard `j` of `n` is `{stem}.shard-{j}-of-{n}.olfs` (`j` from 0, three digits), and
    /// holds whole blocks of [`SHARD_BLOCK`] rows (the last shard the rest), the first shards
    /// one block more when they do not divide evenly — so the blocks each shard sums match the
    /// whole store's and sharded scores equal the whole store's bit for bit
    /// ([`crate::influence::sharded`]). Merging the shards in order
    /// ([`FeatureStore::merge`]) gives back this file's bytes. More shards than blocks, no
    /// shard, or a shard file already there is refused; on error the shards written so far
    /// are removed.
    pub fn split(&self, dir: impl AsRef<Path>, shards: usize) -> Result<Vec<PathBuf>> {
        let dir = dir.as_ref();
        let blocks = self.count.div_ceil(SHARD_BLOCK);
        if shards == 0 || shards > blocks {
            return Err(PoaError::InvalidConfig {
                what: "shards".into(),
                reason: format!(
                    "{shards} shards of {} rows: between 1 and {blocks} (one block of {SHARD_BLOCK} rows or more each)",
                    self.count
                ),
            });
        }
        let stem = self
            .path
            .file_stem()
            .map_or_else(|| "features".into(), |s| s.to_string_lossy().into_owned());
        let mut written: Vec<PathBuf> = Vec::with_capacity(shards);
        let mut start = 0;
        for j in 0..shards {
            let own = blocks / shards + usize::from(j < blocks % shards);
            let end = (start + own * SHARD_BLOCK).min(self.count);
            let path = dir.join(format!("{stem}.shard-{j:03}-of-{shards:03}.olfs"));
            let remove = |paths: &[PathBuf]| {
                for p in paths {
                    let _ = std::fs::remove_file(p);
                }
            };
            // A file already at `path` is not ours to remove.
            let mut w = match FeatureStoreWriter::create(&path, self.config.clone()) {
                Ok(w) => w,
                Err(e) => {
                    remove(&written);
                    return Err(e);
                }
            };
            if let Err(e) = w.append_from(self, start..end).and_then(|()| w.sync()) {
                written.push(path);
                remove(&written);
                return Err(e);
            }
            written.push(path);
            start = end;
        }
        Ok(written)
    }

    /// Concatenates the stores at `parts` (all with one configuration:
    /// [`PoaError::ProjectionMismatch`] names the first that differs), in order, into a new
    /// store at `out` (an existing file is refused) and opens it. The shards of
    /// [`FeatureStore::split`], or stores written by workers over consecutive ranges of a
    /// datanet, merge into the bytes one writer would have written.
    pub fn merge(parts: &[impl AsRef<Path>], out: impl AsRef<Path>) -> Result<Self> {
        let out = out.as_ref();
        let Some(first) = parts.first() else {
            return Err(PoaError::Empty {
                what: "stores to merge".into(),
            });
        };
        let config = Self::open(first)?.config.clone();
        let stores = parts
            .iter()
            .map(|p| Self::open_expecting(p, &config))
            .collect::<Result<Vec<_>>>()?;
        // A file already at `out` is refused here, and not ours to remove.
        let mut w = FeatureStoreWriter::create(out, config)?;
        let written = stores
            .iter()
            .try_for_each(|s| w.append_from(s, 0..s.len()))
            .and_then(|()| w.sync());
        if let Err(e) = written {
            let _ = std::fs::remove_file(out);
            return Err(e);
        }
        Self::open(out)
    }
}

/// Rows per block of a sharded store: [`FeatureStore::split`] cuts shards at whole blocks, and
/// the sums of DataInf run block by block, so a shard's partial sums are the whole store's.
pub const SHARD_BLOCK: usize = 1024;
