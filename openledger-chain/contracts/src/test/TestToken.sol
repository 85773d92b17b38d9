// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title TestToken
/// @notice An OpenZeppelin ERC-20 anyone can mint, standing in for the OPEN token in tests.
contract TestToken is ERC20 {
    constructor() ERC20("Test OPEN", "tOPEN") {}

    /// @notice Mints `amount` to `to`.
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}
