//! The numeric building blocks of the forward pass, on row-major f32 slices: RMSNorm, rotary
//! embeddings (with LLaMA 3 scaling), activations and causal (optionally sliding-window)
//! grouped-query attention. Public so that they can be checked one by one against plain math.
//!
//! ```
//! use openledger_lora::model::ops::{gqa_kv_head, rms_norm};
//!
//! let mut x = [3.0f32, 4.0];
//! rms_norm(&mut x, &[1.0, 1.0], 0.0, false);
//! let r = (12.5f32).sqrt();
//! assert!((x[0] - 3.0 / r).abs() < 1e-6 && (x[1] - 4.0 / r).abs() < 1e-6);
//! assert_eq!(gqa_kv_head(5, 8, 2), 1); // 8 query heads share 2 key/value heads
//! ```

use rayon::prelude::*;

use super::config::{Activation, RopeScaling};

/// RMSNorm over each row of `x` (rows of `w.len()` values) in place:
/// `x · rsqrt(mean(x²) + eps) · w`, or `· (1 + w)` when `one_plus` (Gemma).
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32, one_plus: bool) {
    let n = w.len();
    for row in x.chunks_exact_mut(n) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for (v, g) in row.iter_mut().zip(w) {
            let g = if one_plus { 1.0 + g } else { *g };
            *v = (*v * inv) * g;
        }
    }
}

/// Inverse rotary frequencies (`head_dim / 2` values), with the given scaling applied.
pub fn rope_inv_freq(head_dim: usize, theta: f32, scaling: RopeScaling) -> Vec<f32> {
    let base: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    match scaling {
        RopeScaling::Default => base,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        } => {
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// Rotates `x` (`[tokens, heads · head_dim]`, token `t` at position `first_pos + t`) in place
/// with the rotate-half convention of HF llama: pairs `(i, i + head_dim/2)`.
pub fn apply_rope(x: &mut [f32], heads: usize, inv_freq: &[f32], first_pos: usize) {
    let head_dim = inv_freq.len() * 2;
    let half = inv_freq.len();
    for (pos, row) in x.chunks_exact_mut(heads * head_dim).enumerate() {
        let cs: Vec<(f32, f32)> = inv_freq
            .iter()
            .map(|f| {
                let (s, c) = ((first_pos + pos) as f32 * f).sin_cos();
                (c, s)
            })
            .collect();
        for head in row.chunks_exact_mut(head_dim) {
            for (i, &(c, s)) in cs.iter().enumerate() {
                let (x1, x2) = (head[i], head[i + half]);
                head[i] = x1 * c - x2 * s;
                head[i + half] = x2 * c + x1 * s;
            }
        }
    }
}

/// The key/value head query head `q_head` reads under grouped-query attention.
pub fn gqa_kv_head(q_head: usize, heads: usize, kv_heads: usize) -> usize {
    q_head / (heads / kv_heads)
}

/// Whether a query at position `i` attends to the key at `j` (causal, with optional window).
pub fn attends(i: usize, j: usize, window: Option<usize>) -> bool {
    j <= i && window.is_none_or(|w| i - j < w)
}

/// The shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Per-head dimension.
    pub head_dim: usize,
    /// Sliding window, if any.
    pub window: Option<usize>,
}

/// Causal softmax attention of one sequence: `q` `[t, heads·d]` holds the queries of positions
/// `past..past + t`, `k`, `v` `[past + t, kv_heads·d]` the keys and values of every position so
/// far; returns `[t, heads·d]`. Scores are scaled by `1/√d`.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], s: AttentionShape, past: usize) -> Vec<f32> {
    let (h, kvh, d) = (s.heads, s.kv_heads, s.head_dim);
    let t = q.len() / (h * d);
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; t * h * d];
    out.par_chunks_mut(h * d)
        .enumerate()
        .for_each(|(qi_row, row)| {
            let i = past + qi_row;
            let mut scores = vec![0f32; i + 1];
            for head in 0..h {
                let kv = gqa_kv_head(head, h, kvh);
                let qi = &q[qi_row * h * d + head * d..][..d];
                let mut m = f32::NEG_INFINITY;
                for (j, sc) in scores.iter_mut().enumerate() {
                    *sc = if attends(i, j, s.window) {
                        let kj = &k[j * kvh * d + kv * d..][..d];
                        qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale
                    } else {
                        f32::NEG_INFINITY
                    };
                    m = m.max(*sc);
                }
                let mut z = 0f32;
                for sc in scores.iter_mut() {
                    *sc = (*sc - m).exp();
                    z += *sc;
                }
                let o = &mut row[head * d..][..d];
                for (j, e) in scores.iter().enumerate() {
                    if *e == 0.0 {
                        continue;
                    }
                    let p = e / z;
                    let vj = &v[j * kvh * d + kv * d..][..d];
                    o.iter_mut().zip(vj).for_each(|(a, b)| *a += p * b);
                }
            }
        });
    out
}

/// `erf` (Abramowitz–Stegun 7.1.26 refined by one Newton step is not needed at f32: this
/// rational approximation has absolute error below 1.5e-7).
fn erf(x: f32) -> f32 {
    let x64 = x as f64;
    let sign = x64.signum();
    let a = x64.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
            + 0.254_829_592)
            * t
            * (-a * a).exp();
    (sign * y) as f32
}

/// The activation of one value.
pub fn activate(act: Activation, x: f32) -> f32 {
    match act {
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::GeluTanh => {
            let c = (2.0f32 / std::f32::consts::PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044_715 * x * x * x)).tanh())
        }
        Activation::Gelu => 0.5 * x * (1.0 + erf(x / std::f32::consts::SQRT_2)),
    }
}

/// Gated MLP input: `act(gate) · up`, element-wise, into `gate`.
pub fn gated(act: Activation, gate: &mut [f32], up: &[f32]) {
    gate.par_iter_mut()
        .zip(up.par_iter())
        .for_each(|(g, u)| *g = activate(act, *g) * u);
}
