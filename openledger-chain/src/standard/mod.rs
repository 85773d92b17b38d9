//! OpenZeppelin's StandardMerkleTree: leaves are `keccak256(keccak256(abi.encode(values...)))`,
//! sorted by hash (by default), arranged and proven by [`openledger_core::merkle`], and saved in
//! the `standard-v1` JSON dump. Roots, proofs, multiproofs and dumps are byte-identical to
//! `@openzeppelin/merkle-tree` 1.0.8, and `MerkleProof.sol` accepts the proofs.
//!
//! ```
//! use openledger_chain::standard::{StandardMerkleTree, TreeOptions};
//!
//! let values = vec![
//!     vec!["0".to_string(), "0x1111111111111111111111111111111111111111".to_string(), "500".to_string()],
//!     vec!["1".to_string(), "0x2222222222222222222222222222222222222222".to_string(), "250".to_string()],
//! ];
//! let tree = StandardMerkleTree::from_strings(&values, &["uint256", "address", "uint256"], TreeOptions::default())?;
//! let proof = tree.proof(1)?;
//! assert!(tree.verify(1, &proof)?);
//! let reloaded = StandardMerkleTree::from_json(&tree.to_json())?;
//! assert_eq!(reloaded.root(), tree.root());
//! # Ok::<(), openledger_chain::ChainError>(())
//! ```

pub(crate) mod value;

use std::collections::HashMap;

use alloy_dyn_abi::{DynSolType, DynSolValue};
use alloy_primitives::{B256, keccak256};
use openledger_core::merkle::{self, MultiProof};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ChainError;

/// The `format` tag of a standard tree dump.
pub const STANDARD_V1: &str = "standard-v1";

/// Below this many values, leaves are hashed on one thread.
const PARALLEL_THRESHOLD: usize = 4096;

/// Leaves hashed (or proofs made) between two progress reports.
const PROGRESS_BATCH: usize = 1 << 16;

/// What a long tree operation has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStage {
    /// `done` of `total` leaves hashed.
    LeavesHashed,
    /// The node array is complete (`done == total` values).
    TreeBuilt,
    /// `done` of `total` proofs made.
    Proofs,
}

/// A progress report of a long tree operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildProgress {
    /// The stage reported.
    pub stage: BuildStage,
    /// Items done in that stage.
    pub done: usize,
    /// Items the stage has in all.
    pub total: usize,
}

/// How a tree is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeOptions {
    /// Sort leaves by hash before building (the reference library's default, `true`). Sorted
    /// trees give the same root whatever the order of the values.
    pub sort_leaves: bool,
}

impl Default for TreeOptions {
    fn default() -> Self {
        Self { sort_leaves: true }
    }
}

/// One value of the tree with the index of its leaf in the node array.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedValue {
    /// The value's fields, one per leaf encoding type.
    pub value: Vec<DynSolValue>,
    /// Index of its leaf in [`StandardMerkleTree::tree`].
    pub tree_index: usize,
    /// The JSON form it was loaded from, kept so a loaded dump saves back unchanged.
    raw: Option<Vec<Value>>,
}

/// One entry of a dump's `values`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DumpValue {
    /// The fields in JSON form.
    pub value: Vec<Value>,
    /// Index of the value's leaf in `tree`.
    pub tree_index: usize,
}

/// The `standard-v1` JSON dump of a tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StandardTreeDump {
    /// Always `standard-v1`.
    pub format: String,
    /// The Solidity type of each field.
    pub leaf_encoding: Vec<String>,
    /// The node array, root first.
    pub tree: Vec<B256>,
    /// The values in their original order.
    pub values: Vec<DumpValue>,
}

/// A Merkle tree of ABI-encoded values, compatible with OpenZeppelin's `StandardMerkleTree`.
#[derive(Debug, Clone)]
pub struct StandardMerkleTree {
    tree: Vec<B256>,
    values: Vec<IndexedValue>,
    leaf_encoding: Vec<String>,
    types: Vec<DynSolType>,
    hash_lookup: HashMap<B256, usize>,
}

/// `keccak256(keccak256(abi.encode(values...)))`, after checking each value against its type.
pub fn standard_leaf_hash(
    types: &[DynSolType],
    values: &[DynSolValue],
) -> Result<B256, ChainError> {
    check_value(types, values, 0)?;
    Ok(leaf_hash_unchecked(values))
}

fn leaf_hash_unchecked(values: &[DynSolValue]) -> B256 {
    let encoded = DynSolValue::Tuple(values.to_vec()).abi_encode_params();
    keccak256(keccak256(encoded))
}

fn check_value(
    types: &[DynSolType],
    values: &[DynSolValue],
    value_index: usize,
) -> Result<(), ChainError> {
    if types.len() != values.len() {
        return Err(ChainError::ValueArity {
            value_index,
            expected: types.len(),
            found: values.len(),
        });
    }
    for (field, (t, v)) in types.iter().zip(values).enumerate() {
        if !t.matches(v) {
            return Err(ChainError::InvalidValue {
                value_index,
                field,
                expected: t.to_string(),
                reason: format!("found a value of type {:?}", v.as_type()),
            });
        }
    }
    Ok(())
}

impl StandardMerkleTree {
    /// Builds the tree of `values` (each a list of fields matching `leaf_encoding`).
    pub fn of(
        values: Vec<Vec<DynSolValue>>,
        leaf_encoding: &[&str],
        options: TreeOptions,
    ) -> Result<Self, ChainError> {
        Self::of_with_progress(values, leaf_encoding, options, &|_| {})
    }

    /// [`of`](Self::of), reporting progress to `progress` after each batch of leaves hashed and
    /// once the tree is built (a million leaves take a few seconds).
    pub fn of_with_progress(
        values: Vec<Vec<DynSolValue>>,
        leaf_encoding: &[&str],
        options: TreeOptions,
        progress: &(dyn Fn(BuildProgress) + Sync),
    ) -> Result<Self, ChainError> {
        let (encoding, types) = parse_encoding(leaf_encoding)?;
        for (i, v) in values.iter().enumerate() {
            check_value(&types, v, i)?;
        }
        let hashes = hash_all(&values, |v| leaf_hash_unchecked(v), progress);
        let values = values
            .into_iter()
            .map(|value| IndexedValue {
                value,
                tree_index: 0,
                raw: None,
            })
            .collect();
        let tree = Self::assemble(values, hashes, encoding, types, options)?;
        progress(BuildProgress {
            stage: BuildStage::TreeBuilt,
            done: tree.len(),
            total: tree.len(),
        });
        Ok(tree)
    }

    /// Builds the tree of values given as strings (decimal or hex integers, hex addresses and
    /// bytes, `true`/`false`, plain strings).
    pub fn from_strings(
        values: &[Vec<String>],
        leaf_encoding: &[&str],
        options: TreeOptions,
    ) -> Result<Self, ChainError> {
        let (_, types) = parse_encoding(leaf_encoding)?;
        let parsed = read_rows(&types, values, |t, v: &String| value::from_str(t, v))?;
        Self::of(parsed, leaf_encoding, options)
    }

    /// Builds the tree of values given in JSON form (as in a dump); the dump saves them unchanged.
    pub fn from_json_values(
        values: &[Vec<Value>],
        leaf_encoding: &[&str],
        options: TreeOptions,
    ) -> Result<Self, ChainError> {
        let (encoding, types) = parse_encoding(leaf_encoding)?;
        let parsed = read_rows(&types, values, value::from_json)?;
        let hashes = hash_all(&parsed, |v| leaf_hash_unchecked(v), &|_| {});
        let values = parsed
            .into_iter()
            .zip(values)
            .map(|(value, raw)| IndexedValue {
                value,
                tree_index: 0,
                raw: Some(raw.clone()),
            })
            .collect();
        Self::assemble(values, hashes, encoding, types, options)
    }

    /// Builds a tree from values whose leaf hashes the caller computed with a faster typed
    /// encoder; `hashes[i]` must be the standard leaf hash of `values[i]`.
    pub(crate) fn from_hashed(
        values: Vec<Vec<DynSolValue>>,
        hashes: Vec<B256>,
        leaf_encoding: &[&str],
        options: TreeOptions,
    ) -> Result<Self, ChainError> {
        let (encoding, types) = parse_encoding(leaf_encoding)?;
        let values = values
            .into_iter()
            .map(|value| IndexedValue {
                value,
                tree_index: 0,
                raw: None,
            })
            .collect();
        Self::assemble(values, hashes, encoding, types, options)
    }

    fn assemble(
        mut values: Vec<IndexedValue>,
        hashes: Vec<B256>,
        leaf_encoding: Vec<String>,
        types: Vec<DynSolType>,
        options: TreeOptions,
    ) -> Result<Self, ChainError> {
        let mut order: Vec<usize> = (0..hashes.len()).collect();
        if options.sort_leaves {
            // Stable, like the reference library's sort: equal leaves keep their input order.
            order.sort_by(|&a, &b| hashes[a].cmp(&hashes[b]));
        }
        let leaves: Vec<B256> = order.iter().map(|&i| hashes[i]).collect();
        let tree = merkle::make_merkle_tree(&leaves)?;
        for (k, &vi) in order.iter().enumerate() {
            values[vi].tree_index = tree.len() - 1 - k;
        }
        let hash_lookup = values
            .iter()
            .enumerate()
            .map(|(vi, v)| (tree[v.tree_index], vi))
            .collect();
        Ok(Self {
            tree,
            values,
            leaf_encoding,
            types,
            hash_lookup,
        })
    }

    /// The root.
    pub fn root(&self) -> B256 {
        self.tree[0]
    }

    /// The node array, root first.
    pub fn tree(&self) -> &[B256] {
        &self.tree
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the tree holds no value (never true: trees have at least one leaf).
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The leaf encoding (one Solidity type per field).
    pub fn leaf_encoding(&self) -> &[String] {
        &self.leaf_encoding
    }

    /// The values with their tree indices, in input order.
    pub fn values(&self) -> &[IndexedValue] {
        &self.values
    }

    /// The fields of value `index`.
    pub fn at(&self, index: usize) -> Result<&[DynSolValue], ChainError> {
        Ok(&self.indexed(index)?.value)
    }

    fn indexed(&self, index: usize) -> Result<&IndexedValue, ChainError> {
        self.values.get(index).ok_or(ChainError::IndexOutOfBounds {
            index,
            len: self.values.len(),
        })
    }

    /// The standard leaf hash of `value` under this tree's encoding.
    pub fn leaf_hash(&self, value: &[DynSolValue]) -> Result<B256, ChainError> {
        standard_leaf_hash(&self.types, value)
    }

    /// Index of `value` among the values, or [`ChainError::LeafNotInTree`].
    pub fn leaf_lookup(&self, value: &[DynSolValue]) -> Result<usize, ChainError> {
        let h = self.leaf_hash(value)?;
        self.hash_lookup
            .get(&h)
            .copied()
            .ok_or(ChainError::LeafNotInTree)
    }

    /// The proof of value `index`.
    pub fn proof(&self, index: usize) -> Result<Vec<B256>, ChainError> {
        Ok(merkle::get_proof(
            &self.tree,
            self.indexed(index)?.tree_index,
        )?)
    }

    /// The proof of `value`.
    pub fn proof_of(&self, value: &[DynSolValue]) -> Result<Vec<B256>, ChainError> {
        self.proof(self.leaf_lookup(value)?)
    }

    /// The proofs of every value, in input order (computed in parallel).
    pub fn all_proofs(&self) -> Vec<Vec<B256>> {
        self.all_proofs_with_progress(&|_| {})
    }

    /// [`all_proofs`](Self::all_proofs), reporting progress after each batch of proofs.
    pub fn all_proofs_with_progress(
        &self,
        progress: &(dyn Fn(BuildProgress) + Sync),
    ) -> Vec<Vec<B256>> {
        let total = self.values.len();
        let mut out = Vec::with_capacity(total);
        for chunk in self.values.chunks(PROGRESS_BATCH) {
            out.par_extend(
                chunk
                    .par_iter()
                    .map(|v| merkle::get_proof(&self.tree, v.tree_index).unwrap_or_default()),
            );
            progress(BuildProgress {
                stage: BuildStage::Proofs,
                done: out.len(),
                total,
            });
        }
        out
    }

    /// A multiproof of the values at `indices` (leaves returned as values, in verification order).
    pub fn multi_proof(
        &self,
        indices: &[usize],
    ) -> Result<MultiProof<Vec<DynSolValue>>, ChainError> {
        let tree_indices = indices
            .iter()
            .map(|&i| self.indexed(i).map(|v| v.tree_index))
            .collect::<Result<Vec<_>, _>>()?;
        let m = merkle::get_multi_proof(&self.tree, &tree_indices)?;
        let leaves = m
            .leaves
            .iter()
            .map(|h| {
                self.hash_lookup
                    .get(h)
                    .map(|&vi| self.values[vi].value.clone())
                    .ok_or(ChainError::LeafNotInTree)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MultiProof {
            leaves,
            proof: m.proof,
            proof_flags: m.proof_flags,
        })
    }

    /// Whether `proof` proves value `index` against this tree's root.
    pub fn verify(&self, index: usize, proof: &[B256]) -> Result<bool, ChainError> {
        let v = self.indexed(index)?;
        Ok(merkle::verify_proof(
            self.root(),
            self.tree[v.tree_index],
            proof,
        ))
    }

    /// Whether `proof` proves `value` against this tree's root.
    pub fn verify_value(&self, value: &[DynSolValue], proof: &[B256]) -> Result<bool, ChainError> {
        Ok(merkle::verify_proof(
            self.root(),
            self.leaf_hash(value)?,
            proof,
        ))
    }

    /// Whether `proof` proves `value` (encoded with `leaf_encoding`) against `root`, without a tree.
    pub fn verify_with(
        root: B256,
        leaf_encoding: &[&str],
        value: &[DynSolValue],
        proof: &[B256],
    ) -> Result<bool, ChainError> {
        let (_, types) = parse_encoding(leaf_encoding)?;
        Ok(merkle::verify_proof(
            root,
            standard_leaf_hash(&types, value)?,
            proof,
        ))
    }

    /// Whether a multiproof of values leads to this tree's root; malformed multiproofs are not valid.
    pub fn verify_multi_proof(
        &self,
        multi: &MultiProof<Vec<DynSolValue>>,
    ) -> Result<bool, ChainError> {
        let leaves = multi
            .leaves
            .iter()
            .map(|v| self.leaf_hash(v))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(merkle::verify_multi_proof(
            self.root(),
            &MultiProof {
                leaves,
                proof: multi.proof.clone(),
                proof_flags: multi.proof_flags.clone(),
            },
        ))
    }

    /// Checks that the values and the leaves match one to one (each value hashes to its own
    /// leaf, no leaf is left without a value) and that the node array is a valid tree.
    pub fn validate(&self) -> Result<(), ChainError> {
        // Every leaf of the tree belongs to exactly one value: a dump that hides a leaf (a claim
        // the root commits to but the values do not show) or shows one twice is refused.
        let leaves = self.tree.len().div_ceil(2);
        if self.values.len() != leaves {
            return Err(ChainError::InconsistentDump(format!(
                "{} values for a tree of {leaves} leaves",
                self.values.len()
            )));
        }
        let mut seen = vec![false; self.tree.len()];
        for (i, v) in self.values.iter().enumerate() {
            if let Some(s) = seen.get_mut(v.tree_index) {
                if *s {
                    return Err(ChainError::InconsistentDump(format!(
                        "value {i} points at tree index {}, which another value already has",
                        v.tree_index
                    )));
                }
                *s = true;
            }
        }
        for (i, v) in self.values.iter().enumerate() {
            if !merkle::is_leaf_node(self.tree.len(), v.tree_index) {
                return Err(ChainError::InconsistentDump(format!(
                    "value {i} points at tree index {}, which is not a leaf of a tree of {} nodes",
                    v.tree_index,
                    self.tree.len()
                )));
            }
            if self.tree[v.tree_index] != leaf_hash_unchecked(&v.value) {
                return Err(ChainError::InconsistentDump(format!(
                    "value {i} does not hash to the leaf at tree index {}",
                    v.tree_index
                )));
            }
        }
        if !merkle::is_valid_merkle_tree(&self.tree) {
            return Err(ChainError::InconsistentDump(
                "the node array is not a valid Merkle tree".into(),
            ));
        }
        Ok(())
    }

    /// The tree drawn as text, as the reference library renders it.
    pub fn render(&self) -> String {
        merkle::render_merkle_tree(&self.tree).unwrap_or_default()
    }

    /// The `standard-v1` dump.
    pub fn dump(&self) -> StandardTreeDump {
        StandardTreeDump {
            format: STANDARD_V1.to_string(),
            leaf_encoding: self.leaf_encoding.clone(),
            tree: self.tree.clone(),
            values: self
                .values
                .iter()
                .map(|v| DumpValue {
                    value: v
                        .raw
                        .clone()
                        .unwrap_or_else(|| v.value.iter().map(value::to_json).collect()),
                    tree_index: v.tree_index,
                })
                .collect(),
        }
    }

    /// The dump as compact JSON (what `JSON.stringify(tree.dump())` writes).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.dump()).unwrap_or_default()
    }

    /// Loads and validates a dump.
    pub fn load(dump: StandardTreeDump) -> Result<Self, ChainError> {
        if dump.format != STANDARD_V1 {
            return Err(ChainError::UnknownFormat(
                dump.format.chars().take(80).collect(),
            ));
        }
        let types = value::parse_types(&dump.leaf_encoding)?;
        if dump.tree.is_empty() {
            return Err(ChainError::InconsistentDump("empty node array".into()));
        }
        let values = dump
            .values
            .into_iter()
            .enumerate()
            .map(|(i, dv)| {
                let value = read_fields(&types, i, dv.value.len(), |field, t| {
                    value::from_json(t, &dv.value[field])
                })?;
                Ok(IndexedValue {
                    value,
                    tree_index: dv.tree_index,
                    raw: Some(dv.value),
                })
            })
            .collect::<Result<Vec<_>, ChainError>>()?;
        let tree = dump.tree;
        let hash_lookup = values
            .iter()
            .enumerate()
            .filter_map(|(vi, v)| tree.get(v.tree_index).map(|h| (*h, vi)))
            .collect();
        let t = Self {
            tree,
            values,
            leaf_encoding: dump.leaf_encoding,
            types,
            hash_lookup,
        };
        t.validate()?;
        Ok(t)
    }

    /// Parses and validates a JSON dump.
    pub fn from_json(json: &str) -> Result<Self, ChainError> {
        let dump: StandardTreeDump =
            serde_json::from_str(json).map_err(|e| ChainError::MalformedDump(e.to_string()))?;
        Self::load(dump)
    }
}

/// The leaf encoding as owned strings, and the Solidity types it names.
fn parse_encoding(leaf_encoding: &[&str]) -> Result<(Vec<String>, Vec<DynSolType>), ChainError> {
    let encoding: Vec<String> = leaf_encoding.iter().map(|s| s.to_string()).collect();
    let types = value::parse_types(&encoding)?;
    Ok((encoding, types))
}

/// Reads every row of raw values (strings or JSON) into typed values, naming the row and field
/// of the first that does not parse.
fn read_rows<V>(
    types: &[DynSolType],
    rows: &[Vec<V>],
    parse: impl Fn(&DynSolType, &V) -> Result<DynSolValue, String>,
) -> Result<Vec<Vec<DynSolValue>>, ChainError> {
    rows.iter()
        .enumerate()
        .map(|(i, row)| read_fields(types, i, row.len(), |field, t| parse(t, &row[field])))
        .collect()
}

fn read_fields(
    types: &[DynSolType],
    value_index: usize,
    found: usize,
    mut read: impl FnMut(usize, &DynSolType) -> Result<DynSolValue, String>,
) -> Result<Vec<DynSolValue>, ChainError> {
    if found != types.len() {
        return Err(ChainError::ValueArity {
            value_index,
            expected: types.len(),
            found,
        });
    }
    types
        .iter()
        .enumerate()
        .map(|(field, t)| {
            read(field, t).map_err(|reason| ChainError::InvalidValue {
                value_index,
                field,
                expected: t.to_string(),
                reason,
            })
        })
        .collect()
}

fn hash_all<T: Sync>(
    items: &[T],
    hash: impl Fn(&T) -> B256 + Sync,
    progress: &(dyn Fn(BuildProgress) + Sync),
) -> Vec<B256> {
    if items.len() < PARALLEL_THRESHOLD {
        let out: Vec<B256> = items.iter().map(hash).collect();
        progress(BuildProgress {
            stage: BuildStage::LeavesHashed,
            done: out.len(),
            total: out.len(),
        });
        return out;
    }
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(PROGRESS_BATCH) {
        out.par_extend(chunk.par_iter().map(&hash));
        progress(BuildProgress {
            stage: BuildStage::LeavesHashed,
            done: out.len(),
            total: items.len(),
        });
    }
    out
}
