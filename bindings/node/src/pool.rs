//! JavaScript face of `openledger_lora::pool`: the just-in-time adapter pool with a byte budget,
//! least-recently-used eviction and pinning.

use std::path::PathBuf;

use napi::bindgen_prelude::{AsyncTask, Buffer};
use napi_derive::napi;
use openledger_lora::adapter::LoraAdapter as RustAdapter;
use openledger_lora::pool::{
    AdapterId, AdapterPool as RustPool, HubDir, PoolError, PoolStats as RustStats, Source,
};

use crate::adapters::{LoraAdapter, LoraAdapterTask};
use crate::error::{JsResult, Result};
use crate::progress::{Progress, ProgressFn};
use crate::task::{NumberTask, count};

/// `s` as an adapter id (refusing path traversal, absolute paths, empty components...).
pub fn id(s: &str) -> Result<AdapterId> {
    AdapterId::new(s).map_err(PoolError::from).js()
}

/// A pool of registered adapters, of which those used most recently stay resident within a byte
/// budget. Loads run off the JavaScript thread; concurrent requests for one adapter share its
/// load.
#[napi]
pub struct AdapterPool {
    pub(crate) inner: RustPool<RustAdapter>,
}

#[napi]
impl AdapterPool {
    /// A pool whose resident adapters never exceed `budgetBytes`.
    #[napi(constructor, catch_unwind)]
    pub fn new(budget_bytes: f64) -> Result<Self> {
        crate::error::guard(|| {
            Ok(Self {
                inner: RustPool::new(count("budgetBytes", budget_bytes)?),
            })
        })
    }

    /// The byte budget.
    #[napi(getter, catch_unwind)]
    pub fn budget_bytes(&self) -> f64 {
        self.inner.budget_bytes() as f64
    }

    /// Registers the PEFT adapter folder `path` under `adapterId` (loaded on first use).
    #[napi(catch_unwind)]
    pub fn register_dir(&self, adapter_id: String, path: String) -> Result<()> {
        crate::error::guard(|| {
            let id = id(&adapter_id)?;
            self.inner
                .register(id, Source::Dir(PathBuf::from(path)))
                .js()
        })
    }

    /// Registers an adapter held in memory (the two files' bytes, copied) under `adapterId`.
    #[napi(catch_unwind)]
    pub fn register_bytes(
        &self,
        adapter_id: String,
        config_json: Buffer,
        safetensors: Buffer,
    ) -> Result<()> {
        crate::error::guard(|| {
            let id = id(&adapter_id)?;
            let source = Source::bytes(config_json.to_vec(), safetensors.to_vec());
            self.inner.register(id, source).js()
        })
    }

    /// Registers every adapter folder under the hub root `root` (`<root>/<id>/…`); resolves to
    /// how many were registered.
    #[napi(catch_unwind)]
    pub fn register_hub(&self, root: String) -> AsyncTask<NumberTask> {
        let pool = self.inner.clone();
        NumberTask::spawn(move || {
            let hub = HubDir::open(PathBuf::from(root)).js()?;
            Ok(pool.register_hub(&hub).js()? as f64)
        })
    }

    /// Forgets `adapterId` (refused while it is pinned).
    #[napi(catch_unwind)]
    pub fn unregister(&self, adapter_id: String) -> Result<()> {
        crate::error::guard(|| self.inner.unregister(&id(&adapter_id)?).js())
    }

    /// Whether `adapterId` is registered.
    #[napi(catch_unwind)]
    pub fn is_registered(&self, adapter_id: String) -> Result<bool> {
        crate::error::guard(|| Ok(self.inner.is_registered(&id(&adapter_id)?)))
    }

    /// Whether `adapterId` is resident.
    #[napi(catch_unwind)]
    pub fn is_resident(&self, adapter_id: String) -> Result<bool> {
        crate::error::guard(|| Ok(self.inner.is_resident(&id(&adapter_id)?)))
    }

    /// Ids of the resident adapters.
    #[napi(catch_unwind)]
    pub fn resident_ids(&self) -> Vec<String> {
        self.inner
            .resident_ids()
            .into_iter()
            .map(|i| i.as_str().to_string())
            .collect()
    }

    /// The adapter `adapterId`, loading it first if it is not resident.
    #[napi(catch_unwind)]
    pub fn get(&self, adapter_id: String) -> Result<AsyncTask<LoraAdapterTask>> {
        crate::error::guard(|| {
            let (id, pool) = (id(&adapter_id)?, self.inner.clone());
            Ok(LoraAdapterTask::spawn(move || {
                Ok(LoraAdapter {
                    inner: pool.get(&id).js()?,
                })
            }))
        })
    }

    /// Like `get`, and keeps the adapter resident until `unpin` (pins nest).
    #[napi(catch_unwind)]
    pub fn pin(&self, adapter_id: String) -> Result<AsyncTask<LoraAdapterTask>> {
        crate::error::guard(|| {
            let (id, pool) = (id(&adapter_id)?, self.inner.clone());
            Ok(LoraAdapterTask::spawn(move || {
                Ok(LoraAdapter {
                    inner: pool.pin(&id).js()?,
                })
            }))
        })
    }

    /// Undoes one `pin`.
    #[napi(catch_unwind)]
    pub fn unpin(&self, adapter_id: String) -> Result<()> {
        crate::error::guard(|| self.inner.unpin(&id(&adapter_id)?).js())
    }

    /// Loads each of `adapterIds` in turn, calling `onProgress(1)` after each one (a failed
    /// load is skipped). Resolves to how many adapters are resident or were loaded.
    #[napi(catch_unwind)]
    pub fn warm_up(
        &self,
        adapter_ids: Vec<String>,
        on_progress: Option<ProgressFn>,
    ) -> Result<AsyncTask<NumberTask>> {
        crate::error::guard(|| {
            let ids = adapter_ids
                .iter()
                .map(|s| id(s))
                .collect::<Result<Vec<_>>>()?;
            let pool = self.inner.clone();
            let progress = Progress::new(on_progress);
            Ok(NumberTask::spawn(move || {
                Ok(pool.warm_up(&ids, |_| progress.advance(1)) as f64)
            }))
        })
    }

    /// A snapshot of the counters and occupancy.
    #[napi(catch_unwind)]
    pub fn stats(&self) -> PoolStats {
        PoolStats::from(self.inner.stats())
    }
}

/// Counters and occupancy of an `AdapterPool` at one moment.
#[napi(object)]
pub struct PoolStats {
    /// Gets served from a resident adapter.
    pub hits: f64,
    /// Successful gets that waited for a load.
    pub misses: f64,
    /// Adapters loaded and made resident.
    pub loads: f64,
    /// Loads that failed.
    pub load_failures: f64,
    /// Resident adapters evicted to make room.
    pub evictions: f64,
    /// Resident adapters dropped because they were unregistered.
    pub unregistered_resident: f64,
    /// Sum of `residentBytes` over resident adapters.
    pub resident_bytes: f64,
    /// The byte budget.
    pub budget_bytes: f64,
    /// Number of resident adapters.
    pub resident_count: u32,
    /// Number of resident adapters currently pinned.
    pub pinned_count: u32,
    /// Number of registered adapters.
    pub registered_count: u32,
    /// Successful loads timed.
    pub load_latency_count: f64,
    /// Their mean duration, in seconds.
    pub load_latency_mean_s: f64,
    /// The longest, in seconds.
    pub load_latency_max_s: f64,
}

impl From<RustStats> for PoolStats {
    fn from(s: RustStats) -> Self {
        Self {
            hits: s.hits as f64,
            misses: s.misses as f64,
            loads: s.loads as f64,
            load_failures: s.load_failures as f64,
            evictions: s.evictions as f64,
            unregistered_resident: s.unregistered_resident as f64,
            resident_bytes: s.resident_bytes as f64,
            budget_bytes: s.budget_bytes as f64,
            resident_count: s.resident_count as u32,
            pinned_count: s.pinned_count as u32,
            registered_count: s.registered_count as u32,
            load_latency_count: s.load_latency.count as f64,
            load_latency_mean_s: s.load_latency.mean().as_secs_f64(),
            load_latency_max_s: s.load_latency.max.as_secs_f64(),
        }
    }
}
