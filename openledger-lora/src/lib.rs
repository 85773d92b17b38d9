//! OpenLoRA for the openledger SDK: many LoRA adapters served over one base model.
//!
//! * [`adapter`]: PEFT adapters (folder or bytes), their config's math, validation against a
//!   base model, merging and weighted combination, and a builder that writes PEFT folders.
//! * [`pool`]: the just-in-time adapter pool under a byte budget.
//! * [`sgmv`]: the SGMV/BGMV multi-LoRA operators on the CPU.
//! * [`model`]: llama-family models loaded from (and saved as) HF folders, whose forward pass
//!   runs a batch of sequences with different adapters.
//! * [`serve`]: the continuous-batching engine over a paged KV cache, sampling and streaming.
//! * [`embed`]: sentence embeddings from a sentence-transformers BERT folder (all-MiniLM-L6-v2).
//!
//! Training lives in `openledger-train`, which builds on [`model`].

pub mod adapter;
pub mod embed;
pub mod error;
pub mod model;
pub mod pool;
pub mod serve;
pub mod sgmv;
