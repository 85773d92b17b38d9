// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ModelRegistry} from "../src/ModelRegistry.sol";
import {InferencePayments} from "../src/InferencePayments.sol";
import {TestToken} from "../src/test/TestToken.sol";
import {Suite} from "./utils/Suite.sol";

/// @notice ModelRegistry: ids derived from (registrant, salt) cannot be squatted; two-step
/// ownership, with fees credited to whoever owns the model when it is paid.
contract ModelRegistryTest is Suite {
    TestToken internal testToken;
    address internal victim = actor("victim");
    address internal frontRunner = actor("front-runner");
    address internal successor = actor("successor");
    address internal payer = actor("payer");

    function setUp() public {
        testToken = deploySuite();
    }

    /// Someone who copies a pending registration (same salt) from the mempool and gets mined first
    /// registers a model under their own id; the victim's registration still goes through.
    function test_frontRunnerCannotSquatAnId() public {
        bytes32 salt = keccak256("my model");
        bytes32 expected = models.modelIdFor(victim, salt);

        bytes32 squatted = registerModel(frontRunner, salt, 5 ether);
        vm.assertTrue(squatted != expected, "same salt, same id");
        vm.assertEq(squatted, models.modelIdFor(frontRunner, salt), "front-runner's own id");

        bytes32 id = registerModel(victim, salt, 1 ether);
        vm.assertEq(id, expected, "victim's id");
        (address owner, uint256 fee) = models.serving(id);
        vm.assertEq(owner, victim, "victim owns it");
        vm.assertEq(fee, 1 ether, "victim's fee");
    }

    function testFuzz_idsDependOnRegistrant(address a, address b, bytes32 salt) public view {
        vm.assume(a != b);
        vm.assertTrue(models.modelIdFor(a, salt) != models.modelIdFor(b, salt), "distinct registrants collide");
        vm.assertEq(models.modelIdFor(a, salt), keccak256(abi.encode(a, salt)), "derivation");
    }

    function test_sameRegistrantSameSaltReverts() public {
        bytes32 id = registerModel(victim, "salt", 1);
        ModelRegistry.TrainingSource[] memory none = new ModelRegistry.TrainingSource[](0);
        vm.prank(victim);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.ModelAlreadyRegistered.selector, id));
        models.registerModel("salt", bytes32(0), bytes32(0), bytes32(0), none, 2);
    }

    function test_twoStepOwnership() public {
        bytes32 id = registerModel(victim, "salt", 1 ether);
        vm.prank(victim);
        models.transferModelOwnership(id, successor);
        vm.assertEq(models.pendingModelOwner(id), successor, "pending");
        vm.assertEq(models.getModel(id).owner, victim, "owner until accepted");

        vm.prank(frontRunner);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.NotPendingModelOwner.selector, id, frontRunner));
        models.acceptModelOwnership(id);

        // Paid before the successor accepts: the fee is the current owner's.
        _payOnce(id);
        vm.prank(successor);
        models.acceptModelOwnership(id);
        vm.assertEq(models.getModel(id).owner, successor, "accepted");
        vm.assertEq(models.pendingModelOwner(id), address(0), "offer consumed");
        _payOnce(id);

        (uint256 ownerShare,,) = payments.split(1 ether);
        vm.assertEq(payments.withdrawable(victim), ownerShare, "first fee to the old owner");
        vm.assertEq(payments.withdrawable(successor), ownerShare, "second fee to the new owner");

        vm.prank(victim);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.NotModelOwner.selector, id, victim));
        models.updateFee(id, 0);
        vm.prank(successor);
        models.updateFee(id, 2 ether);
    }

    function test_ownershipOfferCanBeWithdrawn() public {
        bytes32 id = registerModel(victim, "salt", 1);
        vm.startPrank(victim);
        models.transferModelOwnership(id, successor);
        models.transferModelOwnership(id, address(0));
        vm.stopPrank();
        vm.prank(successor);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.NotPendingModelOwner.selector, id, successor));
        models.acceptModelOwnership(id);
        vm.assertEq(models.getModel(id).owner, victim, "still the victim's");
    }

    function test_onlyOwnerOffersOwnership() public {
        bytes32 id = registerModel(victim, "salt", 1);
        vm.prank(frontRunner);
        vm.expectRevert(abi.encodeWithSelector(ModelRegistry.NotModelOwner.selector, id, frontRunner));
        models.transferModelOwnership(id, frontRunner);
    }

    function _payOnce(bytes32 id) internal {
        InferencePayments.AttributionReceipt memory r = receiptFor(payer, id, models.getModel(id).feePerCall);
        testToken.mint(payer, r.amount);
        pay(r);
    }
}
