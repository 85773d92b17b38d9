//! The llama-family [`Model`] as a [`StepModel`] of the serving engine: every step runs the
//! sequences' new tokens (prompt chunks and decode tokens, each sequence with its own adapter)
//! through the same decoder stack as [`Model::forward`] — LoRA through SGMV on every projection
//! — writes each new position's roped key and value into the [`PagedKvCache`] through the
//! sequence's block table, attends with [`paged_attention`] (causal, GQA, sliding window), and
//! returns logits only for the sequences that need them, from their last new token.
//!
//! Engine adapter ids ([`crate::pool::AdapterId`]) map to adapters attached to the model:
//! attach them up front with [`PagedModel::attach`], or give the model the [`AdapterPool`] the
//! engine checks readiness with ([`PagedModel::with_pool`]) and each adapter is attached when the
//! engine admits the first request that names it ([`StepModel::prepare_adapter`]); an adapter
//! made for another base then fails that request alone. Adapters the pool has evicted are
//! detached again (their prepared copies freed) before the next attach and at every step,
//! so the model's adapter memory follows the pool's budget; the engine pins the adapters of
//! running requests, so an adapter in use is never evicted.
//!
//! A request may name an ensemble by its spelling (`a+b`, `a*0.7+b*0.3`: see
//! [`AdapterId::parse`](crate::pool::AdapterId::parse)): its members are attached (from the pool
//! or up front) and served together under that id ([`Model::attach_ensemble`]: one SGMV segment
//! per member in the same mixed batch, no merged copy). The ensemble is detached again when one
//! of its members is evicted, detached or replaced, and attached anew by the next request that
//! names it.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use openledger_lora::model::{Model, PagedModel};
//! use openledger_lora::serve::*;
//!
//! let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama");
//! let model = Model::from_dir(&dir)?;
//! let reference = model.greedy(None, &[1, 17, 42], 3)?;
//! let paged = PagedModel::new(model);
//! let config = EngineConfig {
//!     kv_layout: paged.kv_layout(4),
//!     num_blocks: 8,
//!     max_tokens_per_step: 16,
//!     max_running: 4,
//!     max_context: 32,
//!     preemption: Preemption::Recompute,
//!     kv_dtype: KvDtype::F32,
//! };
//! let mut engine = Engine::new(paged, AllReady, config)?;
//! let sampling = SamplingParams { max_new_tokens: 3, ..Default::default() };
//! let handle = engine.submit(Request { prompt: vec![1, 17, 42], adapter: None, sampling });
//! engine.run_until_idle()?;
//! let tokens: Vec<u32> = handle
//!     .filter_map(|e| match e { Event::Token { token, .. } => Some(token), _ => None })
//!     .collect();
//! assert_eq!(tokens, reference);
//! # Ok(()) }
//! ```

use openledger_core::error::{Classify, ErrorKind};
use std::collections::HashMap;
use std::sync::Arc;

use thiserror::Error;

use super::lora::Span;
use super::ops::AttentionShape;
use super::{AdapterSlot, Model, ModelError, SeqInput};
use crate::adapter::LoraAdapter;
use crate::pool::{self, AdapterPool, PoolError};
use crate::serve::{
    AttentionParams, KvError, KvLayout, Logits, PagedKvCache, RequestError, StepBatch, StepModel,
    paged_attention,
};

/// Why a step of a [`PagedModel`] failed. Nothing in the cache is written when the batch is
/// rejected up front (unknown adapter, bad token, wrong cache shape or positions).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PagedError {
    /// A batch names an adapter that is neither attached nor available from the pool.
    #[error("adapter {adapter:?} (sequence {seq}) is not attached to the model")]
    UnknownAdapter {
        /// Index of the sequence in the batch.
        seq: usize,
        /// The engine's adapter id.
        adapter: String,
    },
    /// The pool could not provide an adapter the batch names.
    #[error("adapter {adapter:?} could not be taken from the pool: {source}")]
    Pool {
        /// The engine's adapter id.
        adapter: String,
        /// The pool's error.
        source: PoolError,
    },
    /// The cache's layout is not the model's (layers, KV heads, head size).
    #[error("KV cache layout {found:?} does not fit the model (expected {expected:?})")]
    Layout {
        /// What the model needs (with the cache's block size).
        expected: KvLayout,
        /// The cache's layout.
        found: KvLayout,
    },
    /// The model rejected the batch or failed (bad token, attaching an adapter).
    #[error(transparent)]
    Model(Box<ModelError>),
    /// The cache refused a write or a read (positions not appended, unknown sequence).
    #[error(transparent)]
    Kv(#[from] KvError),
}

impl Classify for PagedError {
    fn kind(&self) -> ErrorKind {
        match self {
            PagedError::UnknownAdapter { .. } => ErrorKind::UnknownId,
            PagedError::Pool { source, .. } => source.kind(),
            PagedError::Layout { .. } => ErrorKind::InvalidArgument,
            PagedError::Model(e) => e.kind(),
            PagedError::Kv(e) => e.kind(),
        }
    }

    fn io_source(&self) -> Option<(&std::path::Path, &std::io::Error)> {
        match self {
            PagedError::Pool { source, .. } => source.io_source(),
            PagedError::Model(e) => e.io_source(),
            _ => None,
        }
    }
}

impl From<ModelError> for PagedError {
    fn from(e: ModelError) -> Self {
        Self::Model(Box::new(e))
    }
}

/// A [`Model`] the serving [`Engine`](crate::serve::Engine) can drive over a paged KV cache.
#[derive(Debug, Clone)]
pub struct PagedModel {
    model: Model,
    ids: HashMap<pool::AdapterId, AdapterSlot>,
    pool: Option<AdapterPool<LoraAdapter>>,
    /// Ids attached from the pool, with the pool's copy each was attached from (detached again
    /// once the pool no longer holds that copy).
    pooled: HashMap<pool::AdapterId, Arc<LoraAdapter>>,
}

impl PagedModel {
    /// Wraps `model`; adapters the engine names must then be [attached](Self::attach).
    pub fn new(model: Model) -> Self {
        Self {
            model,
            ids: HashMap::new(),
            pool: None,
            pooled: HashMap::new(),
        }
    }

    /// Wraps `model`, taking adapters it does not hold yet from `pool` (a clone of the pool the
    /// engine checks readiness with) the first time a batch names them.
    pub fn with_pool(model: Model, pool: AdapterPool<LoraAdapter>) -> Self {
        Self {
            pool: Some(pool),
            ..Self::new(model)
        }
    }

    /// The wrapped model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The KV cache layout this model writes, with `block_size` positions per block.
    pub fn kv_layout(&self, block_size: usize) -> KvLayout {
        let c = self.model.config();
        KvLayout {
            n_layers: c.num_layers,
            n_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            block_size,
        }
    }

    /// Attaches `adapter` to the model ([`Model::attach_adapter`], named by `id`) and serves
    /// requests for `id` with it; a later attach under the same id replaces it (the earlier copy
    /// is detached, with the ensembles attached from a spelling that name it).
    /// An id whose adapter is a member of an ensemble attached with
    /// [`attach_ensemble`](Self::attach_ensemble) is refused ([`ModelError::InvalidArgument`]):
    /// detach the ensemble first. An ensemble spelling is refused: ensembles are served from
    /// their members.
    pub fn attach(
        &mut self,
        id: pool::AdapterId,
        adapter: &LoraAdapter,
    ) -> Result<AdapterSlot, ModelError> {
        if id.is_ensemble() {
            return Err(ModelError::InvalidArgument {
                name: "id",
                reason: format!("{id} spells an ensemble: attach its members"),
            });
        }
        if let Some(&old) = self.ids.get(&id) {
            self.detach_spelled_over(&id);
            self.check_not_member(&id, old)?;
        }
        let slot = self.model.attach_adapter(id.as_str(), adapter)?;
        if let Some(old) = self.ids.insert(id.clone(), slot) {
            // The id now names the new copy; the old one would only hold memory.
            self.model.detach_adapter(old)?;
        }
        self.pooled.remove(&id);
        Ok(slot)
    }

    /// Detaches the adapter served for `id` (freeing its prepared copies), and first the
    /// ensembles attached from a spelling that name it; false when none is, or when it is a
    /// member of an ensemble attached with [`attach_ensemble`](Self::attach_ensemble) (it stays
    /// attached).
    pub fn detach(&mut self, id: &pool::AdapterId) -> bool {
        let Some(&slot) = self.ids.get(id) else {
            self.pooled.remove(id);
            return false;
        };
        self.detach_spelled_over(id);
        if self.model.detach_adapter(slot).is_err() {
            return false;
        }
        self.ids.remove(id);
        self.pooled.remove(id);
        true
    }

    /// Detaches the ensembles attached from a spelling that have `member` among their members
    /// (every ensemble id is one: `attach_ensemble` refuses spellings).
    fn detach_spelled_over(&mut self, member: &pool::AdapterId) {
        let over: Vec<pool::AdapterId> = self
            .ids
            .keys()
            .filter(|id| id.is_ensemble() && id.adapters().contains(member))
            .cloned()
            .collect();
        for id in over {
            if let Some(slot) = self.ids.remove(&id) {
                // An ensemble is never a member itself, so this cannot be refused.
                let _ = self.model.detach_adapter(slot);
            }
        }
    }

    /// Serves requests for `id` with an ensemble of attached adapters, each with a weight
    /// ([`Model::attach_ensemble`]: `Σⱼ wⱼ·sⱼ·Bⱼ·Aⱼ·x`, one SGMV segment per member, no merged
    /// copy). Members must have been [attached](Self::attach) under their ids (an adapter
    /// the pool provides may be evicted, so it cannot be a member); an unknown member is
    /// [`ModelError::InvalidArgument`] naming it, and an id already served is refused. While
    /// the ensemble is attached its members cannot be detached or replaced. An ensemble
    /// spelling as `id` is refused: a request naming one attaches it from its members.
    pub fn attach_ensemble(
        &mut self,
        id: pool::AdapterId,
        members: &[(pool::AdapterId, f32)],
    ) -> Result<AdapterSlot, ModelError> {
        if id.is_ensemble() {
            return Err(ModelError::InvalidArgument {
                name: "id",
                reason: format!(
                    "{id} spells an ensemble: name the ensemble with a plain id, or let a request name the spelling"
                ),
            });
        }
        if self.ids.contains_key(&id) {
            return Err(ModelError::InvalidArgument {
                name: "id",
                reason: format!("{id} is already served: detach it first"),
            });
        }
        let mut slots = Vec::with_capacity(members.len());
        for (member, weight) in members {
            let slot = match self.ids.get(member) {
                Some(&slot) if !self.pooled.contains_key(member) => slot,
                Some(_) => {
                    return Err(ModelError::InvalidArgument {
                        name: "members",
                        reason: format!(
                            "{member} was taken from the pool and may be evicted: attach it to be a member of {id}"
                        ),
                    });
                }
                None => {
                    return Err(ModelError::InvalidArgument {
                        name: "members",
                        reason: format!("{member} is not attached (a member of {id})"),
                    });
                }
            };
            slots.push((slot, *weight));
        }
        let slot = self.model.attach_ensemble(id.as_str(), &slots)?;
        self.ids.insert(id, slot);
        Ok(slot)
    }

    fn check_not_member(&self, id: &pool::AdapterId, slot: AdapterSlot) -> Result<(), ModelError> {
        match self.model.ensemble_of(slot) {
            Some(ensemble) => Err(ModelError::InvalidArgument {
                name: "id",
                reason: format!("{id} is a member of the ensemble {ensemble}: detach it first"),
            }),
            None => Ok(()),
        }
    }

    /// Whether an adapter is attached for `id`.
    pub fn is_attached(&self, id: &pool::AdapterId) -> bool {
        self.ids.contains_key(id)
    }

    /// Bytes held by the attached adapters' prepared copies ([`Model::attached_bytes`]).
    pub fn attached_bytes(&self) -> usize {
        self.model.attached_bytes()
    }

    /// Detaches every adapter taken from the pool whose copy the pool no longer holds resident
    /// (evicted, or unregistered and registered again with other weights: the next batch then
    /// attaches the new copy); returns how many.
    pub fn detach_evicted(&mut self) -> usize {
        let Some(pool) = &self.pool else { return 0 };
        let gone: Vec<pool::AdapterId> = self
            .pooled
            .iter()
            .filter(|(id, copy)| !pool.holds(id, copy))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.detach(id);
        }
        gone.len()
    }

    /// The model's adapter for engine id `id`, attaching it from the pool on first use (an
    /// ensemble spelling: its members, then the ensemble).
    fn resolve(&mut self, seq: usize, id: &pool::AdapterId) -> Result<AdapterSlot, PagedError> {
        if let Some(&slot) = self.ids.get(id) {
            return Ok(slot);
        }
        if let Some(members) = id.members() {
            let mut slots = Vec::with_capacity(members.len());
            for (member, weight) in &members {
                slots.push((self.resolve(seq, member)?, *weight));
            }
            let slot = self.model.attach_ensemble(id.as_str(), &slots)?;
            self.ids.insert(id.clone(), slot);
            return Ok(slot);
        }
        // Room first: what the pool evicted to admit this adapter goes now.
        self.detach_evicted();
        let Some(pool) = &self.pool else {
            return Err(PagedError::UnknownAdapter {
                seq,
                adapter: id.to_string(),
            });
        };
        let adapter = pool.get(id).map_err(|source| match source {
            PoolError::UnknownId { .. } => PagedError::UnknownAdapter {
                seq,
                adapter: id.to_string(),
            },
            source => PagedError::Pool {
                adapter: id.to_string(),
                source,
            },
        })?;
        let slot = self.attach(id.clone(), &adapter)?;
        self.pooled.insert(id.clone(), adapter);
        Ok(slot)
    }

    /// Runs one step (see the module docs); logits rows follow the batch order of the
    /// sequences whose `needs_logits` is set.
    pub fn step(&mut self, batch: &StepBatch, kv: &mut PagedKvCache) -> Result<Logits, PagedError> {
        // The whole step runs on one of rayon's threads: each projection's parallel tiles are
        // then split with the threads that are still awake from the last one, where a call
        // from outside the pool would hand every projection over (and wake a thread) anew —
        // a decode step runs some two hundred of them.
        rayon::scope(|_| self.step_in_pool(batch, kv))
    }

    fn step_in_pool(
        &mut self,
        batch: &StepBatch,
        kv: &mut PagedKvCache,
    ) -> Result<Logits, PagedError> {
        let found = kv.layout();
        let expected = self.kv_layout(found.block_size);
        if found != expected {
            return Err(PagedError::Layout { expected, found });
        }
        self.detach_evicted();
        let mut slots = Vec::with_capacity(batch.seqs.len());
        for (n, s) in batch.seqs.iter().enumerate() {
            slots.push(match &s.adapter {
                Some(id) => Some(self.resolve(n, id)?),
                None => None,
            });
        }
        let inputs: Vec<SeqInput<'_>> = batch
            .seqs
            .iter()
            .zip(&slots)
            .map(|(s, &adapter)| SeqInput {
                adapter,
                tokens: &s.tokens,
            })
            .collect();
        let spans = self.model.check_batch(&inputs)?;
        for s in &batch.seqs {
            let len = kv.seq_len(s.seq)?;
            let end = s.start_pos + s.tokens.len();
            if end > len {
                return Err(KvError::PositionOutOfRange {
                    seq: s.seq,
                    pos: end - 1,
                    len,
                }
                .into());
            }
        }
        let cfg = self.model.config();
        let kvd = cfg.num_kv_heads * cfg.head_dim;
        let scale = 1.0 / (cfg.head_dim as f32).sqrt();
        let attn_seqs = batch.attn_seqs();
        let mut attend = |l: usize,
                          shape: AttentionShape,
                          q: &[f32],
                          k: &[f32],
                          v: &[f32],
                          out: &mut [f32]|
         -> Result<(), PagedError> {
            for (s, span) in batch.seqs.iter().zip(&spans) {
                for r in 0..span.end - span.start {
                    let row = span.start + r;
                    kv.write(
                        s.seq,
                        l,
                        s.start_pos + r,
                        &k[row * kvd..(row + 1) * kvd],
                        &v[row * kvd..(row + 1) * kvd],
                    )?;
                }
            }
            let params = AttentionParams {
                n_heads: shape.heads,
                scale,
                sliding_window: shape.window,
            };
            paged_attention(kv, l, &params, &attn_seqs, q, out)?;
            Ok(())
        };
        let starts: Vec<usize> = batch.seqs.iter().map(|s| s.start_pos).collect();
        let x = self.model.hidden(&inputs, &spans, &starts, &mut attend)?;
        // The last new row of each sequence that needs logits, one row per span.
        let h = cfg.hidden_size;
        let mut rows = Vec::new();
        let mut last = Vec::new();
        for (s, span) in batch.seqs.iter().zip(&spans) {
            if s.needs_logits {
                let r = span.end - 1;
                rows.extend_from_slice(&x[r * h..(r + 1) * h]);
                last.push(Span {
                    start: last.len(),
                    end: last.len() + 1,
                    adapter: span.adapter,
                });
            }
        }
        let data = self.model.lm_head(&rows, &last)?.concat();
        Ok(Logits { data })
    }
}

impl StepModel for PagedModel {
    crate::host_kv_cache!();

    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    fn forward(
        &mut self,
        batch: &StepBatch,
        kv: &mut PagedKvCache,
    ) -> Result<Logits, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.step(batch, kv)?)
    }

    /// Attaches `adapter` (from the pool, on first use); an adapter neither attached nor
    /// registered is [`RequestError::UnknownAdapter`], one the model refuses (made for another
    /// base) or the pool cannot provide is [`RequestError::AdapterRejected`].
    fn prepare_adapter(&mut self, adapter: &pool::AdapterId) -> Result<bool, RequestError> {
        match self.resolve(0, adapter) {
            Ok(_) => Ok(true),
            // The culprit: the adapter itself, or the member of an ensemble.
            Err(PagedError::UnknownAdapter { adapter: name, .. }) => {
                Err(RequestError::UnknownAdapter {
                    adapter: pool::AdapterId::new(&name).unwrap_or_else(|_| adapter.clone()),
                })
            }
            Err(e) => Err(RequestError::AdapterRejected {
                adapter: adapter.clone(),
                reason: e.to_string(),
            }),
        }
    }
}
