#!/usr/bin/env bash
# Checks that the committed contract artifacts and Merkle reference vectors are what the pinned
# toolchain produces: installs the exact npm packages from package-lock.json, recompiles the
# contracts (failing on stale artifacts) and regenerates the vectors (failing on any difference).
set -euo pipefail

cd "$(dirname "$0")/../openledger-chain/contracts"
npm ci --no-audit --no-fund
node compile.mjs --check
node merkle-vectors.mjs --check
echo "chain artifacts and Merkle vectors are up to date"
