#!/usr/bin/env bash
# Builds, on a machine without a GPU, everything a GPU machine needs to check the CUDA backend:
# the kernels' NVRTC tests, the SGMV backends test, the GPU model's parity and engine tests,
# the bigger-model parity example and the GPU benches, with `--features cuda`, in release,
# stripped, with the CUDA C sources, the CuPy checks, the PyTorch scripts and the PEFT fixture,
# into one folder (default target/gpu-run, git-ignored) beside scripts/gpu/run.sh. Copy or mount that folder on the GPU machine (it needs no Rust there) and
# run `bash <folder>/run.sh OUTDIR`.
#
#   bash scripts/gpu/prepare.sh [FOLDER]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/target/gpu-run}
cd "$root"
mkdir -p "$out"
rm -f "$out"/kernels "$out"/backends "$out"/gpu_sgmv "$out"/model_parity "$out"/engine "$out"/no_device \
    "$out"/gpu_model "$out"/big_parity

# The executable cargo built for the artifact named $2 (a test or bench target) from the
# JSON messages on stdin.
executable() {
    python3 -c '
import json, sys
name = sys.argv[1]
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == name:
        print(m["executable"])
' "$1"
}

build() { # PACKAGE KIND(test|bench|example) TARGET
    local exe release=()
    # `cargo bench` builds in release already and refuses the flag.
    [ "$2" != bench ] && release=(--release)
    if [ "$2" = example ]; then
        exe=$(cargo build "${release[@]}" --locked -p "$1" --features cuda --example "$3" \
            --message-format=json 2>/dev/null | executable "$3")
    else
        exe=$(cargo "$2" "${release[@]}" --locked -p "$1" --features cuda --"$2" "$3" --no-run \
            --message-format=json 2>/dev/null | executable "$3")
    fi
    if [ -z "$exe" ]; then
        echo "prepare: no executable for $1 $2 $3" >&2
        exit 1
    fi
    cp "$exe" "$out/$3"
    strip "$out/$3"
    echo "$3: $(du -h "$out/$3" | cut -f1)"
}

build openledger-kernels test kernels
build openledger-sgmv test backends
build openledger-sgmv bench gpu_sgmv
build openledger-gpu test model_parity
build openledger-gpu test engine
build openledger-gpu test no_device
build openledger-gpu bench gpu_model
build openledger-gpu example big_parity
cp scripts/gpu/run.sh scripts/gpu/cupy_sgmv.py scripts/gpu/cupy_layers.py \
    scripts/gpu/make_big_reference.py scripts/gpu/peft_baseline.py "$out/"
mkdir -p "$out/fixtures/peft"
rm -rf "$out/fixtures/peft/tiny-llama"
cp -r fixtures/peft/tiny-llama "$out/fixtures/peft/"
mkdir -p "$out/cuda"
cp kernels/src/*.cu kernels/src/*.cuh "$out/cuda/"
echo "ready: $out (run there: bash $out/run.sh OUTDIR)"
