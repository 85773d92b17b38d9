#!/usr/bin/env bash
# Foundry checks of the contracts, offline: installs forge 1.7.1 (npm), the contracts' npm
# packages if missing, checks that forge's build equals the committed artifacts byte for byte,
# then runs the Foundry tests (unit, fuzz and invariant tests in contracts/test).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-foundry.sh
forge=$PWD/target/foundry/node_modules/@foundry-rs/forge-linux-amd64/bin/forge

[ -d openledger-chain/contracts/node_modules ] ||
    (cd openledger-chain/contracts && npm ci --no-audit --no-fund)
bash scripts/check-forge.sh
cd openledger-chain/contracts
"$forge" test --offline
