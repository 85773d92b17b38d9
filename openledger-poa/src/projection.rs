//! Seeded random projections of gradients to `k` dimensions (Johnson–Lindenstrauss sketches).
//!
//! The `p × k` matrix is never materialised: entry `(i, j)` is a pure function of
//! `(seed, i, j)` through the counter-based generator of [`crate::rng`], so rows are regenerated
//! block by block (in parallel, with a fixed block layout so the result does not depend on the
//! number of threads). Entries are scaled by `1/√k` so inner products are preserved in
//! expectation.
//!
//! ```
//! use openledger_poa::projection::{Projection, ProjectionKind};
//!
//! let p = Projection::new(ProjectionKind::Rademacher, 7, 1_000, 256).unwrap();
//! let g: Vec<f32> = (0..1_000).map(|i| (i as f32 * 0.01).sin()).collect();
//! let phi = p.project(&g).unwrap();
//! assert_eq!(phi.len(), 256);
//! let norm2 = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>();
//! assert!((norm2(&phi) / norm2(&g) - 1.0).abs() < 0.3); // norms survive the sketch
//! ```

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{PoaError, Result, check_dim, check_finite_f32};
use crate::rng::{mix64, unit_f64};

/// The distribution of the projection's entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProjectionKind {
    /// No projection: `k` must equal the gradient dimension (small models, exact checks).
    Identity,
    /// ±1/√k entries with equal probability.
    Rademacher,
    /// N(0, 1/k) entries (Box–Muller over two counters per entry; several times slower to
    /// generate than Rademacher, which is the better choice for large `p`).
    Gaussian,
}

impl ProjectionKind {
    /// The code stored in feature-store headers.
    pub const fn code(self) -> u8 {
        match self {
            ProjectionKind::Identity => 0,
            ProjectionKind::Rademacher => 1,
            ProjectionKind::Gaussian => 2,
        }
    }

    /// The kind with header code `code`.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(ProjectionKind::Identity),
            1 => Some(ProjectionKind::Rademacher),
            2 => Some(ProjectionKind::Gaussian),
            _ => None,
        }
    }
}

/// A seeded projection from `input_dim` to `k` dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Projection {
    /// Entry distribution.
    pub kind: ProjectionKind,
    /// Generator seed.
    pub seed: u64,
    /// Gradient dimension `p`.
    pub input_dim: usize,
    /// Sketch dimension `k`.
    pub k: usize,
}

/// The largest sketch dimension a random projection may have (TRAK's defaults are 2,048–8,192):
/// a larger `k` is refused before anything is allocated, since every append multiplies the
/// gradient by a `k × input_dim` matrix generated on the fly.
pub const MAX_SKETCH_DIM: usize = 1 << 16;

/// Rows generated per block (at least); blocks are summed in a fixed order.
const MIN_BLOCK_ROWS: usize = 2048;
/// At most this many partial sums are alive at once.
const MAX_BLOCKS: usize = 256;

impl Projection {
    /// A projection; `k` must be positive, equal `input_dim` for [`ProjectionKind::Identity`],
    /// and be at most [`MAX_SKETCH_DIM`] for a random one.
    pub fn new(kind: ProjectionKind, seed: u64, input_dim: usize, k: usize) -> Result<Self> {
        if k == 0 || input_dim == 0 {
            return Err(PoaError::InvalidConfig {
                what: "projection dimensions".into(),
                reason: format!("input_dim {input_dim} and k {k} must be positive"),
            });
        }
        if kind == ProjectionKind::Identity && k != input_dim {
            return Err(PoaError::InvalidConfig {
                what: "identity projection".into(),
                reason: format!("k {k} must equal input_dim {input_dim}"),
            });
        }
        if kind != ProjectionKind::Identity && k > MAX_SKETCH_DIM {
            return Err(PoaError::InvalidConfig {
                what: "projection dimensions".into(),
                reason: format!(
                    "k {k} is above {MAX_SKETCH_DIM}, the largest sketch a random projection makes"
                ),
            });
        }
        Ok(Self {
            kind,
            seed,
            input_dim,
            k,
        })
    }

    /// Projects one gradient; NaN/∞ or a wrong length is a typed error.
    pub fn project(&self, gradient: &[f32]) -> Result<Vec<f32>> {
        Ok(self.project_cow(gradient)?.into_owned())
    }

    /// [`Projection::project`], borrowing the gradient itself under the identity (checked,
    /// not copied).
    pub fn project_cow<'g>(&self, gradient: &'g [f32]) -> Result<std::borrow::Cow<'g, [f32]>> {
        check_dim(|| "gradient".into(), self.input_dim, gradient.len())?;
        check_finite_f32(|| "gradient".into(), gradient)?;
        if self.kind == ProjectionKind::Identity {
            return Ok(std::borrow::Cow::Borrowed(gradient));
        }
        let block = MIN_BLOCK_ROWS.max(self.input_dim.div_ceil(MAX_BLOCKS));
        let partials: Vec<Vec<f64>> = gradient
            .par_chunks(block)
            .enumerate()
            .map(|(b, rows)| {
                let mut acc = vec![0f64; self.k];
                self.accumulate(b * block, rows, &mut acc);
                acc
            })
            .collect();
        let scale = 1.0 / (self.k as f64).sqrt();
        let mut out = vec![0f64; self.k];
        for p in &partials {
            for (o, v) in out.iter_mut().zip(p) {
                *o += v;
            }
        }
        Ok(std::borrow::Cow::Owned(
            out.into_iter().map(|v| (v * scale) as f32).collect(),
        ))
    }

    /// Adds `Σ_i R[first + i, ·] · rows[i]` (unscaled) to `acc`.
    fn accumulate(&self, first: usize, rows: &[f32], acc: &mut [f64]) {
        let k = self.k;
        match self.kind {
            ProjectionKind::Identity => unreachable!("identity is handled by project"),
            ProjectionKind::Rademacher => {
                let words = k.div_ceil(64);
                for (r, &g) in rows.iter().enumerate() {
                    if g == 0.0 {
                        continue;
                    }
                    let g = f64::from(g);
                    let row = (first + r) as u64 * words as u64;
                    for w in 0..words {
                        let bits = mix64(self.seed, row + w as u64);
                        let lanes = &mut acc[w * 64..((w + 1) * 64).min(k)];
                        for (b, a) in lanes.iter_mut().enumerate() {
                            // bit set → +g, clear → −g (branch-free).
                            *a += g * (((bits >> b) & 1) as f64 * 2.0 - 1.0);
                        }
                    }
                }
            }
            ProjectionKind::Gaussian => {
                for (r, &g) in rows.iter().enumerate() {
                    if g == 0.0 {
                        continue;
                    }
                    let g = f64::from(g);
                    let base = 2 * ((first + r) as u64 * k as u64);
                    for (j, a) in acc.iter_mut().enumerate() {
                        let u1 = 1.0 - unit_f64(mix64(self.seed, base + 2 * j as u64));
                        let u2 = unit_f64(mix64(self.seed, base + 2 * j as u64 + 1));
                        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                        *a += g * z;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum()
    }

    #[test]
    fn projection_is_linear_and_preserves_inner_products_on_average() {
        for kind in [ProjectionKind::Rademacher, ProjectionKind::Gaussian] {
            let p = Projection::new(kind, 3, 5_000, 1_024).unwrap();
            let a: Vec<f32> = (0..5_000)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0)
                .collect();
            let b: Vec<f32> = (0..5_000)
                .map(|i| a[i] * 0.5 + ((i % 5) as f32 - 2.0) / 4.0)
                .collect();
            let (pa, pb) = (p.project(&a).unwrap(), p.project(&b).unwrap());
            let rel = (dot(&pa, &pb) - dot(&a, &b)).abs() / (dot(&a, &a) * dot(&b, &b)).sqrt();
            assert!(rel < 0.1, "{kind:?}: {rel}");
            let sum: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
            let ps = p.project(&sum).unwrap();
            for j in 0..1_024 {
                assert!((ps[j] - pa[j] - pb[j]).abs() < 1e-3, "linear");
            }
        }
    }

    #[test]
    fn same_seed_same_sketch_other_seed_other_sketch() {
        let g: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let a = Projection::new(ProjectionKind::Rademacher, 1, 100, 16).unwrap();
        let b = Projection::new(ProjectionKind::Rademacher, 2, 100, 16).unwrap();
        assert_eq!(a.project(&g).unwrap(), a.project(&g).unwrap());
        assert_ne!(a.project(&g).unwrap(), b.project(&g).unwrap());
    }

    #[test]
    fn bad_gradients_are_typed_errors() {
        let p = Projection::new(ProjectionKind::Gaussian, 1, 4, 2).unwrap();
        assert!(matches!(
            p.project(&[1.0; 3]),
            Err(PoaError::DimensionMismatch {
                expected: 4,
                found: 3,
                ..
            })
        ));
        assert!(matches!(
            p.project(&[1.0, f32::NAN, 0.0, 0.0]),
            Err(PoaError::NonFinite { index: 1, .. })
        ));
        assert!(Projection::new(ProjectionKind::Identity, 0, 4, 2).is_err());
    }
}
