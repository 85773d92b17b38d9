//! Merging an adapter into dense f32 base weights, and undoing it.
//!
//! The API works on row-major `f32` buffers with their stored shape ([`DenseTensor`]), keyed by
//! parameter name (`model.layers.0.self_attn.q_proj.weight`), so it needs no tensor library.
//! For each LoRA module, with `Δ = scale · B·A` (`[out, in]`):
//! - plain LoRA: `W ← W + Δ` (`W` stored `[out, in]`, or `[in, out]` with `fan_in_fan_out`,
//!   in which case `Δᵀ` is added; embeddings are stored `[vocab, hidden]` and get `Δᵀ` too);
//! - DoRA: `W ← (m / ‖W + Δ‖) ⊙ (W + Δ)`, the norm taken over each output row of the
//!   standard-orientation weight, as PEFT does; the norms are kept in the [`MergeRecord`] so
//!   that [`unmerge`] is exact up to rounding;
//! - `lora_bias`: `bias ← bias + scale · lora_B.bias`;
//! - saved parameters (`modules_to_save`, biases saved by `bias = "all" | "lora_only"`)
//!   replace the base's, and the record keeps the originals.
//!
//! Every shape is checked before the first weight is written, so a failed merge leaves the
//! weights untouched.
//!
//! ```
//! use std::collections::BTreeMap;
//! use openledger_lora::adapter::LoadOptions;
//! use openledger_lora::adapter::build::AdapterBuilder;
//! use openledger_lora::adapter::config::ConfigSpec;
//! use openledger_lora::adapter::merge::{DenseTensor, merge, unmerge};
//!
//! let mut b = AdapterBuilder::new(ConfigSpec::new(1, 2.0, &["q_proj"]));
//! b.lora("q_proj", 2, 2, 1, &[1.0, 0.0], &[0.0, 1.0]);
//! let adapter = b.build(&LoadOptions::default()).unwrap();
//! let mut w = BTreeMap::new();
//! w.insert("q_proj.weight".to_string(), DenseTensor::new(vec![2, 2], vec![1.0, 0.0, 0.0, 1.0]));
//! let rec = merge(&adapter, &mut w).unwrap();
//! assert_eq!(w["q_proj.weight"].data, vec![1.0, 0.0, 2.0, 1.0]); // + 2·[0,1]ᵀ[1,0]
//! unmerge(&adapter, &mut w, rec).unwrap();
//! assert_eq!(w["q_proj.weight"].data, vec![1.0, 0.0, 0.0, 1.0]);
//! ```

use std::collections::BTreeMap;

use crate::adapter::{LoraAdapter, LoraModule, ModuleKind};
use crate::error::LoraError;

/// A dense row-major f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseTensor {
    /// The stored shape.
    pub shape: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<f32>,
}

impl DenseTensor {
    /// Wraps a shape and its elements.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        DenseTensor { shape, data }
    }
}

/// What [`merge`] changed, needed by [`unmerge`] to restore the weights.
#[derive(Clone, Debug, Default)]
pub struct MergeRecord {
    dora_norms: BTreeMap<String, Vec<f64>>,
    replaced: BTreeMap<String, DenseTensor>,
}

/// How the merged module's weight is laid out relative to `Δ` (`[out, in]`).
fn transposed(m: &LoraModule) -> bool {
    m.fan_in_fan_out() || m.kind() == ModuleKind::Embedding
}

fn weight_of<'a>(
    weights: &'a BTreeMap<String, DenseTensor>,
    name: &str,
    m: &LoraModule,
) -> Result<&'a DenseTensor, LoraError> {
    let key = format!("{name}.weight");
    let w = weights
        .get(&key)
        .ok_or_else(|| LoraError::TargetModuleAbsent {
            module: key.clone(),
        })?;
    let (o, i) = (m.out_features(), m.in_features());
    let want = if transposed(m) { [i, o] } else { [o, i] };
    if w.shape != want || w.data.len() != o * i {
        return Err(LoraError::ShapeMismatch {
            module: name.to_string(),
            adapter_out: o,
            adapter_in: i,
            base_shape: w.shape.clone(),
        });
    }
    Ok(w)
}

fn check(adapter: &LoraAdapter, weights: &BTreeMap<String, DenseTensor>) -> Result<(), LoraError> {
    for (name, m) in adapter.modules() {
        weight_of(weights, name, m)?;
        if m.lora_bias().is_some() {
            let key = format!("{name}.bias");
            match weights.get(&key) {
                Some(b) if b.data.len() == m.out_features() => {}
                Some(b) => {
                    return Err(LoraError::BadShape {
                        key,
                        expected: format!("[{}]", m.out_features()),
                        found: b.shape.clone(),
                    });
                }
                None => {
                    return Err(LoraError::Unsupported {
                        what: format!("lora_bias on {name:?}, whose base layer has no bias"),
                    });
                }
            }
        }
    }
    for (param, t) in adapter.saved_tensors() {
        let w = weights
            .get(param)
            .ok_or_else(|| LoraError::TargetModuleAbsent {
                module: param.to_string(),
            })?;
        if w.shape != t.shape() {
            return Err(LoraError::BadShape {
                key: param.to_string(),
                expected: format!("the adapter's {:?}", t.shape()),
                found: w.shape.clone(),
            });
        }
    }
    Ok(())
}

/// Adds `sign · Δ` into `w`, honouring the stored orientation.
fn add_delta(w: &mut [f32], delta: &[f32], out: usize, inp: usize, transposed: bool, sign: f32) {
    if transposed {
        for o in 0..out {
            for i in 0..inp {
                w[i * out + o] += sign * delta[o * inp + i];
            }
        }
    } else {
        w.iter_mut().zip(delta).for_each(|(x, d)| *x += sign * d);
    }
}

/// Index of element (o, i) of the standard-orientation weight in storage.
#[inline]
fn at(o: usize, i: usize, out: usize, inp: usize, transposed: bool) -> usize {
    if transposed { i * out + o } else { o * inp + i }
}

/// Merges `adapter` into `weights` (see the module docs) and returns what is needed to undo it.
///
/// All shapes are checked first: on error nothing has been written.
pub fn merge(
    adapter: &LoraAdapter,
    weights: &mut BTreeMap<String, DenseTensor>,
) -> Result<MergeRecord, LoraError> {
    check(adapter, weights)?;
    let mut rec = MergeRecord::default();
    for (name, m) in adapter.modules() {
        let (out, inp, tr) = (m.out_features(), m.in_features(), transposed(m));
        let delta = m.delta();
        let w = weights.get_mut(&format!("{name}.weight")).expect("checked");
        match m.magnitude() {
            None => add_delta(&mut w.data, &delta, out, inp, tr, 1.0),
            Some(mag) => {
                add_delta(&mut w.data, &delta, out, inp, tr, 1.0);
                let mag = mag.to_f32();
                let mut norms = Vec::with_capacity(out);
                for o in 0..out {
                    let n = (0..inp)
                        .map(|i| f64::from(w.data[at(o, i, out, inp, tr)]).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    let f = f64::from(mag[o]) / n;
                    for i in 0..inp {
                        let x = &mut w.data[at(o, i, out, inp, tr)];
                        *x = (f64::from(*x) * f) as f32;
                    }
                    norms.push(n);
                }
                rec.dora_norms.insert(name.to_string(), norms);
            }
        }
        if let Some(lb) = m.lora_bias() {
            let b = weights.get_mut(&format!("{name}.bias")).expect("checked");
            for (x, v) in b.data.iter_mut().zip(lb.to_f32().iter()) {
                *x += m.scale() * v;
            }
        }
    }
    for (param, t) in adapter.saved_tensors() {
        let w = weights.get_mut(param).expect("checked");
        let new = t.to_f32().into_owned();
        let old = std::mem::replace(&mut w.data, new);
        rec.replaced
            .insert(param.to_string(), DenseTensor::new(w.shape.clone(), old));
    }
    Ok(rec)
}

/// Undoes [`merge`]: `W ← W − Δ`, or for DoRA `W ← W / (m / ‖W₀ + Δ‖) − Δ` with the norms
/// recorded at merge time; lora biases are subtracted and saved parameters restored.
pub fn unmerge(
    adapter: &LoraAdapter,
    weights: &mut BTreeMap<String, DenseTensor>,
    record: MergeRecord,
) -> Result<(), LoraError> {
    check(adapter, weights)?;
    for (name, m) in adapter.modules() {
        if m.magnitude().is_some() && !record.dora_norms.contains_key(name) {
            return Err(LoraError::arg(
                "record",
                format!("holds no DoRA norms for {name:?}; was it made by merging this adapter?"),
            ));
        }
    }
    for (name, m) in adapter.modules() {
        let (out, inp, tr) = (m.out_features(), m.in_features(), transposed(m));
        let delta = m.delta();
        let w = weights.get_mut(&format!("{name}.weight")).expect("checked");
        if let (Some(mag), Some(norms)) = (m.magnitude(), record.dora_norms.get(name)) {
            let mag = mag.to_f32();
            for o in 0..out {
                let f = f64::from(mag[o]) / norms[o];
                for i in 0..inp {
                    let x = &mut w.data[at(o, i, out, inp, tr)];
                    *x = (f64::from(*x) / f) as f32;
                }
            }
        }
        add_delta(&mut w.data, &delta, out, inp, tr, -1.0);
        if let Some(lb) = m.lora_bias() {
            let b = weights.get_mut(&format!("{name}.bias")).expect("checked");
            for (x, v) in b.data.iter_mut().zip(lb.to_f32().iter()) {
                *x -= m.scale() * v;
            }
        }
    }
    for (param, old) in record.replaced {
        if let Some(w) = weights.get_mut(&param) {
            *w = old;
        }
    }
    Ok(())
}

/// The output of a DoRA module for one base weight, without merging: `(m / ‖W + Δ‖) ⊙ (W + Δ)`
/// as a new standard-orientation `[out, in]` matrix (PEFT's merged DoRA weight).
pub fn dora_weight(m: &LoraModule, base_standard: &[f32]) -> Result<Vec<f32>, LoraError> {
    let (out, inp) = (m.out_features(), m.in_features());
    if base_standard.len() != out * inp {
        return Err(LoraError::arg(
            "base_standard",
            format!("has {} values, expected {out}·{inp}", base_standard.len()),
        ));
    }
    let mut w: Vec<f32> = base_standard
        .iter()
        .zip(m.delta())
        .map(|(a, b)| a + b)
        .collect();
    if let Some(mag) = m.magnitude() {
        let mag = mag.to_f32();
        for (o, row) in w.chunks_exact_mut(inp).enumerate() {
            let n = row
                .iter()
                .map(|x| f64::from(*x).powi(2))
                .sum::<f64>()
                .sqrt();
            let f = f64::from(mag[o]) / n;
            row.iter_mut().for_each(|x| *x = (f64::from(*x) * f) as f32);
        }
    }
    Ok(w)
}
