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
#
#   bash run.sh OUTDIR
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: run.sh OUTDIR}
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

phase libs 30 libs.txt bash -c 'ldconfig -p | grep -E "libcuda\.so|libnvrtc"; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv'
phase kernels 120 kernels.txt env OPENLEDGER_REQUIRE_NVRTC=1 "$here/kernels" --test-threads=1 --nocapture
phase cupy 120 cupy.txt python3 "$here/cupy_sgmv.py" "$here/cuda" "$out/cupy.json"
phase layers 120 layers.txt python3 "$here/cupy_layers.py" "$here/cuda" "$out/layers.json"
phase backends 300 backends.txt env OPENLEDGER_REQUIRE_GPU=1 OPENLEDGER_CUDA_SYNC=1 "$here/backends" --test-threads=1 --nocapture
phase bench 300 gpu_sgmv.txt env OPENLEDGER_BENCH_OUT="$out" "$here/gpu_sgmv"
if command -v compute-sanitizer >/dev/null; then
    phase sanitizer 300 sanitizer.txt env OPENLEDGER_REQUIRE_GPU=1 compute-sanitizer \
        --tool memcheck --print-limit 20 "$here/backends" --test-threads=1
fi
cat "$out/phases.jsonl"
