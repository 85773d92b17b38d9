// Element types and conversions shared by the SGMV / BGMV kernels. No CUDA headers are needed:
// half <-> float goes through PTX `cvt`, bfloat16 <-> float through bit manipulation, so NVRTC
// compiles these sources without include paths. With OPENLEDGER_HOST_EMULATION defined (by
// kernels/emulate/cuda_host.h) the same sources compile as C++ for a host emulation of blocks,
// warps and barriers.

typedef unsigned short u16;
typedef long long i64;

// -infinity as f32 (no header defines INFINITY for NVRTC).
#define NEG_INF __int_as_float(0xff800000)

// Each element type: its storage `T`, and `VEC`, the elements in one 16-byte load.
struct F32 {
    typedef float T;
    static constexpr int VEC = 4;
    static __device__ __forceinline__ float load(float v) { return v; }
    static __device__ __forceinline__ float store(float v) { return v; }
};

struct F16 {
    typedef u16 T;
    static constexpr int VEC = 8;
#ifndef OPENLEDGER_HOST_EMULATION
    static __device__ __forceinline__ float load(u16 h) {
        float f;
        asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(h));
        return f;
    }
    static __device__ __forceinline__ u16 store(float f) {
        u16 h;
        asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h) : "f"(f));
        return h;
    }
#else
    // The host emulation (kernels/emulate) converts with the compiler's _Float16 (round to
    // nearest even, as cvt.rn).
    static float load(u16 h) {
        _Float16 v;
        __builtin_memcpy(&v, &h, 2);
        return (float)v;
    }
    static u16 store(float f) {
        const _Float16 v = (_Float16)f;
        u16 h;
        __builtin_memcpy(&h, &v, 2);
        return h;
    }
#endif
};

struct BF16 {
    typedef u16 T;
    static constexpr int VEC = 8;
    static __device__ __forceinline__ float load(u16 h) {
        return __uint_as_float(((unsigned int)h) << 16);
    }
    // Round to nearest even; NaN stays a (quiet) NaN.
    static __device__ __forceinline__ u16 store(float f) {
        unsigned int u = __float_as_uint(f);
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            return (u16)((u >> 16) | 0x0040u);
        }
        u += 0x7fffu + ((u >> 16) & 1u);
        return (u16)(u >> 16);
    }
};

// The E::VEC elements at `p` (16-byte aligned) as f32, in one 16-byte load (16-bit types; f32
// below).
template <typename E>
__device__ __forceinline__ void load_vec(const typename E::T* p, float (&out)[E::VEC]) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const unsigned int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        out[2 * i] = E::load((u16)(w[i] & 0xffffu));
        out[2 * i + 1] = E::load((u16)(w[i] >> 16));
    }
}

template <>
__device__ __forceinline__ void load_vec<F32>(const float* p, float (&out)[4]) {
    const float4 f = *reinterpret_cast<const float4*>(p);
    out[0] = f.x;
    out[1] = f.y;
    out[2] = f.z;
    out[3] = f.w;
}

// Stores E::VEC f32 values at `p` (16-byte aligned) in E's type, in one 16-byte store (16-bit
// types; f32 below).
template <typename E>
__device__ __forceinline__ void store_vec(typename E::T* p, const float (&in)[E::VEC]) {
    unsigned int w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        w[i] = (unsigned int)E::store(in[2 * i]) | ((unsigned int)E::store(in[2 * i + 1]) << 16);
    }
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
}

template <>
__device__ __forceinline__ void store_vec<F32>(float* p, const float (&in)[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(in[0], in[1], in[2], in[3]);
}

// Sum of `v` over the warp; every lane gets it.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, off);
    }
    return v;
}

// Sum of `v` over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// The block's threads must all call it.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    v = warp_sum(v);
    const int warp = threadIdx.x >> 5;
    __syncthreads();
    if ((threadIdx.x & 31) == 0) partial[warp] = v;
    __syncthreads();
    float s = 0.0f;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) s += partial[w];
    return s;
}

// The tables every SGMV / BGMV kernel reads (built by openledger-sgmv from one plan):
//   slots: 4 words per adapter slot: A's address ([rank, lda], rows zero-padded), Bᵀ's address
//          ([rank, ldb], rows zero-padded), the rank, the scale's f32 bits;
//   tiles: 4 words per tile of rows sharing a slot: first row, rows, slot, offset of the first
//          row's intermediate in v (row m of the tile at + m · rank).
#define SLOT_WORDS 4
#define TILE_WORDS 4

// A kernel's dynamic shared memory, `name`, of element type `T`.
#ifndef OPENLEDGER_HOST_EMULATION
#define DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif
