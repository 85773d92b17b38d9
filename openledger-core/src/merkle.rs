//! The OpenZeppelin Merkle tree core: sorted-pair keccak-256 hashing over a complete binary tree
//! stored as an array, with single proofs and multiproofs that `MerkleProof.sol` verifies.
//!
//! The layout and every algorithm follow `@openzeppelin/merkle-tree` (its `core` module): the
//! tree of `n` leaves is an array of `2n - 1` nodes, node `i` has children `2i + 1` and `2i + 2`,
//! the root is node `0`, and leaf `k` (in the order given) sits at index `2n - 2 - k`. Leaves are
//! 32-byte hashes; how values become leaves (for example the standard double-hashed ABI
//! encoding) is the caller's business.
//!
//! ```
//! use openledger_core::merkle::{self, MerkleTree};
//! use openledger_core::B256;
//!
//! let leaves: Vec<B256> = (0u8..5).map(|i| B256::repeat_byte(i + 1)).collect();
//! let tree = MerkleTree::new(&leaves).unwrap();
//! for (k, leaf) in leaves.iter().enumerate() {
//!     let proof = tree.proof(k).unwrap();
//!     assert_eq!(merkle::process_proof(*leaf, &proof), tree.root());
//! }
//! let multi = tree.multi_proof(&[0, 3]).unwrap();
//! assert_eq!(merkle::process_multi_proof(&multi).unwrap(), tree.root());
//! ```

use crate::error::{Classify, ErrorKind};
use alloy_primitives::{B256, keccak256};
use thiserror::Error;

/// Why a Merkle operation refused its input.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MerkleError {
    /// A tree needs at least one leaf.
    #[error("a Merkle tree needs at least one leaf")]
    EmptyTree,
    /// A tree index that is not a leaf of the tree (out of range, or an internal node).
    #[error("index {index} is not a leaf of a tree of {tree_len} nodes")]
    NotALeaf {
        /// The index asked for.
        index: usize,
        /// The number of nodes in the tree.
        tree_len: usize,
    },
    /// A leaf position past the number of leaves.
    #[error("leaf {position} is out of range: the tree has {leaf_count} leaves")]
    LeafOutOfRange {
        /// The leaf position asked for (in input order).
        position: usize,
        /// Leaves in the tree.
        leaf_count: usize,
    },
    /// The same leaf was asked for twice in a multiproof.
    #[error("cannot prove duplicated index {0}")]
    DuplicateIndex(usize),
    /// A multiproof whose parts do not fit together.
    #[error("invalid multiproof: {leaves} leaves, {proof} proof hashes, {flags} flags ({reason})")]
    InvalidMultiProof {
        /// Leaves given.
        leaves: usize,
        /// Proof hashes given.
        proof: usize,
        /// Flags given.
        flags: usize,
        /// Which rule they break.
        reason: &'static str,
    },
}

impl Classify for MerkleError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Merkle
    }
}

/// A multiproof: several leaves proven together against one root.
///
/// `leaves` are in the order the verifier consumes them (deepest tree index first), `proof` holds
/// the sibling hashes it cannot compute, and `proof_flags[k]` says whether step `k` takes its second
/// operand from the computed queue (`true`) or from `proof` (`false`), exactly as
/// `MerkleProof.multiProofVerify` reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultiProof<L> {
    /// The proven leaves, in verification order.
    pub leaves: Vec<L>,
    /// Sibling hashes, consumed front to back.
    pub proof: Vec<B256>,
    /// One flag per hashing step.
    pub proof_flags: Vec<bool>,
}

/// `keccak256` of the two nodes concatenated in ascending byte order (commutative).
#[inline]
pub fn hash_pair(a: &B256, b: &B256) -> B256 {
    let mut buf = [0u8; 64];
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    buf[..32].copy_from_slice(lo.as_slice());
    buf[32..].copy_from_slice(hi.as_slice());
    keccak256(buf)
}

/// Index of the left child of node `i`.
#[inline]
pub const fn left_child_index(i: usize) -> usize {
    2 * i + 1
}

/// Index of the right child of node `i`.
#[inline]
pub const fn right_child_index(i: usize) -> usize {
    2 * i + 2
}

/// Index of the parent of node `i`, `None` for the root.
#[inline]
pub const fn parent_index(i: usize) -> Option<usize> {
    if i > 0 { Some((i - 1) / 2) } else { None }
}

/// Index of the sibling of node `i`, `None` for the root.
#[inline]
pub const fn sibling_index(i: usize) -> Option<usize> {
    if i == 0 {
        None
    } else if i % 2 == 1 {
        Some(i + 1)
    } else {
        Some(i - 1)
    }
}

/// Whether node `i` of a tree of `tree_len` nodes is a leaf.
#[inline]
pub const fn is_leaf_node(tree_len: usize, i: usize) -> bool {
    i < tree_len && left_child_index(i) >= tree_len
}

/// Tree index of the leaf given at position `position` among `leaf_count` leaves.
#[inline]
pub const fn leaf_tree_index(leaf_count: usize, position: usize) -> usize {
    2 * leaf_count - 2 - position
}

fn check_leaf(tree: &[B256], index: usize) -> Result<(), MerkleError> {
    if is_leaf_node(tree.len(), index) {
        Ok(())
    } else {
        Err(MerkleError::NotALeaf {
            index,
            tree_len: tree.len(),
        })
    }
}

/// Builds the node array of the tree over `leaves` (leaf `k` at index `2n - 2 - k`).
pub fn make_merkle_tree(leaves: &[B256]) -> Result<Vec<B256>, MerkleError> {
    if leaves.is_empty() {
        return Err(MerkleError::EmptyTree);
    }
    let n = leaves.len();
    let len = 2 * n - 1;
    let mut tree = vec![B256::ZERO; len];
    for (k, leaf) in leaves.iter().enumerate() {
        tree[len - 1 - k] = *leaf;
    }
    for i in (0..len - n).rev() {
        tree[i] = hash_pair(&tree[left_child_index(i)], &tree[right_child_index(i)]);
    }
    Ok(tree)
}

/// The proof of the leaf at tree index `index`: its sibling, then each ancestor's sibling.
pub fn get_proof(tree: &[B256], index: usize) -> Result<Vec<B256>, MerkleError> {
    check_leaf(tree, index)?;
    let mut proof = Vec::new();
    let mut i = index;
    while let (Some(s), Some(p)) = (sibling_index(i), parent_index(i)) {
        proof.push(tree[s]);
        i = p;
    }
    Ok(proof)
}

/// The root a proof leads to from `leaf` (what `MerkleProof.processProof` computes).
pub fn process_proof(leaf: B256, proof: &[B256]) -> B256 {
    proof.iter().fold(leaf, |acc, p| hash_pair(&acc, p))
}

/// Whether `proof` leads from `leaf` to `root`.
pub fn verify_proof(root: B256, leaf: B256, proof: &[B256]) -> bool {
    process_proof(leaf, proof) == root
}

/// A multiproof of the leaves at tree indices `indices` (any order, no duplicates).
///
/// The returned leaves are ordered by descending tree index, as the verifier needs them.
pub fn get_multi_proof(tree: &[B256], indices: &[usize]) -> Result<MultiProof<B256>, MerkleError> {
    for &i in indices {
        check_leaf(tree, i)?;
    }
    let mut sorted = indices.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(MerkleError::DuplicateIndex(w[0]));
    }
    let mut queue: std::collections::VecDeque<usize> = sorted.iter().copied().collect();
    let mut proof = Vec::new();
    let mut proof_flags = Vec::new();
    while let Some(&j) = queue.front() {
        if j == 0 {
            break;
        }
        queue.pop_front();
        let (Some(s), Some(p)) = (sibling_index(j), parent_index(j)) else {
            break;
        };
        if queue.front() == Some(&s) {
            proof_flags.push(true);
            queue.pop_front();
        } else {
            proof_flags.push(false);
            proof.push(tree[s]);
        }
        queue.push_back(p);
    }
    if sorted.is_empty() {
        proof.push(tree[0]);
    }
    Ok(MultiProof {
        leaves: sorted.iter().map(|&i| tree[i]).collect(),
        proof,
        proof_flags,
    })
}

/// The root a multiproof leads to (what `MerkleProof.processMultiProof` computes), or why the
/// multiproof is malformed.
pub fn process_multi_proof(multi: &MultiProof<B256>) -> Result<B256, MerkleError> {
    let bad = |reason| MerkleError::InvalidMultiProof {
        leaves: multi.leaves.len(),
        proof: multi.proof.len(),
        flags: multi.proof_flags.len(),
        reason,
    };
    let unflagged = multi.proof_flags.iter().filter(|f| !**f).count();
    if multi.proof.len() < unflagged {
        return Err(bad("fewer proof hashes than unset flags"));
    }
    if multi.leaves.len() + multi.proof.len() != multi.proof_flags.len() + 1 {
        return Err(bad("leaves + proof must equal flags + 1"));
    }
    let mut queue: std::collections::VecDeque<B256> = multi.leaves.iter().copied().collect();
    let mut proof = multi.proof.iter().copied();
    for &flag in &multi.proof_flags {
        let a = queue.pop_front().ok_or_else(|| bad("queue exhausted"))?;
        let b = if flag {
            queue.pop_front()
        } else {
            proof.next()
        }
        .ok_or_else(|| bad("operand missing"))?;
        queue.push_back(hash_pair(&a, &b));
    }
    let rest: Vec<B256> = proof.collect();
    match (queue.len(), rest.len()) {
        (1, 0) => Ok(queue[0]),
        (0, 1) => Ok(rest[0]),
        _ => Err(bad("more than one root left")),
    }
}

/// Whether `multi` leads to `root`; a malformed multiproof is simply not valid.
pub fn verify_multi_proof(root: B256, multi: &MultiProof<B256>) -> bool {
    process_multi_proof(multi).is_ok_and(|r| r == root)
}

/// Whether `tree` is a well-formed node array: non-empty, every internal node the hash of its
/// children, and no node with only one child.
pub fn is_valid_merkle_tree(tree: &[B256]) -> bool {
    if tree.is_empty() {
        return false;
    }
    for (i, node) in tree.iter().enumerate() {
        let (l, r) = (left_child_index(i), right_child_index(i));
        if r >= tree.len() {
            if l < tree.len() {
                return false;
            }
        } else if *node != hash_pair(&tree[l], &tree[r]) {
            return false;
        }
    }
    true
}

/// Draws the tree as text, one node per line (`index) hash`), the way the reference library
/// renders it.
pub fn render_merkle_tree(tree: &[B256]) -> Result<String, MerkleError> {
    if tree.is_empty() {
        return Err(MerkleError::EmptyTree);
    }
    let mut lines = Vec::new();
    // (node index, path of "is last child" flags)
    let mut stack: Vec<(usize, Vec<bool>)> = vec![(0, Vec::new())];
    while let Some((i, path)) = stack.pop() {
        let mut line = String::new();
        for (d, last) in path.iter().enumerate() {
            let is_tip = d + 1 == path.len();
            line.push_str(match (is_tip, *last) {
                (true, true) => "└─ ",
                (true, false) => "├─ ",
                (false, true) => "   ",
                (false, false) => "│  ",
            });
        }
        line.push_str(&format!("{i}) {:#x}", tree[i]));
        lines.push(line);
        let r = right_child_index(i);
        if r < tree.len() {
            let mut rp = path.clone();
            rp.push(true);
            stack.push((r, rp));
            let mut lp = path;
            lp.push(false);
            stack.push((left_child_index(i), lp));
        }
    }
    Ok(lines.join("\n"))
}

/// A tree over 32-byte leaves, kept with the leaf count so leaves can be named by input position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleTree {
    nodes: Vec<B256>,
    leaf_count: usize,
}

impl MerkleTree {
    /// Builds the tree over `leaves`, in the order given (no sorting).
    pub fn new(leaves: &[B256]) -> Result<Self, MerkleError> {
        Ok(Self {
            nodes: make_merkle_tree(leaves)?,
            leaf_count: leaves.len(),
        })
    }

    /// The root hash.
    pub fn root(&self) -> B256 {
        self.nodes[0]
    }

    /// The node array (root first).
    pub fn nodes(&self) -> &[B256] {
        &self.nodes
    }

    /// Number of leaves.
    pub fn leaf_count(&self) -> usize {
        self.leaf_count
    }

    /// The leaf given at `position`.
    pub fn leaf(&self, position: usize) -> Result<B256, MerkleError> {
        Ok(self.nodes[self.tree_index(position)?])
    }

    /// Tree index of the leaf given at `position`.
    pub fn tree_index(&self, position: usize) -> Result<usize, MerkleError> {
        if position >= self.leaf_count {
            return Err(MerkleError::LeafOutOfRange {
                position,
                leaf_count: self.leaf_count,
            });
        }
        Ok(leaf_tree_index(self.leaf_count, position))
    }

    /// The proof of the leaf given at `position`.
    pub fn proof(&self, position: usize) -> Result<Vec<B256>, MerkleError> {
        get_proof(&self.nodes, self.tree_index(position)?)
    }

    /// A multiproof of the leaves given at `positions`.
    pub fn multi_proof(&self, positions: &[usize]) -> Result<MultiProof<B256>, MerkleError> {
        let idx = positions
            .iter()
            .map(|&p| self.tree_index(p))
            .collect::<Result<Vec<_>, _>>()?;
        get_multi_proof(&self.nodes, &idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<B256> {
        (0..n)
            .map(|i| keccak256((i as u64).to_be_bytes()))
            .collect()
    }

    #[test]
    fn hash_pair_is_commutative_and_sorted() {
        let (a, b) = (B256::repeat_byte(1), B256::repeat_byte(2));
        assert_eq!(hash_pair(&a, &b), hash_pair(&b, &a));
        let mut cat = a.to_vec();
        cat.extend_from_slice(b.as_slice());
        assert_eq!(hash_pair(&b, &a), keccak256(&cat));
    }

    #[test]
    fn every_proof_of_every_size_leads_to_the_root() {
        for n in 1..=33 {
            let l = leaves(n);
            let t = MerkleTree::new(&l).unwrap();
            assert!(is_valid_merkle_tree(t.nodes()));
            for (k, leaf) in l.iter().enumerate() {
                let p = t.proof(k).unwrap();
                assert!(verify_proof(t.root(), *leaf, &p), "n={n} k={k}");
                assert!(!verify_proof(t.root(), B256::repeat_byte(7), &p));
            }
        }
    }

    #[test]
    fn single_leaf_tree_has_the_leaf_as_root_and_empty_proof() {
        let l = leaves(1);
        let t = MerkleTree::new(&l).unwrap();
        assert_eq!(t.root(), l[0]);
        assert!(t.proof(0).unwrap().is_empty());
    }

    #[test]
    fn multiproofs_of_every_subset_verify() {
        for n in 1..=7usize {
            let l = leaves(n);
            let t = MerkleTree::new(&l).unwrap();
            for mask in 0u32..(1 << n) {
                let pos: Vec<usize> = (0..n).filter(|i| mask >> i & 1 == 1).collect();
                let m = t.multi_proof(&pos).unwrap();
                assert_eq!(process_multi_proof(&m).unwrap(), t.root(), "n={n} {pos:?}");
            }
        }
    }

    #[test]
    fn rejects_empty_trees_internal_nodes_and_duplicates() {
        assert_eq!(make_merkle_tree(&[]), Err(MerkleError::EmptyTree));
        let t = make_merkle_tree(&leaves(4)).unwrap();
        assert_eq!(
            get_proof(&t, 1),
            Err(MerkleError::NotALeaf {
                index: 1,
                tree_len: 7
            })
        );
        assert_eq!(
            get_multi_proof(&t, &[3, 3]),
            Err(MerkleError::DuplicateIndex(3))
        );
        assert!(matches!(
            MerkleTree::new(&leaves(4)).unwrap().proof(4),
            Err(MerkleError::LeafOutOfRange { .. })
        ));
    }

    #[test]
    fn malformed_multiproofs_are_errors_not_panics() {
        let t = MerkleTree::new(&leaves(5)).unwrap();
        let mut m = t.multi_proof(&[0, 2]).unwrap();
        m.proof_flags.push(true);
        assert!(process_multi_proof(&m).is_err());
        let m2 = MultiProof {
            leaves: vec![],
            proof: vec![],
            proof_flags: vec![true, true],
        };
        assert!(process_multi_proof(&m2).is_err());
        let m3 = MultiProof {
            leaves: vec![B256::ZERO, B256::ZERO, B256::ZERO],
            proof: vec![],
            proof_flags: vec![true, true],
        };
        assert!(process_multi_proof(&m3).is_ok());
    }

    #[test]
    fn tampered_trees_are_invalid() {
        let mut t = make_merkle_tree(&leaves(6)).unwrap();
        t[4] = B256::repeat_byte(9);
        assert!(!is_valid_merkle_tree(&t));
        assert!(!is_valid_merkle_tree(&t[..2]));
        assert!(render_merkle_tree(&t).unwrap().starts_with("0) 0x"));
    }
}
