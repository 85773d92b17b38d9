//! Shared vocabulary of the openledger SDK: content-addressed ids, contributor addresses,
//! tensor dtypes and the error kinds every other crate builds on.
//!
//! ```
//! use openledger_core::{ContentId, DType};
//!
//! let id = ContentId::of(b"hello");
//! assert_eq!(id.to_string().len(), 66); // 0x + 64 hex digits
//! assert_eq!(DType::BF16.size_in_bytes(), 2);
//! ```

pub mod datanet;
pub mod dtype;
pub mod error;
pub mod fsx;
pub mod grant;
pub mod id;
pub mod merkle;
pub mod reward;
pub mod trainlog;

pub use alloy_primitives::{Address, B256, U256};
pub use dtype::DType;
pub use error::{Classify, CoreError, ErrorKind};
pub use id::ContentId;
pub use reward::RewardClaim;
