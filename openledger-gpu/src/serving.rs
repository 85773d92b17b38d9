//! [`GpuPagedModel`]: the GPU model as the serving engine's
//! [`StepModel`](openledger_lora::serve::StepModel), so the same engine (scheduler, paged KV
//! cache, adapter pool, streaming) runs on a device. The engine's cache keeps its block tables
//! on the host and its values in a [`DeviceKvStorage`]; blocks a fork shares are copied on the
//! device before a step writes into them; swapping copies blocks to host memory and back.
//!
//! Adapters come from the engine's [`AdapterPool`] (or are attached up front). When the
//! scheduler admits a request whose adapter is not on the device, the adapter's factors start
//! copying on the runtime's copy stream and the request waits ([`StepModel::prepare_adapter`]
//! answers "not yet") while the running requests keep decoding; it is admitted at the first step
//! after the copy has landed. When the device tier (its slots and slab,
//! [`AdapterBudget`](crate::AdapterBudget)) is full, the adapters not in the step are evicted
//! least recently used first; an adapter evicted while its request still runs is copied back
//! (synchronously) when the next step names it. A request naming an ensemble (`a*0.7+b*0.3`)
//! runs it as one device adapter made from the members' host copies
//! ([`GpuModel::attach_ensemble`]), rebuilt when a member changes.

use crate::error::GpuError;
use crate::kv::DeviceKvStorage;
use crate::model::GpuModel;
use crate::runtime::Dtype;
use openledger_lora::adapter::LoraAdapter;
use openledger_lora::pool::{AdapterId, AdapterPool, PoolError};
use openledger_lora::serve::{
    KvDtype, KvError, KvLayout, Logits, PagedKvCache, RequestError, StepBatch, StepModel,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Why an adapter could not be made resident.
enum Unresolved {
    /// Neither attached nor in the pool.
    Unknown,
    /// Refused or failed on the way (an ensemble, the pool's load, the device tier).
    Failed(GpuError),
}

impl Unresolved {
    /// The pool's refusal to give adapter `id`: unknown there, or failed to load.
    fn from_pool(id: &AdapterId, e: PoolError) -> Self {
        match e {
            PoolError::UnknownId { .. } => Unresolved::Unknown,
            other => Unresolved::Failed(GpuError::InvalidArgument {
                name: "adapter",
                reason: format!("adapter {id}: {other}"),
            }),
        }
    }

    fn into_error(self, id: &AdapterId) -> GpuError {
        match self {
            Unresolved::Unknown => GpuError::InvalidArgument {
                name: "adapter",
                reason: format!("adapter {id} is not attached"),
            },
            Unresolved::Failed(e) => e,
        }
    }
}

/// The GPU model driven by the serving engine (see the module docs).
#[derive(Debug)]
pub struct GpuPagedModel {
    model: GpuModel,
    pool: Option<AdapterPool<LoraAdapter>>,
    /// Adapters attached from the pool, with the copy each was attached from.
    pooled: HashMap<AdapterId, Arc<LoraAdapter>>,
    /// Adapters attached directly, kept on the host for the ensembles that name them.
    direct: HashMap<AdapterId, Arc<LoraAdapter>>,
    /// Ensembles on the device, with the member copies each was made from.
    ensembles: HashMap<AdapterId, Vec<Arc<LoraAdapter>>>,
    /// The step each device adapter was last named in.
    last_used: HashMap<AdapterId, u64>,
    steps: u64,
    /// Uploads and evictions of the device tier so far.
    tier: TierStats,
}

/// The device adapter tier's use ([`GpuPagedModel::tier_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Adapters (and ensembles) on the device now, or copying to it.
    pub resident: usize,
    /// Adapter copies to the device started so far (an ensemble made on it counts once; a
    /// copy that fails on the way counts too).
    pub uploads: u64,
    /// Adapters removed to make room, least recently used first (not those replaced by a
    /// newer copy, or dropped because a member of their ensemble changed).
    pub evictions: u64,
}

/// The cache type of a model type.
pub fn kv_dtype(d: Dtype) -> KvDtype {
    match d {
        Dtype::F32 => KvDtype::F32,
        Dtype::F16 => KvDtype::F16,
        Dtype::Bf16 => KvDtype::Bf16,
    }
}

impl GpuPagedModel {
    /// Wraps `model`; adapters the engine names must be [attached](Self::attach) first.
    pub fn new(model: GpuModel) -> Self {
        Self {
            model,
            pool: None,
            pooled: HashMap::new(),
            direct: HashMap::new(),
            ensembles: HashMap::new(),
            last_used: HashMap::new(),
            steps: 0,
            tier: TierStats::default(),
        }
    }

    /// Wraps `model`, taking adapters from `pool` (a clone of the pool the engine checks
    /// readiness with) the first time a batch names them.
    pub fn with_pool(model: GpuModel, pool: AdapterPool<LoraAdapter>) -> Self {
        Self {
            pool: Some(pool),
            ..Self::new(model)
        }
    }

    /// The wrapped model.
    pub fn model(&self) -> &GpuModel {
        &self.model
    }

    /// The device adapter tier's use: resident now, uploads and evictions so far.
    pub fn tier_stats(&self) -> TierStats {
        TierStats {
            resident: self.last_used.len(),
            ..self.tier
        }
    }

    /// The KV cache type the engine must be configured with (the model's own type).
    pub fn kv_dtype(&self) -> KvDtype {
        kv_dtype(self.model.dtype())
    }

    /// Attaches `adapter` under `id` (replacing an adapter of that id, and dropping the
    /// ensembles made with the one it replaces). An ensemble's spelling is refused: requests
    /// name ensembles of attached or pooled adapters by their spelling.
    pub fn attach(&mut self, id: &AdapterId, adapter: Arc<LoraAdapter>) -> Result<(), GpuError> {
        if id.is_ensemble() {
            return Err(GpuError::InvalidArgument {
                name: "id",
                reason: format!("{id} spells an ensemble: attach its members"),
            });
        }
        self.make_room_and(&HashSet::new(), |m| m.attach_adapter(id.as_str(), &adapter))?;
        self.pooled.remove(id);
        self.direct.insert(id.clone(), adapter);
        self.last_used.insert(id.clone(), self.steps);
        let stale: Vec<AdapterId> = self
            .ensembles
            .keys()
            .filter(|e| e.adapters().contains(id))
            .cloned()
            .collect();
        for e in stale {
            self.forget(&e)?;
        }
        Ok(())
    }

    /// Frees device adapter `id` and what is kept about it.
    fn forget(&mut self, id: &AdapterId) -> Result<(), GpuError> {
        self.model.detach_adapter(id.as_str())?;
        self.last_used.remove(id);
        self.pooled.remove(id);
        self.ensembles.remove(id);
        Ok(())
    }

    /// The host copy of member `id` of an ensemble: attached directly, else the pool's.
    fn member(&self, id: &AdapterId) -> Result<Arc<LoraAdapter>, Unresolved> {
        if let Some(a) = self.direct.get(id) {
            return Ok(Arc::clone(a));
        }
        let Some(pool) = &self.pool else {
            return Err(Unresolved::Unknown);
        };
        pool.get(id).map_err(|e| Unresolved::from_pool(id, e))
    }

    /// Whether `copy` is still what member `id` stands for.
    fn is_current(&self, id: &AdapterId, copy: &Arc<LoraAdapter>) -> bool {
        match self.direct.get(id) {
            Some(d) => Arc::ptr_eq(d, copy),
            None => self.pool.as_ref().is_some_and(|p| p.holds(id, copy)),
        }
    }

    /// Runs `f` (an attach); while it finds the device tier full, evicts the least recently
    /// used adapter not in `keep` and tries again.
    fn make_room_and(
        &mut self,
        keep: &HashSet<AdapterId>,
        mut f: impl FnMut(&mut GpuModel) -> Result<(), GpuError>,
    ) -> Result<(), GpuError> {
        loop {
            match f(&mut self.model) {
                Ok(()) => {
                    self.tier.uploads += 1;
                    return Ok(());
                }
                Err(GpuError::OutOfMemory { .. }) => {
                    let victim = self
                        .last_used
                        .iter()
                        .filter(|(id, _)| !keep.contains(*id))
                        .min_by_key(|(id, step)| (**step, id.as_str().to_string()))
                        .map(|(id, _)| id.clone());
                    let Some(victim) = victim else {
                        let last = f(&mut self.model);
                        self.tier.uploads += u64::from(last.is_ok());
                        return last;
                    };
                    self.forget(&victim)?;
                    self.tier.evictions += 1;
                }
                other => return other,
            }
        }
    }

    /// Makes adapter `id` resident on the device (from the pool when it is not; with
    /// `asynchronous`, its copy only started), keeping the adapters in `keep`.
    fn resolve(
        &mut self,
        id: &AdapterId,
        keep: &HashSet<AdapterId>,
        asynchronous: bool,
    ) -> Result<(), Unresolved> {
        if let Some(members) = id.members() {
            return self.resolve_ensemble(id, &members, keep, asynchronous);
        }
        // A pooled copy the pool no longer holds (evicted, or registered again) is stale.
        if let (Some(pool), Some(copy)) = (&self.pool, self.pooled.get(id))
            && !pool.holds(id, copy)
        {
            self.model
                .detach_adapter(id.as_str())
                .map_err(Unresolved::Failed)?;
            self.pooled.remove(id);
            self.last_used.remove(id);
        }
        if self.last_used.contains_key(id) {
            self.last_used.insert(id.clone(), self.steps);
            return Ok(());
        }
        let Some(pool) = &self.pool else {
            return Err(Unresolved::Unknown);
        };
        let adapter = pool.get(id).map_err(|e| Unresolved::from_pool(id, e))?;
        self.make_room_and(keep, |m| {
            if asynchronous {
                m.attach_adapter_async(id.as_str(), &adapter)
            } else {
                m.attach_adapter(id.as_str(), &adapter)
            }
        })
        .map_err(Unresolved::Failed)?;
        self.pooled.insert(id.clone(), adapter);
        self.last_used.insert(id.clone(), self.steps);
        Ok(())
    }

    /// Makes ensemble `id` of `members` resident (made anew when a member has changed since).
    fn resolve_ensemble(
        &mut self,
        id: &AdapterId,
        members: &[(AdapterId, f32)],
        keep: &HashSet<AdapterId>,
        asynchronous: bool,
    ) -> Result<(), Unresolved> {
        if let Some(copies) = self.ensembles.get(id) {
            let current = members
                .iter()
                .zip(copies)
                .all(|((m, _), c)| self.is_current(m, c));
            if current && self.last_used.contains_key(id) {
                self.last_used.insert(id.clone(), self.steps);
                return Ok(());
            }
            self.forget(id).map_err(Unresolved::Failed)?;
        }
        let copies = members
            .iter()
            .map(|(m, _)| self.member(m))
            .collect::<Result<Vec<_>, _>>()?;
        let weighted: Vec<(&LoraAdapter, f32)> = copies
            .iter()
            .zip(members)
            .map(|(c, (_, w))| (&**c, *w))
            .collect();
        self.make_room_and(keep, |m| {
            m.attach_ensemble_with(id.as_str(), &weighted, asynchronous)
        })
        .map_err(Unresolved::Failed)?;
        self.ensembles.insert(id.clone(), copies);
        self.last_used.insert(id.clone(), self.steps);
        Ok(())
    }
}

impl StepModel for GpuPagedModel {
    type Storage = DeviceKvStorage;

    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    fn kv_cache(
        &mut self,
        layout: KvLayout,
        num_blocks: usize,
        dtype: KvDtype,
    ) -> Result<PagedKvCache<DeviceKvStorage>, KvError> {
        let refuse = |message: String| KvError::Storage {
            op: "make the device cache",
            message,
        };
        if dtype != self.kv_dtype() {
            return Err(refuse(format!(
                "the cache holds {dtype:?}; this model computes in {:?}",
                self.kv_dtype()
            )));
        }
        if layout != self.model.kv_layout(layout.block_size) {
            return Err(refuse(format!(
                "layout {layout:?} is not the model's {:?}",
                self.model.kv_layout(layout.block_size)
            )));
        }
        let storage = self
            .model
            .kv_storage(num_blocks, layout.block_size)
            .map_err(|e| refuse(e.to_string()))?;
        PagedKvCache::with_storage(layout, num_blocks, dtype, storage)
    }

    fn forward(
        &mut self,
        batch: &StepBatch,
        kv: &mut PagedKvCache<DeviceKvStorage>,
    ) -> Result<Logits, Box<dyn std::error::Error + Send + Sync>> {
        self.steps += 1;
        let keep: HashSet<AdapterId> = batch
            .seqs
            .iter()
            .filter_map(|s| s.adapter.clone())
            .collect();
        for id in &keep {
            self.resolve(id, &keep, false)
                .map_err(|e| e.into_error(id))?;
        }
        // Blocks shared with a fork are copied before the kernels write into them; the tables
        // are then the cache's own.
        let mut batch = batch.clone();
        for s in &mut batch.seqs {
            for pos in s.start_pos..s.start_pos + s.tokens.len() {
                kv.writable_slot(s.seq, 0, pos)?;
            }
            s.block_table = kv.block_table(s.seq)?.to_vec();
        }
        let data = self.model.forward(&batch, kv.storage_mut())?;
        Ok(Logits { data })
    }

    /// The device tier's slots: no step names more adapters than it holds at once.
    fn max_adapters(&self) -> Option<usize> {
        Some(self.model.adapter_slots())
    }

    /// Starts copying `adapter` to the device when it is not there; ready once the copy has
    /// landed (asked without waiting, once per step while the request waits).
    fn prepare_adapter(&mut self, adapter: &AdapterId) -> Result<bool, RequestError> {
        let keep = HashSet::from([adapter.clone()]);
        let rejected = |e: GpuError| RequestError::AdapterRejected {
            adapter: adapter.clone(),
            reason: e.to_string(),
        };
        match self.resolve(adapter, &keep, true) {
            Ok(()) => self
                .model
                .adapter_landed(adapter.as_str())
                .map_err(rejected),
            Err(Unresolved::Unknown) => Err(RequestError::UnknownAdapter {
                adapter: adapter.clone(),
            }),
            Err(Unresolved::Failed(e)) => Err(rejected(e)),
        }
    }
}
