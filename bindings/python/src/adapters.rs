//! Python face of `openledger_lora::adapter` and `openledger_lora::adapter::base`: inspect a PEFT LoRA
//! adapter (rank, alpha, per-module scale, targets, dtype, resident bytes, the A/B factors as
//! numpy arrays), validate it against a base model folder, combine adapters as PEFT's
//! `add_weighted_adapter` does, and merge one into a model folder.

use std::path::PathBuf;
use std::sync::Arc;

use numpy::ndarray::ArrayView2;
use numpy::{PyArray2, ToPyArray};
use openledger_core::DType;
use openledger_lora::adapter::base::BaseModel;
use openledger_lora::adapter::combine::{
    Combination, CombineOptions, MajoritySign, add_weighted_adapter as add_weighted_adapter_rs,
};
use openledger_lora::adapter::config::TargetModules;
use openledger_lora::adapter::tensors::HostTensor;
use openledger_lora::adapter::{LoadOptions, LoraAdapter, LoraModule, ModuleKind};
use openledger_lora::model::{LoadProgress, merge_adapter_into_dir};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::{Result, invalid_arg};
use crate::progress::Progress;

/// A loaded PEFT LoRA adapter (`adapter_config.json` + `adapter_model.safetensors`).
#[pyclass(name = "LoraAdapter", module = "openledger", frozen)]
pub struct PyLoraAdapter {
    pub(crate) inner: Arc<LoraAdapter>,
}

#[pymethods]
impl PyLoraAdapter {
    /// Loads the adapter folder `path`.
    #[staticmethod]
    #[pyo3(signature = (path, *, allow_non_finite = false))]
    fn from_dir(py: Python<'_>, path: PathBuf, allow_non_finite: bool) -> Result<Self> {
        let opts = LoadOptions { allow_non_finite };
        let adapter = py.detach(|| LoraAdapter::from_dir(&path, &opts))?;
        Ok(Self {
            inner: Arc::new(adapter),
        })
    }

    /// Parses an adapter from the bytes of its config and of its safetensors file.
    #[staticmethod]
    #[pyo3(signature = (config_json, safetensors, *, allow_non_finite = false))]
    fn from_bytes(
        py: Python<'_>,
        config_json: &[u8],
        safetensors: &[u8],
        allow_non_finite: bool,
    ) -> Result<Self> {
        let opts = LoadOptions { allow_non_finite };
        let adapter = py.detach(|| LoraAdapter::from_bytes(config_json, safetensors, &opts))?;
        Ok(Self {
            inner: Arc::new(adapter),
        })
    }

    /// The configured rank `r`.
    #[getter]
    fn r(&self) -> usize {
        self.inner.config().r()
    }

    /// The configured `lora_alpha`.
    #[getter]
    fn lora_alpha(&self) -> f64 {
        self.inner.config().lora_alpha()
    }

    /// Whether rsLoRA scaling (`alpha / sqrt(r)`) is on.
    #[getter]
    fn use_rslora(&self) -> bool {
        self.inner.config().spec().use_rslora
    }

    /// `target_modules` as written in the config: a list of names, a regex string, or
    /// `"all-linear"`.
    #[getter]
    fn target_modules(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(match &self.inner.config().spec().target_modules {
            TargetModules::Names(names) => names.clone().into_pyobject(py)?.into_any().unbind(),
            TargetModules::Regex(re) => re.clone().into_pyobject(py)?.into_any().unbind(),
            TargetModules::AllLinear => "all-linear".into_pyobject(py)?.into_any().unbind(),
        })
    }

    /// Bytes the adapter's tensors occupy in memory (what a pool budget counts).
    #[getter]
    fn resident_bytes(&self) -> usize {
        self.inner.resident_bytes()
    }

    /// The dtype of the factors (`"f32"`, `"f16"` or `"bf16"`), or `None` for an adapter
    /// without modules; `"mixed"` when modules differ.
    #[getter]
    fn dtype(&self) -> Option<String> {
        let mut dtypes = self.inner.modules().map(|(_, m)| m.a().dtype());
        let first = dtypes.next()?;
        if dtypes.all(|d| d == first) {
            Some(first.to_string())
        } else {
            Some("mixed".to_string())
        }
    }

    /// Names of the adapted modules, sorted.
    fn module_names(&self) -> Vec<String> {
        self.inner.modules().map(|(n, _)| n.to_string()).collect()
    }

    /// Number of adapted modules.
    fn __len__(&self) -> usize {
        self.inner.num_modules()
    }

    /// The module `name`, or `KeyError`.
    fn module(&self, name: &str) -> PyResult<PyLoraModule> {
        if self.inner.module(name).is_none() {
            return Err(pyo3::exceptions::PyKeyError::new_err(name.to_string()));
        }
        Ok(PyLoraModule {
            adapter: self.inner.clone(),
            name: name.to_string(),
        })
    }

    /// Every module, as a dict from name to `LoraModule`.
    fn modules<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, _) in self.inner.modules() {
            let m = PyLoraModule {
                adapter: self.inner.clone(),
                name: name.to_string(),
            };
            d.set_item(name, m)?;
        }
        Ok(d)
    }

    /// The scale of each module (`alpha / r`, or `alpha / sqrt(r)` with rsLoRA, after the
    /// rank and alpha patterns), as a dict.
    fn scales(&self) -> Vec<(String, f32)> {
        self.inner
            .modules()
            .map(|(n, m)| (n.to_string(), m.scale()))
            .collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "LoraAdapter(r={}, lora_alpha={}, modules={}, resident_bytes={})",
            self.inner.config().r(),
            self.inner.config().lora_alpha(),
            self.inner.num_modules(),
            self.inner.resident_bytes()
        )
    }
}

/// One adapted module of a `LoraAdapter`: `y = x·Wᵀ + scale · (x·Aᵀ)·Bᵀ`.
#[pyclass(name = "LoraModule", module = "openledger", frozen)]
pub struct PyLoraModule {
    adapter: Arc<LoraAdapter>,
    name: String,
}

impl PyLoraModule {
    /// The module itself. Its name was taken from the adapter's own (immutable) module table,
    /// so the lookup cannot fail; it is still checked rather than unwrapped.
    pub(crate) fn get(&self) -> PyResult<&LoraModule> {
        self.adapter
            .module(&self.name)
            .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err(self.name.clone()))
    }
}

/// `t` as a 2-D float32 numpy array: a read-only view of the adapter's memory when the tensor
/// is f32 (the array keeps the module, hence the adapter, alive), a converted copy otherwise.
fn factor<'py>(owner: &Bound<'py, PyLoraModule>, t: &HostTensor) -> Result<Bound<'py, PyAny>> {
    let shape = t.shape();
    let (rows, cols) = match shape {
        [r, c] => (*r, *c),
        _ => {
            return Err(invalid_arg(
                "factor",
                format!("expected 2 dims, found {shape:?}"),
            ));
        }
    };
    let arr = match t.as_f32() {
        Some(data) => {
            let view =
                ArrayView2::from_shape((rows, cols), data).map_err(|e| invalid_arg("factor", e))?;
            // SAFETY: `data` lives in an `Arc<LoraAdapter>` owned by `owner`, which the array
            // holds as its base object, and adapters are never mutated after loading.
            let a = unsafe { PyArray2::borrow_from_array(&view, owner.clone().into_any()) };
            a.into_any()
        }
        None => {
            let data = t.to_f32();
            let view = ArrayView2::from_shape((rows, cols), &data[..])
                .map_err(|e| invalid_arg("factor", e))?;
            view.to_pyarray(owner.py()).into_any()
        }
    };
    // Read-only either way: writing into the adapter's factors must go through Rust.
    let kwargs = PyDict::new(owner.py());
    kwargs.set_item("write", false)?;
    arr.call_method("setflags", (), Some(&kwargs))?;
    Ok(arr)
}

#[pymethods]
impl PyLoraModule {
    /// The module's full name (`model.layers.0.self_attn.q_proj`).
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// `"linear"` or `"embedding"`.
    #[getter]
    fn kind(&self) -> PyResult<&'static str> {
        Ok(match self.get()?.kind() {
            ModuleKind::Linear => "linear",
            ModuleKind::Embedding => "embedding",
        })
    }

    /// The rank of this module.
    #[getter]
    fn rank(&self) -> PyResult<usize> {
        Ok(self.get()?.rank())
    }

    /// Input features (the vocabulary size for embeddings).
    #[getter]
    fn in_features(&self) -> PyResult<usize> {
        Ok(self.get()?.in_features())
    }

    /// Output features.
    #[getter]
    fn out_features(&self) -> PyResult<usize> {
        Ok(self.get()?.out_features())
    }

    /// The factor applied to `B·A`.
    #[getter]
    fn scale(&self) -> PyResult<f32> {
        Ok(self.get()?.scale())
    }

    /// Whether the base weight is stored `[in, out]` (GPT-2 `Conv1D`).
    #[getter]
    fn fan_in_fan_out(&self) -> PyResult<bool> {
        Ok(self.get()?.fan_in_fan_out())
    }

    /// The dtype of the factors in memory (`"f32"`, `"f16"`, `"bf16"`).
    #[getter]
    fn dtype(&self) -> PyResult<String> {
        Ok(self.get()?.a().dtype().to_string())
    }

    /// `A` as a read-only float32 array of shape `(rank, in_features)`.
    #[getter]
    fn a<'py>(slf: &Bound<'py, Self>) -> Result<Bound<'py, PyAny>> {
        let m = slf.get().get()?;
        factor(slf, m.a())
    }

    /// `B` as a read-only float32 array of shape `(out_features, rank)`.
    #[getter]
    fn b<'py>(slf: &Bound<'py, Self>) -> Result<Bound<'py, PyAny>> {
        let m = slf.get().get()?;
        factor(slf, m.b())
    }

    fn __repr__(&self) -> PyResult<String> {
        let m = self.get()?;
        Ok(format!(
            "LoraModule({:?}, rank={}, in={}, out={}, scale={})",
            self.name,
            m.rank(),
            m.in_features(),
            m.out_features(),
            m.scale()
        ))
    }
}

/// Module names and shapes of a base model folder (config.json + safetensors), without weights.
#[pyclass(name = "BaseModel", module = "openledger", frozen)]
pub struct PyBaseModel {
    inner: BaseModel,
}

#[pymethods]
impl PyBaseModel {
    /// Reads the safetensors headers (single file or sharded index) of the model folder `path`.
    #[staticmethod]
    fn from_dir(py: Python<'_>, path: PathBuf) -> Result<Self> {
        let inner = py.detach(|| BaseModel::from_dir(&path))?;
        Ok(Self { inner })
    }

    /// Names of the linear modules.
    fn linear_modules(&self) -> Vec<String> {
        self.inner
            .linear_modules()
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// Checks that every module of `adapter` exists in this model with matching shapes; raises
    /// `BaseMismatchError` (or `AdapterFormatError`) naming the module otherwise. Returns a
    /// dict `{"modules_checked": int, "targeted_without_weights": [str]}`.
    fn validate<'py>(
        &self,
        py: Python<'py>,
        adapter: &PyLoraAdapter,
    ) -> Result<Bound<'py, PyDict>> {
        let a = adapter.inner.clone();
        let report = py.detach(|| self.inner.validate(&a))?;
        let d = PyDict::new(py);
        d.set_item("modules_checked", report.modules_checked)?;
        d.set_item("targeted_without_weights", report.targeted_without_weights)?;
        Ok(d)
    }
}

/// PEFT's `add_weighted_adapter`: a new adapter combining `adapters` with `weights` by
/// `combination_type` (`"linear"`, `"cat"`, `"svd"`, `"ties"`, `"ties_svd"`, `"dare_linear"`,
/// `"dare_linear_svd"`, `"dare_ties"`, `"dare_ties_svd"`, `"magnitude_prune"`,
/// `"magnitude_prune_svd"`); `density` is required by TIES, DARE and magnitude pruning,
/// `svd_rank` / `svd_clamp` tune the SVD types, `seed` draws DARE's masks and `dtype`
/// (`"f32"`, `"f16"`, `"bf16"`) is the new factors' type. `progress(n)` is called
/// with the modules done since its last call.
#[pyfunction]
#[pyo3(signature = (
    adapters, weights, combination_type = "svd", *, svd_rank = None, svd_clamp = None,
    density = None, majority_sign_method = "total", seed = 0, dtype = "f32", progress = None
))]
#[allow(clippy::too_many_arguments)]
fn add_weighted_adapter(
    py: Python<'_>,
    adapters: Vec<PyRef<'_, PyLoraAdapter>>,
    weights: Vec<f32>,
    combination_type: &str,
    svd_rank: Option<usize>,
    svd_clamp: Option<f64>,
    density: Option<f32>,
    majority_sign_method: &str,
    seed: u64,
    dtype: &str,
    progress: Option<Py<PyAny>>,
) -> Result<PyLoraAdapter> {
    let mut opts = CombineOptions::new(combination_type.parse::<Combination>()?);
    opts.svd_rank = svd_rank;
    opts.svd_clamp = svd_clamp;
    opts.density = density;
    opts.majority_sign = majority_sign_method.parse::<MajoritySign>()?;
    opts.seed = seed;
    opts.dtype = dtype.parse::<DType>()?;
    let held: Vec<Arc<LoraAdapter>> = adapters.iter().map(|a| a.inner.clone()).collect();
    let progress = Progress::new(progress);
    let out = py.detach(|| {
        let refs: Vec<&LoraAdapter> = held.iter().map(Arc::as_ref).collect();
        let mut last = 0;
        let mut cb = |done: usize, _: usize| {
            progress.advance(done - last);
            last = done;
        };
        add_weighted_adapter_rs(&refs, &weights, &opts, Some(&mut cb))
    });
    progress.finish()?;
    Ok(PyLoraAdapter {
        inner: Arc::new(out?),
    })
}

/// Writes the HF model folder `model_dir` with `adapter` merged into its weights as a new
/// folder `out_dir` (f32 weights, tokenizer and generation files copied), so the merged model
/// serves without the adapter. Raises `BaseMismatchError` (nothing written) when the adapter
/// does not fit the model. `progress(n)` is called with the weight files read.
#[pyfunction]
#[pyo3(signature = (model_dir, adapter, out_dir, *, progress = None))]
fn merge_adapter_into_model(
    py: Python<'_>,
    model_dir: PathBuf,
    adapter: &PyLoraAdapter,
    out_dir: PathBuf,
    progress: Option<Py<PyAny>>,
) -> Result<()> {
    let a = adapter.inner.clone();
    let progress = Progress::new(progress);
    let out = py.detach(|| {
        merge_adapter_into_dir(&model_dir, &a, &out_dir, &mut |p| {
            if let LoadProgress::FileRead { .. } = p {
                progress.advance(1);
            }
        })
        .map_err(crate::error::Error::from)
    });
    progress.finish()?;
    out
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyLoraAdapter>()?;
    m.add_class::<PyLoraModule>()?;
    m.add_class::<PyBaseModel>()?;
    m.add_function(wrap_pyfunction!(add_weighted_adapter, m)?)?;
    m.add_function(wrap_pyfunction!(merge_adapter_into_model, m)?)?;
    Ok(())
}
