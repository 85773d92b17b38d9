// Rotary embeddings fused with the write into the paged KV cache. Each row of `qkv` is one
// token's fused projection [q (heads · hd) | k (kv_heads · hd) | v (kv_heads · hd)] (row stride
// `ld`): q is rotated in place; k is rotated and v copied into the token's slot of the cache
// (`slots[t]`, block · block_size + offset; -1 writes nothing). Rotate-half convention (HF
// llama): pairs (i, i + hd/2) turn by position · inv_freq[i]; inv_freq comes from the host with
// any scaling (default, llama3) applied. Cache layout per layer: [blocks, kv_heads, block_size,
// hd], each head's rows contiguous within a block. grid (tokens).

template <typename E>
__device__ void rope_kv_impl(typename E::T* qkv, i64 ld, typename E::T* __restrict__ k_cache,
                             typename E::T* __restrict__ v_cache,
                             const float* __restrict__ inv_freq, const int* __restrict__ positions,
                             const i64* __restrict__ slots, int heads, int kv_heads, int head_dim,
                             int block_size) {
    typedef typename E::T T;
    const i64 t = blockIdx.x;
    const int half = head_dim / 2;
    const float pos = (float)positions[t];
    T* row = qkv + t * ld;
    const i64 slot = slots[t];
    const i64 blk = slot >= 0 ? slot / block_size : 0;
    const int off = slot >= 0 ? (int)(slot % block_size) : 0;
    for (int p = threadIdx.x; p < (heads + kv_heads) * half; p += blockDim.x) {
        const int h = p / half;
        const int i = p - h * half;
        float s, c;
        sincosf(pos * inv_freq[i], &s, &c);
        T* head = row + (i64)h * head_dim;
        const float x1 = E::load(head[i]);
        const float x2 = E::load(head[i + half]);
        const float r1 = x1 * c - x2 * s;
        const float r2 = x2 * c + x1 * s;
        if (h < heads) {
            head[i] = E::store(r1);
            head[i + half] = E::store(r2);
        } else if (slot >= 0) {
            T* dst = k_cache + ((blk * kv_heads + (h - heads)) * block_size + off) * head_dim;
            dst[i] = E::store(r1);
            dst[i + half] = E::store(r2);
        }
    }
    if (slot < 0) return;
    const T* v = row + (i64)(heads + kv_heads) * head_dim;
    for (int e = threadIdx.x; e < kv_heads * head_dim; e += blockDim.x) {
        const int kh = e / head_dim;
        const int d = e - kh * head_dim;
        v_cache[((blk * kv_heads + kh) * block_size + off) * head_dim + d] = v[e];
    }
}

#define ROPE_KERNELS(NAME, E)                                                                   \
    extern "C" __global__ void rope_kv_##NAME(E::T* qkv, i64 ld, E::T* k_cache, E::T* v_cache,  \
                                              const float* inv_freq, const int* positions,      \
                                              const i64* slots, int heads, int kv_heads,        \
                                              int head_dim, int block_size) {                   \
        rope_kv_impl<E>(qkv, ld, k_cache, v_cache, inv_freq, positions, slots, heads, kv_heads, \
                        head_dim, block_size);                                                  \
    }

ROPE_KERNELS(f32, F32)
ROPE_KERNELS(f16, F16)
ROPE_KERNELS(bf16, BF16)
