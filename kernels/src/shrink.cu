// Shrink: v[row, j] = sum_k x[row, k] * A_slot[j, k], packed per row at that row's offset.
// One block computes one A row j for up to SHRINK_ROWS rows of a segment: the threads split the
// input dimension (each A element is loaded once and used for every row), then the partial sums
// are reduced across the block.

#define SHRINK_ROWS 8

template <typename E>
__device__ void shrink_rows(float* __restrict__ v, const typename E::T* __restrict__ x,
                            const typename E::T* __restrict__ a, int rank, int j, int row0,
                            int nrows, i64 v_off0, int d) {
    __shared__ float scratch[32];
    float acc[SHRINK_ROWS];
#pragma unroll
    for (int m = 0; m < SHRINK_ROWS; ++m) acc[m] = 0.0f;
    const typename E::T* arow = a + (i64)j * d;
    for (int k = threadIdx.x; k < d; k += blockDim.x) {
        const float av = E::load(arow[k]);
#pragma unroll
        for (int m = 0; m < SHRINK_ROWS; ++m) {
            if (m < nrows) acc[m] = fmaf(E::load(x[(i64)(row0 + m) * d + k]), av, acc[m]);
        }
    }
#pragma unroll
    for (int m = 0; m < SHRINK_ROWS; ++m) {
        if (m < nrows) {
            const float s = block_sum(acc[m], scratch);
            if (threadIdx.x == 0) v[v_off0 + (i64)m * rank + j] = s;
        }
    }
}

// SGMV: grid (segments, max rank, ceil(max segment length / SHRINK_ROWS)).
template <typename E>
__device__ void sgmv_shrink_impl(float* v, const typename E::T* x, const i64* a_ptrs,
                                 const int* ranks, const int* seg_starts, const int* seg_ends,
                                 const int* seg_slots, const i64* seg_v_off, int d) {
    const int seg = blockIdx.x;
    const int j = blockIdx.y;
    const int slot = seg_slots[seg];
    const int rank = ranks[slot];
    if (j >= rank) return;
    const int row0 = seg_starts[seg] + blockIdx.z * SHRINK_ROWS;
    const int end = seg_ends[seg];
    if (row0 >= end) return;
    const int nrows = min(SHRINK_ROWS, end - row0);
    const i64 v_off0 = seg_v_off[seg] + (i64)(row0 - seg_starts[seg]) * rank;
    shrink_rows<E>(v, x, (const typename E::T*)a_ptrs[slot], rank, j, row0, nrows, v_off0, d);
}

// BGMV: grid (rows, max rank); row_slots[row] < 0 means no adapter.
template <typename E>
__device__ void bgmv_shrink_impl(float* v, const typename E::T* x, const i64* a_ptrs,
                                 const int* ranks, const int* row_slots, const i64* row_v_off,
                                 int d) {
    const int row = blockIdx.x;
    const int j = blockIdx.y;
    const int slot = row_slots[row];
    if (slot < 0) return;
    const int rank = ranks[slot];
    if (j >= rank) return;
    shrink_rows<E>(v, x, (const typename E::T*)a_ptrs[slot], rank, j, row, 1, row_v_off[row], d);
}

#define SHRINK_KERNELS(NAME, E)                                                                 \
    extern "C" __global__ void sgmv_shrink_##NAME(                                              \
        float* v, const E::T* x, const i64* a_ptrs, const int* ranks, const int* seg_starts,    \
        const int* seg_ends, const int* seg_slots, const i64* seg_v_off, int d) {               \
        sgmv_shrink_impl<E>(v, x, a_ptrs, ranks, seg_starts, seg_ends, seg_slots, seg_v_off, d); \
    }                                                                                           \
    extern "C" __global__ void bgmv_shrink_##NAME(float* v, const E::T* x, const i64* a_ptrs,   \
                                                  const int* ranks, const int* row_slots,       \
                                                  const i64* row_v_off, int d) {                \
        bgmv_shrink_impl<E>(v, x, a_ptrs, ranks, row_slots, row_v_off, d);                      \
    }

SHRINK_KERNELS(f32, F32)
SHRINK_KERNELS(f16, F16)
SHRINK_KERNELS(bf16, BF16)
