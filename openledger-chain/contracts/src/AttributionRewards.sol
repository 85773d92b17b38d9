// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {BitMaps} from "@openzeppelin/contracts/utils/structs/BitMaps.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {InferencePayments} from "./InferencePayments.sol";

/// @title AttributionRewards
/// @notice Each epoch a poster commits the Merkle root of what every contributor earned (OpenZeppelin
/// standard leaves over `(uint256 index, address account, uint256 amount)`), funded by the epoch's
/// data pool plus any top-up from the poster; contributors then claim with a proof, once each.
contract AttributionRewards is AccessControl, ReentrancyGuard {
    using SafeERC20 for IERC20;
    using BitMaps for BitMaps.BitMap;

    /// @notice A committed epoch.
    struct Epoch {
        bytes32 root;
        uint256 total;
        uint256 claimed;
    }

    /// @notice Role allowed to commit epoch roots.
    bytes32 public constant POSTER_ROLE = keccak256("POSTER_ROLE");

    /// @notice The reward token.
    IERC20 public immutable token;
    /// @notice The payments contract whose data pool funds epochs (zero: top-ups only).
    InferencePayments public immutable payments;

    mapping(uint64 epoch => Epoch) private _epochs;
    mapping(uint64 epoch => BitMaps.BitMap) private _claimed;

    /// @notice An epoch's root was committed, funded `fromPool` by the data pool and `topUp` by the poster.
    event EpochPosted(uint64 indexed epoch, bytes32 root, uint256 total, uint256 fromPool, uint256 topUp);
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

    constructor(IERC20 token_, InferencePayments payments_, address admin, address poster) {
        token = token_;
        payments = payments_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(POSTER_ROLE, poster);
    }

    /// @notice Commits `root` for a closed `epoch` whose leaves sum to `total`: takes the epoch's data
    /// pool from the payments contract and pulls the rest from the poster.
    function postEpochRoot(uint64 epoch, bytes32 root, uint256 total) external nonReentrant onlyRole(POSTER_ROLE) {
        if (root == bytes32(0)) revert ZeroRoot();
        if (_epochs[epoch].root != bytes32(0)) revert EpochAlreadyPosted(epoch);
        uint256 fromPool = address(payments) == address(0) ? 0 : payments.releaseDataPool(epoch);
        if (total < fromPool) revert TotalBelowPool(total, fromPool);
        uint256 topUp = total - fromPool;
        _epochs[epoch] = Epoch({root: root, total: total, claimed: 0});
        if (topUp != 0) token.safeTransferFrom(msg.sender, address(this), topUp);
        emit EpochPosted(epoch, root, total, fromPool, topUp);
    }

    /// @notice Pays `amount` to `account` for leaf `index` of `epoch` (anyone may submit it).
    function claim(uint64 epoch, uint256 index, address account, uint256 amount, bytes32[] calldata proof)
        external
        nonReentrant
    {
        Epoch storage e = _epochs[epoch];
        if (e.root == bytes32(0)) revert UnknownEpoch(epoch);
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
