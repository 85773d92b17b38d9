//! Python face of `openledger_lora::pool`: the just-in-time adapter pool with a byte budget,
//! least-recently-used eviction and pinning.

use std::path::PathBuf;

use openledger_lora::pool::{AdapterId, AdapterPool, HubDir, PoolStats, Source};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::adapters::PyLoraAdapter;
use crate::error::Result;
use crate::progress::Progress;

fn id(s: &str) -> Result<AdapterId> {
    Ok(AdapterId::new(s).map_err(openledger_lora::pool::PoolError::from)?)
}

/// The ids of the adapter folders under the hub root `root`, sorted: `<root>/<id>/` and
/// `<root>/<org>/<name>/` holding an `adapter_config.json` (what `AdapterPool.register_hub`
/// registers).
#[pyfunction]
pub(crate) fn hub_ids(py: Python<'_>, root: PathBuf) -> Result<Vec<String>> {
    Ok(py.detach(
        || -> std::result::Result<Vec<String>, openledger_lora::pool::PoolError> {
            let ids = HubDir::open(&root)?.ids()?;
            Ok(ids.iter().map(ToString::to_string).collect())
        },
    )?)
}

/// The canonical spelling of an adapter id or ensemble (`"a*0.7+b*0.3"`; `"a*1"` is `"a"`) and
/// its members with their weights (`[(id, 1.0)]` for a plain id); `InvalidIdError` naming the
/// problem otherwise (whether the adapters exist is not checked here).
#[pyfunction]
pub(crate) fn parse_adapter_id(spelling: &str) -> Result<(String, Vec<(String, f32)>)> {
    let parsed = AdapterId::parse(spelling).map_err(openledger_lora::pool::PoolError::from)?;
    let members = parsed
        .members()
        .map(|ms| ms.into_iter().map(|(m, w)| (m.to_string(), w)).collect())
        .unwrap_or_else(|| vec![(parsed.to_string(), 1.0)]);
    Ok((parsed.to_string(), members))
}

/// A pool of registered adapters, of which those used most recently stay resident within a
/// byte budget. Safe to share between threads; every call releases the GIL while it works.
#[pyclass(name = "AdapterPool", module = "openledger", frozen)]
pub struct PyAdapterPool {
    pub(crate) inner: AdapterPool,
}

#[pymethods]
impl PyAdapterPool {
    /// A pool whose resident adapters never exceed `budget_bytes`.
    #[new]
    fn new(budget_bytes: usize) -> Self {
        Self {
            inner: AdapterPool::new(budget_bytes),
        }
    }

    /// The byte budget.
    #[getter]
    fn budget_bytes(&self) -> usize {
        self.inner.budget_bytes()
    }

    /// Registers the PEFT adapter folder `path` under `adapter_id` (loaded on first use).
    fn register_dir(&self, py: Python<'_>, adapter_id: &str, path: PathBuf) -> Result<()> {
        let id = id(adapter_id)?;
        Ok(py.detach(|| self.inner.register(id, Source::Dir(path)))?)
    }

    /// Registers an adapter held in memory (the two files' bytes) under `adapter_id`.
    fn register_bytes(
        &self,
        py: Python<'_>,
        adapter_id: &str,
        config_json: &[u8],
        safetensors: &[u8],
    ) -> Result<()> {
        let id = id(adapter_id)?;
        let source = Source::bytes(config_json, safetensors);
        Ok(py.detach(|| self.inner.register(id, source))?)
    }

    /// Registers every adapter folder under the hub root `root` (`<root>/<id>/…`); returns how
    /// many were registered.
    fn register_hub(&self, py: Python<'_>, root: PathBuf) -> Result<usize> {
        Ok(py.detach(|| {
            let hub = HubDir::open(&root)?;
            self.inner.register_hub(&hub)
        })?)
    }

    /// Forgets `adapter_id` (refused while it is pinned).
    fn unregister(&self, py: Python<'_>, adapter_id: &str) -> Result<()> {
        let id = id(adapter_id)?;
        Ok(py.detach(|| self.inner.unregister(&id))?)
    }

    /// Whether `adapter_id` is registered.
    fn is_registered(&self, adapter_id: &str) -> Result<bool> {
        Ok(self.inner.is_registered(&id(adapter_id)?))
    }

    /// Whether `adapter_id` is resident.
    fn is_resident(&self, adapter_id: &str) -> Result<bool> {
        Ok(self.inner.is_resident(&id(adapter_id)?))
    }

    /// Ids of the resident adapters.
    fn resident_ids(&self) -> Vec<String> {
        self.inner
            .resident_ids()
            .into_iter()
            .map(|i| i.as_str().to_string())
            .collect()
    }

    /// The adapter `adapter_id`, loading it first if it is not resident.
    fn get(&self, py: Python<'_>, adapter_id: &str) -> Result<PyLoraAdapter> {
        let id = id(adapter_id)?;
        let inner = py.detach(|| self.inner.get(&id))?;
        Ok(PyLoraAdapter { inner })
    }

    /// Like `get`, and keeps the adapter resident until `unpin` (pins nest).
    fn pin(&self, py: Python<'_>, adapter_id: &str) -> Result<PyLoraAdapter> {
        let id = id(adapter_id)?;
        let inner = py.detach(|| self.inner.pin(&id))?;
        Ok(PyLoraAdapter { inner })
    }

    /// Undoes one `pin`.
    fn unpin(&self, py: Python<'_>, adapter_id: &str) -> Result<()> {
        let id = id(adapter_id)?;
        Ok(py.detach(|| self.inner.unpin(&id))?)
    }

    /// Loads each of `adapter_ids` in turn; after each one calls `progress(1)` (so
    /// `tqdm(total=len(ids)).update` can be passed as is). A failed load is skipped. Returns
    /// how many adapters are resident or were loaded.
    #[pyo3(signature = (adapter_ids, progress = None))]
    fn warm_up(
        &self,
        py: Python<'_>,
        adapter_ids: Vec<String>,
        progress: Option<Py<PyAny>>,
    ) -> Result<usize> {
        let ids = adapter_ids
            .iter()
            .map(|s| id(s))
            .collect::<Result<Vec<_>>>()?;
        let progress = Progress::new(progress);
        let n = py.detach(|| self.inner.warm_up(&ids, |_| progress.advance(1)));
        progress.finish()?;
        Ok(n)
    }

    /// A snapshot of the counters and occupancy.
    fn stats(&self) -> PyPoolStats {
        PyPoolStats {
            inner: self.inner.stats(),
        }
    }

    fn __repr__(&self) -> String {
        let s = self.inner.stats();
        format!(
            "AdapterPool(budget_bytes={}, registered={}, resident={}, resident_bytes={})",
            s.budget_bytes, s.registered_count, s.resident_count, s.resident_bytes
        )
    }
}

/// Counters and occupancy of an `AdapterPool` at one moment.
#[pyclass(name = "PoolStats", module = "openledger", frozen)]
pub struct PyPoolStats {
    inner: PoolStats,
}

#[pymethods]
impl PyPoolStats {
    /// Gets served from a resident adapter.
    #[getter]
    fn hits(&self) -> u64 {
        self.inner.hits
    }
    /// Successful gets that waited for a load.
    #[getter]
    fn misses(&self) -> u64 {
        self.inner.misses
    }
    /// Adapters loaded and made resident.
    #[getter]
    fn loads(&self) -> u64 {
        self.inner.loads
    }
    /// Loads that failed.
    #[getter]
    fn load_failures(&self) -> u64 {
        self.inner.load_failures
    }
    /// Resident adapters evicted to make room.
    #[getter]
    fn evictions(&self) -> u64 {
        self.inner.evictions
    }
    /// Sum of `resident_bytes` over resident adapters.
    #[getter]
    fn resident_bytes(&self) -> usize {
        self.inner.resident_bytes
    }
    /// The byte budget.
    #[getter]
    fn budget_bytes(&self) -> usize {
        self.inner.budget_bytes
    }
    /// Number of resident adapters.
    #[getter]
    fn resident_count(&self) -> usize {
        self.inner.resident_count
    }
    /// Number of resident adapters currently pinned.
    #[getter]
    fn pinned_count(&self) -> usize {
        self.inner.pinned_count
    }
    /// Number of registered adapters.
    #[getter]
    fn registered_count(&self) -> usize {
        self.inner.registered_count
    }

    /// Every counter as a dict (load latency in seconds under `load_latency_*`).
    fn as_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = &self.inner;
        let d = PyDict::new(py);
        d.set_item("hits", s.hits)?;
        d.set_item("misses", s.misses)?;
        d.set_item("loads", s.loads)?;
        d.set_item("load_failures", s.load_failures)?;
        d.set_item("evictions", s.evictions)?;
        d.set_item("unregistered_resident", s.unregistered_resident)?;
        d.set_item("resident_bytes", s.resident_bytes)?;
        d.set_item("budget_bytes", s.budget_bytes)?;
        d.set_item("resident_count", s.resident_count)?;
        d.set_item("pinned_count", s.pinned_count)?;
        d.set_item("registered_count", s.registered_count)?;
        d.set_item("load_latency_count", s.load_latency.count)?;
        d.set_item("load_latency_mean_s", s.load_latency.mean().as_secs_f64())?;
        d.set_item("load_latency_max_s", s.load_latency.max.as_secs_f64())?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!("PoolStats({:?})", self.inner)
    }
}
