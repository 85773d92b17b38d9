#!/usr/bin/env bash
# Builds the Python package `openledger` (bindings/python) into a virtual environment under the
# cargo target folder, checks its .pyi stubs against the built module, and runs its pytest suite.
#
#   bash scripts/test-python.sh            # dev profile: reuses what `cargo test` built
#   OPENLEDGER_PY_PROFILE=release bash scripts/test-python.sh
#
# Needs python3 (3.9 or newer) with venv and a Rust toolchain; installs maturin, numpy, pytest
# Ray (with Serve) and the openai client from PyPI into the venv. The package is installed with `pip install ./bindings/python`
# (maturin is the build backend); cargo builds inside the workspace, so the workspace target
# folder (or $CARGO_TARGET_DIR) is reused and dependencies are not compiled twice.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
start=$(date +%s)

target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
venv="$target/python-venv"
profile="${OPENLEDGER_PY_PROFILE:-dev}"
python="${PYTHON:-python3}"

step "virtual environment in $venv"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install --quiet --disable-pip-version-check "maturin>=1.9.4,<2" "numpy>=1.21" "pytest>=7" \
    "ray[serve]==2.60.0" "openai>=1.100,<3"  # the [serve] extra, pinned: openledger.ray's and
    # openledger.ray_serve's tests start a local cluster; the serving test talks to it with openai

step "build and install the openledger package (cargo profile: $profile)"
# maturin reads its cargo arguments from MATURIN_PEP517_ARGS when pip drives it.
MATURIN_PEP517_ARGS="--profile $profile --locked" \
    "$py" -m pip install --disable-pip-version-check --force-reinstall --no-deps \
    ./bindings/python

step "the .pyi stubs agree with the built module"
"$py" bindings/python/tools/check_stubs.py

step "pytest"
# Run from the tests folder so `import openledger` is the installed package.
# Tests that need Ray fail, rather than skip, when it is missing.
(cd bindings/python && OPENLEDGER_REQUIRE_RAY=1 "$py" -m pytest -q tests)

printf '\nPython bindings: all checks passed in %ss\n' "$(($(date +%s) - start))"
