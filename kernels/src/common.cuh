// Element types and conversions shared by the SGMV / BGMV kernels. No CUDA headers are needed:
// half <-> float goes through PTX `cvt`, bfloat16 <-> float through bit manipulation, so NVRTC
// compiles these sources without include paths.

typedef unsigned short u16;
typedef long long i64;

struct F32 {
    typedef float T;
    static __device__ __forceinline__ float load(float v) { return v; }
    static __device__ __forceinline__ float store(float v) { return v; }
};

struct F16 {
    typedef u16 T;
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
};

struct BF16 {
    typedef u16 T;
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

// Sum of `v` over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    for (int off = 16; off > 0; off >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, off);
    }
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    __syncthreads();
    if (lane == 0) {
        scratch[warp] = v;
    }
    __syncthreads();
    const int warps = blockDim.x >> 5;
    float s = 0.0f;
    for (int w = 0; w < warps; ++w) {
        s += scratch[w];
    }
    return s;
}
