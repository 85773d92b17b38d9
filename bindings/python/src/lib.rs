//! Python bindings of the openledger SDK: the `openledger` package.
//!
//! Each file mirrors one module of the Rust crates (`adapters` ↔ `openledger_lora::adapter`,
//! `pool` ↔ `openledger_lora::pool`, `sgmv` ↔ `openledger_lora::sgmv`, `engine` ↔ `openledger_lora::serve` + `model`, `splits` ↔ `openledger_poa::split`, `merkle` ↔
//! `openledger_chain::standard`, `receipts` ↔ `openledger_chain::receipt`, `chain` ↔
//! `openledger_chain::{abi, evm, deploy}`, `rag` ↔
//! `openledger_poa::rag`, `store` ↔ `openledger_poa::store` + `score`, `types` ↔ the ids and amounts of `openledger_core`, `payable` ↔ `openledger::payable`). Arguments are
//! extracted first, then the Rust work runs with the GIL released; errors cross into Python in
//! `error.rs` only.

use pyo3::prelude::*;

mod adapters;
mod chain;
mod engine;
mod error;
mod merkle;
mod payable;
mod pool;
mod progress;
mod rag;
mod receipts;
mod sgmv;
mod splits;
mod store;
mod train;
mod types;

/// The native module behind the `openledger` package.
#[pymodule]
fn _openledger(m: &Bound<'_, PyModule>) -> PyResult<()> {
    error::register(m)?;
    m.add_class::<adapters::PyLoraAdapter>()?;
    m.add_class::<adapters::PyLoraModule>()?;
    m.add_class::<adapters::PyBaseModel>()?;
    m.add_class::<pool::PyAdapterPool>()?;
    m.add_class::<pool::PyPoolStats>()?;
    splits::register(m)?;
    m.add_class::<merkle::PyStandardMerkleTree>()?;
    m.add_class::<merkle::PyMerkleTree>()?;
    receipts::register(m)?;
    rag::register(m)?;
    store::register(m)?;
    sgmv::register(m)?;
    engine::register(m)?;
    chain::register(m)?;
    train::register(m)?;
    payable::register(m)?;
    Ok(())
}
