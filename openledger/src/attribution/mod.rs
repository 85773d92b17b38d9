//! Influence of datanet records on a fine-tuned adapter's answers: TracIn-CP and DataInf over
//! the LoRA gradients of the checkpoints a training run logged.
//!
//! The flow joins three layers:
//! 1. the trainer ([`openledger_lora::train::Trainer`]) runs with `checkpoint_steps` and a
//!    training log; each [`Checkpoint`] event carries the adapter, which
//!    [`checkpoint_parameters`] turns back into the trainer's flat parameter vector;
//! 2. [`InfluenceIndex::build`] restores each checkpoint in turn, takes the per-example LoRA
//!    gradient of every training record there, and writes them with the checkpoint weights
//!    [`tracin_weights`] derives from the logged learning rates into an
//!    [`openledger_poa::store`] feature store (record id and contributor per row);
//! 3. a query — a prompt and the model's answer — is featurised the same way
//!    ([`InfluenceIndex::featurize`]) and scored ([`InfluenceIndex::scores`]) with TracIn-CP
//!    or DataInf on the LoRA layers, into per-record and per-contributor influence
//!    ([`Attribution`]).
//!
//! Sign convention: every score here is *helpfulness* — positive when training on the record
//! lowers the query's loss (TracIn's own sign; DataInf's Koh–Liang sign is flipped).
//!
//! [`metrics`] holds the judges (AUC, Spearman, LDS) and [`experiment`] the noisy-label and
//! linear-datamodeling experiment that measures them on a model trained in code.
//!
//! ```
//! use openledger::attribution::{lora_layers, tracin_weights};
//! use openledger::core::trainlog::{TrainLog, TrainStep};
//! use openledger::core::{B256, ContentId};
//! use openledger::lora::train::ParamSlice;
//!
//! // Checkpoints at steps 2 and 4 stand for steps 1..=2 and 3..=4 of the log.
//! let mut log = TrainLog::new(B256::ZERO, B256::ZERO);
//! for (step, lr) in [(1, 0.5), (2, 0.25), (3, 0.125), (4, 0.0625)] {
//!     log.append(TrainStep::new(step, vec![ContentId::of([step as u8])], 1.0, lr)).unwrap();
//! }
//! assert_eq!(tracin_weights(&log, &[2, 4]).unwrap(), vec![0.75, 0.1875]);
//!
//! // DataInf layers: one feature range per adapted module.
//! let slice = |name: &str, shape: Vec<usize>, offset| ParamSlice { name: name.into(), shape, offset };
//! let layout = [
//!     slice("model.layers.0.self_attn.q_proj.lora_A.weight", vec![2, 8], 0),
//!     slice("model.layers.0.self_attn.q_proj.lora_B.weight", vec![8, 2], 16),
//!     slice("model.layers.0.self_attn.v_proj.lora_A.weight", vec![2, 8], 32),
//!     slice("model.layers.0.self_attn.v_proj.lora_B.weight", vec![4, 2], 48),
//! ];
//! assert_eq!(lora_layers(&layout), vec![0..32, 32..56]);
//! ```

pub mod experiment;
pub mod metrics;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use openledger_core::datanet::Datanet;
use openledger_core::trainlog::TrainLog;
use openledger_core::{Address, ContentId};
use openledger_lora::train::{Checkpoint, Example, ParamSlice, TrainError, TrainEvent, Trainer};
use openledger_poa::PoaError;
use openledger_poa::projection::{Projection, ProjectionKind};
use openledger_poa::score::{self, DataInf, ProjectedQuery, ScoreMethod};
use openledger_poa::store::{
    FeatureDType, FeatureStore, FeatureStoreWriter, StoreConfig, TrainingExample,
};
use thiserror::Error;

/// Why an attribution step failed. The trainer's parameters are restored before any of these
/// is returned.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AttributionError {
    /// The trainer refused (bad example, non-finite value, ...).
    #[error(transparent)]
    Train(#[from] TrainError),
    /// The feature store or scorer refused.
    #[error(transparent)]
    Poa(#[from] PoaError),
    /// A training example without a datanet source cannot be attributed.
    #[error("training example {index} names no datanet record")]
    MissingSource {
        /// Index in the training set.
        index: usize,
    },
    /// A training example whose record is not in the datanet.
    #[error("training example {index} names record {record}, which the datanet does not hold")]
    UnknownRecord {
        /// Index in the training set.
        index: usize,
        /// The record id.
        record: ContentId,
    },
    /// A checkpoint whose adapter does not match the trainer's parameter layout.
    #[error("checkpoint of step {step}: {reason}")]
    BadCheckpoint {
        /// The checkpoint's step.
        step: usize,
        /// What does not match.
        reason: String,
    },
    /// Checkpoints must be given, in increasing step order.
    #[error("checkpoints must be non-empty and strictly increasing, found steps {steps:?}")]
    CheckpointOrder {
        /// The steps given.
        steps: Vec<usize>,
    },
    /// A checkpoint step the training log does not cover.
    #[error("the training log has no step {step} (it ends at {last:?})")]
    StepNotLogged {
        /// The missing step.
        step: u64,
        /// The last logged step.
        last: Option<u64>,
    },
    /// Nothing to score against.
    #[error("no query given")]
    NoQuery,
}

/// A checkpoint's flat parameters (in [`Trainer::gradient_layout`] order) and where it came
/// from.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointParams {
    /// Optimizer steps taken when it was saved.
    pub step: usize,
    /// The checkpoint's id (keccak-256 of its safetensors), as the training log records it.
    pub id: ContentId,
    /// The parameters.
    pub parameters: Vec<f32>,
}

/// Decodes a [`Checkpoint`]'s adapter into the flat parameter vector of `layout` (every
/// tensor present, F32, with the layout's shape).
pub fn checkpoint_parameters(
    layout: &[ParamSlice],
    checkpoint: &Checkpoint,
) -> Result<CheckpointParams, AttributionError> {
    let bad = |reason: String| AttributionError::BadCheckpoint {
        step: checkpoint.step,
        reason,
    };
    let st = safetensors::SafeTensors::deserialize(&checkpoint.safetensors)
        .map_err(|e| bad(format!("safetensors: {e}")))?;
    let mut by_suffix = BTreeMap::new();
    for (key, view) in st.tensors() {
        by_suffix.insert(key, view);
    }
    let total: usize = layout
        .iter()
        .map(|s| s.shape.iter().product::<usize>())
        .sum();
    let mut out = vec![0f32; total];
    for slice in layout {
        let view = by_suffix
            .iter()
            .find(|(k, _)| {
                k.strip_suffix(slice.name.as_str())
                    .is_some_and(|prefix| prefix.ends_with('.'))
            })
            .map(|(_, v)| v)
            .ok_or_else(|| bad(format!("no tensor {}", slice.name)))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(bad(format!(
                "{} is {:?}, expected F32",
                slice.name,
                view.dtype()
            )));
        }
        if view.shape() != slice.shape.as_slice() {
            return Err(bad(format!(
                "{} has shape {:?}, expected {:?}",
                slice.name,
                view.shape(),
                slice.shape
            )));
        }
        let n: usize = slice.shape.iter().product();
        let dst = out
            .get_mut(slice.offset..slice.offset + n)
            .ok_or_else(|| bad(format!("{} lies outside the layout", slice.name)))?;
        for (d, b) in dst.iter_mut().zip(view.data().chunks_exact(4)) {
            *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
    Ok(CheckpointParams {
        step: checkpoint.step,
        id: checkpoint.id,
        parameters: out,
    })
}

/// Keeps the flat parameters of every checkpoint a training run reports: pass each
/// [`TrainEvent`] of [`Trainer::train`] to [`observe`](Self::observe), then take the
/// checkpoints (or the failure to decode one) with [`finish`](Self::finish).
#[derive(Debug)]
pub struct CheckpointCollector {
    layout: Vec<ParamSlice>,
    kept: Vec<CheckpointParams>,
    bad: Option<AttributionError>,
}

impl CheckpointCollector {
    /// A collector for `trainer`'s parameter layout.
    pub fn new(trainer: &Trainer) -> Self {
        Self {
            layout: trainer.gradient_layout(),
            kept: Vec::new(),
            bad: None,
        }
    }

    /// Decodes `event` when it is a checkpoint; other events are ignored.
    pub fn observe(&mut self, event: &TrainEvent) {
        if let TrainEvent::Checkpoint(c) = event {
            match checkpoint_parameters(&self.layout, c) {
                Ok(p) => self.kept.push(p),
                Err(err) => self.bad = Some(err),
            }
        }
    }

    /// The checkpoints seen, in order, or the error of the last one that did not decode.
    pub fn finish(self) -> Result<Vec<CheckpointParams>, AttributionError> {
        match self.bad {
            Some(err) => Err(err),
            None => Ok(self.kept),
        }
    }
}

/// TracIn-CP checkpoint weights from the training log: checkpoint `c` at step `s_c` stands for
/// the steps `s_{c−1} + 1 ..= s_c` (with `s_0 = 0`), and its weight is the sum of the learning
/// rates logged for those steps — `η · (steps in the interval)` for a constant rate, which is
/// TracIn-CP's `η_i` for evenly spaced checkpoints.
pub fn tracin_weights(log: &TrainLog, steps: &[usize]) -> Result<Vec<f64>, AttributionError> {
    check_order(steps)?;
    let last = log.entries().last().map(|e| e.step.step);
    let mut out = Vec::with_capacity(steps.len());
    let mut prev = 0u64;
    for &s in steps {
        let s = s as u64;
        if !log.entries().iter().any(|e| e.step.step == s) {
            return Err(AttributionError::StepNotLogged { step: s, last });
        }
        out.push(
            log.entries()
                .iter()
                .filter(|e| e.step.step > prev && e.step.step <= s)
                .map(|e| e.step.learning_rate)
                .sum(),
        );
        prev = s;
    }
    Ok(out)
}

fn check_order(steps: &[usize]) -> Result<(), AttributionError> {
    if steps.is_empty() || steps.windows(2).any(|w| w[0] >= w[1]) {
        return Err(AttributionError::CheckpointOrder {
            steps: steps.to_vec(),
        });
    }
    Ok(())
}

/// The feature index ranges of each adapted module (its `lora_A` and `lora_B`, and DoRA
/// magnitude) in a flat gradient: DataInf's LoRA layers.
pub fn lora_layers(layout: &[ParamSlice]) -> Vec<Range<usize>> {
    let mut out: Vec<(String, Range<usize>)> = Vec::new();
    for s in layout {
        let module = s.name.rsplit_once(".lora_").map_or(&s.name[..], |(m, _)| m);
        let end = s.offset + s.shape.iter().product::<usize>();
        match out.last_mut() {
            Some((m, r)) if m == module && r.end == s.offset => r.end = end,
            _ => out.push((module.to_string(), s.offset..end)),
        }
    }
    out.into_iter().map(|(_, r)| r).collect()
}

/// How gradients are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureSpace {
    /// The full LoRA gradient in f32 (small adapters; DataInf per LoRA module).
    Exact,
    /// A seeded Rademacher sketch to `k` dimensions in f16 (DataInf over one layer).
    Sketch {
        /// Sketch dimension.
        k: usize,
        /// Projection seed.
        seed: u64,
    },
}

/// The scoring method.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// TracIn-CP: `Σ_c η_c ⟨∇ℓ(q; θ_c), ∇ℓ(z; θ_c)⟩`.
    TracIn,
    /// DataInf's closed-form inverse-Hessian on the LoRA layers (λ as a multiple of each
    /// layer's mean squared gradient norm; the paper uses 0.1), sign flipped to helpfulness.
    DataInf {
        /// `λ_l / mean ‖g_l‖²`.
        lambda_scale: f64,
    },
}

/// Where a long attribution job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// What is running (`"gradients"`, `"queries"`, `"scores"`).
    pub stage: &'static str,
    /// Units done.
    pub done: usize,
    /// Units in the stage.
    pub total: usize,
}

/// Per-record and per-contributor influence of a query (or a query set, summed).
#[derive(Clone, Debug, PartialEq)]
pub struct Attribution {
    /// `(record, contributor, score)` in training-set order.
    pub per_record: Vec<(ContentId, Address, f64)>,
    /// Sum of the scores per contributor, by address.
    pub per_contributor: Vec<(Address, f64)>,
}

/// The training records' gradient features at every checkpoint, in a feature store.
#[derive(Debug)]
pub struct InfluenceIndex {
    store: FeatureStore,
    layers: Vec<Range<usize>>,
    checkpoints: Vec<CheckpointParams>,
}

/// Runs `f` with each checkpoint's parameters loaded, restoring the trainer's own parameters
/// afterwards whatever happens.
fn at_checkpoints<T>(
    trainer: &mut Trainer,
    checkpoints: &[CheckpointParams],
    mut f: impl FnMut(&Trainer, usize) -> Result<T, AttributionError>,
) -> Result<Vec<T>, AttributionError> {
    let saved = trainer.parameters()?;
    let mut run = || -> Result<Vec<T>, AttributionError> {
        let mut out = Vec::with_capacity(checkpoints.len());
        for (c, cp) in checkpoints.iter().enumerate() {
            trainer.set_parameters(&cp.parameters)?;
            out.push(f(trainer, c)?);
        }
        Ok(out)
    };
    let result = run();
    trainer.set_parameters(&saved)?;
    result
}

impl InfluenceIndex {
    /// Builds the index at `path`: for each checkpoint, paired with its TracIn weight (from
    /// [`tracin_weights`]), the per-example gradient of every `train` example, whose source
    /// record must be in `datanet` (its contributor is stored with it).
    pub fn build(
        path: &Path,
        trainer: &mut Trainer,
        train: &[Example],
        datanet: &Datanet,
        checkpoints: Vec<(CheckpointParams, f64)>,
        space: FeatureSpace,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Self, AttributionError> {
        let (checkpoints, weights): (Vec<CheckpointParams>, Vec<f64>) =
            checkpoints.into_iter().unzip();
        let steps: Vec<usize> = checkpoints.iter().map(|c| c.step).collect();
        check_order(&steps)?;
        let mut rows = Vec::with_capacity(train.len());
        for (index, ex) in train.iter().enumerate() {
            let src = ex
                .source
                .as_ref()
                .ok_or(AttributionError::MissingSource { index })?;
            let rec = datanet
                .get(&src.record)
                .ok_or(AttributionError::UnknownRecord {
                    index,
                    record: src.record,
                })?;
            rows.push((src.record, rec.contributor));
        }
        let layout = trainer.gradient_layout();
        let p = trainer.num_parameters();
        let (projection, dtype, layers) = match space {
            FeatureSpace::Exact => (
                Projection::new(ProjectionKind::Identity, 0, p, p)?,
                FeatureDType::F32,
                lora_layers(&layout),
            ),
            FeatureSpace::Sketch { k, seed } => (
                Projection::new(ProjectionKind::Rademacher, seed, p, k)?,
                FeatureDType::F16,
                std::iter::once(0..k).collect(),
            ),
        };
        let config = StoreConfig::new(projection, weights, dtype)?;
        if config.checkpoints() != checkpoints.len() {
            return Err(AttributionError::CheckpointOrder { steps });
        }
        let total = checkpoints.len() * train.len();
        let grads = at_checkpoints(trainer, &checkpoints, |t, c| {
            let mut cb = |done: usize, _: usize| {
                progress(Progress {
                    stage: "gradients",
                    done: c * train.len() + done,
                    total,
                })
            };
            Ok(t.example_gradients(train, &mut cb)?)
        })?;
        let mut writer = FeatureStoreWriter::create(path, config.clone())?;
        for (i, &(record, contributor)) in rows.iter().enumerate() {
            writer.append(&TrainingExample {
                record,
                contributor,
                gradients: grads.iter().map(|g| g[i].clone()).collect(),
            })?;
        }
        writer.sync()?;
        let store = FeatureStore::open_expecting(path, &config)?;
        Ok(Self {
            store,
            layers,
            checkpoints,
        })
    }

    /// The underlying feature store.
    pub fn store(&self) -> &FeatureStore {
        &self.store
    }

    /// The checkpoints the features were taken at.
    pub fn checkpoints(&self) -> &[CheckpointParams] {
        &self.checkpoints
    }

    /// Featurises queries — each a prompt and the answer to attribute (loss on the answer) —
    /// at every checkpoint, as the training examples were.
    pub fn featurize(
        &self,
        trainer: &mut Trainer,
        queries: &[(Vec<u32>, Vec<u32>)],
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<ProjectedQuery>, AttributionError> {
        let total = self.checkpoints.len() * queries.len();
        let per_cp = at_checkpoints(trainer, &self.checkpoints, |t, c| {
            let mut out = Vec::with_capacity(queries.len());
            for (i, (prompt, answer)) in queries.iter().enumerate() {
                out.push(t.query_gradient(prompt, answer)?);
                progress(Progress {
                    stage: "queries",
                    done: c * queries.len() + i + 1,
                    total,
                });
            }
            Ok(out)
        })?;
        (0..queries.len())
            .map(|q| {
                let g: Vec<Vec<f32>> = per_cp.iter().map(|cp| cp[q].clone()).collect();
                Ok(self.store.project_query(&g)?)
            })
            .collect()
    }

    /// The helpfulness score of every training record for each query: `out[q][i]`.
    pub fn scores(
        &self,
        queries: &[ProjectedQuery],
        method: Method,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<Vec<f64>>, AttributionError> {
        let (m, sign) = match method {
            Method::TracIn => (ScoreMethod::TracIn, 1.0),
            Method::DataInf { lambda_scale } => (
                ScoreMethod::DataInf(DataInf {
                    layers: self.layers.clone(),
                    lambda_scale,
                }),
                -1.0,
            ),
        };
        let mut out = Vec::with_capacity(queries.len());
        for (i, q) in queries.iter().enumerate() {
            let s = score::score(&self.store, q, &m, |_| {})?;
            out.push(s.values.iter().map(|&v| sign * f64::from(v)).collect());
            progress(Progress {
                stage: "scores",
                done: i + 1,
                total: queries.len(),
            });
        }
        Ok(out)
    }

    /// The helpfulness of every training record for a whole query set at once: the scores of
    /// the summed query features, equal to the sum of the per-query scores (TracIn and DataInf
    /// are linear in the query) at the cost of one query.
    pub fn query_set_scores(
        &self,
        queries: &[ProjectedQuery],
        method: Method,
    ) -> Result<Vec<f64>, AttributionError> {
        let first = queries.first().ok_or(AttributionError::NoQuery)?;
        let mut sum = first.clone();
        for q in &queries[1..] {
            if q.features.len() != sum.features.len() {
                return Err(PoaError::DimensionMismatch {
                    what: "query checkpoints".into(),
                    expected: sum.features.len(),
                    found: q.features.len(),
                }
                .into());
            }
            for (acc, f) in sum.features.iter_mut().zip(&q.features) {
                if acc.len() != f.len() {
                    return Err(PoaError::DimensionMismatch {
                        what: "projected query".into(),
                        expected: acc.len(),
                        found: f.len(),
                    }
                    .into());
                }
                acc.iter_mut().zip(f).for_each(|(a, b)| *a += b);
            }
        }
        let mut out = self.scores(std::slice::from_ref(&sum), method, &mut |_| {})?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Self-influence `Σ_c η_c ‖∇ℓ(z; θ_c)‖²` of every record (high for mislabelled or
    /// atypical records).
    pub fn self_influence(&self) -> Result<Vec<f64>, AttributionError> {
        let s = score::self_influence(&self.store, |_| {})?;
        Ok(s.values.iter().map(|&v| f64::from(v)).collect())
    }

    /// Sums per-query scores (`scores[q][i]`) into per-record and per-contributor influence.
    pub fn attribution(&self, scores: &[Vec<f64>]) -> Result<Attribution, AttributionError> {
        if scores.is_empty() {
            return Err(AttributionError::NoQuery);
        }
        let n = self.store.len();
        let mut total = vec![0f64; n];
        for row in scores {
            if row.len() != n {
                return Err(PoaError::DimensionMismatch {
                    what: "scores of a query".into(),
                    expected: n,
                    found: row.len(),
                }
                .into());
            }
            total.iter_mut().zip(row).for_each(|(t, v)| *t += v);
        }
        let mut by: BTreeMap<Address, f64> = BTreeMap::new();
        let per_record = (0..n)
            .map(|i| {
                let who = self.store.contributor(i);
                *by.entry(who).or_default() += total[i];
                (self.store.record(i), who, total[i])
            })
            .collect();
        Ok(Attribution {
            per_record,
            per_contributor: by.into_iter().collect(),
        })
    }
}
