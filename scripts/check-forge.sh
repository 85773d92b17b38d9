#!/usr/bin/env bash
# Checks that forge, building offline with the pinned npm solc through contracts/tools/solc, gives
# byte for byte the committed artifacts' bytecode and deployedBytecode (written by compile.mjs)
# for every contract in contracts/src. The build is a full one (--force): sources, tests and
# OpenZeppelin compiled together, as `forge test` runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-foundry.sh >/dev/null
forge=$PWD/target/foundry/node_modules/@foundry-rs/forge-linux-amd64/bin/forge

cd openledger-chain/contracts
[ -d node_modules ] || npm ci --no-audit --no-fund
"$forge" build --force --offline
node tools/compare-artifacts.cjs
