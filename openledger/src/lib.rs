//! The openledger SDK facade: the Payable-AI loop and the attribution experiments, and the glue
//! between the layers that no single layer crate may hold (a layer crate never reaches up or
//! sideways: attribution knows nothing of LoRA, the chain knows nothing of either). It holds no
//! logic a layer could own; one dependency gives an application every layer.
//!
//! * [`core`], [`lora`], [`train`], [`poa`], [`chain`]: the layer crates, re-exported; [`gpu`]: the
//!   model on a GPU (`gpu::serve` takes a `gpu::Device`: `cpu`, `cuda`, `cuda:N`; CUDA devices
//!   behind the `cuda` feature).
//! * [`payable`]: the Payable-AI loop end to end — datanet and grant on chain, fine-tuning with
//!   influence features, registration, a mixed-adapter batch served with streaming, attribution,
//!   EIP-712 receipts and payments, the epoch's Merkle root and every claim, to the wei.
//! * [`attribution`]: influence of datanet records on a fine-tuned adapter's answers — the
//!   trainer's per-example LoRA gradients at logged checkpoints put into the attribution
//!   layer's influence index — and the metrics and experiment that judge it.
//! * [`grounded`]: answers grounded in retrieved datanet records on a pretrained GGUF chat
//!   model (SmolLM2), with ContextCite's credit of each source: ablated prompts scored in one
//!   mixed batch, a sparse linear surrogate judged on held-out masks.
//! * [`provenance`]: training grants read from the `DatanetRegistry`, and trained adapters
//!   registered in the `ModelRegistry` with the head of their training log.
//! * [`synthetic`]: a key→value language with known flipped labels, the ground truth of the
//!   experiment.
//!
//! ```
//! use openledger::attribution::metrics::auc;
//! use openledger::core::ContentId;
//!
//! assert_eq!(auc(&[2.0, 1.0], &[true, false]), Some(1.0));
//! assert_eq!(ContentId::of(b"x"), openledger_core::ContentId::of(b"x"));
//! ```

pub use openledger_chain as chain;
pub use openledger_core as core;
pub use openledger_gpu as gpu;
pub use openledger_lora as lora;
pub use openledger_poa as poa;
pub use openledger_train as train;

pub mod attribution;
pub mod grounded;
pub mod payable;
pub mod provenance;
pub mod synthetic;
