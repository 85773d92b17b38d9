//! A counter-based seeded generator (SplitMix64 finaliser): the value at position `i` of stream
//! `seed` is a pure function of `(seed, i)`, so blocks of a random matrix can be regenerated in
//! any order, on any thread and any platform, without materialising the matrix.
//!
//! ```
//! use openledger_poa::rng::{mix64, SeededStream};
//!
//! assert_eq!(mix64(7, 3), mix64(7, 3));
//! let mut s = SeededStream::new(42);
//! let u = s.next_f64();
//! assert!((0.0..1.0).contains(&u));
//! ```

/// The SplitMix64 output for counter `counter` of stream `seed`.
#[inline]
pub fn mix64(seed: u64, counter: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0xD1B5_4A32_D192_ED03)
        .wrapping_add(counter.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Maps 64 random bits to a uniform f64 in `[0, 1)` (53 bits of precision).
#[inline]
pub fn unit_f64(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A sequential view of one seeded stream.
#[derive(Clone, Debug)]
pub struct SeededStream {
    seed: u64,
    counter: u64,
}

impl SeededStream {
    /// Starts stream `seed` at counter 0.
    pub fn new(seed: u64) -> Self {
        Self { seed, counter: 0 }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let v = mix64(self.seed, self.counter);
        self.counter += 1;
        v
    }

    /// A uniform f64 in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        unit_f64(self.next_u64())
    }

    /// A uniform integer in `[0, n)`, by rejection so it is unbiased (`0` when `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }

    /// A standard normal sample (Box–Muller).
    pub fn next_gaussian(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_mean_and_gaussian_variance_are_close_to_theory() {
        let mut s = SeededStream::new(1);
        let n = 200_000;
        let mean: f64 = (0..n).map(|_| s.next_f64()).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.005, "{mean}");
        let var: f64 = (0..n).map(|_| s.next_gaussian().powi(2)).sum::<f64>() / n as f64;
        assert!((var - 1.0).abs() < 0.02, "{var}");
    }

    #[test]
    fn streams_with_different_seeds_differ() {
        assert_ne!(mix64(1, 0), mix64(2, 0));
        assert_ne!(mix64(1, 0), mix64(1, 1));
    }
}
