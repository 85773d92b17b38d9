//! The serving machinery of the engine, independent of any particular model: a paged KV cache
//! and paged attention, token sampling, a continuous-batching scheduler that drives any
//! [`StepModel`] while requests for different adapters join and leave, token streaming with
//! cancellation and per-request statistics, and an output's text kept a few tokens at a time
//! ([`IncrementalText`]) for stop strings and for handing an answer out in pieces
//! ([`TextPieces`]); and what a stream's reader has seen of its request ([`StreamLog`]).
//!
//! ```
//! use openledger_lora::serve::*;
//!
//! /// Favours the token after the last one it was given.
//! struct Counter;
//! impl StepModel for Counter {
//!     openledger_lora::host_kv_cache!();
//!     fn vocab_size(&self) -> usize { 8 }
//!     fn forward(&mut self, batch: &StepBatch, _kv: &mut PagedKvCache)
//!         -> Result<Logits, Box<dyn std::error::Error + Send + Sync>> {
//!         let mut data = Vec::new();
//!         for s in batch.seqs.iter().filter(|s| s.needs_logits) {
//!             let next = (*s.tokens.last().unwrap() as usize + 1) % 8;
//!             data.extend((0..8).map(|t| if t == next { 1.0 } else { 0.0 }));
//!         }
//!         Ok(Logits { data })
//!     }
//! }
//!
//! let config = EngineConfig {
//!     kv_layout: KvLayout { n_layers: 1, n_kv_heads: 1, head_dim: 4, block_size: 4 },
//!     num_blocks: 16,
//!     max_tokens_per_step: 32,
//!     max_running: 8,
//!     max_context: 64,
//!     preemption: Preemption::Recompute,
//!     kv_dtype: KvDtype::F32,
//! };
//! let mut engine = Engine::new(Counter, AllReady, config).unwrap();
//! let sampling = SamplingParams { max_new_tokens: 3, ..Default::default() };
//! let handle = engine.submit(Request { prompt: vec![2, 5], adapter: None, sampling });
//! engine.run_until_idle().unwrap();
//! let tokens: Vec<u32> = handle
//!     .filter_map(|e| match e { Event::Token { token, .. } => Some(token), _ => None })
//!     .collect();
//! assert_eq!(tokens, [6, 7, 0]);
//! ```

mod attention;
mod engine;
mod kv;
mod readiness;
mod request;
mod sampling;
pub mod scheduler;
mod stream;
mod text;

pub use attention::{AttentionParams, AttnSeq, paged_attention};
pub use engine::{
    Engine, EngineConfig, EngineError, EngineLoad, Logits, Preemption, StepBatch, StepModel,
    StepReport, StepSeq,
};
pub use kv::{
    HostKvStorage, HostSwapped, KvDtype, KvError, KvLayout, KvStorage, PagedKvCache, SeqId,
};
pub use readiness::{AdapterReadiness, AllReady, Readiness};
pub use request::{
    CancelHandle, Event, Request, RequestError, RequestHandle, RequestId, RequestStats,
};
pub use sampling::{
    Detokenize, FinishReason, MAX_TOP_LOGPROBS, SampleError, Sampler, SamplingParams, StopChecker,
    TokenLogprobs,
};
pub use stream::{StreamEnd, StreamLog};
pub use text::{IncrementalText, TextPieces};
