#!/usr/bin/env bash
# Runs the CUDA checks prepared by scripts/gpu/prepare.sh on a GPU machine, smallest first,
# each phase's output written to OUTDIR as it ends (phases.jsonl: one line per phase with its
# exit status and seconds), so a phase that hangs or faults leaves the earlier ones' results:
#   1. libs.txt      the driver and NVRTC libraries found, the GPU (nvidia-smi)
#   2. kernels.txt   NVRTC compiles every kernel there (cubin for the device's architecture)
#   3. cupy.txt, cupy.json   the same CUDA C compiled by CuPy and checked against torch, without
#                    the Rust binaries (the fallback when they cannot start)
#      layers.txt, layers.json   the model's kernels (RMSNorm, activations, RoPE + KV write,
#                    paged attention) through CuPy against torch
#   4. backends.txt  the same test body on the CPU and the GPU, OPENLEDGER_CUDA_SYNC=1
#   5. gpu_sgmv.txt, gpu_sgmv.json, gpu_sgmv.png   the bench
#   6. sanitizer.txt compute-sanitizer's memcheck over the backends test, where installed
# and for the GPU model (openledger-gpu):
#   model.txt        the parity tests on the device (the PEFT fixture's logits, f32 and bf16,
#                    adapters alone and mixed, device sampling), OPENLEDGER_CUDA_SYNC=1
#   engine.txt       the serving engine on the device model (PEFT's greedy tokens, preemption)
#   device.txt       the device opened and a model served on it by name (`Device::Cuda(0)`)
#   big.txt, big.json   a 2-layer hidden-4096 model and four adapters made by transformers +
#                    PEFT here, the GPU model's bf16 logits against theirs
#   gpu_model.txt, gpu_model_llama-2-7b.json/.png   the 7B-shaped bench
#   peft.txt, peft.json   PEFT's mixed-batch baseline on the same GPU
#
#   bash run.sh OUTDIR [checks|model|bench|all]
# `checks`: phases 1-4 and the model's tests; `model`: the model's tests, the bigger parity
# and its bench with PEFT's baseline; `bench`: the benches; `all` (default): everything.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: run.sh OUTDIR [checks|model|bench|all]}
group=${2:-all}
want() { [ "$group" = all ] || [[ " $* " == *" $group "* ]]; }
mkdir -p "$out"

# NVRTC and the driver where CUDA toolkits, drivers and Python wheels put them.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 \
    $(python3 -c 'import glob, site; print(" ".join(glob.glob(site.getsitepackages()[0] + "/nvidia/*/lib")))' 2>/dev/null); do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH

phase() { # NAME TIMEOUT FILE COMMAND...
    local name=$1 limit=$2 file=$3 start rc
    shift 3
    start=$(date +%s)
    timeout "$limit" "$@" >"$out/$file" 2>&1
    rc=$?
    printf '{"phase":"%s","rc":%d,"seconds":%d}\n' "$name" "$rc" "$(($(date +%s) - start))" \
        >>"$out/phases.jsonl"
}

fixtures=(env OPENLEDGER_FIXTURES="$here/fixtures" OPENLEDGER_GPU_RUNTIME=cuda)
phase libs 30 libs.txt bash -c 'ldconfig -p | grep -E "libcuda\.so|libnvrtc|libcublas"; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv'
if want checks; then
    phase kernels 120 kernels.txt env OPENLEDGER_REQUIRE_NVRTC=1 "$here/kernels" --test-threads=1 --nocapture
fi
if want checks model; then
    phase device 60 device.txt "${fixtures[@]}" "$here/no_device" --test-threads=1
    phase model 180 model.txt "${fixtures[@]}" OPENLEDGER_CUDA_SYNC=1 "$here/model_parity" --test-threads=1
    phase engine 180 engine.txt "${fixtures[@]}" "$here/engine" --test-threads=1
fi
if want checks; then
    phase cupy 120 cupy.txt python3 "$here/cupy_sgmv.py" "$here/cuda" "$out/cupy.json"
    phase layers 120 layers.txt python3 "$here/cupy_layers.py" "$here/cuda" "$out/layers.json"
    phase backends 300 backends.txt env OPENLEDGER_REQUIRE_GPU=1 OPENLEDGER_CUDA_SYNC=1 "$here/backends" --test-threads=1 --nocapture
fi
if want model; then
    big=$(mktemp -d)
    phase big_reference 300 big_reference.txt python3 "$here/make_big_reference.py" "$big"
    phase big 180 big.txt "$here/big_parity" "$big" "$out/big.json"
    rm -rf "$big"
fi
if want model bench; then
    phase gpu_model 420 gpu_model.txt env OPENLEDGER_BENCH_OUT="$out" "$here/gpu_model"
    phase peft 300 peft.txt python3 "$here/peft_baseline.py" "$out/peft.json" 32
fi
if want bench; then
    phase bench 300 gpu_sgmv.txt env OPENLEDGER_BENCH_OUT="$out" "$here/gpu_sgmv"
fi
if want checks && command -v compute-sanitizer >/dev/null; then
    phase sanitizer 300 sanitizer.txt env OPENLEDGER_REQUIRE_GPU=1 compute-sanitizer \
        --tool memcheck --print-limit 20 "$here/backends" --test-threads=1
fi
cat "$out/phases.jsonl"
