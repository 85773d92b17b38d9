// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControlDefaultAdminRules} from
    "@openzeppelin/contracts/access/extensions/AccessControlDefaultAdminRules.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {BitMaps} from "@openzeppelin/contracts/utils/structs/BitMaps.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {InferencePayments} from "./InferencePayments.sol";

/// @title AttributionRewards
/// @notice Each epoch a poster commits the Merkle root of what every contributor earned (OpenZeppelin
/// standard leaves over `(uint256 index, address account, uint256 amount)`), funded by the epoch's
/// data pool plus any top-up from the poster; contributors then claim with a proof, once each.
///
/// A root is not final when posted: for `challengeWindow` seconds a guardian may veto it (the
/// epoch's funds stay here for a corrected root), so a compromised poster cannot pay itself at
/// once. Claims open when the window closes and last `claimPeriod` seconds; what is left unclaimed
/// after that can be swept to `unclaimedRecipient`. The guardian can pause claims; the admin role
/// moves only after a delay (OpenZeppelin's `AccessControlDefaultAdminRules`).
contract AttributionRewards is AccessControlDefaultAdminRules, Pausable, ReentrancyGuard {
    using SafeERC20 for IERC20;
    using BitMaps for BitMaps.BitMap;

    /// @notice A committed epoch.
    struct Epoch {
        bytes32 root;
        uint256 total;
        uint256 claimed;
        uint64 postedAt;
        bool swept;
    }

    /// @notice Role allowed to commit epoch roots.
    bytes32 public constant POSTER_ROLE = keccak256("POSTER_ROLE");
    /// @notice Role allowed to veto roots in their challenge window and to pause claims.
    bytes32 public constant GUARDIAN_ROLE = keccak256("GUARDIAN_ROLE");

    /// @notice The reward token.
    IERC20 public immutable token;
    /// @notice The payments contract whose data pool funds epochs (zero: top-ups only).
    InferencePayments public immutable payments;
    /// @notice Seconds after a root is posted during which a guardian may veto it; claims wait.
    uint64 public immutable challengeWindow;
    /// @notice Seconds, from the end of the challenge window, during which rewards can be claimed.
    uint64 public immutable claimPeriod;
    /// @notice Where an expired epoch's unclaimed rewards are swept.
    address public immutable unclaimedRecipient;

    mapping(uint64 epoch => Epoch) private _epochs;
    /// @notice Funds of a vetoed root, kept for the epoch's next root.
    mapping(uint64 epoch => uint256) public heldForRepost;
    mapping(uint64 epoch => BitMaps.BitMap) private _claimed;

    /// @notice An epoch's root was committed, funded `fromPool` by the data pool and `topUp` by the poster.
    /// Funds held from a vetoed root make up `total - fromPool - topUp`; claims open
    /// `challengeWindow` seconds after the block that posted it (`claimableAt`).
    event EpochPosted(uint64 indexed epoch, bytes32 root, uint256 total, uint256 fromPool, uint256 topUp);
    /// @notice A guardian vetoed an epoch's root in its challenge window; `held` waits for a new root.
    event EpochVetoed(uint64 indexed epoch, bytes32 root, address indexed guardian, uint256 held);
    /// @notice An expired epoch's unclaimed rewards were swept.
    event UnclaimedSwept(uint64 indexed epoch, address indexed to, uint256 amount);
    /// @notice A contributor's reward was paid out.
    event Claimed(uint64 indexed epoch, uint256 indexed index, address indexed account, uint256 amount);

    /// @notice The epoch already has a root.
    error EpochAlreadyPosted(uint64 epoch);
    /// @notice No root was committed for this epoch.
    error UnknownEpoch(uint64 epoch);
    /// @notice The zero root is not a commitment.
    error ZeroRoot();
    /// @notice The posted total is less than the epoch's data pool, which must all be distributed.
    error TotalBelowPool(uint256 total, uint256 pool);
    /// @notice This leaf was already claimed.
    error AlreadyClaimed(uint64 epoch, uint256 index);
    /// @notice The proof does not lead to the epoch's root.
    error InvalidProof(uint64 epoch, uint256 index);
    /// @notice Claims would exceed what the epoch was funded with.
    error EpochOverdrawn(uint64 epoch, uint256 total, uint256 claimed);
    /// @notice The root is still in its challenge window; claims open at `claimableAt`.
    error ChallengeWindowOpen(uint64 epoch, uint64 claimableAt);
    /// @notice The challenge window is over; the root can no longer be vetoed.
    error ChallengeWindowClosed(uint64 epoch);
    /// @notice The claim period ended at `expiredAt`.
    error ClaimPeriodOver(uint64 epoch, uint64 expiredAt);
    /// @notice The claim period runs until `expiresAt`; nothing can be swept before.
    error ClaimPeriodOpen(uint64 epoch, uint64 expiresAt);
    /// @notice The epoch's unclaimed rewards were already swept.
    error AlreadySwept(uint64 epoch);
    /// @notice A zero claim period or unclaimed-rewards recipient, or a window and period
    /// together over 2^63 seconds.
    error InvalidConfig();

    constructor(
        IERC20 token_,
        InferencePayments payments_,
        address admin,
        uint48 adminDelay,
        address poster,
        address guardian,
        uint64 challengeWindow_,
        uint64 claimPeriod_,
        address unclaimedRecipient_
    ) AccessControlDefaultAdminRules(adminDelay, admin) {
        // Bounded so that a root's times (posted + window + period) never overflow 64 bits.
        if (
            claimPeriod_ == 0 || uint256(challengeWindow_) + claimPeriod_ > type(uint64).max / 2
                || unclaimedRecipient_ == address(0)
        ) revert InvalidConfig();
        token = token_;
        payments = payments_;
        challengeWindow = challengeWindow_;
        claimPeriod = claimPeriod_;
        unclaimedRecipient = unclaimedRecipient_;
        _grantRole(POSTER_ROLE, poster);
        _grantRole(GUARDIAN_ROLE, guardian);
    }

    /// @notice Commits `root` for a closed `epoch` whose leaves sum to `total`: takes the epoch's data
    /// pool from the payments contract (and any funds held from a vetoed root) and pulls the rest
    /// from the poster. Claims open `challengeWindow` seconds later.
    function postEpochRoot(uint64 epoch, bytes32 root, uint256 total) external nonReentrant onlyRole(POSTER_ROLE) {
        if (root == bytes32(0)) revert ZeroRoot();
        if (_epochs[epoch].root != bytes32(0)) revert EpochAlreadyPosted(epoch);
        uint256 fromPool = address(payments) == address(0) ? 0 : payments.releaseDataPool(epoch);
        uint256 held = heldForRepost[epoch];
        if (total < fromPool + held) revert TotalBelowPool(total, fromPool + held);
        uint256 topUp = total - fromPool - held;
        heldForRepost[epoch] = 0;
        _epochs[epoch] =
            Epoch({root: root, total: total, claimed: 0, postedAt: uint64(block.timestamp), swept: false});
        if (topUp != 0) token.safeTransferFrom(msg.sender, address(this), topUp);
        emit EpochPosted(epoch, root, total, fromPool, topUp);
    }

    /// @notice Vetoes an epoch's root during its challenge window (guardian); the epoch's funds are
    /// held for the next root the poster commits.
    function vetoEpochRoot(uint64 epoch) external onlyRole(GUARDIAN_ROLE) {
        Epoch memory e = _epochs[epoch];
        if (e.root == bytes32(0)) revert UnknownEpoch(epoch);
        if (block.timestamp >= uint256(e.postedAt) + challengeWindow) revert ChallengeWindowClosed(epoch);
        heldForRepost[epoch] = e.total;
        delete _epochs[epoch];
        emit EpochVetoed(epoch, e.root, msg.sender, e.total);
    }

    /// @notice Sends what an expired epoch left unclaimed to `unclaimedRecipient` (anyone may call).
    function sweepUnclaimed(uint64 epoch) external nonReentrant returns (uint256 amount) {
        Epoch storage e = _epochs[epoch];
        if (e.root == bytes32(0)) revert UnknownEpoch(epoch);
        if (e.swept) revert AlreadySwept(epoch);
        uint64 expiresAt = _expiresAt(e);
        if (block.timestamp < expiresAt) revert ClaimPeriodOpen(epoch, expiresAt);
        e.swept = true;
        amount = e.total - e.claimed;
        if (amount != 0) token.safeTransfer(unclaimedRecipient, amount);
        emit UnclaimedSwept(epoch, unclaimedRecipient, amount);
    }

    /// @notice Stops claims (guardian).
    function pause() external onlyRole(GUARDIAN_ROLE) {
        _pause();
    }

    /// @notice Resumes claims (admin).
    function unpause() external onlyRole(DEFAULT_ADMIN_ROLE) {
        _unpause();
    }

    /// @notice When claims of a posted epoch open (zero if no root is posted).
    function claimableAt(uint64 epoch) public view returns (uint64) {
        Epoch storage e = _epochs[epoch];
        return e.root == bytes32(0) ? 0 : e.postedAt + challengeWindow;
    }

    function _expiresAt(Epoch storage e) private view returns (uint64) {
        return e.postedAt + challengeWindow + claimPeriod;
    }

    /// @notice Pays `amount` to `account` for leaf `index` of `epoch` (anyone may submit it).
    function claim(uint64 epoch, uint256 index, address account, uint256 amount, bytes32[] calldata proof)
        external
        nonReentrant
        whenNotPaused
    {
        Epoch storage e = _epochs[epoch];
        if (e.root == bytes32(0)) revert UnknownEpoch(epoch);
        uint64 opens = e.postedAt + challengeWindow;
        if (block.timestamp < opens) revert ChallengeWindowOpen(epoch, opens);
        uint64 expiresAt = opens + claimPeriod;
        if (block.timestamp >= expiresAt) revert ClaimPeriodOver(epoch, expiresAt);
        if (_claimed[epoch].get(index)) revert AlreadyClaimed(epoch, index);
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(index, account, amount))));
        if (!MerkleProof.verifyCalldata(proof, e.root, leaf)) revert InvalidProof(epoch, index);
        uint256 claimed = e.claimed + amount;
        if (claimed > e.total) revert EpochOverdrawn(epoch, e.total, claimed);
        e.claimed = claimed;
        _claimed[epoch].set(index);
        token.safeTransfer(account, amount);
        emit Claimed(epoch, index, account, amount);
    }

    /// @notice Whether leaf `index` of `epoch` was claimed.
    function isClaimed(uint64 epoch, uint256 index) external view returns (bool) {
        return _claimed[epoch].get(index);
    }

    /// @notice A committed epoch (zero root if none).
    function getEpoch(uint64 epoch) external view returns (Epoch memory) {
        return _epochs[epoch];
    }
}
