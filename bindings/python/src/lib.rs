//! Python bindings of the openledger SDK: the `openledger` package.
//!
//! Each file mirrors one module of the Rust crates (`adapters` ↔ `openledger_lora::adapter`,
//! `pool` ↔ `openledger_lora::pool`, `sgmv` ↔ `openledger_lora::sgmv`, `engine` ↔
//! `openledger_lora::serve` + `model`, `train` ↔ `openledger_train`, `datanet` ↔
//! `openledger_core::datanet`, `trainlog` ↔ `openledger_core::trainlog`, `splits` ↔
//! `openledger_poa::split`, `quality` ↔ `openledger_poa::quality`, `records` ↔
//! `openledger_poa::record`, `rag` ↔ `openledger_poa::rag`, `store` ↔ `openledger_poa::store` +
//! `influence`, `merkle` ↔ `openledger_chain::standard`, `receipts` ↔
//! `openledger_chain::receipt`, `chain` ↔ `openledger_chain::{abi, evm, deploy}`, `types` ↔ the
//! ids and amounts of `openledger_core`, `payable` ↔ `openledger::payable`). Arguments are
//! extracted first, then the Rust work runs with the GIL released; errors cross into Python in
//! `error.rs` only.

use pyo3::prelude::*;

mod adapters;
mod chain;
mod datanet;
mod engine;
mod error;
mod grounded;
mod merkle;
mod payable;
mod pool;
mod progress;
mod quality;
mod rag;
mod receipts;
mod records;
mod sgmv;
mod splits;
mod store;
mod train;
mod trainlog;
mod types;

/// The native module behind the `openledger` package.
#[pymodule]
fn _openledger(m: &Bound<'_, PyModule>) -> PyResult<()> {
    error::register(m)?;
    adapters::register(m)?;
    datanet::register(m)?;
    trainlog::register(m)?;
    quality::register(m)?;
    records::register(m)?;
    m.add_class::<pool::PyAdapterPool>()?;
    m.add_class::<pool::PyPoolStats>()?;
    m.add_function(wrap_pyfunction!(pool::hub_ids, m)?)?;
    m.add_function(wrap_pyfunction!(pool::parse_adapter_id, m)?)?;
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
    grounded::register(m)?;
    Ok(())
}
