//! OpenLoRA for the openledger SDK: many LoRA adapters served over one base model.
//!
//! * [`adapter`]: PEFT adapters (folder or bytes), their config's math, validation against a
//!   base model, merging and weighted combination, and a builder that writes PEFT folders.
//! * [`pool`]: the just-in-time adapter pool under a byte budget.
//! * [`sgmv`]: the SGMV/BGMV multi-LoRA operators (the `openledger-sgmv` crate: one plan, the
//!   CPU backend, and the CUDA one under this crate's `cuda` feature).
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
pub use openledger_sgmv as sgmv;

/// Fixes, in the environment, the CPU thread count candle and rayon use (`RAYON_NUM_THREADS`) to
/// the count candle picks itself, when it is not set already. candle 0.11 otherwise works the
/// count out again for every matrix product, reading `/proc/cpuinfo` on Linux each time, which
/// costs more than the product itself for an adapter's small matrices: on a 2-core machine a
/// fine-tune of the influence experiment took 1.30 s without it and 0.41 s with it. The count
/// stays what candle would have used.
///
/// # Safety
/// It changes the process environment: call it at the start of `main`, before any other thread
/// runs (see [`std::env::set_var`]).
pub unsafe fn fix_cpu_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        // SAFETY: the caller runs this before any other thread exists.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
}
