// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControlDefaultAdminRules} from
    "@openzeppelin/contracts/access/extensions/AccessControlDefaultAdminRules.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {ModelRegistry} from "./ModelRegistry.sol";

/// @title InferencePayments
/// @notice Pays for one inference in the OPEN token and splits the fee, to the wei, between the
/// model's owner, the protocol treasury and the data pool of the current epoch. Every payment
/// carries an EIP-712 attribution receipt signed by the operator that served the inference.
/// @dev Split: protocol = floor(amount * protocolBps / 10000), data = floor(amount * dataPoolBps /
/// 10000), owner = amount - protocol - data. The model owner therefore receives the rounding
/// remainder, so the three parts always sum exactly to the amount. Shares are credited and pulled
/// with `withdraw`; the data pool of a closed epoch is released to the rewards contract.
///
/// Guarding the money: the admin role moves only after a delay (OpenZeppelin's
/// `AccessControlDefaultAdminRules`), and a new split or treasury takes effect only that same delay
/// after it was proposed, in public; a guardian can pause payments (credited shares stay
/// withdrawable); a token that delivers less than the fee (fee-on-transfer) is refused.
contract InferencePayments is AccessControlDefaultAdminRules, EIP712, Pausable, ReentrancyGuard {
    using SafeERC20 for IERC20;

    /// @notice What the serving operator signs for each inference.
    struct AttributionReceipt {
        bytes32 inferenceId;
        bytes32 modelId;
        bytes32[] adapterIds;
        address payer;
        uint256 amount;
        uint64 epoch;
        bytes32 weightsHash;
    }

    /// @notice What the serving operator signs for an inference served by an ensemble of models
    /// (adapters served together with weights): each model's owner is paid its share.
    struct EnsembleReceipt {
        bytes32 inferenceId;
        bytes32[] modelIds;
        uint256[] shares;
        address payer;
        uint256 amount;
        uint64 epoch;
        bytes32 weightsHash;
    }

    /// @notice Role of the operators whose receipts are accepted.
    bytes32 public constant OPERATOR_ROLE = keccak256("OPERATOR_ROLE");
    /// @notice Role allowed to take the data pool of a closed epoch (the rewards contract).
    bytes32 public constant POOL_ROLE = keccak256("POOL_ROLE");
    /// @notice Role allowed to pause payments (the admin unpauses).
    bytes32 public constant GUARDIAN_ROLE = keccak256("GUARDIAN_ROLE");
    /// @notice EIP-712 type hash of `AttributionReceipt`.
    bytes32 public constant RECEIPT_TYPEHASH = keccak256(
        "AttributionReceipt(bytes32 inferenceId,bytes32 modelId,bytes32[] adapterIds,address payer,uint256 amount,uint64 epoch,bytes32 weightsHash)"
    );
    /// @notice EIP-712 type hash of `EnsembleReceipt`.
    bytes32 public constant ENSEMBLE_RECEIPT_TYPEHASH = keccak256(
        "EnsembleReceipt(bytes32 inferenceId,bytes32[] modelIds,uint256[] shares,address payer,uint256 amount,uint64 epoch,bytes32 weightsHash)"
    );
    /// @notice Most models one ensemble payment may name.
    uint256 public constant MAX_ENSEMBLE = 16;
    /// @notice Basis points in a whole.
    uint256 public constant BPS = 10_000;

    /// @notice The token fees are paid in.
    IERC20 public immutable token;
    /// @notice Where model owners and fees are looked up.
    ModelRegistry public immutable models;
    /// @notice Start of epoch 0 (unix seconds).
    uint64 public immutable genesisTime;
    /// @notice Length of an epoch in seconds.
    uint64 public immutable epochDuration;

    /// @notice Receiver of the protocol share.
    address public treasury;
    /// @notice Protocol share in basis points.
    uint16 public protocolBps;
    /// @notice Data pool share in basis points.
    uint16 public dataPoolBps;

    /// @notice A proposed split, applicable from `effectiveAt` (zero: none pending).
    struct PendingSplit {
        address treasury;
        uint16 protocolBps;
        uint16 dataPoolBps;
        uint64 effectiveAt;
    }

    /// @notice The split change waiting for its delay to pass.
    PendingSplit public pendingSplit;

    /// @notice Whether an inference id was already paid.
    mapping(bytes32 inferenceId => bool) public paid;
    /// @notice Credited, not yet withdrawn shares.
    mapping(address account => uint256) public withdrawable;
    /// @notice Data pool accumulated in each epoch, until released.
    mapping(uint64 epoch => uint256) public dataPool;

    /// @notice An inference was paid and its fee split.
    event InferencePaid(
        bytes32 indexed inferenceId,
        bytes32 indexed modelId,
        address indexed payer,
        address operator,
        uint64 epoch,
        uint256 amount,
        uint256 ownerShare,
        uint256 protocolShare,
        uint256 dataShare,
        bytes32 weightsHash,
        bytes32[] adapterIds
    );
    /// @notice An inference served by an ensemble was paid; `ownerShares[i]` went to the owner of
    /// `modelIds[i]`.
    event EnsemblePaid(
        bytes32 indexed inferenceId,
        address indexed payer,
        address operator,
        uint64 epoch,
        uint256 amount,
        bytes32[] modelIds,
        uint256[] ownerShares,
        uint256 protocolShare,
        uint256 dataShare,
        bytes32 weightsHash
    );
    /// @notice Credited shares were withdrawn.
    event Withdrawn(address indexed account, uint256 amount);
    /// @notice An epoch's data pool was handed to `to`.
    event DataPoolReleased(uint64 indexed epoch, address indexed to, uint256 amount);
    /// @notice The split or treasury changed.
    event SplitUpdated(address treasury, uint16 protocolBps, uint16 dataPoolBps);
    /// @notice A split change was proposed; it may be applied from `effectiveAt`.
    event SplitProposed(address treasury, uint16 protocolBps, uint16 dataPoolBps, uint64 effectiveAt);
    /// @notice The pending split change was withdrawn.
    event SplitCancelled();

    /// @notice This inference id was already paid.
    error InferenceAlreadyPaid(bytes32 inferenceId);
    /// @notice The receipt names another payer than the caller.
    error PayerMismatch(address receiptPayer, address caller);
    /// @notice The receipt's amount is not the model's fee.
    error FeeMismatch(uint256 expected, uint256 found);
    /// @notice The receipt is for another epoch than the current one.
    error WrongEpoch(uint64 expected, uint64 found);
    /// @notice The receipt was not signed by an operator (`signer` is who did sign, or zero).
    error InvalidReceiptSignature(address signer);
    /// @notice An ensemble names no model, more than `MAX_ENSEMBLE`, or not one share per model.
    error InvalidEnsemble(uint256 models, uint256 shares);
    /// @notice A model of an ensemble has a zero share.
    error ZeroShare(uint256 index);
    /// @notice An ensemble names the same model twice.
    error DuplicateModel(bytes32 modelId);
    /// @notice Nothing to withdraw.
    error NothingToWithdraw(address account);
    /// @notice The epoch is still open.
    error EpochNotClosed(uint64 epoch, uint64 current);
    /// @notice Shares over 100 %, or a zero treasury or epoch length.
    error InvalidConfig();
    /// @notice No split change is pending.
    error NoPendingSplit();
    /// @notice The pending split change may only be applied from `effectiveAt`.
    error SplitNotReady(uint64 effectiveAt);
    /// @notice The token delivered `received` instead of the fee `expected` (fee-on-transfer
    /// tokens are not accepted).
    error FeeOnTransferToken(uint256 expected, uint256 received);

    constructor(
        IERC20 token_,
        ModelRegistry models_,
        address admin,
        uint48 adminDelay,
        address guardian,
        address treasury_,
        uint16 protocolBps_,
        uint16 dataPoolBps_,
        uint64 epochDuration_
    ) AccessControlDefaultAdminRules(adminDelay, admin) EIP712("OpenLedger InferencePayments", "1") {
        if (epochDuration_ == 0) revert InvalidConfig();
        token = token_;
        models = models_;
        genesisTime = uint64(block.timestamp);
        epochDuration = epochDuration_;
        _grantRole(GUARDIAN_ROLE, guardian);
        _setSplit(treasury_, protocolBps_, dataPoolBps_);
    }

    /// @notice The epoch the chain is in now.
    function currentEpoch() public view returns (uint64) {
        return uint64((block.timestamp - genesisTime) / epochDuration);
    }

    /// @notice EIP-712 struct hash of a receipt.
    function receiptStructHash(AttributionReceipt calldata r) public pure returns (bytes32) {
        return keccak256(
            abi.encode(
                RECEIPT_TYPEHASH,
                r.inferenceId,
                r.modelId,
                keccak256(abi.encodePacked(r.adapterIds)),
                r.payer,
                r.amount,
                r.epoch,
                r.weightsHash
            )
        );
    }

    /// @notice The digest an operator signs for a receipt (EIP-712, this contract's domain).
    function receiptDigest(AttributionReceipt calldata r) public view returns (bytes32) {
        return _hashTypedDataV4(receiptStructHash(r));
    }

    /// @notice EIP-712 struct hash of an ensemble receipt.
    function ensembleReceiptStructHash(EnsembleReceipt calldata r) public pure returns (bytes32) {
        return keccak256(
            abi.encode(
                ENSEMBLE_RECEIPT_TYPEHASH,
                r.inferenceId,
                keccak256(abi.encodePacked(r.modelIds)),
                keccak256(abi.encodePacked(r.shares)),
                r.payer,
                r.amount,
                r.epoch,
                r.weightsHash
            )
        );
    }

    /// @notice The digest an operator signs for an ensemble receipt.
    function ensembleReceiptDigest(EnsembleReceipt calldata r) public view returns (bytes32) {
        return _hashTypedDataV4(ensembleReceiptStructHash(r));
    }

    /// @notice The fee of an ensemble, `⌊Σᵢ feeᵢ·sharesᵢ / Σ shares⌋` (the share-weighted mean of
    /// its models' fees, rounded down: equal fees give that fee), and its models' owners.
    /// Reverts on an invalid ensemble, a model that is not serving, or a sum past 2²⁵⁶.
    function ensembleFee(bytes32[] calldata modelIds, uint256[] calldata shares)
        public
        view
        returns (uint256 fee, address[] memory owners)
    {
        uint256 n = modelIds.length;
        if (n == 0 || n > MAX_ENSEMBLE || shares.length != n) revert InvalidEnsemble(n, shares.length);
        uint256 total;
        for (uint256 i = 0; i < n; ++i) {
            if (shares[i] == 0) revert ZeroShare(i);
            for (uint256 j = 0; j < i; ++j) {
                if (modelIds[j] == modelIds[i]) revert DuplicateModel(modelIds[i]);
            }
            total += shares[i];
        }
        owners = new address[](n);
        uint256 weighted;
        for (uint256 i = 0; i < n; ++i) {
            uint256 modelFee;
            (owners[i], modelFee) = models.serving(modelIds[i]);
            weighted += modelFee * shares[i];
        }
        fee = weighted / total;
    }

    /// @notice The owners' part of an ensemble fee split by share: model `i > 0` gets
    /// `⌊ownerShare·sharesᵢ / Σ shares⌋`, the first model the rest (the rounding remainder), so
    /// the parts sum to `ownerShare`.
    function ensembleOwnerShares(uint256 ownerShare, uint256[] calldata shares)
        public
        pure
        returns (uint256[] memory parts)
    {
        uint256 total;
        for (uint256 i = 0; i < shares.length; ++i) {
            total += shares[i];
        }
        parts = new uint256[](shares.length);
        uint256 rest = ownerShare;
        for (uint256 i = 1; i < shares.length; ++i) {
            parts[i] = Math.mulDiv(ownerShare, shares[i], total);
            rest -= parts[i];
        }
        if (shares.length > 0) parts[0] = rest;
    }

    /// @notice The three shares of `amount` under the current split (they sum to `amount`).
    function split(uint256 amount) public view returns (uint256 ownerShare, uint256 protocolShare, uint256 dataShare) {
        protocolShare = Math.mulDiv(amount, protocolBps, BPS);
        dataShare = Math.mulDiv(amount, dataPoolBps, BPS);
        ownerShare = amount - protocolShare - dataShare;
    }

    /// @notice Pays for the inference described by `receipt` (signed by an operator): pulls the
    /// model's fee from the caller and credits the owner, the treasury and the epoch's data pool.
    function payForInference(AttributionReceipt calldata receipt, bytes calldata signature)
        external
        nonReentrant
        whenNotPaused
    {
        if (paid[receipt.inferenceId]) revert InferenceAlreadyPaid(receipt.inferenceId);
        if (receipt.payer != msg.sender) revert PayerMismatch(receipt.payer, msg.sender);
        uint64 epoch = currentEpoch();
        if (receipt.epoch != epoch) revert WrongEpoch(epoch, receipt.epoch);
        (address owner, uint256 fee) = models.serving(receipt.modelId);
        if (receipt.amount != fee) revert FeeMismatch(fee, receipt.amount);
        for (uint256 i = 0; i < receipt.adapterIds.length; ++i) {
            models.serving(receipt.adapterIds[i]);
        }
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(receiptDigest(receipt), signature);
        if (err != ECDSA.RecoverError.NoError || !hasRole(OPERATOR_ROLE, signer)) {
            revert InvalidReceiptSignature(signer);
        }

        paid[receipt.inferenceId] = true;
        (uint256 ownerShare, uint256 protocolShare, uint256 dataShare) = split(fee);
        withdrawable[owner] += ownerShare;
        withdrawable[treasury] += protocolShare;
        dataPool[epoch] += dataShare;

        uint256 before = token.balanceOf(address(this));
        token.safeTransferFrom(msg.sender, address(this), fee);
        uint256 received = token.balanceOf(address(this)) - before;
        if (received != fee) revert FeeOnTransferToken(fee, received);
        _emitPaid(receipt, signer, ownerShare, protocolShare, dataShare);
    }

    /// @notice Pays for an inference served by an ensemble of models (`receipt`, signed by an
    /// operator): pulls the ensemble's fee (`ensembleFee`) from the caller, splits it as
    /// `split` does, and credits the owners' part to the models' owners by share
    /// (`ensembleOwnerShares`), the protocol share to the treasury and the data share to the
    /// epoch's pool. The receipt commits to the models and their shares.
    function payForEnsemble(EnsembleReceipt calldata receipt, bytes calldata signature)
        external
        nonReentrant
        whenNotPaused
    {
        if (paid[receipt.inferenceId]) revert InferenceAlreadyPaid(receipt.inferenceId);
        if (receipt.payer != msg.sender) revert PayerMismatch(receipt.payer, msg.sender);
        uint64 epoch = currentEpoch();
        if (receipt.epoch != epoch) revert WrongEpoch(epoch, receipt.epoch);
        (uint256 fee, address[] memory owners) = ensembleFee(receipt.modelIds, receipt.shares);
        if (receipt.amount != fee) revert FeeMismatch(fee, receipt.amount);
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(ensembleReceiptDigest(receipt), signature);
        if (err != ECDSA.RecoverError.NoError || !hasRole(OPERATOR_ROLE, signer)) {
            revert InvalidReceiptSignature(signer);
        }

        paid[receipt.inferenceId] = true;
        _creditEnsemble(receipt, signer, owners, fee);

        uint256 before = token.balanceOf(address(this));
        token.safeTransferFrom(msg.sender, address(this), fee);
        uint256 received = token.balanceOf(address(this)) - before;
        if (received != fee) revert FeeOnTransferToken(fee, received);
    }

    /// @dev Credits an ensemble's fee: the owners by share, the treasury, the epoch's pool.
    function _creditEnsemble(EnsembleReceipt calldata r, address signer, address[] memory owners, uint256 fee)
        private
    {
        (uint256 ownerShare, uint256 protocolShare, uint256 dataShare) = split(fee);
        uint256[] memory parts = ensembleOwnerShares(ownerShare, r.shares);
        for (uint256 i = 0; i < owners.length; ++i) {
            withdrawable[owners[i]] += parts[i];
        }
        withdrawable[treasury] += protocolShare;
        dataPool[r.epoch] += dataShare;
        _emitEnsemblePaid(r, signer, parts, protocolShare, dataShare);
    }

    function _emitEnsemblePaid(
        EnsembleReceipt calldata r,
        address signer,
        uint256[] memory parts,
        uint256 protocolShare,
        uint256 dataShare
    ) private {
        bytes32[] memory ids = r.modelIds;
        emit EnsemblePaid(
            r.inferenceId, r.payer, signer, r.epoch, r.amount, ids, parts, protocolShare, dataShare, r.weightsHash
        );
    }

    function _emitPaid(
        AttributionReceipt calldata r,
        address signer,
        uint256 ownerShare,
        uint256 protocolShare,
        uint256 dataShare
    ) private {
        emit InferencePaid(
            r.inferenceId,
            r.modelId,
            r.payer,
            signer,
            r.epoch,
            r.amount,
            ownerShare,
            protocolShare,
            dataShare,
            r.weightsHash,
            r.adapterIds
        );
    }

    /// @notice Sends the caller everything credited to them.
    function withdraw() external nonReentrant returns (uint256 amount) {
        amount = withdrawable[msg.sender];
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        withdrawable[msg.sender] = 0;
        token.safeTransfer(msg.sender, amount);
        emit Withdrawn(msg.sender, amount);
    }

    /// @notice Hands the data pool of a closed epoch to the caller (the rewards contract).
    function releaseDataPool(uint64 epoch) external nonReentrant onlyRole(POOL_ROLE) returns (uint256 amount) {
        uint64 current = currentEpoch();
        if (epoch >= current) revert EpochNotClosed(epoch, current);
        amount = dataPool[epoch];
        dataPool[epoch] = 0;
        if (amount != 0) token.safeTransfer(msg.sender, amount);
        emit DataPoolReleased(epoch, msg.sender, amount);
    }

    /// @notice Proposes a new treasury and split (admin only), applicable `defaultAdminDelay()`
    /// seconds from now; replaces any pending proposal.
    function proposeSplit(address treasury_, uint16 protocolBps_, uint16 dataPoolBps_)
        external
        onlyRole(DEFAULT_ADMIN_ROLE)
    {
        if (treasury_ == address(0) || uint256(protocolBps_) + dataPoolBps_ > BPS) revert InvalidConfig();
        uint64 effectiveAt = uint64(block.timestamp) + defaultAdminDelay();
        pendingSplit = PendingSplit(treasury_, protocolBps_, dataPoolBps_, effectiveAt);
        emit SplitProposed(treasury_, protocolBps_, dataPoolBps_, effectiveAt);
    }

    /// @notice Applies the pending split once its delay has passed (anyone may call it).
    function applySplit() external {
        PendingSplit memory p = pendingSplit;
        if (p.effectiveAt == 0) revert NoPendingSplit();
        if (block.timestamp < p.effectiveAt) revert SplitNotReady(p.effectiveAt);
        delete pendingSplit;
        _setSplit(p.treasury, p.protocolBps, p.dataPoolBps);
    }

    /// @notice Withdraws the pending split change (admin only).
    function cancelSplit() external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (pendingSplit.effectiveAt == 0) revert NoPendingSplit();
        delete pendingSplit;
        emit SplitCancelled();
    }

    /// @notice Stops payments (guardian); withdrawals and the release of closed epochs go on.
    function pause() external onlyRole(GUARDIAN_ROLE) {
        _pause();
    }

    /// @notice Resumes payments (admin).
    function unpause() external onlyRole(DEFAULT_ADMIN_ROLE) {
        _unpause();
    }

    function _setSplit(address treasury_, uint16 protocolBps_, uint16 dataPoolBps_) private {
        if (treasury_ == address(0) || uint256(protocolBps_) + dataPoolBps_ > BPS) revert InvalidConfig();
        treasury = treasury_;
        protocolBps = protocolBps_;
        dataPoolBps = dataPoolBps_;
        emit SplitUpdated(treasury_, protocolBps_, dataPoolBps_);
    }
}
