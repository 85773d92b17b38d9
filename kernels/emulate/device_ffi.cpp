// Every kernel of kernels/src under the host emulation, behind one entry point that takes what
// cuLaunchKernel takes: the kernel's name, the grid, the block, the dynamic shared memory and an
// array of pointers to the arguments. openledger-gpu's emulated device loads it, so the GPU
// model's launch code runs unchanged against host memory (device addresses are host addresses).
//
//   c++ -std=c++20 -O2 -pthread -shared -fPIC -I kernels/src -I kernels/emulate
//       kernels/emulate/device_ffi.cpp -o libdevice_emulated.so
#include "cuda_host.h"

#include "common.cuh"
#include "shrink.cu"
#include "expand.cu"
#include "layers.cu"
#include "rope_kv.cu"
#include "attention.cu"
#include "prefill.cu"
#include "sample.cu"

#include <cstring>
#include <type_traits>
#include <utility>

namespace {

using Call = void (*)(void* kernel, void** args);

// Calls `kernel` with its arguments read from `args`, as cuLaunchKernel reads them.
template <typename... A, std::size_t... I>
void call_with(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}

template <typename... A>
void call(void* kernel, void** args) {
    call_with(reinterpret_cast<void (*)(A...)>(kernel), args, std::index_sequence_for<A...>{});
}

template <typename... A>
Call caller(void (*)(A...)) {
    return &call<A...>;
}

struct Entry {
    const char* name;
    void* kernel;
    Call call;
};

#define ENTRY(K) {#K, reinterpret_cast<void*>(&K), caller(&K)}
#define ENTRIES(D)                                                                              \
    ENTRY(sgmv_shrink_##D), ENTRY(bgmv_shrink_##D), ENTRY(sgmv_expand_##D),                     \
        ENTRY(bgmv_expand_##D), ENTRY(lora_epilogue_##D), ENTRY(dora_norm_##D),                 \
        ENTRY(embed_##D), ENTRY(rms_norm_##D), ENTRY(gated_##D), ENTRY(rope_kv_##D),            \
        ENTRY(attention_##D), ENTRY(attention_reduce_##D), ENTRY(sample_##D)

const Entry ENTRIES_TABLE[] = {ENTRIES(f32),
                                ENTRIES(f16),
                                ENTRIES(bf16),
                                ENTRY(prefill_attention_f16),
                                ENTRY(prefill_attention_bf16)};

}  // namespace

// Runs kernel `name` over grid (gx, gy, gz) of `threads` threads with `shared` bytes of dynamic
// shared memory; `args` points to each argument's value. 0 on success, 1 for an unknown name,
// 2 for a block that is not a whole number of warps.
extern "C" int emu_launch_kernel(const char* name, unsigned gx, unsigned gy, unsigned gz,
                                 unsigned threads, unsigned shared, void** args) {
    if (threads == 0 || threads % 32 != 0 || threads > 1024) return 2;
    for (const Entry& e : ENTRIES_TABLE) {
        if (std::strcmp(e.name, name) == 0) {
            emu_launch3(gx, gy, gz, threads, shared, [&] { e.call(e.kernel, args); });
            return 0;
        }
    }
    return 1;
}
