//! Adapters attached to a model, prepared for the batched forward pass: the LoRA factors of
//! each targeted linear in the dtype the adapter was stored in (SGMV widens them on the fly, so
//! a bf16 adapter costs its bf16 bytes, not an f32 copy), the DoRA factor `m / ‖W + ΔW‖` per
//! output row, and `modules_to_save` replacements; and the projection of a mixed batch (dense
//! matmul, replacements, then all LoRA updates of the batch through one SGMV call per module and
//! stored dtype).

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::error::ModelError;
use super::load::{Linear, transposed};
use super::quant::{BaseWeight, F32_THREADED_ROWS};
use crate::adapter::{LoraAdapter, LoraModule, ModuleKind};
use crate::error::LoraError;
use crate::sgmv::{
    AdapterSlots, BLayout, LoraElement, LoraSlot, Segments, padded_b_stride, sgmv,
    transpose_b_strided,
};
use half::{bf16, f16};

/// The `A` (`[rank, in]`) and `Bᵀ` (`[rank, padded_b_stride(out)]`, [`BLayout::RankOutStrided`]:
/// transposed once here so that no forward pass transposes it again, each rank row padded by one
/// cache line so that the rows do not share L1 sets) factors of one module, in the adapter's
/// stored dtype (f32 when the two were stored in different dtypes).
#[derive(Debug, Clone)]
pub(crate) enum Factors {
    F32(Vec<f32>, Vec<f32>),
    F16(Vec<f16>, Vec<f16>),
    Bf16(Vec<bf16>, Vec<bf16>),
}

/// `B` (`[out, rank]`) as the padded `Bᵀ` the model serves with.
fn bt<T: LoraElement>(b: &[T], out: usize, rank: usize) -> Vec<T> {
    transpose_b_strided(b, out, rank, padded_b_stride::<T>(out), T::from_f32(0.0))
}

impl Factors {
    fn of(m: &LoraModule) -> Self {
        let (out, rank) = (m.out_features(), m.rank());
        if let (Some(a), Some(b)) = (m.a().as_bf16(), m.b().as_bf16()) {
            return Factors::Bf16(a.to_vec(), bt(b, out, rank));
        }
        if let (Some(a), Some(b)) = (m.a().as_f16(), m.b().as_f16()) {
            return Factors::F16(a.to_vec(), bt(b, out, rank));
        }
        Factors::F32(m.a_f32().into_owned(), bt(&m.b_f32(), out, rank))
    }

    fn bytes(&self) -> usize {
        match self {
            Factors::F32(a, b) => (a.len() + b.len()) * 4,
            Factors::F16(a, b) => (a.len() + b.len()) * 2,
            Factors::Bf16(a, b) => (a.len() + b.len()) * 2,
        }
    }
}

/// One targeted linear of one adapter.
#[derive(Debug, Clone)]
pub(crate) struct PreparedModule {
    pub factors: Factors,
    pub rank: usize,
    pub scale: f32,
    /// `scale · lora_bias`, when present.
    pub bias: Option<Vec<f32>>,
    /// DoRA: `m[o] / ‖W[o] + ΔW[o]‖` per output row.
    pub dora: Option<Vec<f32>>,
}

/// A `modules_to_save` parameter.
#[derive(Debug, Clone)]
pub(crate) struct Saved {
    pub data: Vec<f32>,
    /// `[in, out]` matmul form for 2-D linear weights.
    pub wt: Option<Tensor>,
}

/// An adapter ready for the forward pass.
#[derive(Debug, Clone)]
pub(crate) struct PreparedAdapter {
    pub name: String,
    pub modules: HashMap<String, PreparedModule>,
    pub saved: HashMap<String, Saved>,
    /// An ensemble's member adapters (slot, weight); empty for an adapter of its own.
    pub members: Vec<(usize, f32)>,
}

impl PreparedAdapter {
    /// The empty stand-in left in a detached adapter's slot.
    pub(crate) fn vacant() -> Self {
        Self {
            name: String::new(),
            modules: HashMap::new(),
            saved: HashMap::new(),
            members: Vec::new(),
        }
    }

    /// Bytes held by the prepared copies.
    pub(crate) fn bytes(&self) -> usize {
        let f = std::mem::size_of::<f32>();
        let modules: usize = self
            .modules
            .values()
            .map(|m| {
                m.factors.bytes()
                    + (m.bias.as_ref().map_or(0, Vec::len) + m.dora.as_ref().map_or(0, Vec::len))
                        * f
            })
            .sum();
        let saved: usize = self
            .saved
            .values()
            .map(|s| s.data.len() + s.wt.as_ref().map_or(0, |t| t.elem_count()))
            .sum();
        modules + saved * f
    }
}

fn incompatible(name: &str, what: String) -> ModelError {
    ModelError::IncompatibleAdapter {
        name: name.to_string(),
        source: LoraError::Unsupported { what },
    }
}

/// Prepares `adapter` (already validated against the base's shapes) for `linears`.
pub(crate) fn prepare(
    name: &str,
    adapter: &LoraAdapter,
    linears: &HashMap<&str, &Linear>,
) -> Result<PreparedAdapter, ModelError> {
    let mut modules = HashMap::new();
    for (module, m) in adapter.modules() {
        if m.kind() != ModuleKind::Linear || m.fan_in_fan_out() {
            return Err(incompatible(
                name,
                format!("LoRA on {module:?} is not on a [out, in] linear layer of this model"),
            ));
        }
        let Some(lin) = linears.get(module) else {
            return Err(incompatible(
                name,
                format!("{module:?} is not a projection of the forward pass"),
            ));
        };
        let scale = m.scale();
        let bias = m
            .lora_bias()
            .map(|b| b.to_f32().iter().map(|v| v * scale).collect());
        let dora = match m.magnitude() {
            None => None,
            Some(mag) => {
                let w = lin.weight.to_f32_rows(lin.in_features, lin.out_features);
                let delta = m.delta();
                let n_in = lin.in_features;
                let mag = mag.to_f32();
                Some(
                    (0..lin.out_features)
                        .map(|o| {
                            let norm = w[o * n_in..(o + 1) * n_in]
                                .iter()
                                .zip(&delta[o * n_in..(o + 1) * n_in])
                                .map(|(a, d)| (a + d) * (a + d))
                                .sum::<f32>()
                                .sqrt();
                            mag[o] / norm
                        })
                        .collect(),
                )
            }
        };
        modules.insert(
            module.to_string(),
            PreparedModule {
                factors: Factors::of(m),
                rank: m.rank(),
                scale,
                bias,
                dora,
            },
        );
    }
    let mut saved = HashMap::new();
    for (param, t) in adapter.saved_tensors() {
        let data = t.to_f32().into_owned();
        let module = param.strip_suffix(".weight");
        let wt = match (module.and_then(|m| linears.get(m)), t.shape()) {
            (Some(_), &[rows, cols]) => Some(transposed(data.clone(), rows, cols)?),
            _ => None,
        };
        saved.insert(param.to_string(), Saved { data, wt });
    }
    Ok(PreparedAdapter {
        name: name.to_string(),
        modules,
        saved,
        members: Vec::new(),
    })
}

/// Rows `[start, end)` of the flattened batch and the adapter they use.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub start: usize,
    pub end: usize,
    pub adapter: Option<usize>,
}

/// `x · Wᵀ` for `rows` rows of `x`. With `W` row-major (`wt` a transposed view) it runs as
/// `(W · xᵀ)ᵀ`: candle's gemm then streams `W` as the left operand, 1.3–3× faster than
/// `x · Wᵀ` on decode batches (1–32 rows) on a 2-core AVX2 CPU (see the engine bench).
fn matmul(x: &[f32], rows: usize, wt: &Tensor) -> Result<Vec<f32>, ModelError> {
    let (n_in, n_out) = wt.dims2()?;
    let w = wt.t()?;
    if !w.is_contiguous() {
        let xt = Tensor::from_slice(x, (rows, n_in), &Device::Cpu)?;
        return Ok(xt.matmul(wt)?.flatten_all()?.to_vec1::<f32>()?);
    }
    let xt = Tensor::from_vec(transpose(x, rows, n_in), (n_in, rows), &Device::Cpu)?;
    let yt = w.matmul(&xt)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(transpose(&yt, n_out, rows))
}

/// `[rows, cols]` row-major → `[cols, rows]` row-major (a plain loop: candle's strided copy is
/// several times slower on these small decode matrices).
fn transpose(src: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    if rows == 1 || cols == 1 {
        return src.to_vec();
    }
    let mut out = vec![0f32; src.len()];
    for (r, row) in src.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    out
}

/// `y = x·Wᵀ + b` for every row of the batch, each span with its adapter's LoRA update (SGMV),
/// DoRA rescaling and `modules_to_save` replacement of `W` / `b`.
pub(crate) fn project(
    lin: &Linear,
    x: &[f32],
    spans: &[Span],
    adapters: &[PreparedAdapter],
) -> Result<Vec<f32>, ModelError> {
    let (n_in, n_out) = (lin.in_features, lin.out_features);
    let rows = x.len() / n_in;
    let mut y = match &lin.weight {
        BaseWeight::F32(wt) if rows > F32_THREADED_ROWS => matmul(x, rows, wt)?,
        held => held.matmul(x, rows, n_in)?,
    };
    let weight_key = format!("{}.weight", lin.name);
    let bias_key = format!("{}.bias", lin.name);
    for s in spans {
        let Some(a) = s.adapter.map(|i| &adapters[i]) else {
            continue;
        };
        if let Some(wt) = a.saved.get(&weight_key).and_then(|v| v.wt.as_ref()) {
            let part = matmul(&x[s.start * n_in..s.end * n_in], s.end - s.start, wt)?;
            y[s.start * n_out..s.end * n_out].copy_from_slice(&part);
        }
    }
    // LoRA: one slot per distinct (adapter, weight) of the batch that targets this module,
    // gathered per stored dtype (one SGMV call for each dtype present). A span of an ensemble
    // takes each member with its scale times its weight: `y += Σⱼ wⱼ·sⱼ·Bⱼ·Aⱼ·x`, with no
    // merged copy. Without ensembles every row has at most one slot and SGMV adds into `y` in
    // place. With them a row has several: the rows of every (span, member) pair are gathered
    // by slot into one input, so each slot's factors are read once for all the spans naming
    // it (as member or alone), and the results are added back into their rows.
    let mut f32s = DtypeSlots::default();
    let mut f16s = DtypeSlots::default();
    let mut bf16s = DtypeSlots::default();
    let mut overlapping = false;
    for s in spans {
        let Some(id) = s.adapter else { continue };
        // A single adapter is its own (only) member, at weight 1.
        let own = [(id, 1.0)];
        let members = match adapters[id].members.as_slice() {
            [] => &own[..],
            members => {
                overlapping = true;
                members
            }
        };
        for &(member, weight) in members {
            let Some(m) = adapters[member].modules.get(&lin.name) else {
                continue;
            };
            let key = (member, weight.to_bits());
            let rows = (s.start, s.end);
            match &m.factors {
                Factors::F32(a, b) => f32s.push(key, rows, a, b, m, weight),
                Factors::F16(a, b) => f16s.push(key, rows, a, b, m, weight),
                Factors::Bf16(a, b) => bf16s.push(key, rows, a, b, m, weight),
            }
        }
    }
    let any = !(f32s.triples.is_empty() && f16s.triples.is_empty() && bf16s.triples.is_empty());
    // Without DoRA or a LoRA bias in the batch the update is a plain sum: SGMV adds it into `y`
    // (an ensemble's members are plain, see `Model::attach_ensemble`).
    let plain = spans.iter().all(|s| {
        s.adapter
            .and_then(|id| adapters[id].modules.get(&lin.name))
            .is_none_or(|m| m.dora.is_none() && m.bias.is_none())
    });
    let mut delta = (any && !plain).then(|| vec![0f32; rows * n_out]);
    if any {
        let out = delta.as_deref_mut().unwrap_or(&mut y);
        if overlapping {
            f32s.apply_gathered(x, n_in, n_out, out)?;
            f16s.apply_gathered(x, n_in, n_out, out)?;
            bf16s.apply_gathered(x, n_in, n_out, out)?;
        } else {
            f32s.apply(x, n_in, n_out, out)?;
            f16s.apply(x, n_in, n_out, out)?;
            bf16s.apply(x, n_in, n_out, out)?;
        }
    }
    if let Some(delta) = &delta {
        for s in spans {
            let Some(id) = s.adapter else { continue };
            // An ensemble's rows take their members' plain sum; an adapter that does not
            // target this module has no update.
            let m = adapters[id].modules.get(&lin.name);
            if m.is_none() && adapters[id].members.is_empty() {
                continue;
            }
            let bias = m.and_then(|m| m.bias.as_ref());
            let dora = m.and_then(|m| m.dora.as_ref());
            for r in s.start..s.end {
                let yr = &mut y[r * n_out..(r + 1) * n_out];
                let dr = &delta[r * n_out..(r + 1) * n_out];
                for o in 0..n_out {
                    let lora = dr[o] + bias.map_or(0.0, |b| b[o]);
                    yr[o] = match dora {
                        Some(f) => f[o] * (yr[o] + lora),
                        None => yr[o] + lora,
                    };
                }
            }
        }
    }
    for s in spans {
        let saved = s
            .adapter
            .and_then(|id| adapters[id].saved.get(&bias_key))
            .map(|v| &v.data);
        if let Some(b) = saved.or(lin.bias.as_ref()) {
            for r in s.start..s.end {
                y[r * n_out..(r + 1) * n_out]
                    .iter_mut()
                    .zip(b)
                    .for_each(|(v, bb)| *v += bb);
            }
        }
    }
    Ok(y)
}

/// The slots of one weight dtype for one projection of a batch, and the row ranges using them.
struct DtypeSlots<'a, W> {
    /// Slot of each (adapter, weight bits).
    slot_of: HashMap<(usize, u32), usize>,
    slots: Vec<LoraSlot<'a, W>>,
    triples: Vec<(usize, usize, usize)>,
}

impl<W> Default for DtypeSlots<'_, W> {
    fn default() -> Self {
        Self {
            slot_of: HashMap::new(),
            slots: Vec::new(),
            triples: Vec::new(),
        }
    }
}

impl<'a, W: LoraElement> DtypeSlots<'a, W> {
    fn push(
        &mut self,
        key: (usize, u32),
        (start, end): (usize, usize),
        a: &'a [W],
        b: &'a [W],
        m: &PreparedModule,
        weight: f32,
    ) {
        let slots = &mut self.slots;
        let slot = *self.slot_of.entry(key).or_insert_with(|| {
            slots.push(LoraSlot {
                a,
                b,
                rank: m.rank,
                scale: m.scale * weight,
            });
            slots.len() - 1
        });
        self.triples.push((start, end, slot));
    }

    /// `y[rows] += scale · x[rows] · Aᵀ · Bᵀ` for every row range, when the ranges may overlap
    /// (a row under several slots, an ensemble's): the ranges' rows of `x` are gathered slot by
    /// slot into one input, SGMV runs once over it (each slot's factors read once), and each
    /// result row is added to the row of `y` it came from.
    fn apply_gathered(
        self,
        x: &[f32],
        n_in: usize,
        n_out: usize,
        y: &mut [f32],
    ) -> Result<(), ModelError> {
        if self.triples.is_empty() {
            return Ok(());
        }
        let mut by_slot: Vec<Vec<(usize, usize)>> = vec![Vec::new(); self.slots.len()];
        for &(start, end, slot) in &self.triples {
            by_slot[slot].push((start, end));
        }
        let rows: usize = self.triples.iter().map(|&(s, e, _)| e - s).sum();
        let mut xg = Vec::with_capacity(rows * n_in);
        let mut back = Vec::with_capacity(rows);
        let mut triples = Vec::with_capacity(self.slots.len());
        for (slot, ranges) in by_slot.iter().enumerate() {
            let start = back.len();
            for &(s, e) in ranges {
                xg.extend_from_slice(&x[s * n_in..e * n_in]);
                back.extend(s..e);
            }
            triples.push((start, back.len(), slot));
        }
        let mut yg = vec![0f32; rows * n_out];
        let gathered = Self { triples, ..self };
        gathered.apply(&xg, n_in, n_out, &mut yg)?;
        for (g, &r) in back.iter().enumerate() {
            y[r * n_out..(r + 1) * n_out]
                .iter_mut()
                .zip(&yg[g * n_out..(g + 1) * n_out])
                .for_each(|(v, d)| *v += d);
        }
        Ok(())
    }

    /// `y[rows] += scale · x[rows] · Aᵀ · Bᵀ` for every gathered row range (the ranges do not
    /// overlap).
    fn apply(self, x: &[f32], n_in: usize, n_out: usize, y: &mut [f32]) -> Result<(), ModelError> {
        if self.triples.is_empty() {
            return Ok(());
        }
        let layout = BLayout::RankOutStrided {
            stride: padded_b_stride::<W>(n_out),
        };
        let slots = AdapterSlots::with_b_layout(n_in, n_out, self.slots, layout)?;
        sgmv(x, &slots, &Segments::from_triples(&self.triples), y)?;
        Ok(())
    }
}
