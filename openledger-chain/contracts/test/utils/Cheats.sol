// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Vm} from "./Vm.sol";

/// @title Cheats
/// @notice The cheatcodes and `bound` for fuzzed inputs: what test contracts and invariant handlers
/// share.
abstract contract Cheats {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    /// @notice `x` mapped into `[lo, hi]`, kept as it is where it fits, so that the edge values the
    /// fuzzer favours (0, 1, the maximum) stay edge values.
    function bound(uint256 x, uint256 lo, uint256 hi) internal pure returns (uint256) {
        require(lo <= hi, "bound: lo > hi");
        if (x >= lo && x <= hi) return x;
        uint256 size = hi - lo;
        if (size == type(uint256).max) return x;
        return lo + x % (size + 1);
    }
}
