// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// @title DatanetRegistry
/// @notice Community datasets ("datanets"): who owns them, every published version (the Merkle
/// root of its records and how many there are) and who may train on them.
/// @dev Training access follows request -> owner approves -> owner may revoke. The owner always
/// has access to their own datanet. Ownership moves in two steps: the owner names a successor,
/// who must accept (a mistyped address cannot take, or strand, a datanet).
contract DatanetRegistry {
    /// @notice Where a training request stands.
    enum AccessStatus {
        None,
        Requested,
        Approved,
        Revoked
    }

    /// @notice A registered datanet.
    struct Datanet {
        address owner;
        bytes32 metadataHash;
        uint64 versionCount;
        uint64 registeredAt;
        string uri;
    }

    /// @notice One published version of a datanet.
    struct Version {
        bytes32 recordsRoot;
        uint64 recordCount;
        uint64 publishedAt;
    }

    /// @notice Number of datanets registered; ids run from 1 to this value.
    uint256 public datanetCount;

    mapping(uint256 datanetId => Datanet) private _datanets;
    mapping(uint256 datanetId => mapping(uint64 version => Version)) private _versions;
    mapping(uint256 datanetId => mapping(address requester => AccessStatus)) private _access;
    mapping(uint256 datanetId => address) private _pendingOwners;

    /// @notice A datanet was registered.
    event DatanetRegistered(uint256 indexed datanetId, address indexed owner, bytes32 metadataHash, string uri);
    /// @notice A new version of a datanet was published.
    event VersionPublished(uint256 indexed datanetId, uint64 indexed version, bytes32 recordsRoot, uint64 recordCount);
    /// @notice Someone asked to train on a datanet.
    event AccessRequested(uint256 indexed datanetId, address indexed requester, bytes32 purposeHash);
    /// @notice The owner approved a training request.
    event AccessApproved(uint256 indexed datanetId, address indexed requester);
    /// @notice The owner revoked a training grant or request.
    event AccessRevoked(uint256 indexed datanetId, address indexed requester);
    /// @notice The owner named `pendingOwner` as successor (zero: the offer was withdrawn).
    event DatanetOwnershipTransferStarted(
        uint256 indexed datanetId, address indexed owner, address indexed pendingOwner
    );
    /// @notice The named successor accepted the datanet.
    event DatanetOwnershipTransferred(uint256 indexed datanetId, address indexed previousOwner, address indexed newOwner);

    /// @notice No datanet has this id.
    error UnknownDatanet(uint256 datanetId);
    /// @notice Only the datanet's owner may do this.
    error NotDatanetOwner(uint256 datanetId, address caller);
    /// @notice This version of the datanet was never published.
    error UnknownVersion(uint256 datanetId, uint64 version);
    /// @notice A version must commit to a non-zero root of at least one record.
    error EmptyVersion(uint256 datanetId);
    /// @notice The requester's access is not in the state this action needs.
    error InvalidAccessTransition(uint256 datanetId, address requester, AccessStatus current);
    /// @notice Only the successor the owner named may accept the datanet.
    error NotPendingDatanetOwner(uint256 datanetId, address caller);

    modifier onlyDatanetOwner(uint256 datanetId) {
        address owner = _datanets[datanetId].owner;
        if (owner == address(0)) revert UnknownDatanet(datanetId);
        if (owner != msg.sender) revert NotDatanetOwner(datanetId, msg.sender);
        _;
    }

    /// @notice Registers a datanet owned by the caller and returns its id.
    function registerDatanet(bytes32 metadataHash, string calldata uri) external returns (uint256 datanetId) {
        datanetId = ++datanetCount;
        _datanets[datanetId] = Datanet({
            owner: msg.sender,
            metadataHash: metadataHash,
            versionCount: 0,
            registeredAt: uint64(block.timestamp),
            uri: uri
        });
        emit DatanetRegistered(datanetId, msg.sender, metadataHash, uri);
    }

    /// @notice Publishes the next version (numbered from 1) of a datanet the caller owns.
    function publishVersion(uint256 datanetId, bytes32 recordsRoot, uint64 recordCount)
        external
        onlyDatanetOwner(datanetId)
        returns (uint64 version)
    {
        if (recordsRoot == bytes32(0) || recordCount == 0) revert EmptyVersion(datanetId);
        version = ++_datanets[datanetId].versionCount;
        _versions[datanetId][version] =
            Version({recordsRoot: recordsRoot, recordCount: recordCount, publishedAt: uint64(block.timestamp)});
        emit VersionPublished(datanetId, version, recordsRoot, recordCount);
    }

    /// @notice Asks the owner for permission to train on a datanet (again, after a revocation).
    function requestAccess(uint256 datanetId, bytes32 purposeHash) external {
        if (_datanets[datanetId].owner == address(0)) revert UnknownDatanet(datanetId);
        AccessStatus current = _access[datanetId][msg.sender];
        if (current == AccessStatus.Requested || current == AccessStatus.Approved) {
            revert InvalidAccessTransition(datanetId, msg.sender, current);
        }
        _access[datanetId][msg.sender] = AccessStatus.Requested;
        emit AccessRequested(datanetId, msg.sender, purposeHash);
    }

    /// @notice Approves a pending request.
    function approveAccess(uint256 datanetId, address requester) external onlyDatanetOwner(datanetId) {
        AccessStatus current = _access[datanetId][requester];
        if (current != AccessStatus.Requested) revert InvalidAccessTransition(datanetId, requester, current);
        _access[datanetId][requester] = AccessStatus.Approved;
        emit AccessApproved(datanetId, requester);
    }

    /// @notice Revokes a grant or declines a pending request.
    function revokeAccess(uint256 datanetId, address requester) external onlyDatanetOwner(datanetId) {
        AccessStatus current = _access[datanetId][requester];
        if (current != AccessStatus.Requested && current != AccessStatus.Approved) {
            revert InvalidAccessTransition(datanetId, requester, current);
        }
        _access[datanetId][requester] = AccessStatus.Revoked;
        emit AccessRevoked(datanetId, requester);
    }

    /// @notice Names `newOwner` as the successor of a datanet the caller owns; the transfer happens
    /// when they accept. The zero address withdraws a pending offer.
    function transferDatanetOwnership(uint256 datanetId, address newOwner) external onlyDatanetOwner(datanetId) {
        _pendingOwners[datanetId] = newOwner;
        emit DatanetOwnershipTransferStarted(datanetId, msg.sender, newOwner);
    }

    /// @notice Takes over a datanet whose owner named the caller as successor.
    function acceptDatanetOwnership(uint256 datanetId) external {
        if (_pendingOwners[datanetId] != msg.sender || msg.sender == address(0)) {
            revert NotPendingDatanetOwner(datanetId, msg.sender);
        }
        address previous = _datanets[datanetId].owner;
        delete _pendingOwners[datanetId];
        _datanets[datanetId].owner = msg.sender;
        emit DatanetOwnershipTransferred(datanetId, previous, msg.sender);
    }

    /// @notice The successor named for a datanet, or zero.
    function pendingDatanetOwner(uint256 datanetId) external view returns (address) {
        return _pendingOwners[datanetId];
    }

    /// @notice The access status of `requester` on a datanet.
    function accessStatus(uint256 datanetId, address requester) external view returns (AccessStatus) {
        return _access[datanetId][requester];
    }

    /// @notice Whether `account` may train on a datanet (its owner, or an approved requester).
    function hasAccess(uint256 datanetId, address account) public view returns (bool) {
        address owner = _datanets[datanetId].owner;
        return owner != address(0)
            && (owner == account || _access[datanetId][account] == AccessStatus.Approved);
    }

    /// @notice A registered datanet.
    function getDatanet(uint256 datanetId) external view returns (Datanet memory) {
        Datanet memory d = _datanets[datanetId];
        if (d.owner == address(0)) revert UnknownDatanet(datanetId);
        return d;
    }

    /// @notice A published version; reverts for versions that do not exist.
    function getVersion(uint256 datanetId, uint64 version) external view returns (Version memory) {
        Version memory v = _versions[datanetId][version];
        if (v.recordsRoot == bytes32(0)) revert UnknownVersion(datanetId, version);
        return v;
    }

    /// @notice Whether the record whose content hash is `recordHash` is one of the records committed
    /// by a published version (sorted-pair Merkle proof, as built by `openledger_core::merkle`).
    /// @dev The leaf is hashed here (`keccak256(keccak256(recordHash))`, OpenZeppelin's double-hashed
    /// leaf), so an inner node of the tree, which is a single hash of two children, never passes
    /// as a record.
    function verifyRecord(uint256 datanetId, uint64 version, bytes32 recordHash, bytes32[] calldata proof)
        external
        view
        returns (bool)
    {
        bytes32 root = _versions[datanetId][version].recordsRoot;
        if (root == bytes32(0)) revert UnknownVersion(datanetId, version);
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(recordHash))));
        return MerkleProof.verifyCalldata(proof, root, leaf);
    }

    /// @notice Whether version `version` of a datanet has been published.
    function versionExists(uint256 datanetId, uint64 version) public view returns (bool) {
        return version != 0 && version <= _datanets[datanetId].versionCount;
    }
}
