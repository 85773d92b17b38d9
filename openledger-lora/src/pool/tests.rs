//! Unit tests of the pool with a toy payload whose size is set by its config bytes.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};

use super::*;
use crate::adapter::config::CONFIG_FILE;

/// A payload of `size` bytes decoded from the config text `"<size>"`.
#[derive(Debug)]
struct Toy {
    size: usize,
}

impl PooledAdapter for Toy {
    type Options = ();

    fn load_dir(dir: &Path, _: &()) -> Result<Self, LoraError> {
        let path = dir.join(CONFIG_FILE);
        let bytes = std::fs::read(&path).map_err(|source| LoraError::Io { path, source })?;
        Self::load_bytes(&bytes, &[], &())
    }

    fn load_bytes(config_json: &[u8], _: &[u8], _: &()) -> Result<Self, LoraError> {
        let text = std::str::from_utf8(config_json).unwrap_or("");
        match text.parse::<usize>() {
            Ok(size) => Ok(Toy { size }),
            Err(e) => Err(LoraError::InvalidConfig {
                file: CONFIG_FILE.into(),
                reason: e.to_string(),
            }),
        }
    }

    fn resident_bytes(&self) -> usize {
        self.size
    }
}

fn id(s: &str) -> AdapterId {
    AdapterId::new(s).unwrap()
}

fn toy(size: usize) -> Source {
    Source::bytes(size.to_string().into_bytes(), Vec::new())
}

/// A pool with adapters `a0..a{n}` of `size` bytes each.
fn pool_of(n: usize, size: usize, budget: usize) -> AdapterPool<Toy> {
    let pool = AdapterPool::new(budget);
    for i in 0..n {
        pool.register(id(&format!("a{i}")), toy(size)).unwrap();
    }
    pool
}

/// How many handles share the in-flight load of `name` (0 when none is in flight).
fn flight_owners(pool: &AdapterPool<Toy>, name: &str) -> usize {
    let st = pool.shared.state.read();
    st.inflight.get(name).map_or(0, Arc::strong_count)
}

fn ids(v: &[AdapterId]) -> Vec<&str> {
    v.iter().map(AdapterId::as_str).collect()
}

/// A custom source that counts fetches, optionally waits on a barrier and sleeps.
struct Slow {
    fetches: AtomicUsize,
    gate: Option<Barrier>,
    delay: Duration,
    size: usize,
}

impl AdapterSource for Slow {
    fn fetch(&self, _: &AdapterId) -> Result<AdapterBytes, SourceError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        if let Some(g) = &self.gate {
            g.wait();
        }
        std::thread::sleep(self.delay);
        Ok(AdapterBytes {
            config_json: self.size.to_string().into_bytes(),
            safetensors: Vec::new(),
        })
    }
}

#[test]
fn evicts_the_least_recently_used_adapter() {
    let pool = pool_of(4, 10, 30);
    for i in 0..3 {
        pool.get(&id(&format!("a{i}"))).unwrap();
    }
    assert_eq!(ids(&pool.resident_ids()), ["a0", "a1", "a2"]);
    pool.get(&id("a3")).unwrap();
    assert_eq!(ids(&pool.resident_ids()), ["a1", "a2", "a3"]);
    let s = pool.stats();
    assert_eq!(
        (s.loads, s.evictions, s.resident_bytes, s.resident_count),
        (4, 1, 30, 3)
    );
}

#[test]
fn a_hit_makes_an_adapter_most_recently_used() {
    let pool = pool_of(4, 10, 30);
    for i in 0..3 {
        pool.get(&id(&format!("a{i}"))).unwrap();
    }
    pool.get(&id("a0")).unwrap(); // a0 is now the most recent
    pool.get(&id("a3")).unwrap(); // so a1 goes
    assert_eq!(ids(&pool.resident_ids()), ["a2", "a0", "a3"]);
}

#[test]
fn evicts_as_many_as_needed_for_a_larger_adapter() {
    let pool = pool_of(3, 10, 30);
    pool.register(id("big"), toy(25)).unwrap();
    for i in 0..3 {
        pool.get(&id(&format!("a{i}"))).unwrap();
    }
    pool.get(&id("big")).unwrap();
    assert_eq!(ids(&pool.resident_ids()), ["big"]);
    let s = pool.stats();
    assert_eq!((s.evictions, s.resident_bytes), (3, 25));
}

#[test]
fn resident_get_returns_the_same_adapter_and_counts_a_hit() {
    let pool = pool_of(1, 10, 30);
    let a = pool.get(&id("a0")).unwrap();
    let b = pool.get(&id("a0")).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    let s = pool.stats();
    assert_eq!((s.hits, s.misses, s.loads, s.load_failures), (1, 1, 1, 0));
    assert_eq!(s.load_latency.count, 1);
    assert!(s.load_latency.min <= s.load_latency.p50 && s.load_latency.p50 <= s.load_latency.max);
    assert_eq!(s.registered_count, 1);
}

#[test]
fn pinned_adapters_are_never_evicted() {
    let pool = pool_of(5, 10, 30);
    pool.pin(&id("a0")).unwrap();
    for i in 1..5 {
        pool.get(&id(&format!("a{i}"))).unwrap();
    }
    assert!(pool.is_resident(&id("a0")));
    assert_eq!(ids(&pool.resident_ids()), ["a0", "a3", "a4"]);
    assert_eq!(pool.stats().pinned_count, 1);
}

#[test]
fn pins_nest_and_unpin_makes_an_adapter_evictable_again() {
    let pool = pool_of(4, 10, 30);
    pool.pin(&id("a0")).unwrap();
    pool.pin(&id("a0")).unwrap();
    pool.unpin(&id("a0")).unwrap();
    for i in 1..4 {
        pool.get(&id(&format!("a{i}"))).unwrap();
    }
    assert!(pool.is_resident(&id("a0")), "still pinned once");
    pool.unpin(&id("a0")).unwrap();
    assert_eq!(pool.stats().pinned_count, 0);
    pool.get(&id("a3")).unwrap(); // resident: a hit, no eviction
    pool.register(id("a4"), toy(10)).unwrap();
    pool.get(&id("a4")).unwrap();
    assert!(
        !pool.is_resident(&id("a0")),
        "a0 was the least recently used"
    );
}

#[test]
fn unpin_of_an_unpinned_adapter_is_a_typed_error_and_changes_nothing() {
    let pool = pool_of(2, 10, 30);
    pool.get(&id("a0")).unwrap();
    let before = pool.stats();
    assert!(
        matches!(pool.unpin(&id("a0")), Err(PoolError::NotPinned { id }) if id.as_str() == "a0")
    );
    assert!(
        matches!(pool.unpin(&id("a1")), Err(PoolError::NotPinned { id }) if id.as_str() == "a1")
    );
    assert!(
        matches!(pool.unpin(&id("zz")), Err(PoolError::UnknownId { id }) if id.as_str() == "zz")
    );
    assert_eq!(pool.stats(), before);
}

#[test]
fn load_that_only_fits_by_evicting_pinned_adapters_fails_and_evicts_nothing() {
    let pool = pool_of(3, 10, 30);
    pool.register(id("big"), toy(15)).unwrap();
    pool.pin(&id("a0")).unwrap();
    pool.pin(&id("a1")).unwrap();
    pool.get(&id("a2")).unwrap();
    let before = pool.stats();
    let resident = pool.resident_ids();
    let err = pool.get(&id("big")).unwrap_err();
    match &err {
        PoolError::BudgetExhaustedByPinned {
            id,
            size,
            pinned_bytes,
            budget,
        } => assert_eq!(
            (id.as_str(), *size, *pinned_bytes, *budget),
            ("big", 15, 20, 30)
        ),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        pool.resident_ids(),
        resident,
        "a2 was not evicted needlessly"
    );
    let after = pool.stats();
    assert_eq!(after.load_failures, before.load_failures + 1);
    assert_eq!(
        PoolStats {
            load_failures: before.load_failures,
            ..after
        },
        before
    );
}

#[test]
fn an_adapter_known_not_to_fit_beside_the_pinned_ones_is_not_loaded_again() {
    let pool = pool_of(2, 10, 30);
    let src = Arc::new(Slow {
        fetches: AtomicUsize::new(0),
        gate: None,
        delay: Duration::ZERO,
        size: 15,
    });
    pool.register(id("big"), Source::Custom(src.clone()))
        .unwrap();
    pool.pin(&id("a0")).unwrap();
    pool.pin(&id("a1")).unwrap();
    for _ in 0..3 {
        let err = pool.get(&id("big")).unwrap_err();
        assert!(
            matches!(
                err,
                PoolError::BudgetExhaustedByPinned {
                    size: 15,
                    pinned_bytes: 20,
                    budget: 30,
                    ..
                }
            ),
            "{err:?}"
        );
    }
    assert!(pool.prefetch(&id("big")).is_err());
    assert_eq!(
        src.fetches.load(Ordering::SeqCst),
        1,
        "loaded once, then known not to fit"
    );
    assert_eq!(pool.stats().load_failures, 1);
    // Room once a pin goes: it loads again and fits.
    pool.unpin(&id("a1")).unwrap();
    pool.get(&id("big")).unwrap();
    assert_eq!(src.fetches.load(Ordering::SeqCst), 2);
}

#[test]
fn adapter_larger_than_the_budget_is_refused_and_residents_stay() {
    let pool = pool_of(1, 10, 30);
    pool.register(id("huge"), toy(31)).unwrap();
    pool.get(&id("a0")).unwrap();
    let before = pool.stats();
    let err = pool.get(&id("huge")).unwrap_err();
    assert!(
        matches!(&err, PoolError::AdapterLargerThanBudget { id, size: 31, budget: 30 } if id.as_str() == "huge"),
        "{err:?}"
    );
    assert!(pool.is_resident(&id("a0")));
    let after = pool.stats();
    assert_eq!(
        PoolStats {
            load_failures: before.load_failures,
            ..after
        },
        before
    );
    assert_eq!(after.load_failures, 1);
}

#[test]
fn decode_failure_is_shared_by_waiters_and_counted_once() {
    let pool: AdapterPool<Toy> = AdapterPool::new(100);
    pool.register(id("bad"), Source::bytes(&b"not a number"[..], &b""[..]))
        .unwrap();
    let e1 = pool.get(&id("bad")).unwrap_err();
    match &e1 {
        PoolError::Load { id, source } => {
            assert_eq!(id.as_str(), "bad");
            assert!(matches!(**source, LoraError::InvalidConfig { .. }));
        }
        other => panic!("unexpected {other:?}"),
    }
    let s = pool.stats();
    assert_eq!(
        (s.loads, s.load_failures, s.misses, s.resident_count),
        (0, 1, 0, 0)
    );
}

#[test]
fn prefetch_returns_at_once_and_a_later_get_shares_the_load() {
    let src = Arc::new(Slow {
        fetches: AtomicUsize::new(0),
        gate: Some(Barrier::new(2)),
        delay: Duration::ZERO,
        size: 10,
    });
    let pool: AdapterPool<Toy> = AdapterPool::new(100);
    pool.register(id("p"), Source::Custom(src.clone())).unwrap();
    let handle = pool.prefetch(&id("p")).unwrap();
    // The fetch is parked on the barrier: prefetch has returned while the load is in flight.
    assert!(!handle.is_done());
    assert!(!pool.is_resident(&id("p")));
    let getter = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.get(&id("p")))
    };
    // Wait until the getter has joined the flight (map + job + handle + getter = 4 owners).
    let t0 = Instant::now();
    while flight_owners(&pool, "p") < 4 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "getter never joined the flight"
        );
        std::thread::yield_now();
    }
    src.gate.as_ref().unwrap().wait(); // release the fetch
    let a = handle.wait().unwrap();
    let b = getter.join().unwrap().unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(src.fetches.load(Ordering::SeqCst), 1);
    let s = pool.stats();
    assert_eq!((s.loads, s.misses, s.hits), (1, 1, 0));
    // Prefetching a resident adapter is immediate and counts nothing.
    assert!(pool.prefetch(&id("p")).unwrap().is_done());
    assert_eq!(pool.stats(), s);
}

#[test]
fn prefetch_of_an_unknown_id_fails_at_once() {
    let pool = pool_of(1, 10, 30);
    let err = pool.prefetch(&id("nope")).unwrap_err();
    assert!(matches!(err, PoolError::UnknownId { id } if id.as_str() == "nope"));
    assert_eq!(pool.stats(), pool_of(1, 10, 30).stats());
}

#[test]
fn unregister_drops_the_resident_copy_but_not_outstanding_arcs() {
    let pool = pool_of(2, 10, 30);
    let a = pool.get(&id("a0")).unwrap();
    pool.unregister(&id("a0")).unwrap();
    assert_eq!(a.size, 10, "the caller's Arc stays valid");
    let s = pool.stats();
    assert_eq!(
        (s.resident_bytes, s.resident_count, s.registered_count),
        (0, 0, 1)
    );
    assert_eq!(s.unregistered_resident, 1);
    assert_eq!(Arc::strong_count(&a), 1, "the pool holds no copy any more");
    assert!(matches!(
        pool.get(&id("a0")),
        Err(PoolError::UnknownId { .. })
    ));
}

#[test]
fn pinned_adapters_cannot_be_unregistered() {
    let pool = pool_of(1, 10, 30);
    pool.pin(&id("a0")).unwrap();
    let before = pool.stats();
    assert!(
        matches!(pool.unregister(&id("a0")), Err(PoolError::Pinned { id }) if id.as_str() == "a0")
    );
    assert_eq!(pool.stats(), before);
    pool.unpin(&id("a0")).unwrap();
    pool.unregister(&id("a0")).unwrap();
}

#[test]
fn a_load_finishing_after_unregister_is_dropped() {
    let src = Arc::new(Slow {
        fetches: AtomicUsize::new(0),
        gate: Some(Barrier::new(2)),
        delay: Duration::ZERO,
        size: 10,
    });
    let pool: AdapterPool<Toy> = AdapterPool::new(100);
    pool.register(id("u"), Source::Custom(src.clone())).unwrap();
    let handle = pool.prefetch(&id("u")).unwrap();
    pool.unregister(&id("u")).unwrap();
    pool.register(id("u"), toy(5)).unwrap(); // a new registration under the same id
    src.gate.as_ref().unwrap().wait();
    assert!(
        matches!(handle.wait(), Err(PoolError::UnregisteredWhileLoading { id }) if id.as_str() == "u")
    );
    assert!(!pool.is_resident(&id("u")));
    assert_eq!(
        pool.get(&id("u")).unwrap().size,
        5,
        "the new registration loads"
    );
}

#[test]
fn a_panicking_source_fails_the_load_without_stranding_waiters() {
    struct Boom;
    impl AdapterSource for Boom {
        fn fetch(&self, _: &AdapterId) -> Result<AdapterBytes, SourceError> {
            panic!("source exploded")
        }
    }
    let pool: AdapterPool<Toy> = AdapterPool::new(100);
    pool.register(id("boom"), Source::Custom(Arc::new(Boom)))
        .unwrap();
    let err = pool.get(&id("boom")).unwrap_err();
    assert!(matches!(err, PoolError::LoadPanicked { id } if id.as_str() == "boom"));
    assert_eq!(pool.stats().load_failures, 1);
}

#[test]
fn single_flight_loads_once_for_concurrent_callers() {
    let src = Arc::new(Slow {
        fetches: AtomicUsize::new(0),
        gate: None,
        delay: Duration::from_millis(50),
        size: 10,
    });
    let pool: AdapterPool<Toy> = AdapterPool::new(100);
    pool.register(id("s"), Source::Custom(src.clone())).unwrap();
    let start = Barrier::new(16);
    let got = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                start.wait();
                let a = pool.get(&id("s")).unwrap();
                got.lock().unwrap().push(a);
            });
        }
    });
    let got = got.into_inner().unwrap();
    assert!(got.iter().all(|a| Arc::ptr_eq(a, &got[0])));
    assert_eq!(src.fetches.load(Ordering::SeqCst), 1);
    let s = pool.stats();
    assert_eq!(s.loads, 1);
    assert_eq!(s.hits + s.misses, 16);
}

#[test]
fn pool_and_its_errors_can_be_shared_across_threads() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<AdapterPool>();
    shared::<AdapterPool<Toy>>();
    shared::<PoolError>();
    shared::<Prefetch<LoraAdapter>>();
}

#[test]
fn a_fresh_pool_reports_its_budget_and_nothing_else() {
    let pool: AdapterPool<Toy> = AdapterPool::new(1234);
    assert_eq!(pool.budget_bytes(), 1234);
    assert_eq!(
        pool.stats(),
        PoolStats {
            budget_bytes: 1234,
            ..PoolStats::default()
        }
    );
}
