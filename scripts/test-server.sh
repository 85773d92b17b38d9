#!/usr/bin/env bash
# Tests `openledger serve` with the official `openai` Python client: builds the binary (the
# workspace's dev profile, reusing what `cargo test` built), installs openai and pytest into a
# virtual environment under the target folder, and runs openledger-server/tests/python.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
venv="$target/server-venv"
python="${PYTHON:-python3}"

cargo build -p openledger-server --bin openledger --locked
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "openai>=1.100,<3" "pytest>=7"
OPENLEDGER_BIN="$target/debug/openledger" "$venv/bin/python" -m pytest -q openledger-server/tests/python
