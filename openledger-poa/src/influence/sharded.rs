//! Scoring a feature store split into shards ([`FeatureStore::split`]: one file per shard, one
//! configuration, rows in order), each shard where it lives — a cluster's workers, say — with
//! results equal to the whole store's bit for bit.
//!
//! TracIn, cosine and the preconditioned methods score each row on its own: a shard's scores
//! are the whole store's scores of its rows. DataInf needs two store-wide statistics first, and
//! sums them block by block ([`SHARD_BLOCK`] rows, each block in row order, the blocks in order)
//! whether it runs on one store or on shards, so the partial sums a shard returns are the ones
//! the whole store would have computed:
//!
//! 1. [`datainf_norms`] on every shard; [`DataInfNorms::concat`] in shard order;
//!    [`DataInfNorms::lambdas`] gives each (checkpoint, layer) segment's damping `λ`.
//! 2. [`datainf_residual`] on every shard with those `λ`; [`DataInfResidual::concat`];
//!    [`DataInfResidual::weights`] gives the vector every row is dotted with.
//! 3. [`score_weights`] on every shard; the shards' scores in order are the whole store's.
//!
//! ```
//! use openledger_poa::influence::score::{DataInf, ScoreMethod, score};
//! use openledger_poa::influence::sharded::*;
//! use openledger_poa::projection::{Projection, ProjectionKind};
//! use openledger_poa::store::{FeatureDType, FeatureStore, FeatureStoreWriter, StoreConfig, TrainingExample, SHARD_BLOCK};
//! use openledger_core::{Address, ContentId};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let config = StoreConfig::new(Projection::new(ProjectionKind::Identity, 0, 4, 4).unwrap(), vec![0.1, 0.05], FeatureDType::F32).unwrap();
//! let mut w = FeatureStoreWriter::create(dir.path().join("all.olfs"), config).unwrap();
//! for i in 0..2 * SHARD_BLOCK + 5 {
//!     let g: Vec<f32> = (0..4).map(|j| ((i * 7 + j * 3) % 11) as f32 - 5.0).collect();
//!     w.append(&TrainingExample { record: ContentId::of(i.to_le_bytes()), contributor: Address::repeat_byte((i % 3) as u8 + 1), gradients: vec![g.clone(), g] }).unwrap();
//! }
//! let whole = FeatureStore::open(dir.path().join("all.olfs")).unwrap();
//! let shards: Vec<FeatureStore> = whole.split(dir.path(), 3).unwrap().iter().map(|p| FeatureStore::open(p).unwrap()).collect();
//! let q = whole.project_query(&vec![vec![1.0, 0.5, -1.0, 2.0]; 2]).unwrap();
//! let cfg = DataInf { layers: vec![0..2, 2..4], lambda_scale: 0.1 };
//!
//! let norms: Vec<DataInfNorms> = shards.iter().map(|s| datainf_norms(s, &cfg, |_| {}).unwrap()).collect();
//! let lambdas = DataInfNorms::concat(&norms).unwrap().lambdas(cfg.lambda_scale).unwrap();
//! let parts: Vec<DataInfResidual> = shards.iter().map(|s| datainf_residual(s, &q, &cfg, &lambdas, |_| {}).unwrap()).collect();
//! let w = DataInfResidual::concat(&parts).unwrap().weights(whole.config(), &q, &cfg, &lambdas).unwrap();
//! let sharded: Vec<f32> = shards.iter().flat_map(|s| score_weights(s, &w, |_| {}).unwrap().values).collect();
//!
//! let single = score(&whole, &q, &ScoreMethod::DataInf(cfg), |_| {}).unwrap();
//! assert_eq!(sharded, single.values);
//! ```

use std::ops::Range;

use rayon::prelude::*;

use super::score::{DataInf, ProjectedQuery, ScoreProgress, Scores, dot, scan_dot};
use crate::error::{PoaError, Result, check_dim, check_finite_f32};
use crate::store::{FeatureStore, SHARD_BLOCK, StoreConfig};

/// Blocks summed in parallel before they are added, in order, to the running total.
const WAVE: usize = 64;

/// The `(checkpoint, layer)` segments of the `C·k` features DataInf works on, checked.
pub(crate) fn segments(config: &StoreConfig, cfg: &DataInf) -> Result<Vec<Range<usize>>> {
    let (k, cn) = (config.k(), config.checkpoints());
    let layers = if cfg.layers.is_empty() {
        std::iter::once(0..k).collect()
    } else {
        cfg.layers.clone()
    };
    for l in &layers {
        if l.start >= l.end || l.end > k {
            return Err(PoaError::InvalidConfig {
                what: "DataInf layer".into(),
                reason: format!("range {l:?} is empty or outside 0..{k}"),
            });
        }
    }
    if !(cfg.lambda_scale.is_finite() && cfg.lambda_scale > 0.0) {
        return Err(PoaError::InvalidConfig {
            what: "DataInf lambda_scale".into(),
            reason: format!("must be finite and > 0, found {}", cfg.lambda_scale),
        });
    }
    Ok((0..cn)
        .flat_map(|c| layers.iter().map(move |l| c * k + l.start..c * k + l.end))
        .collect())
}

/// `f(row features, block sums)` summed over each block of [`SHARD_BLOCK`] rows in row order,
/// `width` sums per block, each block handed to `sink` in order. Blocks run in parallel, a wave
/// at a time (one wave's sums held at once); progress is reported after each wave.
fn block_sums(
    store: &FeatureStore,
    width: usize,
    progress: &mut dyn FnMut(ScoreProgress),
    f: impl Fn(&[f32], &mut [f64]) + Sync,
    sink: &mut dyn FnMut(&[f64]),
) {
    let n = store.len();
    let row_width = store.config().checkpoints() * store.config().k();
    let blocks = n.div_ceil(SHARD_BLOCK);
    let width = width.max(1);
    let mut wave = vec![0f64; WAVE * width];
    let mut done = 0;
    for first in (0..blocks).step_by(WAVE) {
        let count = WAVE.min(blocks - first);
        let dst = &mut wave[..count * width];
        dst.fill(0.0);
        dst.par_chunks_mut(width).enumerate().for_each(|(b, sums)| {
            let block = first + b;
            let mut buf = vec![0f32; row_width];
            for i in block * SHARD_BLOCK..((block + 1) * SHARD_BLOCK).min(n) {
                store.features_into(i, &mut buf);
                f(&buf, sums);
            }
        });
        for block in dst.chunks(width) {
            sink(block);
        }
        let end = ((first + count) * SHARD_BLOCK).min(n);
        progress(ScoreProgress {
            done: end,
            total: n,
            advanced: end - done,
        });
        done = end;
    }
}

/// Adds block sums, in order, into `total`: how the whole store's sums and the shards'
/// concatenated sums are both added up, so they agree bit for bit.
fn add_block(total: &mut [f64], block: &[f64]) {
    for (t, b) in total.iter_mut().zip(block) {
        *t += b;
    }
}

/// Each segment's damping from its total `Σ ‖gᵢ‖²` over `rows` rows.
fn lambdas_of(totals: &[f64], rows: usize, lambda_scale: f64) -> Result<Vec<f64>> {
    if rows == 0 {
        return Err(PoaError::Empty {
            what: "DataInf norms (no row)".into(),
        });
    }
    if !(lambda_scale.is_finite() && lambda_scale > 0.0) {
        return Err(PoaError::InvalidConfig {
            what: "DataInf lambda_scale".into(),
            reason: format!("must be finite and > 0, found {lambda_scale}"),
        });
    }
    Ok(totals
        .iter()
        .map(|t| (lambda_scale * (t / rows as f64)).max(f64::MIN_POSITIVE))
        .collect())
}

/// Checks that `len` block sums fit `rows` rows of `width` (at least 1) values each.
fn check_sums(what: &str, rows: usize, width: usize, len: usize) -> Result<()> {
    let expected = rows.div_ceil(SHARD_BLOCK).checked_mul(width);
    if width == 0 || expected != Some(len) {
        return Err(PoaError::InvalidConfig {
            what: what.into(),
            reason: format!("{len} sums for {rows} rows of width {width}"),
        });
    }
    Ok(())
}

/// The block sums of parts `(rows, width, sums)`, in order, as one: all of one width, every
/// part but the last of whole blocks. Returns `(rows, width, sums)`.
fn concat_sums<'a>(
    what: &str,
    parts: impl ExactSizeIterator<Item = (usize, usize, &'a [f64])>,
) -> Result<(usize, usize, Vec<f64>)> {
    let n = parts.len();
    let (mut rows, mut width, mut sums) = (0, None, Vec::new());
    for (j, (r, w, s)) in parts.enumerate() {
        check_sums(what, r, w, s.len())?;
        check_dim(
            || format!("{what}: width of part {j}"),
            *width.get_or_insert(w),
            w,
        )?;
        if j + 1 < n && r % SHARD_BLOCK != 0 {
            return Err(PoaError::InvalidConfig {
                what: what.into(),
                reason: format!(
                    "part {j} holds {r} rows, not whole blocks of {SHARD_BLOCK}: only the last shard may be partial (split stores with FeatureStore::split)"
                ),
            });
        }
        rows = usize::checked_add(rows, r).ok_or_else(|| PoaError::InvalidConfig {
            what: what.into(),
            reason: "the parts' rows overflow".into(),
        })?;
        sums.extend_from_slice(s);
    }
    let Some(width) = width else {
        return Err(PoaError::Empty {
            what: format!("{what} of the shards"),
        });
    };
    Ok((rows, width, sums))
}

/// DataInf's first pass over a store or shard: each segment's `Σ ‖gᵢ‖²` per block of rows.
#[derive(Clone, Debug, PartialEq)]
pub struct DataInfNorms {
    /// Rows summed.
    pub rows: usize,
    /// Segments per block.
    pub segments: usize,
    /// `sums[b·segments + s]`: segment `s`'s sum over block `b`.
    pub sums: Vec<f64>,
}

/// DataInf's first pass over `store`: each block's `Σ ‖g‖²` per segment, to `sink` in order.
fn norms_pass(
    store: &FeatureStore,
    segs: &[Range<usize>],
    progress: &mut dyn FnMut(ScoreProgress),
    sink: &mut dyn FnMut(&[f64]),
) {
    let f = |row: &[f32], out: &mut [f64]| {
        for (o, seg) in out.iter_mut().zip(segs) {
            *o += f64::from(dot(&row[seg.clone()], &row[seg.clone()]));
        }
    };
    block_sums(store, segs.len(), progress, f, sink);
}

/// DataInf's first pass on `store` (a shard, or the whole store); `progress` is called as
/// rows are read.
pub fn datainf_norms(
    store: &FeatureStore,
    cfg: &DataInf,
    mut progress: impl FnMut(ScoreProgress),
) -> Result<DataInfNorms> {
    let segs = segments(store.config(), cfg)?;
    let mut sums = Vec::with_capacity(store.len().div_ceil(SHARD_BLOCK) * segs.len());
    norms_pass(store, &segs, &mut progress, &mut |b| {
        sums.extend_from_slice(b)
    });
    Ok(DataInfNorms {
        rows: store.len(),
        segments: segs.len(),
        sums,
    })
}

impl DataInfNorms {
    fn check(&self) -> Result<()> {
        check_sums("DataInf norms", self.rows, self.segments, self.sums.len())
    }

    /// The norms of shards (in shard order) as one: every shard but the last must hold whole
    /// blocks, all the same segments.
    pub fn concat(parts: &[DataInfNorms]) -> Result<Self> {
        let (rows, segments, sums) = concat_sums(
            "DataInf norms",
            parts
                .iter()
                .map(|p| (p.rows, p.segments, p.sums.as_slice())),
        )?;
        Ok(Self {
            rows,
            segments,
            sums,
        })
    }

    /// Each segment's damping: `λ = lambda_scale · mean ‖gᵢ‖²` (at least the smallest positive
    /// f64), the block sums added in order.
    pub fn lambdas(&self, lambda_scale: f64) -> Result<Vec<f64>> {
        self.check()?;
        let mut totals = vec![0f64; self.segments];
        for block in self.sums.chunks(self.segments) {
            add_block(&mut totals, block);
        }
        lambdas_of(&totals, self.rows, lambda_scale)
    }
}

/// DataInf's second pass over a store or shard: `Σᵢ (v·gᵢ)/(λ + ‖gᵢ‖²) gᵢ` per segment, per
/// block of rows.
#[derive(Clone, Debug, PartialEq)]
pub struct DataInfResidual {
    /// Rows summed.
    pub rows: usize,
    /// Features per row (`C·k`).
    pub width: usize,
    /// `sums[b·width + j]`: feature `j`'s sum over block `b`.
    pub sums: Vec<f64>,
}

fn check_lambdas(lambdas: &[f64], segs: usize) -> Result<()> {
    check_dim(|| "DataInf lambdas".into(), segs, lambdas.len())?;
    if let Some((index, &value)) = lambdas
        .iter()
        .enumerate()
        .find(|(_, l)| !(l.is_finite() && **l > 0.0))
    {
        return Err(PoaError::NonFinite {
            what: "DataInf lambda (must be finite and > 0)".into(),
            index,
            value,
        });
    }
    Ok(())
}

fn check_query(config: &StoreConfig, query: &ProjectedQuery) -> Result<Vec<f32>> {
    check_dim(
        || "query checkpoints".into(),
        config.checkpoints(),
        query.features.len(),
    )?;
    for (c, f) in query.features.iter().enumerate() {
        check_dim(
            || format!("projected query of checkpoint {c}"),
            config.k(),
            f.len(),
        )?;
        check_finite_f32(|| format!("projected query of checkpoint {c}"), f)?;
    }
    Ok(query.features.concat())
}

/// DataInf's second pass over `store`: each block's `Σᵢ (v·gᵢ)/(λ + ‖gᵢ‖²) gᵢ` per segment,
/// to `sink` in order. Returns the query's features `v`.
fn residual_pass(
    store: &FeatureStore,
    query: &ProjectedQuery,
    segs: &[Range<usize>],
    lambdas: &[f64],
    progress: &mut dyn FnMut(ScoreProgress),
    sink: &mut dyn FnMut(&[f64]),
) -> Result<Vec<f32>> {
    check_lambdas(lambdas, segs.len())?;
    let v = check_query(store.config(), query)?;
    let f = |g: &[f32], r: &mut [f64]| {
        for (s, seg) in segs.iter().enumerate() {
            let g = &g[seg.clone()];
            let coef = f64::from(dot(&v[seg.clone()], g)) / (lambdas[s] + f64::from(dot(g, g)));
            for (acc, &x) in r[seg.clone()].iter_mut().zip(g) {
                *acc += coef * f64::from(x);
            }
        }
    };
    block_sums(store, v.len(), progress, f, sink);
    Ok(v)
}

/// DataInf's second pass on `store` with the store-wide `lambdas` ([`DataInfNorms::lambdas`]);
/// `progress` is called as rows are read.
pub fn datainf_residual(
    store: &FeatureStore,
    query: &ProjectedQuery,
    cfg: &DataInf,
    lambdas: &[f64],
    mut progress: impl FnMut(ScoreProgress),
) -> Result<DataInfResidual> {
    let segs = segments(store.config(), cfg)?;
    let mut sums = Vec::new();
    let v = residual_pass(store, query, &segs, lambdas, &mut progress, &mut |b| {
        sums.extend_from_slice(b)
    })?;
    Ok(DataInfResidual {
        rows: store.len(),
        width: v.len(),
        sums,
    })
}

/// The vector every row is dotted with, from the residual's total `r` over `rows` rows:
/// `w = −(1/C)·(v − r/n)/λ` per segment.
fn weights_of(
    r: &[f64],
    rows: usize,
    checkpoints: usize,
    v: &[f32],
    segs: &[Range<usize>],
    lambdas: &[f64],
) -> Result<Vec<f32>> {
    if rows == 0 {
        return Err(PoaError::Empty {
            what: "DataInf residual (no row)".into(),
        });
    }
    let (n, cn) = (rows as f64, checkpoints as f64);
    let mut w = vec![0f32; v.len()];
    for (s, seg) in segs.iter().enumerate() {
        for j in seg.clone() {
            w[j] = (-(f64::from(v[j]) - r[j] / n) / lambdas[s] / cn) as f32;
        }
    }
    Ok(w)
}

/// DataInf's weights for `query` over the whole of `store` in one process: both passes' block
/// sums added in order as they are made (one wave of blocks held at a time), the same totals
/// the shards' concatenated sums give.
pub(crate) fn whole_store_weights(
    store: &FeatureStore,
    query: &ProjectedQuery,
    cfg: &DataInf,
    progress: &mut dyn FnMut(ScoreProgress),
) -> Result<Vec<f32>> {
    let segs = segments(store.config(), cfg)?;
    let mut norms = vec![0f64; segs.len()];
    norms_pass(store, &segs, progress, &mut |b| add_block(&mut norms, b));
    let lambdas = lambdas_of(&norms, store.len(), cfg.lambda_scale)?;
    let width = store.config().checkpoints() * store.config().k();
    let mut r = vec![0f64; width];
    let v = residual_pass(store, query, &segs, &lambdas, progress, &mut |b| {
        add_block(&mut r, b)
    })?;
    weights_of(
        &r,
        store.len(),
        store.config().checkpoints(),
        &v,
        &segs,
        &lambdas,
    )
}

impl DataInfResidual {
    fn check(&self) -> Result<()> {
        check_sums("DataInf residual", self.rows, self.width, self.sums.len())
    }

    /// The residuals of shards (in shard order) as one: every shard but the last must hold
    /// whole blocks, all the same width.
    pub fn concat(parts: &[DataInfResidual]) -> Result<Self> {
        let (rows, width, sums) = concat_sums(
            "DataInf residual",
            parts.iter().map(|p| (p.rows, p.width, p.sums.as_slice())),
        )?;
        Ok(Self { rows, width, sums })
    }

    /// The vector every row is dotted with: `w = −(1/C)·(v − r/n)/λ` per segment, `r` the
    /// block sums added in order, `n` the rows (DataInf's Koh–Liang sign: helpful rows score
    /// low).
    pub fn weights(
        &self,
        config: &StoreConfig,
        query: &ProjectedQuery,
        cfg: &DataInf,
        lambdas: &[f64],
    ) -> Result<Vec<f32>> {
        self.check()?;
        let segs = segments(config, cfg)?;
        check_lambdas(lambdas, segs.len())?;
        let v = check_query(config, query)?;
        check_dim(|| "DataInf residual width".into(), v.len(), self.width)?;
        let mut r = vec![0f64; self.width];
        for block in self.sums.chunks(self.width) {
            add_block(&mut r, block);
        }
        weights_of(&r, self.rows, config.checkpoints(), &v, &segs, lambdas)
    }
}

/// `⟨row features, w⟩` of every row of `store` (DataInf's last pass, with
/// [`DataInfResidual::weights`]); `w` has `C·k` finite values.
pub fn score_weights(
    store: &FeatureStore,
    w: &[f32],
    mut progress: impl FnMut(ScoreProgress),
) -> Result<Scores> {
    let width = store.config().checkpoints() * store.config().k();
    check_dim(|| "weights".into(), width, w.len())?;
    check_finite_f32(|| "weights".into(), w)?;
    Ok(Scores {
        values: scan_dot(store, &mut progress, w),
    })
}
