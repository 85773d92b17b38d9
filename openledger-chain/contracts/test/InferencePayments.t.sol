// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {InferencePayments} from "../src/InferencePayments.sol";
import {FeeOnTransferToken} from "../src/test/FeeOnTransferToken.sol";
import {TestToken} from "../src/test/TestToken.sol";
import {Suite} from "./utils/Suite.sol";

/// @notice InferencePayments: the split sums to the fee for any fee and split, receipts signed by
/// an operator key, delayed split changes, pausing, fee-on-transfer tokens refused.
contract InferencePaymentsTest is Suite {
    /// secp256k1's group order: private keys are 1 .. N - 1.
    uint256 internal constant SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;

    TestToken internal testToken;
    address internal modelOwner = actor("model owner");
    address internal payer = actor("payer");
    bytes32 internal modelId;

    function setUp() public {
        testToken = deploySuite();
        modelId = registerModel(modelOwner, "model", 1 ether);
    }

    function _payFee(uint256 fee) internal returns (InferencePayments.AttributionReceipt memory r) {
        r = receiptFor(payer, modelId, fee);
        testToken.mint(payer, fee);
        pay(r);
    }

    function testFuzz_splitSumsToFee(uint256 fee, uint16 protocolBps, uint16 dataBps) public {
        protocolBps = uint16(bound(protocolBps, 0, 10_000));
        dataBps = uint16(bound(dataBps, 0, 10_000 - protocolBps));
        InferencePayments p =
            new InferencePayments(token, models, admin, ADMIN_DELAY, guardian, treasury, protocolBps, dataBps, EPOCH);
        (uint256 ownerShare, uint256 protocolShare, uint256 dataShare) = p.split(fee);
        vm.assertEq(ownerShare + protocolShare + dataShare, fee, "shares sum to the fee");
        // floor(fee * bps / 10000), computed without overflow as q * bps + floor(r * bps / 10000).
        (uint256 q, uint256 r) = (fee / 10_000, fee % 10_000);
        vm.assertEq(protocolShare, q * protocolBps + r * protocolBps / 10_000, "protocol share");
        vm.assertEq(dataShare, q * dataBps + r * dataBps / 10_000, "data share");
    }

    /// Any fee, any split, any operator key: the payment moves exactly the fee and credits the three
    /// shares, which sum to it.
    function testFuzz_payForInferenceSplitsExactly(uint256 fee, uint16 protocolBps, uint16 dataBps, uint256 key)
        public
    {
        protocolBps = uint16(bound(protocolBps, 0, 10_000));
        dataBps = uint16(bound(dataBps, 0, 10_000 - protocolBps));
        key = bound(key, 1, SECP256K1_N - 1);
        address signer = vm.addr(key);

        vm.startPrank(admin);
        payments.proposeSplit(treasury, protocolBps, dataBps);
        payments.grantRole(payments.OPERATOR_ROLE(), signer);
        vm.stopPrank();
        vm.warp(block.timestamp + ADMIN_DELAY);
        payments.applySplit();
        vm.prank(modelOwner);
        models.updateFee(modelId, fee);

        InferencePayments.AttributionReceipt memory r = receiptFor(payer, modelId, fee);
        testToken.mint(payer, fee);
        bytes memory signature = sign(key, r);
        vm.startPrank(payer);
        token.approve(address(payments), fee);
        payments.payForInference(r, signature);
        vm.stopPrank();

        (uint256 ownerShare, uint256 protocolShare, uint256 dataShare) = payments.split(fee);
        uint256 o = payments.withdrawable(modelOwner);
        uint256 t = payments.withdrawable(treasury);
        uint256 d = payments.dataPool(r.epoch);
        vm.assertEq(o, ownerShare, "owner credited");
        vm.assertEq(t, protocolShare, "treasury credited");
        vm.assertEq(d, dataShare, "data pool credited");
        vm.assertEq(o + t + d, fee, "owner + protocol + data == fee");
        vm.assertEq(token.balanceOf(address(payments)), fee, "the fee is held");
        vm.assertEq(token.balanceOf(payer), 0, "the payer paid the fee");
        vm.assertTrue(payments.paid(r.inferenceId), "marked paid");
    }

    function testFuzz_receiptFromNonOperatorRefused(uint256 key) public {
        key = bound(key, 1, SECP256K1_N - 1);
        vm.assume(key != OPERATOR_KEY);
        InferencePayments.AttributionReceipt memory r = receiptFor(payer, modelId, 1 ether);
        testToken.mint(payer, 1 ether);
        bytes memory signature = sign(key, r);
        vm.startPrank(payer);
        token.approve(address(payments), 1 ether);
        vm.expectRevert(abi.encodeWithSelector(InferencePayments.InvalidReceiptSignature.selector, vm.addr(key)));
        payments.payForInference(r, signature);
        vm.stopPrank();
    }

    function test_splitChangesOnlyAfterTheDelay() public {
        address newTreasury = actor("new treasury");
        vm.prank(admin);
        payments.proposeSplit(newTreasury, 1_000, 1_000);
        (,,, uint64 effectiveAt) = payments.pendingSplit();
        vm.assertEq(effectiveAt, block.timestamp + payments.defaultAdminDelay(), "effective after the admin delay");

        vm.expectRevert(abi.encodeWithSelector(InferencePayments.SplitNotReady.selector, effectiveAt));
        payments.applySplit();
        vm.warp(effectiveAt - 1);
        vm.expectRevert(abi.encodeWithSelector(InferencePayments.SplitNotReady.selector, effectiveAt));
        payments.applySplit();

        // Until applied, payments use the old split.
        _payFee(1 ether);
        vm.assertEq(payments.withdrawable(treasury), 0.05 ether, "old protocol share");

        vm.warp(effectiveAt);
        payments.applySplit();
        vm.assertEq(payments.treasury(), newTreasury, "treasury");
        vm.assertEq(payments.protocolBps(), 1_000, "protocol bps");
        vm.assertEq(payments.dataPoolBps(), 1_000, "data bps");
        vm.expectRevert(InferencePayments.NoPendingSplit.selector);
        payments.applySplit();

        _payFee(1 ether);
        vm.assertEq(payments.withdrawable(newTreasury), 0.1 ether, "new protocol share");
        vm.assertEq(payments.withdrawable(treasury), 0.05 ether, "old treasury keeps its credit");
    }

    function test_onlyAdminProposesOrCancels() public {
        bytes32 adminRole = payments.DEFAULT_ADMIN_ROLE();
        vm.prank(guardian);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, guardian, adminRole)
        );
        payments.proposeSplit(guardian, 0, 0);
        vm.prank(guardian);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, guardian, adminRole)
        );
        payments.cancelSplit();
    }

    function test_invalidSplitRefused() public {
        vm.startPrank(admin);
        vm.expectRevert(InferencePayments.InvalidConfig.selector);
        payments.proposeSplit(treasury, 6_000, 4_001);
        vm.expectRevert(InferencePayments.InvalidConfig.selector);
        payments.proposeSplit(address(0), 0, 0);
        vm.stopPrank();
    }

    function test_cancelledSplitNeverApplies() public {
        vm.startPrank(admin);
        payments.proposeSplit(treasury, 9_000, 1_000);
        payments.cancelSplit();
        vm.expectRevert(InferencePayments.NoPendingSplit.selector);
        payments.cancelSplit();
        vm.stopPrank();
        vm.warp(block.timestamp + ADMIN_DELAY);
        vm.expectRevert(InferencePayments.NoPendingSplit.selector);
        payments.applySplit();
        vm.assertEq(payments.protocolBps(), PROTOCOL_BPS, "split unchanged");
    }

    function test_pauseStopsPaymentsOnlyAdminUnpauses() public {
        _payFee(1 ether);
        bytes32 guardianRole = payments.GUARDIAN_ROLE();
        bytes32 adminRole = payments.DEFAULT_ADMIN_ROLE();

        vm.prank(admin);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, admin, guardianRole)
        );
        payments.pause();
        vm.prank(guardian);
        payments.pause();

        InferencePayments.AttributionReceipt memory r = receiptFor(payer, modelId, 1 ether);
        testToken.mint(payer, 1 ether);
        bytes memory signature = sign(OPERATOR_KEY, r);
        vm.startPrank(payer);
        token.approve(address(payments), 1 ether);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        payments.payForInference(r, signature);
        vm.stopPrank();

        // Credited shares stay withdrawable.
        vm.prank(modelOwner);
        payments.withdraw();
        vm.assertEq(token.balanceOf(modelOwner), 0.75 ether, "withdrawn while paused");

        vm.prank(guardian);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, guardian, adminRole)
        );
        payments.unpause();
        vm.prank(admin);
        payments.unpause();

        vm.prank(payer);
        payments.payForInference(r, signature);
        vm.assertTrue(payments.paid(r.inferenceId), "paid after unpause");
    }

    function testFuzz_feeOnTransferTokenRefused(uint256 fee) public {
        fee = bound(fee, 100, 1e30);
        FeeOnTransferToken fot = new FeeOnTransferToken();
        deploySuite(IERC20(address(fot)));
        modelId = registerModel(modelOwner, "model", fee);
        InferencePayments.AttributionReceipt memory r = receiptFor(payer, modelId, fee);
        fot.mint(payer, fee);
        bytes memory signature = sign(OPERATOR_KEY, r);
        vm.startPrank(payer);
        fot.approve(address(payments), fee);
        vm.expectRevert(abi.encodeWithSelector(InferencePayments.FeeOnTransferToken.selector, fee, fee - fee / 100));
        payments.payForInference(r, signature);
        vm.stopPrank();
        vm.assertFalse(payments.paid(r.inferenceId), "not paid");
        vm.assertEq(fot.balanceOf(payer), fee, "nothing moved");
    }
}
