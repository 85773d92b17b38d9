// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title Merkle
/// @notice Small sorted-pair Merkle trees built in Solidity, as OpenZeppelin's `MerkleProof`
/// verifies them: each inner node is `keccak256` of its two children, the smaller first; a node
/// without a sibling moves up a level unchanged.
library Merkle {
    /// @notice OpenZeppelin's standard leaf of a reward `(index, account, amount)`.
    function rewardLeaf(uint256 index, address account, uint256 amount) internal pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(index, account, amount))));
    }

    /// @notice The leaf `DatanetRegistry.verifyRecord` hashes from a record's content hash.
    function recordLeaf(bytes32 recordHash) internal pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(recordHash))));
    }

    function hashPair(bytes32 a, bytes32 b) internal pure returns (bytes32) {
        return a < b ? keccak256(abi.encode(a, b)) : keccak256(abi.encode(b, a));
    }

    /// @notice Root of the tree over `leaves` (at least one).
    function root(bytes32[] memory leaves) internal pure returns (bytes32) {
        require(leaves.length > 0, "Merkle: no leaves");
        bytes32[] memory layer = leaves;
        while (layer.length > 1) layer = _up(layer);
        return layer[0];
    }

    /// @notice Proof of `leaves[index]`: its sibling on every level where it has one.
    function proof(bytes32[] memory leaves, uint256 index) internal pure returns (bytes32[] memory) {
        require(index < leaves.length, "Merkle: index out of range");
        bytes32[] memory path = new bytes32[](64);
        uint256 length;
        bytes32[] memory layer = leaves;
        while (layer.length > 1) {
            uint256 sibling = index ^ 1;
            if (sibling < layer.length) path[length++] = layer[sibling];
            layer = _up(layer);
            index /= 2;
        }
        assembly ("memory-safe") {
            mstore(path, length)
        }
        return path;
    }

    function _up(bytes32[] memory layer) private pure returns (bytes32[] memory next) {
        next = new bytes32[]((layer.length + 1) / 2);
        for (uint256 i = 0; i < next.length; ++i) {
            uint256 left = 2 * i;
            next[i] = left + 1 < layer.length ? hashPair(layer[left], layer[left + 1]) : layer[left];
        }
    }
}
