// The element-wise and per-row kernels of the model's forward pass: the embedding gather,
// RMSNorm (optionally fused with the residual add before it; Gemma's `1 + w`) and the gated
// MLP activation (SiLU, GELU tanh, GELU erf). One block per row; f32 arithmetic; results
// stored in the model's dtype, as the CPU model computes them in f32 (openledger-lora's
// model::ops).

// out[i, :] = table[ids[i], :] · scale (copied as stored when scale is 1; Gemma scales its
// embeddings by √hidden); grid (rows). The ids are checked on the host.
template <typename E>
__device__ void embed_impl(typename E::T* __restrict__ out, const typename E::T* __restrict__ table,
                           const int* __restrict__ ids, int dim, float scale) {
    const i64 row = blockIdx.x;
    const typename E::T* src = table + (i64)ids[row] * dim;
    if (scale == 1.0f) {
        for (int k = threadIdx.x; k < dim; k += blockDim.x) out[row * dim + k] = src[k];
    } else {
        for (int k = threadIdx.x; k < dim; k += blockDim.x)
            out[row * dim + k] = E::store(E::load(src[k]) * scale);
    }
}

// Each row of `x` (`dim` wide): with `residual`, first `residual = x + residual` (rounded to E,
// as the model holds it), then out = h · 1/sqrt(mean(h²) + eps) · g with h the (summed) row and
// g = w, or 1 + w when `one_plus`. `out` may be `x`. grid (rows).
template <typename E>
__device__ void rms_norm_impl(typename E::T* out, const typename E::T* x, typename E::T* residual,
                              const typename E::T* __restrict__ w, int dim, float eps,
                              int one_plus) {
    const i64 base = (i64)blockIdx.x * dim;
    float ss = 0.0f;
    for (int k = threadIdx.x; k < dim; k += blockDim.x) {
        float h = E::load(x[base + k]);
        if (residual != nullptr) {
            const typename E::T sum = E::store(h + E::load(residual[base + k]));
            residual[base + k] = sum;
            h = E::load(sum);
        }
        ss += h * h;
    }
    ss = block_sum(ss);
    const float inv = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int k = threadIdx.x; k < dim; k += blockDim.x) {
        const float h = E::load(residual != nullptr ? residual[base + k] : x[base + k]);
        float g = E::load(w[k]);
        if (one_plus) g = 1.0f + g;
        out[base + k] = E::store((h * inv) * g);
    }
}

// act(gate) · up for each row of `gate_up` ([gate | up], 2 · inter wide) into `out` (inter
// wide); act 0: SiLU, 1: GELU (tanh), 2: GELU (erf). grid (rows, ceil(inter / blockDim.x)).
template <typename E>
__device__ void gated_impl(typename E::T* __restrict__ out,
                           const typename E::T* __restrict__ gate_up, int inter, int act) {
    const i64 row = blockIdx.x;
    const int i = blockIdx.y * blockDim.x + threadIdx.x;
    if (i >= inter) return;
    const float g = E::load(gate_up[row * 2 * inter + i]);
    const float u = E::load(gate_up[row * 2 * inter + inter + i]);
    float a;
    if (act == 0) {
        a = g / (1.0f + expf(-g));
    } else if (act == 1) {
        const float c = 0.7978845608028654f;  // sqrt(2 / pi)
        a = 0.5f * g * (1.0f + tanhf(c * (g + 0.044715f * g * g * g)));
    } else {
        a = 0.5f * g * (1.0f + erff(g / 1.4142135623730951f));
    }
    out[row * inter + i] = E::store(a * u);
}

#define LAYER_KERNELS(NAME, E)                                                                  \
    extern "C" __global__ void embed_##NAME(E::T* out, const E::T* table, const int* ids,       \
                                            int dim, float scale) {                             \
        embed_impl<E>(out, table, ids, dim, scale);                                             \
    }                                                                                           \
    extern "C" __global__ void rms_norm_##NAME(E::T* out, const E::T* x, E::T* residual,        \
                                               const E::T* w, int dim, float eps,               \
                                               int one_plus) {                                  \
        rms_norm_impl<E>(out, x, residual, w, dim, eps, one_plus);                              \
    }                                                                                           \
    extern "C" __global__ void gated_##NAME(E::T* out, const E::T* gate_up, int inter,         \
                                            int act) {                                          \
        gated_impl<E>(out, gate_up, inter, act);                                                \
    }

LAYER_KERNELS(f32, F32)
LAYER_KERNELS(f16, F16)
LAYER_KERNELS(bf16, BF16)
