//! The Model Factory trainer: LoRA and DoRA fine-tuning of the llama-family models on the CPU
//! with candle's autograd.
//!
//! The base weights stay frozen (plain tensors shared with the [`openledger_lora::model::Model`]); the
//! LoRA factors `A`, `B` (and the DoRA magnitude) are `candle_core::Var`s, initialised as PEFT
//! does, each module with the rank and scale PEFT's `rank_pattern` / `alpha_pattern` give it.
//! The differentiable forward pass mirrors the inference engine operation for operation,
//! so a saved adapter attached to the engine gives the trainer's logits. Training is AdamW
//! (`torch.optim.AdamW`'s update) under a warm-up + cosine / linear schedule with gradient
//! accumulation and norm clipping; the causal-LM loss is taken on response tokens only for
//! prompt/response records. Every step, evaluation and checkpoint is reported to a callback.
//! For attribution, [`Trainer::example_gradient`] returns the flattened gradient of one
//! example's loss in the documented [`Trainer::gradient_layout`] order.
//!
//! For DoRA, as in PEFT, the norm `‖W + ΔW‖` is detached: the gradients of `A` and `B` treat
//! it as a constant (those of the magnitudes are exact).
//!
//! Runs are deterministic for a seed and a thread count. On machines with few cores,
//! `CANDLE_NUM_THREADS=1` keeps candle's element-wise kernels on the calling thread (the
//! matrix products still use every core), which avoids their thread barriers; see
//! `benches/README.md` for the effect.
//!
//! ```
//! use std::path::Path;
//! use openledger_lora::model::Model;
//! use openledger_train::{Example, LoraSettings, TrainConfig, TrainEvent, Trainer};
//!
//! let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama");
//! let model = Model::from_dir(&dir).unwrap();
//! let mut config = TrainConfig::new(LoraSettings::new(&["q_proj", "v_proj"], 4, 8.0));
//! config.steps = 3;
//! config.batch_size = 2;
//! config.learning_rate = 1e-2;
//! let data = vec![
//!     Example::prompt_response(&[1, 20, 21], &[22, 23, 24]),
//!     Example::text(&[1, 30, 31, 32, 33]),
//! ];
//! let mut trainer = Trainer::new(&model, config).unwrap();
//! let mut steps = 0;
//! let summary = trainer
//!     .train(&data, &[], &mut |e| if let TrainEvent::Step(s) = e { steps = s.step })
//!     .unwrap();
//! assert_eq!((summary.steps, steps), (3, 3));
//! assert!(summary.losses[2] < summary.losses[0]);
//! let g = trainer.example_gradient(&data[0]).unwrap();
//! assert_eq!(g.len(), trainer.num_parameters());
//! ```

mod checkpoint;
mod config;
mod data;
mod error;
mod export;
mod fused;
mod grads;
mod net;
mod optim;
mod trainer;

pub use checkpoint::{CheckpointCollector, CheckpointParams, checkpoint_parameters, lora_layers};
pub use config::{LoraSettings, Targets, TrainConfig};
pub use data::{Example, RecordText, Source, tokenize};
pub use error::TrainError;
pub use net::{PROJECTIONS, module_name};
pub use optim::{AdamW, Schedule, clip_grad_norm, lr_at};
pub use trainer::{
    Checkpoint, DIVERGENCE_FACTOR, EvalReport, ParamSlice, StepReport, TrainEvent, TrainSummary,
    Trainer,
};
