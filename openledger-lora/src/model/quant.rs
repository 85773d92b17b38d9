//! Base projection weights in memory: widened to f32 (the default, and what the PEFT parity tests
//! and the trainer's f32 path use), kept as stored (bf16 / f16 files stay 2 bytes a weight), or
//! quantised to int8 at load (weight-only, symmetric, one scale per output channel or per group
//! of 64 / 128 inputs of a channel).
//!
//! A 16-bit or int8 projection `y = x·Wᵀ` reads `W` as held and accumulates in f32: the rows of
//! `W` are split between threads by output channel. bf16 and f16 tiles run the SGMV shrink
//! kernels (AVX2 + FMA + F16C where the CPU has them, the portable ones otherwise), which widen
//! them in registers. With AVX2, an int8 projection whose input width and group are multiples
//! of 32 and whose channels come in eights is held packed (eight channels to a vector, sixteen
//! where the CPU has AVX-512 VNNI and the channels come in sixteens) and quantises its
//! activations too, per block of 32 inputs (symmetric, one f32 scale each: what llama.cpp does
//! for its Q8_0 dot products), multiplying int8 by int8 in exact 32-bit sums (`vpmaddubsw` +
//! `vpmaddwd`, AVX-VNNI's `vpdpbusd`, or AVX-512 VNNI's on unsigned weights with the offset
//! taken back), each block's sums scaled by both scales, the same bits on every path; other
//! int8 projections widen 8 weights at a time in registers against the f32
//! activations (each group's sum scaled into the total), and without AVX2 are widened into an
//! f32 tile for the portable shrink. Each 16-bit or int8 output is one fixed chain of
//! operations over its inputs whatever the batch around it, so a sequence's logits do not
//! depend on what it is batched with. f32 projections of up to 8 rows run the same threaded
//! tiles over the f32 weights (candle's matmul keeps about one core busy for so few rows), and
//! candle's matmul above that.
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
use half::slice::HalfFloatSliceExt;
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
    /// As the file stores them: bf16 and f16 stay 16-bit, f32 stays f32, a GGUF file's
    /// blocks of 32 (Q8_0, Q4_0, Q5_0; with their minimums Q4_1, Q5_1, Q4_K, Q5_K) stay int8
    /// in groups of 32, their values exact (its Q6_K is widened to f32).
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
///
/// On AVX2 CPUs a weight whose channels come in eights and whose inputs and groups come in 32s
/// is held packed for the int8 × int8 kernels, `L` channels to a vector: for each `L` channels
/// and each block of 32 inputs, eight vectors of `4·L` bytes (four consecutive inputs of each
/// of the `L` channels), then for each `L` channels, their `L` scales of each group. `L` is 16
/// where the CPU has AVX-512 VNNI and the channels come in sixteens (the bytes then held as
/// `w + 128`, unsigned, as `vpdpbusd` multiplies them), else 8.
///
/// A weight may also have one minimum per group of each channel (GGUF's Q4_1, Q5_1 and the
/// k-quants store `scale · q + min`): the kernels multiply the integers as for symmetric
/// weights, and each group's `min · Σx` is added after, from the sums of the inputs the
/// kernels multiplied.
#[derive(Clone, Debug)]
pub struct Int8Weight {
    q: Vec<i8>,
    scales: Vec<f32>,
    /// Each group's minimum, `[in / group, out]` (by group, then channel); `None`: zero.
    mins: Option<Vec<f32>>,
    group: usize,
    /// Channels per vector of the packed layout; 0 where the weights are row-major.
    lanes: usize,
}

impl Int8Weight {
    /// Int8 weights `q` (`[out, in]` row-major) with one scale per `group` inputs of a channel
    /// (`scales`: `[out, in / group]`) and, where given, one minimum (`mins`, the same shape):
    /// the values `scale · q + min`, as a file stores them (GGUF's Q8_0 and Q4_0: groups of 32
    /// with scales; Q4_1, Q5_1, Q4_K and Q5_K: with minimums too).
    pub(crate) fn from_parts(
        q: Vec<i8>,
        scales: Vec<f32>,
        mins: Option<Vec<f32>>,
        group: usize,
        n_in: usize,
    ) -> Self {
        debug_assert_eq!(q.len(), scales.len() * group);
        let groups = n_in / group.max(1);
        let n_out = scales.len() / groups.max(1);
        // Minimums by group, then channel: a group's add runs over contiguous channels.
        let mins = mins.map(|m| {
            debug_assert_eq!(m.len(), scales.len());
            let mut t = vec![0f32; m.len()];
            for (o, row) in m.chunks_exact(groups).enumerate() {
                for (g, &v) in row.iter().enumerate() {
                    t[g * n_out + o] = v;
                }
            }
            t
        });
        Self {
            q,
            scales,
            mins,
            group,
            lanes: 0,
        }
        .packed_for_cpu(n_in)
    }

    /// Adds each group's `min · Σx` to `out` (`[rows, end - start]`, channels `[start, end)`
    /// of `n_out`), `sums` (`[rows, in / group]`) the rows' sums of inputs per group; nothing
    /// where this weight has no minimums. Each output takes one fused multiply-add per group,
    /// groups in order, whatever the vector width: the bits do not depend on the kernel that
    /// filled `out` nor on the instructions that add.
    fn add_mins(&self, sums: &[f32], n_out: usize, start: usize, end: usize, out: &mut [f32]) {
        let Some(mins) = &self.mins else {
            return;
        };
        let groups = mins.len() / n_out.max(1);
        if groups == 0 || end == start {
            return;
        }
        let m = Mins {
            sums,
            groups,
            mins,
            n_out,
            start,
            width: end - start,
        };
        #[cfg(target_arch = "x86_64")]
        if detected_isa() == Isa::Avx2Fma {
            // SAFETY: AVX2 and FMA detected (AVX-512 where `has_avx512_vnni` said so); the
            // shapes are those of `Mins`.
            unsafe {
                if x86::has_avx512_vnni() {
                    x86::add_mins_avx512(&m, out)
                } else {
                    x86::add_mins_avx2(&m, out)
                }
            }
            return;
        }
        m.add_from(0, out);
    }

    /// The rows' sums of inputs per group (`[rows, in / group]`) where this weight has
    /// minimums; empty otherwise.
    fn group_sums(&self, x: &[f32]) -> Vec<f32> {
        if self.mins.is_none() || self.group == 0 {
            return Vec::new();
        }
        x.chunks_exact(self.group)
            .map(|g| g.iter().fold(0f32, |a, &v| a + v))
            .collect()
    }

    /// [`Self::group_sums`] of the quantised activations (`xd`, `xs`: each block's scale and
    /// sum of values), as the int8 × int8 kernels multiply them: the minimums then see the
    /// same inputs as the integers, and the product is that of the weights' exact values and
    /// the quantised inputs, as for the symmetric types (llama.cpp's Q4_1 × Q8_1 dot takes
    /// the same `d · Σq`).
    fn quantised_group_sums(&self, xd: &[f32], xs: &[i32]) -> Vec<f32> {
        if self.mins.is_none() || self.group == 0 {
            return Vec::new();
        }
        let per = self.group / QBLOCK;
        xd.chunks_exact(per)
            .zip(xs.chunks_exact(per))
            .map(|(d, s)| d.iter().zip(s).fold(0f32, |a, (&d, &s)| a + d * s as f32))
            .collect()
    }

    /// Channels per vector of the layout `[n_out, n_in]` weights in groups of `group` are held
    /// in on this CPU: 16, 8, or 0 (row-major).
    fn pack_lanes(n_in: usize, n_out: usize, group: usize) -> usize {
        if !quantises_activations(detected_isa(), n_in, group) || n_in == 0 {
            return 0;
        }
        #[cfg(target_arch = "x86_64")]
        if x86::has_avx512_vnni() && n_out.is_multiple_of(16) {
            return 16;
        }
        if n_out.is_multiple_of(8) { 8 } else { 0 }
    }

    /// This row-major weight packed for the int8 × int8 kernels where [`Self::pack_lanes`]
    /// says so.
    fn packed_for_cpu(self, n_in: usize) -> Self {
        let n_out = self.q.len() / n_in.max(1);
        let lanes = Self::pack_lanes(n_in, n_out, self.group);
        self.packed_as(n_in, lanes)
    }

    /// This row-major weight packed `lanes` channels to a vector (16 or 8; 0 leaves it as it
    /// is).
    fn packed_as(self, n_in: usize, lanes: usize) -> Self {
        let n_out = self.q.len() / n_in.max(1);
        if self.lanes != 0 || lanes == 0 {
            return self;
        }
        debug_assert!(n_out.is_multiple_of(lanes) && n_in.is_multiple_of(QBLOCK));
        let nb = n_in / QBLOCK;
        let groups = n_in / self.group;
        let mut q = vec![0i8; self.q.len()];
        let mut scales = vec![0f32; self.scales.len()];
        // The 16-lane kernel multiplies unsigned weights: `w + 128` (`w ^ 0x80` in two's
        // complement), the offset taken back through the activations' block sums.
        let flip = if lanes == 16 { 0x80u8 as i8 } else { 0 };
        for o in 0..n_out {
            let (cg, c) = (o / lanes, o % lanes);
            for b in 0..nb {
                let base = (cg * nb + b) * QBLOCK * lanes;
                for k in 0..QBLOCK {
                    q[base + (k / 4) * 4 * lanes + c * 4 + k % 4] =
                        self.q[o * n_in + b * QBLOCK + k] ^ flip;
                }
            }
            for g in 0..groups {
                scales[(cg * groups + g) * lanes + c] = self.scales[o * groups + g];
            }
        }
        Self {
            q,
            scales,
            mins: self.mins,
            group: self.group,
            lanes,
        }
    }

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
        Self {
            q,
            scales,
            mins: None,
            group,
            lanes: 0,
        }
    }

    /// Rows `[start, end)` widened and scaled into `out` (`(end - start) · in` values), each
    /// `scale · q + min`.
    fn widen_rows(&self, n_in: usize, start: usize, end: usize, out: &mut [f32]) {
        self.widen_scaled(n_in, start, end, out);
        if let Some(mins) = &self.mins {
            let n_out = self.q.len() / n_in.max(1);
            for (o, row) in (start..end).zip(out.chunks_exact_mut(n_in)) {
                for (k, v) in row.iter_mut().enumerate() {
                    *v += mins[(k / self.group) * n_out + o];
                }
            }
        }
    }

    /// Rows `[start, end)` as `scale · q` (without minimums) into `out`.
    fn widen_scaled(&self, n_in: usize, start: usize, end: usize, out: &mut [f32]) {
        if self.lanes != 0 {
            let (lanes, nb, groups) = (self.lanes, n_in / QBLOCK, n_in / self.group);
            let flip = if lanes == 16 { 0x80u8 as i8 } else { 0 };
            for (o, row) in (start..end).zip(out.chunks_exact_mut(n_in)) {
                let (cg, c) = (o / lanes, o % lanes);
                for (k, v) in row.iter_mut().enumerate() {
                    let (b, i) = (k / QBLOCK, k % QBLOCK);
                    let at = (cg * nb + b) * QBLOCK * lanes + (i / 4) * 4 * lanes + c * 4 + i % 4;
                    let scale = self.scales[(cg * groups + k / self.group) * lanes + c];
                    *v = f32::from(self.q[at] ^ flip) * scale;
                }
            }
            return;
        }
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
            WeightFormat::Int8 { group } => {
                Self::Int8(Int8Weight::quantize(&w, cols, group).packed_for_cpu(cols))
            }
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

    /// Bytes held (weights, scales and any minimums).
    pub fn bytes(&self) -> usize {
        match self {
            Self::F32(t) => t.elem_count() * 4,
            Self::Bf16(w) => w.len() * 2,
            Self::F16(w) => w.len() * 2,
            Self::Int8(w) => {
                w.q.len() + w.scales.len() * 4 + w.mins.as_ref().map_or(0, |m| m.len() * 4)
            }
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

    /// Output channel `row` of `W` (`n_in` values, `n_in = out.len()`) in f32 (widened, or
    /// dequantised), into `out`: a token's embedding where the head is tied to them.
    pub fn row_f32(&self, n_in: usize, row: usize, out: &mut [f32]) {
        match self {
            Self::F32(t) => {
                let (storage, layout) = t.storage_and_layout();
                if let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) = &*storage
                    && layout.stride() == [1, n_in]
                {
                    let at = layout.start_offset() + row * n_in;
                    out.copy_from_slice(&data[at..at + n_in]);
                    return;
                }
                drop(storage);
                let col = t
                    .narrow(1, row, 1)
                    .and_then(|c| c.flatten_all())
                    .and_then(|c| c.to_vec1::<f32>())
                    .expect("an f32 CPU tensor reads back");
                out.copy_from_slice(&col);
            }
            Self::Bf16(w) => w[row * n_in..(row + 1) * n_in].convert_to_f32_slice(out),
            Self::F16(w) => w[row * n_in..(row + 1) * n_in].convert_to_f32_slice(out),
            Self::Int8(w) => w.widen_rows(n_in, row, row + 1, out),
        }
    }

    /// `y = x·Wᵀ` for the `rows` rows of `x` (`[rows, in]`, `in = n_in`), `[rows, out]`.
    pub fn matmul(&self, x: &[f32], rows: usize, n_in: usize) -> Result<Vec<f32>, ModelError> {
        let held = match self {
            Self::F32(t) => {
                if rows <= F32_THREADED_ROWS
                    && let Some(y) = f32_rows_threaded(t, x, rows, n_in)
                {
                    return Ok(y);
                }
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
        #[cfg(target_arch = "x86_64")]
        if let Self::Int8(w) = self
            && w.lanes != 0
        {
            // int8 × int8 products summed exactly in 32-bit integers, per block of 32, eight or
            // sixteen channels to a vector.
            let (xq, xd, xs) = quantize_activations(x);
            let sums = w.quantised_group_sums(&xd, &xs);
            let groups = n_in / w.group;
            let lanes = w.lanes;
            // Tiles of whole register blocks (three vectors of channels), about eight per
            // thread: a tile's cost is mostly its weights' bytes, the same whatever the rows.
            let blocks = n_out / (3 * lanes);
            let per_tile = (blocks / (8 * rayon::current_num_threads())).max(1);
            tiled(
                &mut y,
                rows,
                n_out,
                per_tile * 3 * lanes,
                |start, end, out| {
                    let (q, scales) = (
                        &w.q[start * n_in..end * n_in],
                        &w.scales[start * groups..end * groups],
                    );
                    // SAFETY: `lanes` is set only where `quantises_activations` found AVX2 and
                    // FMA (16: and AVX-512 VNNI; AMX where `has_amx` said so) and the shapes
                    // fit (inputs in 32s, channels in `lanes`; tiles start and end on multiples
                    // of `lanes` channels).
                    unsafe {
                        let a = x86::Packed::new(
                            (&xq, &xd, &xs),
                            q,
                            scales,
                            n_in,
                            w.group,
                            end - start,
                        );
                        if lanes == 16 && rows >= 16 && x86::has_amx() {
                            x86::int8_packed16_rows_amx(&a, out)
                        } else if lanes == 16 {
                            x86::int8_packed16_rows(&a, out)
                        } else if x86::has_vnni() {
                            x86::int8_packed_rows_vnni(&a, out)
                        } else {
                            x86::int8_packed_rows(&a, out)
                        }
                    }
                    w.add_mins(&sums, n_out, start, end, out);
                },
            );
            return Ok(y);
        }

        let xs: Vec<&[f32]> = x.chunks_exact(n_in).collect();
        let sums = match self {
            Self::Int8(w) => w.group_sums(x),
            _ => Vec::new(),
        };
        tiled(&mut y, rows, n_out, TILE, |start, end, out| match self {
            Self::Bf16(w) => tile(isa, &xs, &w[start * n_in..end * n_in], n_in, out),
            Self::F16(w) => tile(isa, &xs, &w[start * n_in..end * n_in], n_in, out),
            Self::Int8(w) => {
                int8_tile(isa, &xs, w, n_in, start, end, out);
                w.add_mins(&sums, n_out, start, end, out);
            }
            Self::F32(_) => unreachable!("f32 returned above"),
        });
        Ok(y)
    }
}

/// Inputs per block of quantised activations.
const QBLOCK: usize = 32;

/// Whether the CPU and shape allow the int8 × int8 kernels (AVX2; inputs and group in
/// multiples of [`QBLOCK`]); the channels must come in eights as well ([`Int8Weight::packs`]).
fn quantises_activations(isa: Isa, n_in: usize, group: usize) -> bool {
    cfg!(target_arch = "x86_64")
        && isa == Isa::Avx2Fma
        && n_in.is_multiple_of(QBLOCK)
        && group.is_multiple_of(QBLOCK)
}

/// The rows of `x` (`[rows, n_in]`, `n_in` a multiple of [`QBLOCK`]) quantised to int8 per
/// block of 32 inputs, symmetric (`scale = max|x| / 127`, `q = round(x / scale)`, ties to
/// even), as llama.cpp quantises activations for its Q8_0 dot products: the int8 weights then
/// multiply them in exact 32-bit integer sums, scaled once per block by both scales. Returns
/// the values, each block's scale and each block's sum of values (what the 16-lane kernel
/// takes back from its unsigned weights).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn quantize_activations(x: &[f32]) -> (Vec<i8>, Vec<f32>, Vec<i32>) {
    let mut q = vec![0i8; x.len()];
    let mut d = Vec::with_capacity(x.len() / QBLOCK);
    let mut sums = Vec::with_capacity(x.len() / QBLOCK);
    for (src, dst) in x.chunks_exact(QBLOCK).zip(q.chunks_exact_mut(QBLOCK)) {
        #[cfg(target_arch = "x86_64")]
        if detected_isa() == Isa::Avx2Fma {
            // SAFETY: AVX2 detected; both blocks hold 32 values.
            let (scale, sum) = unsafe { x86::quantize_block(src, dst) };
            d.push(scale);
            sums.push(sum);
            continue;
        }
        let max = src.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (o, v) in dst.iter_mut().zip(src) {
            *o = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
        d.push(scale);
        sums.push(dst.iter().map(|&v| i32::from(v)).sum());
    }
    (q, d, sums)
}

/// Rows up to which an f32 projection runs the threaded tiles rather than candle's matmul,
/// which keeps about one core busy for a decode batch this small.
pub(crate) const F32_THREADED_ROWS: usize = 8;

/// `y = x·Wᵀ` for f32 `Wᵀ` held as `t` (the transposed view of row-major `[out, in]` data, as
/// the loader builds it) through the threaded tiles; `None` for any other layout.
fn f32_rows_threaded(t: &Tensor, x: &[f32], rows: usize, n_in: usize) -> Option<Vec<f32>> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) = &*storage else {
        return None;
    };
    let &[d_in, n_out] = layout.dims() else {
        return None;
    };
    // `Wᵀ[k][o]` at `o·in + k`: row-major `W` starting at the layout's offset.
    if d_in != n_in || layout.stride() != [1, n_in] {
        return None;
    }
    let start = layout.start_offset();
    let w = data.get(start..start + n_out * n_in)?;
    let mut y = vec![0f32; rows * n_out];
    if rows == 0 || n_out == 0 || n_in == 0 {
        return Some(y);
    }
    let isa = detected_isa();
    let xs: Vec<&[f32]> = x.chunks_exact(n_in).collect();
    tiled(&mut y, rows, n_out, TILE, |s, e, out| {
        tile(isa, &xs, &w[s * n_in..e * n_in], n_in, out)
    });
    Some(y)
}

/// Fills `y` (`[rows, n_out]`) from tiles of `tile` output channels run in parallel:
/// `run(start, end, out)` writes channels `[start, end)` of every row to `out`
/// (`[rows, end - start]`).
fn tiled(
    y: &mut [f32],
    rows: usize,
    n_out: usize,
    tile: usize,
    run: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    let tiles: Vec<(usize, Vec<f32>)> = (0..n_out.div_ceil(tile))
        .into_par_iter()
        .map(|t| {
            let (start, end) = (t * tile, ((t + 1) * tile).min(n_out));
            let mut out = vec![0f32; rows * (end - start)];
            run(start, end, &mut out);
            (start, out)
        })
        .collect();
    for (start, out) in tiles {
        let width = out.len() / rows;
        for (r, part) in out.chunks_exact(width).enumerate() {
            y[r * n_out + start..r * n_out + start + width].copy_from_slice(part);
        }
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

/// The operands of [`Int8Weight::add_mins`]: `sums` `[rows, groups]`, `mins`
/// `[groups, n_out]`, the channels `[start, start + width)`.
struct Mins<'a> {
    sums: &'a [f32],
    groups: usize,
    mins: &'a [f32],
    n_out: usize,
    start: usize,
    width: usize,
}

impl Mins<'_> {
    /// `out[r][c] = fma(sums[r][g], mins[g][start + c], out[r][c])` for each group in order,
    /// for the channels from `from` on (`out`: `[rows, width]`).
    #[inline]
    fn add_from(&self, from: usize, out: &mut [f32]) {
        for (s, o) in self
            .sums
            .chunks_exact(self.groups)
            .zip(out.chunks_exact_mut(self.width))
        {
            for (c, v) in o.iter_mut().enumerate().skip(from) {
                let mut acc = *v;
                for (g, &a) in s.iter().enumerate() {
                    acc = a.mul_add(self.mins[g * self.n_out + self.start + c], acc);
                }
                *v = acc;
            }
        }
    }
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
    // Minimums are added by the caller, as after the kernels.
    let mut wide = vec![0f32; (end - start) * n_in];
    w.widen_scaled(n_in, start, end, &mut wide);
    tile(isa, xs, &wide, n_in, out);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::Mins::add_from`] `L` channels to a vector (8: AVX2 and FMA; 16: AVX-512):
    /// for each `L` channels, their minimums of every group stay in L1 while every row takes
    /// them; channels past the last whole vector go one by one.
    macro_rules! add_mins {
        ($name:ident, $features:literal, $lanes:literal, $vec:ty, $load:ident, $store:ident,
         $set1:ident, $fma:ident) => {
            /// # Safety
            #[doc = concat!("CPU features ", $features, "; `out` holds `[rows, m.width]`,")]
            /// `m.sums` `[rows, m.groups]`, `m.mins` `[m.groups, m.n_out]` with the channels
            /// `[m.start, m.start + m.width)` inside.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name(m: &super::Mins<'_>, out: &mut [f32]) {
                let rows = out.len() / m.width;
                assert!(m.sums.len() == rows * m.groups && m.start + m.width <= m.n_out);
                assert!(m.mins.len() == m.groups * m.n_out);
                let whole = m.width / $lanes * $lanes;
                for c in (0..whole).step_by($lanes) {
                    for r in 0..rows {
                        // SAFETY: `c + lanes <= width` channels of row `r` of `out`; group
                        // `g`'s minimums at `g·n_out + start + c`, inside `mins` (asserted).
                        unsafe {
                            let at = out.as_mut_ptr().add(r * m.width + c);
                            let mut acc: $vec = $load(at);
                            for g in 0..m.groups {
                                let w = $load(m.mins.as_ptr().add(g * m.n_out + m.start + c));
                                acc = $fma($set1(*m.sums.get_unchecked(r * m.groups + g)), w, acc);
                            }
                            $store(at, acc);
                        }
                    }
                }
                m.add_from(whole, out);
            }
        };
    }
    add_mins!(
        add_mins_avx2,
        "avx2,fma",
        8,
        __m256,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps
    );
    add_mins!(
        add_mins_avx512,
        "avx512f,fma",
        16,
        __m512,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps
    );

    /// One block of [`super::quantize_activations`]: `scale = max|src| / 127` and
    /// `dst[i] = round(src[i] / scale)` (ties to even), for 32 values; returns the scale and
    /// the sum of `dst`.
    ///
    /// # Safety
    /// AVX2 available; `src` and `dst` hold 32 values.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn quantize_block(src: &[f32], dst: &mut [i8]) -> (f32, i32) {
        assert!(src.len() == 32 && dst.len() == 32);
        // SAFETY: four 8-lane loads inside `src`, one 32-byte store inside `dst`.
        unsafe {
            let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
            let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(src.as_ptr().add(i * 8)));
            let m = _mm256_max_ps(
                _mm256_max_ps(_mm256_and_ps(v[0], abs), _mm256_and_ps(v[1], abs)),
                _mm256_max_ps(_mm256_and_ps(v[2], abs), _mm256_and_ps(v[3], abs)),
            );
            let lanes = std::mem::transmute::<__m256, [f32; 8]>(m);
            let max = lanes.iter().fold(0f32, |a, &b| a.max(b));
            let scale = max / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let s = _mm256_set1_ps(inv);
            let lim = _mm256_set1_ps(127.0);
            let r: [__m256i; 4] = std::array::from_fn(|i| {
                let v = _mm256_mul_ps(v[i], s);
                let v = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                let v = _mm256_max_ps(
                    _mm256_min_ps(v, lim),
                    _mm256_sub_ps(_mm256_setzero_ps(), lim),
                );
                _mm256_cvtps_epi32(v)
            });
            // i32 → i16 → i8 with saturation; packs interleave 128-bit lanes, undone by the
            // final permutation.
            let a = _mm256_packs_epi32(r[0], r[1]);
            let b = _mm256_packs_epi32(r[2], r[3]);
            let c = _mm256_packs_epi16(a, b);
            let c = _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(dst.as_mut_ptr().cast::<__m256i>(), c);
            let sum = _mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3]));
            let sum = std::mem::transmute::<__m256i, [i32; 8]>(sum).iter().sum();
            (scale, sum)
        }
    }

    /// Whether the CPU has AVX-VNNI (cached).
    pub(super) fn has_vnni() -> bool {
        static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *VNNI.get_or_init(|| {
            std::env::var("OPENLEDGER_SGMV_ISA").as_deref() != Ok("avx2")
                && std::is_x86_feature_detected!("avxvnni")
        })
    }

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

    /// `out[m][c] = Σ_b xd[m][b] · scale[c][32b / group] · Σ_k xq[m][32b + k] · w[c][32b + k]`
    /// for the quantised rows `xq` (scales `xd`, one per block of 32) and `n` channels (a
    /// multiple of 8) held packed (see [`super::Int8Weight`]): each block's sums for eight channels accumulate in
    /// one vector's lanes (`vpmaddubsw` + `vpmaddwd` on |x| and w·sign(x), four inputs at a
    /// time, or AVX-VNNI's `vpdpbusd` on the same), are converted once per block and scaled
    /// by both scales; up to three groups of eight channels and two rows share each load.
    ///
    /// # Safety
    /// AVX2 and FMA available; `a` packed eight channels to a vector, with no -128 among its
    /// activations or weights; `out` holds `rows · n` values.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn int8_packed_rows(a: &Packed<'_>, out: &mut [f32]) {
        // SAFETY: the caller's guarantees, passed on.
        unsafe { packed_rows::<false>(a, out) }
    }

    /// [`int8_packed_rows`] with AVX-VNNI's `vpdpbusd` (the same exact integer sums).
    ///
    /// # Safety
    /// As [`int8_packed_rows`], and AVX-VNNI available.
    #[target_feature(enable = "avx2,fma,avxvnni")]
    pub(super) unsafe fn int8_packed_rows_vnni(a: &Packed<'_>, out: &mut [f32]) {
        // SAFETY: the caller's guarantees, passed on.
        unsafe { packed_rows::<true>(a, out) }
    }

    #[inline(always)]
    unsafe fn packed_rows<const VNNI: bool>(a: &Packed<'_>, out: &mut [f32]) {
        let (rows, n) = (a.rows, a.n);
        assert!(out.len() == rows * n);
        let mut cg = 0;
        while cg < n / 8 {
            let g = (n / 8 - cg).min(3);
            let mut m = 0;
            while m < rows {
                let r = (rows - m).min(2);
                // SAFETY: features enabled by the callers; bounds asserted above.
                unsafe {
                    match (r, g) {
                        (2, 3) => packed_block::<2, 3, VNNI>(a, m, cg, out),
                        (2, 2) => packed_block::<2, 2, VNNI>(a, m, cg, out),
                        (2, _) => packed_block::<2, 1, VNNI>(a, m, cg, out),
                        (_, 3) => packed_block::<1, 3, VNNI>(a, m, cg, out),
                        (_, 2) => packed_block::<1, 2, VNNI>(a, m, cg, out),
                        _ => packed_block::<1, 1, VNNI>(a, m, cg, out),
                    }
                }
                m += r;
            }
            cg += g;
        }
    }

    /// Rows `m .. m + MR` against channel groups `cg .. cg + NG` of [`packed_rows`]; every
    /// row's arithmetic is the same whatever `MR` (a row's result does not depend on its batch).
    #[inline(always)]
    // The register tile's loops index several arrays in step.
    #[allow(clippy::needless_range_loop)]
    unsafe fn packed_block<const MR: usize, const NG: usize, const VNNI: bool>(
        a: &Packed<'_>,
        m: usize,
        cg: usize,
        out: &mut [f32],
    ) {
        let (xq, xd, q, scales, d, n) = (a.xq, a.xd, a.q, a.scales, a.d, a.n);
        let (nb, groups, per_group) = (d / 32, d / a.group, a.group / 32);
        // SAFETY: every read stays inside the slices (bounds asserted by the caller).
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let mut facc = [[_mm256_setzero_ps(); NG]; MR];
            for b in 0..nb {
                let mut iacc = [[_mm256_setzero_si256(); NG]; MR];
                for k4 in 0..8 {
                    let w: [__m256i; NG] = std::array::from_fn(|g| {
                        _mm256_loadu_si256(
                            q.as_ptr()
                                .add(((cg + g) * nb + b) * 256 + k4 * 32)
                                .cast::<__m256i>(),
                        )
                    });
                    for r in 0..MR {
                        let at = (m + r) * d + b * 32 + k4 * 4;
                        let xb = _mm256_set1_epi32(std::ptr::read_unaligned(
                            xq.as_ptr().add(at).cast::<i32>(),
                        ));
                        let ab = _mm256_sign_epi8(xb, xb);
                        for g in 0..NG {
                            let sw = _mm256_sign_epi8(w[g], xb);
                            iacc[r][g] = if VNNI {
                                _mm256_dpbusd_avx_epi32(iacc[r][g], ab, sw)
                            } else {
                                _mm256_add_epi32(
                                    iacc[r][g],
                                    _mm256_madd_epi16(_mm256_maddubs_epi16(ab, sw), ones),
                                )
                            };
                        }
                    }
                }
                for g in 0..NG {
                    let ws = _mm256_loadu_ps(
                        scales.as_ptr().add(((cg + g) * groups + b / per_group) * 8),
                    );
                    for r in 0..MR {
                        let s = _mm256_mul_ps(ws, _mm256_set1_ps(xd[(m + r) * nb + b]));
                        facc[r][g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[r][g]), s, facc[r][g]);
                    }
                }
            }
            for r in 0..MR {
                for g in 0..NG {
                    _mm256_storeu_ps(out.as_mut_ptr().add((m + r) * n + (cg + g) * 8), facc[r][g]);
                }
            }
        }
    }

    /// Whether the CPU has AVX-512 F, BW and VNNI (cached; `OPENLEDGER_SGMV_ISA=avx2` says no).
    pub(super) fn has_avx512_vnni() -> bool {
        static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX512.get_or_init(|| {
            std::env::var("OPENLEDGER_SGMV_ISA").as_deref() != Ok("avx2")
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vnni")
        })
    }

    /// [`int8_packed_rows`] for weights packed sixteen channels to a vector as `w + 128`
    /// (unsigned), with AVX-512 VNNI: `vpdpbusd` sums `(w + 128)·x` exactly over a block and
    /// the block starts from `-128·Σx` (`xs`, one per block of each row), so each block's sum
    /// is the same integer as the eight-lane kernels' and the result the same bits. Up to
    /// three groups of sixteen channels and four rows share each load.
    ///
    /// # Safety
    /// AVX-512 F, BW and VNNI, AVX2 and FMA available; `out` holds `rows · n` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub(super) unsafe fn int8_packed16_rows(a: &Packed<'_>, out: &mut [f32]) {
        let (rows, n) = (a.rows, a.n);
        assert!(n.is_multiple_of(16) && out.len() == rows * n);
        let mut cg = 0;
        while cg < n / 16 {
            let g = (n / 16 - cg).min(3);
            let mut m = 0;
            while m < rows {
                let r = match rows - m {
                    1 => 1,
                    2 | 3 => 2,
                    _ => 4,
                };
                // SAFETY: features enabled here; bounds asserted above.
                unsafe {
                    match (r, g) {
                        (4, 3) => packed16_block::<4, 3>(a, m, cg, out),
                        (4, 2) => packed16_block::<4, 2>(a, m, cg, out),
                        (4, _) => packed16_block::<4, 1>(a, m, cg, out),
                        (2, 3) => packed16_block::<2, 3>(a, m, cg, out),
                        (2, 2) => packed16_block::<2, 2>(a, m, cg, out),
                        (2, _) => packed16_block::<2, 1>(a, m, cg, out),
                        (_, 3) => packed16_block::<1, 3>(a, m, cg, out),
                        (_, 2) => packed16_block::<1, 2>(a, m, cg, out),
                        _ => packed16_block::<1, 1>(a, m, cg, out),
                    }
                }
                m += r;
            }
            cg += g;
        }
    }

    /// Whether AMX-INT8 tiles can be used: the CPU has them (CPUID leaf 7: AMX-TILE, AMX-INT8),
    /// AVX-512 VNNI is in use, and Linux grants this process the tile data state (asked once,
    /// `arch_prctl(ARCH_REQ_XCOMP_PERM)`). `OPENLEDGER_SGMV_ISA=avx2` or `avx512` says no.
    pub(super) fn has_amx() -> bool {
        static AMX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AMX.get_or_init(|| {
            std::env::var("OPENLEDGER_SGMV_ISA").as_deref() != Ok("avx512")
                && has_avx512_vnni()
                && amx_int8_in_cpuid()
                && amx_permitted()
        })
    }

    fn amx_int8_in_cpuid() -> bool {
        // Leaf 7 exists where leaf 0 says so.
        if __cpuid(0).eax < 7 {
            return false;
        }
        let edx = __cpuid_count(7, 0).edx;
        edx & (1 << 24) != 0 && edx & (1 << 25) != 0
    }

    #[cfg(target_os = "linux")]
    fn amx_permitted() -> bool {
        const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
        const XFEATURE_XTILEDATA: u64 = 18;
        const SYS_ARCH_PRCTL: u64 = 158;
        let ret: i64;
        // SAFETY: the arch_prctl system call with a request that only grants a permission (or
        // fails); it reads and writes no memory of ours.
        unsafe {
            std::arch::asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL as i64 => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret == 0
    }

    #[cfg(not(target_os = "linux"))]
    fn amx_permitted() -> bool {
        false
    }

    /// The tile configuration of [`int8_packed16_rows_amx`]: tiles 0–2 the 32-bit sums of 16
    /// rows × 16 channels, tile 3 sixteen rows of a block's 32 activations, tiles 4–6 a block
    /// of 16 channels' weights (8 rows of four inputs × 16 channels).
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    impl TileConfig {
        fn new() -> Self {
            let mut c = [0u8; 64];
            c[0] = 1; // palette 1
            let mut tile = |t: usize, rows: u8, colsb: u16| {
                c[16 + 2 * t..18 + 2 * t].copy_from_slice(&colsb.to_le_bytes());
                c[48 + t] = rows;
            };
            for t in 0..3 {
                tile(t, 16, 64);
            }
            tile(3, 16, 32);
            for t in 4..7 {
                tile(t, 8, 64);
            }
            Self(c)
        }
    }

    /// [`int8_packed16_rows`] with AMX-INT8 tiles for each full sixteen rows (`tdpbsud`:
    /// signed activations × the unsigned weights, a block's 32 inputs at a time, its sums
    /// stored and scaled with AVX-512 as the sixteen-lane kernel scales them), the last rows
    /// through that kernel: the same integers and the same f32 operations, so the same bits.
    ///
    /// # Safety
    /// As [`int8_packed16_rows`], and [`has_amx`] returned true.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    // The post-processing indexes the sums, scales and outputs in step.
    #[allow(clippy::needless_range_loop)]
    pub(super) unsafe fn int8_packed16_rows_amx(a: &Packed<'_>, out: &mut [f32]) {
        let (rows, n, d, group) = (a.rows, a.n, a.d, a.group);
        let (xq, xd, xs, q, scales) = (a.xq, a.xd, a.xs, a.q, a.scales);
        let nb = d / 32;
        assert!(n.is_multiple_of(16) && out.len() == rows * n);
        /// Blocks of weights asked for ahead of the one multiplied.
        const AHEAD: usize = 4;
        let full = rows / 16 * 16;
        let (groups, per_group) = (d / group, group / 32);
        let config = TileConfig::new();
        // The sums of one block: [group][row][channel].
        let mut sums = [[[0i32; 16]; 16]; 3];
        let sp: [*mut u8; 3] = std::array::from_fn(|g| sums[g].as_mut_ptr().cast());
        out[..full * n].fill(0.0);
        // SAFETY: AMX permitted (the caller); the configuration is loaded before any tile
        // instruction and released after; every tile load reads 16 rows of 32 bytes at
        // stride `d` inside `xq` (rows `m..m + 16` of `rows`, block `b` of `nb`) or 8 rows of
        // 64 bytes inside `q` (channel group `cg + g < n / 16`, block `b`); every store writes
        // 16 rows of 64 bytes inside `sums`. Tiles 4–6 keep a block's weights between the
        // `asm!` blocks: nothing else in this process uses the tile registers.
        unsafe {
            std::arch::asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack));
            let mut cg = 0;
            while cg < n / 16 {
                let ng = (n / 16 - cg).min(3);
                for b in 0..nb {
                    // The block's weights, loaded once for every sixteen rows; a later
                    // block's asked for ahead (the tile loads wait on memory otherwise).
                    let w = |g: usize| q.as_ptr().add(((cg + g.min(ng - 1)) * nb + b) * 512);
                    if b + AHEAD < nb {
                        for g in 0..ng {
                            let next = w(g).add(AHEAD * 512);
                            for line in 0..8 {
                                _mm_prefetch::<_MM_HINT_T0>(next.add(line * 64));
                            }
                        }
                    }
                    std::arch::asm!(
                        "tileloadd tmm4, [{w0} + {sw}]",
                        "tileloadd tmm5, [{w1} + {sw}]",
                        "tileloadd tmm6, [{w2} + {sw}]",
                        w0 = in(reg) w(0),
                        w1 = in(reg) w(1),
                        w2 = in(reg) w(2),
                        sw = in(reg) 64usize,
                        options(nostack, readonly),
                    );
                    let ws: [__m512; 3] = std::array::from_fn(|g| {
                        let g = g.min(ng - 1);
                        _mm512_loadu_ps(
                            scales
                                .as_ptr()
                                .add(((cg + g) * groups + b / per_group) * 16),
                        )
                    });
                    let mut m = 0;
                    while m < full {
                        std::arch::asm!(
                            "tilezero tmm0",
                            "tilezero tmm1",
                            "tilezero tmm2",
                            "tileloadd tmm3, [{a} + {sa}]",
                            "tdpbsud tmm0, tmm3, tmm4",
                            "tdpbsud tmm1, tmm3, tmm5",
                            "tdpbsud tmm2, tmm3, tmm6",
                            "tilestored [{s0} + {sw}], tmm0",
                            "tilestored [{s1} + {sw}], tmm1",
                            "tilestored [{s2} + {sw}], tmm2",
                            a = in(reg) xq.as_ptr().add(m * d + b * 32),
                            sa = in(reg) d,
                            sw = in(reg) 64usize,
                            s0 = in(reg) sp[0],
                            s1 = in(reg) sp[1],
                            s2 = in(reg) sp[2],
                            options(nostack),
                        );
                        for r in 0..16 {
                            let at = (m + r) * nb + b;
                            let comp = _mm512_set1_epi32(128 * xs[at]);
                            let xscale = _mm512_set1_ps(xd[at]);
                            for g in 0..ng {
                                let v = _mm512_sub_epi32(
                                    _mm512_loadu_si512(sums[g][r].as_ptr().cast()),
                                    comp,
                                );
                                let sc = _mm512_mul_ps(ws[g], xscale);
                                let o = out.as_mut_ptr().add((m + r) * n + (cg + g) * 16);
                                _mm512_storeu_ps(
                                    o,
                                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), sc, _mm512_loadu_ps(o)),
                                );
                            }
                        }
                        m += 16;
                    }
                }
                cg += ng;
            }
            std::arch::asm!("tilerelease", options(nostack));
        }
        if full < rows {
            // SAFETY: the caller's guarantees, for the last rows.
            unsafe {
                let rest = Packed {
                    xq: &xq[full * d..],
                    xd: &xd[full * nb..],
                    xs: &xs[full * nb..],
                    rows: rows - full,
                    ..*a
                };
                int8_packed16_rows(&rest, &mut out[full * n..])
            };
        }
    }

    /// The operands of the packed int8 kernels, their shapes checked: quantised activation rows
    /// `xq` (`rows · d`) with one scale (`xd`) and one sum (`xs`, read by the sixteen-lane
    /// kernels) per block of 32, and `n` channels' weights `q` (`n · d`) packed eight or
    /// sixteen to a vector (sixteen: as `w + 128`) with their scales (`n · d / group`).
    pub(super) struct Packed<'a> {
        xq: &'a [i8],
        xd: &'a [f32],
        xs: &'a [i32],
        q: &'a [i8],
        scales: &'a [f32],
        d: usize,
        group: usize,
        n: usize,
        rows: usize,
    }

    impl<'a> Packed<'a> {
        /// The operands, or a panic naming the shape that does not fit (the kernels index
        /// them without further checks).
        pub(super) fn new(
            (xq, xd, xs): (&'a [i8], &'a [f32], &'a [i32]),
            q: &'a [i8],
            scales: &'a [f32],
            d: usize,
            group: usize,
            n: usize,
        ) -> Self {
            let rows = xq.len() / d.max(1);
            let nb = d / 32;
            assert!(d.is_multiple_of(32) && group.is_multiple_of(32) && d.is_multiple_of(group));
            assert!(n.is_multiple_of(8) && xq.len() == rows * d && xd.len() == rows * nb);
            assert!(xs.len() == xd.len() && q.len() == n * d && scales.len() * group == n * d);
            Self {
                xq,
                xd,
                xs,
                q,
                scales,
                d,
                group,
                n,
                rows,
            }
        }
    }

    /// Rows `m .. m + MR` against channel groups `cg .. cg + NG` of [`int8_packed16_rows`];
    /// every row's arithmetic is the same whatever `MR`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    // The register tile's loops index several arrays in step.
    #[allow(clippy::needless_range_loop)]
    unsafe fn packed16_block<const MR: usize, const NG: usize>(
        a: &Packed<'_>,
        m: usize,
        cg: usize,
        out: &mut [f32],
    ) {
        let (d, n) = (a.d, a.n);
        let (nb, groups, per_group) = (d / 32, d / a.group, a.group / 32);
        // SAFETY: every read stays inside the slices (bounds asserted by the caller).
        unsafe {
            let mut facc = [[_mm512_setzero_ps(); NG]; MR];
            for b in 0..nb {
                let mut iacc = [[_mm512_setzero_si512(); NG]; MR];
                for r in 0..MR {
                    let start = _mm512_set1_epi32(-128 * a.xs[(m + r) * nb + b]);
                    iacc[r] = [start; NG];
                }
                for k4 in 0..8 {
                    let w: [__m512i; NG] = std::array::from_fn(|g| {
                        _mm512_loadu_si512(
                            a.q.as_ptr().add(((cg + g) * nb + b) * 512 + k4 * 64).cast(),
                        )
                    });
                    for r in 0..MR {
                        let at = (m + r) * d + b * 32 + k4 * 4;
                        let xb = _mm512_set1_epi32(std::ptr::read_unaligned(
                            a.xq.as_ptr().add(at).cast::<i32>(),
                        ));
                        for g in 0..NG {
                            iacc[r][g] = _mm512_dpbusd_epi32(iacc[r][g], w[g], xb);
                        }
                    }
                }
                for g in 0..NG {
                    let ws = _mm512_loadu_ps(
                        a.scales
                            .as_ptr()
                            .add(((cg + g) * groups + b / per_group) * 16),
                    );
                    for r in 0..MR {
                        let s = _mm512_mul_ps(ws, _mm512_set1_ps(a.xd[(m + r) * nb + b]));
                        facc[r][g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc[r][g]), s, facc[r][g]);
                    }
                }
            }
            for r in 0..MR {
                for g in 0..NG {
                    _mm512_storeu_ps(
                        out.as_mut_ptr().add((m + r) * n + (cg + g) * 16),
                        facc[r][g],
                    );
                }
            }
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
            let quantised = Int8Weight::pack_lanes(n_in, n_out, g) != 0;
            for r in 0..2 {
                for o in 0..n_out {
                    // |Δy| ≤ Σ_k |x_k| · s_k / 2 (the weights' rounding, s = max|w| / 127 over
                    // the weight's group), and where the activations are quantised too (blocks
                    // of 32, step t = max|x| / 127) + Σ_k t_k / 2 · (|w_k| + s_k / 2).
                    let bound: f32 = (0..n_in)
                        .map(|k| {
                            let s = w[o * n_in + k / g * g..o * n_in + (k / g + 1) * g]
                                .iter()
                                .fold(0f32, |m, v| m.max(v.abs()))
                                / 127.0;
                            let b = r * n_in + k / QBLOCK * QBLOCK;
                            let t =
                                x[b..b + QBLOCK].iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
                            let wk = w[o * n_in + k].abs();
                            x[r * n_in + k].abs() * s / 2.0
                                + if quantised {
                                    t / 2.0 * (wk + s / 2.0)
                                } else {
                                    0.0
                                }
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

    /// The packed int8 × int8 kernels against the same arithmetic in f64, the unpacked weights
    /// (equal values), a row alone against its batch (the same bits), and AVX-VNNI and AVX-512
    /// VNNI (sixteen lanes, unsigned weights) against AVX2 (the same bits).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn packed_int8_kernels_match_their_arithmetic_and_any_batch() {
        if detected_isa() != Isa::Avx2Fma {
            return;
        }
        // 80 channels: tiles of 24 and 16 channels for eight lanes (three and two groups),
        // 48 and 32 for sixteen; 7 rows: 2, 2, 2, 1 or 4, 2, 1.
        let (n_in, n_out, rows) = (96, 80, 7);
        let w = values(n_in * n_out, 17);
        let mut x = values(rows * n_in, 29);
        // A block of one sign: its sum is far from zero.
        x[32..64].iter_mut().for_each(|v| *v = v.abs());
        let avx512 = x86::has_avx512_vnni();
        for group in [0, 32, 96] {
            let plain = Int8Weight::quantize(&w, n_in, group);
            let auto = plain.clone().packed_for_cpu(n_in);
            assert_eq!(auto.lanes, if avx512 { 16 } else { 8 }, "group {group}");
            let (xq, xd, xs) = quantize_activations(&x);
            for (r, s) in xq.chunks_exact(QBLOCK).zip(&xs) {
                assert_eq!(r.iter().map(|&v| i32::from(v)).sum::<i32>(), *s);
            }
            let g = plain.group;
            let mut want = vec![0f32; rows * n_out];
            for r in 0..rows {
                for o in 0..n_out {
                    let mut sum = 0f64;
                    for blk in 0..n_in / QBLOCK {
                        let dot: i32 = (0..QBLOCK)
                            .map(|k| {
                                let i = blk * QBLOCK + k;
                                i32::from(xq[r * n_in + i]) * i32::from(plain.q[o * n_in + i])
                            })
                            .sum();
                        let s = plain.scales[o * (n_in / g) + blk * QBLOCK / g];
                        sum +=
                            f64::from(dot) * f64::from(xd[r * n_in / QBLOCK + blk]) * f64::from(s);
                    }
                    want[r * n_out + o] = sum as f32;
                }
            }
            let mut a = vec![0f32; n_in * n_out];
            plain.widen_rows(n_in, 0, n_out, &mut a);
            let mut kernels: Vec<(&str, Vec<f32>)> = Vec::new();
            for lanes in [8, 16] {
                let packed = plain.clone().packed_as(n_in, lanes);
                assert_eq!(packed.lanes, lanes);
                let mut b = vec![0f32; n_in * n_out];
                packed.widen_rows(n_in, 0, n_out, &mut b);
                assert_eq!(
                    a, b,
                    "group {group}, {lanes} lanes: the packed values are the weights"
                );
                assert_eq!(packed.scales.len(), plain.scales.len());
                if lanes == 16 && !avx512 {
                    continue;
                }
                if lanes == 8 && avx512 {
                    // What matmul runs here is the sixteen-lane kernel; call the eight-lane
                    // ones directly.
                    type Kernel = unsafe fn(&x86::Packed<'_>, &mut [f32]);
                    let mut eight: Vec<(&str, Kernel)> = vec![("avx2", x86::int8_packed_rows)];
                    if std::is_x86_feature_detected!("avxvnni") {
                        eight.push(("avx-vnni", x86::int8_packed_rows_vnni));
                    }
                    let a = x86::Packed::new(
                        (&xq, &xd, &xs),
                        &packed.q,
                        &packed.scales,
                        n_in,
                        g,
                        n_out,
                    );
                    for (name, kernel) in eight {
                        let mut out = vec![0f32; rows * n_out];
                        // SAFETY: AVX2 and FMA (and AVX-VNNI for its kernel) detected; `out`
                        // holds rows × n_out values.
                        unsafe { kernel(&a, &mut out) };
                        kernels.push((name, out));
                    }
                    continue;
                }
                let held = BaseWeight::Int8(packed);
                let got = held.matmul(&x, rows, n_in).unwrap();
                for r in 0..rows {
                    let alone = held.matmul(&x[r * n_in..(r + 1) * n_in], 1, n_in).unwrap();
                    assert_eq!(
                        alone,
                        got[r * n_out..(r + 1) * n_out],
                        "{lanes} lanes: row {r}"
                    );
                }
                kernels.push((if lanes == 16 { "avx512-vnni" } else { "matmul" }, got));
            }
            for (name, got) in &kernels {
                for (g, e) in got.iter().zip(&want) {
                    assert!(
                        (g - e).abs() <= 1e-5 * (1.0 + e.abs()),
                        "{name}: {g} vs {e}"
                    );
                }
                assert_eq!(
                    got, &kernels[0].1,
                    "{name} and {}: the same sums",
                    kernels[0].0
                );
            }
        }
    }

    /// A weight with a minimum per group (`scale · q + min`, as GGUF's Q4_1 and k-quants
    /// store it) reads back as those values, and multiplies as they do: the integers through
    /// the int8 kernels (row-major, packed; AMX from sixteen rows where present), each group's
    /// `min · Σx` added from the sums of the inputs the kernel multiplied (quantised where it
    /// quantises them). A row gives the same bits alone and in any batch.
    #[test]
    fn minimums_add_their_groups_sums() {
        let (n_in, n_out, rows) = (96, 48, 19);
        let groups = n_in / 32;
        let mut seed = 7u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            seed >> 8
        };
        let q: Vec<i8> = (0..n_in * n_out).map(|_| (next() % 16) as i8).collect();
        let scales: Vec<f32> = (0..n_out * groups)
            .map(|_| 0.001 + (next() % 1000) as f32 * 2e-5)
            .collect();
        let mins: Vec<f32> = (0..n_out * groups)
            .map(|_| -0.2 + (next() % 1000) as f32 * 3e-4)
            .collect();
        let w = Int8Weight::from_parts(q.clone(), scales.clone(), Some(mins.clone()), 32, n_in);
        let value = |o: usize, k: usize| {
            scales[o * groups + k / 32] * f32::from(q[o * n_in + k]) + mins[o * groups + k / 32]
        };
        let mut wide = vec![0f32; n_in * n_out];
        w.widen_rows(n_in, 0, n_out, &mut wide);
        for o in 0..n_out {
            for k in 0..n_in {
                assert_eq!(wide[o * n_in + k], value(o, k), "channel {o}, input {k}");
            }
        }
        let x = values(rows * n_in, 41);
        let quantised = quantises_activations(detected_isa(), n_in, 32);
        let (xq, xd, _) = quantize_activations(&x);
        // Row-major as well as packed: the row-major path multiplies f32 inputs.
        let plain = Int8Weight {
            q: q.clone(),
            scales: scales.clone(),
            mins: w.mins.clone(),
            group: 32,
            lanes: 0,
        };
        for (held, packed) in [
            (BaseWeight::Int8(w.clone()), w.lanes != 0),
            (BaseWeight::Int8(plain), false),
        ] {
            let got = held.matmul(&x, rows, n_in).unwrap();
            for r in 0..rows {
                for o in 0..n_out {
                    let mut want = 0f64;
                    for g in 0..groups {
                        let sum: f64 = if packed && quantised {
                            let q: i32 =
                                (0..32).map(|k| i32::from(xq[r * n_in + g * 32 + k])).sum();
                            f64::from(q) * f64::from(xd[r * groups + g])
                        } else {
                            (0..32).map(|k| f64::from(x[r * n_in + g * 32 + k])).sum()
                        };
                        want += f64::from(mins[o * groups + g]) * sum;
                        let s = f64::from(scales[o * groups + g]);
                        want += (0..32)
                            .map(|k| {
                                let i = g * 32 + k;
                                let xv = if packed && quantised {
                                    f64::from(xq[r * n_in + i]) * f64::from(xd[r * groups + g])
                                } else {
                                    f64::from(x[r * n_in + i])
                                };
                                s * f64::from(q[o * n_in + i]) * xv
                            })
                            .sum::<f64>();
                    }
                    let g = f64::from(got[r * n_out + o]);
                    assert!(
                        (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "packed {packed}, row {r}, channel {o}: {g} vs {want}"
                    );
                }
                let alone = held.matmul(&x[r * n_in..(r + 1) * n_in], 1, n_in).unwrap();
                assert_eq!(
                    alone,
                    got[r * n_out..(r + 1) * n_out],
                    "packed {packed}, row {r}"
                );
            }
        }
        assert_eq!(
            BaseWeight::Int8(w).bytes(),
            n_in * n_out + 2 * n_out * groups * 4
        );
        // The adds give the same bits one by one, eight and sixteen to a vector, over any
        // channels (here 37 from channel 5: whole vectors and a remainder).
        let sums = values(rows * groups, 5);
        let m = Mins {
            sums: &sums,
            groups,
            mins: &mins,
            n_out,
            start: 5,
            width: 37,
        };
        let base = values(rows * 37, 6);
        let mut one = base.clone();
        m.add_from(0, &mut one);
        assert_ne!(one, base);
        #[cfg(target_arch = "x86_64")]
        if detected_isa() == Isa::Avx2Fma {
            let mut eight = base.clone();
            // SAFETY: AVX2 and FMA detected; shapes as `Mins` says.
            unsafe { x86::add_mins_avx2(&m, &mut eight) };
            assert_eq!(eight, one);
            if std::is_x86_feature_detected!("avx512f") {
                let mut sixteen = base.clone();
                // SAFETY: AVX-512 F detected.
                unsafe { x86::add_mins_avx512(&m, &mut sixteen) };
                assert_eq!(sixteen, one);
            }
        }
    }

    /// AMX tiles (sixteen rows at a time, the rest through the AVX-512 kernel) give the same
    /// bits as the AVX-512 kernel, for three, two and one groups of sixteen channels.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn amx_tiles_give_the_avx512_kernels_bits() {
        if detected_isa() != Isa::Avx2Fma || !x86::has_amx() {
            eprintln!("no AMX here: nothing to compare");
            return;
        }
        for (n_in, n_out, rows, group) in [(96, 80, 37, 32), (64, 16, 16, 64), (128, 32, 50, 128)] {
            let w = values(n_in * n_out, 23);
            let x = values(rows * n_in, 31);
            let packed = Int8Weight::quantize(&w, n_in, group).packed_as(n_in, 16);
            let (xq, xd, xs) = quantize_activations(&x);
            let run = |amx: bool| {
                let mut out = vec![0f32; rows * n_out];
                let a = x86::Packed::new(
                    (&xq, &xd, &xs),
                    &packed.q,
                    &packed.scales,
                    n_in,
                    group,
                    n_out,
                );
                // SAFETY: AVX-512 VNNI and AMX detected; `out` holds rows × n_out values.
                unsafe {
                    if amx {
                        x86::int8_packed16_rows_amx(&a, &mut out)
                    } else {
                        x86::int8_packed16_rows(&a, &mut out)
                    }
                }
                out
            };
            let (tiles, vectors) = (run(true), run(false));
            assert!(vectors.iter().any(|v| *v != 0.0));
            assert_eq!(tiles, vectors, "{n_in} x {n_out}, {rows} rows");
        }
    }

    #[test]
    fn activations_quantise_to_the_nearest_step() {
        let mut x = values(4 * QBLOCK, 3);
        x[5] = 0.0;
        x[40] = f32::from_bits(1); // denormal
        x[64..96].iter_mut().for_each(|v| *v = 0.0); // an all-zero block
        let (q, d, _) = quantize_activations(&x);
        for (i, (&v, &qi)) in x.iter().zip(&q).enumerate() {
            let s = d[i / QBLOCK];
            let want = if s > 0.0 {
                (v / s).round_ties_even().clamp(-127.0, 127.0) as i8
            } else {
                0
            };
            // v · (1 / s) and v / s may round apart by one at a tie.
            assert!(
                (i32::from(qi) - i32::from(want)).abs() <= 1,
                "{i}: {qi} vs {want}"
            );
            assert!((f32::from(qi) * s - v).abs() <= s * 0.5001 + 1e-30, "{i}");
        }
    }

    /// A tied head's rows are the embeddings: `row_f32` reads each output channel as
    /// `to_f32_rows` does, in every held form.
    #[test]
    fn a_row_reads_back_as_the_rows_do() {
        let (n_in, n_out) = (64, 48);
        let w = values(n_in * n_out, 41);
        let mut held = vec![
            BaseWeight::from_f32(w.clone(), n_out, n_in, WeightFormat::F32),
            BaseWeight::Bf16(w.iter().map(|&v| bf16::from_f32(v)).collect()),
            BaseWeight::F16(w.iter().map(|&v| f16::from_f32(v)).collect()),
            BaseWeight::from_f32(w.clone(), n_out, n_in, WeightFormat::Int8 { group: 32 }),
        ];
        for lanes in [0, 8, 16] {
            let q = Int8Weight::quantize(&w, n_in, 0).packed_as(n_in, lanes);
            held.push(BaseWeight::Int8(q));
        }
        for b in &held {
            let all = b.to_f32_rows(n_in, n_out);
            let mut row = vec![0f32; n_in];
            for o in [0, 1, 17, n_out - 1] {
                b.row_f32(n_in, o, &mut row);
                assert_eq!(
                    row,
                    all[o * n_in..(o + 1) * n_in],
                    "{} row {o}",
                    b.dtype_name()
                );
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
