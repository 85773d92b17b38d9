// The model kernels of kernels/src (layers.cu, rope_kv.cu, attention.cu, prefill.cu, sample.cu) under the host
// emulation, as a shared library: each `emu_<kernel>_<dtype>` runs the kernel over the grid
// it is given, on host memory. openledger-lora's tests load it and compare the kernels with
// the CPU model's own functions.
//
//   c++ -std=c++20 -O2 -pthread -shared -fPIC -I kernels/src -I kernels/emulate
//       kernels/emulate/model_ffi.cpp -o libkernels_emulated.so
#include "cuda_host.h"

#include "common.cuh"
#include "layers.cu"
#include "rope_kv.cu"
#include "attention.cu"
#include "prefill.cu"
#include "sample.cu"

#define GRID unsigned gx, unsigned gy, unsigned gz, unsigned threads
#define RUN(call) emu_launch3(gx, gy, gz, threads, 0, [&] { call; })

#define FFI(NAME, T)                                                                            \
    extern "C" void emu_embed_##NAME(GRID, T* out, const T* table, const int* ids, int dim,    \
                                     float scale) {                                             \
        RUN(embed_##NAME(out, table, ids, dim, scale));                                         \
    }                                                                                           \
    extern "C" void emu_rms_norm_##NAME(GRID, T* out, const T* x, T* residual, const T* w,      \
                                        int dim, float eps, int one_plus) {                     \
        RUN(rms_norm_##NAME(out, x, residual, w, dim, eps, one_plus));                          \
    }                                                                                           \
    extern "C" void emu_gated_##NAME(GRID, T* out, const T* gate_up, int inter, int act) {      \
        RUN(gated_##NAME(out, gate_up, inter, act));                                            \
    }                                                                                           \
    extern "C" void emu_rope_kv_##NAME(GRID, T* qkv, i64 ld, T* k_cache, T* v_cache,            \
                                       const float* inv_freq, const int* positions,             \
                                       const i64* slots, int heads, int kv_heads, int head_dim, \
                                       int block_size) {                                        \
        RUN(rope_kv_##NAME(qkv, ld, k_cache, v_cache, inv_freq, positions, slots, heads,        \
                           kv_heads, head_dim, block_size));                                    \
    }                                                                                           \
    extern "C" void emu_attention_##NAME(                                                       \
        GRID, T* out, i64 out_ld, const T* q, i64 q_ld, const T* k_cache, const T* v_cache,     \
        const int* tables, const i64* table_off, const int* pos, int kv_heads, int group,       \
        int head_dim, int block_size, float scale, int window, int part_len, float* part_m,     \
        float* part_l, float* part_acc, const int* rows) {                                      \
        RUN(attention_##NAME(out, out_ld, q, q_ld, k_cache, v_cache, tables, table_off, pos,    \
                             kv_heads, group, head_dim, block_size, scale, window, part_len,    \
                             part_m, part_l, part_acc, rows));                                  \
    }                                                                                           \
    extern "C" void emu_attention_reduce_##NAME(GRID, T* out, i64 out_ld, const float* part_m,  \
                                                const float* part_l, const float* part_acc,     \
                                                int parts, int head_dim, const int* rows) {     \
        RUN(attention_reduce_##NAME(out, out_ld, part_m, part_l, part_acc, parts, head_dim,     \
                                    rows));                                                     \
    }                                                                                           \
    extern "C" void emu_sample_##NAME(GRID, int* out, const T* logits, int vocab,               \
                                      const int* hist, const i64* hist_off, const float* temp,  \
                                      const int* top_k, const float* top_p,                     \
                                      const float* penalty, const float* u, float* scratch) {   \
        RUN(sample_##NAME(out, logits, vocab, hist, hist_off, temp, top_k, top_p, penalty, u,   \
                          scratch));                                                            \
    }

// The tensor-core kernels: 16-bit types only.
#define HALF_FFI(NAME, T)                                                                       \
    extern "C" void emu_prefill_attention_##NAME(                                               \
        GRID, T* out, i64 out_ld, const T* q, i64 q_ld, const T* k_cache, const T* v_cache,     \
        const int* tables, const i64* table_off, const int* pos, const int* tiles,              \
        int kv_heads, int group, int head_dim, int block_size, float scale, int window) {       \
        RUN(prefill_attention_##NAME(out, out_ld, q, q_ld, k_cache, v_cache, tables, table_off, \
                                     pos, tiles, kv_heads, group, head_dim, block_size, scale,  \
                                     window));                                                  \
    }

FFI(f32, float)
FFI(f16, u16)
FFI(bf16, u16)
HALF_FFI(f16, u16)
HALF_FFI(bf16, u16)
