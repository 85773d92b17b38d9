// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DatanetRegistry} from "../../src/DatanetRegistry.sol";
import {Cheats} from "../utils/Cheats.sol";

/// @title AccessHandler
/// @notice Random access requests, approvals, revocations and ownership offers on three datanets,
/// each checked against a model of the state kept here: a valid transition must succeed, and an
/// invalid one must revert with exactly the error (and arguments) the model predicts. Any other
/// outcome reverts the handler, which fails the campaign (`fail_on_revert`).
contract AccessHandler is Cheats {
    uint256 internal constant DATANETS = 3;

    DatanetRegistry public immutable registry;
    address[4] internal people = [address(0xA11CE), address(0xB0B), address(0xCA401), address(0xDA7E)];

    /// @notice The model: each datanet's owner and successor, and every person's access status.
    mapping(uint256 datanetId => address) public owner;
    mapping(uint256 datanetId => address) public pending;
    mapping(uint256 datanetId => mapping(address person => DatanetRegistry.AccessStatus)) public status;

    /// @notice How many calls of each kind succeeded (and were refused), to show what was covered.
    mapping(string action => uint256) public succeeded;
    mapping(string action => uint256) public refused;

    constructor(DatanetRegistry registry_) {
        registry = registry_;
        for (uint256 i = 0; i < DATANETS; ++i) {
            vm.prank(people[i]);
            uint256 id = registry.registerDatanet(keccak256(abi.encode(i)), "");
            owner[id] = people[i];
        }
    }

    /// @notice Everyone the handler acts as.
    function person(uint256 i) external view returns (address) {
        return people[i];
    }

    function peopleCount() external pure returns (uint256) {
        return 4;
    }

    function _person(uint256 seed) internal view returns (address) {
        return people[seed % people.length];
    }

    /// Datanet ids 1..3 exist; 0 and 4 do not (requests for them must fail as unknown).
    function _datanet(uint256 seed) internal pure returns (uint256) {
        return seed % (DATANETS + 2);
    }

    function _invalid(uint256 id, address who) internal view returns (bytes memory) {
        return abi.encodeWithSelector(DatanetRegistry.InvalidAccessTransition.selector, id, who, status[id][who]);
    }

    function _notOwner(uint256 id, address caller) internal view returns (bytes memory) {
        if (owner[id] == address(0)) return abi.encodeWithSelector(DatanetRegistry.UnknownDatanet.selector, id);
        return abi.encodeWithSelector(DatanetRegistry.NotDatanetOwner.selector, id, caller);
    }

    /// Calls the registry as `caller`; `expected` empty means it must succeed, otherwise it must
    /// revert with exactly these bytes.
    function _call(string memory action, address caller, bytes memory data, bytes memory expected) internal {
        vm.prank(caller);
        (bool ok, bytes memory ret) = address(registry).call(data);
        if (expected.length == 0) {
            require(ok, string.concat(action, ": a valid transition reverted"));
            succeeded[action] += 1;
        } else {
            require(!ok, string.concat(action, ": an invalid transition succeeded"));
            require(keccak256(ret) == keccak256(expected), "wrong revert data");
            refused[action] += 1;
        }
    }

    function requestAccess(uint256 datanetSeed, uint256 whoSeed) external {
        uint256 id = _datanet(datanetSeed);
        address who = _person(whoSeed);
        DatanetRegistry.AccessStatus current = status[id][who];
        bytes memory expected;
        if (owner[id] == address(0)) {
            expected = abi.encodeWithSelector(DatanetRegistry.UnknownDatanet.selector, id);
        } else if (
            current == DatanetRegistry.AccessStatus.Requested || current == DatanetRegistry.AccessStatus.Approved
        ) {
            expected = _invalid(id, who);
        }
        _call("request", who, abi.encodeCall(DatanetRegistry.requestAccess, (id, keccak256("purpose"))), expected);
        if (expected.length == 0) status[id][who] = DatanetRegistry.AccessStatus.Requested;
    }

    function approveAccess(uint256 datanetSeed, uint256 callerSeed, uint256 whoSeed, bool asOwner) external {
        uint256 id = _datanet(datanetSeed);
        address caller = asOwner && owner[id] != address(0) ? owner[id] : _person(callerSeed);
        address who = _person(whoSeed);
        bytes memory expected;
        if (owner[id] != caller) expected = _notOwner(id, caller);
        else if (status[id][who] != DatanetRegistry.AccessStatus.Requested) expected = _invalid(id, who);
        _call("approve", caller, abi.encodeCall(DatanetRegistry.approveAccess, (id, who)), expected);
        if (expected.length == 0) status[id][who] = DatanetRegistry.AccessStatus.Approved;
    }

    function revokeAccess(uint256 datanetSeed, uint256 callerSeed, uint256 whoSeed, bool asOwner) external {
        uint256 id = _datanet(datanetSeed);
        address caller = asOwner && owner[id] != address(0) ? owner[id] : _person(callerSeed);
        address who = _person(whoSeed);
        DatanetRegistry.AccessStatus current = status[id][who];
        bytes memory expected;
        if (owner[id] != caller) {
            expected = _notOwner(id, caller);
        } else if (
            current != DatanetRegistry.AccessStatus.Requested && current != DatanetRegistry.AccessStatus.Approved
        ) {
            expected = _invalid(id, who);
        }
        _call("revoke", caller, abi.encodeCall(DatanetRegistry.revokeAccess, (id, who)), expected);
        if (expected.length == 0) status[id][who] = DatanetRegistry.AccessStatus.Revoked;
    }

    /// Offers a datanet to someone (or, with `withdraw`, withdraws the offer).
    function offerOwnership(uint256 datanetSeed, uint256 callerSeed, uint256 toSeed, bool asOwner, bool withdraw)
        external
    {
        uint256 id = _datanet(datanetSeed);
        address caller = asOwner && owner[id] != address(0) ? owner[id] : _person(callerSeed);
        address to = withdraw ? address(0) : _person(toSeed);
        bytes memory expected;
        if (owner[id] != caller) expected = _notOwner(id, caller);
        _call("offer", caller, abi.encodeCall(DatanetRegistry.transferDatanetOwnership, (id, to)), expected);
        if (expected.length == 0) pending[id] = to;
    }

    function acceptOwnership(uint256 datanetSeed, uint256 callerSeed, bool asPending) external {
        uint256 id = _datanet(datanetSeed);
        address caller = asPending && pending[id] != address(0) ? pending[id] : _person(callerSeed);
        bytes memory expected;
        if (pending[id] != caller) {
            expected = abi.encodeWithSelector(DatanetRegistry.NotPendingDatanetOwner.selector, id, caller);
        }
        _call("accept", caller, abi.encodeCall(DatanetRegistry.acceptDatanetOwnership, (id)), expected);
        if (expected.length == 0) {
            owner[id] = caller;
            pending[id] = address(0);
        }
    }
}
