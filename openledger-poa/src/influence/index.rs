//! An influence index over one training run: the per-example gradients of every training record
//! at each logged checkpoint, projected into a [`FeatureStore`] (record id and contributor per
//! row) with the TracIn-CP weight of each checkpoint, and queries scored against it with
//! TracIn-CP or DataInf into per-record and per-contributor influence ([`Attribution`]).
//!
//! The index takes gradients from anywhere: the model side (which checkpoint is restored, how an
//! example's loss is differentiated) belongs to the trainer, and the glue that runs it lives in
//! the facade. Every score here is *helpfulness*: positive when training on the record lowers the
//! query's loss (TracIn's own sign; DataInf's Koh–Liang sign is flipped).
//!
//! ```
//! use openledger_core::trainlog::{TrainLog, TrainStep};
//! use openledger_core::{Address, B256, ContentId};
//! use openledger_poa::influence::{FeatureSpace, GradientLayout, InfluenceIndex, Method, tracin_weights};
//!
//! // Two checkpoints at steps 1 and 2 of a logged run with learning rate 0.5.
//! let mut log = TrainLog::new(B256::ZERO, B256::ZERO);
//! for step in [1, 2] {
//!     log.append(TrainStep::new(step, vec![ContentId::of([step as u8])], 1.0, 0.5)).unwrap();
//! }
//! let weights = tracin_weights(&log, &[1, 2]).unwrap();
//! let rows = [(ContentId::of(b"a"), Address::repeat_byte(1)), (ContentId::of(b"b"), Address::repeat_byte(2))];
//! // gradients[checkpoint][row]: record a pulls along x, record b along y.
//! let gradients = vec![vec![vec![1.0, 0.0], vec![0.0, 1.0]]; 2];
//! let dir = tempfile::tempdir().unwrap();
//! let layout = GradientLayout::single_layer(2);
//! let index = InfluenceIndex::build(&dir.path().join("i.olfs"), &rows, &layout, weights, FeatureSpace::Exact, &gradients).unwrap();
//! let query = index.project_query(&[vec![2.0, 0.0], vec![2.0, 0.0]]).unwrap();
//! let scores = index.scores(&[query], Method::TracIn, &mut |_| {}).unwrap();
//! assert_eq!(scores[0], vec![2.0, 0.0]); // 0.5·2 + 0.5·2 for a, nothing for b
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use openledger_core::trainlog::TrainLog;
use openledger_core::{Address, ContentId};

use super::score::{self, DataInf, ProjectedQuery, ScoreMethod};
use crate::error::{PoaError, Result};
use crate::projection::{Projection, ProjectionKind};
use crate::store::{FeatureDType, FeatureStore, FeatureStoreWriter, StoreConfig};

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

/// How gradients are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureSpace {
    /// The full gradient in f32 (small adapters; DataInf per layer of the [`GradientLayout`]).
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
    /// DataInf's closed-form inverse-Hessian per layer (λ as a multiple of each layer's mean
    /// squared gradient norm; the paper uses 0.1), sign flipped to helpfulness.
    DataInf {
        /// `λ_l / mean ‖g_l‖²`.
        lambda_scale: f64,
    },
}

/// The shape of the flat gradients an index is built from: their length and the ranges of its
/// layers (DataInf treats each layer on its own; for LoRA, one layer per adapted module).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GradientLayout {
    /// Length of every gradient.
    pub num_parameters: usize,
    /// Disjoint, increasing ranges covering the gradient.
    pub layers: Vec<Range<usize>>,
}

impl GradientLayout {
    /// A gradient of `num_parameters` values taken as one layer.
    pub fn single_layer(num_parameters: usize) -> Self {
        Self {
            num_parameters,
            layers: std::iter::once(0..num_parameters).collect(),
        }
    }

    fn check(&self) -> Result<()> {
        let mut end = 0;
        for r in &self.layers {
            if r.start != end || r.end <= r.start {
                return Err(PoaError::InvalidConfig {
                    what: "gradient layers".into(),
                    reason: format!("{:?} do not tile 0..{}", self.layers, self.num_parameters),
                });
            }
            end = r.end;
        }
        if end != self.num_parameters {
            return Err(PoaError::InvalidConfig {
                what: "gradient layers".into(),
                reason: format!("{:?} do not tile 0..{}", self.layers, self.num_parameters),
            });
        }
        Ok(())
    }
}

/// TracIn-CP checkpoint weights from the training log: checkpoint `c` at step `s_c` stands for
/// the steps `s_{c−1} + 1 ..= s_c` (with `s_0 = 0`), and its weight is the sum of the learning
/// rates logged for those steps — `η · (steps in the interval)` for a constant rate, which is
/// TracIn-CP's `η_i` for evenly spaced checkpoints.
pub fn tracin_weights(log: &TrainLog, steps: &[usize]) -> Result<Vec<f64>> {
    check_order(steps)?;
    let last = log.entries().last().map(|e| e.step.step);
    let mut out = Vec::with_capacity(steps.len());
    let mut prev = 0u64;
    for &s in steps {
        let s = s as u64;
        if !log.entries().iter().any(|e| e.step.step == s) {
            return Err(PoaError::StepNotLogged { step: s, last });
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

/// Checkpoint steps must be given, in strictly increasing order.
pub fn check_order(steps: &[usize]) -> Result<()> {
    if steps.is_empty() || steps.windows(2).any(|w| w[0] >= w[1]) {
        return Err(PoaError::CheckpointOrder {
            steps: steps.to_vec(),
        });
    }
    Ok(())
}

/// The training records' gradient features at every checkpoint, in a feature store, and the
/// layers DataInf scores them by.
#[derive(Debug)]
pub struct InfluenceIndex {
    store: FeatureStore,
    layers: Vec<Range<usize>>,
}

impl InfluenceIndex {
    /// Writes the index at `path` (replacing a store there): row `i` is record `rows[i]` (id,
    /// contributor) with features `gradients[c][i]` at checkpoint `c`, whose TracIn weight is
    /// `weights[c]`. Every gradient has `layout.num_parameters` values; nothing is written when a
    /// shape does not fit.
    pub fn build(
        path: &Path,
        rows: &[(ContentId, Address)],
        layout: &GradientLayout,
        weights: Vec<f64>,
        space: FeatureSpace,
        gradients: &[Vec<Vec<f32>>],
    ) -> Result<Self> {
        layout.check()?;
        let p = layout.num_parameters;
        let (projection, dtype, layers) = match space {
            FeatureSpace::Exact => (
                Projection::new(ProjectionKind::Identity, 0, p, p)?,
                FeatureDType::F32,
                layout.layers.clone(),
            ),
            FeatureSpace::Sketch { k, seed } => (
                Projection::new(ProjectionKind::Rademacher, seed, p, k)?,
                FeatureDType::F16,
                std::iter::once(0..k).collect(),
            ),
        };
        let config = StoreConfig::new(projection, weights, dtype)?;
        if gradients.len() != config.checkpoints() {
            return Err(PoaError::DimensionMismatch {
                what: "gradient checkpoints".into(),
                expected: config.checkpoints(),
                found: gradients.len(),
            });
        }
        for (c, g) in gradients.iter().enumerate() {
            if g.len() != rows.len() {
                return Err(PoaError::DimensionMismatch {
                    what: format!("gradients of checkpoint {c}"),
                    expected: rows.len(),
                    found: g.len(),
                });
            }
        }
        let mut writer = FeatureStoreWriter::replace(path, config.clone())?;
        writer.append_rows(rows, |c, i| gradients[c][i].as_slice())?;
        writer.sync()?;
        let store = FeatureStore::open_expecting(path, &config)?;
        Ok(Self { store, layers })
    }

    /// The underlying feature store.
    pub fn store(&self) -> &FeatureStore {
        &self.store
    }

    /// The layers DataInf scores by.
    pub fn layers(&self) -> &[Range<usize>] {
        &self.layers
    }

    /// Projects a query's raw gradients (one per checkpoint) as the records' were.
    pub fn project_query(&self, gradients: &[Vec<f32>]) -> Result<ProjectedQuery> {
        self.store.project_query(gradients)
    }

    /// The helpfulness score of every training record for each query: `out[q][i]`.
    pub fn scores(
        &self,
        queries: &[ProjectedQuery],
        method: Method,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<Vec<f64>>> {
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
        if matches!(method, Method::TracIn) {
            // Every query in one pass over the store.
            let n = queries.len();
            let all = score::tracin_many(&self.store, queries, |_| {})?;
            progress(Progress {
                stage: "scores",
                done: n,
                total: n,
            });
            return Ok(all
                .into_iter()
                .map(|s| s.into_iter().map(f64::from).collect())
                .collect());
        }
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
    pub fn query_set_scores(&self, queries: &[ProjectedQuery], method: Method) -> Result<Vec<f64>> {
        let first = queries.first().ok_or_else(|| PoaError::Empty {
            what: "query set".into(),
        })?;
        let mut sum = first.clone();
        for q in &queries[1..] {
            if q.features.len() != sum.features.len() {
                return Err(PoaError::DimensionMismatch {
                    what: "query checkpoints".into(),
                    expected: sum.features.len(),
                    found: q.features.len(),
                });
            }
            for (acc, f) in sum.features.iter_mut().zip(&q.features) {
                if acc.len() != f.len() {
                    return Err(PoaError::DimensionMismatch {
                        what: "projected query".into(),
                        expected: acc.len(),
                        found: f.len(),
                    });
                }
                acc.iter_mut().zip(f).for_each(|(a, b)| *a += b);
            }
        }
        let mut out = self.scores(std::slice::from_ref(&sum), method, &mut |_| {})?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Self-influence `Σ_c η_c ‖∇ℓ(z; θ_c)‖²` of every record (high for mislabelled or
    /// atypical records).
    pub fn self_influence(&self) -> Result<Vec<f64>> {
        let s = score::self_influence(&self.store, |_| {})?;
        Ok(s.values.iter().map(|&v| f64::from(v)).collect())
    }

    /// Sums per-query scores (`scores[q][i]`) into per-record and per-contributor influence.
    pub fn attribution(&self, scores: &[Vec<f64>]) -> Result<Attribution> {
        if scores.is_empty() {
            return Err(PoaError::Empty {
                what: "query set".into(),
            });
        }
        let n = self.store.len();
        let mut total = vec![0f64; n];
        for row in scores {
            if row.len() != n {
                return Err(PoaError::DimensionMismatch {
                    what: "scores of a query".into(),
                    expected: n,
                    found: row.len(),
                });
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
