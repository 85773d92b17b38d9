//! Datanets: versioned, community-built collections of records, each with its contributor,
//! metadata, license and content hash, committed version by version as a Merkle root.
//!
//! A datanet is append-only: version `v` is the first `record_count` records at the time it was
//! committed, and its root is the OpenZeppelin Merkle root (see [`crate::merkle`]) over the
//! records' standard leaves `keccak256(keccak256(abi.encode(bytes32 hash)))` in insertion order,
//! so `MerkleProof.sol` verifies [`Datanet::inclusion_proof`] on chain. Records whose content hash
//! is already present are exact duplicates and are not stored twice.
//!
//! ```
//! use openledger_core::datanet::{Datanet, Insert};
//!
//! let jsonl = r#"{"content":"Aspirin inhibits COX-1.","contributor":"0x1111111111111111111111111111111111111111","license":"CC-BY-4.0","metadata":{"lang":"en"}}
//! {"content":"Aspirin inhibits COX-1.","contributor":"0x2222222222222222222222222222222222222222","license":"CC-BY-4.0"}"#;
//! let mut net = Datanet::new("medicine");
//! let report = net.import_jsonl(jsonl.as_bytes()).unwrap();
//! assert_eq!(report.added, 1);
//! assert_eq!(report.duplicates, vec![(2, 0)]); // line 2 repeats record 0
//! let v1 = net.commit().unwrap();
//! let proof = net.inclusion_proof(v1.number, 0).unwrap();
//! assert!(openledger_core::merkle::verify_proof(v1.root, net.records()[0].leaf(), &proof));
//! ```

use crate::error::{Classify, ErrorKind};
use std::collections::HashMap;
use std::io::{BufRead, Write};

use alloy_primitives::{Address, B256};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::ContentId;
use crate::merkle::{MerkleError, MerkleTree};
use crate::trainlog::record_leaf;

/// Errors of datanet import, export and versioning; nothing already in the datanet is changed
/// when one is returned.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DatanetError {
    /// A JSONL line that is not a valid record (bad JSON, wrong field type, unknown field).
    #[error("line {line}: {reason}")]
    InvalidLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A line whose `hash` field is not the keccak-256 of its `content`.
    #[error("line {line}: hash {found} does not match the content (expected {expected})")]
    HashMismatch {
        /// 1-based line number.
        line: usize,
        /// The hash of the content.
        expected: ContentId,
        /// The hash the line claims.
        found: ContentId,
    },
    /// Reading or writing JSONL failed.
    #[error("I/O error at line {line}: {source}")]
    Io {
        /// 1-based line number being read or written.
        line: usize,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A version needs at least one record.
    #[error("datanet {name:?} has no records to commit")]
    Empty {
        /// The datanet's name.
        name: String,
    },
    /// A version number that was never committed.
    #[error("datanet has no version {version} (latest is {latest})")]
    UnknownVersion {
        /// The version asked for.
        version: u32,
        /// The latest committed version (0 when none).
        latest: u32,
    },
    /// A Merkle operation refused its input (e.g. a record index outside the version).
    #[error(transparent)]
    Merkle(#[from] MerkleError),
}

impl Classify for DatanetError {
    fn kind(&self) -> ErrorKind {
        match self {
            DatanetError::InvalidLine { .. } | DatanetError::Empty { .. } => {
                ErrorKind::InvalidArgument
            }
            DatanetError::HashMismatch { .. } => ErrorKind::Integrity,
            DatanetError::Io { source, .. } => ErrorKind::of_io(source),
            DatanetError::UnknownVersion { .. } => ErrorKind::UnknownId,
            DatanetError::Merkle(e) => e.kind(),
        }
    }
}

/// One record of a datanet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatanetRecord {
    /// The record's text.
    pub content: String,
    /// Who contributed it (and is paid for its influence).
    pub contributor: Address,
    /// Free-form metadata (a JSON object).
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// The license the contributor granted (an SPDX id or a URL).
    pub license: String,
    /// keccak-256 of `content` (computed on import; checked when present).
    pub hash: ContentId,
}

impl DatanetRecord {
    /// A record, its hash computed from `content`.
    pub fn new(
        content: impl Into<String>,
        contributor: Address,
        metadata: Map<String, Value>,
        license: impl Into<String>,
    ) -> Self {
        let content = content.into();
        Self {
            hash: ContentId::of(content.as_bytes()),
            content,
            contributor,
            metadata,
            license: license.into(),
        }
    }

    /// The Merkle leaf of this record: `keccak256(keccak256(hash))` (OpenZeppelin standard leaf
    /// of the single value `bytes32 hash`).
    pub fn leaf(&self) -> B256 {
        record_leaf(&self.hash)
    }
}

/// One committed version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatanetVersion {
    /// 1-based version number.
    pub number: u32,
    /// Records `0..record_count` belong to this version.
    pub record_count: usize,
    /// Merkle root over their leaves.
    pub root: B256,
}

/// The outcome of inserting one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// Stored at this index.
    New(usize),
    /// An exact duplicate (same content hash) of the record at this index; not stored.
    Duplicate(usize),
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Records added.
    pub added: usize,
    /// `(line, index of the existing record)` for every exact duplicate skipped.
    pub duplicates: Vec<(usize, usize)>,
}

/// A versioned collection of records.
#[derive(Clone, Debug, Default)]
pub struct Datanet {
    name: String,
    records: Vec<DatanetRecord>,
    by_hash: HashMap<ContentId, usize>,
    versions: Vec<DatanetVersion>,
}

/// The JSONL shape of a record: `hash` is optional on import.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordLine {
    content: String,
    contributor: Address,
    #[serde(default)]
    metadata: Option<Value>,
    license: String,
    #[serde(default)]
    hash: Option<ContentId>,
}

impl Datanet {
    /// An empty datanet.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// All records, in insertion order.
    pub fn records(&self) -> &[DatanetRecord] {
        &self.records
    }

    /// The record with content hash `hash`, if any.
    pub fn get(&self, hash: &ContentId) -> Option<&DatanetRecord> {
        self.by_hash.get(hash).map(|&i| &self.records[i])
    }

    /// Committed versions, oldest first.
    pub fn versions(&self) -> &[DatanetVersion] {
        &self.versions
    }

    /// Adds a record unless its content hash is already present.
    pub fn insert(&mut self, record: DatanetRecord) -> Insert {
        if let Some(&i) = self.by_hash.get(&record.hash) {
            return Insert::Duplicate(i);
        }
        let i = self.records.len();
        self.by_hash.insert(record.hash, i);
        self.records.push(record);
        Insert::New(i)
    }

    /// Imports JSONL, one record per line (blank lines skipped). Every line is parsed and checked
    /// before any is inserted, so a bad line leaves the datanet unchanged.
    pub fn import_jsonl(&mut self, reader: impl BufRead) -> Result<ImportReport, DatanetError> {
        let mut parsed = Vec::new();
        for (i, line) in reader.lines().enumerate() {
            let line_no = i + 1;
            let line = line.map_err(|source| DatanetError::Io {
                line: line_no,
                source,
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let r: RecordLine =
                serde_json::from_str(&line).map_err(|e| DatanetError::InvalidLine {
                    line: line_no,
                    reason: e.to_string(),
                })?;
            let metadata = match r.metadata {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(m)) => m,
                Some(other) => {
                    return Err(DatanetError::InvalidLine {
                        line: line_no,
                        reason: format!("metadata must be a JSON object, found {other}"),
                    });
                }
            };
            let record = DatanetRecord::new(r.content, r.contributor, metadata, r.license);
            if let Some(found) = r.hash
                && found != record.hash
            {
                return Err(DatanetError::HashMismatch {
                    line: line_no,
                    expected: record.hash,
                    found,
                });
            }
            parsed.push((line_no, record));
        }
        let mut report = ImportReport::default();
        for (line, record) in parsed {
            match self.insert(record) {
                Insert::New(_) => report.added += 1,
                Insert::Duplicate(i) => report.duplicates.push((line, i)),
            }
        }
        Ok(report)
    }

    /// Writes the records of `version` (or all records when `None`) as JSONL, hashes included.
    pub fn export_jsonl(
        &self,
        version: Option<u32>,
        mut writer: impl Write,
    ) -> Result<(), DatanetError> {
        let count = match version {
            Some(v) => self.version(v)?.record_count,
            None => self.records.len(),
        };
        for (i, r) in self.records[..count].iter().enumerate() {
            let line = serde_json::to_string(r).map_err(|e| DatanetError::InvalidLine {
                line: i + 1,
                reason: e.to_string(),
            })?;
            writeln!(writer, "{line}").map_err(|source| DatanetError::Io {
                line: i + 1,
                source,
            })?;
        }
        Ok(())
    }

    fn tree(&self, count: usize) -> Result<MerkleTree, DatanetError> {
        let leaves: Vec<B256> = self.records[..count].iter().map(|r| r.leaf()).collect();
        Ok(MerkleTree::new(&leaves)?)
    }

    /// Commits the current records as a new version and returns it.
    pub fn commit(&mut self) -> Result<DatanetVersion, DatanetError> {
        if self.records.is_empty() {
            return Err(DatanetError::Empty {
                name: self.name.clone(),
            });
        }
        let version = DatanetVersion {
            number: self.versions.len() as u32 + 1,
            record_count: self.records.len(),
            root: self.tree(self.records.len())?.root(),
        };
        self.versions.push(version);
        Ok(version)
    }

    /// The committed version `number`.
    pub fn version(&self, number: u32) -> Result<DatanetVersion, DatanetError> {
        number
            .checked_sub(1)
            .and_then(|i| self.versions.get(i as usize))
            .copied()
            .ok_or(DatanetError::UnknownVersion {
                version: number,
                latest: self.versions.len() as u32,
            })
    }

    /// The Merkle proof that record `index` belongs to version `number`.
    pub fn inclusion_proof(&self, number: u32, index: usize) -> Result<Vec<B256>, DatanetError> {
        let v = self.version(number)?;
        Ok(self.tree(v.record_count)?.proof(index)?)
    }
}

/// Whether `proof` shows that the record with content hash `hash` belongs to the datanet
/// version whose root is `root` (what a [`Datanet::inclusion_proof`] proves, and what
/// `DatanetRegistry.verifyRecord` checks on chain): the proof needs neither the datanet nor any
/// other record.
pub fn verify_record_proof(root: B256, hash: &ContentId, proof: &[B256]) -> bool {
    crate::merkle::verify_proof(root, record_leaf(hash), proof)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle;

    fn line(content: &str, who: u8) -> String {
        format!(
            r#"{{"content":{content:?},"contributor":"{}","license":"MIT","metadata":{{"n":{who}}}}}"#,
            Address::repeat_byte(who)
        )
    }

    #[test]
    fn import_export_round_trips_with_hashes() {
        let text = [line("a", 1), line("b", 2), line("c", 3)].join("\n");
        let mut net = Datanet::new("t");
        assert_eq!(net.import_jsonl(text.as_bytes()).unwrap().added, 3);
        let mut out = Vec::new();
        net.export_jsonl(None, &mut out).unwrap();
        let mut again = Datanet::new("t2");
        again.import_jsonl(out.as_slice()).unwrap();
        assert_eq!(again.records(), net.records());
        assert_eq!(net.records()[1].hash, ContentId::of(b"b"));
        assert_eq!(net.records()[1].metadata["n"], 2);
    }

    #[test]
    fn bad_line_is_named_and_nothing_is_imported() {
        let text = [line("a", 1), "{not json".to_string(), line("c", 3)].join("\n");
        let mut net = Datanet::new("t");
        let err = net.import_jsonl(text.as_bytes()).unwrap_err();
        assert!(
            matches!(err, DatanetError::InvalidLine { line: 2, .. }),
            "{err}"
        );
        assert!(net.records().is_empty());
        let bad_meta = r#"{"content":"x","contributor":"0x1111111111111111111111111111111111111111","license":"MIT","metadata":[1]}"#;
        let err = net.import_jsonl(bad_meta.as_bytes()).unwrap_err();
        assert!(
            err.to_string()
                .contains("line 1: metadata must be a JSON object"),
            "{err}"
        );
        let bad_addr = r#"{"content":"x","contributor":"0x11","license":"MIT"}"#;
        assert!(matches!(
            net.import_jsonl(bad_addr.as_bytes()),
            Err(DatanetError::InvalidLine { line: 1, .. })
        ));
    }

    #[test]
    fn wrong_hash_is_rejected() {
        let l = format!(
            r#"{{"content":"x","contributor":"{}","license":"MIT","hash":"{}"}}"#,
            Address::repeat_byte(1),
            ContentId::of(b"y")
        );
        let err = Datanet::new("t").import_jsonl(l.as_bytes()).unwrap_err();
        assert!(matches!(err, DatanetError::HashMismatch { line: 1, .. }));
    }

    #[test]
    fn exact_duplicates_are_detected_by_hash() {
        let mut net = Datanet::new("t");
        let r = DatanetRecord::new("same", Address::repeat_byte(1), Map::new(), "MIT");
        assert_eq!(net.insert(r.clone()), Insert::New(0));
        let copy = DatanetRecord {
            contributor: Address::repeat_byte(9),
            ..r
        };
        assert_eq!(net.insert(copy), Insert::Duplicate(0));
        assert_eq!(net.records().len(), 1);
    }

    #[test]
    fn versions_commit_prefixes_with_verifiable_roots() {
        let mut net = Datanet::new("t");
        assert!(matches!(net.commit(), Err(DatanetError::Empty { .. })));
        net.import_jsonl([line("a", 1), line("b", 2)].join("\n").as_bytes())
            .unwrap();
        let v1 = net.commit().unwrap();
        net.import_jsonl(line("c", 3).as_bytes()).unwrap();
        let v2 = net.commit().unwrap();
        assert_ne!(v1.root, v2.root);
        assert_eq!((v1.record_count, v2.record_count), (2, 3));
        for v in [v1, v2] {
            for i in 0..v.record_count {
                let proof = net.inclusion_proof(v.number, i).unwrap();
                assert!(merkle::verify_proof(
                    v.root,
                    net.records()[i].leaf(),
                    &proof
                ));
                let hash = net.records()[i].hash;
                assert!(verify_record_proof(v.root, &hash, &proof));
                // Another record's hash, another root, or an internal node instead of the
                // record do not verify.
                let other = net.records()[(i + 1) % v.record_count].hash;
                assert!(!verify_record_proof(v.root, &other, &proof));
                assert!(!verify_record_proof(B256::repeat_byte(9), &hash, &proof));
                let node = ContentId(net.records()[i].leaf());
                assert!(!verify_record_proof(v.root, &node, &proof));
            }
        }
        // Record 2 is not part of version 1.
        assert!(net.inclusion_proof(1, 2).is_err());
        assert!(matches!(
            net.version(3),
            Err(DatanetError::UnknownVersion {
                version: 3,
                latest: 2
            })
        ));
        let mut out = Vec::new();
        net.export_jsonl(Some(1), &mut out).unwrap();
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 2);
        // A root over one leaf is the leaf itself (OpenZeppelin layout).
        let mut one = Datanet::new("one");
        one.import_jsonl(line("z", 1).as_bytes()).unwrap();
        assert_eq!(one.commit().unwrap().root, one.records()[0].leaf());
    }
}
