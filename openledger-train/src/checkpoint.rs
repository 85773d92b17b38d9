//! Checkpoints as attribution reads them back: the adapter a [`TrainEvent::Checkpoint`] carries,
//! decoded into the trainer's flat parameter vector ([`Trainer::gradient_layout`] order), so
//! that per-example gradients can be taken again at that checkpoint; and the ranges of the
//! adapted modules in that vector (DataInf's layers).
//!
//! ```
//! use openledger_train::{ParamSlice, lora_layers};
//!
//! let slice = |name: &str, shape: Vec<usize>, offset| ParamSlice { name: name.into(), shape, offset };
//! let layout = [
//!     slice("model.layers.0.self_attn.q_proj.lora_A.weight", vec![2, 8], 0),
//!     slice("model.layers.0.self_attn.q_proj.lora_B.weight", vec![8, 2], 16),
//!     slice("model.layers.0.self_attn.v_proj.lora_A.weight", vec![2, 8], 32),
//!     slice("model.layers.0.self_attn.v_proj.lora_B.weight", vec![4, 2], 48),
//! ];
//! assert_eq!(lora_layers(&layout), vec![0..32, 32..56]);
//! ```

use std::collections::BTreeMap;
use std::ops::Range;

use openledger_core::ContentId;

use crate::error::TrainError;
use crate::trainer::{Checkpoint, ParamSlice, TrainEvent, Trainer};

/// A checkpoint's flat parameters (in [`Trainer::gradient_layout`] order) and where it came
/// from.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointParams {
    /// Optimizer steps taken when it was saved.
    pub step: usize,
    /// The checkpoint's id (keccak-256 of its safetensors), as the training log records it.
    pub id: ContentId,
    /// The parameters.
    pub parameters: Vec<f32>,
}

/// Decodes a [`Checkpoint`]'s adapter into the flat parameter vector of `layout` (every
/// tensor present, F32, with the layout's shape).
pub fn checkpoint_parameters(
    layout: &[ParamSlice],
    checkpoint: &Checkpoint,
) -> Result<CheckpointParams, TrainError> {
    let bad = |reason: String| TrainError::BadCheckpoint {
        step: checkpoint.step,
        reason,
    };
    let st = safetensors::SafeTensors::deserialize(&checkpoint.safetensors)
        .map_err(|e| bad(format!("safetensors: {e}")))?;
    let mut by_suffix = BTreeMap::new();
    for (key, view) in st.tensors() {
        by_suffix.insert(key, view);
    }
    let total: usize = layout
        .iter()
        .map(|s| s.shape.iter().product::<usize>())
        .sum();
    let mut out = vec![0f32; total];
    for slice in layout {
        let view = by_suffix
            .iter()
            .find(|(k, _)| {
                k.strip_suffix(slice.name.as_str())
                    .is_some_and(|prefix| prefix.ends_with('.'))
            })
            .map(|(_, v)| v)
            .ok_or_else(|| bad(format!("no tensor {}", slice.name)))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(bad(format!(
                "{} is {:?}, expected F32",
                slice.name,
                view.dtype()
            )));
        }
        if view.shape() != slice.shape.as_slice() {
            return Err(bad(format!(
                "{} has shape {:?}, expected {:?}",
                slice.name,
                view.shape(),
                slice.shape
            )));
        }
        let n: usize = slice.shape.iter().product();
        let dst = out
            .get_mut(slice.offset..slice.offset + n)
            .ok_or_else(|| bad(format!("{} lies outside the layout", slice.name)))?;
        for (d, b) in dst.iter_mut().zip(view.data().chunks_exact(4)) {
            *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
    Ok(CheckpointParams {
        step: checkpoint.step,
        id: checkpoint.id,
        parameters: out,
    })
}

/// Keeps the flat parameters of every checkpoint a training run reports: pass each
/// [`TrainEvent`] of [`Trainer::train`] to [`observe`](Self::observe), then take the
/// checkpoints (or the failure to decode one) with [`finish`](Self::finish).
#[derive(Debug)]
pub struct CheckpointCollector {
    layout: Vec<ParamSlice>,
    kept: Vec<CheckpointParams>,
    bad: Option<TrainError>,
}

impl CheckpointCollector {
    /// A collector for `trainer`'s parameter layout.
    pub fn new(trainer: &Trainer) -> Self {
        Self {
            layout: trainer.gradient_layout(),
            kept: Vec::new(),
            bad: None,
        }
    }

    /// Decodes `event` when it is a checkpoint; other events are ignored.
    pub fn observe(&mut self, event: &TrainEvent) {
        if let TrainEvent::Checkpoint(c) = event {
            match checkpoint_parameters(&self.layout, c) {
                Ok(p) => self.kept.push(p),
                Err(err) => self.bad = Some(err),
            }
        }
    }

    /// The checkpoints seen, in order, or the error of the last one that did not decode.
    pub fn finish(self) -> Result<Vec<CheckpointParams>, TrainError> {
        match self.bad {
            Some(err) => Err(err),
            None => Ok(self.kept),
        }
    }
}

/// The feature index ranges of each adapted module (its `lora_A` and `lora_B`, and DoRA
/// magnitude) in a flat gradient: DataInf's LoRA layers.
pub fn lora_layers(layout: &[ParamSlice]) -> Vec<Range<usize>> {
    let mut out: Vec<(String, Range<usize>)> = Vec::new();
    for s in layout {
        let module = s.name.rsplit_once(".lora_").map_or(&s.name[..], |(m, _)| m);
        let end = s.offset + s.shape.iter().product::<usize>();
        match out.last_mut() {
            Some((m, r)) if m == module && r.end == s.offset => r.end = end,
            _ => out.push((module.to_string(), s.offset..end)),
        }
    }
    out.into_iter().map(|(_, r)| r).collect()
}
