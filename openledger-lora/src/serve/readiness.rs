//! Whether a request's adapter can run: the scheduler asks an [`AdapterReadiness`] for each
//! waiting request's adapter (a non-resident one starts loading in the background and the
//! request waits, the others go on), and holds the adapters of running requests through it
//! ([`acquire`](AdapterReadiness::acquire) / [`release`](AdapterReadiness::release)). The
//! [`AdapterPool`] implements it by prefetching and pinning; [`AllReady`] serves engines whose
//! adapters are all attached up front.
//!
//! ```
//! use openledger_lora::pool::{AdapterId, AdapterPool, Source};
//! use openledger_lora::serve::{AdapterReadiness, Readiness};
//!
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/peft/tiny-llama/adapters/qv-r4");
//! let mut pool: AdapterPool = AdapterPool::new(64 << 20);
//! let id = AdapterId::new("qv-r4").unwrap();
//! pool.register(id.clone(), Source::Dir(dir.into())).unwrap();
//! while pool.readiness(&id) == Readiness::Loading {
//!     std::thread::yield_now(); // a background load is under way
//! }
//! assert_eq!(pool.acquire(&id), Readiness::Ready);
//! assert_eq!(pool.stats().pinned_count, 1);
//! pool.release(&id);
//! assert_eq!(pool.stats().pinned_count, 0);
//! let missing = AdapterId::new("missing").unwrap();
//! assert_eq!(pool.readiness(&missing), Readiness::Unknown);
//! ```

use crate::pool::{AdapterId, AdapterPool, PoolError, PooledAdapter};

/// Whether a request's adapter can run now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Resident: the request can be scheduled.
    Ready,
    /// Being loaded: the request waits, others go ahead.
    Loading,
    /// Not known: the request fails.
    Unknown,
    /// Its load failed: the request fails with this reason.
    Failed(String),
}

/// Tells the scheduler whether an adapter is resident, starting its load when it is not, and
/// keeps the adapters of running requests resident.
pub trait AdapterReadiness {
    /// Where `adapter` stands; called once per step for each waiting request that needs it
    /// (among the first `max_running` waiting ones). Must not block on a load.
    fn readiness(&mut self, adapter: &AdapterId) -> Readiness;

    /// Holds `adapter` resident until [`release`](Self::release), if it is resident now
    /// ([`Readiness::Ready`]); otherwise reports where it stands, as
    /// [`readiness`](Self::readiness) does, holding nothing. Called when the first running
    /// request needs it. The default holds nothing and answers `readiness`.
    fn acquire(&mut self, adapter: &AdapterId) -> Readiness {
        self.readiness(adapter)
    }

    /// Lets go of an adapter [`acquire`](Self::acquire) held, once no running request uses it.
    fn release(&mut self, adapter: &AdapterId) {
        let _ = adapter;
    }
}

fn pool_readiness(e: PoolError) -> Readiness {
    match e {
        PoolError::UnknownId { .. } => Readiness::Unknown,
        // Held by running requests now; it fits once they end.
        PoolError::BudgetExhaustedByPinned { .. } => Readiness::Loading,
        e => Readiness::Failed(e.to_string()),
    }
}

impl<A: PooledAdapter> AdapterReadiness for AdapterPool<A> {
    /// Resident → ready; otherwise starts (or joins) a background prefetch and reports its
    /// state. A load that fails only because running requests pin the budget reports
    /// [`Readiness::Loading`] (it is tried again at a later step).
    fn readiness(&mut self, adapter: &AdapterId) -> Readiness {
        if self.is_resident(adapter) {
            return Readiness::Ready;
        }
        match self.prefetch(adapter) {
            Err(e) => pool_readiness(e),
            Ok(p) if p.is_done() => match p.wait() {
                Ok(_) => Readiness::Ready,
                Err(e) => pool_readiness(e),
            },
            Ok(_) => Readiness::Loading,
        }
    }

    /// Pins a resident adapter; a non-resident one is prefetched as by `readiness`.
    fn acquire(&mut self, adapter: &AdapterId) -> Readiness {
        match self.readiness(adapter) {
            Readiness::Ready => match self.pin(adapter) {
                Ok(_) => Readiness::Ready,
                Err(e) => pool_readiness(e),
            },
            other => other,
        }
    }

    /// Unpins the adapter.
    fn release(&mut self, adapter: &AdapterId) {
        // Only adapters this engine pinned are released; an unregistered one has no pin left.
        let _ = self.unpin(adapter);
    }
}

/// Every adapter is ready (for an engine that serves the base model, or tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllReady;

impl AdapterReadiness for AllReady {
    fn readiness(&mut self, _: &AdapterId) -> Readiness {
        Readiness::Ready
    }
}
