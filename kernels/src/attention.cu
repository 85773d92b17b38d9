// Paged attention over the KV cache (layout of rope_kv.cu: per layer [blocks, kv_heads,
// block_size, hd]) for query rows of any sequences: row r reads its sequence's block table at
// `tables + table_off[r]` and sees the keys at positions 0..=pos[r] (causal), only the last
// `window` of them when window > 0 (sliding window); query head h reads KV head h / group
// (grouped-query attention). Scores are scaled by `scale` before the softmax.
//
// A block takes one (row, head, part): the row's keys are split into parts of `part_len`
// positions (a split over the context, flash-decoding's, so a long context fills the device);
// its 4 warps take the part's positions in turn, each keeping an online softmax (running
// maximum, sum, and the weighted sum of values, a head's dims spread over the lanes), and the
// warps' results are merged in shared memory. With one part the block writes the output row;
// with several it writes the part's maximum, sum and unnormalised sum of values, which
// attention_reduce merges. grid (rows, heads, parts), ATTN_THREADS threads; hd ≤ 256.
//
// `rows`, when not null, names the rows to compute: block x takes row rows[x] (the others are
// left as they are, for prefill.cu's tiles); the parts' statistics are indexed by x.

#define ATTN_THREADS 128
#define ATTN_WARPS (ATTN_THREADS / 32)
#define ATTN_MAX_HD 256

template <typename E>
__device__ void attention_impl(typename E::T* __restrict__ out, i64 out_ld,
                               const typename E::T* __restrict__ q, i64 q_ld,
                               const typename E::T* __restrict__ k_cache,
                               const typename E::T* __restrict__ v_cache,
                               const int* __restrict__ tables, const i64* __restrict__ table_off,
                               const int* __restrict__ pos, int kv_heads, int group, int head_dim,
                               int block_size, float scale, int window, int part_len,
                               float* __restrict__ part_m, float* __restrict__ part_l,
                               float* __restrict__ part_acc, const int* __restrict__ rows) {
    __shared__ float qs[ATTN_MAX_HD];
    __shared__ float wm[ATTN_WARPS];
    __shared__ float wl[ATTN_WARPS];
    __shared__ float wacc[ATTN_WARPS][ATTN_MAX_HD];
    const int r = rows != nullptr ? rows[blockIdx.x] : (int)blockIdx.x;
    const int h = blockIdx.y;
    const int part = blockIdx.z;
    const int parts = gridDim.z;
    const int kvh = h / group;
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int p = pos[r];
    const int lo = window > 0 ? max(0, p - window + 1) : 0;
    const int start = lo + part * part_len;
    const int end = min(p + 1, start + part_len);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        qs[d] = E::load(q[(i64)r * q_ld + (i64)h * head_dim + d]);
    }
    __syncthreads();
    const int* table = tables + table_off[r];
    float m = NEG_INF, l = 0.0f;
    float acc[ATTN_MAX_HD / 32];
#pragma unroll
    for (int i = 0; i < ATTN_MAX_HD / 32; ++i) acc[i] = 0.0f;
    for (int j = start + warp; j < end; j += ATTN_WARPS) {
        const i64 blk = table[j / block_size];
        const i64 at = ((blk * kv_heads + kvh) * block_size + j % block_size) * head_dim;
        float s = 0.0f;
        for (int d = lane; d < head_dim; d += 32) s = fmaf(qs[d], E::load(k_cache[at + d]), s);
        s = warp_sum(s) * scale;
        const float m_new = fmaxf(m, s);
        const float corr = expf(m - m_new);
        const float e = expf(s - m_new);
        l = l * corr + e;
#pragma unroll
        for (int i = 0; i < ATTN_MAX_HD / 32; ++i) {
            const int d = lane + 32 * i;
            if (d < head_dim) acc[i] = acc[i] * corr + e * E::load(v_cache[at + d]);
        }
        m = m_new;
    }
    if (lane == 0) {
        wm[warp] = m;
        wl[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < ATTN_MAX_HD / 32; ++i) {
        const int d = lane + 32 * i;
        if (d < head_dim) wacc[warp][d] = acc[i];
    }
    __syncthreads();
    float mm = NEG_INF;
    for (int w = 0; w < ATTN_WARPS; ++w) mm = fmaxf(mm, wm[w]);
    float ll = 0.0f;
    for (int w = 0; w < ATTN_WARPS; ++w) {
        if (wl[w] > 0.0f) ll += wl[w] * expf(wm[w] - mm);
    }
    const i64 at = ((i64)blockIdx.x * gridDim.y + h) * parts + part;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float a = 0.0f;
        for (int w = 0; w < ATTN_WARPS; ++w) {
            if (wl[w] > 0.0f) a += wacc[w][d] * expf(wm[w] - mm);
        }
        if (parts == 1) {
            out[(i64)r * out_ld + (i64)h * head_dim + d] = E::store(a / ll);
        } else {
            part_acc[at * head_dim + d] = a;
        }
    }
    if (parts > 1 && threadIdx.x == 0) {
        part_m[at] = mm;
        part_l[at] = ll;
    }
}

// Merges the parts of attention_impl: grid (rows, heads), any block size; `rows` as there.
template <typename E>
__device__ void attention_reduce_impl(typename E::T* __restrict__ out, i64 out_ld,
                                      const float* __restrict__ part_m,
                                      const float* __restrict__ part_l,
                                      const float* __restrict__ part_acc, int parts,
                                      int head_dim, const int* __restrict__ rows) {
    const int r = rows != nullptr ? rows[blockIdx.x] : (int)blockIdx.x;
    const int h = blockIdx.y;
    const i64 base = ((i64)blockIdx.x * gridDim.y + h) * parts;
    float mm = NEG_INF;
    for (int i = 0; i < parts; ++i) mm = fmaxf(mm, part_m[base + i]);
    float ll = 0.0f;
    for (int i = 0; i < parts; ++i) {
        if (part_l[base + i] > 0.0f) ll += part_l[base + i] * expf(part_m[base + i] - mm);
    }
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float a = 0.0f;
        for (int i = 0; i < parts; ++i) {
            if (part_l[base + i] > 0.0f) {
                a += part_acc[(base + i) * head_dim + d] * expf(part_m[base + i] - mm);
            }
        }
        out[(i64)r * out_ld + (i64)h * head_dim + d] = E::store(a / ll);
    }
}

#define ATTENTION_KERNELS(NAME, E)                                                              \
    extern "C" __global__ void attention_##NAME(                                                \
        E::T* out, i64 out_ld, const E::T* q, i64 q_ld, const E::T* k_cache,                    \
        const E::T* v_cache, const int* tables, const i64* table_off, const int* pos,           \
        int kv_heads, int group, int head_dim, int block_size, float scale, int window,         \
        int part_len, float* part_m, float* part_l, float* part_acc, const int* rows) {         \
        attention_impl<E>(out, out_ld, q, q_ld, k_cache, v_cache, tables, table_off, pos,       \
                          kv_heads, group, head_dim, block_size, scale, window, part_len,       \
                          part_m, part_l, part_acc, rows);                                      \
    }                                                                                           \
    extern "C" __global__ void attention_reduce_##NAME(E::T* out, i64 out_ld,                   \
                                                       const float* part_m,                     \
                                                       const float* part_l,                     \
                                                       const float* part_acc, int parts,        \
                                                       int head_dim, const int* rows) {         \
        attention_reduce_impl<E>(out, out_ld, part_m, part_l, part_acc, parts, head_dim, rows); \
    }

ATTENTION_KERNELS(f32, F32)
ATTENTION_KERNELS(f16, F16)
ATTENTION_KERNELS(bf16, BF16)
