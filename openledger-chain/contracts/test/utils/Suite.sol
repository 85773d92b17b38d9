// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {DatanetRegistry} from "../../src/DatanetRegistry.sol";
import {ModelRegistry} from "../../src/ModelRegistry.sol";
import {InferencePayments} from "../../src/InferencePayments.sol";
import {AttributionRewards} from "../../src/AttributionRewards.sol";
import {TestToken} from "../../src/test/TestToken.sol";
import {Base} from "./Base.sol";

/// @title Suite
/// @notice Deploys and wires the four contracts as `openledger_chain::deploy` does (the operator
/// holds `OPERATOR_ROLE`, the rewards contract `POOL_ROLE`), with named accounts and helpers to
/// register models and pay for inferences with receipts the operator signs.
abstract contract Suite is Base {
    uint256 internal constant OPERATOR_KEY = 0x0A11CE;
    uint48 internal constant ADMIN_DELAY = 2 days;
    uint64 internal constant EPOCH = 1 days;
    uint64 internal constant CHALLENGE_WINDOW = 1 hours;
    uint64 internal constant CLAIM_PERIOD = 30 days;
    uint16 internal constant PROTOCOL_BPS = 500;
    uint16 internal constant DATA_POOL_BPS = 2_000;

    address internal operator = vm.addr(OPERATOR_KEY);
    address internal admin = actor("admin");
    address internal guardian = actor("guardian");
    address internal treasury = actor("treasury");
    address internal poster = actor("poster");
    address internal unclaimedSink = actor("unclaimed");

    IERC20 internal token;
    DatanetRegistry internal datanets;
    ModelRegistry internal models;
    InferencePayments internal payments;
    AttributionRewards internal rewards;

    uint256 private _inferences;

    function actor(string memory name) internal returns (address a) {
        a = address(uint160(uint256(keccak256(bytes(name)))));
        vm.label(a, name);
    }

    function deploySuite(IERC20 token_) internal {
        token = token_;
        datanets = new DatanetRegistry();
        models = new ModelRegistry(datanets);
        payments = new InferencePayments(
            token_, models, admin, ADMIN_DELAY, guardian, treasury, PROTOCOL_BPS, DATA_POOL_BPS, EPOCH
        );
        rewards = new AttributionRewards(
            token_, payments, admin, ADMIN_DELAY, poster, guardian, CHALLENGE_WINDOW, CLAIM_PERIOD, unclaimedSink
        );
        vm.startPrank(admin);
        payments.grantRole(payments.OPERATOR_ROLE(), operator);
        payments.grantRole(payments.POOL_ROLE(), address(rewards));
        vm.stopPrank();
    }

    function deploySuite() internal returns (TestToken t) {
        t = new TestToken();
        deploySuite(IERC20(address(t)));
    }

    /// @notice Registers a model owned by `owner` (no training sources) and returns its id.
    function registerModel(address owner, bytes32 salt, uint256 fee) internal returns (bytes32 modelId) {
        ModelRegistry.TrainingSource[] memory none = new ModelRegistry.TrainingSource[](0);
        vm.prank(owner);
        modelId = models.registerModel(salt, keccak256("base"), keccak256("artifact"), bytes32(0), none, fee);
    }

    /// @notice A receipt for a fresh inference of `modelId` by `payer` in the current epoch.
    function receiptFor(address payer, bytes32 modelId, uint256 amount)
        internal
        returns (InferencePayments.AttributionReceipt memory r)
    {
        r.inferenceId = keccak256(abi.encode("inference", ++_inferences));
        r.modelId = modelId;
        r.adapterIds = new bytes32[](0);
        r.payer = payer;
        r.amount = amount;
        r.epoch = payments.currentEpoch();
        r.weightsHash = keccak256("weights");
    }

    /// @notice `r` signed with `key` over its EIP-712 digest (65 bytes: r, s, v).
    function sign(uint256 key, InferencePayments.AttributionReceipt memory r) internal view returns (bytes memory) {
        (uint8 v, bytes32 sr, bytes32 ss) = vm.sign(key, payments.receiptDigest(r));
        return abi.encodePacked(sr, ss, v);
    }

    /// @notice Approves and pays `r` as its payer, signed by the operator.
    function pay(InferencePayments.AttributionReceipt memory r) internal {
        bytes memory signature = sign(OPERATOR_KEY, r);
        vm.startPrank(r.payer);
        token.approve(address(payments), r.amount);
        payments.payForInference(r, signature);
        vm.stopPrank();
    }
}
