//! JavaScript face of `openledger_core::datanet`: a versioned datanet of contributed records,
//! imported from JSONL, committed version by version as a Merkle root, with the proof that a
//! record belongs to a version (checkable by anyone against the root alone).

use std::sync::{Mutex, MutexGuard};

use napi::Either;
use napi::bindgen_prelude::{AsyncTask, Buffer};
use napi_derive::napi;
use openledger_core::ContentId;
use openledger_core::datanet::{
    Datanet as RustDatanet, DatanetRecord as RustRecord, DatanetVersion as RustVersion,
    ImportReport as RustReport, Insert, verify_record_proof as rust_verify,
};
use serde_json::{Map, Value};

use crate::error::{JsResult, Result, invalid_arg};
use crate::task::task;
use crate::types::{Bytes, address, address_str, b256, b256_str};

/// One record of a datanet.
#[napi(object)]
pub struct DatanetRecord {
    /// The record's text.
    pub content: String,
    /// Who contributed it (checksummed).
    pub contributor: String,
    /// The license the contributor granted.
    pub license: String,
    /// Free-form metadata.
    pub metadata: Map<String, Value>,
    /// keccak-256 of the content (`0x` hex).
    pub hash: String,
}

fn record(r: &RustRecord) -> DatanetRecord {
    DatanetRecord {
        content: r.content.clone(),
        contributor: address_str(&r.contributor),
        license: r.license.clone(),
        metadata: r.metadata.clone(),
        hash: r.hash.to_string(),
    }
}

/// One committed version: records `0..recordCount`, and their Merkle root.
#[napi(object)]
pub struct DatanetVersion {
    /// 1-based version number.
    pub number: u32,
    /// Records in this version.
    pub record_count: f64,
    /// Merkle root over their leaves (`0x` hex).
    pub root: String,
}

fn version(v: &RustVersion) -> DatanetVersion {
    DatanetVersion {
        number: v.number,
        record_count: v.record_count as f64,
        root: b256_str(&v.root),
    }
}

/// An exact duplicate skipped by an import.
#[napi(object)]
pub struct Duplicate {
    /// Its line (1-based).
    pub line: f64,
    /// The index of the record it repeats.
    pub index: f64,
}

/// What an import did.
#[napi(object)]
pub struct ImportReport {
    /// Records added.
    pub added: f64,
    /// Lines skipped as exact duplicates of a record already held.
    pub duplicates: Vec<Duplicate>,
}

fn report(r: &RustReport) -> ImportReport {
    ImportReport {
        added: r.added as f64,
        duplicates: r
            .duplicates
            .iter()
            .map(|&(line, index)| Duplicate {
                line: line as f64,
                index: index as f64,
            })
            .collect(),
    }
}

/// Where a record was added, or the record it repeats.
#[napi(object)]
pub struct Added {
    /// Its index (or the index of the record with the same content).
    pub index: f64,
    /// False when a record with the same content was already there.
    pub added: bool,
}

task!(
    /// Resolves to an `ImportReport`.
    ImportTask => ImportReport
);

/// A versioned collection of records, each with its contributor, license, metadata and content
/// hash; exact duplicates (same content hash) are stored once.
#[napi]
pub struct Datanet {
    inner: std::sync::Arc<Mutex<RustDatanet>>,
}

impl Datanet {
    fn lock(&self) -> MutexGuard<'_, RustDatanet> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the datanet as it is now.
    pub(crate) fn snapshot(&self) -> RustDatanet {
        self.lock().clone()
    }
}

#[napi]
impl Datanet {
    /// An empty datanet called `name`.
    #[napi(constructor, catch_unwind)]
    pub fn new(name: String) -> Self {
        Self {
            inner: std::sync::Arc::new(Mutex::new(RustDatanet::new(name))),
        }
    }

    /// The datanet's name.
    #[napi(getter, catch_unwind)]
    pub fn name(&self) -> String {
        self.lock().name().to_string()
    }

    /// Records held.
    #[napi(getter, catch_unwind)]
    pub fn length(&self) -> f64 {
        self.lock().records().len() as f64
    }

    /// Imports JSONL (a string or a Buffer), one record per line: `content`, `contributor`,
    /// `license`, optional `metadata` (an object) and `hash` (checked when present). Every
    /// line is checked before any is added: a bad line throws and leaves the datanet as it was.
    #[napi(catch_unwind)]
    pub fn import_jsonl(&self, data: Either<String, Buffer>) -> Result<ImportReport> {
        let bytes: Vec<u8> = match data {
            Either::A(s) => s.into_bytes(),
            Either::B(b) => b.to_vec(),
        };
        Ok(report(&self.lock().import_jsonl(&bytes[..]).js()?))
    }

    /// Imports the JSONL file at `path` (see `importJsonl`); resolves to the import report.
    #[napi(catch_unwind)]
    pub fn import_file(&self, path: String) -> AsyncTask<ImportTask> {
        let inner = self.inner.clone();
        ImportTask::spawn(move || {
            let bytes = openledger_core::fsx::read_regular(
                std::path::Path::new(&path),
                openledger_core::fsx::MAX_JSONL_BYTES,
            )
            .map_err(|e| crate::error::io(&path, &e))?;
            let mut net = inner.lock().unwrap_or_else(|p| p.into_inner());
            Ok(report(&net.import_jsonl(&bytes[..]).js()?))
        })
    }

    /// Adds one record (its hash computed from `content`).
    #[napi(catch_unwind)]
    pub fn add(
        &self,
        content: String,
        contributor: Bytes,
        license: String,
        metadata: Option<Map<String, Value>>,
    ) -> Result<Added> {
        let contributor = address("contributor", &contributor)?;
        let r = RustRecord::new(content, contributor, metadata.unwrap_or_default(), license);
        Ok(match self.lock().insert(r) {
            Insert::New(i) => Added {
                index: i as f64,
                added: true,
            },
            Insert::Duplicate(i) => Added {
                index: i as f64,
                added: false,
            },
        })
    }

    /// The records of `version` (all records when omitted) as JSONL, hashes included.
    #[napi(catch_unwind)]
    pub fn export_jsonl(&self, version: Option<u32>) -> Result<String> {
        let mut out = Vec::new();
        self.lock().export_jsonl(version, &mut out).js()?;
        Ok(String::from_utf8(out).unwrap_or_default())
    }

    /// Commits the records as a new version.
    #[napi(catch_unwind)]
    pub fn commit(&self) -> Result<DatanetVersion> {
        Ok(version(&self.lock().commit().js()?))
    }

    /// Version `number` (1-based).
    #[napi(catch_unwind)]
    pub fn version(&self, number: u32) -> Result<DatanetVersion> {
        Ok(version(&self.lock().version(number).js()?))
    }

    /// Every committed version, oldest first.
    #[napi(getter, catch_unwind)]
    pub fn versions(&self) -> Vec<DatanetVersion> {
        self.lock().versions().iter().map(version).collect()
    }

    /// Record `index`.
    #[napi(catch_unwind)]
    pub fn record(&self, index: u32) -> Result<DatanetRecord> {
        let net = self.lock();
        let r = net.records().get(index as usize).ok_or_else(|| {
            invalid_arg(
                "index",
                format!(
                    "{index} is out of range for {} records",
                    net.records().len()
                ),
            )
        })?;
        Ok(record(r))
    }

    /// Every record, in insertion order.
    #[napi(catch_unwind)]
    pub fn records(&self) -> Vec<DatanetRecord> {
        self.lock().records().iter().map(record).collect()
    }

    /// The record whose content hash is `hash`, or null.
    #[napi(catch_unwind)]
    pub fn get(&self, hash: Bytes) -> Result<Option<DatanetRecord>> {
        let h = ContentId(b256("hash", &hash)?);
        Ok(self.lock().get(&h).map(record))
    }

    /// The Merkle proof (hex hashes) that record `index` belongs to version `version`.
    #[napi(catch_unwind)]
    pub fn inclusion_proof(&self, version: u32, index: u32) -> Result<Vec<String>> {
        let proof = self.lock().inclusion_proof(version, index as usize).js()?;
        Ok(proof.iter().map(b256_str).collect())
    }
}

/// Whether `proof` shows that the record with content hash `hash` belongs to the datanet
/// version whose root is `root` (what `Datanet.inclusionProof` proves and
/// `DatanetRegistry.verifyRecord` checks on chain).
#[napi(catch_unwind)]
pub fn verify_record_proof(root: Bytes, hash: Bytes, proof: Vec<Bytes>) -> Result<bool> {
    let root = b256("root", &root)?;
    let hash = ContentId(b256("hash", &hash)?);
    let proof = proof
        .iter()
        .enumerate()
        .map(|(i, h)| b256(&format!("proof[{i}]"), h))
        .collect::<Result<Vec<_>>>()?;
    Ok(rust_verify(root, &hash, &proof))
}
