//! The just-in-time adapter pool: thousands of registered LoRA adapters, a byte budget for the
//! ones resident in memory, least-recently-used eviction, pinning, background prefetch and
//! single-flight loading.
//!
//! - **Register** adapters by [`AdapterId`] with a [`Source`]: a PEFT folder, bytes in memory, a
//!   local [`HubDir`] (`<root>/<id>/…`, refusing ids or symlinks that leave the root) or any
//!   [`AdapterSource`] (object store, remote hub).
//! - **Get** returns an `Arc` of the resident adapter, loading it first if needed. Many threads
//!   asking at once for one non-resident adapter load it once and share the result or the error.
//! - **Budget**: the sum of [`resident_bytes`](PooledAdapter::resident_bytes) over *pool-resident*
//!   adapters never exceeds the budget. To make room the least recently used unpinned adapters are
//!   evicted. An evicted adapter's memory is freed when the last `Arc` handed out for it is
//!   dropped; those outstanding `Arc`s and adapters being decoded are not counted in the budget.
//! - **Pin** keeps an adapter resident until it is unpinned (pins nest); a load that could only
//!   fit by evicting pinned adapters fails with [`PoolError::BudgetExhaustedByPinned`] and evicts
//!   nothing. The pool remembers each registration's size once it has been loaded, so while the
//!   pinned adapters leave no room for it, asking again fails at once instead of loading it anew.
//! - **Failures** leave the pool as it was: nothing resident is lost, no counter moves except
//!   [`PoolStats::load_failures`] (once per failed load).
//!
//! ```
//! use openledger_lora::pool::{AdapterId, AdapterPool, HubDir};
//!
//! let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/peft/tiny-llama/adapters");
//! let hub = HubDir::open(root)?;
//! let pool: AdapterPool = AdapterPool::new(64 << 20);
//! assert_eq!(pool.register_hub(&hub)?, 3);
//!
//! let id = AdapterId::new("qv-r4")?;
//! let adapter = pool.get(&id)?; // loaded now
//! let again = pool.get(&id)?; // resident: the same adapter
//! assert!(std::sync::Arc::ptr_eq(&adapter, &again));
//!
//! let stats = pool.stats();
//! assert_eq!((stats.loads, stats.misses, stats.hits), (1, 1, 1));
//! assert_eq!(stats.resident_bytes, adapter.resident_bytes());
//! # Ok::<(), openledger_lora::pool::PoolError>(())
//! ```

mod error;
mod flight;
mod id;
pub mod lru;
mod source;
pub mod stats;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;

use std::time::{Duration, Instant};

use parking_lot::RwLock;

pub use error::PoolError;
pub use id::{AdapterId, IdProblem, InvalidAdapterId, MAX_ENSEMBLE_MEMBERS, MAX_ID_LEN};
pub use source::{AdapterBytes, AdapterSource, HubDir, Source, SourceError};
pub use stats::{LatencyStats, PoolStats};

use crate::adapter::{LoadOptions, LoraAdapter};
use crate::error::LoraError;
use flight::{Flight, Outcome};
use lru::{Candidate, LastUsed, LruClock, pick_victims};
use stats::{LatencyHistogram, StripedCounter};

/// What the pool needs of the adapters it holds: decoding from a folder or from bytes, and the
/// memory one occupies. Implemented by [`LoraAdapter`]; other payloads (tests, wrappers) can
/// implement it too.
pub trait PooledAdapter: Send + Sync + Sized + 'static {
    /// Options passed to every decode.
    type Options: Clone + Default + Send + Sync + 'static;

    /// Decodes the PEFT folder `dir`.
    fn load_dir(dir: &Path, opts: &Self::Options) -> Result<Self, LoraError>;

    /// Decodes a PEFT adapter from its two files' bytes.
    fn load_bytes(
        config_json: &[u8],
        safetensors: &[u8],
        opts: &Self::Options,
    ) -> Result<Self, LoraError>;

    /// Bytes this adapter keeps in memory (what the pool's budget counts).
    fn resident_bytes(&self) -> usize;
}

impl PooledAdapter for LoraAdapter {
    type Options = LoadOptions;

    fn load_dir(dir: &Path, opts: &LoadOptions) -> Result<Self, LoraError> {
        LoraAdapter::from_dir(dir, opts)
    }

    fn load_bytes(
        config_json: &[u8],
        safetensors: &[u8],
        opts: &LoadOptions,
    ) -> Result<Self, LoraError> {
        LoraAdapter::from_bytes(config_json, safetensors, opts)
    }

    fn resident_bytes(&self) -> usize {
        LoraAdapter::resident_bytes(self)
    }
}

/// A pool of adapters under a byte budget; cheap to clone (clones share one pool), `Send + Sync`,
/// used from many threads at once through `&self`.
///
/// One reader-writer lock guards the registry and the resident set: a lookup of a resident
/// adapter takes it shared (and stamps the adapter's last use atomically); registration, eviction
/// and admission take it exclusively for a few map operations. Fetching and decoding run
/// outside it.
pub struct AdapterPool<A: PooledAdapter = LoraAdapter> {
    shared: Arc<Shared<A>>,
}

impl<A: PooledAdapter> Clone for AdapterPool<A> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<A: PooledAdapter> std::fmt::Debug for AdapterPool<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterPool")
            .field("stats", &self.stats())
            .finish()
    }
}

struct Shared<A: PooledAdapter> {
    state: RwLock<State<A>>,
    clock: LruClock,
    hits: StripedCounter,
    misses: StripedCounter,
    budget: usize,
    options: A::Options,
}

struct Registered {
    source: Source,
    /// Distinguishes this registration from an earlier one under the same id.
    generation: u64,
}

struct Resident<A> {
    adapter: Arc<A>,
    bytes: usize,
    pins: u32,
    last_used: LastUsed,
}

struct State<A> {
    registry: HashMap<AdapterId, Registered>,
    resident: HashMap<AdapterId, Resident<A>>,
    inflight: HashMap<AdapterId, Arc<Flight<A>>>,
    resident_bytes: usize,
    next_generation: u64,
    loads: u64,
    load_failures: u64,
    evictions: u64,
    unregistered_resident: u64,
    latency: LatencyHistogram,
    /// Resident bytes of registrations loaded before: `(generation, bytes)` by id.
    sizes: HashMap<AdapterId, (u64, usize)>,
}

/// A load the caller has to run (it started the flight).
struct LoadJob<A> {
    id: AdapterId,
    source: Source,
    generation: u64,
    flight: Arc<Flight<A>>,
}

/// An ensemble id where only a plain one may be registered: [`IdProblem::Ensemble`].
fn refuse_ensemble(id: &AdapterId) -> Result<(), PoolError> {
    if id.is_ensemble() {
        return Err(PoolError::InvalidId(InvalidAdapterId {
            id: id.as_str().chars().take(80).collect(),
            reason: IdProblem::Ensemble,
        }));
    }
    Ok(())
}

impl AdapterPool<LoraAdapter> {
    /// Merges registered adapters into a new one with PEFT's `add_weighted_adapter` semantics
    /// ([`add_weighted_adapter`](crate::adapter::combine::add_weighted_adapter): TIES, DARE,
    /// SVD, magnitude pruning, linear, cat) and registers it under `id`, held in memory
    /// ([`Source::Bytes`]) and served like any other adapter: loaded on use, counted against
    /// the budget, evicted, decoded again after an eviction (the merge itself runs once, here).
    /// The members are loaded through the pool; `progress` gets `(done, total)` modules.
    ///
    /// An ensemble whose update is the sum of its members' (`cat`, or a weighted sum) needs no
    /// merged copy: name it `a+b` or `a*0.7+b*0.3` in a request instead. Refused: an id already
    /// registered or spelling an ensemble ([`PoolError::DuplicateId`],
    /// [`PoolError::InvalidId`], before any member is loaded), a member not registered
    /// ([`PoolError::UnknownId`]), members the method cannot combine ([`PoolError::Load`]
    /// naming `id`, e.g. `linear` over different ranks).
    pub fn register_combined(
        &self,
        id: AdapterId,
        members: &[(AdapterId, f32)],
        options: &crate::adapter::combine::CombineOptions,
        progress: Option<&mut dyn FnMut(usize, usize)>,
    ) -> Result<(), PoolError> {
        refuse_ensemble(&id)?;
        if self.is_registered(&id) {
            return Err(PoolError::DuplicateId { id });
        }
        let adapters = members
            .iter()
            .map(|(m, _)| self.get(m))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&LoraAdapter> = adapters.iter().map(Arc::as_ref).collect();
        let weights: Vec<f32> = members.iter().map(|&(_, w)| w).collect();
        let failed = |source: LoraError| PoolError::Load {
            id: id.clone(),
            source: Arc::new(source),
        };
        let merged =
            crate::adapter::combine::add_weighted_adapter(&refs, &weights, options, progress)
                .map_err(failed)?;
        let safetensors = merged.to_safetensors().map_err(failed)?;
        let config = merged.config().spec().to_json();
        self.register(id, Source::bytes(config.into_bytes(), safetensors))
    }
}

/// How a request for an adapter proceeds.
enum Step<A> {
    Resident(Arc<A>),
    Wait(Arc<Flight<A>>),
    Lead(LoadJob<A>),
}

impl<A: PooledAdapter> AdapterPool<A> {
    /// An empty pool whose resident adapters may hold at most `budget_bytes`, decoding with the
    /// default options.
    pub fn new(budget_bytes: usize) -> Self {
        Self::with_options(budget_bytes, A::Options::default())
    }

    /// An empty pool that decodes every adapter with `options`.
    pub fn with_options(budget_bytes: usize, options: A::Options) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: RwLock::new(State {
                    registry: HashMap::new(),
                    resident: HashMap::new(),
                    inflight: HashMap::new(),
                    resident_bytes: 0,
                    next_generation: 0,
                    loads: 0,
                    load_failures: 0,
                    evictions: 0,
                    unregistered_resident: 0,
                    latency: LatencyHistogram::default(),
                    sizes: HashMap::new(),
                }),
                clock: LruClock::default(),
                hits: StripedCounter::default(),
                misses: StripedCounter::default(),
                budget: budget_bytes,
                options,
            }),
        }
    }

    /// The byte budget for resident adapters.
    pub fn budget_bytes(&self) -> usize {
        self.shared.budget
    }

    /// Registers adapter `id`, to be loaded from `source` when first asked for. A [`Source::Hub`]
    /// is resolved now (and again at each load), so an id escaping the hub root is refused here.
    /// An ensemble id ([`AdapterId::parse`]) is refused ([`PoolError::InvalidId`]): its members are
    /// registered, and requests naming it are served from them.
    pub fn register(&self, id: AdapterId, source: Source) -> Result<(), PoolError> {
        refuse_ensemble(&id)?;
        if let Source::Hub(hub) = &source {
            hub.resolve(&id)?;
        }
        let mut st = self.shared.state.write();
        if st.registry.contains_key(&id) {
            return Err(PoolError::DuplicateId { id });
        }
        let generation = st.next_generation;
        st.next_generation += 1;
        st.registry.insert(id, Registered { source, generation });
        Ok(())
    }

    /// Registers every adapter folder of `hub` (see [`HubDir::ids`]) and returns how many. All or
    /// nothing: if any id is already registered, nothing is and the first duplicate is named.
    pub fn register_hub(&self, hub: &HubDir) -> Result<usize, PoolError> {
        let ids = hub.ids()?;
        for id in &ids {
            hub.resolve(id)?;
        }
        let mut st = self.shared.state.write();
        if let Some(dup) = ids.iter().find(|id| st.registry.contains_key(*id)) {
            return Err(PoolError::DuplicateId { id: dup.clone() });
        }
        for id in &ids {
            let generation = st.next_generation;
            st.next_generation += 1;
            let source = Source::Hub(hub.clone());
            st.registry
                .insert(id.clone(), Registered { source, generation });
        }
        Ok(ids.len())
    }

    /// Forgets adapter `id`. Its resident copy (if any) leaves the pool; callers holding an `Arc`
    /// keep it alive until they drop it. A load in flight for it completes with
    /// [`PoolError::UnregisteredWhileLoading`]. Pinned adapters must be unpinned first.
    pub fn unregister(&self, id: &AdapterId) -> Result<(), PoolError> {
        let mut st = self.shared.state.write();
        if !st.registry.contains_key(id) {
            return Err(PoolError::UnknownId { id: id.clone() });
        }
        if st.resident.get(id).is_some_and(|r| r.pins > 0) {
            return Err(PoolError::Pinned { id: id.clone() });
        }
        st.registry.remove(id);
        st.inflight.remove(id);
        st.sizes.remove(id);
        if let Some(r) = st.resident.remove(id) {
            st.resident_bytes -= r.bytes;
            st.unregistered_resident += 1;
        }
        Ok(())
    }

    /// Whether `id` is registered.
    pub fn is_registered(&self, id: &AdapterId) -> bool {
        self.shared.state.read().registry.contains_key(id)
    }

    /// Whether `id` is resident now.
    pub fn is_resident(&self, id: &AdapterId) -> bool {
        self.shared.state.read().resident.contains_key(id)
    }

    /// Whether `adapter` is the copy of `id` resident now (not one that was evicted, or
    /// unregistered and replaced by a new registration under the same id). Counts no hit and
    /// leaves the recency order as it is.
    pub fn holds(&self, id: &AdapterId, adapter: &Arc<A>) -> bool {
        self.shared
            .state
            .read()
            .resident
            .get(id)
            .is_some_and(|r| Arc::ptr_eq(&r.adapter, adapter))
    }

    /// The resident ids, least recently used first.
    pub fn resident_ids(&self) -> Vec<AdapterId> {
        let st = self.shared.state.read();
        let mut v: Vec<(u64, AdapterId)> = st
            .resident
            .iter()
            .map(|(id, r)| (r.last_used.get(), id.clone()))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, id)| id).collect()
    }

    /// The adapter `id`, loading it first if it is not resident (and evicting least recently
    /// used unpinned adapters to make room). Concurrent calls for one adapter share one load.
    pub fn get(&self, id: &AdapterId) -> Result<Arc<A>, PoolError> {
        let step = self.step(id, true)?;
        let outcome = match step {
            Step::Resident(a) => return Ok(a),
            Step::Wait(flight) => flight.wait(),
            Step::Lead(job) => self.shared.run(job),
        };
        if outcome.is_ok() {
            self.shared.misses.incr();
        }
        outcome
    }

    /// Like [`get`](Self::get), and pins the adapter: it stays resident until a matching
    /// [`unpin`](Self::unpin). Pins nest.
    pub fn pin(&self, id: &AdapterId) -> Result<Arc<A>, PoolError> {
        loop {
            let adapter = self.get(id)?;
            let mut st = self.shared.state.write();
            if let Some(r) = st.resident.get_mut(id)
                && Arc::ptr_eq(&r.adapter, &adapter)
            {
                r.pins += 1;
                return Ok(adapter);
            }
            // Evicted between the load and the pin: load it again.
        }
    }

    /// Removes one pin from `id`; once no pin is left it can be evicted again.
    pub fn unpin(&self, id: &AdapterId) -> Result<(), PoolError> {
        let mut st = self.shared.state.write();
        if !st.registry.contains_key(id) {
            return Err(PoolError::UnknownId { id: id.clone() });
        }
        match st.resident.get_mut(id) {
            Some(r) if r.pins > 0 => {
                r.pins -= 1;
                Ok(())
            }
            _ => Err(PoolError::NotPinned { id: id.clone() }),
        }
    }

    /// Starts loading `id` in the background and returns at once. Unknown ids are refused now;
    /// load errors surface through [`Prefetch::wait`] and later `get`s. A resident adapter is
    /// only marked as recently used. Prefetching counts neither hits nor misses.
    pub fn prefetch(&self, id: &AdapterId) -> Result<Prefetch<A>, PoolError> {
        match self.step(id, false)? {
            Step::Resident(a) => {
                let flight = Arc::new(Flight::new());
                flight.complete(Ok(a));
                Ok(Prefetch { flight })
            }
            Step::Wait(flight) => Ok(Prefetch { flight }),
            Step::Lead(job) => {
                let flight = Arc::clone(&job.flight);
                let shared = Arc::clone(&self.shared);
                // A dedicated thread, not a shared worker pool: waiters on this flight may
                // themselves be pool workers, and a queued loader behind them would deadlock.
                let job = Arc::new(parking_lot::Mutex::new(Some(job)));
                let job_in_thread = Arc::clone(&job);
                let spawned = std::thread::Builder::new()
                    .name("adapter-prefetch".into())
                    .spawn(move || {
                        if let Some(job) = job_in_thread.lock().take() {
                            // The outcome reaches callers through the flight.
                            let _ = shared.run(job);
                        }
                    });
                if spawned.is_err()
                    && let Some(job) = job.lock().take()
                {
                    // No thread to be had: load here rather than leave the flight open.
                    let _ = self.shared.run(job);
                }
                Ok(Prefetch { flight })
            }
        }
    }

    /// Loads each of `ids` in turn (at start-up, say), reporting after each one through
    /// `progress`. A failure is reported and the next id is tried. Returns how many are resident
    /// or were loaded; with more ids than the budget holds, the earliest are evicted again. Like
    /// prefetching, warming up counts neither hits nor misses.
    pub fn warm_up(
        &self,
        ids: &[AdapterId],
        mut progress: impl FnMut(WarmUpProgress<'_, A>),
    ) -> usize {
        let mut ok = 0;
        for (i, id) in ids.iter().enumerate() {
            let outcome = match self.step(id, false) {
                Ok(Step::Resident(a)) => Ok(a),
                Ok(Step::Wait(flight)) => flight.wait(),
                Ok(Step::Lead(job)) => self.shared.run(job),
                Err(e) => Err(e),
            };
            ok += usize::from(outcome.is_ok());
            progress(WarmUpProgress {
                done: i + 1,
                total: ids.len(),
                id,
                outcome: &outcome,
            });
        }
        ok
    }

    /// A snapshot of the counters and occupancy.
    pub fn stats(&self) -> PoolStats {
        let st = self.shared.state.read();
        PoolStats {
            hits: self.shared.hits.get(),
            misses: self.shared.misses.get(),
            loads: st.loads,
            load_failures: st.load_failures,
            evictions: st.evictions,
            unregistered_resident: st.unregistered_resident,
            resident_bytes: st.resident_bytes,
            budget_bytes: self.shared.budget,
            resident_count: st.resident.len(),
            pinned_count: st.resident.values().filter(|r| r.pins > 0).count(),
            registered_count: st.registry.len(),
            load_latency: st.latency.summary(),
        }
    }

    /// Decides how a request for `id` proceeds: resident, join a flight, or start one.
    fn step(&self, id: &AdapterId, count_hit: bool) -> Result<Step<A>, PoolError> {
        let sh = &*self.shared;
        {
            let st = sh.state.read();
            if let Some(r) = st.resident.get(id) {
                return Ok(Step::Resident(sh.touch(r, count_hit)));
            }
        }
        let mut st = sh.state.write();
        if let Some(r) = st.resident.get(id) {
            return Ok(Step::Resident(sh.touch(r, count_hit)));
        }
        let Some(reg) = st.registry.get(id) else {
            return Err(PoolError::UnknownId { id: id.clone() });
        };
        if let Some(flight) = st.inflight.get(id) {
            return Ok(Step::Wait(Arc::clone(flight)));
        }
        // Loaded before and known not to fit beside the pinned adapters: loading it again
        // would only fail the same way (a request waiting on it asks at every step).
        if let Some(&(generation, size)) = st.sizes.get(id)
            && generation == reg.generation
            && size <= sh.budget
        {
            let pinned_bytes: usize = st
                .resident
                .values()
                .filter(|r| r.pins > 0)
                .map(|r| r.bytes)
                .sum();
            if pinned_bytes + size > sh.budget {
                return Err(PoolError::BudgetExhaustedByPinned {
                    id: id.clone(),
                    size,
                    pinned_bytes,
                    budget: sh.budget,
                });
            }
        }
        let job = LoadJob {
            id: id.clone(),
            source: reg.source.clone(),
            generation: reg.generation,
            flight: Arc::new(Flight::new()),
        };
        st.inflight.insert(id.clone(), Arc::clone(&job.flight));
        Ok(Step::Lead(job))
    }
}

impl<A: PooledAdapter> Shared<A> {
    fn touch(&self, r: &Resident<A>, count_hit: bool) -> Arc<A> {
        r.last_used.touch(self.clock.tick());
        if count_hit {
            self.hits.incr();
        }
        Arc::clone(&r.adapter)
    }

    /// Runs a load outside the lock, admits the result under it, and publishes the outcome.
    fn run(&self, job: LoadJob<A>) -> Outcome<A> {
        let t0 = Instant::now();
        let decoded = catch_unwind(AssertUnwindSafe(|| self.decode(&job.id, &job.source)))
            .unwrap_or_else(|_| Err(PoolError::LoadPanicked { id: job.id.clone() }));
        let elapsed = t0.elapsed();
        let outcome = self.admit(&job, decoded, elapsed);
        job.flight.complete(outcome.clone());
        outcome
    }

    /// Fetches and decodes adapter `id` (no lock held).
    fn decode(&self, id: &AdapterId, source: &Source) -> Result<A, PoolError> {
        let load = |e: LoraError| PoolError::Load {
            id: id.clone(),
            source: Arc::new(e),
        };
        let opts = &self.options;
        match source {
            Source::Dir(dir) => A::load_dir(dir, opts).map_err(load),
            Source::Bytes {
                config_json,
                safetensors,
            } => A::load_bytes(config_json, safetensors, opts).map_err(load),
            Source::Hub(hub) => A::load_dir(&hub.resolve(id)?, opts).map_err(load),
            Source::Custom(src) => {
                let bytes = src.fetch(id).map_err(|e| PoolError::Source {
                    id: id.clone(),
                    message: e.to_string(),
                })?;
                A::load_bytes(&bytes.config_json, &bytes.safetensors, opts).map_err(load)
            }
        }
    }

    /// Makes a decoded adapter resident, evicting LRU unpinned adapters if needed. On any
    /// failure nothing changes except `load_failures`.
    fn admit(
        &self,
        job: &LoadJob<A>,
        decoded: Result<A, PoolError>,
        elapsed: Duration,
    ) -> Outcome<A> {
        let mut st = self.state.write();
        if st
            .inflight
            .get(&job.id)
            .is_some_and(|f| Arc::ptr_eq(f, &job.flight))
        {
            st.inflight.remove(&job.id);
        }
        let result = Self::insert(&mut st, &self.clock, self.budget, job, decoded);
        match &result {
            Ok(_) => {
                st.loads += 1;
                st.latency.record(elapsed);
            }
            Err(_) => st.load_failures += 1,
        }
        result
    }

    fn insert(
        st: &mut State<A>,
        clock: &LruClock,
        budget: usize,
        job: &LoadJob<A>,
        decoded: Result<A, PoolError>,
    ) -> Outcome<A> {
        let id = &job.id;
        if st.registry.get(id).map(|r| r.generation) != Some(job.generation) {
            return Err(PoolError::UnregisteredWhileLoading { id: id.clone() });
        }
        let adapter = decoded?;
        let size = adapter.resident_bytes();
        st.sizes.insert(id.clone(), (job.generation, size));
        if size > budget {
            return Err(PoolError::AdapterLargerThanBudget {
                id: id.clone(),
                size,
                budget,
            });
        }
        let need = (st.resident_bytes + size).saturating_sub(budget);
        let candidates = st.resident.iter().map(|(k, r)| Candidate {
            key: k,
            last_used: r.last_used.get(),
            bytes: r.bytes,
            pinned: r.pins > 0,
        });
        let Some(victims) = pick_victims(candidates, need) else {
            let pinned_bytes = st
                .resident
                .values()
                .filter(|r| r.pins > 0)
                .map(|r| r.bytes)
                .sum();
            return Err(PoolError::BudgetExhaustedByPinned {
                id: id.clone(),
                size,
                pinned_bytes,
                budget,
            });
        };
        let victims: Vec<AdapterId> = victims.into_iter().cloned().collect();
        for v in &victims {
            if let Some(r) = st.resident.remove(v) {
                st.resident_bytes -= r.bytes;
                st.evictions += 1;
            }
        }
        let adapter = Arc::new(adapter);
        st.resident.insert(
            id.clone(),
            Resident {
                adapter: Arc::clone(&adapter),
                bytes: size,
                pins: 0,
                last_used: LastUsed::new(clock.tick()),
            },
        );
        st.resident_bytes += size;
        debug_assert!(
            st.resident_bytes <= budget,
            "resident {} > budget {budget}",
            st.resident_bytes
        );
        Ok(adapter)
    }
}

/// Where [`AdapterPool::warm_up`] stands, after one more adapter.
#[derive(Debug)]
pub struct WarmUpProgress<'a, A> {
    /// Adapters handled so far (including this one).
    pub done: usize,
    /// Adapters to handle in all.
    pub total: usize,
    /// The adapter just handled.
    pub id: &'a AdapterId,
    /// Its outcome.
    pub outcome: &'a Result<Arc<A>, PoolError>,
}

/// A background load started by [`AdapterPool::prefetch`].
pub struct Prefetch<A> {
    flight: Arc<Flight<A>>,
}

impl<A> Prefetch<A> {
    /// Blocks until the load finishes and returns its outcome.
    pub fn wait(self) -> Result<Arc<A>, PoolError> {
        self.flight.wait()
    }

    /// Whether the load has finished (successfully or not).
    pub fn is_done(&self) -> bool {
        self.flight.try_outcome().is_some()
    }
}

impl<A> std::fmt::Debug for Prefetch<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetch")
            .field("done", &self.is_done())
            .finish()
    }
}

#[cfg(test)]
mod tests;
