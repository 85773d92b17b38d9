//! The reward claim: what one contributor may claim in an epoch, the leaf values
//! `(uint256 index, address account, uint256 amount)` of the epoch's claim tree. Attribution
//! computes them (`openledger_poa::record::Epoch::claim_leaves`), the chain commits to them and pays
//! them (`openledger_chain::claims::EpochClaims`).
//!
//! ```
//! use openledger_core::reward::RewardClaim;
//! use openledger_core::{Address, U256};
//!
//! let c = RewardClaim { index: U256::from(0), account: Address::repeat_byte(1), amount: U256::from(600) };
//! assert_eq!(c.amount, U256::from(600));
//! ```

use alloy_primitives::{Address, U256};

/// What one contributor may claim in an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewardClaim {
    /// Position of the claim (its bit in the contract's claimed bitmap).
    pub index: U256,
    /// Who receives the tokens.
    pub account: Address,
    /// Amount in token wei.
    pub amount: U256,
}
