// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Cheats} from "./Cheats.sol";

/// @title Base
/// @notice Base of the test contracts: the hooks forge reads to pick the contracts (and functions)
/// an invariant campaign calls.
abstract contract Base is Cheats {
    /// @notice Tells forge this is a test contract.
    bool public constant IS_TEST = true;

    /// @notice A contract and the functions of it an invariant campaign may call.
    struct FuzzSelector {
        address addr;
        bytes4[] selectors;
    }

    address[] private _targetContracts;
    FuzzSelector[] private _targetSelectors;

    /// @notice Contracts whose functions the invariant campaign calls (forge reads this).
    function targetContracts() public view returns (address[] memory) {
        return _targetContracts;
    }

    /// @notice Functions the invariant campaign calls (forge reads this).
    function targetSelectors() public view returns (FuzzSelector[] memory) {
        return _targetSelectors;
    }

    function targetContract(address target) internal {
        _targetContracts.push(target);
    }

    function targetSelector(FuzzSelector memory selector) internal {
        _targetSelectors.push(selector);
    }
}
