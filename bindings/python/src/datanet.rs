//! Python face of `openledger_core::datanet`: a versioned datanet of contributed records,
//! imported from JSONL, committed version by version as a Merkle root, with the proof that a
//! record belongs to a version (checkable by anyone against the root alone).

use std::io::BufReader;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use openledger_core::ContentId;
use openledger_core::datanet::{
    Datanet, DatanetRecord, DatanetVersion, Insert, verify_record_proof,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use serde_json::{Map, Value};

use crate::error::{Result, invalid_arg};
use crate::types::{address, address_str, b256, b256_str};

/// A Python dict of a record: `content`, `contributor`, `license`, `metadata` (a dict) and
/// `hash`.
fn record<'py>(py: Python<'py>, r: &DatanetRecord) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("content", &r.content)?;
    d.set_item("contributor", address_str(&r.contributor))?;
    d.set_item("license", &r.license)?;
    let json = py.import("json")?;
    d.set_item(
        "metadata",
        json.call_method1("loads", (Value::Object(r.metadata.clone()).to_string(),))?,
    )?;
    d.set_item("hash", r.hash.to_string())?;
    Ok(d)
}

/// A Python dict of a version: `number`, `record_count`, `root`.
pub(crate) fn version<'py>(py: Python<'py>, v: &DatanetVersion) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("number", v.number)?;
    d.set_item("record_count", v.record_count)?;
    d.set_item("root", b256_str(&v.root))?;
    Ok(d)
}

/// Text given as `str` or UTF-8 `bytes`.
fn text(name: &str, obj: &Bound<'_, PyAny>) -> Result<String> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(s.to_cow()?.into_owned());
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return String::from_utf8(b.as_bytes().to_vec())
            .map_err(|e| invalid_arg(name, format!("not UTF-8: {e}")));
    }
    let ty = obj.get_type().name()?;
    Err(invalid_arg(
        name,
        format!("expected str or bytes, found {ty}"),
    ))
}

/// A versioned collection of records, each with its contributor, license, metadata and content
/// hash; exact duplicates (same content hash) are stored once.
#[pyclass(name = "Datanet", module = "openledger", frozen)]
pub struct PyDatanet {
    inner: Mutex<Datanet>,
}

impl PyDatanet {
    fn lock(&self) -> MutexGuard<'_, Datanet> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the datanet as it is now.
    pub(crate) fn snapshot(&self) -> Datanet {
        self.lock().clone()
    }
}

/// What an import did: `{"added": n, "duplicates": [(line, index of the existing record)]}`.
fn import_report<'py>(
    py: Python<'py>,
    r: &openledger_core::datanet::ImportReport,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("added", r.added)?;
    d.set_item("duplicates", r.duplicates.clone())?;
    Ok(d)
}

#[pymethods]
impl PyDatanet {
    /// An empty datanet called `name`.
    #[new]
    fn new(name: &str) -> Self {
        Self {
            inner: Mutex::new(Datanet::new(name)),
        }
    }

    /// The datanet's name.
    #[getter]
    fn name(&self) -> String {
        self.lock().name().to_string()
    }

    /// Imports JSONL (a `str` or UTF-8 `bytes`), one record per line: `content`,
    /// `contributor`, `license`, optional `metadata` (an object) and `hash` (checked when
    /// present). Every line is checked before any is added: a bad line raises and leaves the
    /// datanet as it was. Returns `{"added": n, "duplicates": [(line, index)]}`.
    fn import_jsonl<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, PyDict>> {
        let data = text("data", data)?;
        let report = py.detach(|| self.lock().import_jsonl(data.as_bytes()))?;
        Ok(import_report(py, &report)?)
    }

    /// Imports the JSONL file at `path` (see `import_jsonl`).
    fn import_file<'py>(&self, py: Python<'py>, path: PathBuf) -> Result<Bound<'py, PyDict>> {
        let (file, _) =
            openledger_core::fsx::open_regular(&path).map_err(|e| crate::error::io(&path, &e))?;
        let report = py.detach(|| self.lock().import_jsonl(BufReader::new(file)))?;
        Ok(import_report(py, &report)?)
    }

    /// Adds one record (its hash computed from `content`); returns `(index, added)`, where
    /// `added` is False when a record with the same content is already there (at `index`).
    #[pyo3(signature = (content, contributor, license, metadata = None))]
    fn add(
        &self,
        py: Python<'_>,
        content: String,
        contributor: &Bound<'_, PyAny>,
        license: String,
        metadata: Option<&Bound<'_, PyDict>>,
    ) -> Result<(usize, bool)> {
        let contributor = address("contributor", contributor)?;
        let metadata = match metadata {
            None => Map::new(),
            Some(d) => {
                let s: String = py
                    .import("json")?
                    .call_method1("dumps", (d,))
                    .map_err(|e| invalid_arg("metadata", format!("not JSON-serialisable: {e}")))?
                    .extract()?;
                match serde_json::from_str::<Value>(&s) {
                    Ok(Value::Object(m)) => m,
                    _ => return Err(invalid_arg("metadata", "expected a dict")),
                }
            }
        };
        let r = DatanetRecord::new(content, contributor, metadata, license);
        Ok(match self.lock().insert(r) {
            Insert::New(i) => (i, true),
            Insert::Duplicate(i) => (i, false),
        })
    }

    /// The records of `version` (all records when None) as JSONL, hashes included.
    #[pyo3(signature = (version = None))]
    fn export_jsonl(&self, py: Python<'_>, version: Option<u32>) -> Result<String> {
        let mut out = Vec::new();
        py.detach(|| self.lock().export_jsonl(version, &mut out))?;
        Ok(String::from_utf8(out).unwrap_or_default())
    }

    /// Commits the records as a new version: `{"number", "record_count", "root"}`.
    fn commit<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyDict>> {
        let v = py.detach(|| self.lock().commit())?;
        Ok(version(py, &v)?)
    }

    /// Version `number` (1-based).
    fn version<'py>(&self, py: Python<'py>, number: u32) -> Result<Bound<'py, PyDict>> {
        let v = self.lock().version(number)?;
        Ok(version(py, &v)?)
    }

    /// Every committed version, oldest first.
    #[getter]
    fn versions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let vs: Vec<DatanetVersion> = self.lock().versions().to_vec();
        let items = vs
            .iter()
            .map(|v| version(py, v))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    /// Records held.
    fn __len__(&self) -> usize {
        self.lock().records().len()
    }

    /// Record `index` as a dict.
    fn record<'py>(&self, py: Python<'py>, index: usize) -> Result<Bound<'py, PyDict>> {
        let net = self.lock();
        let r = net.records().get(index).ok_or_else(|| {
            invalid_arg(
                "index",
                format!(
                    "{index} is out of range for {} records",
                    net.records().len()
                ),
            )
        })?;
        Ok(record(py, r)?)
    }

    /// Every record, in insertion order, as dicts.
    fn records<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let net = self.lock();
        let items = net
            .records()
            .iter()
            .map(|r| record(py, r))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    /// The record whose content hash is `hash`, or None.
    fn get<'py>(
        &self,
        py: Python<'py>,
        hash: &Bound<'py, PyAny>,
    ) -> Result<Option<Bound<'py, PyDict>>> {
        let h = ContentId(b256("hash", hash)?);
        let net = self.lock();
        Ok(net.get(&h).map(|r| record(py, r)).transpose()?)
    }

    /// The Merkle proof (hex hashes) that record `index` belongs to version `version`.
    fn inclusion_proof(&self, py: Python<'_>, version: u32, index: usize) -> Result<Vec<String>> {
        let proof = py.detach(|| self.lock().inclusion_proof(version, index))?;
        Ok(proof.iter().map(b256_str).collect())
    }

    fn __repr__(&self) -> String {
        let net = self.lock();
        format!(
            "Datanet(name={:?}, records={}, versions={})",
            net.name(),
            net.records().len(),
            net.versions().len()
        )
    }
}

/// Whether `proof` shows that the record with content hash `hash` belongs to the datanet
/// version whose root is `root` (what `Datanet.inclusion_proof` proves and
/// `DatanetRegistry.verifyRecord` checks on chain).
#[pyfunction]
#[pyo3(name = "verify_record_proof")]
fn verify_record_proof_py(
    root: &Bound<'_, PyAny>,
    hash: &Bound<'_, PyAny>,
    proof: &Bound<'_, PyAny>,
) -> Result<bool> {
    let root = b256("root", root)?;
    let hash = ContentId(b256("hash", hash)?);
    let proof = proof
        .try_iter()?
        .enumerate()
        .map(|(i, h)| b256(&format!("proof[{i}]"), &h?))
        .collect::<Result<Vec<_>>>()?;
    Ok(verify_record_proof(root, &hash, &proof))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDatanet>()?;
    m.add_function(wrap_pyfunction!(verify_record_proof_py, m)?)?;
    Ok(())
}
