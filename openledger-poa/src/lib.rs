//! Proof of Attribution for the openledger SDK.
//!
//! Every inference is attributed to the data behind it and every fee is split, to the wei,
//! among the model owner, the protocol and the data contributors:
//!
//! * [`split`]: exact integer reward splits (largest remainder, carry-over and debt ledgers).
//! * [`projection`], [`store`]: gradient features of training examples, randomly projected and
//!   stored in a memory-mapped f16 (or f32) file.
//! * [`influence`]: those features scored against a query with TracIn-CP, cosine (LESS), TRAK,
//!   influence functions or DataInf, and the [`influence::InfluenceIndex`] of a training run.
//! * [`rag`], [`contextcite`]: citations of retrieved records and relevance weights, and
//!   ablation-based source attribution with a Lasso surrogate.
//! * [`quality`]: near-duplicate clustering, per-cluster rewards, copy and negative-influence
//!   flags and penalty policies.
//! * [`reputation`]: contributors' validated history and the score that weights their shares.
//! * [`record`]: canonical attribution records, epochs and claim leaves.
//! * [`rng`]: the counter-based seeded generator everything random is drawn from.
//!
//! ```
//! use openledger_poa::split::{FeeSplit, SplitPolicy};
//! use openledger_core::{Address, U256};
//!
//! let fee = FeeSplit {
//!     owner: Address::repeat_byte(0xaa),
//!     protocol: Address::repeat_byte(0xbb),
//!     protocol_bps: 500,
//!     data_pool_bps: 7_500,
//!     policy: SplitPolicy::default(),
//! };
//! let paid = fee.split(U256::from(1_000_000u64), &[(Address::repeat_byte(1), 0.9), (Address::repeat_byte(2), 0.1)]).unwrap();
//! assert_eq!(paid.all().map(|p| p.amount).sum::<U256>(), U256::from(1_000_000u64));
//! ```

pub mod contextcite;
pub mod error;
pub mod influence;
pub mod projection;
pub mod quality;
pub mod rag;
pub mod record;
pub mod reputation;
pub mod rng;
pub mod split;
pub mod store;

pub use error::{PoaError, Result};
