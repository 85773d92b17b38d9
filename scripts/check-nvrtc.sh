#!/usr/bin/env bash
# Proves the CUDA kernels compile without a GPU or a CUDA toolkit: installs NVRTC from the PyPI
# wheel `nvidia-cuda-nvrtc-cu12` into a virtual environment, puts its lib folder on
# LD_LIBRARY_PATH and runs the kernels crate's tests with the `cuda` feature (a missing NVRTC
# is then a test failure, not a skip): cubins for sm_80 and sm_90, PTX for compute_80 and
# compute_90.
#
# Environment:
#   NVRTC_VENV  where to create the venv (default: <repo>/target/nvrtc-venv)
#   PYTHON      the Python used to create it (default: python3)
# Extra arguments are passed to `cargo test`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NVRTC_VENV:-$ROOT/target/nvrtc-venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check nvidia-cuda-nvrtc-cu12

LIB="$("$VENV/bin/python" - <<'PY'
import os, nvidia.cuda_nvrtc as m
print(os.path.join(list(m.__path__)[0], "lib"))
PY
)"
if ! ls "$LIB"/libnvrtc.so* >/dev/null 2>&1; then
    echo "check-nvrtc: no libnvrtc in $LIB" >&2
    exit 1
fi
# The wheel ships libnvrtc.so.12 (+ libnvrtc-builtins.so.12.x, loaded by NVRTC from the same
# path); cudarc finds it as libnvrtc.so.12, and tries the unversioned name first: provide it too.
if [ ! -e "$LIB/libnvrtc.so" ]; then
    ln -s libnvrtc.so.12 "$LIB/libnvrtc.so"
fi

export LD_LIBRARY_PATH="$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OPENLEDGER_REQUIRE_NVRTC=1
cd "$ROOT"
# The kernels' tests with the `cuda` feature (NVRTC compiles every kernel); the SGMV backends test
# built with the CUDA backend (without a driver it runs the CPU backend and checks that the GPU one
# refuses with a typed error); the GPU model's CUDA runtime (without a driver, opening it is a
# typed error naming the library). One package set and one feature set for both commands, so the
# second reuses the first's build: cargo resolves features per selection, and three separate
# commands compiled the shared dependencies three times.
packages=(-p openledger-kernels -p openledger-sgmv -p openledger-gpu
    --features openledger-kernels/cuda,openledger-sgmv/cuda,openledger-gpu/cuda)
cargo test "${packages[@]}" --test kernels --test emulated --test backends --test no_device "$@"
cargo test "${packages[@]}" --doc "$@"
