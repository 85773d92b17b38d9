//! The training log: an append-only, hash-chained record of every optimizer step — which
//! records were in the batch, the loss and learning rate (exact bits), and the checkpoint hash
//! when one was written — whose head is what `ModelRegistry.registerModel` commits to as
//! `trainingLogHead`.
//!
//! # Hash chain
//!
//! ```text
//! genesis = keccak256("openledger.trainlog.v1" ‖ base_model ‖ adapter_config_hash)
//! head_k  = keccak256(head_{k-1} ‖ canonical(entry_k))        head_{-1} = genesis
//! ```
//!
//! The batch enters an entry as its Merkle root ([`crate::merkle`], OpenZeppelin layout) over
//! the record leaves `keccak256(keccak256(record_id))` in batch order — the same leaf a
//! [`crate::datanet::DatanetRecord`] has — so a proof that a record was used in step `s`
//! ([`UsageProof`]) is an inclusion proof into that root plus the fixed-size canonical entries
//! from step `s` to the head (93 bytes each), without any other batch's record ids.
//!
//! # Canonical encoding of an entry (93 bytes, big-endian)
//!
//! | offset | bytes | field                                              |
//! |-------:|------:|----------------------------------------------------|
//! | 0      | 8     | `step`, u64                                        |
//! | 8      | 4     | number of records in the batch, u32                |
//! | 12     | 32    | batch root (Merkle root over the record leaves)    |
//! | 44     | 8     | loss, IEEE-754 f64 bits                            |
//! | 52     | 8     | learning rate, IEEE-754 f64 bits                   |
//! | 60     | 1     | checkpoint flag: 0 none, 1 present                 |
//! | 61     | 32    | checkpoint hash (32 zero bytes when none)          |
//!
//! # File format (binary, big-endian)
//!
//! | bytes      | field                                                       |
//! |-----------:|-------------------------------------------------------------|
//! | 8          | magic `OLTLOG01`                                            |
//! | 32         | base model id                                               |
//! | 32         | adapter config hash                                         |
//! | 8          | number of entries, u64                                      |
//! | per entry: |                                                             |
//! | 93         | canonical encoding (above)                                  |
//! | 32 × n     | the batch's record ids, in order (n from the encoding)      |
//! | 32         | the head after this entry                                   |
//!
//! Loading checks only the structure (typed errors for hostile bytes); [`TrainLog::verify`]
//! recomputes every batch root and head and names the first entry that does not match.
//!
//! ```
//! use openledger_core::trainlog::{TrainLog, TrainStep};
//! use openledger_core::{B256, ContentId};
//!
//! let ids: Vec<ContentId> = (0u8..4).map(|i| ContentId::of([i])).collect();
//! let mut log = TrainLog::new(B256::repeat_byte(1), B256::repeat_byte(2));
//! log.append(TrainStep::new(0, ids[..2].to_vec(), 2.5, 1e-3))?;
//! log.append(TrainStep::new(1, ids[2..].to_vec(), 2.1, 1e-3).with_checkpoint(B256::repeat_byte(3)))?;
//! assert_eq!(log.verify()?, log.head());
//! assert_eq!(log.was_used(&ids[3]), Some(vec![1]));
//! let proof = log.prove(&ids[0], 0)?;
//! assert_eq!(proof.verify(&ids[0], log.head()), Some(0));
//! let again = TrainLog::from_bytes(&log.to_bytes())?;
//! assert_eq!(again.head(), log.head());
//! # Ok::<(), openledger_core::trainlog::TrainLogError>(())
//! ```

use crate::error::{Classify, ErrorKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use alloy_primitives::{B256, keccak256};
use thiserror::Error;

use crate::ContentId;
use crate::merkle::{self, MerkleError, MerkleTree};

/// Domain string hashed into the genesis head.
pub const GENESIS_DOMAIN: &[u8] = b"openledger.trainlog.v1";
/// Magic bytes opening a saved log.
pub const MAGIC: &[u8; 8] = b"OLTLOG01";
/// Length of an entry's canonical encoding.
pub const ENTRY_LEN: usize = 93;
const HEADER_LEN: usize = 8 + 32 + 32 + 8;

/// Errors of the training log. Appending or loading never changes a log when it fails.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TrainLogError {
    /// A step with an empty batch.
    #[error("step {step} has an empty batch")]
    EmptyBatch {
        /// The step.
        step: u64,
    },
    /// A batch larger than the encoding's u32 count.
    #[error("step {step} has {records} records (at most {max})", max = u32::MAX)]
    BatchTooLarge {
        /// The step.
        step: u64,
        /// Records given.
        records: usize,
    },
    /// Steps must increase strictly.
    #[error("step {step} does not follow step {previous}")]
    StepOutOfOrder {
        /// The step appended (or read at `entry`).
        step: u64,
        /// The previous entry's step.
        previous: u64,
    },
    /// A NaN or infinite loss or learning rate.
    #[error("step {step}: {what} is not finite ({value})")]
    NonFinite {
        /// The step.
        step: u64,
        /// `"loss"` or `"learning rate"`.
        what: &'static str,
        /// The value.
        value: f64,
    },
    /// The bytes do not start with [`MAGIC`].
    #[error("not a training log: magic {found:02x?} (expected \"OLTLOG01\")")]
    BadMagic {
        /// The first bytes found.
        found: Vec<u8>,
    },
    /// The bytes end before the structure they announce.
    #[error(
        "training log truncated in {what}: needs {expected} bytes at offset {offset}, {found} left"
    )]
    Truncated {
        /// What was being read (e.g. "entry 3 record ids").
        what: String,
        /// Offset where it starts.
        offset: usize,
        /// Bytes it needs.
        expected: usize,
        /// Bytes left.
        found: usize,
    },
    /// A checkpoint flag that is neither 0 nor 1.
    #[error("entry {entry}: checkpoint flag {flag} (expected 0 or 1)")]
    BadCheckpointFlag {
        /// 0-based entry index.
        entry: usize,
        /// The byte found.
        flag: u8,
    },
    /// A checkpoint flag of 0 with a non-zero hash (not canonical).
    #[error("entry {entry}: checkpoint hash present although the flag says none")]
    NonCanonicalCheckpoint {
        /// 0-based entry index.
        entry: usize,
    },
    /// Bytes left after the last announced entry.
    #[error("{count} trailing bytes after the last entry at offset {offset}")]
    TrailingBytes {
        /// Offset of the first extra byte.
        offset: usize,
        /// How many.
        count: usize,
    },
    /// [`TrainLog::verify`] found an entry whose stored data does not match the chain.
    #[error("entry {entry} (step {step}) is corrupt: {what}")]
    Tampered {
        /// 0-based index of the first bad entry.
        entry: usize,
        /// The step it claims.
        step: u64,
        /// Which check failed.
        what: Tamper,
    },
    /// No entry logs this step.
    #[error("no entry for step {step}")]
    UnknownStep {
        /// The step asked for.
        step: u64,
    },
    /// The record is not in the batch of this step.
    #[error("record {record} was not used in step {step}")]
    NotInBatch {
        /// The record.
        record: ContentId,
        /// The step.
        step: u64,
    },
    /// Reading or writing a log file failed.
    #[error("training log {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A Merkle operation refused its input.
    #[error(transparent)]
    Merkle(#[from] MerkleError),
}

impl Classify for TrainLogError {
    fn kind(&self) -> ErrorKind {
        match self {
            TrainLogError::EmptyBatch { .. }
            | TrainLogError::BatchTooLarge { .. }
            | TrainLogError::StepOutOfOrder { .. }
            | TrainLogError::NonFinite { .. }
            | TrainLogError::NotInBatch { .. } => ErrorKind::InvalidArgument,
            TrainLogError::BadMagic { .. }
            | TrainLogError::Truncated { .. }
            | TrainLogError::BadCheckpointFlag { .. }
            | TrainLogError::NonCanonicalCheckpoint { .. }
            | TrainLogError::TrailingBytes { .. }
            | TrainLogError::Tampered { .. } => ErrorKind::Integrity,
            TrainLogError::UnknownStep { .. } => ErrorKind::UnknownId,
            TrainLogError::Io { source, .. } => ErrorKind::of_io(source),
            TrainLogError::Merkle(e) => e.kind(),
        }
    }

    fn io_source(&self) -> Option<(&std::path::Path, &std::io::Error)> {
        match self {
            TrainLogError::Io { path, source } => Some((path, source)),
            _ => None,
        }
    }
}

/// Which check a corrupt entry failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// The stored batch root is not the root over the stored record ids.
    BatchRoot,
    /// The stored head is not `keccak256(previous head ‖ entry)`.
    Head,
    /// Its step does not follow the previous entry's step.
    StepOrder,
    /// Its batch is empty or its loss / learning rate is not finite.
    Invalid,
}

impl std::fmt::Display for Tamper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::BatchRoot => "batch root does not match the record ids",
            Self::Head => "head does not chain from the previous head",
            Self::StepOrder => "step does not follow the previous step",
            Self::Invalid => "empty batch or non-finite loss / learning rate",
        })
    }
}

/// One optimizer step, as the trainer reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainStep {
    /// The optimizer step number.
    pub step: u64,
    /// The records in the batch, in batch order (repeats allowed).
    pub records: Vec<ContentId>,
    /// The batch loss.
    pub loss: f64,
    /// The learning rate applied at this step.
    pub learning_rate: f64,
    /// Hash of the checkpoint written after this step, if any.
    pub checkpoint: Option<B256>,
}

impl TrainStep {
    /// A step without a checkpoint.
    pub fn new(step: u64, records: Vec<ContentId>, loss: f64, learning_rate: f64) -> Self {
        Self {
            step,
            records,
            loss,
            learning_rate,
            checkpoint: None,
        }
    }

    /// The same step, with a checkpoint hash.
    pub fn with_checkpoint(mut self, hash: B256) -> Self {
        self.checkpoint = Some(hash);
        self
    }
}

/// The fixed-size part of an entry: what the hash chain commits to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntryHeader {
    /// The optimizer step.
    pub step: u64,
    /// Records in the batch.
    pub record_count: u32,
    /// Merkle root over the batch's record leaves.
    pub batch_root: B256,
    /// The batch loss.
    pub loss: f64,
    /// The learning rate.
    pub learning_rate: f64,
    /// The checkpoint hash, if any.
    pub checkpoint: Option<B256>,
}

impl EntryHeader {
    /// The canonical 93-byte encoding (see the module doc).
    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[0..8].copy_from_slice(&self.step.to_be_bytes());
        b[8..12].copy_from_slice(&self.record_count.to_be_bytes());
        b[12..44].copy_from_slice(self.batch_root.as_slice());
        b[44..52].copy_from_slice(&self.loss.to_bits().to_be_bytes());
        b[52..60].copy_from_slice(&self.learning_rate.to_bits().to_be_bytes());
        if let Some(c) = self.checkpoint {
            b[60] = 1;
            b[61..93].copy_from_slice(c.as_slice());
        }
        b
    }

    /// Decodes a canonical encoding; `entry` names it in errors.
    pub fn decode(b: &[u8; ENTRY_LEN], entry: usize) -> Result<Self, TrainLogError> {
        let be8 = |r: std::ops::Range<usize>| -> [u8; 8] { b[r].try_into().unwrap_or([0; 8]) };
        let be4 = |r: std::ops::Range<usize>| -> [u8; 4] { b[r].try_into().unwrap_or([0; 4]) };
        let checkpoint = match b[60] {
            0 if b[61..].iter().all(|&x| x == 0) => None,
            0 => return Err(TrainLogError::NonCanonicalCheckpoint { entry }),
            1 => Some(B256::from_slice(&b[61..93])),
            flag => return Err(TrainLogError::BadCheckpointFlag { entry, flag }),
        };
        Ok(Self {
            step: u64::from_be_bytes(be8(0..8)),
            record_count: u32::from_be_bytes(be4(8..12)),
            batch_root: B256::from_slice(&b[12..44]),
            loss: f64::from_bits(u64::from_be_bytes(be8(44..52))),
            learning_rate: f64::from_bits(u64::from_be_bytes(be8(52..60))),
            checkpoint,
        })
    }

    /// The head after this entry: `keccak256(prev ‖ encode())`.
    pub fn chain(&self, prev: B256) -> B256 {
        let mut buf = [0u8; 32 + ENTRY_LEN];
        buf[..32].copy_from_slice(prev.as_slice());
        buf[32..].copy_from_slice(&self.encode());
        keccak256(buf)
    }
}

/// One logged step: the trainer's step, its batch root and the head after it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedStep {
    /// The step as reported.
    pub step: TrainStep,
    /// Merkle root over the batch's record leaves (as stored).
    pub batch_root: B256,
    /// The head after this step (as stored).
    pub head: B256,
}

impl LoggedStep {
    /// The fixed-size header the chain commits to.
    pub fn header(&self) -> EntryHeader {
        EntryHeader {
            step: self.step.step,
            record_count: self.step.records.len() as u32,
            batch_root: self.batch_root,
            loss: self.step.loss,
            learning_rate: self.step.learning_rate,
            checkpoint: self.step.checkpoint,
        }
    }
}

/// The Merkle leaf of a record id in a batch: `keccak256(keccak256(id))`, the datanet leaf.
pub fn record_leaf(id: &ContentId) -> B256 {
    keccak256(keccak256(id.0))
}

/// The batch root over `records` (none for an empty batch).
pub fn batch_root(records: &[ContentId]) -> Result<B256, MerkleError> {
    let leaves: Vec<B256> = records.iter().map(record_leaf).collect();
    Ok(MerkleTree::new(&leaves)?.root())
}

/// The genesis head of a log for `base_model` fine-tuned with the adapter config hashing to
/// `adapter_config_hash`.
pub fn genesis(base_model: B256, adapter_config_hash: B256) -> B256 {
    let mut buf = Vec::with_capacity(GENESIS_DOMAIN.len() + 64);
    buf.extend_from_slice(GENESIS_DOMAIN);
    buf.extend_from_slice(base_model.as_slice());
    buf.extend_from_slice(adapter_config_hash.as_slice());
    keccak256(buf)
}

/// The proof that a record was in the batch of step `header.step`, checkable against a log's
/// head alone.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageProof {
    /// The head before the step.
    pub prev_head: B256,
    /// The step's entry.
    pub header: EntryHeader,
    /// Position of the record in the batch.
    pub position: usize,
    /// Merkle proof of the record's leaf against `header.batch_root`.
    pub inclusion: Vec<B256>,
    /// The entries after the step, in order, to chain up to the head.
    pub later: Vec<EntryHeader>,
}

impl UsageProof {
    /// The step the proof shows `record` was used in, if it leads to `head`.
    pub fn verify(&self, record: &ContentId, head: B256) -> Option<u64> {
        if !merkle::verify_proof(self.header.batch_root, record_leaf(record), &self.inclusion) {
            return None;
        }
        if self.position >= self.header.record_count as usize {
            return None;
        }
        let mut h = self.header.chain(self.prev_head);
        let mut prev_step = self.header.step;
        for e in &self.later {
            if e.step <= prev_step {
                return None;
            }
            prev_step = e.step;
            h = e.chain(h);
        }
        (h == head).then_some(self.header.step)
    }

    /// Its size in bytes as [`UsageProof::to_bytes`] writes it.
    pub fn encoded_len(&self) -> usize {
        32 + ENTRY_LEN + 8 + 4 + 32 * self.inclusion.len() + 4 + ENTRY_LEN * self.later.len()
    }

    /// The proof as bytes, to send to whoever checks it (big-endian): the head before the step
    /// (32), the step's entry (93), the record's position in the batch (u64), the number of
    /// inclusion hashes (u32) and the hashes (32 each), the number of later entries (u32) and
    /// the entries (93 each).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(self.prev_head.as_slice());
        out.extend_from_slice(&self.header.encode());
        out.extend_from_slice(&(self.position as u64).to_be_bytes());
        out.extend_from_slice(&(self.inclusion.len() as u32).to_be_bytes());
        for h in &self.inclusion {
            out.extend_from_slice(h.as_slice());
        }
        out.extend_from_slice(&(self.later.len() as u32).to_be_bytes());
        for e in &self.later {
            out.extend_from_slice(&e.encode());
        }
        out
    }

    /// Reads [`UsageProof::to_bytes`]; truncated, oversized or non-canonical bytes are a typed
    /// error (counts are checked against the bytes present before anything is allocated).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TrainLogError> {
        let mut at = 0usize;
        let mut take = |n: usize, what: &str| -> Result<&[u8], TrainLogError> {
            let left = bytes.len() - at;
            if n > left {
                return Err(TrainLogError::Truncated {
                    what: format!("usage proof {what}"),
                    offset: at,
                    expected: n,
                    found: left,
                });
            }
            let s = &bytes[at..at + n];
            at += n;
            Ok(s)
        };
        let entry = |b: &[u8], i: usize| -> Result<EntryHeader, TrainLogError> {
            let arr: &[u8; ENTRY_LEN] = b.try_into().expect("sized by take");
            EntryHeader::decode(arr, i)
        };
        let prev_head = B256::from_slice(take(32, "head")?);
        let header = entry(take(ENTRY_LEN, "entry")?, 0)?;
        let position = u64::from_be_bytes(take(8, "position")?.try_into().expect("8 bytes"));
        let n = u32::from_be_bytes(take(4, "inclusion count")?.try_into().expect("4 bytes"));
        let inclusion = take(32 * n as usize, "inclusion hashes")?
            .chunks_exact(32)
            .map(B256::from_slice)
            .collect();
        let m = u32::from_be_bytes(take(4, "entry count")?.try_into().expect("4 bytes"));
        let later = take(ENTRY_LEN * m as usize, "later entries")?
            .chunks_exact(ENTRY_LEN)
            .enumerate()
            .map(|(i, b)| entry(b, i + 1))
            .collect::<Result<_, _>>()?;
        if at != bytes.len() {
            return Err(TrainLogError::TrailingBytes {
                offset: at,
                count: bytes.len() - at,
            });
        }
        Ok(Self {
            prev_head,
            header,
            position: usize::try_from(position).unwrap_or(usize::MAX),
            inclusion,
            later,
        })
    }
}

/// An append-only, hash-chained training log.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainLog {
    base_model: B256,
    adapter_config_hash: B256,
    entries: Vec<LoggedStep>,
}

impl TrainLog {
    /// An empty log for `base_model` and the adapter config hashing to `adapter_config_hash`.
    pub fn new(base_model: B256, adapter_config_hash: B256) -> Self {
        Self {
            base_model,
            adapter_config_hash,
            entries: Vec::new(),
        }
    }

    /// The base model id.
    pub fn base_model(&self) -> B256 {
        self.base_model
    }

    /// The adapter config hash.
    pub fn adapter_config_hash(&self) -> B256 {
        self.adapter_config_hash
    }

    /// The genesis head.
    pub fn genesis(&self) -> B256 {
        genesis(self.base_model, self.adapter_config_hash)
    }

    /// The current head (the genesis when empty): the value registered as `trainingLogHead`.
    pub fn head(&self) -> B256 {
        self.entries
            .last()
            .map_or_else(|| self.genesis(), |e| e.head)
    }

    /// The logged steps, oldest first.
    pub fn entries(&self) -> &[LoggedStep] {
        &self.entries
    }

    /// Number of logged steps.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was logged.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn validate(step: &TrainStep, previous: Option<u64>) -> Result<(), TrainLogError> {
        if step.records.is_empty() {
            return Err(TrainLogError::EmptyBatch { step: step.step });
        }
        if step.records.len() > u32::MAX as usize {
            return Err(TrainLogError::BatchTooLarge {
                step: step.step,
                records: step.records.len(),
            });
        }
        if let Some(previous) = previous
            && step.step <= previous
        {
            return Err(TrainLogError::StepOutOfOrder {
                step: step.step,
                previous,
            });
        }
        if !step.loss.is_finite() {
            return Err(TrainLogError::NonFinite {
                step: step.step,
                what: "loss",
                value: step.loss,
            });
        }
        if !step.learning_rate.is_finite() {
            return Err(TrainLogError::NonFinite {
                step: step.step,
                what: "learning rate",
                value: step.learning_rate,
            });
        }
        Ok(())
    }

    /// Appends a step and returns the new head. Steps must increase strictly, batches be
    /// non-empty, loss and learning rate finite.
    pub fn append(&mut self, step: TrainStep) -> Result<B256, TrainLogError> {
        Self::validate(&step, self.entries.last().map(|e| e.step.step))?;
        let root = batch_root(&step.records)?;
        let mut logged = LoggedStep {
            step,
            batch_root: root,
            head: B256::ZERO,
        };
        logged.head = logged.header().chain(self.head());
        let head = logged.head;
        self.entries.push(logged);
        Ok(head)
    }

    /// Recomputes every batch root and head from the genesis; returns the head, or
    /// [`TrainLogError::Tampered`] naming the first entry that does not match.
    pub fn verify(&self) -> Result<B256, TrainLogError> {
        let mut prev = self.genesis();
        let mut prev_step = None;
        for (i, e) in self.entries.iter().enumerate() {
            let bad = |what| TrainLogError::Tampered {
                entry: i,
                step: e.step.step,
                what,
            };
            match Self::validate(&e.step, prev_step) {
                Ok(()) => {}
                Err(TrainLogError::StepOutOfOrder { .. }) => return Err(bad(Tamper::StepOrder)),
                Err(_) => return Err(bad(Tamper::Invalid)),
            }
            if batch_root(&e.step.records)? != e.batch_root {
                return Err(bad(Tamper::BatchRoot));
            }
            let head = e.header().chain(prev);
            if head != e.head {
                return Err(bad(Tamper::Head));
            }
            prev = head;
            prev_step = Some(e.step.step);
        }
        Ok(prev)
    }

    /// The steps whose batch held `record`, in order; `None` if it was never used.
    pub fn was_used(&self, record: &ContentId) -> Option<Vec<u64>> {
        let steps: Vec<u64> = self
            .entries
            .iter()
            .filter(|e| e.step.records.contains(record))
            .map(|e| e.step.step)
            .collect();
        (!steps.is_empty()).then_some(steps)
    }

    /// For every record, the steps that used it (one pass over the log).
    pub fn usage(&self) -> HashMap<ContentId, Vec<u64>> {
        let mut out: HashMap<ContentId, Vec<u64>> = HashMap::new();
        for e in &self.entries {
            for r in &e.step.records {
                let steps = out.entry(*r).or_default();
                if steps.last() != Some(&e.step.step) {
                    steps.push(e.step.step);
                }
            }
        }
        out
    }

    /// The proof that `record` was in the batch of `step`, checkable against [`Self::head`].
    pub fn prove(&self, record: &ContentId, step: u64) -> Result<UsageProof, TrainLogError> {
        let i = self
            .entries
            .binary_search_by_key(&step, |e| e.step.step)
            .map_err(|_| TrainLogError::UnknownStep { step })?;
        let e = &self.entries[i];
        let position =
            e.step
                .records
                .iter()
                .position(|r| r == record)
                .ok_or(TrainLogError::NotInBatch {
                    record: *record,
                    step,
                })?;
        let leaves: Vec<B256> = e.step.records.iter().map(record_leaf).collect();
        let inclusion = MerkleTree::new(&leaves)?.proof(position)?;
        let prev_head = if i == 0 {
            self.genesis()
        } else {
            self.entries[i - 1].head
        };
        Ok(UsageProof {
            prev_head,
            header: e.header(),
            position,
            inclusion,
            later: self.entries[i + 1..].iter().map(|e| e.header()).collect(),
        })
    }

    /// The binary file encoding (see the module doc).
    pub fn to_bytes(&self) -> Vec<u8> {
        let body: usize = self
            .entries
            .iter()
            .map(|e| ENTRY_LEN + 32 * e.step.records.len() + 32)
            .sum();
        let mut out = Vec::with_capacity(HEADER_LEN + body);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(self.base_model.as_slice());
        out.extend_from_slice(self.adapter_config_hash.as_slice());
        out.extend_from_slice(&(self.entries.len() as u64).to_be_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.header().encode());
            for r in &e.step.records {
                out.extend_from_slice(r.as_bytes());
            }
            out.extend_from_slice(e.head.as_slice());
        }
        out
    }

    /// Decodes the binary file encoding. Only the structure is checked here; call
    /// [`Self::verify`] to check the chain.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TrainLogError> {
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.take(8, || "magic".into())?;
        if magic != MAGIC {
            return Err(TrainLogError::BadMagic {
                found: magic.to_vec(),
            });
        }
        let base_model = B256::from_slice(r.take(32, || "base model id".into())?);
        let adapter_config_hash = B256::from_slice(r.take(32, || "adapter config hash".into())?);
        let count = u64::from_be_bytes(r.array(|| "entry count".into())?);
        // Each entry takes at least ENTRY_LEN + 64 bytes: never trust `count` for allocation.
        let cap = (r.left() / (ENTRY_LEN + 64)).min(count.min(usize::MAX as u64) as usize);
        let mut entries = Vec::with_capacity(cap);
        for i in 0..count {
            let i = i as usize;
            let raw: [u8; ENTRY_LEN] = r.array(|| format!("entry {i} header"))?;
            let h = EntryHeader::decode(&raw, i)?;
            let n = h.record_count as usize;
            let ids = r.take(n.saturating_mul(32), || format!("entry {i} record ids"))?;
            let records = ids
                .chunks_exact(32)
                .map(|c| ContentId(B256::from_slice(c)))
                .collect();
            let head = B256::from_slice(r.take(32, || format!("entry {i} head"))?);
            entries.push(LoggedStep {
                step: TrainStep {
                    step: h.step,
                    records,
                    loss: h.loss,
                    learning_rate: h.learning_rate,
                    checkpoint: h.checkpoint,
                },
                batch_root: h.batch_root,
                head,
            });
        }
        if r.left() != 0 {
            return Err(TrainLogError::TrailingBytes {
                offset: r.pos,
                count: r.left(),
            });
        }
        Ok(Self {
            base_model,
            adapter_config_hash,
            entries,
        })
    }

    /// Writes the log to `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), TrainLogError> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()).map_err(|source| TrainLogError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads a log written by [`Self::save`] (structure checked; see [`Self::verify`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TrainLogError> {
        let path = path.as_ref();
        let bytes =
            crate::fsx::read_regular(path, crate::fsx::MAX_LOG_BYTES).map_err(|source| {
                TrainLogError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        Self::from_bytes(&bytes)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: impl Fn() -> String) -> Result<&'a [u8], TrainLogError> {
        if self.left() < n {
            return Err(TrainLogError::Truncated {
                what: what(),
                offset: self.pos,
                expected: n,
                found: self.left(),
            });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(
        &mut self,
        what: impl Fn() -> String,
    ) -> Result<[u8; N], TrainLogError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
}

#[cfg(test)]
#[path = "trainlog_tests.rs"]
mod tests;
