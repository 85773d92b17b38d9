//! Attribution records: what one inference owes to whom, canonically encoded and hashed, and
//! batched into epochs of per-contributor totals ready to become Merkle claim leaves.
//!
//! # Canonical encoding
//!
//! A record is the Solidity `abi.encode` of
//! `(bytes32 inferenceId, bytes32 modelId, bytes32[] adapterIds, uint8 method,
//! address[] contributors, uint256[] weights)`: contributors strictly ascending, each weight a
//! positive share of [`WEIGHT_UNIT`] (10¹⁸) and the weights summing to exactly 10¹⁸. Its id is
//! the keccak-256 of that encoding (`keccak256(abi.encode(...))` in a contract).
//!
//! ```
//! use openledger_poa::record::{AttributionMethod, AttributionRecord, Epoch};
//! use openledger_poa::split::SplitPolicy;
//! use openledger_core::{Address, B256, U256};
//!
//! let rec = AttributionRecord::from_scores(
//!     B256::repeat_byte(1), B256::repeat_byte(2), vec![B256::repeat_byte(3)],
//!     AttributionMethod::TracIn,
//!     &[(Address::repeat_byte(0xc1), 3.0), (Address::repeat_byte(0xc2), 1.0)],
//!     &SplitPolicy::default(),
//! ).unwrap();
//! assert_eq!(AttributionRecord::decode(&rec.encode()).unwrap(), rec);
//! let mut epoch = Epoch::new(7);
//! epoch.add(&rec, U256::from(1_000u64)).unwrap();
//! let leaves = epoch.claim_leaves();
//! assert_eq!(leaves[0].amount, U256::from(750u64));
//! ```

use std::collections::BTreeMap;

use alloy_sol_types::SolType;
use alloy_sol_types::sol_data::{Address as SolAddress, Array, FixedBytes, Uint};
use openledger_core::{Address, B256, ContentId, RewardClaim, U256};

use crate::error::{PoaError, Result};
use crate::split::{Payout, SplitPolicy, ZeroWeightPolicy, split_scores, split_weights};

/// The sum of a record's weights: 10¹⁸ (weights are fixed-point fractions, like wei per ether).
pub const WEIGHT_UNIT: u64 = 1_000_000_000_000_000_000;

/// How the weights were obtained (stored as a `uint8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AttributionMethod {
    /// TracIn-CP gradient similarity.
    TracIn = 0,
    /// Cosine / LESS gradient similarity.
    Cosine = 1,
    /// TRAK.
    Trak = 2,
    /// Influence functions.
    InfluenceFunction = 3,
    /// DataInf.
    DataInf = 4,
    /// Retrieval relevance (RAG citations).
    RagRelevance = 5,
    /// ContextCite ablations.
    ContextCite = 6,
}

impl AttributionMethod {
    /// Every method, by code.
    pub const ALL: [AttributionMethod; 7] = [
        AttributionMethod::TracIn,
        AttributionMethod::Cosine,
        AttributionMethod::Trak,
        AttributionMethod::InfluenceFunction,
        AttributionMethod::DataInf,
        AttributionMethod::RagRelevance,
        AttributionMethod::ContextCite,
    ];

    /// The method's name as the bindings spell it (`"tracin"`, `"rag_relevance"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            AttributionMethod::TracIn => "tracin",
            AttributionMethod::Cosine => "cosine",
            AttributionMethod::Trak => "trak",
            AttributionMethod::InfluenceFunction => "influence_function",
            AttributionMethod::DataInf => "datainf",
            AttributionMethod::RagRelevance => "rag_relevance",
            AttributionMethod::ContextCite => "context_cite",
        }
    }

    /// The method with code `code`.
    pub fn from_code(code: u8) -> Option<Self> {
        use AttributionMethod::*;
        [
            TracIn,
            Cosine,
            Trak,
            InfluenceFunction,
            DataInf,
            RagRelevance,
            ContextCite,
        ]
        .get(code as usize)
        .copied()
    }
}

impl std::str::FromStr for AttributionMethod {
    type Err = PoaError;

    /// A method by [`AttributionMethod::name`].
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| PoaError::InvalidConfig {
                what: "attribution method".into(),
                reason: format!(
                    "{s:?} is not one of {:?}",
                    Self::ALL.map(AttributionMethod::name)
                ),
            })
    }
}

/// The attribution of one inference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributionRecord {
    /// The inference.
    pub inference_id: B256,
    /// The base model.
    pub model_id: B256,
    /// The adapters used (in the order applied).
    pub adapter_ids: Vec<B256>,
    /// How the weights were obtained.
    pub method: AttributionMethod,
    /// `(contributor, share of 10¹⁸)`, ascending by address, positive, summing to 10¹⁸.
    pub weights: Vec<(Address, U256)>,
}

/// `(bytes32, bytes32, bytes32[], uint8, address[], uint256[])`.
type Abi = (
    FixedBytes<32>,
    FixedBytes<32>,
    Array<FixedBytes<32>>,
    Uint<8>,
    Array<SolAddress>,
    Array<Uint<256>>,
);
type Encoded = (B256, B256, Vec<B256>, u8, Vec<Address>, Vec<U256>);

impl AttributionRecord {
    /// A record whose weights are `scores` split exactly into shares of 10¹⁸ (contributors with a
    /// zero share are left out). A zero total follows `policy` (a fallback gets everything).
    pub fn from_scores(
        inference_id: B256,
        model_id: B256,
        adapter_ids: Vec<B256>,
        method: AttributionMethod,
        scores: &[(Address, f64)],
        policy: &SplitPolicy,
    ) -> Result<Self> {
        let parts = split_scores(U256::from(WEIGHT_UNIT), scores, policy)?;
        let weights = parts
            .into_iter()
            .filter(|p| !p.amount.is_zero())
            .map(|p| (p.account, p.amount))
            .collect();
        Ok(Self {
            inference_id,
            model_id,
            adapter_ids,
            method,
            weights,
        })
    }

    fn validate(&self) -> Result<()> {
        if self.weights.is_empty() {
            return Err(PoaError::Empty {
                what: "record weights".into(),
            });
        }
        for w in self.weights.windows(2) {
            if w[0].0 >= w[1].0 {
                return Err(PoaError::InvalidConfig {
                    what: "record contributors".into(),
                    reason: format!("{} is not strictly after {}", w[1].0, w[0].0),
                });
            }
        }
        let mut total = U256::ZERO;
        for (a, w) in &self.weights {
            if w.is_zero() {
                return Err(PoaError::InvalidConfig {
                    what: "record weights".into(),
                    reason: format!("zero weight for {a}"),
                });
            }
            total = total.checked_add(*w).ok_or_else(|| PoaError::Overflow {
                what: "record weights".into(),
            })?;
        }
        if total != U256::from(WEIGHT_UNIT) {
            return Err(PoaError::InvalidConfig {
                what: "record weights".into(),
                reason: format!("sum to {total}, expected {WEIGHT_UNIT}"),
            });
        }
        Ok(())
    }

    /// The canonical encoding (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let v: Encoded = (
            self.inference_id,
            self.model_id,
            self.adapter_ids.clone(),
            self.method as u8,
            self.weights.iter().map(|w| w.0).collect(),
            self.weights.iter().map(|w| w.1).collect(),
        );
        Abi::abi_encode_params(&v)
    }

    /// Decodes and validates a canonical encoding; anything else is a typed error.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let (inference_id, model_id, adapter_ids, method, who, weights) =
            Abi::abi_decode_params_validate(bytes).map_err(|e| PoaError::InvalidConfig {
                what: "attribution record encoding".into(),
                reason: e.to_string(),
            })?;
        let method =
            AttributionMethod::from_code(method).ok_or_else(|| PoaError::InvalidConfig {
                what: "attribution method".into(),
                reason: format!("unknown code {method}"),
            })?;
        if who.len() != weights.len() {
            return Err(PoaError::DimensionMismatch {
                what: "record weights".into(),
                expected: who.len(),
                found: weights.len(),
            });
        }
        let rec = Self {
            inference_id,
            model_id,
            adapter_ids,
            method,
            weights: who.into_iter().zip(weights).collect(),
        };
        rec.validate()?;
        if rec.encode() != bytes {
            return Err(PoaError::InvalidConfig {
                what: "attribution record encoding".into(),
                reason: "not canonical (trailing or non-standard bytes)".into(),
            });
        }
        Ok(rec)
    }

    /// The record's id: keccak-256 of its canonical encoding.
    pub fn id(&self) -> ContentId {
        ContentId::of(self.encode())
    }
}

/// Claim leaves for `payouts`: zero amounts dropped, sorted by address, index = position.
/// Duplicate accounts are merged.
pub fn claim_leaves(payouts: &[Payout]) -> Result<Vec<RewardClaim>> {
    let mut by: BTreeMap<Address, U256> = BTreeMap::new();
    for p in payouts {
        let e = by.entry(p.account).or_default();
        *e = e.checked_add(p.amount).ok_or_else(|| PoaError::Overflow {
            what: format!("claim of {}", p.account),
        })?;
    }
    Ok(by
        .into_iter()
        .filter(|(_, a)| !a.is_zero())
        .enumerate()
        .map(|(i, (account, amount))| RewardClaim {
            index: U256::from(i),
            account,
            amount,
        })
        .collect())
}

/// An epoch: the contributors' pools of many inferences, split exactly by their records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Epoch {
    /// The epoch number.
    pub number: u64,
    totals: BTreeMap<Address, U256>,
    records: Vec<ContentId>,
    pooled: U256,
}

impl Epoch {
    /// An empty epoch.
    pub fn new(number: u64) -> Self {
        Self {
            number,
            ..Self::default()
        }
    }

    /// Splits `pool` (the contributors' part of the inference's fee) by `record`'s weights and
    /// adds it to the totals. An invalid record or an overflow changes nothing. A contributor
    /// whose part rounds to zero gets no entry, so the totals are exactly the claim leaves.
    pub fn add(&mut self, record: &AttributionRecord, pool: U256) -> Result<()> {
        record.validate()?;
        let parts = split_weights(pool, &record.weights, ZeroWeightPolicy::Reject)?;
        let mut next = self.totals.clone();
        for p in parts.into_iter().filter(|p| !p.amount.is_zero()) {
            let e = next.entry(p.account).or_default();
            *e = e.checked_add(p.amount).ok_or_else(|| PoaError::Overflow {
                what: format!("epoch total of {}", p.account),
            })?;
        }
        self.pooled = self
            .pooled
            .checked_add(pool)
            .ok_or_else(|| PoaError::Overflow {
                what: "epoch pool".into(),
            })?;
        self.totals = next;
        self.records.push(record.id());
        Ok(())
    }

    /// Ids of the records added, in order.
    pub fn records(&self) -> &[ContentId] {
        &self.records
    }

    /// Total wei pooled (equals the sum of the totals).
    pub fn pooled(&self) -> U256 {
        self.pooled
    }

    /// Per-contributor totals, sorted by address.
    pub fn payouts(&self) -> Vec<Payout> {
        self.totals
            .iter()
            .map(|(&account, &amount)| Payout { account, amount })
            .collect()
    }

    /// The epoch's claim leaves (see [`claim_leaves`]).
    pub fn claim_leaves(&self) -> Vec<RewardClaim> {
        claim_leaves(&self.payouts()).expect("totals are already checked for overflow")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededStream;

    fn rec(scores: &[(Address, f64)]) -> AttributionRecord {
        AttributionRecord::from_scores(
            B256::repeat_byte(1),
            B256::repeat_byte(2),
            vec![B256::repeat_byte(3), B256::repeat_byte(4)],
            AttributionMethod::Trak,
            scores,
            &SplitPolicy::default(),
        )
        .unwrap()
    }

    #[test]
    fn encoding_is_solidity_abi_encode_of_the_documented_tuple() {
        let r = rec(&[
            (Address::repeat_byte(0xc2), 1.0),
            (Address::repeat_byte(0xc1), 1.0),
        ]);
        let e = r.encode();
        // Head: 2 × bytes32, offset, uint8, offset, offset = 6 words.
        assert_eq!(&e[..32], B256::repeat_byte(1).as_slice());
        assert_eq!(U256::from_be_slice(&e[64..96]), U256::from(6 * 32));
        assert_eq!(e[96 + 31], AttributionMethod::Trak as u8);
        // adapterIds: length 2 then the ids.
        assert_eq!(U256::from_be_slice(&e[192..224]), U256::from(2));
        assert_eq!(e.len(), 32 * (6 + 3 + 3 + 3));
        assert_eq!(
            r.weights[0],
            (Address::repeat_byte(0xc1), U256::from(WEIGHT_UNIT / 2))
        );
        assert_eq!(r.id(), ContentId::of(&e));
    }

    #[test]
    fn hostile_encodings_are_typed_errors() {
        let good = rec(&[(Address::repeat_byte(1), 1.0)]).encode();
        for cut in [0, 31, 100, good.len() - 1] {
            assert!(AttributionRecord::decode(&good[..cut]).is_err());
        }
        let mut bad_method = good.clone();
        bad_method[127] = 200;
        assert!(AttributionRecord::decode(&bad_method).is_err());
        let mut trailing = good.clone();
        trailing.extend_from_slice(&[0; 32]);
        assert!(AttributionRecord::decode(&trailing).is_err());
        let mut s = SeededStream::new(4);
        for _ in 0..2_000 {
            let mut b = good.clone();
            let i = s.below(b.len() as u64) as usize;
            b[i] ^= 1 << s.below(8);
            let _ = AttributionRecord::decode(&b); // never panics
        }
        let unsorted = AttributionRecord {
            weights: vec![
                (Address::repeat_byte(2), U256::from(1)),
                (Address::repeat_byte(1), U256::from(WEIGHT_UNIT - 1)),
            ],
            ..rec(&[(Address::repeat_byte(1), 1.0)])
        };
        assert!(AttributionRecord::decode(&unsorted.encode()).is_err());
    }

    #[test]
    fn epochs_total_exactly_and_make_sorted_claim_leaves() {
        let mut s = SeededStream::new(8);
        let mut epoch = Epoch::new(1);
        for _ in 0..500 {
            let scores: Vec<(Address, f64)> = (0..1 + s.below(6))
                .map(|i| {
                    (
                        Address::with_last_byte((i * 3 + s.below(3)) as u8),
                        s.next_f64() + 0.01,
                    )
                })
                .collect();
            let mut seen = std::collections::BTreeSet::new();
            let scores: Vec<_> = scores.into_iter().filter(|x| seen.insert(x.0)).collect();
            epoch.add(&rec(&scores), U256::from(s.next_u64())).unwrap();
        }
        let leaves = epoch.claim_leaves();
        assert_eq!(
            leaves.iter().map(|l| l.amount).sum::<U256>(),
            epoch.pooled()
        );
        for (i, w) in leaves.windows(2).enumerate() {
            assert!(w[0].account < w[1].account);
            assert_eq!(w[0].index, U256::from(i));
        }
        // A pool too small to reach every contributor: the ones left at zero get no entry, so
        // the totals and the claim leaves agree.
        let mut tiny = Epoch::new(2);
        tiny.add(
            &rec(&[
                (Address::repeat_byte(1), 1.0),
                (Address::repeat_byte(2), 1.0),
            ]),
            U256::from(1u8),
        )
        .unwrap();
        assert_eq!(tiny.payouts().len(), 1);
        assert_eq!(tiny.claim_leaves().len(), 1);
        assert_eq!(tiny.pooled(), U256::from(1u8));
        let before = epoch.clone();
        let bad = AttributionRecord {
            weights: vec![],
            ..rec(&[(Address::repeat_byte(1), 1.0)])
        };
        assert!(epoch.add(&bad, U256::from(5)).is_err());
        assert!(
            epoch
                .add(&rec(&[(Address::repeat_byte(1), 1.0)]), U256::MAX)
                .is_err()
        );
        assert_eq!(epoch, before, "failed adds change nothing");
    }
}
