//! The serving engine's public face: [`Engine`] drives any [`StepModel`] — a model that runs a
//! [`StepBatch`] of sequences (each a prompt chunk or one decode token, with its adapter and its
//! KV blocks) and returns their next-token [`Logits`] — under the limits of an
//! [`EngineConfig`]. How each step's batch is chosen is the scheduler's ([`super::scheduler`]).

use openledger_core::error::{Classify, ErrorKind};
use std::collections::{HashMap, VecDeque};
use std::sync::mpsc;

use thiserror::Error;

use super::attention::AttnSeq;
use super::kv::{KvDtype, KvError, KvLayout, KvStorage, PagedKvCache, SeqId};
use super::readiness::{AdapterReadiness, AllReady};
use super::request::{CancelHandle, Event, Request, RequestError, RequestHandle, RequestId, Sink};
use super::sampling::Detokenize;
use super::scheduler::Active;
use crate::pool::AdapterId;

/// One sequence's share of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSeq {
    /// The request it serves.
    pub request: RequestId,
    /// Its sequence in the KV cache.
    pub seq: SeqId,
    /// Tokens to run now: a prompt chunk, or the one last sampled token.
    pub tokens: Vec<u32>,
    /// Position of `tokens[0]`; the cache already holds positions `0..start_pos` and has slots
    /// appended for `start_pos..start_pos + tokens.len()`, which the model writes.
    pub start_pos: usize,
    /// The adapter to apply, or `None` for the base model (the model maps ids to its adapter
    /// slots, e.g. the slots of an SGMV call).
    pub adapter: Option<AdapterId>,
    /// The sequence's blocks (covering the new positions too).
    pub block_table: Vec<u32>,
    /// Whether the model must return logits for the last of `tokens` (false for a prompt chunk
    /// that is not the prompt's last).
    pub needs_logits: bool,
}

/// Everything one forward pass runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepBatch {
    /// The sequences, in a stable order (running ones oldest first, then new admissions).
    pub seqs: Vec<StepSeq>,
}

impl StepBatch {
    /// Tokens in the batch.
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.tokens.len()).sum()
    }

    /// The batch as [`paged_attention`](super::paged_attention) takes it: every sequence's new
    /// tokens as queries at their positions (queries in batch order, as the model lays out its
    /// hidden states).
    ///
    /// ```
    /// use openledger_lora::serve::{AttnSeq, SeqId, StepBatch, StepSeq, RequestId};
    ///
    /// let input = |seq, tokens: Vec<u32>, start_pos| StepSeq {
    ///     request: RequestId(seq),
    ///     seq: SeqId(seq),
    ///     tokens,
    ///     start_pos,
    ///     adapter: None,
    ///     block_table: vec![],
    ///     needs_logits: true,
    /// };
    /// let batch = StepBatch { seqs: vec![input(0, vec![5], 9), input(1, vec![1, 2, 3], 0)] };
    /// assert_eq!(batch.attn_seqs()[1], AttnSeq { seq: SeqId(1), start_pos: 0, n_queries: 3 });
    /// assert_eq!(batch.num_tokens(), 4);
    /// ```
    pub fn attn_seqs(&self) -> Vec<AttnSeq> {
        self.seqs
            .iter()
            .map(|s| AttnSeq {
                seq: s.seq,
                start_pos: s.start_pos,
                n_queries: s.tokens.len(),
            })
            .collect()
    }
}

/// Next-token logits of a step: one row of `vocab_size` floats per sequence whose
/// `needs_logits` is set, in batch order.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    /// Row-major `[rows, vocab_size]`.
    pub data: Vec<f32>,
}

/// A model the engine can drive. It writes each new token's K/V into `kv` at its position (the
/// slots are already appended) and attends through the block tables, e.g. with
/// [`paged_attention`](super::paged_attention).
pub trait StepModel {
    /// Where the engine's KV cache keeps its values: [`HostKvStorage`](super::HostKvStorage) for a model on the
    /// CPU, device memory for a model on a GPU.
    type Storage: KvStorage;

    /// Tokens in the vocabulary (the width of a logits row).
    fn vocab_size(&self) -> usize;

    /// Makes the engine's KV cache: `num_blocks` blocks of `layout` holding `dtype` (a model
    /// on the CPU: [`PagedKvCache::with_dtype`]).
    fn kv_cache(
        &mut self,
        layout: KvLayout,
        num_blocks: usize,
        dtype: KvDtype,
    ) -> Result<PagedKvCache<Self::Storage>, KvError>;

    /// Runs one step.
    fn forward(
        &mut self,
        batch: &StepBatch,
        kv: &mut PagedKvCache<Self::Storage>,
    ) -> Result<Logits, Box<dyn std::error::Error + Send + Sync>>;

    /// The most distinct adapters one step may run (a GPU's adapter slots): the scheduler
    /// admits no request whose adapter would take the running requests past it, and lets
    /// requests for adapters already running go first. The default sets no limit.
    fn max_adapters(&self) -> Option<usize> {
        None
    }

    /// Makes `adapter` ready to run (attaching it, say) when a request naming it is admitted
    /// and no running request holds it yet: `Ok(false)` when it is on its way (a copy to the
    /// device in flight): the request waits and is asked about again at a later step, while
    /// the running requests go on. An error fails that request only. The default accepts every
    /// adapter.
    fn prepare_adapter(&mut self, adapter: &AdapterId) -> Result<bool, RequestError> {
        let _ = adapter;
        Ok(true)
    }
}

/// Declares, inside an `impl StepModel`, a KV cache kept on the host
/// ([`HostKvStorage`](crate::serve::HostKvStorage)): the `Storage` type and `kv_cache` of a
/// model that computes on the CPU.
///
/// ```
/// use openledger_lora::serve::*;
///
/// struct Uniform;
/// impl StepModel for Uniform {
///     openledger_lora::host_kv_cache!();
///     fn vocab_size(&self) -> usize { 4 }
///     fn forward(&mut self, batch: &StepBatch, _kv: &mut PagedKvCache)
///         -> Result<Logits, Box<dyn std::error::Error + Send + Sync>> {
///         let rows = batch.seqs.iter().filter(|s| s.needs_logits).count();
///         Ok(Logits { data: vec![0.0; rows * 4] })
///     }
/// }
/// ```
#[macro_export]
macro_rules! host_kv_cache {
    () => {
        type Storage = $crate::serve::HostKvStorage;

        fn kv_cache(
            &mut self,
            layout: $crate::serve::KvLayout,
            num_blocks: usize,
            dtype: $crate::serve::KvDtype,
        ) -> Result<$crate::serve::PagedKvCache, $crate::serve::KvError> {
            $crate::serve::PagedKvCache::with_dtype(layout, num_blocks, dtype)
        }
    };
}

/// What happens to a preempted sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preemption {
    /// Free its blocks and recompute its prompt and output later.
    #[default]
    Recompute,
    /// Move its blocks to host memory and bring them back later.
    Swap,
}

/// Limits of an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// KV cache shape.
    pub kv_layout: KvLayout,
    /// Blocks in the KV pool.
    pub num_blocks: usize,
    /// Tokens one step may run (decode tokens plus prefill chunks).
    pub max_tokens_per_step: usize,
    /// Sequences running at once.
    pub max_running: usize,
    /// Longest sequence (prompt and output); at most `num_blocks · block_size`.
    pub max_context: usize,
    /// How to preempt.
    pub preemption: Preemption,
    /// How the KV cache stores its values.
    pub kv_dtype: KvDtype,
}

/// Why the engine as a whole could not go on.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The configuration cannot work.
    #[error("invalid engine configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The KV cache refused an operation the scheduler relied on (a bug, not bad input).
    #[error("KV cache: {0}")]
    Kv(#[from] KvError),
    /// The forward pass failed; the requests of its batch got [`RequestError::Model`].
    #[error("forward pass failed: {0}")]
    Model(Box<dyn std::error::Error + Send + Sync>),
}

impl Classify for EngineError {
    fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Config { .. } => ErrorKind::InvalidArgument,
            // The scheduler relies on the cache: a refusal is a bug, not bad input.
            EngineError::Kv(_) => ErrorKind::Internal,
            EngineError::Model(_) => ErrorKind::Generation,
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Sequences in the batch.
    pub batch_seqs: usize,
    /// Prompt tokens and recomputed output run (prefill).
    pub prefill_tokens: usize,
    /// Output tokens run one at a time (decode).
    pub decode_tokens: usize,
    /// Sequences preempted.
    pub preempted: usize,
    /// Requests that ended (finished, failed or cancelled).
    pub ended: usize,
}

/// The engine's load at one moment, and what it has done since it started: what a metrics
/// page shows as gauges and counters (vLLM's `num_requests_running`, `num_requests_waiting`,
/// `gpu_cache_usage_perc` and `num_preemptions_total`, among others).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineLoad {
    /// Requests waiting to be admitted (for blocks, a batch slot or their adapter).
    pub waiting: usize,
    /// Requests running (holding KV blocks).
    pub running: usize,
    /// Requests preempted by swapping, their blocks on the host.
    pub swapped: usize,
    /// Blocks in the KV pool.
    pub kv_blocks: usize,
    /// Blocks of the KV pool free now.
    pub kv_blocks_free: usize,
    /// Bytes the KV pool's blocks hold (K and V of every layer, in the cache's type).
    pub kv_bytes: usize,
    /// Steps that ran the model on a batch (a step whose forward pass failed counts too).
    pub steps: u64,
    /// Sequences preempted (by recompute or swap) since the engine started.
    pub preemptions: u64,
    /// Prompt tokens and recomputed output run by steps whose forward pass succeeded.
    pub prefill_tokens: u64,
    /// Output tokens run one at a time by steps whose forward pass succeeded (as
    /// [`StepReport::decode_tokens`] counts them: the last token of a recomputed output run
    /// alone counts here too).
    pub decode_tokens: u64,
}

impl EngineLoad {
    /// The share of the KV pool's blocks in use, from 0 to 1.
    pub fn kv_usage(&self) -> f64 {
        if self.kv_blocks == 0 {
            return 0.0;
        }
        (self.kv_blocks - self.kv_blocks_free.min(self.kv_blocks)) as f64 / self.kv_blocks as f64
    }
}

/// The serving engine: a scheduler with continuous batching over a paged KV cache, driving a
/// [`StepModel`]. Call [`step`](Self::step) in a loop (or [`run_until_idle`](Self::run_until_idle)).
/// Dropping it releases the adapters its requests held.
pub struct Engine<M: StepModel, R: AdapterReadiness = AllReady> {
    pub(super) model: M,
    pub(super) readiness: R,
    pub(super) kv: PagedKvCache<M::Storage>,
    pub(super) config: EngineConfig,
    pub(super) detok: Option<Box<dyn Detokenize + Send>>,
    pub(super) waiting: VecDeque<Active>,
    pub(super) running: Vec<Active>,
    pub(super) swapped: VecDeque<Active>,
    pub(super) next_id: u64,
    /// Requests holding each adapter.
    pub(super) held: HashMap<AdapterId, usize>,
    /// Counters since the engine started (the gauges of [`EngineLoad`] are read when asked).
    pub(super) totals: EngineLoad,
}

impl<M: StepModel, R: AdapterReadiness> Drop for Engine<M, R> {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.held).into_keys() {
            self.readiness.release(&id);
        }
    }
}

impl<M: StepModel, R: AdapterReadiness> Engine<M, R> {
    /// An engine over `model` with its own KV pool.
    pub fn new(mut model: M, readiness: R, config: EngineConfig) -> Result<Self, EngineError> {
        let bad = |reason: String| Err(EngineError::Config { reason });
        if config.max_tokens_per_step == 0 || config.max_running == 0 || config.max_context == 0 {
            return bad("max_tokens_per_step, max_running and max_context must be ≥ 1".into());
        }
        let capacity = config
            .num_blocks
            .saturating_mul(config.kv_layout.block_size);
        if config.max_context > capacity {
            return bad(format!(
                "max_context {} exceeds the pool's {capacity} positions",
                config.max_context
            ));
        }
        let kv = model.kv_cache(config.kv_layout, config.num_blocks, config.kv_dtype)?;
        Ok(Self {
            model,
            readiness,
            kv,
            config,
            detok: None,
            waiting: VecDeque::new(),
            running: Vec::new(),
            swapped: VecDeque::new(),
            next_id: 0,
            held: HashMap::new(),
            totals: EngineLoad::default(),
        })
    }

    /// Sets the detokenizer stop strings are checked with.
    pub fn with_detokenizer(mut self, d: impl Detokenize + Send + 'static) -> Self {
        self.detok = Some(Box::new(d));
        self
    }

    /// The KV cache (for inspection).
    pub fn kv(&self) -> &PagedKvCache<M::Storage> {
        &self.kv
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The model, to attach or detach adapters between steps.
    pub fn model_mut(&mut self) -> &mut M {
        &mut self.model
    }

    /// The adapter readiness the engine asks.
    pub fn readiness(&self) -> &R {
        &self.readiness
    }

    /// The adapter readiness, to change between steps.
    pub fn readiness_mut(&mut self) -> &mut R {
        &mut self.readiness
    }

    /// Requests not yet finished (waiting, running or swapped).
    pub fn pending(&self) -> usize {
        self.waiting.len() + self.running.len() + self.swapped.len()
    }

    /// The engine's load now, with its counters since it started.
    pub fn load(&self) -> EngineLoad {
        EngineLoad {
            waiting: self.waiting.len(),
            running: self.running.len(),
            swapped: self.swapped.len(),
            kv_blocks: self.kv.num_blocks(),
            kv_blocks_free: self.kv.free_blocks(),
            kv_bytes: self.kv.num_blocks()
                * self.kv.layout().block_floats()
                * self.kv.dtype().bytes(),
            ..self.totals
        }
    }

    /// Submits a request whose events arrive through the returned handle.
    pub fn submit(&mut self, req: Request) -> RequestHandle {
        let (tx, rx) = mpsc::channel();
        let cancel = CancelHandle::default();
        let id = self.enqueue(req, Sink::Channel(tx), cancel.clone());
        RequestHandle {
            id,
            cancel,
            events: rx,
        }
    }

    /// Submits a request whose events are passed to `on_event` (called on the engine's thread).
    pub fn submit_with_callback(
        &mut self,
        req: Request,
        on_event: impl FnMut(&Event) + Send + 'static,
    ) -> (RequestId, CancelHandle) {
        let cancel = CancelHandle::default();
        let id = self.enqueue(req, Sink::Callback(Box::new(on_event)), cancel.clone());
        (id, cancel)
    }

    /// Cancels request `id` now (frees its blocks, sends its terminal event); false when it is
    /// not pending.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        for a in self
            .waiting
            .iter()
            .chain(&self.running)
            .chain(&self.swapped)
        {
            if a.id == id {
                a.cancel.cancel();
                self.reap_cancelled();
                return true;
            }
        }
        false
    }

    /// Adapters held by the engine's requests, with how many requests hold each.
    pub fn held_adapters(&self) -> Vec<(AdapterId, usize)> {
        let mut v: Vec<_> = self.held.iter().map(|(k, n)| (k.clone(), *n)).collect();
        v.sort_unstable();
        v
    }

    /// Pending requests (waiting, running or swapped) that name adapter `id`, whether or not
    /// they hold it yet: a request queued for an adapter expects the weights it was submitted
    /// against. A request naming an ensemble counts for the ensemble and for each member.
    pub fn requests_naming(&self, id: &AdapterId) -> usize {
        self.waiting
            .iter()
            .chain(&self.running)
            .chain(&self.swapped)
            .filter(|a| {
                a.adapter.as_ref().is_some_and(|named| {
                    named == id || (named.is_ensemble() && named.adapters().contains(id))
                })
            })
            .count()
    }

    /// Steps until no request is pending. While every pending request waits on an adapter load,
    /// it sleeps briefly between steps.
    pub fn run_until_idle(&mut self) -> Result<(), EngineError> {
        while self.pending() > 0 {
            let r = self.step()?;
            if r.batch_seqs == 0 && r.ended == 0 && r.preempted == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        Ok(())
    }
}
