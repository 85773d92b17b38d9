//! JavaScript face of `openledger_poa::store` and `openledger_poa::influence::score`: the on-disk feature
//! store of projected training gradients (split into shards and merged back), and TracIn /
//! cosine / DataInf scoring of a query against it.
//!
//! Gradients are flat `Float32Array`s, row-major: `[checkpoints, inputDim]` for one example or a
//! query, `[n, checkpoints, inputDim]` for many examples.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use napi::bindgen_prelude::{AsyncTask, Float32Array};
use napi_derive::napi;
use openledger_core::ContentId;
use openledger_poa::influence::score::{DataInf, ScoreMethod, Scores, score};
use openledger_poa::projection::{Projection, ProjectionKind};
use openledger_poa::store::{
    FeatureDType, FeatureStore as RustStore, FeatureStoreWriter as RustWriter, StoreConfig,
    TrainingExample,
};

use crate::error::{JsResult, Result, busy, invalid_arg};
use crate::progress::{Progress, ProgressFn};
use crate::task::{Float32Task, NumberTask, StringListTask, VoidTask, count, task};
use crate::types::{Bytes, address, address_str, b256};

task!(
    /// Resolves to a `FeatureStoreWriter`.
    FeatureStoreWriterTask => FeatureStoreWriter
);
task!(
    /// Resolves to a `FeatureStore`.
    FeatureStoreTask => FeatureStore
);

/// How a feature store projects and stores gradients.
#[napi(object)]
pub struct StoreOptions {
    /// The gradient dimension `p`.
    pub input_dim: f64,
    /// The projected dimension.
    pub k: f64,
    /// One learning rate per checkpoint.
    pub learning_rates: Vec<f64>,
    /// `"rademacher"` (the default), `"gaussian"` or `"identity"`.
    pub projection: Option<String>,
    /// Seeds the projection (default 0).
    pub seed: Option<f64>,
    /// How features are stored: `"f16"` (the default) or `"f32"`.
    pub dtype: Option<String>,
    /// Replace a file already at the path (by default an existing file is refused: `EIO`
    /// with the operating system's "File exists").
    pub overwrite: Option<bool>,
}

/// DataInf's settings for `FeatureStore.score`.
#[napi(object)]
pub struct DataInfOptions {
    /// `[start, end]` ranges of the `k` features, one per layer (default: one layer of all `k`).
    pub layers: Option<Vec<Vec<f64>>>,
    /// `λ` per layer as a multiple of its mean squared gradient norm (default 0.1).
    pub lambda_scale: Option<f64>,
}

fn datainf(options: Option<DataInfOptions>) -> Result<DataInf> {
    let o = options.unwrap_or(DataInfOptions {
        layers: None,
        lambda_scale: None,
    });
    let layers = o
        .layers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, l)| match l.as_slice() {
            [a, b] => {
                Ok(count(&format!("layers[{i}][0]"), *a)?..count(&format!("layers[{i}][1]"), *b)?)
            }
            _ => Err(invalid_arg(
                &format!("layers[{i}]"),
                "expected [start, end]",
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(DataInf {
        layers,
        lambda_scale: o.lambda_scale.unwrap_or(0.1),
    })
}

/// `flat` (`[checkpoints, p]` row-major) as one vector per checkpoint.
fn per_checkpoint(name: &str, flat: &[f32], checkpoints: usize, p: usize) -> Result<Vec<Vec<f32>>> {
    if flat.len() != checkpoints * p {
        return Err(invalid_arg(
            name,
            format!(
                "expected {checkpoints} checkpoints × {p} values = {}, found {}",
                checkpoints * p,
                flat.len()
            ),
        ));
    }
    Ok(flat.chunks(p.max(1)).map(<[f32]>::to_vec).collect())
}

/// The writer, or `Busy` while another call holds it.
fn lock(w: &Mutex<RustWriter>) -> Result<MutexGuard<'_, RustWriter>> {
    w.try_lock().map_err(|e| match e {
        TryLockError::WouldBlock => busy("the feature-store writer"),
        TryLockError::Poisoned(_) => invalid_arg("writer", "poisoned by a panic in another call"),
    })
}

/// Appends training examples to a feature-store file.
#[napi]
pub struct FeatureStoreWriter {
    inner: Arc<Mutex<RustWriter>>,
    checkpoints: usize,
    input_dim: usize,
}

#[napi]
impl FeatureStoreWriter {
    /// Creates the store file `path` (an existing file is refused unless `overwrite`).
    #[napi(catch_unwind)]
    pub fn create(
        path: String,
        options: StoreOptions,
    ) -> Result<AsyncTask<FeatureStoreWriterTask>> {
        crate::error::guard(|| {
            let kind = match options.projection.as_deref() {
                None | Some("rademacher") => ProjectionKind::Rademacher,
                Some("gaussian") => ProjectionKind::Gaussian,
                Some("identity") => ProjectionKind::Identity,
                Some(other) => {
                    return Err(invalid_arg(
                        "projection",
                        format!(
                            "expected \"rademacher\", \"gaussian\" or \"identity\", found {other:?}"
                        ),
                    ));
                }
            };
            let dtype = match options.dtype.as_deref() {
                None | Some("f16") => FeatureDType::F16,
                Some("f32") => FeatureDType::F32,
                Some(other) => {
                    return Err(invalid_arg(
                        "dtype",
                        format!("expected \"f16\" or \"f32\", found {other:?}"),
                    ));
                }
            };
            let input_dim = count("inputDim", options.input_dim)?;
            let k = count("k", options.k)?;
            let seed = options.seed.map_or(Ok(0), |s| count("seed", s))? as u64;
            let lrs = options.learning_rates;
            let overwrite = options.overwrite.unwrap_or(false);
            Ok(FeatureStoreWriterTask::spawn(move || {
                let projection = Projection::new(kind, seed, input_dim, k).js()?;
                let config = StoreConfig::new(projection, lrs, dtype).js()?;
                let checkpoints = config.checkpoints();
                let path = PathBuf::from(path);
                let writer = if overwrite {
                    RustWriter::replace(path, config)
                } else {
                    RustWriter::create(path, config)
                }
                .js()?;
                Ok(FeatureStoreWriter {
                    inner: Arc::new(Mutex::new(writer)),
                    checkpoints,
                    input_dim,
                })
            }))
        })
    }

    /// Examples in the store.
    #[napi(getter, catch_unwind)]
    pub fn length(&self) -> Result<u32> {
        crate::error::guard(|| Ok(lock(&self.inner)?.len() as u32))
    }

    /// Appends one example: its record id, its contributor and its gradients
    /// (`[checkpoints, inputDim]`). A bad gradient is refused and the store is unchanged.
    #[napi(catch_unwind)]
    pub fn append(
        &self,
        record: Bytes,
        contributor: Bytes,
        gradients: Float32Array,
    ) -> Result<AsyncTask<VoidTask>> {
        crate::error::guard(|| {
            let example = TrainingExample {
                record: ContentId(b256("record", &record)?),
                contributor: address("contributor", &contributor)?,
                gradients: per_checkpoint(
                    "gradients",
                    &gradients,
                    self.checkpoints,
                    self.input_dim,
                )?,
            };
            let inner = self.inner.clone();
            Ok(VoidTask::spawn(move || lock(&inner)?.append(&example).js()))
        })
    }

    /// Appends many examples (gradients `[n, checkpoints, inputDim]`), committing in batches;
    /// `onProgress(n)` is called with the examples committed since its last call. On a bad
    /// example the ones committed before it are kept and the promise rejects. Resolves to how
    /// many were appended.
    #[napi(catch_unwind)]
    pub fn extend(
        &self,
        records: Vec<Bytes>,
        contributors: Vec<Bytes>,
        gradients: Float32Array,
        on_progress: Option<ProgressFn>,
    ) -> Result<AsyncTask<NumberTask>> {
        crate::error::guard(|| {
            let n = records.len();
            if contributors.len() != n {
                return Err(invalid_arg(
                    "contributors",
                    format!("{} contributors for {n} records", contributors.len()),
                ));
            }
            let row = self.checkpoints * self.input_dim;
            if gradients.len() != n * row {
                return Err(invalid_arg(
                    "gradients",
                    format!(
                        "expected {n} examples × {} checkpoints × {} values = {}, found {}",
                        self.checkpoints,
                        self.input_dim,
                        n * row,
                        gradients.len()
                    ),
                ));
            }
            let examples = (0..n)
                .map(|i| {
                    Ok(TrainingExample {
                        record: ContentId(b256(&format!("records[{i}]"), &records[i])?),
                        contributor: address(&format!("contributors[{i}]"), &contributors[i])?,
                        gradients: per_checkpoint(
                            "gradients",
                            &gradients[i * row..(i + 1) * row],
                            self.checkpoints,
                            self.input_dim,
                        )?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let (inner, progress) = (self.inner.clone(), Progress::new(on_progress));
            Ok(NumberTask::spawn(move || {
                let mut w = lock(&inner)?;
                let done = w
                    .build(examples.into_iter().map(Ok), Some(n), |p| {
                        progress.advance(p.advanced);
                    })
                    .js()?;
                Ok(done as f64)
            }))
        })
    }

    /// Flushes written rows and the count to stable storage.
    #[napi(catch_unwind)]
    pub fn sync(&self) -> Result<AsyncTask<VoidTask>> {
        crate::error::guard(|| {
            let inner = self.inner.clone();
            Ok(VoidTask::spawn(move || lock(&inner)?.sync().js()))
        })
    }
}

/// One of the examples most similar to a query.
#[napi(object)]
pub struct RankedExample {
    /// Its index in the store.
    pub index: u32,
    /// Its record id.
    pub record: String,
    /// Its contributor (checksummed).
    pub contributor: String,
    /// Its score.
    pub score: f64,
}

/// A read-only, memory-mapped feature store.
#[napi]
pub struct FeatureStore {
    inner: Arc<RustStore>,
}

impl FeatureStore {
    fn index(&self, i: f64) -> Result<usize> {
        let i = count("index", i)?;
        if i >= self.inner.len() {
            return Err(invalid_arg(
                "index",
                format!(
                    "{i} is out of range for a store of {} examples",
                    self.inner.len()
                ),
            ));
        }
        Ok(i)
    }
}

#[napi]
impl FeatureStore {
    /// Opens the store file `path`, checking its header.
    #[napi(catch_unwind)]
    pub fn open(path: String) -> AsyncTask<FeatureStoreTask> {
        FeatureStoreTask::spawn(move || {
            Ok(FeatureStore {
                inner: Arc::new(RustStore::open(PathBuf::from(path)).js()?),
            })
        })
    }

    /// Examples in the store.
    #[napi(getter, catch_unwind)]
    pub fn length(&self) -> u32 {
        self.inner.len() as u32
    }

    /// The record id of example `i`.
    #[napi(catch_unwind)]
    pub fn record(&self, i: f64) -> Result<String> {
        crate::error::guard(|| Ok(self.inner.record(self.index(i)?).to_string()))
    }

    /// The contributor of example `i`.
    #[napi(catch_unwind)]
    pub fn contributor(&self, i: f64) -> Result<String> {
        crate::error::guard(|| Ok(address_str(&self.inner.contributor(self.index(i)?))))
    }

    /// The stored (projected) features of example `i`, `checkpoints × k` values.
    #[napi(catch_unwind)]
    pub fn features(&self, i: f64) -> Result<Float32Array> {
        crate::error::guard(|| Ok(Float32Array::new(self.inner.features(self.index(i)?))))
    }

    /// The contributor of every example, in store order (checksummed addresses).
    #[napi(catch_unwind)]
    pub fn contributors(&self) -> Vec<String> {
        (0..self.inner.len())
            .map(|i| address_str(&self.inner.contributor(i)))
            .collect()
    }

    /// Splits the store into `shards` files in `dir` (`{stem}.shard-{j}-of-{n}.olfs`, its
    /// configuration, its rows in order, whole blocks of 1024 rows in every shard but the
    /// last); resolves to their paths. Scores over the shards equal the store's bit for bit,
    /// and `FeatureStore.merge` of the shards gives back the store's bytes. More shards than
    /// blocks, or a shard file already there, reject.
    #[napi(catch_unwind)]
    pub fn split(&self, dir: String, shards: f64) -> Result<AsyncTask<StringListTask>> {
        crate::error::guard(|| {
            let (store, shards) = (self.inner.clone(), count("shards", shards)?);
            Ok(StringListTask::spawn(move || {
                let paths = store.split(PathBuf::from(dir), shards).js()?;
                Ok(paths.iter().map(|p| p.display().to_string()).collect())
            }))
        })
    }

    /// Concatenates the stores at `parts` (one configuration) in order into a new store at
    /// `out`, and resolves to it.
    #[napi(catch_unwind)]
    pub fn merge(parts: Vec<String>, out: String) -> AsyncTask<FeatureStoreTask> {
        FeatureStoreTask::spawn(move || {
            Ok(FeatureStore {
                inner: Arc::new(RustStore::merge(&parts, PathBuf::from(out)).js()?),
            })
        })
    }

    /// Scores every stored example against a query's gradients (`[checkpoints, inputDim]`)
    /// with `method` `"tracin"` (the default: TracIn-CP, `Σ_c η_c ⟨φ_c(q), φ_c(z)⟩`),
    /// `"cosine"` (LESS) or `"datainf"` (DataInf's closed form, set by `datainf`; Koh–Liang's
    /// sign: helpful examples score low); resolves to one score per example, in store order.
    /// `onProgress(n)` is called with the rows read since its last call.
    #[napi(catch_unwind)]
    pub fn score(
        &self,
        gradients: Float32Array,
        method: Option<String>,
        on_progress: Option<ProgressFn>,
        datainf: Option<DataInfOptions>,
    ) -> Result<AsyncTask<Float32Task>> {
        crate::error::guard(|| {
            let method = match method.as_deref() {
                None | Some("tracin") => ScoreMethod::TracIn,
                Some("cosine") => ScoreMethod::Cosine,
                Some("datainf") => ScoreMethod::DataInf(self::datainf(datainf)?),
                Some(other) => {
                    return Err(invalid_arg(
                        "method",
                        format!("expected \"tracin\", \"cosine\" or \"datainf\", found {other:?}"),
                    ));
                }
            };
            let cfg = self.inner.config();
            let g = per_checkpoint(
                "gradients",
                &gradients,
                cfg.checkpoints(),
                cfg.projection.input_dim,
            )?;
            let (store, progress) = (self.inner.clone(), Progress::new(on_progress));
            Ok(Float32Task::spawn(move || {
                let q = store.project_query(&g).js()?;
                let scores = score(&store, &q, &method, |p| {
                    progress.advance(p.advanced);
                })
                .js()?;
                Ok(Float32Array::new(scores.values))
            }))
        })
    }

    /// The `k` highest of `scores` (one per example, as `score` resolves them), best first
    /// (ties by lower index).
    #[napi(catch_unwind)]
    pub fn top_k(&self, scores: Float32Array, k: f64) -> Result<Vec<RankedExample>> {
        crate::error::guard(|| {
            if scores.len() != self.inner.len() {
                return Err(invalid_arg(
                    "scores",
                    format!(
                        "{} scores for a store of {} examples",
                        scores.len(),
                        self.inner.len()
                    ),
                ));
            }
            let scores = Scores {
                values: scores.to_vec(),
            };
            Ok(scores
                .top_k(&self.inner, count("k", k)?)
                .js()?
                .iter()
                .map(|r| RankedExample {
                    index: r.index as u32,
                    record: r.record.to_string(),
                    contributor: address_str(&r.contributor),
                    score: f64::from(r.score),
                })
                .collect())
        })
    }
}
