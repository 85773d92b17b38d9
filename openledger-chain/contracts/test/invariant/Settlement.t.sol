// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {DatanetRegistry} from "../../src/DatanetRegistry.sol";
import {ModelRegistry} from "../../src/ModelRegistry.sol";
import {InferencePayments} from "../../src/InferencePayments.sol";
import {AttributionRewards} from "../../src/AttributionRewards.sol";
import {TestToken} from "../../src/test/TestToken.sol";
import {Base} from "../utils/Base.sol";
import {SettlementHandler} from "./SettlementHandler.sol";

/// @notice Money invariants of the settlement under random sequences of the handler's actions:
/// every token is accounted for, to the wei, at every step.
contract SettlementInvariantTest is Base {
    uint256 internal constant OPERATOR_KEY = 0x0A11CE;

    TestToken internal token;
    InferencePayments internal payments;
    AttributionRewards internal rewards;
    SettlementHandler internal handler;
    address[] internal holders;

    function setUp() public {
        address admin = address(uint160(uint256(keccak256("admin"))));
        address guardian = address(uint160(uint256(keccak256("guardian"))));
        address poster = address(uint160(uint256(keccak256("poster"))));
        address sink = address(uint160(uint256(keccak256("unclaimed"))));
        address treasury = address(uint160(uint256(keccak256("treasury"))));

        token = new TestToken();
        ModelRegistry models = new ModelRegistry(new DatanetRegistry());
        // One-day epochs, a six-hour challenge window and a four-day claim period: a campaign of
        // a few dozen calls sees epochs close, roots vetoed, claims expire and sweeps.
        payments = new InferencePayments(
            IERC20(address(token)), models, admin, 1 days, guardian, treasury, 500, 2_000, 1 days
        );
        rewards = new AttributionRewards(
            IERC20(address(token)), payments, admin, 1 days, poster, guardian, 6 hours, 4 days, sink
        );
        vm.startPrank(admin);
        payments.grantRole(payments.OPERATOR_ROLE(), vm.addr(OPERATOR_KEY));
        payments.grantRole(payments.POOL_ROLE(), address(rewards));
        vm.stopPrank();

        handler = new SettlementHandler(
            SettlementHandler.Config({
                token: token,
                models: models,
                payments: payments,
                rewards: rewards,
                operatorKey: OPERATOR_KEY,
                admin: admin,
                guardian: guardian,
                poster: poster,
                sink: sink,
                treasury: treasury
            })
        );
        targetContract(address(handler));

        for (uint256 i = 0; i < handler.accountCount(); ++i) {
            holders.push(handler.account(i));
        }
        holders.push(address(payments));
        holders.push(address(rewards));
        holders.push(address(handler));
        holders.push(admin);
        holders.push(guardian);
        holders.push(poster);
        holders.push(sink);
    }

    /// InferencePayments holds exactly what it owes: every credited share not yet withdrawn and
    /// every data pool not yet released; and that is what was paid in less what went out.
    function invariant_paymentsSolventAndConserved() public view {
        uint256 owed;
        for (uint256 i = 0; i < handler.accountCount(); ++i) {
            owed += payments.withdrawable(handler.account(i));
        }
        uint64 current = payments.currentEpoch();
        for (uint64 e = 0; e <= current; ++e) {
            owed += payments.dataPool(e);
        }
        uint256 balance = token.balanceOf(address(payments));
        vm.assertEq(balance, owed, "payments balance == credits + unreleased pools");
        vm.assertEq(
            balance,
            handler.ghostPaidIn() - handler.ghostWithdrawn() - handler.ghostReleased(),
            "payments balance == paid in - withdrawn - released"
        );
    }

    /// AttributionRewards holds exactly what posted, unswept epochs have left to claim plus the funds
    /// held for re-posts; and that is what came in less what was claimed and swept.
    function invariant_rewardsSolventAndConserved() public view {
        uint256 owed;
        for (uint256 i = 0; i < handler.postedEpochCount(); ++i) {
            uint64 epoch = handler.postedEpoch(i);
            AttributionRewards.Epoch memory e = rewards.getEpoch(epoch);
            if (e.root != bytes32(0) && !e.swept) owed += e.total - e.claimed;
            owed += rewards.heldForRepost(epoch);
        }
        uint256 balance = token.balanceOf(address(rewards));
        vm.assertEq(balance, owed, "rewards balance == unclaimed totals + held");
        vm.assertEq(
            balance,
            handler.ghostReleased() + handler.ghostToppedUp() - handler.ghostClaimedOut() - handler.ghostSweptOut(),
            "rewards balance == released + topped up - claimed - swept"
        );
    }

    /// No epoch pays out more than it was funded with, and what it paid is what the handler claimed.
    function invariant_epochsNeverOverdrawn() public view {
        for (uint256 i = 0; i < handler.postedEpochCount(); ++i) {
            uint64 epoch = handler.postedEpoch(i);
            AttributionRewards.Epoch memory e = rewards.getEpoch(epoch);
            vm.assertLe(e.claimed, e.total, "claimed <= total");
            vm.assertEq(e.claimed, handler.ghostClaimed(epoch), "claimed == ghost claimed");
        }
    }

    /// Every leaf was paid at most once, and the contract's claimed bit says whether it was.
    function invariant_noLeafClaimedTwice() public view {
        for (uint256 i = 0; i < handler.postedEpochCount(); ++i) {
            uint64 epoch = handler.postedEpoch(i);
            for (uint256 j = 0; j < handler.rewardCount(epoch); ++j) {
                uint256 index = handler.reward(epoch, j).index;
                uint256 count = handler.claimCount(epoch, index);
                vm.assertLe(count, 1, "a leaf was paid twice");
                vm.assertEq(rewards.isClaimed(epoch, index) ? 1 : 0, count, "claimed bit");
            }
        }
    }

    /// Tokens are neither created nor lost: the supply is what was minted, and it all sits with
    /// the accounts, the contracts and the handler.
    function invariant_supplyConserved() public view {
        uint256 sum;
        for (uint256 i = 0; i < holders.length; ++i) {
            sum += token.balanceOf(holders[i]);
        }
        vm.assertEq(token.totalSupply(), handler.ghostMinted(), "supply == minted");
        vm.assertEq(sum, handler.ghostMinted(), "balances sum to what was minted");
    }
}
