//! Reward claims of one epoch: contributors' totals as OpenZeppelin standard leaves over
//! `(uint256 index, address account, uint256 amount)`, the tree whose root `AttributionRewards`
//! stores, and the proof and calldata of each claim.
//!
//! ```
//! use openledger_chain::claims::EpochClaims;
//! use openledger_core::{Address, U256};
//!
//! let claims = EpochClaims::new(3, &[
//!     (Address::repeat_byte(1), U256::from(600)),
//!     (Address::repeat_byte(2), U256::from(400)),
//! ])?;
//! assert_eq!(claims.total(), U256::from(1000));
//! let c = claims.claim_call(1)?;
//! assert_eq!(c.amount, U256::from(400));
//! assert!(openledger_core::merkle::verify_proof(claims.root(), claims.leaf(1)?, &c.proof));
//! # Ok::<(), openledger_chain::ChainError>(())
//! ```

use alloy_dyn_abi::DynSolValue;
use alloy_primitives::{Address, B256, U256, keccak256};
use openledger_core::RewardClaim;
use rayon::prelude::*;

use crate::ChainError;
use crate::bindings::AttributionRewards;
use crate::standard::{StandardMerkleTree, TreeOptions};

/// The leaf encoding of a reward claim.
pub const CLAIM_LEAF_ENCODING: [&str; 3] = ["uint256", "address", "uint256"];

/// `keccak256(bytes.concat(keccak256(abi.encode(index, account, amount))))`, written directly
/// (three 32-byte words) rather than through the dynamic encoder.
pub fn claim_leaf_hash(index: U256, account: Address, amount: U256) -> B256 {
    let mut buf = [0u8; 96];
    buf[..32].copy_from_slice(&index.to_be_bytes::<32>());
    buf[44..64].copy_from_slice(account.as_slice());
    buf[64..].copy_from_slice(&amount.to_be_bytes::<32>());
    keccak256(keccak256(buf))
}

/// An epoch's reward claims and their tree.
#[derive(Debug, Clone)]
pub struct EpochClaims {
    epoch: u64,
    claims: Vec<RewardClaim>,
    total: U256,
    tree: StandardMerkleTree,
}

impl EpochClaims {
    /// Claims numbered 0.. in the order of `totals` (account, amount).
    pub fn new(epoch: u64, totals: &[(Address, U256)]) -> Result<Self, ChainError> {
        let claims = totals
            .iter()
            .enumerate()
            .map(|(i, &(account, amount))| RewardClaim {
                index: U256::from(i),
                account,
                amount,
            })
            .collect();
        Self::from_claims(epoch, claims)
    }

    /// The tree of `claims` as given (indices must be distinct for every claim to be claimable).
    pub fn from_claims(epoch: u64, claims: Vec<RewardClaim>) -> Result<Self, ChainError> {
        let mut total = U256::ZERO;
        for (i, c) in claims.iter().enumerate() {
            total = total
                .checked_add(c.amount)
                .ok_or(ChainError::AmountOverflow { index: i })?;
        }
        let hashes: Vec<B256> = claims
            .par_iter()
            .map(|c| claim_leaf_hash(c.index, c.account, c.amount))
            .collect();
        let values = claims
            .iter()
            .map(|c| {
                vec![
                    DynSolValue::Uint(c.index, 256),
                    DynSolValue::Address(c.account),
                    DynSolValue::Uint(c.amount, 256),
                ]
            })
            .collect();
        let tree = StandardMerkleTree::from_hashed(
            values,
            hashes,
            &CLAIM_LEAF_ENCODING,
            TreeOptions::default(),
        )?;
        Ok(Self {
            epoch,
            claims,
            total,
            tree,
        })
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The root to post.
    pub fn root(&self) -> B256 {
        self.tree.root()
    }

    /// Sum of all amounts (what the epoch must be funded with).
    pub fn total(&self) -> U256 {
        self.total
    }

    /// The claims, in order.
    pub fn claims(&self) -> &[RewardClaim] {
        &self.claims
    }

    /// The underlying standard tree (for its dump, multiproofs...).
    pub fn tree(&self) -> &StandardMerkleTree {
        &self.tree
    }

    /// The leaf hash of claim `i`.
    pub fn leaf(&self, i: usize) -> Result<B256, ChainError> {
        let c = self.get(i)?;
        Ok(claim_leaf_hash(c.index, c.account, c.amount))
    }

    /// The proof of claim `i`.
    pub fn proof(&self, i: usize) -> Result<Vec<B256>, ChainError> {
        self.tree.proof(i)
    }

    fn get(&self, i: usize) -> Result<&RewardClaim, ChainError> {
        self.claims.get(i).ok_or(ChainError::IndexOutOfBounds {
            index: i,
            len: self.claims.len(),
        })
    }

    /// The `AttributionRewards.claim` call of claim `i`, proof included.
    pub fn claim_call(&self, i: usize) -> Result<AttributionRewards::claimCall, ChainError> {
        let c = self.get(i)?;
        Ok(AttributionRewards::claimCall {
            epoch: self.epoch,
            index: c.index,
            account: c.account,
            amount: c.amount,
            proof: self.proof(i)?,
        })
    }

    /// The `AttributionRewards.postEpochRoot` call committing this epoch.
    pub fn post_call(&self) -> AttributionRewards::postEpochRootCall {
        AttributionRewards::postEpochRootCall {
            epoch: self.epoch,
            root: self.root(),
            total: self.total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::standard::standard_leaf_hash;
    use alloy_dyn_abi::DynSolType;

    #[test]
    fn typed_leaf_hash_equals_the_dynamic_abi_encoding() {
        let types = [
            DynSolType::Uint(256),
            DynSolType::Address,
            DynSolType::Uint(256),
        ];
        for (i, amount) in [
            (0u64, U256::ZERO),
            (7, U256::MAX),
            (1 << 40, U256::from(12345)),
        ] {
            let a = Address::repeat_byte(i as u8 ^ 0x5a);
            let dynamic = standard_leaf_hash(
                &types,
                &[
                    DynSolValue::Uint(U256::from(i), 256),
                    DynSolValue::Address(a),
                    DynSolValue::Uint(amount, 256),
                ],
            )
            .unwrap();
            assert_eq!(claim_leaf_hash(U256::from(i), a, amount), dynamic);
        }
    }

    #[test]
    fn totals_that_overflow_are_refused() {
        let r = EpochClaims::new(
            1,
            &[(Address::ZERO, U256::MAX), (Address::ZERO, U256::from(1))],
        );
        assert_eq!(r.unwrap_err(), ChainError::AmountOverflow { index: 1 });
    }
}
