//! Kotlin / Swift face of `openledger_core::datanet`: what a phone needs to check that a record
//! belongs to a published datanet version — the record's content hash and its Merkle proof
//! against the version's root (the root `DatanetRegistry` stores), without the datanet.

use openledger_core::ContentId;
use openledger_core::datanet::verify_record_proof as rust_verify;

use crate::error::OpenLedgerError;
use crate::types::{b256, b256s};

fn invalid(m: String) -> OpenLedgerError {
    OpenLedgerError::InvalidArgument(m)
}

/// The content hash of a record's text (keccak-256 of its UTF-8 bytes), as a datanet stores it.
#[uniffi::export]
pub fn record_hash(content: String) -> String {
    ContentId::of(content.as_bytes()).to_string()
}

/// Whether `proof` (hex hashes) shows that the record with content hash `hash` belongs to the
/// datanet version whose Merkle root is `root`.
#[uniffi::export]
pub fn verify_record_proof(
    root: String,
    hash: String,
    proof: Vec<String>,
) -> Result<bool, OpenLedgerError> {
    let root = b256("root", &root).map_err(invalid)?;
    let hash = ContentId(b256("hash", &hash).map_err(invalid)?);
    let proof = b256s("proof", &proof).map_err(invalid)?;
    Ok(rust_verify(root, &hash, &proof))
}
