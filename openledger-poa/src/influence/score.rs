//! Scoring a query against the feature store: TracIn-CP, cosine (LESS), TRAK / influence
//! functions (a preconditioned inner product) and DataInf, streamed in chunks with rayon.
//!
//! Sign conventions: [`ScoreMethod::TracIn`], [`ScoreMethod::Cosine`] and
//! [`Preconditioner::trak`] score helpful examples (those that lower the query's loss) high;
//! [`Preconditioner::influence_function`] and [`ScoreMethod::DataInf`] return Koh & Liang's
//! `−∇ℓ(z′)ᵀ(H + λI)⁻¹∇ℓ(z)`, the change of the query's loss when `z` is up-weighted, so
//! helpful examples score *low*; negate them before turning them into rewards.
//!
//! ```
//! use openledger_poa::projection::{Projection, ProjectionKind};
//! use openledger_poa::influence::score::{score, ScoreMethod};
//! use openledger_poa::store::{FeatureDType, FeatureStore, FeatureStoreWriter, StoreConfig, TrainingExample};
//! use openledger_core::{Address, ContentId};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("s.olfs");
//! let config = StoreConfig::new(Projection::new(ProjectionKind::Identity, 0, 2, 2).unwrap(), vec![0.5], FeatureDType::F32).unwrap();
//! let mut w = FeatureStoreWriter::create(&path, config).unwrap();
//! for (i, g) in [[1.0f32, 0.0], [0.0, 2.0]].iter().enumerate() {
//!     w.append(&TrainingExample { record: ContentId::of([i as u8]), contributor: Address::repeat_byte(i as u8 + 1), gradients: vec![g.to_vec()] }).unwrap();
//! }
//! let store = FeatureStore::open(&path).unwrap();
//! let q = store.project_query(&[vec![1.0, 1.0]]).unwrap();
//! let s = score(&store, &q, &ScoreMethod::TracIn, |_| {}).unwrap();
//! assert_eq!(s.values, vec![0.5, 1.0]); // η·⟨q, φ⟩
//! assert_eq!(s.top_k(&store, 1).unwrap()[0].contributor, Address::repeat_byte(2));
//! ```

use std::collections::BTreeMap;
use std::ops::Range;

use openledger_core::{Address, ContentId};
use rayon::prelude::*;

use crate::error::{PoaError, Result, check_dim, check_finite_f32, check_finite_f64};
use crate::influence::kernel::dot_f16;
use crate::influence::linalg::Cholesky;
use crate::store::{FeatureDType, FeatureStore};
use half::f16;

/// A query's projected gradient, one `k`-vector per checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectedQuery {
    /// `features[c]` is the projected gradient at checkpoint `c`.
    pub features: Vec<Vec<f32>>,
}

impl FeatureStore {
    /// Projects a query's raw gradients (one per checkpoint) with the store's projection.
    pub fn project_query(&self, gradients: &[Vec<f32>]) -> Result<ProjectedQuery> {
        let cfg = self.config();
        check_dim(
            || "query checkpoints".into(),
            cfg.checkpoints(),
            gradients.len(),
        )?;
        let features = gradients
            .iter()
            .enumerate()
            .map(|(c, g)| {
                cfg.projection.project(g).map_err(|e| match e {
                    PoaError::NonFinite { index, value, .. } => PoaError::NonFinite {
                        what: format!("query gradient of checkpoint {c}"),
                        index,
                        value,
                    },
                    PoaError::DimensionMismatch {
                        expected, found, ..
                    } => PoaError::DimensionMismatch {
                        what: format!("query gradient of checkpoint {c}"),
                        expected,
                        found,
                    },
                    other => other,
                })
            })
            .collect::<Result<_>>()?;
        Ok(ProjectedQuery { features })
    }

    fn check_query(&self, q: &ProjectedQuery) -> Result<()> {
        if self.is_empty() {
            return Err(PoaError::Empty {
                what: format!("feature store {}", self.path().display()),
            });
        }
        check_dim(
            || "query checkpoints".into(),
            self.config().checkpoints(),
            q.features.len(),
        )?;
        for (c, f) in q.features.iter().enumerate() {
            check_dim(
                || format!("projected query of checkpoint {c}"),
                self.config().k(),
                f.len(),
            )?;
            check_finite_f32(|| format!("projected query of checkpoint {c}"), f)?;
        }
        Ok(())
    }
}

pub use crate::influence::kernel::dot;

/// Rows scored per progress report.
const PROGRESS_ROWS: usize = 1 << 16;
/// Rows per parallel work item.
const TASK_ROWS: usize = 512;

/// Evaluates `f(features of row i)` for every row, in parallel chunks, reporting progress.
fn scan(
    store: &FeatureStore,
    progress: &mut dyn FnMut(ScoreProgress),
    f: impl Fn(&[f32]) -> f32 + Sync,
) -> Vec<f32> {
    scan_many(store, progress, 1, |row, out| out[0] = f(row))
}

/// `m` values of every row in one pass (`out[i·m..(i + 1)·m]` for row `i`), each row's
/// features decoded once.
fn scan_many(
    store: &FeatureStore,
    progress: &mut dyn FnMut(ScoreProgress),
    m: usize,
    f: impl Fn(&[f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let n = store.len();
    let width = store.config().checkpoints() * store.config().k();
    let mut out = vec![0f32; n * m];
    if m == 0 {
        return out;
    }
    for (s, super_chunk) in out.chunks_mut(PROGRESS_ROWS * m).enumerate() {
        let base = s * PROGRESS_ROWS;
        super_chunk
            .par_chunks_mut(TASK_ROWS * m)
            .enumerate()
            .for_each(|(t, dst)| {
                let mut buf = vec![0f32; width];
                for (r, d) in dst.chunks_mut(m).enumerate() {
                    store.features_into(base + t * TASK_ROWS + r, &mut buf);
                    f(&buf, d);
                }
            });
        let rows = super_chunk.len() / m;
        progress(ScoreProgress {
            done: (base + rows).min(n),
            total: n,
            advanced: rows,
        });
    }
    out
}

/// `⟨row features, w⟩` for every row; f16 stores use the fused f16·f32 kernel (no buffer).
pub(crate) fn scan_dot(
    store: &FeatureStore,
    progress: &mut dyn FnMut(ScoreProgress),
    w: &[f32],
) -> Vec<f32> {
    if store.config().dtype != FeatureDType::F16 {
        return scan(store, progress, |row| dot(row, w));
    }
    let n = store.len();
    let mut out = vec![0f32; n];
    for (s, super_chunk) in out.chunks_mut(PROGRESS_ROWS).enumerate() {
        let base = s * PROGRESS_ROWS;
        super_chunk
            .par_chunks_mut(TASK_ROWS)
            .enumerate()
            .for_each(|(t, dst)| {
                for (r, d) in dst.iter_mut().enumerate() {
                    let halves: &[f16] =
                        bytemuck::cast_slice(store.feature_bytes(base + t * TASK_ROWS + r));
                    *d = dot_f16(halves, w);
                }
            });
        progress(ScoreProgress {
            done: (base + super_chunk.len()).min(n),
            total: n,
            advanced: super_chunk.len(),
        });
    }
    out
}

/// Progress of a scan over the store. A method may pass over the store more than once (cosine
/// reads the norms first; TRAK's Gram matrices come before its scores): `done` restarts with
/// each pass, `advanced` counts the rows read since the previous report whatever the pass, so
/// summing `advanced` drives a progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScoreProgress {
    /// Rows scored so far in this pass.
    pub done: usize,
    /// Rows in the store.
    pub total: usize,
    /// Rows read since the previous report.
    pub advanced: usize,
}

/// A preconditioner `M_c⁻¹` per checkpoint with a weight per checkpoint: scores are
/// `Σ_c w_c · q_cᵀ M_c⁻¹ φ_c`.
#[derive(Clone, Debug)]
pub struct Preconditioner {
    factors: Vec<Cholesky>,
    weights: Vec<f64>,
}

impl Preconditioner {
    /// TRAK: `M_c = Φ_cᵀΦ_c + λI` over the store's features, averaged over checkpoints
    /// (`w_c = 1/C`, the ensemble over checkpoints).
    pub fn trak(
        store: &FeatureStore,
        lambda: f64,
        mut progress: impl FnMut(ScoreProgress),
    ) -> Result<Self> {
        if store.is_empty() {
            return Err(PoaError::Empty {
                what: format!("feature store {}", store.path().display()),
            });
        }
        check_lambda(lambda)?;
        let (k, cn) = (store.config().k(), store.config().checkpoints());
        let n = store.len();
        const BLOCKS: usize = 16;
        let per = n.div_ceil(BLOCKS);
        let mut grams = vec![vec![0f64; k * k]; cn];
        let mut done = 0;
        for block in 0..BLOCKS.min(n.div_ceil(per)) {
            let rows = block * per..((block + 1) * per).min(n);
            let partial: Vec<Vec<f64>> = rows
                .clone()
                .into_par_iter()
                .fold(
                    || (vec![0f64; cn * k * k], vec![0f32; cn * k]),
                    |(mut acc, mut buf), i| {
                        store.features_into(i, &mut buf);
                        for c in 0..cn {
                            let phi = &buf[c * k..(c + 1) * k];
                            let g = &mut acc[c * k * k..(c + 1) * k * k];
                            for a in 0..k {
                                let pa = f64::from(phi[a]);
                                if pa == 0.0 {
                                    continue;
                                }
                                let row = &mut g[a * k..a * k + a + 1];
                                for (b, r) in row.iter_mut().enumerate() {
                                    *r += pa * f64::from(phi[b]);
                                }
                            }
                        }
                        (acc, buf)
                    },
                )
                .map(|(acc, _)| acc)
                .collect();
            for p in partial {
                for c in 0..cn {
                    for (g, v) in grams[c].iter_mut().zip(&p[c * k * k..(c + 1) * k * k]) {
                        *g += v;
                    }
                }
            }
            done += rows.len();
            progress(ScoreProgress {
                done,
                total: n,
                advanced: rows.len(),
            });
        }
        let factors = grams
            .into_iter()
            .enumerate()
            .map(|(c, mut g)| {
                for a in 0..k {
                    for b in 0..a {
                        g[b * k + a] = g[a * k + b];
                    }
                    g[a * k + a] += lambda;
                }
                Cholesky::factor(g, k, &format!("TRAK Gram matrix of checkpoint {c}"))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            factors,
            weights: vec![1.0 / cn as f64; cn],
        })
    }

    /// Influence functions with caller-supplied Hessians `H_c` (row-major `k × k`, one per
    /// checkpoint): `M_c = H_c + λI`, `w_c = −1/C`, i.e. Koh & Liang's
    /// `−∇ℓ(z′)ᵀ(H + λI)⁻¹∇ℓ(z)` averaged over checkpoints.
    pub fn influence_function(hessians: &[Vec<f64>], k: usize, lambda: f64) -> Result<Self> {
        if hessians.is_empty() {
            return Err(PoaError::Empty {
                what: "Hessians".into(),
            });
        }
        check_lambda(lambda)?;
        let cn = hessians.len();
        let factors = hessians
            .iter()
            .enumerate()
            .map(|(c, h)| {
                check_dim(|| format!("Hessian of checkpoint {c}"), k * k, h.len())?;
                check_finite_f64(|| format!("Hessian of checkpoint {c}"), h)?;
                let mut m = h.clone();
                for a in 0..k {
                    m[a * k + a] += lambda;
                }
                Cholesky::factor(m, k, &format!("Hessian + λI of checkpoint {c}"))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            factors,
            weights: vec![-1.0 / cn as f64; cn],
        })
    }

    /// The concatenated effective query `w_c · M_c⁻¹ q_c`.
    fn apply(&self, q: &ProjectedQuery) -> Result<Vec<f32>> {
        check_dim(
            || "query checkpoints of the preconditioner".into(),
            self.factors.len(),
            q.features.len(),
        )?;
        let mut out = Vec::new();
        for ((f, w), qc) in self.factors.iter().zip(&self.weights).zip(&q.features) {
            check_dim(|| "projected query".into(), f.dim(), qc.len())?;
            let b: Vec<f64> = qc.iter().map(|&v| f64::from(v)).collect();
            out.extend(f.solve(&b).into_iter().map(|v| (v * w) as f32));
        }
        Ok(out)
    }
}

fn check_lambda(lambda: f64) -> Result<()> {
    if lambda.is_finite() && lambda >= 0.0 {
        Ok(())
    } else {
        Err(PoaError::InvalidConfig {
            what: "λ (damping)".into(),
            reason: format!("must be finite and ≥ 0, found {lambda}"),
        })
    }
}

/// DataInf's closed form for LoRA layers (Kwon et al., 2024): per layer `l` of the `k`
/// features, `(G_l + λ_l I)⁻¹ ≈ 1/(nλ_l) Σ_i (I − g_i g_iᵀ/(λ_l + ‖g_i‖²))` with
/// `λ_l = lambda_scale · mean_i ‖g_il‖²`, averaged over checkpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct DataInf {
    /// Ranges of the `k` features forming each layer (empty: one layer spanning all `k`).
    pub layers: Vec<Range<usize>>,
    /// `λ_l` as a multiple of the layer's mean squared gradient norm (the paper uses 0.1).
    pub lambda_scale: f64,
}

/// How to score the store against a query.
#[derive(Clone, Debug)]
pub enum ScoreMethod<'a> {
    /// TracIn-CP: `Σ_c η_c ⟨φ_c(z′), φ_c(z)⟩`.
    TracIn,
    /// Cosine / LESS: `Σ_c η_c cos(φ_c(z′), φ_c(z))` (zero vectors score 0).
    Cosine,
    /// `Σ_c w_c q_cᵀ M_c⁻¹ φ_c`: TRAK or influence functions, see [`Preconditioner`].
    Preconditioned(&'a Preconditioner),
    /// DataInf's closed-form inverse for LoRA layers.
    DataInf(DataInf),
}

/// One score per stored example, in store order.
#[derive(Clone, Debug, PartialEq)]
pub struct Scores {
    /// `values[i]` scores example `i`.
    pub values: Vec<f32>,
}

/// One example of a ranking.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RankedExample {
    /// Position in the store.
    pub index: usize,
    /// Its record.
    pub record: ContentId,
    /// Its contributor.
    pub contributor: Address,
    /// Its score.
    pub score: f32,
}

impl Scores {
    /// The `k` highest scores (ties by lower index), best first; `k` past the store's size
    /// gives every example. Scores of another length than the store, or NaN / infinite ones,
    /// are refused.
    pub fn top_k(&self, store: &FeatureStore, k: usize) -> Result<Vec<RankedExample>> {
        check_dim(|| "scores".into(), store.len(), self.values.len())?;
        check_finite_f32(|| "scores".into(), &self.values)?;
        let mut idx: Vec<usize> = (0..self.values.len()).collect();
        let cmp = |a: &usize, b: &usize| self.values[*b].total_cmp(&self.values[*a]).then(a.cmp(b));
        if k < idx.len() && k > 0 {
            idx.select_nth_unstable_by(k - 1, cmp);
            idx.truncate(k);
        }
        idx.sort_by(cmp);
        idx.truncate(k);
        Ok(idx
            .into_iter()
            .map(|index| RankedExample {
                index,
                record: store.record(index),
                contributor: store.contributor(index),
                score: self.values[index],
            })
            .collect())
    }

    /// The sum of scores per contributor, sorted by address.
    pub fn per_contributor(&self, store: &FeatureStore) -> Vec<(Address, f64)> {
        let mut totals: BTreeMap<Address, f64> = BTreeMap::new();
        for (i, &v) in self.values.iter().enumerate() {
            *totals.entry(store.contributor(i)).or_default() += f64::from(v);
        }
        totals.into_iter().collect()
    }
}

/// Scores every stored example against `query`; `progress` is called after each chunk.
pub fn score(
    store: &FeatureStore,
    query: &ProjectedQuery,
    method: &ScoreMethod<'_>,
    mut progress: impl FnMut(ScoreProgress),
) -> Result<Scores> {
    store.check_query(query)?;
    let (k, lrs) = (store.config().k(), store.config().learning_rates.clone());
    let values = match method {
        ScoreMethod::TracIn => {
            let w: Vec<f32> = query
                .features
                .iter()
                .zip(&lrs)
                .flat_map(|(q, &lr)| q.iter().map(move |&v| (f64::from(v) * lr) as f32))
                .collect();
            scan_dot(store, &mut progress, &w)
        }
        ScoreMethod::Cosine => {
            let q: Vec<(Vec<f32>, f32)> = query
                .features
                .iter()
                .map(|q| {
                    let n = dot(q, q).sqrt();
                    (
                        q.iter()
                            .map(|v| if n > 0.0 { v / n } else { 0.0 })
                            .collect(),
                        n,
                    )
                })
                .collect();
            scan(store, &mut progress, |row| {
                let mut s = 0f32;
                for (c, ((qc, _), &lr)) in q.iter().zip(&lrs).enumerate() {
                    let phi = &row[c * k..(c + 1) * k];
                    let n = dot(phi, phi).sqrt();
                    if n > 0.0 {
                        s += lr as f32 * dot(qc, phi) / n;
                    }
                }
                s
            })
        }
        ScoreMethod::Preconditioned(p) => {
            let w = p.apply(query)?;
            scan_dot(store, &mut progress, &w)
        }
        ScoreMethod::DataInf(cfg) => datainf(store, query, cfg, &mut progress)?,
    };
    Ok(Scores { values })
}

/// TracIn-CP scores of every stored example for each of `queries` (`out[q][i]`, equal to
/// [`score`] with [`ScoreMethod::TracIn`] query by query) in one pass over the store: rows are
/// read a block at a time and every query is dotted with the block tile by tile, so a row is
/// read from memory once however many queries there are.
pub fn tracin_many(
    store: &FeatureStore,
    queries: &[ProjectedQuery],
    mut progress: impl FnMut(ScoreProgress),
) -> Result<Vec<Vec<f32>>> {
    /// Rows per block, and columns per tile (a tile of the block and of each query stays in
    /// cache while it is reused).
    const BLOCK: usize = 8;
    const TILE: usize = 2048;
    for q in queries {
        store.check_query(q)?;
    }
    let lrs = &store.config().learning_rates;
    let w: Vec<Vec<f32>> = queries
        .iter()
        .map(|q| {
            q.features
                .iter()
                .zip(lrs)
                .flat_map(|(f, &lr)| f.iter().map(move |&v| (f64::from(v) * lr) as f32))
                .collect()
        })
        .collect();
    let (n, nq) = (store.len(), queries.len());
    let width = store.config().checkpoints() * store.config().k();
    let mut by_row = vec![0f32; n * nq];
    for (s, super_chunk) in by_row.chunks_mut(PROGRESS_ROWS * nq).enumerate() {
        let base = s * PROGRESS_ROWS;
        super_chunk
            .par_chunks_mut(BLOCK * nq)
            .enumerate()
            .for_each(|(b, dst)| {
                let first = base + b * BLOCK;
                let rows = dst.len() / nq.max(1);
                let mut block = vec![0f32; rows * width];
                for (r, row) in block.chunks_mut(width.max(1)).enumerate() {
                    store.features_into(first + r, row);
                }
                for start in (0..width).step_by(TILE) {
                    let end = (start + TILE).min(width);
                    for (r, row) in block.chunks(width.max(1)).enumerate() {
                        let tile = &row[start..end];
                        for (q, wq) in w.iter().enumerate() {
                            dst[r * nq + q] += dot(tile, &wq[start..end]);
                        }
                    }
                }
            });
        let rows = super_chunk.len() / nq.max(1);
        progress(ScoreProgress {
            done: (base + rows).min(n),
            total: n,
            advanced: rows,
        });
    }
    Ok((0..nq)
        .map(|q| (0..n).map(|i| by_row[i * nq + q]).collect())
        .collect())
}

fn datainf(
    store: &FeatureStore,
    query: &ProjectedQuery,
    cfg: &DataInf,
    progress: &mut dyn FnMut(ScoreProgress),
) -> Result<Vec<f32>> {
    // Pass 1: λ per (checkpoint, layer) from mean squared norms; pass 2: r = Σ_i (v·g_i)/(λ +
    // ‖g_i‖²) g_i per segment — both summed block by block, as the shards of a split store sum
    // them; pass 3: score_i = −(1/C) Σ_segments (1/λ)(v − r/n)·g_i.
    let w = super::sharded::whole_store_weights(store, query, cfg, progress)?;
    Ok(scan_dot(store, progress, &w))
}

/// Self-influence `Σ_c η_c ‖φ_c(z)‖²` of every stored example (high for mislabelled or
/// atypical examples).
pub fn self_influence(
    store: &FeatureStore,
    mut progress: impl FnMut(ScoreProgress),
) -> Result<Scores> {
    if store.is_empty() {
        return Err(PoaError::Empty {
            what: format!("feature store {}", store.path().display()),
        });
    }
    let (k, lrs) = (store.config().k(), store.config().learning_rates.clone());
    let values = scan(store, &mut progress, |row| {
        lrs.iter()
            .enumerate()
            .map(|(c, &lr)| {
                let phi = &row[c * k..(c + 1) * k];
                lr as f32 * dot(phi, phi)
            })
            .sum()
    });
    Ok(Scores { values })
}
