//! Node bindings of the openledger SDK: the `@openledger/sdk` package.
//!
//! Each file mirrors one module of the Rust crates (`adapters` ↔ `openledger_lora::adapter`,
//! `pool` ↔ `openledger_lora::pool`, `sgmv` ↔ `openledger_lora::sgmv`, `engine` ↔
//! `openledger_lora::model` and `serve`, `train` ↔ `openledger_train`, `datanet` ↔
//! `openledger_core::datanet`, `trainlog` ↔ `openledger_core::trainlog`, `splits` ↔
//! `openledger_poa::split`, `quality` ↔ `openledger_poa::quality`, `records` ↔
//! `openledger_poa::record`, `rag` ↔ `openledger_poa::rag`, `store` ↔ `openledger_poa::store`
//! and `influence`, `merkle` ↔ `openledger_chain::standard` and `openledger_core::merkle`,
//! `receipts` ↔ `openledger_chain::receipt` and `abi`, `chain` ↔ `openledger_chain::evm`, `rpc` and
//! `deploy`, `payable` ↔ `openledger::payable`, `types` ↔ the ids and amounts of
//! `openledger_core`). Arguments are checked and copied on the calling
//! thread; heavy work runs on the libuv thread pool and returns a Promise; errors cross into
//! JavaScript in `error.rs` only, and no panic crosses the boundary.

// The TypeScript declarations name a type (task results, aliases) only when its module comes
// before the modules using it: the shared modules come first, one group each.
pub mod error;

pub mod task;

pub mod types;

pub mod progress;

pub mod events;

pub mod json;

pub mod adapters;
pub mod chain;
pub mod datanet;
pub mod engine;
pub mod grounded;
pub mod merkle;
pub mod payable;
pub mod pool;
pub mod quality;
pub mod rag;
pub mod receipts;
pub mod sgmv;
pub mod splits;

pub mod records;
pub mod store;
pub mod trainlog;

pub mod train;

/// The SDK version.
#[napi_derive::napi(catch_unwind)]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
