// Sampling on the device, one block per row of logits, so that only token ids come back: the
// repetition penalty, a check for NaN / +inf, greedy (temperature 0), and a draw with
// temperature over every finite token (in id order) or over the top k (k ≤ SAMPLE_MAX_K, most
// likely first, ties to the lower id) optionally cut to the top-p nucleus, as openledger-lora's
// CPU sampler (serve::Sampler) does. The uniform draw `u` of each row comes from the host (the
// request's seeded generator). Over the top k, the sums run in the CPU's order (one thread, in
// the sorted order), so the same `u` picks the same token; over the whole vocabulary the sums
// are split over the block, and a different token can come out only where `u` falls within
// rounding of a boundary between two tokens.
//
// Per row r: out[2r] is the token, or -1 when a logit is NaN or +inf (its index in out[2r+1]),
// -2 when no token is finite, -3 when the parameters are not done here (top-p without top-k,
// top-k above SAMPLE_MAX_K). `scratch` holds rows × vocab f32. grid (rows), a multiple of 32
// threads up to SAMPLE_THREADS.

#define SAMPLE_THREADS 256
#define SAMPLE_MAX_K 256

// (value, id) with the larger value first and, on ties, the lower id.
__device__ __forceinline__ bool sample_before(float a, int ia, float b, int ib) {
    return a > b || (a == b && ia < ib);
}

// The block's first (value, id) in that order; every thread gets it.
__device__ __forceinline__ void block_best(float& v, int& id) {
    __shared__ float bv[SAMPLE_THREADS / 32];
    __shared__ int bi[SAMPLE_THREADS / 32];
    for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, off);
        const int oi = __shfl_xor_sync(0xffffffffu, id, off);
        if (sample_before(ov, oi, v, id)) {
            v = ov;
            id = oi;
        }
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) {
        bv[threadIdx.x >> 5] = v;
        bi[threadIdx.x >> 5] = id;
    }
    __syncthreads();
    v = bv[0];
    id = bi[0];
    for (int w = 1; w < (int)(blockDim.x >> 5); ++w) {
        if (sample_before(bv[w], bi[w], v, id)) {
            v = bv[w];
            id = bi[w];
        }
    }
}

// The row's first (value, id) over `vocab` values of `l` (NEG_INF, vocab when all are masked);
// every thread gets it.
__device__ __forceinline__ void row_best(const float* l, int vocab, float& v, int& id) {
    v = NEG_INF;
    id = vocab;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        if (sample_before(l[i], i, v, id)) {
            v = l[i];
            id = i;
        }
    }
    block_best(v, id);
}

template <typename E>
__device__ void sample_impl(int* __restrict__ out, const typename E::T* __restrict__ logits,
                            int vocab, const int* __restrict__ hist,
                            const i64* __restrict__ hist_off, const float* __restrict__ temp,
                            const int* __restrict__ top_k, const float* __restrict__ top_p,
                            const float* __restrict__ penalty, const float* __restrict__ u,
                            float* __restrict__ scratch) {
    __shared__ int chosen[SAMPLE_MAX_K];
    __shared__ float prob[SAMPLE_MAX_K];
    __shared__ int bad;
    __shared__ float part[SAMPLE_THREADS];
    const int r = blockIdx.x;
    const int t = threadIdx.x;
    const typename E::T* row = logits + (i64)r * vocab;
    float* l = scratch + (i64)r * vocab;
    if (t == 0) bad = vocab;
    __syncthreads();
    for (int i = t; i < vocab; i += blockDim.x) {
        const float x = E::load(row[i]);
        l[i] = x;
        if (x != x || x == -NEG_INF) atomicMin(&bad, i);
    }
    __syncthreads();
    // The penalty, once per distinct token of the history (the host gives each once).
    const float rp = penalty[r];
    if (rp != 1.0f) {
        for (i64 h = hist_off[r] + t; h < hist_off[r + 1]; h += blockDim.x) {
            const int tok = hist[h];
            if (tok >= 0 && tok < vocab) {
                const float x = l[tok];
                l[tok] = x > 0.0f ? x / rp : x * rp;
                if (l[tok] == -NEG_INF) atomicMin(&bad, tok);
            }
        }
    }
    __syncthreads();
    if (bad < vocab) {
        if (t == 0) {
            out[2 * r] = -1;
            out[2 * r + 1] = bad;
        }
        return;
    }
    float bv;
    int bi;
    row_best(l, vocab, bv, bi);
    if (t == 0) out[2 * r + 1] = -1;
    if (bv == NEG_INF) {
        if (t == 0) out[2 * r] = -2;
        return;
    }
    const float tr = temp[r];
    const int k = top_k[r];
    const float p = top_p[r];
    if (tr == 0.0f) {
        if (t == 0) out[2 * r] = bi;
        return;
    }
    if (k > SAMPLE_MAX_K || (k == 0 && p < 1.0f)) {
        if (t == 0) out[2 * r] = -3;
        return;
    }
    const float mx = bv;
    if (k > 0) {
        // The top k, most likely first: k rounds of the block's best, each taken out.
        int n = 0;
        for (; n < k; ++n) {
            float v;
            int id;
            row_best(l, vocab, v, id);
            if (v == NEG_INF) break;
            if (t == 0) {
                chosen[n] = id;
                prob[n] = v;
                l[id] = NEG_INF;
            }
            __syncthreads();
        }
        if (t != 0) return;
        // The CPU's arithmetic, in its order.
        float z = 0.0f;
        for (int i = 0; i < n; ++i) {
            prob[i] = expf((prob[i] - mx) / tr);
            z += prob[i];
        }
        for (int i = 0; i < n; ++i) prob[i] /= z;
        int keep = n;
        if (p < 1.0f) {
            float acc = 0.0f;
            for (int i = 0; i < n; ++i) {
                acc += prob[i];
                if (acc >= p) {
                    keep = i + 1;
                    break;
                }
            }
            float z2 = 0.0f;
            for (int i = 0; i < keep; ++i) z2 += prob[i];
            for (int i = 0; i < keep; ++i) prob[i] /= z2;
        }
        int tok = chosen[keep - 1];
        if (keep > 1) {
            float acc = 0.0f;
            for (int i = 0; i < keep; ++i) {
                acc += prob[i];
                if (u[r] < acc) {
                    tok = chosen[i];
                    break;
                }
            }
        }
        out[2 * r] = tok;
        return;
    }
    // Every finite token, in id order: each thread sums a contiguous run of ids.
    const int per = (vocab + blockDim.x - 1) / blockDim.x;
    const int lo = min(vocab, t * per);
    const int hi = min(vocab, lo + per);
    float s = 0.0f;
    for (int i = lo; i < hi; ++i) {
        if (l[i] > NEG_INF) s += expf((l[i] - mx) / tr);
    }
    part[t] = s;
    __syncthreads();
    if (t != 0) return;
    float z = 0.0f;
    for (int i = 0; i < (int)blockDim.x; ++i) z += part[i];
    const float target = u[r] * z;
    float acc = 0.0f;
    int last = bi;
    for (int c = 0; c < (int)blockDim.x; ++c) {
        if (acc + part[c] <= target && c + 1 < (int)blockDim.x) {
            acc += part[c];
            continue;
        }
        const int clo = min(vocab, c * per);
        const int chi = min(vocab, clo + per);
        for (int i = clo; i < chi; ++i) {
            if (l[i] > NEG_INF) {
                last = i;
                acc += expf((l[i] - mx) / tr);
                if (target < acc) {
                    out[2 * r] = i;
                    return;
                }
            }
        }
        if (c + 1 == (int)blockDim.x) break;
    }
    // Rounding left the sum just below the target: the last finite token.
    out[2 * r] = last;
}

#define SAMPLE_KERNELS(NAME, E)                                                                 \
    extern "C" __global__ void sample_##NAME(int* out, const E::T* logits, int vocab,           \
                                             const int* hist, const i64* hist_off,              \
                                             const float* temp, const int* top_k,               \
                                             const float* top_p, const float* penalty,          \
                                             const float* u, float* scratch) {                  \
        sample_impl<E>(out, logits, vocab, hist, hist_off, temp, top_k, top_p, penalty, u,      \
                       scratch);                                                                \
    }

SAMPLE_KERNELS(f32, F32)
SAMPLE_KERNELS(f16, F16)
SAMPLE_KERNELS(bf16, BF16)
