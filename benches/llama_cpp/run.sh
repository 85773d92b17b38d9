#!/usr/bin/env bash
# Prepares and runs the llama.cpp side-by-side bench (benches/llama_cpp.rs):
#   1. node-llama-cpp 3.21.1 and its prebuilt linux-x64 CPU binaries from npm, into
#      benches/llama_cpp/node_modules (its download-or-build install step is skipped: the
#      prebuilt binaries are what it loads);
#   2. the `gguf` package (llama.cpp's GGUF library), numpy and safetensors in a virtual
#      environment, target/llama-cpp-bench/venv;
#   3. SmolLM2-135M-Instruct (scripts/fetch-models.sh) converted to F32, F16, BF16 and Q8_0 GGUF
#      files (its Q4_1 file used as it is) and 32 random LoRA adapters (PEFT folders and GGUF LoRA files) by convert.py, into
#      target/llama-cpp-bench;
#   4. cargo bench -p openledger-benches --bench llama_cpp.
#
#   bash benches/llama_cpp/run.sh      (about 15 minutes with the release build cached)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${OPENLEDGER_LLAMA_CPP_DIR:-$root/target/llama-cpp-bench}
mkdir -p "$out"

(cd "$here" && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm ci --omit=optional --no-audit --no-fund --loglevel=error)

if [ ! -x "$out/venv/bin/python" ]; then
    python3 -m venv "$out/venv"
fi
"$out/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    gguf==0.19.0 numpy==2.4.6 safetensors==0.8.0

bash "$root/scripts/fetch-models.sh"
src=${OPENLEDGER_MODELS:-$root/target/models}/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf
for t in f32 f16 bf16 q8_0; do
    if [ ! -f "$out/smollm2-$t.gguf" ]; then
        echo "converting to $t"
        "$out/venv/bin/python" "$here/convert.py" model "$src" "$out/smollm2-$t.gguf.part" "$t"
        mv "$out/smollm2-$t.gguf.part" "$out/smollm2-$t.gguf"
    fi
done
# The model's own Q4_1 file, as both engines read it.
ln -f "$src" "$out/smollm2-q4_1.gguf" 2>/dev/null || cp "$src" "$out/smollm2-q4_1.gguf"
if [ ! -f "$out/adapters/a31.gguf" ]; then
    echo "writing 32 adapters"
    "$out/venv/bin/python" "$here/convert.py" adapters "$src" "$out/adapters" 32 16 7
fi

cd "$root"
OPENLEDGER_LLAMA_CPP_DIR="$out" cargo bench -p openledger-benches --bench llama_cpp
