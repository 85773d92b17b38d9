//! Python face of `openledger_poa::record`: the canonical attribution record of one inference
//! (who is owed what share of its data pool, by which method) and epochs that add records'
//! pools into exact per-contributor totals and the claims of the epoch's Merkle tree.

use std::sync::{Mutex, MutexGuard};

use openledger_core::B256;
use openledger_poa::record::{AttributionMethod, AttributionRecord, Epoch, WEIGHT_UNIT};
use openledger_poa::split::SplitPolicy;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use crate::error::Result;
use crate::splits::{negative_policy, payouts, scored, zero_policy};
use crate::types::{address_str, b256, b256_str, py_u256, u256};

fn hashes(name: &str, obj: &Bound<'_, PyAny>) -> Result<Vec<B256>> {
    obj.try_iter()?
        .enumerate()
        .map(|(i, h)| b256(&format!("{name}[{i}]"), &h?))
        .collect()
}

/// The attribution of one inference: contributors' shares of its data pool as fixed-point
/// weights summing to exactly 10¹⁸, canonically encoded (Solidity `abi.encode`) and identified by
/// the keccak-256 of that encoding.
#[pyclass(name = "AttributionRecord", module = "openledger", frozen)]
pub struct PyAttributionRecord {
    pub(crate) inner: AttributionRecord,
}

#[pymethods]
impl PyAttributionRecord {
    /// The record of inference `inference_id` of base model `model_id` with the adapters
    /// `adapter_ids` (32-byte hashes), by `method` (`"tracin"`, `"cosine"`, `"trak"`,
    /// `"influence_function"`, `"datainf"`, `"rag_relevance"` or `"context_cite"`), its weights
    /// the float `scores` of `accounts` split exactly into shares of 10¹⁸ (negative scores
    /// clipped or refused, a zero total to `fallback`).
    #[staticmethod]
    #[pyo3(signature = (inference_id, model_id, adapter_ids, method, accounts, scores, *, negative = "clip", fallback = None))]
    #[allow(clippy::too_many_arguments)]
    fn from_scores(
        py: Python<'_>,
        inference_id: &Bound<'_, PyAny>,
        model_id: &Bound<'_, PyAny>,
        adapter_ids: &Bound<'_, PyAny>,
        method: &str,
        accounts: &Bound<'_, PyAny>,
        scores: &Bound<'_, PyAny>,
        negative: &str,
        fallback: Option<&Bound<'_, PyAny>>,
    ) -> Result<Self> {
        let inference_id = b256("inference_id", inference_id)?;
        let model_id = b256("model_id", model_id)?;
        let adapter_ids = hashes("adapter_ids", adapter_ids)?;
        let method: AttributionMethod = method.parse()?;
        let scored = scored(accounts, scores)?;
        let policy = SplitPolicy {
            negative: negative_policy(negative)?,
            zero_total: zero_policy(fallback)?,
        };
        let inner = py.detach(|| {
            AttributionRecord::from_scores(
                inference_id,
                model_id,
                adapter_ids,
                method,
                &scored,
                &policy,
            )
        })?;
        Ok(Self { inner })
    }

    /// Reads a record from its canonical encoding (anything else is refused).
    #[staticmethod]
    fn decode(data: &[u8]) -> Result<Self> {
        Ok(Self {
            inner: AttributionRecord::decode(data)?,
        })
    }

    /// The canonical encoding.
    fn encode<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.encode())
    }

    /// keccak-256 of the encoding.
    #[getter]
    fn id(&self) -> String {
        self.inner.id().to_string()
    }

    /// The inference.
    #[getter]
    fn inference_id(&self) -> String {
        b256_str(&self.inner.inference_id)
    }

    /// The base model.
    #[getter]
    fn model_id(&self) -> String {
        b256_str(&self.inner.model_id)
    }

    /// The adapters, in the order applied.
    #[getter]
    fn adapter_ids(&self) -> Vec<String> {
        self.inner.adapter_ids.iter().map(b256_str).collect()
    }

    /// How the weights were obtained.
    #[getter]
    fn method(&self) -> &'static str {
        self.inner.method.name()
    }

    /// `[(contributor, share of 10**18)]`, ascending by address.
    #[getter]
    fn weights<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items = self
            .inner
            .weights
            .iter()
            .map(|(a, w)| {
                PyTuple::new(
                    py,
                    [
                        address_str(a).into_pyobject(py)?.into_any(),
                        py_u256(py, *w)?,
                    ],
                )
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<Self>()
            .is_ok_and(|o| o.get().inner == self.inner)
    }

    fn __repr__(&self) -> String {
        format!(
            "AttributionRecord(id={}, method={:?}, contributors={})",
            self.inner.id(),
            self.inner.method.name(),
            self.inner.weights.len()
        )
    }
}

/// An epoch: the data pools of many inferences split exactly by their records into
/// per-contributor totals, and the claims (`(index, account, amount)`, sorted by address) of
/// the epoch's Merkle tree.
#[pyclass(name = "Epoch", module = "openledger", frozen)]
pub struct PyEpoch {
    inner: Mutex<Epoch>,
}

impl PyEpoch {
    fn lock(&self) -> MutexGuard<'_, Epoch> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl PyEpoch {
    /// An empty epoch numbered `number`.
    #[new]
    fn new(number: u64) -> Self {
        Self {
            inner: Mutex::new(Epoch::new(number)),
        }
    }

    /// Splits `pool` wei (the contributors' part of the inference's fee) by `record`'s weights
    /// into the totals. An invalid record or an overflow changes nothing.
    fn add(&self, record: &Bound<'_, PyAttributionRecord>, pool: &Bound<'_, PyAny>) -> Result<()> {
        let pool = u256("pool", pool)?;
        Ok(self.lock().add(&record.get().inner, pool)?)
    }

    /// The epoch number.
    #[getter]
    fn number(&self) -> u64 {
        self.lock().number
    }

    /// Wei pooled (the sum of the totals).
    #[getter]
    fn pooled<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py_u256(py, self.lock().pooled())
    }

    /// Ids of the records added, in order.
    #[getter]
    fn records(&self) -> Vec<String> {
        self.lock()
            .records()
            .iter()
            .map(|r| r.to_string())
            .collect()
    }

    /// Per-contributor totals `[(account, wei)]`, sorted by address.
    fn payouts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        payouts(py, &self.lock().payouts())
    }

    /// The claims of the epoch's tree: `[(index, account, amount)]`, sorted by address.
    fn claims<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items = self
            .lock()
            .claim_leaves()
            .iter()
            .map(|c| {
                PyTuple::new(
                    py,
                    [
                        py_u256(py, c.index)?,
                        address_str(&c.account).into_pyobject(py)?.into_any(),
                        py_u256(py, c.amount)?,
                    ],
                )
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    fn __repr__(&self) -> String {
        let e = self.lock();
        format!(
            "Epoch(number={}, records={}, pooled={})",
            e.number,
            e.records().len(),
            e.pooled()
        )
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyAttributionRecord>()?;
    m.add_class::<PyEpoch>()?;
    m.add("WEIGHT_UNIT", WEIGHT_UNIT)?;
    Ok(())
}
