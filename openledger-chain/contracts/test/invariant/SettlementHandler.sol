// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {IAccessControl} from "@openzeppelin/contracts/access/IAccessControl.sol";
import {ModelRegistry} from "../../src/ModelRegistry.sol";
import {InferencePayments} from "../../src/InferencePayments.sol";
import {AttributionRewards} from "../../src/AttributionRewards.sol";
import {TestToken} from "../../src/test/TestToken.sol";
import {Cheats} from "../utils/Cheats.sol";
import {Merkle} from "../utils/Merkle.sol";

/// @title SettlementHandler
/// @notice Drives the whole settlement at random: registers models, pays inferences (random payers
/// and fees, receipts signed by the operator key), withdraws, moves the clock, posts epoch roots
/// (small Merkle trees built here, sometimes under-funded), claims (sometimes forged or repeated),
/// vetoes, sweeps, pauses briefly and changes the split through its delay.
///
/// Every call predicts its outcome from the ghost state kept here: what must succeed, and the exact
/// error of what must fail; a success must move exactly the predicted amounts. Anything else
/// reverts the handler, which fails the campaign (`fail_on_revert`). The ghost totals (minted, paid
/// in, withdrawn, released, claimed, swept) let the invariants check conservation to the wei.
contract SettlementHandler is Cheats {
    /// @notice One leaf of a posted reward tree.
    struct Reward {
        uint256 index;
        address account;
        uint256 amount;
    }

    TestToken public immutable token;
    ModelRegistry public immutable models;
    InferencePayments public immutable payments;
    AttributionRewards public immutable rewards;
    uint256 internal immutable operatorKey;
    address internal immutable admin;
    address internal immutable guardian;
    address internal immutable poster;
    address internal immutable sink;

    /// @notice Everyone who pays, owns models, earns rewards or is named treasury.
    address[] internal _accounts;
    bytes32[] internal _modelIds;
    /// @notice Every epoch that ever had a root, in the order first posted.
    uint64[] internal _postedEpochs;
    mapping(uint64 epoch => bool) internal _everPosted;
    /// @notice The leaves of each epoch's current root (none after a veto).
    mapping(uint64 epoch => Reward[]) internal _rewards;

    /// @notice Successful claims of each leaf index of each epoch (never above one).
    mapping(uint64 epoch => mapping(uint256 index => uint256)) public claimCount;
    mapping(uint64 epoch => uint256) public ghostClaimed;

    uint256 public ghostMinted;
    uint256 public ghostPaidIn;
    uint256 public ghostWithdrawn;
    uint256 public ghostReleased;
    uint256 public ghostToppedUp;
    uint256 public ghostClaimedOut;
    uint256 public ghostSweptOut;

    /// @notice Successful calls of each kind, and refusals by error (what a campaign covered).
    mapping(string action => uint256) public succeeded;
    mapping(bytes4 error => uint256) public refused;

    /// @notice The campaign's clock: every call starts at it (each call of a campaign may start
    /// with its own block environment, so the handler keeps time itself).
    uint256 public time;
    uint256 internal _inferenceNonce;

    struct Config {
        TestToken token;
        ModelRegistry models;
        InferencePayments payments;
        AttributionRewards rewards;
        uint256 operatorKey;
        address admin;
        address guardian;
        address poster;
        address sink;
        address treasury;
    }

    constructor(Config memory c) {
        token = c.token;
        models = c.models;
        payments = c.payments;
        rewards = c.rewards;
        operatorKey = c.operatorKey;
        admin = c.admin;
        guardian = c.guardian;
        poster = c.poster;
        sink = c.sink;
        for (uint256 i = 0; i < 5; ++i) {
            _accounts.push(address(uint160(uint256(keccak256(abi.encode("settlement actor", i))))));
        }
        _accounts.push(c.treasury);
        time = block.timestamp;
    }

    modifier atTime() {
        vm.warp(time);
        _;
    }

    // ---------------------------------------------------------------- views for the invariants

    function accountCount() external view returns (uint256) {
        return _accounts.length;
    }

    function account(uint256 i) external view returns (address) {
        return _accounts[i];
    }

    function postedEpochCount() external view returns (uint256) {
        return _postedEpochs.length;
    }

    function postedEpoch(uint256 i) external view returns (uint64) {
        return _postedEpochs[i];
    }

    function rewardCount(uint64 epoch) external view returns (uint256) {
        return _rewards[epoch].length;
    }

    function reward(uint64 epoch, uint256 i) external view returns (Reward memory) {
        return _rewards[epoch][i];
    }

    // ---------------------------------------------------------------- helpers

    function _account(uint256 seed) internal view returns (address) {
        return _accounts[seed % _accounts.length];
    }

    /// The first five accounts are people; the last is the first treasury.
    function _person(uint256 seed) internal view returns (address) {
        return _accounts[seed % 5];
    }

    /// Calls `target` as `caller`: with `expected` empty it must succeed, otherwise revert with
    /// exactly `expected`.
    function _call(string memory action, address target, address caller, bytes memory data, bytes memory expected)
        internal
        returns (bytes memory ret)
    {
        bool ok;
        vm.prank(caller);
        (ok, ret) = target.call(data);
        if (expected.length == 0) {
            if (!ok) {
                assembly ("memory-safe") {
                    revert(add(ret, 32), mload(ret))
                }
            }
            succeeded[action] += 1;
        } else {
            require(!ok, string.concat(action, ": succeeded, but should have reverted"));
            require(keccak256(ret) == keccak256(expected), string.concat(action, ": reverted with another error"));
            refused[bytes4(expected)] += 1;
        }
    }

    function _signedReceipt(address payer, bytes32 modelId, uint256 fee)
        internal
        returns (InferencePayments.AttributionReceipt memory r, bytes memory signature)
    {
        r.inferenceId = keccak256(abi.encode("settlement inference", ++_inferenceNonce));
        r.modelId = modelId;
        r.adapterIds = new bytes32[](0);
        r.payer = payer;
        r.amount = fee;
        r.epoch = payments.currentEpoch();
        r.weightsHash = keccak256(abi.encode(r.inferenceId));
        (uint8 v, bytes32 sr, bytes32 ss) = vm.sign(operatorKey, payments.receiptDigest(r));
        signature = abi.encodePacked(sr, ss, v);
    }

    enum Want {
        Any,
        Claimable,
        Vetoable,
        Sweepable
    }

    /// A posted epoch: from `seed`, the first one in the state `want` (the fuzzer would rarely hit
    /// the narrow windows by chance), or, when none is, the one at `seed`.
    function _pickEpoch(uint256 seed, Want want) internal view returns (uint64) {
        uint256 n = _postedEpochs.length;
        for (uint256 k = 0; want != Want.Any && k < n; ++k) {
            uint64 epoch = _postedEpochs[(seed % n + k) % n];
            AttributionRewards.Epoch memory e = rewards.getEpoch(epoch);
            if (e.root == bytes32(0)) continue;
            uint256 opens = uint256(e.postedAt) + rewards.challengeWindow();
            uint256 expires = opens + rewards.claimPeriod();
            if (want == Want.Vetoable && time < opens) return epoch;
            if (want == Want.Claimable && time >= opens && time < expires) return epoch;
            if (want == Want.Sweepable && time >= expires && !e.swept) return epoch;
        }
        return _postedEpochs[seed % n];
    }

    function _mint(address to, uint256 amount) internal {
        token.mint(to, amount);
        ghostMinted += amount;
    }

    function _leaves(uint64 epoch) internal view returns (bytes32[] memory leaves) {
        Reward[] storage rs = _rewards[epoch];
        leaves = new bytes32[](rs.length);
        for (uint256 i = 0; i < rs.length; ++i) {
            leaves[i] = Merkle.rewardLeaf(rs[i].index, rs[i].account, rs[i].amount);
        }
    }

    // ---------------------------------------------------------------- models and payments

    /// Registers a model; salts come from a small set so that repeats (which must revert) happen.
    function registerModel(uint256 ownerSeed, uint256 saltSeed, uint256 fee) external atTime {
        address owner = _person(ownerSeed);
        bytes32 salt = bytes32(saltSeed % 3);
        fee = bound(fee, 0, 1e24);
        bytes32 id = models.modelIdFor(owner, salt);
        bool exists = false;
        for (uint256 i = 0; i < _modelIds.length; ++i) {
            exists = exists || _modelIds[i] == id;
        }
        bytes memory expected =
            exists ? abi.encodeWithSelector(ModelRegistry.ModelAlreadyRegistered.selector, id) : bytes("");
        ModelRegistry.TrainingSource[] memory none = new ModelRegistry.TrainingSource[](0);
        _call(
            "registerModel",
            address(models),
            owner,
            abi.encodeCall(ModelRegistry.registerModel, (salt, keccak256("base"), id, bytes32(0), none, fee)),
            expected
        );
        if (!exists) _modelIds.push(id);
    }

    function updateFee(uint256 modelSeed, uint256 fee) external atTime {
        if (_modelIds.length == 0) return;
        bytes32 id = _modelIds[modelSeed % _modelIds.length];
        fee = bound(fee, 0, 1e24);
        _call(
            "updateFee",
            address(models),
            models.getModel(id).owner,
            abi.encodeCall(ModelRegistry.updateFee, (id, fee)),
            ""
        );
    }

    /// Pays one inference of a random model by a random payer; checks each share credited to the wei.
    function pay(uint256 payerSeed, uint256 modelSeed) external atTime {
        if (_modelIds.length == 0) return;
        address payer = _person(payerSeed);
        bytes32 id = _modelIds[modelSeed % _modelIds.length];
        (address owner, uint256 fee) = models.serving(id);
        (InferencePayments.AttributionReceipt memory r, bytes memory signature) = _signedReceipt(payer, id, fee);
        _mint(payer, fee);
        vm.prank(payer);
        token.approve(address(payments), fee);

        address treasury = payments.treasury();
        uint256 protocolShare = fee * payments.protocolBps() / 10_000;
        uint256 dataShare = fee * payments.dataPoolBps() / 10_000;
        uint256 ownerBefore = payments.withdrawable(owner);
        uint256 treasuryBefore = payments.withdrawable(treasury);
        uint256 poolBefore = payments.dataPool(r.epoch);

        _call("pay", address(payments), payer, abi.encodeCall(InferencePayments.payForInference, (r, signature)), "");
        ghostPaidIn += fee;

        uint256 ownerShare = fee - protocolShare - dataShare;
        if (owner == treasury) {
            require(payments.withdrawable(owner) == ownerBefore + ownerShare + protocolShare, "owner+treasury credit");
        } else {
            require(payments.withdrawable(owner) == ownerBefore + ownerShare, "owner credit");
            require(payments.withdrawable(treasury) == treasuryBefore + protocolShare, "treasury credit");
        }
        require(payments.dataPool(r.epoch) == poolBefore + dataShare, "data pool credit");
    }

    function withdraw(uint256 accountSeed) external atTime {
        address who = _account(accountSeed);
        uint256 credit = payments.withdrawable(who);
        uint256 before = token.balanceOf(who);
        bytes memory expected =
            credit == 0 ? abi.encodeWithSelector(InferencePayments.NothingToWithdraw.selector, who) : bytes("");
        _call("withdraw", address(payments), who, abi.encodeCall(InferencePayments.withdraw, ()), expected);
        if (credit == 0) return;
        ghostWithdrawn += credit;
        require(token.balanceOf(who) == before + credit, "withdrawn amount");
        require(payments.withdrawable(who) == 0, "credit cleared");
    }

    /// Proposes a new split and treasury (admin); it applies after the admin delay.
    function proposeSplit(uint256 protocolBps, uint256 dataBps, uint256 treasurySeed) external atTime {
        protocolBps = bound(protocolBps, 0, 10_000);
        dataBps = bound(dataBps, 0, 10_000 - protocolBps);
        address treasury = _account(treasurySeed);
        _call(
            "proposeSplit",
            address(payments),
            admin,
            abi.encodeCall(InferencePayments.proposeSplit, (treasury, uint16(protocolBps), uint16(dataBps))),
            ""
        );
    }

    function applySplit() external atTime {
        (address treasury, uint16 protocolBps, uint16 dataBps, uint64 effectiveAt) = payments.pendingSplit();
        bytes memory expected;
        if (effectiveAt == 0) {
            expected = abi.encodeWithSelector(InferencePayments.NoPendingSplit.selector);
        } else if (time < effectiveAt) {
            expected = abi.encodeWithSelector(InferencePayments.SplitNotReady.selector, effectiveAt);
        }
        _call(
            "applySplit", address(payments), address(this), abi.encodeCall(InferencePayments.applySplit, ()), expected
        );
        if (expected.length != 0) return;
        require(payments.treasury() == treasury, "treasury applied");
        require(payments.protocolBps() == protocolBps && payments.dataPoolBps() == dataBps, "split applied");
    }

    // ---------------------------------------------------------------- time

    /// Moves the clock by ten minutes to six hours: within a challenge window.
    function warpShort(uint256 seed) external {
        time += 10 minutes + seed % 6 hours;
        vm.warp(time);
    }

    /// Moves the clock by one to two days: across epochs and claim periods.
    function warpLong(uint256 seed) external {
        time += 1 days + seed % 1 days;
        vm.warp(time);
    }

    // ---------------------------------------------------------------- rewards

    /// Posts a root for a vetoed epoch or one of the last three closed epochs: one to five leaves over random
    /// accounts and amounts, funded by the epoch's data pool, held funds and a top-up. One time in
    /// four the total is only what the pool and held funds give, which may be less than the
    /// leaves add up to: claims must then stop at the total.
    function postRoot(uint256 epochSeed, uint256 leafCount, uint256 amountSeed, uint256 extra) external atTime {
        uint64 current = payments.currentEpoch();
        if (current == 0) return;
        uint64 epoch = current - 1 - uint64(epochSeed % (current < 3 ? current : 3));
        // Mostly, a vetoed epoch waiting for its corrected root goes first.
        for (uint256 k = 0; epochSeed % 4 != 0 && k < _postedEpochs.length; ++k) {
            uint64 vetoed = _postedEpochs[(epochSeed % _postedEpochs.length + k) % _postedEpochs.length];
            if (rewards.getEpoch(vetoed).root == bytes32(0)) {
                epoch = vetoed;
                break;
            }
        }
        if (rewards.getEpoch(epoch).root != bytes32(0)) {
            _call(
                "postRoot",
                address(rewards),
                poster,
                abi.encodeCall(AttributionRewards.postEpochRoot, (epoch, keccak256("again"), 0)),
                abi.encodeWithSelector(AttributionRewards.EpochAlreadyPosted.selector, epoch)
            );
            return;
        }

        delete _rewards[epoch];
        uint256 n = bound(leafCount, 1, 5);
        uint256 sum;
        for (uint256 i = 0; i < n; ++i) {
            uint256 r = uint256(keccak256(abi.encode(amountSeed, i)));
            uint256 amount = bound(r >> 8, 0, 1e22);
            _rewards[epoch].push(Reward({index: i, account: _person(r), amount: amount}));
            sum += amount;
        }
        bytes32 root = Merkle.root(_leaves(epoch));

        uint256 pool = payments.dataPool(epoch);
        uint256 held = rewards.heldForRepost(epoch);
        uint256 total = extra % 4 == 0 ? pool + held : (sum > pool + held ? sum : pool + held) + bound(extra, 0, 1e20);
        uint256 topUp = total - pool - held;
        _mint(poster, topUp);
        vm.prank(poster);
        token.approve(address(rewards), topUp);
        _call(
            "postRoot",
            address(rewards),
            poster,
            abi.encodeCall(AttributionRewards.postEpochRoot, (epoch, root, total)),
            ""
        );
        ghostReleased += pool;
        ghostToppedUp += topUp;
        require(payments.dataPool(epoch) == 0, "pool released");
        require(rewards.heldForRepost(epoch) == 0, "held funds used");
        require(ghostClaimed[epoch] == 0, "a vetoed root had claims");
        if (!_everPosted[epoch]) {
            _everPosted[epoch] = true;
            _postedEpochs.push(epoch);
        }
    }

    /// Claims a leaf of a posted epoch: mostly an unclaimed leaf of an epoch open for claims, else
    /// any leaf of any posted epoch; one time in eight with a forged amount, one time in four again
    /// right after a success; then up to two of the next leaves. The outcome is predicted in the contract's order of checks, so
    /// a repeated claim must fail with AlreadyClaimed.
    function claim(uint256 epochSeed, uint256 leafSeed, uint256 forgeSeed) external atTime {
        if (_postedEpochs.length == 0) return;
        uint64 epoch = _pickEpoch(epochSeed, epochSeed % 4 == 0 ? Want.Any : Want.Claimable);
        uint256 n = _rewards[epoch].length;
        uint256 i = n == 0 ? 0 : leafSeed % n;
        for (uint256 k = 0; epochSeed % 4 != 0 && k < n; ++k) {
            if (claimCount[epoch][_rewards[epoch][(leafSeed % n + k) % n].index] == 0) {
                i = (leafSeed % n + k) % n;
                break;
            }
        }
        bool forged = forgeSeed % 8 == 0;
        if (_claim(epoch, i, forged) && forgeSeed % 4 == 1) _claim(epoch, i, false);
        // Up to two more leaves of the same epoch, in order.
        for (uint256 k = 1; k <= (forgeSeed >> 8) % 3 && k < n; ++k) {
            _claim(epoch, (i + k) % n, false);
        }
    }

    /// Claims leaf `i` of `epoch` (a dummy leaf where the epoch has none); true if it was paid.
    function _claim(uint64 epoch, uint256 i, bool forged) internal returns (bool) {
        AttributionRewards.Epoch memory e = rewards.getEpoch(epoch);
        Reward memory leaf;
        bytes32[] memory proof;
        if (_rewards[epoch].length != 0) {
            leaf = _rewards[epoch][i];
            proof = Merkle.proof(_leaves(epoch), i);
        }
        uint256 amount = forged ? leaf.amount + 1 : leaf.amount;

        bytes memory expected;
        uint256 opens = uint256(e.postedAt) + rewards.challengeWindow();
        uint256 expires = opens + rewards.claimPeriod();
        if (e.root == bytes32(0)) {
            expected = abi.encodeWithSelector(AttributionRewards.UnknownEpoch.selector, epoch);
        } else if (time < opens) {
            expected = abi.encodeWithSelector(AttributionRewards.ChallengeWindowOpen.selector, epoch, opens);
        } else if (time >= expires) {
            expected = abi.encodeWithSelector(AttributionRewards.ClaimPeriodOver.selector, epoch, expires);
        } else if (claimCount[epoch][leaf.index] != 0) {
            expected = abi.encodeWithSelector(AttributionRewards.AlreadyClaimed.selector, epoch, leaf.index);
        } else if (forged) {
            expected = abi.encodeWithSelector(AttributionRewards.InvalidProof.selector, epoch, leaf.index);
        } else if (e.claimed + amount > e.total) {
            expected =
                abi.encodeWithSelector(AttributionRewards.EpochOverdrawn.selector, epoch, e.total, e.claimed + amount);
        }

        uint256 before = token.balanceOf(leaf.account);
        _call(
            "claim",
            address(rewards),
            address(this),
            abi.encodeCall(AttributionRewards.claim, (epoch, leaf.index, leaf.account, amount, proof)),
            expected
        );
        if (expected.length != 0) return false;
        claimCount[epoch][leaf.index] += 1;
        ghostClaimed[epoch] += amount;
        ghostClaimedOut += amount;
        require(token.balanceOf(leaf.account) == before + amount, "claimed amount");
        return true;
    }

    /// Vetoes a posted root (guardian), half the time one still in its challenge window (the only time a
    /// veto succeeds); its funds are then held for the re-post.
    function veto(uint256 epochSeed) external atTime {
        if (_postedEpochs.length == 0) return;
        uint64 epoch = _pickEpoch(epochSeed, epochSeed % 2 == 0 ? Want.Any : Want.Vetoable);
        AttributionRewards.Epoch memory e = rewards.getEpoch(epoch);
        bytes memory expected;
        if (e.root == bytes32(0)) {
            expected = abi.encodeWithSelector(AttributionRewards.UnknownEpoch.selector, epoch);
        } else if (time >= uint256(e.postedAt) + rewards.challengeWindow()) {
            expected = abi.encodeWithSelector(AttributionRewards.ChallengeWindowClosed.selector, epoch);
        }
        _call("veto", address(rewards), guardian, abi.encodeCall(AttributionRewards.vetoEpochRoot, (epoch)), expected);
        if (expected.length != 0) return;
        require(rewards.heldForRepost(epoch) == e.total, "vetoed funds held");
        require(e.claimed == 0, "a vetoed root had claims");
        delete _rewards[epoch];
    }

    /// Sweeps what an expired epoch left unclaimed to the unclaimed-rewards recipient (anyone),
    /// mostly an epoch that is expired and not yet swept.
    function sweep(uint256 epochSeed) external atTime {
        if (_postedEpochs.length == 0) return;
        uint64 epoch = _pickEpoch(epochSeed, epochSeed % 4 == 0 ? Want.Any : Want.Sweepable);
        AttributionRewards.Epoch memory e = rewards.getEpoch(epoch);
        uint256 expires = uint256(e.postedAt) + rewards.challengeWindow() + rewards.claimPeriod();
        bytes memory expected;
        if (e.root == bytes32(0)) {
            expected = abi.encodeWithSelector(AttributionRewards.UnknownEpoch.selector, epoch);
        } else if (e.swept) {
            expected = abi.encodeWithSelector(AttributionRewards.AlreadySwept.selector, epoch);
        } else if (time < expires) {
            expected = abi.encodeWithSelector(AttributionRewards.ClaimPeriodOpen.selector, epoch, expires);
        }
        uint256 before = token.balanceOf(sink);
        _call(
            "sweep",
            address(rewards),
            address(this),
            abi.encodeCall(AttributionRewards.sweepUnclaimed, (epoch)),
            expected
        );
        if (expected.length != 0) return;
        ghostSweptOut += e.total - e.claimed;
        require(token.balanceOf(sink) == before + e.total - e.claimed, "swept amount");
    }

    /// The guardian pauses payments or claims; while paused they revert (withdrawals go on), the
    /// guardian cannot unpause, the admin does.
    function pauseBriefly(bool claims, uint256 seed) external atTime {
        address target = claims ? address(rewards) : address(payments);
        _call("pause", target, guardian, abi.encodeWithSignature("pause()"), "");
        bytes memory paused = abi.encodeWithSelector(Pausable.EnforcedPause.selector);
        if (claims && _postedEpochs.length != 0) {
            uint64 epoch = _postedEpochs[seed % _postedEpochs.length];
            if (_rewards[epoch].length != 0) {
                Reward memory leaf = _rewards[epoch][0];
                bytes32[] memory proof = Merkle.proof(_leaves(epoch), 0);
                _call(
                    "claim",
                    address(rewards),
                    address(this),
                    abi.encodeCall(AttributionRewards.claim, (epoch, leaf.index, leaf.account, leaf.amount, proof)),
                    paused
                );
            }
        }
        if (!claims && _modelIds.length != 0) {
            bytes32 id = _modelIds[seed % _modelIds.length];
            (, uint256 fee) = models.serving(id);
            address payer = _person(seed);
            (InferencePayments.AttributionReceipt memory r, bytes memory signature) = _signedReceipt(payer, id, fee);
            _call(
                "pay",
                address(payments),
                payer,
                abi.encodeCall(InferencePayments.payForInference, (r, signature)),
                paused
            );
            address who = _account(seed >> 8);
            uint256 credit = payments.withdrawable(who);
            if (credit != 0) {
                _call("withdraw", address(payments), who, abi.encodeCall(InferencePayments.withdraw, ()), "");
                ghostWithdrawn += credit;
            }
        }
        bytes32 adminRole = payments.DEFAULT_ADMIN_ROLE();
        _call(
            "unpause",
            target,
            guardian,
            abi.encodeWithSignature("unpause()"),
            abi.encodeWithSelector(IAccessControl.AccessControlUnauthorizedAccount.selector, guardian, adminRole)
        );
        _call("unpause", target, admin, abi.encodeWithSignature("unpause()"), "");
    }
}
