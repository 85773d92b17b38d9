//! Mobile bindings of the openledger SDK: one library (`cdylib` for Android and the JVM,
//! `staticlib` for iOS) whose uniffi scaffolding gives Kotlin and Swift what a phone needs —
//! checking EIP-712 receipts and Merkle claims, checking that a record belongs to a datanet
//! version and that a model was trained on it, computing exact reward splits, inspecting PEFT
//! adapters, and running a small model with an adapter on the device.
//!
//! The bindings are thin: each function reads its arguments (hex ids, decimal wei amounts),
//! calls the crate that does the work and maps its error, by kind, into the one error enum. Each file
//! mirrors one crate module: `splits` ↔ `openledger_poa::split`, `merkle` ↔
//! `openledger_chain::standard` and `openledger_core::merkle`, `receipts` ↔
//! `openledger_chain::receipt` and `bindings`, `datanet` ↔ `openledger_core::datanet`,
//! `trainlog` ↔ `openledger_core::trainlog`, `adapters` ↔ `openledger_lora::adapter`, `model`
//! ↔ `openledger_lora::model`.
//!
//! ```
//! use openledger_mobile::{NegativeScores, ScoreShare, split_scores};
//!
//! let shares = vec![
//!     ScoreShare { account: format!("0x{}", "01".repeat(20)), score: 2.0 },
//!     ScoreShare { account: format!("0x{}", "02".repeat(20)), score: 1.0 },
//! ];
//! let payouts = split_scores("100".into(), shares, NegativeScores::Clip, None).unwrap();
//! assert_eq!(payouts[0].amount, "67");
//! assert_eq!(payouts[1].amount, "33");
//! ```

mod adapters;
mod datanet;
mod error;
mod merkle;
mod model;
mod receipts;
mod splits;
mod trainlog;
mod types;

pub use adapters::{BaseModel, LoraAdapter, LoraModuleInfo, ValidationReport};
pub use datanet::{record_hash, verify_record_proof};
pub use error::OpenLedgerError;
pub use merkle::{
    MerkleMultiProof, MerkleTree, StandardMerkleTree, StandardMultiProof,
    process_merkle_multi_proof, process_merkle_proof, standard_leaf_hash,
    verify_merkle_multi_proof, verify_merkle_proof, verify_standard_multi_proof,
    verify_standard_proof,
};
pub use model::{LoadListener, OnDeviceModel, TokenListener};
pub use receipts::{
    AttributionReceipt, AttributionWeight, OperatorSigner, ReceiptDomain, attribution_weights_hash,
    claim_calldata, encode_contract_call, pay_for_inference_calldata, receipt_domain_separator,
    receipt_signing_hash, receipt_struct_hash, recover_receipt_signer, verify_receipt,
};
pub use splits::{
    BpsShare, FeeSplitResult, NegativeScores, Payout, ScoreShare, WeightShare, split_bps,
    split_fee, split_scores, split_weights,
};
pub use trainlog::verify_usage_proof;

uniffi::setup_scaffolding!();
