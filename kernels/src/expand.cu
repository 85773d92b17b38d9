// Expand: y[row, col + o] += scale_slot * sum_j v[row, j] * Bt_slot[j, o] for the rows of one
// tile. B is held transposed, [rank, ldb] (the model's own layout), so the threads of a warp
// read consecutive outputs of one rank row: each thread takes E::VEC outputs in one 16-byte
// load per rank row, for every row of the tile. The tile's intermediate rows are staged in
// shared memory (dynamic: ROWS * the largest rank floats). BGMV is the one-row tile, SGMV the
// eight-row one. y is written in 16-byte vectors where the row stride, column offset and
// address allow, element by element otherwise.

template <typename E, int ROWS>
__device__ void expand_impl(typename E::T* __restrict__ y, i64 ldy, i64 col,
                            const float* __restrict__ v, const i64* __restrict__ slots,
                            const i64* __restrict__ tiles, int out, int ldb) {
    typedef typename E::T T;
    constexpr int VEC = E::VEC;
    DYNAMIC_SHARED(float, vs);
    const i64* tile = tiles + (i64)TILE_WORDS * blockIdx.x;
    const int row0 = (int)tile[0];
    const int nrows = (int)tile[1];
    const i64* slot = slots + (i64)SLOT_WORDS * tile[2];
    const i64 v_off0 = tile[3];
    const T* bt = (const T*)slot[1];
    const int rank = (int)slot[2];
    const float scale = __int_as_float((int)slot[3]);
    // A slot without this module (the null slot of a graph's rows with no adapter): nothing
    // to add. The whole block leaves, before any barrier.
    if (rank == 0) return;
    // The tile's intermediate rows are contiguous in v: row m at v_off0 + m * rank.
    for (int i = threadIdx.x; i < ROWS * rank; i += blockDim.x) {
        vs[i] = i < nrows * rank ? v[v_off0 + i] : 0.0f;
    }
    __syncthreads();
    const int o = (blockIdx.y * blockDim.x + threadIdx.x) * VEC;
    if (o >= out) return;
    float acc[ROWS][VEC];
#pragma unroll
    for (int m = 0; m < ROWS; ++m)
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[m][e] = 0.0f;
    // o + VEC <= ldb (Bt's rows are padded to a multiple of VEC): each vector lies in its row.
    const T* bp = bt + o;
#pragma unroll 4
    for (int j = 0; j < rank; ++j) {
        float b[VEC];
        load_vec<E>(bp + (i64)j * ldb, b);
#pragma unroll
        for (int m = 0; m < ROWS; ++m) {
            const float vm = vs[m * rank + j];
#pragma unroll
            for (int e = 0; e < VEC; ++e) acc[m][e] = fmaf(vm, b[e], acc[m][e]);
        }
    }
    const int n = min(VEC, out - o);
#pragma unroll
    for (int m = 0; m < ROWS; ++m) {
        if (m >= nrows) break;
        T* dst = y + (i64)(row0 + m) * ldy + col + o;
        if (n == VEC && ((unsigned long long)dst & 15ull) == 0) {
            float cur[VEC];
            load_vec<E>(dst, cur);
#pragma unroll
            for (int e = 0; e < VEC; ++e) cur[e] += scale * acc[m][e];
            store_vec<E>(dst, cur);
        } else {
            for (int e = 0; e < n; ++e) dst[e] = E::store(E::load(dst[e]) + scale * acc[m][e]);
        }
    }
}

// grid (tiles, ceil(out / (threads * E::VEC))); dynamic shared memory ROWS * largest rank * 4.
#define EXPAND_KERNELS(NAME, E)                                                                 \
    extern "C" __global__ void sgmv_expand_##NAME(E::T* y, i64 ldy, i64 col, const float* v,    \
                                                  const i64* slots, const i64* tiles, int out,  \
                                                  int ldb) {                                    \
        expand_impl<E, 8>(y, ldy, col, v, slots, tiles, out, ldb);                              \
    }                                                                                           \
    extern "C" __global__ void bgmv_expand_##NAME(E::T* y, i64 ldy, i64 col, const float* v,    \
                                                  const i64* slots, const i64* tiles, int out,  \
                                                  int ldb) {                                    \
        expand_impl<E, 1>(y, ldy, col, v, slots, tiles, out, ldb);                              \
    }

EXPAND_KERNELS(f32, F32)
EXPAND_KERNELS(f16, F16)
EXPAND_KERNELS(bf16, BF16)

// After a projection's expand, the part of a LoRA update that is not a product (DoRA's
// magnitude and a LoRA bias), for the rows of each tile whose slot has one: with b the base
// bias (`bias`, or 0), g the slot's DoRA factor m / ‖W + s·B·A‖ (or 1) and c its LoRA bias
// times the scale (or 0), each output y = b + g · (y − b + c) — PEFT's y = b + g·(W·x + s·B·A·x
// + c). `table` holds two words per slot, the addresses of g and c (0: none); `y`'s columns
// col..col + width are the projection's. grid (tiles, ceil(width / blockDim.x)).
template <typename E>
__device__ void lora_epilogue_impl(typename E::T* __restrict__ y, i64 ldy, i64 col, int width,
                                   const typename E::T* __restrict__ bias,
                                   const i64* __restrict__ tiles, const i64* __restrict__ table) {
    const i64* tile = tiles + (i64)TILE_WORDS * blockIdx.x;
    const i64 slot = tile[2];
    const float* g = (const float*)table[2 * slot];
    const float* c = (const float*)table[2 * slot + 1];
    const int o = blockIdx.y * blockDim.x + threadIdx.x;
    if ((g == nullptr && c == nullptr) || o >= width) return;
    const float b = bias != nullptr ? E::load(bias[o]) : 0.0f;
    const float go = g != nullptr ? g[o] : 1.0f;
    const float co = c != nullptr ? c[o] : 0.0f;
    for (i64 m = 0; m < tile[1]; ++m) {
        typename E::T* at = y + (tile[0] + m) * ldy + col + o;
        *at = E::store(b + go * (E::load(*at) - b + co));
    }
}

// DoRA's factor for each output row o of a projection: g[o] = mag[o] / ‖W[o] + s·(B·A)[o]‖ (the
// L2 norm over the inputs, in f32; `g` may be `mag`), from the base weight `w` ([out, din] rows
// of the model's type) and the factors in f32, A [rank, din] and B [out, rank], as PEFT's
// weight norm. grid (out), any block size that is a whole number of warps.
template <typename E>
__device__ void dora_norm_impl(float* g, const typename E::T* __restrict__ w, int din,
                               const float* __restrict__ a, const float* __restrict__ b, int rank,
                               float scale, const float* mag) {
    const i64 o = blockIdx.x;
    const float* bo = b + o * rank;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < din; i += blockDim.x) {
        float d = 0.0f;
        for (int r = 0; r < rank; ++r) d = fmaf(bo[r], a[(i64)r * din + i], d);
        const float v = E::load(w[o * din + i]) + scale * d;
        ss = fmaf(v, v, ss);
    }
    ss = block_sum(ss);
    if (threadIdx.x == 0) g[o] = mag[o] / sqrtf(ss);
}

#define EXTRA_KERNELS(NAME, E)                                                                  \
    extern "C" __global__ void lora_epilogue_##NAME(E::T* y, i64 ldy, i64 col, int width,       \
                                                    const E::T* bias, const i64* tiles,         \
                                                    const i64* table) {                         \
        lora_epilogue_impl<E>(y, ldy, col, width, bias, tiles, table);                          \
    }                                                                                           \
    extern "C" __global__ void dora_norm_##NAME(float* g, const E::T* w, int din, const float* a, \
                                                const float* b, int rank, float scale,          \
                                                const float* mag) {                             \
        dora_norm_impl<E>(g, w, din, a, b, rank, scale, mag);                                   \
    }

EXTRA_KERNELS(f32, F32)
EXTRA_KERNELS(f16, F16)
EXTRA_KERNELS(bf16, BF16)
