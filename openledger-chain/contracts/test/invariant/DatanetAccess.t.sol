// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DatanetRegistry} from "../../src/DatanetRegistry.sol";
import {Base} from "../utils/Base.sol";
import {AccessHandler} from "./AccessHandler.sol";

/// @notice The access state machine of DatanetRegistry (request -> approve -> revoke -> request
/// again, with ownership changing hands in between) under random actions: after every call the
/// registry agrees with the handler's model.
contract DatanetAccessInvariantTest is Base {
    DatanetRegistry internal registry;
    AccessHandler internal handler;

    function setUp() public {
        registry = new DatanetRegistry();
        handler = new AccessHandler(registry);
        targetContract(address(handler));
    }

    /// forge-config: default.invariant.depth = 100
    function invariant_registryMatchesModel() public view {
        for (uint256 id = 1; id <= 3; ++id) {
            address owner = handler.owner(id);
            vm.assertEq(registry.getDatanet(id).owner, owner, "owner");
            vm.assertEq(registry.pendingDatanetOwner(id), handler.pending(id), "pending owner");
            for (uint256 i = 0; i < handler.peopleCount(); ++i) {
                address who = handler.person(i);
                DatanetRegistry.AccessStatus s = handler.status(id, who);
                vm.assertEq(uint256(registry.accessStatus(id, who)), uint256(s), "access status");
                vm.assertEq(
                    registry.hasAccess(id, who) ? 1 : 0,
                    who == owner || s == DatanetRegistry.AccessStatus.Approved ? 1 : 0,
                    "hasAccess"
                );
            }
        }
    }
}
