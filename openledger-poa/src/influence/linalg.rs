//! A small dense Cholesky factorisation for the `k × k` solves of TRAK and influence functions.
//!
//! ```
//! use openledger_poa::influence::linalg::Cholesky;
//!
//! // [[4, 2], [2, 3]] x = [2, 1]  →  x = [0.5, 0]
//! let c = Cholesky::factor(vec![4.0, 2.0, 2.0, 3.0], 2, "example").unwrap();
//! let x = c.solve(&[2.0, 1.0]);
//! assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12);
//! ```

use crate::error::{PoaError, Result};

/// `A = L Lᵀ` for a symmetric positive-definite `A` (row-major, lower triangle used).
#[derive(Clone, Debug, PartialEq)]
pub struct Cholesky {
    n: usize,
    l: Vec<f64>,
}

impl Cholesky {
    /// Factors the `n × n` row-major matrix `a`; `what` names it in errors.
    pub fn factor(mut a: Vec<f64>, n: usize, what: &str) -> Result<Self> {
        if a.len() != n * n {
            return Err(PoaError::DimensionMismatch {
                what: what.into(),
                expected: n * n,
                found: a.len(),
            });
        }
        for j in 0..n {
            let mut d = a[j * n + j];
            for t in 0..j {
                d -= a[j * n + t] * a[j * n + t];
            }
            if !(d > 0.0 && d.is_finite()) {
                return Err(PoaError::NotPositiveDefinite {
                    what: what.into(),
                    row: j,
                    pivot: d,
                });
            }
            let d = d.sqrt();
            a[j * n + j] = d;
            for i in j + 1..n {
                let mut s = a[i * n + j];
                for t in 0..j {
                    s -= a[i * n + t] * a[j * n + t];
                }
                a[i * n + j] = s / d;
            }
            for i in 0..j {
                a[i * n + j] = 0.0;
            }
        }
        Ok(Self { n, l: a })
    }

    /// The dimension.
    pub fn dim(&self) -> usize {
        self.n
    }

    /// Solves `A x = b` (`b.len() == n`).
    pub fn solve(&self, b: &[f64]) -> Vec<f64> {
        let n = self.n;
        let mut y = b.to_vec();
        for i in 0..n {
            let s: f64 = (0..i).map(|t| self.l[i * n + t] * y[t]).sum();
            y[i] = (y[i] - s) / self.l[i * n + i];
        }
        for i in (0..n).rev() {
            let s: f64 = (i + 1..n).map(|t| self.l[t * n + i] * y[t]).sum();
            y[i] = (y[i] - s) / self.l[i * n + i];
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solves_a_random_spd_system_to_round_off() {
        let n = 12;
        let m: Vec<f64> = (0..n * n)
            .map(|i| ((i * 37 % 17) as f64 - 8.0) / 8.0)
            .collect();
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|t| m[i * n + t] * m[j * n + t]).sum::<f64>()
                    + if i == j { 0.5 } else { 0.0 };
            }
        }
        let x: Vec<f64> = (0..n).map(|i| i as f64 - 3.0).collect();
        let b: Vec<f64> = (0..n)
            .map(|i| (0..n).map(|j| a[i * n + j] * x[j]).sum())
            .collect();
        let got = Cholesky::factor(a, n, "a").unwrap().solve(&b);
        for (g, w) in got.iter().zip(&x) {
            assert!((g - w).abs() < 1e-9, "{g} vs {w}");
        }
    }

    #[test]
    fn indefinite_matrix_is_named() {
        let err = Cholesky::factor(vec![1.0, 2.0, 2.0, 1.0], 2, "gram").unwrap_err();
        assert!(
            matches!(err, PoaError::NotPositiveDefinite { row: 1, .. }),
            "{err}"
        );
    }
}
