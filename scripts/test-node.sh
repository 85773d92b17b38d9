#!/usr/bin/env bash
# Builds the Node package `@openledger/sdk` (bindings/node), checks its committed index.d.ts
# against the one the build generates, and runs its `node --test` suite.
#
#   bash scripts/test-node.sh            # dev profile: reuses what `cargo test` built
#   OPENLEDGER_NODE_PROFILE=release bash scripts/test-node.sh
#
# Needs node (18 or newer) with npm and a Rust toolchain; `npm ci` installs @napi-rs/cli from
# the lock file. cargo builds the addon inside the workspace, for the host, so the workspace
# target folder (or $CARGO_TARGET_DIR) is reused and dependencies are not compiled twice.
set -euo pipefail
cd "$(dirname "$0")/../bindings/node"

step() { printf '\n==> %s\n' "$*"; }
start=$(date +%s)
profile="${OPENLEDGER_NODE_PROFILE:-dev}"

step "npm ci"
npm ci --no-audit --no-fund

step "build the addon (cargo profile: $profile)"
committed=$(mktemp)
trap 'rm -f "$committed"' EXIT
cp index.d.ts "$committed"
script=build:debug
if [ "$profile" = release ]; then script=build; fi
# napi names the target triple; tools/cargo-host.mjs builds for the host instead (see there).
CARGO="$PWD/tools/cargo-host.mjs" npm run --silent "$script" -- -- --locked

step "index.d.ts is the one the build generates"
if ! diff -u "$committed" index.d.ts; then
    cp "$committed" index.d.ts
    echo "index.d.ts is stale: run the build in bindings/node and commit the new index.d.ts"
    exit 1
fi

step "node --test"
node --test __test__/

printf '\nNode bindings: all checks passed in %ss\n' "$(($(date +%s) - start))"
