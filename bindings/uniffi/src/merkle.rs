//! Merkle trees and proofs as `MerkleProof.sol` checks them: OpenZeppelin's `StandardMerkleTree`
//! (`openledger_chain::standard`; leaves are ABI-encoded values, byte-identical to
//! `@openzeppelin/merkle-tree`) and the core tree over 32-byte leaves
//! (`openledger_core::merkle`). Hashes cross as `0x` hex; values as strings (decimal or hex
//! integers, hex addresses and bytes, `true` / `false`, plain strings).

use std::sync::Arc;

use openledger_chain::abi::value_to_json;
use openledger_chain::standard::{self, TreeOptions};
use openledger_core::B256;
use openledger_core::merkle::{self, MultiProof};
use serde_json::Value;

use crate::error::OpenLedgerError;
use crate::types::{b256, b256_str, b256_strs, b256s, to_usize};

fn invalid(m: String) -> OpenLedgerError {
    OpenLedgerError::InvalidArgument(m)
}

/// Several values proven together against one root: `leaves` in the order the verifier consumes
/// them, `proof` the sibling hashes, `proof_flags` one flag per hashing step.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct StandardMultiProof {
    /// The proven values, each a list of fields in canonical string form.
    pub leaves: Vec<Vec<String>>,
    /// Sibling hashes, consumed front to back.
    pub proof: Vec<String>,
    /// Whether each step takes its second operand from the computed queue.
    pub proof_flags: Vec<bool>,
}

/// Several 32-byte leaves proven together against one root.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct MerkleMultiProof {
    /// The proven leaves, in verification order.
    pub leaves: Vec<String>,
    /// Sibling hashes, consumed front to back.
    pub proof: Vec<String>,
    /// Whether each step takes its second operand from the computed queue.
    pub proof_flags: Vec<bool>,
}

/// A tree of ABI-encoded values, compatible with OpenZeppelin's `StandardMerkleTree`.
#[derive(Debug, uniffi::Object)]
pub struct StandardMerkleTree {
    inner: standard::StandardMerkleTree,
}

/// One field of a dump value as a string (strings as they are, bools and arrays as JSON).
fn field_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn encoding(leaf_encoding: &[String]) -> Vec<&str> {
    leaf_encoding.iter().map(String::as_str).collect()
}

/// The standard leaf hash of `value`: the root of the one-value tree.
fn leaf_of(leaf_encoding: &[String], value: Vec<String>) -> Result<B256, OpenLedgerError> {
    let tree = standard::StandardMerkleTree::from_strings(
        &[value],
        &encoding(leaf_encoding),
        TreeOptions::default(),
    )?;
    Ok(tree.root())
}

#[uniffi::export]
impl StandardMerkleTree {
    /// Builds the tree of `values` (each a list of fields matching `leaf_encoding`, e.g.
    /// `["uint256", "address", "uint256"]`); `sort_leaves` as the reference library (default
    /// there: true).
    #[uniffi::constructor]
    pub fn new(
        values: Vec<Vec<String>>,
        leaf_encoding: Vec<String>,
        sort_leaves: bool,
    ) -> Result<Arc<Self>, OpenLedgerError> {
        let inner = standard::StandardMerkleTree::from_strings(
            &values,
            &encoding(&leaf_encoding),
            TreeOptions { sort_leaves },
        )?;
        Ok(Arc::new(Self { inner }))
    }

    /// Loads and validates a `standard-v1` JSON dump.
    #[uniffi::constructor]
    pub fn load(dump_json: String) -> Result<Arc<Self>, OpenLedgerError> {
        let inner = standard::StandardMerkleTree::from_json(&dump_json)?;
        Ok(Arc::new(Self { inner }))
    }

    /// The root.
    pub fn root(&self) -> String {
        b256_str(&self.inner.root())
    }

    /// The node array, root first.
    pub fn tree(&self) -> Vec<String> {
        b256_strs(self.inner.tree())
    }

    /// Number of values.
    pub fn length(&self) -> u64 {
        self.inner.len() as u64
    }

    /// The Solidity type of each field.
    pub fn leaf_encoding(&self) -> Vec<String> {
        self.inner.leaf_encoding().to_vec()
    }

    /// The leaf hash of value `index`.
    pub fn leaf_hash(&self, index: u64) -> Result<String, OpenLedgerError> {
        let value = self.inner.at(to_usize(index))?;
        Ok(b256_str(&self.inner.leaf_hash(value)?))
    }

    /// The proof of value `index` (values in the order given).
    pub fn proof(&self, index: u64) -> Result<Vec<String>, OpenLedgerError> {
        Ok(b256_strs(&self.inner.proof(to_usize(index))?))
    }

    /// A multiproof of the values at `indices`.
    pub fn multi_proof(&self, indices: Vec<u64>) -> Result<StandardMultiProof, OpenLedgerError> {
        let indices: Vec<usize> = indices.into_iter().map(to_usize).collect();
        let m = self.inner.multi_proof(&indices)?;
        let leaves = m
            .leaves
            .iter()
            .map(|v| v.iter().map(|f| field_string(&value_to_json(f))).collect())
            .collect();
        Ok(StandardMultiProof {
            leaves,
            proof: b256_strs(&m.proof),
            proof_flags: m.proof_flags,
        })
    }

    /// Whether `proof` proves value `index` against this tree's root.
    pub fn verify(&self, index: u64, proof: Vec<String>) -> Result<bool, OpenLedgerError> {
        let proof = b256s("proof", &proof).map_err(invalid)?;
        Ok(self.inner.verify(to_usize(index), &proof)?)
    }

    /// The `standard-v1` JSON dump (loads back with [`StandardMerkleTree::load`] and in
    /// `@openzeppelin/merkle-tree`).
    pub fn dump(&self) -> String {
        self.inner.to_json()
    }
}

/// The standard leaf hash `keccak256(keccak256(abi.encode(value)))` of one value.
#[uniffi::export]
pub fn standard_leaf_hash(
    leaf_encoding: Vec<String>,
    value: Vec<String>,
) -> Result<String, OpenLedgerError> {
    Ok(b256_str(&leaf_of(&leaf_encoding, value)?))
}

/// Whether `proof` proves `value` (fields per `leaf_encoding`) against `root`, without the tree.
#[uniffi::export]
pub fn verify_standard_proof(
    root: String,
    leaf_encoding: Vec<String>,
    value: Vec<String>,
    proof: Vec<String>,
) -> Result<bool, OpenLedgerError> {
    let root = b256("root", &root).map_err(invalid)?;
    let proof = b256s("proof", &proof).map_err(invalid)?;
    Ok(merkle::verify_proof(
        root,
        leaf_of(&leaf_encoding, value)?,
        &proof,
    ))
}

/// Whether a multiproof of values leads to `root`, without the tree. A malformed multiproof is
/// not valid (false).
#[uniffi::export]
pub fn verify_standard_multi_proof(
    root: String,
    leaf_encoding: Vec<String>,
    multi_proof: StandardMultiProof,
) -> Result<bool, OpenLedgerError> {
    let root = b256("root", &root).map_err(invalid)?;
    let leaves = multi_proof
        .leaves
        .into_iter()
        .map(|v| leaf_of(&leaf_encoding, v))
        .collect::<Result<Vec<_>, _>>()?;
    let multi = MultiProof {
        leaves,
        proof: b256s("proof", &multi_proof.proof).map_err(invalid)?,
        proof_flags: multi_proof.proof_flags,
    };
    Ok(merkle::verify_multi_proof(root, &multi))
}

/// A tree over 32-byte leaves in the order given (OpenZeppelin's core layout, no sorting).
#[derive(Debug, uniffi::Object)]
pub struct MerkleTree {
    inner: merkle::MerkleTree,
}

#[uniffi::export]
impl MerkleTree {
    /// Builds the tree over `leaves` (32-byte hex each).
    #[uniffi::constructor]
    pub fn new(leaves: Vec<String>) -> Result<Arc<Self>, OpenLedgerError> {
        let leaves = b256s("leaves", &leaves).map_err(invalid)?;
        Ok(Arc::new(Self {
            inner: merkle::MerkleTree::new(&leaves)?,
        }))
    }

    /// The root.
    pub fn root(&self) -> String {
        b256_str(&self.inner.root())
    }

    /// The node array, root first.
    pub fn nodes(&self) -> Vec<String> {
        b256_strs(self.inner.nodes())
    }

    /// The proof of the leaf given at `position`.
    pub fn proof(&self, position: u64) -> Result<Vec<String>, OpenLedgerError> {
        Ok(b256_strs(&self.inner.proof(to_usize(position))?))
    }

    /// A multiproof of the leaves given at `positions`.
    pub fn multi_proof(&self, positions: Vec<u64>) -> Result<MerkleMultiProof, OpenLedgerError> {
        let positions: Vec<usize> = positions.into_iter().map(to_usize).collect();
        let m = self.inner.multi_proof(&positions)?;
        Ok(MerkleMultiProof {
            leaves: b256_strs(&m.leaves),
            proof: b256_strs(&m.proof),
            proof_flags: m.proof_flags,
        })
    }
}

/// The root that `proof` leads to from `leaf`.
#[uniffi::export]
pub fn process_merkle_proof(leaf: String, proof: Vec<String>) -> Result<String, OpenLedgerError> {
    let leaf = b256("leaf", &leaf).map_err(invalid)?;
    let proof = b256s("proof", &proof).map_err(invalid)?;
    Ok(b256_str(&merkle::process_proof(leaf, &proof)))
}

/// Whether `proof` proves `leaf` against `root` (`MerkleProof.verify`).
#[uniffi::export]
pub fn verify_merkle_proof(
    root: String,
    leaf: String,
    proof: Vec<String>,
) -> Result<bool, OpenLedgerError> {
    let root = b256("root", &root).map_err(invalid)?;
    let leaf = b256("leaf", &leaf).map_err(invalid)?;
    let proof = b256s("proof", &proof).map_err(invalid)?;
    Ok(merkle::verify_proof(root, leaf, &proof))
}

fn core_multi(m: MerkleMultiProof) -> Result<MultiProof<B256>, OpenLedgerError> {
    Ok(MultiProof {
        leaves: b256s("leaves", &m.leaves).map_err(invalid)?,
        proof: b256s("proof", &m.proof).map_err(invalid)?,
        proof_flags: m.proof_flags,
    })
}

/// The root a multiproof leads to; a malformed multiproof is
/// [`OpenLedgerError::Merkle`].
#[uniffi::export]
pub fn process_merkle_multi_proof(
    multi_proof: MerkleMultiProof,
) -> Result<String, OpenLedgerError> {
    Ok(b256_str(&merkle::process_multi_proof(&core_multi(
        multi_proof,
    )?)?))
}

/// Whether a multiproof leads to `root` (`MerkleProof.multiProofVerify`); a malformed one is not
/// valid.
#[uniffi::export]
pub fn verify_merkle_multi_proof(
    root: String,
    multi_proof: MerkleMultiProof,
) -> Result<bool, OpenLedgerError> {
    let root = b256("root", &root).map_err(invalid)?;
    Ok(merkle::verify_multi_proof(root, &core_multi(multi_proof)?))
}
