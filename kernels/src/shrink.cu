// Shrink: v[row, j] = sum_k x[row, k] * A_slot[j, k] for the rows of one tile, packed per row
// at the tile's offset. A block takes one tile (up to ROWS rows sharing a slot) and
// SHRINK_WARPS rank rows, one per warp. Each step stages a chunk of the tile's x rows in shared
// memory (x is read from global memory once per block, not once per rank row); each lane then
// reads A in 16-byte vectors and multiplies them into every row of the tile, and a warp-shuffle
// reduction ends each (row, rank row) sum. BGMV is the one-row tile (decode: one adapter per
// row), SGMV the eight-row one (prefill segments).

#define SHRINK_WARPS 4

template <typename E, int ROWS, int CHUNK>
__device__ void shrink_impl(float* __restrict__ v, const typename E::T* __restrict__ x, i64 ldx,
                            const i64* __restrict__ slots, const i64* __restrict__ tiles, int d,
                            int lda) {
    typedef typename E::T T;
    constexpr int VEC = E::VEC;
    __shared__ __align__(16) float xs[ROWS][CHUNK];
    const i64* tile = tiles + (i64)TILE_WORDS * blockIdx.x;
    const int row0 = (int)tile[0];
    const int nrows = (int)tile[1];
    const i64* slot = slots + (i64)SLOT_WORDS * tile[2];
    const i64 v_off0 = tile[3];
    const int rank = (int)slot[2];
    // The whole block is past this slot's rank: leave before any barrier.
    if ((int)blockIdx.y * SHRINK_WARPS >= rank) return;
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int j = blockIdx.y * SHRINK_WARPS + warp;
    const bool active = j < rank;
    const T* arow = (const T*)slot[0] + (i64)(active ? j : 0) * lda;
    float acc[ROWS];
#pragma unroll
    for (int m = 0; m < ROWS; ++m) acc[m] = 0.0f;
    for (int k0 = 0; k0 < d; k0 += CHUNK) {
        const int n = min(CHUNK, d - k0);
        __syncthreads();
        for (int i = threadIdx.x; i < ROWS * CHUNK; i += blockDim.x) {
            const int m = i / CHUNK;
            const int k = i - m * CHUNK;
            xs[m][k] = (m < nrows && k < n) ? E::load(x[(i64)(row0 + m) * ldx + k0 + k]) : 0.0f;
        }
        __syncthreads();
        if (!active) continue;
        // k0 + k < d <= lda, and lda and k are multiples of VEC: each vector lies in A's row.
#pragma unroll 4
        for (int k = lane * VEC; k < n; k += 32 * VEC) {
            float a[VEC];
            load_vec<E>(arow + k0 + k, a);
#pragma unroll
            for (int m = 0; m < ROWS; ++m) {
                const float4* xv = reinterpret_cast<const float4*>(&xs[m][k]);
                float s = acc[m];
#pragma unroll
                for (int q = 0; q < VEC / 4; ++q) {
                    const float4 xq = xv[q];
                    s = fmaf(a[4 * q], xq.x, s);
                    s = fmaf(a[4 * q + 1], xq.y, s);
                    s = fmaf(a[4 * q + 2], xq.z, s);
                    s = fmaf(a[4 * q + 3], xq.w, s);
                }
                acc[m] = s;
            }
        }
    }
    if (!active) return;
#pragma unroll
    for (int m = 0; m < ROWS; ++m) {
        const float s = warp_sum(acc[m]);
        if (lane == 0 && m < nrows) v[v_off0 + (i64)m * rank + j] = s;
    }
}

// grid (tiles, ceil(largest rank / SHRINK_WARPS)), SHRINK_WARPS * 32 threads.
#define SHRINK_KERNELS(NAME, E)                                                                \
    extern "C" __global__ void sgmv_shrink_##NAME(float* v, const E::T* x, i64 ldx,            \
                                                  const i64* slots, const i64* tiles, int d,   \
                                                  int lda) {                                   \
        shrink_impl<E, 8, 1024>(v, x, ldx, slots, tiles, d, lda);                              \
    }                                                                                          \
    extern "C" __global__ void bgmv_shrink_##NAME(float* v, const E::T* x, i64 ldx,            \
                                                  const i64* slots, const i64* tiles, int d,   \
                                                  int lda) {                                   \
        shrink_impl<E, 1, 4096>(v, x, ldx, slots, tiles, d, lda);                              \
    }

SHRINK_KERNELS(f32, F32)
SHRINK_KERNELS(f16, F16)
SHRINK_KERNELS(bf16, BF16)
