// Prefill attention on the tensor cores (flash-attention-2's scheme, with `mma.sync`): the
// query rows of one sequence, in tiles of up to PF_ROWS consecutive positions, against the keys
// and values of the paged KV cache (layout of rope_kv.cu: per layer [blocks, kv_heads,
// block_size, hd]) read through the sequence's block table, so a chunk of a prompt sees the
// chunks written before it. Causal (row at position p sees keys 0..=p), only the last `window`
// keys when window > 0; query head h reads KV head h / group; scores scaled by `scale`.
//
// A block takes one (tile, head): tiles[2·x] is the tile's first row, tiles[2·x + 1] its row
// count (1..=PF_ROWS), rows of one sequence at consecutive positions. Its 4 warps take 16 rows
// each, their queries held as mma A fragments. The keys from the earliest any row sees to the
// last row's position go by in steps of PF_KEYS: the block stages the step's keys and values in
// shared memory (16-byte loads, zeros past the end), each warp computes its 16×PF_KEYS scores
// S = Q·Kᵀ with m16n8k16 products (f32 accumulation), masks them, keeps an online softmax per
// row (running maximum and sum, in f32), rounds P = exp(S − max) to the element type and adds
// P·V into its f32 output fragments. At the end each row is divided by its sum and stored.
//
// Only the 16-bit types (the tensor cores' f16 and bf16), on sm_80 and later; head_dim a
// multiple of 16 up to PF_MAX_HD. grid (tiles, heads), PF_THREADS threads.

#define PF_WARPS 4
#define PF_THREADS (32 * PF_WARPS)
#define PF_ROWS (16 * PF_WARPS)
#define PF_KEYS 32
#define PF_MAX_HD 128
// Shared row stride in elements: 16 bytes of padding keep the fragment reads free of bank
// conflicts (rows 272 bytes apart fall on banks 4 apart).
#define PF_STRIDE (PF_MAX_HD + 8)

// D += A·B on the tensor cores for E's 16-bit type (fragment layout: kernels/emulate's
// emu_mma_m16n8k16).
template <typename E>
struct Mma;

// The specialisation for element type E, whose PTX type is PTX.
#ifdef OPENLEDGER_HOST_EMULATION
#define MMA_RUN(E, PTX) emu_mma_m16n8k16(d, a, b0, b1, &E::load);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
// No such product before sm_80: the model never launches this kernel there.
#define MMA_RUN(E, PTX) __trap();
#else
#define MMA_RUN(E, PTX)                                                                         \
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." PTX "." PTX                           \
                 ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"         \
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                               \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
#define MMA(E, PTX)                                                                             \
    template <>                                                                                 \
    struct Mma<E> {                                                                             \
        static __device__ __forceinline__ void run(float (&d)[4], const unsigned (&a)[4],       \
                                                   unsigned b0, unsigned b1) {                  \
            MMA_RUN(E, PTX)                                                                     \
        }                                                                                       \
    };

MMA(F16, "f16")
MMA(BF16, "bf16")

// Two values rounded to E's type in one register, `lo` in the low half.
template <typename E>
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
    return (unsigned)E::store(lo) | ((unsigned)E::store(hi) << 16);
}

template <typename E>
__device__ void prefill_attention_impl(typename E::T* __restrict__ out, i64 out_ld,
                                       const typename E::T* __restrict__ q, i64 q_ld,
                                       const typename E::T* __restrict__ k_cache,
                                       const typename E::T* __restrict__ v_cache,
                                       const int* __restrict__ tables,
                                       const i64* __restrict__ table_off,
                                       const int* __restrict__ pos,
                                       const int* __restrict__ tiles, int kv_heads, int group,
                                       int head_dim, int block_size, float scale, int window) {
    __shared__ __align__(16) u16 ks[PF_KEYS * PF_STRIDE];
    __shared__ __align__(16) u16 vs[PF_KEYS * PF_STRIDE];
    const int first = tiles[2 * blockIdx.x];
    const int nrows = tiles[2 * blockIdx.x + 1];
    const int h = blockIdx.y;
    const int kvh = h / group;
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2;
    const int t = lane & 3;
    const int* table = tables + table_off[first];
    // Keys from the first any row sees to the last row's own.
    const int hi = pos[first + nrows - 1] + 1;
    const int lo = window > 0 ? max(0, pos[first] - window + 1) : 0;
    // This thread's two rows (g and g + 8 of its warp's 16); -1: past the tile.
    const int ra = warp * 16 + g;
    const int rb = ra + 8;
    const int pa = ra < nrows ? pos[first + ra] : -1;
    const int pb = rb < nrows ? pos[first + rb] : -1;
    const int kts = head_dim / 16;
    // The warp's queries as A fragments, one per 16 dims.
    unsigned qf[PF_MAX_HD / 16][4];
#pragma unroll
    for (int kt = 0; kt < PF_MAX_HD / 16; ++kt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int row = (i & 1) ? rb : ra;
            const int col = kt * 16 + 2 * t + (i >= 2 ? 8 : 0);
            qf[kt][i] = 0u;
            if (kt < kts && row < nrows) {
                qf[kt][i] = *reinterpret_cast<const unsigned*>(
                    q + (i64)(first + row) * q_ld + (i64)h * head_dim + col);
            }
        }
    }
    float o[PF_MAX_HD / 8][4];
#pragma unroll
    for (int n = 0; n < PF_MAX_HD / 8; ++n) {
#pragma unroll
        for (int i = 0; i < 4; ++i) o[n][i] = 0.0f;
    }
    float ma = NEG_INF, mb = NEG_INF, la = 0.0f, lb = 0.0f;
    const int chunks = head_dim / 8;
    for (int k0 = lo; k0 < hi; k0 += PF_KEYS) {
        // Every warp is done with the previous step's keys.
        __syncthreads();
        for (int c = threadIdx.x; c < PF_KEYS * chunks; c += blockDim.x) {
            const int kr = c / chunks;
            const int part = c - kr * chunks;
            const int j = k0 + kr;
            uint4 kv = make_uint4(0u, 0u, 0u, 0u);
            uint4 vv = make_uint4(0u, 0u, 0u, 0u);
            if (j < hi) {
                const i64 blk = table[j / block_size];
                const i64 at =
                    ((blk * kv_heads + kvh) * block_size + j % block_size) * head_dim + part * 8;
                kv = *reinterpret_cast<const uint4*>(k_cache + at);
                vv = *reinterpret_cast<const uint4*>(v_cache + at);
            }
            *reinterpret_cast<uint4*>(ks + kr * PF_STRIDE + part * 8) = kv;
            *reinterpret_cast<uint4*>(vs + kr * PF_STRIDE + part * 8) = vv;
        }
        __syncthreads();
        // S = Q·Kᵀ: 8 keys per n-tile.
        float s[PF_KEYS / 8][4];
#pragma unroll
        for (int n = 0; n < PF_KEYS / 8; ++n) {
#pragma unroll
            for (int i = 0; i < 4; ++i) s[n][i] = 0.0f;
            const u16* krow = ks + (n * 8 + g) * PF_STRIDE + 2 * t;
#pragma unroll
            for (int kt = 0; kt < PF_MAX_HD / 16; ++kt) {
                if (kt < kts) {
                    const unsigned b0 = *reinterpret_cast<const unsigned*>(krow + kt * 16);
                    const unsigned b1 = *reinterpret_cast<const unsigned*>(krow + kt * 16 + 8);
                    Mma<E>::run(s[n], qf[kt], b0, b1);
                }
            }
        }
        // Scale and mask; each row's maximum over the step (the four threads of a group hold
        // a row's keys between them).
        float xa = NEG_INF, xb = NEG_INF;
#pragma unroll
        for (int n = 0; n < PF_KEYS / 8; ++n) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int j = k0 + n * 8 + 2 * t + (i & 1);
                const int p = i < 2 ? pa : pb;
                const bool seen = j < hi && j <= p && (window <= 0 || j > p - window);
                s[n][i] = seen ? s[n][i] * scale : NEG_INF;
            }
            xa = fmaxf(xa, fmaxf(s[n][0], s[n][1]));
            xb = fmaxf(xb, fmaxf(s[n][2], s[n][3]));
        }
        xa = fmaxf(xa, __shfl_xor_sync(0xffffffffu, xa, 1));
        xa = fmaxf(xa, __shfl_xor_sync(0xffffffffu, xa, 2));
        xb = fmaxf(xb, __shfl_xor_sync(0xffffffffu, xb, 1));
        xb = fmaxf(xb, __shfl_xor_sync(0xffffffffu, xb, 2));
        const float na = fmaxf(ma, xa);
        const float nb = fmaxf(mb, xb);
        // A row that has seen no key yet keeps a maximum of -inf: exponents are then taken
        // from 0, so every weight is exp(-inf) = 0 and nothing becomes NaN.
        const float ba = na == NEG_INF ? 0.0f : na;
        const float bb = nb == NEG_INF ? 0.0f : nb;
        const float ca = expf(ma - ba);
        const float cb = expf(mb - bb);
        float sa = 0.0f, sb = 0.0f;
#pragma unroll
        for (int n = 0; n < PF_KEYS / 8; ++n) {
            s[n][0] = expf(s[n][0] - ba);
            s[n][1] = expf(s[n][1] - ba);
            s[n][2] = expf(s[n][2] - bb);
            s[n][3] = expf(s[n][3] - bb);
            sa += s[n][0] + s[n][1];
            sb += s[n][2] + s[n][3];
        }
        sa += __shfl_xor_sync(0xffffffffu, sa, 1);
        sa += __shfl_xor_sync(0xffffffffu, sa, 2);
        sb += __shfl_xor_sync(0xffffffffu, sb, 1);
        sb += __shfl_xor_sync(0xffffffffu, sb, 2);
        la = la * ca + sa;
        lb = lb * cb + sb;
        ma = na;
        mb = nb;
#pragma unroll
        for (int n = 0; n < PF_MAX_HD / 8; ++n) {
            o[n][0] *= ca;
            o[n][1] *= ca;
            o[n][2] *= cb;
            o[n][3] *= cb;
        }
        // O += P·V, 16 keys per step: two n-tiles of S are one A fragment of P.
#pragma unroll
        for (int kk = 0; kk < PF_KEYS / 16; ++kk) {
            const unsigned pf[4] = {
                pack2<E>(s[2 * kk][0], s[2 * kk][1]),
                pack2<E>(s[2 * kk][2], s[2 * kk][3]),
                pack2<E>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                pack2<E>(s[2 * kk + 1][2], s[2 * kk + 1][3]),
            };
            const u16* v0 = vs + (kk * 16 + 2 * t) * PF_STRIDE + g;
#pragma unroll
            for (int n = 0; n < PF_MAX_HD / 8; ++n) {
                if (n < chunks) {
                    const u16* v = v0 + n * 8;
                    const unsigned b0 = (unsigned)v[0] | ((unsigned)v[PF_STRIDE] << 16);
                    const unsigned b1 =
                        (unsigned)v[8 * PF_STRIDE] | ((unsigned)v[9 * PF_STRIDE] << 16);
                    Mma<E>::run(o[n], pf, b0, b1);
                }
            }
        }
    }
    // Each row over its sum (every row of the tile sees at least its own key).
#pragma unroll
    for (int n = 0; n < PF_MAX_HD / 8; ++n) {
        if (n < chunks) {
            const int col = h * head_dim + n * 8 + 2 * t;
            if (ra < nrows) {
                typename E::T* at = out + (i64)(first + ra) * out_ld + col;
                at[0] = E::store(o[n][0] / la);
                at[1] = E::store(o[n][1] / la);
            }
            if (rb < nrows) {
                typename E::T* at = out + (i64)(first + rb) * out_ld + col;
                at[0] = E::store(o[n][2] / lb);
                at[1] = E::store(o[n][3] / lb);
            }
        }
    }
}

#define PREFILL_KERNELS(NAME, E)                                                                \
    extern "C" __global__ void prefill_attention_##NAME(                                        \
        E::T* out, i64 out_ld, const E::T* q, i64 q_ld, const E::T* k_cache,                    \
        const E::T* v_cache, const int* tables, const i64* table_off, const int* pos,           \
        const int* tiles, int kv_heads, int group, int head_dim, int block_size, float scale,   \
        int window) {                                                                           \
        prefill_attention_impl<E>(out, out_ld, q, q_ld, k_cache, v_cache, tables, table_off,    \
                                  pos, tiles, kv_heads, group, head_dim, block_size, scale,     \
                                  window);                                                      \
    }

PREFILL_KERNELS(f16, F16)
PREFILL_KERNELS(bf16, BF16)
