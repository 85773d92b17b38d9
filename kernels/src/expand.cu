// Expand: y[row, o] += scale_slot * sum_j v[row, j] * B_slot[o, j]. One thread per output
// column; a block covers blockDim.x columns for up to EXPAND_ROWS rows of a segment, so each B
// row is read once per row tile.

#define EXPAND_ROWS 8

template <typename E>
__device__ void expand_rows(typename E::T* __restrict__ y, const float* __restrict__ v,
                            const typename E::T* __restrict__ b, int rank, float scale, int row0,
                            int nrows, i64 v_off0, int out) {
    const int o = blockIdx.y * blockDim.x + threadIdx.x;
    if (o >= out) return;
    float acc[EXPAND_ROWS];
#pragma unroll
    for (int m = 0; m < EXPAND_ROWS; ++m) acc[m] = 0.0f;
    const typename E::T* brow = b + (i64)o * rank;
    for (int j = 0; j < rank; ++j) {
        const float bv = E::load(brow[j]);
#pragma unroll
        for (int m = 0; m < EXPAND_ROWS; ++m) {
            if (m < nrows) acc[m] = fmaf(v[v_off0 + (i64)m * rank + j], bv, acc[m]);
        }
    }
#pragma unroll
    for (int m = 0; m < EXPAND_ROWS; ++m) {
        if (m < nrows) {
            typename E::T* dst = y + (i64)(row0 + m) * out + o;
            *dst = E::store(E::load(*dst) + scale * acc[m]);
        }
    }
}

// SGMV: grid (segments, ceil(out / blockDim.x), ceil(max segment length / EXPAND_ROWS)).
template <typename E>
__device__ void sgmv_expand_impl(typename E::T* y, const float* v, const i64* b_ptrs,
                                 const int* ranks, const float* scales, const int* seg_starts,
                                 const int* seg_ends, const int* seg_slots, const i64* seg_v_off,
                                 int out) {
    const int seg = blockIdx.x;
    const int slot = seg_slots[seg];
    const int rank = ranks[slot];
    const int row0 = seg_starts[seg] + blockIdx.z * EXPAND_ROWS;
    const int end = seg_ends[seg];
    if (row0 >= end) return;
    const int nrows = min(EXPAND_ROWS, end - row0);
    const i64 v_off0 = seg_v_off[seg] + (i64)(row0 - seg_starts[seg]) * rank;
    expand_rows<E>(y, v, (const typename E::T*)b_ptrs[slot], rank, scales[slot], row0, nrows,
                   v_off0, out);
}

// BGMV: grid (rows, ceil(out / blockDim.x)).
template <typename E>
__device__ void bgmv_expand_impl(typename E::T* y, const float* v, const i64* b_ptrs,
                                 const int* ranks, const float* scales, const int* row_slots,
                                 const i64* row_v_off, int out) {
    const int row = blockIdx.x;
    const int slot = row_slots[row];
    if (slot < 0) return;
    expand_rows<E>(y, v, (const typename E::T*)b_ptrs[slot], ranks[slot], scales[slot], row, 1,
                   row_v_off[row], out);
}

#define EXPAND_KERNELS(NAME, E)                                                                 \
    extern "C" __global__ void sgmv_expand_##NAME(                                              \
        E::T* y, const float* v, const i64* b_ptrs, const int* ranks, const float* scales,      \
        const int* seg_starts, const int* seg_ends, const int* seg_slots, const i64* seg_v_off, \
        int out) {                                                                              \
        sgmv_expand_impl<E>(y, v, b_ptrs, ranks, scales, seg_starts, seg_ends, seg_slots,       \
                            seg_v_off, out);                                                    \
    }                                                                                           \
    extern "C" __global__ void bgmv_expand_##NAME(E::T* y, const float* v, const i64* b_ptrs,   \
                                                  const int* ranks, const float* scales,        \
                                                  const int* row_slots, const i64* row_v_off,   \
                                                  int out) {                                    \
        bgmv_expand_impl<E>(y, v, b_ptrs, ranks, scales, row_slots, row_v_off, out);            \
    }

EXPAND_KERNELS(f32, F32)
EXPAND_KERNELS(f16, F16)
EXPAND_KERNELS(bf16, BF16)
