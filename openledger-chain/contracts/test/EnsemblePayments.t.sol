// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {InferencePayments} from "../src/InferencePayments.sol";
import {ModelRegistry} from "../src/ModelRegistry.sol";
import {TestToken} from "../src/test/TestToken.sol";
import {Suite} from "./utils/Suite.sol";

/// @notice InferencePayments.payForEnsemble: an inference served by several models (adapters with
/// weights) pays the share-weighted mean of their fees, split as one model's fee is, with the
/// owners' part divided among the models' owners by share; every part sums to the fee for any
/// fees and shares. Bad ensembles and receipts are refused.
contract EnsemblePaymentsTest is Suite {
    TestToken internal testToken;
    address internal payer = actor("payer");
    address[4] internal owners = [actor("owner 0"), actor("owner 1"), actor("owner 2"), actor("owner 3")];
    bytes32[4] internal ids;

    function setUp() public {
        testToken = deploySuite();
        for (uint256 i = 0; i < 4; ++i) {
            ids[i] = registerModel(owners[i], bytes32(i + 1), 1 ether);
        }
    }

    function _receipt(bytes32[] memory modelIds, uint256[] memory shares, uint256 amount)
        internal
        view
        returns (InferencePayments.EnsembleReceipt memory r)
    {
        r.inferenceId = keccak256(abi.encode("ensemble", modelIds, shares, amount));
        r.modelIds = modelIds;
        r.shares = shares;
        r.payer = payer;
        r.amount = amount;
        r.epoch = payments.currentEpoch();
        r.weightsHash = keccak256("weights");
    }

    function _sign(uint256 key, InferencePayments.EnsembleReceipt memory r) internal view returns (bytes memory) {
        (uint8 v, bytes32 sr, bytes32 ss) = vm.sign(key, payments.ensembleReceiptDigest(r));
        return abi.encodePacked(sr, ss, v);
    }

    function _pay(InferencePayments.EnsembleReceipt memory r, bytes memory signature) internal {
        testToken.mint(payer, r.amount);
        vm.startPrank(payer);
        token.approve(address(payments), r.amount);
        payments.payForEnsemble(r, signature);
        vm.stopPrank();
    }

    /// Equal fees give that fee, whatever the shares.
    function testFuzz_equalFeesGiveThatFee(uint256 fee, uint256[4] memory shares) public {
        fee = bound(fee, 0, 1e30);
        bytes32[] memory modelIds = new bytes32[](4);
        uint256[] memory s = new uint256[](4);
        for (uint256 i = 0; i < 4; ++i) {
            modelIds[i] = ids[i];
            s[i] = bound(shares[i], 1, 1e18);
            vm.prank(owners[i]);
            models.updateFee(ids[i], fee);
        }
        (uint256 got, address[] memory who) = payments.ensembleFee(modelIds, s);
        vm.assertEq(got, fee, "the common fee");
        vm.assertEq(who[3], owners[3], "owners in order");
    }

    /// Any 1 to 4 models with any fees and shares: the fee is ⌊Σ feeᵢ·sharesᵢ / Σ shares⌋, model
    /// i > 0's owner gets ⌊ownerShare·sharesᵢ / Σ shares⌋, the first the rest, and owners +
    /// treasury + data pool == the fee the payer paid.
    function testFuzz_ensembleSplitsExactly(uint256[4] memory fees, uint256[4] memory shares, uint8 n) public {
        n = uint8(bound(n, 1, 4));
        bytes32[] memory modelIds = new bytes32[](n);
        uint256[] memory s = new uint256[](n);
        uint256 total;
        for (uint256 i = 0; i < n; ++i) {
            fees[i] = bound(fees[i], 0, 1e30);
            s[i] = bound(shares[i], 1, 1e18);
            total += s[i];
            modelIds[i] = ids[i];
            vm.prank(owners[i]);
            models.updateFee(ids[i], fees[i]);
        }
        uint256 want;
        for (uint256 i = 0; i < n; ++i) {
            want += fees[i] * s[i];
        }
        want /= total;
        (uint256 fee,) = payments.ensembleFee(modelIds, s);
        vm.assertEq(fee, want, "share-weighted mean of the fees");

        InferencePayments.EnsembleReceipt memory r = _receipt(modelIds, s, fee);
        _pay(r, _sign(OPERATOR_KEY, r));

        (uint256 ownerShare, uint256 protocolShare, uint256 dataShare) = payments.split(fee);
        uint256 owned;
        for (uint256 i = 0; i < n; ++i) {
            uint256 got = payments.withdrawable(owners[i]);
            if (i > 0) vm.assertEq(got, ownerShare * s[i] / total, "owner i by share");
            owned += got;
        }
        vm.assertEq(owned, ownerShare, "owners' parts sum to the owners' share");
        vm.assertEq(payments.withdrawable(treasury), protocolShare, "treasury");
        vm.assertEq(payments.dataPool(r.epoch), dataShare, "data pool");
        vm.assertEq(owned + protocolShare + dataShare, fee, "every part sums to the fee");
        vm.assertEq(token.balanceOf(address(payments)), fee, "the fee is held");
        vm.assertTrue(payments.paid(r.inferenceId), "marked paid");
    }

    function test_twoModelsSplitTheOwnersPartSevenToThree() public {
        bytes32[] memory modelIds = new bytes32[](2);
        (modelIds[0], modelIds[1]) = (ids[0], ids[1]);
        uint256[] memory s = new uint256[](2);
        (s[0], s[1]) = (700_000, 300_000);
        InferencePayments.EnsembleReceipt memory r = _receipt(modelIds, s, 1 ether);
        bytes memory signature = _sign(OPERATOR_KEY, r);
        testToken.mint(payer, 1 ether);
        vm.startPrank(payer);
        token.approve(address(payments), 1 ether);
        uint256[] memory parts = new uint256[](2);
        // 1 ether: 5 % protocol, 20 % data, 75 % owners = 0.525 + 0.225.
        (parts[0], parts[1]) = (0.525 ether, 0.225 ether);
        vm.expectEmit(address(payments));
        emit InferencePayments.EnsemblePaid(
            r.inferenceId, payer, operator, r.epoch, 1 ether, modelIds, parts, 0.05 ether, 0.2 ether, r.weightsHash
        );
        payments.payForEnsemble(r, signature);
        vm.stopPrank();
        vm.assertEq(payments.withdrawable(owners[0]), 0.525 ether, "first owner, seven tenths");
        vm.assertEq(payments.withdrawable(owners[1]), 0.225 ether, "second owner, three tenths");

        // The same receipt again is refused.
        testToken.mint(payer, 1 ether);
        vm.startPrank(payer);
        token.approve(address(payments), 1 ether);
        vm.expectRevert(abi.encodeWithSelector(InferencePayments.InferenceAlreadyPaid.selector, r.inferenceId));
        payments.payForEnsemble(r, signature);
        vm.stopPrank();
    }

    function _refused(InferencePayments.EnsembleReceipt memory r, bytes memory signature, bytes memory why)
        internal
    {
        testToken.mint(payer, r.amount);
        vm.startPrank(payer);
        token.approve(address(payments), r.amount);
        vm.expectRevert(why);
        payments.payForEnsemble(r, signature);
        vm.stopPrank();
    }

    function test_badEnsemblesAndReceiptsAreRefused() public {
        bytes32[] memory two = new bytes32[](2);
        (two[0], two[1]) = (ids[0], ids[1]);
        uint256[] memory s = new uint256[](2);
        (s[0], s[1]) = (1, 1);
        uint256[] memory one = new uint256[](1);
        one[0] = 1;

        InferencePayments.EnsembleReceipt memory r = _receipt(new bytes32[](0), new uint256[](0), 0);
        _refused(r, _sign(OPERATOR_KEY, r), abi.encodeWithSelector(InferencePayments.InvalidEnsemble.selector, 0, 0));
        r = _receipt(two, one, 1 ether);
        _refused(r, _sign(OPERATOR_KEY, r), abi.encodeWithSelector(InferencePayments.InvalidEnsemble.selector, 2, 1));
        bytes32[] memory many = new bytes32[](17);
        uint256[] memory manyShares = new uint256[](17);
        r = _receipt(many, manyShares, 1 ether);
        _refused(r, _sign(OPERATOR_KEY, r), abi.encodeWithSelector(InferencePayments.InvalidEnsemble.selector, 17, 17));

        uint256[] memory zero = new uint256[](2);
        zero[0] = 1;
        r = _receipt(two, zero, 1 ether);
        _refused(r, _sign(OPERATOR_KEY, r), abi.encodeWithSelector(InferencePayments.ZeroShare.selector, 1));

        bytes32[] memory dup = new bytes32[](2);
        (dup[0], dup[1]) = (ids[2], ids[2]);
        r = _receipt(dup, s, 1 ether);
        _refused(r, _sign(OPERATOR_KEY, r), abi.encodeWithSelector(InferencePayments.DuplicateModel.selector, ids[2]));

        r = _receipt(two, s, 1 ether + 1);
        _refused(
            r, _sign(OPERATOR_KEY, r), abi.encodeWithSelector(InferencePayments.FeeMismatch.selector, 1 ether, 1 ether + 1)
        );

        r = _receipt(two, s, 1 ether);
        _refused(r, _sign(0xBAD, r), abi.encodeWithSelector(InferencePayments.InvalidReceiptSignature.selector, vm.addr(0xBAD)));
        // The signature commits to the shares: changed after signing, it no longer recovers the operator.
        bytes memory signature = _sign(OPERATOR_KEY, r);
        (r.shares[0], r.shares[1]) = (2, 2);
        vm.startPrank(payer);
        testToken.mint(payer, 1 ether);
        token.approve(address(payments), 1 ether);
        vm.expectPartialRevert(InferencePayments.InvalidReceiptSignature.selector);
        payments.payForEnsemble(r, signature);
        vm.stopPrank();

        vm.prank(owners[1]);
        models.deactivate(ids[1]);
        r = _receipt(two, s, 1 ether);
        _refused(r, _sign(OPERATOR_KEY, r), abi.encodeWithSelector(ModelRegistry.ModelInactive.selector, ids[1]));
        vm.assertEq(token.balanceOf(address(payments)), 0, "nothing was taken");
    }
}
