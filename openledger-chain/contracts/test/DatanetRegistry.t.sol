// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DatanetRegistry} from "../src/DatanetRegistry.sol";
import {Base} from "./utils/Base.sol";
import {Merkle} from "./utils/Merkle.sol";

/// @notice DatanetRegistry: records verify by content hash only, the access life cycle, two-step
/// ownership.
contract DatanetRegistryTest is Base {
    DatanetRegistry internal registry;
    address internal alice = address(0xA11CE);
    address internal bob = address(0xB0B);
    address internal carol = address(0xCA401);
    uint256 internal datanetId;

    function setUp() public {
        registry = new DatanetRegistry();
        vm.prank(alice);
        datanetId = registry.registerDatanet(keccak256("metadata"), "ipfs://datanet");
    }

    function _records(uint256 n) internal pure returns (bytes32[] memory records, bytes32[] memory leaves) {
        records = new bytes32[](n);
        leaves = new bytes32[](n);
        for (uint256 i = 0; i < n; ++i) {
            records[i] = keccak256(abi.encode("record", i));
            leaves[i] = Merkle.recordLeaf(records[i]);
        }
    }

    function test_everyRecordVerifies() public {
        (bytes32[] memory records, bytes32[] memory leaves) = _records(5);
        vm.prank(alice);
        uint64 version = registry.publishVersion(datanetId, Merkle.root(leaves), 5);
        for (uint256 i = 0; i < records.length; ++i) {
            vm.assertTrue(
                registry.verifyRecord(datanetId, version, records[i], Merkle.proof(leaves, i)), "record verifies"
            );
        }
    }

    /// An inner node is a hash of two children, as a leaf is of one record: with the leaf hashed on
    /// chain, neither an inner node nor a leaf passes as a record's content hash.
    function test_innerNodeIsNotARecord() public {
        (, bytes32[] memory leaves) = _records(4);
        bytes32 left = Merkle.hashPair(leaves[0], leaves[1]);
        bytes32 right = Merkle.hashPair(leaves[2], leaves[3]);
        bytes32 root = Merkle.hashPair(left, right);
        vm.assertEq(root, Merkle.root(leaves), "tree root");
        vm.prank(alice);
        uint64 version = registry.publishVersion(datanetId, root, 4);

        bytes32[] memory proof = new bytes32[](1);
        proof[0] = right;
        vm.assertFalse(registry.verifyRecord(datanetId, version, left, proof), "inner node passed as a record");
        // The same node and proof do verify as a raw leaf: only the on-chain leaf hash stops it.
        vm.assertTrue(_verifyRaw(proof, root, left), "inner node is a raw-leaf member");

        bytes32[] memory leafProof = Merkle.proof(leaves, 0);
        vm.assertFalse(registry.verifyRecord(datanetId, version, leaves[0], leafProof), "leaf passed as a record");
    }

    function _verifyRaw(bytes32[] memory proof, bytes32 root, bytes32 leaf) internal pure returns (bool) {
        bytes32 node = leaf;
        for (uint256 i = 0; i < proof.length; ++i) {
            node = Merkle.hashPair(node, proof[i]);
        }
        return node == root;
    }

    function testFuzz_foreignRecordDoesNotVerify(bytes32 record, uint256 index) public {
        (bytes32[] memory records, bytes32[] memory leaves) = _records(6);
        for (uint256 i = 0; i < records.length; ++i) {
            vm.assume(record != records[i]);
        }
        index = bound(index, 0, 5);
        vm.prank(alice);
        uint64 version = registry.publishVersion(datanetId, Merkle.root(leaves), 6);
        vm.assertFalse(registry.verifyRecord(datanetId, version, record, Merkle.proof(leaves, index)), "foreign record");
    }

    function test_accessCycle() public {
        vm.prank(bob);
        registry.requestAccess(datanetId, keccak256("purpose"));
        vm.assertFalse(registry.hasAccess(datanetId, bob), "requested is not access");

        vm.prank(alice);
        registry.approveAccess(datanetId, bob);
        vm.assertTrue(registry.hasAccess(datanetId, bob), "approved");

        vm.prank(bob);
        vm.expectRevert(
            abi.encodeWithSelector(
                DatanetRegistry.InvalidAccessTransition.selector, datanetId, bob, DatanetRegistry.AccessStatus.Approved
            )
        );
        registry.requestAccess(datanetId, keccak256("again"));

        vm.prank(alice);
        registry.revokeAccess(datanetId, bob);
        vm.assertFalse(registry.hasAccess(datanetId, bob), "revoked");

        vm.prank(alice);
        vm.expectRevert(
            abi.encodeWithSelector(
                DatanetRegistry.InvalidAccessTransition.selector, datanetId, bob, DatanetRegistry.AccessStatus.Revoked
            )
        );
        registry.approveAccess(datanetId, bob);

        vm.prank(bob);
        registry.requestAccess(datanetId, keccak256("again"));
        vm.assertEq(
            uint256(registry.accessStatus(datanetId, bob)),
            uint256(DatanetRegistry.AccessStatus.Requested),
            "re-requested"
        );
    }

    function test_twoStepOwnership() public {
        vm.prank(alice);
        registry.transferDatanetOwnership(datanetId, bob);
        vm.assertEq(registry.pendingDatanetOwner(datanetId), bob, "pending");
        vm.assertEq(registry.getDatanet(datanetId).owner, alice, "owner until accepted");

        // Only the named successor accepts.
        vm.prank(carol);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotPendingDatanetOwner.selector, datanetId, carol));
        registry.acceptDatanetOwnership(datanetId);
        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotPendingDatanetOwner.selector, datanetId, alice));
        registry.acceptDatanetOwnership(datanetId);

        // The owner still acts until then.
        vm.prank(alice);
        registry.publishVersion(datanetId, keccak256("root"), 1);

        vm.prank(bob);
        registry.acceptDatanetOwnership(datanetId);
        vm.assertEq(registry.getDatanet(datanetId).owner, bob, "accepted");
        vm.assertEq(registry.pendingDatanetOwner(datanetId), address(0), "offer consumed");
        vm.assertTrue(registry.hasAccess(datanetId, bob), "new owner has access");
        vm.assertFalse(registry.hasAccess(datanetId, alice), "old owner lost access");

        vm.prank(alice);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotDatanetOwner.selector, datanetId, alice));
        registry.publishVersion(datanetId, keccak256("root2"), 1);

        vm.prank(bob);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotPendingDatanetOwner.selector, datanetId, bob));
        registry.acceptDatanetOwnership(datanetId);
    }

    function test_ownershipOfferCanBeWithdrawn() public {
        vm.startPrank(alice);
        registry.transferDatanetOwnership(datanetId, bob);
        registry.transferDatanetOwnership(datanetId, address(0));
        vm.stopPrank();
        vm.assertEq(registry.pendingDatanetOwner(datanetId), address(0), "withdrawn");

        vm.prank(bob);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotPendingDatanetOwner.selector, datanetId, bob));
        registry.acceptDatanetOwnership(datanetId);

        // A new offer replaces the old one.
        vm.startPrank(alice);
        registry.transferDatanetOwnership(datanetId, bob);
        registry.transferDatanetOwnership(datanetId, carol);
        vm.stopPrank();
        vm.prank(bob);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotPendingDatanetOwner.selector, datanetId, bob));
        registry.acceptDatanetOwnership(datanetId);
        vm.prank(carol);
        registry.acceptDatanetOwnership(datanetId);
        vm.assertEq(registry.getDatanet(datanetId).owner, carol, "carol owns it");
    }

    function test_onlyOwnerOffersOwnership() public {
        vm.prank(bob);
        vm.expectRevert(abi.encodeWithSelector(DatanetRegistry.NotDatanetOwner.selector, datanetId, bob));
        registry.transferDatanetOwnership(datanetId, bob);
    }

    /// Nobody can accept an unknown datanet (the zero address is never a successor).
    function test_zeroAddressNeverAccepts() public {
        vm.prank(address(0));
        vm.expectRevert(
            abi.encodeWithSelector(DatanetRegistry.NotPendingDatanetOwner.selector, uint256(999), address(0))
        );
        registry.acceptDatanetOwnership(999);
    }
}
