//! Kotlin / Swift face of `openledger_core::trainlog`: what a phone needs to check that a model
//! was trained on a record — a usage proof (the bytes a training log's `prove` gives) checked
//! against the log head a model registration commits to, without the log.

use openledger_core::ContentId;
use openledger_core::trainlog::UsageProof;

use crate::error::OpenLedgerError;
use crate::types::b256;

/// The optimizer step at which `proof` shows the record `record` (its content hash) was in a
/// training batch, if the proof leads to the log head `head`; null when it does not. Malformed
/// proof bytes are `Integrity`.
#[uniffi::export]
pub fn verify_usage_proof(
    proof: Vec<u8>,
    record: String,
    head: String,
) -> Result<Option<u64>, OpenLedgerError> {
    let p = UsageProof::from_bytes(&proof)?;
    let record = ContentId(b256("record", &record).map_err(OpenLedgerError::InvalidArgument)?);
    let head = b256("head", &head).map_err(OpenLedgerError::InvalidArgument)?;
    Ok(p.verify(&record, head))
}
