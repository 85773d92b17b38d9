// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DatanetRegistry} from "./DatanetRegistry.sol";

/// @title ModelRegistry
/// @notice Models and adapters served for a fee: what they were trained on (datanet versions the
/// owner had access to), the hash of their artifact and of the head of their training log, who
/// owns them and what a call costs.
/// @dev A model's id is derived from its registrant and a salt they choose
/// (`keccak256(abi.encode(registrant, salt))`), so nobody watching the mempool can register an id
/// first and squat it. Ownership moves in two steps (the named successor accepts).
contract ModelRegistry {
    /// @notice One datanet version a model was trained on.
    struct TrainingSource {
        uint256 datanetId;
        uint64 version;
    }

    /// @notice A registered model or adapter.
    struct Model {
        address owner;
        bool active;
        uint64 registeredAt;
        bytes32 baseModel;
        bytes32 artifactHash;
        bytes32 trainingLogHead;
        uint256 feePerCall;
    }

    /// @notice The datanet registry training sources are checked against.
    DatanetRegistry public immutable datanets;

    mapping(bytes32 modelId => Model) private _models;
    mapping(bytes32 modelId => TrainingSource[]) private _sources;
    mapping(bytes32 modelId => address) private _pendingOwners;

    /// @notice A model or adapter was registered.
    event ModelRegistered(
        bytes32 indexed modelId,
        address indexed owner,
        bytes32 indexed baseModel,
        bytes32 artifactHash,
        bytes32 trainingLogHead,
        uint256 feePerCall,
        TrainingSource[] sources
    );
    /// @notice The owner changed the fee per call.
    event FeeUpdated(bytes32 indexed modelId, uint256 oldFee, uint256 newFee);
    /// @notice The owner took the model out of service (for good).
    event ModelDeactivated(bytes32 indexed modelId);
    /// @notice The owner named `pendingOwner` as successor (zero: the offer was withdrawn).
    event ModelOwnershipTransferStarted(bytes32 indexed modelId, address indexed owner, address indexed pendingOwner);
    /// @notice The named successor accepted the model; fees are now credited to them.
    event ModelOwnershipTransferred(bytes32 indexed modelId, address indexed previousOwner, address indexed newOwner);

    /// @notice A model with this id is already registered.
    error ModelAlreadyRegistered(bytes32 modelId);
    /// @notice No model has this id.
    error UnknownModel(bytes32 modelId);
    /// @notice Only the model's owner may do this.
    error NotModelOwner(bytes32 modelId, address caller);
    /// @notice The model was deactivated.
    error ModelInactive(bytes32 modelId);
    /// @notice A training source names a version that was never published.
    error UnknownDatanetVersion(uint256 datanetId, uint64 version);
    /// @notice The registrant was not granted training access to a source datanet.
    error NoTrainingAccess(uint256 datanetId, address account);
    /// @notice Only the successor the owner named may accept the model.
    error NotPendingModelOwner(bytes32 modelId, address caller);

    constructor(DatanetRegistry datanets_) {
        datanets = datanets_;
    }

    modifier onlyModelOwner(bytes32 modelId) {
        Model storage m = _models[modelId];
        if (m.owner == address(0)) revert UnknownModel(modelId);
        if (m.owner != msg.sender) revert NotModelOwner(modelId, msg.sender);
        if (!m.active) revert ModelInactive(modelId);
        _;
    }

    /// @notice The id a model registered by `registrant` with `salt` gets.
    function modelIdFor(address registrant, bytes32 salt) public pure returns (bytes32) {
        return keccak256(abi.encode(registrant, salt));
    }

    /// @notice Registers a model or adapter owned by the caller, who must have training access to
    /// every source datanet; its id is `modelIdFor(msg.sender, salt)`.
    function registerModel(
        bytes32 salt,
        bytes32 baseModel,
        bytes32 artifactHash,
        bytes32 trainingLogHead,
        TrainingSource[] calldata sources,
        uint256 feePerCall
    ) external returns (bytes32 modelId) {
        modelId = modelIdFor(msg.sender, salt);
        if (_models[modelId].owner != address(0)) revert ModelAlreadyRegistered(modelId);
        for (uint256 i = 0; i < sources.length; ++i) {
            TrainingSource calldata s = sources[i];
            if (!datanets.versionExists(s.datanetId, s.version)) {
                revert UnknownDatanetVersion(s.datanetId, s.version);
            }
            if (!datanets.hasAccess(s.datanetId, msg.sender)) revert NoTrainingAccess(s.datanetId, msg.sender);
            _sources[modelId].push(s);
        }
        _models[modelId] = Model({
            owner: msg.sender,
            active: true,
            registeredAt: uint64(block.timestamp),
            baseModel: baseModel,
            artifactHash: artifactHash,
            trainingLogHead: trainingLogHead,
            feePerCall: feePerCall
        });
        emit ModelRegistered(modelId, msg.sender, baseModel, artifactHash, trainingLogHead, feePerCall, sources);
    }

    /// @notice Changes the fee per call of an active model the caller owns.
    function updateFee(bytes32 modelId, uint256 newFee) external onlyModelOwner(modelId) {
        uint256 old = _models[modelId].feePerCall;
        _models[modelId].feePerCall = newFee;
        emit FeeUpdated(modelId, old, newFee);
    }

    /// @notice Takes an active model the caller owns out of service; payments for it stop.
    function deactivate(bytes32 modelId) external onlyModelOwner(modelId) {
        _models[modelId].active = false;
        emit ModelDeactivated(modelId);
    }

    /// @notice Names `newOwner` as the successor of an active model the caller owns; the transfer
    /// happens when they accept. The zero address withdraws a pending offer.
    function transferModelOwnership(bytes32 modelId, address newOwner) external onlyModelOwner(modelId) {
        _pendingOwners[modelId] = newOwner;
        emit ModelOwnershipTransferStarted(modelId, msg.sender, newOwner);
    }

    /// @notice Takes over an active model whose owner named the caller as successor.
    function acceptModelOwnership(bytes32 modelId) external {
        if (_pendingOwners[modelId] != msg.sender || msg.sender == address(0)) {
            revert NotPendingModelOwner(modelId, msg.sender);
        }
        // Deactivating a model withdraws any offer (it can no longer be withdrawn by hand).
        if (!_models[modelId].active) revert ModelInactive(modelId);
        address previous = _models[modelId].owner;
        delete _pendingOwners[modelId];
        _models[modelId].owner = msg.sender;
        emit ModelOwnershipTransferred(modelId, previous, msg.sender);
    }

    /// @notice The successor named for a model, or zero.
    function pendingModelOwner(bytes32 modelId) external view returns (address) {
        return _pendingOwners[modelId];
    }

    /// @notice A registered model.
    function getModel(bytes32 modelId) external view returns (Model memory) {
        Model memory m = _models[modelId];
        if (m.owner == address(0)) revert UnknownModel(modelId);
        return m;
    }

    /// @notice The datanet versions a model was trained on.
    function trainingSources(bytes32 modelId) external view returns (TrainingSource[] memory) {
        return _sources[modelId];
    }

    /// @notice Owner and fee of an active model; reverts for unknown or inactive models.
    function serving(bytes32 modelId) external view returns (address owner, uint256 feePerCall) {
        Model storage m = _models[modelId];
        if (m.owner == address(0)) revert UnknownModel(modelId);
        if (!m.active) revert ModelInactive(modelId);
        return (m.owner, m.feePerCall);
    }
}
