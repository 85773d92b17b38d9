//! Fused CPU ops of the differentiable forward pass, each one graph node with a hand-written
//! backward instead of the ten or so element-wise candle nodes it replaces (every candle node
//! costs a gradient buffer and, on several threads, a barrier in the backward pass):
//! - [`RmsNorm`]: `y = x · rsqrt(mean(x²) + eps) · w` per row, `w` frozen;
//! - [`Rope`]: the rotate-half rotary embedding of every head of every row.
//!
//! Both compute the forward values with the same arithmetic as the inference model's
//! [`openledger_lora::model::ops`].

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => candle_core::bail!("fused op needs a contiguous f32 input"),
    }
}

/// RMSNorm over rows of `w.len()` values with a frozen weight (already `1 + w` for Gemma).
#[derive(Clone)]
pub(crate) struct RmsNorm {
    pub w: std::sync::Arc<Vec<f32>>,
    pub eps: f32,
}

impl RmsNorm {
    fn inv(&self, row: &[f32]) -> f32 {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
        1.0 / (ms + self.eps).sqrt()
    }
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let mut y = Vec::with_capacity(x.len());
        for row in x.chunks_exact(self.w.len()) {
            let inv = self.inv(row);
            y.extend(row.iter().zip(self.w.iter()).map(|(v, g)| (v * inv) * g));
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op2_no_bwd(
            &x.contiguous()?,
            &RmsNormGrad(self.clone()),
        )?))
    }
}

/// `∂L/∂x` of [`RmsNorm`] from `(∂L/∂y, x)`: per row, with `g' = g ⊙ w`,
/// `dx = inv · g' − x · inv³ · (g' · x) / n`.
struct RmsNormGrad(RmsNorm);

impl CustomOp2 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, x) = (contiguous(s1, l1)?, contiguous(s2, l2)?);
        let n = self.0.w.len();
        let mut dx = Vec::with_capacity(x.len());
        for (gr, xr) in g.chunks_exact(n).zip(x.chunks_exact(n)) {
            let inv = self.0.inv(xr);
            let dot: f32 = gr
                .iter()
                .zip(self.0.w.iter())
                .zip(xr)
                .map(|((g, w), x)| g * w * x)
                .sum();
            let c = inv * inv * inv * dot / n as f32;
            dx.extend(
                gr.iter()
                    .zip(self.0.w.iter())
                    .zip(xr)
                    .map(|((g, w), x)| inv * g * w - x * c),
            );
        }
        Ok((CpuStorage::F32(dx), l2.shape().clone()))
    }
}

/// Rotary embedding of `[rows, heads · head_dim]` with per-row `cos` / `sin`
/// (`[rows, head_dim / 2]`), pairs `(i, i + head_dim / 2)` as HF llama.
#[derive(Clone)]
pub(crate) struct Rope {
    pub cos: std::sync::Arc<Vec<f32>>,
    pub sin: std::sync::Arc<Vec<f32>>,
    pub half: usize,
    /// Rotate by `−θ` (the backward of a rotation by `θ`).
    pub inverse: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous(s, l)?;
        let rows = self.cos.len() / self.half;
        if rows == 0 || x.len() % rows != 0 {
            candle_core::bail!("rope: {} values for {rows} rows", x.len());
        }
        let width = x.len() / rows;
        let mut y = vec![0f32; x.len()];
        for r in 0..rows {
            let cs = &self.cos[r * self.half..(r + 1) * self.half];
            let sn = &self.sin[r * self.half..(r + 1) * self.half];
            let xr = &x[r * width..(r + 1) * width];
            let yr = &mut y[r * width..(r + 1) * width];
            for (xh, yh) in xr
                .chunks_exact(2 * self.half)
                .zip(yr.chunks_exact_mut(2 * self.half))
            {
                for i in 0..self.half {
                    let (c, s) = (cs[i], if self.inverse { -sn[i] } else { sn[i] });
                    let (x1, x2) = (xh[i], xh[i + self.half]);
                    yh[i] = x1 * c - x2 * s;
                    yh[i + self.half] = x2 * c + x1 * s;
                }
            }
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let mut back = self.clone();
        back.inverse = !self.inverse;
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}
