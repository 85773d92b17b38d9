//! Proof of Attribution for the openledger SDK.
//!
//! Every inference is attributed to the data behind it and every fee is split, to the wei,
//! among the model owner, the protocol and the data contributors:
//!
//! * [`split`]: exact integer reward splits (largest remainder, carry-over ledger).
//! * [`projection`], [`store`], [`score`]: gradient features of training examples, randomly
//!   projected and stored in a memory-mapped f16 file, scored with TracIn-CP, cosine (LESS),
//!   TRAK, influence functions or DataInf ([`linalg`] holds the small Cholesky solve).
//! * [`rag`], [`contextcite`]: citations of retrieved records and relevance weights, and
//!   ablation-based source attribution with a Lasso surrogate.
//! * [`quality`]: near-duplicate clustering, per-cluster rewards, negative-influence flags and
//!   penalty policies.
//! * [`record`]: canonical attribution records, epochs and claim leaves.
//! * [`rng`]: the counter-based seeded generator everything random is drawn from.
//! * [`kernel`]: the f32 and f16 inner-product kernels (AVX2/FMA/F16C when available).
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
pub mod kernel;
pub mod linalg;
pub mod projection;
pub mod quality;
pub mod rag;
pub mod record;
pub mod rng;
pub mod score;
pub mod split;
pub mod store;

pub use error::{PoaError, Result};
