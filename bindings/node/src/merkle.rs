//! JavaScript face of `openledger_chain::standard` and `openledger_core::merkle`:
//! OpenZeppelin-compatible `StandardMerkleTree`s (leaf = `keccak256(keccak256(abi.encode(values)))`,
//! sorted pairs) with their `standard-v1` JSON dumps, and `MerkleTree`s over 32-byte leaves.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use napi::bindgen_prelude::{AsyncTask, Unknown};
use napi_derive::napi;
use openledger_chain::abi::value_to_json;
use openledger_chain::standard::{
    BuildStage, StandardMerkleTree as RustTree, TreeOptions as RustOptions,
};
use openledger_core::B256;
use openledger_core::merkle::{self as core, MerkleTree as RustCoreTree};
use serde_json::Value;

use crate::error::{ErrorCode, JsResult, Result, error};
use crate::json;
use crate::progress::{Progress, ProgressFn};
use crate::task::{StringListsTask, count, task};
use crate::types::{Bytes, b256, b256_str};

task!(
    /// Resolves to a `StandardMerkleTree`.
    StandardMerkleTreeTask => StandardMerkleTree
);

/// How a `StandardMerkleTree` is built.
#[napi(object)]
pub struct TreeOptions {
    /// Sort leaves by hash before building (default `true`, as the reference library); `false`
    /// keeps the leaves in input order.
    pub sort_leaves: Option<bool>,
}

/// A multiproof: the proven leaves in verification order, the sibling hashes and one flag per
/// hashing step (what `MerkleProof.multiProofVerify` takes).
#[napi(object)]
pub struct MultiProof {
    /// The proven leaves: values (lists of fields in canonical JSON form) for a
    /// `StandardMerkleTree`, `0x` hashes for a `MerkleTree`.
    pub leaves: Vec<Value>,
    /// Sibling hashes, consumed front to back.
    pub proof: Vec<String>,
    /// One flag per hashing step.
    pub proof_flags: Vec<bool>,
}

fn hashes(name: &str, proof: &[Bytes]) -> Result<Vec<B256>> {
    proof
        .iter()
        .enumerate()
        .map(|(i, h)| b256(&format!("{name}[{i}]"), h))
        .collect()
}

fn hex_list(hs: &[B256]) -> Vec<String> {
    hs.iter().map(b256_str).collect()
}

fn indices(name: &str, v: &[f64]) -> Result<Vec<usize>> {
    v.iter()
        .enumerate()
        .map(|(i, x)| count(&format!("{name}[{i}]"), *x))
        .collect()
}

/// A Merkle tree of ABI-encoded values, compatible with OpenZeppelin's `StandardMerkleTree`.
#[napi]
pub struct StandardMerkleTree {
    inner: Arc<RustTree>,
}

#[napi]
impl StandardMerkleTree {
    /// Builds the tree of `values` (each a list of fields matching `leafEncoding`, e.g.
    /// `["address", "uint256"]`). Integers are exact as `bigint`s or decimal strings; bytes are
    /// `0x` hex strings or Buffers.
    #[napi(catch_unwind)]
    pub fn of(
        values: Vec<Vec<Unknown<'_>>>,
        leaf_encoding: Vec<String>,
        options: Option<TreeOptions>,
    ) -> Result<AsyncTask<StandardMerkleTreeTask>> {
        crate::error::guard(|| {
            let rows = json::rows("values", &values)?;
            let options = RustOptions {
                sort_leaves: options.and_then(|o| o.sort_leaves).unwrap_or(true),
            };
            Ok(StandardMerkleTreeTask::spawn(move || {
                let types: Vec<&str> = leaf_encoding.iter().map(String::as_str).collect();
                let inner = RustTree::from_json_values(&rows, &types, options).js()?;
                Ok(StandardMerkleTree {
                    inner: Arc::new(inner),
                })
            }))
        })
    }

    /// Loads and validates a `standard-v1` dump, given as JSON text or as the object `dump()`
    /// returns.
    #[napi(catch_unwind)]
    pub fn load(dump: Value) -> AsyncTask<StandardMerkleTreeTask> {
        let text = match dump {
            Value::String(s) => s,
            v => v.to_string(),
        };
        StandardMerkleTreeTask::spawn(move || {
            Ok(StandardMerkleTree {
                inner: Arc::new(RustTree::from_json(&text).js()?),
            })
        })
    }

    /// The root, as `0x` + 64 hex digits.
    #[napi(getter, catch_unwind)]
    pub fn root(&self) -> String {
        b256_str(&self.inner.root())
    }

    /// The Solidity type of each field.
    #[napi(getter, catch_unwind)]
    pub fn leaf_encoding(&self) -> Vec<String> {
        self.inner.leaf_encoding().to_vec()
    }

    /// Number of values.
    #[napi(getter, catch_unwind)]
    pub fn length(&self) -> u32 {
        self.inner.len() as u32
    }

    /// The node array, root first (as in the dump).
    #[napi(catch_unwind)]
    pub fn tree(&self) -> Vec<String> {
        hex_list(self.inner.tree())
    }

    /// The values in their original order, in canonical JSON form (integers as decimal
    /// strings, addresses checksummed, bytes as hex).
    #[napi(catch_unwind)]
    pub fn values(&self) -> Vec<Value> {
        self.inner
            .dump()
            .values
            .into_iter()
            .map(|v| Value::Array(v.value))
            .collect()
    }

    /// The leaf hash of value `index`.
    #[napi(catch_unwind)]
    pub fn leaf_hash(&self, index: f64) -> Result<String> {
        crate::error::guard(|| {
            let value = self.inner.at(count("index", index)?).js()?;
            Ok(b256_str(&self.inner.leaf_hash(value).js()?))
        })
    }

    /// The proof of value `index` (a list of `0x` hashes).
    #[napi(catch_unwind)]
    pub fn proof(&self, index: f64) -> Result<Vec<String>> {
        crate::error::guard(|| Ok(hex_list(&self.inner.proof(count("index", index)?).js()?)))
    }

    /// The proof of every value, in input order (computed in parallel). `onProgress(n)` is
    /// called with the number of proofs made since its last call.
    #[napi(catch_unwind)]
    pub fn all_proofs(&self, on_progress: Option<ProgressFn>) -> AsyncTask<StringListsTask> {
        let (tree, progress) = (self.inner.clone(), Progress::new(on_progress));
        StringListsTask::spawn(move || {
            let seen = AtomicUsize::new(0);
            let proofs = tree.all_proofs_with_progress(&|p| {
                if p.stage == BuildStage::Proofs {
                    let before = seen.fetch_max(p.done, Ordering::Relaxed);
                    progress.advance(p.done.saturating_sub(before));
                }
            });
            Ok(proofs.iter().map(|p| hex_list(p)).collect())
        })
    }

    /// A multiproof of the values at `indices`.
    #[napi(catch_unwind)]
    pub fn multi_proof(&self, indices: Vec<f64>) -> Result<MultiProof> {
        crate::error::guard(|| {
            let m = self
                .inner
                .multi_proof(&self::indices("indices", &indices)?)
                .js()?;
            Ok(MultiProof {
                leaves: m
                    .leaves
                    .iter()
                    .map(|v| Value::Array(v.iter().map(value_to_json).collect()))
                    .collect(),
                proof: hex_list(&m.proof),
                proof_flags: m.proof_flags,
            })
        })
    }

    /// Whether `proof` proves value `index` against this tree's root.
    #[napi(catch_unwind)]
    pub fn verify(&self, index: f64, proof: Vec<Bytes>) -> Result<bool> {
        crate::error::guard(|| {
            let proof = hashes("proof", &proof)?;
            self.inner.verify(count("index", index)?, &proof).js()
        })
    }

    /// The `standard-v1` dump as an object (what `JSON.parse` of the reference library's dump
    /// gives).
    #[napi(catch_unwind)]
    pub fn dump(&self) -> Result<Value> {
        crate::error::guard(|| {
            serde_json::from_str(&self.inner.to_json())
                .map_err(|e| error(ErrorCode::MerkleTree, "the dump is not JSON", Some(&e)))
        })
    }

    /// The dump as compact JSON text.
    #[napi(catch_unwind)]
    pub fn to_json(&self) -> String {
        self.inner.to_json()
    }

    /// The tree drawn as text, as the reference library renders it.
    #[napi(catch_unwind)]
    pub fn render(&self) -> String {
        self.inner.render()
    }
}

/// A Merkle tree over 32-byte leaves taken in the order given (OpenZeppelin's core layout:
/// sorted-pair keccak-256, `2n - 1` nodes, root first).
#[napi]
pub struct MerkleTree {
    inner: RustCoreTree,
}

#[napi]
impl MerkleTree {
    /// The tree of `leaves` (`0x` hashes or 32-byte Buffers, at least one).
    #[napi(constructor, catch_unwind)]
    pub fn new(leaves: Vec<Bytes>) -> Result<Self> {
        crate::error::guard(|| {
            let leaves = hashes("leaves", &leaves)?;
            Ok(Self {
                inner: RustCoreTree::new(&leaves).js()?,
            })
        })
    }

    /// The root.
    #[napi(getter, catch_unwind)]
    pub fn root(&self) -> String {
        b256_str(&self.inner.root())
    }

    /// Number of leaves.
    #[napi(getter, catch_unwind)]
    pub fn length(&self) -> u32 {
        self.inner.leaf_count() as u32
    }

    /// The node array, root first.
    #[napi(catch_unwind)]
    pub fn nodes(&self) -> Vec<String> {
        hex_list(self.inner.nodes())
    }

    /// The proof of the leaf at `position` (in the order given).
    #[napi(catch_unwind)]
    pub fn proof(&self, position: f64) -> Result<Vec<String>> {
        crate::error::guard(|| {
            let p = self.inner.proof(count("position", position)?);
            Ok(hex_list(&p.js()?))
        })
    }

    /// A multiproof of the leaves at `positions`.
    #[napi(catch_unwind)]
    pub fn multi_proof(&self, positions: Vec<f64>) -> Result<MultiProof> {
        crate::error::guard(|| {
            let m = self.inner.multi_proof(&indices("positions", &positions)?);
            let m = m.js()?;
            Ok(MultiProof {
                leaves: m
                    .leaves
                    .iter()
                    .map(|h| Value::String(b256_str(h)))
                    .collect(),
                proof: hex_list(&m.proof),
                proof_flags: m.proof_flags,
            })
        })
    }
}

/// The root that `proof` leads to from `leaf` (sorted-pair keccak-256).
#[napi(catch_unwind)]
pub fn process_proof(leaf: Bytes, proof: Vec<Bytes>) -> Result<String> {
    crate::error::guard(|| {
        let leaf = b256("leaf", &leaf)?;
        Ok(b256_str(&core::process_proof(
            leaf,
            &hashes("proof", &proof)?,
        )))
    })
}

/// Whether `proof` proves `leaf` against `root`.
#[napi(catch_unwind)]
pub fn verify_proof(root: Bytes, leaf: Bytes, proof: Vec<Bytes>) -> Result<bool> {
    crate::error::guard(|| {
        let (root, leaf) = (b256("root", &root)?, b256("leaf", &leaf)?);
        Ok(core::verify_proof(root, leaf, &hashes("proof", &proof)?))
    })
}
