//! The openledger contracts and their Rust side: `sol!` bindings of the compiled contracts,
//! OpenZeppelin-compatible Merkle trees for reward claims, EIP-712 attribution receipts, and an
//! in-process EVM that deploys and runs the real bytecode.
//!
//! ```
//! use openledger_chain::standard::{StandardMerkleTree, TreeOptions};
//!
//! let values: Vec<Vec<String>> = ["a", "b", "c", "d", "e", "f"].iter().map(|s| vec![s.to_string()]).collect();
//! let tree = StandardMerkleTree::from_strings(&values, &["string"], TreeOptions::default()).unwrap();
//! assert_eq!(
//!     tree.root().to_string(),
//!     "0x6deb52b5da8fd108f79fab00341f38d2587896634c646ee52e49f845680a70c8"
//! );
//! ```

pub mod abi;
#[cfg(feature = "rpc")]
pub mod anvil;
pub mod bindings;
pub mod chain;
pub mod claims;
pub mod deploy;
pub mod error;
pub mod evm;
pub mod receipt;
#[cfg(feature = "rpc")]
pub mod rpc;
pub mod standard;

pub use alloy_dyn_abi::{DynSolType, DynSolValue};
pub use error::ChainError;
