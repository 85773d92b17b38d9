// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {AttributionRewards} from "../src/AttributionRewards.sol";
import {InferencePayments} from "../src/InferencePayments.sol";
import {TestToken} from "../src/test/TestToken.sol";
import {Merkle} from "./utils/Merkle.sol";
import {Suite} from "./utils/Suite.sol";

/// @notice AttributionRewards: the challenge window (guardian veto, claims wait, funds held for the
/// re-post), the claim period (expiry, sweep to `unclaimedRecipient`) and pausing claims.
contract AttributionRewardsTest is Suite {
    TestToken internal testToken;
    address internal payer = actor("payer");
    address[3] internal contributors = [actor("contributor 0"), actor("contributor 1"), actor("contributor 2")];
    uint256[3] internal amounts = [uint256(0.5 ether), 0.4 ether, 0.3 ether];
    bytes32[] internal leaves;
    uint256 internal pool;

    function setUp() public {
        testToken = deploySuite();
        bytes32 modelId = registerModel(actor("model owner"), "model", 1 ether);
        for (uint256 i = 0; i < 3; ++i) {
            InferencePayments.AttributionReceipt memory r = receiptFor(payer, modelId, 1 ether);
            testToken.mint(payer, 1 ether);
            pay(r);
        }
        pool = payments.dataPool(0);
        vm.assertEq(pool, 0.6 ether, "epoch 0 data pool");
        for (uint256 i = 0; i < 3; ++i) {
            leaves.push(Merkle.rewardLeaf(i, contributors[i], amounts[i]));
        }
        vm.warp(block.timestamp + EPOCH);
    }

    /// Posts `root` for epoch 0 with `total`, the poster paying what the pool and held funds lack.
    function _post(bytes32 root, uint256 total) internal {
        uint256 available = payments.dataPool(0) + rewards.heldForRepost(0);
        uint256 topUp = total > available ? total - available : 0;
        testToken.mint(poster, topUp);
        vm.startPrank(poster);
        token.approve(address(rewards), topUp);
        rewards.postEpochRoot(0, root, total);
        vm.stopPrank();
    }

    function _claim(uint256 i) internal {
        rewards.claim(0, i, contributors[i], amounts[i], Merkle.proof(leaves, i));
    }

    function _expectClaimRevert(uint256 i, bytes memory err) internal {
        bytes32[] memory proof = Merkle.proof(leaves, i);
        vm.expectRevert(err);
        rewards.claim(0, i, contributors[i], amounts[i], proof);
    }

    function test_claimsWaitForTheChallengeWindow() public {
        _post(Merkle.root(leaves), 1.2 ether);
        uint64 opens = uint64(block.timestamp) + CHALLENGE_WINDOW;
        vm.assertEq(rewards.claimableAt(0), opens, "claimableAt");
        _expectClaimRevert(0, abi.encodeWithSelector(AttributionRewards.ChallengeWindowOpen.selector, 0, opens));
        vm.warp(opens - 1);
        _expectClaimRevert(0, abi.encodeWithSelector(AttributionRewards.ChallengeWindowOpen.selector, 0, opens));
        vm.warp(opens);
        _claim(0);
        vm.assertEq(token.balanceOf(contributors[0]), amounts[0], "claimed once the window closed");
        _expectClaimRevert(0, abi.encodeWithSelector(AttributionRewards.AlreadyClaimed.selector, 0, 0));
    }

    function test_guardianVetoesInTheWindowAndFundsAreHeld() public {
        bytes32 bad = Merkle.root(leaves);
        _post(bad, 1.2 ether);
        vm.assertEq(token.balanceOf(address(rewards)), 1.2 ether, "funded: pool and top-up");

        bytes32 guardianRole = rewards.GUARDIAN_ROLE();
        vm.prank(poster);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, poster, guardianRole)
        );
        rewards.vetoEpochRoot(0);

        vm.warp(block.timestamp + CHALLENGE_WINDOW - 1);
        vm.prank(guardian);
        rewards.vetoEpochRoot(0);
        vm.assertEq(rewards.getEpoch(0).root, bytes32(0), "root removed");
        vm.assertEq(rewards.heldForRepost(0), 1.2 ether, "funds held");
        vm.assertEq(token.balanceOf(address(rewards)), 1.2 ether, "funds stay in the contract");

        vm.warp(block.timestamp + CHALLENGE_WINDOW);
        _expectClaimRevert(0, abi.encodeWithSelector(AttributionRewards.UnknownEpoch.selector, 0));
        vm.prank(guardian);
        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.UnknownEpoch.selector, 0));
        rewards.vetoEpochRoot(0);
    }

    function test_vetoAfterTheWindowReverts() public {
        _post(Merkle.root(leaves), 1.2 ether);
        vm.warp(block.timestamp + CHALLENGE_WINDOW);
        vm.prank(guardian);
        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.ChallengeWindowClosed.selector, 0));
        rewards.vetoEpochRoot(0);
    }

    function test_repostUsesHeldFunds() public {
        _post(keccak256("a wrong root"), 1.5 ether);
        vm.prank(guardian);
        rewards.vetoEpochRoot(0);

        // Less than what is held is refused: held funds must all be distributed.
        vm.prank(poster);
        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.TotalBelowPool.selector, 1.2 ether, 1.5 ether));
        rewards.postEpochRoot(0, Merkle.root(leaves), 1.2 ether);

        // Exactly what is held: the poster pays nothing (no allowance needed).
        uint256 posterBefore = token.balanceOf(poster);
        vm.prank(poster);
        rewards.postEpochRoot(0, Merkle.root(leaves), 1.5 ether);
        vm.assertEq(token.balanceOf(poster), posterBefore, "no top-up pulled");
        vm.assertEq(rewards.heldForRepost(0), 0, "held funds used");
        vm.assertEq(rewards.getEpoch(0).total, 1.5 ether, "total");
        vm.assertEq(token.balanceOf(address(rewards)), 1.5 ether, "balance");

        vm.warp(block.timestamp + CHALLENGE_WINDOW);
        for (uint256 i = 0; i < 3; ++i) {
            _claim(i);
        }
        vm.assertEq(token.balanceOf(address(rewards)), 0.3 ether, "unclaimed rest");
    }

    function test_repostAboveHeldPullsOnlyTheDifference() public {
        _post(keccak256("a wrong root"), 1 ether);
        vm.prank(guardian);
        rewards.vetoEpochRoot(0);
        _post(Merkle.root(leaves), 1.25 ether);
        vm.assertEq(token.balanceOf(address(rewards)), 1.25 ether, "held + 0.25 top-up");
        vm.assertEq(testToken.totalSupply(), 3 ether + 0.4 ether + 0.25 ether, "two top-ups minted");
    }

    function test_sweepAfterExpiryToUnclaimedRecipient() public {
        _post(Merkle.root(leaves), 1.2 ether);
        uint64 expiresAt = uint64(block.timestamp) + CHALLENGE_WINDOW + CLAIM_PERIOD;
        vm.warp(block.timestamp + CHALLENGE_WINDOW);
        _claim(1);

        vm.warp(expiresAt - 1);
        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.ClaimPeriodOpen.selector, 0, expiresAt));
        rewards.sweepUnclaimed(0);
        _claim(2);

        vm.warp(expiresAt);
        _expectClaimRevert(0, abi.encodeWithSelector(AttributionRewards.ClaimPeriodOver.selector, 0, expiresAt));
        vm.prank(actor("anyone"));
        uint256 swept = rewards.sweepUnclaimed(0);
        vm.assertEq(swept, 0.5 ether, "what contributor 0 left");
        vm.assertEq(token.balanceOf(unclaimedSink), 0.5 ether, "sent to unclaimedRecipient");
        vm.assertEq(token.balanceOf(address(rewards)), 0, "nothing left");
        vm.assertTrue(rewards.getEpoch(0).swept, "marked swept");

        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.AlreadySwept.selector, 0));
        rewards.sweepUnclaimed(0);
        vm.warp(expiresAt + 365 days);
        _expectClaimRevert(0, abi.encodeWithSelector(AttributionRewards.ClaimPeriodOver.selector, 0, expiresAt));
    }

    function test_sweepOfAnUnpostedEpochReverts() public {
        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.UnknownEpoch.selector, 7));
        rewards.sweepUnclaimed(7);
    }

    function test_pauseStopsClaimsOnlyAdminUnpauses() public {
        _post(Merkle.root(leaves), 1.2 ether);
        vm.warp(block.timestamp + CHALLENGE_WINDOW);
        bytes32 guardianRole = rewards.GUARDIAN_ROLE();
        bytes32 adminRole = rewards.DEFAULT_ADMIN_ROLE();

        vm.prank(admin);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, admin, guardianRole)
        );
        rewards.pause();
        vm.prank(guardian);
        rewards.pause();
        _expectClaimRevert(0, abi.encodeWithSelector(Pausable.EnforcedPause.selector));

        vm.prank(guardian);
        vm.expectRevert(
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, guardian, adminRole)
        );
        rewards.unpause();
        vm.prank(admin);
        rewards.unpause();
        _claim(0);
        vm.assertEq(token.balanceOf(contributors[0]), amounts[0], "claimed after unpause");
    }

    function test_forgedLeafRefused() public {
        _post(Merkle.root(leaves), 1.2 ether);
        vm.warp(block.timestamp + CHALLENGE_WINDOW);
        bytes32[] memory proof = Merkle.proof(leaves, 0);
        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.InvalidProof.selector, 0, 0));
        rewards.claim(0, 0, contributors[0], amounts[0] + 1, proof);
        // An inner node is not a leaf either.
        bytes32[] memory upper = new bytes32[](1);
        upper[0] = leaves[2];
        vm.expectRevert(abi.encodeWithSelector(AttributionRewards.InvalidProof.selector, 0, 0));
        rewards.claim(0, 0, contributors[0], amounts[0], upper);
    }
}
