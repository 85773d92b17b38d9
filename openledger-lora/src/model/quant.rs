//! Base projection weights in memory: widened to f32 (the default, and what the PEFT parity tests
//! and the trainer's f32 path use), kept as stored (bf16 / f16 files stay 2 bytes a weight), or
//! quantised to int8 at load (weight-only, symmetric, one scale per output channel or per group
//! of 64 / 128 inputs of a channel).
//!
//! A 16-bit or int8 projection `y = x·Wᵀ` reads `W` as held and accumulates in f32: the rows of
//! `W` are split between threads by output channel. bf16 and f16 tiles run the SGMV shrink
//! kernels (AVX2 + FMA + F16C where the CPU has them, the portable ones otherwise), which widen
//! them in registers; int8 tiles run a kernel of their own with AVX2 (8 bytes widened at a time,
//! each group's sum scaled into the total), and are widened and scaled into an f32 tile for the
//! portable shrink otherwise. Each output is one fixed chain of operations over its inputs
//! whatever the batch around it, so a sequence's logits do not depend on what it is batched
//! with.
//!
//! ```
//! use openledger_lora::model::{BaseWeight, WeightFormat};
//!
//! // W = [[1, 2], [3, -4]] (out = 2, in = 2), quantised per output channel.
//! let w = BaseWeight::from_f32(vec![1.0, 2.0, 3.0, -4.0], 2, 2, WeightFormat::Int8 { group: 0 });
//! let y = w.matmul(&[1.0, 1.0], 1, 2).unwrap();
//! assert!((y[0] - 3.0).abs() < 0.02 && (y[1] + 1.0).abs() < 0.04);
//! assert_eq!(w.bytes(), 4 + 2 * 4); // int8 weights and one f32 scale per channel
//! ```

use std::str::FromStr;

use candle_core::{Device, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

use super::error::ModelError;
use crate::sgmv::{Isa, LoraElement, detected_isa, shrink_native, shrink_portable};

/// How the base model's projection weights are held in memory (`--weights` of the server,
/// `weights=` of the bindings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightFormat {
    /// Every weight widened to f32 (the default).
    #[default]
    F32,
    /// As the file stores them: bf16 and f16 stay 16-bit, f32 stays f32.
    Stored,
    /// Quantised to int8 at load, symmetric: one f32 scale per `group` inputs of an output
    /// channel (`group = 0`: one scale for the whole channel). `group` must divide the input
    /// width of every projection.
    Int8 {
        /// Inputs per scale; 0 for one scale per output channel.
        group: usize,
    },
}

impl FromStr for WeightFormat {
    type Err = String;

    /// `f32`, `stored`, `int8` (per channel), `int8-g64`, `int8-g128` (or any `int8-gN`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "stored" => Ok(Self::Stored),
            "int8" => Ok(Self::Int8 { group: 0 }),
            _ => s
                .strip_prefix("int8-g")
                .and_then(|g| g.parse::<usize>().ok())
                .filter(|&g| g > 0 && g.is_multiple_of(8))
                .map(|group| Self::Int8 { group })
                .ok_or_else(|| {
                    format!(
                        "{s:?} is not a weight format: expected f32, stored, int8 or int8-gN (N a multiple of 8)"
                    )
                }),
        }
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::F32 => f.write_str("f32"),
            Self::Stored => f.write_str("stored"),
            Self::Int8 { group: 0 } => f.write_str("int8"),
            Self::Int8 { group } => write!(f, "int8-g{group}"),
        }
    }
}

/// Int8 weights `[out, in]` and their scales `[out, in / group]`: `W[o][k] ≈ q[o][k] ·
/// scales[o][k / group]`.
#[derive(Clone, Debug)]
pub struct Int8Weight {
    q: Vec<i8>,
    scales: Vec<f32>,
    group: usize,
}

impl Int8Weight {
    /// Quantises the row-major `[out, in]` weights `w` with one scale per `group` inputs
    /// (`group` divides `in`): `scale = max|w| / 127`, `q = round(w / scale)`.
    fn quantize(w: &[f32], n_in: usize, group: usize) -> Self {
        let group = if group == 0 { n_in } else { group };
        let mut q = vec![0i8; w.len()];
        let mut scales = Vec::with_capacity(w.len() / group.max(1));
        for (src, dst) in w.chunks_exact(group).zip(q.chunks_exact_mut(group)) {
            let max = src.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = max / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            for (d, v) in dst.iter_mut().zip(src) {
                *d = (v * inv).round().clamp(-127.0, 127.0) as i8;
            }
            scales.push(scale);
        }
        Self { q, scales, group }
    }

    /// Rows `[start, end)` widened and scaled into `out` (`(end - start) · in` values).
    fn widen_rows(&self, n_in: usize, start: usize, end: usize, out: &mut [f32]) {
        let q = &self.q[start * n_in..end * n_in];
        let scales = &self.scales[start * n_in / self.group..end * n_in / self.group];
        for ((qs, os), &s) in q
            .chunks_exact(self.group)
            .zip(out.chunks_exact_mut(self.group))
            .zip(scales)
        {
            for (o, &v) in os.iter_mut().zip(qs) {
                *o = f32::from(v) * s;
            }
        }
    }
}

/// One projection's `W` (`[out, in]`) as held in memory.
#[derive(Clone, Debug)]
pub enum BaseWeight {
    /// f32, as `Wᵀ` (`[in, out]`): a transposed view of the row-major `W`, multiplied by
    /// candle's gemm.
    F32(Tensor),
    /// bf16, row-major `[out, in]`.
    Bf16(Vec<bf16>),
    /// f16, row-major `[out, in]`.
    F16(Vec<f16>),
    /// int8 with scales.
    Int8(Int8Weight),
}

/// Output channels per tile of a 16-bit or int8 matmul: small enough that a tile of f32 rows
/// stays in L2, and a multiple of the kernels' 3- and 8-row blocks.
const TILE: usize = 24;

impl BaseWeight {
    /// The row-major `[rows, cols]` f32 weights `w` held in `format` (`Stored` keeps f32).
    pub fn from_f32(w: Vec<f32>, rows: usize, cols: usize, format: WeightFormat) -> Self {
        match format {
            WeightFormat::Int8 { group } => Self::Int8(Int8Weight::quantize(&w, cols, group)),
            _ => Self::F32(
                Tensor::from_vec(w, (rows, cols), &Device::Cpu)
                    .and_then(|t| t.t())
                    .expect("the shape holds the data"),
            ),
        }
    }

    /// The name of the in-memory type (`f32`, `bf16`, `f16`, `int8`).
    pub fn dtype_name(&self) -> &'static str {
        match self {
            Self::F32(_) => "f32",
            Self::Bf16(_) => "bf16",
            Self::F16(_) => "f16",
            Self::Int8(_) => "int8",
        }
    }

    /// Bytes held (weights and scales).
    pub fn bytes(&self) -> usize {
        match self {
            Self::F32(t) => t.elem_count() * 4,
            Self::Bf16(w) => w.len() * 2,
            Self::F16(w) => w.len() * 2,
            Self::Int8(w) => w.q.len() + w.scales.len() * 4,
        }
    }

    /// `Wᵀ` (`[in, out]`) in f32 for `out × in` weights: the held tensor for f32, else a
    /// widened (dequantised) copy — what the trainer differentiates through (QLoRA over an int8
    /// base computes with the dequantised weights).
    pub fn wt(&self, n_in: usize, n_out: usize) -> Result<Tensor, ModelError> {
        let rows = match self {
            Self::F32(t) => return Ok(t.clone()),
            _ => self.to_f32_rows(n_in, n_out),
        };
        Ok(Tensor::from_vec(rows, (n_out, n_in), &Device::Cpu)?.t()?)
    }

    /// `W` row-major `[out, in]` in f32 (widened, or dequantised).
    pub fn to_f32_rows(&self, n_in: usize, n_out: usize) -> Vec<f32> {
        match self {
            Self::F32(t) => t
                .t()
                .and_then(|w| w.contiguous())
                .and_then(|w| w.flatten_all())
                .and_then(|w| w.to_vec1::<f32>())
                .expect("an f32 CPU tensor reads back"),
            Self::Bf16(w) => w.iter().map(|v| v.to_f32()).collect(),
            Self::F16(w) => w.iter().map(|v| v.to_f32()).collect(),
            Self::Int8(w) => {
                let mut out = vec![0f32; n_in * n_out];
                w.widen_rows(n_in, 0, n_out, &mut out);
                out
            }
        }
    }

    /// `y = x·Wᵀ` for the `rows` rows of `x` (`[rows, in]`, `in = n_in`), `[rows, out]`.
    pub fn matmul(&self, x: &[f32], rows: usize, n_in: usize) -> Result<Vec<f32>, ModelError> {
        let held = match self {
            Self::F32(t) => {
                let xt = Tensor::from_slice(x, (rows, n_in), &Device::Cpu)?;
                return Ok(xt.matmul(t)?.flatten_all()?.to_vec1::<f32>()?);
            }
            Self::Bf16(w) => w.len(),
            Self::F16(w) => w.len(),
            Self::Int8(w) => w.q.len(),
        };
        let n_out = held / n_in.max(1);
        let mut y = vec![0f32; rows * n_out];
        if rows == 0 || n_out == 0 || n_in == 0 {
            return Ok(y);
        }
        let isa = detected_isa();
        let xs: Vec<&[f32]> = x.chunks_exact(n_in).collect();
        let tiles: Vec<(usize, Vec<f32>)> = (0..n_out.div_ceil(TILE))
            .into_par_iter()
            .map(|t| {
                let (start, end) = (t * TILE, ((t + 1) * TILE).min(n_out));
                let mut out = vec![0f32; rows * (end - start)];
                match self {
                    Self::Bf16(w) => tile(isa, &xs, &w[start * n_in..end * n_in], n_in, &mut out),
                    Self::F16(w) => tile(isa, &xs, &w[start * n_in..end * n_in], n_in, &mut out),
                    Self::Int8(w) => int8_tile(isa, &xs, w, n_in, start, end, &mut out),
                    Self::F32(_) => unreachable!("f32 returned above"),
                }
                (start, out)
            })
            .collect();
        for (start, out) in tiles {
            let width = out.len() / rows;
            for (r, part) in out.chunks_exact(width).enumerate() {
                y[r * n_out + start..r * n_out + start + width].copy_from_slice(part);
            }
        }
        Ok(y)
    }
}

/// `out[m][n] = Σ_k xs[m][k] · w[n][k]` for the tile's rows `w` (`[n, d]` row-major), `out`
/// `[rows, n]`.
fn tile<W: LoraElement>(isa: Isa, xs: &[&[f32]], w: &[W], d: usize, out: &mut [f32]) {
    let a: Vec<&[W]> = w.chunks_exact(d).collect();
    let n = a.len();
    let mut outs: Vec<&mut [f32]> = out.chunks_exact_mut(n).collect();
    if shrink_native(isa, xs, &a, &mut outs, d).is_some() {
        return;
    }
    let mut wide = vec![0f32; w.len()];
    W::widen_slice(w, &mut wide);
    let a: Vec<&[f32]> = wide.chunks_exact(d).collect();
    shrink_portable(xs, &a, &mut outs, d);
}

/// `out[m][c] = Σ_g scale[c][g] · Σ_{k∈g} xs[m][k] · q[c][k]` for the channels
/// `[start, end)` of `w`, `out` `[rows, end - start]`: with AVX2 the int8 rows are widened in
/// registers (each output one fixed chain: 8 lanes over `k` in order, a group's sum scaled
/// into the total at the group's end, the lanes folded pairwise), otherwise they are widened
/// and scaled into an f32 tile first.
fn int8_tile(
    isa: Isa,
    xs: &[&[f32]],
    w: &Int8Weight,
    n_in: usize,
    start: usize,
    end: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2Fma && n_in.is_multiple_of(8) {
        let q = &w.q[start * n_in..end * n_in];
        let groups = n_in / w.group;
        let scales = &w.scales[start * groups..end * groups];
        // SAFETY: `detected_isa` returned Avx2Fma only after checking the CPU's features;
        // `n_in` is a multiple of 8 and of the group (a multiple of 8), shapes as sliced.
        unsafe { x86::int8_rows(xs, q, scales, n_in, w.group, end - start, out) };
        return;
    }
    let mut wide = vec![0f32; (end - start) * n_in];
    w.widen_rows(n_in, start, end, &mut wide);
    tile(isa, xs, &wide, n_in, out);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `out[m][c]` of [`super::int8_tile`] for `n` channels `q` (`[n, d]`) and their scales
    /// (`[n, d / group]`): four x rows per converted weight vector, or one x row against four
    /// channels.
    ///
    /// # Safety
    /// AVX2 and FMA available; `d` and `group` multiples of 8, `group` divides `d`; every
    /// `xs[m]` holds `d` values, `q` `n · d`, `scales` `n · d / group`, `out` `xs.len() · n`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn int8_rows(
        xs: &[&[f32]],
        q: &[i8],
        scales: &[f32],
        d: usize,
        group: usize,
        n: usize,
        out: &mut [f32],
    ) {
        assert!(q.len() == n * d && scales.len() * group == n * d && out.len() == xs.len() * n);
        assert!(d.is_multiple_of(8) && group.is_multiple_of(8) && xs.iter().all(|x| x.len() >= d));
        let mut m = 0;
        while m + 4 <= xs.len() {
            for c in 0..n {
                // SAFETY: features enabled here; bounds asserted above.
                let v = unsafe { block::<4, 1>(&xs[m..m + 4], q, scales, d, group, c) };
                for r in 0..4 {
                    out[(m + r) * n + c] = v[r][0];
                }
            }
            m += 4;
        }
        while m < xs.len() {
            let mut c = 0;
            while c + 4 <= n {
                // SAFETY: as above.
                let v = unsafe { block::<1, 4>(&xs[m..m + 1], q, scales, d, group, c) };
                out[m * n + c..m * n + c + 4].copy_from_slice(&v[0]);
                c += 4;
            }
            while c < n {
                // SAFETY: as above.
                out[m * n + c] =
                    unsafe { block::<1, 1>(&xs[m..m + 1], q, scales, d, group, c) }[0][0];
                c += 1;
            }
            m += 1;
        }
    }

    /// `MR` x rows against channels `c .. c + NR`.
    #[inline(always)]
    unsafe fn block<const MR: usize, const NR: usize>(
        xs: &[&[f32]],
        q: &[i8],
        scales: &[f32],
        d: usize,
        group: usize,
        c: usize,
    ) -> [[f32; NR]; MR] {
        let groups = d / group;
        let xp: [*const f32; MR] = std::array::from_fn(|m| xs[m].as_ptr());
        let qp: [*const i8; NR] = std::array::from_fn(|j| q[(c + j) * d..].as_ptr());
        // SAFETY: loads stay below `d` in every row (asserted by the caller).
        unsafe {
            let mut total = [[_mm256_setzero_ps(); NR]; MR];
            for g in 0..groups {
                let mut acc = [[_mm256_setzero_ps(); NR]; MR];
                let mut k = g * group;
                while k < (g + 1) * group {
                    let wv: [__m256; NR] = std::array::from_fn(|j| {
                        let b = _mm_loadl_epi64(qp[j].add(k).cast::<__m128i>());
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b))
                    });
                    for m in 0..MR {
                        let xv = _mm256_loadu_ps(xp[m].add(k));
                        for j in 0..NR {
                            acc[m][j] = _mm256_fmadd_ps(xv, wv[j], acc[m][j]);
                        }
                    }
                    k += 8;
                }
                for j in 0..NR {
                    let s = _mm256_set1_ps(scales[(c + j) * groups + g]);
                    for m in 0..MR {
                        total[m][j] = _mm256_fmadd_ps(acc[m][j], s, total[m][j]);
                    }
                }
            }
            let mut out = [[0f32; NR]; MR];
            for m in 0..MR {
                for j in 0..NR {
                    let mut lanes = std::mem::transmute::<__m256, [f32; 8]>(total[m][j]);
                    let mut w = 8;
                    while w > 1 {
                        w /= 2;
                        for i in 0..w {
                            lanes[i] += lanes[i + w];
                        }
                    }
                    out[m][j] = lanes[0];
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w: &[f32], rows: usize, n_in: usize) -> Vec<f32> {
        let n_out = w.len() / n_in;
        let mut y = vec![0f64; rows * n_out];
        for r in 0..rows {
            for o in 0..n_out {
                y[r * n_out + o] = (0..n_in)
                    .map(|k| f64::from(x[r * n_in + k]) * f64::from(w[o * n_in + k]))
                    .sum();
            }
        }
        y.into_iter().map(|v| v as f32).collect()
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32 ^ seed).wrapping_mul(2_654_435_761) >> 8;
                (h as f32 / (1u32 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn sixteen_bit_weights_multiply_as_their_f32_widening() {
        let (n_in, n_out) = (72, 50);
        let w: Vec<f32> = values(n_in * n_out, 7)
            .iter()
            .map(|&v| bf16::from_f32(v).to_f32())
            .collect();
        for rows in [1, 3, 5, 9] {
            let x = values(rows * n_in, rows as u32);
            let want = reference(&x, &w, rows, n_in);
            let b = BaseWeight::Bf16(w.iter().map(|&v| bf16::from_f32(v)).collect());
            let h = BaseWeight::F16(w.iter().map(|&v| f16::from_f32(v)).collect());
            for got in [
                b.matmul(&x, rows, n_in).unwrap(),
                h.matmul(&x, rows, n_in).unwrap(),
            ] {
                for (g, e) in got.iter().zip(&want) {
                    assert!((g - e).abs() <= 1e-5 * (1.0 + e.abs()), "{g} vs {e}");
                }
            }
        }
    }

    #[test]
    fn int8_error_is_bounded_by_half_a_step_per_weight() {
        let (n_in, n_out) = (128, 40);
        let w = values(n_in * n_out, 3);
        let x = values(2 * n_in, 11);
        let exact = reference(&x, &w, 2, n_in);
        for group in [0, 64] {
            let q = BaseWeight::from_f32(w.clone(), n_out, n_in, WeightFormat::Int8 { group });
            let got = q.matmul(&x, 2, n_in).unwrap();
            let g = if group == 0 { n_in } else { group };
            for r in 0..2 {
                for o in 0..n_out {
                    // |Δy| ≤ Σ_k |x_k| · scale_k / 2 (rounding), with scale = max|w| / 127.
                    let bound: f32 = (0..n_in)
                        .map(|k| {
                            let s = w[o * n_in + k / g * g..o * n_in + (k / g + 1) * g]
                                .iter()
                                .fold(0f32, |m, v| m.max(v.abs()))
                                / 127.0;
                            x[r * n_in + k].abs() * s / 2.0
                        })
                        .sum();
                    let d = (got[r * n_out + o] - exact[r * n_out + o]).abs();
                    assert!(d <= bound * 1.001 + 1e-6, "{d} > {bound}");
                }
            }
            let back = q.to_f32_rows(n_in, n_out);
            let wt = q
                .wt(n_in, n_out)
                .unwrap()
                .t()
                .unwrap()
                .contiguous()
                .unwrap();
            assert_eq!(wt.flatten_all().unwrap().to_vec1::<f32>().unwrap(), back);
        }
    }

    #[test]
    fn an_int8_row_gives_the_same_bits_alone_and_in_any_batch() {
        let (n_in, n_out) = (64, 30);
        let w = values(n_in * n_out, 5);
        let x = values(9 * n_in, 13);
        for group in [0, 16] {
            let q = BaseWeight::from_f32(w.clone(), n_out, n_in, WeightFormat::Int8 { group });
            let all = q.matmul(&x, 9, n_in).unwrap();
            for r in 0..9 {
                let alone = q.matmul(&x[r * n_in..(r + 1) * n_in], 1, n_in).unwrap();
                assert_eq!(alone, all[r * n_out..(r + 1) * n_out], "row {r}");
            }
        }
    }

    #[test]
    fn formats_parse_and_print() {
        for s in ["f32", "stored", "int8", "int8-g64", "int8-g128"] {
            assert_eq!(s.parse::<WeightFormat>().unwrap().to_string(), s);
        }
        for bad in ["", "int4", "int8-g0", "int8-g12", "bf16x"] {
            assert!(bad.parse::<WeightFormat>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_zero_channel_quantises_to_zero() {
        let q = BaseWeight::from_f32(vec![0.0; 16], 2, 8, WeightFormat::Int8 { group: 0 });
        assert_eq!(q.matmul(&[1.0; 8], 1, 8).unwrap(), vec![0.0, 0.0]);
    }
}
