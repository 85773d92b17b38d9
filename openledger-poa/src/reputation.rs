//! Contributor reputation from validated history: how often a contributor's records have held
//! up, used to weight the contributor's share ("influence and the contributor's reputation").
//!
//! Every record a contributor submits ends in one of three outcomes: *accepted* (trained on and
//! not flagged), *harmful* (flagged by validation: it made the gold answers less likely) or a
//! *copy* of someone else's earlier record (it earns nothing). A copy of the contributor's own
//! record is neither: it adds nothing and costs nothing. The score is the mean of the Beta
//! posterior of "a record of theirs is accepted",
//!
//! ```text
//! score = (accepted + α) / (accepted + harmful + copies + α + β)
//! ```
//!
//! with the prior `Beta(α, β)` a newcomer starts from (the default `α = 4, β = 1`: 0.8, so a
//! first record is trusted but a first flag weighs). Scores are in (0, 1); a contributor's
//! weight in a split is multiplied by its score, so contributors with the same history keep
//! their relative shares and one whose records were flagged or copied others' gets less, in
//! proportion, for every later answer its records help. The history is serialisable, to be
//! carried from one epoch to the next.
//!
//! ```
//! use openledger_core::Address;
//! use openledger_poa::reputation::{Outcome, Reputation, ReputationConfig};
//!
//! let (alice, trent) = (Address::repeat_byte(0xa1), Address::repeat_byte(0x7e));
//! let mut r = Reputation::new(ReputationConfig::default()).unwrap();
//! r.record(alice, Outcome::Accepted, 12);
//! r.record(trent, Outcome::Harmful, 4);
//! assert!((r.score(&alice) - 16.0 / 17.0).abs() < 1e-12);
//! assert!((r.score(&trent) - 4.0 / 9.0).abs() < 1e-12);
//! let w = r.weigh(&[(alice, 1.0), (trent, 1.0)]);
//! assert!(w[0].1 > 2.0 * w[1].1);
//! ```

use std::collections::BTreeMap;

use openledger_core::Address;
use serde::{Deserialize, Serialize};

use crate::error::{PoaError, Result};

/// The prior a contributor without history starts from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReputationConfig {
    /// `α`: pseudo-count of accepted records.
    pub prior_accepted: f64,
    /// `β`: pseudo-count of failed (harmful or copied) records.
    pub prior_failed: f64,
}

impl Default for ReputationConfig {
    fn default() -> Self {
        Self {
            prior_accepted: 4.0,
            prior_failed: 1.0,
        }
    }
}

/// What became of a contributor's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Trained on and not flagged.
    Accepted,
    /// Flagged as harmful by validation.
    Harmful,
    /// A copy of someone else's earlier record.
    Copy,
}

/// A contributor's validated history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Records accepted.
    pub accepted: u64,
    /// Records flagged as harmful.
    pub harmful: u64,
    /// Copies of others' records.
    pub copies: u64,
}

/// Per-contributor histories and the scores they give.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reputation {
    config: ReputationConfig,
    history: BTreeMap<Address, History>,
}

impl Reputation {
    /// An empty history under `config`; both prior counts must be finite and positive.
    pub fn new(config: ReputationConfig) -> Result<Self> {
        for (name, v) in [
            ("prior_accepted", config.prior_accepted),
            ("prior_failed", config.prior_failed),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(PoaError::InvalidConfig {
                    what: format!("reputation {name}"),
                    reason: format!("{v} is not a finite positive number"),
                });
            }
        }
        Ok(Self {
            config,
            history: BTreeMap::new(),
        })
    }

    /// The prior.
    pub fn config(&self) -> ReputationConfig {
        self.config
    }

    /// Adds `count` records with `outcome` to `contributor`'s history (saturating).
    pub fn record(&mut self, contributor: Address, outcome: Outcome, count: u64) {
        let h = self.history.entry(contributor).or_default();
        let slot = match outcome {
            Outcome::Accepted => &mut h.accepted,
            Outcome::Harmful => &mut h.harmful,
            Outcome::Copy => &mut h.copies,
        };
        *slot = slot.saturating_add(count);
    }

    /// `contributor`'s history (empty when unknown).
    pub fn history(&self, contributor: &Address) -> History {
        self.history.get(contributor).copied().unwrap_or_default()
    }

    /// Every contributor with a history, by address.
    pub fn contributors(&self) -> impl Iterator<Item = (&Address, &History)> {
        self.history.iter()
    }

    /// The contributor's score, in (0, 1): see the [module documentation](self).
    pub fn score(&self, contributor: &Address) -> f64 {
        let h = self.history(contributor);
        let (a, b) = (self.config.prior_accepted, self.config.prior_failed);
        let accepted = h.accepted as f64;
        (accepted + a) / (accepted + h.harmful as f64 + h.copies as f64 + a + b)
    }

    /// `weights` with each contributor's weight multiplied by its score.
    pub fn weigh(&self, weights: &[(Address, f64)]) -> Vec<(Address, f64)> {
        weights
            .iter()
            .map(|&(a, w)| (a, w * self.score(&a)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_follow_the_beta_posterior_and_weights_scale_by_them() {
        let (a, b, c) = (
            Address::repeat_byte(1),
            Address::repeat_byte(2),
            Address::repeat_byte(3),
        );
        let mut r = Reputation::new(ReputationConfig::default()).unwrap();
        assert_eq!(r.score(&a), 0.8, "a newcomer has the prior mean");
        r.record(a, Outcome::Accepted, 12);
        r.record(b, Outcome::Accepted, 12);
        r.record(c, Outcome::Copy, 12);
        assert_eq!(r.score(&a), r.score(&b));
        assert!((r.score(&c) - 4.0 / 17.0).abs() < 1e-15);
        // Equal histories keep their relative weights; a copier loses in proportion.
        let w = r.weigh(&[(a, 3.0), (b, 1.0), (c, 3.0)]);
        assert!((w[0].1 / w[1].1 - 3.0).abs() < 1e-12);
        assert!((w[2].1 / w[0].1 - (4.0 / 17.0) / (16.0 / 17.0)).abs() < 1e-12);
        // More history moves the score further from the prior.
        r.record(b, Outcome::Harmful, 1);
        assert!(r.score(&b) < r.score(&a));
        r.record(b, Outcome::Accepted, u64::MAX);
        assert_eq!(r.history(&b).accepted, u64::MAX);
        // The history round-trips through JSON.
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Reputation>(&json).unwrap(), r);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let cfg = ReputationConfig {
                prior_failed: bad,
                ..ReputationConfig::default()
            };
            assert!(Reputation::new(cfg).is_err());
        }
    }
}
