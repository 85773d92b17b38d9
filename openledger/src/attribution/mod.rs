//! Influence of datanet records on a fine-tuned adapter's answers: the glue between the
//! trainer ([`openledger_train`]) and the influence index ([`openledger_poa::influence`]).
//!
//! 1. the trainer runs with `checkpoint_steps` and a training log; a
//!    [`CheckpointCollector`](openledger_train::CheckpointCollector) keeps each checkpoint's
//!    flat parameters;
//! 2. [`AdapterInfluence::build`] restores each checkpoint in turn, takes the per-example LoRA
//!    gradient of every training record there (its datanet record and contributor per row), and
//!    writes them with the checkpoint weights
//!    [`tracin_weights`](openledger_poa::influence::tracin_weights) derives from the logged
//!    learning rates into an [`InfluenceIndex`];
//! 3. a query — a prompt and the model's answer — is featurised the same way
//!    ([`AdapterInfluence::featurize`]) and scored by the index with TracIn-CP or DataInf on the
//!    LoRA layers into per-record and per-contributor influence.
//!
//! [`metrics`] holds the judges (AUC, Spearman, LDS) and [`experiment`] the noisy-label and
//! linear-datamodeling experiment that measures them on a model trained in code.
//!
//! ```
//! use openledger::core::trainlog::{TrainLog, TrainStep};
//! use openledger::core::{B256, ContentId};
//! use openledger::poa::influence::tracin_weights;
//!
//! // Checkpoints at steps 2 and 4 stand for steps 1..=2 and 3..=4 of the log.
//! let mut log = TrainLog::new(B256::ZERO, B256::ZERO);
//! for (step, lr) in [(1, 0.5), (2, 0.25), (3, 0.125), (4, 0.0625)] {
//!     log.append(TrainStep::new(step, vec![ContentId::of([step as u8])], 1.0, lr)).unwrap();
//! }
//! assert_eq!(tracin_weights(&log, &[2, 4]).unwrap(), vec![0.75, 0.1875]);
//! ```

pub mod experiment;
pub mod metrics;

use openledger_core::error::{Classify, ErrorKind};
use std::path::Path;

use openledger_core::ContentId;
use openledger_core::datanet::Datanet;
use openledger_poa::PoaError;
use openledger_poa::influence::{
    FeatureSpace, GradientLayout, InfluenceIndex, Progress, ProjectedQuery, check_order,
};
use openledger_train::{CheckpointParams, Example, TrainError, Trainer, lora_layers};
use thiserror::Error;

/// Why an attribution step failed. The trainer's parameters are restored before any of these
/// is returned.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AttributionError {
    /// The trainer refused (bad example, non-finite value, a checkpoint that does not fit, ...).
    #[error(transparent)]
    Train(#[from] TrainError),
    /// The feature store, the index or the scorer refused.
    #[error(transparent)]
    Poa(#[from] PoaError),
    /// A training example without a datanet source cannot be attributed.
    #[error("training example {index} names no datanet record")]
    MissingSource {
        /// Index in the training set.
        index: usize,
    },
    /// A training example whose record is not in the datanet.
    #[error("training example {index} names record {record}, which the datanet does not hold")]
    UnknownRecord {
        /// Index in the training set.
        index: usize,
        /// The record id.
        record: ContentId,
    },
}

impl Classify for AttributionError {
    fn kind(&self) -> ErrorKind {
        match self {
            AttributionError::Train(e) => e.kind(),
            AttributionError::Poa(e) => e.kind(),
            AttributionError::MissingSource { .. } => ErrorKind::InvalidArgument,
            AttributionError::UnknownRecord { .. } => ErrorKind::UnknownId,
        }
    }

    fn io_source(&self) -> Option<(&std::path::Path, &std::io::Error)> {
        match self {
            AttributionError::Train(e) => e.io_source(),
            AttributionError::Poa(e) => e.io_source(),
            _ => None,
        }
    }
}

/// Runs `f` with each checkpoint's parameters loaded, restoring the trainer's own parameters
/// afterwards whatever happens.
fn at_checkpoints<T>(
    trainer: &mut Trainer,
    checkpoints: &[CheckpointParams],
    mut f: impl FnMut(&Trainer, usize) -> Result<T, AttributionError>,
) -> Result<Vec<T>, AttributionError> {
    let saved = trainer.parameters()?;
    let mut run = || -> Result<Vec<T>, AttributionError> {
        let mut out = Vec::with_capacity(checkpoints.len());
        for (c, cp) in checkpoints.iter().enumerate() {
            trainer.set_parameters(&cp.parameters)?;
            out.push(f(trainer, c)?);
        }
        Ok(out)
    };
    let result = run();
    trainer.set_parameters(&saved)?;
    result
}

/// The influence index of one adapter's training run, with the checkpoints its features were
/// taken at (queries are featurised at the same ones).
#[derive(Debug)]
pub struct AdapterInfluence {
    index: InfluenceIndex,
    checkpoints: Vec<CheckpointParams>,
}

impl AdapterInfluence {
    /// Builds the index at `path`: for each checkpoint, paired with its TracIn weight (from
    /// [`tracin_weights`](openledger_poa::influence::tracin_weights)), the per-example gradient
    /// of every `train` example, whose source record must be in `datanet` (its contributor is
    /// stored with it).
    pub fn build(
        path: &Path,
        trainer: &mut Trainer,
        train: &[Example],
        datanet: &Datanet,
        checkpoints: Vec<(CheckpointParams, f64)>,
        space: FeatureSpace,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Self, AttributionError> {
        let (checkpoints, weights): (Vec<CheckpointParams>, Vec<f64>) =
            checkpoints.into_iter().unzip();
        let steps: Vec<usize> = checkpoints.iter().map(|c| c.step).collect();
        check_order(&steps)?;
        let mut rows = Vec::with_capacity(train.len());
        for (index, ex) in train.iter().enumerate() {
            let src = ex
                .source
                .as_ref()
                .ok_or(AttributionError::MissingSource { index })?;
            let rec = datanet
                .get(&src.record)
                .ok_or(AttributionError::UnknownRecord {
                    index,
                    record: src.record,
                })?;
            rows.push((src.record, rec.contributor));
        }
        let layout = GradientLayout {
            num_parameters: trainer.num_parameters(),
            layers: lora_layers(&trainer.gradient_layout()),
        };
        let total = checkpoints.len() * train.len();
        let grads = at_checkpoints(trainer, &checkpoints, |t, c| {
            let mut cb = |done: usize, _: usize| {
                progress(Progress {
                    stage: "gradients",
                    done: c * train.len() + done,
                    total,
                })
            };
            Ok(t.example_gradients(train, &mut cb)?)
        })?;
        let index = InfluenceIndex::build(path, &rows, &layout, weights, space, &grads)?;
        Ok(Self { index, checkpoints })
    }

    /// The index: scores, self-influence and per-contributor attribution.
    pub fn index(&self) -> &InfluenceIndex {
        &self.index
    }

    /// The checkpoints the features were taken at.
    pub fn checkpoints(&self) -> &[CheckpointParams] {
        &self.checkpoints
    }

    /// Featurises queries — each a prompt and the answer to attribute (loss on the answer) —
    /// at every checkpoint, as the training examples were.
    pub fn featurize(
        &self,
        trainer: &mut Trainer,
        queries: &[(Vec<u32>, Vec<u32>)],
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<ProjectedQuery>, AttributionError> {
        let total = self.checkpoints.len() * queries.len();
        let examples: Vec<Example> = queries
            .iter()
            .map(|(prompt, answer)| Example::prompt_response(prompt, answer))
            .collect();
        let per_cp = at_checkpoints(trainer, &self.checkpoints, |t, c| {
            let mut cb = |done: usize, _: usize| {
                progress(Progress {
                    stage: "queries",
                    done: c * queries.len() + done,
                    total,
                })
            };
            Ok(t.example_gradients(&examples, &mut cb)?)
        })?;
        (0..queries.len())
            .map(|q| {
                let g: Vec<Vec<f32>> = per_cp.iter().map(|cp| cp[q].clone()).collect();
                Ok(self.index.project_query(&g)?)
            })
            .collect()
    }
}
