//! Python face of `openledger_poa::store`, `openledger_poa::influence::score` and
//! `openledger_poa::influence::sharded`: the on-disk feature store of projected training
//! gradients, TracIn / cosine / DataInf scoring of a query against it (float32 numpy gradients
//! in, float32 numpy scores out without a copy), and the same over a store split into shards
//! (DataInf's passes as plain dicts of numpy arrays, which pickle, so workers can run them).

use std::path::PathBuf;
use std::sync::Mutex;

use numpy::PyUntypedArrayMethods;
use numpy::{
    PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArray3, PyUntypedArray,
};
use openledger_core::ContentId;
use openledger_poa::influence::score::{DataInf, ScoreMethod, Scores, score};
use openledger_poa::influence::sharded::{
    DataInfNorms, DataInfResidual, datainf_norms, datainf_residual, score_weights,
};
use openledger_poa::projection::{Projection, ProjectionKind};
use openledger_poa::store::{
    FeatureDType, FeatureStore, FeatureStoreWriter, SHARD_BLOCK, StoreConfig, TrainingExample,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::error::{Result, invalid_arg};
use crate::progress::Progress;
use crate::types::{address, address_str, b256};

fn describe(obj: &Bound<'_, PyAny>) -> String {
    match obj.cast::<PyUntypedArray>() {
        Ok(a) => format!("{}-D {} of shape {:?}", a.ndim(), a.dtype(), a.shape()),
        Err(_) => obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into()),
    }
}

/// `[checkpoints, p]` float32 gradients as one vector per checkpoint.
fn gradients_2d(name: &str, obj: &Bound<'_, PyAny>) -> Result<Vec<Vec<f32>>> {
    let arr: PyReadonlyArray2<'_, f32> = obj.extract().map_err(|_| {
        invalid_arg(
            name,
            format!(
                "expected a 2-D float32 array [checkpoints, p], found {}",
                describe(obj)
            ),
        )
    })?;
    crate::types::aligned(name, &arr)?;
    Ok(arr
        .as_array()
        .outer_iter()
        .map(|row| row.iter().copied().collect())
        .collect())
}

/// DataInf's layers (`[(start, end), …]` ranges of the `k` features; none: one layer) and λ
/// scale.
fn datainf_config(layers: Option<Vec<(usize, usize)>>, lambda_scale: f64) -> DataInf {
    DataInf {
        layers: layers
            .unwrap_or_default()
            .into_iter()
            .map(|(a, b)| a..b)
            .collect(),
        lambda_scale,
    }
}

/// A pass's block sums as `{"rows": int, "sums": float64 array (blocks, width)}`.
fn sums_dict<'py>(
    py: Python<'py>,
    rows: usize,
    width: usize,
    sums: Vec<f64>,
) -> Result<Bound<'py, PyDict>> {
    let blocks = rows.div_ceil(SHARD_BLOCK);
    let arr = numpy::ndarray::Array2::from_shape_vec((blocks, width), sums)
        .map_err(|e| invalid_arg("sums", e))?;
    let d = PyDict::new(py);
    d.set_item("rows", rows)?;
    d.set_item("sums", PyArray2::from_owned_array(py, arr))?;
    Ok(d)
}

/// `(rows, width, sums)` of a dict `sums_dict` made (named `name` in errors).
fn from_sums_dict(name: &str, obj: &Bound<'_, PyAny>) -> Result<(usize, usize, Vec<f64>)> {
    let bad = || {
        invalid_arg(
            name,
            "expected a dict {\"rows\": int, \"sums\": 2-D float64 array}",
        )
    };
    let d = obj.cast::<PyDict>().map_err(|_| bad())?;
    let rows: usize = d
        .get_item("rows")?
        .ok_or_else(bad)?
        .extract()
        .map_err(|_| bad())?;
    let sums = d.get_item("sums")?.ok_or_else(bad)?;
    let arr: PyReadonlyArray2<'_, f64> = sums.extract().map_err(|_| bad())?;
    let width = arr.shape()[1];
    Ok((rows, width, arr.as_array().iter().copied().collect()))
}

/// The parts' pass results, in order.
fn parts<T>(
    name: &str,
    list: &Bound<'_, PyAny>,
    make: impl Fn(usize, usize, Vec<f64>) -> T,
) -> Result<Vec<T>> {
    list.try_iter()
        .map_err(|_| invalid_arg(name, "expected a sequence of dicts, one per shard"))?
        .enumerate()
        .map(|(j, item)| {
            let (rows, width, sums) = from_sums_dict(&format!("{name}[{j}]"), &item?)?;
            Ok(make(rows, width, sums))
        })
        .collect()
}

fn norms_parts(list: &Bound<'_, PyAny>) -> Result<Vec<DataInfNorms>> {
    parts("norms", list, |rows, segments, sums| DataInfNorms {
        rows,
        segments,
        sums,
    })
}

fn residual_parts(list: &Bound<'_, PyAny>) -> Result<Vec<DataInfResidual>> {
    parts("residuals", list, |rows, width, sums| DataInfResidual {
        rows,
        width,
        sums,
    })
}

/// DataInf's λ of every (checkpoint, layer) segment from the shards' `datainf_norms` (in shard
/// order; every shard but the last of whole blocks, as `FeatureStore.split` makes them): a
/// float64 array, the same the whole store gives.
#[pyfunction(name = "datainf_lambdas")]
#[pyo3(signature = (norms, *, lambda_scale = 0.1))]
fn py_datainf_lambdas<'py>(
    py: Python<'py>,
    norms: &Bound<'py, PyAny>,
    lambda_scale: f64,
) -> Result<Bound<'py, PyArray1<f64>>> {
    let parts = norms_parts(norms)?;
    let lambdas = py.detach(|| DataInfNorms::concat(&parts)?.lambdas(lambda_scale))?;
    Ok(PyArray1::from_vec(py, lambdas))
}

/// Appends training examples to a feature-store file.
#[pyclass(name = "FeatureStoreWriter", module = "openledger", frozen)]
pub struct PyFeatureStoreWriter {
    inner: Mutex<FeatureStoreWriter>,
}

/// The writer, or `BusyError` while another call (an `extend` reporting progress, say) holds it:
/// one call at a time, and a progress callback that calls back into its writer gets an error
/// instead of a deadlock.
fn lock(w: &Mutex<FeatureStoreWriter>) -> Result<std::sync::MutexGuard<'_, FeatureStoreWriter>> {
    w.try_lock().map_err(|e| match e {
        std::sync::TryLockError::WouldBlock => crate::error::busy("the feature-store writer"),
        std::sync::TryLockError::Poisoned(_) => {
            invalid_arg("writer", "poisoned by a panic in another thread")
        }
    })
}

#[pymethods]
impl PyFeatureStoreWriter {
    /// Creates the store file `path` for gradients of dimension `input_dim`, projected to `k`
    /// dimensions (`projection`: `"rademacher"`, `"gaussian"` or `"identity"`, seeded by
    /// `seed`), one learning rate per checkpoint, features stored as `"f16"` or `"f32"`. A file
    /// already at `path` raises `FileExistsError` unless `overwrite=True` replaces it.
    #[staticmethod]
    #[allow(
        clippy::too_many_arguments,
        reason = "one Rust parameter per Python keyword argument"
    )]
    #[pyo3(signature = (path, *, input_dim, k, learning_rates, projection = "rademacher", seed = 0, dtype = "f16", overwrite = false))]
    fn create(
        py: Python<'_>,
        path: PathBuf,
        input_dim: usize,
        k: usize,
        learning_rates: Vec<f64>,
        projection: &str,
        seed: u64,
        dtype: &str,
        overwrite: bool,
    ) -> Result<Self> {
        let kind = match projection {
            "rademacher" => ProjectionKind::Rademacher,
            "gaussian" => ProjectionKind::Gaussian,
            "identity" => ProjectionKind::Identity,
            other => {
                return Err(invalid_arg(
                    "projection",
                    format!(
                        "expected \"rademacher\", \"gaussian\" or \"identity\", found {other:?}"
                    ),
                ));
            }
        };
        let dtype = match dtype {
            "f16" => FeatureDType::F16,
            "f32" => FeatureDType::F32,
            other => {
                return Err(invalid_arg(
                    "dtype",
                    format!("expected \"f16\" or \"f32\", found {other:?}"),
                ));
            }
        };
        let writer = py.detach(|| {
            let projection = Projection::new(kind, seed, input_dim, k)?;
            let config = StoreConfig::new(projection, learning_rates, dtype)?;
            if overwrite {
                FeatureStoreWriter::replace(&path, config)
            } else {
                FeatureStoreWriter::create(&path, config)
            }
        })?;
        Ok(Self {
            inner: Mutex::new(writer),
        })
    }

    /// Examples in the store.
    fn __len__(&self, py: Python<'_>) -> Result<usize> {
        py.detach(|| Ok(lock(&self.inner)?.len()))
    }

    /// Appends one example: its record id, contributor and float32 gradients
    /// `[checkpoints, p]`. A bad gradient is refused and the store is unchanged.
    fn append(
        &self,
        py: Python<'_>,
        record: &Bound<'_, PyAny>,
        contributor: &Bound<'_, PyAny>,
        gradients: &Bound<'_, PyAny>,
    ) -> Result<()> {
        let example = TrainingExample {
            record: ContentId(b256("record", record)?),
            contributor: address("contributor", contributor)?,
            gradients: gradients_2d("gradients", gradients)?,
        };
        py.detach(|| Ok(lock(&self.inner)?.append(&example)?))
    }

    /// Appends many examples (gradients `[n, checkpoints, p]` float32), committing in batches;
    /// `progress(n)` is called with the examples committed since the last call (`tqdm.update`
    /// works). On a bad example the ones committed before it are kept and the error is raised.
    /// Returns how many were appended.
    #[pyo3(signature = (records, contributors, gradients, *, progress = None))]
    fn extend(
        &self,
        py: Python<'_>,
        records: &Bound<'_, PyAny>,
        contributors: &Bound<'_, PyAny>,
        gradients: &Bound<'_, PyAny>,
        progress: Option<Py<PyAny>>,
    ) -> Result<usize> {
        let records = records
            .try_iter()?
            .enumerate()
            .map(|(i, r)| Ok(ContentId(b256(&format!("records[{i}]"), &r?)?)))
            .collect::<Result<Vec<_>>>()?;
        let contributors = contributors
            .try_iter()?
            .enumerate()
            .map(|(i, a)| address(&format!("contributors[{i}]"), &a?))
            .collect::<Result<Vec<_>>>()?;
        let grads: PyReadonlyArray3<'_, f32> = gradients.extract().map_err(|_| {
            invalid_arg(
                "gradients",
                format!(
                    "expected a 3-D float32 array [n, checkpoints, p], found {}",
                    describe(gradients)
                ),
            )
        })?;
        let n = grads.shape()[0];
        if records.len() != n || contributors.len() != n {
            return Err(invalid_arg(
                "gradients",
                format!(
                    "{n} gradient rows for {} records and {} contributors",
                    records.len(),
                    contributors.len()
                ),
            ));
        }
        crate::types::aligned("gradients", &grads)?;
        let view = grads.as_array();
        let progress = Progress::new(progress);
        let done = py.detach(|| {
            let mut w = lock(&self.inner)?;
            let examples = (0..n).map(|i| {
                Ok(TrainingExample {
                    record: records[i],
                    contributor: contributors[i],
                    gradients: view
                        .index_axis(numpy::ndarray::Axis(0), i)
                        .outer_iter()
                        .map(|row| row.iter().copied().collect())
                        .collect(),
                })
            });
            let done = w.build(examples, Some(n), |p| {
                progress.advance(p.advanced);
            })?;
            Ok::<_, crate::error::Error>(done)
        });
        progress.finish()?;
        done
    }

    /// Flushes written rows and the count to stable storage.
    fn sync(&self, py: Python<'_>) -> Result<()> {
        py.detach(|| Ok(lock(&self.inner)?.sync()?))
    }
}

/// A read-only, memory-mapped feature store.
#[pyclass(name = "FeatureStore", module = "openledger", frozen)]
pub struct PyFeatureStore {
    inner: FeatureStore,
}

impl PyFeatureStore {
    fn check_index(&self, i: usize) -> Result<()> {
        if i >= self.inner.len() {
            return Err(invalid_arg(
                "index",
                format!(
                    "{i} is out of range for a store of {} examples",
                    self.inner.len()
                ),
            ));
        }
        Ok(())
    }
}

#[pymethods]
impl PyFeatureStore {
    /// Opens the store file `path`, checking its header.
    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf) -> Result<Self> {
        let inner = py.detach(|| FeatureStore::open(&path))?;
        Ok(Self { inner })
    }

    /// Examples in the store.
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// The record id of example `i`.
    fn record(&self, i: usize) -> Result<String> {
        self.check_index(i)?;
        Ok(self.inner.record(i).to_string())
    }

    /// The contributor of example `i`.
    fn contributor(&self, i: usize) -> Result<String> {
        self.check_index(i)?;
        Ok(address_str(&self.inner.contributor(i)))
    }

    /// The stored (projected) features of example `i`, `checkpoints × k` float32 values.
    fn features<'py>(&self, py: Python<'py>, i: usize) -> Result<Bound<'py, PyArray1<f32>>> {
        self.check_index(i)?;
        Ok(PyArray1::from_vec(py, self.inner.features(i)))
    }

    /// The contributor of every example, in store order (checksummed addresses).
    fn contributors(&self) -> Vec<String> {
        (0..self.inner.len())
            .map(|i| address_str(&self.inner.contributor(i)))
            .collect()
    }

    /// The store's file.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path().to_path_buf()
    }

    /// Splits the store into `shards` files in `dir` (`{stem}.shard-{j}-of-{n}.olfs`, its
    /// configuration, its rows in order, whole blocks of 1024 rows in every shard but the
    /// last); returns their paths. Scores over the shards equal the store's bit for bit, and
    /// `FeatureStore.merge` of the shards gives back the store's bytes. More shards than
    /// blocks, or a shard file already there, raise.
    fn split(&self, py: Python<'_>, dir: PathBuf, shards: usize) -> Result<Vec<PathBuf>> {
        Ok(py.detach(|| self.inner.split(&dir, shards))?)
    }

    /// Concatenates the stores at `parts` (one configuration) in order into a new store at
    /// `out` and opens it.
    #[staticmethod]
    fn merge(py: Python<'_>, parts: Vec<PathBuf>, out: PathBuf) -> Result<Self> {
        let inner = py.detach(|| FeatureStore::merge(&parts, &out))?;
        Ok(Self { inner })
    }

    /// DataInf's first pass on this store or shard (see `score`'s `layers`): `{"rows": int,
    /// "sums": float64 array (blocks, segments)}`, each block's `Σ ‖g‖²` per (checkpoint,
    /// layer) segment. `datainf_lambdas` combines the shards'.
    #[pyo3(signature = (*, layers = None, progress = None))]
    fn datainf_norms<'py>(
        &self,
        py: Python<'py>,
        layers: Option<Vec<(usize, usize)>>,
        progress: Option<Py<PyAny>>,
    ) -> Result<Bound<'py, PyDict>> {
        let cfg = datainf_config(layers, 0.1);
        let progress = Progress::new(progress);
        let norms =
            py.detach(|| datainf_norms(&self.inner, &cfg, |p| progress.advance(p.advanced)));
        progress.finish()?;
        let norms = norms?;
        sums_dict(py, norms.rows, norms.segments, norms.sums)
    }

    /// DataInf's second pass on this store or shard, with the store-wide `lambdas`
    /// (`datainf_lambdas`): `{"rows": int, "sums": float64 array (blocks, checkpoints·k)}`.
    #[pyo3(signature = (gradients, lambdas, *, layers = None, progress = None))]
    fn datainf_residual<'py>(
        &self,
        py: Python<'py>,
        gradients: &Bound<'py, PyAny>,
        lambdas: Vec<f64>,
        layers: Option<Vec<(usize, usize)>>,
        progress: Option<Py<PyAny>>,
    ) -> Result<Bound<'py, PyDict>> {
        let cfg = datainf_config(layers, 0.1);
        let g = gradients_2d("gradients", gradients)?;
        let progress = Progress::new(progress);
        let r = py.detach(|| {
            let q = self.inner.project_query(&g)?;
            datainf_residual(&self.inner, &q, &cfg, &lambdas, |p| {
                progress.advance(p.advanced)
            })
        });
        progress.finish()?;
        let r = r?;
        sums_dict(py, r.rows, r.width, r.sums)
    }

    /// DataInf's weights for the query (float32, `checkpoints·k`) from every shard's
    /// `datainf_residual` (in shard order) and the `lambdas`; `score_weights` on each shard
    /// then gives its scores. Any shard (or the whole store) computes the same weights.
    #[pyo3(signature = (gradients, residuals, lambdas, *, layers = None))]
    fn datainf_weights<'py>(
        &self,
        py: Python<'py>,
        gradients: &Bound<'py, PyAny>,
        residuals: &Bound<'py, PyAny>,
        lambdas: Vec<f64>,
        layers: Option<Vec<(usize, usize)>>,
    ) -> Result<Bound<'py, PyArray1<f32>>> {
        let cfg = datainf_config(layers, 0.1);
        let g = gradients_2d("gradients", gradients)?;
        let parts = residual_parts(residuals)?;
        let w = py.detach(|| {
            let q = self.inner.project_query(&g)?;
            DataInfResidual::concat(&parts)?.weights(self.inner.config(), &q, &cfg, &lambdas)
        })?;
        Ok(PyArray1::from_vec(py, w))
    }

    /// `⟨features, w⟩` of every example (float32 `w` of `checkpoints·k` values, as
    /// `datainf_weights` returns them): one float32 score per example.
    #[pyo3(signature = (w, *, progress = None))]
    fn score_weights<'py>(
        &self,
        py: Python<'py>,
        w: Vec<f32>,
        progress: Option<Py<PyAny>>,
    ) -> Result<Bound<'py, PyArray1<f32>>> {
        let progress = Progress::new(progress);
        let scores = py.detach(|| score_weights(&self.inner, &w, |p| progress.advance(p.advanced)));
        progress.finish()?;
        Ok(PyArray1::from_vec(py, scores?.values))
    }

    /// Scores every stored example against a query's float32 gradients `[checkpoints, p]`
    /// with `method` `"tracin"` (TracIn-CP, `Σ_c η_c ⟨φ_c(q), φ_c(z)⟩`), `"cosine"` (LESS)
    /// or `"datainf"` (DataInf's closed form over `layers`, `[(start, end), …]` ranges of the
    /// `k` features, one layer when omitted, with `λ = lambda_scale · mean ‖g‖²` per layer;
    /// Koh–Liang's sign: helpful examples score low); returns one float32 score per example,
    /// in store order. `progress(n)` is called with the rows read since the last call.
    #[pyo3(signature = (gradients, *, method = "tracin", layers = None, lambda_scale = 0.1, progress = None))]
    fn score<'py>(
        &self,
        py: Python<'py>,
        gradients: &Bound<'py, PyAny>,
        method: &str,
        layers: Option<Vec<(usize, usize)>>,
        lambda_scale: f64,
        progress: Option<Py<PyAny>>,
    ) -> Result<Bound<'py, PyArray1<f32>>> {
        let method = match method {
            "tracin" => ScoreMethod::TracIn,
            "cosine" => ScoreMethod::Cosine,
            "datainf" => ScoreMethod::DataInf(datainf_config(layers, lambda_scale)),
            other => {
                return Err(invalid_arg(
                    "method",
                    format!("expected \"tracin\", \"cosine\" or \"datainf\", found {other:?}"),
                ));
            }
        };
        let g = gradients_2d("gradients", gradients)?;
        let progress = Progress::new(progress);
        let scores = py.detach(|| {
            let q = self.inner.project_query(&g)?;
            score(&self.inner, &q, &method, |p| {
                progress.advance(p.advanced);
            })
        });
        progress.finish()?;
        Ok(PyArray1::from_vec(py, scores?.values))
    }

    /// The `k` highest of `scores` (one float32 per example, as `score` returns them), best
    /// first (ties by lower index): dicts `{"index", "record", "contributor", "score"}`.
    fn top_k<'py>(
        &self,
        py: Python<'py>,
        scores: &Bound<'py, PyAny>,
        k: usize,
    ) -> Result<Bound<'py, PyList>> {
        let values: PyReadonlyArray1<'_, f32> = scores.extract().map_err(|_| {
            invalid_arg(
                "scores",
                format!("expected a 1-D float32 array, found {}", describe(scores)),
            )
        })?;
        if values.len() != self.inner.len() {
            return Err(invalid_arg(
                "scores",
                format!(
                    "{} scores for a store of {} examples",
                    values.len(),
                    self.inner.len()
                ),
            ));
        }
        crate::types::aligned("scores", &values)?;
        let scores = Scores {
            values: values.as_array().iter().copied().collect(),
        };
        let top = py.detach(|| scores.top_k(&self.inner, k))?;
        let items = top
            .iter()
            .map(|r| {
                let d = PyDict::new(py);
                d.set_item("index", r.index)?;
                d.set_item("record", r.record.to_string())?;
                d.set_item("contributor", address_str(&r.contributor))?;
                d.set_item("score", r.score)?;
                Ok(d)
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyList::new(py, items)?)
    }
}

/// Adds the feature-store classes to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyFeatureStoreWriter>()?;
    m.add_function(wrap_pyfunction!(py_datainf_lambdas, m)?)?;
    m.add_class::<PyFeatureStore>()?;
    Ok(())
}
