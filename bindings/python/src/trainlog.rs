//! Python face of `openledger_core::trainlog`: the hash-chained training log whose head a model
//! registration commits to, its file format, its verification, and usage proofs (that a record
//! was in the batch of a step), checkable against the head alone.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use openledger_core::ContentId;
use openledger_core::trainlog::{TrainLog, TrainStep, UsageProof};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::error::Result;
use crate::types::{b256, b256_str};

fn record_ids(name: &str, obj: &Bound<'_, PyAny>) -> Result<Vec<ContentId>> {
    obj.try_iter()?
        .enumerate()
        .map(|(i, h)| Ok(ContentId(b256(&format!("{name}[{i}]"), &h?)?)))
        .collect()
}

/// An append-only, hash-chained record of every optimizer step: which records were in the
/// batch, the loss and learning rate (exact bits) and the checkpoint hash when one was taken.
#[pyclass(name = "TrainLog", module = "openledger", frozen)]
pub struct PyTrainLog {
    inner: Mutex<TrainLog>,
}

impl PyTrainLog {
    /// Wraps a log of the crates (the trainer's, say).
    pub(crate) fn wrap(log: TrainLog) -> Self {
        Self {
            inner: Mutex::new(log),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TrainLog> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl PyTrainLog {
    /// An empty log for the base model `base_model` and the adapter config whose keccak-256 is
    /// `adapter_config_hash` (both 32-byte hashes); its head is the genesis.
    #[new]
    fn new(base_model: &Bound<'_, PyAny>, adapter_config_hash: &Bound<'_, PyAny>) -> Result<Self> {
        Ok(Self::wrap(TrainLog::new(
            b256("base_model", base_model)?,
            b256("adapter_config_hash", adapter_config_hash)?,
        )))
    }

    /// Reads a saved log (the structure is checked; `verify()` checks every hash).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> Result<Self> {
        Ok(Self::wrap(py.detach(|| TrainLog::load(&path))?))
    }

    /// Reads a log from the bytes `to_bytes()` wrote.
    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8]) -> Result<Self> {
        Ok(Self::wrap(py.detach(|| TrainLog::from_bytes(data))?))
    }

    /// The log in its binary file format.
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let b = py.detach(|| self.lock().to_bytes());
        PyBytes::new(py, &b)
    }

    /// Writes the log to `path`.
    fn save(&self, py: Python<'_>, path: PathBuf) -> Result<()> {
        Ok(py.detach(|| self.lock().save(&path))?)
    }

    /// Appends optimizer step `step` (strictly after the last one) whose batch held the
    /// records `records` (hashes), with its loss, learning rate and checkpoint hash; returns
    /// the new head.
    #[pyo3(signature = (step, records, loss, learning_rate, checkpoint = None))]
    fn append(
        &self,
        step: u64,
        records: &Bound<'_, PyAny>,
        loss: f64,
        learning_rate: f64,
        checkpoint: Option<&Bound<'_, PyAny>>,
    ) -> Result<String> {
        let mut s = TrainStep::new(step, record_ids("records", records)?, loss, learning_rate);
        if let Some(c) = checkpoint {
            s = s.with_checkpoint(b256("checkpoint", c)?);
        }
        Ok(b256_str(&self.lock().append(s)?))
    }

    /// The head: what a model registration commits to.
    #[getter]
    fn head(&self) -> String {
        b256_str(&self.lock().head())
    }

    /// The head of the empty log.
    #[getter]
    fn genesis(&self) -> String {
        b256_str(&self.lock().genesis())
    }

    /// The base model's id.
    #[getter]
    fn base_model(&self) -> String {
        b256_str(&self.lock().base_model())
    }

    /// The keccak-256 of the adapter config.
    #[getter]
    fn adapter_config_hash(&self) -> String {
        b256_str(&self.lock().adapter_config_hash())
    }

    /// Steps logged.
    fn __len__(&self) -> usize {
        self.lock().len()
    }

    /// Every step: dicts `{"step", "records", "loss", "learning_rate", "checkpoint",
    /// "batch_root", "head"}` (hashes as hex; `checkpoint` None when none was taken).
    fn entries<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let log = self.lock();
        let items = log
            .entries()
            .iter()
            .map(|e| {
                let d = PyDict::new(py);
                d.set_item("step", e.step.step)?;
                let ids: Vec<String> = e.step.records.iter().map(|r| r.to_string()).collect();
                d.set_item("records", ids)?;
                d.set_item("loss", e.step.loss)?;
                d.set_item("learning_rate", e.step.learning_rate)?;
                d.set_item("checkpoint", e.step.checkpoint.as_ref().map(b256_str))?;
                d.set_item("batch_root", b256_str(&e.batch_root))?;
                d.set_item("head", b256_str(&e.head))?;
                Ok(d)
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    /// Recomputes every batch root and head; returns the head, or raises `IntegrityError`
    /// naming the first entry that does not match.
    fn verify(&self, py: Python<'_>) -> Result<String> {
        Ok(b256_str(&py.detach(|| self.lock().verify())?))
    }

    /// The steps whose batch held `record`, or None when none did.
    fn was_used(&self, record: &Bound<'_, PyAny>) -> Result<Option<Vec<u64>>> {
        let r = ContentId(b256("record", record)?);
        Ok(self.lock().was_used(&r))
    }

    /// The proof (bytes) that `record` was in the batch of `step`: `verify_usage_proof` checks
    /// it against the head alone, without the log.
    fn prove<'py>(
        &self,
        py: Python<'py>,
        record: &Bound<'_, PyAny>,
        step: u64,
    ) -> Result<Bound<'py, PyBytes>> {
        let r = ContentId(b256("record", record)?);
        let p = self.lock().prove(&r, step)?;
        Ok(PyBytes::new(py, &p.to_bytes()))
    }

    fn __repr__(&self) -> String {
        let log = self.lock();
        format!(
            "TrainLog(steps={}, head={})",
            log.len(),
            b256_str(&log.head())
        )
    }
}

/// The step a usage proof (from `TrainLog.prove`) shows `record` was trained on, if it leads to
/// `head`; None when it does not. Malformed proof bytes raise `IntegrityError`.
#[pyfunction]
fn verify_usage_proof(
    proof: &[u8],
    record: &Bound<'_, PyAny>,
    head: &Bound<'_, PyAny>,
) -> Result<Option<u64>> {
    let p = UsageProof::from_bytes(proof)?;
    Ok(p.verify(&ContentId(b256("record", record)?), b256("head", head)?))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTrainLog>()?;
    m.add_function(wrap_pyfunction!(verify_usage_proof, m)?)?;
    Ok(())
}
