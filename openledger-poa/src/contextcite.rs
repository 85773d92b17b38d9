//! Ablation-based source attribution in the style of ContextCite (Cohen-Wang et al., 2024):
//! score the answer under random subsets of the sources, fit a sparse linear surrogate
//! (Lasso by coordinate descent) to the scores, and read its weights as attributions.
//!
//! ```
//! use openledger_poa::contextcite::{context_cite, ContextCiteConfig};
//!
//! // The answer's log-probability depends on source 2 only.
//! let scorer = |keep: &[bool]| Ok(-5.0 + if keep[2] { 3.0 } else { 0.0 });
//! let a = context_cite(4, scorer, &ContextCiteConfig::default(), |_, _| {}).unwrap();
//! assert!((a.weights[2] - 3.0).abs() < 0.1);
//! assert!(a.weights[0].abs() < 0.1);
//! ```

use crate::error::{PoaError, Result};
use crate::rng::SeededStream;

/// Parameters of the ablation study and of the surrogate fit.
#[derive(Clone, Debug, PartialEq)]
pub struct ContextCiteConfig {
    /// Number of random keep/drop masks scored.
    pub samples: usize,
    /// Probability that a source is kept in a mask.
    pub keep_probability: f64,
    /// Seed of the masks.
    pub seed: u64,
    /// L1 penalty of the Lasso (on `(1/2m)‖y − b − Xw‖² + α‖w‖₁`).
    pub alpha: f64,
    /// Coordinate-descent sweeps at most.
    pub max_sweeps: usize,
    /// Stop when no weight moves by more than this in a sweep.
    pub tolerance: f64,
}

impl Default for ContextCiteConfig {
    fn default() -> Self {
        Self {
            samples: 256,
            keep_probability: 0.5,
            seed: 0,
            alpha: 0.01,
            max_sweeps: 1_000,
            tolerance: 1e-9,
        }
    }
}

/// The surrogate: `score(mask) ≈ intercept + Σ weights[i]·mask[i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceAttribution {
    /// One weight per source (its attribution).
    pub weights: Vec<f64>,
    /// The score with every source dropped, as the surrogate sees it.
    pub intercept: f64,
}

impl SourceAttribution {
    /// The surrogate's prediction for `mask` (`true`: the source is kept).
    pub fn predict(&self, mask: &[bool]) -> f64 {
        self.intercept
            + self
                .weights
                .iter()
                .zip(mask)
                .filter(|(_, k)| **k)
                .map(|(w, _)| w)
                .sum::<f64>()
    }
}

/// Runs the ablations (`scorer(mask)` gets `true` for kept sources) and fits the surrogate.
/// `progress(done, total)` is called after each scored mask.
pub fn context_cite(
    n_sources: usize,
    mut scorer: impl FnMut(&[bool]) -> Result<f64>,
    cfg: &ContextCiteConfig,
    progress: impl FnMut(usize, usize),
) -> Result<SourceAttribution> {
    context_cite_batched(
        n_sources,
        1,
        |masks| masks.iter().map(|m| scorer(m)).collect(),
        cfg,
        progress,
    )
}

/// [`context_cite`] with the masks scored `batch` at a time (`scorer(masks)` returns one score
/// per mask, in order): a model scores a batch of ablated prompts in one pass.
/// `progress(done, total)` is called after each batch.
pub fn context_cite_batched(
    n_sources: usize,
    batch: usize,
    mut scorer: impl FnMut(&[Vec<bool>]) -> Result<Vec<f64>>,
    cfg: &ContextCiteConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<SourceAttribution> {
    if n_sources == 0 {
        return Err(PoaError::Empty {
            what: "sources".into(),
        });
    }
    if cfg.samples < 2
        || batch == 0
        || !(cfg.keep_probability > 0.0 && cfg.keep_probability < 1.0)
        || !(cfg.alpha >= 0.0 && cfg.alpha.is_finite())
    {
        return Err(PoaError::InvalidConfig {
            what: "ContextCite config".into(),
            reason: format!(
                "need samples ≥ 2 (got {}), batch ≥ 1 (got {batch}), 0 < keep_probability < 1 \
                 (got {}), finite α ≥ 0 (got {})",
                cfg.samples, cfg.keep_probability, cfg.alpha
            ),
        });
    }
    let masks = ablation_masks(n_sources, cfg.samples, cfg.keep_probability, cfg.seed);
    let ys = score_masks(&masks, batch, &mut scorer, &mut progress)?;
    Ok(lasso(&masks, &ys, cfg))
}

/// `samples` random keep/drop masks over `n_sources` sources, each source kept with
/// probability `keep_probability`, from `seed`: the masks [`context_cite`] scores (a different
/// seed gives held-out masks to measure the surrogate on).
pub fn ablation_masks(
    n_sources: usize,
    samples: usize,
    keep_probability: f64,
    seed: u64,
) -> Vec<Vec<bool>> {
    let mut rng = SeededStream::new(seed);
    (0..samples)
        .map(|_| {
            (0..n_sources)
                .map(|_| rng.next_f64() < keep_probability)
                .collect()
        })
        .collect()
}

/// A scorer of a batch of ablation masks: one score per mask, in order.
pub type BatchScorer<'a> = dyn FnMut(&[Vec<bool>]) -> Result<Vec<f64>> + 'a;

/// Scores `masks` `batch` at a time; a score that is not finite, or a batch answered with the
/// wrong number of scores, is an error naming the mask.
pub fn score_masks(
    masks: &[Vec<bool>],
    batch: usize,
    scorer: &mut BatchScorer<'_>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<f64>> {
    let mut ys = Vec::with_capacity(masks.len());
    for chunk in masks.chunks(batch.max(1)) {
        let got = scorer(chunk)?;
        if got.len() != chunk.len() {
            return Err(PoaError::InvalidConfig {
                what: "ablation scorer".into(),
                reason: format!("returned {} scores for {} masks", got.len(), chunk.len()),
            });
        }
        for y in got {
            if !y.is_finite() {
                return Err(PoaError::NonFinite {
                    what: "ablation score".into(),
                    index: ys.len(),
                    value: y,
                });
            }
            ys.push(y);
        }
        progress(ys.len(), masks.len());
    }
    Ok(ys)
}

/// Lasso with an unpenalised intercept, by cyclic coordinate descent on centred columns.
fn lasso(masks: &[Vec<bool>], y: &[f64], cfg: &ContextCiteConfig) -> SourceAttribution {
    let m = y.len() as f64;
    let p = masks[0].len();
    let col_mean: Vec<f64> = (0..p)
        .map(|j| masks.iter().filter(|r| r[j]).count() as f64 / m)
        .collect();
    let y_mean = y.iter().sum::<f64>() / m;
    let x = |i: usize, j: usize| f64::from(u8::from(masks[i][j])) - col_mean[j];
    let sq: Vec<f64> = (0..p)
        .map(|j| (0..y.len()).map(|i| x(i, j).powi(2)).sum::<f64>() / m)
        .collect();
    let mut w = vec![0.0; p];
    let mut resid: Vec<f64> = y.iter().map(|v| v - y_mean).collect();
    for _ in 0..cfg.max_sweeps {
        let mut moved: f64 = 0.0;
        for j in 0..p {
            if sq[j] == 0.0 {
                continue; // a source always kept or always dropped is not identifiable
            }
            let rho = (0..y.len())
                .map(|i| x(i, j) * (resid[i] + x(i, j) * w[j]))
                .sum::<f64>()
                / m;
            let new = rho.signum() * (rho.abs() - cfg.alpha).max(0.0) / sq[j];
            let delta = new - w[j];
            if delta != 0.0 {
                for (i, r) in resid.iter_mut().enumerate() {
                    *r -= x(i, j) * delta;
                }
                w[j] = new;
            }
            moved = moved.max(delta.abs());
        }
        if moved < cfg.tolerance {
            break;
        }
    }
    let intercept = y_mean - w.iter().zip(&col_mean).map(|(a, b)| a * b).sum::<f64>();
    SourceAttribution {
        weights: w,
        intercept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_the_known_weights_of_a_synthetic_scorer() {
        let truth = [
            0.0, 2.5, 0.0, 0.0, -1.0, 0.0, 0.8, 0.0, 0.0, 0.0, 0.0, 0.0, 1.7, 0.0, 0.0, 0.0, 0.0,
            0.0, 0.0, 0.0,
        ];
        let mut noise = SeededStream::new(99);
        let scorer = |keep: &[bool]| {
            let clean: f64 = -12.0
                + keep
                    .iter()
                    .zip(&truth)
                    .map(|(&k, w)| if k { *w } else { 0.0 })
                    .sum::<f64>();
            Ok(clean + 0.05 * noise.next_gaussian())
        };
        let mut calls = 0;
        let cfg = ContextCiteConfig {
            samples: 300,
            alpha: 0.005,
            seed: 5,
            ..Default::default()
        };
        let a = context_cite(truth.len(), scorer, &cfg, |_, _| calls += 1).unwrap();
        assert_eq!(calls, 300);
        for (j, (got, want)) in a.weights.iter().zip(&truth).enumerate() {
            assert!((got - want).abs() < 0.05, "source {j}: {got} vs {want}");
        }
        assert!((a.intercept + 12.0).abs() < 0.1, "{}", a.intercept);
    }

    #[test]
    fn a_nan_score_or_bad_config_is_a_typed_error() {
        let err = context_cite(
            3,
            |k: &[bool]| Ok(if k[0] { f64::NAN } else { 0.0 }),
            &ContextCiteConfig::default(),
            |_, _| {},
        )
        .unwrap_err();
        assert!(matches!(err, PoaError::NonFinite { .. }));
        let bad = ContextCiteConfig {
            keep_probability: 1.0,
            ..Default::default()
        };
        assert!(matches!(
            context_cite(3, |_: &[bool]| Ok(0.0), &bad, |_, _| {}),
            Err(PoaError::InvalidConfig { .. })
        ));
        assert!(matches!(
            context_cite(
                0,
                |_: &[bool]| Ok(0.0),
                &ContextCiteConfig::default(),
                |_, _| {}
            ),
            Err(PoaError::Empty { .. })
        ));
    }
}
